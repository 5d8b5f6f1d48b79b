"""Governance services: break-glass grants and their review queue, subject access reports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from joinedup import config
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import NHS_NUMBER_SYSTEM, is_valid
from joinedup.governance.audit import search_events
from joinedup.governance.gate import Gate, access_entry
from joinedup.governance.identity import Principal
from joinedup.store import schema

# Why emergency access was needed (shown to the privacy officer with the free text).
REASON_CATEGORIES = {
    "emergency-treatment": "Emergency treatment: the person needs care now",
    "unable-to-consent": "The person cannot take part in the decision (e.g. unconscious, lacks capacity)",
    "safeguarding": "Safeguarding concern",
    "urgent-clinical-need": "Urgent clinical need before a relationship can be set up",
    "other": "Other (explain in the reason)",
}
REVIEW_OUTCOMES = ("appropriate", "inappropriate")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def break_glass_hours() -> float:
    """How long a grant lasts (JOINEDUP_BREAK_GLASS_HOURS, default 4)."""
    return float(config.value("BREAK_GLASS_HOURS"))


def grant_break_glass(gate: Gate, who: Principal, *, patient_id: Any, reason_category: Any, reason: Any,
                      hours: Any = None) -> dict[str, Any]:
    """Emergency access to one person's record: needs a reason category and text; time-limited; queued for review."""
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise FhirError(400, "break-glass needs 'patient': the id of the person (e.g. \"Patient/123\" or \"123\")",
                        code="required", expression=["patient"])
    patient_id = patient_id.strip().removeprefix("Patient/")
    if reason_category not in REASON_CATEGORIES:
        raise FhirError(400, f"'reason_category' must be one of: {', '.join(REASON_CATEGORIES)}",
                        code="value", expression=["reason_category"])
    if not isinstance(reason, str) or len(reason.strip()) < 10:
        raise FhirError(400, "'reason' must say in words (at least 10 characters) why emergency access is needed",
                        code="required", expression=["reason"])
    if len(reason) > 2000:
        raise FhirError(400, "'reason' is limited to 2000 characters", code="value", expression=["reason"])
    limit = break_glass_hours()
    if hours is None:
        hours = limit
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= limit:
        raise FhirError(400, f"'hours' must be a number above 0 and at most {limit:g}", code="value",
                        expression=["hours"])
    decision = gate.check(who, "break-glass", "Patient", patient_id=None, entity=f"Patient/{patient_id}")
    # no existence check here: a grant for an id nobody holds reads exactly like any other until it is used
    existing = gate._facts.relationship(who, patient_id)
    if existing:
        raise FhirError(409, f"You already have a relationship with this person ({existing}); "
                             "break-glass is not needed", code="business-rule")
    now = _now()
    expires = now + timedelta(hours=float(hours))
    grant_id = uuid.uuid4().hex
    row = {"id": grant_id, "user_name": who.name, "role": who.role, "practitioner_id": who.practitioner_id,
           "organization_id": who.organization_id, "patient_id": patient_id, "reason_category": reason_category,
           "reason": reason.strip(), "granted": _iso(now), "expires": _iso(expires)}
    with gate._store.writing() as conn:
        conn.execute(schema.break_glass.insert().values(**row))
        gate._facts._bump(conn)
    gate._facts.invalidate()
    gate._audit.record(who, "break-glass", allowed=True,
                      reason=f"{decision.reason}; {reason_category}: {reason.strip()}"[:1000],
                      entity=f"Patient/{patient_id}", patient_id=patient_id, detail={"grant": grant_id,
                                                                                     "until": row["expires"]})
    out = _grant_view(row)
    objection = gate._facts.objection(who, patient_id)
    out["notice"] = (f"Emergency access to this person's record until {out['expires']}. It is recorded and will be "
                     "reviewed by the privacy officer. Sealed and private entries stay hidden")
    if objection:
        out["notice"] += ", and so do entries recorded elsewhere: the person has objected to sharing them"
    out["notice"] += "."
    return out


