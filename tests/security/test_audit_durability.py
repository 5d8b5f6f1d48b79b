"""The audit cannot silently lose events (issue 11 part 5): an access is committed to the audit before its
response leaves, a write's event commits in the write's own transaction, and nothing is dropped on the way.

The centre piece is a crash test: `joinedup serve` in a subprocess against a fresh SQLite file, concurrent readers
and writers, `kill -9` mid-stream, then the database must hold an AuditEvent for every response that was received
and a create event for every Observation it holds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from joinedup.governance.audit import AuditDurabilityMiddleware, AuditWriter, verify_chain
from joinedup.governance.identity import Principal

PG_URL = os.environ.get("JOINEDUP_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SCRIPT = Path(sys.executable).with_name("joinedup")
KEYS = "k1:" + "durability-test-key-" * 2
WHO = Principal(name="dr-durable", role="gp", display="Dr Durable", practitioner_id="gp-d", organization_id="org-d")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path):
    """(url, store) of a fresh database: a SQLite file or a PostgreSQL schema of its own."""
    from joinedup.store.repository import get_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        yield url, get_store(url)
        return
    name = f"audit_durable_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{name}"
    store = get_store(url)
    yield url, store
    store.engine.dispose()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
    admin.dispose()


def _events(store, entity: str | None = None) -> list[tuple]:
    a = sa.table("audit_event", sa.column("seq"), sa.column("entity"), sa.column("action"), sa.column("outcome"),
                 sa.column("user_name"))
    q = sa.select(a.c.seq, a.c.entity, a.c.action, a.c.outcome, a.c.user_name).order_by(a.c.seq)
    if entity is not None:
        q = q.where(a.c.entity == entity)
    with store.engine.connect() as conn:
        return conn.execute(q).all()


# -- record() is durable when it returns -----------------------------------------------------------------------
def test_record_returns_only_once_its_event_is_committed(db, tmp_path):
    """Seen from another connection the moment record() returns, from many threads at once."""
    _url, store = db
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    missing: list[str] = []

    def caller(n: int) -> None:
        for i in range(25):
            entity = f"Patient/t{n}-{i}"
            w.record(WHO, "read", allowed=i % 2 == 0, reason="test", entity=entity)
            if len(_events(store, entity)) != 1:
                missing.append(entity)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert missing == []
    assert len(_events(store)) == 200
    assert verify_chain(store, keys=KEYS, checkpoint_path=tmp_path / "cp.log").ok


def test_concurrent_callers_share_one_commit(tmp_path):
    """Group commit: while the first caller's transaction waits for the database, everyone else's events gather
    and go in the next single transaction (one checkpoint line per commit)."""
    from joinedup.store.repository import get_store

    path = tmp_path / "g.db"
    store = get_store(f"sqlite:///{path}")
    cp = tmp_path / "cp.log"
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=cp)
    w.record(WHO, "read", allowed=True, reason="warm", entity="Patient/warm")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    done: list[float] = []
    threads = [threading.Thread(target=lambda n=n: (w.record(WHO, "read", allowed=True, reason="g",
                                                             entity=f"Patient/g{n}"), done.append(time.time())))
               for n in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert done == []  # nobody returns before the commit
    blocker.execute("COMMIT")
    blocker.close()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 12
    lines = cp.read_text().splitlines()
    assert 2 <= len(lines) <= 3, lines  # the warm-up, then at most two commits for the twelve
    assert len(_events(store)) == 13


class TinyServer:
    """A FastAPI app behind AuditDurabilityMiddleware, served by uvicorn on loopback; GET /thing/ID records a
    read of Thing/ID (IDs starting "refuse" are refused with a 403 after being recorded)."""

    def __init__(self, writer: AuditWriter) -> None:
        import uvicorn
        from fastapi import FastAPI, HTTPException

        api = FastAPI()
        api.add_middleware(AuditDurabilityMiddleware)

        @api.get("/thing/{tid}")
        async def thing(tid: str):
            allowed = not tid.startswith("refuse")
            writer.record(WHO, "read", allowed=allowed, reason="t", entity=f"Thing/{tid}")
            if not allowed:
                raise HTTPException(403, "refused")
            return {"id": tid}

        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.srv.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.srv.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.srv.should_exit = True
        self.thread.join(timeout=10)


def test_responses_leave_only_after_their_events_are_committed(db, tmp_path):
    """Behind AuditDurabilityMiddleware record() returns at once and the request waits just before its response
    is sent (without blocking the event loop, so concurrent requests share commits): the moment a client has a
    response, allowed or refused, its AuditEvent is in the database (checked from another connection)."""
    _url, store = db
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    missing: list[str] = []
    seen = Counter()

    def client(base: str, n: int) -> None:
        with httpx.Client(base_url=base) as c:
            for i in range(40):
                tid = f"{'refuse' if i % 5 == 0 else 'ok'}-{n}-{i}"
                r = c.get(f"/thing/{tid}")
                seen[r.status_code] += 1
                if len(_events(store, f"Thing/{tid}")) != 1:
                    missing.append(tid)

    with TinyServer(w) as srv:
        threads = [threading.Thread(target=client, args=(srv.url, n)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert missing == []
    assert seen == {200: 256, 403: 64}
    batches = len((tmp_path / "cp.log").read_text().splitlines())
    assert batches < 320  # concurrent requests shared commits
    assert verify_chain(store, keys=KEYS, checkpoint_path=tmp_path / "cp.log").ok


def test_responses_wait_while_another_process_holds_the_write_lock(tmp_path):
    """SQLite: when another process holds the write lock the commit moves off the event loop to the writer
    thread, and the responses wait for it rather than leaving early or failing."""
    from joinedup.store.repository import get_store

    path = tmp_path / "l.db"
    store = get_store(f"sqlite:///{path}")
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    got: list[tuple[int, float]] = []
    with TinyServer(w) as srv:
        assert httpx.get(f"{srv.url}/thing/warm").status_code == 200
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        held = time.time()

        def one(n: int) -> None:
            r = httpx.get(f"{srv.url}/thing/held-{n}", timeout=60)
            got.append((r.status_code, time.time()))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.6)
        assert got == []  # nobody has an answer while the audit cannot be written
        released = time.time()
        blocker.execute("COMMIT")
        blocker.close()
        for t in threads:
            t.join(timeout=60)
    assert len(got) == 6 and all(code == 200 for code, _ in got)
    assert all(when >= released for _, when in got), (held, released, got)
    assert len([e for e in _events(store) if e[1].startswith("Thing/held-")]) == 6
    assert verify_chain(store, keys=KEYS, checkpoint_path=tmp_path / "cp.log").ok


# -- inside the caller's write transaction ---------------------------------------------------------------------
def test_event_in_the_write_transaction_commits_and_rolls_back_with_it(db, tmp_path):
    _url, store = db
    cp = tmp_path / "cp.log"
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=cp)
    w.record(WHO, "read", allowed=True, reason="first", entity="Patient/first")
    with store.writing() as conn:
        w.record(WHO, "create", allowed=True, reason="w", entity="Observation/kept", conn=conn)
        assert _events(store, "Observation/kept") == []  # not visible outside the transaction yet
    w.committed()
    assert len(_events(store, "Observation/kept")) == 1
    assert json.loads(cp.read_text().splitlines()[-1])["seq"] == 2  # checkpointed after the commit
    with pytest.raises(ZeroDivisionError), store.writing() as conn:
        w.record(WHO, "create", allowed=True, reason="w", entity="Observation/gone", conn=conn)
        1 / 0  # noqa: B018 - the write fails after its event was appended
    w.committed()  # harmless after a rollback: nothing to vouch for
    assert _events(store, "Observation/gone") == []
    assert len(cp.read_text().splitlines()) == 2
    with w.writing() as conn:  # the writer's own wrapper checkpoints on commit
        w.record(WHO, "update", allowed=True, reason="w", entity="Observation/kept", conn=conn)
    assert json.loads(cp.read_text().splitlines()[-1])["seq"] == 3
    assert verify_chain(store, keys=KEYS, checkpoint_path=cp).ok


def test_event_needs_an_open_write_transaction(db, tmp_path):
    _url, store = db
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    with store.reading() as conn, pytest.raises(RuntimeError, match="open write transaction"):
        w.record(WHO, "create", allowed=True, reason="w", entity="Observation/x", conn=conn)


def test_in_transaction_events_and_group_commits_interleave_into_one_chain(db, tmp_path):
    """Writers appending inside their own transactions while readers' events are group-committed: one unbroken
    chain holding every event (SQLite: the write lock orders them; PostgreSQL: the audit table lock)."""
    _url, store = db
    cp = tmp_path / "cp.log"
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=cp)
    errors: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            for i in range(30):
                w.record(WHO, "read", allowed=True, reason="r", entity=f"Patient/r{n}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer(n: int) -> None:
        try:
            for i in range(15):
                with store.writing() as conn:
                    w.record(WHO, "create", allowed=True, reason="w", entity=f"Observation/w{n}-{i}", conn=conn)
                w.committed()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _events(store)
    assert len(rows) == 4 * 30 + 4 * 15
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    report = verify_chain(store, keys=KEYS, checkpoint_path=cp)
    assert report.ok, report.problem
    assert report.newest_checkpoint is not None and report.newest_checkpoint.seq == len(rows)


# -- nothing is dropped ----------------------------------------------------------------------------------------
def test_refusals_with_odd_content_are_recorded_not_dropped(db, tmp_path):
    _url, store = db
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    w.record(None, "login", allowed=False, reason=None, entity="/fhir/Patient\x00/evil")
    w.record(WHO, "read", allowed=False, reason="bad \ud800 surrogate", entity="Patient/\udcff",
             detail={"x": object()})
    w.record(WHO, "search", allowed=False, reason="long", entity="Observation/" + "x" * 600, query="q" * 5000)
    rows = _events(store)
    assert [r[3] for r in rows] == ["refused"] * 3
    assert rows[0][1] == "/fhir/Patient\ufffd/evil"
    assert len(rows[2][1]) == 255
    assert verify_chain(store, keys=KEYS, checkpoint_path=tmp_path / "cp.log").ok


def test_a_failed_commit_raises_and_keeps_the_event_for_the_next_one(tmp_path):
    """If the audit cannot be written the access fails (no response with data), and the event is not lost: it
    is committed with the next flush once the database accepts writes again."""
    from joinedup.store.repository import get_store

    path = tmp_path / "f.db"
    store = get_store(f"sqlite:///{path}")
    w = AuditWriter(store, 200, keys=KEYS, checkpoint_path=tmp_path / "cp.log")
    w.record(WHO, "read", allowed=True, reason="before", entity="Patient/before")
    with sqlite3.connect(path) as c:
        c.execute("ALTER TABLE audit_event RENAME TO audit_event_away")
    with pytest.raises(Exception, match="audit_event"):
        w.record(WHO, "read", allowed=False, reason="refused while broken", entity="Patient/during")
    with sqlite3.connect(path) as c:
        c.execute("ALTER TABLE audit_event_away RENAME TO audit_event")
    assert w.flush() == 1
    assert [r[1] for r in _events(store)] == ["Patient/before", "Patient/during"]
    assert verify_chain(store, keys=KEYS, checkpoint_path=tmp_path / "cp.log").ok


CHILD = """
import sys, threading
from joinedup.governance.audit import AuditWriter
from joinedup.governance.identity import Principal
from joinedup.store.repository import get_store
w = AuditWriter(get_store(sys.argv[1]), 200, keys=sys.argv[2], checkpoint_path=sys.argv[3])
who = Principal(name="proc" + sys.argv[4], role="system", display="p")
def go(t):
    for i in range(40):
        w.record(who, "read", allowed=True, reason="p", entity=f"Patient/{sys.argv[4]}-{t}-{i}")
