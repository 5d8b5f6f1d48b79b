"""The summary of real-world records (issue 14, part 3): what it shows of each person of the Synthea sample is
what the sample holds of them, counted here from the NDJSON itself; asked again it answers the same; and any change
to the record, or to what the reader may see, shows at once (the summary API reuses an answer only when the gate
returned the same entries at the same versions and withheld the same).

Data: the Synthea 10-patient bulk export shipped as test data (tests/data/synthea-10-patients, Apache-2.0). Labels:
FHIR R4 `meta.security` with the HL7 v3 Confidentiality code R "restricted"
(http://terminology.hl7.org/CodeSystem/v3-Confidentiality); a person's request to keep an entry private is a FHIR R4
Consent whose deny provision names the entry, as docs/governance.md describes."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from tests.conftest import SAMPLES
from tests.record.helpers import load, organisations, rich_record, src

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"


def _subject(r: dict) -> str | None:
    ref = (r.get("subject") or r.get("patient") or {}).get("reference") or ""
    return ref.rsplit("/", 1)[-1].removeprefix("urn:uuid:") or None


@pytest.fixture(scope="module")
def sample(server) -> list[dict]:
    """The sample imported as the integration account (as `joinedup import` would), and its resources."""
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths

    report = import_paths(server.gate, SYSTEM, [SAMPLES], workers=1)
    assert report.rejected == 0
    out = []
    for f in sorted(SAMPLES.glob("*.000.ndjson.gz")):
        out.extend(json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines() if line.strip())
    return out


def _summary(server, pid: str, user: str = "admin") -> dict:
    with server.client(user) as c:
        r = c.get(f"/api/patients/{pid}/summary")
    assert r.status_code == 200, r.text[:300]
    return r.json()


def _same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "generated"} == {k: v for k, v in b.items() if k != "generated"}


def test_every_synthea_person_summary_shows_what_the_export_holds_of_them(server, sample):
    people = [r["id"] for r in sample if r["resourceType"] == "Patient"]
    assert len(people) == 13
    for pid in people:
        mine = [r for r in sample if _subject(r) == pid]
        kinds = Counter(r["resourceType"] for r in mine)
        conditions = sum(1 for r in mine if r["resourceType"] == "Condition" and not any(
            c.get("code") in ("entered-in-error", "refuted")
            for c in (r.get("verificationStatus") or {}).get("coding") or []))
        prescriptions = sum(1 for r in mine if r["resourceType"] == "MedicationRequest"
                            and r.get("intent") not in ("plan", "proposal") and r.get("status") != "draft")
        documents = sum(1 for r in mine if r["resourceType"] == "DocumentReference"
                        and r.get("status") != "entered-in-error")
        s = _summary(server, pid)
        assert s["person"]["id"] == pid
        assert sum(len(p["entries"]) for p in s["problems"]) == conditions, pid
        # each medicine shows the latest entry per organisation, and how many earlier ones it stands for
        assert sum(e["earlier"] + 1 for m in s["medicines"] for e in m["entries"]) == prescriptions, pid
        assert len(s["allergies"]) == kinds["AllergyIntolerance"], pid
        assert len(s["timeline"]) == kinds["Encounter"] + documents, pid
        assert Counter(e["kind"] for e in s["timeline"]) == Counter(
            {"Encounter": kinds["Encounter"], "DocumentReference": documents}) - Counter(), pid
        assert all(a["state"] in ("shown", "none recorded") for a in s["access"].values()), pid
        # asked again (an answer reused): the same summary
        assert _same(_summary(server, pid), s), pid


def test_the_largest_synthea_record_is_summarised_whole(server, sample):
    sizes = Counter(_subject(r) for r in sample if r["resourceType"] != "Patient")
    pid, n = sizes.most_common(1)[0]
    assert n + 1 == 3489  # the Patient and every entry naming them
    s = _summary(server, pid)
    encounters = sum(1 for r in sample if r["resourceType"] == "Encounter" and _subject(r) == pid)
    assert len(s["timeline"]) > encounters
    with server.client("admin") as c:
        tl = c.get(f"/api/patients/{pid}/timeline").json()
    assert tl["total"] == len(s["timeline"])
    assert [e["provenance"]["ref"] for e in tl["events"]] == [e["provenance"]["ref"] for e in s["timeline"]]


@pytest.fixture()
def person(server, api, uid):
    """Known to five organisations; the test GP is their usual GP."""
    pid = f"syn-{uid}"
    load(api, organisations(uid) + rich_record(uid, pid, gp_practitioner="gp-1", seed=int(uid[:6], 16)))
    return pid


def _entries(s: dict, display: str) -> list[dict]:
    return [e for p in s["problems"] if p["display"] == display for e in p["entries"]]


def test_a_change_to_an_entry_shows_in_the_next_summary(server, api, person, uid):
    before = _summary(server, person, "gp")
    assert _same(_summary(server, person, "gp"), before)
    # SNOMED CT 35489007 |Depressive disorder (disorder)|; the mental health trust records it as resolved
    r = api.put(f"/fhir/Condition/{person}-c5", json={
        "resourceType": "Condition", "id": f"{person}-c5", "meta": src(f"mh-{uid}"),
        "subject": {"reference": f"Patient/{person}"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "resolved"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007",
                             "display": "Depressive disorder"}]}, "onsetDateTime": "2019-02-01"})
    assert r.status_code == 200, r.text
    after = _summary(server, person, "gp")
    assert [e["status"] for e in _entries(before, "Depressive disorder")] == ["active"]
    assert [e["status"] for e in _entries(after, "Depressive disorder")] == ["resolved"]
    assert not _same(after, before)


def test_an_entry_sealed_after_a_summary_is_withheld_from_the_next(server, api, person, uid):
    before = _summary(server, person, "gp")
    assert len(_entries(before, "Heart failure")) == 2
    assert before["access"]["problems"]["restricted"] is False
    # the hospital seals its heart failure entry (confidentiality R)
    r = api.put(f"/fhir/Condition/{person}-c4", json={
        "resourceType": "Condition", "id": f"{person}-c4",
        "meta": {**src(f"acute-{uid}"), "security": [{"system": CONFIDENTIALITY, "code": "R"}]},
        "subject": {"reference": f"Patient/{person}"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure"}]},
        "onsetDateTime": "2013-01-20"})
    assert r.status_code == 200, r.text
    for _ in range(2):  # built, then reused: the same both times
        after = _summary(server, person, "gp")
        assert [e["provenance"]["ref"] for e in _entries(after, "Heart failure")] == [f"Condition/{person}-c3"]
        assert after["access"]["problems"]["restricted"] is True
        assert "restricted to the organisation that recorded them" in after["access"]["problems"]["note"]
    assert len(_entries(_summary(server, person, "admin"), "Heart failure")) == 2


def test_an_entry_made_private_after_a_summary_is_withheld_from_the_next(server, api, person, uid):
    before = _summary(server, person, "gp")
    assert _entries(before, "Depressive disorder")
    assert before["access"]["problems"]["withheld_at_request"] is False
    r = api.put(f"/fhir/Consent/{person}-private", json={
        "resourceType": "Consent", "id": f"{person}-private", "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{person}"},
        "provision": {"type": "permit", "provision": [{"type": "deny", "data": [
            {"meaning": "instance", "reference": {"reference": f"Condition/{person}-c5"}}]}]}})
    assert r.status_code in (200, 201), r.text
    for _ in range(2):
        after = _summary(server, person, "gp")
        assert _entries(after, "Depressive disorder") == []
        p = after["access"]["problems"]
        assert p["withheld_at_request"] is True and "withheld at the person's request" in p["note"]
        assert p["state"] == "shown"  # the other problems are still shown, so never "none recorded"
    assert _entries(_summary(server, person, "admin"), "Depressive disorder")
