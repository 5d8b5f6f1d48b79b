"""Dose checks as a rule kind (`dose`): the rules of knowledge/dosing.yaml, detected on the per-line doses that
build_record reads (`MedItem.dose`, a `dosage.LineDose`).

Map of this module: `compile_dose_rules` (dosing.yaml -> compiled rules, each with `_kind` "dose" and the ingredient
set it checks); `renal_value` (creatinine clearance recorded or by Cockcroft-Gault, else eGFR; the latest eGFR for
`metric: egfr`); `DoseCheck` (the RuleKind: `max_daily`, `weekly_only` and `renal` checks, and their CP-SAT encoding:
the finding stays on while any flagged line is kept at its current dose).
"""

from __future__ import annotations

from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Any

from .models import Finding, MedItem, PatientRecord
from .rules import KINDS, RuleKind, cond_refs, make_finding, taken_for
from .terminology import cockcroft_gault

if TYPE_CHECKING:
    from .knowledge import Knowledge
    from .resolve import Encoding

CHECKS = ("max_daily", "weekly_only", "renal")
SEVERITIES = ("low", "moderate", "high", "critical")
RESULT_MAX_AGE_DAYS = 400  # a renal result older than this does not drive a dose finding (about 13 months)


def compile_dose_rules(kb: Knowledge, dosing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Validate and compile the dose rules: every rule has an id, a known check, ingredients the knowledge base
    knows, sources and a review date; an unverified rule is capped at moderate severity."""
    out: list[dict[str, Any]] = []
    for r in (dosing or {}).get("rules", []) or []:
        rid = r.get("id")
        if r.get("check") not in CHECKS:
            raise ValueError(f"dose rule {rid!r}: unknown check {r.get('check')!r} (known: {', '.join(CHECKS)})")
        ings = list(r.get("ingredients") or ([r["ingredient"]] if r.get("ingredient") else []))
        unknown = [i for i in ings if i not in kb.medicines]
        if not ings or unknown:
            raise ValueError(f"dose rule {rid!r}: unknown or missing ingredient(s) {unknown or ings}")
        if not r.get("sources") or not r.get("review_date"):
            raise ValueError(f"dose rule {rid!r}: sources and review_date are required")
        cr = dict(r)
        cr["kind"] = "dose"
        cr.setdefault("dose_adjustable", True)  # resolved by correcting the dose, not only by stopping
        cr["_kind"] = DoseCheck.key
        cr["_ingredients"] = frozenset(ings)
        cr["_drugs"], cr["_unless"], cr["_conditions"] = [], [], ()
        cr["_exclude"] = frozenset()
        verified = r.get("verified", True) is not False

        def cap(sev: str, _verified: bool = verified) -> str:
            return sev if _verified or SEVERITIES.index(sev) <= 1 else "moderate"

        cr["severity"] = cap(str(r.get("severity", "moderate")))
        cr["_bands"] = sorted(({**b, "severity": cap(str(b.get("severity", cr["severity"])))}
                               for b in r.get("bands", []) or []), key=lambda b: float(b["below"]))
        out.append(cr)
    by_id = {r["id"]: r for r in kb.rules}
    for cr in out:
        for band in cr["_bands"]:
            for key in ("raised_by", "absorbs"):
                if band.get(key) and band[key] not in by_id:
                    raise ValueError(f"dose rule {cr['id']!r}: band {key} names unknown rule {band[key]!r}")
            if band.get("absorbs"):
                by_id[band["absorbs"]]["_absorbed"] = partial(_judged_by_band, cr, band)
    return out


def _judged_by_band(rule: dict[str, Any], band: dict[str, Any], rec: PatientRecord, m: MedItem) -> bool:
    """Whether `band` of dose rule `rule` judges line `m` (its daily dose can be read and the renal value falls in
    the band), so the drug-result rule the band `absorbs` need not raise a second finding for the same situation."""
    if _mg(m, rule["_ingredients"]) is None:
        return False
    renal = renal_value(rec, str(rule.get("metric", "egfr")))
    if renal is None:
        return False
    return next((b for b in rule["_bands"] if renal[0] < float(b["below"])), None) is band


def _age_days(when: str, today: str) -> int | None:
    try:
        return (date.fromisoformat(today[:10]) - date.fromisoformat(when[:10])).days
    except ValueError:
        return None


def _recent(rec: PatientRecord, key: str) -> Any:
    res = rec.results.get(key)
    if res is None:
        return None
    if rec.today and res.when:
        age = _age_days(res.when, rec.today)
        if age is not None and age > RESULT_MAX_AGE_DAYS:
            return None
    return res


def renal_value(rec: PatientRecord, metric: str) -> tuple[float, list[str], str] | None:
    """(value, result references, how it was obtained) for `metric` "crcl" (recorded creatinine clearance, else
    Cockcroft-Gault from creatinine, body weight, age and sex, else eGFR as a stated fallback) or "egfr"."""
    if metric == "crcl":
        cc = _recent(rec, "creatinine_clearance")
        if cc is not None:
            return cc.value, [cc.ref], "recorded creatinine clearance"
        cr, wt = _recent(rec, "creatinine"), _recent(rec, "body_weight")
        if cr is not None and wt is not None and rec.age is not None:
            v = cockcroft_gault(rec.age, wt.value, cr.value, rec.sex)
            if v is not None:
                return v, [cr.ref, wt.ref], "creatinine clearance by Cockcroft-Gault"
    eg = _recent(rec, "egfr")
    if eg is None:
        return None
    how = "eGFR" if metric == "egfr" else "eGFR (creatinine clearance could not be calculated: weight, age or sex missing)"
    return eg.value, [eg.ref], how


def _lines(rec: PatientRecord, ings: frozenset[str]) -> list[MedItem]:
    return [m for m in rec.meds if not m.ingredients.isdisjoint(ings)]


def _directions(m: MedItem) -> str:
    text = m.dose.schedule.text if m.dose is not None and m.dose.schedule is not None else ""
    return f" ('{text}')" if text else ""


def _mg(m: MedItem, ings: frozenset[str]) -> float | None:
    d = m.dose
    if d is None:
        return None
    vals = [v for k, v in d.mg_per_day.items() if k in ings]
    return sum(vals) if vals else None


class DoseCheck(RuleKind):
    """A dose rule of dosing.yaml: `max_daily` (total mg/day of the ingredient across every current line above
    `max_mg_per_day`, optionally from `age_min`, only with one of `conditions` recorded and counting only lines
    taken for `min_days` or more), `weekly_only` (a line taken on more than `max_days_per_week`
    days a week) or `renal` (the first band whose `below` the renal value is under: any dose when its
    `max_mg_per_day` is 0, else a daily dose above it)."""

    key = "dose"
    reports = "dose"

    @staticmethod
    def flagged(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[tuple[list[MedItem], list[str],
                                                                                         str, str, str, bool]]:
        """(lines, result refs, severity, summary, detail, correctable by a dose change) for each finding."""
        ings = rule["_ingredients"]
        lines = _lines(rec, ings)
        if not lines:
            return []
        # a line whose dose the resolution corrects no longer counts (a contraindication is not corrected by dose)
        adjustable = [m for m in lines if not m.dose_reduced]
        check = rule["check"]
        if check == "max_daily":
            if "age_min" in rule and (rec.age is None or rec.age < int(rule["age_min"])):
                return []
            # `conditions`: only for a person with one of them recorded (e.g. the indication a STOPP criterion
            # names); `min_days`: only lines taken at least that long count ("long-term")
            crefs = cond_refs(rec, rule.get("conditions") or ())
            if rule.get("conditions") and not crefs:
                return []
            if rule.get("min_days") is not None:
                lines = [m for m in lines if taken_for(m, rec) >= int(rule["min_days"])]
                adjustable = [m for m in lines if not m.dose_reduced]
                if not lines:
                    return []
            if len(adjustable) < len(lines):
                return []
            dosed = [(m, _mg(m, ings)) for m in lines]
            known = [(m, v) for m, v in dosed if v is not None]
            total = sum(v for _m, v in known)
            limit = float(rule["max_mg_per_day"])
            if known and total > limit:
                parts = ", ".join(f"{m.display} up to {v:g} mg/day" for m, v in known)
                return [([m for m, _v in known], crefs, rule["severity"],
                         f"{rule['summary']}: up to {total:g} mg a day (maximum {limit:g} mg)",
                         f"{str(rule.get('detail', '')).strip()} Lines: {parts}.".strip(), True)]
            return []
        if check == "weekly_only":
            limit_days = float(rule.get("max_days_per_week", 1))
            bad = [m for m in adjustable if m.dose is not None and m.dose.days_per_week is not None
                   and m.dose.days_per_week > limit_days
                   and (not rule.get("route") or m.dose.route in (None, rule["route"]))]
            return [([m], [], rule["severity"], f"{rule['summary']}: {m.display}{_directions(m)}",
                     str(rule.get("detail", "")).strip(), True) for m in bad]
        renal = renal_value(rec, str(rule.get("metric", "egfr")))
        if renal is None:
            return []
        value, refs, how = renal
        band = next((b for b in rule["_bands"] if value < float(b["below"])), None)
        if band is None or band.get("raised_by"):
            return []  # no band, or a band whose situation another rule raises (one finding per situation)
        out = []
        limit = float(band.get("max_mg_per_day", 0))
        for m in (lines if limit <= 0 else adjustable):
            mg = _mg(m, ings)
            if limit > 0 and (mg is None or mg <= limit):
                continue
            dose_txt = f"{mg:g} mg/day" if mg is not None else "any dose"
            out.append(([m], refs, band["severity"],
                        f"{rule['summary']} ({how} {value:.0f}; {dose_txt}: {band.get('text', '')})",
                        str(rule.get("detail", "")).strip(), limit > 0))
        return out

    @staticmethod
    def detect(kb: Knowledge, rec: PatientRecord, rule: dict[str, Any]) -> list[Finding]:
        out = []
        for lines, refs, sev, summary, detail, _fix in DoseCheck.flagged(kb, rec, rule):
            out.append(make_finding({**rule, "severity": sev}, [*(m.ref for m in lines), *refs], summary=summary,
                                    detail=detail, kind="dose"))
        return out

    @staticmethod
    def encode(enc: Encoding, rule: dict[str, Any]) -> None:
        for lines, _refs, sev, _s, _d, by_dose in DoseCheck.flagged(enc.kb, enc.rec, rule):
            flagged = {m.ref for m in lines}
            # a contraindication (renal band with no permitted dose) is not resolved by a dose change
            terms = []
            for s_i, slot in enumerate(enc.slots):
                if slot.ref in flagged:
                    terms.extend(enc.terms(s_i, rule["_ingredients"], not_dose=by_dose))
            if terms:
                f = enc.finding_var(sev)
                for t in terms:
                    enc.model.Add(f >= t)


KINDS[DoseCheck.key] = DoseCheck  # registered here: rules.py cannot import this module (it imports rules.py)