ts = [threading.Thread(target=go, args=(t,)) for t in range(3)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def test_processes_appending_checkpoints_at_once_keep_the_file_readable(db, tmp_path):
    url, store = db
    cp = tmp_path / "cp.log"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, KEYS, str(cp), str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    lines = cp.read_text().splitlines()
    assert all(json.loads(x)["sig"] for x in lines)
    report = verify_chain(store, keys=KEYS, checkpoint_path=cp)
    assert report.ok, report.problem
    assert report.checked == 4 * 3 * 40 == report.newest_checkpoint.seq


# -- kill -9 mid-stream ----------------------------------------------------------------------------------------
def _patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Crash", "given": ["Test"]}],
            "gender": "unknown", "birthDate": "1960-01-01",
            "generalPractitioner": [{"reference": "Organization/practice-crash"}]}


def _observation(pid: str, value: int) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"}}


def test_kill_9_mid_stream_loses_no_audit_event(tmp_path):
    from joinedup.governance.identity import add_user, issue_token
    from joinedup.store.repository import get_store

    db_path = tmp_path / "crash.db"
    url = f"sqlite:///{db_path}"
    env = {**os.environ, "JOINEDUP_DATABASE_URL": url, "JOINEDUP_AUDIT_KEYS": "",
           "JOINEDUP_AUDIT_KEY_FILE": str(tmp_path / "audit.key"),
           "JOINEDUP_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.log"),
           "JOINEDUP_SECRET_FILE": str(tmp_path / "secret.key")}
    store = get_store(url)
    add_user(store, name="crash-system", role="system", replace=True)
    add_user(store, name="crash-gp", role="gp", practitioner="gp-crash", organization="practice-crash",
             replace=True)
    tokens = {u: issue_token(store, u) for u in ("crash-system", "crash-gp")}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(SCRIPT), "serve", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, (tmp_path / "server.log").read_text()
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)

        def client(user: str) -> httpx.Client:
            return httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {tokens[user]}",
                                                                   "Accept": "application/fhir+json"})

        pids = [f"crash-{i}" for i in range(6)]
        with client("crash-system") as c:
            for pid in pids:
                r = c.put(f"/fhir/Patient/{pid}", json=_patient(pid))
                assert r.status_code in (200, 201), r.text
        with client("crash-gp") as c:
            assert c.get(f"/fhir/Patient/{pids[0]}").status_code == 200  # a relationship: reads are allowed

        received: list[tuple[str, str, str, int]] = []  # (user, action, entity, status) of responses received
        lock = threading.Lock()
        stop = threading.Event()
        failures = Counter()

        def reader(user: str, n: int) -> None:
            with client(user) as c:
                i = n
                while not stop.is_set():
                    pid = pids[i % len(pids)]
                    i += 1
                    try:
                        r = c.get(f"/fhir/Patient/{pid}")
                    except httpx.HTTPError:
                        failures[user] += 1
                        if proc.poll() is not None:
                            return
                        continue
                    with lock:
                        received.append((user, "read", f"Patient/{pid}", r.status_code))

        def writer(n: int) -> None:
            with client("crash-system") as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = c.post("/fhir/Observation", json=_observation(pids[(n + i) % len(pids)], 100 + i))
                    except httpx.HTTPError:
                        failures["writer"] += 1
                        if proc.poll() is not None:
                            return
                        continue
                    oid = r.json().get("id") if r.status_code == 201 else None
                    with lock:
                        received.append(("crash-system", "create", f"Observation/{oid}", r.status_code))

        threads = [threading.Thread(target=reader, args=("crash-gp", n)) for n in range(4)]
        threads += [threading.Thread(target=reader, args=("crash-system", n)) for n in range(2)]
        threads += [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        started = time.time()
        while time.time() - started < 30:  # enough traffic first (at least 1.5 s), however busy the machine
            time.sleep(0.1)
            with lock:
                n_reads = sum(1 for r in received if r[1] == "read")
                n_writes = len(received) - n_reads
            if time.time() - started >= 1.5 and n_reads >= 60 and n_writes >= 20:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()

    reads = Counter((u, e) for u, a, e, s in received if a == "read" and s == 200)
    creates = [e for u, a, e, s in received if a == "create" and s == 201]
    print(f"received {sum(reads.values())} reads and {len(creates)} creates; interrupted: {dict(failures)}")
    assert sum(reads.values()) >= 60 and len(creates) >= 20, (len(received), failures)
    assert sum(failures.values()) > 0  # the kill really interrupted requests in flight
    assert all(s in (200, 201) for _u, _a, _e, s in received), Counter(s for *_x, s in received)

    with sqlite3.connect(db_path) as c:  # the server is dead; nothing was restarted
        audited = Counter(c.execute("SELECT user_name, entity FROM audit_event WHERE action = 'read'"
                                    " AND outcome = 'allowed'").fetchall())
        created_events = {r[0] for r in c.execute("SELECT entity FROM audit_event WHERE action = 'create'")}
        stored = {f"Observation/{r[0]}" for r in c.execute(
            "SELECT id FROM resource WHERE res_type = 'Observation'")}
    short = {k: (n, audited[k]) for k, n in reads.items() if audited[k] < n}
    assert short == {}, f"read responses received without their AuditEvent: {short}"
    assert set(creates) <= stored
    unaudited = sorted(stored - created_events)
    assert unaudited == [], (f"{len(unaudited)} of {len(stored)} committed Observations have no create event "
                             f"(the write and its event must commit together): {unaudited[:5]}")
    keys = (tmp_path / "audit.key").read_text()
    report = verify_chain(store, keys=keys, checkpoint_path=tmp_path / "checkpoints.log")
    assert report.ok, report.problem
