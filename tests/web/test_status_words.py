"""One status vocabulary (fhir/words.py): every code of the FHIR R4 required status value sets has plain words,
a referral's conversation state wins over its ServiceRequest status, a person's correction request is not an
advice request, and a meeting's state follows its date."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import pytest

from joinedup.fhir import codes, words
from joinedup.fhir.fastvalid import COMPLETED_VALUE_SETS

# (vocabulary key, fhir.resources R4B module, class, element) - the value sets the models carry from the R4 spec
VALUE_SETS = [
    ("ServiceRequest", "servicerequest", "ServiceRequest", "status"),
    ("CarePlan", "careplan", "CarePlan", "status"),
    ("CarePlanActivity", "careplan", "CarePlanActivityDetail", "status"),
    ("Appointment", "appointment", "Appointment", "status"),
    ("MedicationRequest", "medicationrequest", "MedicationRequest", "status"),
    ("MedicationStatement", "medicationstatement", "MedicationStatement", "status"),
    ("Communication", "communication", "Communication", "status"),
    ("EpisodeOfCare", "episodeofcare", "EpisodeOfCare", "status"),
    ("Goal", "goal", "Goal", "lifecycleStatus"),
]


def _codes(module: str, cls: str, element: str) -> list[str]:
    model = getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), cls)
    return [c for c in model.model_fields[element].json_schema_extra["enum_values"] if c != "+"]


@pytest.mark.parametrize(("key", "module", "cls", "element"), VALUE_SETS)
def test_every_status_code_of_the_value_set_has_words(key, module, cls, element):
    table = words.vocabulary()["statuses"][key]
    for code in _codes(module, cls, element):
        assert code in table, f"{key}.{element} code '{code}' (FHIR R4) has no plain words"
        assert table[code] and table[code] != code


@pytest.mark.parametrize("key", ["Task", "Encounter"])
def test_task_and_encounter_statuses_have_words(key):
    # the R4B models truncate these enumerations; the validator's lists hold the whole value sets
    for code in COMPLETED_VALUE_SETS[f"{key}.status"]:
        assert code in words.vocabulary()["statuses"][key], code


def test_plain_words_not_codes():
    assert words.status_words("Task", "requested") == "To do"
    assert words.status_words("Appointment", "noshow") == "Did not attend"
    assert words.status_words("Task", None) == ""
    assert words.status_words("Unknown", "in-progress") == "In progress"  # never the raw code


def _advice(state: str | None, status: str = "active", outcome: str | None = None) -> dict:
    ext = []
    if state:
        ext.append({"url": words.CONVERSATION_STATE, "valueCode": state})
    if outcome:
        ext.append({"url": words.REQUEST_OUTCOME, "valueCode": outcome})
    return {"resourceType": "ServiceRequest", "status": status, "extension": ext,
            "category": [{"coding": [{"system": codes.REQUEST_CATEGORY, "code": "advice"}]}]}


def test_an_answered_advice_request_reads_replied_everywhere():
    sr = _advice("replied")
    assert words.request_words(sr) == "Replied"  # not "waiting (active)"
    assert words.request_words(_advice(None)) == "Awaiting reply"
    assert words.request_words(_advice("replied", status="completed")) == "Closed"
    assert words.request_words(_advice("replied", "completed", "converted-to-referral")) == "Converted to referral"
    assert words.request_words(_advice("replied", status="revoked")) == "Withdrawn"
    assert words.request_words({"resourceType": "ServiceRequest", "status": "active"}) == "Open"


def test_the_referral_pages_and_the_journey_share_the_words():
    from joinedup.care.referrals import service as referrals

    assert referrals.STATE_TEXT == words.vocabulary()["conversation"]
    for state in referrals.STATE_TEXT:
        assert referrals.state_of(_advice(state)) in referrals.STATE_TEXT


def test_a_correction_request_is_not_an_advice_request():
    correction = {"resourceType": "Communication", "status": "completed",
                  "category": [{"coding": [codes.CORRECTION_REQUEST], "text": codes.CORRECTION_REQUEST["display"]}],
                  "sender": {"reference": "Patient/p-1"}}
    assert words.message_kind(correction) == "correction"
    assert words.message_words(correction) == "Correction request"
    advice = {"resourceType": "Communication", "category": [{"text": "Advice and guidance request"}]}
    assert words.message_kind(advice) == "advice-request"
    reply = {"resourceType": "Communication", "inResponseTo": [{"reference": "Communication/1"}]}
    assert words.message_kind(reply) == "reply"


def test_a_meeting_is_not_in_progress_the_day_before_it_starts():
    start, end = "2026-06-10T09:00:00Z", "2026-06-10T10:00:00Z"
    day_before = datetime(2026, 6, 9, 15, 0, tzinfo=UTC)
    # attendance recorded early turns the Appointment 'arrived'; the meeting has still not started
    assert words.meeting_words("arrived", start, end, now=day_before) == "Booked"
    assert words.meeting_words("booked", start, end, now=datetime(2026, 6, 10, 9, 30, tzinfo=UTC)) == "In progress"
    assert words.meeting_words("arrived", start, end, now=datetime(2026, 6, 11, tzinfo=UTC)) == "Awaiting outcome"
    assert words.meeting_words("fulfilled", start, end, now=day_before) == "Completed"
    # no end: the meeting lasts until the end of its day
    assert words.meeting_words("booked", start, None, now=datetime(2026, 6, 10, 20, tzinfo=UTC)) == "In progress"
