"""Data for the shared outcome measures (issue 18 parts 4 and 8) and each measure's expected value as ground truth.

Adds, to what `synth.person.Person` already generates: an ICD-10 primary diagnosis on every emergency admission
(chronic ambulatory care sensitive or not), a discharge ready date on admissions discharged alive (some discharges
delayed beyond it), follow-up contacts after discharge (some late, some missing) and personalised care and support
plans (what matters, goals, owned actions) for a share of people with multimorbidity. Rates:
knowledge/population/outcomes.yaml (sources there). Readmissions, advice-and-guidance response times and named-GP
continuity come from the existing activity; this module records the contacts as they are generated.

Every draw comes from a random stream of its own (`{seed}:{index}:outcomes`) and new resources take id prefixes of
their own, so nothing else the generator draws or names changes. The measures' definitions
(population/measures/definitions/*.yaml: periods, windows, code lists) are read, not re-implemented: `truth` works
out each person's contribution from the generator's own record of what it made, independently of the engine that
reads the FHIR resources, and `expected` sums them into each measure's expected value."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

ICD10 = "http://hl7.org/fhir/sid/icd-10"
EXT = "https://joinedup.example/fhir/StructureDefinition/"
EXT_DISCHARGE_READY = EXT + "discharge-ready-date"
EXT_WRITTEN_BY = EXT + "what-matters-written-by"
PLAN_KIND = "https://joinedup.example/fhir/CodeSystem/care-plan-kind"
PLAN_CODE = "personalised-care-and-support-plan"
CLASS_VR = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"}
CLASS_AMB = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"}
FOLLOW_UP_CLASSES = ("AMB", "VR", "HH")


@lru_cache(maxsize=1)
def rates() -> dict[str, Any]:
    text = resources.files("joinedup.knowledge").joinpath("population/outcomes.yaml").read_text("utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, Any]]:
    """The measures' definitions (population/measures/definitions/*.yaml), by id."""
    folder = resources.files("joinedup.population.measures").joinpath("definitions")
    out = {}
    for f in sorted(folder.iterdir(), key=lambda x: x.name):
        if f.name.endswith(".yaml"):
            d = yaml.safe_load(f.read_text("utf-8"))
            out[d["id"]] = d
    return out


@lru_cache(maxsize=1)
def acsc_prefixes() -> tuple[str, ...]:
    text = resources.files("joinedup.population.measures").joinpath("codelists/acsc-chronic-icd10.yaml")
    groups = yaml.safe_load(text.read_text("utf-8"))["groups"]
    return tuple(c.replace(".", "") for g in groups.values() for c in g["codes"])


@lru_cache(maxsize=1)
def ltc_of_code() -> dict[str, str]:
    """SNOMED CT code -> long-term condition, from the QOF register lists the care-plan measure names."""
    lists = set(definitions()["care-plan-what-matters"]["ltc_codelists"])
    text = resources.files("joinedup.knowledge").joinpath("terminology/codelists/snomed_conditions.csv").read_text(
        "utf-8")
    out = {}
    for line in text.splitlines()[1:]:
        code, condition, codelist = line.split(",")[:3]
        if codelist in lists:
            out[code] = condition
    return out


def period(measure: str, today: date) -> tuple[date, date]:
    """First and last day of a measure's period ending `lag_days` before `today` (months long)."""
    p = definitions()[measure]["period"]
    end = today - timedelta(days=p.get("lag_days", 0))
    months = p.get("months", 12)
    y, m = divmod(end.year * 12 + end.month - 1 - months, 12)
    day = min(end.day, [31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31,
                        30, 31][m])
    return date(y, m + 1, day) + timedelta(days=1), end


def _state(p: Any) -> dict[str, Any]:
    st = getattr(p, "_outcomes", None)
    if st is None:
        st = p._outcomes = {"rng": random.Random(f"{p.c.seed}:{p.i}:outcomes"), "contacts": [], "spells": [],
                            "advice": []}
    return st


# -- hooks called by Person while it generates ------------------------------------------------------------------
def on_encounter(p: Any, res: dict[str, Any], *, org: str, cls: dict, day: int, minute: int, end_day: int,
                 practitioner: str | None, subject: dict | None) -> None:
    """Record a contact of the person's NHS record; on an emergency admission add the primary diagnosis and, when
    discharged alive, the discharge ready date (before the Encounter is written)."""
    if subject is not None:  # the local authority's own record of the person
        return
    st = _state(p)
    code = cls.get("code")
    st["contacts"].append({"id": res["id"], "org": org, "class": code, "day": day, "minute": minute,
                           "practitioner": practitioner})
    if code != "IMP":
        return
    rng, k = st["rng"], rates()
    reason = None
    cid = ((res.get("reasonReference") or [{}])[0].get("reference") or "").removeprefix("Condition/")
    for key, entry in p.conds.items():
        if entry.get("id") == cid:
            reason = key
    a = k["acsc"]
    if reason in a["codes"] and rng.random() < a["p_acsc"]:
        dx = a["codes"][reason]
    else:
        dx = a["other"].get(reason or "", a["other"]["default"])
    res["reasonCode"] = [{"coding": [{"system": ICD10, "code": dx["code"], "display": dx["display"]}],
                          "text": dx["display"]}]
    died = ((res.get("hospitalization") or {}).get("dischargeDisposition") or {}).get("coding", [{}])[0].get(
        "code") == "exp"
    ready = None
    if not died:
        d = k["discharge"]
        delay = 0
        if rng.random() < d["p_delayed"]:
            delay = max(1, round(rng.lognormvariate(math.log(d["delay_median_days"]), d["delay_sigma"])))
        ready = max(day, end_day - delay)
        res.setdefault("extension", []).append({"url": EXT_DISCHARGE_READY, "valueDate": p.c.day(ready)})
    st["spells"].append({"start": day, "end": end_day, "died": died, "icd10": dx["code"], "ready": ready,
                         "org": org})


