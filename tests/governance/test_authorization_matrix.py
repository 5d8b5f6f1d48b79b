"""A generated authorization matrix: role x relationship x consent x seal x resource type x operation.

Every case is run through the real gate (in-process, against the test database) and compared with the policy
table: the role -> activity table in roles.yaml plus the relationship, consent and seal rules of
docs/governance.md, restated here independently of the implementation. Search-like operations (paged search,
`_summary=count` totals, `_include`, `_revinclude`, `$everything`) are run once per role and checked for every
entry they could reveal.
"""

from __future__ import annotations

import itertools
import uuid
from importlib import resources as pkg_resources

import pytest
import sqlalchemy as sa
import yaml

from joinedup.fhir.errors import FhirError
from joinedup.governance import policy
from joinedup.governance.facts import OPT_OUT_SYSTEM, PRIVATE_TAG_CODE, PRIVATE_TAG_SYSTEM
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.store import schema
from joinedup.store.repository import prepare

ROLES = ["system", "gp", "practice-nurse", "pharmacist", "consultant", "specialist-nurse", "community-nurse",
         "social-worker", "care-coordinator", "analyst", "privacy-officer", "patient"]
RELATIONSHIPS = ["none", "registered", "care-team", "referral", "break-glass"]
CONSENTS = ["none", "deny-all", "deny-my-org", "deny-other-org"]
LABELS = ["none", "sealed", "private-tag", "private-consent"]
SOURCES = ["mine", "other"]
TYPES = ["Observation", "Condition", "MedicationRequest", "CarePlan"]
READ_OPS = ["read", "vread", "history", "search", "search-total", "include", "revinclude", "everything"]
WRITE_OPS = ["create", "update"]
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACTOR_ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
SHORT = {"none": "n", "registered": "reg", "care-team": "ct", "referral": "ref", "break-glass": "bg",
         "deny-all": "all", "deny-my-org": "my", "deny-other-org": "oth", "sealed": "s", "private-tag": "t",
         "private-consent": "c", "mine": "m", "other": "o", "Observation": "obs", "Condition": "con",
         "MedicationRequest": "mr", "CarePlan": "cp"}

assert OPT_OUT_SYSTEM  # the opt-out has its own tests (test_secondary_use.py)


# -- the policy table, restated ------------------------------------------------------------------------------
def _table() -> dict:
    return yaml.safe_load(pkg_resources.files("joinedup.governance").joinpath("roles.yaml").read_text())


TABLE = _table()


def role_can(role: str, activity: str) -> bool:
    acts = TABLE["roles"][role]["activities"]
    if activity == "any-professional":  # any role that reads or writes people's records for their care
        return "*" in acts or bool({"view-clinical-record", "view-social-care-record", "amend-clinical-record"}
                                   & set(acts))
    return "*" in acts or activity in acts


def activity_for(rtype: str, write: bool) -> str:
    for spec in TABLE["resource_activities"].values():
        if rtype in spec["types"]:
            return spec["write" if write else "read"]
    return TABLE["resource_activities"]["clinical"]["write" if write else "read"]


def has_relationship(role: str, rel: str) -> bool:
    if rel in ("registered", "care-team", "referral"):
        return True
    return rel == "break-glass" and role_can(role, "emergency-access")


def expected_visible(role: str, case: dict, own_patient: bool) -> bool:
    """May this role see this entry? (the rules of docs/governance.md, 'Direct care')"""
    if role == "system":
        return True
    if role == "patient":
        return own_patient
    if not role_can(role, activity_for(case["rtype"], write=False)):
        return False
    if not has_relationship(role, case["rel"]):
        return False
    if case["source"] == "mine":
        return True
    if case["label"] != "none":
        return False
    # an objection hides entries recorded elsewhere, except who the person is and the choices they made
    return not (case["consent"] in ("deny-all", "deny-my-org") and case["rtype"] not in ("Patient", "Consent"))


def expected_write(role: str, op: str, case: dict, own_patient: bool) -> bool:
    if role == "system":
        return True
    if role == "patient":
        return own_patient and case["rtype"] in ("Observation",)
    if not role_can(role, activity_for(case["rtype"], write=True)) or not has_relationship(role, case["rel"]):
        return False
    if op == "create":
        return True
    return case["source"] == "mine" or (case["label"] == "none" and not (
        case["consent"] in ("deny-all", "deny-my-org") and case["rtype"] not in ("Patient", "Consent")))


