"""A40 merge joins two records of one person in the record and in the gate's facts (reversibly, audited), and ADT
admissions and discharges raise the same inbox notifications as FHIR writes of the same Encounter would.

FHIR R4 Patient.link: the record merged away is `replaced-by` the surviving one, which `replaces` it; HL7 v2.5.1
chapter 3 (A40): PID names the surviving patient, MRG-1 the prior patient identifier list."""

from __future__ import annotations

import time

from joinedup.care.notifications import service as notifications
from joinedup.governance.accounts import add_user
from joinedup.governance.identity import SYSTEM
from joinedup.interop.hl7.service import Hl7Service

from .conftest import new_nhs_number


def test_merge_links_the_records_for_the_view_and_the_gate_and_unmerge_restores(feed):
    old_nhs, new_nhs = new_nhs_number(feed.gate), new_nhs_number(feed.gate)
    old_pid = feed.pid(mrn=f"OLD{feed.uid}", nhs=old_nhs, family="SMYTH")
    new_pid = feed.pid(mrn=f"NEW{feed.uid}", nhs=new_nhs)
    acks = feed.send(feed.msg("A28", f"1-{feed.uid}", pid=old_pid),
                     feed.msg("A01", f"2-{feed.uid}", pid=old_pid, pv1={2: "I", 3: "WARD 2", 19: f"V{feed.uid}"}),
                     feed.msg("A28", f"3-{feed.uid}", pid=new_pid))
    assert [a.code for a in acks] == ["AA"] * 3
    old_id, new_id = f"{feed.ods}-old{feed.uid}".lower(), f"{feed.ods}-new{feed.uid}".lower()
    facts = feed.gate.facts_for_tests
    assert new_id not in facts.linked(old_id)
    merge = feed.send_one(feed.msg("A40", f"4-{feed.uid}", pid=new_pid,
                                   extra=[f"MRG|OLD{feed.uid}^^^{feed.ods}^MR"]))
    assert merge.code == "AA", merge.text
    old, new = feed.read("Patient", old_id), feed.read("Patient", new_id)
    assert old["active"] is False
    assert {"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"} in old["link"]
    assert {"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"} in new["link"]
    assert new_id in facts.linked(old_id) and old_id in facts.linked(new_id)
    # a relationship with one record reaches the other: the hospital's clinician related to the surviving record
    clinician = add_user(feed.gate, name=f"hl7-doc-{feed.uid}", role="consultant",
                         organization=feed.org_id, practitioner=None)
    assert feed.gate.relationship_of(clinician, new_id)
    feed.gate.flush_audit()
    merges = feed.gate.search(SYSTEM, "AuditEvent", [("patient", new_id), ("subtype", "hl7-merge")]).matches + \
        feed.gate.search(SYSTEM, "AuditEvent", [("patient", old_id), ("subtype", "hl7-merge")]).matches
    assert merges
    # unmerge: both records as they were, and no link in the facts
    Hl7Service(feed.gate).unmerge(SYSTEM, old_id, reason="merged the wrong people by mistake")
    old, new = feed.read("Patient", old_id), feed.read("Patient", new_id)
    assert old["active"] is True and "link" not in old and "link" not in new
    assert new_id not in facts.linked(old_id)
    feed.gate.flush_audit()
    assert feed.gate.search(SYSTEM, "AuditEvent", [("patient", new_id), ("subtype", "unmerge")]).matches


def test_merge_naming_an_unknown_prior_record_is_an_error_and_kept(feed):
    feed.send_one(feed.msg("A28", f"1-{feed.uid}"))
    ack = feed.send_one(feed.msg("A40", f"2-{feed.uid}", extra=[f"MRG|NOBODY{feed.uid}^^^{feed.ods}^MR"]))
    assert ack.code == "AE" and ack.err()[2] == "MRG^1^1" and ack.err()[3].startswith("204^")
    assert any(r["control_id"] == f"2-{feed.uid}" for r in feed.gate.held_messages(SYSTEM))


def _inbox(gate, who, deadline: float = 20.0) -> list[dict]:
    end = time.monotonic() + deadline
    while True:
        n = notifications.notifier_for(gate)
        if n is not None:
            n.flush(5)
        items = notifications.inbox(gate=gate, who=who)["items"]
        if items or time.monotonic() > end:
            return items
        time.sleep(0.2)


