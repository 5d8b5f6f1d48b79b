"""Write turns (store/turns.py): the writers of one SQLite file, in this process and in others, take turns at its
write lock. Every write of every process is kept; a writer waits while another process has the turn and goes on as
soon as it is given back; a turn held too long (a stopped process) is not waited for past TURN_WAIT, SQLite's own
lock still keeping writers apart; a thread already in its turn is not stopped by itself; and where the file beside
the database cannot be made, writes go on without turns between processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from joinedup.governance.gate import Gate, get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.store import turns

WRITER = textwrap.dedent("""
    import sys
    from joinedup.governance.gate import Gate, get_gate
    from joinedup.governance.identity import SYSTEM
    gate = get_gate(sys.argv[1])
    tag, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        gate.update(SYSTEM, "Organization", f"org-{tag}-{i}",
                    {"resourceType": "Organization", "id": f"org-{tag}-{i}", "name": f"Surgery {tag} {i}"})
    gate.flush_audit()
    print("done", flush=True)
""")

HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(repr(time.time()), flush=True)
    fcntl.flock(fd, fcntl.LOCK_UN)
""")


def _org(i: str) -> dict:
    return {"resourceType": "Organization", "id": f"org-{i}", "name": f"Surgery {i}"}


@pytest.fixture()
def sqlite_file(tmp_path, monkeypatch):
    for name in ("JOINEDUP_AUDIT_CHECKPOINT_FILE", "JOINEDUP_AUDIT_KEY_FILE"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    path = tmp_path / "turns.db"
    get_gate(f"sqlite:///{path}").update(SYSTEM, "Organization", "org-first", _org("first"))  # the schema, once
    return path


def _count(gate: Gate, prefix: str) -> int:
    return sum(1 for m in gate.search(SYSTEM, "Organization", [("_count", "1000")]).matches
               if m.id.startswith(prefix))


def test_writers_in_two_processes_and_two_threads_all_kept(sqlite_file):
    url = f"sqlite:///{sqlite_file}"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, tag, "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    gate = get_gate(url)
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            for i in range(40):
                gate.update(SYSTEM, "Organization", f"org-{tag}-{i}", _org(f"{tag}-{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err[-2000:]
    assert not errors
    assert [_count(gate, f"org-{t}-") for t in "abcd"] == [60, 60, 40, 40]
    assert (sqlite_file.parent / "turns.db-write.lock").exists()
    gate.flush_audit()
    report = gate.verify_audit()
    assert report.ok, report.summary


def test_a_writer_waits_for_another_process_and_goes_on_when_it_is_given_back(sqlite_file):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, f"{sqlite_file}-write.lock", "1.0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        gate = get_gate(f"sqlite:///{sqlite_file}")
        gate.update(SYSTEM, "Organization", "org-waited", _org("waited"))
        written_at = time.time()
        released_at = float(holder.stdout.readline())
    finally:
        holder.wait(30)
    assert written_at >= released_at  # it waited for the turn ...
    assert written_at - released_at < 5  # ... and went on once it was free
    assert gate.read(SYSTEM, "Organization", "org-waited").content["name"] == "Surgery waited"


def test_a_turn_held_too_long_is_not_waited_for(sqlite_file, monkeypatch):
    monkeypatch.setattr(turns, "TURN_WAIT", 0.5)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, f"{sqlite_file}-write.lock", "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        gate = get_gate(f"sqlite:///{sqlite_file}")
        started = time.monotonic()
        gate.update(SYSTEM, "Organization", "org-stopped", _org("stopped"))  # SQLite's own lock is free
        assert time.monotonic() - started < 30
        assert holder.poll() is None  # the holder still has its turn
    finally:
        holder.kill()
        holder.wait(30)
    assert gate.read(SYSTEM, "Organization", "org-stopped").content["name"] == "Surgery stopped"


def test_a_thread_in_its_turn_is_not_stopped_by_itself(sqlite_file):
    done = threading.Event()

    def nested() -> None:
        with turns.write_turn(str(sqlite_file)), turns.write_turn(str(sqlite_file)):
            pass
        with turns.write_turn(str(sqlite_file)):  # and the turn was given back whole
            done.set()

    t = threading.Thread(target=nested)
    t.start()
    t.join(10)
    assert done.is_set()
    fd = os.open(f"{sqlite_file}-write.lock", os.O_RDWR)
    try:  # nobody holds it now: another open file can take it at once
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_no_file_for_turns_still_writes(sqlite_file):
    (sqlite_file.parent / "elsewhere").mkdir()
    os.replace(sqlite_file, sqlite_file.parent / "elsewhere" / "turns.db")
    for suffix in ("-wal", "-shm"):
        if (side := sqlite_file.parent / f"turns.db{suffix}").exists():
            os.replace(side, sqlite_file.parent / "elsewhere" / f"turns.db{suffix}")
    moved = sqlite_file.parent / "elsewhere" / "turns.db"
    (sqlite_file.parent / "elsewhere" / "turns.db-write.lock").mkdir()  # where the file would go: a directory
    gate = get_gate(f"sqlite:///{moved}")
    gate.update(SYSTEM, "Organization", "org-unturned", _org("unturned"))
    assert gate.read(SYSTEM, "Organization", "org-unturned").content["name"] == "Surgery unturned"
