"""Data shapes used by the conflict engine (plain dataclasses: fast to build per record).

Map of this module: the recognised record `PatientRecord` and its parts (`MedItem`, `ResultItem`, `AllergyItem`);
`Finding` (one detected conflict, `as_dict` gives the public JSON shape); `SEVERITY_ORDER` (sort order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class MedItem:
    """One active medicine line (MedicationStatement/MedicationRequest or draft order)."""

    ref: str
    display: str
    ingredients: frozenset[str]
    classes: frozenset[str]
    regular: bool = True
    draft: bool = False
    acb: int = 0
    falls_risk: bool = False
    dose_reduced: bool = False
    proposed: bool = False
    start: str = ""  # date the line was authored/asserted/started (ISO text, may be empty)
    source: str = ""  # meta.source: the organisation that recorded it
    dose: Any = None  # dosage.LineDose: mg/day per ingredient and days a week, read from the dosage and strength


@dataclass(slots=True)
class StoppedItem:
    """A medicine line the record shows as no longer taken (stopped, completed or cancelled; or an ended course or
    expired prescription), kept as the person's medicine history (e.g. START v3 H6: after denosumab is stopped)."""

    ref: str
    display: str
    ingredients: frozenset[str]
    start: str = ""  # when the line started (ISO text, may be empty)
    end: str = ""  # when it ended or was recorded as stopped (ISO text, may be empty)


@dataclass(slots=True)
class ResultItem:
    """Latest value of one result type (eGFR, potassium)."""

    key: str
    value: float
    ref: str
    when: str = ""
    unit: str = ""


@dataclass(slots=True)
class AllergyItem:
    """An active allergy/intolerance recognised to medicine ingredients or classes."""

    ref: str
    ingredients: frozenset[str]
    classes: frozenset[str]


@dataclass(slots=True)
class PatientRecord:
    """The parsed, recognised view of one person's record."""

    patient: str | None = None
    age: int | None = None
    meds: list[MedItem] = field(default_factory=list)
    conditions: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, ResultItem] = field(default_factory=dict)
    allergies: list[AllergyItem] = field(default_factory=list)
    unrecognised: list[dict[str, Any]] = field(default_factory=list)
    separated: set[frozenset[str]] = field(default_factory=set)
    resolved_ids: set[str] = field(default_factory=set)
    # the same medicine recorded by other organisations: kept line -> the other organisations' lines it stands for
    recorded_elsewhere: dict[str, list[str]] = field(default_factory=dict)
    # the same medicine recorded by one organisation under its brand and its generic name: kept line -> the others
    brand_and_generic: dict[str, list[str]] = field(default_factory=dict)
    sex: str | None = None
    deceased: bool = False
    today: str = ""  # ISO date the record is judged on (recency windows)
    # medicine lines left out as not current: ref -> why (expired, stopped by a later record elsewhere)
    not_current: dict[str, str] = field(default_factory=dict)
    # medicines no longer taken (stopped/completed/cancelled lines, ended courses, expired prescriptions)
    stopped: list[StoppedItem] = field(default_factory=list)
    # what each recognised resource is, for a finding's "why now": ref -> {what, date, source}
    facts: dict[str, dict[str, str]] = field(default_factory=dict)
    # items positively identified as not medicines (food/environmental allergens, devices): kept out of `unrecognised`
    non_medicinal: list[dict[str, Any]] = field(default_factory=list)
    # completed immunisations by vaccine key (influenza, pneumococcal, zoster, sars_cov_2): [(date, ref)]; and
    # whether the record holds any Immunization at all (without an immunisation history, no vaccine is "missing")
    immunizations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    immunization_history: bool = False
    immunizations_precluded: set[str] = field(default_factory=set)  # not-done for a medical precaution / immunity


@dataclass(slots=True)
class Finding:
    """One detected conflict."""

    id: str
    kind: str
    severity: str
    summary: str
    detail: str
    involves: list[str]
    rule: str
    sources: list[str]
    mechanism: str = ""
    criterion: str = ""
    verified: bool = True
    suggest: dict[str, Any] | None = None
    why_now: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Serialise to the public JSON shape (fields are only ever added, never renamed)."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "detail": self.detail,
            "involves": list(self.involves),
            "rule": self.rule,
            "sources": list(self.sources),
            "mechanism": self.mechanism,
            "criterion": self.criterion,
            "verified": self.verified,
            "why_now": [dict(w) for w in self.why_now],
        }
        if self.suggest:
            out["suggest"] = dict(self.suggest)
        return out


SEVERITY_ORDER = {"critical": 0, "high": 1, "moderate": 2, "low": 3}
