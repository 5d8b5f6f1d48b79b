"""A message's lookups are audited as one event per person read (Gate.reads_as_one), naming every query and record,
and the prepared lookups answer exactly what the searches they stand for answer."""

from __future__ import annotations

import uuid

from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM


def visit(feed, **fields: str) -> dict[int, str]:
    pv1 = {2: "I", 3: "WARD 3^^^" + feed.ods, 19: f"V1-{feed.uid}", 44: "20261204100000"}
    pv1.update({int(k[1:]): v for k, v in fields.items()})
    return pv1


def _lookup_events(feed, patient_id: str) -> list[dict]:
    feed.gate.flush_audit()
    return [e.content for e in feed.gate.search(SYSTEM, "AuditEvent", [
        ("patient", patient_id), ("agent-name", f"hl7:{feed.ods}"), ("subtype", "search"), ("_count", "100")]).matches]


def _entity(event: dict) -> str:
    return next((e["what"]["reference"] for e in event.get("entity") or [] if "what" in e), "")


def _query(event: dict) -> str:
    return next((e["description"] for e in event.get("entity") or [] if "query" in e), "")


def _detail(event: dict) -> dict[str, str]:
    return {d["type"]: d["valueString"] for e in event.get("entity") or [] for d in e.get("detail") or []}


def test_one_audit_event_per_message_names_every_lookup_and_record(feed):
    """Admission then discharge: each message's lookups (PID-3, PV1-19, the spell, the ward) are one `search` event
    in the person's access log, by the feed's account, naming the message, every query and every record returned -
    and no event per lookup."""
    admit = feed.send_one(feed.msg("A01", f"1-{feed.uid}", pv1=visit(feed)))
    assert admit.code == "AA", admit.text
    enc = feed.search("Encounter", [("identifier", f"V1-{feed.uid}")])
    assert len(enc) == 1
    pid = enc[0].content["subject"]["reference"].split("/")[1]
    discharge = feed.send_one(feed.msg("A03", f"2-{feed.uid}", pv1=visit(feed, f45="20261206120000")))
    assert discharge.code == "AA", discharge.text

    events = _lookup_events(feed, pid)
    by_entity: dict[str, list[dict]] = {}
    for ev in events:
        by_entity.setdefault(_entity(ev), []).append(ev)
    # every lookup event of the feed about this person is a message's one event
    assert set(by_entity) == {f"hl7:{feed.ods}|1-{feed.uid}", f"hl7:{feed.ods}|2-{feed.uid}"}, by_entity.keys()
    first, second = by_entity[f"hl7:{feed.ods}|1-{feed.uid}"], by_entity[f"hl7:{feed.ods}|2-{feed.uid}"]
    assert len(first) == 1 and len(second) == 1
    # the discharge found the person and the visit: both queries and both records are named
    query, detail = _query(second[0]), _detail(second[0])
    assert "Patient?identifier=" in query and "Encounter?identifier=" in query
    assert f"Encounter/{enc[0].id}" in detail["records"] and f"Patient/{pid}" in detail["records"]
    assert int(detail["lookups"]) >= 2
    assert "ADT^A03" in second[0]["outcomeDesc"]
    # the writes are still audited one by one, and the message's own event is there too
    feed.gate.flush_audit()
    writes = [e.content for e in feed.gate.search(SYSTEM, "AuditEvent", [
        ("patient", pid), ("agent-name", f"hl7:{feed.ods}"), ("subtype", "update"), ("_count", "100")]).matches]
    assert any(_entity(e) == f"Encounter/{enc[0].id}" for e in writes)


def test_lookups_of_a_refused_message_are_audited_too(feed):
    """A message that fails while it is planned (a cancellation of a visit not known here) still leaves its lookups
    in the audit: reads are audited whether or not the message is applied."""
    feed.send_one(feed.msg("A28", f"1-{feed.uid}"))
    person = feed.search("Patient", [("identifier", f"M{feed.uid}")])
    assert len(person) == 1
    ack = feed.send_one(feed.msg("A11", f"2-{feed.uid}", pv1=visit(feed, f19=f"NOSUCH-{feed.uid}")))
    assert ack.code == "AE"
    events = [e for e in _lookup_events(feed, person[0].id) if _entity(e) == f"hl7:{feed.ods}|2-{feed.uid}"]
    assert len(events) == 1
    assert f"NOSUCH-{feed.uid}" in _query(events[0])


