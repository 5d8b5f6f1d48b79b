"""The whole person: `service` one view built from every organisation's record through the gate (problems,
medicines, allergies, results, timeline, provenance); `own` the person's own view (what matters, corrections, who
looked); `models` the summary's shape; `routes` its API."""
