"""HL7 v2 ADT in: one message -> one acknowledgement, applied through the gate in one transaction or kept whole.

`Hl7Service.handle(raw)` parses the message (`parse.py`), finds the sending organisation by the ODS code in MSH-4,
maps PID/PD1/PV1/MRG to Patient, Encounter, Location and EpisodeOfCare (`mapping.py`, docs/hl7-v2.md) and applies
the result as one FHIR transaction through `Gate.apply_message` as that organisation's integration account, with the
message's receipt (sending facility + control id) in the same database transaction: all or nothing, and a message
sent twice is applied once. A message that cannot be applied is kept in the dead-letter store (`Gate.hold_message`)
with its reason and the segment and field at fault, and can be replayed. Admissions, transfers and discharges raise
the care notifications through the gate's after-commit listeners, exactly as FHIR writes do.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import is_valid as valid_nhs_number
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.interop.hl7 import mapping as m
from joinedup.interop.hl7.parse import Fault, Header, Message, escape, first, normalise, parse, read_header, reps

RECEIVER_APP = "JOINEDUP"
RECEIVER_FACILITY = "JOINEDUP"
LISTENER = Principal(name="hl7-listener", role="system", display="HL7 v2 listener (before the sender is known)")
OPEN = ("planned", "arrived", "triaged", "in-progress", "onleave")
PLACE_TTL = 300.0  # seconds a Location found by its identifier is remembered (Hl7Service.known_place)


@dataclass
class Outcome:
    """What became of one message."""

    ack_code: str
    header: Header
    text: str = ""
    fault: Fault | None = None
    notes: list[str] = field(default_factory=list)
    held: str | None = None
    duplicate: bool = False
    patient_id: str | None = None
    encounter_id: str | None = None
    ack: str = ""

    @property
    def applied(self) -> bool:
        return self.ack_code == "AA"


def feed_principal(org_id: str, ods: str, name: str | None = None) -> Principal:
    """The sending organisation's integration account: the system role, acting for that organisation (its writes
    carry meta.source Organization/{id}), the same account shape bulk import uses."""
    return Principal(name=f"hl7:{ods}", role="system", display=f"HL7 v2 feed from {name or ods}",
                     organization_id=org_id)


class Hl7Service:
    """Applies ADT messages through one gate."""

    def __init__(self, gate: Gate, *, channel: str = "hl7") -> None:
        self.gate = gate
        self.channel = channel
        self._orgs: dict[str, tuple[str, str | None]] = {}
        # Locations found or created by earlier messages: (identifier system, value or name) -> (id, when)
        self._places: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- the entry points -----------------------------------------------------------------------------------------
    def handle(self, raw: str | bytes, *, channel: str | None = None, replay_of: str | None = None) -> Outcome:
        """Apply one message (or refuse it and keep it); returns the outcome with its ER7 acknowledgement."""
        # the message's audit events are committed with its writes (or together, when it is refused), before the ACK
        with self.gate.answering(defer=True):
            out = self._handle_many([(raw, channel, replay_of)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def handle_many(self, items: list[tuple[str | bytes, str | None]], *, also: Any = None
                    ) -> list[Outcome | BaseException]:
        """Apply messages that arrived together (on different connections): (raw, channel) each. Their writes share
        one database transaction, each message in its own savepoint (`Gate.apply_messages`), so a message that
        fails is rolled back alone; messages about the same person or writing the same resource are applied one
        after the other, each planned from what the one before it committed. Returns, in order, each message's
        outcome with its own acknowledgement, or the unexpected exception that stopped it (nothing of it kept).
        `also` (the notifications of the batch before, `notifications.Ready`) is planned with the batch and its
        inbox items written in the batch's transaction, when there is one."""
        # the batch's audit events are committed with its writes (the reads that planned them included), before
        # the ACKs
        with self.gate.answering(defer=True):
            return self._handle_many([(raw, channel, None) for raw, channel in items], also=also)

    def _handle_many(self, items: list[tuple[str | bytes, str | None, str | None]], also: Any = None
                     ) -> list[Outcome | BaseException]:
        results: list[Outcome | BaseException | None] = [None] * len(items)
        pending = list(range(len(items)))
        while pending:
            staged: list[tuple[int, Staged]] = []
            taken: set[str] = set()
            later: list[int] = []
            refused: list[tuple[int, Fault, Header]] = []
            with self.gate.reads_together():  # the plans' many small lookups on one connection
                for i in pending:
                    raw, channel, replay_of = items[i]
                    msg = None
                    try:
                        msg = parse(raw)
                        stage = self._stage(msg)
                    except Fault as fault:  # acknowledged with the header as far as it can be read
                        header = msg.header if msg is not None else \
                            read_header(normalise(raw) if isinstance(raw, (str, bytes)) else "")
                        refused.append((i, fault, header))
                        continue
                    except Exception as exc:  # noqa: BLE001 - this message only; the caller reports it
                        results[i] = exc
                        continue
                    if isinstance(stage, Outcome):  # a duplicate
                        results[i] = stage
                    elif stage.keys & taken:  # planned again once the message before it is committed
                        later.append(i)
                    else:
                        taken |= stage.keys
                        staged.append((i, stage))
            for i, fault, header in refused:  # kept in the dead-letter store (and answered AE/AR)
                raw, channel, replay_of = items[i]
                results[i] = self._refused(fault, header, raw, channel, replay_of)
            for i in pending:
                if isinstance(results[i], Outcome) and not results[i].ack:  # a duplicate, answered as applied
                    results[i] = self._done(results[i], items[i][2])
            errors: list = []
            if staged:
                if also is not None:  # its reads are audited with this transaction (the deferring scope)
                    also.prepare()
                errors = self.gate.apply_messages([(st.who, st.bundle, st.receipt, self._recorder(st))
                                                   for _i, st in staged], also=also.write if also else None)
                also = None
            for (i, stage), error in zip(staged, errors):
                raw, channel, replay_of = items[i]
                try:
                    results[i] = self._done(self._applied(stage, error), replay_of)
                except Fault as fault:
                    results[i] = self._refused(fault, stage.msg.header, raw, channel, replay_of)
                except Exception as exc:  # noqa: BLE001 - this message only; the caller reports it
                    results[i] = exc
            pending = later
        return [r for r in results if r is not None]

    def _refused(self, fault: Fault, header: Header, raw: str | bytes, channel: str | None,
                 replay_of: str | None) -> Outcome:
        """A message that cannot be applied: kept in the dead-letter store (or, replayed, kept there with the new
        reason), answered AE/AR."""
        keep = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        out = Outcome(fault.ack, header, fault.text, fault=fault)
        if replay_of:
            self.gate.release_message(LISTENER, replay_of, applied=False, reason=fault.text)
            out.held = replay_of
        else:
            out.held = self.gate.hold_message(
                LISTENER, raw=keep, reason=fault.text, ack_code=fault.ack, location=fault.location,
                facility=header.sending_facility or None, control_id=header.control_id or None,
                trigger=header.trigger or None, channel=channel or self.channel)
        out.ack = ack_message(out)
        return out

    def _done(self, out: Outcome, replay_of: str | None) -> Outcome:
        if replay_of:
            self.gate.release_message(LISTENER, replay_of, applied=True)
        out.ack = ack_message(out)
        return out

    def hold_unreadable(self, raw: bytes | str, reason: str, *, channel: str | None = None) -> Outcome:
        """Keep what arrived but is not a whole message (a truncated MLLP frame, bytes outside a frame) and say why
        in an AR acknowledgement (echoing MSH-10 when the header can be read)."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        header = read_header(normalise(text))
        fault = Fault("AR", 100, reason, "MSH" if header.control_id else None)
        held = self.gate.hold_message(LISTENER, raw=text, reason=reason, ack_code="AR", location=fault.location,
                                      facility=header.sending_facility or None,
                                      control_id=header.control_id or None, trigger=header.trigger or None,
                                      channel=channel or self.channel)
        out = Outcome("AR", header, reason, fault=fault, held=held)
        out.ack = ack_message(out)
        return out

    def replay(self, held_id: str) -> Outcome:
        """Apply a dead letter again (after the cause was put right, e.g. the organisation was added)."""
        row = self.gate.held_message(LISTENER, held_id)
        if row is None:
            raise KeyError(held_id)
        if row["status"] != "held":
            raise ValueError(f"dead letter {held_id} was already {row['status']}")
        return self.handle(row["raw"], channel=row.get("channel"), replay_of=held_id)

    # -- applying ----------------------------------------------------------------------------------------------
    def _stage(self, msg: Message) -> Staged | Outcome:
        """Plan one message's writes from what the store holds now (or, applied before, its duplicate outcome)."""
        h = msg.header
        ods = h.sending_facility.upper()
        org_id, org_name = self._organisation(ods)
        who = feed_principal(org_id, ods, org_name)
        plan = Plan(self, msg, who, ods, org_id)
        # the message's lookups (PID-3, PV1-19, the spell, wards) are audited as one event per person read, naming
        # every query and record (Gate.reads_as_one), rather than one event per lookup
        with self.gate.reads_as_one(who, entity=f"hl7:{ods}|{h.control_id}",
                                    purpose=f"ADT^{h.trigger} {h.control_id} from {ods} planned") as reads:
            try:
                plan.build()
                reads.about = plan.patient_id  # a new record: the reads that found nothing were about it
            except Fault:
                # applied before? (a message sent again is planned against what it changed and may not plan at all)
                seen = self.gate.message_receipt(who, ods, h.control_id)
                if seen is not None:
                    return self._duplicate(h, seen)
                raise
        # a message applied before is found by its receipt's key when it is applied (Gate.apply_messages): its
        # savepoint is rolled back and the receipt read then (_applied), one query less for every other message
        receipt = {"facility": ods, "control_id": h.control_id, "trigger": h.trigger, "received": _now(),
                   "applied": _now(), "patient_id": plan.patient_id, "note": "; ".join(plan.notes)[:4000] or None}
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                            for r in plan.writes]}
        # what the message must not share with another in the same batch: the person, every resource it writes,
        # and its receipt (two copies of one message)
        keys = {f"Patient/{plan.patient_id}", f"hl7:{ods}|{h.control_id}",
                *(f"{r['resourceType']}/{r['id']}" for r in plan.writes)}
        return Staged(msg, who, ods, plan, bundle, receipt, keys)

    def _applied(self, stage: Staged, error: BaseException | None) -> Outcome:
        """The outcome of a staged message once its savepoint was released (error None) or rolled back."""
        h, who, ods, plan = stage.msg.header, stage.who, stage.ods, stage.plan
        if isinstance(error, IntegrityError):
            seen = self.gate.message_receipt(who, ods, h.control_id)
            if seen is None:
                raise error
            return self._duplicate(h, seen)
        if isinstance(error, FhirError):
            raise Fault("AE", 207, f"the mapped resources were refused: {error.diagnostics}", plan.blame) from None
        if error is not None:
            raise error
        now = time.monotonic()
        with self._lock:
            for key, lid in plan.new_places.items():
                self._places[key] = (lid, now)
        note = "; ".join(plan.notes)
        return Outcome("AA", h, note or f"{h.trigger} applied", notes=plan.notes, patient_id=plan.patient_id,
                       encounter_id=plan.encounter_id)

    def _recorder(self, stage: Staged):
        """The message's own audit event (what it did: admitted, discharged, merged), recorded inside its savepoint
        by `Gate.apply_messages`: kept only if the message is."""
        h, who, ods, plan = stage.msg.header, stage.who, stage.ods, stage.plan

        def then(conn) -> None:
            if plan.audit:
                self.gate.record(who, plan.audit[0], allowed=True, reason=plan.audit[1], entity=plan.audit[2],
                                 patient_id=plan.patient_id, detail={"control_id": h.control_id, "facility": ods},
                                 conn=conn)
        return then

    def known_place(self, key: tuple[str, str]) -> str | None:
        """A Location an earlier message found or created (remembered for PLACE_TTL seconds: wards and beds are
        directory data that rarely change, and every message of a ward names it)."""
        with self._lock:
            hit = self._places.get(key)
        return hit[0] if hit and time.monotonic() - hit[1] < PLACE_TTL else None

    def remember_place(self, key: tuple[str, str], lid: str) -> str:
        with self._lock:
            self._places[key] = (lid, time.monotonic())
        return lid

    def _duplicate(self, h: Header, seen: dict) -> Outcome:
        text = (f"duplicate: message {h.control_id} from {h.sending_facility} was applied at {seen['applied']}; "
                "not applied again")
        return Outcome("AA", h, text, notes=[text], duplicate=True, patient_id=seen.get("patient_id"))

    def _organisation(self, ods: str) -> tuple[str, str | None]:
        with self._lock:
            hit = self._orgs.get(ods)
        if hit:
            return hit
        found = self.gate.search(LISTENER, "Organization", [("identifier", f"{codes.ODS_ORGANIZATION}|{ods}")],
                                 query_text=f"Organization?identifier=ods|{ods}").matches
        live = [s for s in found if s.content.get("active") is not False]
        if not live:
            raise Fault("AR", 204, f"MSH-4 sending facility '{ods}' is not an organisation known here (no "
                                   f"Organization with ODS code {ods}): the message is kept and can be replayed "
                                   "once the organisation is added", "MSH", 4)
        org = sorted(live, key=lambda s: s.id)[0]
        with self._lock:
            self._orgs[ods] = (org.id, org.content.get("name"))
        return self._orgs[ods]

    # -- unmerge ---------------------------------------------------------------------------------------------------
    def unmerge(self, who: Principal, prior_id: str, *, reason: str) -> dict:
        """Undo an A40 merge: the record merged away is active again, both records lose the replaced-by/replaces
        links to each other, and the link between them in the gate's facts is removed; one transaction, audited."""
        from joinedup.governance.identity import SYSTEM

        if len((reason or "").strip()) < 10:
            raise ValueError("give a reason of at least 10 characters for the unmerge")
        prior = self.gate.read(SYSTEM, "Patient", prior_id).content
        links = [lk for lk in prior.get("link") or [] if lk.get("type") == "replaced-by"]
        if not links:
            raise ValueError(f"Patient/{prior_id} has not been merged into another record (no replaced-by link)")
        survivor_id = links[0]["other"]["reference"].split("/")[-1]
        survivor = self.gate.read(SYSTEM, "Patient", survivor_id).content
        p2 = _copy(prior)
        p2["link"] = [lk for lk in p2.get("link") or [] if (lk.get("other") or {}).get("reference")
                      != f"Patient/{survivor_id}"]
        if not p2["link"]:
            del p2["link"]
        p2["active"] = True
        s2 = _copy(survivor)
        s2["link"] = [lk for lk in s2.get("link") or [] if (lk.get("other") or {}).get("reference")
                      != f"Patient/{prior_id}"]
        if not s2["link"]:
            del s2["link"]
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": r, "request": {"method": "PUT", "url": f"Patient/{r['id']}"}}
                            for r in (p2, s2)]}
        receipt = {"facility": f"unmerge:{who.name}"[:180], "control_id": uuid.uuid4().hex, "trigger": "UNMERGE",
                   "received": _now(), "applied": _now(), "patient_id": prior_id, "note": reason[:4000]}
        self.gate.apply_message(who, bundle, receipt=receipt, unlink=[(prior_id, survivor_id)])
        self.gate.record(who, "unmerge", allowed=True, reason=reason[:1000], entity=f"Patient/{prior_id}",
                         patient_id=survivor_id, detail={"restored": f"Patient/{prior_id}",
                                                         "survivor": f"Patient/{survivor_id}"})
        return {"restored": prior_id, "survivor": survivor_id}


