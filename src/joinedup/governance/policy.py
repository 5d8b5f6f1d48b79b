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
    break_glass_until: str | None = None  # allowed only by an emergency (break-glass) grant until then
    relationship: str | None = None  # the legitimate relationship that allowed it

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Facts:
    """What the gate knows about the person (and the entry) an action concerns, for this principal."""

    relationship: str | None = None  # kind of legitimate relationship (None: there is none)
    break_glass_until: str | None = None  # an active emergency-access grant for this person, until then
    objection: str | None = None  # 'all' | 'organisation': the person objects to sharing with this principal
    restricted: str | None = None  # 'sealed' | 'private': the entry is visible only to its recording organisation
    own_item: bool = False  # the entry was recorded by the principal's organisation
    unattached: bool = False  # an entry of a person's record that names no person it could be filed under
    proxy_until: str | None = None  # a carer's access the person granted (Consent), until then
    proxy_scope: frozenset | None = None  # the resource types it covers (None: the whole record)


NO_FACTS = Facts()
NO_RELATIONSHIP = ("you have no legitimate relationship with this person (not in their care team, not their registered "
                   "or holding organisation, no open referral or advice request)")
OWN_RECORD_ONLY = "a patient account can only see its own record"
# Actions about one entry (item-level rules apply); others act on a collection the gate narrows item by item.
UNATTACHED = ("this entry names no person whose record it could be filed under (for example a reference to another "
              "server's patient), so only the organisation that recorded it can see it")
ITEM_ACTIONS = {"read", "vread", "update", "delete", "history"}
OBJECTION_EXEMPT = frozenset({"Patient", "Consent"})  # who the person is, and the choices they made
PROFESSIONAL_GROUPS_WITHOUT_RELATIONSHIP = {"directory", "audit"}
# Actions that are an activity in themselves (not an operation on a resource type).
PROXY_ACTIVITY = "proxy-access"
PROXY_ALWAYS = frozenset({"Patient"})  # who the person is: part of every grant
ACTIVITY_ACTIONS = {"break-glass": "emergency-access", "review": "review-audit",
                    "extract": "pseudonymised-analytics", "assess": "assess-integration",
                    "link-review": "review-record-linkage"}


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


def readable_types(who: Principal) -> tuple[bool, set[str], set[str]]:
    """(types not listed are readable?, listed types readable, listed types not readable) for a role."""
    r = rules()
    fallback_ok = _has(who, r["_fallback"]["read"])
    readable = {t for t, rule in r["_type_rule"].items() if _has(who, rule["read"])}
    return fallback_ok, readable, set(r["_type_rule"]) - readable


def activity_text(activity: str) -> str:
    """An activity in words, for refusal and audit reasons ("read a person's health record")."""
    if activity == "any-professional":
        return "read demographics and the directory (any professional role)"
    text = rules()["activities"].get(activity) or activity.replace("-", " ")
    return text[:1].lower() + text[1:]


def is_proxy(who: Principal) -> bool:
    """Whether the principal is a carer or proxy acting for a person (only as far as that person granted)."""
    acts = activities_of(who.role)
    return PROXY_ACTIVITY in acts and "*" not in acts


def has_activity(who: Principal, activity: str) -> bool:
    """Whether the principal's role includes the activity (the system role has every one)."""
    return _has(who, activity)


def _has(who: Principal, activity: str) -> bool:
    acts = activities_of(who.role)
    if "*" in acts:
        return True
    if activity == "any-professional":
        return bool(acts & PROFESSIONAL_ACTIVITIES)
    return activity in acts