def on_advice(p: Any, sent: int, minute: int, answered: tuple[int, int] | None) -> None:
    """An advice and guidance request and, when answered before the person's last day, when."""
    _state(p)["advice"].append((sent, minute, answered))


# -- resources added after the person's story -----------------------------------------------------------------
def emit(p: Any) -> None:
    """Follow-up contacts after discharge and personalised care and support plans."""
    st = _state(p)
    rng, k, c = st["rng"], rates(), p.c
    d = k["discharge"]
    prac = p.practice
    for spell in list(st["spells"]):
        if spell["died"]:
            continue
        x = rng.random()
        if x < d["p_follow_up_7d"]:
            day = spell["end"] + rng.randint(1, 7)
        elif x < d["p_follow_up_7d"] + d["p_follow_up_later"]:
            day = spell["end"] + rng.randint(8, 21)
        else:
            continue
        remote = rng.random() < 0.5
        minute = rng.randrange(480, 1080, 10)
        if day < p.end:
            p.encounter(p.org, CLASS_VR if remote else CLASS_AMB,
                        "GP consultation" + (" (telephone)" if remote else ""), day, minute, 10, p.usual_gp,
                        prac["location"])
    if p.death is not None or p.age < 18 or _ltc_count(p) < 2:
        return
    cp = k["care_plan"]
    if rng.random() >= cp["p_plan"]:
        return
    created = c.t0 + rng.randrange(max(1, c.today_ord - c.t0))
    gp = p.usual_gp
    goals = []
    for j in range(rng.randint(*cp["goals"])):
        gid = p.nid("pgoal")
        goals.append(gid)
        p.emit("Goal", {
            "resourceType": "Goal", "id": gid, "meta": c.meta[p.org], "lifecycleStatus": "active",
            "description": {"text": cp["goal_texts"][(p.i + j) % len(cp["goal_texts"])]}, "subject": p.pref,
            "startDate": c.day(created), "expressedBy": {"reference": f"Patient/{p.pid}", "display": "the person"},
            "target": [{"dueDate": c.day(created + 180)}]})
    actions = []
    for j in range(rng.randint(*cp["actions"])):
        actions.append({"id": f"act-{j + 1}", "detail": {
            "status": "in-progress" if rng.random() < 0.6 else "completed",
            "description": cp["action_texts"][(p.i + j) % len(cp["action_texts"])],
            "performer": [{"reference": f"Practitioner/{gp}"}, {"reference": f"Organization/{p.org}"}],
            "scheduledPeriod": {"end": c.day(created + 90)}}})
    plan: dict[str, Any] = {
        "resourceType": "CarePlan", "id": p.nid("pcsp"), "meta": c.meta[p.org], "status": "active",
        "intent": "plan", "title": "Personalised care and support plan",
        "category": [{"coding": [{"system": PLAN_KIND, "code": PLAN_CODE,
                                  "display": "Personalised care and support plan"}]}],
        "subject": p.pref, "created": c.day(created), "author": {"reference": f"Practitioner/{gp}"},
        "goal": [{"reference": f"Goal/{g}"} for g in goals], "activity": actions}
    if rng.random() < cp["p_what_matters"]:
        plan["description"] = cp["what_matters"][rng.randrange(len(cp["what_matters"]))]
        plan["extension"] = [{"url": EXT_WRITTEN_BY, "valueString": "the person with support"}]
    p.emit("CarePlan", plan)
    st["plan"] = "description" in plan


def _ltc_count(p: Any) -> int:
    table = ltc_of_code()
    found = {table[c["code"]] for entry in p.conds.values() for c in (entry.get("code") or {}).get("coding") or []
             if c.get("code") in table}
    return len(found)


