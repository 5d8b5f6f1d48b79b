"""Stored JSON documents as text on PostgreSQL (they were JSONB): `resource.content`, `resource_version.content` and
`published_figures.content`.

Nothing queries inside a stored document (search has its own index tables), so the binary form bought nothing, and
the server parsed every document on every write - twice per write (the current row and its version row), which was
most of a bulk import's database time. Text keeps each document exactly as it was written; readers parse it with
orjson. Existing documents are converted in place (`content::text`, a valid JSON text of the same document): the
three tables are rewritten, which on a large store is a long step to plan for (the store is locked meanwhile). SQLite
already holds JSON as text: nothing changes there.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = [("resource", "content"), ("resource_version", "content"), ("published_figures", "content")]


def _types(bind) -> dict[tuple[str, str], str]:
    rows = bind.exec_driver_sql(
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND column_name = 'content' AND table_name IN ('resource', 'resource_version',"
        " 'published_figures')")
    return {(t, c): d for t, c, d in rows}


def _convert(to: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    types = _types(bind)
    for table, column in COLUMNS:
        if types.get((table, column), to) != to:
            op.alter_column(table, column, type_=sa.Text() if to == "text" else postgresql.JSONB(),
                            postgresql_using=f"{column}::{to}")


def upgrade() -> None:
    _convert("text")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and _has_lz4(bind):
        for table, column in COLUMNS:  # new values only; what is stored stays as it is until rewritten
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def _has_lz4(bind) -> bool:
    """Whether the server was built with lz4 (PostgreSQL 14 and later, `--with-lz4`, as Debian's and most are)."""
    if bind.dialect.server_version_info < (14,):
        return False
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql("SET LOCAL default_toast_compression = lz4")
    except sa.exc.DBAPIError:  # not built with lz4: the columns keep the server's default (pglz)
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def downgrade() -> None:
    _convert("jsonb")