def decide(who: Principal, action: str, rtype: str | None, *, patient_id: str | None = None,
           facts: Facts | None = None) -> Decision:
    """Decide whether `who` may perform `action` on `rtype`, within one person's record when patient_id is given.

    For a professional acting within a person's record the role must permit the activity AND there must be a
    legitimate relationship (or an active break-glass grant); an entry that is sealed or marked private is
    visible only to its recording organisation, and a person's objection to sharing hides entries recorded
    elsewhere (except who they are and their choices). `facts` carries what the gate knows; without it a
    person's record counts as one with no relationship.
    """
    acts = activities_of(who.role)
    if not acts:
        return Decision(False, f"role '{who.role}' is not recognised")
    if "*" in acts:
        return Decision(True, "integration account", "*")
    if action in ACTIVITY_ACTIONS:
        needed = ACTIVITY_ACTIONS[action]
        if needed in acts:
            return Decision(True, f"role '{who.role}' may {needed.replace('-', ' ')}", needed)
        return Decision(False, f"role '{who.role}' does not include '{needed}'", needed)
    if action == "import" or (action == "export" and who.role != "patient"):
        return Decision(False, f"only the integration account may {action} whole data sets", "bulk-load")
    rule = type_rule(rtype) if rtype else type_rule("Patient")
    is_write = action in WRITE_ACTIONS
    needed = rule["write"] if is_write else rule["read"]
    if PROXY_ACTIVITY in acts:
        return _proxy(who, action, rtype, rule, needed, patient_id, facts or NO_FACTS)
    if who.role == "patient":
        if not who.patient_id:
            return Decision(False, "this patient account is not linked to a patient record")
        if rule["group"] == "audit" and not is_write and action == "search":
            return Decision(True, "a person may see who looked at their own record", "patient-self-access",
                            patient_only=who.patient_id)
        if is_write and rtype not in ("Consent", "Goal", "QuestionnaireResponse", "Communication",
                                      "Observation", "RelatedPerson"):
            return Decision(False, f"patients cannot change {rtype} entries directly; ask your care team",
                            "patient-self-access")
        if rule["group"] in ("audit",) or needed == "never":
            return Decision(False, f"{rtype} is not part of a person's own record", "patient-self-access")
        if patient_id is not None and patient_id != who.patient_id and rule["group"] != "directory":
            return Decision(False, OWN_RECORD_ONLY, "patient-self-access")
        return Decision(True, "own record", "patient-self-access", patient_only=who.patient_id)
    if needed == "never":
        return Decision(False, f"{rtype} entries are written by the platform only", None)
    if not _has(who, needed):
        verb = "change" if is_write else "see"
        return Decision(False, f"role '{who.role}' may not {verb} {rtype} entries (needs '{needed}')", needed)
    base = f"role '{who.role}' may {activity_text(needed)}"
    if patient_id is None and facts is not None and facts.unattached and not facts.own_item \
            and action in ITEM_ACTIONS:
        return Decision(False, UNATTACHED, needed)
    if patient_id is None or rule["group"] in PROFESSIONAL_GROUPS_WITHOUT_RELATIONSHIP:
        return Decision(True, base, needed)
    f = facts or NO_FACTS
    if not f.relationship and not f.break_glass_until:
        return Decision(False, NO_RELATIONSHIP, needed)
    via = (f"relationship: {f.relationship}" if f.relationship
           else f"emergency (break-glass) access until {f.break_glass_until}")
    if action in ITEM_ACTIONS:
        if f.restricted and not f.own_item:
            what = "sealed" if f.restricted == "sealed" else "marked private by the person"
            return Decision(False, f"this entry is {what} and visible only within the organisation that "
                                   "recorded it", needed)
        if f.objection and not f.own_item and rtype not in OBJECTION_EXEMPT:
            whom = "anyone outside the organisation that recorded it" if f.objection == "all" \
                else "your organisation"
            return Decision(False, f"the person has objected to sharing this part of their record with {whom}",
                            needed)
    return Decision(True, f"{base}; {via}", needed,
                    break_glass_until=None if f.relationship else f.break_glass_until,
                    relationship=f.relationship)


def _proxy(who: Principal, action: str, rtype: str | None, rule: dict[str, str], needed: str,
           patient_id: str | None, f: Facts) -> Decision:
    """A carer or proxy: read-only, one person's record, only while the person's grant (a Consent) is in force and
    only the resource types it covers; never sealed or private entries; never the audit trail."""
    if not who.patient_id:
        return Decision(False, "this carer account is not linked to a person's record", PROXY_ACTIVITY)
    if action in WRITE_ACTIONS:
        return Decision(False, "a carer's access is to see what the person shared; the person or their care team "
                               "change the record", PROXY_ACTIVITY)
    if rule["group"] == "audit" or needed == "never":
        return Decision(False, f"{rtype} is not part of what a carer can see", PROXY_ACTIVITY)
    if patient_id is not None and patient_id != who.patient_id and rule["group"] != "directory":
        return Decision(False, "a carer account can only see the record of the person who granted it",
                        PROXY_ACTIVITY)
    if not f.proxy_until:
        return Decision(False, "the person has not given you access to their record, or it has ended or been "
                               "withdrawn", PROXY_ACTIVITY)
    if rule["group"] != "directory" and rtype and f.proxy_scope is not None and rtype not in f.proxy_scope \
            and rtype not in PROXY_ALWAYS:
        return Decision(False, "this part of the record is outside what the person shared with you",
                        PROXY_ACTIVITY)
    if action in ITEM_ACTIONS and f.restricted:
        return Decision(False, "this entry is sealed or marked private and visible only within the organisation "
                               "that recorded it", PROXY_ACTIVITY)
    return Decision(True, f"carer access the person granted, until {f.proxy_until}", PROXY_ACTIVITY,
                    patient_only=who.patient_id)
