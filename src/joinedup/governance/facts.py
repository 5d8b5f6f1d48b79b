"""Access facts: who has a legitimate relationship with whom, what each person chose, which entries are sealed.

The facts are derived from FHIR resources as they are written (in the same database transaction) into small
tables, and cached per process so that a policy check is a dict lookup. Every change sets a new epoch token;
other processes see it change within `JOINEDUP_POLICY_REFRESH_MS` (default 200 ms). The writing process updates
its cache at once. When a change only added or removed care relationships (a feed's admissions and episodes), it is
kept as a step (`governance_epoch_step`: the token it set, the token before, whose reach it changed), and every
process - the writer at once, the others when they next look - follows the steps in place: it drops only the cached
reach of the practitioners and organisations those relationships name. Any other change (choices, sealed entries,
roles, NHS numbers, links), or steps no longer kept, makes the cache reload (see `AccessFacts._bump`, `_follow`).

How the facts are read from FHIR (see docs/governance.md):

* relationship — Patient.generalPractitioner (Organization = registered practice, Practitioner = named GP),
  Patient.managingOrganization and the organisation that recorded the Patient resource (meta.source);
  CareTeam (status active or absent, period not ended) participant.member / onBehalfOf and
  managingOrganization (a member given as a PractitionerRole reaches the user who is that role's practitioner,
  acting for its organisation when the user has one; active roles only); EpisodeOfCare (status active) managingOrganization and careManager; open referrals and
  advice requests: ServiceRequest (active) performer and requester, Task (open) owner and requester,
  CommunicationRequest (active) recipient and sender, Communication (preparation / in-progress) recipient and
  sender.
* objection — an active Consent with scope patient-privacy and a deny provision: no actor and no data = object
  to all sharing; actor Organization/X = object to sharing with X; data references = those entries private.
* National Data Opt-out — an active Consent whose policyRule has the code `national-data-opt-out` (system
  OPT_OUT_SYSTEM).
* sealed / private entries — meta.security code R (sealed by a clinician) or V (very restricted), or the
  JoinedUp tag PRIVATE_TAG (marked private by the person).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from joinedup import config
from joinedup.fhir import codes
from joinedup.fhir.nhs_number import NHS_NUMBER_SYSTEM
from joinedup.fhir.search_params import registry, split_reference
from joinedup.governance.policy import OBJECTION_EXEMPT
from joinedup.store import schema

if TYPE_CHECKING:
    from joinedup.governance.identity import Principal
    from joinedup.store.repository import Prepared

CONFIDENTIALITY = codes.V3_CONFIDENTIALITY
CONSENT_SCOPE = codes.CONSENT_SCOPE
OPT_OUT_SYSTEM = codes.DATA_SHARING
OPT_OUT_CODE = "national-data-opt-out"
PRIVATE_TAG_SYSTEM = codes.DATA_SHARING
PRIVATE_TAG_CODE = "private"
REGISTRATION_WORDS = ("registration", "regist")

# Resource types whose writes change relationships or choices (a PractitionerRole changes who a relationship
# naming that role reaches).
FACT_TYPES = {"Patient", "CareTeam", "EpisodeOfCare", "ServiceRequest", "Task", "CommunicationRequest",
              "Communication", "Consent", "PractitionerRole"}

KIND_TEXT = {
    "registered": "registered with your organisation",
    "named-gp": "you are their named GP",
    "holding": "your organisation holds their record",
    "care-team": "member of their care team",
    "episode": "open episode of care with your organisation",
    "referral": "open referral or advice request",
}


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _ref(node: Any) -> tuple[str | None, str | None]:
    if isinstance(node, dict) and isinstance(node.get("reference"), str):
        return split_reference(node["reference"])
    return None, None


def _ended(period: Any, now: str) -> str | None:
    """The period's end (for the table), or 'past' when it has already ended."""
    end = (period or {}).get("end") if isinstance(period, dict) else None
    if not isinstance(end, str) or not end:
        return None
    return "past" if end[:19] <= now else end[:19]


def item_label(resource: dict | None) -> str | None:
    """'sealed' or 'private' when the entry's own security labels or tags restrict it, else None."""
    if not resource:
        return None
    meta = resource.get("meta")
    if not meta:
        return None
    label = None
    for sec in meta.get("security") or ():
        code = sec.get("code") if isinstance(sec, dict) else None
        if code == "V":
            return "private"
        if code == "R":
            label = "sealed"
    for tag in meta.get("tag") or ():
        if isinstance(tag, dict) and tag.get("code") == PRIVATE_TAG_CODE and tag.get("system") == PRIVATE_TAG_SYSTEM:
            return "private"
    return label