# -- the world ----------------------------------------------------------------------------------------------
class World:
    def __init__(self, gate, u: str) -> None:
        self.gate = gate
        self.u = u
        self.my_org = f"mx-org-{u}"
        self.other_org = f"mx-other-{u}"
        self.prac = f"mx-prac-{u}"
        self.sys = f"https://joinedup.example/test/matrix/{u}"
        self.patients: dict[tuple[str, str], str] = {}
        self.cases: list[dict] = []
        self.users = {role: self._principal(role) for role in ROLES}

    def _principal(self, role: str) -> Principal:
        if role == "system":
            return SYSTEM
        if role == "patient":
            return Principal(f"mx-patient-{self.u}", "patient", patient_id=self.own_patient_id)
        if role in ("analyst", "privacy-officer"):
            return Principal(f"mx-{role}-{self.u}", role)
        return Principal(f"mx-{role}-{self.u}", role, practitioner_id=self.prac, organization_id=self.my_org)

    @property
    def own_patient_id(self) -> str:
        return f"mx-p-{self.u}-n-n"

    def build(self) -> None:
        res: list[dict] = []
        mine, other = f"Organization/{self.my_org}", f"Organization/{self.other_org}"
        for rel, consent in itertools.product(RELATIONSHIPS, CONSENTS):
            pid = f"mx-p-{self.u}-{SHORT[rel]}-{SHORT[consent]}"
            self.patients[(rel, consent)] = pid
            subj = {"reference": f"Patient/{pid}"}
            patient = {"resourceType": "Patient", "id": pid, "meta": {"source": other},
                       "identifier": [{"system": self.sys, "value": pid}], "name": [{"family": f"Matrix {rel}"}]}
            if rel == "registered":
                patient["generalPractitioner"] = [{"reference": mine}]
            res.append(patient)
            self.cases.append({"id": pid, "rtype": "Patient", "rel": rel, "consent": consent, "label": "none",
                               "source": "other", "pid": pid})
            if rel == "care-team":
                res.append({"resourceType": "CareTeam", "id": f"{pid}-ct", "status": "active", "subject": subj,
                            "participant": [{"member": {"reference": f"Practitioner/{self.prac}"}}]})
            if rel == "referral":
                res.append({"resourceType": "ServiceRequest", "id": f"{pid}-sr", "status": "active",
                            "intent": "order", "subject": subj, "performer": [{"reference": mine}],
                            "requester": {"reference": other}})
            if consent != "none":
                prov: dict = {"type": "deny"}
                if consent == "deny-my-org":
                    prov["actor"] = [{"role": ACTOR_ROLE, "reference": {"reference": mine}}]
                elif consent == "deny-other-org":
                    prov["actor"] = [{"role": ACTOR_ROLE, "reference": {"reference": other}}]
                res.append(_consent(f"{pid}-objection", pid, prov))
            private: list[dict] = []
            for rtype, label, source in itertools.product(TYPES, LABELS, SOURCES):
                rid = f"{pid}-{SHORT[rtype]}-{SHORT[label]}-{SHORT[source]}"
                meta: dict = {"source": mine if source == "mine" else other}
                if label == "sealed":
                    meta["security"] = [{"system": CONF, "code": "R"}]
                if label == "private-tag":
                    meta["tag"] = [{"system": PRIVATE_TAG_SYSTEM, "code": PRIVATE_TAG_CODE}]
                if label == "private-consent":
                    private.append({"meaning": "instance", "reference": {"reference": f"{rtype}/{rid}"}})
                res.append(_entry(rtype, rid, meta, subj, self.sys))
                self.cases.append({"id": rid, "rtype": rtype, "rel": rel, "consent": consent, "label": label,
                                   "source": source, "pid": pid})
            res.append(_consent(f"{pid}-private", pid, {"type": "permit",
                                                        "provision": [{"type": "deny", "data": private}]}))
        params = self.gate.params
        self.gate.import_resources(SYSTEM, [prepare(r, params=params) for r in res], label=f"matrix {self.u}")
        # break-glass grants, as POST /api/break-glass would give them (only to roles that may break glass)
        rows = []
        for role, who in self.users.items():
            if role not in ("system", "patient") and role_can(role, "emergency-access"):
                for consent in CONSENTS:
                    rows.append({"id": uuid.uuid4().hex, "user_name": who.name, "role": role,
                                 "practitioner_id": self.prac, "organization_id": self.my_org,
                                 "patient_id": self.patients[("break-glass", consent)],
                                 "reason_category": "emergency-treatment", "reason": "matrix test emergency",
                                 "granted": "2000-01-01T00:00:00", "expires": "2999-01-01T00:00:00"})
        with self.gate.store_for_tests.writing() as conn:
            conn.execute(schema.break_glass.insert(), rows)
            conn.execute(schema.break_glass.update().where(schema.break_glass.c.id.in_([r["id"] for r in rows]))
                         .values(review_outcome="appropriate", reviewed_by="matrix"))
        self.gate.facts_for_tests.bump()


