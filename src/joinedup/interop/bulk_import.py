"""Bulk import of FHIR NDJSON files and Bundles: streaming, batched, idempotent, with a rejects file."""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing as mp
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
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


def load_chunk(gate: Gate, who: Principal, chunk: list[tuple[str, int, bytes | dict]], source: str | None,
               label: str, *, by_line: bool = True, skipped: int = 0,
               skipped_by_type: dict[str, int] | None = None) -> tuple[dict[str, int], dict[str, int], list[Reject]]:
    """Validate, index and write one batch through the gate; returns (statuses, per-type counts, rejects).

    A re-run skips what is already stored unchanged, in two steps: lines written from exactly these bytes are not
    even parsed (`skip_known_lines`, with `by_line`; off for a load into an empty store, where nothing can match,
    and when the caller did it already: `skipped` and `skipped_by_type` then say what it found); any other resource
    stored with exactly the same content is recognised by its content hash and neither validated nor indexed again
    (it was when first stored)."""
    bad: list[Reject] = []
    by_type: dict[str, int] = dict(skipped_by_type or {})
    if by_line:
        chunk, known, known_by_type = skip_known_lines(gate, who, chunk, source, label)
        skipped += known
        for t, n in known_by_type.items():
            by_type[t] = by_type.get(t, 0) + n
    lines: list[tuple[str, int, bytes | dict, str | None]] = []
    for file, line, rec in chunk:
        lines.append((file, line, rec, line_key(rec, source) if isinstance(rec, bytes) and b"\x00" not in rec
                      else None))
    parsed: list[tuple[str, int, bytes | dict, dict, bytes, str | None]] = []
    for file, line, rec, digest in lines:
        try:
            res = _parse(rec)
            rtype = res.get("resourceType")
            if not isinstance(rtype, str):
                raise FhirError(400, "The resource has no resourceType")
            stamped_res, doc = stamped(res, source)
            parsed.append((file, line, rec, stamped_res, doc, digest))
        except FhirError as exc:
            bad.append(_reject(file, line, rec, exc))
    same = gate.stored_unchanged(who, [(r[3]["resourceType"], str(r[3]["id"]), hashlib.sha1(r[4]).hexdigest())
                                       for r in parsed], label=label) if parsed else set()
    statuses: dict[str, int] = {}
    ok: list[Prepared] = []
    for file, line, rec, res, doc, digest in parsed:
        if (res["resourceType"], str(res["id"])) in same:
            skipped += 1
            by_type[res["resourceType"]] = by_type.get(res["resourceType"], 0) + 1
            continue
        try:
            ok.append(prepare(res, source=source, keep=False, canonical_doc=doc, line_hash=digest))
        except FhirError as exc:
            bad.append(_reject(file, line, rec, exc))
    if skipped:
        statuses["unchanged"] = skipped
    for w in gate.import_resources(who, ok, label=label, unchanged=skipped):
        statuses[w.status] = statuses.get(w.status, 0) + 1
        by_type[w.rtype] = by_type.get(w.rtype, 0) + 1
    return statuses, by_type, bad


def _load_in_worker(db_url: str, who: Principal, chunk, source, label, skipped: int = 0,
                    skipped_by_type: dict[str, int] | None = None):
    from joinedup.governance.gate import get_gate

    gate = get_gate(db_url)
    try:
        return load_chunk(gate, who, chunk, source, label, by_line=False, skipped=skipped,
                          skipped_by_type=skipped_by_type)
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

    def tally(result: tuple[dict[str, int], dict[str, int], list[Reject]]) -> None:
        statuses, by_type, bad = result
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
    with gate.bulk_load(who, _expected_resources(files), label=",".join(str(f) for f in files)[:255]) as deferred:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) if workers > 1 else None
        try:
            pending: list = []
            for label, chunk, nbytes in batches():
                report.read += len(chunk)
                if pool is None:
                    tally(load_chunk(gate, who, chunk, source, label, by_line=not deferred))
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
