"""Data in and out in bulk: `bulk_import` (NDJSON and Bundles, streamed, validated in worker processes, with a
rejects file) and `bulk_export` (FHIR Bulk Data `$export` jobs)."""