def relationships_of(resource: dict, patient_id: str | None, now: str | None = None) -> list[tuple]:
    """(kind, practitioner_id, organization_id, ends, practitioner_role_id) rows a resource establishes for its
    patient."""
    rtype = resource.get("resourceType")
    now = now or _now_iso()
    rows: list[tuple] = []

    def add(kind: str, node: Any, ends: str | None = None) -> None:
        t, i = _ref(node)
        if not i:
            return
        if t == "Practitioner":
            rows.append((kind, i, None, ends, None))
        elif t == "Organization":
            rows.append((kind, None, i, ends, None))
        elif t == "PractitionerRole":
            rows.append((kind, None, None, ends, i))

    if not patient_id:
        return rows
    if rtype == "Patient":
        if resource.get("active") is False:
            return rows
        for gp in resource.get("generalPractitioner") or ():
            t, _ = _ref(gp)
            add("registered" if t == "Organization" else "named-gp", gp)
        add("holding", resource.get("managingOrganization"))
        src = (resource.get("meta") or {}).get("source")
        if isinstance(src, str) and src.startswith("Organization/"):
            add("holding", {"reference": src})
    elif rtype == "CareTeam":
        if resource.get("status") not in (None, "active"):
            return rows
        ends = _ended(resource.get("period"), now)
        if ends == "past":
            return rows
        for p in resource.get("participant") or ():
            pend = _ended(p.get("period"), now) if isinstance(p, dict) else None
            if pend == "past" or not isinstance(p, dict):
                continue
            add("care-team", p.get("member"), pend or ends)
            add("care-team", p.get("onBehalfOf"), pend or ends)
        for org in resource.get("managingOrganization") or ():
            add("care-team", org, ends)
    elif rtype == "EpisodeOfCare":
        if resource.get("status") != "active":
            return rows
        ends = _ended(resource.get("period"), now)
        if ends == "past":
            return rows
        kind = "episode"
        for t in resource.get("type") or ():
            words = " ".join([str(t.get("text") or "")] + [str(c.get("code") or "") + " " + str(c.get("display") or "")
                                                            for c in t.get("coding") or ()]).lower()
            if any(w in words for w in REGISTRATION_WORDS):
                kind = "registered"
        add(kind, resource.get("managingOrganization"), ends)
        add(kind, resource.get("careManager"), ends)
    elif rtype == "ServiceRequest":
        if resource.get("status") != "active":
            return rows
        for p in resource.get("performer") or ():
            add("referral", p)
        add("referral", resource.get("requester"))
    elif rtype == "Task":
        if resource.get("status") not in ("requested", "received", "accepted", "ready", "in-progress", "on-hold"):
            return rows
        add("referral", resource.get("owner"))
        add("referral", resource.get("requester"))
    elif rtype == "CommunicationRequest":
        if resource.get("status") != "active":
            return rows
        for r in resource.get("recipient") or ():
            add("referral", r)
        add("referral", resource.get("sender"))
    elif rtype == "Communication":
        if resource.get("status") not in ("preparation", "in-progress", "on-hold"):
            return rows
        for r in resource.get("recipient") or ():
            add("referral", r)
        add("referral", resource.get("sender"))
    return rows


def choices_of(resource: dict) -> tuple[list[tuple], list[tuple]]:
    """From a Consent: ([(kind, organization_id)] choices, [(res_type, res_id)] private entries)."""
    if resource.get("resourceType") != "Consent" or resource.get("status") != "active":
        return [], []
    choices: list[tuple] = []
    private: list[tuple] = []
    for rule in ([resource.get("policyRule")] if resource.get("policyRule") else []):
        for c in rule.get("coding") or ():
            if c.get("code") == OPT_OUT_CODE and c.get("system") in (OPT_OUT_SYSTEM, None):
                choices.append(("opt-out", None))
    if choices:
        return choices, private
    scopes = {c.get("code") for c in ((resource.get("scope") or {}).get("coding") or ())}
    if "patient-privacy" not in scopes:
        return [], []
    top = resource.get("provision") or {}
    provisions = [top] + list(top.get("provision") or [])
    for prov in provisions:
        if not isinstance(prov, dict) or prov.get("type") != "deny":
            continue
        actors = [_ref(a.get("reference")) for a in prov.get("actor") or () if isinstance(a, dict)]
        data = [_ref(d.get("reference")) for d in prov.get("data") or () if isinstance(d, dict)]
        orgs = [i for t, i in actors if t == "Organization" and i]
        items = [(t, i) for t, i in data if t and i]
        if items:
            private.extend(items)
        elif orgs:
            choices.extend(("organization", o) for o in orgs)
        elif not actors:
            choices.append(("all", None))
    return choices, private


@dataclass(frozen=True)
class ProxyGrant:
    """A carer's or proxy's access a person granted (record/proxy.py writes it as a Consent)."""

    consent_id: str
    patient_id: str
    account: str  # the carer's JoinedUp account name
    related_person: str | None  # RelatedPerson/<id>
    scope: frozenset | None  # resource types (None: the whole record)
    starts: str
    ends: str


def proxy_grant_of(resource: dict | None, patient_id: str | None = None) -> ProxyGrant | None:
    """The grant an active Consent makes (None when it makes none): scope patient-privacy, a top-level permit
    provision whose actor has the proxy role and names a RelatedPerson carrying the carer's account identifier, and
    a period with an end (a grant always ends); provision.class lists the resource types it covers."""
    if not resource or resource.get("resourceType") != "Consent" or resource.get("status") != "active":
        return None
    scopes = {c.get("code") for c in ((resource.get("scope") or {}).get("coding") or ())}
    prov = resource.get("provision") or {}
    if "patient-privacy" not in scopes or prov.get("type") != "permit":
        return None
    period = prov.get("period") or {}
    if not isinstance(period.get("end"), str):
        return None
    for actor in prov.get("actor") or ():
        role = [c for c in ((actor.get("role") or {}).get("coding") or ()) if isinstance(c, dict)]
        if not any(c.get("system") == codes.PROXY_ROLE["system"] and c.get("code") == codes.PROXY_ROLE["code"]
                   for c in role):
            continue
        ref = actor.get("reference") or {}
        ident = ref.get("identifier") or {}
        rtype, rid = _ref(ref)
        if rtype != "RelatedPerson" or ident.get("system") != codes.USER_ACCOUNT or not ident.get("value"):
            continue
        classes = [c.get("code") for c in prov.get("class") or () if isinstance(c, dict) and c.get("code")]
        pid = patient_id or _ref(resource.get("patient"))[1]
        if not pid:
            return None
        return ProxyGrant(resource.get("id") or "", pid, ident["value"], f"RelatedPerson/{rid}",
                          frozenset(classes) if classes else None, (period.get("start") or "")[:19],
                          period["end"][:19])
    return None


