"""A large load into an empty store defers the search tables' indexes and builds them at the end; a load killed with
-9 while they are deferred leaves a store that builds them again when it is next opened, and a re-run completes
(SQLite and PostgreSQL; the data: the public Synthea sample replicated with fresh ids)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from bench.bench_import import synthea_shaped

from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.store.schema import INDEX_TABLES
from tests.conftest import BACKENDS, drop_database, fresh_database

# every secondary index of the six search tables, as the schema declares them
SEARCH_INDEXES = sorted({ix.name for table in set(INDEX_TABLES.values()) for ix in table.indexes})


def _state(url: str) -> tuple[int, set[str]]:
    """(current entries, search indexes present) read straight from the database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("resource"):
                return 0, set()
            count = conn.execute(sa.text("SELECT count(*) FROM resource")).scalar()
            if engine.dialect.name == "sqlite":
                names = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'")).scalars()
            else:
                names = conn.execute(sa.text("SELECT indexname FROM pg_indexes")).scalars()
            return count, set(names) & set(SEARCH_INDEXES)
    finally:
        engine.dispose()


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("joinedup")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "joinedup.cli"]


def _no_other_sessions(url: str) -> None:
    """PostgreSQL: wait until the killed import's server sessions are gone (they release its advisory lock)."""
    if not url.startswith("postgresql"):
        return
    base = sa.engine.make_url(url)
    admin = sa.create_engine(base.set(database="postgres"))
    deadline = time.time() + 30
    with admin.connect() as conn:
        while time.time() < deadline and conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": base.database}).scalar():
            time.sleep(0.2)
    admin.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_bulk_load_leaves_a_store_that_rebuilds_its_search_indexes(backend, tmp_path):
    data = tmp_path / "synthea"
    total = synthea_shaped(data, 28000)
    url = fresh_database(backend, tmp_path, "deferred")
    env = dict(os.environ, JOINEDUP_DATABASE_URL=url)
    args = [*_cli(), "import", str(data), "--workers", "2", "--quiet", "--rejects", str(tmp_path / "rejects.ndjson")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    count, present = 0, set(SEARCH_INDEXES)
    while time.time() < deadline and proc.poll() is None:  # until whole batches are in with the indexes deferred
        time.sleep(0.3)
        try:
            count, present = _state(url)
        except sa.exc.OperationalError:  # SQLite busy, or the schema not made yet
            continue
        if count >= 4000 and not present:
            break
    assert proc.poll() is None, "the import finished before it could be killed: give it more data"
    assert count >= 4000 and present == set(), "a large load into an empty store defers every search index"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _no_other_sessions(url)

    gate = get_gate(url)  # opening the store finds the indexes missing and nobody loading: it builds them
    assert _state(url)[1] == set(SEARCH_INDEXES)
    partial = gate.search(SYSTEM, "Condition", [("_count", "1"), ("_total", "accurate")]).total
    assert 0 < partial

    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    count, present = _state(url)
    assert count == total and present == set(SEARCH_INDEXES)
    # the indexes built after the load serve searches: every Condition of the sample is found by its person
    some = gate.search(SYSTEM, "Condition", [("_count", "1")])
    person = some.matches[0].content["subject"]["reference"]
    by_subject = gate.search(SYSTEM, "Condition", [("subject", person), ("_count", "1000"), ("_total", "accurate")])
    assert by_subject.total >= 1
    assert all(e.content["subject"]["reference"] == person for e in by_subject.matches)
    conditions = sum(1 for f in data.glob("Condition*") for line in f.read_bytes().splitlines() if line.strip())
    assert gate.search(SYSTEM, "Condition", [("_total", "accurate")]).total == conditions
    if url.startswith("postgresql"):
        gate.store_for_tests.engine.dispose()
        drop_database(url)
