"""`joinedup hl7 listen --processes 2`: the listener accepts every connection and deals them out in turn to itself and
the other process (the connection itself handed over, SCM_RIGHTS), so each serves half of them; a message sent at once
on many connections - so to both processes - is applied once, every copy is acknowledged, and stopping the listener
stops every process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from joinedup.governance.identity import SYSTEM
from joinedup.interop.hl7 import mllp
from tests.interop.hl7.conftest import Ack, read_frame

pytestmark = pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="needs connections handed between processes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(args: list[str], env: dict[str, str], port: int, others: int) -> subprocess.Popen:
    """`joinedup ARGS`, once it listens for MLLP on `port` and has started `others` more listener processes."""
    proc = subprocess.Popen([sys.executable, "-m", "joinedup.cli", *args], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < others or not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the listener did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    if others:
        time.sleep(2)  # the other processes are serving once they have started
    return proc


def _assert_ended(pids: list[int]) -> None:
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a listener process outlived the process that started it"


@pytest.fixture
def listener(db_url):
    port = _free_port()
    proc = _start(["hl7", "listen", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"],
                  {"JOINEDUP_DATABASE_URL": db_url}, port, 1)
    yield proc, port
    children = _children(proc.pid)
    if proc.poll() is None:
        proc.kill()  # not even a chance to stop its other processes: they end with it all the same
        proc.wait(30)
    _assert_ended(children)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _send_at_once(port: int, messages: list[str]) -> list[Ack]:
    """Each message on its own connection, all sent together (connections opened first)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in messages]
    acks: list[Ack | None] = [None] * len(messages)
    go = threading.Barrier(len(messages))

    def one(i: int) -> None:
        go.wait()
        socks[i].sendall(mllp.frame(messages[i]))
        acks[i] = Ack(read_frame(socks[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s in socks:
        s.close()
    return [a for a in acks if a is not None]


def test_a_message_sent_to_both_processes_at_once_is_applied_once(feed, listener):
    proc, port = listener
    visit = f"VP-{feed.uid}"
    pv1 = {2: "I", 3: "WARD 1", 19: visit, 44: "20261204100000"}
    msg = feed.msg("A01", f"DUP-{feed.uid}", pv1=pv1)
    acks = _send_at_once(port, [msg] * 12)
    assert len(acks) == 12 and all(a.code == "AA" for a in acks), [a.text for a in acks]
    assert all(a.control_id == f"DUP-{feed.uid}" for a in acks)
    assert sum("duplicate" in a.seg("MSA")[3] for a in acks) == 11  # applied by exactly one of them
    enc = feed.search("Encounter", [("identifier", visit)])
    assert len(enc) == 1 and enc[0].content["meta"]["versionId"] == "1"
    feed.gate.flush_audit()
    pid = enc[0].content["subject"]["reference"].split("/")[1]
    applied = feed.gate.search(SYSTEM, "AuditEvent", [("patient", pid), ("subtype", "hl7-a01")]).matches
    assert len(applied) == 1


def test_both_processes_apply_different_people_and_stop_together(feed, listener):
    proc, port = listener
    messages = [feed.msg("A01", f"P{n}-{feed.uid}", pid=feed.pid(mrn=f"P{n}{feed.uid}", nhs=None),
                         pv1={2: "I", 3: "WARD 2", 19: f"VP{n}-{feed.uid}", 44: "20261204100000"})
                for n in range(10)]
    acks = _send_at_once(port, messages)
    assert [a.code for a in acks] == ["AA"] * 10, [a.text for a in acks]
    for n in range(10):
        enc = feed.search("Encounter", [("identifier", f"VP{n}-{feed.uid}")])
        assert len(enc) == 1 and enc[0].content["status"] == "in-progress"
    # then a discharge for each, on connections of their own: applied after the admissions, in order
    acks = _send_at_once(port, [feed.msg("A03", f"Q{n}-{feed.uid}", pid=feed.pid(mrn=f"P{n}{feed.uid}", nhs=None),
                                         pv1={2: "I", 3: "WARD 2", 19: f"VP{n}-{feed.uid}", 44: "20261204100000",
                                              45: "20261205100000"}) for n in range(10)])
    assert [a.code for a in acks] == ["AA"] * 10
    assert all(feed.search("Encounter", [("identifier", f"VP{n}-{feed.uid}")])[0].content["status"] == "finished"
               for n in range(10))
    others = _children(proc.pid)
    assert len(others) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    _assert_ended(others)
    assert not _listening(port)


def test_processes_need_a_port_and_a_count_of_at_least_one(db_url):
    env = {**os.environ, "JOINEDUP_DATABASE_URL": db_url}
    for args, says in ((["--port", "0", "--processes", "2"], "out of range"), (["--processes", "0"], "at least 1")):
        done = subprocess.run([sys.executable, "-m", "joinedup.cli", "hl7", "listen", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and says in done.stderr + done.stdout, done.stderr


def _established(pid: int, port: int) -> int:
    """How many established TCP connections to `port` process `pid` holds open (its sockets in /proc/PID/fd matched
    with /proc/net/tcp: local port, state 01 ESTABLISHED)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "01" and f[9] in inodes:
            count += 1
    return count


def test_connections_are_dealt_out_evenly_and_each_process_applies_its_own(feed, listener):
    """Eight connections held open: each of the two processes serves four (the kernel's own choice, SO_REUSEPORT,
    split them 2/6 or 3/5 in benchmark runs, so one process ran small batches while the other queued), and
    messages on every connection are applied and acknowledged in order."""
    proc, port = listener
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(8)]
    try:
        for n, s in enumerate(socks):  # one message on each: each connection is being served when it is answered
            s.sendall(mllp.frame(feed.msg("A01", f"E{n}-{feed.uid}", pid=feed.pid(mrn=f"E{n}{feed.uid}", nhs=None),
                                          pv1={2: "I", 3: "WARD 4", 19: f"VE{n}-{feed.uid}",
                                               44: "20261204100000"})))
        assert [Ack(read_frame(s)).code for s in socks] == ["AA"] * 8
        others = _children(proc.pid)
        assert len(others) == 1
        assert (_established(proc.pid, port), _established(others[0], port)) == (4, 4)
        for n, s in enumerate(socks):  # and the next message on each connection follows its first, in order
            s.sendall(mllp.frame(feed.msg("A03", f"F{n}-{feed.uid}", pid=feed.pid(mrn=f"E{n}{feed.uid}", nhs=None),
                                          pv1={2: "I", 3: "WARD 4", 19: f"VE{n}-{feed.uid}", 44: "20261204100000",
                                               45: "20261205100000"})))
        assert [Ack(read_frame(s)).code for s in socks] == ["AA"] * 8
    finally:
        for s in socks:
            s.close()
    assert all(feed.search("Encounter", [("identifier", f"VE{n}-{feed.uid}")])[0].content["status"] == "finished"
               for n in range(8))


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_runs_its_listener_in_the_processes_it_is_told(feed, db_url, processes):
    """`joinedup serve` with JOINEDUP_HL7_PROCESSES=2: its listener deals the connections out to itself and one more
    process, as `hl7 listen --processes 2` does; and that process ends when the server is stopped. With 1 (the
    default, as `make demo` runs it) the server serves every connection itself."""
    port = _free_port()
    proc = _start(["serve", "--port", str(_free_port())], {"JOINEDUP_DATABASE_URL": db_url, "JOINEDUP_HL7_PORT":
                  str(port), "JOINEDUP_HL7_PROCESSES": str(processes)}, port, processes - 1)
    socks: list[socket.socket] = []
    others: list[int] = []
    try:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
        for n, s in enumerate(socks):
            s.sendall(mllp.frame(feed.msg("A01", f"S{n}-{feed.uid}", pid=feed.pid(mrn=f"S{n}{feed.uid}", nhs=None),
                                          pv1={2: "I", 3: "WARD 5", 19: f"VS{n}-{feed.uid}",
                                               44: "20261204100000"})))
        assert [Ack(read_frame(s)).code for s in socks] == ["AA"] * 4
        others = _children(proc.pid)
        assert len(others) == processes - 1
        served = [_established(pid, port) for pid in (proc.pid, *others)]
        assert served == ([2, 2] if processes == 2 else [4])
        assert all(feed.search("Encounter", [("identifier", f"VS{n}-{feed.uid}")])[0].content["status"]
                   == "in-progress" for n in range(4))
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    _assert_ended(others)


def test_serve_refuses_fewer_than_one_listener_process(db_url):
    done = subprocess.run([sys.executable, "-m", "joinedup.cli", "serve", "--port", str(_free_port())],
                          env={**os.environ, "JOINEDUP_DATABASE_URL": db_url, "JOINEDUP_HL7_PORT": str(_free_port()),
                               "JOINEDUP_HL7_PROCESSES": "0"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "JOINEDUP_HL7_PROCESSES must be at least 1" in done.stderr + done.stdout, done.stderr
    assert len((done.stderr + done.stdout).strip().splitlines()) == 1