@dataclass
class Choice:
    objects_all: bool = False
    objects_to: frozenset = frozenset()
    opted_out: bool = False


@dataclass
class _Snapshot:
    token: str | None
    checked: float
    choices: dict[str, Choice]
    private: dict[tuple[str, str], str]
    grants: dict[tuple[str, str], str]
    reach: dict[tuple[str | None, str | None], dict[str, str]] = field(default_factory=dict)
    links: dict[str, frozenset] = field(default_factory=dict)
    generation: int = 0
    proxies: dict[str, list[ProxyGrant]] = field(default_factory=dict)
    missed: set = field(default_factory=set)  # principals `related` answered without their reach cached


@dataclass
class _Delta:
    """What one epoch bump changed, for the writing process's own cache: care relationships naming these
    practitioners, organisations (and, `roles`, practitioner roles) added or removed; `full` anything else."""

    practitioners: set = field(default_factory=set)
    organizations: set = field(default_factory=set)
    roles: bool = False
    full: bool = False

    def add(self, practitioner: str | None, organization: str | None, role: str | None) -> None:
        if practitioner:
            self.practitioners.add(practitioner)
        if organization:
            self.organizations.add(organization)
        if role:
            self.roles = True

    def touches(self, key: tuple[str | None, str | None]) -> bool:
        """Whether the reach of the principal (practitioner, organisation) may have changed."""
        return key[0] in self.practitioners or key[1] in self.organizations or (self.roles and key[0] is not None)

    def dumps(self) -> str:
        return orjson.dumps({"p": sorted(self.practitioners), "o": sorted(self.organizations),
                             "r": self.roles}).decode()

    @classmethod
    def loads(cls, text: str) -> _Delta:
        d = orjson.loads(text)
        return cls(set(d["p"]), set(d["o"]), bool(d["r"]))


# the care relationships forgotten come back (RETURNING: whose reach they were part of, see _Delta)
_CR = schema.care_relationship
_FORGET = [t.delete().where(t.c.basis.in_(sa.bindparam("bases", expanding=True)))
           for t in (schema.care_relationship, schema.patient_choice, schema.restricted_item)]
_FORGET[0] = _FORGET[0].returning(_CR.c.practitioner_id, _CR.c.organization_id, _CR.c.practitioner_role_id)
# a step (see AccessFacts._bump) leads from the current token, read under the row's lock (PostgreSQL; SQLite's writer
# already holds the database) until the new one is set
_STEP = schema.governance_epoch_step
KEEP_STEPS = 5000  # steps kept: a process whose cache is further behind reloads
_PRUNE_EVERY = 500


