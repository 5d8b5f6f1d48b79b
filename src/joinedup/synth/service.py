"""Generate a synthetic integrated care system as FHIR R4 NDJSON, in parallel, streaming, deterministically.

Layout of the output directory:
  Organization.ndjson, Location.ndjson, Practitioner.ndjson, PractitionerRole.ndjson   the system itself
  <Type>.<chunk:04d>.ndjson                                                           people, by chunk
  ground-truth.ndjson                                                                 planted truth (docs)
  manifest.json                                                                       options and counts
Person i is generated from (seed, i) alone and chunks are fixed by the population size, so the same seed and
size give byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from joinedup.synth.models import DEFAULT_TODAY, GenerateOptions, GenerateResult
from joinedup.synth.person import Context, Person
from joinedup.synth.system import System, build_system

GENERATOR_VERSION = "1"
SYSTEM_TYPES = ("Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService")
_DUMP = orjson.OPT_APPEND_NEWLINE
_ctx: Context | None = None
_out: Path | None = None


class GenerateError(ValueError):
    """Bad options or an unusable output directory (the CLI turns this into exit code 2)."""


def chunk_size_for(patients: int) -> int:
    """Patients per chunk: a function of population size only (so output never depends on worker count)."""
    return max(250, min(5000, math.ceil(patients / 8)))


def _init(system: System, seed: int, today: date, years: int, out: str) -> None:
    global _ctx, _out
    _ctx = Context(seed=seed, today=today, system=system, years=years)
    _out = Path(out)


def _run_chunk(task: tuple[int, int, int]) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """Generate people [start, end) into chunk files; return (chunk, people, counts by type, truth by kind)."""
    chunk, start, end = task
    assert _ctx is not None and _out is not None
    handles: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    truth_counts: Counter[str] = Counter()
    dumps = orjson.dumps
    out = _out
    with ExitStack() as stack:
        truth_fh = stack.enter_context(open(out / ".parts" / f"ground-truth.{chunk:05d}.ndjson", "wb",
                                            buffering=1 << 20))

        def emit(rtype: str, res: dict) -> None:
            fh = handles.get(rtype)
            if fh is None:
                fh = handles[rtype] = stack.enter_context(open(out / f"{rtype}.{chunk:04d}.ndjson", "wb",
                                                               buffering=1 << 20))
            fh.write(dumps(res, option=_DUMP))
            counts[rtype] += 1

        def truth(rec: dict) -> None:
            truth_fh.write(dumps(rec, option=_DUMP))
            truth_counts[rec.get("problem") or rec.get("type") or rec["kind"]] += 1

        for i in range(start, end):
            Person(_ctx, i, emit, truth).run()
    return chunk, end - start, dict(counts), dict(truth_counts)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GenerateError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").exists() and not force:
            raise GenerateError(f"{out} is not empty and holds no earlier generator output (use --force)")
        for p in out.iterdir():
            if p.name.endswith(".ndjson") or p.name == "manifest.json":
                p.unlink()
            elif p.name in (".parts", "hl7"):
                shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".parts").mkdir()


def generate(*, patients: int, seed: int, out: Path, workers: int = 2, today: date = DEFAULT_TODAY,
             years: int = 3, force: bool = False,
             progress: Callable[[int], None] | None = None, hl7: bool = False) -> GenerateResult:
    """Generate `patients` people and their ICS into `out`; `progress(n)` is called as people are finished."""
    try:
        opts = GenerateOptions(patients=patients, seed=seed, out=out, workers=workers, today=today, years=years,
                               force=force)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GenerateError(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    out = Path(opts.out)
    _prepare_out(out, opts.force)
    system = build_system(patients=opts.patients, seed=opts.seed)
    counts: Counter[str] = Counter()
    for rtype in SYSTEM_TYPES:
        items = [r for r in system.resources if r["resourceType"] == rtype]
        with open(out / f"{rtype}.ndjson", "wb") as fh:
            fh.writelines(orjson.dumps(r, option=_DUMP) for r in items)
        counts[rtype] += len(items)
    system.resources = []
    size = chunk_size_for(opts.patients)
    tasks = [(j, s, min(s + size, opts.patients)) for j, s in enumerate(range(0, opts.patients, size))]
    truth: Counter[str] = Counter()
    args = (system, opts.seed, opts.today, opts.years, str(out))
    n_workers = min(opts.workers, len(tasks))
    if n_workers <= 1:
        _init(*args)
        results = map(_run_chunk, tasks)
        for _, n, c, t in results:
            counts.update(c)
            truth.update(t)
            if progress:
                progress(n)
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(n_workers, initializer=_init, initargs=args, maxtasksperchild=50) as pool:
            for _, n, c, t in pool.imap_unordered(_run_chunk, tasks):
                counts.update(c)
                truth.update(t)
                if progress:
                    progress(n)
    # merge ground truth in chunk order
    parts = out / ".parts"
    with open(out / "ground-truth.ndjson", "wb") as dst:
        for j, _, _ in tasks:
            part = parts / f"ground-truth.{j:05d}.ndjson"
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(parts)
    truth.update(_append_expected_measures(out / "ground-truth.ndjson"))
    files = sorted(p.name for p in out.iterdir() if p.name.endswith(".ndjson"))
    manifest = {
        "generator": "joinedup.synth", "version": GENERATOR_VERSION, "patients": opts.patients, "seed": opts.seed,
        "today": opts.today.isoformat(), "years": opts.years, "chunk_size": size,
        "counts": dict(sorted(counts.items())), "resources": sum(counts.values()),
        "ground_truth": dict(sorted(truth.items())), "files": files,
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | _DUMP))
    if hl7:  # the acute trust's HL7 v2 ADT feed for its encounters (hl7/adt-feed.hl7)
        from joinedup.synth.hl7feed import write_feed

        write_feed(out)
    return GenerateResult(out=out, patients=opts.patients, seed=opts.seed, resources=sum(counts.values()),
                          counts=dict(sorted(counts.items())), truth=dict(sorted(truth.items())), files=len(files))


def _append_expected_measures(path: Path) -> Counter[str]:
    """Each outcome measure's expected value (`kind: measure_expected`), summed from the per-person `measure`
    records, appended to the ground truth (synth.outcomes)."""
    from joinedup.synth import outcomes

    records = []
    with open(path, "rb") as fh:
        for line in fh:
            if b'"kind":"measure"' in line:
                records.append(orjson.loads(line))
    expected = outcomes.expected(records)
    with open(path, "ab") as fh:
        fh.writelines(orjson.dumps(r, option=_DUMP) for r in expected)
    return Counter({"measure_expected": len(expected)})


def read_ndjson(out: Path, rtype: str):
    """Yield the resources of one type from a generated directory (all chunk files, in order)."""
    for p in sorted(out.glob(f"{rtype}.*ndjson")):
        if p.name.split(".")[0] != rtype:
            continue
        with open(p, "rb") as fh:
            for line in fh:
                yield orjson.loads(line)


def cpu_count() -> int:
    return os.cpu_count() or 1
