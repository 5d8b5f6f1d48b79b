"""The one audit writer: every access, allowed or refused, becomes an AuditEvent in a hash chain."""

from __future__ import annotations

import atexit
import hashlib
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

import orjson
import sqlalchemy as sa

from joinedup.store import schema

if TYPE_CHECKING:
    from joinedup.governance.identity import Principal

GENESIS = "0" * 64
REST_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACTION_CODE = {"create": "C", "import": "C", "read": "R", "vread": "R", "search": "E", "history": "R",
               "everything": "E", "export": "E", "update": "U", "delete": "D", "transaction": "E",
               "batch": "E", "login": "E", "break-glass": "E"}


@dataclass
class Pending:
    recorded: str
    user_name: str | None
    role: str | None
    action: str
    outcome: str
    patient_id: str | None
    entity: str | None
    content: tuple


def event_hash(prev_hash: str, content: str, columns: tuple) -> str:
    """Chain hash over the previous hash, the AuditEvent JSON and every searchable column of the row."""
    cols = "\x1f".join("" if c is None else str(c) for c in columns)
    return hashlib.sha256(f"{prev_hash}\x1e{content}\x1e{cols}".encode()).hexdigest()


class AuditWriter:
    """Buffers audit events and appends them to the chain in batches (flushed every few hundred ms)."""

    def __init__(self, store, flush_ms: int = 200) -> None:
        self.store = store
        self.flush_ms = flush_ms
        self._buf: list[Pending] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        atexit.register(self.close)

    def record(self, who: Principal | None, action: str, *, allowed: bool, reason: str,
               entity: str | None = None, patient_id: str | None = None, query: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Queue one AuditEvent (built and chained by the writer thread, off the request path)."""
        recorded = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        p = Pending(recorded, who.name if who else None, who.role if who else None, action,
                    "allowed" if allowed else "refused", patient_id, entity,
                    (who, allowed, reason, query, detail))
        with self._lock:
            self._buf.append(p)
            n = len(self._buf)
        if self._thread is None or not self._thread.is_alive():
            self._ensure_thread()
        if n >= 2000:
            self._wake.set()

    @staticmethod
    def build_event(p: Pending) -> dict[str, Any]:
        """The FHIR AuditEvent for a queued record."""
        who, allowed, reason, query, detail = p.content
        agent: dict[str, Any] = {"requestor": True,
                                 "who": {"display": who.name if who else "anonymous"},
                                 "role": [{"text": who.role if who else "none"}]}
        if who and who.practitioner_id:
            agent["who"]["reference"] = f"Practitioner/{who.practitioner_id}"
        if who and who.organization_id:
            agent["location"] = {"reference": f"Organization/{who.organization_id}"}
        if who and who.patient_id and who.role == "patient":
            agent["who"]["reference"] = f"Patient/{who.patient_id}"
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                     "display": "RESTful Operation"},
            "subtype": [{"system": REST_INTERACTION, "code": p.action}],
            "action": ACTION_CODE.get(p.action, "E"),
            "recorded": p.recorded,
            "outcome": "0" if allowed else "8",
            "outcomeDesc": reason[:1000],
            "agent": [agent],
            "source": {"observer": {"display": "JoinedUp"}},
        }
        entities = []
        if p.entity:
            entities.append({"what": {"reference": p.entity}})
        if p.patient_id and p.entity != f"Patient/{p.patient_id}":
            entities.append({"what": {"reference": f"Patient/{p.patient_id}"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                      "code": "1", "display": "Patient"}})
        if query:
            entities.append({"query": _b64(query[:2000]), "description": query[:2000]})
        if detail:
            entities.append({"detail": [{"type": k, "valueString": str(v)[:500]} for k, v in detail.items()]})
        if entities:
            event["entity"] = entities
        return event

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_ms / 1000)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep the writer alive; the events stay buffered
                import logging

                logging.getLogger("joinedup.audit").exception("audit flush failed; will retry")

    def flush(self) -> int:
        """Append every buffered event to the chain now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                batch, self._buf = self._buf, []
            if not batch:
                return 0
            try:
                self._append(batch)
            except BaseException:
                with self._lock:
                    self._buf[:0] = batch
                raise
            return len(batch)

    def _append(self, batch: list[Pending]) -> None:
        a = schema.audit_event
        with self.store.writing() as conn:
            if self.store.dialect == "postgresql":
                conn.exec_driver_sql("LOCK TABLE audit_event IN EXCLUSIVE MODE")
            last = conn.execute(sa.select(a.c.seq, a.c.hash).order_by(a.c.seq.desc()).limit(1)).first()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS)
            rows = []
            for p in batch:
                seq += 1
                ev = self.build_event(p)
                ev["id"] = str(uuid.uuid4())
                ev["extension"] = [{"url": "https://joinedup.example/fhir/StructureDefinition/audit-chain",
                                    "extension": [{"url": "sequence", "valueInteger": seq},
                                                  {"url": "previousHash", "valueString": prev}]}]
                text = orjson.dumps(ev, option=orjson.OPT_SORT_KEYS).decode()
                columns = (seq, ev["id"], p.recorded, p.user_name, p.role, p.action, p.outcome, p.patient_id,
                           (p.entity or "")[:255] or None)
                h = event_hash(prev, text, columns)
                rows.append((*columns, prev, h, text))
                prev = h
            ph = "%s" if self.store.dialect == "postgresql" else "?"
            cur = conn.connection.driver_connection.cursor()
            try:
                cur.executemany(
                    "INSERT INTO audit_event (seq, id, recorded, user_name, role, action, outcome, patient_id,"
                    f" entity, prev_hash, hash, content) VALUES ({', '.join([ph] * 12)})", rows)
            finally:
                cur.close()

    def close(self) -> None:
        """Stop the background thread after writing what is buffered."""
        self._stopped = True
        self._wake.set()
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - at interpreter exit the database may already be gone
            pass


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(store) -> ChainReport:
    """Recompute the chain; report the first entry that was modified, inserted or removed."""
    a = schema.audit_event
    prev = GENESIS
    expected_seq = 1
    checked = 0
    with store.reading() as conn:
        for seq, prev_hash, h, content, *columns in _stream(conn, a):
            if seq != expected_seq:
                return ChainReport(False, checked, expected_seq,
                                   f"entry {expected_seq} is missing (next entry found is {seq})")
            if prev_hash != prev:
                return ChainReport(False, checked, seq,
                                   f"entry {seq} does not follow entry {seq - 1} (previous hash differs)")
            try:
                doc = orjson.loads(content)
                chain = {e["url"]: e for e in doc["extension"][0]["extension"]}
                if chain["sequence"]["valueInteger"] != seq or chain["previousHash"]["valueString"] != prev:
                    return ChainReport(False, checked, seq, f"entry {seq} carries chain fields that do not match")
            except (ValueError, KeyError, IndexError, TypeError):
                return ChainReport(False, checked, seq, f"entry {seq} is not a readable AuditEvent")
            if event_hash(prev, content, (seq, *columns)) != h:
                return ChainReport(False, checked, seq, f"entry {seq} was modified (hash does not match)")
            prev = h
            expected_seq += 1
            checked += 1
    return ChainReport(True, checked)