class AccessFacts:
    """Maintains the fact tables on writes and answers policy questions from a per-process cache."""

    def __init__(self, store, refresh_ms: int | None = None) -> None:
        self.store = store
        self.refresh = (refresh_ms if refresh_ms is not None
                        else config.value("POLICY_REFRESH_MS")) / 1000
        self._snap: _Snapshot | None = None
        self._lock = threading.Lock()
        self._generation = 0  # bumped by invalidate(): a load that started before it is not kept
        self._related_sql: dict[tuple, tuple] = {}  # related(): its statements per principal
        # this process's own steps: new token -> (the token it replaced, what changed); others' are read from the
        # database (governance_epoch_step)
        self._steps: dict[str, tuple[str, _Delta]] = {}
        self._stepped = 0

    # the statements every write runs, on the driver's cursor (see _forget and _bump), built on first use
    @cached_property
    def _sql_forget_one(self) -> list[str]:
        out = [self.store.sql(f"DELETE FROM {t.name} WHERE basis = ?")
               for t in (schema.care_relationship, schema.patient_choice, schema.restricted_item)]
        out[0] += " RETURNING practitioner_id, organization_id, practitioner_role_id"
        return out

    @cached_property
    def _sql_current(self) -> str:
        return self.store.sql(f"SELECT token FROM {schema.governance_epoch.name} WHERE id = 1") + \
            (" FOR UPDATE" if self.store.dialect == "postgresql" else "")

    @cached_property
    def _sql_bump(self) -> str:
        return self.store.sql(f"INSERT INTO {schema.governance_epoch.name} (id, token) VALUES (1, ?)"
                              " ON CONFLICT (id) DO UPDATE SET token = excluded.token")

    # -- maintenance on writes (inside the writer's transaction) -------------------------------------
    def on_write(self, conn, items: Iterable[Prepared], statuses: Iterable[str] | None = None, *,
                 who: Principal | None = None, link_requests: list | None = None) -> bool:
        """Re-derive facts for written resources; returns True when any fact table changed.

        `who` wrote them (None: the integration account's bulk load). Only the integration account vouches for
        NHS numbers and Patient.link; anyone else's link attempt becomes a pending request appended to
        `link_requests` (grants nothing until a privacy officer approves it).
        """
        rel_rows, choice_rows, restricted_rows, stale = [], [], [], []
        roles_changed = False
        items = list(items)
        patients = [(n, p) for n, p in enumerate(items) if p.rtype == "Patient"]
        now = _now_iso()
        statuses = list(statuses) if statuses is not None else None
        for n, p in enumerate(items):
            status = statuses[n] if statuses is not None else "updated"
            if status == "unchanged":
                continue
            relevant = p.rtype in FACT_TYPES
            labelled = '"security"' in p.doc or '"tag"' in p.doc
            if status != "created":
                stale.append(f"{p.rtype}/{p.id}")
            if not relevant and not labelled:
                continue
            resource = p.resource if p.resource is not None else orjson.loads(p.doc)
            basis = f"{p.rtype}/{p.id}"
            label = item_label(resource) if labelled else None
            if label:
                restricted_rows.append({"res_type": p.rtype, "res_id": p.id, "patient_id": p.patient_id,
                                        "reason": label, "basis": basis})
            if not relevant:
                continue
            if p.rtype in ("PractitionerRole", "Consent"):  # a Consent may grant or end a carer's access
                roles_changed = True
            for kind, prac, org, ends, role in relationships_of(resource, p.patient_id, now):
                rel_rows.append({"patient_id": p.patient_id, "kind": kind, "practitioner_id": prac,
                                 "organization_id": org, "basis": basis, "ends": ends,
                                 "practitioner_role_id": role})
            if p.rtype == "Consent" and p.patient_id:
                choices, private = choices_of(resource)
                choice_rows.extend({"patient_id": p.patient_id, "kind": k, "organization_id": o, "basis": basis}
                                   for k, o in choices)
                restricted_rows.extend({"res_type": t, "res_id": i, "patient_id": p.patient_id,
                                        "reason": "private", "basis": basis} for t, i in private)
        changed = bool(choice_rows or restricted_rows or roles_changed)
        if patients:
            live = [p for n, p in patients if statuses is None or statuses[n] != "unchanged"]
            if live:
                changed = self._identities(conn, live, who, link_requests) or changed
        # anything but care relationships (choices, sealed entries, roles, numbers, links): the whole cache
        delta = _Delta(full=changed)
        changed = changed or bool(rel_rows)
        if stale:
            changed = self._forget(conn, stale, delta) or changed
        if rel_rows:
            conn.execute(schema.care_relationship.insert(), rel_rows)
            for row in rel_rows:
                delta.add(row["practitioner_id"], row["organization_id"], row["practitioner_role_id"])
        if choice_rows:
            conn.execute(schema.patient_choice.insert(), choice_rows)
        if restricted_rows:
            conn.execute(schema.restricted_item.insert(), restricted_rows)
        if changed:
            self._bump(conn, delta)
        return changed

    def on_delete(self, conn, rtype: str, rid: str) -> bool:
        """Forget facts derived from a deleted resource."""
        delta = _Delta(full=rtype in ("PractitionerRole", "Consent"))
        changed = self._forget(conn, [f"{rtype}/{rid}"], delta) or delta.full
        # a deleted Patient keeps its vouched numbers and links: deleting one record never unlinks the person's
        # others (their choices recorded on it keep covering them), and its id is never registered again
        if changed:
            self._bump(conn, delta)
        return changed

    def _identities(self, conn, patients: list[Prepared], who: Principal | None,
                    link_requests: list | None) -> bool:
        """Vouched NHS numbers and links for written Patient resources (see schema.verified_identifier)."""
        vi = schema.verified_identifier
        now = _now_iso()
        trusted = who is None or who.role == "system"
        by = who.name if who is not None else "integration account"
        ids = [p.id for p in patients]
        before: dict[str, set[tuple[str, str]]] = {}
        for pid, system, value in conn.execute(sa.select(vi.c.patient_id, vi.c.system, vi.c.value)
                                               .where(vi.c.patient_id.in_(ids))):
            before.setdefault(pid, set()).add((system, value))
        changed = False
        for p in patients:
            resource = p.resource if p.resource is not None else orjson.loads(p.doc)
            numbers = {(NHS_NUMBER_SYSTEM, i["value"]) for i in resource.get("identifier") or ()
                       if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM
                       and isinstance(i.get("value"), str)}
            had = before.get(p.id, set())
            # only the integration account un-vouches a number: anyone else removing it unlinks nothing (or a
            # professional could lift the person's objection recorded on the other record by editing this one)
            keep = numbers if trusted else had
            if had - keep:
                conn.execute(vi.delete().where(vi.c.patient_id == p.id,
                                               sa.tuple_(vi.c.system, vi.c.value).in_(sorted(had - keep))))
                changed = True
            if keep - had:
                conn.execute(vi.insert(), [{"patient_id": p.id, "system": s, "value": v, "verified_by": by,
                                            "verified_at": now} for s, v in sorted(keep - had)])
                changed = True
            others = {i for t, i in (_ref(lk.get("other")) for lk in resource.get("link") or ()
                                     if isinstance(lk, dict)) if t == "Patient" and i and i != p.id}
            if trusted:
                for other in sorted(others):
                    changed = _confirm_link(conn, p.id, other, basis="integration", by=by) or changed
                continue
            # anyone else: a number or a link naming another person's record is a request, never a link
            claimed = sorted(numbers - had)
            if claimed:
                t = schema.idx_token
                others |= {r[0] for r in conn.execute(
                    sa.select(t.c.res_id).where(t.c.res_type == "Patient", t.c.param == "identifier",
                                                t.c.system == NHS_NUMBER_SYSTEM,
                                                t.c.code.in_([v for _, v in claimed]), t.c.res_id != p.id))}
                others |= {r[0] for r in conn.execute(
                    sa.select(vi.c.patient_id).where(vi.c.system == NHS_NUMBER_SYSTEM,
                                                     vi.c.value.in_([v for _, v in claimed]),
                                                     vi.c.patient_id != p.id))}
            for other in sorted(others):
                req = request_link(conn, who, p.id, other,
                                   reason=f"{p.rtype}/{p.id} written by {by} names the same person as Patient/{other}"
                                          " (NHS number or Patient.link)")
                if req is not None and link_requests is not None:
                    link_requests.append(req)
        return changed

    def _forget(self, conn, bases: list[str], delta: _Delta | None = None) -> bool:
        """Delete the facts derived from these resources ("Type/id"); `delta` learns whose care relationships went
        (a choice or a sealed entry forgotten: everything). Care relationships come only from FACT_TYPES and choices
        only from Consents, so only those are looked for there; any entry may have been sealed."""
        delta = delta if delta is not None else _Delta()
        kinds = (([b for b in bases if b.split("/", 1)[0] in FACT_TYPES]),
                 ([b for b in bases if b.startswith("Consent/")]), bases)
        n = 0
        for k, some in enumerate(kinds):
            if len(some) == 1:  # one resource (the usual case: a feed's update): plain statements on the cursor
                if k == 0:
                    for row in self.store.rows(conn, self._sql_forget_one[k], (some[0],)):
                        delta.add(*row)
                        n += 1
                    continue
                gone = self.store.run(conn, self._sql_forget_one[k], (some[0],))
                delta.full = delta.full or gone > 0
                n += gone
                continue
            chunks = [(_FORGET[k], {"bases": some[i:i + 500]}) for i in range(0, len(some), 500)]
            for stmt, params in chunks:
                if k == 0:
                    for row in conn.execute(stmt, params):
                        delta.add(*row)
                        n += 1
                    continue
                gone = conn.execute(stmt, params).rowcount or 0
                delta.full = delta.full or gone > 0
                n += gone
        return n > 0

    def _bump(self, conn, delta: _Delta | None = None) -> None:
        """Set a new epoch token (every process's cache of the facts is stale). A change of care relationships only
        (`delta`, not full) is a step from the current token, kept with what it changed, so that every process's
        cache follows it in place (`_follow`); the current token is read under the row's lock (PostgreSQL) or the
        writer's hold on the database (SQLite), so the steps form one chain in the order they commit. Anything else
        (`delta` None or full) sets a token no step leads to: every cache reloads."""
        token = uuid.uuid4().hex
        if delta is not None and not delta.full:
            current = self.store.rows(conn, self._sql_current)
            previous = (current[0][0] if current else None) or ""  # the first change of all: a step from no token
            self.store.insert(conn, _STEP, {"token": token, "previous": previous, "delta": delta.dumps()})
            if len(self._steps) > KEEP_STEPS:
                self._steps.clear()
            self._steps[token] = (previous, delta)
            self._stepped += 1
            if self._stepped % _PRUNE_EVERY == 0:
                self._prune(conn, KEEP_STEPS)
        # one statement (SQLite and PostgreSQL): an update-then-insert let two PostgreSQL transactions that both
        # found no row insert it twice (two bulk-import workers' first batches: a unique-key violation)
        self.store.run(conn, self._sql_bump, (token,))

    @staticmethod
    def _prune(conn, keep: int) -> None:
        newest = sa.select(sa.func.max(_STEP.c.seq)).scalar_subquery()
        conn.execute(_STEP.delete().where(_STEP.c.seq <= newest - keep))

    def prune(self, keep: int = KEEP_STEPS) -> None:
        """Keep only the last `keep` steps (a cache further behind reloads); done every few hundred steps."""
        with self.store.writing() as conn:
            self._prune(conn, keep)

    def bump(self) -> None:
        """Mark the facts changed (after writes to the break-glass table, or a reset)."""
        with self.store.writing() as conn:
            self._bump(conn)
        self.invalidate()

    def invalidate(self) -> None:
        """The facts changed (committed): the next question reads the epoch token and follows this process's own
        steps from the cached one in place, or reloads."""
        self._generation += 1

    # -- the cache ------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        # a plain one-row lookup (Store.point): asked after every write that changed the facts, by every process
        row = self.store.point("SELECT token FROM governance_epoch WHERE id = 1", ())
        return row[0] if row else None

    def snapshot(self) -> _Snapshot:
        snap = self._snap
        now = time.monotonic()
        generation = self._generation
        if snap is not None and snap.generation == generation and now - snap.checked < self.refresh:
            return snap
        token = self._token()
        with self._lock:
            snap = self._snap
            if snap is not None and snap.generation <= generation and self._follow(snap, token):
                snap.checked = now
                snap.generation = generation
                return snap
            snap = self._load(token, now)
            snap.generation = generation
            if generation == self._generation:
                self._snap = snap
        return snap

    def _follow(self, snap: _Snapshot, token: str | None) -> bool:
        """Bring the cached facts from their token to `token` in place when every change between them was a step
        (care relationships only, by this process or another): the cached reach of the principals those name is
        dropped (read again when next asked). False when another change came between, or the steps are no longer
        kept (reload)."""
        if snap.token == token:
            return True
        if token is None:
            return False
        start = snap.token or ""  # no token yet: the first step leads from ""
        steps = self._own_steps(start, token)
        if steps is None:
            steps = self._kept_steps(start, token)
            if steps is None:
                return False
        for key in [k for k in list(snap.reach) if any(d.touches(k) for d in steps)]:
            snap.reach.pop(key, None)
        snap.token = token
        return True

    def _own_steps(self, start: str, token: str) -> list[_Delta] | None:
        steps, at = [], token
        while at != start:
            step = self._steps.get(at)
            if step is None or len(steps) > KEEP_STEPS:
                return None
            at = step[0]
            steps.append(step[1])
        return steps

    def _kept_steps(self, start: str, token: str) -> list[_Delta] | None:
        """The steps from `start` to `token` as the database keeps them, in order; None when the chain breaks (a
        change that is not a step came between) or has been pruned."""
        sql = self.store.sql  # plain statements: every process follows the others' steps after each of their writes
        with self.store.reading() as conn:
            first = self.store.rows(conn, sql("SELECT min(seq) FROM governance_epoch_step WHERE previous = ?"),
                                    (start,))[0][0]
            if first is None:
                return None
            rows = self.store.rows(conn, sql("SELECT token, previous, delta FROM governance_epoch_step WHERE seq >= ?"
                                             " ORDER BY seq LIMIT ?"), (first, KEEP_STEPS))
        steps, at = [], start
        for row_token, previous, delta in rows:
            if previous != at:
                return None
            steps.append(_Delta.loads(delta))
            at = row_token
            if at == token:
                return steps
        return None

    def _load(self, token: str | None, now: float) -> _Snapshot:
        c, ri, bg = schema.patient_choice, schema.restricted_item, schema.break_glass
        choices: dict[str, Choice] = {}
        private: dict[tuple[str, str], str] = {}
        grants: dict[tuple[str, str], str] = {}
        with self.store.reading() as conn:
            for pid, kind, org in conn.execute(sa.select(c.c.patient_id, c.c.kind, c.c.organization_id)):
                ch = choices.setdefault(pid, Choice())
                if kind == "all":
                    ch.objects_all = True
                elif kind == "organization" and org:
                    ch.objects_to = ch.objects_to | {org}
                elif kind == "opt-out":
                    ch.opted_out = True
            for t, i, reason in conn.execute(sa.select(ri.c.res_type, ri.c.res_id, ri.c.reason)
                                             .where(ri.c.basis.like("Consent/%"))):
                private[(t, i)] = reason
            for user, pid, expires in conn.execute(sa.select(bg.c.user_name, bg.c.patient_id, bg.c.expires)
                                                   .where(bg.c.expires > _now_iso())):
                key = (user, pid)
                if expires > grants.get(key, ""):
                    grants[key] = expires
            proxies = self._proxies(conn)
        return _Snapshot(token, now, choices, private, grants, proxies=proxies)

    @staticmethod
    def _proxies(conn) -> dict[str, list[ProxyGrant]]:
        """Carers' grants by account: only Consents the person recorded themselves (meta.source Patient/<them>)."""
        r = schema.resource
        out: dict[str, list[ProxyGrant]] = {}
        for pid, source, content in conn.execute(sa.select(r.c.patient_id, r.c.source, r.c.content).where(
                r.c.res_type == "Consent", r.c.deleted.is_(False), r.c.source.like("Patient/%"))):
            doc = orjson.loads(content) if isinstance(content, (str, bytes)) else content
            grant = proxy_grant_of(doc, pid) if pid and source == f"Patient/{pid}" else None
            if grant is not None:
                out.setdefault(grant.account, []).append(grant)
        return out

    def reach(self, who: Principal) -> dict[str, str]:
        """{patient_id: relationship kind} for every person this principal has a relationship with."""
        snap = self.snapshot()
        generation = snap.generation
        key = (who.practitioner_id, who.organization_id)
        got = snap.reach.get(key)
        if got is not None:
            return got
        if key == (None, None):
            got = {}
        else:
            cr = schema.care_relationship
            got = {}
            with self.store.reading() as conn:
                for pid, kind in conn.execute(sa.select(cr.c.patient_id, cr.c.kind).where(
                        self._mine(cr, who), sa.or_(cr.c.ends.is_(None), cr.c.ends > _now_iso()))):
                    got.setdefault(pid, kind)
                # the same person's other records (same NHS number, e.g. the council's social care record)
                for pid, other in conn.execute(_linked_pairs(sa.select(cr.c.patient_id).where(
                        self._mine(cr, who), sa.or_(cr.c.ends.is_(None), cr.c.ends > _now_iso())))):
                    if other not in got:
                        got[other] = f"linked record ({got.get(pid, 'relationship')})"
        if len(snap.reach) > 2000:
            snap.reach.clear()
        if snap.generation == generation == self._generation:  # nothing changed while we were reading
            snap.reach[key] = got
        return got

    @staticmethod
    def _mine(cr, who: Principal):
        conds = []
        if who.practitioner_id:
            conds.append(cr.c.practitioner_id == who.practitioner_id)
            conds.append(cr.c.practitioner_role_id.in_(_roles_of(who)))
        if who.organization_id:
            conds.append(cr.c.organization_id == who.organization_id)
        return sa.or_(*conds) if conds else sa.false()

    def relationship(self, who: Principal, patient_id: str) -> str | None:
        return self.reach(who).get(patient_id)

    def related(self, who: Principal, patient_ids: Iterable[str]) -> set[str]:
        """Which of these people the principal has a relationship with (`relationship` not None), without loading
        their whole reach when it is not cached: two queries for all of them - the people's other records
        (confirmed links, recorded both ways) and the principal's relationships in force with any of those records.
        For the notification worker, which asks about a batch of people at once; asked again while the facts are
        still cached (a feed's changes are followed in place), the principal's reach is loaded and kept."""
        ids = set(patient_ids)
        key = (who.practitioner_id, who.organization_id)
        snap = self.snapshot()
        cached = snap.reach.get(key)
        if cached is not None:
            return {p for p in ids if p in cached}
        if key == (None, None) or not ids:
            return set()
        if key in snap.missed:
            reach = self.reach(who)
            return {p for p in ids if p in reach}
        snap.missed.add(key)
        stmts = self._related_sql.get(key)
        if stmts is None:  # built once per principal (the roles are read when it runs: a change counts at once)
            cr = schema.care_relationship
            stmts = (_linked_pairs(sa.bindparam("ids", expanding=True)),
                     sa.select(cr.c.patient_id).distinct().where(
                         self._mine(cr, who), cr.c.patient_id.in_(sa.bindparam("ids", expanding=True)),
                         sa.or_(cr.c.ends.is_(None), cr.c.ends > sa.bindparam("now"))))
            if len(self._related_sql) > 1000:
                self._related_sql.clear()
            self._related_sql[key] = stmts
        others: dict[str, set[str]] = {}
        with self.store.reading() as conn:
            for pid, other in conn.execute(stmts[0], {"ids": sorted(ids)}):
                others.setdefault(pid, set()).add(other)
            every = sorted(ids.union(*others.values()))
            mine = {r[0] for r in conn.execute(stmts[1], {"ids": every, "now": _now_iso()})}
        return {p for p in ids if p in mine or others.get(p, set()) & mine}

    def break_glass_until(self, who: Principal, patient_id: str) -> str | None:
        until = self.snapshot().grants.get((who.name, patient_id))
        return until if until and until > _now_iso() else None

    def proxy_access(self, who: Principal) -> tuple[str, frozenset | None] | None:
        """(until, resource types or None for the whole record) of the access the person granted this carer's
        account, now; None when there is none (never granted, not started, ended or withdrawn)."""
        if not who.patient_id:
            return None
        now = _now_iso()
        live = [g for g in self.snapshot().proxies.get(who.name, ()) if g.patient_id == who.patient_id
                and g.starts <= now < g.ends]
        if not live:
            return None
        scope = None if any(g.scope is None for g in live) else frozenset().union(*(g.scope for g in live))
        return max(g.ends for g in live), scope

    def proxy_grants(self, patient_id: str) -> list[ProxyGrant]:
        """Every grant in force or to come that a person made (ended ones are left out)."""
        now = _now_iso()
        return [g for gs in self.snapshot().proxies.values() for g in gs if g.patient_id == patient_id
                and g.ends > now]

    def linked(self, patient_id: str) -> frozenset:
        """Other Patient records of the same person (sharing a valid NHS number), cached per snapshot."""
        snap = self.snapshot()
        got = snap.links.get(patient_id)
        if got is None:
            with self.store.reading() as conn:
                got = frozenset(o for _, o in conn.execute(_linked_pairs([patient_id])))
            if len(snap.links) > 100_000:
                snap.links.clear()
            snap.links[patient_id] = got
        return got

    def choice(self, patient_id: str | None) -> Choice | None:
        """The person's choices, including those recorded against their other (linked) records."""
        if not patient_id:
            return None
        choices = self.snapshot().choices
        if not choices:
            return None
        found = [choices[p] for p in (patient_id, *self.linked(patient_id)) if p in choices]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        return Choice(objects_all=any(c.objects_all for c in found),
                      objects_to=frozenset().union(*(c.objects_to for c in found)),
                      opted_out=any(c.opted_out for c in found))

    def objection(self, who: Principal, patient_id: str | None) -> str | None:
        """'all' or 'organisation' when the person objects to sharing with this principal's organisation."""
        ch = self.choice(patient_id)
        if ch is None:
            return None
        if ch.objects_all:
            return "all"
        if who.organization_id and who.organization_id in ch.objects_to:
            return "organisation"
        return None

    def opted_out(self, patient_id: str | None) -> bool:
        ch = self.choice(patient_id)
        return bool(ch and ch.opted_out)

    def opted_out_ids(self) -> set[str]:
        ids = {p for p, ch in self.snapshot().choices.items() if ch.opted_out}
        if ids:
            with self.store.reading() as conn:
                ids |= {o for _, o in conn.execute(_linked_pairs(sorted(ids)))}
        return ids

    def label(self, rtype: str, rid: str, content: dict | None) -> str | None:
        """'sealed' / 'private' for an entry (own labels, or named private in a Consent)."""
        return item_label(content) or self.snapshot().private.get((rtype, rid))

    # -- search narrowing (SQL) -------------------------------------------------------------------------
    def restriction(self, who: Principal) -> list[Any]:
        """SQL conditions on `resource` that keep only what a professional may see (used by search & includes)."""
        r = schema.resource
        cr, pc, ri = schema.care_relationship, schema.patient_choice, schema.restricted_item
        own = r.c.source == who.source if who.source else sa.false()
        mine = sa.select(cr.c.patient_id).where(self._mine(cr, who), sa.or_(cr.c.ends.is_(None),
                                                                              cr.c.ends > _now_iso()))
        related = sa.or_(r.c.patient_id.in_(mine),
                         r.c.patient_id.in_(_linked_ids(mine)))
        grants = sorted(p for (u, p), until in self.snapshot().grants.items()
                        if u == who.name and until > _now_iso())
        if grants:
            related = sa.or_(related, r.c.patient_id.in_(grants))
        objecting_own = sa.select(pc.c.patient_id).where(
            sa.or_(pc.c.kind == "all", sa.and_(pc.c.kind == "organization",
                                               pc.c.organization_id == (who.organization_id or ""))))
        # an objection recorded on one of the person's records covers their linked records too
        objecting = sa.union(objecting_own,
                             _linked_ids(objecting_own))
        shared = sa.or_(own, r.c.res_type.in_(sorted(OBJECTION_EXEMPT)), ~r.c.patient_id.in_(objecting))
        unsealed = sa.or_(own, ~sa.exists().where(ri.c.res_id == r.c.id, ri.c.res_type == r.c.res_type))
        # entries about no person: directory and platform types for everyone; an entry of a person's record type
        # that names no one it could be filed under (another server's patient) only for the organisation that
        # recorded it
        person_types = sorted(registry().compartment)
        unattached = sa.and_(r.c.patient_id.is_(None), sa.or_(own, ~r.c.res_type.in_(person_types)))
        return [sa.or_(unattached, sa.and_(related, shared, unsealed))]


