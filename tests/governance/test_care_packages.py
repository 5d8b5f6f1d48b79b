"""Care packages (EpisodeOfCare) are read by the social worker who manages them (issue 13): social care roles read
episodes of care of people they have a legitimate relationship with, over the FHIR API and on the social care
page; not of anyone else; the pharmacist still reads them; non-professional roles never do; writing one still
needs amend-clinical-record (docs/governance.md, "care episodes")."""

from __future__ import annotations

import httpx

from joinedup.governance.accounts import add_user, issue_token
from tests.web.test_pages import login


def _client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60,
                        headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"})


def _person(api, pid: str, family: str) -> None:
    r = api.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "birthDate": "1941-05-06",
                                               "name": [{"family": family, "given": ["Iris"]}]})
    assert r.status_code in (200, 201), r.text


def _package(api, eid: str, pid: str, manager: str, org: str) -> None:
    r = api.put(f"/fhir/EpisodeOfCare/{eid}", json={
        "resourceType": "EpisodeOfCare", "id": eid, "status": "active", "meta": {"source": f"Organization/{org}"},
        "type": [{"text": "Home care package (four calls a day)"}], "patient": {"reference": f"Patient/{pid}"},
        "managingOrganization": {"reference": f"Organization/{org}"},
        "careManager": {"reference": f"Practitioner/{manager}"}, "period": {"start": "2026-01-05"}})
    assert r.status_code in (200, 201), r.text


def test_social_worker_reads_the_care_packages_they_manage(server, api, uid):
    sw, prac, org = f"sw-{uid}", f"sw-prac-{uid}", f"asc-{uid}"
    add_user(server.gate, name=sw, role="social-worker", practitioner=prac, organization=org, password=f"{sw}-pw",
             replace=True)
    mine, other = f"pkg-person-{uid}", f"pkg-other-{uid}"
    _person(api, mine, f"Package{uid}")
    _person(api, other, f"Elsewhere{uid}")
    _package(api, f"eoc-{uid}", mine, prac, org)
    _package(api, f"eoc-other-{uid}", other, f"someone-else-{uid}", f"other-org-{uid}")
    with _client(server, issue_token(server.gate, sw)) as c:
        found = c.get("/fhir/EpisodeOfCare", params={"patient": f"Patient/{mine}"})
        assert found.status_code == 200, found.text
        assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [f"eoc-{uid}"]
        assert c.get(f"/fhir/EpisodeOfCare/eoc-{uid}").status_code == 200
        # no relationship with the other person: refused, not shown as empty
        assert c.get(f"/fhir/EpisodeOfCare/eoc-other-{uid}").status_code == 403
        assert c.get("/fhir/EpisodeOfCare", params={"patient": f"Patient/{other}"}).status_code == 403
        # reading is not writing: a care package is still recorded with amend-clinical-record
        r = c.put(f"/fhir/EpisodeOfCare/eoc-{uid}", json={
            "resourceType": "EpisodeOfCare", "id": f"eoc-{uid}", "status": "finished",
            "patient": {"reference": f"Patient/{mine}"}})
        assert r.status_code == 403
    # the social care page lists the package instead of "not shown to your role"
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as web:
        assert login(web, sw, f"{sw}-pw").status_code == 303
        page = web.get(f"/social-care/{mine}")
        assert page.status_code == 200
        assert "Home care package (four calls a day)" in page.text
    # roles that are not professionals still never read a person's episodes of care
    with _client(server, server.tokens["analyst"]) as c:
        assert c.get(f"/fhir/EpisodeOfCare/eoc-{uid}").status_code == 403


def test_pharmacist_with_a_relationship_still_reads_episodes(server, api, uid):
    ph, prac, org = f"ph-{uid}", f"ph-prac-{uid}", f"pharm-{uid}"
    add_user(server.gate, name=ph, role="pharmacist", practitioner=prac, organization=org, replace=True)
    pid = f"pkg-ph-{uid}"
    _person(api, pid, f"Pharm{uid}")
    _package(api, f"eoc-ph-{uid}", pid, prac, org)
    with _client(server, issue_token(server.gate, ph)) as c:
        assert c.get(f"/fhir/EpisodeOfCare/eoc-ph-{uid}").status_code == 200