def _consent(cid: str, pid: str, provision: dict) -> dict:
    return {"resourceType": "Consent", "id": cid, "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"}, "provision": provision}


def _entry(rtype: str, rid: str, meta: dict, subj: dict, system: str) -> dict:
    ident = [{"system": system, "value": rid}]
    code = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}
    if rtype == "Observation":
        return {"resourceType": rtype, "id": rid, "meta": meta, "identifier": ident, "status": "final",
                "code": code, "subject": subj}
    if rtype == "Condition":
        return {"resourceType": rtype, "id": rid, "meta": meta, "identifier": ident, "code": code, "subject": subj}
    if rtype == "MedicationRequest":
        return {"resourceType": rtype, "id": rid, "meta": meta, "identifier": ident, "status": "active",
                "intent": "order", "medicationCodeableConcept": {"text": "x"}, "subject": subj}
    return {"resourceType": rtype, "id": rid, "meta": meta, "identifier": ident, "status": "active",
            "intent": "plan", "subject": subj}


@pytest.fixture(scope="module")
def world(server) -> World:
    w = World(server.gate, uuid.uuid4().hex[:8])
    w.build()
    return w


# -- running the operations ---------------------------------------------------------------------------------
def _allowed(fn) -> bool:
    try:
        fn()
        return True
    except FhirError as exc:
        assert exc.status == 403, exc.issues
        return False


def _search_ids(gate, who, rtype: str, params: list) -> tuple[set[str], int | None]:
    """All matches over every page (small pages, so paging is exercised) and the first page's total."""
    ids: set[str] = set()
    offset, total = 0, None
    while True:
        r = gate.search(who, rtype, params + [("_count", "7"), ("_offset", str(offset))])
        total = r.total if total is None else total
        ids |= {s.id for s in r.matches}
        if not r.has_more:
            return ids, total
        offset += 7


def observed(world: World, role: str) -> dict[tuple[str, str], bool]:
    """{(entry id, operation): revealed?} for one role, every read-like operation."""
    gate, who = world.gate, world.users[role]
    seen: dict[tuple[str, str], bool] = {}
    for c in world.cases:
        t, i = c["rtype"], c["id"]
        seen[(i, "read")] = _allowed(lambda t=t, i=i: gate.read(who, t, i))
        seen[(i, "vread")] = _allowed(lambda t=t, i=i: gate.read(who, t, i, version=1))
        seen[(i, "history")] = _allowed(lambda t=t, i=i: gate.history(who, rtype=t, rid=i))
    for rtype in ["Patient", *TYPES]:
        ident = [("identifier", f"{world.sys}|")]
        try:
            ids, _ = _search_ids(gate, who, rtype, ident)
            total = gate.search(who, rtype, ident + [("_summary", "count")]).total
        except FhirError as exc:
            assert exc.status == 403
            ids, total = set(), 0
        for c in world.cases:
            if c["rtype"] == rtype:
                seen[(c["id"], "search")] = c["id"] in ids
        seen[("total", rtype)] = total
        if rtype == "Patient":
            continue
        try:  # _revinclude from the Patients (the Patient search itself narrowed as above)
            r = gate.search(who, "Patient", ident + [("_revinclude", f"{rtype}:subject"), ("_count", "1000")])
            inc = {s.id for s in r.included}
        except FhirError:
            inc = set()
        try:  # _include of the Patients from every entry of this type the role may search
            r = gate.search(who, rtype, ident + [("_include", f"{rtype}:subject"), ("_count", "1000")])
            pinc = {s.id for s in r.included}
        except FhirError:
            pinc = set()
        for c in world.cases:
            if c["rtype"] == rtype:
                seen[(c["id"], "revinclude")] = c["id"] in inc
            elif c["rtype"] == "Patient":
                seen[(c["id"], f"include-from-{rtype}")] = c["id"] in pinc
    for pid in world.patients.values():
        try:
            items = {s.id for s in gate.everything(who, pid)}
        except FhirError:
            items = set()
        for c in world.cases:
            if c["pid"] == pid:
                seen[(c["id"], "everything")] = c["id"] in items
    return seen