def _stream(conn, a) -> Iterator[tuple]:
    last = 0
    while True:
        rows = conn.execute(sa.select(a.c.seq, a.c.prev_hash, a.c.hash, a.c.content, a.c.id, a.c.recorded,
                                      a.c.user_name, a.c.role, a.c.action, a.c.outcome, a.c.patient_id, a.c.entity)
                            .where(a.c.seq > last).order_by(a.c.seq).limit(5000)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def search_events(store, *, patient_id: str | None = None, user_name: str | None = None,
                  action: str | None = None, outcome: str | None = None, since: str | None = None,
                  until: str | None = None, count: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
    """AuditEvents newest first, filtered; returns (total, events)."""
    a = schema.audit_event
    cond = []
    if patient_id:
        cond.append(a.c.patient_id == patient_id)
    if user_name:
        cond.append(a.c.user_name == user_name)
    if action:
        cond.append(a.c.action == action)
    if outcome:
        cond.append(a.c.outcome == outcome)
    if since:
        cond.append(a.c.recorded >= since)
    if until:
        cond.append(a.c.recorded <= until)
    with store.reading() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(a).where(*cond)).scalar_one()
        rows = conn.execute(sa.select(a.c.content).where(*cond).order_by(a.c.seq.desc())
                            .limit(count).offset(offset)).all()
    return total, [orjson.loads(r[0]) for r in rows]
