"""The holistic summary over HTTP: sections, provenance, reconciliation, timeline, bad input and refusals."""

from __future__ import annotations

import time

import pytest

from tests.record.helpers import LOINC, load, organisations, rich_record, src


@pytest.fixture()
def person(server, api, uid):
    """A person known to GP, hospital, community, mental health and social care; the test GP is their usual GP."""
    pid = f"pt-{uid}"
    load(api, organisations(uid) + rich_record(uid, pid, gp_practitioner="gp-1", seed=int(uid[:6], 16)))
    return pid


def _summary(server, pid, user="admin"):
    with server.client(user) as c:
        return c.get(f"/api/patients/{pid}/summary")


def test_summary_merges_every_setting_with_provenance(server, person, uid):
    r = _summary(server, person)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["person"]["name"] == f"David Young{uid}"
    assert s["person"]["nhs_number"] and len(s["person"]["nhs_number"]) == 10
    assert s["gp_practice"]["practice"] == f"Riverside Surgery {uid}"
    assert s["key_worker"]["name"] == "Fatima Mistry"
    settings = {o["setting"] for o in s["organisations"]}
    assert {"GP practice", "Hospital", "Community", "Mental health", "Social care"} <= settings
    # every item says where it came from and when the shared record last changed
    for section in ("problems", "medicines"):
        for item in s[section]:
            for e in item["entries"]:
                assert e["provenance"]["source"]["name"] and e["provenance"]["last_updated"]
    for section in ("results", "timeline", "referrals", "social_care", "carers", "alerts", "what_matters",
                    "allergies"):
        assert s[section], section
        for item in s[section]:
            assert item["provenance"]["source"]["id"], (section, item)
            assert item["provenance"]["last_updated"], (section, item)
    assert s["headings"]["problems"] == "Problems and issues"


def test_problems_are_deduplicated_by_snomed_code(server, person):
    s = _summary(server, person).json()
    names = [p["display"] for p in s["problems"]]
    assert names.count("Diabetes mellitus type 2") == 1
    diabetes = next(p for p in s["problems"] if p["code"] == "44054006")
    assert {e["provenance"]["source"]["setting"] for e in diabetes["entries"]} == {"GP practice", "Hospital"}
    assert diabetes["notes"] == []  # 2007-06 agrees with 2007-06-09
    hf = next(p for p in s["problems"] if p["code"] == "84114007")
    assert any("Onset differs" in n for n in hf["notes"])


def test_medicines_reconciled_with_discrepancies_flagged(server, person):
    s = _summary(server, person).json()
    meds = {m["name"]: m for m in s["medicines"]}
    metformin = meds["Metformin"]
    assert len(metformin["entries"]) == 3  # one line, every source
    assert [f["kind"] for f in metformin["flags"]] == ["dose_differs"]
    aspirin = meds["Aspirin"]
    assert any(f["kind"] == "stopped_elsewhere_still_on_gp_list" and "discharge" in f["text"]
               for f in aspirin["flags"])
    assert meds["Amlodipine"]["flags"] == []


def test_combination_products_are_not_merged_with_single_ingredients(server, api, uid):
    """An inhaled steroid alone and the steroid with a LABA are different medicines: two lines, no false 'dose
    differs'; a calcium/vitamin D combination is named by both ingredients."""
    pid = f"combo-{uid}"
    gp = f"gp-{uid}"

    def med(i, product, dose):
        return {"resourceType": "MedicationRequest", "id": f"{pid}-m{i}", "meta": src(gp), "status": "active",
                "intent": "order", "subject": {"reference": f"Patient/{pid}"}, "authoredOn": f"2026-01-0{i}",
                "medicationCodeableConcept": {"text": product}, "dosageInstruction": [{"text": dose}]}
    load(api, organisations(uid) + [
        {"resourceType": "Patient", "id": pid, "meta": src(gp)},
        med(1, "Beclometasone 100micrograms/dose inhaler CFC free", "Two puffs twice a day"),
        med(2, "Beclometasone 100micrograms/dose / Formoterol 6micrograms/dose inhaler CFC free", "One puff twice a day"),
        med(3, "Colecalciferol 400unit / Calcium carbonate 1.5g chewable tablets", "Chew one tablet twice a day")])
    meds = {m["name"]: m for m in _summary(server, pid).json()["medicines"]}
    assert set(meds) == {"Beclometasone", "Beclometasone / formoterol", "Colecalciferol / calcium carbonate"}
    assert all(m["flags"] == [] and len(m["entries"]) == 1 for m in meds.values())


