"""A key worker's worklist of 200 people: server time of "My people" (page and API) and "My tasks".

A population of JOINEDUP_BENCH_CARE_PATIENTS people (default 5,000) is loaded into SQLite: each has a care team
(usual GP, community nurse and one of 25 key workers), a personalised care and support plan with three owned
actions (a quarter overdue), two tasks across organisations (a fifth overdue) and some observations; one in
twenty is in hospital today (an in-progress inpatient encounter). Key worker kw-0 has 200 people. The app is
served (`joinedup serve`, one worker) and the worklists are requested sequentially as kw-0: the page's
Server-Timing header gives server time (data through the gate + template rendering); wall-clock times over
loopback are recorded too. Target: ≤ 300 ms server time for 200 people.

Writes bench/results/care_worklist.json.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import Served, write_result

KEY_WORKERS = 25
TARGET_MS = 300.0
PLAN_SYSTEM = "https://joinedup.example/fhir/CodeSystem/care-plan-kind"
OWNER_ORG = "https://joinedup.example/fhir/StructureDefinition/task-owner-organization"


def _day(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def _directory() -> list[dict]:
    res = [{"resourceType": "Organization", "id": oid, "name": name} for oid, name in
           (("practice-0", "Bench Surgery"), ("comm-0", "Bench Community Trust"), ("hosp-0", "Bench Hospital"))]
    staff = [(f"kw-{k}", "comm-0", "Care coordinator") for k in range(KEY_WORKERS)]
    staff += [("gp-0", "practice-0", "GP"), ("nurse-0", "comm-0", "Community nurse"), ("cons-0", "hosp-0", "Consultant")]
    for pid, org, role in staff:
        res.append({"resourceType": "Practitioner", "id": pid, "name": [{"given": ["Bench"], "family": pid}]})
        res.append({"resourceType": "PractitionerRole", "id": f"role-{pid}", "practitioner": {"reference": f"Practitioner/{pid}"},
                    "organization": {"reference": f"Organization/{org}"}, "code": [{"text": role}]})
    return res


def _person(i: int) -> list[dict]:
    pid = f"cw-{i:06d}"
    ref = {"reference": f"Patient/{pid}"}
    kw = f"kw-{i % KEY_WORKERS}"
    out: list[dict] = [
        {"resourceType": "Patient", "id": pid, "birthDate": f"19{30 + i % 60:02d}-0{1 + i % 9}-1{i % 9}",
         "name": [{"given": ["Person"], "family": f"Bench{i:06d}"}],
         "identifier": [{"system": "https://joinedup.example/Id/synthetic-person", "value": pid}],
         "generalPractitioner": [{"reference": "Organization/practice-0"}, {"reference": "Practitioner/gp-0"}]},
        {"resourceType": "CareTeam", "id": f"{pid}-ct", "status": "active", "subject": ref,
         "participant": [
             {"role": [{"text": "GP"}], "member": {"reference": "Practitioner/gp-0"},
              "onBehalfOf": {"reference": "Organization/practice-0"}},
             {"role": [{"text": "Community nurse"}], "member": {"reference": "Practitioner/nurse-0"},
              "onBehalfOf": {"reference": "Organization/comm-0"}},
             {"role": [{"text": "care coordinator"}], "member": {"reference": f"Practitioner/{kw}"},
              "onBehalfOf": {"reference": "Organization/comm-0"}}],
         "managingOrganization": [{"reference": "Organization/practice-0"}]},
        {"resourceType": "CarePlan", "id": f"{pid}-plan", "status": "active", "intent": "plan", "subject": ref,
         "category": [{"coding": [{"system": PLAN_SYSTEM, "code": "personalised-care-and-support-plan"}]}],
         "description": "Staying at home", "activity": [
             {"id": f"a{n}", "detail": {
                 "kind": "Task", "status": "not-started", "description": f"Action {n}",
                 "scheduledPeriod": {"end": _day(-3 if (n == 0 and i % 4 == 0) else 10 + n)},
                 "performer": [{"reference": f"Practitioner/{kw if n == 0 else 'nurse-0'}", "display": kw},
                               {"reference": "Organization/comm-0", "display": "Bench Community Trust"}]}}
             for n in range(3)]},
    ]
    for n in range(2):
        out.append({"resourceType": "Task", "id": f"{pid}-t{n}", "status": "requested", "intent": "order",
                    "priority": "routine", "description": f"Task {n}", "for": ref, "authoredOn": _day(-10),
                    "owner": {"reference": "Practitioner/cons-0" if n else f"Practitioner/{kw}"},
                    "restriction": {"period": {"end": _day(-2 if (n == 0 and i % 5 == 0) else 5)}},
                    "extension": [{"url": OWNER_ORG, "valueReference": {"reference": "Organization/hosp-0"}}]})
    if i % 20 == 0:
        out.append({"resourceType": "Encounter", "id": f"{pid}-adm", "status": "in-progress",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": ref, "period": {"start": _day(-1) + "T09:00:00Z"},
                    "location": [{"location": {"display": "Ward 3"}}]})
    for n in range(6):
        out.append({"resourceType": "Observation", "id": f"{pid}-o{n}", "status": "final", "subject": ref,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "effectiveDateTime": _day(-n * 30) + "T10:00:00Z",
                    "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org",
                                      "code": "/min"}})
    return out


def _stats(xs: list[float]) -> dict:
    s = sorted(xs)
    return {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(s[max(0, int(len(s) * 0.95) - 1)], 1),
            "max_ms": round(s[-1], 1), "n": len(s)}


def main() -> dict:
    n = int(os.environ.get("JOINEDUP_BENCH_CARE_PATIENTS", "5000"))
    rounds = int(os.environ.get("JOINEDUP_BENCH_CARE_ROUNDS", "40"))
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-care-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'care.db'}"
        os.environ["JOINEDUP_DATABASE_URL"] = db_url
        os.environ.setdefault("JOINEDUP_SECRET_KEY", "bench")
        import httpx

        from joinedup.governance.accounts import add_user, issue_token
        from joinedup.governance.gate import get_gate
        from joinedup.governance.identity import SYSTEM
        from joinedup.store.repository import prepare

        gate = get_gate(db_url)
        t0 = time.perf_counter()
        items = _directory()
        for i in range(n):
            items += _person(i)
        for i in range(0, len(items), 5000):
            gate.import_resources(SYSTEM, [prepare(r, params=gate.params) for r in items[i:i + 5000]],
                                  label="bench")
        gate.flush_audit()
        gate.optimize()
        load_s = time.perf_counter() - t0
        print(f"loaded {len(items):,} resources ({n:,} people) in {load_s:.1f}s")
        add_user(gate, name="bench-kw", role="care-coordinator", practitioner="kw-0", organization="comm-0",
                 replace=True)
        token = issue_token(gate, "bench-kw")
        figures: dict = {"population": n, "resources": len(items), "target_ms": TARGET_MS, "rounds": rounds}
        with Served(db_url, workers=1) as srv:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=srv.url, headers=headers, timeout=60) as c:
                api = c.get("/api/care/my-people").json()
                people = len(api["people"])
                figures.update(people=people, in_hospital=api["in_hospital"], with_overdue=api["with_overdue"])
                for _ in range(5):  # warm caches (facts, statements, templates)
                    c.get("/care/people")
                    c.get("/api/care/my-people")
                page_server, page_wall, api_wall, tasks_wall = [], [], [], []
                for _ in range(rounds):
                    t = time.perf_counter()
                    r = c.get("/care/people")
                    page_wall.append((time.perf_counter() - t) * 1000)
                    m = re.search(r"dur=([\d.]+)", r.headers.get("server-timing", ""))
                    if m:
                        page_server.append(float(m.group(1)))
                    t = time.perf_counter()
                    c.get("/api/care/my-people")
                    api_wall.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    c.get("/api/care/my-tasks")
                    tasks_wall.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200 and r.text.count('href="/patients/cw-') >= people
        figures["my_people_page_server_time"] = _stats(page_server)
        figures["my_people_page_wall"] = _stats(page_wall)
        figures["my_people_api_wall"] = _stats(api_wall)
        figures["my_tasks_api_wall"] = _stats(tasks_wall)
        figures["meets_target"] = bool(page_server) and figures["my_people_page_server_time"]["p95_ms"] <= TARGET_MS
        write_result("care_worklist", figures)
        return figures


if __name__ == "__main__":
    main()
