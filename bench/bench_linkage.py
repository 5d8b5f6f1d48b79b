"""Record linkage (Splink, DuckDB): accuracy against the generator's ground truth, and time at scale.

Accuracy: `joinedup generate` writes JOINEDUP_BENCH_LINKAGE_PEOPLE people (default 10,000); their Patient records
(the GP's, and the council's social care records, some without an NHS number and with nicknames, surname typos,
day/month swaps and older addresses) are imported into a fresh SQLite store. The model is trained and run through
the service exactly as `joinedup link train` and `joinedup link run` do (people read through the gate as the
integration account; confirmed links and review requests written through the gate). Reported: precision, recall and
F1 of the confirmed links against ground-truth.ndjson (`same_person` records with `no_nhs_number`), at the default
thresholds, and the clerical review queue per 10,000 people.

Scale: the model's training and scoring are timed at 100,000 people (JOINEDUP_BENCH_LINKAGE_SCALES, default
"100000"; "100000,1000000" adds a million, which ran for over 12 minutes and 11 GB on this shared machine without
finishing, so the million figure is projected from the 100,000 run), on comparison rows drawn from the generated population's own values (each field sampled
independently, so blocking sees realistic value frequencies), with records to link in the generated population's
proportion. Reading people through the gate is measured on the accuracy run (records/s) and projected to each scale
(the scale rows are not written to a store). The machine is shared with other agents, so times are upper bounds.

Scale on a real generated population (JOINEDUP_BENCH_LINKAGE_ICS=DIR, a `joinedup generate` output, and
JOINEDUP_BENCH_LINKAGE_ICS_PEOPLE, default "100000,1000000"): for each size, the Patient files of the first chunks
holding that many people are imported into a fresh SQLite store, then `service.train` and `service.run` run exactly
as `joinedup link train` and `joinedup link run` do (people read through the gate, confirmed links and review
requests written through it), and the confirmed links are scored against the population's ground truth. Nothing is
sampled or projected: this is the issue's "time for 100,000 and 1,000,000 people" end to end.
"""

from __future__ import annotations

import glob
import os
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import orjson

from bench.common import RESULTS, write_result

RESULTS_FILE = RESULTS / "linkage.json"


def _accuracy(people: int, work: Path) -> dict:
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths
    from joinedup.interop.linkage import service
    from joinedup.synth.service import generate

    out = work / "ics"
    t0 = time.perf_counter()
    generate(patients=people, seed=42, out=out, workers=2, today=date(2026, 6, 30))
    generated = time.perf_counter() - t0
    load = work / "load"
    load.mkdir()
    for f in glob.glob(str(out / "Patient.*.ndjson")):
        (load / Path(f).name).write_bytes(Path(f).read_bytes())
    gate = get_gate(f"sqlite:///{work / 'store.db'}")
    import_paths(gate, SYSTEM, [load])
    truth = set()
    for line in (out / "ground-truth.ndjson").read_bytes().splitlines():
        t = orjson.loads(line)
        if t["kind"] == "same_person" and "no_nhs_number" in t["variations"]:
            truth.add((t["record"].split("/")[1], t["patient"].split("/")[1]))
    t0 = time.perf_counter()
    records = sum(1 for _ in service.people(gate, SYSTEM))
    read_rate = records / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    trained = service.train(gate, SYSTEM, path=work / "model.json")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = service.run(gate, SYSTEM, path=work / "model.json", report=work / "pairs.ndjson")
    run_s = time.perf_counter() - t0
    pairs = run.pop("pairs")
    truth = {frozenset(t) for t in truth}
    confirmed = {frozenset((p["unlinked"], p["reference"])) for p in pairs if p["outcome"] == "confirmed"}
    queued = [p for p in pairs if p["outcome"] == "queued"]
    tp = len(confirmed & truth)
    precision = tp / len(confirmed) if confirmed else 0.0
    recall = tp / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    in_queue = len({frozenset((p["unlinked"], p["reference"])) for p in queued} & truth)
    return {
        "people": people, "patient_records": records, "records_without_nhs_number": run["records_without_nhs_number"],
        "true_pairs": len(truth), "confirmed_links": len(confirmed), "true_positives": tp,
        "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
        "review_queue": len(queued), "true_pairs_in_review_queue": in_queue,
        "review_queue_per_10000_people": round(len(queued) * 10_000 / people, 1),
        "confirm_probability": run["confirm_probability"], "review_probability": run["review_probability"],
        "training": {k: trained[k] for k in ("labelled_pairs", "method")},
        "seconds": {"generate": round(generated, 1), "train": round(train_s, 1), "run": round(run_s, 1),
                    "scoring_in_run": run["seconds_scoring"]},
        "gate_read_records_per_second": round(read_rate),
    }, work / "model.json"


