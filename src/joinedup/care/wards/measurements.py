"""What virtual wards monitor, as data (knowledge/wards/measurements.yaml): codes, UCUM units and conversions, the
values that can physically occur, and the cited default limits.

* `MEASUREMENTS`: key -> `Measurement` (spo2, heart_rate, respiratory_rate, temperature, systolic, diastolic,
  weight, glucose); `by_type(type)` for the readings API, `by_code(loinc)` for Observations from anywhere.
* `to_unit(m, value, unit)`: the value in the measurement's own unit, or a `UnitProblem` saying why not.
* `limit_problems(raw)`: agreed limits checked per measurement (a number, a known unit, inside the possible range,
  lower below upper): `(limits, [(field, message), ...])` so a page can show every problem by its field and the
  API the first as an OperationOutcome naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

SOURCE = Path(__file__).resolve().parents[2] / "knowledge" / "wards" / "measurements.yaml"


@dataclass(frozen=True)
class Measurement:
    key: str
    display: str
    short: str
    type: str
    loinc: tuple[str, ...]
    loinc_display: str
    unit: str
    unit_words: str
    units: dict[str, Any]
    possible: tuple[float, float]
    possible_basis: str
    default_min: float | None = None
    default_max: float | None = None
    default_source: str | None = None
    unit_choices: tuple[str, ...] = field(default=())

    @property
    def code(self) -> str:
        return self.loinc[0]

    def words(self, value: float) -> str:
        """'94 %', '37.2 °C', '110 beats/min' (numbers as people write them)."""
        text = f"{value:.1f}".rstrip("0").rstrip(".") if not float(value).is_integer() else f"{value:.0f}"
        return f"{text}{'' if self.unit_words == '%' else ' '}{self.unit_words}"


class UnitProblem(ValueError):
    """A value that cannot be taken in this measurement's unit (unknown unit, or outside the possible range)."""


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    return yaml.safe_load(SOURCE.read_text(encoding="utf-8"))


def knowledge_version() -> str:
    return str(_load()["version"])


@lru_cache(maxsize=1)
def measurements() -> dict[str, Measurement]:
    out = {}
    for key, m in _load()["measurements"].items():
        d = m.get("default_limits") or {}
        out[key] = Measurement(key=key, display=m["display"], short=m["short"], type=m["type"],
                               loinc=tuple(m["loinc"]), loinc_display=m["loinc_display"], unit=m["unit"],
                               unit_words=m["unit_words"], units=dict(m["units"]),
                               possible=(float(m["possible"][0]), float(m["possible"][1])),
                               possible_basis=m["possible_basis"], default_min=d.get("min"), default_max=d.get("max"),
                               default_source=m.get("default_source"), unit_choices=tuple(m.get("form_units") or [m["unit"]]))
    return out


def bp_panel() -> tuple[str, str]:
    p = _load()["blood_pressure_panel"]
    return p["loinc"], p["display"]


def by_type(kind: str) -> Measurement | None:
    return next((m for m in measurements().values() if m.type == kind), None)


def by_code(code: str | None) -> Measurement | None:
    return next((m for m in measurements().values() if code in m.loinc), None) if code else None


def all_codes() -> list[str]:
    return [c for m in measurements().values() for c in m.loinc] + [bp_panel()[0]]


def default_limits() -> dict[str, float]:
    """The cited defaults as `{key}_min` / `{key}_max` in each measurement's own unit."""
    out: dict[str, float] = {}
    for m in measurements().values():
        if m.default_min is not None:
            out[f"{m.key}_min"] = float(m.default_min)
        if m.default_max is not None:
            out[f"{m.key}_max"] = float(m.default_max)
    return out


def limit_fields() -> list[str]:
    return [f"{k}_{end}" for k in measurements() for end in ("min", "max")]


def unit_words(m: Measurement, unit: str) -> str:
    """How a UCUM unit is written for people: 'Cel' -> '°C', '[degF]' -> '°F', '[lb_av]' -> 'lb'."""
    return {"Cel": "°C", "[degF]": "°F", "[lb_av]": "lb", "mm[Hg]": "mmHg", "/min": m.unit_words}.get(unit, unit)


def _factor(m: Measurement, unit: Any) -> Any:
    if not isinstance(unit, str) or not unit.strip():
        return None
    u = unit.strip()
    if u in m.units:
        return m.units[u]
    lower = {k.lower(): v for k, v in m.units.items()}
    return lower.get(u.lower())


def to_unit(m: Measurement, value: Any, unit: Any) -> float:
    """`value` in `unit` converted to the measurement's own unit; UnitProblem when the unit is unknown for this
    measurement or the result cannot physically occur."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UnitProblem(f"needs a number (got {value!r})")
    factor = _factor(m, unit)
    if factor is None:
        accepted = " or ".join(unit_words(m, u) for u in m.unit_choices)
        raise UnitProblem(f"must be in {accepted} (got {unit!r})")
    v = (float(value) - 32) * 5 / 9 if factor == "degF" else float(value) * float(factor)
    v = round(v, 2)
    lo, hi = m.possible
    if not lo <= v <= hi:
        shown = m.words(float(value)) if factor == 1 else f"{value:g} {unit_words(m, str(unit).strip())}"
        raise UnitProblem(f"of {shown} cannot be right: possible values are {m.words(lo)} to {m.words(hi)}; "
                          "check the number and its units")
    return v


def limit_problems(raw: Any) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Agreed limits from `raw` (`{"spo2_min": 88}` or `{"spo2_min": {"value": 88, "unit": "%"}}`), the defaults
    for those not given, and every problem as (field, message). Limits are kept in each measurement's own unit."""
    out = default_limits()
    problems: list[tuple[str, str]] = []
    if raw in (None, {}):
        return out, problems
    if not isinstance(raw, dict):
        return out, [("limits", 'limits must be an object such as {"spo2_min": 88}')]
    ms = measurements()
    given: dict[str, float] = {}
    for k, v in raw.items():
        key, _, end = str(k).rpartition("_")
        m = ms.get(key)
        if m is None or end not in ("min", "max"):
            problems.append((k, f"Unknown limit '{k}': choose from {', '.join(limit_fields())}"))
            continue
        unit = m.unit
        if isinstance(v, dict):
            unit, v = v.get("unit", m.unit), v.get("value")
        if v is None:  # explicitly no limit (a default dropped)
            out.pop(k, None)
            continue
        label = f"{m.short} {'lower' if end == 'min' else 'upper'} limit"
        try:
            given[k] = out[k] = to_unit(m, v, unit)
        except UnitProblem as exc:
            problems.append((k, f"{label} {exc}"))
    for key, m in ms.items():
        lo, hi = out.get(f"{key}_min"), out.get(f"{key}_max")
        if lo is not None and hi is not None and lo >= hi and not any(f.startswith(key + "_") for f, _ in problems):
            where = f"{key}_min" if f"{key}_min" in given else f"{key}_max"
            problems.append((where, f"{m.short} lower limit ({m.words(lo)}) must be below its upper limit "
                                    f"({m.words(hi)})"))
    return out, problems


def factor_of(m: Measurement, unit: Any) -> Any:
    """The factor (or 'degF') from `unit` to the measurement's own unit; None when the unit is not one of its."""
    return _factor(m, unit)