@pytest.mark.parametrize("role", ROLES)
def test_read_matrix(world, role):
    seen = observed(world, role)
    wrong = []
    n = 0
    for c in world.cases:
        own = c["pid"] == world.own_patient_id
        want = expected_visible(role, c, own)
        ops = ["read", "vread", "history", "search", "everything"]
        ops += ["revinclude"] if c["rtype"] != "Patient" else []
        for op in ops:
            n += 1
            if seen[(c["id"], op)] != want:
                wrong.append((op, c, want))
        if c["rtype"] == "Patient":
            # a Patient reached by _include from an entry the role may see (or the Patient's own visibility)
            for rtype in TYPES:
                n += 1
                got = seen[(c["id"], f"include-from-{rtype}")]
                could = want and any(expected_visible(role, d, own) for d in world.cases
                                     if d["pid"] == c["pid"] and d["rtype"] == rtype)
                if got != could:
                    wrong.append((f"include-from-{rtype}", c, could))
    for rtype in ["Patient", *TYPES]:
        n += 1
        want_total = sum(1 for c in world.cases if c["rtype"] == rtype
                         and expected_visible(role, c, c["pid"] == world.own_patient_id))
        if seen[("total", rtype)] != want_total:
            wrong.append(("total", rtype, want_total, seen[("total", rtype)]))
    assert not wrong, f"{len(wrong)} of {n} cases disagree with the policy table, e.g. {wrong[:5]}"
    assert n >= 5000 // len(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_write_matrix(world, role):
    """Create into and update within a person's record: the decision point with the facts the gate derives."""
    gate, who = world.gate, world.users[role]
    wrong = []
    for c, op in itertools.product(world.cases, WRITE_OPS):
        if c["rtype"] == "Patient":
            continue
        own = c["pid"] == world.own_patient_id
        stored = gate.store_for_tests.read(c["rtype"], c["id"])
        facts = gate.facts_for(who, c["pid"], stored if op == "update" else None)
        got = bool(policy.decide(who, op, c["rtype"], patient_id=c["pid"], facts=facts))
        if got != expected_write(role, op, c, own):
            wrong.append((op, c))
    assert not wrong, f"{len(wrong)} write cases disagree, e.g. {wrong[:5]}"


def test_matrix_size(world):
    """The matrix covers at least 5,000 cases (role x relationship x consent x seal x type x operation)."""
    per_role = sum(6 if c["rtype"] != "Patient" else 5 + len(TYPES) for c in world.cases) + 1 + len(TYPES)
    writes = sum(len(WRITE_OPS) for c in world.cases if c["rtype"] != "Patient")
    assert len(world.cases) == len(RELATIONSHIPS) * len(CONSENTS) * (1 + len(TYPES) * len(LABELS) * len(SOURCES))
    assert len(ROLES) * (per_role + writes) >= 5000
    with world.gate.store_for_tests.reading() as conn:
        cr = schema.care_relationship
        n = conn.execute(sa.select(sa.func.count()).select_from(cr).where(cr.c.patient_id.like(f"mx-p-{world.u}%"))
                         ).scalar_one()
    assert n >= 3  # registered, care team, referral (performer and requester)
