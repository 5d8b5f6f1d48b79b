"""A small cross-organisation world for the referral and MDT tests (built through the gate as the integration
account), with users of several organisations logged in by token."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.identity import SYSTEM


@dataclass
class World:
    uid: str
    patient: str
    objecting: str
    stranger: str
    consultant: str  # practitioner id (hospital)
    social: str  # practitioner id (council)
    orphan: str  # practitioner with no role anywhere
    hospital: str
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, server, user: str) -> httpx.Client:
        token = self.tokens.get(user) or server.tokens[user]
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _prac(gate, pid: str, given: str, family: str) -> None:
    gate.update(SYSTEM, "Practitioner", pid, {"resourceType": "Practitioner", "id": pid, "active": True,
                                              "name": [{"prefix": ["Dr"], "given": [given], "family": family}]})


def build(server, uid: str) -> World:
    g = server.gate
    hosp, council = f"hosp-{uid}", f"cncl-{uid}"
    g.update(SYSTEM, "Organization", hosp, {"resourceType": "Organization", "id": hosp,
                                            "name": f"Dale Teaching Hospitals {uid}"})
    g.update(SYSTEM, "Organization", council, {"resourceType": "Organization", "id": council,
                                               "name": f"Dale Council Adult Social Care {uid}"})
    cons, sw, orphan = f"cons-{uid}", f"sw-{uid}", f"orph-{uid}"
    _prac(g, cons, "Karen", f"Heart{uid}")
    _prac(g, sw, "Sam", f"Social{uid}")
    _prac(g, orphan, "Olive", f"Nowhere{uid}")
    g.update(SYSTEM, "PractitionerRole", f"role-{cons}", {
        "resourceType": "PractitionerRole", "id": f"role-{cons}", "active": True,
        "practitioner": {"reference": f"Practitioner/{cons}"}, "organization": {"reference": f"Organization/{hosp}"},
        "code": [{"text": "Consultant"}], "specialty": [{"text": "Cardiology"}]})
    g.update(SYSTEM, "PractitionerRole", f"role-{sw}", {
        "resourceType": "PractitionerRole", "id": f"role-{sw}", "active": True,
        "practitioner": {"reference": f"Practitioner/{sw}"}, "organization": {"reference": f"Organization/{council}"},
        "code": [{"text": "Social worker"}], "specialty": [{"text": "Adult social care"}]})
    pats = {}
    for key in ("patient", "objecting", "stranger"):
        pid = f"{key[:3]}-{uid}"
        gp_org = "practice-1" if key != "stranger" else f"elsewhere-{uid}"
        g.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid,
                                          "name": [{"given": ["Rose"], "family": f"{key.title()}{uid}"}],
                                          "birthDate": "1941-02-03",
                                          "generalPractitioner": [{"reference": f"Organization/{gp_org}"}]})
        pats[key] = pid
    g.update(SYSTEM, "Consent", f"consent-{uid}", {
        "resourceType": "Consent", "id": f"consent-{uid}", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"text": "Sharing choice"}], "patient": {"reference": f"Patient/{pats['objecting']}"},
        "policyRule": {"text": "Patient privacy choice"},
        "provision": {"type": "deny", "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]},
            "reference": {"reference": f"Organization/{hosp}"}}]}})
    w = World(uid, pats["patient"], pats["objecting"], pats["stranger"], cons, sw, orphan, hosp)
    for user, role, prac, org in ((f"cons-{uid}", "consultant", cons, hosp), (f"sw-{uid}", "social-worker", sw, council),
                                  (f"gp2-{uid}", "gp", f"gp2-{uid}", "practice-1")):
        add_user(g, name=user, role=role, practitioner=prac, organization=org, password="pw", replace=True)
        w.tokens[user] = issue_token(g, user)
    return w
