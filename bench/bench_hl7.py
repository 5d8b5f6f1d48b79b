"""HL7 v2 ADT over MLLP: messages per second sustained, and the time from a message being sent to the notification
in the recipient's inbox.

The feed is the synthetic acute trust's own: `joinedup generate --patients N --hl7` (N = JOINEDUP_BENCH_HL7_PATIENTS,
default 5,000: about 13,000 messages) writes the population and `hl7/adt-feed.hl7` (A01/A03 per inpatient stay,
A04/A03 per A&E attendance, v2.4, in time order). A fresh SQLite store gets the directory and the people through `joinedup import`
(Organization, Practitioner, PractitionerRole, Location, HealthcareService, Patient, CareTeam - not the Encounters,
so the feed creates them as a live feed would) and a user account for every GP (the notifications' recipients).
`joinedup serve` then runs with JOINEDUP_HL7_PORT set, so its MLLP listener runs beside the web server as in
production.

The client opens JOINEDUP_BENCH_HL7_CONNECTIONS MLLP connections (default 8) and sends the whole feed (at most
JOINEDUP_BENCH_HL7_MESSAGES, default 20,000, and 120 s), each person's messages on one connection in feed order, each
connection one message at a time as its ACK comes back (MLLP original mode). It reports messages/s over the whole
feed and in its slowest and fastest 5-second windows (sustained, not a burst), the ACK codes, the server's CPU seconds
per message and the share of the host's CPU time taken by its hypervisor (steal: the machine is shared, and wall time
alone says little), and for every
admission (A01, inpatient) and A&E registration (A04) the time from sending the message to the GP's inbox item being
written (the item's `first` stamp, read back through the inbox service), as p50/p99/max.
Targets (issue 15): >= 500 messages/s and p99 <= 1 s. Loopback only.

The store is a SQLite file; with JOINEDUP_BENCH_HL7_DATABASE=postgresql it is `<name>_hl7` (`<name>_hl7_N` for N
processes; dropped and created again) on the PostgreSQL server JOINEDUP_BENCH_DATABASE_URL names, and the figures go
to hl7-postgresql.json. With N listener processes (JOINEDUP_HL7_PROCESSES=N, as `joinedup hl7 listen --processes N`
runs them) the figures go to hl7-N-processes.json. The bench runs one process, then one per core;
JOINEDUP_BENCH_HL7_PROCESSES=N runs only N.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import free_port, fresh_database, joinedup_bin, write_result

MAX_MESSAGES = 20000
MAX_SECONDS = 120
TYPES = ("Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService", "Patient", "CareTeam")


def _cpu_seconds(pid: int, seen: dict[int, float] | None = None) -> float:
    """User + system CPU time of a process (all its threads) and of its child processes (the listener processes
    of `hl7 listen --processes`) from /proc (Linux). `seen` keeps the last figure of each process, so that one
    that has ended still counts."""
    seen = {} if seen is None else seen
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seen[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        _cpu_seconds(int(child), seen)
    return sum(seen.values())


def _host_cpu() -> list[int]:
    """The host's CPU time counters (/proc/stat `cpu` line: user nice system idle iowait irq softirq steal ...)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def _stolen(before: list[int], after: list[int]) -> float | None:
    """Percent of the host's CPU time in between that its hypervisor gave to other guests (steal)."""
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8])
    return round(100 * delta[7] / total, 1) if total and len(delta) > 7 else None