@dataclass
class Staged:
    """One message planned and ready to be applied."""

    msg: Message
    who: Principal
    ods: str
    plan: Plan
    bundle: dict
    receipt: dict
    keys: set[str]


class Plan:
    """The resources one message writes (built from what the store holds now, read as the integration account)."""

    def __init__(self, svc: Hl7Service, msg: Message, who: Principal, ods: str, org_id: str) -> None:
        self.svc, self.msg, self.who, self.ods, self.org_id = svc, msg, who, ods, org_id
        self.gate = svc.gate
        self.source = f"Organization/{org_id}"
        self.writes: list[dict] = []
        self.notes: list[str] = []
        self.patient_id: str | None = None
        self.encounter_id: str | None = None
        self.audit: tuple[str, str, str] | None = None
        self.blame = "PID"
        self.new_places: dict[tuple[str, str], str] = {}  # Locations this message creates (remembered once applied)

    # -- helpers -----------------------------------------------------------------------------------------------
    def find(self, rtype: str, params: list[tuple[str, str]]):
        if not any(k == "_count" for k, _v in params):
            params = params + [("_count", "20")]
        return self.gate.search(self.who, rtype, params,
                                query_text=f"{rtype}?" + "&".join(f"{k}={v}" for k, v in params)).matches

    def find_ident(self, rtype: str, pairs: list[tuple[str, str]], count: int = 20):
        """The resources holding any of the identifiers (system, value): the search `identifier=s|v,...`, answered
        by the gate's prepared lookup (Gate.find_by_identifier: checked and audited as that search)."""
        query = f"{rtype}?identifier={','.join(token(s, v) for s, v in pairs)}&_count={count}"
        return self.gate.find_by_identifier(self.who, rtype, pairs, count=count, query_text=query)

    def write(self, resource: dict, current: dict | None = None) -> None:
        if current is not None and _same(resource, current):
            return
        resource.setdefault("meta", {})["source"] = resource.get("meta", {}).get("source") or self.source
        self.writes = [w for w in self.writes if not (w["resourceType"] == resource["resourceType"]
                                                      and w["id"] == resource["id"])] + [resource]

    def event_time(self) -> str:
        evn = self.msg.segment("EVN")
        for n in (6, 2):  # EVN-6 event occurred, EVN-2 recorded date/time
            value = m.ts(first(evn, n), where=("EVN", n)) if evn else None
            if value:
                return value
        msh = self.msg.segment("MSH")
        return m.ts(first(msh, 7), where=("MSH", 7)) or _now()

    # -- the plan -----------------------------------------------------------------------------------------------
    def build(self) -> None:
        trigger = self.msg.trigger
        pid = self.msg.segment("PID")
        patient_id, patient, owned = self.patient(pid, "PID", 3)
        self.patient_id = patient_id
        if trigger == "A40":
            self.merge(patient_id, patient, owned)
            return
        if trigger in ("A28", "A31", "A08") and not owned and patient is not None:
            holder = (patient.get("meta") or {}).get("source") or "another organisation"
            self.notes.append(f"Patient/{patient_id} is held by {holder}: its demographics were not changed by this "
                              "feed")
        if trigger in ("A28", "A31"):
            return
        self.visit(patient_id)

    # -- Patient (PID, PD1) --------------------------------------------------------------------------------------
    def identifiers(self, fields: list[str] | None, seg: str, n: int) -> list[dict]:
        out = []
        for rep in reps(fields, n):
            ident = m.cx_identifier(rep, self.ods)
            if not ident.get("value"):
                continue
            if ident["system"] == codes.NHS_NUMBER and not valid_nhs_number(ident["value"]):
                raise Fault("AE", 102, f"{seg}-{n}: NHS number '{ident['value']}' fails its check digit (NHS Data "
                                       "Dictionary modulus 11)", seg, n, 1)
            out.append(ident)
        return out

    def patient(self, pid: list[str], seg: str, n: int) -> tuple[str, dict | None, bool]:
        """Resolve the record PID-3 names: the sender's number, else the NHS number; create it when unknown."""
        idents = self.identifiers(pid, seg, n)
        if not idents:
            raise Fault("AE", 101, f"{seg}-{n} patient identifier list has no identifier", seg, n)
        found = None
        # one search for every identifier PID-3 gives; then the preference: the sender's own numbers in PID-3
        # order, then the NHS number
        every = self.find_ident("Patient", [(i["system"], i["value"]) for i in idents], 200)

        def holding(ident: dict) -> list:
            return [s for s in every if any(x.get("system") == ident["system"] and x.get("value") == ident["value"]
                                            for x in s.content.get("identifier") or [])]

        for ident in (i for i in idents if i["system"] != codes.NHS_NUMBER):
            hits = holding(ident)
            if hits:
                found = sorted(hits, key=lambda s: (s.source != self.source, s.id))[0]
                break
        if found is None:
            for ident in (i for i in idents if i["system"] == codes.NHS_NUMBER):
                hits = holding(ident)
                if hits:
                    found = sorted(hits, key=lambda s: (s.source != self.source,
                                                        not s.content.get("generalPractitioner"), s.id))[0]
                    break
        if found is not None:
            current = found.content
            owned = found.source == self.source
            if owned:
                self.write(self.patient_resource(found.id, pid, current), current)
            return found.id, current, owned
        key = next((i["value"] for i in idents if i["system"] != codes.NHS_NUMBER), None)
        new_id = m.safe_id(self.ods, key) if key else m.safe_id(self.ods, "nhs", idents[0]["value"])
        self.write(self.patient_resource(new_id, pid, None))
        return new_id, None, True

    def patient_resource(self, pid_id: str, pid: list[str], current: dict | None) -> dict:
        """PID[Patient] and PD1[Patient] (v2-to-fhir): the fields listed in docs/hl7-v2.md."""
        res = _copy(current) if current else {"resourceType": "Patient", "id": pid_id}
        idents = self.identifiers(pid, "PID", 3)
        systems = {i["system"] for i in idents}
        res["identifier"] = idents + [i for i in res.get("identifier") or [] if i.get("system") not in systems]
        names = [x for r in reps(pid, 5) if (x := m.xpn_name(r))]
        if names:
            res["name"] = names
        birth = m.ts(first(pid, 7), where=("PID", 7))
        if birth:
            res["birthDate"] = m.date_only(birth)
        sex = first(pid, 8).upper()
        if sex:
            if sex not in m.SEX:
                raise Fault("AE", 103, f"PID-8 administrative sex '{sex}' is not in HL7 table 0001", "PID", 8)
            res["gender"] = m.SEX[sex]
        addresses = [a for r in reps(pid, 11) if (a := m.xad_address(r))]
        if addresses:
            res["address"] = addresses
        telecom = [t for r in reps(pid, 13) if (t := m.xtn_telecom(r, "home"))] + \
                  [t for r in reps(pid, 14) if (t := m.xtn_telecom(r, "work"))]
        if telecom:
            res["telecom"] = telecom
        died = m.ts(first(pid, 29), where=("PID", 29))
        if died:
            res.pop("deceasedBoolean", None)
            res["deceasedDateTime"] = died
        elif first(pid, 30).upper() == "Y":
            res.pop("deceasedDateTime", None)
            res["deceasedBoolean"] = True
        res.setdefault("active", True)
        gps = self.general_practitioner()
        if gps:
            res["generalPractitioner"] = gps
        return res

    def general_practitioner(self) -> list[dict]:
        """PD1-3 registered practice (XON: ODS code in XON.10 or XON.3) and PD1-4 GP (XCN.1 GMP/GMC code), each
        referenced only when the store holds it."""
        pd1 = self.msg.segment("PD1")
        if not pd1:
            return []
        out = []
        for rep in reps(pd1, 3):
            for k in (10, 3):
                code = first([*pd1[:3], rep], 3, k)
                if code:
                    hits = self.find_ident("Organization", [(codes.ODS_ORGANIZATION, code)])
                    if hits:
                        out.append({"reference": f"Organization/{hits[0].id}"})
                        break
        for rep in reps(pd1, 4):
            code, name = m.xcn(rep)
            hits = self.find("Practitioner", [("identifier", code)]) if code else []
            if hits:
                out.append({"reference": f"Practitioner/{hits[0].id}"})
            elif code or name:
                self.notes.append(f"PD1-4 GP '{name or code}' is not known here: not recorded")
        return out

    # -- Encounter (PV1), Location, EpisodeOfCare --------------------------------------------------------------------
    def visit(self, patient_id: str) -> None:
        trigger = self.msg.trigger
        pv1 = self.msg.segment("PV1")
        self.blame = "PV1"
        pv1_2 = first(pv1, 2)
        if not pv1_2:
            raise Fault("AE", 101, "PV1-2 patient class is required", "PV1", 2)
        cls = m.encounter_class(pv1_2)
        when = self.event_time()
        visit = first(pv1, 19)
        ident = {"system": m.local_system(self.ods, "visit-number"), "value": visit,
                 "type": {"coding": [{"system": m.V2_0203, "code": "VN"}], "text": "visit number"}} if visit else None
        current = None
        if ident:
            hits = self.find_ident("Encounter", [(ident["system"], visit)])
            current = hits[0].content if hits else None
        if current is None and not visit and trigger in ("A02", "A03", "A08", "A11", "A12", "A13"):
            hits = self.find("Encounter", [("subject", f"Patient/{patient_id}"), ("_sort", "-date")])
            open_ = [s for s in hits if s.content.get("status") in OPEN and
                     (s.content.get("serviceProvider") or {}).get("reference") == self.source]
            current = open_[0].content if open_ else None
        if current is None and trigger in ("A11", "A12", "A13"):
            raise Fault("AE", 204, f"ADT^{trigger} cancels an event of a visit not known here (PV1-19 "
                                   f"'{visit or '(empty)'}'): nothing to cancel; the message is kept and can be "
                                   "replayed", "PV1", 19)
        enc_id = current["id"] if current else m.safe_id(self.ods, "v", visit) if visit else \
            m.safe_id(self.ods, "msg", self.msg.header.control_id)
        enc = _copy(current) if current else {"resourceType": "Encounter", "id": enc_id,
                                                      "subject": {"reference": f"Patient/{patient_id}"}}
        self.encounter_id = enc_id
        enc["class"] = cls
        if ident:
            enc["identifier"] = [ident] + [i for i in enc.get("identifier") or [] if i.get("system") != ident["system"]]
        self.visit_fields(enc, pv1)
        start = m.ts(first(pv1, 44), where=("PV1", 44))
        end = m.ts(first(pv1, 45), where=("PV1", 45))
        period = dict(enc.get("period") or {})
        if start:
            period["start"] = start
        status = enc.get("status")
        location = self.location(pv1, 3)
        if trigger in ("A01", "A04", "A05"):
            if status == "finished" and current is not None:
                self.notes.append(f"ADT^{trigger} arrived after the visit was discharged: Encounter/{enc_id} stays "
                                  "finished (messages out of order)")
            elif status == "entered-in-error" and current is not None:
                self.notes.append(f"ADT^{trigger} for a visit cancelled earlier: Encounter/{enc_id} stays "
                                  "entered-in-error")
            else:
                status = "planned" if trigger == "A05" else m.CLASS_STATUS.get(pv1_2.upper(), "in-progress")
                if trigger != "A05":
                    period.setdefault("start", when)
            if location:
                self.move(enc, location, period.get("start") or when, planned=status == "planned")
        elif trigger == "A02":
            if current is None:
                status = m.CLASS_STATUS.get(pv1_2.upper(), "in-progress")
                self.notes.append(f"ADT^A02 for a visit not admitted here: Encounter/{enc_id} created in progress "
                                  "at the new location (messages out of order)")
            if not location:
                raise Fault("AE", 101, "ADT^A02 needs PV1-3, the location the patient moved to", "PV1", 3)
            self.move(enc, location, when)
        elif trigger == "A03":
            end = end or when
            if current is None:
                self.notes.append(f"ADT^A03 discharge for a visit not admitted here: Encounter/{enc_id} created "
                                  "finished from the discharge (messages out of order)")
            status = "finished"
            period["end"] = end
            if location and not any(loc.get("location", {}).get("reference") == location for loc in
                                    enc.get("location") or []):
                self.move(enc, location, start or when)
            for loc in enc.get("location") or []:
                if loc.get("status") in ("active", "planned", None):
                    loc["status"] = "completed"
                    loc.setdefault("period", {})["end"] = end
        elif trigger == "A08":
            if end:
                status = "finished"
            elif current is None:
                status = m.CLASS_STATUS.get(pv1_2.upper(), "in-progress")
                self.notes.append(f"ADT^A08 for a visit not known here: Encounter/{enc_id} created")
            if location and current is None:
                self.move(enc, location, when)
        elif trigger == "A11":
            status = "entered-in-error"
            self.notes.append(f"admission cancelled: Encounter/{enc_id} marked entered-in-error")
        elif trigger == "A12":
            if not self.undo_move(enc):
                self.notes.append(f"ADT^A12: Encounter/{enc_id} has no earlier location to go back to")
        elif trigger == "A13":
            if status != "finished":
                self.notes.append(f"ADT^A13: Encounter/{enc_id} was not discharged ({status})")
            status = "in-progress"
            period.pop("end", None)
            (enc.get("hospitalization") or {}).pop("dischargeDisposition", None)
            locs = enc.get("location") or []
            if locs:
                locs[-1]["status"] = "active"
                (locs[-1].get("period") or {}).pop("end", None)
        if period.get("start") and period.get("end") and m.later(period["start"], period["end"]):
            raise Fault("AE", 102, f"the visit would end ({period['end']}) before it starts ({period['start']})",
                        "PV1", 45)
        enc["status"] = status or m.CLASS_STATUS.get(pv1_2.upper(), "in-progress")
        if period:
            enc["period"] = period
        if not enc.get("hospitalization"):
            enc.pop("hospitalization", None)
        episode = self.episode(visit if cls.get("code") == "IMP" else "", patient_id, enc["status"], period)
        if episode:
            enc["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{episode}"}]
        enc["serviceProvider"] = {"reference": self.source}
        self.write(enc, current)
        verb = {"A01": "admitted", "A02": "transferred", "A03": "discharged", "A04": "registered",
                "A05": "pre-admitted", "A08": "visit updated", "A11": "admission cancelled",
                "A12": "transfer cancelled", "A13": "discharge cancelled"}[trigger]
        self.audit = ("hl7-" + trigger.lower(), f"{verb} (ADT^{trigger} from {self.ods}); " + "; ".join(self.notes),
                      f"Encounter/{enc_id}")

    def visit_fields(self, enc: dict, pv1: list[str]) -> None:
        """PV1-4 type, -5 pre-admission id, -7/8/9/17 participants, -10 service, -13 readmission, -14 admit source,
        -36 discharge disposition (v2-to-fhir PV1[Encounter])."""
        admission_type = [c for r in reps(pv1, 4) if (c := m.cwe_concept(r, m.V2_0007))]
        if admission_type:
            enc["type"] = admission_type
        service = next((c for r in reps(pv1, 10) if (c := m.cwe_concept(r, m.V2_0069))), None)
        if service:
            enc["serviceType"] = service
        hosp = dict(enc.get("hospitalization") or {})
        pre = first(pv1, 5)
        if pre:
            hosp["preAdmissionIdentifier"] = {"system": m.local_system(self.ods, "preadmit-number"), "value": pre}
        for n, key, system in ((13, "reAdmission", None), (14, "admitSource", m.V2_0023),
                               (36, "dischargeDisposition", m.V2_0112)):
            concept = next((c for r in reps(pv1, n) if (c := m.cwe_concept(r, system))), None)
            if concept:
                hosp[key] = concept
        enc["hospitalization"] = hosp
        participants = []
        for n, code, display in m.PARTICIPANTS:
            for rep in reps(pv1, n):
                ident, name = m.xcn(rep)
                if not ident and not name:
                    continue
                who: dict[str, Any] = {}
                hits = self.find("Practitioner", [("identifier", ident)]) if ident else []
                if hits:
                    who["reference"] = f"Practitioner/{hits[0].id}"
                who["display"] = name or ident
                participants.append({"type": [{"coding": [{"system": m.V3_PARTICIPATION, "code": code,
                                                           "display": display}]}], "individual": who})
        if participants:
            enc["participant"] = participants

    def location(self, pv1: list[str], n: int) -> str | None:
        """PL -> Location (v2-to-fhir PL[Location]): the ward (point of care) and, when given, the bed as its own
        Location part of the ward; returns the reference of the most granular one."""
        rep = next(iter(reps(pv1, n)), None)
        if not rep:
            return None
        pl = m.pl_parts(rep)
        if not pl["poc"]:
            if pl["room"] or pl["bed"]:
                raise Fault("AE", 101, f"PV1-{n}.1 point of care is required when a room or bed is given", "PV1", n, 1)
            return None
        ward = self.place(pl["poc"], pl["description"] or pl["poc"], "wa", "Ward", None)
        if not pl["bed"] and not pl["room"]:
            return f"Location/{ward}"
        key = "/".join(x for x in (pl["poc"], pl["room"], pl["bed"]) if x)
        label = " ".join(x for x in (pl["poc"], pl["room"] and f"room {pl['room']}", pl["bed"] and f"bed {pl['bed']}")
                         if x)
        bed = self.place(key, label, "bd" if pl["bed"] else "ro", "Bed" if pl["bed"] else "Room", ward)
        return f"Location/{bed}"

    def place(self, key: str, name: str, kind: str, kind_text: str, part_of: str | None) -> str:
        system = m.local_system(self.ods, "location")
        known = self.svc.known_place((system, key))
        if known:
            return known
        hits = self.find_ident("Location", [(system, key)])
        if hits:
            return self.svc.remember_place((system, key), hits[0].id)
        if part_of is None:  # a ward the directory already holds under its name (e.g. loaded from FHIR)
            named = [s for s in self.find("Location", [("name:exact", name), ("organization", self.source)])]
            if named:
                return self.svc.remember_place((system, key), named[0].id)
        lid = m.safe_id(self.ods, "loc", key)
        self.new_places[(system, key)] = lid
        res: dict[str, Any] = {"resourceType": "Location", "id": lid, "identifier": [{"system": system, "value": key}],
                               "status": "active", "name": name, "mode": "instance",
                               "physicalType": {"coding": [{"system": m.LOCATION_TYPE, "code": kind,
                                                            "display": kind_text}]},
                               "managingOrganization": {"reference": self.source}}
        if part_of:
            res["partOf"] = {"reference": f"Location/{part_of}"}
        self.write(res)
        return lid

    def move(self, enc: dict, location: str, when: str, *, planned: bool = False) -> None:
        """Location history: the current location is completed at `when` and the new one is active from then."""
        locs = enc.setdefault("location", [])
        if locs and locs[-1].get("location", {}).get("reference") == location and \
                locs[-1].get("status") in ("active", "planned", None):
            return
        for loc in locs:
            if loc.get("status") in ("active", "planned", None):
                loc["status"] = "completed"
                loc.setdefault("period", {})["end"] = when
        locs.append({"location": {"reference": location}, "status": "planned" if planned else "active",
                     "period": {"start": when}})

    def undo_move(self, enc: dict) -> bool:
        locs = enc.get("location") or []
        if len(locs) < 2:
            return False
        locs.pop()
        locs[-1]["status"] = "active"
        (locs[-1].get("period") or {}).pop("end", None)
        return True

    def episode(self, value: str, patient_id: str, status: str, period: dict) -> str | None:
        """The hospital spell of an inpatient visit -> EpisodeOfCare managed by the sending organisation, active while
        the person is in hospital (the IG maps EpisodeOfCare from PV1-54, which HL7 added only in v2.7: for
        v2.3-2.5.1 the inpatient visit number stands for the spell)."""
        if not value:
            return None
        system = m.local_system(self.ods, "spell")
        hits = self.find_ident("EpisodeOfCare", [(system, value)])
        current = hits[0].content if hits else None
        eid = current["id"] if current else m.safe_id(self.ods, "eoc", value)
        res = _copy(current) if current else {"resourceType": "EpisodeOfCare", "id": eid,
                                                      "identifier": [{"system": system, "value": value}],
                                                      "patient": {"reference": f"Patient/{patient_id}"},
                                                      "managingOrganization": {"reference": self.source}}
        res["status"] = {"in-progress": "active", "finished": "finished", "planned": "planned",
                         "entered-in-error": "entered-in-error", "cancelled": "cancelled"}.get(status, "active")
        eperiod = dict(res.get("period") or {})
        if period.get("start") and not eperiod.get("start"):
            eperiod["start"] = period["start"]
        if res["status"] == "finished" and period.get("end"):
            eperiod["end"] = period["end"]
        elif res["status"] != "finished":
            eperiod.pop("end", None)
        if eperiod:
            res["period"] = eperiod
        self.write(res, current)
        return eid

    # -- A40 merge -----------------------------------------------------------------------------------------------
    def merge(self, survivor_id: str, survivor: dict | None, owned: bool) -> None:
        """A40: the record named in MRG-1 is merged into the one named in PID-3: the old record gets Patient.link
        replaced-by and becomes inactive, the surviving one gets Patient.link replaces (FHIR Patient.link; the
        integration account's links join the two records in the gate's facts); reversible with `hl7 unmerge`."""
        self.blame = "MRG"
        mrg = self.msg.segment("MRG")
        idents = self.identifiers(mrg, "MRG", 1)
        if not idents:
            raise Fault("AE", 101, "MRG-1 prior patient identifier list has no identifier", "MRG", 1)
        prior = None
        for ident in idents:
            hits = self.find_ident("Patient", [(ident["system"], ident["value"])])
            hits = [s for s in hits if s.id != survivor_id]
            if hits:
                prior = sorted(hits, key=lambda s: (s.source != self.source, s.id))[0]
                break
        if prior is None:
            raise Fault("AE", 204, "MRG-1: no record here holds the prior patient identifier "
                                   f"'{idents[0]['value']}' to merge", "MRG", 1)
        if prior.source != self.source or not owned:
            raise Fault("AE", 207, f"MRG-1: Patient/{prior.id} or Patient/{survivor_id} is held by another "
                                   "organisation: a feed merges only its own organisation's records", "MRG", 1)
        surv = next((w for w in self.writes if w["resourceType"] == "Patient" and w["id"] == survivor_id), None)
        surv = _copy(surv or survivor or {})
        old = _copy(prior.content)
        old["active"] = False
        old["link"] = [lk for lk in old.get("link") or [] if (lk.get("other") or {}).get("reference") !=
                       f"Patient/{survivor_id}"] + [{"other": {"reference": f"Patient/{survivor_id}"},
                                                    "type": "replaced-by"}]
        surv["link"] = [lk for lk in surv.get("link") or [] if (lk.get("other") or {}).get("reference") !=
                        f"Patient/{prior.id}"] + [{"other": {"reference": f"Patient/{prior.id}"}, "type": "replaces"}]
        self.write(old, prior.content)
        self.write(surv, survivor)
        self.notes.append(f"Patient/{prior.id} merged into Patient/{survivor_id}")
        self.audit = ("hl7-merge", f"Patient/{prior.id} merged into Patient/{survivor_id} (ADT^A40 from {self.ods})",
                      f"Patient/{prior.id}")


