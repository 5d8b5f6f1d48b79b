"""In-process conflict service: plain functions with keyword-only arguments, used by CLI, API and screens."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson

from .detect import build_record, detect
from .knowledge import Knowledge, load_knowledge
from .resolve import resolve


class BundleError(ValueError):
    """Input is not a readable FHIR Bundle (message is one line, safe to show)."""


def _patient_of(resources: list[dict[str, Any]]) -> str | None:
    for r in resources:
        if r.get("resourceType") == "Patient" and r.get("id"):
            return f"Patient/{r['id']}"
    for r in resources:
        ref = (r.get("subject") or r.get("patient") or {}).get("reference") if isinstance(r, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def knowledge() -> Knowledge:
    """The compiled, cached knowledge base."""
    return load_knowledge()


def detect_findings(*, resources: list[dict[str, Any]], draft_orders: list[dict[str, Any]] | None = None,
                    today: date | None = None, include_deceased: bool = False) -> dict[str, Any]:
    """Detection only (no optimisation): for population screens and fast card generation. A person recorded as
    deceased gets no findings unless `include_deceased` asks for them."""
    kb = load_knowledge()
    rec = build_record(kb, resources, draft_orders or (), today=today)
    findings = detect(kb, rec, include_deceased=include_deceased)
    return {
        "patient": rec.patient or _patient_of(resources),
        "findings": [f.as_dict() for f in findings],
        "unrecognised": rec.unrecognised,
        "non_medicinal": rec.non_medicinal,
        "recorded_elsewhere": rec.recorded_elsewhere,
        "brand_and_generic": rec.brand_and_generic,
        "not_current": rec.not_current,
        "deceased": rec.deceased,
    }


def check_record(*, resources: list[dict[str, Any]], draft_orders: list[dict[str, Any]] | None = None,
                 resolve_conflicts: bool = True, today: date | None = None,
                 include_deceased: bool = False) -> dict[str, Any]:
    """Detect conflicts on one person's resources and propose a least-harm resolution (none for a person recorded
    as deceased unless `include_deceased`)."""
    kb = load_knowledge()
    rec = build_record(kb, resources, draft_orders or (), today=today)
    if rec.patient is None:
        rec.patient = _patient_of(resources)
    findings = detect(kb, rec, include_deceased=include_deceased)
    result: dict[str, Any] = {
        "patient": rec.patient,
        "knowledge_version": kb.version,
        "findings": [f.as_dict() for f in findings],
        "unrecognised": rec.unrecognised,
        "non_medicinal": rec.non_medicinal,
        "recorded_elsewhere": rec.recorded_elsewhere,
        "brand_and_generic": rec.brand_and_generic,
        "not_current": rec.not_current,
        "deceased": rec.deceased,
    }
    if resolve_conflicts:
        result["resolution"] = resolve(kb, rec, findings)
    return result


def bundle_resources(bundle: Any) -> list[dict[str, Any]]:
    """Resources of a FHIR Bundle, validating the shape (raises BundleError)."""
    if not isinstance(bundle, dict):
        raise BundleError("input is not a JSON object")
    if bundle.get("resourceType") != "Bundle":
        raise BundleError(f"expected a FHIR Bundle, got resourceType {bundle.get('resourceType')!r}")
    entries = bundle.get("entry", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise BundleError("Bundle.entry must be a list")
    out = []
    for n, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise BundleError(f"Bundle.entry[{n}] has no resource with a resourceType")
        out.append(res)
    patients = {r.get("id") for r in out if r.get("resourceType") == "Patient"}
    if len(patients) > 1:
        raise BundleError(f"bundle holds {len(patients)} patients; check one person at a time")
    return out


def check_bundle(*, bundle: dict[str, Any], draft_orders: list[dict[str, Any]] | None = None,
                 resolve_conflicts: bool = True, today: date | None = None,
                 include_deceased: bool = False) -> dict[str, Any]:
    """Check a FHIR Bundle holding one person's record."""
    return check_record(resources=bundle_resources(bundle), draft_orders=draft_orders,
                        resolve_conflicts=resolve_conflicts, today=today, include_deceased=include_deceased)


def read_bundle_file(*, path: str | Path) -> dict[str, Any]:
    """Read and parse a Bundle JSON file (raises BundleError with a one-line message)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"file not found: {p}") from None
    except IsADirectoryError:
        raise BundleError(f"not a file: {p}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc).splitlines()[0]
        raise BundleError(f"{p} is not valid JSON ({msg})") from None
    bundle_resources(data)
    return data


def screen_population(*, gate: Any, who: Any, severity: str | None = None, practice: str | None = None,
                      today: date | None = None, progress: Any = None, include_deceased: bool = False) -> Any:
    """Population screen: detection only over every record the gate lets `who` see (see `conflicts.screen`);
    people recorded as deceased are left out unless `include_deceased`."""
    from .screen import screen_population as _screen

    return _screen(gate=gate, who=who, severity=severity, practice=practice, today=today, progress=progress,
                   include_deceased=include_deceased)
