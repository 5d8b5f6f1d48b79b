"""Care processes and eFI deficits for the synthetic ICS (issue 18: registers, care gaps and frailty need them), and
the expected register membership as ground truth. Rates: knowledge/population/synth.yaml (sources there); register
rules: knowledge/population/registers.yaml (the same file the population engine reads).

Called from `Person.run` after the GP activity; each event is drawn per 12-month period ending on the person's last
day of activity, so a share of people are overdue at the reference date."""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CAT_LAB = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory",
                        "display": "Laboratory"}]}]
CAT_PROBLEM = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item", "display": "Problem List Item"}]}]
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
NO_TRUTH = {"frailty"}  # the frailty register also takes people by eFI, which the generator does not compute


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("joinedup.knowledge").joinpath(f"population/{name}").read_text("utf-8"))


@lru_cache(maxsize=1)
def rates() -> dict[str, Any]:
    return _yaml("synth.yaml")


@lru_cache(maxsize=1)
def register_rules() -> dict[str, Any]:
    return _yaml("registers.yaml")["registers"]


@lru_cache(maxsize=64)
def register_codes(codelist: str | None) -> frozenset[str]:
    """SNOMED CT codes of a published register code list (knowledge/terminology/codelists/snomed_conditions.csv)."""
    if not codelist:
        return frozenset()
    text = resources.files("joinedup.knowledge").joinpath("terminology/codelists/snomed_conditions.csv").read_text(
        "utf-8")
    return frozenset(line.split(",", 1)[0] for line in text.splitlines()[1:] if line.split(",")[2] == codelist)


def emit(p: Any) -> None:
    """Care-process events and frailty deficits for one generated person (`synth.person.Person`)."""
    c = p.c
    if p.age < 18:
        return
    # an RNG and id prefixes of its own: adding these events changes nothing else the generator draws or names
    rng = random.Random(f"{c.seed}:{p.i}:population")
    k = rates()
    conds = set(p.conds)
    for spec in k["processes"]:
        if not conds & set(spec["when"]):
            continue
        end = p.end
        while end - 365 >= max(c.t0, p.birth_ord):
            if rng.random() < spec["share"]:
                _event(p, rng, spec, rng.randrange(end - 364, end + 1))
            end -= 365
    f = k["frailty_deficits"]
    if p.age >= f["min_age"]:
        frail = "frailty" in conds
        for item in f["items"]:
            if rng.random() < (item["frail_share"] if frail else item["share"]):
                lo, hi = max(c.t0, p.birth_ord + 1), p.end - 30
                day = lo if hi <= lo else rng.randrange(lo, hi)
                p.emit("Condition", {
                    "resourceType": "Condition", "id": p.nid("pcon"), "meta": c.meta[c.cm],
                    "clinicalStatus": ACTIVE, "category": CAT_PROBLEM, "code": {"text": item["text"]},
                    "subject": p.pref, "onsetDateTime": c.day(day), "recordedDate": c.day(day)})


def _event(p: Any, rng: random.Random, spec: dict[str, Any], day: int) -> None:
    c = p.c
    minute = rng.randrange(480, 1020)
    if spec["kind"] == "observation":
        value = min(max(rng.gauss(spec["mean"], spec["sd"]), spec["min"]), spec["max"])
        p.emit("Observation", {
            "resourceType": "Observation", "id": p.nid("pobs"), "meta": c.meta[c.ac], "status": "final",
            "category": CAT_LAB, "subject": p.pref, "effectiveDateTime": c.dt(day, minute),
            "code": {"coding": [{"system": LOINC, "code": spec["loinc"], "display": spec["display"]}]},
            "valueQuantity": {"value": round(value, spec.get("decimals", 0)), "unit": spec["unit"], "system": UCUM,
                              "code": spec["unit"]}})
        return
    code = ({"coding": [{"system": SCT, "code": spec["snomed"], "display": spec["display"]}]} if spec.get("snomed")
            else {"text": spec["text"]})
    p.emit("Procedure", {
        "resourceType": "Procedure", "id": p.nid("pproc"), "meta": c.meta[p.org], "status": "completed",
        "code": code, "subject": p.pref, "performedDateTime": c.dt(day, minute),
        "performer": [{"actor": {"reference": f"Practitioner/{p.usual_gp}"}}]})


def truth(p: Any) -> None:
    """Ground truth: the registers a living person is on at the reference date (coded condition and age rule)."""
    if p.death is not None:
        return
    keys = set(p.conds)
    codes = {c["code"] for entry in p.conds.values() for c in (entry.get("code") or {}).get("coding") or []}
    birth = p.c.day(p.birth_ord)
    today = p.c.day(p.c.today_ord)
    age = int(today[:4]) - int(birth[:4]) - ((today[5:10]) < (birth[5:10]))
    for rid, rule in register_rules().items():
        if rid in NO_TRUTH or not (keys & set(rule["keys"]) or codes & register_codes(rule.get("codelist"))):
            continue
        if rule.get("min_age") is not None and age < rule["min_age"]:
            continue
        p.truth({"kind": "register", "register": rid, "patient": f"Patient/{p.pid}"})
