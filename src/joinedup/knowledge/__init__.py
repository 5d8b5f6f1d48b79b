"""Clinical content as data files with their sources: `conflicts/` rules, guidance, lifestyle and schedules;
`conditions.yaml` and `medicines.yaml` recognition lists; `synth/` the synthetic population's inputs."""
