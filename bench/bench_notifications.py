"""Notification delivery under load: admission events at 50 per second reach every subscriber's inbox and an
external rest-hook receiver on loopback.

`joinedup serve` (two worker processes) runs against a fresh SQLite store with JOINEDUP_BENCH_NOTIFY_PATIENTS people
(default 40), each with a registered GP and a care team of a consultant, a key worker and a community nurse (five
user accounts, every one a subscriber of every person). A FHIR Subscription (`Encounter?class=IMP`, rest-hook,
payload application/fhir+json, one header) points at a tiny HTTP receiver started here on 127.0.0.1. The bench
then POSTs JOINEDUP_BENCH_NOTIFY_EVENTS admissions (default 500) at JOINEDUP_BENCH_NOTIFY_RATE per second
(default 50) through /fhir and measures, for every event, the time from sending the write to (a) the inbox item
being written for each subscriber (its `first` timestamp) and (b) the receiver getting the notification.

Writes bench/results/notifications.json with p50/p99/max latency and the share delivered within 1 s.
Bounded: at most 2,000 events and 120 s; loopback only.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import Served, write_result

MAX_EVENTS = 2000
MAX_SECONDS = 120


def _pct(samples: list[float]) -> dict:
    s = sorted(samples)
    if not s:
        return {"n": 0}
    return {"p50_ms": round(statistics.median(s), 1), "p99_ms": round(s[max(int(len(s) * 0.99) - 1, 0)], 1),
            "max_ms": round(s[-1], 1), "within_1s": round(sum(1 for x in s if x <= 1000) / len(s), 4), "n": len(s)}


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Receiver:
    """The external system: records when each notified Encounter arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.headers_ok = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                try:
                    for e in json.loads(body).get("entry", []):
                        me.arrived.setdefault(e["resource"]["id"], now)
                except ValueError:
                    pass
                if self.headers.get("X-Bench") == "yes":
                    me.headers_ok += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _setup(db_url: str, patients: int) -> tuple[list[str], dict[str, str], str]:
    from joinedup.governance.accounts import add_user, issue_token
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM

    gate = get_gate(db_url)
    gate.update(SYSTEM, "Organization", "bench-hosp", {"resourceType": "Organization", "id": "bench-hosp",
                                                        "name": "Bench Hospital"})
    gate.update(SYSTEM, "Location", "bench-ward", {"resourceType": "Location", "id": "bench-ward",
                                                    "name": "Ward 10 (Acute Medical Unit)"})
    staff = {"gp": "gp", "cons": "consultant", "kw": "care-coordinator", "nurse": "community-nurse",
             "nurse2": "community-nurse"}
    tokens = {}
    for key, role in staff.items():
        gate.update(SYSTEM, "Practitioner", f"bench-{key}", {"resourceType": "Practitioner", "id": f"bench-{key}",
                                                             "name": [{"family": key}]})
        add_user(gate, name=f"bench.{key}", role=role, practitioner=f"bench-{key}",
                 organization="bench-hosp", replace=True)
        tokens[key] = issue_token(gate, f"bench.{key}")
    add_user(gate, name="bench.admin", role="system", replace=True)
    tokens["admin"] = issue_token(gate, "bench.admin")
    pids = []
    for i in range(patients):
        pid = f"bench-p{i}"
        gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": f"P{i}"}],
                                             "generalPractitioner": [{"reference": "Practitioner/bench-gp"}]})
        gate.update(SYSTEM, "CareTeam", f"bench-ct{i}", {
            "resourceType": "CareTeam", "id": f"bench-ct{i}", "status": "active",
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"member": {"reference": f"Practitioner/bench-{k}"},
                             "role": [{"text": "care coordinator" if k == "kw" else k}]}
                            for k in ("cons", "kw", "nurse", "nurse2")]})
        pids.append(pid)
    gate.flush_audit()
    return pids, tokens, tokens["admin"]


def main() -> None:
    import httpx

    patients = int(os.environ.get("JOINEDUP_BENCH_NOTIFY_PATIENTS", "40"))
    events = min(int(os.environ.get("JOINEDUP_BENCH_NOTIFY_EVENTS", "500")), MAX_EVENTS)
    rate = float(os.environ.get("JOINEDUP_BENCH_NOTIFY_RATE", "50"))
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'notify.db'}"
        pids, tokens, admin = _setup(db_url, patients)
        rx = Receiver()
        try:
            with Served(db_url, workers=2) as srv, httpx.Client(base_url=srv.url, timeout=30, headers={
                    "Authorization": f"Bearer {admin}", "Prefer": "return=minimal"}) as c:
                r = c.post("/fhir/Subscription", json={
                    "resourceType": "Subscription", "status": "requested", "reason": "bench bed management",
                    "criteria": "Encounter?class=IMP", "channel": {
                        "type": "rest-hook", "endpoint": rx.url, "payload": "application/fhir+json",
                        "header": ["X-Bench: yes"]}})
                assert r.status_code == 201, r.text
                sent: dict[str, float] = {}
                write_ms = []
                started = time.time()
                interval = 1.0 / rate
                for i in range(events):
                    due = started + i * interval
                    if due > time.time():
                        time.sleep(due - time.time())
                    if time.time() - started > MAX_SECONDS:
                        break
                    t0 = time.time()
                    resp = c.post("/fhir/Encounter", json={
                        "resourceType": "Encounter", "status": "in-progress",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                        "subject": {"reference": f"Patient/{pids[i % len(pids)]}"},
                        "period": {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                        "location": [{"location": {"reference": "Location/bench-ward"}}]})
                    write_ms.append((time.time() - t0) * 1000)
                    assert resp.status_code == 201, resp.text
                    sent[resp.headers["Location"].split("/")[-3]] = t0
                elapsed = time.time() - started
                deadline = time.time() + 30
                subscribers = [k for k in tokens if k != "admin"]
                inbox_lat: list[float] = []
                missing_inbox = 0
                while time.time() < deadline:
                    inbox_lat, missing_inbox = [], 0
                    for key in subscribers:
                        got = httpx.get(f"{srv.url}/api/inbox", params={"limit": 500}, timeout=30,
                                        headers={"Authorization": f"Bearer {tokens[key]}"}).json()["items"]
                        first = {}
                        for it in got:
                            if it["source"]:
                                first[it["source"].split("/")[-1]] = _epoch(it["first"])
                        for eid, t0 in sent.items():
                            if eid in first:
                                inbox_lat.append((first[eid] - t0) * 1000)
                            else:
                                missing_inbox += 1
                    if (not missing_inbox or events > 500) and len(rx.arrived) >= len(sent):
                        break
                    time.sleep(0.5)
                hook_lat = [(rx.arrived[e] - t0) * 1000 for e, t0 in sent.items() if e in rx.arrived]
        finally:
            rx.close()
    checked = min(len(sent), 500)
    write_result("notifications", {
        "setup": {"people": patients, "subscribers_per_event": len(subscribers), "events": len(sent),
                  "target_rate_per_s": rate, "achieved_rate_per_s": round(len(sent) / elapsed, 1),
                  "server": "joinedup serve, 2 worker processes, SQLite",
                  "events_checked_in_inbox": checked},
        "write_ms": _pct(write_ms),
        "inbox_delivery_ms": _pct(inbox_lat),
        "inbox_items_missing": missing_inbox,
        "rest_hook_delivery_ms": _pct(hook_lat),
        "rest_hook_missing": len(sent) - len(hook_lat),
        "rest_hook_headers_ok": rx.headers_ok,
        "target": "every subscriber's inbox and the rest-hook receiver within 1 s (p99)",
    })


if __name__ == "__main__":
    main()
