"""Bulk Data export: NDJSON files per resource type, written through the gate."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from joinedup.fhir.errors import FhirError
from joinedup.fhir.validation import is_resource_type
from joinedup.governance import platform
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal


def export_to_dir(gate: Gate, who: Principal, out: Path, *, types: Iterable[str] | None = None,
                  since: str | None = None, patient_ids: set[str] | None = None,
                  label: str = "export") -> dict[str, int]:
    """Write one NDJSON file per type into `out`; returns counts per type."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(types) if types else gate.types_present(who)
    counts: dict[str, int] = {}
    for rtype in wanted:
        path = out / f"{rtype}.ndjson"
        n = 0
        with path.open("wb") as fh:
            for s in gate.export(who, [rtype], since=since, patient_ids=patient_ids, label=label):
                fh.write(orjson.dumps(s.content))
                fh.write(b"\n")
                n += 1
        if n == 0:
            path.unlink()
        else:
            counts[rtype] = n
    return counts


def parse_types(value: str | None) -> list[str] | None:
    """The _type parameter as a list, refusing unknown resource types."""
    if not value:
        return None
    types = [t.strip() for t in value.split(",") if t.strip()]
    bad = [t for t in types if not is_resource_type(t)]
    if bad:
        raise FhirError(400, f"_type names unknown resource type(s): {', '.join(bad)}", code="value",
                        expression=["_type"])
    return types


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def start_job(gate: Gate, who: Principal, *, request_url: str, export_dir: Path, types: list[str] | None,
              since: str | None, patient_level: bool) -> str:
    """Record an export job and run it in the background; returns the job id."""
    gate.check(who, "export", types[0] if types and len(types) == 1 else None, entity="$export",
               query=request_url)
    job_id = uuid.uuid4().hex
    platform.create_export_job(gate, who, job_id=job_id, request_url=request_url, now=_now())

    def run() -> None:
        try:
            patient_ids = None
            if patient_level:
                patient_ids = {s.id for s in gate.export(who, ["Patient"], label=f"$export:{job_id}")}
            wanted = types
            if wanted is None:
                wanted = gate.types_present(who)
                if patient_level:
                    wanted = [t for t in wanted if t == "Patient" or gate.params.compartment.get(t)]
            counts = export_to_dir(gate, who, export_dir / job_id, types=wanted, since=since,
                                   patient_ids=patient_ids, label=f"$export:{job_id}")
            status, output, error = "completed", orjson.dumps(counts).decode(), None
        except Exception as exc:  # noqa: BLE001 - the job reports its failure to the client
            status, output, error = "failed", None, f"{type(exc).__name__}: {exc}"
        platform.finish_export_job(gate, who, job_id, status=status, output=output, error=error)

    threading.Thread(target=run, name=f"export-{job_id}", daemon=True).start()
    return job_id


def get_job(gate: Gate, who: Principal, job_id: str) -> dict:
    """The principal's export job (404 when there is none, 403 when it is another user's)."""
    return platform.export_job(gate, who, job_id)


def delete_job(gate: Gate, who: Principal, job_id: str, export_dir: Path) -> None:
    get_job(gate, who, job_id)
    import shutil

    shutil.rmtree(export_dir / job_id, ignore_errors=True)
    platform.delete_export_job(gate, who, job_id)
