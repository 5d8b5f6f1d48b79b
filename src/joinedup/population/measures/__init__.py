"""Shared outcome measures across organisations (issue 18 part 4): definitions as data, computed from SQL on FHIR
views by DuckDB, published through the gate with small-number suppression."""
