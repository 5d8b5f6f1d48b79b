"""Platform tables behind the gate: the notification inbox and choices, alert settings and bulk export jobs.

These are not clinical FHIR resources but per-user platform data in their own tables (store/schema.py). The domain
modules (care.notifications.service, conflicts.preferences, interop.bulk_export) keep their own rules (which event
types exist, who may have an inbox, which thresholds are allowed) and call these functions for the rows: each takes
the gate and the principal, touches only that principal's rows (or refuses, audited, when a row is someone else's),
and audits the user's own changes like every other access. Only the notification worker, running as the system,
writes into other people's inboxes (`deliver_inbox_items`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.store import schema


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the notification inbox -----------------------------------------------------------------------------------
def deliver_inbox_items(gate: Gate, who: Principal, *, recipients: Iterable[str], event_type: str, patient_id: str,
                        source_ref: str, title: str, detail: str, occurred: str | None, since: str,
                        stamp: str) -> list[str]:
    """Write one inbox item per recipient who has not turned `event_type` off, collapsing into the recipient's
    item about the same event, person and source last touched at or after `since`; returns the user names served.

    Only the system (the notification worker) delivers; the caller has already kept the recipients who have a
    legitimate relationship with the person."""
    return deliver_inbox_batch(gate, who, [dict(
        recipients=recipients, event_type=event_type, patient_id=patient_id, source_ref=source_ref, title=title,
        detail=detail, occurred=occurred, since=since, stamp=stamp)])[0]


def deliver_inbox_batch(gate: Gate, who: Principal, deliveries: list[dict[str, Any]], *, conn: Any = None
                        ) -> list[list[str]]:
    """`deliver_inbox_items` for several events (each a dict of its keyword arguments), in order, in ONE write
    transaction (the notification worker's batch) - or, given `conn`, in that write transaction (the gate's, which
    a feed's next batch of messages has open: `Gate.apply_messages(also=...)`); returns the user names served for
    each."""
    if who.role != "system":
        raise gate.refuse(who, "Only the notification worker delivers inbox items", action="create",
                          entity="inbox")
    if conn is not None:
        return _deliver_all(gate._store, conn, deliveries)
    # the reads that chose the recipients, held by the worker's deferring scope (Gate.answering), commit with the
    # items (AuditWriter.writing)
    with gate._audit.writing() as conn:
        return _deliver_all(gate._store, conn, deliveries)


# the delivery's statements, built once (the batch's lookups are two statements, its writes two more)
_inbox = schema.inbox_item
_COLLAPSE = sa.update(_inbox).where(_inbox.c.id == sa.bindparam("item")).values(
    hits=_inbox.c.hits + 1, last_at=sa.bindparam("stamp"), read_at=None, title=sa.bindparam("new_title"),
    detail=sa.bindparam("new_detail"))
_NEW_ITEM = sa.insert(_inbox)


def _deliver_all(store, conn, deliveries: list[dict[str, Any]]) -> list[list[str]]:
    """Each delivery's items, in order, as if one after the other: a recipient who turned the event type off is
    skipped; an item about the same event, person and source that the recipient's inbox holds (touched at or after
    the delivery's `since`) or that an earlier delivery of the batch wrote is collapsed into (hits + 1, unread
    again, the new title and detail); otherwise a new item."""
    names = sorted({n for d in deliveries for n in d["recipients"]})
    if not names:
        return [[] for _d in deliveries]
    # the two lookups are plain statements (a compiled IN of a new length each time cost more than the rest)
    off: set[tuple[str, str]] = set()
    for i in range(0, len(names), 500):
        chunk = names[i:i + 500]
        off.update((r[0], r[1]) for r in store.rows(conn, store.sql(
            f"SELECT user_name, event_type FROM notification_preference WHERE user_name IN"
            f" ({', '.join(['?'] * len(chunk))}) AND enabled = ?"), (*chunk, False)))
    wanted = [(d, sorted(n for n in set(d["recipients"]) if (n, d["event_type"]) not in off)) for d in deliveries]
    keys = sorted({(n, d["event_type"], d["patient_id"], d["source_ref"]) for d, ns in wanted for n in ns},
                  key=lambda k: tuple(x or "" for x in k))
    held: dict[tuple, list[tuple[int, str]]] = {}  # key -> the inbox's items (id, last_at) in the oldest window
    since = min((d["since"] for d in deliveries), default="")
    for i in range(0, len(keys), 200):
        chunk = [k for k in keys[i:i + 200] if None not in k]  # an item with no person or source never collapses
        if not chunk:
            continue
        match = " OR ".join(["(user_name = ? AND event_type = ? AND patient_id = ? AND source_ref = ?)"] * len(chunk))
        for row in store.rows(conn, store.sql(
                f"SELECT id, user_name, event_type, patient_id, source_ref, last_at FROM inbox_item"
                f" WHERE ({match}) AND last_at >= ?"), (*(x for k in chunk for x in k), since)):
            held.setdefault(tuple(row[1:5]), []).append((row[0], row[5]))
    new: dict[tuple, dict[str, Any]] = {}  # key -> the row this batch inserts
    collapses: list[dict[str, Any]] = []
    served: list[list[str]] = []
    for d, ns in wanted:
        for n in ns:
            key = (n, d["event_type"], d["patient_id"], d["source_ref"])
            if key in new:
                row = new[key]
                row.update(hits=row["hits"] + 1, last_at=d["stamp"], read_at=None, title=d["title"],
                           detail=d["detail"])
                continue
            ids = [item for item, last in held.get(key, ()) if last >= d["since"]]
            if ids:
                collapses.append({"item": max(ids), "stamp": d["stamp"], "new_title": d["title"],
                                  "new_detail": d["detail"]})
            else:
                new[key] = {"user_name": n, "event_type": d["event_type"], "patient_id": d["patient_id"],
                            "source_ref": d["source_ref"], "title": d["title"], "detail": d["detail"], "hits": 1,
                            "occurred": d["occurred"], "first_at": d["stamp"], "last_at": d["stamp"],
                            "read_at": None}
        served.append(ns)
    if collapses:
        conn.execute(_COLLAPSE, collapses)
    if new:
        conn.execute(_NEW_ITEM, list(new.values()))
    return served


def inbox_items(gate: Gate, who: Principal, *, unread_only: bool = False, limit: int = 100
                ) -> tuple[list[dict[str, Any]], int]:
    """(The principal's own inbox rows, newest first; how many are unread). No patient details: the caller reads
    those through the gate."""
    inbox = schema.inbox_item
    q = sa.select(inbox).where(inbox.c.user_name == who.name)
    if unread_only:
        q = q.where(inbox.c.read_at.is_(None))
    with gate._store.reading() as conn:
        rows = [dict(r) for r in conn.execute(q.order_by(inbox.c.last_at.desc()).limit(limit)).mappings()]
        unread = conn.execute(sa.select(sa.func.count()).select_from(inbox).where(
            inbox.c.user_name == who.name, inbox.c.read_at.is_(None))).scalar_one()
    return rows, unread


def inbox_unread(gate: Gate, who: Principal) -> int:
    """How many unread items the principal has."""
    inbox = schema.inbox_item
    with gate._store.reading() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(inbox).where(
            inbox.c.user_name == who.name, inbox.c.read_at.is_(None))).scalar_one()


def mark_inbox_read(gate: Gate, who: Principal, item_id: int | None = None) -> int:
    """Mark one of the principal's items (or, with no id, all of them) as read; 404 when the item is not theirs."""
    inbox = schema.inbox_item
    cond = [inbox.c.user_name == who.name, inbox.c.read_at.is_(None)]
    with gate._store.writing() as conn:
        if item_id is not None:
            owner = conn.execute(sa.select(inbox.c.user_name).where(inbox.c.id == item_id)).first()
            if owner is None or owner[0] != who.name:
                raise FhirError(404, f"Inbox item {item_id} is not in your inbox", code="not-found")
            cond.append(inbox.c.id == item_id)
        n = conn.execute(sa.update(inbox).where(*cond).values(read_at=_now_iso())).rowcount
    return n or 0


def notification_choices(gate: Gate, who: Principal) -> dict[str, bool]:
    """The event types the principal has turned on or off (a type with no choice is on)."""
    prefs = schema.notification_preference
    with gate._store.reading() as conn:
        return {k: bool(v) for k, v in conn.execute(sa.select(prefs.c.event_type, prefs.c.enabled).where(
            prefs.c.user_name == who.name)).all()}


def set_notification_choices(gate: Gate, who: Principal, choices: dict[str, bool]) -> None:
    """Record the principal's own choices (event type -> on/off; the caller has checked the event types)."""
    prefs = schema.notification_preference
    with gate._audit.writing() as conn:
        for k, v in choices.items():
            conn.execute(sa.delete(prefs).where(prefs.c.user_name == who.name, prefs.c.event_type == k))
            conn.execute(sa.insert(prefs).values(user_name=who.name, event_type=k, enabled=v))
        gate._audit.record(who, "update", allowed=True, reason="own notification choices changed",
                           entity="notification-settings", detail={"choices": dict(choices)}, conn=conn)


# -- decision support alert settings --------------------------------------------------------------------------
def alert_threshold(gate: Gate, who: Principal) -> str | None:
    """The principal's chosen lowest alert severity (None: no choice made)."""
    t = schema.alert_preference
    with gate._store.reading() as conn:
        return conn.execute(sa.select(t.c.min_severity).where(t.c.user_name == who.name)).scalar()


def set_alert_threshold(gate: Gate, who: Principal, min_severity: str | None) -> None:
    """Record the principal's own lowest alert severity (None: back to the default, every alert)."""
    t = schema.alert_preference
    with gate._audit.writing() as conn:
        conn.execute(sa.delete(t).where(t.c.user_name == who.name))
        if min_severity is not None:
            conn.execute(sa.insert(t).values(user_name=who.name, min_severity=min_severity))
        gate._audit.record(who, "update", allowed=True, reason="own alert settings changed",
                           entity="alert-settings", detail={"min_severity": min_severity}, conn=conn)


# -- bulk export jobs -----------------------------------------------------------------------------------------
def create_export_job(gate: Gate, who: Principal, *, job_id: str, request_url: str, now: str) -> None:
    """Record a new in-progress export job owned by the principal (the caller has checked the export itself)."""
    j = schema.export_job
    with gate._store.writing() as conn:
        conn.execute(j.insert().values(id=job_id, user_name=who.name, request=request_url[:2048],
                                       status="in-progress", created=now, transaction_time=now))


def finish_export_job(gate: Gate, who: Principal, job_id: str, *, status: str, output: str | None,
                      error: str | None) -> None:
    """Record how the principal's export job ended."""
    j = schema.export_job
    with gate._store.writing() as conn:
        conn.execute(j.update().where(j.c.id == job_id, j.c.user_name == who.name)
                     .values(status=status, output=output, error=error))


def export_job(gate: Gate, who: Principal, job_id: str) -> dict:
    """The export job; 404 when there is none, 403 (audited) when it is another user's (the system sees all)."""
    j = schema.export_job
    with gate._store.reading() as conn:
        row = conn.execute(sa.select(j).where(j.c.id == job_id)).mappings().first()
    if row is None:
        raise FhirError(404, f"No export job '{job_id}'", code="not-found")
    if row["user_name"] != who.name and who.role != "system":
        raise gate.refuse(who, "This export job belongs to another user", action="export",
                          entity=f"export-job/{job_id}")
    return dict(row)


def delete_export_job(gate: Gate, who: Principal, job_id: str) -> None:
    """Forget the export job (refused as `export_job` when it is not the principal's)."""
    export_job(gate, who, job_id)
    j = schema.export_job
    with gate._store.writing() as conn:
        conn.execute(j.delete().where(j.c.id == job_id))
