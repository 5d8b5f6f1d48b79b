"""Dosage: structured FHIR Dosage (doseAndRate, timing.repeat, timing.code, maxDosePerPeriod, asNeeded) and UK free-text
directions ("1 tablet twice a day", "two 500mg tablets four times daily", "10mg weekly on Mondays", "1-2 tablets up to
four times a day when required") -> a `Schedule`; with the product strengths from `terminology.parse_medicine_name`,
the most a line can deliver per day of each ingredient (`line_dose`).

Map of this module: `Schedule` (amount per administration, administrations per period, period, days of week,
as-needed, daily cap); `parse_dosage` (one FHIR Dosage element, falling back to its text); `parse_directions` (free
text); `schedule_of` (a MedicationRequest/MedicationStatement); `LineDose` and `line_dose` (per-ingredient maximum mg
per day and whether the line is taken on more than one day a week).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import orjson

from .terminology import MASS_TO_MG, UNIT_ALIASES, ParsedName, Strength

# -- the schedule ----------------------------------------------------------------------------------------------------
_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0}
# HL7 v3 GTSAbbreviation timing codes (FHIR timing.code, http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation)
_TIMING_CODES = {"QD": (1, 1.0), "BID": (2, 1.0), "TID": (3, 1.0), "QID": (4, 1.0), "AM": (1, 1.0), "PM": (1, 1.0),
                 "QOD": (1, 2.0), "Q4H": (6, 1.0), "Q6H": (4, 1.0), "Q8H": (3, 1.0), "Q12H": (2, 1.0), "WK": (1, 7.0),
                 "MO": (1, 30.0)}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass
class Schedule:
    """How a medicine is taken: `amount_low`-`amount_high` `unit` per administration (unit "" = one dose unit of
    the product, e.g. a tablet; a mass unit = that mass of the ingredient), `times_low`-`times_high`
    administrations per `period_days`, restricted to `days_of_week` when given; `max_per_day` caps the amount a
    day (e.g. "max 8 tablets in 24 hours")."""

    amount_low: float | None = None
    amount_high: float | None = None
    unit: str = ""
    times_low: float | None = None
    times_high: float | None = None
    period_days: float = 1.0
    days_of_week: tuple[str, ...] = ()
    as_needed: bool = False
    max_per_day: float | None = None
    max_per_day_unit: str = ""
    text: str = ""
    structured: bool = False

    def days_per_week(self) -> float | None:
        """On how many days of a week the medicine is taken (None when the frequency is unknown)."""
        if self.days_of_week:
            return float(len(set(self.days_of_week)))
        if self.times_high is None:
            return None
        if self.period_days >= 7:
            return min(7.0, self.times_high * 7.0 / self.period_days)
        return min(7.0, 7.0 / max(self.period_days, 1.0))

    def max_units_per_day(self) -> float | None:
        """The most of `unit` taken on a dosing day (a weekly dose counts in full on its day)."""
        if self.amount_high is None or self.times_high is None:
            return None
        if self.period_days <= 1:
            per_day = self.times_high / max(self.period_days, 1e-9) if self.period_days < 1 else self.times_high
        else:
            dosing_days = float(len(set(self.days_of_week))) if self.days_of_week else min(self.times_high,
                                                                                             self.period_days)
            per_day = self.times_high / max(dosing_days, 1.0)
        total = self.amount_high * per_day
        if self.max_per_day is not None and self.max_per_day_unit == self.unit:
            total = min(total, self.max_per_day)
        return total


# -- free text -------------------------------------------------------------------------------------------------------
_WORD_NUM = {"half": 0.5, "one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
             "eight": 8, "nine": 9, "ten": 10, "twelve": 12, "½": 0.5}
_NUMW = r"(?:\d+(?:\.\d+)?|half|one|two|three|four|five|six|seven|eight|nine|ten|twelve|½)"
_UNITS_TEXT = (r"(tablets?|tabs?|capsules?|caps?|puffs?|doses?|sachets?|drops?|patch(?:es)?|suppositor(?:y|ies)|"
               r"pessar(?:y|ies)|ampoules?|vials?|sprays?|applications?|mg|milligrams?|g|grams?|mcg|micrograms?|"
               r"ml|millilitres?|units?|5ml spoonfuls?|spoonfuls?)")
_AMOUNT_RE = re.compile(
    r"(?:take\s+|give\s+|inhale\s+|apply\s+|use\s+|insert\s+)?\b(" + _NUMW + r")(?:\s*(?:-|to|or)\s*(" + _NUMW + r"))?"
    r"\s*(?:x\s*)?(?:(\d+(?:\.\d+)?)\s*(mg|g|mcg|microgram|micrograms)\s+)?" + _UNITS_TEXT + r"?\b", re.I)
_FREQ_WORDS: list[tuple[str, float, float]] = [  # (pattern, times, period days)
    (r"\b(?:four|4)\s*(?:times|x)\s*(?:a|per|each)?\s*(?:day|daily)\b|\bqds\b|\bqid\b", 4, 1),
    (r"\b(?:three|3)\s*(?:times|x)\s*(?:a|per|each)?\s*(?:day|daily)\b|\btds\b|\btid\b", 3, 1),
    (r"\b(?:five|5)\s*(?:times|x)\s*(?:a|per|each)?\s*(?:day|daily)\b", 5, 1),
    (r"\b(?:six|6)\s*(?:times|x)\s*(?:a|per|each)?\s*(?:day|daily)\b", 6, 1),
    (r"\btwice\s*(?:a|per|each)?\s*(?:day|daily)\b|\b(?:two|2)\s*(?:times|x)\s*(?:a|per|each)?\s*(?:day|daily)\b|"
     r"\bbd\b|\bbid\b|\bevery\s*12\s*hours\b|\bmorning and (?:at )?night\b|\bmorning and evening\b", 2, 1),
    (r"\b(?:once|one time|1\s*x)\s*(?:a|per|each|every)\s*week\b|\bonce\s*weekly\b|\bweekly\b|\bevery\s*week\b|"
     r"\bper\s*week\b|\ba\s*week\b", 1, 7),
    (r"\b(?:twice|two times)\s*(?:a|per|each)\s*week\b|\btwice\s*weekly\b", 2, 7),
    (r"\b(?:once|one time)\s*(?:a|per|each)\s*month\b|\bmonthly\b|\bevery\s*month\b", 1, 30),
    (r"\bevery\s*other\s*day\b|\balternate\s*days\b|\bon\s*alternate\s*days\b|\bqod\b", 1, 2),
    (r"\bonce\s*(?:a|per|each)?\s*(?:day|daily)\b|\bdaily\b|\bevery\s*day\b|\beach\s*day\b|\bod\b|\bqd\b|\bo\.d\.\b|"
     r"\bat\s*night\b|\bat\s*bedtime\b|\bnocte\b|\bin\s*the\s*morning\b|\bmane\b|\bevery\s*morning\b|"
     r"\bevery\s*night\b|\bevery\s*evening\b|\bin\s*the\s*evening\b|\beach\s*(?:morning|night|evening)\b|"
     r"\ba\s*day\b|\bper\s*day\b", 1, 1),
]
_FREQ_RE = [(re.compile(p, re.I), t, d) for p, t, d in _FREQ_WORDS]
_HOURS_NUM = r"(\d+|one|two|three|four|five|six|eight|twelve)"
_EVERY_HOURS_RE = re.compile(r"\bevery\s*" + _HOURS_NUM + r"\s*(?:(?:-|to)\s*" + _HOURS_NUM
                             + r"\s*)?(?:hours|hrs|hourly|h)\b|\bq(\d+)h\b", re.I)
_DAY_RE = re.compile(r"\b(mon|tue|wed|thu|fri|sat|sun)[a-z]*s?\b", re.I)
_PRN_RE = re.compile(r"\b(?:when\s*required|as\s*required|when\s*needed|as\s*needed|if\s*needed|prn|p\.r\.n\.)\b", re.I)
_MAX_RE = re.compile(r"\b(?:max(?:imum)?\.?|not\s*more\s*than|no\s*more\s*than|up\s*to)\s*(" + _NUMW + r")\s*"
                     + _UNITS_TEXT + r"?\s*(?:in|per|a|each|every)\s*(?:24\s*hours|day|24\s*hrs)\b", re.I)
_UP_TO_TIMES_RE = re.compile(r"\bup\s*to\s*(one|two|three|four|five|six|\d+)\s*times\b", re.I)


def _num(tok: str | None) -> float | None:
    if tok is None:
        return None
    t = tok.lower()
    if t in _WORD_NUM:
        return float(_WORD_NUM[t])
    try:
        return float(t)
    except ValueError:
        return None


def _unit_word(u: str | None) -> str:
    if not u:
        return ""
    u = u.lower()
    if u.startswith(("tab", "cap", "puff", "dose", "sachet", "drop", "patch", "suppos", "pessar", "ampoule", "vial",
                     "spray", "applic")):
        return ""  # one dose unit of the product
    if u in ("5ml spoonful", "5ml spoonfuls"):
        return "5ml"
    if u.startswith("spoonful"):
        return "5ml"
    return UNIT_ALIASES.get(u.rstrip("s"), UNIT_ALIASES.get(u, u))


def parse_directions(text: str) -> Schedule | None:
    """Parse UK free-text directions. Returns None when neither an amount nor a frequency can be read."""
    parsed = _parse_directions(" ".join(str(text or "").split()))
    return None if parsed is None else replace(parsed)


@lru_cache(maxsize=8192)
def _parse_directions(text: str) -> Schedule | None:
    t = " ".join(str(text or "").replace("’", "'").split())
    if not t:
        return None
    s = Schedule(text=t)
    s.as_needed = bool(_PRN_RE.search(t))
    am = _AMOUNT_RE.search(t)
    if am and (am.group(5) or am.group(4) or not t[: am.start()].strip() or am.group(0).lower().startswith(
            ("take", "give", "inhale", "apply", "use", "insert"))):
        lo, hi = _num(am.group(1)), _num(am.group(2))
        if am.group(3) and am.group(4):  # "two 500mg tablets": the mass per administration
            per = float(am.group(3)) * MASS_TO_MG.get(UNIT_ALIASES.get(am.group(4).lower(), "mg"), 1.0)
            s.amount_low, s.amount_high, s.unit = (lo or 1) * per, (hi or lo or 1) * per, "mg"
        else:
            s.amount_low, s.amount_high = lo, hi or lo
            s.unit = _unit_word(am.group(5))
            if s.unit in MASS_TO_MG:  # keep masses in mg
                f = MASS_TO_MG[s.unit]
                s.amount_low = None if s.amount_low is None else s.amount_low * f
                s.amount_high = None if s.amount_high is None else s.amount_high * f
                s.unit = "mg"
    hm = _EVERY_HOURS_RE.search(t)
    days = tuple(dict.fromkeys(d.lower()[:3] for d in _DAY_RE.findall(t)))
    if hm:
        lo_h = _num(hm.group(1) or hm.group(3)) or 24.0
        hi_h = _num(hm.group(2)) or lo_h
        s.times_high, s.times_low, s.period_days = 24.0 / lo_h, 24.0 / hi_h, 1.0
    else:
        for rx, times, period in _FREQ_RE:
            if rx.search(t):
                s.times_low = s.times_high = float(times)
                s.period_days = float(period)
                break
    if days:
        s.days_of_week = days
        if s.times_high is None or s.period_days < 7:
            s.times_low = s.times_high = float(len(days)) if s.times_high is None else s.times_high
            s.period_days = 7.0 if s.times_high is None or s.times_high <= len(days) else s.period_days
    ut = _UP_TO_TIMES_RE.search(t)
    if ut and s.times_high is not None:
        s.times_low = 1.0
    mx = _MAX_RE.search(t)
    if mx:
        s.max_per_day = _num(mx.group(1))
        s.max_per_day_unit = _unit_word(mx.group(2)) if mx.group(2) else s.unit
    if s.amount_high is None and s.times_high is None:
        return None
    if s.amount_high is None and s.times_high is not None:
        s.amount_low = s.amount_high = 1.0  # "once daily": one dose unit
    return s


# -- FHIR Dosage -------------------------------------------------------------------------------------------------------
def _quantity(q: Any) -> tuple[float | None, str]:
    if not isinstance(q, dict) or not isinstance(q.get("value"), (int, float)) or isinstance(q.get("value"), bool):
        return None, ""
    return float(q["value"]), _unit_word(str(q.get("unit") or q.get("code") or ""))


def parse_dosage(d: dict[str, Any]) -> Schedule | None:
    """One FHIR Dosage element (R4): doseAndRate[].doseQuantity/doseRange, timing.repeat (frequency, frequencyMax,
    period, periodMax, periodUnit, dayOfWeek, timeOfDay, when), timing.code, maxDosePerPeriod, asNeeded[x]; its
    `text` fills what the structure leaves out."""
    if not isinstance(d, dict):
        return None
    s = Schedule(structured=True, text=str(d.get("text") or ""))
    s.as_needed = d.get("asNeededBoolean") is True or bool(d.get("asNeededCodeableConcept"))
    for dr in d.get("doseAndRate") or []:
        if not isinstance(dr, dict):
            continue
        v, u = _quantity(dr.get("doseQuantity"))
        if v is not None:
            s.amount_low = s.amount_high = v
            s.unit = u
            break
        rng = dr.get("doseRange") or {}
        lo, u1 = _quantity(rng.get("low"))
        hi, u2 = _quantity(rng.get("high"))
        if lo is not None or hi is not None:
            s.amount_low, s.amount_high, s.unit = lo if lo is not None else hi, hi if hi is not None else lo, u2 or u1
            break
    if s.unit in MASS_TO_MG and s.amount_high is not None:
        f = MASS_TO_MG[s.unit]
        s.amount_low = None if s.amount_low is None else s.amount_low * f
        s.amount_high *= f
        s.unit = "mg"
    timing = d.get("timing") or {}
    rep = timing.get("repeat") or {}
    if rep.get("frequency") is not None or rep.get("period") is not None:
        freq = float(rep.get("frequency") or 1)
        freq_max = float(rep.get("frequencyMax") or freq)
        period = float(rep.get("period") or 1)
        unit_days = _PERIOD_DAYS.get(str(rep.get("periodUnit") or "d"), 1.0)
        pdays = period * unit_days
        if pdays < 1:  # "every 4 hours": times per day
            s.times_low, s.times_high, s.period_days = freq / pdays, freq_max / pdays, 1.0
            if rep.get("periodMax"):
                s.times_low = freq / (float(rep["periodMax"]) * unit_days)
        else:
            s.times_low, s.times_high, s.period_days = freq, freq_max, pdays
    elif rep.get("timeOfDay") or rep.get("when"):
        n = float(len(rep.get("timeOfDay") or rep.get("when") or []))
        s.times_low = s.times_high = n
    code = ((timing.get("code") or {}).get("coding") or [{}])[0].get("code") if timing.get("code") else None
    if s.times_high is None and code in _TIMING_CODES:
        times, pdays = _TIMING_CODES[code]
        s.times_low = s.times_high = float(times)
        s.period_days = pdays
    if rep.get("dayOfWeek"):
        s.days_of_week = tuple(str(x)[:3].lower() for x in rep["dayOfWeek"] if str(x)[:3].lower() in _DAYS)
        if s.period_days < 7 and len(s.days_of_week) < 7:
            s.period_days = 7.0
            s.times_low = s.times_high = float(len(s.days_of_week)) * (s.times_high or 1.0)
    mdp = d.get("maxDosePerPeriod")
    if isinstance(mdp, dict):
        nv, nu = _quantity(mdp.get("numerator"))
        dv, du = _quantity(mdp.get("denominator"))
        if nv is not None:
            days = (dv or 1.0) * (_PERIOD_DAYS.get({"day": "d", "h": "h", "hour": "h"}.get(du, du), 1.0) if du else 1.0)
            s.max_per_day = nv / max(days, 1.0)
            s.max_per_day_unit = "mg" if nu in MASS_TO_MG else nu
            if nu in MASS_TO_MG:
                s.max_per_day *= MASS_TO_MG[nu]
    if s.text:
        ft = parse_directions(s.text)
        if ft is not None:
            if s.amount_high is None:
                s.amount_low, s.amount_high, s.unit = ft.amount_low, ft.amount_high, ft.unit
            if s.times_high is None:
                s.times_low, s.times_high, s.period_days = ft.times_low, ft.times_high, ft.period_days
            if not s.days_of_week and ft.days_of_week:
                s.days_of_week = ft.days_of_week
                if ft.period_days >= 7:
                    s.period_days = ft.period_days
            s.as_needed = s.as_needed or ft.as_needed
            if s.max_per_day is None:
                s.max_per_day, s.max_per_day_unit = ft.max_per_day, ft.max_per_day_unit
    if s.amount_high is None and s.times_high is None:
        return None
    if s.amount_high is None:
        s.amount_low = s.amount_high = 1.0
    return s


_STRUCTURED: dict[bytes, Schedule | None] = {}


def _parse_structured(d: dict[str, Any]) -> Schedule | None:
    """parse_dosage, remembered per distinct Dosage element (feeds repeat the same few): shared, read-only."""
    try:
        key = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return parse_dosage(d)
    hit = _STRUCTURED.get(key, _MISSING)
    if hit is _MISSING:
        if len(_STRUCTURED) >= 8192:
            _STRUCTURED.clear()
        hit = _STRUCTURED[key] = parse_dosage(d)
    return hit  # type: ignore[return-value]


_MISSING = object()


def schedule_of(res: dict[str, Any]) -> Schedule | None:
    """The schedule of a MedicationRequest (`dosageInstruction`) or MedicationStatement (`dosage`): the first dosage
    element that can be read; several sequential elements are summed per day when each is read."""
    dosages = [d for d in (res.get("dosageInstruction") or res.get("dosage") or []) if isinstance(d, dict)]
    # text-only directions (the common case in feeds) are parsed once per distinct text and shared, read-only
    parsed = [p for p in (_parse_directions(" ".join(str(d["text"]).split())) if d.keys() == {"text"}
                          else _parse_structured(d) for d in dosages) if p is not None]
    if not parsed:
        return None
    if len(parsed) == 1:
        return parsed[0]
    first = parsed[0]
    same_unit = all(p.unit == first.unit for p in parsed)
    daily = [p.max_units_per_day() for p in parsed]
    if same_unit and all(x is not None for x in daily) and all(p.period_days <= 1 for p in parsed):
        return Schedule(amount_low=sum(x for x in daily if x), amount_high=sum(x for x in daily if x),
                        unit=first.unit, times_low=1.0, times_high=1.0, period_days=1.0,
                        as_needed=all(p.as_needed for p in parsed), text="; ".join(p.text for p in parsed),
                        structured=first.structured)
    return first


# -- per-ingredient daily dose -----------------------------------------------------------------------------------
@dataclass
class LineDose:
    """What one medicine line delivers: the most mg per day of each ingredient it could be read for, whether it is
    taken on more than one day a week, and the readings behind it."""

    mg_per_day: dict[str, float] = field(default_factory=dict)
    days_per_week: float | None = None
    schedule: Schedule | None = None
    strengths: dict[str, Strength] = field(default_factory=dict)
    form: str | None = None
    route: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For JSON output."""
        return {"mg_per_day": {k: round(v, 3) for k, v in self.mg_per_day.items()},
                "days_per_week": self.days_per_week,
                "as_needed": bool(self.schedule and self.schedule.as_needed),
                "directions": self.schedule.text if self.schedule else "", "form": self.form, "route": self.route}


