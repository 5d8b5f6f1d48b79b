"""CDS Hooks 2.0 services over the conflict engine: discovery, patient-view, order-select, order-sign, feedback.

Plain functions with keyword-only arguments (no web objects). Every read of the store - the store fallback when
prefetch is absent, and the look-up of acknowledged findings - and every write (feedback) goes through the gate as
the authenticated caller.

Acknowledgement: feedback (accepted or overridden) is stored as a FHIR `ClinicalImpression` (the clinician's
review of the alert) whose id is derived from the patient and the finding *fingerprint* (rule + every involved
resource with a hash of its content). A finding whose acknowledgement exists is not shown again for that patient; when any involved fact changes (a new result, an edited
medicine, another resource involved), the fingerprint changes and the card returns.
"""

from __future__ import annotations

import copy
import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.identity import Principal

from . import preferences
from .detect import build_record, detect
from .knowledge import load_knowledge
from .models import Finding
from .resolve import resolve

BASE = "https://joinedup.example"
FINGERPRINT_SYSTEM = f"{BASE}/Id/conflict-finding-fingerprint"
RULE_SYSTEM = f"{BASE}/CodeSystem/conflict-rule"
OVERRIDE_SYSTEM = f"{BASE}/CodeSystem/cds-override-reason"
OUTCOME_SYSTEM = f"{BASE}/CodeSystem/cds-feedback-outcome"
OVERRIDE_EXTENSION = f"{BASE}/fhir/StructureDefinition/cds-override-reason"
ACK_TYPE = "ClinicalImpression"
CARD_NAMESPACE = uuid.UUID("6f1f9a52-4c0b-4c53-9a7e-3f7a0c1b2d10")
INDICATOR = {"critical": "critical", "high": "warning", "moderate": "warning", "low": "info"}
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement")
RECORD_TYPES = {"Patient", "Condition", "MedicationRequest", "MedicationStatement", "Observation",
                "AllergyIntolerance", "Medication", "Immunization"}