def _grant_view(row: dict) -> dict[str, Any]:
    now = _iso(_now())
    return {"id": row["id"], "user": row["user_name"], "role": row["role"],
            "practitioner": row.get("practitioner_id"), "organisation": row.get("organization_id"),
            "patient": f"Patient/{row['patient_id']}", "reason_category": row["reason_category"],
            "reason": row["reason"], "granted": row["granted"] + "Z", "expires": row["expires"] + "Z",
            "active": row["expires"] > now, "outcome": row.get("review_outcome"), "note": row.get("review_note"),
            "reviewed_by": row.get("reviewed_by"),
            "reviewed_at": row["reviewed_at"] + "Z" if row.get("reviewed_at") else None}


def my_grants(gate: Gate, who: Principal) -> list[dict[str, Any]]:
    """The caller's active break-glass grants."""
    bg = schema.break_glass
    with gate._store.reading() as conn:
        rows = conn.execute(sa.select(bg).where(bg.c.user_name == who.name, bg.c.expires > _iso(_now()))
                            .order_by(bg.c.granted.desc())).mappings().all()
    return [_grant_view(dict(r)) for r in rows]


def review_queue(gate: Gate, who: Principal, *, status: str = "pending", limit: int = 200) -> list[dict[str, Any]]:
    """Break-glass grants for the privacy officer: pending first (or all), with what was accessed under each."""
    if status not in ("pending", "reviewed", "all"):
        raise FhirError(400, "status must be pending, reviewed or all", code="value", expression=["status"])
    decision = gate.check(who, "review", None, entity="privacy-reviews")
    bg = schema.break_glass
    q = sa.select(bg)
    if status == "pending":
        q = q.where(bg.c.review_outcome.is_(None))
    elif status == "reviewed":
        q = q.where(bg.c.review_outcome.is_not(None))
    with gate._store.reading() as conn:
        rows = conn.execute(q.order_by(bg.c.granted).limit(limit)).mappings().all()
    gate._audit.flush()
    out = []
    for r in rows:
        view = _grant_view(dict(r))
        total, _ = search_events(gate._store, patient_id=r["patient_id"], user_name=r["user_name"],
                                 since=r["granted"], until=r["expires"] + "Z", count=0)
        view["accesses_during_grant"] = total
        out.append(view)
    gate._audit.record(who, "review", allowed=True, reason=decision.reason, entity="privacy-reviews",
                      detail={"listed": len(out), "status": status})
    return out


def record_review(gate: Gate, who: Principal, grant_id: str, *, outcome: Any, note: Any = None) -> dict[str, Any]:
    """The privacy officer's outcome for one break-glass grant (appropriate / inappropriate, with a note)."""
    if outcome not in REVIEW_OUTCOMES:
        raise FhirError(400, "'outcome' must be 'appropriate' or 'inappropriate'", code="value",
                        expression=["outcome"])
    if note is not None and (not isinstance(note, str) or len(note) > 2000):
        raise FhirError(400, "'note' must be text of at most 2000 characters", code="value", expression=["note"])
    if outcome == "inappropriate" and not (note or "").strip():
        raise FhirError(400, "say what was inappropriate in 'note' (it goes to the follow-up)", code="required",
                        expression=["note"])
    decision = gate.check(who, "review", None, entity=f"break-glass/{grant_id}")
    bg = schema.break_glass
    with gate._store.writing() as conn:
        row = conn.execute(sa.select(bg).where(bg.c.id == grant_id)).mappings().first()
        if row is None:
            raise FhirError(404, f"No break-glass grant '{grant_id}'", code="not-found")
        if row["user_name"] == who.name:
            raise FhirError(403, "Access refused: nobody reviews their own emergency access.", code="forbidden")
        if row["review_outcome"]:
            raise FhirError(409, f"Grant {grant_id} was already reviewed ({row['review_outcome']} by "
                                 f"{row['reviewed_by']})", code="conflict")
        values = {"review_outcome": outcome, "review_note": (note or "").strip() or None, "reviewed_by": who.name,
                  "reviewed_at": _iso(_now())}
        conn.execute(bg.update().where(bg.c.id == grant_id).values(**values))
    gate._audit.record(who, "review", allowed=True, reason=f"{decision.reason}; break-glass judged {outcome}",
                      entity=f"break-glass/{grant_id}", patient_id=row["patient_id"],
                      detail={"outcome": outcome, "user": row["user_name"]})
    return _grant_view({**dict(row), **values})


