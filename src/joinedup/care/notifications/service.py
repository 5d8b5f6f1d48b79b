"""Care notifications: events derived from committed writes, delivered to the people who care, in an in-app inbox.

The gate tells us about every committed write (`gate.on_written`); the listener only queues the written
resources, so the writer never waits. A background worker classifies them into events (admission, discharge,
A&E attendance, death, advice reply, overdue task, care plan change, new high-severity conflict finding,
virtual ward reading outside limits), finds the people who care (registered GP, care team and key worker, the
person a reply or task is addressed to), keeps those who still have a legitimate relationship with the person
and want that kind of event, and writes one inbox item each — collapsing repeats of the same event about the
same person and source within a window into one item with a count. External systems get FHIR Subscription
rest-hook notifications from the same worker (see `care.notifications.subscriptions`).

The inbox and the notification choices are platform data in their own tables, not clinical FHIR resources:
an item holds only the event, the person's id and the source reference. Patient details are shown only by
reading them through the gate when the inbox is read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from joinedup.care.notifications.events import Event
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import concept_text as _text
from joinedup.fhir.values import reference_id as _ref_id
from joinedup.governance import platform
from joinedup.governance.accounts import list_users
from joinedup.governance.gate import Gate
from joinedup.governance.identity import SYSTEM, Principal

log = logging.getLogger("joinedup.care.notifications")

EVENT_TYPES: dict[str, str] = {
    "admission": "Admitted to hospital",
    "discharge": "Discharged from hospital",
    "ae-attendance": "A&E attendance",
    "death": "Death",
    "advice-reply": "Reply to an advice request",
    "overdue-task": "Task overdue",
    "care-plan-change": "Care plan changed",
    "conflict": "New high-severity conflict finding",
    "monitoring-alert": "Virtual ward reading outside agreed limits",
    "correction-request": "A person asks for their record to be corrected",
    "person-message": "A message from a person to their care team",
}
# a person's own message asking for something in their record to be corrected (written from their record page)
PERSON_REQUEST_SYSTEM = codes.PERSON_REQUEST
CORRECTION = codes.CORRECTION_REQUEST
INPATIENT_CLASSES = {"IMP", "ACUTE", "NONAC"}
EMERGENCY_CLASSES = {"EMER"}
OPEN_ENCOUNTER = {"planned", "arrived", "triaged", "in-progress", "onleave"}
CLOSED_TASK = {"completed", "cancelled", "entered-in-error", "rejected", "failed"}
RECENT = timedelta(days=3)        # events about the past older than this (e.g. history loads) are not news
COLLAPSE_WINDOW = timedelta(minutes=10)
BULK = 25                         # a write of more resources than this is a load: no per-resource conflict checks
DRAIN = 256                       # queued writes handled together (their reads' audit committed at once)
GATHER = 0.05                     # seconds the worker waits for more writes once one arrives (a feed's burst is
                                  # handled as one batch: one read of the people and teams, one inbox transaction)
PLACE_TTL = 300.0                 # seconds a ward's name (directory data, not a person's) is remembered


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    except ValueError:
        return None


def _recent(value: str | None, now: datetime) -> bool:
    dt = _parse(value)
    return dt is not None and now - RECENT <= dt <= now + timedelta(days=1)


def _patient(res: dict) -> str | None:
    if res.get("resourceType") == "Patient":
        return res.get("id")
    for key in ("subject", "patient", "for"):
        pid = _ref_id(res.get(key), "Patient")
        if pid:
            return pid
    return None


def classify(rtype: str, res: dict | None, *, now: datetime | None = None) -> list[Event]:
    """The events one written resource means (pure: no reads)."""
    if not res:
        return []
    now = now or datetime.now(UTC)
    pid = _patient(res)
    if not pid:
        return []
    ref = f"{rtype}/{res.get('id')}"
    out: list[Event] = []
    if rtype == "Encounter":
        cls = ((res.get("class") or {}).get("code") or "").upper()
        status = res.get("status")
        period = res.get("period") or {}
        place = _text(res.get("serviceType")) or _text(res.get("type"))
        if cls in INPATIENT_CLASSES and status in OPEN_ENCOUNTER - {"planned"}:
            out.append(Event("admission", pid, ref, "Admitted to hospital", place, period.get("start")))
        elif cls in INPATIENT_CLASSES and status == "finished" and _recent(period.get("end"), now):
            disp = _text((res.get("hospitalization") or {}).get("dischargeDisposition"))
            out.append(Event("discharge", pid, ref, "Discharged from hospital",
                             "; ".join(x for x in (place, disp and f"to: {disp}") if x), period.get("end")))
        elif cls in EMERGENCY_CLASSES and (status in OPEN_ENCOUNTER - {"planned"} or
                                           (status == "finished" and _recent(period.get("start"), now))):
            out.append(Event("ae-attendance", pid, ref, "Attended A&E", place, period.get("start")))
    elif rtype == "Patient":
        when = res.get("deceasedDateTime")
        if (when and _recent(when, now)) or (res.get("deceasedBoolean") is True and not when):
            out.append(Event("death", pid, ref, "Died", "", when or now.isoformat()))
    elif rtype == "Communication" and any(c.get("system") == PERSON_REQUEST_SYSTEM and c.get("code") == "correction"
                                          for cat in res.get("category") or [] for c in cat.get("coding") or []):
        body = next((p.get("contentString") for p in res.get("payload") or [] if p.get("contentString")), "")
        orgs = {i for r in res.get("recipient") or [] if (i := _ref_id(r, "Organization"))}
        out.append(Event("correction-request", pid, ref, "Asks for a correction to their record", body[:160],
                         res.get("sent"), also_orgs=orgs))
    elif rtype == "Communication" and any(c.get("system") == PERSON_REQUEST_SYSTEM and c.get("code") == "message"
                                          for cat in res.get("category") or [] for c in cat.get("coding") or []):
        # a person's message to their care team from their portal (portal/service.py)
        body = next((p.get("contentString") for p in res.get("payload") or [] if p.get("contentString")), "")
        to = {i for r in res.get("recipient") or [] if (i := _ref_id(r, "Practitioner"))}
        orgs = {i for r in res.get("recipient") or [] if (i := _ref_id(r, "Organization"))}
        out.append(Event("person-message", pid, ref, "Message from the person", body[:160], res.get("sent"),
                         also_to=to, also_orgs=orgs))
    elif rtype == "Communication" and res.get("inResponseTo") and res.get("status") != "preparation" and \
            not any(_ref_id(r, "Patient") for r in res.get("recipient") or []):  # a reply to the person is not news
        if _recent(res.get("sent") or res.get("received"), now) or not (res.get("sent") or res.get("received")):
            thread = (res["inResponseTo"][0] or {}).get("reference") or ref
            to = {i for r in res.get("recipient") or [] if (i := _ref_id(r, "Practitioner"))}
            body = next((p.get("contentString") for p in res.get("payload") or [] if p.get("contentString")), "")
            out.append(Event("advice-reply", pid, thread, "Reply to an advice request", body[:160],
                             res.get("sent"), also_to=to))
    elif rtype == "Task" and res.get("status") not in CLOSED_TASK:
        due = ((res.get("restriction") or {}).get("period") or {}).get("end")
        business = _text(res.get("businessStatus")).lower()
        due_dt = _parse(due)
        if ("overdue" in business or "escalat" in business) or (due_dt is not None and due_dt < now):
            to = {i for k in ("owner", "requester") if (i := _ref_id(res.get(k), "Practitioner"))}
            what = res.get("description") or _text(res.get("code")) or "A task"
            out.append(Event("overdue-task", pid, ref, "Task overdue", f"{what[:120]} (due {due or 'unknown'})",
                             due, also_to=to))
    elif rtype == "CarePlan" and res.get("status") not in ("entered-in-error",):
        out.append(Event("care-plan-change", pid, ref, "Care plan changed", res.get("title") or "", None))
    return out


# -- the worker -------------------------------------------------------------------------------------------------
class Notifier:
    """Queue + background worker: classify committed writes, deliver inbox items, dispatch rest-hooks."""

    def __init__(self, gate: Gate, *, window: timedelta = COLLAPSE_WINDOW) -> None:
        from joinedup.care.notifications.subscriptions import RestHooks

        self.gate = gate
        self.window = window
        self.queue: queue.Queue = queue.Queue()
        self.hooks = RestHooks(gate)
        self._users: tuple[float, dict[str, list[Principal]]] = (0.0, {})
        self._seen_findings: dict[str, set[str]] = {}
        self._no_user: dict[str, float] = {}
        self._place_names: dict[str, tuple[str | None, float]] = {}  # Location id -> (name, when read)
        self._local = threading.local()  # .held: the writes of a thread that notifies them itself (holding())
        self._busy = threading.Lock()  # one batch handled at a time, by the worker or by a holding thread
        self._held_lock = threading.Lock()
        self._held = 0  # writes held by threads that notify them themselves, not yet handled (flush waits for them)
        self._thread = threading.Thread(target=self._run, name="joinedup-notifier", daemon=True)
        self._thread.start()

    # called on the writer's thread: must be cheap
    def listener(self, who: Principal, written: list) -> None:
        if written:
            item = (who, [(w.rtype, w.id, w.status, w.resource) for w in written], time.time())
            held = getattr(self._local, "held", None)
            if held is not None:
                with self._held_lock:
                    self._held += 1
                held.append(item)
            else:
                self.queue.put(item)

    def holding(self) -> Held:
        """The writes committed on this thread while the returned `Held` is entered are kept in it instead of going
        to the worker, and handled on this thread (`Held.ready()`, then `Ready`): a feed that applies batch after
        batch on one thread notifies each batch with the next one, instead of a second thread contending with it
        for the interpreter and for the database's write lock."""
        return Held(self)

    def _handle_items(self, items: list[tuple]) -> None:
        """Handle writes queued together: the reads behind their events audited together and committed with the
        batch's inbox items (Gate.answering(defer=True), deliver_inbox_batch), not one wait per read."""
        try:
            with self._busy, self.gate.answering(defer=True):
                self._handle_many(items)
        except Exception:
            log.exception("notification audit commit failed")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been handled (for tests and benchmarks)."""
        deadline = time.time() + timeout
        while (self.queue.unfinished_tasks or self._held) and time.time() < deadline:
            time.sleep(0.01)
        return not (self.queue.unfinished_tasks or self._held)

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            until = time.monotonic() + GATHER
            while len(items) < DRAIN and items[-1] is not None:  # what else is queued meanwhile is handled with it
                try:
                    items.append(self.queue.get(timeout=max(until - time.monotonic(), 0.0)))
                except queue.Empty:
                    break
            drained = len(items)
            stop = None in items
            if stop:  # the end: what came before it is handled, nothing after it
                items = items[:items.index(None)]
            try:
                self._handle_items(items)
            finally:
                for _ in range(drained):
                    self.queue.task_done()
            if stop:
                return

    def _handle(self, who: Principal, written: list[tuple], queued_at: float) -> None:
        self._handle_many([(who, written, queued_at)])

    def _events(self, written: list[tuple], now: datetime) -> list[Event]:
        bulk = len(written) > BULK
        events: list[Event] = []
        for rtype, _rid, status, res in written:
            if rtype == "Subscription":
                continue
            events += classify(rtype, res, now=now)
            if not bulk and res and status != "deleted":
                if rtype == "Observation":
                    events += self._monitoring_alerts(res)
                if rtype in ("MedicationRequest", "MedicationStatement", "Condition") or (
                        rtype == "Observation" and (res.get("code") or {}).get("coding")):  # uncoded: no rule matches
                    events += self._new_conflicts(rtype, res)
        return events

    def _handle_many(self, items: list[tuple]) -> None:
        """The events of writes queued together, delivered together: the wards they name read in one search, each
        recipient's relationships checked once for the batch, and every inbox item written in one transaction (a
        feed's burst of admissions is delivered as fast as it is applied); then each write's rest-hooks."""
        events = self._events_of(items)
        if events:
            details = [ev.detail for ev, _w in events]
            try:
                self._deliver_many(events)
            except Exception:  # one at a time instead, so that one event's problem does not lose the others'
                log.exception("notification batch failed; delivering its events one at a time")
                for (ev, written), detail in zip(events, details):
                    ev.detail = detail  # as classified (the batch may have named the ward already)
                    try:
                        self._resolve_place(ev, written)
                        self.deliver(ev)
                    except Exception:
                        log.exception("notification handling failed")
        self._hooks(items)

    def _events_of(self, items: list[tuple]) -> list[tuple[Event, list[tuple]]]:
        now = datetime.now(UTC)
        events: list[tuple[Event, list[tuple]]] = []
        for _who, written, queued_at in items:
            try:
                for ev in self._events(written, now):
                    ev.queued_at = queued_at
                    events.append((ev, written))
            except Exception:
                log.exception("notification handling failed")
        return events

    def _hooks(self, items: list[tuple]) -> None:
        """Each write's rest-hooks (after its commit)."""
        for _who, written, _queued_at in items:
            try:
                self.hooks.dispatch([(rtype, rid, res) for rtype, rid, status, res in written if status != "deleted"],
                                    bulk=len(written) > BULK)
            except Exception:
                log.exception("notification handling failed")

    def _by_id(self, rtype: str, ids: set[str]) -> dict[str, dict] | None:
        """Current resources by id, read in one search (None when they do not fit one page)."""
        if not ids:
            return {}
        found = self.gate.search(SYSTEM, rtype, [("_id", ",".join(sorted(ids))), ("_count", "1000")])
        return None if found.has_more else {s.id: s.content for s in found.matches}

    def _deliver_many(self, events: list[tuple[Event, list[tuple]]]) -> None:
        deliveries = self._plan_deliveries(events)
        if deliveries:
            platform.deliver_inbox_batch(self.gate, SYSTEM, deliveries)

    def _plan_deliveries(self, events: list[tuple[Event, list[tuple]]]) -> list[dict[str, Any]]:
        """Who is told what about these events (reads only): the deliveries for `platform.deliver_inbox_batch`."""
        # the wards named (directory data) remembered for a few minutes, those not known read in one search; the
        # records and care teams of the batch's people read in one lookup each, audited as one event per person
        # (Gate.reads_as_one), so that every read of a person's record is in their own access log
        places = {id(ev): loc for ev, written in events if (loc := self._place_of(ev, written))}
        names = self._names_of(set(places.values()))
        people = sorted({ev.patient_id for ev, _w in events if ev.patient_id})
        with self.gate.reads_as_one(SYSTEM, entity="notifications", purpose="who to tell about the person"):
            records = {s.id: s.content for s in self.gate.find_by_ids(SYSTEM, "Patient", people)}
            teams = self.gate.find_by_references(SYSTEM, "CareTeam", "patient", [f"Patient/{p}" for p in people])
        candidates: list[dict[str, Principal]] = []
        for ev, written in events:
            if names is None:
                self._resolve_place(ev, written)
            elif id(ev) in places and (name := names.get(places[id(ev)])):
                ev.detail = name if not ev.detail else f"{name} ({ev.detail})"
            candidates.append(self._recipients(ev, records.get(ev.patient_id), [
                s.content for s in teams.get(f"Patient/{ev.patient_id}", [])]))
        # who of them still has a legitimate relationship with the person: asked once per recipient for the batch
        asked: dict[str, tuple[Principal, set[str]]] = {}
        for (ev, _w), users in zip(events, candidates):
            for n, u in users.items():
                asked.setdefault(n, (u, set()))[1].add(ev.patient_id)
        related = {n: self.gate.related(u, pids) for n, (u, pids) in asked.items()}
        stamp = now_iso()
        since = (datetime.now(UTC) - self.window).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        deliveries = []
        for (ev, _w), users in zip(events, candidates):
            users = {n: u for n, u in users.items() if ev.patient_id in related[n]}
            if users:
                deliveries.append(dict(recipients=users, event_type=ev.type, patient_id=ev.patient_id,
                                       source_ref=ev.source_ref, title=ev.title, detail=ev.detail,
                                       occurred=ev.occurred, since=since, stamp=stamp))
        return deliveries

    def _names_of(self, ids: set[str]) -> dict[str, str | None] | None:
        """The names of these Locations: remembered for PLACE_TTL seconds, the others read in one search (None when
        they do not fit one page)."""
        now = time.monotonic()
        out = {i: hit[0] for i in ids if (hit := self._place_names.get(i)) and now - hit[1] < PLACE_TTL}
        missing = ids - out.keys()
        if missing:
            found = self._by_id("Location", missing)
            if found is None:
                return None
            if len(self._place_names) > 10_000:
                self._place_names.clear()
            for i in missing:
                out[i] = (found.get(i) or {}).get("name")
                self._place_names[i] = (out[i], now)
        return out

    @staticmethod
    def _place_of(ev: Event, written: list[tuple]) -> str | None:
        """The Location an admission, A&E attendance or discharge names (its first)."""
        if ev.type not in ("admission", "ae-attendance", "discharge"):
            return None
        res = next((r for t, i, s, r in written if f"{t}/{i}" == ev.source_ref and r), None)
        return next((lr for loc in (res or {}).get("location") or [] if (lr := _ref_id(loc.get("location"),
                                                                                       "Location"))), None)

    def _resolve_place(self, ev: Event, written: list[tuple]) -> None:
        """Name the ward or department for admissions and A&E attendances (Location is directory data)."""
        loc = self._place_of(ev, written)
        if loc:
            try:
                name = self.gate.read(SYSTEM, "Location", loc).content.get("name")
            except FhirError:
                name = None
            if name:
                ev.detail = name if not ev.detail else f"{name} ({ev.detail})"

    def _monitoring_alerts(self, res: dict) -> list[Event]:
        from joinedup.care.wards import service as virtual_wards

        try:
            return virtual_wards.reading_alerts(gate=self.gate, observation=res)
        except FhirError:
            return []

    def _new_conflicts(self, rtype: str, res: dict) -> list[Event]:
        from joinedup.conflicts import service as conflicts

        pid = _patient(res)
        if not pid:
            return []
        try:
            resources = [s.content for s in self.gate.everything(SYSTEM, pid)]
        except FhirError:
            return []
        findings = [f for f in conflicts.detect_findings(resources=resources)["findings"]
                    if f["severity"] in ("high", "critical")]
        seen = self._seen_findings.setdefault(pid, set())
        ref = f"{rtype}/{res.get('id')}"
        out = []
        for f in findings:
            key = f"{f['rule']}|{'|'.join(sorted(f['involves']))}"
            involved = any(res.get("id") in str(x) for x in list(f["involves"]) + list(f.get("sources") or []))
            if key not in seen and involved:
                out.append(Event("conflict", pid, f"{ref}#{f['rule']}", "New high-severity conflict finding",
                                 f["summary"][:160], None))
            seen.add(key)
        return out

    # -- delivery ----------------------------------------------------------------------------------------
    def users_by_practitioner(self, want: set[str] | None = None, *, fresh: bool = False
                              ) -> dict[str, list[Principal]]:
        """User accounts by practitioner id (cached 5 s; reloaded at once for a practitioner not seen lately, or
        when `fresh` is asked for)."""
        at, users = self._users
        now = time.time()
        unknown = {p for p in want or () if p not in users and now - self._no_user.get(p, 0) > 5}
        if now - at > 5 or unknown or fresh:
            users = {}
            for u in list_users(self.gate):
                if u.practitioner_id and u.role not in ("system", "patient", "analyst"):
                    users.setdefault(u.practitioner_id, []).append(u)
            self._users = (now, users)
            for p in unknown - users.keys():
                self._no_user[p] = now
        return users

    def recipients(self, ev: Event) -> dict[str, Principal]:
        """Users who care about the person: named GP, care team (key worker included), addressees."""
        try:
            patient = self.gate.read(SYSTEM, "Patient", ev.patient_id).content
        except FhirError:
            patient = None
        try:  # CareTeam?patient=X, answered by the gate's prepared lookup (checked and audited as that search)
            teams = [s.content for s in self.gate.find_by_reference(
                SYSTEM, "CareTeam", "patient", f"Patient/{ev.patient_id}", count=100,
                query_text=f"CareTeam?patient={ev.patient_id}&_count=100")]
        except FhirError:
            teams = []
        return self._recipients(ev, patient, teams)

    def _recipients(self, ev: Event, patient: dict | None, teams: list[dict]) -> dict[str, Principal]:
        """`recipients` from the person's record (None: not readable) and their care teams, already read."""
        practitioners = set(ev.also_to)
        if patient is not None:
            practitioners |= {i for g in patient.get("generalPractitioner") or []
                              if (i := _ref_id(g, "Practitioner"))}
        for team in teams:
            if team.get("status") not in (None, "active", "proposed"):
                continue
            for p in team.get("participant") or []:
                if i := _ref_id(p.get("member"), "Practitioner"):
                    practitioners.add(i)
                elif role := _ref_id(p.get("member"), "PractitionerRole"):  # a member named by their role
                    try:
                        prac = self.gate.read(SYSTEM, "PractitionerRole", role).content
                    except FhirError:
                        continue
                    if prac.get("active") is not False and (i := _ref_id(prac.get("practitioner"),
                                                                           "Practitioner")):
                        practitioners.add(i)
        by_pr = self.users_by_practitioner(practitioners)
        out = {u.name: u for pr in practitioners for u in by_pr.get(pr, [])}
        if ev.also_orgs:  # staff of the organisations the event is addressed to (rare: read the accounts afresh)
            for users in self.users_by_practitioner(fresh=True).values():
                out.update({u.name: u for u in users if u.organization_id in ev.also_orgs})
        return out

    def deliver(self, ev: Event) -> list[str]:
        """Write (or collapse into) one inbox item per recipient who may and wants to hear; returns user names."""
        users = self.recipients(ev)
        users = {n: u for n, u in users.items() if self.gate.relationship_of(u, ev.patient_id)}
        if not users:
            return []
        stamp = now_iso()
        since = (datetime.now(UTC) - self.window).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return platform.deliver_inbox_items(self.gate, SYSTEM, recipients=users, event_type=ev.type,
                                            patient_id=ev.patient_id, source_ref=ev.source_ref, title=ev.title,
                                            detail=ev.detail, occurred=ev.occurred, since=since, stamp=stamp)


