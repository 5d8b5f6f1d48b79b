"""The one gate: every path to data (API, web, CLI, CDS Hooks, exports, analytics) goes through here.

Each method asks the policy decision point, writes to the audit, and only then touches the store.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from joinedup.fhir import codes
from joinedup.fhir.bundles import (
    METHOD_ORDER,
    check_bundle,
    conditional_references,
    rewrite_references,
    split_url,
)
from joinedup.fhir.errors import FhirError, gone, not_found
from joinedup.fhir.search_params import split_reference
from joinedup.fhir.validation import is_resource_type, validate_resource
from joinedup.governance import policy
from joinedup.governance.audit import AuditWriter, search_events
from joinedup.governance.facts import AccessFacts
from joinedup.governance.identity import Principal
from joinedup.store import schema, search
from joinedup.store.repository import Prepared, StaleWrite, Store, Stored, Written, new_id, prepare

log = logging.getLogger("joinedup.gate")

DIRECTORY_GROUP = "directory"
# A partnership board's integration self-assessment round (a QuestionnaireResponse about no person): written only by
# Gate.save_assessment_round.
ASSESSMENT_ROUND = {"system": codes.CODE_SYSTEM + "record-kind", "code": "integration-assessment-round",
                    "display": "Integration self-assessment round"}
# Purposes of population work that are not direct care: National Data Opt-out applies.
SECONDARY_PURPOSES = {"research", "planning", "commissioning", "extract", "analytics"}

# Notices the web layer shows with a response (e.g. "break-glass until ..."): a list per request, set by
# the API middleware (see api/governance_routes.py); the gate appends to it.
access_notices: ContextVar[list | None] = ContextVar("joinedup_access_notices", default=None)
# The reason a privacy officer states for changing a person's choice on their behalf (X-JoinedUp-Reason header,
# set by the API middleware in api/privacy_routes.py).
change_reason: ContextVar[str | None] = ContextVar("joinedup_change_reason", default=None)
# The lookups gathered inside `Gate.reads_as_one` (one HL7 message's plan, the people one notification goes to),
# audited together when the block ends.
_gathered_reads: ContextVar[list | None] = ContextVar("joinedup_gathered_reads", default=None)
EDITED_BY_URL = codes.LAST_EDITED_BY
_NOBODY = "\x00no-such-person"  # a person nobody has a relationship with: how a missing entry is refused


def _notice(text: str) -> None:
    notices = access_notices.get()
    if notices is not None and text not in notices:
        notices.append(text)


@dataclass
class SearchResult:
    """A page of search matches plus included resources."""

    total: int | None
    matches: list[Stored]
    included: list[Stored]
    has_more: bool
    plan: search.SearchPlan
    extra: dict = field(default_factory=dict)


@dataclass
class Withheld:
    """What of one person's record a professional may not see (`Gate.everything_and_withheld`): counts by type only for what
    their role may not read; for entries withheld at the person's request or sealed, only that some exist."""

    by_type: dict[str, int] = field(default_factory=dict)
    at_request: bool = False
    sealed: bool = False

    def detail(self) -> dict[str, Any]:
        """For the audit: what was counted (kinds and numbers, never content)."""
        return {"not_shown_to_role": dict(sorted(self.by_type.items())), "at_request": self.at_request,
                "sealed": self.sealed}

    def merge(self, other: Withheld) -> Withheld:
        for t, n in other.by_type.items():
            self.by_type[t] = self.by_type.get(t, 0) + n
        self.at_request = self.at_request or other.at_request
        self.sealed = self.sealed or other.sealed
        return self


@dataclass
class _Planned:
    """Steps 1 and 2 of a transaction (Gate._plan): what to write, prepared, and the versions it was planned from."""

    entries: list[dict]
    order: list[int]
    plans: dict[int, dict[str, Any]]
    prepared: dict[int, Prepared]
    read: dict[tuple[str, str], int | None]  # (type, id) of every entry replaced or deleted -> its version then


class _MessageBatch:
    """One write transaction shared by several feed messages (Gate.apply_messages), a savepoint each."""

    def __init__(self, conn, audit: AuditWriter, store: Store) -> None:
        self.conn = conn
        self.audit = audit
        self.store = store
        self.after: list[tuple[Principal, bool, list[dict], list[Written]]] = []
        self.rolled_back = False
        self._n = 0

    @contextmanager
    def savepoint(self) -> Iterator[Any]:
        self._n += 1
        name = f"joinedup_msg_{self._n}"
        head = getattr(self.audit._tx, "head", None)  # the chain head appended so far (checkpointed after commit)
        plain = self.store.run
        plain(self.conn, f"SAVEPOINT {name}")
        try:
            yield self.conn
        except BaseException:
            plain(self.conn, f"ROLLBACK TO SAVEPOINT {name}")
            plain(self.conn, f"RELEASE SAVEPOINT {name}")
            self.audit._tx.head = head  # the message's audit events went with it
            self.rolled_back = True
            raise
        plain(self.conn, f"RELEASE SAVEPOINT {name}")