def _roles_of(who: Principal) -> sa.Select:
    """SELECT the ids of the active PractitionerRoles that are this user: their practitioner and, when the user acts
    for an organisation, that organisation (read from the search index, so a changed role takes effect at once)."""
    ref, tok = schema.idx_reference, schema.idx_token
    roles = sa.select(ref.c.res_id).where(ref.c.res_type == "PractitionerRole", ref.c.param == "practitioner",
                                          ref.c.target_type == "Practitioner",
                                          ref.c.target_id == who.practitioner_id)
    if who.organization_id:
        org = ref.alias("org")
        roles = roles.where(sa.exists().where(org.c.res_type == "PractitionerRole", org.c.res_id == ref.c.res_id,
                                              org.c.param == "organization", org.c.target_type == "Organization",
                                              org.c.target_id == who.organization_id))
    return roles.where(~sa.exists().where(tok.c.res_type == "PractitionerRole", tok.c.res_id == ref.c.res_id,
                                          tok.c.param == "active", tok.c.code == "false"))


def _linked_ids(patient_ids) -> sa.Select:
    """SELECT other_patient_id for the confirmed links of the given Patient records (usable inside IN)."""
    linked = _linked_pairs(patient_ids, only_other=True).subquery()
    return sa.select(linked.c[0])