def normalise_nhs_number(value: str) -> str:
    """Digits of an NHS number (spaces and dashes allowed), or ValueError with the reason."""
    digits = "".join(ch for ch in value if ch not in " -")
    if not digits.isdigit() or len(digits) != 10:
        raise ValueError(f"'{value}' is not an NHS number (10 digits)")
    if not is_valid(digits):
        raise ValueError(f"'{value}' is not a valid NHS number (the check digit does not match)")
    return digits


def subject_access_report(gate: Gate, who: Principal, nhs_number: str) -> dict[str, Any]:
    """A person's record (every entry) plus the log of who accessed it, for a subject access request."""
    digits = normalise_nhs_number(nhs_number)
    result = gate.search(who, "Patient", [("identifier", f"{NHS_NUMBER_SYSTEM}|{digits}"), ("_count", "100")],
                         query_text=f"subject access request {digits}")
    if not result.matches:
        raise LookupError(f"no person with NHS number {digits}")
    records = []
    for patient in result.matches:
        entries = gate.everything(who, patient.id)
        gate._audit.flush()
        total, log = gate.access_log(who, patient.id, count=100000)
        records.append({"patient": f"Patient/{patient.id}", "entries": [s.content for s in entries],
                        "access_log": log, "access_log_total": total})
    return {"report": "subject access report", "nhs_number": digits,
            "generated": _now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            "generated_by": who.name, "records": records}


__all__ = [
    "REASON_CATEGORIES",
    "access_entry",
    "grant_break_glass",
    "my_grants",
    "normalise_nhs_number",
    "record_review",
    "review_queue",
    "subject_access_report",
]


# -- links between records of the same person, and changes to a person's choices (privacy review queue) -------
LINK_OUTCOMES = ("approved", "rejected")


def _review_view(row: dict) -> dict[str, Any]:
    out = {"id": row["id"], "kind": row["kind"], "patient": f"Patient/{row['patient_id']}",
           "requested_by": row["requested_by"], "requested_role": row.get("requested_role"),
           "requested_organisation": row.get("requested_org"), "requested_at": row["requested_at"],
           "reason": row.get("reason"), "status": row["status"], "decided_by": row.get("decided_by"),
           "decided_at": row.get("decided_at"), "note": row.get("decision_note")}
    if row.get("other_patient_id"):
        out["other_patient"] = f"Patient/{row['other_patient_id']}"
    if row.get("entity"):
        out["entity"] = row["entity"]
    return out


def _ref_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip().removeprefix("Patient/"):
        raise FhirError(400, f"'{field}' must name a person's record (e.g. \"Patient/123\")", code="required",
                        expression=[field])
    return value.strip().removeprefix("Patient/")


def link_requests(gate: Gate, who: Principal, *, status: str = "pending", limit: int = 200,
                  action: str = "review") -> list[dict[str, Any]]:
    """Requests to link two records of one person, for the privacy officer (pending first, or by status); record
    linkage's queue asks with action 'link-review' (the records manager's activity)."""
    if status not in ("pending", "approved", "rejected", "all"):
        raise FhirError(400, "status must be pending, approved, rejected or all", code="value",
                        expression=["status"])
    decision = gate.check(who, action, None, entity="privacy-link-requests")
    pr = schema.privacy_review
    q = sa.select(pr).where(pr.c.kind == "link")
    if status != "all":
        q = q.where(pr.c.status == status)
    with gate._store.reading() as conn:
        rows = conn.execute(q.order_by(pr.c.requested_at).limit(limit)).mappings().all()
    gate._audit.record(who, action, allowed=True, reason=decision.reason, entity="privacy-link-requests",
                      detail={"listed": len(rows), "status": status})
    return [_review_view(dict(r)) for r in rows]


