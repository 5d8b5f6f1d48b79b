"""Bulk import of FHIR NDJSON files and Bundles: streaming, batched, idempotent, with a rejects file."""

from __future__ import annotations

import gc
import gzip
import hashlib
import multiprocessing as mp
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.store.repository import Prepared, line_key, prepare, stamped

BATCH = 2000


@dataclass
class ImportReport:
    """What an import did."""

    files: int = 0
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejects_path: str | None = None
    first_reject: str | None = None  # "FILE:LINE: reason" of the first rejected line
    by_type: dict[str, int] = field(default_factory=dict)
    # where the time went, in seconds summed over the processes that did it (see `STAGES`)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0


@dataclass
class Reject:
    file: str
    line: int
    reason: str
    text: str


class ImportFileError(Exception):
    """A file that cannot be read (or a rejects file that cannot be written): one line naming it."""


def discover(paths: Iterable[Path]) -> list[Path]:
    """Files to import: NDJSON (optionally gzipped) and JSON Bundles, found in files or directories."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(x for x in p.rglob("*") if x.is_file() and _importable(x)))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return found


def _importable(p: Path) -> bool:
    name = p.name.lower().removesuffix(".gz")
    if name in ("log.ndjson", "ground-truth.json", "ground-truth.ndjson", "manifest.json") or "rejects" in name:
        return False
    return name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".json", ".json.gz"))


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _records(path: Path) -> Iterator[tuple[int, bytes | dict]]:
    """(line number, raw line or resource dict) from one file."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".ndjson", ".jsonl")):
        with _open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    yield n, line
        return
    with _open(path) as fh:
        data = fh.read()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield 1, data[:2000] + b"\x00" + str(exc).encode()
        return
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        yield from _bundle_resources(doc)
    else:
        yield 1, doc


