"""Bad input on every path gets the right acknowledgement code with an ERR naming the segment and field at fault,
is kept whole in the dead-letter store, and writes nothing (never half-applied); a kept message is replayed once
its cause is put right.

Codes from HL7 v2.5.1 chapter 2: MSA-1 AR (application reject: MSH-9/11/12 or the sending facility unacceptable)
and AE (application error: content); ERR-2 segment^sequence^field^repetition^component; ERR-3 from HL7 table 0357
(100 segment sequence error, 101 required field missing, 102 data type error, 200 unsupported message type, 201
unsupported event code, 203 unsupported version id, 204 unknown key identifier)."""

from __future__ import annotations

import socket
import time

import pytest

from joinedup.fhir import codes
from joinedup.governance.identity import SYSTEM
from joinedup.interop.hl7 import mllp
from joinedup.interop.hl7.service import Hl7Service

from .conftest import Ack, read_frame

PV1 = {2: "I", 3: "WARD 1", 19: "V1"}


def held(feed, control_id: str) -> dict:
    rows = [r for r in feed.gate.held_messages(SYSTEM) if r["control_id"] == control_id]
    assert len(rows) == 1, rows
    return rows[0]


def nothing_written(feed) -> None:
    assert not feed.search("Patient", [("identifier", f"{codes.NHS_NUMBER}|{feed.nhs}")])
    assert not feed.search("Encounter", [("service-provider", f"Organization/{feed.org_id}")])