def _scale_rows(n: int, base_u: list[dict], base_r: list[dict], labels: list[tuple[str, str]],
                rng: random.Random) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """n people's comparison rows drawn from the generated rows' values; records to link in the same proportion,
    each a copy of a real unlinked record paired with a copy of its reference record."""
    from joinedup.interop.linkage.model import FIELDS

    ref_by_id = {r["unique_id"]: r for r in base_r}
    pairs = [(u, ref_by_id[b]) for u in base_u for a, b in labels if a == u["unique_id"] and b in ref_by_id]
    n_link = max(1, round(n * len(base_u) / max(1, len(base_r))))
    reference, unlinked, new_labels = [], [], []
    cols = {f: [r[f] for r in base_r] for f in FIELDS}
    orgs = [r["organisation"] for r in base_r]
    for i in range(n - n_link):
        reference.append({"unique_id": f"s{i}", "organisation": rng.choice(orgs),
                          **{f: rng.choice(cols[f]) for f in FIELDS}})
    for j in range(n_link):
        u, r = rng.choice(pairs)
        unlinked.append({**u, "unique_id": f"u{j}"})
        reference.append({**r, "unique_id": f"r{j}"})
        new_labels.append((f"u{j}", f"r{j}"))
    return unlinked, reference, new_labels


def _scale(n: int, base: tuple[list[dict], list[dict], list[tuple[str, str]]], read_rate: float) -> dict:
    from joinedup.interop.linkage import model

    rng = random.Random(n)
    t0 = time.perf_counter()
    unlinked, reference, labels = _scale_rows(n, *base, rng)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = model.train(unlinked, reference, labels[: min(len(labels), 2000)])
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = model.score(trained, unlinked, reference, threshold=0.001)
    score_s = time.perf_counter() - t0
    read_s = n / read_rate
    return {"people": n, "records_to_link": len(unlinked), "pairs_scored": len(pairs),
            "seconds": {"rows": round(build, 1), "train": round(train_s, 1), "score": round(score_s, 1),
                        "gate_read_projected": round(read_s, 1),
                        "total_with_projected_read": round(train_s + score_s + 2 * read_s, 1)}}


def _chunks_for(ics: Path, people: int) -> tuple[list[Path], int]:
    """The first Patient chunk files of a generated ICS holding at least `people` registered people, and how many
    people (GP-registered Patient records) they hold."""
    files, held = [], 0
    for f in sorted(ics.glob("Patient.*.ndjson")):
        files.append(f)
        with f.open("rb") as fh:
            held += sum(1 for line in fh if b'"generalPractitioner"' in line)
        if held >= people:
            break
    return files, held


def _truth(ics: Path, ids: set[str]) -> set[frozenset[str]]:
    """Pairs (unordered: two records without an NHS number are linked either way round) of one person where the
    council's record carries no NHS number, both records among `ids`."""
    truth = set()
    with (ics / "ground-truth.ndjson").open("rb") as fh:
        for line in fh:
            if b'"same_person"' not in line:
                continue
            t = orjson.loads(line)
            if t["kind"] == "same_person" and "no_nhs_number" in t["variations"]:
                pair = (t["record"].split("/")[1], t["patient"].split("/")[1])
                if pair[0] in ids and pair[1] in ids:
                    truth.add(frozenset(pair))
    return truth


def _peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)


