"""Small helpers for reading FHIR values, shared by every domain."""

from __future__ import annotations

from datetime import date
from typing import Any

from joinedup.fhir.search_params import split_reference


def reference_id(node: Any, rtype: str | None = None) -> str | None:
    """The id in a Reference (`{"reference": "Type/id"}`), optionally only when it points to `rtype`."""
    if isinstance(node, dict) and isinstance(node.get("reference"), str):
        t, i = split_reference(node["reference"])
        if rtype is None or t == rtype:
            return i
    return None


def age_on(birth: str | None, today: date) -> int | None:
    """Age in whole years on `today` for a FHIR birthDate ('YYYY-MM-DD'); None when it is not a full date."""
    try:
        y, m, d = (int(x) for x in (birth or "")[:10].split("-"))
    except ValueError:
        return None
    return today.year - y - ((today.month, today.day) < (m, d))


def concept_text(cc: Any) -> str:
    """Readable text of a CodeableConcept (or the first of a list): its text, else the first coding display."""
    if isinstance(cc, list):
        cc = cc[0] if cc else None
    if not isinstance(cc, dict):
        return ""
    return cc.get("text") or next((c.get("display") for c in cc.get("coding") or [] if c.get("display")), "") or ""


def human_name(res: dict[str, Any] | None) -> str:
    """A readable name of a Patient, Practitioner or RelatedPerson ('Dr Sophie Wood'), else 'Unnamed'."""
    names = (res or {}).get("name") or []
    if isinstance(names, str):  # Organization.name and the like
        return names
    n = next((x for x in names if x.get("use") in (None, "official", "usual")), names[0] if names else None)
    if not n:
        return "Unnamed"
    if n.get("text"):
        return n["text"]
    return " ".join([*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]).strip() or "Unnamed"