def request_link(gate: Gate, who: Principal, *, patient: Any, other_patient: Any, reason: Any) -> dict[str, Any]:
    """Ask for two records to be linked as one person's: the integration account links at once; anyone else's
    request waits for the privacy officer and grants nothing meanwhile."""
    from joinedup.governance import facts as facts_mod

    a, b = _ref_id(patient, "patient"), _ref_id(other_patient, "other_patient")
    if a == b:
        raise FhirError(400, "'patient' and 'other_patient' name the same record", code="value")
    if not isinstance(reason, str) or len(reason.strip()) < 10:
        raise FhirError(400, "'reason' must say in words (at least 10 characters) why these are one person",
                        code="required", expression=["reason"])
    if who.role == "system":
        decision = gate.check(who, "update", "Patient", entity=f"Patient/{a}")
        with gate._store.writing() as conn:
            facts_mod._confirm_link(conn, a, b, basis="integration", by=who.name)
            gate._facts._bump(conn)
        gate._facts.invalidate()
        for x, y in ((a, b), (b, a)):
            gate._audit.record(who, "link", allowed=True, reason=f"{decision.reason}; {reason.strip()}"[:1000],
                              entity=f"Patient/{y}", patient_id=x)
        return {"status": "approved", "patient": f"Patient/{a}", "other_patient": f"Patient/{b}"}
    # anyone else must at least be able to act in one of the two records (else they learn nothing either way)
    gate.check(who, "update", "Patient", patient_id=a, entity=f"Patient/{a}")
    with gate._store.writing() as conn:
        row = facts_mod.request_link(conn, who, a, b, reason=reason.strip())
    if row is None:
        return {"status": "unchanged", "patient": f"Patient/{a}", "other_patient": f"Patient/{b}",
                "detail": "already linked, already waiting for review, or refused before"}
    gate._audit_link_requests(who, [row])
    return _review_view(row)


def decide_link(gate: Gate, who: Principal, request_id: str, *, outcome: Any, note: Any = None,
                action: str = "review") -> dict[str, Any]:
    """The privacy officer approves (the two records become one person's) or rejects (remembered) a link request."""
    from joinedup.governance import facts as facts_mod

    if outcome not in LINK_OUTCOMES:
        raise FhirError(400, "'outcome' must be 'approved' or 'rejected'", code="value", expression=["outcome"])
    if note is not None and (not isinstance(note, str) or len(note) > 2000):
        raise FhirError(400, "'note' must be text of at most 2000 characters", code="value", expression=["note"])
    decision = gate.check(who, action, None, entity=f"link-request/{request_id}")
    pr = schema.privacy_review
    with gate._store.writing() as conn:
        row = conn.execute(sa.select(pr).where(pr.c.id == request_id, pr.c.kind == "link")).mappings().first()
        if row is None:
            raise FhirError(404, f"No link request '{request_id}'", code="not-found")
        if row["requested_by"] == who.name:
            raise FhirError(403, "Access refused: nobody reviews their own link request.", code="forbidden")
        if row["status"] != "pending":
            raise FhirError(409, f"Link request {request_id} was already decided ({row['status']} by "
                                 f"{row['decided_by']})", code="conflict")
        values = {"status": outcome, "decided_by": who.name, "decided_at": _iso(_now()),
                  "decision_note": (note or "").strip() or None}
        conn.execute(pr.update().where(pr.c.id == request_id).values(**values))
        if outcome == "approved":
            facts_mod._confirm_link(conn, row["patient_id"], row["other_patient_id"], basis="review", by=who.name,
                                    review_id=request_id)
            gate._facts._bump(conn)
    if outcome == "approved":
        gate._facts.invalidate()
    for x, y in ((row["patient_id"], row["other_patient_id"]), (row["other_patient_id"], row["patient_id"])):
        gate._audit.record(who, "link-review", allowed=True, reason=f"{decision.reason}; link {outcome}",
                          entity=f"Patient/{y}", patient_id=x, detail={"request": request_id, "outcome": outcome})
    return _review_view({**dict(row), **values})


