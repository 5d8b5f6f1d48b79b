"""Virtual wards done properly (issue 13, part 7) over HTTP: limits checked per measurement (SpO2 is a percentage,
0-100 %; units checked or converted; lower below upper), admission by NHS number (modulus 11 check digit) or by a
name search among people the decider may see, dated readings with stale ones flagged, charts' data against the
limits, and a 'review done' record (ClinicalImpression) through the gate and audited.

Expected values come from the sources, not from the code: NEWS2 Chart 1 (RCP 2017) for the default limits
(temperature >= 39.1 scores 2, 38.1-39.0 scores 1; respiration 21-24 scores 2, 12-20 scores 0); UCUM / arithmetic
for conversions (100.4 °F = 38 °C; 1 lb = 0.45359237 kg; glucose 90 mg/dL ≈ 5.0 mmol/L at 180.16 g/mol)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.care.test_notifications import World, client, drop_users, make_world
from tests.web.test_pages import csrf_of

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def nhs_number(seed: str) -> str:
    """A valid NHS number (modulus 11, NHS Data Dictionary) derived from the seed, in the 999 test range."""
    n = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    while True:
        nine = "999" + f"{n % 10**6:06d}"
        total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1)))
        check = 11 - total % 11
        check = 0 if check == 11 else check
        if check != 10:
            return nine + str(check)
        n += 1


def broken(number: str) -> str:
    return number[:9] + str((int(number[9]) + 1) % 10)


def iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture()
def world(server, uid, api) -> World:
    w = make_world(server.gate, uid)
    p = api.get(f"/fhir/Patient/{w.patient}").json()
    p["identifier"] = [{"system": NHS, "value": nhs_number(uid)}]
    assert api.put(f"/fhir/Patient/{w.patient}", json=p).status_code == 200
    yield w
    drop_users(server.gate, uid)


def make_ward(api, world, kind="acute", capacity=5):
    r = api.post("/api/virtual-wards", json={"name": f"{kind.title()} ward {world.uid}", "kind": kind,
                                             "capacity": capacity, "organization": world.hospital})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def occupied(api, ward_id):
    return next(w for w in api.get("/api/virtual-wards").json()["wards"] if w["id"] == ward_id)["occupied"]


def issue(r):
    return r.json()["issue"][0]


# -- limits -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limits,field,words", [
    ({"spo2_min": 930}, "limits.spo2_min", "0% to 100%"),            # the issue: 930% was accepted
    ({"spo2_max": 100.5}, "limits.spo2_max", "cannot be right"),
    ({"spo2_min": {"value": 88, "unit": "mm[Hg]"}}, "limits.spo2_min", "must be in %"),
    ({"heart_rate_min": 120}, "limits.heart_rate_min", "below its upper limit"),   # default upper is 110
    ({"systolic_min": 150, "systolic_max": 140}, "limits.systolic_min", "below its upper limit"),
    ({"temperature_max": 98.6}, "limits.temperature_max", "cannot be right"),  # °F typed as °C
    ({"respiratory_rate_min": "nine"}, "limits.respiratory_rate_min", "needs a number"),
    ({"pulse_min": 40}, "limits.pulse_min", "Unknown limit"),
])
def test_bad_limits_are_refused_naming_the_field(api, server, world, limits, field, words):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient, "limits": limits})
    assert r.status_code == 422, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert issue(r)["expression"] == [field] and words in issue(r)["diagnostics"]
    assert occupied(api, wid) == 0  # nothing was written


def test_limits_in_other_units_are_converted_and_stored_as_ucum_quantities(api, server, world):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient, "limits": {
            "spo2_min": 88, "temperature_max": {"value": 100.4, "unit": "[degF]"},
            "weight_max": {"value": 220, "unit": "[lb_av]"}, "glucose_min": {"value": 72, "unit": "mg/dL"}}})
        assert r.status_code == 201, r.text
        limits = next(x for x in r.json()["extension"] if x["url"].endswith("monitoring-limits"))["extension"]
        got = {x["url"]: x["valueQuantity"] for x in limits}
        assert got["spo2_min"]["value"] == 88 and got["spo2_min"]["code"] == "%"
        assert got["temperature_max"]["value"] == pytest.approx(38.0, abs=0.01) and got["temperature_max"]["code"] == "Cel"
        assert got["weight_max"]["value"] == pytest.approx(99.79, abs=0.01) and got["weight_max"]["code"] == "kg"
        assert got["glucose_min"]["value"] == pytest.approx(4.0, abs=0.01)
        # NEWS2 defaults kept where nothing was agreed: respiration 21-24 scores 2, <=8 scores 3
        assert got["respiratory_rate_max"]["value"] == 20 and got["respiratory_rate_min"]["value"] == 9
        for q in got.values():
            assert q["system"] == "http://unitsofmeasure.org"


# -- admission by NHS number or name ------------------------------------------------------------------------------
def test_admission_by_nhs_number(api, server, world, uid):
    wid = make_ward(api, world)
    number = nhs_number(uid)
    with client(server, world.tokens["cons"]) as c:
        bad = c.post(f"/api/virtual-wards/{wid}/admissions", json={"nhs_number": broken(number)})
        assert bad.status_code == 422 and issue(bad)["expression"] == ["nhs_number"]
        assert "check digit" in issue(bad)["diagnostics"]
        unknown = c.post(f"/api/virtual-wards/{wid}/admissions", json={"nhs_number": nhs_number(uid + "x")})
        assert unknown.status_code == 404 and issue(unknown)["expression"] == ["nhs_number"]
        spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"nhs_number": spaced})
        assert r.status_code == 201, r.text
        assert r.json()["patient"]["reference"] == f"Patient/{world.patient}"
    assert occupied(api, wid) == 1


def test_finding_people_only_among_those_you_may_see(api, server, world, uid):
    number = nhs_number(uid)
    with client(server, world.tokens["cons"]) as c:
        by_number = c.get("/api/virtual-wards/people", params={"q": number}).json()
        assert [p["id"] for p in by_number["people"]] == [world.patient] and by_number["by"] == "nhs-number"
        by_name = c.get("/api/virtual-wards/people", params={"q": f"Lovelace{uid} 03/02/1940"}).json()
        assert [p["id"] for p in by_name["people"]] == [world.patient]
        assert by_name["people"][0]["nhs_number"] == number and by_name["people"][0]["birth_date"] == "1940-02-03"
        none = c.get("/api/virtual-wards/people", params={"q": f"Nobody{uid}"}).json()
        assert none["people"] == [] and "No one you may see" in none["message"]
        bad = c.get("/api/virtual-wards/people", params={"q": broken(number)})
        assert bad.status_code == 422 and issue(bad)["expression"] == ["nhs_number"]
        assert c.get("/api/virtual-wards/people", params={"q": " "}).status_code == 422
    with client(server, world.tokens["out"]) as c:  # a GP with no relationship finds no one, by name or number
        assert c.get("/api/virtual-wards/people", params={"q": f"Lovelace{uid}"}).json()["people"] == []
        assert c.get("/api/virtual-wards/people", params={"q": number}).json()["people"] == []


def test_someone_who_has_died_is_not_admitted(api, server, world):
    wid = make_ward(api, world)
    p = api.get(f"/fhir/Patient/{world.patient}").json()
    p["deceasedDateTime"] = iso(timedelta(days=-1))
    assert api.put(f"/fhir/Patient/{world.patient}", json=p).status_code == 200
    with client(server, world.tokens["cons"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient})
        assert r.status_code == 422 and "died" in issue(r)["diagnostics"]
        assert c.get("/api/virtual-wards/people", params={"q": f"Lovelace{world.uid}"}).json()["people"][0]["deceased"]
    assert occupied(api, wid) == 0


# -- readings -----------------------------------------------------------------------------------------------------
def test_readings_checked_per_measurement_and_converted(api, server, world):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        assert c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).status_code == 201
        url = f"/api/patients/{world.patient}/readings"
        for reading, field in [({"type": "spo2", "value": 101, "unit": "%"}, "readings[0].value"),
                               ({"type": "temperature", "value": 98.6, "unit": "Cel"}, "readings[0].value"),
                               ({"type": "glucose", "value": 5.5, "unit": "%"}, "readings[0].unit"),
                               ({"type": "respiratory-rate", "value": "fast", "unit": "/min"}, "readings[0].value"),
                               ({"type": "bp", "systolic": 120, "diastolic": 80, "unit": "%"}, "readings[0].unit"),
                               ({"type": "spo2", "value": 95, "unit": "%", "when": iso(timedelta(days=2))},
                                "readings[0].when"),
                               ({"type": "oxygen", "value": 95, "unit": "%"}, "readings[0].type")]:
            r = c.post(url, json={"readings": [reading]})
            assert r.status_code == 422, (reading, r.text)
            assert issue(r)["expression"] == [field], reading
        ok = c.post(url, json={"readings": [
            {"type": "temperature", "value": 100.4, "unit": "[degF]"},     # 38.0 °C: NEWS2 scores 1, no alert
            {"type": "respiratory-rate", "value": 22, "unit": "/min"},      # 21-24 scores 2: alert
            {"type": "weight", "value": 154, "unit": "[lb_av]"},
            {"type": "glucose", "value": 90, "unit": "mg/dL"}]})
        assert ok.status_code == 201, ok.text
        assert ok.json()["alerts"] == ["Breathing 22 breaths/min above agreed limit 20 breaths/min"]
        temp = api.get(ok.json()["observations"][0].replace("Observation/", "/fhir/Observation/")).json()
        assert temp["code"]["coding"][0]["code"] == "8310-5"
        assert temp["valueQuantity"]["code"] == "Cel" and temp["valueQuantity"]["value"] == pytest.approx(38.0)
        assert "100.4 °F" in temp["note"][0]["text"]
        weight = api.get(ok.json()["observations"][2].replace("Observation/", "/fhir/Observation/")).json()
        assert weight["code"]["coding"][0]["code"] == "29463-7"
        assert weight["valueQuantity"]["value"] == pytest.approx(69.85, abs=0.01)
        glucose = api.get(ok.json()["observations"][3].replace("Observation/", "/fhir/Observation/")).json()
        assert glucose["code"]["coding"][0]["code"] == "15074-8"
        assert glucose["valueQuantity"]["value"] == pytest.approx(5.0, abs=0.02)
        hot = c.post(url, json={"readings": [{"type": "temperature", "value": 39.5, "unit": "Cel"}]})
        assert hot.json()["alerts"] == ["Temp 39.5 °C above agreed limit 39 °C"]  # >= 39.1 scores 2


def test_review_lists_date_every_reading_and_flag_old_ones(api, server, world):
    wid = make_ward(api, world)
    # readings from a GP visit four months before the admission: the same LOINC codes
    old = iso(timedelta(days=-122))
    for code, value, unit in (("59408-5", 89, "%"), ("8867-4", 72, "/min")):
        r = api.post("/fhir/Observation", json={
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{world.patient}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": old,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
        assert r.status_code == 201
    with client(server, world.tokens["cons"]) as c:
        assert c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).status_code == 201
        row = next(p for p in c.get(f"/api/virtual-wards/{wid}").json()["patients"] if p["patient"] == world.patient)
        spo2 = row["latest"]["spo2"]
        assert spo2["when"] == old and spo2["ago"] == "4 months ago" and spo2["stale"] and spo2["before_admission"]
        assert spo2["breach"] is None and row["alerts"] == []  # not monitoring: taken before the admission
        assert row["no_recent_reading"] and row["review_due"] and row["last_review"] is None
        assert c.post(f"/api/patients/{world.patient}/readings",
                      json={"readings": [{"type": "spo2", "value": 91, "unit": "%"}]}).status_code == 201
        row = next(p for p in c.get("/api/virtual-wards/review").json()["patients"] if p["patient"] == world.patient)
        assert row["latest"]["spo2"]["value"] == 91 and row["latest"]["spo2"]["ago"] == "just now"
        assert not row["latest"]["spo2"]["stale"] and row["alerts"] == ["SpO2 91% below agreed limit 94%"]
        assert row["latest"]["heart_rate"]["ago"] == "4 months ago" and row["latest"]["heart_rate"]["stale"]
        assert not row["no_recent_reading"]
        # the page says when, in words
        c.headers.pop("Authorization")
        c.cookies.set("joinedup_token", world.tokens["cons"])
        text = c.get("/wards/review").text
        assert "4 months ago" in text and "before admission" in text and "just now" in text


# -- charts and reviews -------------------------------------------------------------------------------------------
def test_stay_charts_and_review_done(api, server, world):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        eid = c.post(f"/api/virtual-wards/{wid}/admissions",
                     json={"patient": world.patient, "limits": {"spo2_min": 90}}).json()["id"]
        stay = api.get(f"/fhir/EpisodeOfCare/{eid}").json()  # admitted two hours ago
        stay["period"]["start"] = iso(timedelta(hours=-2))
        assert api.put(f"/fhir/EpisodeOfCare/{eid}", json=stay).status_code == 200
        readings = [{"type": "spo2", "value": v, "unit": "%", "when": iso(timedelta(minutes=m))}
                    for v, m in ((95, -50), (92, -40), (88, -30))]
        assert c.post(f"/api/patients/{world.patient}/readings", json={"readings": readings}).status_code == 201
        s = c.get(f"/api/virtual-wards/admissions/{eid}").json()
        chart = next(ch for ch in s["charts"] if ch["code"] == "ward-spo2")
        assert [p["value"] for p in chart["points"]] == [95, 92, 88]  # oldest first
        assert chart["low"] == 90 and chart["high"] is None and chart["breaches"] == 1
        assert [b["breach"] for b in s["breaches"]] == ["SpO2 88% below agreed limit 90%"]
        # review done: outcome required, through the gate
        bad = c.post(f"/api/virtual-wards/admissions/{eid}/reviews", json={"outcome": "fine"})
        assert bad.status_code == 422 and issue(bad)["expression"] == ["outcome"]
        r = c.post(f"/api/virtual-wards/admissions/{eid}/reviews",
                   json={"outcome": "escalated", "note": "Visit today by community nurse"})
        assert r.status_code == 201, r.text
        ci = r.json()
        assert ci["resourceType"] == "ClinicalImpression" and ci["status"] == "completed"
        assert ci["assessor"]["reference"] == f"Practitioner/{world.practitioners['cons']}"
        assert ci["supportingInfo"][0]["reference"] == f"EpisodeOfCare/{eid}"
        assert ci["subject"]["reference"] == f"Patient/{world.patient}"
        assert ci["note"][0]["text"] == "Visit today by community nurse"
        assert ci["investigation"][0]["item"], "the readings looked at are named"
        row = next(p for p in c.get(f"/api/virtual-wards/{wid}").json()["patients"] if p["patient"] == world.patient)
        assert row["last_review"]["outcome"] == "escalated" and row["last_review"]["ago"] == "just now"
        assert row["last_review"]["by"] == f"cons {world.uid}" and not row["review_due"]
    with client(server, world.tokens["gp"]) as c:  # the registered GP sees the review as part of the record
        assert c.get(f"/api/virtual-wards/admissions/{eid}/reviews").json()["reviews"][0]["outcome"] == "escalated"
    with client(server, world.tokens["out"]) as c:  # no relationship: refused, audited
        r = c.post(f"/api/virtual-wards/admissions/{eid}/reviews", json={"outcome": "continue"})
        assert r.status_code == 403
        assert c.get(f"/api/virtual-wards/admissions/{eid}").status_code == 403
    server.gate.flush_audit()
    events = api.get("/fhir/AuditEvent", params={"patient": world.patient, "_count": "1000"}).json()
    whats = [e["resource"].get("entity", [{}])[0].get("what", {}).get("reference", "")
             for e in events.get("entry") or []]
    assert f"ClinicalImpression/{ci['id']}" in whats
    # a case manager (no right to amend clinical entries) records a review of someone in their care team
    with client(server, world.tokens["kw"]) as c:
        r = c.post(f"/api/virtual-wards/admissions/{eid}/reviews", json={"outcome": "continue"})
        assert r.status_code == 201, r.text
        assert r.json()["meta"]["source"] == f"Organization/comm-{world.uid}"
    # after discharge there is nothing to review
    with client(server, world.tokens["cons"]) as c:
        assert c.post(f"/api/virtual-wards/admissions/{eid}/discharge").status_code == 200
        assert c.post(f"/api/virtual-wards/admissions/{eid}/reviews", json={"outcome": "continue"}).status_code == 409


# -- pages keep what was typed ---------------------------------------------------------------------------------
def test_admission_form_keeps_what_was_typed(api, server, world, uid):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        c.headers.pop("Authorization")
        c.cookies.set("joinedup_token", world.tokens["cons"])
        token = csrf_of(c.get(f"/wards/{wid}").text)
        form = {"csrf_token": token, "q": f"Lovelace{uid}", "reason": "COPD exacerbation", "spo2_min": "930",
                "heart_rate_max": "125", "action": "admit"}
        r = c.post(f"/wards/{wid}/admit", data=form)
        assert r.status_code == 422
        assert 'value="930"' in r.text and 'value="COPD exacerbation"' in r.text and 'value="125"' in r.text
        assert "SpO2 lower limit of 930% cannot be right" in r.text and f"Lovelace{uid}" in r.text
        # a name typed without choosing: the matches to choose from, nothing lost
        r = c.post(f"/wards/{wid}/admit", data={**form, "spo2_min": "88"})
        assert r.status_code == 422 and "Choose the person" in r.text and 'value="COPD exacerbation"' in r.text
        assert f'value="{world.patient}" checked' in r.text
        # the search box changed after choosing: the stale choice is not admitted
        r = c.post(f"/wards/{wid}/admit", data={**form, "spo2_min": "88", "patient": world.patient,
                                                "searched": "Somebody Else"})
        assert r.status_code == 422 and "Choose the person" in r.text
        r = c.post(f"/wards/{wid}/admit", data={**form, "spo2_min": "88", "patient": world.patient,
                                                "searched": f"Lovelace{uid}"}, follow_redirects=True)
        assert r.status_code == 200 and "Admitted." in r.text
        eid = c.get(f"/api/virtual-wards/{wid}", headers={"Authorization": f"Bearer {world.tokens['cons']}"}
                    ).json()["patients"][0]["episode"]
        # a reading in the wrong unit on the person's page: refused, typed values kept
        token = csrf_of(c.get(f"/wards/stays/{eid}").text)
        r = c.post(f"/wards/stays/{eid}/readings", data={"csrf_token": token, "type": "spo2", "value": "93",
                                                         "unit": "mmHg"})
        assert r.status_code == 422 and "must be recorded in %" in r.text and 'value="mmHg"' in r.text
        r = c.post(f"/wards/stays/{eid}/review", data={"csrf_token": token, "note": "Looked well"})
        assert r.status_code == 422 and "Looked well" in r.text


def test_latest_of_each_measurement_even_among_many_readings(api, server, world):
    """A weight from last week is still the latest weight after 120 pulse-oximeter readings since."""
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        eid = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).json()["id"]
        stay = api.get(f"/fhir/EpisodeOfCare/{eid}").json()
        stay["period"]["start"] = iso(timedelta(days=-10))
        assert api.put(f"/fhir/EpisodeOfCare/{eid}", json=stay).status_code == 200
        url = f"/api/patients/{world.patient}/readings"
        weight = iso(timedelta(days=-7))
        assert c.post(url, json={"readings": [{"type": "weight", "value": 70, "unit": "kg", "when": weight}]}
                      ).status_code == 201
        spo2 = [{"type": "spo2", "value": 96, "unit": "%", "when": iso(timedelta(minutes=-15 * i))}
                for i in range(1, 121)]
        assert c.post(url, json={"readings": spo2}).status_code == 201
        row = next(p for p in c.get(f"/api/virtual-wards/{wid}").json()["patients"] if p["patient"] == world.patient)
        assert row["latest"]["weight"]["when"] == weight and row["latest"]["weight"]["ago"] == "7 days ago"
        assert row["latest"]["weight"]["stale"] and not row["latest"]["spo2"]["stale"]
