"""One status vocabulary: FHIR status codes (and JoinedUp's conversation and meeting states) in plain words.

Every page and API that shows a status takes its words from here, so one state reads the same everywhere. The
words are data (`status_words.yaml`, codes from the FHIR R4 required value sets):

* `status_words("Task", "requested")` → "To do"; an unknown type or code reads as the code in words;
* `request_words(service_request)` → the conversation state of a referral or advice request when it has one
  ("Replied"), else its status ("Open");
* `message_kind(communication)` → "correction" (a person asking for their record to be corrected), "reply",
  "advice-request" or "message", and `message_words` its name;
* `meeting_state(status, start, end)` → a meeting's state by its date ("upcoming" the day before it starts, even
  when attendance was recorded early), and `meeting_words` its words.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from joinedup.fhir import codes

CONVERSATION_STATE = codes.EXTENSION + "conversation-state"
REQUEST_OUTCOME = codes.EXTENSION + "request-outcome"


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, Any]:
    """The words, from status_words.yaml."""
    return yaml.safe_load(resources.files("joinedup.fhir").joinpath("status_words.yaml").read_text())


def _fallback(code: str) -> str:
    text = code.replace("-", " ").strip()
    return text[:1].upper() + text[1:]


def status_words(rtype: str, code: str | None) -> str:
    """A FHIR status of a resource type in plain words ("" when there is none)."""
    if not code:
        return ""
    return (vocabulary()["statuses"].get(rtype) or {}).get(code) or _fallback(code)


def conversation_words(state: str | None) -> str:
    """A referral's or advice request's conversation state in words."""
    if not state:
        return ""
    return vocabulary()["conversation"].get(state) or _fallback(state)


def _extension(resource: dict, url: str) -> Any:
    for e in resource.get("extension") or ():
        if isinstance(e, dict) and e.get("url") == url:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def request_state(sr: dict) -> str | None:
    """The conversation state of a JoinedUp referral or advice request (None for other ServiceRequests): withdrawn
    when revoked, closed or converted once completed, else the state its conversation-state extension records."""
    joinedup = _extension(sr, CONVERSATION_STATE) is not None or any(
        c.get("system") == codes.REQUEST_CATEGORY and c.get("code") in ("advice", "referral") for c in _codings(sr))
    if not joinedup:
        return None
    status = sr.get("status")
    if status == "revoked":
        return "withdrawn"
    if status in ("completed", "entered-in-error"):
        return "converted" if _extension(sr, REQUEST_OUTCOME) == "converted-to-referral" else "closed"
    state = _extension(sr, CONVERSATION_STATE)
    return state if isinstance(state, str) else "awaiting-reply"


def request_words(sr: dict) -> str:
    """A ServiceRequest's state in words: its conversation state when it has one, else its status."""
    state = request_state(sr)
    return conversation_words(state) if state else status_words("ServiceRequest", sr.get("status"))


def _codings(resource: dict) -> list[dict]:
    return [c for cat in resource.get("category") or () if isinstance(cat, dict)
            for c in cat.get("coding") or () if isinstance(c, dict)]


def _category_text(resource: dict) -> str:
    parts = []
    for cat in resource.get("category") or ():
        if isinstance(cat, dict):
            parts.append(cat.get("text") or "")
            parts += [c.get("display") or "" for c in cat.get("coding") or () if isinstance(c, dict)]
    return " ".join(parts).lower()


def message_kind(comm: dict) -> str:
    """What a Communication is: 'correction', 'reply', 'advice-request' or 'message'."""
    codings = _codings(comm)
    if any(c.get("system") == codes.PERSON_REQUEST and c.get("code") == "correction" for c in codings):
        return "correction"
    if comm.get("inResponseTo") or any(c.get("system") == codes.CONVERSATION_MESSAGE
                                       and c.get("code") in ("reply", "ask-more") for c in codings):
        return "reply"
    text = _category_text(comm)
    if "response" in text or "reply" in text:
        return "reply"
    if "advice" in text or any(c.get("system") == codes.CONVERSATION_MESSAGE and c.get("code") == "question"
                               for c in codings):
        return "advice-request"
    return "message"


def message_words(comm: dict) -> str:
    return vocabulary()["messages"][message_kind(comm)]


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00")) if len(value) > 10 else \
            datetime.fromisoformat(value + "T00:00:00+00:00")
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def meeting_state(status: str | None, start: str | None, end: str | None = None, *,
                  now: datetime | None = None) -> str:
    """A meeting's state by its date: 'upcoming', 'under-way', 'awaiting-outcome', or its closing status.

    A booked or arrived meeting is 'upcoming' until it starts (recording attendance early does not start it),
    'under-way' from its start to its end (its start's day when no end is given), then 'awaiting-outcome' until
    an outcome makes it fulfilled."""
    if status in ("fulfilled", "cancelled", "noshow", "entered-in-error"):
        return status
    now = now or datetime.now(UTC)
    begins, ends = _when(start), _when(end)
    if begins is None:
        return "upcoming"
    if ends is None or ends < begins:
        ends = begins.replace(hour=23, minute=59, second=59)
    if now < begins:
        return "upcoming"
    if now <= ends:
        return "under-way"
    return "awaiting-outcome"


def meeting_words(status: str | None, start: str | None, end: str | None = None, *,
                  now: datetime | None = None) -> str:
    return vocabulary()["meeting"][meeting_state(status, start, end, now=now)]
