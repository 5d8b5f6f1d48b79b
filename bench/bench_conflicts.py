"""Benchmark the conflict engine: detection per person (<= 20 medicines) and CP-SAT resolution (<= 8 conditions).

Run: python -m bench.bench_conflicts   (writes bench/results/conflicts.json)
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from pathlib import Path

from joinedup.conflicts.detect import build_record, detect
from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.resolve import resolve

RESULTS = Path(__file__).resolve().parent / "results" / "conflicts.json"
CONDITIONS = ["hypertension", "type2_diabetes", "copd", "asthma", "heart_failure", "ckd", "atrial_fibrillation", "ihd",
              "osteoarthritis", "osteoporosis", "depression", "gout", "peptic_ulcer", "falls", "frailty", "parkinsons"]


def _person(rng: random.Random, kb, n_meds: int, n_conds: int, pid: int) -> list[dict]:
    names = sorted(kb.medicines)
    res: list[dict] = [{"resourceType": "Patient", "id": f"p{pid}", "birthDate": "1945-06-01"}]
    for i, key in enumerate(rng.sample(names, n_meds)):
        text = f"{kb.display_of(key).capitalize()} {rng.choice([5, 10, 20, 50, 100, 500])}mg tablets"
        res.append({"resourceType": "MedicationStatement", "id": f"p{pid}m{i}", "status": "active",
                    "medicationCodeableConcept": {"text": text}, "subject": {"reference": f"Patient/p{pid}"},
                    **({"dosage": [{"asNeededBoolean": True}]} if rng.random() < 0.15 else {})})
    for i, c in enumerate(rng.sample(CONDITIONS, n_conds)):
        res.append({"resourceType": "Condition", "id": f"p{pid}c{i}", "code": {"text": kb.condition_display[c]},
                    "clinicalStatus": {"coding": [{"code": "active"}]}, "subject": {"reference": f"Patient/p{pid}"}})
    res.append({"resourceType": "Observation", "id": f"p{pid}o", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
                "valueQuantity": {"value": rng.randint(8, 95)}, "effectiveDateTime": "2025-09-01",
                "subject": {"reference": f"Patient/p{pid}"}})
    return res


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def main() -> dict:
    """Run the benchmark, print figures and write bench/results/conflicts.json."""
    t0 = time.perf_counter()
    kb = load_knowledge()
    load_s = time.perf_counter() - t0
    rng = random.Random(20251123)
    people = [_person(rng, kb, rng.randint(5, 20), rng.randint(2, 8), i) for i in range(3000)]
    det_ms: list[float] = []
    findings_n: list[int] = []
    for res in people:
        t = time.perf_counter()
        rec = build_record(kb, res)
        f = detect(kb, rec)
        det_ms.append((time.perf_counter() - t) * 1000)
        findings_n.append(len(f))
    res_ms: list[float] = []
    harm_before, harm_after, crit_left = 0, 0, 0
    w = kb.severity_weights
    for res in people[:300]:
        rec = build_record(kb, res)
        f = detect(kb, rec)
        t = time.perf_counter()
        out = resolve(kb, rec, f)
        res_ms.append((time.perf_counter() - t) * 1000)
        harm_before += sum(w[x.severity] for x in f)
        harm_after += sum(w[x["severity"]] for x in out["residual"])
        crit_left += sum(1 for x in out["residual"] if x["severity"] == "critical")
    # detection-only throughput as a proxy for the population screen (which is wired later)
    t = time.perf_counter()
    for res in people:
        detect(kb, build_record(kb, res))
    per_person = (time.perf_counter() - t) / len(people)
    result = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "knowledge_load_s": round(load_s, 3),
        "people": len(people),
        "medicines_per_person": "5-20",
        "conditions_per_person": "2-8",
        "detection_ms": {"median": round(statistics.median(det_ms), 3), "p95": round(_pct(det_ms, 0.95), 3),
                         "max": round(max(det_ms), 3)},
        "findings_per_person_mean": round(statistics.mean(findings_n), 2),
        "resolution_ms": {"n": len(res_ms), "median": round(statistics.median(res_ms), 2),
                          "p95": round(_pct(res_ms, 0.95), 2), "max": round(max(res_ms), 2)},
        "resolution_harm": {"before": harm_before, "after": harm_after, "critical_remaining": crit_left},
        "screen_100k_estimate_s": round(per_person * 100_000, 1),
        "targets": {"detection_median_ms": 2, "resolution_ms": 200, "screen_100k_s": 120},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"conflicts: knowledge load {load_s*1000:.0f} ms (once per process)")
    print(f"conflicts: detection per person (5-20 medicines): median {result['detection_ms']['median']} ms, "
          f"p95 {result['detection_ms']['p95']} ms (target median <= 2 ms)")
    print(f"conflicts: resolution (2-8 conditions): median {result['resolution_ms']['median']} ms, "
          f"p95 {result['resolution_ms']['p95']} ms, max {result['resolution_ms']['max']} ms (target <= 200 ms)")
    print(f"conflicts: weighted harm {harm_before} -> {harm_after}; critical findings remaining {crit_left}")
    print(f"conflicts: single-process detection for 100,000 people ~ {result['screen_100k_estimate_s']} s "
          f"(target <= 120 s)")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