class Held:
    """Writes committed on one thread, kept to be notified on that thread (`Notifier.holding`)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.items: list[tuple] = []

    def __enter__(self) -> Held:
        self.notifier._local.held = self.items
        return self

    def __exit__(self, *exc: object) -> None:
        self.notifier._local.held = None

    def ready(self) -> Ready | None:
        """The kept writes, to have their inbox items written by the next write transaction of this thread
        (`Ready`), or None when there are none."""
        items, self.items = self.items, []
        return Ready(self.notifier, items) if items else None


class Ready:
    """Held writes whose inbox items go into another write transaction of the same thread: the HL7 listener writes
    one batch's notifications with the next batch's messages (`Hl7Service.handle_many(also=...)`), one commit for
    both instead of one each. `prepare()` chooses who is told what (reads only; inside the caller's deferring
    `Gate.answering` scope, so the reads' audit commits with that transaction), `write(conn)` writes the items in
    the caller's transaction, and `finish()`, after it commits, dispatches the rest-hooks - or, when the items were
    not written there (no transaction came, or it failed), delivers them in a transaction of their own."""

    def __init__(self, notifier: Notifier, items: list[tuple]) -> None:
        self.notifier = notifier
        self.items = items
        self.deliveries: list[dict[str, Any]] | None = None
        self.written = False

    def prepare(self) -> None:
        try:
            events = self.notifier._events_of(self.items)
            self.deliveries = self.notifier._plan_deliveries(events) if events else []
        except Exception:  # noqa: BLE001 - delivered on their own by finish(), one at a time if need be
            log.exception("notification batch could not be planned; it is delivered on its own")
            self.deliveries = None

    def write(self, conn: Any) -> None:
        if self.deliveries is None:
            return
        if self.deliveries:
            platform.deliver_inbox_batch(self.notifier.gate, SYSTEM, self.deliveries, conn=conn)
        self.written = True

    def finish(self) -> None:
        """After the transaction: the rest-hooks, or the whole delivery if it was not written (never raises)."""
        try:
            if self.written:
                self.notifier._hooks(self.items)
            else:
                self.notifier._handle_items(self.items)
        finally:
            with self.notifier._held_lock:
                self.notifier._held -= len(self.items)


_notifiers: dict[int, Notifier] = {}
_lock = threading.Lock()


def install(gate: Gate) -> Notifier:
    """Start (once per gate) the notification worker and register it for committed writes."""
    with _lock:
        n = _notifiers.get(id(gate))
        if n is None:
            n = _notifiers[id(gate)] = Notifier(gate)
            gate.on_written(n.listener)
        return n


def notifier_for(gate: Gate) -> Notifier | None:
    return _notifiers.get(id(gate))


# -- reading the inbox (through policy) -------------------------------------------------------------------------
def _professional(gate: Gate, who: Principal) -> None:
    if who.role in ("patient", "analyst"):
        raise gate.refuse(who, "Access refused: the notification inbox is for professionals caring for people.",
                          action="read", entity="inbox")


def inbox(*, gate: Gate, who: Principal, unread_only: bool = False, limit: int = 100) -> dict[str, Any]:
    """The user's inbox, newest first; people's names are read through the gate (hidden once access ends)."""
    _professional(gate, who)
    rows, unread = platform.inbox_items(gate, who, unread_only=unread_only, limit=limit)
    names: dict[str, dict] = {}
    pids = sorted({r["patient_id"] for r in rows if r["patient_id"]})
    if pids:
        try:
            found = gate.search(who, "Patient", [("_id", ",".join(pids)), ("_count", str(len(pids)))])
            names = {s.id: s.content for s in found.matches}
        except FhirError:
            names = {}
    items = []
    for r in rows:
        p = names.get(r["patient_id"])
        visible = p is not None
        items.append({
            "id": r["id"], "event": r["event_type"], "event_name": EVENT_TYPES.get(r["event_type"], r["event_type"]),
            "title": r["title"], "detail": r["detail"] if visible else None, "count": r["hits"],
            "occurred": r["occurred"], "first": r["first_at"], "last": r["last_at"], "read": r["read_at"] is not None,
            "patient": ({"id": r["patient_id"], "name": _name(p), "nhs_number": _nhs(p)} if visible
                        else {"id": None, "name": None, "hidden": "you no longer have a care relationship with "
                                                                  "this person"}),
            "source": r["source_ref"] if visible else None,
        })
    return {"unread": unread, "items": items}


def unread_count(*, gate: Gate, who: Principal) -> int:
    """How many unread items the user has (no patient details)."""
    return platform.inbox_unread(gate, who)


def mark_read(*, gate: Gate, who: Principal, item_id: int | None = None) -> int:
    """Mark one item (or, with no id, all) as read; 404 when the item is not the user's."""
    _professional(gate, who)
    return platform.mark_inbox_read(gate, who, item_id)


def preferences(*, gate: Gate, who: Principal) -> dict[str, bool]:
    """Which event types the user receives (all on unless turned off)."""
    _professional(gate, who)
    rows = platform.notification_choices(gate, who)
    return {t: bool(rows.get(t, True)) for t in EVENT_TYPES}


def set_preferences(*, gate: Gate, who: Principal, choices: dict[str, Any]) -> dict[str, bool]:
    """Turn event types on or off; an unknown event type or a non-boolean choice is refused (400)."""
    _professional(gate, who)
    if not isinstance(choices, dict) or not choices:
        raise FhirError(400, "Send an object of event types and true/false, e.g. {\"admission\": true}",
                        code="invalid")
    for k, v in choices.items():
        if k not in EVENT_TYPES:
            raise FhirError(400, f"Unknown event type '{k}': choose from {', '.join(EVENT_TYPES)}", code="value",
                            expression=[k])
        if not isinstance(v, bool):
            raise FhirError(400, f"'{k}' must be true or false", code="value", expression=[k])
    platform.set_notification_choices(gate, who, choices)
    return preferences(gate=gate, who=who)


def _name(p: dict) -> str:
    n = (p.get("name") or [{}])[0]
    return " ".join([*(n.get("given") or []), n.get("family") or ""]).strip() or n.get("text") or p.get("id")


def _nhs(p: dict) -> str | None:
    return next((i.get("value") for i in p.get("identifier") or []
                 if i.get("system") == codes.NHS_NUMBER), None)
