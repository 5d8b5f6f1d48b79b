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


def test_rerun_skips_lines_written_from_the_same_bytes_and_parses_every_other(tmp_path):
    """A re-run recognises a line by its bytes only when the live entry was written from exactly those bytes;
    the same content written differently, an entry changed since by another write, or a deleted one are decided
    by parsing, as before."""
    data = tmp_path / "in"
    data.mkdir()
    lines = _lines("Condition")[:40]
    (data / "Condition.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    gate = get_gate(f"sqlite:///{tmp_path / 'b.db'}")
    assert import_paths(gate, SYSTEM, [data], workers=1, rejects=tmp_path / "r1.ndjson").created == 40

    docs = [orjson.loads(line) for line in lines]
    changed = dict(docs[0], recordedDate="2020-01-01")  # a real change: written again
    gate.update(SYSTEM, "Condition", docs[1]["id"], dict(docs[1], recordedDate="2020-01-02"))  # changed by the API
    gate.delete(SYSTEM, "Condition", docs[2]["id"])  # deleted since: imported again, it comes back
    rewritten = [orjson.dumps(changed), lines[1], lines[2], orjson.dumps(docs[3], option=orjson.OPT_SORT_KEYS),
                 b"  " + lines[4] + b"  ", *lines[5:]]  # 3: same content, keys in another order; 4: spaces around
    (data / "Condition.ndjson").write_bytes(b"\n".join(rewritten) + b"\n")
    again = import_paths(gate, SYSTEM, [data], workers=1, rejects=tmp_path / "r2.ndjson")
    # 0 and 1 written again, 2 (deleted) created again, the other 37 unchanged (3 and 4 found by parsing them)
    assert (again.updated, again.created, again.unchanged, again.rejected) == (2, 1, 37, 0)
    assert gate.read(SYSTEM, "Condition", docs[0]["id"]).content["recordedDate"] == "2020-01-01"
    assert gate.read(SYSTEM, "Condition", docs[1]["id"]).content.get("recordedDate") == docs[1].get("recordedDate")
    assert not gate.read(SYSTEM, "Condition", docs[2]["id"]).deleted
    assert gate.read(SYSTEM, "Condition", docs[3]["id"]).content["meta"]["versionId"] == "1"

    # with worker processes the lines are recognised before any is handed to a worker: the same answer
    third = import_paths(gate, SYSTEM, [data], workers=2, rejects=tmp_path / "r3.ndjson")
    assert (third.unchanged, third.updated, third.created) == (40, 0, 0)
    assert third.by_type == {"Condition": 40}
