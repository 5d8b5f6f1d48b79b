"""The one policy decision point: may this principal perform this action on this data?"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources as pkg_resources
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from joinedup.governance.identity import Principal

READ_ACTIONS = {"read", "vread", "search", "history", "everything", "export"}
WRITE_ACTIONS = {"create", "update", "delete", "import"}
PROFESSIONAL_ACTIVITIES = {"view-clinical-record", "view-social-care-record", "amend-clinical-record"}


@dataclass(frozen=True)
class Decision:
    """The outcome of a policy check, with the reason shown to the user and written to the audit."""

    allowed: bool
    reason: str
    activity: str | None = None
    patient_only: str | None = None  # restrict to this patient's compartment (patient self-access)

    def __bool__(self) -> bool:
        return self.allowed


@lru_cache(maxsize=1)
def rules() -> dict[str, Any]:
    """Roles, activities and resource-type activity rules from the data file."""
    text = pkg_resources.files("joinedup.governance").joinpath("roles.yaml").read_text()
    data = yaml.safe_load(text)
    type_rule: dict[str, dict[str, str]] = {}
    fallback = None
    for group, spec in data["resource_activities"].items():
        for t in spec["types"]:
            if t == "*":
                fallback = {"group": group, "read": spec["read"], "write": spec["write"]}
            else:
                type_rule[t] = {"group": group, "read": spec["read"], "write": spec["write"]}
    data["_type_rule"] = type_rule
    data["_fallback"] = fallback
    return data


def known_roles() -> set[str]:
    return set(rules()["roles"])


def activities_of(role: str) -> set[str]:
    spec = rules()["roles"].get(role)
    return set(spec["activities"]) if spec else set()


def type_rule(rtype: str) -> dict[str, str]:
    r = rules()
    return r["_type_rule"].get(rtype) or r["_fallback"]


def _has(who: Principal, activity: str) -> bool:
    acts = activities_of(who.role)
    if "*" in acts:
        return True
    if activity == "any-professional":
        return bool(acts & PROFESSIONAL_ACTIVITIES)
    return activity in acts


def decide(who: Principal, action: str, rtype: str | None, *, patient_id: str | None = None) -> Decision:
    """Decide whether `who` may perform `action` on `rtype` (optionally within one patient's record)."""
    acts = activities_of(who.role)
    if not acts:
        return Decision(False, f"role '{who.role}' is not recognised")
    if "*" in acts:
        return Decision(True, "integration account", "*")
    if action == "import" or (action == "export" and who.role != "patient"):
        return Decision(False, f"only the integration account may {action} whole data sets", "bulk-load")
    rule = type_rule(rtype) if rtype else type_rule("Patient")
    is_write = action in WRITE_ACTIONS
    needed = rule["write"] if is_write else rule["read"]
    if who.role == "patient":
        if not who.patient_id:
            return Decision(False, "this patient account is not linked to a patient record")
        if rule["group"] == "audit" and not is_write and action == "search":
            return Decision(True, "a person may see who looked at their own record", "patient-self-access",
                            patient_only=who.patient_id)
        if is_write and rtype not in ("Consent", "Goal", "QuestionnaireResponse", "Communication",
                                      "Observation"):
            return Decision(False, f"patients cannot change {rtype} entries directly; ask your care team",
                            "patient-self-access")
        if rule["group"] in ("audit",) or needed == "never":
            return Decision(False, f"{rtype} is not part of a person's own record", "patient-self-access")
        if patient_id is not None and patient_id != who.patient_id and rule["group"] != "directory":
            return Decision(False, "a patient account can only see its own record", "patient-self-access")
        return Decision(True, "own record", "patient-self-access", patient_only=who.patient_id)
    if needed == "never":
        return Decision(False, f"{rtype} entries are written by the platform only", None)
    if _has(who, needed):
        return Decision(True, f"role '{who.role}' may {needed.replace('-', ' ')}", needed)
    verb = "change" if is_write else "see"
    return Decision(False, f"role '{who.role}' may not {verb} {rtype} entries (needs '{needed}')", needed)