def _people_with_teams(gate, prefix: str, uid: str, letters: str) -> list[str]:
    """A person per letter; care teams 1-3 for the first (team 3 deleted) and team 4 for the second."""
    people = [f"{prefix}-{x}-{uid}" for x in letters]
    for pid in people:
        gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": pid}]})
    for n, pid in ((1, people[0]), (2, people[0]), (3, people[0]), (4, people[1])):
        gate.update(SYSTEM, "CareTeam", f"{prefix}-ct{n}-{uid}", {
            "resourceType": "CareTeam", "id": f"{prefix}-ct{n}-{uid}", "status": "active",
            "subject": {"reference": f"Patient/{pid}"}})
    gate.delete(SYSTEM, "CareTeam", f"{prefix}-ct3-{uid}")
    return people


def test_find_by_reference_answers_what_the_search_answers(db_url):
    """`Gate.find_by_reference` (the notification worker's care-team lookup) returns what `CareTeam?patient=` returns:
    current, not deleted, only that person's; and anyone but the integration account goes through the search."""
    gate = get_gate(db_url)
    uid = uuid.uuid4().hex[:8]
    a, b = _people_with_teams(gate, "fbr", uid, "ab")
    for pid in (a, b):
        want = sorted(s.id for s in gate.search(SYSTEM, "CareTeam", [("patient", pid), ("_count", "100")]).matches)
        got = [s.id for s in gate.find_by_reference(SYSTEM, "CareTeam", "patient", f"Patient/{pid}")]
        assert got == want
        assert all(s.content["subject"]["reference"] == f"Patient/{pid}"
                   for s in gate.find_by_reference(SYSTEM, "CareTeam", "patient", f"Patient/{pid}"))
    assert [s.id for s in gate.find_by_reference(SYSTEM, "CareTeam", "patient", f"Patient/{a}")] == \
        [f"fbr-ct1-{uid}", f"fbr-ct2-{uid}"]
    # a page larger than asked for is paged by the search: never more than `count`
    assert len(gate.find_by_reference(SYSTEM, "CareTeam", "patient", f"Patient/{a}", count=1)) == 1


def test_lookups_of_many_people_answer_what_one_by_one_answers_and_each_is_in_their_log(db_url):
    """`Gate.find_by_references` and `Gate.find_by_ids` (the notification worker's lookups for a batch of events)
    answer, for each person, what `find_by_reference` / reading the record answer one by one - current entries only,
    nobody else's - and inside `reads_as_one` each person gets one `search` event in their own access log naming
    the queries and their own records."""
    gate = get_gate(db_url)
    uid = uuid.uuid4().hex[:8]
    a, b, c = _people_with_teams(gate, "fbm", uid, "abc")
    gate.delete(SYSTEM, "Patient", c)
    targets = [f"Patient/{p}" for p in (a, b, c)]
    with gate.reads_as_one(SYSTEM, entity=f"batch-{uid}", purpose="who to tell"):
        teams = gate.find_by_references(SYSTEM, "CareTeam", "patient", targets)
        records = gate.find_by_ids(SYSTEM, "Patient", [a, b, c, f"nobody-{uid}"])
    for t in targets:
        assert [s.id for s in teams.get(t, [])] == [s.id for s in gate.find_by_reference(SYSTEM, "CareTeam",
                                                                                          "patient", t)]
    assert [s.id for s in teams[f"Patient/{a}"]] == [f"fbm-ct1-{uid}", f"fbm-ct2-{uid}"]
    assert teams.get(f"Patient/{c}", []) == []
    assert [s.id for s in records] == [a, b]  # a deleted record and one that never was are not returned
    assert records[0].content["name"] == [{"family": a}]
    gate.flush_audit()
    for pid, refs in ((a, {f"Patient/{a}", f"CareTeam/fbm-ct1-{uid}", f"CareTeam/fbm-ct2-{uid}"}),
                      (b, {f"Patient/{b}", f"CareTeam/fbm-ct4-{uid}"})):
        events = [e.content for e in gate.search(SYSTEM, "AuditEvent", [
            ("patient", pid), ("subtype", "search"), ("_count", "100")]).matches if _entity(e.content) ==
            f"batch-{uid}"]
        assert len(events) == 1, events
        named = ", ".join(v for k, v in _detail(events[0]).items() if k.startswith("records")).split(", ")
        assert set(named) == refs
        assert f"CareTeam?patient=Patient/{pid}" in _query(events[0]) or f"CareTeam?patient={pid}" in \
            _query(events[0])
