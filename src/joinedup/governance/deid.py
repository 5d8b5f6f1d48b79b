"""De-identification for secondary use: keyed pseudonyms, coarsened dates, no free text; small-number suppression.

Rules (docs/governance.md):

* every resource id and every reference is replaced by a keyed pseudonym: HMAC-SHA256 over "Type/id" with the
  installation's secret key (`JOINEDUP_SECRET_KEY`), so the same person links across files and extracts made
  with the same key, but nobody without the key can go back;
* identifiers (NHS number, hospital numbers, ...) are removed; the Patient's pseudonym stands in for them;
* birth dates are cut to the year (or the month, with `birth_precision="month"`); every other date and
  date-time to the month;
* free text is removed: narrative (text.div), notes, comments, descriptions, CodeableConcept.text,
  Reference.display, string values, names, telecoms, photos, contacts, and addresses except the postcode
  district (outward code, e.g. "LS1");
* codes (SNOMED CT, dm+d, LOINC, ...) and quantities are kept, as is meta.source (the recording organisation).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from joinedup import config
from joinedup.fhir.search_params import split_reference

FREE_TEXT_KEYS = {"text", "note", "comment", "comments", "description", "name", "telecom", "photo", "contact",
                  "valueString", "valueMarkdown", "valueAnnotation", "valueHumanName", "valueAddress",
                  "valueContactPoint", "valueAttachment", "display_text", "patientInstruction", "summary",
                  "conclusion", "payload", "content", "alias", "communication", "link", "presentedForm",
                  "outcomeDesc", "reasonReference"}
DROP_KEYS = {"identifier", "implicitRules", "contained", "masterIdentifier"}
# Types that say nothing about a person: their ids are kept so extracts can be grouped by organisation etc.
NON_PERSONAL = {"Organization", "Location", "HealthcareService", "Medication", "Questionnaire", "PlanDefinition",
                "ActivityDefinition", "Endpoint", "Substance"}
KEEP_META = {"source", "security", "profile"}
KEEP_STRINGS = {"url", "system", "code", "unit", "display", "version", "resourceType", "currency"}
_CODELIKE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_DATE = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_POSTCODE = re.compile(r"^\s*([A-Za-z]{1,2}\d[A-Za-z\d]?)\s*\d[A-Za-z]{2}\s*$")


class Pseudonymiser:
    """Keyed HMAC-SHA256 pseudonyms (first 32 hex digits)."""

    def __init__(self, key: str | None = None) -> None:
        if key is None:
            from joinedup.config import get_settings

            key = get_settings().secret_key
        self._key = key.encode()

    def __call__(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:32]

    def ref(self, reference: str) -> str:
        t, i = split_reference(reference)
        if t in NON_PERSONAL and i:
            return f"{t}/{i}"
        if t and i:
            return f"{t}/{self(f'{t}/{i}')}"
        return self(reference)


def coarsen(value: str, precision: str = "month") -> str:
    """A FHIR date or dateTime cut to the year or the month."""
    m = _DATE.match(value)
    if not m:
        return value
    if precision == "year" or not m.group(3):
        return m.group(1)
    return f"{m.group(1)}-{m.group(3)}"


def postcode_district(postcode: str | None) -> str | None:
    """The outward code of a UK postcode ('LS1 4AP' -> 'LS1'), or None when it is not one."""
    if not postcode:
        return None
    m = _POSTCODE.match(postcode)
    return m.group(1).upper() if m else None


def deidentify(resource: dict, pseudo: Pseudonymiser, *, birth_precision: str = "year") -> dict:
    """A de-identified copy of one resource."""
    rtype = resource.get("resourceType")
    out: dict[str, Any] = {"resourceType": rtype}
    if resource.get("id"):
        out["id"] = pseudo.ref(f"{rtype}/{resource['id']}").split("/", 1)[1]
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k in KEEP_META}
    if meta:
        out["meta"] = meta
    for k, v in resource.items():
        if k in ("resourceType", "id", "meta"):
            continue
        if k == "address":
            districts = [d for d in (postcode_district(a.get("postalCode")) for a in v or () if isinstance(a, dict))
                         if d]
            if districts:
                out["address"] = [{"postalCode": d} for d in districts]
            continue
        if k == "birthDate" and isinstance(v, str):
            out[k] = coarsen(v, birth_precision)
            continue
        cleaned = _clean(k, v, pseudo)
        if cleaned is not None:
            out[k] = cleaned
    return out


def _clean(key: str, value: Any, pseudo: Pseudonymiser) -> Any:
    if key in FREE_TEXT_KEYS or key in DROP_KEYS:
        return None
    if isinstance(value, dict):
        if "reference" in value or "display" in value and not ("code" in value or "system" in value):
            ref = value.get("reference")
            if not isinstance(ref, str) or ref.startswith("#"):
                return None
            out = {"reference": pseudo.ref(ref)}
            if value.get("type"):
                out["type"] = value["type"]
            return out
        out = {}
        for k, v in value.items():
            c = _clean(k, v, pseudo)
            if c is not None and c != {} and c != []:
                out[k] = c
        return out or None
    if isinstance(value, list):
        items = [_clean(key, v, pseudo) for v in value]
        items = [i for i in items if i is not None and i != {} and i != []]
        return items or None
    if isinstance(value, str):
        if key == "reference":
            return pseudo.ref(value)
        if _DATE.match(value):
            return coarsen(value, "month")
        if key in KEEP_STRINGS or key.endswith("Code") or key in ("valueCode", "valueUri", "valueCanonical"):
            return value
        return value if _CODELIKE.match(value) else None  # FHIR codes; anything else may be free text
    return value


def suppress(count: int, *, low: int | None = None, high: int | None = None,
             round_to: int | None = None) -> int | str:
    """A published count: `low`..`high` shown as '*', other counts rounded to the nearest `round_to`.

    Defaults (1, 7, 5) come from JOINEDUP_SUPPRESS_LOW / _HIGH / _ROUND when set.
    """
    low = config.value("SUPPRESS_LOW") if low is None else low
    high = config.value("SUPPRESS_HIGH") if high is None else high
    round_to = config.value("SUPPRESS_ROUND") if round_to is None else round_to
    if count < 0:
        raise ValueError("a count cannot be negative")
    if low <= count <= high:
        return "*"
    if round_to <= 1:
        return count
    return int((count + round_to / 2) // round_to) * round_to


def suppress_table(counts: dict[Any, int], **kwargs: int) -> dict[Any, int | str]:
    """Apply `suppress` to every count of an aggregate table."""
    return {k: suppress(v, **kwargs) for k, v in counts.items()}


def write_extract(records: Iterable[list[dict]], out: Path) -> dict[str, Any]:
    """Write de-identified records as NDJSON per type plus a suppressed summary; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    counts: dict[str, int] = {}
    people = 0
    by_sex: dict[str, int] = {}
    by_decade: dict[str, int] = {}
    try:
        for record in records:
            people += 1
            for res in record:
                t = res["resourceType"]
                fh = handles.get(t)
                if fh is None:
                    fh = handles[t] = (out / f"{t}.ndjson").open("wb")
                fh.write(orjson.dumps(res) + b"\n")
                counts[t] = counts.get(t, 0) + 1
            patient = record[0] if record else {}
            sex = patient.get("gender") or "unknown"
            by_sex[sex] = by_sex.get(sex, 0) + 1
            born = (patient.get("birthDate") or "")[:3]
            decade = f"{born}0s" if born.isdigit() else "unknown"
            by_decade[decade] = by_decade.get(decade, 0) + 1
    finally:
        for fh in handles.values():
            fh.close()
    summary = {"people": people, "resources": counts,
               "published": {"people_by_sex": suppress_table(by_sex),
                             "people_by_birth_decade": suppress_table(dict(sorted(by_decade.items())))},
               "rules": "pseudonymised (keyed HMAC-SHA256), dates to month (birth to year), free text removed, "
                        "National Data Opt-out excluded; published counts: 1-7 shown as *, others rounded to 5"}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary
