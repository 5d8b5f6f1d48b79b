"""Conflict rule kinds: one class per kind, holding the kind's detection and its CP-SAT encoding side by side.

Map of this module:
- Finding helpers the kinds share: `make_finding` (stable finding id), `matches`, `cond_refs`, `compare`, `suppressed`.
- `RuleKind`, the interface: `detect(kb, rec, rule)` returns the findings the rule raises on a recognised record;
  `encode(enc, rule)` adds the rule's finding variables and constraints to a `resolve.Encoding` (the CP-SAT model
  under construction), so that a finding variable must be 1 whenever its causes survive the chosen options.
- The kinds, as the knowledge files state them (`key`) and the finding kind they report (`reports`):
  rules.yaml `kind:` - `DrugDrug`, `DrugDisease`, `DrugResult`, `Duplicate`, `Burden` (acb, regular_count,
  falls_risk_count), and `Allergy` (the `allergy: true` rule, reported as drug-disease);
  lifestyle.yaml clashes - `Lifestyle`; schedules.yaml `timing` - `Timing` and `reviews` - `MergeReviews` (both
  reported as schedule).
- `KINDS` (key -> class), `kind_of(rule)` (a rules.yaml rule's key, compiled into `rule["_kind"]` by knowledge.py)
  and `rule_items(kb)`: every rule with its class, in the engine's fixed order (the CP-SAT model is built in this
  order, so the order is part of the behaviour), compiled once into `Knowledge.kinds`, which detect.py and
  resolve.py loop over.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from itertools import combinations, product
from typing import TYPE_CHECKING, Any, ClassVar

from .models import Finding, MedItem, PatientRecord
from .terminology import parsed_name

if TYPE_CHECKING:
    from .knowledge import Knowledge
    from .resolve import Encoding

BIG = 1000  # big-M for the burden thresholds: a count may exceed its threshold only while the finding is on


# -- helpers shared by the kinds ----------------------------------------------------------------------------------
def _fid(rule: str, involves: list[str]) -> str:
    h = hashlib.sha1("|".join([rule, *involves]).encode()).hexdigest()[:10]
    return f"{rule}:{h}"


def make_finding(rule: dict[str, Any], involves: Iterable[str], summary: str | None = None,
                 detail: str | None = None, kind: str | None = None) -> Finding:
    """A finding of `rule` on the resources `involves` (id is stable: rule id + hash of the involved references)."""
    inv = list(dict.fromkeys(involves))
    return Finding(
        id=_fid(rule["id"], inv), kind=kind or rule["kind"], severity=rule["severity"],
        summary=summary or rule["summary"], detail=detail or str(rule.get("detail", "")).strip(),
        involves=inv, rule=rule["id"], sources=list(rule.get("sources", [])),
        mechanism=str(rule.get("mechanism", "")), criterion=str(rule.get("criterion", "")),
        verified=rule.get("verified", True) is not False, suggest=rule.get("_suggest"),
    )


# -- who a rule is about: age, sex, childbearing potential, conditions that must be absent --------------------------
PATIENT_FILTERS = ("age_min", "age_max", "sex", "childbearing_potential", "unless_conditions", "with_drugs",
                   "with_conditions", "without_result")


def applies(rule: dict[str, Any], rec: PatientRecord) -> bool:
    """Whether the person is one the rule is about. `age_min`/`age_max` (an unknown age never matches), `sex`,
    `childbearing_potential` (a woman aged 12-55 with no recorded pregnancy-preventing state: menopause,
    sterilisation or hysterectomy condition, or a contraceptive medicine), `unless_conditions` (none of them
    recorded), `with_drugs` (a current medicine for each selector) and `without_result` (no result of that code
    recent enough to rely on: the monitoring the criterion asks for is missing, see `monitored`)."""
    if not rule.get("_filters"):
        return True
    age = rec.age
    if "age_min" in rule and (age is None or age < rule["age_min"]):
        return False
    if "age_max" in rule and (age is None or age > rule["age_max"]):
        return False
    if "sex" in rule and rec.sex != rule["sex"]:
        return False
    if rule.get("childbearing_potential"):
        if rec.sex != "female" or age is None or not 12 <= age <= 55:
            return False
        if any(k in rec.conditions for k in CANNOT_CONCEIVE):
            return False
        if any("contraception" in m.classes for m in rec.meds):
            return False
    if rule.get("unless_conditions") and any(k in rec.conditions for k in rule["unless_conditions"]):
        return False
    if rule.get("with_conditions") and not any(k in rec.conditions for k in rule["with_conditions"]):
        return False
    for sel in rule.get("_with", ()):
        if not any(matches(m, sel.ingredients) for m in rec.meds):
            return False
    if "without_result" in rule and monitored(rule, rec):
        return False
    return True


def monitored(rule: dict[str, Any], rec: PatientRecord) -> bool:
    """Whether the record holds the result a `without_result` rule asks for (`code`) dated within its window
    (`within_days`, else the result's `recency_days`): an older or undated result is not monitoring; without a
    judging date (a hand-made record) any result counts, since its age cannot be told."""
    res = rec.results.get(rule["without_result"]["code"])
    if res is None:
        return False
    window = rule.get("_without_window")
    if window is None or not rec.today:
        return True
    age = result_age_days(res, rec)
    return age is not None and age <= window


CANNOT_CONCEIVE = ("menopause", "sterilisation", "hysterectomy", "pregnancy")


def patient_refs(rule: dict[str, Any], rec: PatientRecord) -> list[str]:
    """The resources behind a rule's person filters: the Patient (age, sex) and the `with_drugs` medicines."""
    out: list[str] = []
    if rec.patient and any(k in rule for k in ("age_min", "age_max", "sex", "childbearing_potential")):
        out.append(rec.patient)
    for sel in rule.get("_with", ()):
        out.extend(m.ref for m in rec.meds if matches(m, sel.ingredients))
    if "without_result" in rule and (res := rec.results.get(rule["without_result"]["code"])) is not None:
        out.append(res.ref)  # the out-of-date result, so "why now" shows when it was last measured
    return out


def matches(med: MedItem, ingredients: frozenset[str]) -> bool:
    """Whether a medicine line contains any of the ingredients."""
    return not med.ingredients.isdisjoint(ingredients)


def cond_refs(rec: PatientRecord, keys: Iterable[str]) -> list[str]:
    """References of the person's Conditions recognised as any of the condition keys."""
    out: list[str] = []
    for k in keys:
        out.extend(rec.conditions.get(k, ()))
    return out


def compare(value: float, op: str, target: Any) -> bool:
    """A result value against a rule's threshold (`between` is [lo, hi))."""
    if op == "<":
        return value < target
    if op == "<=":
        return value <= target
    if op == ">":
        return value > target
    if op == ">=":
        return value >= target
    if op == "between":
        lo, hi = target
        return lo <= value < hi
    raise ValueError(op)


SEVERITY_RANK = {"critical": 0, "high": 1, "moderate": 2, "low": 3}


def result_age_days(res: Any, rec: PatientRecord) -> int | None:
    """Days between a result's date and the day the record is judged on (None: undated or unreadable)."""
    if not res.when or not rec.today:
        return None
    try:
        return (date.fromisoformat(rec.today[:10]) - date.fromisoformat(res.when[:10])).days
    except ValueError:
        return None


def _taken_for(m: MedItem, rec: PatientRecord) -> int:
    """Days since a medicine line started (0 when its start date or the judging date is unknown)."""
    if not m.start or not rec.today:
        return 0
    try:
        return (date.fromisoformat(rec.today[:10]) - date.fromisoformat(m.start[:10])).days
    except ValueError:
        return 0


taken_for = _taken_for  # public name for the dose checks (dose_rules.py)


def excluded_route(rule: dict[str, Any], m: MedItem) -> bool:
    """Whether the line's route (read from its product name: "pessary", "vaginal tablets", "medicated plasters" ...)
    is one the rule leaves out (`exclude_routes`, e.g. vaginal oestrogen for a criterion about systemic oestrogen) or
    not one of those it is about (`routes`, e.g. a lidocaine plaster, not a lidocaine injection; a line whose route
    cannot be read is then left out)."""
    routes, only = rule.get("exclude_routes"), rule.get("routes")
    if not routes and not only:
        return False
    route = (m.dose.route if m.dose is not None else None) or parsed_name(m.display).route
    return bool(routes and route in routes) or bool(only and route not in only)


def long_acting(m: MedItem) -> bool:
    """Whether a line is a long-acting form, read from its product name: modified-, prolonged- or extended-release,
    a release duration ("12 HR ..."), or a transdermal patch. A brand whose name does not say it (MST Continus) reads
    as not long-acting."""
    p = parsed_name(m.display)
    route = (m.dose.route if m.dose is not None else None) or p.route
    return p.release in ("modified", "extended") or bool(p.duration_hours) or route == "transdermal"


def acting(want: str | None, m: MedItem) -> bool:
    """Whether a line is of the action length a rule asks for (`acting` for its medicine, `unless_acting` for the
    protective one): "long" (see `long_acting`), "short" (any other line), or None (any line)."""
    if want is None:
        return True
    return long_acting(m) == (want == "long")


def suppressed(rule: dict[str, Any], meds: list[MedItem]) -> bool:
    """Whether a protective medicine the rule names under `unless` is present (the rule then does not fire); with
    `unless_acting`, only a line of that action length protects (e.g. a short-acting opioid for breakthrough pain)."""
    want = rule.get("unless_acting")
    return bool(rule["_unless"]) and any(matches(m, s.ingredients) and acting(want, m)
                                         for s in rule["_unless"] for m in meds)


# -- the interface --------------------------------------------------------------------------------------------------
class RuleKind(ABC):
    """One kind of conflict rule: how it is detected on a record and how it is encoded in the CP-SAT model (every
    kind in `KINDS` defines both; tests/conflicts/test_rule_kinds.py checks each one)."""

    key: ClassVar[str]  # the kind as the knowledge files state it (the KINDS key)
    reports: ClassVar[str]  # the `kind` of the findings it raises

    @staticmethod
    @abstractmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        """The findings `rule` raises on the recognised record."""

    @staticmethod
    @abstractmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        """Add the rule's finding variables and constraints to the model under construction."""


# -- rules.yaml -----------------------------------------------------------------------------------------------------
class Allergy(RuleKind):
    """A medicine (or its class, for penicillin/NSAID cross-sensitivity) matching an active recorded allergy."""

    key = "allergy"
    reports = "drug-disease"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        out = []
        for a in rec.allergies:
            for m in rec.meds:
                if (m.ingredients & a.ingredients) or (m.classes & a.classes):
                    out.append(make_finding(rule, [m.ref, a.ref],
                                            summary=f"{m.display}: recorded allergy or intolerance"))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        sev = rule["severity"]
        for a in enc.rec.allergies:
            for s_i in range(len(enc.slots)):
                t = enc.terms(s_i, a.ingredients, classes=a.classes)
                if t:
                    enc.model.Add(enc.finding_var(sev) >= sum(t))


class Burden(RuleKind):
    """A count over the whole regimen reaching a threshold: anticholinergic burden (acb), regular medicines
    (regular_count, optionally `below` a ceiling) or falls-risk medicines (falls_risk_count)."""

    key = "burden"
    reports = "burden"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        meds = rec.meds
        b = rule["burden"]
        crefs = cond_refs(rec, rule["_conditions"])
        if (rule["_conditions"] and not crefs) or not applies(rule, rec):
            return []
        if b["type"] == "acb":
            contrib = [m for m in meds if m.acb > 0]
            total = sum(m.acb for m in contrib)
            if total >= b["threshold"]:
                extra = [r for r in patient_refs(rule, rec) if r not in {m.ref for m in contrib}]
                return [make_finding(rule, [m.ref for m in contrib] + crefs + extra,
                                     summary=f"{rule['summary']}: total ACB score {total}")]
        elif b["type"] == "regular_count":
            regular = [m for m in meds if m.regular]
            n = len(regular)
            if n >= b["threshold"] and ("below" not in b or n < b["below"]):
                return [make_finding(rule, [m.ref for m in regular],
                                     summary=f"{rule['summary']} ({n} regular medicines)")]
        elif b["type"] == "falls_risk_count":
            fr = [m for m in meds if m.falls_risk]
            if len(fr) >= b["threshold"]:
                return [make_finding(rule, [m.ref for m in fr])]
        return []

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        kb, model, slots, X = enc.kb, enc.model, enc.slots, enc.x
        sev = rule["severity"]
        b = rule["burden"]
        if (rule["_conditions"] and not any(k in enc.rec.conditions for k in rule["_conditions"])) or (
                not applies(rule, enc.rec)):
            return
        if b["type"] == "acb":
            total = []
            for s_i, s in enumerate(slots):
                for o, opt in enumerate(s.options):
                    acb = sum(kb.ingredient_acb.get(i, 0) for i in opt.ingredients)
                    if acb:
                        total.append(acb * X[s_i][o])
            if total:
                model.Add(sum(total) <= b["threshold"] - 1 + BIG * enc.finding_var(sev))
        elif b["type"] == "regular_count":
            count = []
            for s_i, s in enumerate(slots):
                if s.regular:
                    count.extend(X[s_i][o] for o, opt in enumerate(s.options) if opt.ingredients)
            if len(count) >= b["threshold"]:
                model.Add(sum(count) <= b["threshold"] - 1 + BIG * enc.finding_var(sev))
        elif b["type"] == "falls_risk_count":
            count = []
            for s_i in range(len(slots)):
                count.extend(enc.terms(s_i, pred=lambda opt: any(kb.ingredient_falls.get(i) for i in opt.ingredients)))
            if len(count) >= b["threshold"]:
                model.Add(sum(count) <= b["threshold"] - 1 + BIG * enc.finding_var(sev))


class Duplicate(RuleKind):
    """Two or more medicines (with at least two different ingredients) of one of the rule's `duplicate_classes`."""

    key = "duplicate"
    reports = "duplicate"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        out = []
        for cls in rule["duplicate_classes"]:
            group = [m for m in rec.meds if cls in m.classes and (m.regular or not rule.get("regular_only"))]
            if len(group) >= 2 and len(frozenset().union(*(m.ingredients for m in group))) >= 2:
                label = kb.class_display.get(cls, cls.replace("_", " "))
                out.append(make_finding(rule, [m.ref for m in group],
                                        summary=f"Duplicate {label}: {', '.join(m.display for m in group)}"))
        if rule.get("same_medicine_two_names"):
            # one organisation's list holding a medicine under its brand and its generic name counts once (detect.
            # _brand_and_generic), but two live *prescriptions* of it may be taken together: double dosing
            for keep, others in rec.brand_and_generic.items():
                orders = [r for r in (keep, *others) if r.startswith("MedicationRequest/")]
                if len(orders) >= 2:
                    names = "; ".join(rec.facts.get(r, {}).get("what", r).removeprefix("current medicine: ")
                                      for r in orders)
                    out.append(make_finding(rule, orders, summary=(
                        f"The same medicine prescribed under two names: {names} - check that only one is taken")))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        sev = rule["severity"]
        for cls in rule["duplicate_classes"]:
            cand = [s_i for s_i, s in enumerate(enc.slots) if s.regular or not rule.get("regular_only")]
            exprs = [sum(t) for s_i in cand if (t := enc.terms(s_i, classes=frozenset({cls})))]
            if len(exprs) >= 2:
                f = enc.finding_var(sev)
                for a, b2 in combinations(exprs, 2):
                    enc.model.Add(f >= a + b2 - 1)


class DrugDrug(RuleKind):
    """One medicine for each of the rule's `drugs` selectors (a combination product may fill several roles only if
    it has several ingredients), unless a protective medicine is present."""

    key = "drug-drug"
    reports = "drug-drug"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        meds = rec.meds
        if rule["_unless"] and suppressed(rule, meds):
            return []
        if not applies(rule, rec):
            return []
        regular_only = rule.get("regular_only")
        cands = [[m for m in meds if matches(m, s.ingredients) and (m.regular or not regular_only)]
                 for s in rule["_drugs"]]
        if not all(cands):
            return []
        out = []
        seen: set[frozenset[str]] = set()
        distinct = rule.get("distinct")
        extra = patient_refs(rule, rec) + cond_refs(rec, rule["_conditions"])
        if rule["_conditions"] and not any(k in rec.conditions for k in rule["_conditions"]):
            return []
        for combo in product(*cands):
            refs = [m.ref for m in combo]
            if len(set(refs)) < len(refs) and (distinct or any(
                len(m.ingredients) < 2 for m in combo if refs.count(m.ref) > 1
            )):
                continue
            if distinct and len(frozenset().union(*(m.ingredients for m in combo))) < len(combo):
                continue
            key = frozenset(refs)
            if key in seen:
                continue
            seen.add(key)
            names = " + ".join(m.display for m in combo)
            out.append(make_finding(rule, refs + extra, summary=f"{rule['summary']}: {names}"
                                    if rule.get("name_medicines") else None))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        sev = rule["severity"]
        drugs = rule["_drugs"]
        slots, X = enc.slots, enc.x
        if not applies(rule, enc.rec) or (
                rule["_conditions"] and not any(k in enc.rec.conditions for k in rule["_conditions"])):
            return
        per_role = [[s_i for s_i in range(len(slots)) if enc.terms(s_i, sel.ingredients)
                     and (slots[s_i].regular or not rule.get("regular_only"))] for sel in drugs]
        if not all(per_role):
            return
        prot = None
        for combo in product(*per_role):
            if rule.get("distinct") and len(set(combo)) < len(combo):
                continue
            groups: dict[int, list[int]] = {}
            for role, s_i in enumerate(combo):
                groups.setdefault(s_i, []).append(role)
            exprs = []
            for s_i, roles in groups.items():
                s = slots[s_i]
                t = [X[s_i][o] for o, opt in enumerate(s.options)
                     if opt.ingredients and all(not opt.ingredients.isdisjoint(drugs[r].ingredients) for r in roles)]
                if not t:
                    break
                exprs.append(sum(t))
            else:
                if prot is None:
                    prot = enc.protection(rule)
                enc.model.Add(enc.finding_var(sev) >= sum(exprs) - (len(exprs) - 1) - prot)


class DrugDisease(RuleKind):
    """A medicine matching the rule's first `drugs` selector while the person has one of its `conditions` (regular
    medicines only if `regular_only`; only lines of the `routes` / `acting` length asked for), unless a protective
    medicine is present."""

    key = "drug-disease"
    reports = "drug-disease"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        if not (rule["_conditions"] or rule.get("_filters")) or (rule["_unless"] and suppressed(rule, rec.meds)):
            return []
        crefs = cond_refs(rec, rule["_conditions"])
        if rule["_conditions"] and not crefs:
            return []
        if not applies(rule, rec):
            return []
        extra = patient_refs(rule, rec)
        drug = rule["_drugs"][0]
        min_days = rule.get("min_days")
        return [make_finding(rule, [m.ref, *crefs, *(r for r in extra if r != m.ref)],
                             summary=f"{rule['summary']}: {m.display}" if rule.get("name_medicines") else None)
                for m in rec.meds
                if matches(m, drug.ingredients) and (m.regular or not rule.get("regular_only"))
                and (min_days is None or _taken_for(m, rec) >= min_days) and not excluded_route(rule, m)
                and acting(rule.get("acting"), m)]

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        if rule["_conditions"] and not any(c in enc.rec.conditions for c in rule["_conditions"]):
            return
        if not (rule["_conditions"] or rule.get("_filters")) or not applies(rule, enc.rec):
            return
        sev = rule["severity"]
        drug = rule["_drugs"][0]
        prot = None
        for s_i, s in enumerate(enc.slots):
            if rule.get("regular_only") and not s.regular:
                continue
            if s.med is not None and (excluded_route(rule, s.med) or not acting(rule.get("acting"), s.med)):
                continue  # a route or form the rule is not about (detect leaves the line out too)
            t = enc.terms(s_i, drug.ingredients)
            if t:
                if prot is None:
                    prot = enc.protection(rule)
                enc.model.Add(enc.finding_var(sev) >= sum(t) - prot)


class DrugResult(RuleKind):
    """A medicine matching the rule's first `drugs` selector while the latest `result` meets the threshold; a
    `dose_adjustable` rule is also resolved by a reduced dose."""

    key = "drug-result"
    reports = "drug-result"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        if rule["_unless"] and suppressed(rule, rec.meds):
            return []
        spec = rule["result"]
        res = rec.results.get(spec["code"])
        if res is None or not compare(res.value, spec["op"], spec["value"]):
            return []
        crefs = cond_refs(rec, rule["_conditions"])
        if (rule["_conditions"] and not crefs) or not applies(rule, rec):
            return []
        drug = rule["_drugs"][0]
        absorbed = rule.get("_absorbed")  # a dose band that judges the line's dose instead (dose_rules.py)
        meds = [m for m in rec.meds if matches(m, drug.ingredients)
                and not (rule.get("dose_adjustable") and m.dose_reduced)]
        if not meds:
            return []
        extra = [*crefs, *patient_refs(rule, rec)]
        age = result_age_days(res, rec)
        window = rule.get("_window") if rec.today else None  # no judging date (hand-made record): no window
        label = f"{res.key} {res.value:g}{(' ' + res.unit) if res.unit else ''}"
        if window is not None and (age is None or age > window):
            # too old (or undated) to act on: it never drives this finding, it asks for the test to be repeated
            when = f"dated {res.when[:10]}" if res.when else "undated"
            overdue = {**rule, "severity": "moderate" if SEVERITY_RANK[rule["severity"]] <= 1 else "low",
                       "_suggest": {"action": "monitor", "what": spec["code"]}}
            return [make_finding(overdue, [m.ref, res.ref, *extra], kind="monitoring",
                                 summary=f"Monitoring overdue: {label} is {when}, older than the {window}-day window "
                                         f"for '{rule['summary']}' - repeat the test before acting",
                                 detail=f"{str(rule.get('detail', '')).strip()} The latest result is too old to rely "
                                        "on; repeat it and review.")
                    for m in meds]
        return [make_finding(rule, [m.ref, res.ref, *extra], summary=f"{rule['summary']} ({label})") for m in meds
                if absorbed is None or not absorbed(rec, m)]

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        spec = rule["result"]
        res = enc.rec.results.get(spec["code"])
        if res is None or not compare(res.value, spec["op"], spec["value"]):
            return
        if (rule["_conditions"] and not any(k in enc.rec.conditions for k in rule["_conditions"])) or (
                not applies(rule, enc.rec)):
            return
        window = rule.get("_window") if enc.rec.today else None
        age = result_age_days(res, enc.rec)
        if window is not None and (age is None or age > window):
            return  # a monitoring request, not a medicine change, answers an old result
        sev = rule["severity"]
        drug = rule["_drugs"][0]
        absorbed = rule.get("_absorbed")
        for s_i in range(len(enc.slots)):
            line = enc.slots[s_i].med
            if absorbed is not None and line is not None and absorbed(enc.rec, line):
                continue  # judged by the dose rule's band (DoseCheck encodes it)
            t = enc.terms(s_i, drug.ingredients, not_dose=bool(rule.get("dose_adjustable")))
            if t:
                enc.model.Add(enc.finding_var(sev) >= sum(t))


class Omission(RuleKind):
    """START-style omission: the person has one of the rule's `conditions` (or a current medicine matching every
    `with_drugs` selector, e.g. a regular strong opioid) and the person filters hold, but no current medicine
    matches any `indicated` selector; reported with an "add" suggestion (`add`: the ingredient to start). With
    `result_any`, only when one of those results (recent enough to act on) meets its threshold; with `after_stopped`,
    only when the record shows a medicine of those selectors stopped or ended (and none of them current), taken for
    at least `stopped_min_days` when given (e.g. START v3 H6: an anti-resorptive after denosumab is stopped). The
    optimiser may add it (the `add` ingredient is a candidate addition)."""

    key = "omission"
    reports = "omission"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        crefs = cond_refs(rec, rule["_conditions"])
        if (rule["_conditions"] and not crefs) or not applies(rule, rec):
            return []
        meds = rec.meds
        if rule.get("regular_only") and rule.get("_with") and not any(
                m.regular and matches(m, sel.ingredients) for sel in rule["_with"] for m in meds):
            return []
        if any(matches(m, sel.ingredients) for sel in rule["_unless"] for m in meds):
            return []
        if rule.get("vaccine"):
            return Omission.missing_vaccine(rule, rec, crefs)
        if rule.get("_after_stopped"):
            ended = Omission.stopped_lines(rule, rec)
            if not ended:
                return []
            crefs = [*crefs, *(s.ref for s in ended)]
        if rule.get("_result_any"):
            res = Omission.indicating_result(rule, rec)
            if res is None:
                return []
            label = f"{res.key} {res.value:g}{(' ' + res.unit) if res.unit else ''}"
            return [make_finding(rule, [*crefs, res.ref, *patient_refs(rule, rec)],
                                 summary=f"{rule['summary']} ({label})")]
        return [make_finding(rule, crefs + patient_refs(rule, rec))]

    @staticmethod
    def missing_vaccine(rule: dict[str, Any], rec: PatientRecord, crefs: list[str]) -> list[Finding]:
        """START v3 section L: no completed immunisation with the rule's `vaccine` (within `within_days` of the
        judging date, when given). Raised only when the record carries an immunisation history: a record without
        any Immunization cannot tell "not vaccinated" from "not shared"."""
        if not rec.immunization_history or rule["vaccine"] in rec.immunizations_precluded:
            return []
        given = rec.immunizations.get(rule["vaccine"], [])
        within = rule.get("within_days")
        last = max(given, default=None)
        if last is not None:
            if within is None or not rec.today:
                return []
            try:
                days = (date.fromisoformat(rec.today) - date.fromisoformat(last[0])).days
            except ValueError:
                days = None  # an undated immunisation is not read as recent
            if days is not None and days <= int(within):
                return []
        inv = [*crefs, *([last[1]] if last is not None else []), *patient_refs(rule, rec)]
        summary = f"{rule['summary']} (last recorded {last[0] or 'undated'})" if last is not None else None
        return [make_finding(rule, inv, summary=summary)]

    @staticmethod
    def stopped_lines(rule: dict[str, Any], rec: PatientRecord) -> list[Any]:
        """The record's stopped or ended lines matching an `after_stopped` selector, when no current medicine
        matches one (re-started: nothing was discontinued); with `stopped_min_days`, only lines whose start and end
        dates show they ran at least that long (undated lines do not)."""
        sels = rule["_after_stopped"]
        if any(matches(m, s.ingredients) for s in sels for m in rec.meds):
            return []
        min_days = rule.get("stopped_min_days")
        out = []
        for item in rec.stopped:
            if not any(not item.ingredients.isdisjoint(s.ingredients) for s in sels):
                continue
            if min_days is not None:
                try:
                    ran = (date.fromisoformat(item.end[:10]) - date.fromisoformat(item.start[:10])).days
                except ValueError:
                    continue
                if ran < int(min_days):
                    continue
            out.append(item)
        return out

    @staticmethod
    def indicating_result(rule: dict[str, Any], rec: PatientRecord) -> Any:
        """The first `result_any` result that meets its threshold and is recent enough to act on (an older or
        undated result indicates nothing: an omission is never raised on a stale value), else None."""
        for spec, window in rule["_result_any"]:
            res = rec.results.get(spec["code"])
            if res is None or not compare(res.value, spec["op"], spec["value"]):
                continue
            if rec.today and window is not None:
                age = result_age_days(res, rec)
                if age is None or age > int(window):
                    continue
            return res
        return None

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        if rule["id"] not in enc.present:
            return
        enc.model.Add(enc.finding_var(rule["severity"]) >= 1 - enc.protection(rule))


# -- lifestyle.yaml and schedules.yaml ------------------------------------------------------------------------------
class Lifestyle(RuleKind):
    """Conflicting lifestyle advice between two conditions the person has (`conditions`: all of them;
    `conditions_any_two`: any two); reconciled by agreeing one message."""

    key = "lifestyle"
    reports = "lifestyle"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        conds = rec.conditions
        if "conditions" in rule:
            keys = rule["conditions"]
            if not all(k in conds for k in keys):
                return []
        else:
            keys = [k for k in rule["conditions_any_two"] if k in conds]
            if len(keys) < 2:
                return []
        return [make_finding({**rule, "kind": "lifestyle", "rule": rule["id"]}, cond_refs(rec, keys))]

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        if rule["id"] not in enc.present:
            return
        act = enc.choice(f"agree_{rule['id']}", "agree-advice")
        enc.model.Add(enc.finding_var(rule["severity"]) >= 1 - act)
        enc.actions.append(("agree-advice", act, rule))


class MergeReviews(RuleKind):
    """Separate periodic reviews due for at least `min_reviews` of the person's conditions; reconciled by one
    coordinated multimorbidity review."""

    key = "reviews"
    reports = "schedule"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        due = [k for k in kb.guidance if k in rec.conditions and kb.guidance[k].get("review")]
        if len(due) < int(rule.get("min_reviews", 2)):
            return []
        names = ", ".join(kb.guidance[k]["review"]["name"] for k in due)
        return [make_finding({**rule, "kind": "schedule"}, cond_refs(rec, due), summary=f"{rule['summary']} ({names})")]

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        if rule["id"] not in enc.present:
            return
        act = enc.choice("merge_reviews", "merge-reviews")
        enc.model.Add(enc.finding_var(rule["severity"]) >= 1 - act)
        enc.actions.append(("merge-reviews", act, rule))


class Timing(RuleKind):
    """Two medicines whose administration must be separated (first and second `drugs` selectors), unless the pair
    is already recorded as separated; resolved by separating the doses."""

    key = "timing"
    reports = "schedule"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        a, b = rule["_drugs"]
        meds = rec.meds
        out = []
        for ma in meds:
            if not matches(ma, a.ingredients):
                continue
            for mb in meds:
                if mb is ma or not matches(mb, b.ingredients):
                    continue
                if frozenset((ma.ref, mb.ref)) in rec.separated:
                    continue
                out.append(make_finding({**rule, "kind": "schedule"}, [ma.ref, mb.ref]))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        a, b = rule["_drugs"]
        for (i, si), (j, sj) in product(enumerate(enc.slots), repeat=2):
            if i == j:
                continue
            ta, tb = enc.terms(i, a.ingredients), enc.terms(j, b.ingredients)
            if ta and tb:
                sep = enc.choice(f"sep{i}_{j}", "separate-timing")
                enc.model.Add(enc.finding_var(rule["severity"]) >= sum(ta) + sum(tb) - 1 - sep)
                enc.seps.append((si.ref, sj.ref, sep, rule))


# -- the table ------------------------------------------------------------------------------------------------------
KINDS: dict[str, type[RuleKind]] = {k.key: k for k in (
    DrugDrug, DrugDisease, DrugResult, Duplicate, Burden, Allergy, Omission, Lifestyle, MergeReviews, Timing)}


def kind_of(rule: dict[str, Any]) -> str:
    """The KINDS key of a rules.yaml rule: its `kind`, except the `allergy: true` rule (which reports as
    drug-disease) and any rule with a `burden` block."""
    if rule.get("allergy"):
        return Allergy.key
    if "burden" in rule:
        return Burden.key
    return str(rule["kind"])


def rule_items(kb: Knowledge) -> list[tuple[type[RuleKind], dict[str, Any]]]:
    """Every rule of the knowledge base with its kind: rules.yaml in file order, then the lifestyle clashes, the
    review merge, the timing clashes and the dose checks (dosing.yaml, `dose_rules.DoseCheck`)."""
    items: list[tuple[type[RuleKind], dict[str, Any]]] = [(KINDS[r["_kind"]], r) for r in kb.rules]
    items += [(Lifestyle, c) for c in kb.lifestyle]
    if kb.reviews:
        items.append((MergeReviews, kb.reviews))
    items += [(Timing, t) for t in kb.timing]
    items += [(KINDS[r["_kind"]], r) for r in getattr(kb, "dose_rules", ())]
    return items


@dataclass(frozen=True)
class RuleIndex:
    """Which rules could fire for a record, found without looking at every rule: a rule is listed under the
    ingredients of which the record must hold one (its smallest `_need` set; a timing clash's first medicine; a dose
    rule's ingredients), else under the conditions of which the record must hold one (`_conditions`, a lifestyle
    clash's conditions), else it is always a candidate; a rule about a stopped medicine (`after_stopped`) is listed
    under the ingredients of which the record's medicine history must hold one. Positions are into
    `Knowledge.kinds`."""

    by_ingredient: dict[str, tuple[int, ...]]
    by_condition: dict[str, tuple[int, ...]]
    always: tuple[int, ...]
    by_stopped: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def candidates(self, held: frozenset[str], conditions: Iterable[str],
                   stopped: frozenset[str] = frozenset()) -> list[int]:
        """Positions of the rules that could fire, in the engine's order (`stopped`: the ingredients of the
        medicines the record shows as stopped or ended)."""
        found = set(self.always)
        for ing in stopped:
            hit = self.by_stopped.get(ing)
            if hit:
                found.update(hit)
        by_ing, by_cond = self.by_ingredient, self.by_condition
        for ing in held:
            hit = by_ing.get(ing)
            if hit:
                found.update(hit)
        for cond in conditions:
            hit = by_cond.get(cond)
            if hit:
                found.update(hit)
        return sorted(found)


def _trigger(kind: type[RuleKind], rule: dict[str, Any]) -> tuple[str, frozenset[str]] | None:
    if rule.get("_after_stopped"):
        return "stopped", frozenset().union(*(s.ingredients for s in rule["_after_stopped"]))
    need = rule.get("_need")
    if need:
        return "ingredient", min(need, key=len)
    if kind.key == "dose":
        return "ingredient", frozenset(rule["_ingredients"])
    if kind is Timing:
        return "ingredient", rule["_drugs"][0].ingredients
    if rule.get("_conditions"):
        return "condition", frozenset(rule["_conditions"])
    if kind is Lifestyle:
        return "condition", frozenset(rule.get("conditions") or rule.get("conditions_any_two") or ())
    return None


def rule_index(kinds: list[tuple[type[RuleKind], dict[str, Any]]]) -> RuleIndex:
    """Index every rule by what a record must hold for it to fire (compiled once into `Knowledge.index`)."""
    by_ing: dict[str, list[int]] = {}
    by_cond: dict[str, list[int]] = {}
    by_stop: dict[str, list[int]] = {}
    always: list[int] = []
    for pos, (kind, rule) in enumerate(kinds):
        trig = _trigger(kind, rule)
        if trig is None:
            always.append(pos)
            continue
        table = {"ingredient": by_ing, "condition": by_cond, "stopped": by_stop}[trig[0]]
        for key in trig[1]:
            table.setdefault(key, []).append(pos)
    return RuleIndex(by_ingredient={k: tuple(v) for k, v in by_ing.items()},
                     by_condition={k: tuple(v) for k, v in by_cond.items()}, always=tuple(always),
                     by_stopped={k: tuple(v) for k, v in by_stop.items()})

