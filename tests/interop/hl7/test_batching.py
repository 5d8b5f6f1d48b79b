"""Messages that arrive together are applied together - one database transaction, a savepoint per message - and
still each get their own acknowledgement with their own outcome: a message that fails is rolled back alone and
never takes the others with it; the same message sent twice at once is applied once.

Expected acknowledgements from HL7 v2.5.1 chapter 2 (original mode: one ACK per message, MSA-2 echoing MSH-10;
AA applied, AE application error, AR rejected) and docs/hl7-v2.md (a duplicate is AA with an ERR of severity I)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from joinedup.governance.identity import SYSTEM
from joinedup.interop.hl7.service import Hl7Service

from .conftest import Ack, new_nhs_number
from .test_adt import encounter, visit


def admit(feed, n: str, *, nhs: str | None = None) -> str:
    return feed.msg("A01", f"B{n}-{feed.uid}", pid=feed.pid(mrn=f"M{n}{feed.uid}", nhs=nhs or new_nhs_number(feed.gate)),
                    pv1=visit(feed, n))


def test_a_batch_answers_each_message_and_a_failing_one_is_rolled_back_alone(feed):
    first = admit(feed, "1")
    assert feed.send_one(first).code == "AA"
    before = encounter(feed, f"V1-{feed.uid}")
    bad_nhs = feed.msg("A01", f"B3-{feed.uid}", pid=feed.pid(mrn=f"M3{feed.uid}", nhs="9990000001"),
                       pv1=visit(feed, "3"))
    unknown = feed.msg("A01", f"B4-{feed.uid}", facility="ZZ999", pv1=visit(feed, "4"))
    batch = [admit(feed, "2"), first, bad_nhs, unknown, admit(feed, "5")]
    outs = Hl7Service(feed.gate).handle_many([(m, "test") for m in batch])
    acks = [Ack(o.ack) for o in outs]
    assert [a.control_id for a in acks] == [f"B{n}-{feed.uid}" for n in "21345"]
    assert [a.code for a in acks] == ["AA", "AA", "AE", "AR", "AA"]
    # the message sent again: rolled back in its savepoint (its receipt's key was taken), answered as a duplicate
    assert outs[1].duplicate and acks[1].seg("ERR")[4] == "I" and "duplicate" in acks[1].seg("MSA")[3]
    assert encounter(feed, f"V1-{feed.uid}")["meta"]["versionId"] == before["meta"]["versionId"]
    # the others in the same batch are kept
    assert encounter(feed, f"V2-{feed.uid}")["status"] == "in-progress"
    assert encounter(feed, f"V5-{feed.uid}")["status"] == "in-progress"
    system = f"https://joinedup.example/fhir/Id/ods/{feed.ods}/visit-number"
    assert feed.search("Encounter", [("identifier", f"{system}|V3-{feed.uid}")]) == []
    # refused messages are kept as dead letters, with where the fault is
    assert acks[2].err()[2] == "PID^1^3^1^1" and outs[2].held
    assert acks[3].err()[2] == "MSH^1^4" and outs[3].held


def test_connections_sending_at_once_each_get_their_acks_in_order(feed):
    """Six senders at once, each an admission then its discharge; and one message sent on two connections at the
    same moment: every ACK is AA and names its own message, each visit ends finished, the twice-sent message is
    applied once."""
    go = threading.Barrier(8)
    acks: dict[str, list[Ack]] = {}
    twice = admit(feed, "T")

    def sender(n: str) -> None:
        nhs = new_nhs_number(feed.gate)
        a01 = admit(feed, n, nhs=nhs)
        a03 = feed.msg("A03", f"D{n}-{feed.uid}", pid=feed.pid(mrn=f"M{n}{feed.uid}", nhs=nhs),
                       pv1=visit(feed, n, f45="20261204160000"))
        go.wait()
        acks[n] = feed.send(a01, a03)

    def resender(k: str) -> None:
        go.wait()
        acks[k] = feed.send(twice)

    threads = [threading.Thread(target=sender, args=(str(n),)) for n in range(6)]
    threads += [threading.Thread(target=resender, args=(k,)) for k in ("again-1", "again-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for n in map(str, range(6)):
        assert [(a.code, a.control_id) for a in acks[n]] == [("AA", f"B{n}-{feed.uid}"), ("AA", f"D{n}-{feed.uid}")]
        enc = encounter(feed, f"V{n}-{feed.uid}")
        assert enc["status"] == "finished" and enc["period"]["end"] == "2026-12-04T16:00:00Z"
    both = acks["again-1"] + acks["again-2"]
    assert [a.code for a in both] == ["AA", "AA"]
    assert sum("duplicate" in a.seg("MSA")[3] for a in both) == 1
    enc = encounter(feed, f"VT-{feed.uid}")
    assert enc["meta"]["versionId"] == "1"


def test_the_audit_chain_holds_after_savepoint_rollbacks(feed, db_url, tmp_path):
    """The audit events of a message rolled back in its savepoint go with it; the keyed chain still verifies."""
    msg = admit(feed, "R")
    Hl7Service(feed.gate).handle_many([(msg, "test"), (admit(feed, "S"), "test")])
    outs = Hl7Service(feed.gate).handle_many([(msg, "test"), (admit(feed, "U"), "test")])
    assert [o.ack_code for o in outs] == ["AA", "AA"] and outs[0].duplicate
    feed.gate.flush_audit()
    report = feed.gate.verify_audit()
    assert report.ok, report.summary
    read = feed.gate.read(SYSTEM, "Patient", encounter(feed, f"VU-{feed.uid}")["subject"]["reference"].split("/")[1])
    assert read.content["resourceType"] == "Patient"
    done = subprocess.run([sys.executable, "-m", "joinedup.cli", "audit", "verify"], capture_output=True, text=True,
                          env={**os.environ, "JOINEDUP_DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