def choice_changes(gate: Gate, who: Principal, *, limit: int = 200) -> list[dict[str, Any]]:
    """Changes privacy officers made to people's choices on their behalf, newest first, with their reasons."""
    decision = gate.check(who, "review", None, entity="privacy-choice-changes")
    pr = schema.privacy_review
    with gate._store.reading() as conn:
        rows = conn.execute(sa.select(pr).where(pr.c.kind == "choice-change")
                            .order_by(pr.c.requested_at.desc()).limit(limit)).mappings().all()
    gate._audit.record(who, "review", allowed=True, reason=decision.reason, entity="privacy-choice-changes",
                      detail={"listed": len(rows)})
    return [_review_view(dict(r)) for r in rows]


# -- record linkage: confirmed links, unlinking and linking again ------------------------------------------------
LINKAGE_BASES = ("linkage", "review")  # links record linkage made, or a reviewer accepted from its queue


def record_links(gate: Gate, who: Principal, *, action: str = "link-review", limit: int = 500
                 ) -> dict[str, list[dict[str, Any]]]:
    """Links between records that record linkage confirmed or a reviewer accepted (one row per pair), and pairs
    unlinked since (with who unlinked them, when and why), newest first."""
    import json

    decision = gate.check(who, action, None, entity="record-links")
    pl, pr = schema.patient_link, schema.privacy_review
    with gate._store.reading() as conn:
        links = conn.execute(sa.select(pl).where(pl.c.basis.in_(LINKAGE_BASES), pl.c.patient_id < pl.c.other_id)
                             .order_by(pl.c.confirmed_at.desc()).limit(limit)).mappings().all()
        unlinked = conn.execute(sa.select(pr).where(pr.c.kind == "unlink").order_by(pr.c.requested_at.desc())
                                .limit(limit)).mappings().all()
    gate._audit.record(who, action, allowed=True, reason=decision.reason, entity="record-links",
                      detail={"links": len(links), "unlinked": len(unlinked)})
    out_links = [{"patient": f"Patient/{r['patient_id']}", "other_patient": f"Patient/{r['other_id']}",
                  "basis": r["basis"], "confirmed_by": r["confirmed_by"], "confirmed_at": r["confirmed_at"],
                  "review": r["review_id"]} for r in links]
    out_unlinked = []
    for r in unlinked:
        view = _review_view(dict(r))
        try:
            view["note"] = json.loads(r["decision_note"] or "{}").get("relinked_reason")
        except ValueError:
            view["note"] = None
        out_unlinked.append(view)
    return {"links": out_links, "unlinked": out_unlinked}


