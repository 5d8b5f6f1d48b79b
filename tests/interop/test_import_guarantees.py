"""Bulk import guarantees that speed must not cost: a re-run skips only what is stored with exactly the same
content (anything changed is validated and written again), and a `kill -9` at any point leaves whole batches
only, after which a re-run completes (the data: the public Synthea sample, replicated with fresh ids)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import sqlalchemy as sa
from bench.bench_import import synthea_shaped

from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.interop.bulk_import import import_paths
from tests.conftest import SAMPLES


def _lines(name: str) -> list[bytes]:
    return gzip.decompress((SAMPLES / f"{name}.000.ndjson.gz").read_bytes()).splitlines()


def test_rerun_skips_only_identical_content_and_revalidates_the_rest(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    conditions = _lines("Condition")[:50]
    (data / "Condition.ndjson").write_bytes(b"\n".join(conditions) + b"\n")
    gate = get_gate(f"sqlite:///{tmp_path / 'a.db'}")
    first = import_paths(gate, SYSTEM, [data], workers=1, rejects=tmp_path / "r1.ndjson")
    assert (first.created, first.rejected) == (50, 0)

    edited = [orjson.loads(line) for line in conditions]
    edited[0]["clinicalStatus"]["coding"][0]["code"] = "resolved"  # a real change: must be written
    del edited[1]["subject"]  # an invalid change (Condition.subject is 1..1 in R4): rejected
    edited[2]["clinicalStatus"]["coding"][0]["code"] = "banana"  # outside its required value set: rejected
    (data / "Condition.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in edited) + b"\n")
    again = import_paths(gate, SYSTEM, [data], workers=1, rejects=tmp_path / "r2.ndjson")
    gate.flush_audit()
    assert (again.unchanged, again.updated, again.created, again.rejected) == (47, 1, 0, 2)
    rejected = [orjson.loads(line) for line in (tmp_path / "r2.ndjson").read_bytes().splitlines()]
    assert {r["line"] for r in rejected} == {2, 3}
    assert any("subject" in r["reason"] for r in rejected) and any("banana" in r["reason"] for r in rejected)

    stored = gate.read(SYSTEM, "Condition", edited[0]["id"]).content
    assert stored["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert stored["meta"]["versionId"] == "2"
    kept = gate.read(SYSTEM, "Condition", edited[1]["id"]).content  # the rejected edit left the stored version alone
    assert kept["subject"] and kept["meta"]["versionId"] == "1"

    # a deleted entry that is imported again comes back: a tombstone is never "unchanged"
    gate.delete(SYSTEM, "Condition", edited[3]["id"])
    third = import_paths(gate, SYSTEM, [data], workers=1, rejects=tmp_path / "r3.ndjson")
    assert third.rejected == 2 and third.unchanged == 47 and third.created + third.updated == 1
    assert gate.read(SYSTEM, "Condition", edited[3]["id"]).content["id"] == edited[3]["id"]


def _consistent(db: Path) -> tuple[int, int]:
    """(current resources, versions); asserts every current row has its version row and vice versa."""
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        current = conn.execute(sa.text("SELECT count(*) FROM resource")).scalar()
        versions = conn.execute(sa.text("SELECT count(*) FROM resource_version")).scalar()
        orphans = conn.execute(sa.text(
            "SELECT count(*) FROM resource r WHERE NOT EXISTS (SELECT 1 FROM resource_version v WHERE "
            "v.res_type = r.res_type AND v.id = r.id AND v.version = r.version)")).scalar()
        assert orphans == 0
        assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    return current, versions


def test_kill_9_mid_import_leaves_whole_batches_and_a_rerun_completes(tmp_path):
    data = tmp_path / "synthea"
    total = synthea_shaped(data, 28000)
    db = tmp_path / "crash.db"
    env = dict(os.environ, JOINEDUP_DATABASE_URL=f"sqlite:///{db}")
    exe = [sys.executable, "-m", "joinedup.cli"] if not Path(sys.executable).with_name("joinedup").exists() \
        else [str(Path(sys.executable).with_name("joinedup"))]
    proc = subprocess.Popen([*exe, "import", str(data), "--workers", "2", "--quiet",
                             "--rejects", str(tmp_path / "rejects.ndjson")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    current = 0
    while time.time() < deadline and proc.poll() is None:  # wait until some batches are committed
        time.sleep(0.3)
        if db.exists():
            try:
                current, _ = _consistent(db)
            except sa.exc.OperationalError:
                continue
            if current >= 4000:
                break
    assert proc.poll() is None, "the import finished before it could be killed: give it more data"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes, mid-write
    proc.wait()
    current, versions = _consistent(db)
    assert 0 < current < total
    assert current % 2000 == 0 or current == versions  # whole batches of 2,000 only

    done = subprocess.run([*exe, "import", str(data), "--workers", "2", "--quiet",
                           "--rejects", str(tmp_path / "rejects.ndjson")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    current, versions = _consistent(db)
    assert current == total and versions == total
