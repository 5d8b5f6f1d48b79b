"""How much decision support each user wants shown: the lowest severity of conflict alert on their pages and CDS
cards. Alert fatigue is real (most drug alerts are overridden), so a clinician may hide low (or low and moderate)
alerts; high and critical alerts are always shown, and every page says how many were hidden."""

from __future__ import annotations

from typing import Any

from joinedup import config
from joinedup.fhir.errors import FhirError
from joinedup.governance import platform
from joinedup.governance.identity import Principal

THRESHOLDS = {"all": "Every alert, including routine low-severity schedule and lifestyle notes",
              "low": "Every alert except routine schedule and lifestyle notes", "moderate": "Moderate, high and critical",
              "high": "High and critical only"}
RANK = {"all": 0, "low": 0, "moderate": 1, "high": 2, "critical": 3}
DEFAULT = "low"
# low-severity findings of these kinds are routine notes (alert fatigue): off by default, on with "all" or the
# JOINEDUP_CONFLICT_ROUTINE_ALERTS setting
ROUTINE_KINDS = frozenset({"schedule", "lifestyle"})


def threshold(*, gate: Any, who: Principal) -> str:
    """The user's lowest shown severity ('low' = every alert, the default)."""
    got = platform.alert_threshold(gate, who)
    return got if got in THRESHOLDS else DEFAULT


def set_threshold(*, gate: Any, who: Principal, min_severity: Any) -> str:
    """Choose the lowest severity shown; anything but low / moderate / high is refused (422)."""
    if who.role in ("patient", "analyst"):
        raise gate.refuse(who, "Alert settings are for clinicians who see decision support.", action="update",
                          entity="alert-settings")
    if min_severity not in THRESHOLDS:
        raise FhirError(422, f"min_severity must be one of: {', '.join(THRESHOLDS)} (high and critical alerts are "
                             "always shown)", code="value")
    platform.set_alert_threshold(gate, who, None if min_severity == DEFAULT else min_severity)
    return min_severity


def routine(finding: dict[str, Any]) -> bool:
    """A low-severity schedule or lifestyle note (hidden unless the clinician or the installation turns them on)."""
    return finding.get("severity") == "low" and finding.get("kind") in ROUTINE_KINDS


def visible(findings: list[dict[str, Any]], min_severity: str) -> tuple[list[dict[str, Any]], int]:
    """(findings at or above the threshold - high and critical always - , how many were hidden). Routine
    low-severity schedule and lifestyle notes show only with the threshold "all" or the
    JOINEDUP_CONFLICT_ROUTINE_ALERTS setting."""
    floor = min(RANK.get(min_severity, 0), RANK["high"])
    show_routine = min_severity == "all" or bool(config.value("CONFLICT_ROUTINE_ALERTS"))
    keep = [f for f in findings if RANK.get(f.get("severity", "low"), 0) >= floor
            and (show_routine or not routine(f))]
    return keep, len(findings) - len(keep)
