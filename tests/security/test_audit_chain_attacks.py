"""Attacks on the audit trail, judged by the real `joinedup audit verify` (issue 11 part 5).

Each test builds its own chain with `AuditWriter` on a fresh database (a SQLite file, or a PostgreSQL schema of its
own inside the test database), with explicit keys and a checkpoint file of its own, then tampers with it the way
someone with write access to the database (and, separately, to the checkpoint file) would:

* editing an entry and recomputing the rest of the chain with plain SHA-256 (the old formula), or with the right
  formula under a key guessed or stolen from elsewhere, or downgrading every entry to unkeyed;
* deleting the newest entry, the newest N, or every entry (caught only by the signed checkpoints kept outside the
  database);
* forging or editing a checkpoint line;
* rotating the key (old entries still verify while the old key is listed; dropping it is named).

`verify` must exit 0 with one summary line when intact and 2 with one line naming the problem otherwise.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.audit import GENESIS, AuditWriter, event_hash, verify_chain
from joinedup.governance.identity import Principal

PG_URL = os.environ.get("JOINEDUP_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SCRIPT = Path(sys.executable).with_name("joinedup")
K1 = "k1:" + "first-audit-key-" * 3
K2 = "k2:" + "second-audit-key-" * 3
GP = Principal(name="dr-chain", role="gp", display="Dr Chain", practitioner_id="gp-chain",
               organization_id="practice-chain")
ANALYST = Principal(name="an-chain", role="analyst", display="Analyst")


@dataclass
class Chain:
    """A private database with an audit chain, its keys and its checkpoint file."""

    url: str
    store: object
    keys: str
    checkpoints: Path
    key_file: Path

    def writer(self, keys: str | None = None) -> AuditWriter:
        return AuditWriter(self.store, 200, keys=keys or self.keys, checkpoint_path=self.checkpoints)

    def fill(self, n: int, writer: AuditWriter | None = None) -> None:
        """n accesses, allowed and refused, each committed by record() itself."""
        w = writer or self.writer()
        for i in range(n):
            pid = f"chain-p{i % 3}"
            if i % 4 == 3:
                w.record(ANALYST, "read", allowed=False, reason="no relationship", entity=f"Patient/{pid}",
                         patient_id=pid)
            else:
                w.record(GP, "read", allowed=True, reason="registered GP", entity=f"Patient/{pid}", patient_id=pid)

    def env(self, keys: str | None = None) -> dict[str, str]:
        return {"JOINEDUP_DATABASE_URL": self.url, "JOINEDUP_AUDIT_KEYS": self.keys if keys is None else keys,
                "JOINEDUP_AUDIT_CHECKPOINT_FILE": str(self.checkpoints),
                "JOINEDUP_AUDIT_KEY_FILE": str(self.key_file), "COLUMNS": "300"}

    def sql(self, statement: str, **params) -> list:
        with self.store.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else []

    def rows(self) -> list[dict]:
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT * FROM audit_event ORDER BY seq")).mappings()]

    def count(self) -> int:
        return self.sql("SELECT count(*) FROM audit_event")[0][0]


@pytest.fixture(params=BACKENDS)
def chain(request, tmp_path) -> Chain:
    from joinedup.store.repository import get_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        schema_name = None
    else:
        schema_name = f"audit_attack_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema_name}"))
        admin.dispose()
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options=-csearch_path%3D{schema_name}"
    store = get_store(url)
    c = Chain(url, store, K1, tmp_path / "checkpoints.log", tmp_path / "no-such-audit.key")
    yield c
    if schema_name:
        store.engine.dispose()
        admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema_name} CASCADE"))
        admin.dispose()


class Verified:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.raw = output
        self.output = " ".join(output.split())


def verify(chain: Chain, keys: str | None = None) -> Verified:
    result = CliRunner().invoke(app, ["audit", "verify"], env=chain.env(keys))
    return Verified(result.exit_code, result.output)


def assert_broken(v: Verified, *words: str) -> None:
    assert v.exit_code == 2, v.raw
    assert "audit chain broken" in v.output, v.raw
    assert len(v.raw.strip().splitlines()) == 1, f"not one line: {v.raw!r}"
    assert "Traceback" not in v.raw
    for w in words:
        assert w in v.output, f"{w!r} not in {v.output!r}"


def rechain(chain: Chain, start: int, key: bytes | None, *, edit=None, strip_key: bool = False) -> None:
    """What a forger with database access does: change entry `start` and recompute every hash from there on
    (prev_hash links, chain fields and hashes) with `key` (None: plain SHA-256)."""
    rows = chain.rows()
    prev = GENESIS if start == 1 else rows[start - 2]["hash"]
    for r in rows[start - 1:]:
        doc = json.loads(r["content"])
        if r["seq"] == start and edit:
            edit(doc)
        ext = doc["extension"][0]["extension"]
        if strip_key:
            ext[:] = [e for e in ext if e["url"] != "key"]
        for e in ext:
            if e["url"] == "previousHash":
                e["valueString"] = prev
        content = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        columns = (r["seq"], r["id"], r["recorded"], r["user_name"], r["role"], r["action"], r["outcome"],
                   r["patient_id"], r["entity"])
        h = event_hash(prev, content, columns, key)
        chain.sql("UPDATE audit_event SET content = :c, prev_hash = :p, hash = :h WHERE seq = :s", c=content,
                  p=prev, h=h, s=r["seq"])
        prev = h


def whitewash(doc: dict) -> None:
    doc["outcomeDesc"] = "nothing to see here"
    doc["outcome"] = "0"


# -- intact ------------------------------------------------------------------------------------------------------
def test_intact_chain_is_exit_0_with_one_summary_line(chain):
    chain.fill(12)
    v = verify(chain)
    assert v.exit_code == 0, v.raw
    assert len(v.raw.strip().splitlines()) == 1, v.raw
    assert v.output.startswith("audit chain intact: 12 entries verified")
    assert "keys k1" in v.output and "newest at entry 12" in v.output


def test_entries_are_keyed_and_hashes_stay_64_hex(chain):
    chain.fill(3)
    for r in chain.rows():
        assert len(r["hash"]) == 64 and int(r["hash"], 16) >= 0
        ext = {e["url"]: e for e in json.loads(r["content"])["extension"][0]["extension"]}
        assert ext["key"]["valueString"] == "k1"
        # not the plain SHA-256 of the old chain
        columns = (r["seq"], r["id"], r["recorded"], r["user_name"], r["role"], r["action"], r["outcome"],
                   r["patient_id"], r["entity"])
        assert event_hash(r["prev_hash"], r["content"], columns) != r["hash"]


# -- editing and recomputing ---------------------------------------------------------------------------------------
def test_edit_with_plain_sha256_recomputed_for_the_rest_fails(chain):
    chain.fill(10)
    rechain(chain, 5, None, edit=whitewash)
    assert_broken(verify(chain), "first bad entry: 5)", "modified")


def test_edit_with_the_right_formula_but_without_the_key_fails(chain):
    chain.fill(10)
    guessed = ("k1:" + "guessed-audit-key-" * 3).split(":", 1)[1].encode()
    rechain(chain, 5, guessed, edit=whitewash)
    assert_broken(verify(chain), "first bad entry: 5)", "modified")


def test_downgrading_later_entries_to_unkeyed_fails(chain):
    chain.fill(10)
    rechain(chain, 5, None, edit=whitewash, strip_key=True)
    assert_broken(verify(chain), "first bad entry: 5)", "no key id")


def test_downgrading_the_whole_chain_to_unkeyed_is_caught_by_the_checkpoints(chain):
    """Rewriting every entry as an old-style unkeyed entry makes a self-consistent chain; the signed checkpoint
    of the real head no longer matches it."""
    chain.fill(10)
    rechain(chain, 1, None, edit=whitewash, strip_key=True)
    assert_broken(verify(chain), "signed checkpoint", "rewritten")


def test_edit_recomputed_with_the_key_is_still_caught_by_the_checkpoints(chain):
    """Even an insider holding the key cannot rewrite entries already covered by a checkpoint."""
    chain.fill(10)
    rechain(chain, 5, K1.split(":", 1)[1].encode(), edit=whitewash)
    assert_broken(verify(chain), "signed checkpoint", "rewritten")


# -- truncation ----------------------------------------------------------------------------------------------------
def test_deleting_the_last_entry_fails(chain):
    chain.fill(10)
    chain.sql("DELETE FROM audit_event WHERE seq = 10")
    assert_broken(verify(chain), "ends at entry 9", "records entry 10", "entry 10 was removed",
                  "first bad entry: 10)")


def test_deleting_the_last_n_entries_fails(chain):
    chain.fill(10)
    chain.sql("DELETE FROM audit_event WHERE seq > 6")
    assert_broken(verify(chain), "ends at entry 6", "entries 7 to 10 were removed")


def test_deleting_every_entry_fails(chain):
    chain.fill(10)
    chain.sql("DELETE FROM audit_event")
    assert_broken(verify(chain), "empty", "records 10 entries")


def test_deleting_the_tail_and_letting_the_chain_grow_again_fails(chain):
    """Delete the newest entries and let new traffic reuse their numbers: the old checkpoints disagree."""
    chain.fill(10)
    chain.sql("DELETE FROM audit_event WHERE seq > 6")
    chain.fill(8)
    assert chain.count() == 14
    assert_broken(verify(chain), "signed checkpoint", "first bad entry: 7)")


def test_truncation_through_the_installed_script(chain):
    chain.fill(6)
    env = {**os.environ, **chain.env()}
    ok = subprocess.run([str(SCRIPT), "audit", "verify"], env=env, capture_output=True, text=True, timeout=120,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("audit chain intact: 6 entries verified")
    chain.sql("DELETE FROM audit_event WHERE seq = 6")
    bad = subprocess.run([str(SCRIPT), "audit", "verify"], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 2
    assert "entry 6 was removed (first bad entry: 6)" in " ".join(bad.stderr.split()), bad.stderr
    assert "Traceback" not in bad.stderr


# -- the checkpoint file -------------------------------------------------------------------------------------------
def test_checkpoints_are_one_signed_line_per_commit_outside_the_database(chain):
    chain.fill(4)
    lines = chain.checkpoints.read_text().splitlines()
    assert len(lines) == 4  # one record() at a time: one commit each
    docs = [json.loads(x) for x in lines]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4]
    assert docs[-1]["hash"] == chain.rows()[-1]["hash"]
    assert all(d["key"] == "k1" and len(d["sig"]) == 64 and d["time"].endswith("Z") for d in docs)
    assert stat.S_IMODE(chain.checkpoints.stat().st_mode) == 0o600


def test_forged_checkpoint_line_fails(chain):
    """A made-up checkpoint (say, to vouch for a truncated chain) has no valid signature."""
    chain.fill(6)
    rows = chain.rows()
    forged = {"v": 1, "db": json.loads(chain.checkpoints.read_text().splitlines()[0])["db"], "seq": 6,
              "hash": rows[-1]["hash"], "time": "2030-01-01T00:00:00.000000Z", "key": "k1", "sig": "ab" * 32}
    with open(chain.checkpoints, "a") as f:
        f.write(json.dumps(forged) + "\n")
    assert_broken(verify(chain), "line 7", "bad signature", "edited or forged")


def test_edited_checkpoint_line_fails(chain):
    """Lowering the entry count of the newest checkpoint (to hide a truncation) breaks its signature."""
    chain.fill(6)
    lines = chain.checkpoints.read_text().splitlines()
    doc = json.loads(lines[-1])
    doc["seq"], doc["hash"] = 5, chain.rows()[4]["hash"]
    lines[-1] = json.dumps(doc)
    chain.checkpoints.write_text("\n".join(lines) + "\n")
    chain.sql("DELETE FROM audit_event WHERE seq = 6")
    assert_broken(verify(chain), "line 6", "bad signature")


def test_garbage_in_the_checkpoint_file_fails(chain):
    chain.fill(3)
    with open(chain.checkpoints, "a") as f:
        f.write("seq=999 trust me\n")
    assert_broken(verify(chain), "line 4", "not a checkpoint")


def test_no_checkpoints_still_verifies_and_says_so(chain):
    chain.fill(3)
    chain.checkpoints.unlink()
    v = verify(chain)
    assert v.exit_code == 0, v.raw
    assert "no checkpoints for this database" in v.output


def test_checkpoints_of_another_database_in_the_same_file_are_ignored(chain, tmp_path):
    from joinedup.store.repository import get_store

    chain.fill(3)
    other = get_store(f"sqlite:///{tmp_path / 'other.db'}")
    w = AuditWriter(other, 200, keys=K1, checkpoint_path=chain.checkpoints)
    for _ in range(5):
        w.record(GP, "search", allowed=True, reason="x", entity="Observation")
    v = verify(chain)
    assert v.exit_code == 0, v.raw
    assert "3 signed checkpoints, newest at entry 3" in v.output


# -- keys ----------------------------------------------------------------------------------------------------------
def test_key_rotation_keeps_old_entries_verifiable(chain):
    chain.fill(5)  # signed with k1
    rotated = f"{K2},{K1}"
    chain.fill(5, chain.writer(rotated))  # new entries signed with k2, k1 still listed
    kids = [json.loads(r["content"])["extension"][0]["extension"][2]["valueString"] for r in chain.rows()]
    assert kids == ["k1"] * 5 + ["k2"] * 5
    v = verify(chain, rotated)
    assert v.exit_code == 0, v.raw
    assert "10 entries verified" in v.output and "keys k1, k2" in v.output
    # order of the listed keys only matters for signing
    assert verify(chain, f"{K1},{K2}").exit_code == 0


def test_dropping_an_old_key_fails_naming_it(chain):
    chain.fill(5)
    rotated = f"{K2},{K1}"
    chain.fill(5, chain.writer(rotated))
    assert_broken(verify(chain, K2), "key 'k1'", "not configured", "first bad entry: 1)")


def test_a_different_secret_under_the_same_key_id_fails(chain):
    chain.fill(5)
    assert_broken(verify(chain, "k1:" + "not-the-real-secret-" * 2), "first bad entry: 1)", "modified")


def test_rotate_key_prints_a_new_first_key_and_keeps_the_old(chain):
    chain.fill(3)
    result = CliRunner().invoke(app, ["audit", "rotate-key"], env=chain.env())
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("JOINEDUP_AUDIT_KEYS="))
    value = line.split("=", 1)[1]
    ids = [item.split(":", 1)[0] for item in value.split(",")]
    assert ids == ["k2", "k1"]
    assert value.split(",")[1] == K1
    chain.fill(3, chain.writer(value))
    v = verify(chain, value)
    assert v.exit_code == 0, v.raw
    assert "keys k1, k2" in v.output


def test_key_file_is_created_0600_and_rotated_in_place(chain, tmp_path):
    """Without JOINEDUP_AUDIT_KEYS a random per-installation key is created in the key file (mode 0600) and used
    as "k1"; `rotate-key --write` puts a new key first in that file and keeps the old one."""
    key_file = tmp_path / "var" / "audit.key"
    env = {**chain.env(""), "JOINEDUP_AUDIT_KEY_FILE": str(key_file)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        w = AuditWriter(chain.store, 200, checkpoint_path=chain.checkpoints)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().startswith("k1:")
        chain.fill(3, w)
        assert verify_chain(chain.store).ok
        result = CliRunner().invoke(app, ["audit", "rotate-key", "--write"], env=env)
        assert result.exit_code == 0, result.output
        assert [x.split(":")[0] for x in key_file.read_text().split()] == ["k2", "k1"]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        chain.fill(3, AuditWriter(chain.store, 200, checkpoint_path=chain.checkpoints))
        v = Verified(*_invoke_verify(env))
        assert v.exit_code == 0, v.raw
        assert "6 entries verified" in v.output and "keys k1, k2" in v.output
    finally:
        for k, val in old.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val


def _invoke_verify(env: dict) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify"], env=env)
    return result.exit_code, result.output


def test_verify_without_the_key_names_it_and_creates_no_key(chain, tmp_path):
    chain.fill(3)
    missing = tmp_path / "elsewhere" / "audit.key"
    env = {**chain.env(""), "JOINEDUP_AUDIT_KEY_FILE": str(missing)}
    v = Verified(*_invoke_verify(env))
    assert_broken(v, "key 'k1'", "not configured", str(missing))
    assert not missing.exists()
