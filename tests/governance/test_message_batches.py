"""Feed messages applied together (Gate.apply_messages): each message is planned - validated, checked by the policy,
prepared - before the database's write lock is taken, and written inside it in its own savepoint. A plan made from
an entry that another writer changed in between is never written over that change: the write sees the version it
was planned from is gone (StaleWrite, nothing written) and the message is planned again inside the transaction.

The audit events behind the batch commit with its writes: the reads that planned the messages (held by the
deferring `answering` scope), and each message's own event (kept only if the message is).
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from joinedup.governance.audit import AuditWriter
from joinedup.governance.gate import Gate, _MessageBatch, get_gate
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.store import schema
from joinedup.store.repository import StaleWrite, Store


@pytest.fixture
def two(db_url):
    """Two gates on one database, sharing nothing else: two listener processes."""
    first = get_gate(db_url)
    store = Store(db_url)
    audit = AuditWriter(store, 200)
    yield first, Gate(store, audit)
    audit.close()


def _put(resource: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": resource, "request": {"method": "PUT",
                                                         "url": f"{resource['resourceType']}/{resource['id']}"}}]}


def _patient(pid: str, family: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def _receipt(uid: str, n: int) -> dict:
    return {"facility": f"T{uid}", "control_id": f"C{n}", "trigger": "A08", "received": "2026-12-07T00:00:00Z",
            "applied": "2026-12-07T00:00:00Z", "patient_id": None, "note": None}


def _person(gate: Gate, family: str) -> tuple[str, str, Principal]:
    """A new record (version 1) and a feed's integration account to write to it: (uid, patient id, account)."""
    uid = uuid.uuid4().hex[:8]
    pid = f"p-{uid}"
    gate.update(SYSTEM, "Patient", pid, _patient(pid, family))
    return uid, pid, Principal(name=f"hl7:T{uid}", role="system", display="test feed",
                               organization_id=f"org-{uid}")


def test_two_messages_of_one_batch_updating_one_record_apply_one_after_the_other(two):
    gate, _ = two
    uid, pid, who = _person(gate, "First")
    # both planned from version 1 before the lock; the second finds version 2 written by the first
    errors = gate.apply_messages([(who, _put(_patient(pid, "Second")), _receipt(uid, 1)),
                                  (who, _put(_patient(pid, "Third")), _receipt(uid, 2))])
    assert errors == [None, None]
    now = gate.read(SYSTEM, "Patient", pid)
    assert now.version == 3 and now.content["name"] == [{"family": "Third"}]
    history = [h["content"]["name"][0]["family"] for h in gate.history(SYSTEM, rtype="Patient", rid=pid)[1]]
    assert sorted(history) == ["First", "Second", "Third"]


def test_a_plan_overtaken_by_another_process_writes_nothing(two, db_url):
    gate, other = two
    uid, pid, who = _person(gate, "Before")
    planned = gate._plan(who, _put(_patient(pid, "Planned")))  # outside any transaction, from version 1
    other.update(SYSTEM, "Patient", pid, _patient(pid, "Meanwhile"))  # the other process: version 2
    store = Store(db_url)
    with pytest.raises(StaleWrite), store.writing() as conn:
        batch = _MessageBatch(conn, gate._audit, store)
        gate._transaction(who, _put(_patient(pid, "Planned")), "", batch=batch, planned=planned)
    assert batch.rolled_back
    now = gate.read(SYSTEM, "Patient", pid)
    assert now.version == 2 and now.content["name"] == [{"family": "Meanwhile"}]
    # planned again (as apply_messages does), it is written over version 2, not over what it first read
    assert gate.apply_messages([(who, _put(_patient(pid, "Planned")), _receipt(uid, 1))]) == [None]
    now = gate.read(SYSTEM, "Patient", pid)
    assert now.version == 3 and now.content["name"] == [{"family": "Planned"}]


