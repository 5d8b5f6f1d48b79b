"""Multimorbidity conflict engine: detection and least-harm resolution.

* `knowledge` loads the rule files in `knowledge/conflicts/` (with their sources); `models` the record and findings;
* `detect` recognises medicines, conditions and results and runs the rules; `rules` one class per rule kind (its
  detection and its CP-SAT encoding, table `KINDS`); `resolve` the least-harm optimisation (build, solve, explain);
* `service` checking a record; `person` a stored person's check and clinicians' reviews; `screen` population screens;
  `cds` CDS Hooks services; `preferences` each clinician's alert threshold;
* `routes`, `web_routes`, `cli` the API, pages and commands.
"""
