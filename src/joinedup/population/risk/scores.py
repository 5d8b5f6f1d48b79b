"""The scores, each from its definition in knowledge/population/risk.yaml (sources there).

Pure functions of a person's facts (`facts.PersonFacts`) and the date of scoring; `charlson` also works on a bare
list of ICD-10 codes (dotted or not) so that it can be checked against comorbidipy.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from .facts import PersonFacts, normalise, phrase_in


@lru_cache(maxsize=1)
def knowledge() -> dict[str, Any]:
    text = resources.files("joinedup.knowledge").joinpath("population/risk.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _has_text(facts: PersonFacts, phrases: list[str]) -> str | None:
    blob = facts.blob()
    for p in phrases:
        if phrase_in(p, blob):
            for norm, ref in facts.texts:
                if phrase_in(p, norm):
                    return ref
    return None


def _matching_conditions(facts: PersonFacts, keys: list[str], *, since: date | None = None) -> str | None:
    wanted = set(keys)
    for c in facts.conditions:
        if c.active and wanted & set(c.keys):
            if since is not None and (c.onset is None or c.onset < since):
                continue
            return c.reference
    return None


def cambridge(facts: PersonFacts, today: date) -> dict[str, Any]:
    """Cambridge Multimorbidity Score, general-outcome weights (Payne et al. CMAJ 2020)."""
    spec = knowledge()["cambridge_multimorbidity_score"]
    present = []
    score = 0.0
    for cid, c in spec["conditions"].items():
        since = None
        if c.get("within_years"):
            since = today - timedelta(days=round(365.25 * c["within_years"]))
        ref = _matching_conditions(facts, c.get("keys") or [], since=since)
        if ref is None and c.get("text") and since is None:
            ref = _has_text(facts, c["text"])
        if ref is not None:
            score += c["weight"]
            present.append({"condition": cid, "display": c["display"], "weight": c["weight"], "evidence": ref})
    return {"score": round(score, 2), "conditions": present, "count": len(present),
            "definition": spec["name"], "source": " ".join(spec["source"].split())}


def efi_category(value: float) -> str:
    for cat in knowledge()["electronic_frailty_index"]["categories"]:
        if round(value, 2) <= cat["max"]:
            return cat["name"]
    return "severe"


def efi(facts: PersonFacts, today: date) -> dict[str, Any]:
    """electronic Frailty Index (Clegg et al. 2016): deficits present / 36."""
    spec = knowledge()["electronic_frailty_index"]
    deficits = spec["deficits"]
    present = []
    n_regular = len(facts.medicines)
    for did, d in deficits.items():
        ref = None
        if d.get("min_regular_medicines"):
            if n_regular >= d["min_regular_medicines"]:
                ref = f"{n_regular} regular medicines"
        else:
            ref = _matching_conditions(facts, d.get("keys") or [])
            if ref is None and d.get("text"):
                ref = _has_text(facts, d["text"])
        if ref is not None:
            present.append({"deficit": did, "display": d["display"], "evidence": ref})
    value = len(present) / len(deficits)
    age = facts.age_on(today)
    return {"value": round(value, 4), "deficits": present, "count": len(present), "of": len(deficits),
            "category": efi_category(value), "applies": age is not None and age >= spec["min_age"],
            "min_age": spec["min_age"], "definition": spec["name"], "source": " ".join(spec["source"].split()),
            "method": "keys-and-text", "eFI2": " ".join(spec["eFI2"].split())}


def icd10_clean(code: str) -> str:
    return "".join(ch for ch in str(code).upper() if ch.isalnum())


def charlson_categories(codes: list[str]) -> set[str]:
    """The Charlson categories of ICD-10 codes (dots ignored): each code joins the last category in the table's
    order one of whose prefixes it starts with (as comorbidipy 0.5.0 assigns them)."""
    cats = knowledge()["charlson"]["categories"]
    found: set[str] = set()
    for raw in codes:
        code = icd10_clean(raw)
        if not code:
            continue
        hit = None
        for cat, spec in cats.items():
            if code.startswith(tuple(spec["icd10"])):
                hit = cat
        if hit:
            found.add(hit)
    return found


HIERARCHY = (("mld", "msld"), ("diab", "diabwc"), ("canc", "metacanc"))


def charlson(codes: list[str], *, age: int | None = None, weights: str | None = None) -> dict[str, Any]:
    """Charlson index from ICD-10 codes, Quan 2005 categories; weights 'quan' (2011) or 'charlson' (1987)."""
    spec = knowledge()["charlson"]
    weights = weights or spec["default_weights"]
    if weights not in ("quan", "charlson"):
        raise ValueError(f"unknown Charlson weights '{weights}' (use quan or charlson)")
    found = charlson_categories(codes)
    scored = set(found)
    for mild, severe in HIERARCHY:
        if severe in scored:
            scored.discard(mild)
    cats = spec["categories"]
    score = sum(cats[c][f"weight_{weights}"] for c in scored)
    out: dict[str, Any] = {"score": max(score, 0), "weights": weights,
                           "categories": [{"category": c, "display": cats[c]["display"],
                                           "weight": cats[c][f"weight_{weights}"] if c in scored else 0}
                                          for c in cats if c in found],
                           "definition": spec["name"]}
    if age is not None:
        out["age_adjusted"] = out["score"] + min(max(0, (age - 40) // 10), 4)
    return out


def regular_medicines(facts: PersonFacts) -> dict[str, Any]:
    spec = knowledge()["regular_medicines"]
    n = len(facts.medicines)
    return {"count": n, "medicines": sorted(facts.medicines.values()), "as_needed_excluded": facts.as_needed,
            "polypharmacy": n >= spec["polypharmacy"], "high": n >= spec["high"],
            "definition": " ".join(spec["definition"].split())}


def treatment_burden(facts: PersonFacts, today: date, org_names: dict[str, str] | None = None) -> dict[str, Any]:
    spec = knowledge()["treatment_burden"]
    start = today - timedelta(days=365)
    by_setting: dict[str, int] = {}
    by_org: dict[str, int] = {}
    total = 0
    for c in facts.contacts:
        d = c.get("day")
        if d is None or d <= start or d > today:
            continue
        total += 1
        setting = "Appointment" if c["setting"] == "APPT" else spec["settings"].get(c["setting"], c["setting"])
        by_setting[setting] = by_setting.get(setting, 0) + 1
        org = c.get("organization") or "unknown"
        name = (org_names or {}).get(org, org)
        by_org[name] = by_org.get(name, 0) + 1
    return {"contacts_per_year": total, "by_setting": dict(sorted(by_setting.items(), key=lambda kv: -kv[1])),
            "by_organisation": dict(sorted(by_org.items(), key=lambda kv: -kv[1])),
            "period": {"start": (start + timedelta(days=1)).isoformat(), "end": today.isoformat()},
            "definition": " ".join(spec["definition"].split())}


def person_risk(facts: PersonFacts, today: date, org_names: dict[str, str] | None = None) -> dict[str, Any]:
    age = facts.age_on(today)
    return {"patient": f"Patient/{facts.id}", "date": today.isoformat(), "age": age, "deceased": facts.deceased,
            "cambridge_multimorbidity_score": cambridge(facts, today),
            "electronic_frailty_index": efi(facts, today),
            "charlson": charlson(facts.icd10, age=age),
            "regular_medicines": regular_medicines(facts),
            "treatment_burden": treatment_burden(facts, today, org_names),
            "version": knowledge()["version"]}


__all__ = ["cambridge", "charlson", "charlson_categories", "efi", "efi_category", "knowledge", "normalise",
           "person_risk", "regular_medicines", "treatment_burden"]