def _linked_pairs(patient_ids, *, only_other: bool = False):
    """SELECT (patient_id, other_patient_id) for the confirmed links of the given Patient records.

    Records of one person held by different organisations (the GP's and the council's) are linked only by a
    confirmed link: the same NHS number vouched for on both by the integration account (`verified_identifier`),
    or a `patient_link` row (integration account's Patient.link, confirmed record linkage, or a privacy officer's
    approval of a link request). An NHS number or Patient.link written by anyone else links nothing.
    """
    v1 = schema.verified_identifier.alias("v1")
    v2 = schema.verified_identifier.alias("v2")
    pl = schema.patient_link
    ids = patient_ids if isinstance(patient_ids, (sa.Select, sa.BindParameter)) else list(patient_ids)
    by_number = (sa.select(*((v2.c.patient_id,) if only_other else (v1.c.patient_id, v2.c.patient_id)))
                 .select_from(v1.join(v2, sa.and_(v2.c.system == v1.c.system, v2.c.value == v1.c.value)))
                 .where(v1.c.patient_id.in_(ids), v2.c.patient_id != v1.c.patient_id))
    by_link = (sa.select(*((pl.c.other_id,) if only_other else (pl.c.patient_id, pl.c.other_id)))
               .where(pl.c.patient_id.in_(ids)))
    return sa.union(by_number, by_link)