def ingredient_strengths(parsed: ParsedName, resolve: Any) -> dict[str, Strength]:
    """Strength of each ingredient key in a parsed name; `resolve(name_text)` gives the ingredient keys a segment
    names (a named combination's compound strength "30mg/500mg" follows the combination's ingredient order)."""
    out: dict[str, Strength] = {}
    for seg in parsed.ingredients:
        keys = resolve(seg.name)
        if parsed.compound and len(keys) == len(parsed.compound):
            for k, st in zip(keys, parsed.compound, strict=True):
                out.setdefault(k, st)
        elif seg.strength is not None and len(keys) == 1:
            out.setdefault(keys[0], seg.strength)
    return out


def line_dose(strengths: dict[str, Strength], schedule: Schedule | None, parsed: ParsedName | None = None) -> LineDose:
    """The most mg/day of each ingredient a line can deliver: amount per administration x administrations a day,
    where a dose-unit amount ("2 tablets", "10 ml") is multiplied by the product's strength per unit (per tablet, per
    ml) and a mass amount ("500mg") is taken as the ingredient's own amount (single-ingredient products only)."""
    out = LineDose(schedule=schedule, strengths=dict(strengths),
                   form=parsed.form if parsed else None, route=parsed.route if parsed else None)
    if schedule is None:
        return out
    out.days_per_week = schedule.days_per_week()
    units = schedule.max_units_per_day()
    if units is None:
        return out
    for key, st in strengths.items():
        per = st.mg_per_unit()
        if per is None:
            continue
        if schedule.unit == "mg":
            if len(strengths) == 1:
                out.mg_per_day[key] = units
        elif schedule.unit == "":
            if st.per_unit in ("", "actuation", "dose"):
                out.mg_per_day[key] = units * per
        elif schedule.unit in ("ml", "5ml") and st.per_unit == "ml":
            out.mg_per_day[key] = units * (5.0 if schedule.unit == "5ml" else 1.0) * per
    return out