def test_results_trend_and_timeline(server, person):
    s = _summary(server, person).json()
    hba1c = next(r for r in s["results"] if r["code"] == "59261-8")
    assert hba1c["latest"] == 71 and hba1c["previous"] == 63 and hba1c["trend"] == "up"
    assert [p["value"] for p in hba1c["points"]] == [58, 63, 71]
    assert any(r["code"] == "8480-6" for r in s["results"])  # components become their own series
    dates = [e["date"] for e in s["timeline"]]
    assert dates == sorted(dates, reverse=True)
    upcoming = [e for e in s["timeline"] if e["upcoming"]]
    assert [e["title"] for e in upcoming] == ["Outpatient appointment"]
    assert {e["type"] for e in s["timeline"]} >= {"encounter", "referral", "advice", "episode"}
    assert s["referrals"][0]["title"] in ("Advice and guidance request", "Referral to cardiology")
    assert {r["kind"] for r in s["referrals"]} == {"referral", "advice request"}
    assert s["social_care"][0]["title"] == "Home care package"
    assert s["carers"][0]["name"] == "Ava Young"
    assert s["alerts"][0]["text"] == "Key safe at the front door"
    assert s["what_matters"][0]["text"] == "To keep walking to the allotment"


def test_timeline_filters(server, person):
    with server.client("admin") as c:
        r = c.get(f"/api/patients/{person}/timeline", params={"setting": "Hospital"})
        assert r.status_code == 200
        t = r.json()
        assert t["total"] == 2 and {e["setting"] for e in t["events"]} == {"Hospital"}
        t = c.get(f"/api/patients/{person}/timeline", params={"type": "referral"}).json()
        assert [e["title"] for e in t["events"]] == ["Referral to cardiology"]
        bad = c.get(f"/api/patients/{person}/timeline", params={"type": "party"})
        assert bad.status_code == 400
        assert bad.json()["resourceType"] == "OperationOutcome"


def test_patient_with_no_data_at_all(server, api, uid):
    pid = f"empty-{uid}"
    load(api, [{"resourceType": "Patient", "id": pid}])
    r = _summary(server, pid)
    assert r.status_code == 200
    s = r.json()
    assert s["person"]["name"] == "Unnamed" and s["person"]["nhs_number"] is None
    for section in ("problems", "medicines", "allergies", "results", "timeline", "referrals", "social_care",
                    "carers", "alerts", "what_matters", "care_team", "organisations"):
        assert s[section] == [], section
    assert s["key_worker"] is None and s["resources"] == 1


def test_unknown_patient_is_404_operation_outcome(server):
    r = _summary(server, "no-such-person")
    assert r.status_code == 404
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "not-found"


def test_unauthenticated_is_401(server, person):
    r = _summary(server, person, user=None)
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"


def test_refusals_are_explained(server, api, uid):
    pid = f"stranger-{uid}"
    load(api, [{"resourceType": "Patient", "id": pid, "meta": src("somewhere-else"),
                "generalPractitioner": [{"reference": "Practitioner/someone-else"}]}])
    for user in ("gp", "analyst"):
        r = _summary(server, pid, user=user)
        assert r.status_code == 403, (user, r.text)
        issue = r.json()["issue"][0]
        assert issue["code"] == "forbidden" and issue["diagnostics"].startswith("Access refused")


def test_usual_gp_can_read_the_summary(server, person):
    r = _summary(server, person, user="gp")
    assert r.status_code == 200, r.text
    assert r.json()["medicines"]


@pytest.mark.slow
def test_patient_with_thousands_of_resources(server, api, uid):
    pid = f"big-{uid}"
    subj = {"reference": f"Patient/{pid}"}
    res = organisations(uid) + [{"resourceType": "Patient", "id": pid, "meta": src(f"gp-{uid}"),
                                 "name": [{"family": "Big", "given": ["Record"]}]}]
    for i in range(2000):
        res.append({"resourceType": "Observation", "id": f"{pid}-o{i}", "meta": src(f"acute-{uid}"),
                    "status": "final", "subject": subj,
                    "code": {"coding": [{"system": LOINC, "code": ["2823-3", "14682-9", "29463-7", "8867-4"][i % 4]}]},
                    "effectiveDateTime": f"{2015 + i // 200:04d}-{1 + (i // 17) % 12:02d}-{1 + i % 28:02d}",
                    "valueQuantity": {"value": 4 + (i % 10) / 10, "unit": "x"}})
    for i in range(1000):
        org = [f"gp-{uid}", f"acute-{uid}", f"comm-{uid}", f"mh-{uid}"][i % 4]
        res.append({"resourceType": "Encounter", "id": f"{pid}-e{i}", "meta": src(org), "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "type": [{"text": "Contact"}], "subject": subj,
                    "period": {"start": f"{2016 + i // 120:04d}-{1 + (i // 10) % 12:02d}-{1 + i % 28:02d}T10:00:00Z"}})
    load(api, res)
    started = time.perf_counter()
    r = _summary(server, pid)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    s = r.json()
    assert s["resources"] >= 3001
    assert {x["code"] for x in s["results"]} == {"2823-3", "14682-9", "29463-7", "8867-4"}
    assert sum(x["count"] for x in s["results"]) == 2000
    assert len(s["timeline"]) == 1000
    assert elapsed < 5, f"summary of 3,000 resources took {elapsed:.2f}s"
    with server.client("admin") as c:
        t = c.get(f"/api/patients/{pid}/timeline", params={"setting": "Mental health"}).json()
    assert t["total"] == 250