MONITORING = {
    "egfr": "Urea and electrolytes with eGFR (renal function)",
    "potassium": "Serum potassium (urea and electrolytes)",
    "sodium": "Serum sodium (urea and electrolytes)",
    "magnesium": "Serum magnesium",
    "heart_rate": "Pulse rate and ECG",
    "hba1c": "HbA1c",
}
RENAL_RULES = {"ddis-nsaid-ckd", "dd-triple-whammy", "dd-acei-arb"}
OVERRIDE_REASONS = [
    {"system": OVERRIDE_SYSTEM, "code": "benefit-outweighs-risk", "display": "Benefit outweighs the risk for this person"},
    {"system": OVERRIDE_SYSTEM, "code": "already-reviewed", "display": "Already reviewed; plan in place"},
    {"system": OVERRIDE_SYSTEM, "code": "specialist-advice", "display": "Following specialist advice"},
    {"system": OVERRIDE_SYSTEM, "code": "patient-choice", "display": "Informed choice of the person"},
    {"system": OVERRIDE_SYSTEM, "code": "not-applicable", "display": "Does not apply (record out of date)"},
]
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class CdsError(Exception):
    """A CDS Hooks error: HTTP status, a short machine code and a message fit to show."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "status": self.status}


def _bad(message: str) -> CdsError:
    return CdsError(400, "bad-request", message)


# -- discovery ---------------------------------------------------------------------------------------------------
def prefetch_templates() -> dict[str, str]:
    """Prefetch templates shared by the three services (results limited to the codes the rules use)."""
    kb = load_knowledge()
    loinc = ",".join(f"{codes.LOINC}|{c}" for c in sorted(kb.result_loinc))
    p = "{{context.patientId}}"
    return {
        "patient": f"Patient/{p}",
        "conditions": f"Condition?patient={p}",
        "medications": f"MedicationRequest?patient={p}&_include=MedicationRequest:medication",
        "medicationStatements": f"MedicationStatement?patient={p}&_include=MedicationStatement:medication",
        "observations": f"Observation?patient={p}&code={loinc}",
        "allergies": f"AllergyIntolerance?patient={p}",
    }


SERVICES: dict[str, dict[str, str]] = {
    "joinedup-conflicts-patient-view": {
        "hook": "patient-view", "title": "Multimorbidity conflicts",
        "description": "Clashes between the person's medicines, conditions, results, lifestyle advice and reviews, "
                       "with least-harm suggestions (decision support only)."},
    "joinedup-conflicts-order-select": {
        "hook": "order-select", "title": "Multimorbidity conflicts for selected orders",
        "description": "Checks newly selected draft medication orders against the whole record: drug-drug, "
                       "drug-disease, drug-result, duplicate and burden rules."},
    "joinedup-conflicts-order-sign": {
        "hook": "order-sign", "title": "Multimorbidity conflicts before signing",
        "description": "Checks every draft medication order about to be signed against the whole record."},
}


def discovery() -> dict[str, Any]:
    """The CDS Hooks discovery document."""
    templates = prefetch_templates()
    return {"services": [{"hook": s["hook"], "id": sid, "title": s["title"], "description": s["description"],
                          "prefetch": templates,
                          "usageRequirements": "Send 'Authorization: Bearer <token>' (a JoinedUp token). "
                                               "Without prefetch, the record is read from JoinedUp's store "
                                               "as the authenticated user."}
                         for sid, s in SERVICES.items()]}


def service_hook(service_id: str) -> str:
    """The hook a service answers (CdsError 404 for an unknown service)."""
    s = SERVICES.get(service_id)
    if s is None:
        raise CdsError(404, "unknown-service", f"No CDS service '{service_id}'; GET /cds-services lists them")
    return s["hook"]


# -- the request --------------------------------------------------------------------------------------------------
@dataclass
class HookRequest:
    """A validated hook call."""

    service_id: str
    hook: str
    hook_instance: str
    patient_id: str
    user_id: str | None
    drafts: list[dict[str, Any]] = field(default_factory=list)
    selections: list[str] = field(default_factory=list)
    prefetch: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def parse_json(raw: bytes) -> Any:
    """Parse a request body (CdsError 400 when it is not JSON)."""
    if not raw.strip():
        raise _bad("empty request body: send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request body is not valid JSON ({str(exc).splitlines()[0]})") from None


def _ref_patient(res: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = (res.get(key) or {}).get("reference") if isinstance(res.get(key), dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None


def _resources_of(key: str, value: Any, patient_id: str) -> list[dict[str, Any]] | None:
    """Resources of one prefetch value; None means 'not supplied' (null or an OperationOutcome)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise _bad(f"prefetch.{key} must be a FHIR resource or Bundle (or null)")
    if value["resourceType"] == "OperationOutcome":
        return None
    if value["resourceType"] == "Bundle":
        entries = value.get("entry") or []
        if not isinstance(entries, list):
            raise _bad(f"prefetch.{key}.entry must be a list")
        out = []
        for n, e in enumerate(entries):
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                raise _bad(f"prefetch.{key}.entry[{n}] has no resource with a resourceType")
            if res["resourceType"] == "OperationOutcome":
                continue
            out.append(res)
    else:
        out = [value]
    for res in out:
        if res["resourceType"] == "Patient":
            if res.get("id") != patient_id:
                raise _bad(f"prefetch.{key} holds Patient/{res.get('id')}, not context.patientId {patient_id}")
        else:
            other = _ref_patient(res)
            if other is not None and other != patient_id:
                raise _bad(f"prefetch.{key} holds {res['resourceType']}/{res.get('id')} of another patient "
                           f"(Patient/{other})")
    return out


