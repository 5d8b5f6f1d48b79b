"""ADT over a real MLLP socket: each trigger event mapped as the HL7 v2-to-FHIR IG says, one ACK per message,
the same message applied once, events out of order handled and explained.

Expected values come from the IG's maps (ConceptMap v2-0004 to Encounter Class: I -> IMP, E -> EMER, O -> AMB;
Table HL70004 to Encounter Status: P -> planned, I/E/O -> in-progress; PV1-45 valued -> finished; PV1-19 ->
Encounter.identifier type VN; PV1-3 -> Encounter.location with status active, PV1-6 / earlier -> completed) and from
HL7 v2.5.1 chapter 2 (MSA-1 AA/AE/AR, MSA-2 echoes MSH-10; ERR-3 codes from HL7 table 0357)."""

from __future__ import annotations

from joinedup.fhir import codes
from joinedup.governance.identity import SYSTEM

ADMIT = {2: "I", 3: "WARD 12^3^B", 7: "C123^JONES^ANNA^^^DR", 10: "MED", 19: "V1", 44: "20261204100000"}


def visit(feed, n: str = "1", **changes) -> dict[int, str]:
    pv1 = {**ADMIT, 19: f"V{n}-{feed.uid}"}
    pv1.update({int(k[1:]): v for k, v in changes.items()})
    return pv1


def encounter(feed, visit_no: str) -> dict:
    system = f"https://joinedup.example/fhir/Id/ods/{feed.ods}/visit-number"
    found = feed.search("Encounter", [("identifier", f"{system}|{visit_no}")])
    assert len(found) == 1, found
    return found[0].content