def test_the_batchs_reads_and_each_kept_messages_own_event_commit_with_its_writes(two, db_url):
    gate, _ = two
    uid, pid, who = _person(gate, "Audit")

    def own_event(n: int):
        return lambda conn: gate.record(who, "hl7-a08", allowed=True, reason=f"message {n}",
                                        entity=f"Patient/{pid}", patient_id=pid, conn=conn)

    with gate.answering(defer=True):
        found = gate.find_by_identifier(who, "Patient", [("urn:test", uid)], count=5,
                                        query_text=f"Patient?identifier=urn:test|{uid}")
        assert found == []
        errors = gate.apply_messages([
            (who, _put(_patient(pid, "Kept")), _receipt(uid, 1), own_event(1)),
            (who, _put({"resourceType": "Patient", "id": pid, "gender": "not-a-gender"}), _receipt(uid, 2),
             own_event(2)),  # refused by validation: nothing of it kept, its own event included
            (who, _put(_patient(pid, "Again")), _receipt(uid, 1), own_event(3)),  # the same receipt: rolled back
        ])
        assert errors[0] is None and errors[1] is not None and isinstance(errors[2], sa.exc.IntegrityError)
    a = schema.audit_event
    with Store(db_url).reading() as conn:
        rows = conn.execute(sa.select(a.c.action, a.c.entity, a.c.content).where(a.c.user_name == who.name)
                            .order_by(a.c.seq)).all()
    actions = [r[0] for r in rows]
    assert actions == ["search", "update", "hl7-a08"], actions  # the read first, then what message 1 did
    assert "message 1" in rows[2][2] and not any("message 3" in r[2] or "message 2" in r[2] for r in rows)
    gate.flush_audit()
    report = gate.verify_audit()
    assert report.ok, report.summary


def _inbox_rows(gate: Gate, source: str) -> list:
    i = schema.inbox_item
    with gate.store_for_tests.reading() as conn:
        return conn.execute(sa.select(i.c.user_name, i.c.event_type).where(i.c.source_ref == source)).all()


def _delivery(uid: str, n: int) -> dict:
    return dict(recipients=[f"gp-{uid}"], event_type="admission", patient_id=f"p-{uid}",
                source_ref=f"Encounter/also-{uid}-{n}", title="Admitted", detail="", occurred=None,
                since="2000-01-01T00:00:00Z", stamp="2026-12-07T00:00:00.000000Z")


def test_writes_made_with_a_batch_commit_with_it_and_fail_alone(db_url):
    """`apply_messages(also=...)`: the inbox items of the batch before are written in this batch's transaction, after
    its messages, in a savepoint of their own. They commit with the messages; when they fail they are rolled back
    alone - the messages are kept - and their owner finds them not done (and delivers them on its own)."""
    from joinedup.governance import platform

    gate = get_gate(db_url)
    uid, pid, who = _person(gate, "Also")
    done: list[str] = []

    def write(conn) -> None:
        platform.deliver_inbox_batch(gate, SYSTEM, [_delivery(uid, 1)], conn=conn)
        done.append("written")

    assert gate.apply_messages([(who, _put(_patient(pid, "Kept")), _receipt(uid, 1))], also=write) == [None]
    assert done == ["written"]
    assert _inbox_rows(gate, f"Encounter/also-{uid}-1") == [(f"gp-{uid}", "admission")]

    def fail(conn) -> None:
        platform.deliver_inbox_batch(gate, SYSTEM, [_delivery(uid, 2)], conn=conn)
        raise RuntimeError("the inbox write failed")

    assert gate.apply_messages([(who, _put(_patient(pid, "Kept too")), _receipt(uid, 2))], also=fail) == [None]
    assert gate.read(SYSTEM, "Patient", pid).content["name"] == [{"family": "Kept too"}]  # the message is kept
    assert _inbox_rows(gate, f"Encounter/also-{uid}-2") == []  # its companion's item went with its savepoint
    with pytest.raises(Exception):  # noqa: B017 - only the system account delivers, in a transaction or not
        platform.deliver_inbox_batch(gate, who.__class__(name="gp", role="gp"), [_delivery(uid, 3)], conn=object())
    gate.flush_audit()
    report = gate.verify_audit()
    assert report.ok, report.summary
