"""Pathway and process analytics from the record (issue 16, part 3).

- `definitions`: the steps, gaps and guideline timings of knowledge/system/pathways.yaml;
- `events`: each person's journey across settings as an event log, derived from their FHIR resources;
- `analysis`: the process map (directly-follows graph with counts and median waits), variants, the gaps and the
  guideline comparisons, as figures;
- `export`: the event log as XES (IEEE 1849-2016) and OCEL 2.0 JSON for process-mining tools;
- `service`: the gate paths (analysts: figures computed inside the gate, de-identified logs; the board: published
  figures; professionals: the people they care for) and small-number suppression;
- `routes` (`/system/pathways`, `/api/pathways`) and `cli` (`joinedup pathways export|figures`).
"""
