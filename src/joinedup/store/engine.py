"""Database engines (SQLite in WAL mode by default, PostgreSQL via psycopg 3) and migrations."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy import event

_migrated: set[str] = set()
_lock = threading.Lock()


def _json_dumps(obj) -> str:
    return orjson.dumps(obj).decode()


def make_engine(url: str) -> sa.Engine:
    """Create an engine tuned for the store: WAL and relaxed fsync for SQLite, pooled psycopg for PG."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    kwargs: dict = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs["pool_size"] = 16
        kwargs["max_overflow"] = 32
        engine = sa.create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache per connection, grown on demand
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA mmap_size=8589934592")  # reads through the OS page cache, shared by processes
            cur.execute("PRAGMA wal_autocheckpoint=10000")  # fewer checkpoints during bulk loads
            cur.close()

        return engine
    try:
        import psycopg.types.json as pj

        pj.set_json_loads(orjson.loads)
    except ImportError:  # pragma: no cover - psycopg is a hard dependency
        pass
    return sa.create_engine(url, pool_size=16, max_overflow=32, pool_pre_ping=True, **kwargs)


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (once per process and database)."""
    key = str(engine.url)
    with _lock:
        if key in _migrated:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        cfg.attributes["connection_engine"] = engine
        command.upgrade(cfg, "head")
        _migrated.add(key)


@lru_cache(maxsize=8)
def engine_for(url: str) -> sa.Engine:
    """One shared, migrated engine per database URL in this process."""
    engine = make_engine(url)
    migrate(engine)
    return engine
