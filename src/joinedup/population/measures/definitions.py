"""The shared outcome measures as data: `definitions/*.yaml` (what is counted, the period, the breakdowns and the
source of the definition), code lists in `codelists/`, and the ViewDefinitions that flatten FHIR in `views/`."""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson
import yaml

BREAKDOWNS = {"practice": "registered practice (ODS code)", "pcn": "primary care network of the practice (ODS code)",
              "organisation": "organisation responsible (the provider for hospital measures, else the practice)",
              "imd": "deprivation quintile of the person's area (IMD, 1 = most deprived)",
              "age": "age band at the end of the period", "ethnicity": "ethnic group (Census 2021 high-level groups)",
              "month": "calendar month of the event (trend)"}
AGE_BANDS = [(0, "0-17"), (18, "18-39"), (40, "40-64"), (65, "65-74"), (75, "75-84"), (85, "85+")]
REQUIRED = ("id", "title", "method", "kind", "numerator", "denominator", "exclusions", "period", "breakdowns",
            "source")
METHODS = {"acsc_rate", "readmission", "delayed_discharge", "advice_response", "continuity", "care_plan", "follow_up"}


class MeasureInputError(ValueError):
    """Bad input naming a measure or breakdown (one line, safe to show)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _files(folder: str):
    return sorted((f for f in resources.files("joinedup.population.measures").joinpath(folder).iterdir()),
                  key=lambda f: f.name)


@lru_cache(maxsize=1)
def measures() -> dict[str, dict[str, Any]]:
    """Every measure definition by id, checked: required fields, a known method and breakdowns, a source with a
    document, a URL and a version."""
    out: dict[str, dict[str, Any]] = {}
    for f in _files("definitions"):
        if not f.name.endswith(".yaml"):
            continue
        d = yaml.safe_load(f.read_text("utf-8"))
        missing = [k for k in REQUIRED if k not in d]
        if missing or d["method"] not in METHODS or not set(d["breakdowns"]) <= set(BREAKDOWNS) \
                or not all(d["source"].get(k) for k in ("document", "url", "version")):
            raise ValueError(f"measure definition {f.name} is incomplete or names an unknown method or breakdown")
        out[d["id"]] = d
    return out


def measure(measure_id: str) -> dict[str, Any]:
    found = measures().get(measure_id)
    if found is None:
        raise MeasureInputError(f"unknown measure '{measure_id}' (one of {', '.join(sorted(measures()))})",
                                status=404)
    return found


def check_breakdown(defn: dict[str, Any], by: str | None) -> None:
    if by is None:
        return
    if by not in BREAKDOWNS:
        raise MeasureInputError(f"unknown breakdown '{by}' (one of {', '.join(BREAKDOWNS)})")
    if by not in defn["breakdowns"]:
        raise MeasureInputError(f"measure '{defn['id']}' cannot be broken down by {by} (it can by "
                                f"{', '.join(defn['breakdowns'])})")


@lru_cache(maxsize=1)
def views() -> dict[str, dict[str, Any]]:
    """The ViewDefinitions the measures are computed from, by table name (file stem)."""
    return {f.name.removesuffix(".json"): orjson.loads(f.read_bytes()) for f in _files("views")
            if f.name.endswith(".json")}


@lru_cache(maxsize=4)
def codelist(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("joinedup.population.measures").joinpath(f"codelists/{name}")
                          .read_text("utf-8"))


@lru_cache(maxsize=1)
def ltc_codes() -> list[tuple[str, str]]:
    """(SNOMED CT code, long-term condition) of the QOF register lists the care-plan measure names."""
    lists = set(measure("care-plan-what-matters")["ltc_codelists"])
    text = resources.files("joinedup.knowledge").joinpath("terminology/codelists/snomed_conditions.csv").read_text(
        "utf-8")
    out = []
    for line in text.splitlines()[1:]:
        code, condition, listed = line.split(",")[:3]
        if listed in lists:
            out.append((code, condition))
    return out


def period(defn: dict[str, Any], today: date) -> tuple[date, date]:
    """First and last day of the measure's period: `months` long, ending `lag_days` before `today`."""
    p = defn["period"]
    end = today - timedelta(days=p.get("lag_days", 0))
    y, m = divmod(end.year * 12 + end.month - 1 - p.get("months", 12), 12)
    first = date(y, m + 1, 1)
    last_of_month = (date(y + (m + 1) // 12, (m + 1) % 12 + 1, 1) - timedelta(days=1)).day
    return first.replace(day=min(end.day, last_of_month)) + timedelta(days=1), end


def summary(defn: dict[str, Any]) -> dict[str, Any]:
    """A definition as published: everything but the engine's method name."""
    return {k: v for k, v in defn.items() if k not in ("method",)}