def test_admission_is_an_in_progress_encounter_with_its_location_patient_and_episode(feed):
    ack = feed.send_one(feed.msg("A01", f"A01-{feed.uid}", pv1=visit(feed)))
    assert (ack.code, ack.control_id) == ("AA", f"A01-{feed.uid}")
    assert ack.seg("MSH")[8].startswith("ACK^A01")
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["status"] == "in-progress"
    assert enc["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                            "display": "inpatient encounter"}
    assert enc["identifier"][0]["type"]["coding"][0]["code"] == "VN"
    assert enc["period"]["start"] == "2026-12-04T10:00:00Z"
    assert enc["serviceProvider"]["reference"] == f"Organization/{feed.org_id}"
    assert enc["meta"]["source"] == f"Organization/{feed.org_id}"
    [loc] = enc["location"]
    assert loc["status"] == "active"
    bed = feed.read("Location", loc["location"]["reference"].split("/")[1])
    assert bed["physicalType"]["coding"][0]["code"] == "bd"
    ward = feed.read("Location", bed["partOf"]["reference"].split("/")[1])
    assert ward["name"] == "WARD 12" and ward["managingOrganization"]["reference"] == f"Organization/{feed.org_id}"
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "ATND"
    patient = feed.read("Patient", enc["subject"]["reference"].split("/")[1])
    assert {"system": codes.NHS_NUMBER, "value": feed.nhs} == {k: v for k, v in patient["identifier"][1].items()
                                                              if k in ("system", "value")}
    assert patient["name"][0] == {"family": "SMITH", "given": ["JANE"]}
    assert patient["birthDate"] == "1950-01-01" and patient["gender"] == "female"
    episode = feed.read("EpisodeOfCare", enc["episodeOfCare"][0]["reference"].split("/")[1])
    assert episode["status"] == "active"
    assert episode["managingOrganization"]["reference"] == f"Organization/{feed.org_id}"


def test_transfer_keeps_location_history_and_discharge_finishes(feed):
    acks = feed.send(feed.msg("A01", f"1-{feed.uid}", pv1=visit(feed)),
                     feed.msg("A02", f"2-{feed.uid}", pv1=visit(feed, f3="WARD 14^1^A", f6="WARD 12^3^B"),
                              evn_time="20261205080000"),
                     feed.msg("A03", f"3-{feed.uid}", pv1=visit(feed, f3="WARD 14^1^A", f45="20261206120000",
                                                               f36="01^Discharged to home^HL70112"),
                              evn_time="20261206120000"))
    assert [a.code for a in acks] == ["AA", "AA", "AA"]
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["status"] == "finished"
    assert enc["period"] == {"start": "2026-12-04T10:00:00Z", "end": "2026-12-06T12:00:00Z"}
    first, second = enc["location"]
    assert first["status"] == "completed" and first["period"]["end"] == "2026-12-05T08:00:00Z"
    assert second["status"] == "completed" and second["period"] == {"start": "2026-12-05T08:00:00Z",
                                                                    "end": "2026-12-06T12:00:00Z"}
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0112", "code": "01", "display": "Discharged to home"}
    episode = feed.read("EpisodeOfCare", enc["episodeOfCare"][0]["reference"].split("/")[1])
    assert episode["status"] == "finished"


def test_cancel_transfer_and_cancel_discharge_undo_them(feed):
    acks = feed.send(feed.msg("A01", f"1-{feed.uid}", pv1=visit(feed)),
                     feed.msg("A02", f"2-{feed.uid}", pv1=visit(feed, f3="WARD 14"), evn_time="20261205080000"),
                     feed.msg("A12", f"3-{feed.uid}", pv1=visit(feed, f3="WARD 12^3^B")))
    assert [a.code for a in acks] == ["AA"] * 3
    enc = encounter(feed, f"V1-{feed.uid}")
    assert len(enc["location"]) == 1 and enc["location"][0]["status"] == "active"
    acks = feed.send(feed.msg("A03", f"4-{feed.uid}", pv1=visit(feed, f45="20261206120000")),
                     feed.msg("A13", f"5-{feed.uid}", pv1=visit(feed)))
    assert [a.code for a in acks] == ["AA"] * 2
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["status"] == "in-progress" and "end" not in enc["period"]


def test_cancel_admission_is_entered_in_error(feed):
    acks = feed.send(feed.msg("A01", f"1-{feed.uid}", pv1=visit(feed)),
                     feed.msg("A11", f"2-{feed.uid}", pv1=visit(feed)))
    assert [a.code for a in acks] == ["AA", "AA"]
    assert encounter(feed, f"V1-{feed.uid}")["status"] == "entered-in-error"


def test_pre_admission_is_planned_and_registration_of_an_emergency_is_in_progress(feed):
    acks = feed.send(feed.msg("A05", f"1-{feed.uid}", pv1=visit(feed, "1", f2="P")),
                     feed.msg("A04", f"2-{feed.uid}", pv1=visit(feed, "2", f2="E", f3="ED")))
    assert [a.code for a in acks] == ["AA", "AA"]
    planned = encounter(feed, f"V1-{feed.uid}")
    assert planned["status"] == "planned" and planned["class"]["code"] == "PRENC"
    assert planned["location"][0]["status"] == "planned"
    ae = encounter(feed, f"V2-{feed.uid}")
    assert ae["status"] == "in-progress" and ae["class"]["code"] == "EMER"


def test_update_and_person_messages_change_the_senders_record(feed):
    acks = feed.send(feed.msg("A28", f"1-{feed.uid}"),
                     feed.msg("A31", f"2-{feed.uid}", pid=feed.pid(family="JONES")),
                     feed.msg("A01", f"3-{feed.uid}", pv1=visit(feed)),
                     feed.msg("A08", f"4-{feed.uid}", pid=feed.pid(family="JONES-SMITH"),
                              pv1=visit(feed, f10="CAR")))
    assert [a.code for a in acks] == ["AA"] * 4
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["status"] == "in-progress" and enc["serviceType"]["coding"][0]["code"] == "CAR"
    patient = feed.read("Patient", enc["subject"]["reference"].split("/")[1])
    assert patient["name"][0]["family"] == "JONES-SMITH"
    assert len(feed.search("Patient", [("identifier", f"{codes.NHS_NUMBER}|{feed.nhs}")])) == 1


def test_the_same_message_twice_is_applied_once_and_acknowledged_again(feed):
    message = feed.msg("A01", f"DUP-{feed.uid}", pv1=visit(feed))
    first, again = feed.send(message, message)
    assert first.code == again.code == "AA"
    assert again.control_id == f"DUP-{feed.uid}"
    assert "duplicate" in again.seg("MSA")[3]
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["meta"]["versionId"] == "1"


def test_discharge_before_admission_makes_a_finished_encounter_and_says_so(feed):
    early = feed.send_one(feed.msg("A03", f"1-{feed.uid}", pv1=visit(feed, f45="20261206120000")))
    assert early.code == "AA"
    assert early.seg("ERR")[4] == "W" and "out of order" in early.seg("ERR")[8]
    enc = encounter(feed, f"V1-{feed.uid}")
    assert enc["status"] == "finished"
    assert enc["period"] == {"start": "2026-12-04T10:00:00Z", "end": "2026-12-06T12:00:00Z"}
    late = feed.send_one(feed.msg("A01", f"2-{feed.uid}", pv1=visit(feed)))
    assert late.code == "AA" and "stays finished" in late.seg("ERR")[8]
    assert encounter(feed, f"V1-{feed.uid}")["status"] == "finished"
    feed.gate.flush_audit()
    pid = enc["subject"]["reference"].split("/")[1]
    events = feed.gate.search(SYSTEM, "AuditEvent", [("patient", pid), ("subtype", "hl7-a03")]).matches
    assert any("out of order" in (e.content.get("outcomeDesc") or "") for e in events)
