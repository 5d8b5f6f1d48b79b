"""The synthetic integrated care system: `service`/`system` generate a population across organisations, `person`
one person's records and planted problems, `knowledge` and `models` its inputs (cited rates in `knowledge/synth/`),
`cli` the generate command."""