def _confirm_link(conn, a: str, b: str, *, basis: str, by: str, review_id: str | None = None) -> bool:
    """Record a confirmed link between two Patient records (both directions); False when it already existed."""
    pl = schema.patient_link
    have = {tuple(r) for r in conn.execute(sa.select(pl.c.patient_id, pl.c.other_id).where(
        sa.tuple_(pl.c.patient_id, pl.c.other_id).in_([(a, b), (b, a)])))}
    rows = [{"patient_id": x, "other_id": y, "basis": basis, "confirmed_by": by, "confirmed_at": _now_iso(),
             "review_id": review_id} for x, y in ((a, b), (b, a)) if (x, y) not in have]
    if rows:
        conn.execute(pl.insert(), rows)
    return bool(rows)


def linked_already(conn, a: str, b: str) -> bool:
    """Whether two Patient records are already confirmed as one person's."""
    return any(o == b for _, o in conn.execute(_linked_pairs([a])))


def link_state(conn, a: str, b: str) -> str | None:
    """'linked', 'pending' (a link request waits for review), 'rejected' (refused before, or unlinked and not linked
    again) or None for a pair."""
    if linked_already(conn, a, b):
        return "linked"
    pr = schema.privacy_review
    pair = sa.or_(sa.and_(pr.c.patient_id == a, pr.c.other_patient_id == b),
                  sa.and_(pr.c.patient_id == b, pr.c.other_patient_id == a))
    states = {r[0] for r in conn.execute(sa.select(pr.c.status).where(pr.c.kind.in_(("link", "unlink")), pair))}
    return "rejected" if states & {"rejected", "unlinked"} else "pending" if "pending" in states else None


def request_link(conn, who: Principal, a: str, b: str, *, reason: str) -> dict | None:
    """Queue a request to link two records for the privacy officer (None when already linked, pending or refused).

    A refused pair is remembered: asking again does not re-open it.
    """
    if a == b or linked_already(conn, a, b):
        return None
    pr = schema.privacy_review
    pair = sa.or_(sa.and_(pr.c.patient_id == a, pr.c.other_patient_id == b),
                  sa.and_(pr.c.patient_id == b, pr.c.other_patient_id == a))
    if conn.execute(sa.select(pr.c.id).where(pr.c.kind == "link", pair,
                                              pr.c.status.in_(("pending", "rejected")))).first():
        return None
    row = {"id": uuid.uuid4().hex, "kind": "link", "patient_id": a, "other_patient_id": b, "entity": f"Patient/{a}",
           "requested_by": who.name, "requested_role": who.role, "requested_org": who.organization_id,
           "requested_at": _now_iso(), "reason": reason[:2000], "status": "pending"}
    conn.execute(pr.insert().values(**row))
    return row