def test_admission_and_discharge_reach_the_gp_and_care_team_like_fhir_writes(feed):
    """The person's own record (held by their practice, found by NHS number) gets the hospital's Encounter; the
    registered GP and the key worker in the care team are told, as for a FHIR Encounter write."""
    gate, uid = feed.gate, feed.uid.lower()
    practice, gp, kw, pid = _registered(feed, f"kw-{uid}")
    gate.update(SYSTEM, "CareTeam", f"ct-{uid}", {
        "resourceType": "CareTeam", "id": f"ct-{uid}", "status": "active", "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"member": {"reference": f"Practitioner/{kw}"}}]})
    gp_user = add_user(gate, name=f"gp-{uid}", role="gp", practitioner=gp, organization=practice)
    kw_user = add_user(gate, name=f"kw-{uid}", role="care-coordinator", practitioner=kw)
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ack = feed.send_one(feed.msg("A01", f"1-{feed.uid}", pv1={2: "I", 3: "WARD 9", 19: f"V{feed.uid}", 44: now},
                                 evn_time=now))
    assert ack.code == "AA"
    enc = feed.search("Encounter", [("subject", f"Patient/{pid}")])
    assert len(enc) == 1 and enc[0].content["status"] == "in-progress"
    for user in (gp_user, kw_user):
        items = _inbox(gate, user)
        assert [(i["event"], i["source"]) for i in items] == [("admission", f"Encounter/{enc[0].id}")], \
            items
    later = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    ack = feed.send_one(feed.msg("A03", f"2-{feed.uid}", pv1={2: "I", 3: "WARD 9", 19: f"V{feed.uid}", 44: now,
                                                                45: later}, evn_time=later))
    assert ack.code == "AA"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kinds = {i["event"] for i in _inbox(gate, gp_user)}
        if "discharge" in kinds:
            break
        time.sleep(0.2)
    assert "discharge" in kinds


def test_a_registration_the_feed_adds_or_moves_is_followed_at_once(feed):
    """PD1-3 (HL7 v2.5.1 chapter 3: the patient's primary facility, XON with the ODS code in XON.10) makes the
    Patient's generalPractitioner, which is a care relationship for the practice: a GP of the practice whose reach
    was cached before is related at once after the message (the writing process follows its own change in place,
    without waiting for the cache to refresh), and no longer once a later message names another practice."""
    gate, uid = feed.gate, feed.uid.lower()
    practices = [f"prac-a-{uid}", f"prac-b-{uid}"]
    for n, practice in enumerate(practices):
        gate.update(SYSTEM, "Organization", practice, {
            "resourceType": "Organization", "id": practice, "name": f"Surgery {n}",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": f"P{n}{feed.uid[:5]}"}]})
    gp_a = add_user(gate, name=f"gp-a-{uid}", role="gp", practitioner=None, organization=practices[0])
    gp_b = add_user(gate, name=f"gp-b-{uid}", role="gp", practitioner=None, organization=practices[1])
    pid_id = f"{feed.ods}-m{feed.uid}".lower()
    assert feed.send_one(feed.msg("A28", f"1-{uid}")).code == "AA"
    facts = gate.facts_for_tests
    assert not gate.relationship_of(gp_a, pid_id) and not gate.relationship_of(gp_b, pid_id)
    assert facts.related(gp_a, [pid_id]) == set() and facts.related(gp_a, [pid_id]) == set()  # reach now cached

    def pd1(n: int) -> str:
        return f"PD1|||Surgery {n}^^^^^^^^^P{n}{feed.uid[:5]}"

    cached = facts.snapshot()
    assert feed.send_one(feed.msg("A31", f"2-{uid}", extra=[pd1(0)])).code == "AA"
    assert feed.read("Patient", pid_id)["generalPractitioner"] == [{"reference": f"Organization/{practices[0]}"}]
    assert gate.relationship_of(gp_a, pid_id) == "registered" and not gate.relationship_of(gp_b, pid_id)
    assert facts.snapshot() is cached  # followed in place: only the reach of those the relationships name was dropped
    assert facts.related(gp_a, [pid_id]) == {pid_id}
    assert feed.send_one(feed.msg("A31", f"3-{uid}", extra=[pd1(1)])).code == "AA"
    assert not gate.relationship_of(gp_a, pid_id) and gate.relationship_of(gp_b, pid_id) == "registered"
    assert facts.related(gp_a, [pid_id]) == set() and facts.related(gp_b, [pid_id]) == {pid_id}


def test_the_listener_tells_after_the_ack_and_flush_waits_for_it(feed):
    """The listener raises a batch's notifications itself (`Notifier.holding`), with its next batch or - the feed
    quiet, as here between messages - on their own, instead of the notification worker's thread. The ACK may come
    first, but once the notifier's flush() returns the GP's inbox already holds the admissions, at the first read."""
    gate, uid = feed.gate, feed.uid.lower()
    practice, gp, pid = _registered(feed)
    gp_user = add_user(gate, name=f"gp-held-{uid}", role="gp", practitioner=gp, organization=practice)
    notifier = notifications.notifier_for(gate)
    assert notifier is not None and notifier.flush(10)
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    for n in range(3):  # three admissions, one after the other on one connection
        ack = feed.send_one(feed.msg("A01", f"h{n}-{feed.uid}", pv1={2: "I", 3: "WARD 2", 19: f"VH{n}{feed.uid}",
                                                                   44: now}, evn_time=now))
        assert ack.code == "AA"
    assert notifier.flush(10)
    items = notifications.inbox(gate=gate, who=gp_user)["items"]
    encounters = {e.id for e in feed.search("Encounter", [("subject", f"Patient/{pid}")])}
    assert len(encounters) == 3
    assert sorted((i["event"], i["source"]) for i in items) == sorted(("admission", f"Encounter/{e}")
                                                                      for e in encounters)


def _registered(feed, *others: str) -> tuple[str, ...]:
    """A practice, its GP (and any other practitioners named) and a person registered with both, found by the feed's
    NHS number: (practice, GP, *others, patient id)."""
    gate, uid = feed.gate, feed.uid.lower()
    practice, gp, pid = f"prac-{uid}", f"gp-{uid}", f"pat-{uid}"
    gate.update(SYSTEM, "Organization", practice, {"resourceType": "Organization", "id": practice, "name": "Surgery"})
    for pr in (gp, *others):
        gate.update(SYSTEM, "Practitioner", pr, {"resourceType": "Practitioner", "id": pr, "name": [{"family": pr}]})
    gate.update(SYSTEM, "Patient", pid, {
        "resourceType": "Patient", "id": pid, "meta": {"source": f"Organization/{practice}"},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": feed.nhs}],
        "name": [{"family": "SMITH", "given": ["JANE"]}], "birthDate": "1950-01-01",
        "generalPractitioner": [{"reference": f"Organization/{practice}"}, {"reference": f"Practitioner/{gp}"}]})
    return (practice, gp, *others, pid)
