"""HL7 v2 ADT over MLLP: messages per second sustained, and time from a message being sent to the notification in
the inbox.

`joinedup serve` runs against a fresh SQLite store with JOINEDUP_HL7_PORT set, so its MLLP listener runs beside the
web server as in production. The store holds one acute trust (ODS RZA) and JOINEDUP_BENCH_HL7_PATIENTS people
(default 200), each registered with a GP who has a user account (the notification's recipient). The bench opens
JOINEDUP_BENCH_HL7_CONNECTIONS MLLP connections (default 4) and sends JOINEDUP_BENCH_HL7_MESSAGES messages in all
(default 1,000; at most 5,000 and 120 s): for each stay an A01 admission and later its A03 discharge, as fast as the
acknowledgements come back (MLLP is one message at a time per connection). It reports messages/s (all ACKs AA) and,
for each admission, the time from sending it to the GP's inbox item being written (the item's `first` stamp), as
p50/p99. Targets: >= 500 messages/s and p99 <= 1 s. Loopback only.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.common import free_port, joinedup_bin, write_result

MAX_MESSAGES = 5000
MAX_SECONDS = 120


def _nhs(rng: random.Random) -> str:
    from joinedup.fhir.nhs_number import check_digit

    while True:
        nine = "999" + "".join(rng.choice("0123456789") for _ in range(6))
        d = check_digit(nine)
        if d is not None:
            return nine + str(d)


def _setup(db_url: str, patients: int) -> list[str]:
    from joinedup.governance.accounts import add_user
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM

    gate = get_gate(db_url)
    gate.update(SYSTEM, "Organization", "org-acute", {
        "resourceType": "Organization", "id": "org-acute", "name": "Bench Acute Trust",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RZA"}]})
    gate.update(SYSTEM, "Organization", "org-gp", {"resourceType": "Organization", "id": "org-gp", "name": "Surgery"})
    gate.update(SYSTEM, "Practitioner", "pr-gp", {"resourceType": "Practitioner", "id": "pr-gp",
                                                  "name": [{"family": "Gp"}]})
    add_user(gate, name="bench-gp", role="gp", practitioner="pr-gp", organization="org-gp", replace=True)
    rng = random.Random(7)
    numbers = []
    for i in range(patients):
        nhs = _nhs(rng)
        numbers.append(nhs)
        gate.update(SYSTEM, "Patient", f"p{i}", {
            "resourceType": "Patient", "id": f"p{i}", "meta": {"source": "Organization/org-gp"},
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": f"Person{i}", "given": ["Bench"]}], "birthDate": "1950-01-01",
            "generalPractitioner": [{"reference": "Organization/org-gp"}, {"reference": "Practitioner/pr-gp"}]})
    gate.flush_audit()
    return numbers


def _message(trigger: str, control: str, mrn: str, nhs: str, visit: str, start: str, end: str = "") -> bytes:
    pv1 = ["PV1", "1", "I", "WARD 10^1^A"] + [""] * 15 + [visit] + [""] * 24 + [start, end]
    structure = "ADT_A01" if trigger == "A01" else "ADT_A03"
    stamp = end or start
    text = "\r".join([f"MSH|^~\\&|PAS|RZA|JOINEDUP|JOINEDUP|{stamp}||ADT^{trigger}^{structure}|{control}|P|2.4",
                      f"EVN|{trigger}|{stamp}", f"PID|1||{mrn}^^^RZA^MR~{nhs}^^^NHS^NH||PERSON^BENCH||19500101|F",
                      "|".join(pv1).rstrip("|")]) + "\r"
    return b"\x0b" + text.encode() + b"\x1c\x0d"


def _read_ack(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\x1c\x0d"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("listener closed the connection")
        buf += chunk
    return buf


def main() -> None:
    import subprocess

    import sqlalchemy as sa

    patients = int(os.environ.get("JOINEDUP_BENCH_HL7_PATIENTS", "200"))
    total = min(int(os.environ.get("JOINEDUP_BENCH_HL7_MESSAGES", "1000")), MAX_MESSAGES)
    conns = int(os.environ.get("JOINEDUP_BENCH_HL7_CONNECTIONS", "4"))
    tmp = Path(tempfile.mkdtemp(prefix="joinedup-bench-hl7-"))
    db_url = f"sqlite:///{tmp / 'hl7.db'}"
    numbers = _setup(db_url, patients)
    port = free_port()
    env = dict(os.environ, JOINEDUP_DATABASE_URL=db_url, JOINEDUP_HL7_PORT=str(port),
               JOINEDUP_AUDIT_CHECKPOINT_FILE=str(tmp / "cp.log"), JOINEDUP_AUDIT_KEY_FILE=str(tmp / "audit.key"))
    proc = subprocess.Popen([joinedup_bin(), "serve", "--port", str(free_port()), "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        sent_at: dict[str, float] = {}
        codes: dict[str, int] = {}
        lock = threading.Lock()
        stays = total // 2
        per_conn = [list(range(c, stays, conns)) for c in range(conns)]
        stop_at = time.time() + MAX_SECONDS
        sent = [0]

        def worker(stay_ids: list[int]) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                for k in stay_ids:
                    if time.time() > stop_at:
                        return
                    i = k % patients
                    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
                    visit = f"B{k}"
                    for trigger in ("A01", "A03"):
                        msg = _message(trigger, f"{visit}-{trigger}", f"M{i}", numbers[i], visit, now,
                                       now if trigger == "A03" else "")
                        t = time.time()
                        s.sendall(msg)
                        ack = _read_ack(s)
                        code = ack.split(b"MSA|", 1)[1][:2].decode()
                        with lock:
                            codes[code] = codes.get(code, 0) + 1
                            sent[0] += 1
                            if trigger == "A01":
                                sent_at[f"Encounter/rza-v-{visit.lower()}"] = t

        threads = [threading.Thread(target=worker, args=(ids,)) for ids in per_conn]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        # the inbox: when each admission's item was first written
        from joinedup.governance.gate import get_gate
        from joinedup.store import schema

        gate = get_gate(db_url)
        inbox = schema.inbox_item
        first: dict[str, float] = {}
        wait_until = time.time() + 30
        while time.time() < wait_until:
            with gate.store_for_tests.reading() as conn:
                rows = conn.execute(sa.select(inbox.c.source_ref, inbox.c.first_at).where(
                    inbox.c.event_type == "admission")).all()
            first = {r[0]: datetime.fromisoformat(r[1].replace("Z", "+00:00")).timestamp() for r in rows}
            if len(first) >= len(sent_at):
                break
            time.sleep(0.5)
        lat = sorted((first[k] - v) * 1000 for k, v in sent_at.items() if k in first)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    load = os.getloadavg()
    figures = {
        "messages": sent[0], "connections": conns, "seconds": round(elapsed, 2),
        "messages_per_second": round(sent[0] / elapsed, 1) if elapsed else 0.0, "acks": codes,
        "admission_to_inbox_ms": {"n": len(lat), "missing": len(sent_at) - len(lat),
                                  "p50": round(statistics.median(lat), 1) if lat else None,
                                  "p99": round(lat[max(int(len(lat) * 0.99) - 1, 0)], 1) if lat else None,
                                  "max": round(lat[-1], 1) if lat else None},
        "targets": {"messages_per_second": 500, "p99_ms": 1000},
        "load_average_1m_at_end": round(load[0], 2),
        "note": "one SQLite store, serve with one worker; the machine is shared with other jobs (see load average)",
    }
    write_result("hl7", figures)


if __name__ == "__main__":
    main()