def unlink_records(gate: Gate, who: Principal, *, patient: Any, other_patient: Any, reason: Any,
                   action: str = "link-review") -> dict[str, Any]:
    """Remove a link that record linkage confirmed (or a reviewer accepted): the two records are no longer one
    person's - reach through either stops reaching the other at once. Reversible (`relink_records`, which puts the
    same link back); kept as an 'unlink' row with the reason, audited on both records; while unlinked the pair is
    never proposed again. A link made by an HL7 merge is undone with `joinedup hl7 unmerge` instead."""
    import json

    a, b = _ref_id(patient, "patient"), _ref_id(other_patient, "other_patient")
    if not isinstance(reason, str) or len(reason.strip()) < 10:
        raise FhirError(400, "'reason' must say in words (at least 10 characters) why these are not one person",
                        code="required", expression=["reason"])
    decision = gate.check(who, action, None, entity=f"Patient/{a}")
    pl, pr = schema.patient_link, schema.privacy_review
    pair = sa.or_(sa.and_(pl.c.patient_id == a, pl.c.other_id == b), sa.and_(pl.c.patient_id == b, pl.c.other_id == a))
    now = _iso(_now())
    with gate._store.writing() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(pl).where(pair)).mappings()]
        if not rows:
            raise FhirError(404, f"Patient/{a} and Patient/{b} are not linked", code="not-found")
        other = sorted({r["basis"] for r in rows} - set(LINKAGE_BASES))
        if other:
            raise FhirError(409, f"Patient/{a} and Patient/{b} were linked by {', '.join(other)}, not by record "
                                 "linkage (an HL7 merge is undone with `joinedup hl7 unmerge`)", code="conflict")
        conn.execute(pl.delete().where(pair))
        row = {"id": uuid.uuid4().hex, "kind": "unlink", "patient_id": a, "other_patient_id": b,
               "requested_by": who.name, "requested_role": who.role, "requested_org": who.organization_id,
               "requested_at": now, "reason": reason.strip()[:2000], "status": "unlinked", "decided_by": who.name,
               "decided_at": now, "decision_note": json.dumps({"removed": rows})}
        conn.execute(pr.insert().values(**row))
        gate._facts._bump(conn)
    gate._facts.invalidate()
    for x, y in ((a, b), (b, a)):
        gate._audit.record(who, "unlink", allowed=True, reason=f"{decision.reason}; {reason.strip()}"[:1000],
                          entity=f"Patient/{y}", patient_id=x, detail={"unlink": row["id"]})
    return _review_view(row)


def relink_records(gate: Gate, who: Principal, unlink_id: str, *, reason: Any,
                   action: str = "link-review") -> dict[str, Any]:
    """Undo an unlink: the link it removed is put back as it was (same basis, who confirmed it and when)."""
    import json

    if not isinstance(reason, str) or len(reason.strip()) < 10:
        raise FhirError(400, "'reason' must say in words (at least 10 characters) why the records are linked again",
                        code="required", expression=["reason"])
    decision = gate.check(who, action, None, entity=f"unlink/{unlink_id}")
    pl, pr = schema.patient_link, schema.privacy_review
    with gate._store.writing() as conn:
        row = conn.execute(sa.select(pr).where(pr.c.id == unlink_id, pr.c.kind == "unlink")).mappings().first()
        if row is None:
            raise FhirError(404, f"No unlink '{unlink_id}'", code="not-found")
        if row["status"] != "unlinked":
            raise FhirError(409, f"Unlink {unlink_id} was already undone ({row['decided_by']}, {row['decided_at']})",
                            code="conflict")
        doc = json.loads(row["decision_note"] or "{}")
        a, b = row["patient_id"], row["other_patient_id"]
        have = {(r[0], r[1]) for r in conn.execute(sa.select(pl.c.patient_id, pl.c.other_id).where(
            sa.tuple_(pl.c.patient_id, pl.c.other_id).in_([(a, b), (b, a)])))}
        back = [r for r in doc.get("removed") or [] if (r["patient_id"], r["other_id"]) not in have]
        if back:
            conn.execute(pl.insert(), back)
        doc.update(relinked_by=who.name, relinked_at=_iso(_now()), relinked_reason=reason.strip()[:2000])
        values = {"status": "relinked", "decided_by": who.name, "decided_at": doc["relinked_at"],
                  "decision_note": json.dumps(doc)}
        conn.execute(pr.update().where(pr.c.id == unlink_id).values(**values))
        gate._facts._bump(conn)
    gate._facts.invalidate()
    for x, y in ((a, b), (b, a)):
        gate._audit.record(who, "relink", allowed=True, reason=f"{decision.reason}; {reason.strip()}"[:1000],
                          entity=f"Patient/{y}", patient_id=x, detail={"unlink": unlink_id})
    return _review_view({**dict(row), **values})