class Gate:
    """Policy + audit in front of the store."""

    def __init__(self, store: Store, audit: AuditWriter) -> None:
        self._store = store
        self._audit = audit
        self._facts = AccessFacts(store)
        # After-commit listeners (e.g. care notifications): fn(who, [Written]) — never a path to data.
        self.listeners: list = []

    def on_written(self, fn) -> None:
        """Register fn(who, written) to be told about every committed write (after the gate's checks)."""
        if fn not in self.listeners:
            self.listeners.append(fn)

    def _emit(self, who: Principal, written: list) -> None:
        for fn in list(self.listeners):
            try:
                fn(who, [w for w in written if w is not None and w.status != "unchanged"])
            except Exception:  # noqa: BLE001 - a failing listener must not undo a committed write
                import logging

                logging.getLogger("joinedup.gate").exception("write listener failed")

    # -- what callers outside governance may ask of the gate (the store, facts and audit are private) ----------
    def record(self, who: Principal | None, action: str, *, allowed: bool, reason: str, entity: str | None = None,
               patient_id: str | None = None, query: str | None = None, detail: dict[str, Any] | None = None,
               conn: Any = None) -> None:
        """Audit one access decided by the caller (a domain's own rule, a log-in, a CSRF refusal, a download);
        with `conn`, inside that open write transaction (kept only if it commits)."""
        self._audit.record(who, action, allowed=allowed, reason=reason, entity=entity, patient_id=patient_id,
                           query=query, detail=detail, conn=conn)

    def flush_audit(self) -> int:
        """Commit every buffered audit event now (end of a CLI command, shutdown); returns how many."""
        return self._audit.flush()

    def verify_audit(self):
        """Check the keyed audit chain and its signed checkpoints (an `audit.ChainReport`)."""
        from joinedup.governance.audit import verify_chain

        return verify_chain(self._store)

    def optimize(self) -> None:
        """Refresh the query planner's statistics (after bulk loads, and at start-up)."""
        self._store.optimize()

    @property
    def params(self):
        """The search parameter registry (compartments, patient_of) the store indexes by: no data."""
        return self._store.params

    @property
    def database_url(self) -> str | None:
        """The database URL, for worker processes that open their own gate on it."""
        return getattr(self._store, "url", None)

    def entry_status(self, rtype: str, rid: str) -> str | None:
        """Whether an entry exists ("current"), has been deleted ("deleted") or never existed (None): for
        administrative checks (e.g. a user account linked to a Practitioner); no content, so no audit."""
        found = self._store.read(rtype, rid)
        if found is None:
            return None
        return "deleted" if found.deleted else "current"

    def relationship_of(self, who: Principal, patient_id: str) -> str | None:
        """The legitimate relationship `who` has with the person (None when there is none)."""
        return self._facts.relationship(who, patient_id)

    def related(self, who: Principal, patient_ids: Iterable[str]) -> set[str]:
        """Which of these people `who` has a legitimate relationship with (`relationship_of` not None), asked for
        many people at once (two queries, not the principal's whole reach when that is not cached)."""
        return self._facts.related(who, patient_ids)

    def break_glass_until(self, who: Principal, patient_id: str) -> str | None:
        """Until when `who` has break-glass access to the person (None when they have none)."""
        return self._facts.break_glass_until(who, patient_id)

    def proxy_access_of(self, who: Principal) -> tuple[str, frozenset | None] | None:
        """The access a person granted this carer's account now: (until, resource types or None for the whole
        record), or None (not a carer, never granted, ended or withdrawn)."""
        return self._facts.proxy_access(who) if policy.is_proxy(who) else None

    # -- for tests and benchmarks only: never used under src/ (tests/test_architecture.py checks) ----------------
    @property
    def store_for_tests(self) -> Store:
        return self._store

    @property
    def facts_for_tests(self) -> AccessFacts:
        return self._facts

    @property
    def audit_for_tests(self) -> AuditWriter:
        return self._audit

    # -- the decision ---------------------------------------------------------------------------
    def facts_for(self, who: Principal, patient_id: str | None, item: Stored | None = None, *,
                  label: str | None = None) -> policy.Facts | None:
        """What the policy needs to know about this person (and entry) for this professional (or carer)."""
        if who.role in ("system", "patient"):
            return None
        if policy.is_proxy(who):  # a carer: the access the person granted, and the entry's labels
            access = self._facts.proxy_access(who)
            restricted = (label or self._facts.label(item.rtype, item.id, item.content)) if item is not None else None
            return policy.Facts(restricted=restricted, proxy_until=access[0] if access else None,
                                proxy_scope=access[1] if access else None)
        if patient_id is None:  # an entry of a person's record (Condition, Claim, ...) that names no one we know
            if item is not None and item.rtype in self._store.params.compartment:
                return policy.Facts(own_item=bool(who.source) and item.source == who.source, unattached=True)
            return None
        f = self._facts
        rel = f.relationship(who, patient_id)
        until = None if rel else f.break_glass_until(who, patient_id)
        restricted, own = None, False
        if item is not None:
            restricted = label or f.label(item.rtype, item.id, item.content)
            own = bool(who.source) and item.source == who.source
        return policy.Facts(rel, until, f.objection(who, patient_id), restricted, own)

    def check(self, who: Principal, action: str, rtype: str | None, *, patient_id: str | None = None,
              entity: str | None = None, query: str | None = None, item: Stored | None = None,
              facts: policy.Facts | None = None) -> policy.Decision:
        """Ask the policy; audit and raise 403 on refusal."""
        if facts is None:
            facts = self.facts_for(who, patient_id, item)
        decision = policy.decide(who, action, rtype, patient_id=patient_id, facts=facts)
        if not decision:
            self._audit.record(who, action, allowed=False, reason=decision.reason, entity=entity,
                              patient_id=patient_id, query=query)
            raise refusal(who, decision)
        if decision.break_glass_until:
            _notice(f"break-glass until {decision.break_glass_until}Z (Patient/{patient_id})")
        return decision

    def refuse(self, who: Principal, message: str, *, action: str, entity: str | None = None,
               patient_id: str | None = None) -> FhirError:
        """A refusal decided outside the policy (a domain's own rule, e.g. only the key worker may accept a merge):
        audited like every other refusal; returns the 403 to raise."""
        self._audit.record(who, action, allowed=False, reason=message[:1000], entity=entity, patient_id=patient_id)
        return FhirError(403, message, code="forbidden")

    def visible(self, who: Principal, s: Stored, action: str = "read") -> bool:
        """Whether one entry may be shown to the principal (no audit: callers audit the whole response)."""
        return bool(policy.decide(who, action, s.rtype, patient_id=s.patient_id,
                                  facts=self.facts_for(who, s.patient_id, s)))

    def restriction(self, who: Principal, decision: policy.Decision, rtype: str | None) -> list[Any]:
        """SQL conditions narrowing a search (and its includes and totals) to what the principal may see."""
        r = schema.resource
        if who.role == "system" or decision.activity == "*":
            return []
        if decision.patient_only:
            directory = sorted(t for t, rule in policy.rules()["_type_rule"].items()
                               if rule["group"] == DIRECTORY_GROUP)
            conds = [sa.or_(r.c.patient_id == decision.patient_only,
                            sa.and_(r.c.patient_id.is_(None), r.c.res_type.in_(directory)))]
            if policy.is_proxy(who):  # a carer: only the types the person shared, never sealed or private entries
                ri = schema.restricted_item
                conds.append(~sa.exists().where(ri.c.res_id == r.c.id, ri.c.res_type == r.c.res_type))
                access = self._facts.proxy_access(who)
                if access is None:
                    conds.append(sa.false())
                elif access[1] is not None:
                    conds.append(r.c.res_type.in_(sorted(access[1] | policy.PROXY_ALWAYS | set(directory))))
            return conds
        conds = self._facts.restriction(who)
        fallback_ok, readable, unreadable = policy.readable_types(who)
        if fallback_ok:
            if unreadable:
                conds.append(~r.c.res_type.in_(sorted(unreadable)))
        else:
            conds.append(r.c.res_type.in_(sorted(readable)))
        return conds

    # -- reads ----------------------------------------------------------------------------------
    def read(self, who: Principal, rtype: str, rid: str, *, version: int | None = None) -> Stored:
        """Read (or vread) one resource."""
        _known_type(rtype)
        if rtype == "AuditEvent":
            return self._read_audit(who, rid)
        current = self._store.read(rtype, rid)
        stored = current if version is None else self._store.vread(rtype, rid, version)
        entity = f"{rtype}/{rid}" + (f"/_history/{version}" if version else "")
        action = "vread" if version else "read"
        if current is None:
            self._missing(who, action, rtype, rid, entity)
        if stored is None:  # the entry exists, that version does not: say so only to whoever may read the entry
            self.read(who, rtype, rid)
            raise FhirError(404, f"{rtype}/{rid} has no version {version}", code="not-found")
        # each version is checked against its own person's record (an entry may have been moved between records)
        patient = stored.patient_id if (version is None or stored.patient_id) else current.patient_id
        facts = None
        if who.role not in ("system", "patient"):
            label = self._facts.label(rtype, rid, stored.content)
            if version is not None and not label:  # an older version: the current labels count too
                label = self._facts.label(rtype, rid, current.content)
            facts = self.facts_for(who, patient, stored, label=label)
        decision = self.check(who, action, rtype, patient_id=patient, entity=entity, facts=facts)
        if decision.patient_only and patient != decision.patient_only and \
                policy.type_rule(rtype)["group"] != DIRECTORY_GROUP:
            self._audit.record(who, action, allowed=False, reason="not part of this person's own record",
                              entity=entity, patient_id=patient)
            raise refusal(who, policy.Decision(False, policy.OWN_RECORD_ONLY))
        self._audit.record(who, action, allowed=True, reason=decision.reason, entity=entity, patient_id=patient)
        if stored.deleted:
            raise gone(rtype, rid)
        return stored

    def search(self, who: Principal, rtype: str, params: list[tuple[str, str]], *, strict: bool = False,
               query_text: str | None = None, default_count: int = 50, max_count: int = 1000) -> SearchResult:
        """Search one resource type; includes and totals only ever cover what the principal may see."""
        _known_type(rtype)
        if rtype == "AuditEvent":
            return self._search_audit(who, params, query_text)
        patient_param = _patient_filter(params, rtype)
        decision = self.check(who, "search", rtype, patient_id=patient_param, query=query_text)
        plan = search.parse(params, rtype, self._store.params, strict=strict, default_count=default_count,
                            max_count=max_count)
        for inc in plan.include + plan.revinclude:
            self.check(who, "search", inc.source_type if inc in plan.revinclude else (inc.target_type or None),
                       query=query_text)
        restrict = self.restriction(who, decision, rtype)
        total, page, included, has_more = search.execute(self._store, plan, restrict or None)
        if decision.patient_only:
            included = [s for s in included if s.patient_id in (None, decision.patient_only)
                        and (s.patient_id or policy.type_rule(s.rtype)["group"] == DIRECTORY_GROUP)]
        patients = sorted({s.patient_id for s in page if s.patient_id})
        if who.role not in ("system", "patient"):
            reach = self._facts.reach(who)
            for pid in {s.patient_id for s in page + included if s.patient_id and s.patient_id not in reach}:
                until = self._facts.break_glass_until(who, pid)
                if until:
                    _notice(f"break-glass until {until}Z (Patient/{pid})")
        self._audit.record(who, "search", allowed=True, reason=decision.reason, entity=rtype,
                          patient_id=patients[0] if len(patients) == 1 else patient_param, query=query_text,
                          detail={"returned": len(page) + len(included)} if page else None)
        return SearchResult(total, page, included, has_more, plan)

    @contextmanager
    def reads_together(self) -> Iterator[None]:
        """The reads made on this thread inside the block share one database connection (many small lookups in a
        row, e.g. planning a batch of HL7 messages); each is still checked and audited as usual."""
        with self._store.reads_together():
            yield

    def find_by_identifier(self, who: Principal, rtype: str, pairs: list[tuple[str, str]], *, count: int = 20,
                           query_text: str | None = None) -> list[Stored]:
        """The matches of `search(who, rtype, [("identifier", "system|value,..."), ("_count", count)])` - checked and
        audited exactly as that search - for the integration account's lookups by identifier (an HL7 feed's PID-3
        and PV1-19: several a message), answered by one plain statement instead of a search compiled for each
        message. Anyone else, or an identifier the prepared statement does not cover, goes
        through `search`."""
        params = [("identifier", ",".join(f"{_esc(s)}|{_esc(v)}" for s, v in pairs)), ("_count", str(count))]
        if who.role != "system" or not pairs or not 0 < count <= 1000 or \
                any(not s or not v or len(s) > 255 or len(v) > 255 for s, v in pairs):
            return self.search(who, rtype, params, query_text=query_text).matches
        _known_type(rtype)
        decision = self.check(who, "search", rtype, query=query_text)
        page = self._store.by_identifier(rtype, pairs, count + 1)
        if len(page) > count:  # more than a page: the search pages them (and counts them)
            return self.search(who, rtype, params, query_text=query_text).matches
        self._audit_lookup(who, decision.reason, rtype, page, query_text)
        return page

    def find_by_reference(self, who: Principal, rtype: str, param: str, target: str, *, count: int = 100,
                          query_text: str | None = None) -> list[Stored]:
        """The matches of `search(who, rtype, [(param, "Type/id"), ("_count", count)])` - checked and audited exactly
        as that search, in id order - for the integration account's lookups of what points at one resource (the
        care teams of a person a notification goes to), answered by one plain statement on the reference index
        instead of a search compiled for each. Anyone else, or a parameter that is not a reference to that type,
        goes through `search`."""
        params = [(param, target), ("_count", str(count))]
        ttype, tid = split_reference(target)
        sp = self._store.params.params(rtype).get(param) if is_resource_type(rtype) else None
        if who.role != "system" or not ttype or not tid or not 0 < count <= 1000 or sp is None or \
                sp.type != "reference" or (sp.target and ttype not in sp.target) or len(tid) > 255:
            return self.search(who, rtype, params, query_text=query_text).matches
        decision = self.check(who, "search", rtype, query=query_text)
        page = self._store.by_reference(rtype, param, ttype, tid, count + 1)
        if len(page) > count:  # more than a page: the search pages them (and counts them)
            return self.search(who, rtype, params, query_text=query_text).matches
        self._audit_lookup(who, decision.reason, rtype, page, query_text)
        return page

    def find_by_references(self, who: Principal, rtype: str, param: str, targets: list[str], *, count: int = 100
                           ) -> dict[str, list[Stored]]:
        """`find_by_reference` for several targets of one type at once (the care teams of every person a batch of
        notifications is about): one plain statement for all of them, each target's matches checked and audited as
        its own `param=target` search (inside `reads_as_one`, together: one event per person). Anyone else, or
        anything `find_by_reference` would not answer itself, goes target by target."""
        targets = list(dict.fromkeys(targets))
        split = [split_reference(t) for t in targets]
        ttypes = {tt for tt, _i in split}
        sp = self._store.params.params(rtype).get(param) if is_resource_type(rtype) else None
        if who.role != "system" or len(ttypes) != 1 or not all(tt and ti and len(ti) <= 255 for tt, ti in split) \
                or not 0 < count <= 1000 or sp is None or sp.type != "reference" or \
                (sp.target and next(iter(ttypes)) not in sp.target):
            return {t: self.find_by_reference(who, rtype, param, t, count=count) for t in targets}
        found = self._store.by_references(rtype, param, next(iter(ttypes)), [ti for _t, ti in split])
        out: dict[str, list[Stored]] = {}
        for target, (_tt, tid) in zip(targets, split):
            query = f"{rtype}?{param}={tid}&_count={count}"
            page = found.get(tid, [])
            if len(page) > count:  # more than a page: the search pages them (and counts them)
                out[target] = self.search(who, rtype, [(param, target), ("_count", str(count))],
                                          query_text=query).matches
                continue
            decision = self.check(who, "search", rtype, query=query)
            self._audit_lookup(who, decision.reason, rtype, page, query)
            out[target] = page
        return out

    def find_by_ids(self, who: Principal, rtype: str, ids: list[str]) -> list[Stored]:
        """The current entries of one type with these ids (those that exist), for the integration account's
        lookups of many people at once (the records behind a batch of notifications): checked and audited as the
        search `_id=...` (inside `reads_as_one`, together: one event per person). Anyone else gets `search`."""
        ids = sorted(set(ids))
        query = f"{rtype}?_id={','.join(ids)}"
        if who.role != "system" or not is_resource_type(rtype) or any(len(i) > 255 for i in ids):
            return [s for chunk in range(0, len(ids), 100) for s in self.search(
                who, rtype, [("_id", ",".join(ids[chunk:chunk + 100])), ("_count", "100")]).matches]
        decision = self.check(who, "search", rtype, query=query[:1000])
        page = sorted(self._store.read_many([(rtype, i) for i in ids]), key=lambda s: s.id) if ids else []
        self._audit_lookup(who, decision.reason, rtype, page, query[:1000])
        return page

    def _audit_lookup(self, who: Principal, reason: str, rtype: str, page: list[Stored], query_text: str | None
                      ) -> None:
        gathered = _gathered_reads.get()
        if gathered is not None:  # audited with the others when the reads_as_one block ends
            gathered.append((reason, query_text or rtype, page))
            return
        patients = sorted({s.patient_id for s in page if s.patient_id})
        self._audit.record(who, "search", allowed=True, reason=reason, entity=rtype,
                          patient_id=patients[0] if len(patients) == 1 else None, query=query_text,
                          detail={"returned": len(page)} if page else None)

    @contextmanager
    def reads_as_one(self, who: Principal, *, entity: str, purpose: str) -> Iterator[Any]:
        """The lookups `find_by_identifier` and `find_by_reference` make inside the block (each still checked by the
        policy when it is made) are audited together when the block ends, however it ends: one `search` event for
        each person whose records they returned (so it is in that person's access log), naming every query and
        every record returned, or one event when they returned nobody's records (in the access log of the person
        the caller names as `about` on the object yielded, e.g. a new record about to be written). `entity` names
        what the reads were for (e.g. one HL7 message, `hl7:RZA|MSG00001`), `purpose` why. Instead of an event per
        lookup: an HL7 message makes two to four of them."""
        holder = SimpleNamespace(about=None)
        if _gathered_reads.get() is not None:  # already inside one: the outer block audits them
            yield holder
            return
        gathered: list = []
        token = _gathered_reads.set(gathered)
        try:
            yield holder
        finally:
            _gathered_reads.reset(token)
            if gathered:
                self._audit_gathered(who, entity, purpose, gathered, holder.about)

    def _audit_gathered(self, who: Principal, entity: str, purpose: str, gathered: list, about: str | None
                        ) -> None:
        by_person: dict[str | None, list[str]] = {}
        for _reason, _query, page in gathered:
            for s in page:
                by_person.setdefault(s.patient_id, []).append(f"{s.rtype}/{s.id}")
        people = sorted(p for p in by_person if p) or [about]
        reason = f"{purpose}: {gathered[0][0]}"
        query = " ; ".join(q for _r, q, _p in gathered)
        for n, pid in enumerate(people):
            # each person's event names their records; the first also names the records of no one (directory)
            returned = list(dict.fromkeys(by_person.get(pid, []) + (by_person.get(None, []) if n == 0 else [])))
            detail: dict[str, Any] = {"lookups": len(gathered), "returned": len(returned)}
            text, part = "", 1
            for ref in returned:  # each detail value holds at most 500 characters: as many as it takes
                if text and len(text) + len(ref) + 2 > 500:
                    detail[f"records {part}"], text, part = text, "", part + 1
                text = f"{text}, {ref}" if text else ref
            if text:
                detail[f"records {part}" if part > 1 else "records"] = text
            self._audit.record(who, "search", allowed=True, reason=reason[:1000], entity=entity[:255],
                              patient_id=pid, query=query, detail=detail)

    def history(self, who: Principal, *, rtype: str | None = None, rid: str | None = None,
                since: str | None = None, count: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
        """Instance, type or system history."""
        if rtype:
            _known_type(rtype)
        patient = None
        cur = None
        if rtype and rid:
            cur = self._store.read(rtype, rid)
            if cur is None:
                self._missing(who, "history", rtype, rid, f"{rtype}/{rid}")
            patient = cur.patient_id
            if who.role not in ("system",):
                return self._instance_history(who, cur, since=since, count=count, offset=offset)
        decision = self.check(who, "history", rtype, patient_id=patient,
                              entity=f"{rtype}/{rid}" if rid else rtype, item=cur)
        if not rid and who.role != "system" and decision.activity != "*" and not decision.patient_only:
            self._audit.record(who, "history", allowed=False, reason="type and system history span many "
                              "people's records", entity=rtype or "system")
            raise FhirError(403, "Access refused: type and system history span many people's records and are "
                                 "available to the integration account only; search, or read the history of one "
                                 "entry instead.", code="forbidden")
        if decision.patient_only and (not rid or patient != decision.patient_only):
            self._audit.record(who, "history", allowed=False, reason="history is limited to one's own entries",
                              entity=rtype)
            raise FhirError(403, "Access refused: a patient account can read the history of its own entries only.",
                            code="forbidden")
        total, rows = self._store.history(rtype=rtype, rid=rid, since=since, count=count, offset=offset)
        if rid and who.role not in ("system", "patient") and decision.activity != "*":
            # an older version may carry labels the current one does not: hide those versions
            own = bool(who.source) and cur is not None and cur.source == who.source
            kept = [row for row in rows if own or not self._facts.label(rtype, rid, row["content"])]
            total -= len(rows) - len(kept)
            rows = kept
        self._audit.record(who, "history", allowed=True, reason=decision.reason,
                          entity=f"{rtype}/{rid}" if rid else (rtype or "system"), patient_id=patient)
        return total, rows

    def _missing(self, who: Principal, action: str, rtype: str, rid: str, entity: str) -> None:
        """Refuse or 404 an entry that does not exist: whoever could not see it if it existed is told exactly what
        they would be told then (no existence oracle); the integration account and directory readers get 404."""
        if who.role != "system":
            self._refuse_if_hidden(who, action, rtype, entity)
        self._audit.record(who, action, allowed=True, reason="not found", entity=entity)
        raise not_found(rtype, rid)

    def _refuse_if_hidden(self, who: Principal, action: str, rtype: str, entity: str) -> None:
        """For an entry that does not exist: refuse exactly as an existing entry of a person the principal has no
        relationship with would be refused (returns when such an entry would be visible, e.g. the directory)."""
        probe = policy.decide(who, action, rtype, patient_id=_NOBODY, facts=policy.NO_FACTS)
        if not probe:
            self._audit.record(who, action, allowed=False, reason=f"{probe.reason} (no such entry)", entity=entity)
            raise refusal(who, probe)

    def _version_visible(self, who: Principal, rtype: str, rid: str, row: dict, cur: Stored) -> bool:
        """Whether one version of an entry may be shown: checked against that version's own person."""
        pid = row.get("patient_id") or cur.patient_id
        if who.role == "patient":
            return pid == who.patient_id or (pid is None and policy.type_rule(rtype)["group"] == DIRECTORY_GROUP)
        if policy.is_proxy(who):
            label = self._facts.label(rtype, rid, row.get("content")) or self._facts.label(rtype, rid, cur.content)
            return bool(policy.decide(who, "read", rtype, patient_id=pid,
                                      facts=self.facts_for(who, pid, cur, label=label or None)))
        facts = None
        if pid:
            f = self._facts
            rel = f.relationship(who, pid)
            label = f.label(rtype, rid, row.get("content")) or f.label(rtype, rid, cur.content)
            own = bool(who.source) and who.source in (row.get("source"), cur.source)
            facts = policy.Facts(rel, None if rel else f.break_glass_until(who, pid), f.objection(who, pid), label,
                                 own)
        elif rtype in self._store.params.compartment:  # a version about no person we know: its recorder only
            facts = policy.Facts(own_item=bool(who.source) and who.source in (row.get("source"), cur.source),
                                 unattached=True)
        return bool(policy.decide(who, "read", rtype, patient_id=pid, facts=facts))

    def _instance_history(self, who: Principal, cur: Stored, *, since: str | None, count: int,
                          offset: int) -> tuple[int, list[dict]]:
        """One entry's history for a person or a professional: only the versions they may see, each checked
        against the record it belonged to; refused as a read of the current entry when they may see none."""
        rtype, rid = cur.rtype, cur.id
        _, rows = self._store.history(rtype=rtype, rid=rid, since=since, count=100_000, offset=0)
        kept = [row for row in rows if self._version_visible(who, rtype, rid, row, cur)]
        entity = f"{rtype}/{rid}"
        if not kept:  # nothing they may see: refused as the current entry would be (or empty, if that is allowed)
            self.check(who, "history", rtype, patient_id=cur.patient_id, entity=entity, item=cur)
        self._audit.record(who, "history", allowed=True, reason=f"{len(kept)} of {len(rows)} versions shown",
                          entity=entity, patient_id=cur.patient_id)
        return len(kept), kept[offset:offset + count]

    def everything(self, who: Principal, patient_id: str, *, since: str | None = None,
                   types: set[str] | None = None, shared: bool = False) -> list[Stored]:
        """Patient/$everything: the Patient, their compartment and the resources it references. `shared`: the
        compartment's contents are parsed once per version and shared between readers, READ ONLY
        (`Store.compartment_shared`): for views that only read them (the person's summary); decided and audited
        the same."""
        return self._everything(who, patient_id, since=since, types=types, shared=shared)[0]

    def everything_and_withheld(self, who: Principal, patient_id: str, *, types: set[str] | None = None,
                                shared: bool = False) -> tuple[list[Stored], Withheld]:
        """`everything`, and what of the person's record `who` may not see, in one pass (one read, one decision per
        entry), audited as one `everything` event carrying the counts. Nothing of a withheld entry is kept: the
        number of entries of each type the reader's role may not read, and only *whether* entries are withheld at
        the person's request (marked private, or an objection to sharing) or sealed by the organisation that
        recorded them. Nothing is withheld from the integration account or from the person themselves. `shared` as
        for `everything`."""
        return self._everything(who, patient_id, types=types, count=True, shared=shared)

    def may_withhold_beyond(self, who: Principal, patient_id: str, types: Iterable[str]) -> bool:
        """Whether an entry of the person's record of a type outside `types` could be withheld from `who` at the
        person's request or by the organisation that recorded it: only a labelled (private or sealed) entry, or an
        objection to sharing, can be. When not, `everything_and_withheld(..., types=types)` says all there is to
        say about those (a view built from `types` then need not read the rest of a long record)."""
        if who.role in ("system", "patient"):
            return False
        if self._facts.objection(who, patient_id):
            return True
        r, ri = schema.resource, schema.restricted_item
        with self._store.reading() as conn:
            return conn.execute(sa.select(ri.c.res_id).join(r, sa.and_(r.c.res_type == ri.c.res_type,
                                                                        r.c.id == ri.c.res_id))
                                .where(r.c.patient_id == patient_id, r.c.deleted.is_(False),
                                       ri.c.res_type.not_in(sorted(types))).limit(1)).first() is not None

    def _count_withheld(self, who: Principal, s: Stored, out: Withheld | None,
                        decided: dict | None = None) -> bool:
        """Whether the entry may be shown; if not, count it in `out` by why (no content is kept). `decided`: the
        decisions already taken for this reader, by (type, person, facts about the entry): the policy decides from
        exactly these, so entries alike in all three get the same answer (a long record asks a few dozen times)."""
        facts = self.facts_for(who, s.patient_id, s)
        key = (s.rtype, s.patient_id, facts)
        allowed = decided.get(key) if decided is not None else None
        if allowed is None:
            allowed = bool(policy.decide(who, "read", s.rtype, patient_id=s.patient_id, facts=facts))
            if decided is not None:
                decided[key] = allowed
        if allowed or who.role in ("system", "patient"):
            return allowed
        if out is None:
            return False
        if facts is not None and not facts.own_item and (
                facts.restricted == "private" or (facts.objection and s.rtype not in policy.OBJECTION_EXEMPT)):
            out.at_request = True
        elif facts is not None and facts.restricted == "sealed" and not facts.own_item:
            out.sealed = True
        elif not policy.has_activity(who, policy.type_rule(s.rtype)["read"]):
            out.by_type[s.rtype] = out.by_type.get(s.rtype, 0) + 1
        return False

    def _everything(self, who: Principal, patient_id: str, *, since: str | None = None,
                    types: set[str] | None = None, count: bool = False, shared: bool = False
                    ) -> tuple[list[Stored], Withheld]:
        patient = self._store.read("Patient", patient_id)
        entity = f"Patient/{patient_id}"
        decision = self.check(who, "everything", "Patient", patient_id=patient_id, entity=entity)
        if patient is None or patient.deleted:
            self._audit.record(who, "everything", allowed=True, reason="not found", entity=entity)
            raise not_found("Patient", patient_id) if patient is None else gone("Patient", patient_id)
        withheld = Withheld()
        tally = withheld if count and decision.activity != "*" else None
        read = self._store.compartment_shared if shared else self._store.compartment
        decided: dict = {}
        items = [s for s in read(patient_id, types=types, since=since)
                 if self._count_withheld(who, s, tally, decided)]
        have = {(s.rtype, s.id) for s in items}
        refs: list[tuple[str, str]] = []
        for s in items:
            if not shared:
                _collect_refs(s.content, refs)
                continue
            mine = s.extra.get("refs")  # a shared entry's references, collected once per version
            if mine is None:
                mine = []
                _collect_refs(s.content, mine)
                s.extra["refs"] = mine
            refs.extend(mine)
        extra = [k for k in dict.fromkeys(refs) if k not in have and (not types or k[0] in types)]
        linked = [s for s in self._store.read_many(extra)
                  if s.patient_id in (None, patient_id) and self.visible(who, s)]
        detail: dict[str, Any] = {"returned": len(items) + len(linked)}
        if count:
            detail.update(withheld.detail())
        self._audit.record(who, "everything", allowed=True, reason=decision.reason, entity=entity,
                          patient_id=patient_id, detail=detail)
        return items + linked, withheld

    # -- writes ---------------------------------------------------------------------------------
    def create(self, who: Principal, resource: dict, *, if_none_exist: str | None = None) -> Written:
        """Create a resource with a server-assigned id (or return the match for If-None-Exist)."""
        rtype = validate_resource(resource)
        decision = self._check_write(who, "create", resource)
        if if_none_exist:
            match = self._conditional_match(who, rtype, if_none_exist)
            if match is not None:
                return Written(rtype, match.id, match.version, "exists", match.content, match.last_updated)
        resource = copy.deepcopy(resource)
        resource["id"] = new_id()
        prepared = self._prepare(who, resource)
        requests: list[dict] = []
        with self._audit.writing() as conn:  # the write and its audit event commit together
            written = self._store.write_prepared(conn, [prepared], method="POST", skip_unchanged=False)[0]
            changed = self._facts.on_write(conn, [prepared], [written.status], who=who, link_requests=requests)
            self._audit.record(who, "create", allowed=True, reason=decision.reason,
                              entity=f"{rtype}/{written.id}", patient_id=prepared.patient_id, conn=conn)
        if changed:
            self._facts.invalidate()
        self._audit_link_requests(who, requests)
        self._emit(who, [written])
        return written

    def update(self, who: Principal, rtype: str, rid: str, resource: dict, *,
               if_match: str | None = None) -> Written:
        """Update (or create with a client id) a resource; If-Match must name the current version."""
        validate_resource(resource, rtype)
        if resource.get("id") != rid:
            raise FhirError(400, f"The resource id '{resource.get('id')}' does not match the URL id '{rid}'",
                            code="invalid", expression=[f"{rtype}.id"])
        current = self._store.read(rtype, rid)
        live = current if current and not current.deleted else None
        decision = self._check_write(who, "update", resource, current=live, previous=current)
        prepared = self._prepare(who, copy.deepcopy(resource), current=current)
        requests: list[dict] = []
        with self._audit.writing() as conn:
            if if_match is not None:
                _check_if_match(self._store, conn, rtype, rid, if_match)
            written = self._store.write_prepared(conn, [prepared], method="PUT", skip_unchanged=False)[0]
            changed = self._facts.on_write(conn, [prepared], [written.status], who=who, link_requests=requests)
            self._audit.record(who, "update", allowed=True, reason=decision.reason, entity=f"{rtype}/{rid}",
                              patient_id=prepared.patient_id, conn=conn)
        if changed:
            self._facts.invalidate()
        self._after_choice_change(who, decision, f"{rtype}/{rid}", prepared.patient_id)
        self._audit_link_requests(who, requests)
        self._emit(who, [written])
        return written

    def delete(self, who: Principal, rtype: str, rid: str) -> Written | None:
        """Delete a resource (idempotent: deleting what is not there is not an error)."""
        _known_type(rtype)
        current = self._store.read(rtype, rid)
        patient = current.patient_id if current else None
        entity = f"{rtype}/{rid}"
        if current is None and who.role != "system":
            self._refuse_if_hidden(who, "delete", rtype, entity)
        live = current if current and not current.deleted else None
        decision = self._check_delete(who, rtype, rid, live)
        with self._audit.writing() as conn:
            written = self._store.delete(conn, rtype, rid)
            changed = self._facts.on_delete(conn, rtype, rid) if written else False
            self._audit.record(who, "delete", allowed=True, reason=decision.reason, entity=entity,
                              patient_id=patient, conn=conn)
        if changed:
            self._facts.invalidate()
        self._after_choice_change(who, decision, entity, patient)
        self._emit(who, [written])
        return written

    def bundle(self, who: Principal, bundle: Any, *, base_url: str = "") -> dict:
        """Process a transaction (atomic) or batch Bundle; returns the response Bundle."""
        btype = check_bundle(bundle)
        if btype == "batch":
            return self._batch(who, bundle, base_url)
        return self._transaction(who, bundle, base_url)

    def stored_unchanged(self, who: Principal, fingerprints: list[tuple[str, str, str]], *,
                         label: str, lines: bool = False) -> set[tuple[str, str]]:
        """Of (type, id, content hash) triples about to be bulk-loaded, those already stored live with exactly
        that content: the import skips validating and indexing them again. With `lines`, the hashes are of the
        import lines themselves (`repository.line_key`) and match entries written from those very lines (the
        import then skips parsing them too). Only an account allowed to import may ask; the answer is counted in
        the batch's import audit event (`unchanged` of import_resources)."""
        self.check(who, "import", None, entity=label)
        by_type: dict[str, dict[str, str]] = {}
        for rtype, rid, digest in fingerprints:
            by_type.setdefault(rtype, {})[rid] = digest
        same: set[tuple[str, str]] = set()
        with self._store.reading() as conn:
            for rtype, wanted in by_type.items():
                if lines:
                    same.update((rtype, rid) for rid in self._store.unchanged_lines(conn, rtype, wanted))
                    continue
                for rid, (_v, digest, deleted, _p) in self._store.current_versions(conn, rtype, list(wanted)).items():
                    if not deleted and digest == wanted[rid]:
                        same.add((rtype, rid))
        return same

    @contextmanager
    def bulk_load(self, who: Principal, expected: int, *, label: str) -> Iterator[bool]:
        """For a bulk import of about `expected` entries: the store defers its search indexes while a large load
        goes into a (near-)empty store and builds them at the end (yields whether it did). Only an account allowed
        to import may ask; what is written is audited per batch by `import_resources`."""
        self.check(who, "import", None, entity=label)
        with self._store.bulk_load(expected) as deferred:
            yield deferred

    def import_resources(self, who: Principal, items: list[Prepared], *, label: str,
                         unchanged: int = 0) -> list[Written]:
        """Bulk-load prepared resources (one transaction per batch); audited per batch. `unchanged` counts the
        batch's resources that `stored_unchanged` found already stored and the caller therefore left out."""
        decision = self.check(who, "import", None, entity=label)
        with self._audit.writing() as conn:
            written = self._store.write_prepared(conn, items, method="PUT")
            changed = self._facts.on_write(conn, items, [w.status for w in written], who=who) if items else False
            self._audit.record(who, "import", allowed=True, reason=decision.reason, entity=label,
                              detail={"resources": len(items) + unchanged,
                                      "written": sum(1 for w in written if w.status != "unchanged")}, conn=conn)
        if changed:
            self._facts.invalidate()
        if self.listeners:
            for w, p in zip(written, items):
                if w.resource is None:
                    w.resource = p.resource
            self._emit(who, written)
        return written

    def export(self, who: Principal, types: Iterable[str], *, since: str | None = None,
               patient_ids: set[str] | None = None, label: str = "export") -> Iterator[Stored]:
        """Stream resources for a bulk export, each type checked and audited."""
        for rtype in types:
            decision = self.check(who, "export", rtype, entity=label)
            n = 0
            for s in self._store.iter_type(rtype, since=since):
                if patient_ids is not None and s.patient_id not in patient_ids and rtype != "Patient":
                    continue
                if patient_ids is not None and rtype == "Patient" and s.id not in patient_ids:
                    continue
                if decision.patient_only and s.patient_id != decision.patient_only:
                    continue
                n += 1
                yield s
            self._audit.record(who, "export", allowed=True, reason=decision.reason, entity=f"{label}:{rtype}",
                              detail={"resources": n})

    def records(self, who: Principal, *, purpose: str, types: set[str] | None = None,
                shard: tuple[int, int] | None = None) -> Iterator[tuple[Stored, list[Stored]]]:
        """Stream whole records (Patient + compartment) for population work such as case-finding screens.

        Checked once for the population and audited as one access with the purpose and the count.
        Direct care (e.g. case-finding, risk stratification) is unaffected by the National Data Opt-out; a
        secondary purpose (research, planning, ...) excludes opted-out people. A professional gets the people
        they have a relationship with, each entry filtered as on every other path.
        """
        decision = self.check(who, "search", "Patient", entity=f"population:{purpose}")
        secondary = purpose.split(":")[0] in SECONDARY_PURPOSES
        opted_out = self._facts.opted_out_ids() if secondary else set()
        professional = who.role != "system" and decision.activity != "*" and not decision.patient_only
        reach = self._facts.reach(who) if professional else None
        n = excluded = 0
        for patient, items in self._store.iter_records(types=types, shard=shard):
            if decision.patient_only and patient.id != decision.patient_only:
                continue
            if decision.patient_only and policy.is_proxy(who):  # a carer: only what the person shared
                items = [s for s in items if self.visible(who, s)]
            if patient.id in opted_out:
                excluded += 1
                continue
            if reach is not None:
                if patient.id not in reach:
                    continue
                items = [s for s in items if self.visible(who, s)]
            n += 1
            yield patient, items
        detail = {"records": n}
        if secondary:
            detail["opted_out_excluded"] = excluded
        self._audit.record(who, "search", allowed=True, reason=decision.reason, entity=f"population:{purpose}",
                          detail=detail)

    def deidentified_records(self, who: Principal, *, purpose: str, types: set[str] | None = None,
                             key: str | None = None, birth_precision: str = "year") -> Iterator[list[dict]]:
        """De-identified records for secondary use (analysts): opt-outs excluded, pseudonymised, no free text.

        The only path by which the analyst role reaches record-level data; identifiable records never leave.
        """
        from joinedup.governance import deid

        decision = self.check(who, "extract", None, entity=f"extract:{purpose}")
        opted_out = self._facts.opted_out_ids()
        n = excluded = 0
        pseudo = deid.Pseudonymiser(key)
        for patient, items in self._store.iter_records(types=types):
            if patient.id in opted_out:
                excluded += 1
                continue
            n += 1
            yield [deid.deidentify(s.content, pseudo, birth_precision=birth_precision) for s in [patient, *items]]
        self._audit.record(who, "extract", allowed=True, reason=decision.reason, entity=f"extract:{purpose}",
                          detail={"records": n, "opted_out_excluded": excluded})

    # -- published figures and the partnership board's self-assessment (system/) ---------------------------------
    def published_figures(self, who: Principal, *, purpose: str, measure: Callable[..., dict[str, Any]],
                          types: set[str] | None = None, directory_types: Iterable[str] = (),
                          action: str = "assess", history_types: Iterable[str] = (),
                          history_since: str | None = None, last_writes: bool = False) -> dict[str, Any]:
        """Aggregate figures over the whole population, computed inside the gate so that only numbers leave: for a
        partnership board (`action` "assess": the `assess-integration` activity) or an analyst ("extract": the
        `pseudonymised-analytics` activity of de-identified extracts - figures such as waits in days need the dates
        an extract cuts to the month). `measure(records, directory)` gets every record (Patient + compartment, only
        `types`) of people who have not opted out (planning is a secondary use) and the current directory entries
        of `directory_types`, and must return figures only - nested mappings whose values are numbers, booleans or
        None (checked: no identifier, name or text can leave). With `history_types` it also gets `history=`: every
        stored version of those types written since `history_since` (dicts with rtype, id, version, content,
        last_updated, patient_id), opted-out people's excluded - how work changed hands over time; with
        `last_writes` it gets `last_writes=`: each source's latest write to the store ({"Organization/x": instant}).
        Audited as one access with the purpose and the number of records; the caller suppresses small numbers
        before publishing."""
        if action not in ("assess", "extract"):
            raise ValueError(f"figures are published for 'assess' or 'extract', not {action!r}")
        decision = self.check(who, action, None, entity=f"figures:{purpose}"[:200])
        opted_out = self._facts.opted_out_ids()
        counted = {"records": 0, "opted_out_excluded": 0}

        def records() -> Iterator[tuple[Stored, list[Stored]]]:
            for patient, items in self._store.iter_records(types=types):
                if patient.id in opted_out:
                    counted["opted_out_excluded"] += 1
                    continue
                counted["records"] += 1
                yield patient, items

        directory = {t: list(self._store.iter_type(t)) for t in directory_types}
        extra: dict[str, Any] = {}
        if history_types:
            extra["history"] = (row for row in self._store.iter_versions(history_types, since=history_since)
                                if row["patient_id"] not in opted_out)
        if last_writes:
            extra["last_writes"] = self._store.last_write_by_source()
        result = measure(records(), directory, **extra)
        _check_figures(result)
        self._audit.record(who, action, allowed=True, reason=decision.reason, entity=f"figures:{purpose}"[:200],
                           detail=dict(counted))
        return result

    def published_names(self, who: Principal, types: Iterable[str], *, purpose: str,
                        action: str = "assess") -> dict[str, str]:
        """The names of directory entries ({"HealthcareService/x": name}) for labelling published figures: public
        directory content (organisations, services), for whoever may see the figures (`assess` or `extract`),
        although those roles do not read the directory itself. Any other type is refused (ValueError)."""
        if action not in ("assess", "extract"):
            raise ValueError(f"names are published for 'assess' or 'extract', not {action!r}")
        types = tuple(types)
        for t in types:
            if policy.type_rule(t)["group"] != DIRECTORY_GROUP:
                raise ValueError(f"{t} is not directory content: its names are not published")
        decision = self.check(who, action, None, entity=f"names:{purpose}"[:200])
        out = {f"{t}/{s.id}": str(s.content.get("name") or s.id) for t in types for s in self._store.iter_type(t)}
        self._audit.record(who, action, allowed=True, reason=decision.reason, entity=f"names:{purpose}"[:200],
                           detail={"names": len(out)})
        return out

    def save_precomputed(self, who: Principal, key: str, content: dict[str, Any], *, purpose: str,
                         seconds: float | None = None) -> str:
        """Keep published figures precomputed for a dashboard (`joinedup population precompute`): only the
        integration account writes them, and only figures it has already published (computed inside
        `published_figures` and suppressed by the caller). Returns the time they were computed."""
        if not policy.has_activity(who, "bulk-load"):
            raise self.refuse(who, "Only the integration account precomputes published figures.", action="create",
                              entity=f"precomputed:{key}"[:200])
        t = schema.published_figures
        now = _now_iso()
        row = {"key": key[:120], "purpose": purpose[:120], "computed_at": now, "computed_by": who.name[:128],
               "seconds": seconds, "content": content}
        with self._store.writing() as conn:
            conn.execute(t.delete().where(t.c.key == row["key"]))
            conn.execute(t.insert().values(**row))
            self._audit.record(who, "create", allowed=True, reason="integration account",
                               entity=f"precomputed:{key}"[:200], detail={"purpose": purpose}, conn=conn)
        self._audit.committed()
        return now

    def precomputed(self, who: Principal, key: str) -> dict[str, Any] | None:
        """Published (already suppressed) figures precomputed for a dashboard, with when and how long they took:
        {"content", "computed_at", "computed_by", "seconds", "purpose"} or None when none were computed. For the
        roles that see published figures (the partnership board, analysts) and clinicians (their dashboard, from
        which they go on to their own case-finding lists); refused to everyone else. Audited."""
        entity = f"precomputed:{key}"[:200]
        if not any(policy.has_activity(who, a) for a in PRECOMPUTED_READERS):
            raise self.refuse(who, "Population dashboards show published figures to the partnership board, analysts "
                                   "and clinicians; this role sees none.", action="search", entity=entity)
        t = schema.published_figures
        with self._store.reading() as conn:
            row = conn.execute(sa.select(t).where(t.c.key == key)).mappings().first()
        self._audit.record(who, "search", allowed=True, reason=f"role '{who.role}' may see published figures",
                           entity=entity, detail={"found": row is not None})
        if row is None:
            return None
        content = row["content"]
        if not isinstance(content, dict):
            import json

            content = json.loads(content)
        return {"content": content, "computed_at": row["computed_at"], "computed_by": row["computed_by"],
                "seconds": row["seconds"], "purpose": row["purpose"]}

    def assessment_rounds(self, who: Principal, *, questionnaire: str) -> list[Stored]:
        """The partnership's self-assessment rounds: QuestionnaireResponses to `questionnaire` about no person
        (the `assess-integration` activity), oldest first; audited."""
        decision = self.check(who, "assess", None, entity="assessment-rounds")
        plan = search.parse([("questionnaire", questionnaire), ("_count", "1000"), ("_sort", "authored")],
                            "QuestionnaireResponse", self._store.params)
        found = [s for s in search.execute(self._store, plan, None)[1]
                 if s.patient_id is None and _tagged(s.content, ASSESSMENT_ROUND)]
        self._audit.record(who, "search", allowed=True, reason=decision.reason, entity="assessment-rounds",
                           detail={"returned": len(found)})
        return found

    def save_assessment_round(self, who: Principal, response: dict, *, questionnaire: str) -> Written:
        """Create or update one self-assessment round (the `assess-integration` activity): only a
        QuestionnaireResponse to `questionnaire` that is about no person's record (its subject an Organization)."""
        rtype = validate_resource(response)
        rid = response.get("id")
        entity = f"QuestionnaireResponse/{rid}" if rid else "QuestionnaireResponse"
        decision = self.check(who, "assess", None, entity=entity)
        current = self._store.read(rtype, rid) if rid else None
        problem = None
        if rtype != "QuestionnaireResponse" or response.get("questionnaire") != questionnaire:
            problem = f"a self-assessment round is a QuestionnaireResponse to {questionnaire}"
        elif self._store.params.patient_of(response) is not None or (current is not None and current.patient_id):
            problem = "a self-assessment round is about the partnership, never about a person's record"
        elif current is not None and current.content.get("questionnaire") != questionnaire:
            problem = f"{entity} is not a self-assessment round"
        if problem:
            self._audit.record(who, "assess", allowed=False, reason=problem, entity=entity)
            raise FhirError(422, problem, code="business-rule")
        if current is not None and not _tagged(current.content, ASSESSMENT_ROUND):
            self._audit.record(who, "assess", allowed=False, reason="not a self-assessment round", entity=entity)
            raise FhirError(422, f"{entity} is not a self-assessment round", code="business-rule")
        resource = copy.deepcopy(response)
        if not rid:
            resource["id"] = new_id()
        meta = dict(resource.get("meta") or {})
        meta["tag"] = [t for t in meta.get("tag") or () if not _same_coding(t, ASSESSMENT_ROUND)] + [ASSESSMENT_ROUND]
        resource["meta"] = meta
        prepared = self._prepare(who, resource, current=current)
        with self._audit.writing() as conn:
            written = self._store.write_prepared(conn, [prepared], method="PUT" if current else "POST",
                                                 skip_unchanged=False)[0]
            self._audit.record(who, "update" if current else "create", allowed=True, reason=decision.reason,
                               entity=f"{rtype}/{written.id}", conn=conn)
        self._emit(who, [written])
        return written

    def access_log(self, who: Principal, patient_id: str | None = None, *, count: int = 200,
                   offset: int = 0) -> tuple[int, list[dict]]:
        """Who looked at a person's record (newest first): a patient their own, a privacy officer anyone's."""
        decision = self.check(who, "search", "AuditEvent", patient_id=patient_id or who.patient_id,
                              entity="access-log")
        if decision.patient_only:
            if patient_id and patient_id != decision.patient_only:
                raise FhirError(403, "Access refused: you can see who looked at your own record only.",
                                code="forbidden")
            patient_id = decision.patient_only
        if not patient_id:
            raise FhirError(400, "Name the person whose access log you want", code="required")
        total, events = search_events(self._store, patient_id=patient_id, count=count, offset=offset)
        self._audit.record(who, "search", allowed=True, reason=decision.reason, entity="access-log",
                          patient_id=patient_id)
        return total, [access_entry(ev) for ev in events]

    def identify(self, who: Principal, *, patient_ids: Iterable[str] = (), nhs_number: str | None = None
                 ) -> list[dict[str, Any]]:
        """Who people are (name, NHS number, birth date; nothing else of their record) for a reviewer of the audit
        trail: the privacy officer names the people in the review queue and finds a person's access log by NHS
        number without reading their record. Checked as a review and audited with the people it named."""
        decision = self.check(who, "review", None, entity="identify")
        found: list[Stored] = []
        if nhs_number:
            plan = search.parse([("identifier", f"{codes.NHS_NUMBER}|{nhs_number}"), ("_count", "20")], "Patient",
                                self._store.params)
            found += search.execute(self._store, plan, None)[1]
        ids = [i for i in dict.fromkeys(patient_ids) if i]
        if ids:
            found += self._store.read_many([("Patient", i) for i in ids])
        out = []
        for s in {x.id: x for x in found if not x.deleted}.values():
            p = s.content
            names = p.get("name") or []
            n = next((x for x in names if x.get("use") in (None, "official", "usual")), names[0] if names else {})
            name = n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
            nhs = next((i.get("value") for i in p.get("identifier") or [] if i.get("system") == codes.NHS_NUMBER),
                       None)
            out.append({"id": s.id, "name": name or "Name not recorded", "nhs_number": nhs,
                        "birth_date": p.get("birthDate"), "deceased": bool(p.get("deceasedDateTime")
                                                                          or p.get("deceasedBoolean"))})
        self._audit.record(who, "review", allowed=True, reason=f"{decision.reason}; identified people for review",
                          entity="identify", detail={"people": len(out)})
        return out

    def subject_access(self, who: Principal, patient_id: str) -> list[Stored]:
        """A person's whole record for their subject access request, produced by a reviewer of the audit trail (the
        privacy officer answers the request; UK GDPR Article 15). Checked as a review and audited against the person,
        so the person sees in their own access log that the report was made."""
        decision = self.check(who, "review", None, entity=f"subject-access:Patient/{patient_id}")
        entries = self._store.compartment(patient_id)
        self._audit.record(who, "subject-access", allowed=True, reason=f"{decision.reason}; subject access report",
                          entity=f"Patient/{patient_id}", patient_id=patient_id, detail={"entries": len(entries)})
        return entries

    def choices_in_force(self, who: Principal, *, limit: int = 1000) -> list[dict[str, Any]]:
        """People's sharing choices in force (objections to sharing, with everyone or one organisation, and the
        National Data Opt-out) for a reviewer of the audit trail; checked as a review and audited."""
        decision = self.check(who, "review", None, entity="choices-in-force")
        pc = schema.patient_choice
        with self._store.reading() as conn:
            rows = conn.execute(sa.select(pc.c.patient_id, pc.c.kind, pc.c.organization_id)
                                .order_by(pc.c.patient_id, pc.c.kind).limit(limit)).all()
        orgs = {s.id: s.content.get("name") for s in self._store.read_many(
            [("Organization", o) for o in sorted({r[2] for r in rows if r[2]})])}
        self._audit.record(who, "review", allowed=True, reason=decision.reason, entity="choices-in-force",
                          detail={"listed": len(rows)})
        return [{"patient_id": r[0], "kind": r[1], "organization_id": r[2], "organisation": orgs.get(r[2] or "")}
                for r in rows]

    def types_present(self, who: Principal) -> list[str]:
        self.check(who, "export", None, entity="types")
        return self._store.types_present()

    # -- HL7 v2 feeds (interop/hl7): receipts, one transaction per message, dead letters ------------------------
    @contextmanager
    def answering(self, *, defer: bool = False) -> Iterator[None]:
        """Like an HTTP response (AuditDurabilityMiddleware): the audit events recorded inside - e.g. the reads and
        writes behind one HL7 message - are committed together when it ends, before the caller answers (the ACK).
        With `defer`, the events recorded outside a write transaction are kept for the next one inside the block
        (`apply_messages`, `deliver_inbox_batch`) to commit with its writes; what none took is committed at the
        end as without it."""
        from joinedup.governance.audit import _Scope, _scope

        holder = _Scope(defer=defer)
        token = _scope.set(holder)
        try:
            yield
        finally:
            holder.open = False
            _scope.reset(token)
            holder.settle_deferred()
            for writer, ticket in list(holder.pending.items()):
                writer.wait(ticket)

    def message_receipt(self, who: Principal, facility: str, control_id: str) -> dict | None:
        """The receipt of an HL7 message already applied from this facility with this control id (None if none)."""
        self.check(who, "import", None, entity=f"hl7:{facility}")
        m = schema.hl7_message
        with self._store.reading() as conn:
            row = conn.execute(sa.select(m).where(m.c.facility == facility, m.c.control_id == control_id)
                               ).mappings().first()
        return dict(row) if row else None

    def apply_message(self, who: Principal, bundle: dict, *, receipt: dict,
                      unlink: Iterable[tuple[str, str]] = ()) -> dict:
        """Apply one feed message's writes (a transaction Bundle) with its receipt row in ONE database transaction:
        all or nothing, and a second message with the same (facility, control id) fails on the receipt's key and
        keeps nothing. `unlink` removes the integration-account links between pairs of records (an unmerge)."""
        label = f"hl7:{receipt['facility']}:{receipt['control_id']}"
        self.check(who, "import", None, entity=label[:255])
        unlink = [tuple(p) for p in unlink]

        def first(conn) -> None:
            conn.execute(schema.hl7_message.insert().values(**receipt))

        def within(conn) -> bool:
            changed = False
            pl = schema.patient_link
            for a, b in unlink:
                n = conn.execute(pl.delete().where(pl.c.basis == "integration", sa.or_(
                    sa.and_(pl.c.patient_id == a, pl.c.other_id == b),
                    sa.and_(pl.c.patient_id == b, pl.c.other_id == a)))).rowcount or 0
                if n:
                    changed = True
                    self._facts._bump(conn)
                for pid, other in ((a, b), (b, a)):
                    self._audit.record(who, "unlink", allowed=True, reason=f"records unmerged ({label})",
                                      entity=f"Patient/{other}", patient_id=pid, conn=conn)
            return changed

        return self._transaction(who, bundle, "", within=within, first=first)

    def apply_messages(self, items: list[tuple], *, also: Callable[[Any], None] | None = None
                       ) -> list[BaseException | None]:
        """Apply several feed messages - (account, transaction Bundle, receipt[, then]) each, as `apply_message` -
        in ONE database transaction, each message in its own savepoint: a message that fails (its receipt's key
        already taken, a refused resource, a database error) is rolled back alone and the others are kept. `then`
        (conn) runs in the message's savepoint after its writes (e.g. its own audit event: kept only if the message
        is). The audit events a deferring `answering` scope holds (the reads that planned the messages) are
        appended in the same transaction. Returns, per message, None (applied) or the exception that rolled it
        back. The caller keeps messages that write the same resources out of one batch (each message's writes are
        checked against what was committed before it). `also(conn)` runs after the messages in a savepoint of its
        own (the inbox items of the batch before: `platform.deliver_inbox_batch(conn=...)`); if it fails it is
        rolled back alone and logged, and its owner finds it unfinished."""
        for who, _bundle, receipt, *_then in items:
            self.check(who, "import", None, entity=f"hl7:{receipt['facility']}:{receipt['control_id']}"[:255])
        results: list[BaseException | None] = []
        # each message planned (validated, checked, prepared) before the write lock is taken: the lock is held only
        # for the writes; a message whose entries changed meanwhile is planned again inside it
        plans: list[_Planned | BaseException] = []
        for who, bundle, _receipt, *_then in items:
            try:
                plans.append(self._plan(who, bundle))
            except Exception as exc:  # noqa: BLE001 - this message only: handed back to the caller
                plans.append(exc)
        with self._audit.writing() as conn:  # the deferred reads first, then the messages; checkpointed on commit
            batch = _MessageBatch(conn, self._audit, self._store)
            for (who, bundle, receipt, *then), planned in zip(items, plans):
                if isinstance(planned, BaseException):
                    results.append(planned)
                    continue

                def first(c, receipt=receipt) -> None:
                    self._store.insert(c, schema.hl7_message, receipt)

                within = then[0] if then else None
                try:
                    try:
                        self._transaction(who, bundle, "", first=first, within=within, batch=batch,
                                          planned=planned)
                    except StaleWrite:  # another writer came first: planned again, in the transaction
                        self._transaction(who, bundle, "", first=first, within=within, batch=batch)
                    results.append(None)
                except Exception as exc:  # noqa: BLE001 - this message only: handed back to the caller
                    results.append(exc)
            if also is not None:
                try:
                    with batch.savepoint() as c:
                        also(c)
                except Exception:  # noqa: BLE001 - the messages are kept; `also`'s owner sees it unfinished
                    log.exception("writes made with a batch of messages failed; they are made on their own")
        if batch.rolled_back or any(changed for _w, changed, _r, _c in batch.after):
            self._facts.invalidate()
        for who, _changed, requests, committed in batch.after:
            self._audit_link_requests(who, requests)
            self._emit(who, committed)
        return results

    def hold_message(self, who: Principal, *, raw: str, reason: str, ack_code: str, location: str | None = None,
                     facility: str | None = None, control_id: str | None = None, trigger: str | None = None,
                     channel: str | None = None) -> str:
        """Keep a message that could not be applied (the dead-letter store); the same text held again is not
        duplicated (its attempts are counted). Returns the dead letter's id."""
        import hashlib
        import uuid

        self.check(who, "import", None, entity=f"hl7:{facility or 'unknown'}")
        d = schema.hl7_dead_letter
        digest = hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()
        now = _now_iso()
        with self._store.writing() as conn:
            row = conn.execute(sa.select(d.c.id, d.c.attempts).where(d.c.raw_hash == digest, d.c.status == "held")
                               ).first()
            if row is not None:
                conn.execute(d.update().where(d.c.id == row[0]).values(
                    attempts=row[1] + 1, last_attempt=now, reason=reason[:4000], ack_code=ack_code,
                    location=location))
                held = row[0]
            else:
                held = uuid.uuid4().hex
                conn.execute(d.insert().values(
                    id=held, received=now, channel=(channel or "")[:255] or None, facility=facility and facility[:180],
                    control_id=control_id and control_id[:199], trigger=trigger and trigger[:16], ack_code=ack_code,
                    reason=reason[:4000], location=location and location[:64], raw=raw, raw_hash=digest,
                    status="held", attempts=1, last_attempt=now))
            self._audit.record(who, "hl7-hold", allowed=False, reason=reason[:1000], entity=f"hl7-dead-letter/{held}",
                              detail={"facility": facility, "control_id": control_id, "ack": ack_code}, conn=conn)
        self._audit.committed()
        return held

    def held_messages(self, who: Principal, *, status: str | None = "held", limit: int = 200) -> list[dict]:
        """Dead letters, oldest first (status 'held', 'replayed' or None for all); the raw text is included."""
        self.check(who, "import", None, entity="hl7-dead-letters")
        d = schema.hl7_dead_letter
        q = sa.select(d).order_by(d.c.received, d.c.id).limit(limit)
        if status:
            q = q.where(d.c.status == status)
        with self._store.reading() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        self.record(who, "hl7-dead-letters", allowed=True, reason="integration account", entity="hl7-dead-letters",
                    detail={"returned": len(rows)})
        return rows

    def held_message(self, who: Principal, held_id: str) -> dict | None:
        """One dead letter (None when there is no such id)."""
        self.check(who, "import", None, entity=f"hl7-dead-letter/{held_id}")
        d = schema.hl7_dead_letter
        with self._store.reading() as conn:
            row = conn.execute(sa.select(d).where(d.c.id == held_id)).mappings().first()
        return dict(row) if row else None

    def release_message(self, who: Principal, held_id: str, *, applied: bool, reason: str | None = None) -> None:
        """After a replay: mark the dead letter replayed (applied), or record the new reason it is still held."""
        self.check(who, "import", None, entity=f"hl7-dead-letter/{held_id}")
        d = schema.hl7_dead_letter
        now = _now_iso()
        with self._store.writing() as conn:
            values: dict[str, Any] = {"last_attempt": now, "attempts": d.c.attempts + 1}
            if applied:
                values["status"] = "replayed"
            elif reason:
                values["reason"] = reason[:4000]
            conn.execute(d.update().where(d.c.id == held_id).values(**values))
            self._audit.record(who, "hl7-replay", allowed=applied, reason=("applied" if applied else
                                                                         (reason or "still held"))[:1000],
                              entity=f"hl7-dead-letter/{held_id}", conn=conn)
        self._audit.committed()

    # -- helpers ---------------------------------------------------------------------------------
    def _check_write(self, who: Principal, action: str, resource: dict, *, current: Stored | None = None,
                     previous: Stored | None = None) -> policy.Decision:
        """Check a create or update (`current`: the live entry it replaces; `previous`: what the store holds at that
        id, a deleted entry's tombstone included)."""
        rtype = resource["resourceType"]
        patient = self._store.params.patient_of(resource)
        entity = f"{rtype}/{resource.get('id')}" if resource.get("id") else rtype
        current_patient = current.patient_id if current else None
        self._check_assessment_round(who, action, [resource, current.content if current else None], entity)
        if current is not None and is_choice(current):
            choice = self._check_choice_change(who, action, current, entity)
            if choice is not None:
                return choice
        if current is not None or previous is not None:
            self._check_label_change(who, action, current or previous, resource, entity)
        if rtype == "Patient" and current is None and who.role != "system":
            self._check_new_person_id(who, action, resource.get("id"), previous, entity)
        if rtype == "Consent" and who.role not in ("system", "patient"):
            self._check_private_choice(who, action, resource, entity)
            self._check_proxy_grant(who, action, resource, entity)
        if current is None and rtype == "Patient" and who.role not in ("system", "patient"):
            # registering a new person: the recording organisation becomes the holding organisation
            decision = self.check(who, "create", rtype, patient_id=None, entity=entity)
        else:
            decision = self.check(who, action if current is not None else "create", rtype,
                                  patient_id=patient, entity=entity,
                                  item=current if current_patient == patient else None)
        if current is not None and current_patient != patient:
            self.check(who, action, rtype, patient_id=current_patient, entity=entity, item=current)
        if decision.patient_only and patient != decision.patient_only:
            self._audit.record(who, action, allowed=False, reason="not this person's own record", entity=entity)
            raise FhirError(403, "Access refused: a patient account can only add to its own record.",
                            code="forbidden")
        return decision

    def _check_assessment_round(self, who: Principal, action: str, contents: list[dict | None], entity: str) -> None:
        """A partnership's self-assessment round (tagged ASSESSMENT_ROUND) is written only by `save_assessment_round`
        (the board's `assess-integration` activity) or the integration account, never by an ordinary FHIR write."""
        if who.role == "system" or not any(_tagged(c, ASSESSMENT_ROUND) for c in contents if c):
            return
        reason = "self-assessment rounds are changed only through the partnership board's self-assessment"
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity)
        raise FhirError(403, f"Access refused: {reason}.", code="forbidden")

    def _check_private_choice(self, who: Principal, action: str, resource: dict, entity: str) -> None:
        """Marking entries private is the person's choice (or the recording organisation's seal): a professional's
        Consent naming entries to keep private would hide another organisation's entries on the person's behalf."""
        from joinedup.governance.facts import choices_of

        if not choices_of({**resource, "status": "active"})[1]:
            return
        reason = ("only the person (or their proxy) can mark entries of their record private; an organisation can "
                  "seal its own entries")
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity,
                          patient_id=self._store.params.patient_of(resource))
        raise FhirError(403, f"Access refused: {reason}.", code="forbidden")

    def _check_proxy_grant(self, who: Principal, action: str, resource: dict, entity: str) -> None:
        """Giving a carer access to a record is the person's own choice: nobody else may write a grant (it would
        create reach for the carer's account)."""
        from joinedup.governance.facts import proxy_grant_of

        if proxy_grant_of({**resource, "status": "active"}, "-") is None:
            return
        reason = "only the person can give a carer or proxy access to their record"
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity,
                           patient_id=self._store.params.patient_of(resource))
        raise FhirError(403, f"Access refused: {reason}.", code="forbidden")

    def _check_new_person_id(self, who: Principal, action: str, rid: str | None, previous: Stored | None,
                             entity: str) -> None:
        """Registering a person at an id already in use here (a deleted record, or entries that name it) would hand
        the registering organisation whatever is filed under that id: only a fresh id may be registered."""
        if not rid:
            return
        if previous is None and not self._store.compartment_in_use(rid):
            return
        reason = "this id already names a person's record here (or did): register a new person with POST"
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity, patient_id=rid)
        raise FhirError(409, f"Patient/{rid}: {reason}, and the server assigns a new id.", code="conflict")

    def _check_delete(self, who: Principal, rtype: str, rid: str, current: Stored | None) -> policy.Decision:
        entity = f"{rtype}/{rid}"
        self._check_assessment_round(who, "delete", [current.content if current else None], entity)
        if current is not None and is_choice(current):
            choice = self._check_choice_change(who, "delete", current, entity)
            if choice is not None:
                return choice
        return self.check(who, "delete", rtype, patient_id=current.patient_id if current else None, entity=entity,
                          item=current)

    def _check_choice_change(self, who: Principal, action: str, current: Stored,
                             entity: str) -> policy.Decision | None:
        """A person's choice (objection, private entries, opt-out) is changed only by the person (or their proxy),
        the integration account, or a privacy officer stating a reason. Returns the privacy officer's decision, None
        to go on with the ordinary checks (the person, the integration account), or raises 403."""
        if who.role in ("system", "patient"):
            return None
        patient = current.patient_id
        if who.role == "privacy-officer":
            reason = (change_reason.get() or "").strip()
            if len(reason) < 10:
                self._audit.record(who, action, allowed=False, reason="a privacy officer changing a person's choice "
                                  "must state a reason", entity=entity, patient_id=patient)
                raise FhirError(403, "Access refused: a privacy officer may change a person's choice about sharing "
                                     "only with a stated reason: send it in the X-JoinedUp-Reason header (at least "
                                     "10 characters). The change is recorded in the privacy review queue.",
                                code="forbidden")
            return policy.Decision(True, f"privacy officer changing the person's choice on their behalf: {reason}"[:900],
                                   CHOICE_CHANGE)
        reason = ("this is the person's own choice about sharing their record; only the person, their recorded proxy "
                  "or a privacy officer stating a reason can change or withdraw it")
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity, patient_id=patient)
        raise FhirError(403, f"Access refused: {reason}. Ask the person, or the privacy officer.", code="forbidden")

    def _check_label_change(self, who: Principal, action: str, current: Stored, resource: dict,
                            entity: str) -> None:
        """Only the organisation that recorded an entry may seal it or mark it private."""
        from joinedup.governance.facts import item_label

        new = item_label(resource)
        if not new or (not current.deleted and new == item_label(current.content)) or who.role == "system":
            return
        if who.source and current.source == who.source:
            return
        reason = "only the organisation that recorded this entry can seal it or mark it private"
        self._audit.record(who, action, allowed=False, reason=reason, entity=entity, patient_id=current.patient_id)
        raise FhirError(403, f"Access refused: {reason}. A person can ask for an entry to be kept private from their "
                             "own record page.", code="forbidden")

    def _after_choice_change(self, who: Principal, decision: policy.Decision, entity: str,
                             patient_id: str | None) -> None:
        """A privacy officer's change to a person's choice goes in the privacy review queue."""
        if decision.activity != CHOICE_CHANGE or not patient_id:
            return
        import uuid

        pr = schema.privacy_review
        with self._store.writing() as conn:
            conn.execute(pr.insert().values(
                id=uuid.uuid4().hex, kind="choice-change", patient_id=patient_id, entity=entity,
                requested_by=who.name, requested_role=who.role, requested_org=who.organization_id,
                requested_at=_now_iso(), reason=(change_reason.get() or "").strip()[:2000], status="recorded"))

    def propose_link(self, who: Principal, patient_id: str, other_id: str, *, confirm: bool, reason: str) -> str:
        """A record-linkage proposal that two records are one person's, made by the integration account.

        confirm=True records a confirmed link (basis 'linkage') and audits it on both records; confirm=False queues a
        link request for the privacy officer, which grants nothing until approved. A pair already linked, waiting
        for review or refused before is left as it is: a refused pair is never proposed again. Returns 'confirmed',
        'queued', 'linked', 'pending' or 'rejected'."""
        from joinedup.governance import facts as facts_mod

        if who.role != "system":
            raise self.refuse(who, "Only the integration account proposes record linkage", action="update",
                              entity=f"Patient/{patient_id}")
        decision = self.check(who, "update", "Patient", entity=f"Patient/{patient_id}")
        with self._store.writing() as conn:
            state = facts_mod.link_state(conn, patient_id, other_id)
            if state is not None:
                return state
            if confirm:
                facts_mod._confirm_link(conn, patient_id, other_id, basis="linkage", by=who.name)
                self._facts._bump(conn)
            else:
                row = facts_mod.request_link(conn, who, patient_id, other_id, reason=reason)
        if not confirm:
            self._audit_link_requests(who, [row])
            return "queued"
        self._facts.invalidate()
        for x, y in ((patient_id, other_id), (other_id, patient_id)):
            self._audit.record(who, "link", allowed=True, reason=f"{decision.reason}; {reason}"[:1000],
                               entity=f"Patient/{y}", patient_id=x)
        return "confirmed"

    def _audit_link_requests(self, who: Principal, requests: list[dict]) -> None:
        """A link attempt grants nothing: it is audited on both records and waits for the privacy officer."""
        for req in requests:
            for pid, other in ((req["patient_id"], req["other_patient_id"]),
                               (req["other_patient_id"], req["patient_id"])):
                self._audit.record(who, "link-request", allowed=False,
                                  reason="link to another record of the same person requested; it grants nothing "
                                         "until a privacy officer approves it", entity=f"Patient/{other}",
                                  patient_id=pid, detail={"request": req["id"]})

    def _prepare(self, who: Principal, resource: dict, *, current: Stored | None = None) -> Prepared:
        source = who.source
        if who.role == "patient" and who.patient_id:
            # what a person adds to their own record says so; it can never pass for an organisation's entry
            source = f"Patient/{who.patient_id}"
        if who.role != "system":
            meta = dict(resource.get("meta") or {})
            extensions = [e for e in meta.get("extension") or () if not (isinstance(e, dict)
                                                                         and e.get("url") == EDITED_BY_URL)]
            if current is not None:
                # editing never changes who recorded the entry; the editor is recorded beside it
                source = current.source
                extensions.append(_edited_by(who))
            if source:
                meta["source"] = source
            else:
                meta.pop("source", None)
            if extensions:
                meta["extension"] = extensions
            else:
                meta.pop("extension", None)
            resource["meta"] = meta
        return prepare(resource, source=source, validate=False, params=self._store.params)

    def _conditional_match(self, who: Principal, rtype: str, query: str) -> Stored | None:
        params = split_url(f"{rtype}?{query.lstrip('?')}")[2]
        if not params:
            raise FhirError(400, "If-None-Exist needs search parameters", code="value")
        result = self.search(who, rtype, params, strict=True, query_text=f"{rtype}?{query}")
        if result.total is not None and result.total > 1 or len(result.matches) > 1:
            raise FhirError(412, f"If-None-Exist '{query}' matches more than one {rtype}", code="duplicate")
        return result.matches[0] if result.matches else None

    def _resolve_conditional(self, who: Principal, ref: str, *, strict: bool) -> str | None:
        rtype, _, query = ref.partition("?")
        if not is_resource_type(rtype):
            return None
        params = split_url(f"{rtype}?{query}")[2]
        try:
            result = self.search(who, rtype, params, strict=False, query_text=ref)
        except FhirError:
            if strict:
                raise
            return None
        if len(result.matches) == 1 and not result.has_more:
            return f"{rtype}/{result.matches[0].id}"
        if strict:
            n = "no" if not result.matches else "more than one"
            raise FhirError(412, f"Conditional reference '{ref}' matches {n} {rtype}", code="not-found")
        return None

    def _plan(self, who: Principal, bundle: dict, *, conn=None) -> _Planned:
        """Steps 1 and 2 of a transaction: ids, conditional references, validation, the policy's word on every
        write, and each resource prepared (canonical JSON, hash, index rows). With `conn` (an open write transaction)
        the entries replaced are read in it; without, on a reading connection, before the transaction begins (the
        writes then check the versions read: `_transaction(planned=...)`)."""
        entries = bundle.get("entry") or []
        order = sorted(range(len(entries)), key=lambda i: METHOD_ORDER[entries[i]["request"]["method"]])
        mapping: dict[str, str] = {}
        plans: dict[int, dict[str, Any]] = {}
        read: dict[tuple[str, str], int | None] = {}  # the version of every entry replaced or deleted, as read
        # 1. assign ids, resolve conditional creates and updates
        for i in order:
            e = entries[i]
            req = e["request"]
            method = req["method"]
            rtype, rid, query = split_url(req["url"])
            _known_type(rtype, where=f"Bundle.entry[{i}].request.url")
            full_url = e.get("fullUrl")
            if method == "POST":
                match = self._conditional_match(who, rtype, req["ifNoneExist"]) if req.get("ifNoneExist") else None
                target = match.id if match else new_id()
                plans[i] = {"kind": "exists" if match else "create", "rtype": rtype, "id": target, "match": match}
            elif method == "PUT":
                if rid is None:
                    if not query:
                        raise FhirError(400, f"Bundle.entry[{i}]: PUT needs Type/id or a conditional URL",
                                        expression=[f"Bundle.entry[{i}].request.url"])
                    result = self.search(who, rtype, query, strict=True, query_text=req["url"])
                    if len(result.matches) > 1:
                        raise FhirError(412, f"Bundle.entry[{i}]: conditional update matches several {rtype}",
                                        code="duplicate")
                    rid = result.matches[0].id if result.matches else new_id()
                plans[i] = {"kind": "put", "rtype": rtype, "id": rid, "if_match": req.get("ifMatch")}
            elif method == "DELETE":
                if rid is None:
                    raise FhirError(400, f"Bundle.entry[{i}]: conditional delete is not supported",
                                    code="not-supported")
                plans[i] = {"kind": "delete", "rtype": rtype, "id": rid}
            elif method == "PATCH":
                raise FhirError(400, f"Bundle.entry[{i}]: PATCH is not supported", code="not-supported")
            else:
                plans[i] = {"kind": "get", "url": req["url"]}
            if full_url and plans[i].get("id") and plans[i]["kind"] != "get":
                mapping[full_url] = f"{rtype}/{plans[i]['id']}"
        # 2. rewrite references and resolve conditional references; validate; ask the policy
        prepared: dict[int, Prepared] = {}
        for i in order:
            plan = plans[i]
            if plan["kind"] not in ("create", "put"):
                if plan["kind"] == "delete":
                    cur = self._store.read(plan["rtype"], plan["id"], conn)
                    read[(plan["rtype"], plan["id"])] = cur.version if cur is not None else None
                    if cur is None and who.role != "system":
                        self._refuse_if_hidden(who, "delete", plan["rtype"], f"{plan['rtype']}/{plan['id']}")
                    self._check_delete(who, plan["rtype"], plan["id"], cur if cur and not cur.deleted else None)
                continue
            resource = _copy_json(entries[i]["resource"])
            if mapping:
                rewrite_references(resource, mapping)
            cond = {ref: self._resolve_conditional(who, ref, strict=True)
                    for ref in conditional_references(resource)}
            if cond:
                rewrite_references(resource, cond)
            resource["id"] = plan["id"]
            try:
                validate_resource(resource, plan["rtype"])
            except FhirError as exc:
                raise _entry_error(exc, i) from None
            current = self._store.read(plan["rtype"], plan["id"], conn) if plan["kind"] == "put" else None
            if plan["kind"] == "put":
                read[(plan["rtype"], plan["id"])] = current.version if current is not None else None
            live = current if current and not current.deleted else None
            self._check_write(who, "update" if plan["kind"] == "put" else "create", resource, current=live,
                              previous=current)
            prepared[i] = self._prepare(who, resource, current=current)
        return _Planned(entries, order, plans, prepared, read)

    def _transaction(self, who: Principal, bundle: dict, base_url: str, *, within=None, first=None,
                     batch: _MessageBatch | None = None, planned: _Planned | None = None) -> dict:
        """`within(conn)`, when given, runs inside the same database transaction after the writes, and `first(conn)`
        before them (e.g. an HL7 message's receipt, so that two copies of one message applied at once by two
        processes meet on the receipt's key before either writes anything): if either raises, nothing of the
        transaction is kept. With `batch` (apply_messages) the writes go in a savepoint of the batch's transaction and
        what follows a commit waits for the batch's. `planned`: steps 1 and 2 done already, before the transaction
        began (`_plan`): the writes check that every entry they replace or delete is still the version the plan
        read, and raise `StaleWrite` (nothing written) when one is not."""
        expected = planned.read if planned is not None else None
        if planned is None:
            planned = self._plan(who, bundle, conn=batch.conn if batch is not None else None)
        entries, order, plans, prepared = planned.entries, planned.order, planned.plans, planned.prepared
        # 3. write everything in one database transaction
        responses: dict[int, dict] = {}
        changed = False
        committed: list[Written] = []
        requests: list[dict] = []
        with self._store.writing() if batch is None else batch.savepoint() as conn:
            if first is not None:
                first(conn)
            for plan in (plans[i] for i in order if expected and plans[i]["kind"] == "delete"):
                # (the entries replaced are checked by write_prepared, which reads them anyway)
                now = self._store.current_versions(conn, plan["rtype"], [plan["id"]], lock=True).get(plan["id"])
                if (now[0] if now else None) != expected.get((plan["rtype"], plan["id"])):
                    raise StaleWrite(f"{plan['rtype']}/{plan['id']} changed since the transaction was planned")
            for i in order:
                plan = plans[i]
                if plan["kind"] == "delete":
                    gone_w = self._store.delete(conn, plan["rtype"], plan["id"])
                    if gone_w:
                        committed.append(gone_w)
                        changed = self._facts.on_delete(conn, plan["rtype"], plan["id"]) or changed
                    responses[i] = {"status": "204 No Content"}
                elif plan["kind"] == "exists":
                    m = plan["match"]
                    responses[i] = _entry_response("200 OK", m.rtype, m.id, m.version, m.last_updated, base_url)
                elif plan["kind"] in ("create", "put"):
                    if plan.get("if_match"):
                        _check_if_match(self._store, conn, plan["rtype"], plan["id"], plan["if_match"])
                    w = self._store.write_prepared(conn, [prepared[i]], method="POST" if plan["kind"] == "create"
                                                  else "PUT", skip_unchanged=False,
                                                  expected=expected if plan["kind"] == "put" else None)[0]
                    changed = self._facts.on_write(conn, [prepared[i]], [w.status], who=who,
                                                  link_requests=requests) or changed
                    committed.append(w)
                    status = "201 Created" if w.status == "created" else "200 OK"
                    responses[i] = _entry_response(status, w.rtype, w.id, w.version, w.last_updated, base_url)
                    responses[i]["resource"] = w.resource
            for i in order:
                plan = plans[i]
                if plan["kind"] in ("create", "put", "delete"):
                    p = prepared.get(i)
                    self._audit.record(who, {"create": "create", "put": "update", "delete": "delete"}[plan["kind"]],
                                      allowed=True, reason="transaction", entity=f"{plan['rtype']}/{plan['id']}",
                                      patient_id=p.patient_id if p else None, conn=conn)
            if within is not None:
                changed = bool(within(conn)) or changed
        if batch is not None:
            batch.after.append((who, changed, requests, committed))
        else:
            self._audit.committed()
            if changed:
                self._facts.invalidate()
            self._audit_link_requests(who, requests)
            self._emit(who, committed)
        for i in order:
            plan = plans[i]
            if plan["kind"] == "get":
                responses[i] = self._bundle_get(who, plan["url"], base_url)
        out_entries = []
        for i in range(len(entries)):
            resp = responses[i]
            entry: dict[str, Any] = {}
            if "resource" in resp:
                entry["resource"] = resp.pop("resource")
            entry["response"] = resp
            out_entries.append(entry)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out_entries}

    def _batch(self, who: Principal, bundle: dict, base_url: str) -> dict:
        out = []
        for _i, e in enumerate(bundle.get("entry") or []):
            single = {"resourceType": "Bundle", "type": "transaction", "entry": [e]}
            try:
                if e["request"]["method"] == "GET":
                    resp = self._bundle_get(who, e["request"]["url"], base_url)
                    entry = {"response": resp}
                    if "resource" in resp:
                        entry["resource"] = resp.pop("resource")
                    out.append(entry)
                    continue
                result = self._transaction(who, single, base_url)
                out.append(result["entry"][0])
            except FhirError as exc:
                out.append({"response": {"status": f"{exc.status} {_reason(exc.status)}",
                                         "outcome": exc.outcome()}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}

    def _bundle_get(self, who: Principal, url: str, base_url: str) -> dict:
        try:
            rtype, rid, query = split_url(url)
            _known_type(rtype)
            if rid:
                s = self.read(who, rtype, rid)
                resp = _entry_response("200 OK", rtype, rid, s.version, s.last_updated, base_url)
                resp["resource"] = s.content
                return resp
            result = self.search(who, rtype, query, query_text=url)
            entries = [{"fullUrl": f"{base_url}/{s.rtype}/{s.id}", "resource": s.content,
                        "search": {"mode": "match"}} for s in result.matches]
            return {"status": "200 OK", "resource": {"resourceType": "Bundle", "type": "searchset",
                                                     "total": result.total, "entry": entries}}
        except FhirError as exc:
            return {"status": f"{exc.status} {_reason(exc.status)}", "outcome": exc.outcome()}

    def _read_audit(self, who: Principal, rid: str) -> Stored:
        decision = self.check(who, "read", "AuditEvent", entity=f"AuditEvent/{rid}")
        a = schema.audit_event
        with self._store.reading() as conn:
            row = conn.execute(sa.select(a.c.content, a.c.patient_id, a.c.recorded).where(a.c.id == rid)).first()
        if row is None:
            raise not_found("AuditEvent", rid)
        if decision.patient_only and row[1] != decision.patient_only:
            raise FhirError(403, "Access refused: this audit entry is not about your record.", code="forbidden")
        import orjson

        self._audit.record(who, "read", allowed=True, reason=decision.reason, entity=f"AuditEvent/{rid}")
        return Stored("AuditEvent", rid, 1, False, orjson.loads(row[0]), row[2])

    def _search_audit(self, who: Principal, params: list[tuple[str, str]], query_text: str | None) -> SearchResult:
        q = {k: v for k, v in params}
        patient = q.get("patient") or q.get("entity")
        if patient and "/" in patient:
            patient = patient.split("/")[-1]
        decision = self.check(who, "search", "AuditEvent", patient_id=patient, query=query_text)
        if decision.patient_only:
            if patient and patient != decision.patient_only:
                raise FhirError(403, "Access refused: you can see who looked at your own record only.",
                                code="forbidden")
            patient = decision.patient_only
        plan = search.parse([(k, v) for k, v in params if k in ("_count", "_offset")], "AuditEvent",
                            self._store.params)
        since = until = None
        for k, v in params:
            if k == "date":
                prefix, value = (v[:2], v[2:]) if v[:2] in ("ge", "gt", "le", "lt") else ("eq", v)
                if prefix in ("ge", "gt"):
                    since = value
                elif prefix in ("le", "lt"):
                    until = value
        total, events = search_events(self._store, patient_id=patient, user_name=q.get("agent-name") or q.get("agent"),
                                      action=q.get("subtype"), outcome={"0": "allowed", "8": "refused"}.get(
                                          q.get("outcome", ""), None), since=since, until=until,
                                      count=plan.count, offset=plan.offset)
        self._audit.record(who, "search", allowed=True, reason=decision.reason, entity="AuditEvent",
                          patient_id=patient, query=query_text)
        matches = [Stored("AuditEvent", ev["id"], 1, False, ev, ev.get("recorded", "")) for ev in events]
        return SearchResult(total, matches, [], plan.offset + len(matches) < total, plan)


# who may read precomputed published figures (Gate.precomputed): one of these activities
PRECOMPUTED_READERS = ("assess-integration", "pseudonymised-analytics", "view-clinical-record")


def refusal(who: Principal, decision: policy.Decision) -> FhirError:
    """The 403 for a refused decision. A refusal for want of a relationship reads the same whether or not the entry
    exists, so that it never tells anyone outside a person's care what that person's record holds."""
    reason = decision.reason
    if reason in (policy.NO_RELATIONSHIP, policy.OWN_RECORD_ONLY):
        reason += ", or there is no such entry"
    return FhirError(403, f"Access refused: {reason}. {how_to_get_access(who, decision)}", code="forbidden")


def how_to_get_access(who: Principal, decision: policy.Decision | None = None) -> str:
    """Plain advice shown with a refusal."""
    reason = decision.reason if decision else ""
    if who.role == "patient":
        return "Ask your GP practice if you think you should be able to see this."
    if who.role == "analyst":
        return "Analysts work with de-identified extracts and published aggregates, not individual records."
    if who.role == "privacy-officer":
        return "Privacy officers review the audit trail and break-glass use (GET /api/privacy/reviews)."
    if "sealed" in reason or "private" in reason:
        return "Ask the organisation that recorded it; sealed and private entries are not shared, even in an emergency."
    if "objected" in reason:
        return ("The person's choice is honoured on every path; ask the person, or the organisation that recorded "
                "the entry, if you need it for their care.")
    if "emergency-access" in policy.activities_of(who.role):
        return ("If you are caring for this person, ask to be added to their care team or send a referral; in an "
                "emergency use break-glass (POST /api/break-glass with patient, reason_category and reason): it "
                "is time-limited and reviewed by the privacy officer.")
    return "If you are caring for this person, ask to be added to their care team."


def access_entry(ev: dict) -> dict:
    """One line of an access log, from an AuditEvent."""
    agent = (ev.get("agent") or [{}])[0]
    sub = (ev.get("subtype") or [{}])[0].get("code")
    what = [e["what"]["reference"] for e in ev.get("entity") or () if e.get("what", {}).get("reference")]
    return {"when": ev.get("recorded"), "who": agent.get("who", {}).get("display"),
            "practitioner": agent.get("who", {}).get("reference"),
            "organisation": (agent.get("location") or {}).get("reference"),
            "role": ((agent.get("role") or [{}])[0]).get("text"), "action": sub,
            "outcome": "allowed" if ev.get("outcome") == "0" else "refused", "reason": ev.get("outcomeDesc"),
            "what": what}


CHOICE_CHANGE = "privacy-choice-change"


def is_choice(stored: Stored) -> bool:
    """Whether an entry is one of a person's choices in force (an objection, private entries, an opt-out)."""
    from joinedup.governance.facts import choices_of, proxy_grant_of

    if stored.rtype != "Consent" or not stored.content:
        return False
    choices, private = choices_of(stored.content)
    return bool(choices or private) or proxy_grant_of(stored.content, stored.patient_id or "-") is not None


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _edited_by(who: Principal) -> dict:
    parts: list[dict] = []
    if who.organization_id:
        parts.append({"url": "organization", "valueReference": {"reference": f"Organization/{who.organization_id}"}})
    if who.practitioner_id:
        parts.append({"url": "practitioner", "valueReference": {"reference": f"Practitioner/{who.practitioner_id}"}})
    if who.role == "patient" and who.patient_id:
        parts.append({"url": "patient", "valueReference": {"reference": f"Patient/{who.patient_id}"}})
    parts.append({"url": "user", "valueString": who.name})
    parts.append({"url": "edited", "valueInstant": _now_iso()})
    return {"url": EDITED_BY_URL, "extension": parts}


def _same_coding(c: Any, want: dict) -> bool:
    return isinstance(c, dict) and c.get("system") == want["system"] and c.get("code") == want["code"]


def _tagged(content: dict | None, tag: dict) -> bool:
    return any(_same_coding(t, tag) for t in ((content or {}).get("meta") or {}).get("tag") or ())


def _check_figures(value: Any, depth: int = 0) -> None:
    """Published figures are nested mappings of numbers (Gate.published_figures): nothing else may leave."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return
    if isinstance(value, dict) and depth < 4:
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > 80:
                raise ValueError("published figures are keyed by short names")
            _check_figures(v, depth + 1)
        return
    raise ValueError(f"published figures hold numbers only, not {type(value).__name__}")


def _known_type(rtype: str, where: str | None = None) -> None:
    if not is_resource_type(rtype):
        raise FhirError(404 if where is None else 400, f"Unknown resource type '{rtype}'", code="not-supported",
                        expression=[where] if where else None)


def _patient_filter(params: list[tuple[str, str]], rtype: str | None = None) -> str | None:
    keys = ("patient", "subject", "patient:Patient", "subject:Patient") + (("_id",) if rtype == "Patient" else ())
    for k, v in params:
        if k in keys and "," not in v:
            t, i = split_reference(v)
            return i if t in (None, "Patient") and i else (v if t is None and "/" not in v else None)
    return None


def _copy_json(node: Any) -> Any:
    """copy.deepcopy for a resource (dicts, lists and scalars: copied several times faster); anything else in it
    is handed to copy.deepcopy."""
    if isinstance(node, dict):
        return {k: v if v is None or isinstance(v, (str, bool, int, float)) else _copy_json(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [v if v is None or isinstance(v, (str, bool, int, float)) else _copy_json(v) for v in node]
    if node is None or isinstance(node, (str, bool, int, float)):
        return node
    return copy.deepcopy(node)


def _esc(x: str) -> str:
    """A token search value's part, its search syntax characters escaped (FHIR R4 search, "Escaping Search
    Parameters": backslash, comma, pipe and dollar)."""
    return x.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _collect_refs(node: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                t, i = split_reference(v)
                if t and i and t != "Patient":
                    out.append((t, i))
            elif isinstance(v, (dict, list)):
                _collect_refs(v, out)
    elif isinstance(node, list):
        for item in node:
            _collect_refs(item, out)


def _check_if_match(store: Store, conn, rtype: str, rid: str, if_match: str) -> None:
    want = if_match.strip()
    want = want.removeprefix("W/")
    want = want.strip('"')
    current = store.current_versions(conn, rtype, [rid], lock=True).get(rid)
    have = str(current[0]) if current and not current[2] else None
    if have != want:
        raise FhirError(412, f"{rtype}/{rid} is at version {have or 'none'}, not {want}: reload and try again",
                        code="conflict")


def _entry_response(status: str, rtype: str, rid: str, version: int, last_updated: str, base_url: str) -> dict:
    resp = {"status": status, "location": f"{rtype}/{rid}/_history/{version}", "etag": f'W/"{version}"'}
    if last_updated:
        resp["lastModified"] = last_updated if last_updated.endswith("Z") else last_updated + "Z"
    return resp


def _entry_error(exc: FhirError, i: int) -> FhirError:
    issues = [dict(issue, diagnostics=f"Bundle.entry[{i}]: {issue.get('diagnostics')}") for issue in exc.issues]
    return FhirError(exc.status, issues[0]["diagnostics"], issues=issues)


def _reason(status: int) -> str:
    return {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 409: "Conflict", 410: "Gone", 412: "Precondition Failed",
            422: "Unprocessable Entity"}.get(status, "Error")


_gates: dict[str, Gate] = {}


def get_gate(url: str | None = None) -> Gate:
    """The shared gate (store + audit writer) for a database URL."""
    from joinedup.config import get_settings
    from joinedup.store.repository import get_store

    settings = get_settings()
    url = url or settings.database_url
    gate = _gates.get(url)
    if gate is None:
        store = get_store(url)
        gate = _gates[url] = Gate(store, AuditWriter(store, settings.audit_flush_ms))
    return gate
