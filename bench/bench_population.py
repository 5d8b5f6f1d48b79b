"""Population health speed: every long-term condition register (with its care processes) and every risk and burden
score for a generated population (default 20,000 people; BENCH_POPULATION_PATIENTS=100000 for the larger run).

Reads the generated NDJSON directly (the engine's own cost, without the store): grouping by person, recognising
each record's facts, then each score and the registers separately, seconds each. Writes bench/results/population.json.
The machine is shared with other agents, so figures vary between runs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from bench.common import write_result  # noqa: E402


def _load(out: Path):
    people, items = {}, defaultdict(list)
    for path in sorted(out.glob("*.ndjson")):
        if path.name == "ground-truth.ndjson":
            continue
        with path.open("rb") as fh:
            for line in fh:
                r = orjson.loads(line)
                if r["resourceType"] == "Patient":
                    people[r["id"]] = r
                    continue
                ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
                if ref.startswith("Patient/"):
                    items[ref[8:]].append(r)
    return people, items


def main() -> None:
    from joinedup.population.registers import engine
    from joinedup.population.risk import facts as F
    from joinedup.population.risk import scores
    from joinedup.synth import service as synth

    n = int(os.environ.get("BENCH_POPULATION_PATIENTS", "20000"))
    figures: dict = {"patients": n, "note": "machine shared with other agents (2 cores, 8 agents): figures vary",
                     "seconds": {}}
    secs = figures["seconds"]
    cpu = figures["cpu_seconds"] = {}

    class timed:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self):
            self.t, self.c = time.perf_counter(), time.process_time()

        def __exit__(self, *exc):
            secs[self.name] = round(time.perf_counter() - self.t, 2)
            cpu[self.name] = round(time.process_time() - self.c, 2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ics"
        with timed("generate"):  # cpu: this process only (the generator's worker processes are not counted)
            synth.generate(patients=n, seed=18, out=out)
        today = date.fromisoformat(json.loads((out / "manifest.json").read_text())["today"])
        with timed("read_and_group_ndjson"):
            people, items = _load(out)
    F._kb()
    scores.knowledge()
    engine.knowledge()
    with timed("recognise_facts"):
        facts = [F.build(p, items[pid]) for pid, p in people.items()]
    for name, fn in (("cambridge_multimorbidity_score", lambda f: scores.cambridge(f, today)),
                     ("electronic_frailty_index", lambda f: scores.efi(f, today)),
                     ("charlson", lambda f: scores.charlson(f.icd10, age=f.age_on(today))),
                     ("regular_medicines", scores.regular_medicines),
                     ("treatment_burden", lambda f: scores.treatment_burden(f, today))):
        with timed(name):
            for f in facts:
                fn(f)
    sizes: dict[str, int] = defaultdict(int)
    overdue = 0
    with timed("registers_and_care_processes"):
        for f in facts:
            if f.deceased:
                continue
            r = engine.person_registers(f, today)
            overdue += r["overdue"]
            for reg in r["registers"]:
                sizes[reg["register"]] += 1
    for d in (secs, cpu):
        d["total_engine"] = round(sum(v for k, v in d.items() if k != "generate"), 2)
    figures["register_sizes"] = dict(sorted(sizes.items()))
    figures["care_processes_overdue"] = overdue
    figures["people"] = len(people)
    write_result("population", figures)


if __name__ == "__main__":
    main()
