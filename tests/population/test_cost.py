"""Cost and activity of care across settings: the schedule against its source (Unit Costs of Health and Social Care
2024 Manual), worked examples priced by hand from those unit costs, people's linked records, the CLI (json, csv,
bad input exit 2) and the API through the gate (analyst, board, refused clinician, bad date) with suppression."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.cost import engine, people, service

TODAY = date(2026, 6, 30)
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCT = "http://snomed.info/sct"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"

# The unit costs as printed in the Unit Costs of Health and Social Care 2024 Manual (PSSRU/CHE, 2025), 2023/24 prices:
# Table 9.4.2 GP per surgery consultation lasting 10 minutes (incl. direct care staff, with qualifications) GBP 45;
# Table 9.3.1 GP practice nurse GBP 53 per hour with qualifications; Table 6.1.1 (NCC 2023/24) non-elective long stay
# GBP 5,134, short stay GBP 792, elective inpatient GBP 6,215, outpatient consultant led GBP 198, emergency care
# GBP 273; Table 6.2.1 district nurse adult face to face GBP 57, community matron face to face GBP 114, physiotherapist
# adult one to one GBP 41; Table 2.1.1 community mental health functional GBP 280, memory services GBP 238; Table
# 10.1.1 social worker (adult) GBP 58 per hour with qualifications; Table 10.4.1 home care worker GBP 27 per weekday
# hour; Table 1.2.1 private residential care GBP 1,200 per permanent resident week.
MANUAL = {"gp-consultation": 45, "practice-nurse-hour": 53, "nel-long-stay": 5134, "nel-short-stay": 792,
          "elective-inpatient": 6215, "outpatient-consultant-led": 198, "emergency-care": 273,
          "district-nurse-visit": 57, "community-matron-visit": 114, "physiotherapy-contact": 41,
          "community-mental-health-contact": 280, "memory-service-contact": 238, "social-worker-hour": 58,
          "home-care-hour": 27, "residential-care-week": 1200}


def test_schedule_matches_the_manual_and_marks_its_assumptions():
    s = engine.schedule()
    assert {k: v["cost"] for k, v in s["unit_costs"].items()} == MANUAL
    assert s["price_year"] == "2023/24"
    for cid, c in s["unit_costs"].items():
        assert c["verified"] is True and c["table"].startswith("Table "), cid
    # what is not a figure from the source says so
    assumed = {k for k, a in s["assumptions"].items() if not a["verified"]}
    assert {"home_care_hours_per_week", "short_stay_max_days", "default_contact_minutes"} <= assumed
    summary = service.schedule_summary()
    assert all("text" in a for a in summary["assumptions"])


def _directory() -> list[dict]:
    return [{"resourceType": "Organization", "id": "gp", "identifier": [{"system": ODS, "value": "Z80001"}],
             "name": "Test Surgery", "partOf": {"reference": "Organization/pcn"}},
            {"resourceType": "Organization", "id": "pcn", "identifier": [{"system": ODS, "value": "U80001"}],
             "name": "Test PCN"},
            {"resourceType": "Organization", "id": "acute", "identifier": [{"system": ODS, "value": "RZ8"}]},
            {"resourceType": "Organization", "id": "la", "identifier": [{"system": ODS, "value": "LA8"}]},
            {"resourceType": "PractitionerRole", "id": "r1", "practitioner": {"reference": "Practitioner/doc"},
             "organization": {"reference": "Organization/gp"}, "code": [{"text": "GP"}]},
            {"resourceType": "PractitionerRole", "id": "r2", "practitioner": {"reference": "Practitioner/nurse"},
             "organization": {"reference": "Organization/gp"}, "code": [{"text": "Practice nurse"}]}]


def _enc(pid: str, eid: str, cls: str, start: str, end: str, org: str, *, who: str | None = None,
         code: str | None = None, service_type: str | None = None) -> dict:
    res = {"resourceType": "Encounter", "id": eid, "status": "finished", "class": {"system": ACT, "code": cls},
           "subject": {"reference": f"Patient/{pid}"}, "period": {"start": start, "end": end},
           "serviceProvider": {"reference": f"Organization/{org}"}}
    if who:
        res["participant"] = [{"individual": {"reference": f"Practitioner/{who}"}}]
    if code:
        res["type"] = [{"coding": [{"system": SCT, "code": code}]}]
    if service_type:
        res["serviceType"] = {"text": service_type}
    return res


def _patient(pid: str, **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1950-03-01",
            "generalPractitioner": [{"reference": "Organization/gp"}], **extra}


def _raw(tmp_path: Path, resources: list[dict]) -> dict:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    by_type: dict[str, list[dict]] = {}
    for r in resources + _directory():
        by_type.setdefault(r["resourceType"], []).append(r)
    for t, rows in by_type.items():
        (folder / f"{t}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return service.measure_cost(people.iter_ndjson_records(folder),
                                people.iter_ndjson_directory(folder, engine.DIRECTORY_TYPES), today=TODAY)


def test_worked_example_priced_by_hand(tmp_path):
    """One person's year, priced by hand from the manual's unit costs:
    GP surgery consultation 45 + GP telephone consultation 45 (assumed as surgery) + practice nurse 30 minutes
    0.5 x 53 = 26.50 + emergency admission of 3 nights 5,134 + emergency admission of 1 night 792 + A&E 273 +
    outpatient 198 + district nurse 57 + memory service 238 + social worker 90 minutes 1.5 x 58 = 87 +
    home care package for the 14 days 2026-06-17..30 = 2 weeks x 10 hours (assumed) x 27 = 540
    = 7,435.50."""
    pid = "c1"
    resources = [
        _patient(pid),
        _enc(pid, "e1", "AMB", "2026-01-10T09:00:00Z", "2026-01-10T09:10:00Z", "gp", who="doc"),
        _enc(pid, "e2", "VR", "2026-02-10T09:00:00Z", "2026-02-10T09:10:00Z", "gp", who="doc"),
        _enc(pid, "e3", "AMB", "2026-03-10T09:00:00Z", "2026-03-10T09:30:00Z", "gp", who="nurse"),
        _enc(pid, "e4", "IMP", "2026-04-01T08:00:00Z", "2026-04-04T12:00:00Z", "acute", code="183452005"),
        _enc(pid, "e5", "IMP", "2026-05-01T08:00:00Z", "2026-05-02T12:00:00Z", "acute", code="183452005"),
        _enc(pid, "e6", "EMER", "2026-04-01T02:00:00Z", "2026-04-01T07:00:00Z", "acute"),
        _enc(pid, "e7", "AMB", "2026-02-20T10:00:00Z", "2026-02-20T10:30:00Z", "acute", service_type="Cardiology"),
        _enc(pid, "e8", "HH", "2026-03-20T10:00:00Z", "2026-03-20T10:30:00Z", "community",
             service_type="District nursing"),
        _enc(pid, "e9", "AMB", "2026-03-21T10:00:00Z", "2026-03-21T11:00:00Z", "mh",
             service_type="Memory assessment service"),
        _enc(pid, "e10", "HH", "2026-06-01T10:00:00Z", "2026-06-01T11:30:00Z", "la", service_type="Adult social care"),
        {"resourceType": "EpisodeOfCare", "id": "p1", "status": "active", "type": [{"text": "Home care package"}],
         "patient": {"reference": f"Patient/{pid}"}, "period": {"start": "2026-06-17"}},
        # outside the period: not counted
        _enc(pid, "old", "AMB", "2025-06-01T09:00:00Z", "2025-06-01T09:10:00Z", "gp", who="doc"),
    ]
    raw = _raw(tmp_path, resources)
    assert raw["total"]["all"]["people"] == 1
    assert raw["total"]["all"]["cost"] == pytest.approx(7435.50)
    acts = raw["activities"]
    assert acts["gp-consultation"]["count"] == 2 and acts["gp-consultation"]["cost"] == 90
    assert acts["practice-nurse-contact"]["cost"] == pytest.approx(26.5)
    assert acts["emergency-admission"]["count"] == 2 and acts["emergency-admission"]["cost"] == 5134 + 792
    assert acts["home-care-package"]["units"] == pytest.approx(2.0)
    assert acts["home-care-package"]["cost"] == pytest.approx(540)
    gp = raw["total"]["general-practice"]
    assert gp["contacts"] == 3 and gp["cost"] == pytest.approx(116.5)
    assert raw["total"]["social-care"]["cost"] == pytest.approx(87 + 540)
    assert raw["total"]["mental-health"]["cost"] == 238
    assert raw["not_counted"]["unpriced_contacts"] == 0


def test_linked_social_care_record_counts_for_the_person_and_unlinked_is_reported(tmp_path):
    """A local authority's record of the same person (Patient.link) is that person's activity: residential care
    for the 7 days 2026-06-24..30 = 1 week x 1,200; a record linked to no registered person is reported, not
    priced."""
    resources = [_patient("h1", link=[{"other": {"reference": "Patient/s1"}, "type": "seealso"}]),
                 {"resourceType": "Patient", "id": "s1", "birthDate": "1950-03-01"},
                 {"resourceType": "EpisodeOfCare", "id": "rc", "status": "active",
                  "type": [{"text": "Residential care placement"}], "patient": {"reference": "Patient/s1"},
                  "period": {"start": "2026-06-24"}},
                 {"resourceType": "Patient", "id": "s2", "birthDate": "1940-01-01"},
                 {"resourceType": "EpisodeOfCare", "id": "hc2", "status": "active",
                  "type": [{"text": "Home care package"}], "patient": {"reference": "Patient/s2"},
                  "period": {"start": "2026-01-01"}}]
    raw = _raw(tmp_path, resources)
    assert raw["total"]["all"]["people"] == 1
    assert raw["activities"]["residential-care-placement"]["cost"] == pytest.approx(1200)
    assert raw["not_counted"]["care_packages_outside_the_population"] == 1


def test_segments_and_practice_breakdown(tmp_path):
    """Twelve people aged 76 with no recorded condition: multimorbidity band 0, eFI 'fit', CMS band 0; each with one
    GP consultation (45): cost per person 45 in every segment they are in and in their practice Z80001."""
    resources = []
    for i in range(12):
        pid = f"s{i:02d}"
        resources += [_patient(pid), _enc(pid, f"{pid}-e", "AMB", "2026-02-01T09:00:00Z", "2026-02-01T09:10:00Z",
                                          "gp", who="doc")]
    raw = _raw(tmp_path, resources)
    for kind, band in (("multimorbidity", "0"), ("frailty", "fit"), ("cms", "0")):
        cell = raw[f"segment:{kind}"][band]["all"]
        assert cell["people"] == 12 and cell["cost"] == pytest.approx(540)
    assert raw["practice"]["Z80001"]["all"]["cost"] == pytest.approx(540)
    assert raw["pcn"]["U80001"]["all"]["people"] == 12
    published = service.publish(raw)
    assert published["total"]["people"] == 10  # 12 rounded to a multiple of 5
    assert published["total"]["cost_per_person"] == 45.0
    assert published["total"]["cost"] == 500  # 540 to the nearest GBP 100
    frail = {g["group"]: g for g in published["segments"]["frailty"]["groups"]}
    assert frail["fit"]["settings"]["general-practice"]["contacts_per_person"] == 1.0


def test_small_groups_are_suppressed_and_their_costs_withheld(tmp_path):
    resources = [_patient("x1"), _enc("x1", "x1-e", "EMER", "2026-02-01T09:00:00Z", "2026-02-01T12:00:00Z", "acute")]
    published = service.publish(_raw(tmp_path, resources))
    assert published["total"]["people"] == "*"
    assert published["total"]["cost"] is None and published["total"]["cost_per_person"] is None
    ae = next(a for a in published["activities"] if a["activity"] == "ae-attendance")
    assert ae["count"] == "*" and ae["cost"] is None


def _write_ics(tmp_path: Path) -> Path:
    folder = tmp_path / "ics"
    folder.mkdir()
    rows = [_patient(f"q{i}") for i in range(10)] + [
        _enc(f"q{i}", f"q{i}-e", "AMB", "2026-02-01T09:00:00Z", "2026-02-01T09:10:00Z", "gp", who="doc")
        for i in range(10)] + _directory()
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["resourceType"], []).append(r)
    for t, rs in by_type.items():
        (folder / f"{t}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return folder


def test_cli_report_json_and_csv(tmp_path):
    folder = _write_ics(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["cost", "report", "--source", str(folder), "--date", "2026-06-30", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["period_start"] == "2025-07-01" and doc["period_end"] == "2026-06-30"
    assert doc["total"]["people"] == 10 and doc["total"]["settings"]["general-practice"]["cost_per_person"] == 45.0
    assert doc["schedule"]["source"]["document"].startswith("Unit Costs of Health and Social Care 2024")
    r = runner.invoke(app, ["cost", "report", "--source", str(folder), "--date", "2026-06-30", "--format", "csv",
                            "--by", "practice"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    gp = next(x for x in rows if x["group"] == "Z80001" and x["setting"] == "general-practice")
    assert gp["cost_per_person"] == "45.0" and gp["contacts"] == "10"


@pytest.mark.parametrize("args, words", [
    (["--date", "30/06/2026"], "--date must be YYYY-MM-DD"),
    (["--by", "postcode"], "--by must be one of"),
    (["--source", "/nonexistent-dir-h"], "no such directory"),
    (["--format", "xml"], "xml"),
])
def test_cli_bad_input_exit_2(args, words):
    r = CliRunner().invoke(app, ["cost", "report", *args])
    assert r.exit_code == 2
    assert words in r.output


def test_api_through_the_gate(server, api):
    from joinedup.governance.accounts import add_user, issue_token

    add_user(server.gate, name="board-h", role="board", password="board-h-pw", replace=True)
    server.tokens["board-h"] = issue_token(server.gate, "board-h")
    for user in ("analyst", "board-h", "admin"):
        with server.client(user) as c:
            r = c.get("/api/population/cost", params={"date": "2026-06-30"})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["period_end"] == "2026-06-30" and "suppression" in doc
            assert all(isinstance(g["people"], (int, str)) for g in doc["practice"])
    with server.client("gp") as c:
        r = c.get("/api/population/cost")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    r = api.get("/api/population/cost", params={"date": "yesterday"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_people_who_died_in_the_period_are_counted(tmp_path):
    """The cost of care in the last months of life is part of the cost of care: someone who died on 2026-03-01
    counts, with the A&E attendance (273) before; someone who died before the period does not."""
    resources = [_patient("d1", deceasedDateTime="2026-03-01T10:00:00Z"),
                 _enc("d1", "d1-e", "EMER", "2026-02-01T09:00:00Z", "2026-02-01T12:00:00Z", "acute"),
                 _patient("d0", deceasedDateTime="2025-01-01T10:00:00Z")]
    raw = _raw(tmp_path, resources)
    assert raw["total"]["all"]["people"] == 1
    assert raw["total"]["all"]["cost"] == 273
