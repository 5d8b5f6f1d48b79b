"""The audit hash chain: intact after real traffic, and every kind of tampering is found and located.

Tampering is only ever done on a copy of the database (never the shared test database): for SQLite a
backup of the file; for PostgreSQL the audit rows copied into a fresh SQLite store. A copy is another database,
so the server's checkpoints do not apply to it: these tests are about the chain itself (the keyed chain against
forgers without the key, and the checkpoints against truncation, are tests/security/test_audit_chain_attacks.py).
Forged entries here are computed the way an insider holding the audit key would: even then the next link breaks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.audit import GENESIS, event_hash

SCRIPT = Path(sys.executable).with_name("joinedup")


@pytest.fixture()
def traffic(server, api, uid) -> str:
    """Some allowed and refused API traffic, flushed to the chain; returns the patient id involved."""
    pid = api.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Chain{uid}"}]}
    ).json()["id"]
    for _ in range(4):
        api.get(f"/fhir/Patient/{pid}")
        api.get("/fhir/Patient", params={"_id": pid})
    with server.client("analyst") as analyst:
        assert analyst.get(f"/fhir/Patient/{pid}").status_code == 403
    with server.client("gp") as gp:
        gp.get(f"/fhir/Patient/{pid}")
    server.gate.flush_audit()
    return pid


def _copy(server, tmp_path: Path) -> tuple[str, Path]:
    """A private SQLite copy of the database holding the audit chain; returns (url, path)."""
    path = tmp_path / f"copy-{uuid.uuid4().hex[:8]}.db"
    if server.db_url.startswith("sqlite"):
        src = sqlite3.connect(server.db_url.split("///", 1)[1])
        dst = sqlite3.connect(path)
        src.backup(dst)
        src.close()
        dst.close()
        return f"sqlite:///{path}", path
    from joinedup.store import schema
    from joinedup.store.repository import get_store

    url = f"sqlite:///{path}"
    target = get_store(url)  # creates the schema
    a = schema.audit_event
    with server.gate.store_for_tests.reading() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(a).order_by(a.c.seq)).mappings()]
    with target.engine.begin() as conn:
        conn.execute(a.insert(), rows)
    return url, path


class Verified:
    """Outcome of `joinedup audit verify`, with the output's whitespace normalised (Rich wraps lines)."""

    def __init__(self, result):
        self.exit_code = result.exit_code
        self.output = " ".join(result.output.split())


def _verify(url: str) -> Verified:
    return Verified(CliRunner().invoke(app, ["audit", "verify"], env={"JOINEDUP_DATABASE_URL": url}))