def _bundle_resources(bundle: dict) -> Iterator[tuple[int, dict]]:
    """Resources of a collection/transaction/batch Bundle with urn:uuid references made relative."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    mapping: dict[str, str] = {}
    for e in entries:
        res = e["resource"]
        full = e.get("fullUrl") or ""
        if not res.get("id") and full.startswith("urn:uuid:"):
            res["id"] = full[9:]
        if full and res.get("id") and res.get("resourceType"):
            mapping[full] = f"{res['resourceType']}/{res['id']}"
    from joinedup.fhir.bundles import rewrite_references

    for i, e in enumerate(entries, 1):
        yield i, rewrite_references(e["resource"], mapping)


def _parse(rec: bytes | dict) -> dict:
    if isinstance(rec, bytes):
        if b"\x00" in rec:
            _raw, _, err = rec.partition(b"\x00")
            raise FhirError(400, f"not valid JSON: {err.decode(errors='replace')}")
        try:
            rec = orjson.loads(rec)
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, f"not valid JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise FhirError(400, "a line must hold one JSON object (a FHIR resource)")
    if not rec.get("id"):
        raise FhirError(400, "resource has no id (bulk import keeps the ids it is given)")
    return rec


def _reject(file: str, line: int, rec: bytes | dict, exc: FhirError) -> Reject:
    raw_text = rec.decode(errors="replace").rstrip("\n") if isinstance(rec, bytes) else orjson.dumps(rec).decode()
    return Reject(file, line, exc.diagnostics, raw_text[:100000])


# The head of a line as FHIR bulk exports write it ({"resourceType":"X","id":"Y",...}): names the entry it will be
# stored as (or, should the line repeat a key further on, an entry whose line hash cannot match it)
_HEAD = re.compile(rb'\s*\{"resourceType":"([A-Za-z]{1,64})","id":"([A-Za-z0-9\-.]{1,64})"')


def skip_known_lines(gate: Gate, who: Principal, chunk: list[tuple[str, int, bytes | dict]], source: str | None,
                     label: str) -> tuple[list[tuple[str, int, bytes | dict]], int, dict[str, int]]:
    """(the batch without its lines stored unchanged, how many those were, their count per type): a line whose hash
    (`line_key`) is stored on the live entry its head names was written from exactly these bytes, so it is
    unchanged without being parsed. A line whose head names an entry another line of the batch names too is left
    to the parse."""
    heads: dict[tuple[str, str], str | None] = {}  # the line hash per entry named by a head (None: named twice)
    digests: list[str | None] = []
    for _file, _line, rec in chunk:
        digest = None
        if isinstance(rec, bytes) and (m := _HEAD.match(rec)):
            digest = line_key(rec, source)
            key = (m[1].decode(), m[2].decode())
            heads[key] = None if key in heads else digest
        digests.append(digest)
    named = {k: d for k, d in heads.items() if d is not None}
    if not named:
        return chunk, 0, {}
    same = gate.stored_unchanged(who, [(t, i, d) for (t, i), d in named.items()], label=label, lines=True)
    matched = {named[k]: k[0] for k in same}
    if not matched:
        return chunk, 0, {}
    kept, by_type = [], {}
    for item, digest in zip(chunk, digests):
        rtype = matched.get(digest) if digest is not None else None
        if rtype is None:
            kept.append(item)
        else:
            by_type[rtype] = by_type.get(rtype, 0) + 1
    return kept, len(chunk) - len(kept), by_type


# Whether a batch is looked up by content hash before it is validated and indexed (so that what is stored unchanged
# is never validated again) or after (each resource validated and indexed while it is still in the CPU's caches,
# straight after parsing it). A process starts with the first; a batch in which nothing was stored unchanged
# switches it to the second (a load of new data), and a batch in which something was switches it back (a re-run).
_CHECK_FIRST = [True]


def _parsed(chunk: list[tuple[str, int, bytes | dict]], source: str | None,
            bad: list[Reject]) -> Iterator[tuple[str, int, bytes | dict, dict, bytes, str | None]]:
    """(file, line, record, resource with `source` stamped, its canonical JSON, line hash) of each record that
    parses; the others go to `bad`."""
    for file, line, rec in chunk:
        digest = line_key(rec, source) if isinstance(rec, bytes) and b"\x00" not in rec else None
        try:
            res = _parse(rec)
            if not isinstance(res.get("resourceType"), str):
                raise FhirError(400, "The resource has no resourceType")
            stamped_res, doc = stamped(res, source)
        except FhirError as exc:
            bad.append(_reject(file, line, rec, exc))
            continue
        yield file, line, rec, stamped_res, doc, digest


def _check_then_prepare(gate: Gate, who: Principal, chunk, source, label, ok: list[Prepared], bad: list[Reject],
                        by_type: dict[str, int]) -> int:
    """Look the batch up by content hash, then validate and index what is not stored unchanged; returns how many
    were."""
    parsed = list(_parsed(chunk, source, bad))
    same = gate.stored_unchanged(who, [(r[3]["resourceType"], str(r[3]["id"]), hashlib.sha1(r[4]).hexdigest())
                                       for r in parsed], label=label) if parsed else set()
    skipped = 0
    prepare_errors: list[Reject] = []
    for file, line, rec, res, doc, digest in parsed:
        if (res["resourceType"], str(res["id"])) in same:
            skipped += 1
            by_type[res["resourceType"]] = by_type.get(res["resourceType"], 0) + 1
            continue
        try:
            ok.append(prepare(res, source=source, keep=False, canonical_doc=doc, line_hash=digest))
        except FhirError as exc:
            prepare_errors.append(_reject(file, line, rec, exc))
    bad.extend(prepare_errors)
    if parsed:
        _CHECK_FIRST[0] = bool(skipped)
    return skipped


def _prepare_then_check(gate: Gate, who: Principal, chunk, source, label, ok: list[Prepared], bad: list[Reject],
                        by_type: dict[str, int]) -> int:
    """Validate and index each resource as it is parsed, then look the batch up by content hash: what is stored
    unchanged is counted so (whether or not it passed: as `_check_then_prepare` would), the rest written or
    rejected. Same outcome as `_check_then_prepare`."""
    done: list[tuple[Prepared | None, tuple[str, int, bytes | dict, FhirError] | None]] = []
    keys: list[tuple[str, str, str]] = []
    for file, line, rec, res, doc, digest in _parsed(chunk, source, bad):
        try:
            p = prepare(res, source=source, keep=False, canonical_doc=doc, line_hash=digest)
        except FhirError as exc:
            done.append((None, (file, line, rec, exc)))
            keys.append((res["resourceType"], str(res["id"]), hashlib.sha1(doc).hexdigest()))
            continue
        done.append((p, None))
        keys.append((p.rtype, str(p.id), p.hash))
    same = gate.stored_unchanged(who, keys, label=label) if keys else set()
    skipped = 0
    prepare_errors: list[Reject] = []
    for (p, failed), (rtype, rid, _digest) in zip(done, keys):
        if same and (rtype, rid) in same:
            skipped += 1
            by_type[rtype] = by_type.get(rtype, 0) + 1
        elif p is not None:
            ok.append(p)
        else:
            prepare_errors.append(_reject(*failed))
    bad.extend(prepare_errors)
    if keys:
        _CHECK_FIRST[0] = bool(skipped)
    return skipped


# The stages an import reports (`ImportReport.stages`, seconds): CPU of parsing, validating, indexing and looking
# batches up (`prepare_cpu`); CPU and elapsed time of writing them through the gate (`write_cpu`, `write_wall`:
# the difference is waiting - for the database, its lock, the disk); elapsed time and this process's CPU of the end
# of a bulk load (`finish_wall`, `finish_cpu`: building the deferred indexes, refreshing the planner's statistics).
STAGES = ("prepare_cpu", "write_cpu", "write_wall", "finish_wall", "finish_cpu")


def _add(stages: dict[str, float] | None, key: str, seconds: float) -> None:
    if stages is not None:
        stages[key] = stages.get(key, 0.0) + seconds


def load_chunk(gate: Gate, who: Principal, chunk: list[tuple[str, int, bytes | dict]], source: str | None,
               label: str, *, by_line: bool = True, skipped: int = 0,
               skipped_by_type: dict[str, int] | None = None,
               stages: dict[str, float] | None = None) -> tuple[dict[str, int], dict[str, int], list[Reject]]:
    """Validate, index and write one batch through the gate; returns (statuses, per-type counts, rejects).

    A re-run skips what is already stored unchanged, in two steps: lines written from exactly these bytes are not
    even parsed (`skip_known_lines`, with `by_line`; off for a load into an empty store, where nothing can match,
    and when the caller did it already: `skipped` and `skipped_by_type` then say what it found); any other resource
    stored with exactly the same content is recognised by its content hash and counted unchanged (during a re-run it
    is looked up before it would be validated or indexed again; during a load of new data each resource is validated
    and indexed as it is parsed, and the batch looked up after: the same outcome, see `_CHECK_FIRST`)."""
    cpu0 = time.process_time()
    bad: list[Reject] = []
    by_type: dict[str, int] = dict(skipped_by_type or {})
    if by_line:
        chunk, known, known_by_type = skip_known_lines(gate, who, chunk, source, label)
        skipped += known
        for t, n in known_by_type.items():
            by_type[t] = by_type.get(t, 0) + n
    statuses: dict[str, int] = {}
    ok: list[Prepared] = []
    if _CHECK_FIRST[0]:
        skipped += _check_then_prepare(gate, who, chunk, source, label, ok, bad, by_type)
    else:
        skipped += _prepare_then_check(gate, who, chunk, source, label, ok, bad, by_type)
    if skipped:
        statuses["unchanged"] = skipped
    cpu1, wall1 = time.process_time(), time.perf_counter()
    _add(stages, "prepare_cpu", cpu1 - cpu0)
    for w in gate.import_resources(who, ok, label=label, unchanged=skipped):
        statuses[w.status] = statuses.get(w.status, 0) + 1
        by_type[w.rtype] = by_type.get(w.rtype, 0) + 1
    _add(stages, "write_cpu", time.process_time() - cpu1)
    _add(stages, "write_wall", time.perf_counter() - wall1)
    return statuses, by_type, bad


# A bulk load allocates millions of short-lived containers (parsed JSON, index rows) that reference counting frees
# as each batch ends; the cyclic collector's passes over them, and its full passes over every long-lived object
# (modules, models, compiled plans), cost over a tenth of the import's CPU (25-30 ms per 1,000 resources measured).
# While loading, the objects alive at the start are left out of its passes (gc.freeze) and it runs less often;
# cycles are still collected.
_LOAD_GC_THRESHOLD = (20000, 20, 20)


@contextmanager
def _fewer_collections(large: bool) -> Iterator[None]:
    """For a large load in this process: the collector tuned as above, restored afterwards."""
    if not large:
        yield
        return
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*_LOAD_GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def _worker_start() -> None:
    """A worker process (it does nothing but load batches): the collector tuned for loading for its lifetime."""
    import joinedup.governance.gate  # noqa: F401 - imported before the freeze: modules are never garbage

    gc.freeze()
    gc.set_threshold(*_LOAD_GC_THRESHOLD)


def _load_in_worker(db_url: str, who: Principal, chunk, source, label, skipped: int = 0,
                    skipped_by_type: dict[str, int] | None = None):
    from joinedup.governance.gate import get_gate

    gate = get_gate(db_url)
    stages: dict[str, float] = {}
    try:
        return (*load_chunk(gate, who, chunk, source, label, by_line=False, skipped=skipped,
                            skipped_by_type=skipped_by_type, stages=stages), stages)
    finally:
        gate.flush_audit()


def import_paths(gate: Gate, who: Principal, paths: Iterable[Path], *, source: str | None = None,
                 rejects: Path | None = None, workers: int = 1, batch: int = BATCH,
                 progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import files through the gate; bad records go to the rejects file and never stop the rest."""
    files = discover([Path(p) for p in paths])
    gate.check(who, "import", None, entity=",".join(str(f) for f in files)[:255])
    report = ImportReport(files=len(files))
    total_bytes = sum(f.stat().st_size for f in files)
    done_bytes = 0
    start = time.perf_counter()
    rejects_fh = None

    def write_rejects(items: list[Reject]) -> None:
        nonlocal rejects_fh
        if not items:
            return
        if rejects_fh is None:
            path = rejects or Path(f"joinedup-rejects-{time.strftime('%Y%m%d-%H%M%S')}.ndjson")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                rejects_fh = path.open("ab")
            except OSError as exc:
                raise ImportFileError(f"cannot write the rejects file {path}: {exc.strerror or exc}") from None
            report.rejects_path = str(path)
            report.first_reject = f"{items[0].file}:{items[0].line}: {items[0].reason}"
        for r in items:
            rejects_fh.write(orjson.dumps({"file": r.file, "line": r.line, "reason": r.reason, "record": r.text}))
            rejects_fh.write(b"\n")
        report.rejected += len(items)

    def tally(result: tuple) -> None:
        statuses, by_type, bad = result[:3]
        for key, seconds in (result[3] if len(result) > 3 else {}).items():
            _add(report.stages, key, seconds)
        report.created += statuses.get("created", 0)
        report.updated += statuses.get("updated", 0)
        report.unchanged += statuses.get("unchanged", 0)
        for t, n in by_type.items():
            report.by_type[t] = report.by_type.get(t, 0) + n
        write_rejects(bad)

    def batches() -> Iterator[tuple[str, list[tuple[str, int, bytes | dict]], int]]:
        for f in files:
            chunk: list[tuple[str, int, bytes | dict]] = []
            size = f.stat().st_size
            consumed = reported = 0
            line = 0
            try:
                for line, rec in _records(f):
                    chunk.append((str(f), line, rec))
                    consumed += len(rec) if isinstance(rec, bytes) else 0
                    if len(chunk) >= batch:
                        yield str(f), chunk, min(consumed, size) - reported
                        reported = min(consumed, size)
                        chunk = []
            except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged gzip file
                where = f"{f}:{line + 1}" if line else str(f)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or
                                                                                         exc.__class__.__name__)
                raise ImportFileError(f"cannot read {where}: {reason}") from None
            yield str(f), chunk, size - reported

    # Workers validate, index AND write their own batches (each in its own transaction through the gate), so
    # preparing one batch overlaps with writing another. Spawned, not forked: no inherited connections.
    # A large load into a (near-)empty store has the search indexes deferred: the store builds them when this block
    # ends, after every worker has finished (or at its next start, should this process be killed).
    expected = _expected_resources(files)
    with (gate.bulk_load(who, expected, label=",".join(str(f) for f in files)[:255]) as deferred,
          _fewer_collections(expected >= batch)):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                   initializer=_worker_start) if workers > 1 else None
        try:
            pending: list = []
            for label, chunk, nbytes in batches():
                report.read += len(chunk)
                if pool is None:
                    tally(load_chunk(gate, who, chunk, source, label, by_line=not deferred, stages=report.stages))
                else:
                    # lines stored unchanged are found here, before anything is handed to a worker: a re-run of
                    # unchanged data never starts one
                    known, known_by_type = 0, {}
                    if not deferred:
                        chunk, known, known_by_type = skip_known_lines(gate, who, chunk, source, label)
                    if not chunk:
                        tally(load_chunk(gate, who, [], source, label, by_line=False, skipped=known,
                                         skipped_by_type=known_by_type))
                    else:
                        pending.append(pool.submit(_load_in_worker, gate.database_url, who, chunk, source, label,
                                                   known, known_by_type))
                    while len(pending) > workers * 2:
                        tally(pending.pop(0).result())
                done_bytes = min(total_bytes, done_bytes + nbytes)
                if progress:
                    progress(done_bytes, total_bytes)
            for fut in pending:
                tally(fut.result())
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if rejects_fh is not None:
                rejects_fh.close()
            finish = time.perf_counter(), time.process_time()
    if deferred:
        _add(report.stages, "finish_wall", time.perf_counter() - finish[0])
        _add(report.stages, "finish_cpu", time.process_time() - finish[1])
    if (report.created or report.updated) and not deferred:  # (a deferred load refreshed them already)
        gate.optimize()  # new data shapes the query plans: refresh the planner's statistics
    report.seconds = time.perf_counter() - start
    if progress:
        progress(total_bytes, total_bytes)
    return report


def _expected_resources(files: list[Path]) -> int:
    """About how many resources the files hold, from their sizes (a gzipped file counted at 8 times its size; a
    realistic resource takes 0.5 to 2 KB): enough to tell a bulk load from a small one."""
    return sum(f.stat().st_size * (8 if f.suffix == ".gz" else 1) for f in files) // 1024


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
