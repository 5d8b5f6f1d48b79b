"""Population health (to come: SQL on FHIR views, measures, registers, risk); empty for now."""