def parse_hook_request(*, service_id: str, body: Any) -> HookRequest:
    """Validate a hook request against the service (CdsError 400/404 with a precise message)."""
    hook = service_hook(service_id)
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    if body.get("hook") != hook:
        raise _bad(f"'hook' must be '{hook}' for service {service_id}, not {body.get('hook')!r}")
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance:
        raise _bad("'hookInstance' (a UUID string) is required")
    ctx = body.get("context")
    if not isinstance(ctx, dict):
        raise _bad("'context' must be a JSON object")
    pid = ctx.get("patientId")
    if not isinstance(pid, str) or not _ID.match(pid):
        raise _bad("context.patientId is required: the FHIR id of the patient (letters, digits, '-', '.')")
    user = ctx.get("userId")
    if user is not None and not isinstance(user, str):
        raise _bad("context.userId must be a string such as 'Practitioner/123'")
    req = HookRequest(service_id=service_id, hook=hook, hook_instance=instance, patient_id=pid, user_id=user)
    if hook in ("order-select", "order-sign"):
        bundle = ctx.get("draftOrders")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise _bad(f"context.draftOrders must be a FHIR Bundle of draft orders for {hook}")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise _bad("context.draftOrders.entry must be a list")
        for n, e in enumerate(entries):
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                raise _bad(f"context.draftOrders.entry[{n}] has no resource with a resourceType")
            res = copy.deepcopy(res)
            if not res.get("id"):
                res["id"] = f"draft-{n + 1}"
            other = _ref_patient(res)
            if other is not None and other != pid:
                raise _bad(f"context.draftOrders.entry[{n}] is for Patient/{other}, not {pid}")
            req.drafts.append(res)
        if hook == "order-select":
            sel = ctx.get("selections")
            if not isinstance(sel, list) or not sel or not all(isinstance(s, str) for s in sel):
                raise _bad("context.selections must be a non-empty list of references such as "
                           "'MedicationRequest/123'")
            known = {f"{r['resourceType']}/{r['id']}" for r in req.drafts}
            missing = [s for s in sel if s not in known]
            if missing:
                raise _bad(f"context.selections {missing} are not in context.draftOrders")
            req.selections = list(sel)
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise _bad("'prefetch' must be a JSON object keyed by the prefetch template names")
    for key in prefetch_templates():
        if prefetch and key in prefetch:
            got = _resources_of(key, prefetch[key], pid)
            if got is not None:
                req.prefetch[key] = got
    return req


