"""The resource store (only `governance` uses it): `schema` tables, `migrations` Alembic revisions, `engine`
SQLite/PostgreSQL engines, `repository` `Store` (versioned writes with their index rows, reads, history,
compartments), `search` FHIR search parameters to SQL."""