def token(system: str, value: str) -> str:
    """A FHIR token search value system|code, with the search syntax characters escaped (FHIR R4 search, "Escaping
    Search Parameters": backslash, comma, pipe and dollar)."""
    def esc(x: str) -> str:
        return x.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")

    return f"{esc(system)}|{esc(value)}"


def _copy(resource: dict) -> dict:
    """A deep copy of a stored resource (JSON: orjson's round trip is several times faster than copy.deepcopy)."""
    return orjson.loads(orjson.dumps(resource))


def _same(a: dict, b: dict) -> bool:
    strip = lambda r: {k: v for k, v in r.items() if k != "meta"}  # noqa: E731
    return strip(a) == strip(b)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the acknowledgement -------------------------------------------------------------------------------------------
def ack_message(out: Outcome) -> str:
    """The ACK: MSH, MSA (AA/AE/AR echoing MSH-10) and, when something is wrong or worth saying, ERR with the
    segment and field at fault (ERR-2 in v2.5+, ERR-1 in earlier versions) and the HL7 table 0357 code."""
    h = out.header
    version = h.version if h.version in ("2.3", "2.3.1", "2.4", "2.5", "2.5.1") else "2.5.1"
    trigger = h.trigger or ""
    mtype = f"ACK^{trigger}" if version == "2.3" else f"ACK^{trigger}^ACK"
    segs = [f"MSH|^~\\&|{RECEIVER_APP}|{RECEIVER_FACILITY}|{escape(h.sending_app)}|{escape(h.sending_facility)}|"
            f"{m.now_ts()}||{mtype}|{uuid.uuid4().hex[:20]}|{escape(h.processing_id or 'P')}|{version}",
            f"MSA|{out.ack_code}|{escape(h.control_id)}|{escape(out.text[:80])}"]
    fault = out.fault
    if fault is not None:
        segs.append(_err(version, fault.location, fault.code, fault.text, "E"))
    elif out.notes:
        for note in out.notes:
            segs.append(_err(version, None, 0, note, "W" if not out.duplicate else "I"))
    return "\r".join(segs) + "\r"


_CODE_TEXT = {0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing",
              102: "Data type error", 103: "Table value not found", 200: "Unsupported message type",
              201: "Unsupported event code", 202: "Unsupported processing id", 203: "Unsupported version id",
              204: "Unknown key identifier", 205: "Duplicate key identifier", 206: "Application record locked",
              207: "Application internal error"}


def _err(version: str, location: str | None, code: int, text: str, severity: str) -> str:
    code_text = _CODE_TEXT.get(code, "")
    if version in ("2.3", "2.3.1", "2.4"):
        loc = (location or "").split("^")
        eld = "^".join([*(loc[:3] + [""] * (3 - len(loc[:3]))), f"{code}&{code_text}&HL70357"])
        return f"ERR|{eld}"  # v2.3-2.4 ERR has ERR-1 only: the reason is in MSA-3
    return (f"ERR||{location or ''}|{code}^{code_text}^HL70357|{severity}||||{escape(text)[:250]}")
