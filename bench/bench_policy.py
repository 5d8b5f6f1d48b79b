"""Policy overhead on a single read: the legitimate-relationship, consent and seal check, in-process and over HTTP.

A population of JOINEDUP_BENCH_POLICY_PATIENTS people (default 20,000; each registered with one of ten
practices, with observations, some sealed, some objections) is loaded into SQLite. The same reads are then timed:

* in-process: `store.read` (no gate), `gate.read` as the integration account (role check only), and
  `gate.read` as a GP (relationship + consent + seal facts from the cache); the policy overhead is the
  difference between the last two; `policy.decide` with the facts is also timed alone;
* over HTTP (`joinedup serve`, sequential requests): the same read as the integration account and as the GP.

Writes bench/results/policy.json with p50/p99 in milliseconds.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Served, write_result

CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def _pct(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(statistics.median(s), 4), "p99_ms": round(s[int(len(s) * 0.99) - 1], 4),
            "n": len(s)}


def _time(fn, keys, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        for k in keys:
            t0 = time.perf_counter()
            fn(k)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _paired(fa, fb, keys) -> tuple[list[float], list[float]]:
    """Time two ways of doing the same thing, interleaved (alternating which goes first) to cancel drift."""
    a, b = [], []
    for i, k in enumerate(keys):
        order = ((fa, a), (fb, b)) if i % 2 == 0 else ((fb, b), (fa, a))
        for fn, out in order:
            t0 = time.perf_counter()
            fn(k)
            out.append((time.perf_counter() - t0) * 1000)
    return a, b


def _population(n: int) -> list[dict]:
    res = []
    rnd = random.Random(5)
    for i in range(n):
        pid = f"bp-{i:07d}"
        practice = f"practice-{i % 10}"
        res.append({"resourceType": "Patient", "id": pid, "meta": {"source": f"Organization/{practice}"},
                    "generalPractitioner": [{"reference": f"Organization/{practice}"}], "gender": "female",
                    "birthDate": "1950-01-01"})
        for j in range(4):
            meta = {"source": f"Organization/{practice if j < 3 else 'hosp-1'}"}
            if rnd.random() < 0.05:
                meta["security"] = [{"system": CONF, "code": "R"}]
            res.append({"resourceType": "Observation", "id": f"{pid}-o{j}", "meta": meta, "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 120 + j}})
        if i % 50 == 0:
            res.append({"resourceType": "Consent", "id": f"{pid}-c", "status": "active",
                        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                              "code": "patient-privacy"}]},
                        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                        "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
    return res


def main() -> dict:
    n = int(os.environ.get("JOINEDUP_BENCH_POLICY_PATIENTS", "20000"))
    reads = int(os.environ.get("JOINEDUP_BENCH_POLICY_READS", "5000"))
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-policy-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'policy.db'}"
        os.environ["JOINEDUP_DATABASE_URL"] = db_url
        os.environ.setdefault("JOINEDUP_SECRET_KEY", "bench")
        from joinedup.governance import policy
        from joinedup.governance.accounts import add_user, issue_token
        from joinedup.governance.gate import get_gate
        from joinedup.governance.identity import SYSTEM, Principal
        from joinedup.store.repository import prepare

        gate = get_gate(db_url)
        t0 = time.perf_counter()
        items = _population(n)
        for i in range(0, len(items), 5000):
            gate.import_resources(SYSTEM, [prepare(r, params=gate.params) for r in items[i:i + 5000]],
                                  label="bench")
        gate.flush_audit()
        gate.optimize()
        print(f"loaded {len(items):,} resources ({n:,} people) in {time.perf_counter() - t0:.1f}s")
        gp = Principal("bench-gp", "gp", practitioner_id="gp-0", organization_id="practice-0")
        rnd = random.Random(7)
        mine = [i for i in range(n) if i % 10 == 0 and i % 50 != 0]
        keys = [f"bp-{rnd.choice(mine):07d}-o{rnd.randint(0, 2)}" for _ in range(reads)]
        keys = [k for k in keys if gate.visible(gp, gate.store_for_tests.read("Observation", k))]
        # warm caches (facts, statements), then measure each way in turn
        for k in keys[:500]:
            gate.read(gp, "Observation", k)
            gate.read(SYSTEM, "Observation", k)
        raw = _time(lambda k: gate.store_for_tests.read("Observation", k), keys)
        as_system, as_gp = _paired(lambda k: gate.read(SYSTEM, "Observation", k),
                                   lambda k: gate.read(gp, "Observation", k), keys)
        stored = [gate.store_for_tests.read("Observation", k) for k in keys[:2000]]

        def check(s) -> None:
            policy.decide(gp, "read", "Observation", patient_id=s.patient_id,
                          facts=gate.facts_for(gp, s.patient_id, s))

        decide_only = _time(check, stored, repeat=3)
        gate.flush_audit()
        in_process = {"store_read": _pct(raw), "gate_read_system": _pct(as_system), "gate_read_gp": _pct(as_gp),
                      "policy_check_alone": _pct(decide_only)}
        in_process["policy_overhead_p50_ms"] = round(in_process["gate_read_gp"]["p50_ms"]
                                                     - in_process["gate_read_system"]["p50_ms"], 4)
        in_process["policy_overhead_p99_ms"] = round(in_process["gate_read_gp"]["p99_ms"]
                                                     - in_process["gate_read_system"]["p99_ms"], 4)
        print(f"in-process: {in_process}")

        add_user(gate, name="bench-admin", role="system", replace=True)
        add_user(gate, name="bench-gp", role="gp", practitioner="gp-0", organization="practice-0",
                 replace=True)
        tokens = {u: issue_token(gate, u) for u in ("bench-admin", "bench-gp")}
        import httpx

        http: dict = {}
        with Served(db_url, workers=1) as srv:
            clients = {u: httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {t}"}, timeout=30)
                       for u, t in tokens.items()}
            sample = keys[:2000]
            for c in clients.values():  # warm up
                for k in sample[:300]:
                    assert c.get(f"/fhir/Observation/{k}").status_code == 200
            ca, cg = clients["bench-admin"], clients["bench-gp"]
            t_sys, t_gp = _paired(lambda k: ca.get(f"/fhir/Observation/{k}"),
                                  lambda k: cg.get(f"/fhir/Observation/{k}"), sample)
            http["system"], http["gp"] = _pct(t_sys), _pct(t_gp)
            for c in clients.values():
                c.close()
        http["policy_overhead_p50_ms"] = round(http["gp"]["p50_ms"] - http["system"]["p50_ms"], 4)
        http["policy_overhead_p99_ms"] = round(http["gp"]["p99_ms"] - http["system"]["p99_ms"], 4)
        print(f"http: {http}")
    figures = {"people": n, "resources": len(items), "database": "sqlite (WAL)", "in_process": in_process,
               "http_sequential": http, "budget": {"policy_overhead_p50_ms": 1.0},
               "meets_budget": in_process["policy_overhead_p50_ms"] <= 1.0
               and http["policy_overhead_p50_ms"] <= 1.0}
    write_result("policy", figures)
    return figures


if __name__ == "__main__":
    main()