def _middle(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as db:
        lo, hi = db.execute("SELECT min(seq), max(seq) FROM audit_event").fetchone()
    assert lo == 1 and hi >= 6
    return lo, (lo + hi) // 2, hi


def _row(db: sqlite3.Connection, seq: int) -> dict:
    cur = db.execute("SELECT * FROM audit_event WHERE seq = ?", (seq,))
    names = [c[0] for c in cur.description]
    return dict(zip(names, cur.fetchone()))


def test_chain_is_intact_after_traffic(server, traffic):
    report = server.gate.verify_audit()
    assert report.ok, report.problem
    assert report.checked >= 10
    assert report.first_bad_seq is None


def test_untampered_copy_verifies(server, traffic, tmp_path):
    url, _path = _copy(server, tmp_path)
    result = _verify(url)
    assert result.exit_code == 0, result.output
    assert "audit chain intact" in result.output


def test_modified_entry_is_found(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        content = _row(db, k)["content"]
        doc = json.loads(content)
        doc["outcomeDesc"] = "nothing to see here"
        db.execute("UPDATE audit_event SET content = ? WHERE seq = ?", (json.dumps(doc), k))
    result = _verify(url)
    assert result.exit_code == 2, result.output
    assert f"first bad entry: {k})" in result.output
    assert "modified" in result.output


def test_modified_entry_with_recomputed_hash_breaks_the_next_link(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        row = _row(db, k)
        doc = json.loads(row["content"])
        doc["outcomeDesc"] = "rewritten by someone covering their tracks"
        forged = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        db.execute(
            "UPDATE audit_event SET content = ?, hash = ? WHERE seq = ?",
            (forged, _forged_hash(server, row["prev_hash"], forged, row), k),
        )
    result = _verify(url)
    assert result.exit_code == 2
    assert f"first bad entry: {k + 1})" in result.output


def _forged_hash(server, prev_hash: str, content: str, row: dict) -> str:
    """The hash a forger who knows the algorithm and holds the audit key would compute for a row (content and
    searchable columns), under the key id the row names."""
    columns = (
        row["seq"],
        row["id"],
        row["recorded"],
        row["user_name"],
        row["role"],
        row["action"],
        row["outcome"],
        row["patient_id"],
        row["entity"],
    )
    kid = {e["url"]: e for e in json.loads(content)["extension"][0]["extension"]}["key"]["valueString"]
    return event_hash(prev_hash, content, columns, server.gate.audit_for_tests.keys.get(kid))


def _shift_up(db: sqlite3.Connection, after: int) -> None:
    """Renumber entries after `after` one place up, leaving a gap (two steps to keep the key unique)."""
    db.execute("UPDATE audit_event SET seq = -(seq + 1) WHERE seq > ?", (after,))
    db.execute("UPDATE audit_event SET seq = -seq WHERE seq < 0")


def test_inserted_entry_is_found(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        row = _row(db, k)
        _shift_up(db, k)
        fake = {
            "resourceType": "AuditEvent",
            "id": str(uuid.uuid4()),
            "outcome": "0",
            "recorded": row["recorded"],
        }
        text = json.dumps(fake)
        db.execute(
            "INSERT INTO audit_event (seq, id, recorded, user_name, role, action, outcome, patient_id,"
            " entity, prev_hash, hash, content) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                k + 1,
                fake["id"],
                row["recorded"],
                "intruder",
                "system",
                "read",
                "allowed",
                None,
                None,
                row["hash"],
                "f" * 64,
                text,
            ),
        )
    result = _verify(url)
    assert result.exit_code == 2
    assert f"first bad entry: {k + 1})" in result.output


def test_well_forged_inserted_entry_breaks_the_following_link(server, traffic, tmp_path):
    """Even an insert with correct chain fields and hash is caught: the next entry no longer follows."""
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        row = _row(db, k)
        _shift_up(db, k)
        fake = json.loads(row["content"])
        fake["id"] = str(uuid.uuid4())
        fake["extension"][0]["extension"] = [
            {"url": "sequence", "valueInteger": k + 1},
            {"url": "previousHash", "valueString": row["hash"]},
            {"url": "key", "valueString": server.gate.audit_for_tests.keys.active[0]},
        ]
        text = json.dumps(fake, sort_keys=True, separators=(",", ":"))
        new = dict(row, seq=k + 1, id=fake["id"])
        db.execute(
            "INSERT INTO audit_event (seq, id, recorded, user_name, role, action, outcome, patient_id,"
            " entity, prev_hash, hash, content) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                k + 1,
                fake["id"],
                row["recorded"],
                row["user_name"],
                row["role"],
                row["action"],
                row["outcome"],
                row["patient_id"],
                row["entity"],
                row["hash"],
                _forged_hash(server, row["hash"], text, new),
                text,
            ),
        )
    result = _verify(url)
    assert result.exit_code == 2
    assert f"first bad entry: {k + 2})" in result.output


def test_deleted_entry_is_found(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit_event WHERE seq = ?", (k,))
    result = _verify(url)
    assert result.exit_code == 2
    assert f"first bad entry: {k})" in result.output
    assert "missing" in result.output


def test_deleted_first_entry_is_found(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit_event WHERE seq = 1")
    result = _verify(url)
    assert result.exit_code == 2
    assert "first bad entry: 1)" in result.output


def test_deleted_and_renumbered_entry_is_found(server, traffic, tmp_path):
    """Deleting an entry and closing the gap still breaks the chain at that place."""
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM audit_event WHERE seq = ?", (k,))
        db.execute("UPDATE audit_event SET seq = -(seq - 1) WHERE seq > ?", (k,))
        db.execute("UPDATE audit_event SET seq = -seq WHERE seq < 0")
    result = _verify(url)
    assert result.exit_code == 2
    assert f"first bad entry: {k})" in result.output


def test_changing_the_searchable_columns_is_found(server, traffic, tmp_path):
    """Rewriting a refused access as allowed (or moving it to another patient) in the columns that
    AuditEvent searches use would hide it from reviewers; the chain must cover those columns too."""
    url, path = _copy(server, tmp_path)
    with sqlite3.connect(path) as db:
        k = db.execute(
            "SELECT max(seq) FROM audit_event WHERE outcome = 'refused' AND patient_id = ?", (traffic,)
        ).fetchone()[0]
        assert k is not None
        db.execute("UPDATE audit_event SET outcome = 'allowed', patient_id = NULL WHERE seq = ?", (k,))
    result = _verify(url)
    assert result.exit_code == 2, result.output
    assert f"first bad entry: {k})" in result.output


def test_verify_through_the_installed_script(server, traffic, tmp_path):
    url, path = _copy(server, tmp_path)
    _, k, _ = _middle(path)
    env = {**os.environ, "JOINEDUP_DATABASE_URL": url, "COLUMNS": "200"}
    ok = subprocess.run(
        [str(SCRIPT), "audit", "verify"], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE audit_event SET content = replace(content, '\"outcome\"', '\"outcome\" ') WHERE seq = ?",
            (k,),
        )
    bad = subprocess.run(
        [str(SCRIPT), "audit", "verify"], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert bad.returncode == 2
    assert f"first bad entry: {k})" in " ".join((bad.stderr + bad.stdout).split())
    assert "Traceback" not in bad.stderr


def test_genesis_and_links_of_the_real_chain(server, traffic):
    from joinedup.store import schema

    a = schema.audit_event
    with server.gate.store_for_tests.reading() as conn:
        rows = conn.execute(sa.select(a.c.seq, a.c.prev_hash, a.c.hash).order_by(a.c.seq).limit(3)).all()
    assert rows[0][0] == 1 and rows[0][1] == GENESIS
    assert rows[1][1] == rows[0][2] and rows[2][1] == rows[1][2]


def test_event_ids_are_uuid_version_7_in_time_order(server, traffic):
    """Each AuditEvent id is an RFC 9562 UUID version 7 (section 5.7): variant 10, version 7, the first 48 bits the
    Unix time in milliseconds at which it was recorded. Ids therefore grow with time, and the unique index on them
    grows at its right edge."""
    import time
    from datetime import datetime

    from joinedup.store import schema

    a = schema.audit_event
    with server.gate.store_for_tests.reading() as conn:
        rows = conn.execute(sa.select(a.c.seq, a.c.id, a.c.recorded, a.c.content)
                            .order_by(a.c.seq.desc()).limit(50)).all()
    assert len(rows) >= 10
    for _seq, eid, recorded, content in rows:
        u = uuid.UUID(eid)
        assert (u.version, u.variant) == (7, uuid.RFC_4122), eid
        assert json.loads(content)["id"] == eid
        when = datetime.fromisoformat(recorded.replace("Z", "+00:00")).timestamp() * 1000
        assert abs((u.int >> 80) - when) < 60_000, (eid, recorded)  # made when it was recorded
        assert (u.int >> 80) <= time.time() * 1000 + 1
    stamps = [uuid.UUID(eid).int >> 80 for _s, eid, _r, _c in sorted(rows)]
    # in chain order the millisecond stamps never go back by more than the clock may between threads
    assert all(later >= earlier - 1000 for earlier, later in zip(stamps, stamps[1:]))