def _ics_scale(ics: Path, people: int, work: Path) -> dict:
    """Train and run the linkage through the gate on the first `people` people of a generated ICS."""
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths
    from joinedup.interop.linkage import model, service

    files, held = _chunks_for(ics, people)
    load_start = os.getloadavg()[0]
    load = work / f"load-{people}"
    load.mkdir()
    ids: set[str] = set()
    without: set[str] = set()  # records with no NHS number
    for f in files:
        (load / f.name).symlink_to(f)
        with f.open("rb") as fh:
            for line in fh:
                doc = orjson.loads(line)
                ids.add(doc["id"])
                if not model.has_nhs_number(doc):
                    without.add(doc["id"])
    gate = get_gate(f"sqlite:///{work / f'store-{people}.db'}")
    t0, c0 = time.perf_counter(), time.process_time()
    imported = import_paths(gate, SYSTEM, [load], workers=2)
    import_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    trained = service.train(gate, SYSTEM, path=work / f"model-{people}.json")
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    load_train = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    run = service.run(gate, SYSTEM, path=work / f"model-{people}.json")
    run_s, run_cpu = time.perf_counter() - t0, time.process_time() - c0
    pairs = run.pop("pairs")
    truth = _truth(ics, ids)
    confirmed = {frozenset((p["unlinked"], p["reference"])) for p in pairs if p["outcome"] == "confirmed"}
    queued = [p for p in pairs if p["outcome"] == "queued"]
    tp = len(confirmed & truth)
    precision = tp / len(confirmed) if confirmed else 0.0
    recall = tp / len(truth) if truth else 0.0
    manifest = ics / "manifest.json"
    return {"population": {"dir": ics.name, **({k: v for k, v in orjson.loads(manifest.read_bytes()).items()
                                                 if k in ("patients", "seed", "today")} if manifest.exists() else {})},
            "people": held, "patient_records": len(ids), "records_without_nhs_number": run["records_without_nhs_number"],
            "true_pairs": len(truth), "true_pairs_both_without_nhs_number": sum(1 for t in truth if t <= without),
            "confirmed_links": len(confirmed), "true_positives": tp,
            "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
            "review_queue": len(queued), "review_queue_per_10000_people": round(len(queued) * 10_000 / held, 1),
            "true_pairs_in_review_queue": len({frozenset((p["unlinked"], p["reference"])) for p in queued} & truth),
            "pairs_scored": run["pairs_scored"], "labelled_pairs": trained["labelled_pairs"],
            "seconds": {"import_patients": round(import_s, 1), "train": round(train_s, 1),
                        "run": round(run_s, 1), "scoring_in_run": run["seconds_scoring"],
                        "train_and_run": round(train_s + run_s, 1)},
            "cpu_seconds_this_process": {"train": round(train_cpu, 1), "run": round(run_cpu, 1)},
            "imported": imported.created, "peak_rss_mb": _peak_mb(),
            "load_1min": {"start": round(load_start, 1), "train": round(load_train, 1),
                          "run": round(os.getloadavg()[0], 1)}}


def main() -> None:
    from joinedup.interop.linkage import model

    ics_dir = os.environ.get("JOINEDUP_BENCH_LINKAGE_ICS")
    if ics_dir:
        sizes = [int(x) for x in os.environ.get("JOINEDUP_BENCH_LINKAGE_ICS_PEOPLE", "100000,1000000").split(",")
                 if x]
        previous = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "{}"
        kept = orjson.loads(previous)
        real: list[dict] = []
        # rows of sizes not measured this time are kept (each names its population and model format)
        earlier = [r for r in kept.get("scale_generated_population", []) if r.get("people") not in sizes]
        with tempfile.TemporaryDirectory(prefix="bench-linkage-ics-") as tmp:
            for n in sizes:
                real.append({**_ics_scale(Path(ics_dir), n, Path(tmp)), "model_format": model.MODEL_FORMAT})
                _write(kept.get("accuracy", {}), kept.get("scale", []),
                       sorted([*earlier, *real], key=lambda r: r["people"]))
        return

    people = int(os.environ.get("JOINEDUP_BENCH_LINKAGE_PEOPLE", "10000"))
    scales = [int(x) for x in os.environ.get("JOINEDUP_BENCH_LINKAGE_SCALES", "100000").split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-linkage-") as tmp:
        work = Path(tmp)
        accuracy, _ = _accuracy(people, work)
        kept = orjson.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
        pats = [orjson.loads(x) for f in sorted(glob.glob(str(work / "ics" / "Patient.*.ndjson")))
                for x in Path(f).read_bytes().splitlines()]
        base = model.training_sets(pats)
        at_scale: list[dict] = [] if scales else kept.get("scale", [])  # no scales asked: the earlier rows stay
        _write(accuracy, at_scale, kept.get("scale_generated_population", []))  # written after each step, so a long scale run never loses the earlier figures
        for n in scales:
            at_scale.append(_scale(n, base, accuracy["gate_read_records_per_second"]))
            _write(accuracy, at_scale, kept.get("scale_generated_population", []))


def _write(accuracy: dict, at_scale: list[dict], real: list[dict]) -> None:
    write_result("linkage", {
        "note": "2-core machine shared with about 8 other agents running tests and builds: times are upper bounds. "
                "Scale runs time the Splink model (DuckDB) on rows sampled from the generated population; reading "
                "people through the gate is projected from the measured rate (read twice: train and run).",
        "targets": {"precision": 0.99, "recall": 0.95},
        "accuracy": accuracy, "scale": at_scale,
        "scale_generated_population": real,
        "scale_generated_population_note": "train and run through the gate exactly as `joinedup link train|run`, on "
                                           "the first people of one generated ICS (SQLite store of its Patient "
                                           "records); nothing sampled or projected",
        "command": "python -m bench.bench_linkage (JOINEDUP_BENCH_LINKAGE_PEOPLE, JOINEDUP_BENCH_LINKAGE_SCALES); "
                   "JOINEDUP_BENCH_LINKAGE_ICS=DIR [JOINEDUP_BENCH_LINKAGE_ICS_PEOPLE=100000,1000000] python -m "
                   "bench.bench_linkage for the generated-population scale runs",
    })


if __name__ == "__main__":
    main()
