"""FHIR R4 (4.0.1) search parameters and compartment definitions extracted from the official definitions (CC0)."""