# -- ground truth ------------------------------------------------------------------------------------------------
def truth(p: Any) -> None:
    """Each measure's numerator and denominator for this person (or the values a distribution is made of)."""
    st = _state(p)
    c = p.c
    today = date.fromordinal(c.today_ord)
    pid = f"Patient/{p.pid}"
    out: dict[str, dict[str, Any]] = {}

    def add(measure: str, **values: Any) -> None:
        rec = out.setdefault(measure, {"kind": "measure", "measure": measure, "patient": pid})
        for key, v in values.items():
            rec[key] = rec.get(key, 0) + v if not isinstance(v, list) else rec.get(key, []) + v

    def in_period(measure: str, day: int) -> bool:
        a, b = period(measure, today)
        return a.toordinal() <= day <= b.toordinal()

    # ACSC admissions per 100,000: alive and born by the middle of the period
    a, b = period("acsc-admissions", today)
    mid = (a.toordinal() + b.toordinal()) // 2
    if p.birth_ord <= mid and (p.death is None or p.death[0] >= mid):
        add("acsc-admissions", denominator=1)
    prefixes = acsc_prefixes()
    spells = sorted(st["spells"], key=lambda s: s["start"])
    for s in spells:
        if in_period("acsc-admissions", s["start"]) and s["icd10"].replace(".", "").startswith(prefixes):
            add("acsc-admissions", numerator=1)
    # readmissions, delayed discharges, follow-up: spells discharged alive
    window = definitions()["readmissions-30d"]["window_days"]
    fwindow = definitions()["follow-up-7d"]["window_days"]
    for s in spells:
        if s["died"]:
            continue
        if in_period("readmissions-30d", s["end"]):
            re = any(0 <= t["start"] - s["end"] <= window - 1 for t in spells if t is not s)
            add("readmissions-30d", denominator=1, numerator=int(re))
        if in_period("delayed-discharges", s["end"]) and s["ready"] is not None:
            add("delayed-discharges", denominator=1, numerator=int(s["end"] > s["ready"]),
                delay_days=s["end"] - s["ready"])
        if in_period("follow-up-7d", s["end"]):
            seen = any(1 <= t["day"] - s["end"] <= fwindow and t["class"] in FOLLOW_UP_CLASSES
                       and (t["org"] == p.org or t["class"] == "HH") for t in st["contacts"])
            add("follow-up-7d", denominator=1, numerator=int(seen))
    # advice and guidance
    for sent, minute, answered in st["advice"]:
        if not in_period("advice-guidance-response", sent):
            continue
        if answered is None:
            add("advice-guidance-response", requests=1, unanswered=1)
        else:
            days = ((answered[0] - sent) * 1440 + answered[1] - minute) / 1440
            add("advice-guidance-response", requests=1, days=[round(days, 6)])
    # continuity: GP consultations at the practice in the period
    gps = set(p.practice["gps"])
    visits = sorted((t for t in st["contacts"] if t["org"] == p.org and t["practitioner"] in gps
                     and in_period("continuity-upc", t["day"])), key=lambda t: (t["day"], t["minute"], t["id"]))
    n = len(visits)
    if n >= 1:
        add("continuity-named-gp", denominator=n, numerator=sum(1 for t in visits if t["practitioner"] == p.usual_gp))
    if n >= 2:
        counts = Counter(t["practitioner"] for t in visits)
        add("continuity-upc", denominator=1, value=max(counts.values()) / n)
        add("continuity-coc", denominator=1, value=(sum(v * v for v in counts.values()) - n) / (n * (n - 1)))
        same = sum(1 for x, y in zip(visits, visits[1:]) if x["practitioner"] == y["practitioner"])
        add("continuity-secon", denominator=1, value=same / (n - 1))
    # care plans: living people with multimorbidity (any age; plans are generated for adults)
    if p.death is None and _ltc_count(p) >= 2:
        add("care-plan-what-matters", denominator=1, numerator=int(bool(st.get("plan"))))
    for rec in out.values():
        p.truth(rec)


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (Hyndman-Fan type 7: numpy.percentile, DuckDB quantile_cont)."""
    if not values:
        return None
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def expected(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measure's expected value over the whole population, from the per-person ground truth."""
    totals: dict[str, dict[str, Any]] = {}
    for r in records:
        t = totals.setdefault(r["measure"], {})
        for key, v in r.items():
            if key in ("kind", "measure", "patient"):
                continue
            t[key] = t.get(key, [] if isinstance(v, list) else 0) + v
    out = []
    for mid, d in definitions().items():
        t = totals.get(mid, {})
        num, den = t.get("numerator", 0), t.get("denominator", 0)
        rec: dict[str, Any] = {"kind": "measure_expected", "measure": mid}
        if d["method"] == "advice_response":
            days = t.get("days", [])
            rec.update(requests=t.get("requests", 0), answered=len(days), unanswered=t.get("unanswered", 0),
                       median_days=quantile(days, 0.5), p90_days=quantile(days, 0.9))
        elif d["kind"] == "mean_index":
            rec.update(denominator=den, value=(t.get("value", 0) / den) if den else None)
        else:
            rec.update(numerator=num, denominator=den, value=(num / den * d.get("per", 1)) if den else None)
            if d["method"] == "delayed_discharge":
                rec["mean_delay_days"] = t.get("delay_days", 0) / den if den else None
        out.append(rec)
    return out