def _windows(acked: list[float], t0: float, width: float) -> dict[str, Any]:
    """Messages acknowledged per second in consecutive windows of `width` seconds from the start (the last,
    partial window left out): each, in order, and the slowest and the fastest."""
    counts: dict[int, int] = {}
    for t in acked:
        counts[int((t - t0) // width)] = counts.get(int((t - t0) // width), 0) + 1
    full = [counts.get(i, 0) / width for i in range(int((max(acked, default=t0) - t0) // width))]
    return {"each": [round(x, 1) for x in full], "slowest": round(min(full), 1) if full else None,
            "fastest": round(max(full), 1) if full else None}


def _run(args: list[str], env: dict) -> None:
    done = subprocess.run([joinedup_bin(), *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"joinedup {args[0]} failed: {done.stderr.strip()[-500:]}")


def prepare(tmp: Path, patients: int, env: dict) -> tuple[Path, list[tuple[str, str]]]:
    """Generate the population and its feed, load the directory and the people, add an account per GP; returns the
    feed and the (user name, practitioner) pairs."""
    ics = tmp / "ics"
    _run(["generate", "--patients", str(patients), "--seed", "42", "--hl7", "--out", str(ics)], env)
    files = [str(p) for t in TYPES for p in sorted(ics.glob(f"{t}.*ndjson")) if p.name.split(".")[0] == t]
    _run(["import", "--quiet", "--workers", "1", *files], env)
    import orjson

    from joinedup.governance.accounts import add_user
    from joinedup.governance.gate import get_gate

    gate = get_gate(env["JOINEDUP_DATABASE_URL"])
    gps = []
    with open(ics / "PractitionerRole.ndjson", "rb") as fh:
        for line in fh:
            role = orjson.loads(line)
            if any((c.get("text") or "").upper() == "GP" for c in role.get("code") or []):
                pr = role["practitioner"]["reference"].split("/")[-1]
                org = role["organization"]["reference"].split("/")[-1]
                add_user(gate, name=f"bench-{pr}", role="gp", practitioner=pr, organization=org, replace=True)
                gps.append((f"bench-{pr}", pr))
    gate.flush_audit()
    return ics / "hl7" / "adt-feed.hl7", gps


def messages(feed: Path) -> list[str]:
    """The feed's messages (one per MSH; segments end with CR)."""
    text = feed.read_bytes().decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
    out = []
    for chunk in ("\r" + text).split("\rMSH|")[1:]:
        body = "\r".join(s for s in ("MSH|" + chunk).split("\r") if s.strip())
        out.append(body + "\r")
    return out


def _field(msg: str, seg: str, n: int) -> str:
    line = next((s for s in msg.split("\r") if s.startswith(seg + "|")), "")
    f = line.split("|")
    return f[n] if len(f) > n else ""


def _read_ack(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\x1c\x0d"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("listener closed the connection")
        buf += chunk
    return buf


def main() -> None:
    """One process (the listener beside the web server), then one listener process per core, unless
    JOINEDUP_BENCH_HL7_PROCESSES names one configuration."""
    chosen = os.environ.get("JOINEDUP_BENCH_HL7_PROCESSES")
    for processes in [int(chosen)] if chosen else sorted({1, os.cpu_count() or 1}):
        run(processes)


def run(processes: int) -> None:
    from joinedup.interop.hl7.mapping import safe_id

    patients = int(os.environ.get("JOINEDUP_BENCH_HL7_PATIENTS", "5000"))
    limit = min(int(os.environ.get("JOINEDUP_BENCH_HL7_MESSAGES", "20000")), MAX_MESSAGES)
    conns = int(os.environ.get("JOINEDUP_BENCH_HL7_CONNECTIONS", "8"))
    kind = os.environ.get("JOINEDUP_BENCH_HL7_DATABASE", "sqlite")
    tmp = Path(tempfile.mkdtemp(prefix="joinedup-bench-hl7-"))
    db_url = fresh_database(kind, tmp, "hl7" if processes == 1 else f"hl7_{processes}")
    env = dict(os.environ, JOINEDUP_DATABASE_URL=db_url, JOINEDUP_AUDIT_CHECKPOINT_FILE=str(tmp / "cp.log"),
               JOINEDUP_AUDIT_KEY_FILE=str(tmp / "audit.key"))
    os.environ.update({k: env[k] for k in ("JOINEDUP_AUDIT_CHECKPOINT_FILE", "JOINEDUP_AUDIT_KEY_FILE")})
    feed, gps = prepare(tmp, patients, env)
    msgs = messages(feed)[:limit]
    # each person's messages on one connection, in feed order
    lanes: list[list[str]] = [[] for _ in range(conns)]
    for msg in msgs:
        person = _field(msg, "PID", 3).split("~")[0].split("^")[0]
        lanes[zlib.crc32(person.encode()) % conns].append(msg)
    port = free_port()
    env["JOINEDUP_HL7_PORT"] = str(port)
    # with N > 1, listener processes (serve's deals the connections out), each with its notification worker
    env["JOINEDUP_HL7_PROCESSES"] = str(processes)
    command = ["serve", "--port", str(free_port()), "--workers", "1"]
    proc = subprocess.Popen([joinedup_bin(), *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu_seen: dict[int, float] = {}
    sent_at: dict[str, float] = {}
    codes: dict[str, int] = {}
    lock = threading.Lock()
    sent = [0]
    acked: list[float] = []  # when each ACK came back
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the MLLP listener did not start") from None
                time.sleep(0.2)
        stop_at = time.time() + MAX_SECONDS

        def worker(lane: list[str]) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                for msg in lane:
                    if time.time() > stop_at:
                        return
                    trigger = _field(msg, "MSH", 8).split("^")[1]
                    t = time.time()
                    s.sendall(b"\x0b" + msg.encode() + b"\x1c\x0d")
                    ack = _read_ack(s)
                    code = ack.split(b"MSA|", 1)[1][:2].decode()
                    with lock:
                        codes[code] = codes.get(code, 0) + 1
                        sent[0] += 1
                        acked.append(time.time())
                        if trigger in ("A01", "A04"):
                            sent_at[f"Encounter/{safe_id('RZA', 'v', _field(msg, 'PV1', 19))}"] = t

        threads = [threading.Thread(target=worker, args=(lane,)) for lane in lanes if lane]
        load_start = os.getloadavg()[0]
        time.sleep(3 if processes > 1 else 0)  # the other listener processes start
        cpu0 = _cpu_seconds(proc.pid, cpu_seen)
        client0 = time.process_time()
        host0 = _host_cpu()
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        host1 = _host_cpu()
        client_cpu = time.process_time() - client0
        cpu_send = _cpu_seconds(proc.pid, cpu_seen) - cpu0
        # the inboxes, read through the inbox service: when each admission's / attendance's item was first written
        from joinedup.care.notifications.service import inbox
        from joinedup.governance.accounts import get_user
        from joinedup.governance.gate import get_gate

        gate = get_gate(db_url)
        users = [u for name, _pr in gps if (u := get_user(gate, name)) is not None]
        first: dict[str, float] = {}
        wait_until = time.time() + 60
        while time.time() < wait_until:
            for u in users:
                for item in inbox(gate=gate, who=u, limit=100000)["items"]:
                    if item["event"] in ("admission", "ae-attendance") and item["source"]:
                        stamp = datetime.fromisoformat(item["first"].replace("Z", "+00:00")).timestamp()
                        first[item["source"]] = min(stamp, first.get(item["source"], stamp))
            if len(first.keys() & sent_at.keys()) >= len(sent_at):
                break
            time.sleep(1)
        cpu_all = _cpu_seconds(proc.pid, cpu_seen) - cpu0
        lat = sorted((first[k] - v) * 1000 for k, v in sent_at.items() if k in first)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    figures = {
        "feed": f"joinedup generate --patients {patients} --seed 42 --hl7 (hl7/adt-feed.hl7)",
        "messages": sent[0], "connections": conns, "seconds": round(elapsed, 2),
        "messages_per_second": round(sent[0] / elapsed, 1) if elapsed else 0.0,
        "messages_per_second_in_5s_windows": _windows(acked, t0, 5.0), "acks": codes,
        "server_cpu_seconds": {"sending": round(cpu_send, 2), "until_inboxes_complete": round(cpu_all, 2),
                               "ms_per_message": round(cpu_all * 1000 / sent[0], 2) if sent[0] else None},
        # the sending client shares the machine's two cores with the server
        "client_cpu_seconds": {"sending": round(client_cpu, 2),
                               "ms_per_message": round(client_cpu * 1000 / sent[0], 2) if sent[0] else None},
        "sent_to_inbox_ms": {"events": len(sent_at), "delivered": len(lat), "missing": len(sent_at) - len(lat),
                             "p50": round(statistics.median(lat), 1) if lat else None,
                             "p99": round(lat[max(int(len(lat) * 0.99) - 1, 0)], 1) if lat else None,
                             "max": round(lat[-1], 1) if lat else None},
        "targets": {"messages_per_second": 500, "p99_ms": 1000},
        "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "host_cpu_stolen_percent": _stolen(host0, host1),
        "server": "joinedup serve --workers 1" + (f", JOINEDUP_HL7_PROCESSES={processes}" if processes > 1 else ""),
        "database": kind,
        "note": f"one {'PostgreSQL' if kind == 'postgresql' else 'SQLite'} store; `joinedup serve --workers 1` "
                "with the MLLP listener in the same process (or, with JOINEDUP_BENCH_HL7_PROCESSES=N, in N processes: "
                "JOINEDUP_HL7_PROCESSES); server CPU counts every listener process; the machine (2 cores) is shared "
                "with other jobs (see the load average)",
    }
    # one file per configuration: hl7.json (one process, SQLite), hl7-2-processes.json, hl7-postgresql.json, ...
    write_result("hl7" + (f"-{processes}-processes" if processes > 1 else "")
                 + ("" if kind == "sqlite" else f"-{kind}"), figures)


if __name__ == "__main__":
    main()