@pytest.mark.parametrize("case", [
    # (what, message transform, ack, ERR-2 location, ERR-3 code)
    ("wrong encoding characters", lambda m: m.replace("MSH|^~\\&|", "MSH|^~#&|", 1), "AR", "MSH^1^2", "102"),
    ("unknown trigger event", lambda m: m.replace("ADT^A01^ADT_A01", "ADT^A99^ADT_A01"), "AR", "MSH^1^9^1^2",
     "201"),
    ("not an ADT message", lambda m: m.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01"), "AR", "MSH^1^9^1^1", "200"),
    ("unsupported version", lambda m: m.replace("|P|2.5.1", "|P|2.9"), "AR", "MSH^1^12", "203"),
    ("no control id", lambda m: m.replace("|CTRL|", "||"), "AR", "MSH^1^10", "101"),
    ("no PID segment", lambda m: "\r".join(s for s in m.split("\r") if not s.startswith("PID")), "AE", "PID^1",
     "100"),
    ("no PV1 on an admission", lambda m: "\r".join(s for s in m.split("\r") if not s.startswith("PV1")), "AE",
     "PV1^1", "100"),
    ("patient class not in table 0004", lambda m: m.replace("PV1|||", "PV1||X|").replace("PV1||I|", "PV1||X|"),
     "AE", "PV1^1^2", "103"),
    ("admission date that is no date", lambda m: m.replace("VISIT19", "VISIT19" + "|" * 25 + "20261399"), "AE",
     "PV1^1^44", "102"),
])
def test_bad_message_gets_its_code_and_err_is_kept_and_writes_nothing(feed, case):
    what, transform, code, location, err = case
    control = f"BAD-{feed.uid}"
    message = transform(feed.msg("A01", "CTRL", pv1={**PV1, 19: "VISIT19"})).replace("CTRL", control)
    ack = feed.send_one(message)
    assert ack.code == code, (what, ack.text)
    assert ack.err()[2] == location, (what, ack.text)
    assert ack.err()[3].split("^")[0] == err, (what, ack.text)
    assert ack.err()[4] == "E"
    nothing_written(feed)
    if control in message.split("\r")[0]:
        row = held(feed, control)
        assert row["raw"].replace("\r\n", "\r") == message and row["ack_code"] == code and row["location"] == location


def test_no_msh_is_refused_and_kept(feed):
    text = f"PID|1||X{feed.uid}^^^{feed.ods}^MR\rPV1|1|I\r"
    ack = feed.send_one(text)
    assert ack.code == "AR" and ack.err()[2] == "MSH^1" and ack.err()[3].startswith("100^")
    assert any(r["raw"] == text for r in feed.gate.held_messages(SYSTEM))


def test_bad_nhs_number_is_an_error_at_pid_3(feed):
    bad = feed.nhs[:9] + str((int(feed.nhs[9]) + 1) % 10)
    ack = feed.send_one(feed.msg("A01", f"NHS-{feed.uid}", pid=feed.pid(nhs=bad), pv1=PV1))
    assert ack.code == "AE"
    assert ack.err()[2] == "PID^1^3^1^1" and ack.err()[3].startswith("102^")
    assert bad in ack.err()[8]
    assert not feed.search("Patient", [("identifier", f"{codes.NHS_NUMBER}|{bad}")])
    assert held(feed, f"NHS-{feed.uid}")["reason"].startswith("PID-3: NHS number")


def test_unknown_facility_gets_ar_and_is_replayed_once_the_organisation_exists(feed):
    control = f"UNK-{feed.uid}"
    stranger = f"Z{feed.uid[:5]}"
    ack = feed.send_one(feed.msg("A01", control, pv1={**PV1, 19: f"V-{feed.uid}"}, facility=stranger))
    assert ack.code == "AR" and ack.err()[2] == "MSH^1^4" and ack.err()[3].startswith("204^")
    row = held(feed, control)
    assert row["facility"] == stranger and row["status"] == "held"
    # the organisation joins: the kept message applies, once
    org = f"org-z{feed.uid.lower()}"
    feed.gate.update(SYSTEM, "Organization", org, {"resourceType": "Organization", "id": org, "name": "Joined later",
                                                   "identifier": [{"system": codes.ODS_ORGANIZATION,
                                                                   "value": stranger}]})
    service = Hl7Service(feed.gate)
    result = service.replay(row["id"])
    assert result.ack_code == "AA"
    assert held_status(feed, row["id"]) == "replayed"
    assert len(feed.search("Encounter", [("service-provider", f"Organization/{org}")])) == 1
    with pytest.raises(ValueError):
        service.replay(row["id"])


def held_status(feed, held_id: str) -> str:
    return feed.gate.held_message(SYSTEM, held_id)["status"]


def test_cancelling_an_unknown_visit_is_kept_until_the_visit_is_known(feed):
    ack = feed.send_one(feed.msg("A11", f"C-{feed.uid}", pv1={**PV1, 19: f"V-{feed.uid}"}))
    assert ack.code == "AE" and ack.err()[2] == "PV1^1^19" and ack.err()[3].startswith("204^")
    held(feed, f"C-{feed.uid}")


def test_a_message_refused_midway_leaves_nothing_behind(feed):
    """The patient part maps, the visit does not (A02 without a location): no Patient is written either."""
    ack = feed.send_one(feed.msg("A02", f"H-{feed.uid}", pv1={2: "I", 19: f"V-{feed.uid}"}))
    assert ack.code == "AE" and ack.err()[2] == "PV1^1^3"
    nothing_written(feed)


def test_truncated_frames_are_answered_and_kept(feed):
    control = f"TR-{feed.uid}"
    message = feed.msg("A01", control, pv1=PV1)
    partial = message[: len(message) // 2].encode()
    with socket.create_connection(("127.0.0.1", feed.port), timeout=30) as s:
        # a new start block before the end of the frame
        s.sendall(b"\x0b" + partial + mllp.frame(feed.msg("A01", control + "-2", pv1={**PV1, 19: "V2"})))
        first, second = Ack(read_frame(s)), Ack(read_frame(s))
    assert first.code == "AR" and first.control_id == control and "truncated" in first.err()[8]
    assert second.code == "AA"
    # the connection closes in the middle of a frame (the sender half-closes and waits for the answer)
    with socket.create_connection(("127.0.0.1", feed.port), timeout=30) as s:
        s.sendall(b"\x0b" + partial.replace(control.encode(), (control + "-3").encode()))
        s.shutdown(socket.SHUT_WR)
        closed = Ack(read_frame(s))
    assert closed.code == "AR" and "closed before the end block" in closed.err()[8]
    # the frame never ends: the listener gives up after JOINEDUP_HL7_FRAME_TIMEOUT (2 s in these tests)
    with socket.create_connection(("127.0.0.1", feed.port), timeout=30) as s:
        start = time.monotonic()
        s.sendall(b"\x0b" + partial.replace(control.encode(), (control + "-4").encode()))
        idle = Ack(read_frame(s))
    assert idle.code == "AR" and "no end block" in idle.err()[8] and time.monotonic() - start >= 1.5
    kept = [r for r in feed.gate.held_messages(SYSTEM) if (r["control_id"] or "").startswith(control)]
    assert sorted(r["control_id"] for r in kept) == [control, control + "-3", control + "-4"]
    assert all(r["raw"] in message.replace(control, r["control_id"]) for r in kept)


def test_bytes_outside_a_frame_are_answered_and_kept(feed):
    with socket.create_connection(("127.0.0.1", feed.port), timeout=30) as s:
        s.sendall(f"hello {feed.uid}\r\n".encode() + mllp.frame(feed.msg("A28", f"OK-{feed.uid}")))
        junk, ok = Ack(read_frame(s)), Ack(read_frame(s))
    assert junk.code == "AR" and "outside an MLLP frame" in junk.err()[8]
    assert ok.code == "AA"
    assert any(feed.uid in r["raw"] and r["raw"].startswith("hello") for r in feed.gate.held_messages(SYSTEM))


def test_an_oversized_frame_is_refused(feed):
    big = feed.msg("A28", f"BIG-{feed.uid}", extra=["NTE|1||" + "x" * 250_000])
    with socket.create_connection(("127.0.0.1", feed.port), timeout=30) as s:
        s.sendall(mllp.frame(big))
        ack = Ack(read_frame(s))
    assert ack.code == "AR" and "larger than" in ack.err()[8]


@pytest.mark.parametrize("role", ["gp", "consultant", "care-coordinator", "privacy-officer", "analyst"])
def test_only_the_integration_account_reads_replays_or_applies_feed_messages(feed, role):
    """Dead letters hold whole messages (identifiable): no professional, privacy officer or analyst reads them, and
    nobody but the integration account applies a message or keeps one; each refusal is audited."""
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.identity import Principal

    who = Principal(name=f"{role}-{feed.uid}", role=role, organization_id=feed.org_id)
    calls = [lambda: feed.gate.held_messages(who), lambda: feed.gate.held_message(who, "x"),
             lambda: feed.gate.release_message(who, "x", applied=True),
             lambda: feed.gate.hold_message(who, raw="MSH|", reason="r", ack_code="AR"),
             lambda: feed.gate.message_receipt(who, feed.ods, "x"),
             lambda: feed.gate.apply_message(who, {"resourceType": "Bundle", "type": "transaction", "entry": []},
                                             receipt={"facility": feed.ods, "control_id": "x", "trigger": "A01",
                                                      "received": "now", "applied": "now"})]
    for call in calls:
        with pytest.raises(FhirError) as refused:
            call()
        assert refused.value.status == 403
