"""Alembic environment: runs against the engine handed over by joinedup.store.engine.migrate."""

from alembic import context

from joinedup.store.schema import metadata

config = context.config
engine = config.attributes.get("connection_engine")
if engine is None:  # invoked from the alembic CLI
    from joinedup.config import get_settings
    from joinedup.store.engine import make_engine

    engine = make_engine(get_settings().database_url)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
