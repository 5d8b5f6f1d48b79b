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
from itertools import combinations, product
from typing import TYPE_CHECKING, Any, ClassVar

from .models import Finding, MedItem, PatientRecord

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
    )


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


def suppressed(rule: dict[str, Any], meds: list[MedItem]) -> bool:
    """Whether a protective medicine the rule names under `unless` is present (the rule then does not fire)."""
    return bool(rule["_unless"]) and any(matches(m, s.ingredients) for s in rule["_unless"] for m in meds)


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
        if b["type"] == "acb":
            contrib = [m for m in meds if m.acb > 0]
            total = sum(m.acb for m in contrib)
            if total >= b["threshold"]:
                return [make_finding(rule, [m.ref for m in contrib],
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
        cands = [[m for m in meds if matches(m, s.ingredients)] for s in rule["_drugs"]]
        if not all(cands):
            return []
        out = []
        seen: set[frozenset[str]] = set()
        for combo in product(*cands):
            refs = [m.ref for m in combo]
            if len(set(refs)) < len(refs) and any(
                len(m.ingredients) < 2 for m in combo if refs.count(m.ref) > 1
            ):
                continue
            key = frozenset(refs)
            if key in seen:
                continue
            seen.add(key)
            out.append(make_finding(rule, refs))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        sev = rule["severity"]
        drugs = rule["_drugs"]
        slots, X = enc.slots, enc.x
        per_role = [[s_i for s_i in range(len(slots)) if enc.terms(s_i, sel.ingredients)] for sel in drugs]
        if not all(per_role):
            return
        prot = None
        for combo in product(*per_role):
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
    medicines only if `regular_only`), unless a protective medicine is present."""

    key = "drug-disease"
    reports = "drug-disease"

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        if not rule["_conditions"] or (rule["_unless"] and suppressed(rule, rec.meds)):
            return []
        crefs = cond_refs(rec, rule["_conditions"])
        if not crefs:
            return []
        drug = rule["_drugs"][0]
        return [make_finding(rule, [m.ref, *crefs]) for m in rec.meds
                if matches(m, drug.ingredients) and (m.regular or not rule.get("regular_only"))]

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        if not rule["_conditions"] or not any(c in enc.rec.conditions for c in rule["_conditions"]):
            return
        sev = rule["severity"]
        drug = rule["_drugs"][0]
        prot = None
        for s_i, s in enumerate(enc.slots):
            if rule.get("regular_only") and not s.regular:
                continue
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
        drug = rule["_drugs"][0]
        out = []
        for m in rec.meds:
            if matches(m, drug.ingredients):
                if rule.get("dose_adjustable") and m.dose_reduced:
                    continue
                out.append(make_finding(rule, [m.ref, res.ref], summary=f"{rule['summary']} ({res.key} {res.value:g})"))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        spec = rule["result"]
        res = enc.rec.results.get(spec["code"])
        if res is None or not compare(res.value, spec["op"], spec["value"]):
            return
        sev = rule["severity"]
        drug = rule["_drugs"][0]
        for s_i in range(len(enc.slots)):
            t = enc.terms(s_i, drug.ingredients, not_dose=bool(rule.get("dose_adjustable")))
            if t:
                enc.model.Add(enc.finding_var(sev) >= sum(t))


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
    DrugDrug, DrugDisease, DrugResult, Duplicate, Burden, Allergy, Lifestyle, MergeReviews, Timing)}


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
    review merge and the timing clashes."""
    items: list[tuple[type[RuleKind], dict[str, Any]]] = [(KINDS[r["_kind"]], r) for r in kb.rules]
    items += [(Lifestyle, c) for c in kb.lifestyle]
    if kb.reviews:
        items.append((MergeReviews, kb.reviews))
    items += [(Timing, t) for t in kb.timing]
    return items