# -- the record: prefetch first, then the store through the gate --------------------------------------------------
def _split_template(template: str, patient_id: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    url = template.replace("{{context.patientId}}", patient_id)
    path, _, query = url.partition("?")
    rtype, _, rid = path.partition("/")
    params = [tuple(p.split("=", 1)) for p in query.split("&") if "=" in p] if query else []
    return rtype, rid or None, params  # type: ignore[return-value]


def gather_record(*, gate: Any, who: Principal, req: HookRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The person's resources: prefetch where supplied, otherwise read through the gate as `who`.

    Returns (resources, keys fetched from the store).
    """
    resources: list[dict[str, Any]] = []
    fetched: list[str] = []
    for key, template in prefetch_templates().items():
        if key in req.prefetch:
            resources.extend(req.prefetch[key])
            continue
        fetched.append(key)
        rtype, rid, params = _split_template(template, req.patient_id)
        try:
            if rid:
                resources.append(gate.read(who, rtype, rid).content)
                continue
            offset = 0
            while True:
                page = gate.search(who, rtype, [*params, ("_count", "1000"), ("_offset", str(offset))],
                                   query_text=f"cds:{req.service_id}:{key}", default_count=1000, max_count=1000)
                resources.extend(s.content for s in page.matches)
                resources.extend(s.content for s in page.included)
                if not page.has_more or not page.matches:
                    break
                offset += len(page.matches)
        except FhirError as exc:
            if exc.status in (404, 410) and rid:
                raise CdsError(412, "precondition-failed",
                               f"Patient/{req.patient_id} is not known to this service and no 'patient' prefetch "
                               "was supplied") from None
            raise
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in resources:
        k = (r.get("resourceType"), r.get("id"))
        if r.get("id") and k in seen:
            continue
        seen.add(k)
        unique.append(r)
    return unique, fetched


# -- fingerprints and acknowledgements ------------------------------------------------------------------------------
def _content_hash(res: dict[str, Any] | None) -> str:
    if res is None:
        return "-"
    core = {k: v for k, v in res.items() if k not in ("meta", "text")}
    return hashlib.sha256(orjson.dumps(core, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def fingerprint(finding: dict[str, Any] | Finding, by_ref: dict[str, dict[str, Any]]) -> str:
    """Rule + the set of involved resources, each with a hash of its facts (content without meta/narrative)."""
    rule = finding["rule"] if isinstance(finding, dict) else finding.rule
    involves = finding["involves"] if isinstance(finding, dict) else finding.involves
    parts = sorted(f"{ref}@{_content_hash(by_ref.get(ref))}" for ref in involves)
    return hashlib.sha256("|".join([rule, *parts]).encode()).hexdigest()[:32]


def acknowledgement_id(patient_id: str, fp: str) -> str:
    """The ClinicalImpression id recording an acknowledgement (deterministic: one per patient and fingerprint)."""
    return "cds-ack-" + hashlib.sha256(f"{patient_id}|{fp}".encode()).hexdigest()[:40]


def acknowledged(*, gate: Any, who: Principal, patient_id: str, fingerprints: list[str]) -> set[str]:
    """Fingerprints already acknowledged for this patient (one gated search)."""
    return set(acknowledgements(gate=gate, who=who, patient_id=patient_id, fingerprints=fingerprints))


def acknowledgements(*, gate: Any, who: Principal, patient_id: str,
                     fingerprints: list[str]) -> dict[str, dict[str, Any]]:
    """Acknowledged fingerprints for this patient, each with what was decided, by whom, when and why."""
    if not fingerprints:
        return {}
    ids = {acknowledgement_id(patient_id, fp): fp for fp in fingerprints}
    out: dict[str, dict[str, Any]] = {}
    keys = sorted(ids)
    for i in range(0, len(keys), 200):
        chunk = keys[i:i + 200]
        page = gate.search(who, ACK_TYPE, [("patient", patient_id), ("_id", ",".join(chunk)),
                                           ("_count", str(len(chunk)))],
                           query_text=f"{ACK_TYPE}?patient={patient_id}&_id=(acknowledged conflict findings)")
        for s in page.matches:
            c = s.content
            if (c.get("subject") or {}).get("reference") == f"Patient/{patient_id}":
                coding = next(iter((c.get("code") or {}).get("coding") or []), {})
                out[ids[s.id]] = {
                    "outcome": coding.get("code"), "display": coding.get("display"),
                    "by": (c.get("assessor") or {}).get("display"), "when": c.get("date"),
                    "comment": next((n.get("text") for n in c.get("note") or [] if n.get("text")), None),
                }
    return out


# -- cards ----------------------------------------------------------------------------------------------------------
def merge_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per rule and summary: the same medicine recorded by several sources (GP, hospital, pharmacy)
    would otherwise give one card per combination of duplicate lines (alert fatigue)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for f in findings:
        key = (f["rule"], f["summary"])
        m = merged.get(key)
        if m is None:
            merged[key] = dict(f, involves=list(f["involves"]))
        else:
            m["involves"].extend(r for r in f["involves"] if r not in m["involves"])
    return list(merged.values())


@dataclass
class IssuedCard:
    """What the service remembers of a card until feedback arrives."""

    service_id: str
    patient_id: str
    fingerprint: str
    finding: dict[str, Any]
    suggestions: dict[str, str]
    issued: str
    drafts: set[str] = field(default_factory=set)


class CardRegistry:
    """Cards issued recently (bounded, in process) so feedback can be tied to its finding and patient."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._cards: OrderedDict[str, IssuedCard] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, card_uuid: str, card: IssuedCard) -> None:
        with self._lock:
            self._cards[card_uuid] = card
            self._cards.move_to_end(card_uuid)
            while len(self._cards) > self.limit:
                self._cards.popitem(last=False)

    def get(self, card_uuid: str) -> IssuedCard | None:
        with self._lock:
            return self._cards.get(card_uuid)


REGISTRY = CardRegistry()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suggestion(card_uuid: str, label: str, actions: list[dict[str, Any]], recommended: bool = False
                ) -> dict[str, Any]:
    s: dict[str, Any] = {"label": label[:200], "uuid": str(uuid.uuid5(uuid.UUID(card_uuid), label)),
                         "actions": actions}
    if recommended:
        s["isRecommended"] = True
    return s


def _draft_medication(patient_id: str, name: str, reason_refs: list[str]) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "status": "draft", "intent": "proposal",
            "subject": {"reference": f"Patient/{patient_id}"}, "medicationCodeableConcept": {"text": name},
            "reasonReference": [{"reference": r} for r in reason_refs if r.startswith("Condition/")],
            "note": [{"text": "Proposed by the JoinedUp conflict engine (decision support); review before use."}]}


def _stopped(res: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(res)
    out["status"] = "stopped" if res.get("resourceType") == "MedicationStatement" else (
        "cancelled" if res.get("status") == "draft" else "stopped")
    return out


def _suggestions(card_uuid: str, f: dict[str, Any], *, patient_id: str, by_ref: dict[str, dict[str, Any]],
                 drafts: set[str], changes: list[dict[str, Any]], kb: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    labels: set[str] = set()

    def add(label: str, actions: list[dict[str, Any]], recommended: bool = False) -> None:
        if label not in labels:
            labels.add(label)
            out.append(_suggestion(card_uuid, label, actions, recommended))

    tag = f"[{f['rule']}]"
    involved = set(f["involves"])
    for ch in changes:
        if tag not in ch.get("reason", ""):
            continue
        target, to, action = ch.get("target"), ch.get("to"), ch.get("action")
        res = by_ref.get(target) if isinstance(target, str) else None
        name = ((res or {}).get("medicationCodeableConcept") or {}).get("text") or target
        if action in ("stop", "switch") and target in involved and res is not None:
            if target in drafts:
                acts = [{"type": "delete", "description": f"Remove the draft order for {name}",
                         "resourceId": target}]
            else:
                acts = [{"type": "update", "description": f"Stop {name}", "resource": _stopped(res)}]
            if action == "switch" and to:
                acts.append({"type": "create", "description": f"Draft an order for {to}",
                             "resource": _draft_medication(patient_id, to, f["involves"])})
                add(f"Switch {name} to {to}", acts, recommended=not out)
            else:
                add(f"{'Do not start' if target in drafts else 'Stop'} {name}", acts, recommended=not out)
        elif action == "add" and to:
            add(f"Start {to}" if f["kind"] == "omission" else f"Add {to} for protection", [{"type": "create", "description": f"Draft an order for {to}",
                                               "resource": _draft_medication(patient_id, to, f["involves"])}],
                recommended=not out)
        elif action == "adjust-dose" and target in involved:
            add(f"Review and reduce the dose of {name}", [], recommended=not out)
    for ref in f["involves"]:
        if ref in drafts:
            res = by_ref.get(ref) or {}
            name = (res.get("medicationCodeableConcept") or {}).get("text") or ref
            add(f"Do not start {name}", [{"type": "delete", "description": f"Remove the draft order for {name}",
                                           "resourceId": ref}])
    tests = []
    if f["kind"] in ("drug-result", "monitoring"):
        for ref in f["involves"]:
            res = by_ref.get(ref) or {}
            if res.get("resourceType") == "Observation":
                tests.append(MONITORING.get(_result_key(kb, res), "Repeat the result"))
    elif f["rule"] in RENAL_RULES:
        tests.append(MONITORING["egfr"])
    for test in dict.fromkeys(tests):
        add(f"Order monitoring: {test}", [{"type": "create", "description": f"Request {test}", "resource": {
            "resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
            "subject": {"reference": f"Patient/{patient_id}"}, "code": {"text": test},
            "reasonCode": [{"text": f["summary"]}],
            "note": [{"text": "Proposed by the JoinedUp conflict engine (decision support)."}]}}])
    return out


def _result_key(kb: Any, obs: dict[str, Any]) -> str:
    for c in (obs.get("code") or {}).get("coding") or []:
        key = kb.result_loinc.get(str(c.get("code")))
        if key:
            return key
    return ""


def card_for(*, finding: dict[str, Any], fp: str, req: HookRequest, by_ref: dict[str, dict[str, Any]],
             changes: list[dict[str, Any]], base_url: str, kb: Any) -> dict[str, Any]:
    """One CDS Hooks card for a finding (and remember it for feedback)."""
    card_uuid = str(uuid.uuid5(CARD_NAMESPACE, f"{req.patient_id}|{fp}"))
    drafts = {f"{d['resourceType']}/{d['id']}" for d in req.drafts}
    summary = finding["summary"]
    if len(summary) > 139:
        summary = summary[:136].rstrip() + "..."
    lines = [finding["detail"], "", f"**Severity:** {finding['severity']} ({finding['kind']})", "",
             "**Involves:**"]
    for ref in finding["involves"]:
        res = by_ref.get(ref) or {}
        label = ((res.get("medicationCodeableConcept") or res.get("code") or {}).get("text")
                 or next((c.get("display") for c in (res.get("code") or {}).get("coding") or [] if c.get("display")),
                         None) or "")
        value = (res.get("valueQuantity") or {}).get("value")
        extra = f" = {value:g}" if isinstance(value, (int, float)) else ""
        lines.append(f"- `{ref}`{' (draft order)' if ref in drafts else ''}{': ' + label if label else ''}{extra}")
    if finding.get("mechanism"):
        lines += ["", f"**Mechanism:** {finding['mechanism']}"]
    if finding.get("why_now"):
        lines += ["", "**Why now:**"] + [
            f"- {w.get('what', '')}{' (' + w['date'][:10] + ')' if w.get('date') else ''}"
            f"{' - recorded by ' + w['source'] if w.get('source') else ''}" for w in finding["why_now"]]
    lines += ["", "**Sources:**"] + [f"- {s}" for s in finding["sources"]]
    lines += ["", "_Decision support only: it supports, and does not replace, clinical judgement._"]
    suggestions = _suggestions(card_uuid, finding, patient_id=req.patient_id, by_ref=by_ref, drafts=drafts,
                               changes=changes, kb=kb)
    card: dict[str, Any] = {
        "uuid": card_uuid, "summary": summary, "indicator": INDICATOR[finding["severity"]],
        "detail": "\n".join(lines),
        "source": {"label": f"JoinedUp multimorbidity conflict engine (knowledge {kb.version})",
                   "url": f"{base_url}/api/conflicts/rules/{finding['rule']}",
                   "topic": {"system": RULE_SYSTEM, "code": finding["rule"], "display": finding["summary"][:120]}},
        "overrideReasons": OVERRIDE_REASONS,
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    REGISTRY.put(card_uuid, IssuedCard(service_id=req.service_id, patient_id=req.patient_id, fingerprint=fp,
                                       finding=finding, suggestions={s["uuid"]: s["label"] for s in suggestions},
                                       issued=_now(), drafts=drafts))
    return card


def evaluate_hook(*, gate: Any, who: Principal, service_id: str, body: Any, base_url: str = "") -> dict[str, Any]:
    """Answer one hook call: {"cards": [...]} (acknowledged findings are not repeated)."""
    started = time.perf_counter()
    req = parse_hook_request(service_id=service_id, body=body)
    # decision support about a person is itself an access to their record: checked and audited by the gate even
    # when the client sent everything as prefetch
    entity = f"cds:{service_id}"
    decision = gate.check(who, "read", "Patient", patient_id=req.patient_id, entity=entity)
    gate.record(who, "read", allowed=True, reason=decision.reason, entity=entity, patient_id=req.patient_id,
                detail={"hookInstance": req.hook_instance[:64], "prefetch": sorted(req.prefetch)})
    resources, fetched = gather_record(gate=gate, who=who, req=req)
    kb = load_knowledge()
    meds = [d for d in req.drafts if d.get("resourceType") in MEDICATION_TYPES]
    if not any(r.get("resourceType") == "Patient" for r in resources):
        resources.insert(0, {"resourceType": "Patient", "id": req.patient_id})
    rec = build_record(kb, resources, meds)
    all_found = detect(kb, rec)
    found = all_found
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in [*resources, *req.drafts]}
    drafts = {f"{d['resourceType']}/{d['id']}" for d in meds}
    focus = set(req.selections) if req.hook == "order-select" else drafts
    if req.hook != "patient-view":
        found = [f for f in found if focus & set(f.involves)]
    findings = merge_findings([f.as_dict() for f in found])
    fps = [fingerprint(f, by_ref) for f in findings]
    done = acknowledged(gate=gate, who=who, patient_id=req.patient_id, fingerprints=fps)
    floor = preferences.threshold(gate=gate, who=who)
    visible, _hidden = preferences.visible(findings, floor)
    keep = {id(f) for f in visible}
    shown = [(f, fp) for f, fp in zip(findings, fps) if fp not in done and id(f) in keep]
    changes: list[dict[str, Any]] = []
    if shown and any(f["kind"] in ("drug-drug", "drug-disease", "drug-result", "duplicate", "omission")
                     for f, _ in shown):
        changes = resolve(kb, rec, all_found).get("changes", [])
    cards = [card_for(finding=f, fp=fp, req=req, by_ref=by_ref, changes=changes, base_url=base_url, kb=kb)
             for f, fp in shown]
    return {"cards": cards, "extension": {
        "example.joinedup.acknowledged-not-shown": len(findings) - len(shown),
        "example.joinedup.read-from-store": fetched,
        "example.joinedup.deceased": rec.deceased,
        "example.joinedup.ms": round((time.perf_counter() - started) * 1000, 1)}}


# -- feedback -------------------------------------------------------------------------------------------------------
def _coding(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("code"), str):
        raise _bad(f"{where} must be a Coding with a 'code'")
    return {k: value[k] for k in ("system", "code", "display") if isinstance(value.get(k), str)}


def record_feedback(*, gate: Any, who: Principal, service_id: str, body: Any) -> dict[str, Any]:
    """Record accepted/overridden outcomes as ClinicalImpression resources through the gate (all or nothing checks)."""
    service_hook(service_id)
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise _bad("request body must be {\"feedback\": [ ... ]} with at least one entry")
    planned: list[tuple[IssuedCard, dict[str, Any]]] = []
    for n, item in enumerate(body["feedback"]):
        where = f"feedback[{n}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be a JSON object")
        card_id = item.get("card")
        if not isinstance(card_id, str) or not card_id:
            raise _bad(f"{where}.card (the card uuid) is required")
        outcome = item.get("outcome")
        if outcome not in ("accepted", "overridden"):
            raise _bad(f"{where}.outcome must be 'accepted' or 'overridden', not {outcome!r}")
        ts = item.get("outcomeTimestamp")
        if not isinstance(ts, str) or not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", ts):
            raise _bad(f"{where}.outcomeTimestamp (ISO 8601 date-time) is required")
        issued = REGISTRY.get(card_id)
        if issued is None:
            raise CdsError(404, "unknown-card", f"{where}: card {card_id} was not issued by this service "
                                                "(or was issued too long ago); call the hook again")
        if issued.service_id != service_id:
            raise _bad(f"{where}: card {card_id} was issued by {issued.service_id}, not {service_id}")
        accepted = item.get("acceptedSuggestions")
        labels: list[str] = []
        if outcome == "accepted":
            if not isinstance(accepted, list) or not accepted:
                raise _bad(f"{where}.acceptedSuggestions is required when outcome is 'accepted'")
            for k, s in enumerate(accepted):
                sid = s.get("id") if isinstance(s, dict) else None
                if sid not in issued.suggestions:
                    raise _bad(f"{where}.acceptedSuggestions[{k}].id {sid!r} is not a suggestion of this card")
                labels.append(issued.suggestions[sid])
        reason = item.get("overrideReason")
        coding = None
        comment = None
        if reason is not None:
            if not isinstance(reason, dict):
                raise _bad(f"{where}.overrideReason must be an object with 'reason' and/or 'userComment'")
            if reason.get("reason") is not None:
                coding = _coding(reason["reason"], f"{where}.overrideReason.reason")
            if reason.get("userComment") is not None:
                if not isinstance(reason["userComment"], str):
                    raise _bad(f"{where}.overrideReason.userComment must be a string")
                comment = reason["userComment"][:1000]
        planned.append((issued, {"outcome": outcome, "timestamp": ts, "coding": coding, "comment": comment,
                                 "accepted": labels}))
    recorded = []
    for issued, fb in planned:
        res = acknowledgement_resource(issued=issued, who=who, drafts=issued.drafts, **fb)
        written = gate.update(who, ACK_TYPE, res["id"], res)
        recorded.append(f"{ACK_TYPE}/{written.id}")
    return {"recorded": recorded}


def acknowledgement_resource(*, issued: IssuedCard, who: Principal, outcome: str, timestamp: str,
                             coding: dict[str, Any] | None, comment: str | None, accepted: list[str],
                             drafts: set[str] | None = None, channel: str = "CDS Hooks feedback") -> dict[str, Any]:
    """The ClinicalImpression recording a clinician's review of a finding (id from patient + fingerprint).

    ClinicalImpression ("a record of a clinical assessment") is used rather than DetectedIssue because it belongs to
    the Patient compartment, so acknowledgements are governed (relationships, objections, sealing) like every other
    entry of the person's record and appear in their own record and $everything.
    """
    f = issued.finding
    drafts = drafts or set()
    what = "Suggestion accepted" if outcome == "accepted" else "Alert overridden"
    summary = "; ".join(x for x in [
        what, f"accepted: {', '.join(accepted)}" if accepted else "",
        f"reason: {(coding or {}).get('display') or (coding or {}).get('code')}" if coding else "",
        f"comment: {comment}" if comment else ""] if x)
    res: dict[str, Any] = {
        "resourceType": "ClinicalImpression", "id": acknowledgement_id(issued.patient_id, issued.fingerprint),
        "identifier": [{"system": FINGERPRINT_SYSTEM, "value": issued.fingerprint}],
        "status": "completed",
        "code": {"coding": [{"system": OUTCOME_SYSTEM, "code": outcome, "display": what}],
                 "text": f"Review of a multimorbidity conflict alert ({channel})"},
        "description": f["summary"][:500],
        "subject": {"reference": f"Patient/{issued.patient_id}"},
        "effectiveDateTime": timestamp,
        "date": timestamp,
        "protocol": [f"{RULE_SYSTEM}/{f['rule']}"],
        "summary": summary,
        "finding": [{"itemCodeableConcept": {"coding": [{"system": RULE_SYSTEM, "code": f["rule"],
                                                         "display": f["summary"][:200]}]},
                     "basis": f"{f['kind']}, severity {f['severity']}; card issued {issued.issued}"}],
        "supportingInfo": [{"reference": r} if r not in drafts else {"display": f"draft order {r}"}
                           for r in f["involves"]],
    }
    if who.practitioner_id:
        res["assessor"] = {"reference": f"Practitioner/{who.practitioner_id}", "display": who.display or who.name}
    if coding:
        res["extension"] = [{"url": OVERRIDE_EXTENSION, "valueCoding": coding}]
    if comment:
        res["note"] = [{"text": comment}]
    return res
