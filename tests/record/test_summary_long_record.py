"""The summary of a long record reads only the kinds of entry it shows (issue 14, part 3), and stays honest about
the rest: an entry of a kind it never shows (a procedure, an immunisation, a claim) that is kept private at the
person's request, or sealed by the organisation that recorded it, still makes the view say that information in
the record is withheld or restricted, and what it does show and count is the same as before.

Labels: FHIR R4 `meta.security` with the HL7 v3 Confidentiality codes (http://terminology.hl7.org/CodeSystem/
v3-Confidentiality: R "restricted", V "very restricted"); a person's request to keep an entry private is a FHIR R4
Consent whose deny provision names the entry (`provision.data.reference`), as docs/governance.md describes."""

from __future__ import annotations

import pytest

from tests.record.helpers import load, organisations, rich_record, src

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SCT = "http://snomed.info/sct"


@pytest.fixture()
def person(server, api, uid):
    pid = f"long-{uid}"
    load(api, organisations(uid) + rich_record(uid, pid, gp_practitioner="gp-1", seed=int(uid[:6], 16)))
    return pid


def _summary(server, pid, user="gp"):
    with server.client(user) as c:
        r = c.get(f"/api/patients/{pid}/summary")
    assert r.status_code == 200, r.text
    return r.json()


def _procedures(pid: str, uid: str, n: int) -> list[dict]:
    # SNOMED CT 73761001 |Colonoscopy (procedure)|
    return [{"resourceType": "Procedure", "id": f"{pid}-proc{i}", "meta": src(f"acute-{uid}"), "status": "completed",
             "code": {"coding": [{"system": SCT, "code": "73761001", "display": "Colonoscopy"}]},
             "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": f"20{10 + i % 15:02d}-03-0{1 + i % 9}"}
            for i in range(n)]


def test_entries_the_summary_never_shows_change_nothing_it_shows(server, api, person, uid):
    before = _summary(server, person)
    load(api, _procedures(person, uid, 40))
    after = _summary(server, person)
    for section in ("problems", "medicines", "allergies", "results", "timeline", "referrals", "social_care",
                    "carers", "alerts", "what_matters", "care_team", "next_steps"):
        assert after[section] == before[section], section
    assert after["access"] == before["access"]


def test_a_private_entry_of_a_kind_not_shown_still_says_information_is_withheld(server, api, person, uid):
    """The person keeps a procedure private: the summary shows no procedures at all, but it must not suggest that
    nothing in the record is withheld at their request."""
    load(api, _procedures(person, uid, 3))
    assert _summary(server, person)["access"]["problems"]["withheld_at_request"] is False
    r = api.put(f"/fhir/Consent/{person}-private-proc", json={
        "resourceType": "Consent", "id": f"{person}-private-proc", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{person}"},
        "provision": {"type": "permit", "provision": [{"type": "deny", "data": [
            {"meaning": "instance", "reference": {"reference": f"Procedure/{person}-proc1"}}]}]}})
    assert r.status_code in (200, 201), r.text
    s = _summary(server, person)
    p = s["access"]["problems"]
    assert p["withheld_at_request"] is True and "withheld at the person's request" in p["note"]
    assert p["not_shown_to_role"] == {} and p["state"] == "shown"  # the problems themselves are all shown
    # the integration account is withheld nothing
    assert _summary(server, person, "admin")["access"]["problems"]["withheld_at_request"] is False


def test_a_sealed_entry_of_a_kind_not_shown_still_says_entries_are_restricted(server, api, person, uid):
    """The hospital seals an immunisation record (confidentiality R): the GP's summary says entries are
    restricted to the organisation that recorded them."""
    assert _summary(server, person)["access"]["medicines"]["restricted"] is False
    # SNOMED CT 1119349007 |Vaccine product containing only SARS-CoV-2 mRNA (medicinal product)|
    load(api, [{"resourceType": "Immunization", "id": f"{person}-imm", "status": "completed",
                "meta": {**src(f"acute-{uid}"), "security": [{"system": CONFIDENTIALITY, "code": "R"}]},
                "vaccineCode": {"coding": [{"system": SCT, "code": "1119349007"}]},
                "patient": {"reference": f"Patient/{person}"}, "occurrenceDateTime": "2024-10-01"}])
    s = _summary(server, person)
    assert s["access"]["medicines"]["restricted"] is True
    assert "restricted to the organisation that recorded them" in s["access"]["medicines"]["note"]
    assert _summary(server, person, "admin")["access"]["medicines"]["restricted"] is False


def test_an_entry_changed_or_deleted_between_two_summaries_shows_at_once(server, api, person):
    """The record is read again for every summary: an entry changed (a new version) or deleted since the last one
    is never answered from what an earlier request read. SNOMED CT 35489007 |Depressive disorder (disorder)|."""
    first = _summary(server, person)
    again = _summary(server, person)
    assert {k: v for k, v in again.items() if k != "generated"} == {k: v for k, v in first.items() if k != "generated"}
    assert any(p["code"] == "35489007" for p in first["problems"])
    r = api.get(f"/fhir/Condition/{person}-c5")
    assert r.status_code == 200, r.text
    changed = {**r.json(), "onsetDateTime": "2018-11-02"}
    changed.pop("meta", None)
    assert api.put(f"/fhir/Condition/{person}-c5", json=changed).status_code == 200
    depression = next(p for p in _summary(server, person)["problems"] if p["code"] == "35489007")
    assert "2018-11" in str(depression) and "2019-02" not in str(depression)
    assert api.delete(f"/fhir/Condition/{person}-c5").status_code == 200
    assert not any(p["code"] == "35489007" for p in _summary(server, person)["problems"])
