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
