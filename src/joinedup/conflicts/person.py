"""Conflicts for a stored person, read through the gate as the caller: the findings with their acknowledgements,
the least-harm proposal, readable names for everything a finding involves, and a clinician's review of a finding
recorded in the person's record (the same ClinicalImpression the CDS Hooks feedback writes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import concept_text
from joinedup.governance import policy
from joinedup.governance.identity import Principal

from . import cds, service

# what a clinician may record about a finding on the medicines safety page
REVIEW_OUTCOMES = {
    "accepted": "Agree: I will act on it",
    "overridden": "Reviewed: keep as it is",
}
WEB_CHANNEL = "JoinedUp medicines safety page"


def sees_medicines(who: Principal) -> bool:
    """Whether the role may read the clinical record (medicines, problems, results) the checks need."""
    return policy.has_activity(who, "view-clinical-record")


def _record(gate: Any, who: Principal, patient_id: str) -> list[dict[str, Any]]:
    resources = [s.content for s in gate.everything(who, patient_id, types=cds.RECORD_TYPES)]
    if not any(r.get("resourceType") == "Patient" for r in resources):
        resources.insert(0, {"resourceType": "Patient", "id": patient_id})
    return resources


def label(res: dict[str, Any] | None, ref: str) -> str:
    """A readable name for an involved resource: the medicine product, the problem, the result with its value."""
    if not res:
        return ref
    rtype = res.get("resourceType")
    if rtype in ("MedicationRequest", "MedicationStatement"):
        return concept_text(res.get("medicationCodeableConcept")) or (
            (res.get("medicationReference") or {}).get("display") or ref)
    if rtype == "Observation":
        name = concept_text(res.get("code")) or ref
        q = res.get("valueQuantity") or {}
        when = str(res.get("effectiveDateTime") or "")[:10]
        value = f" {q.get('value')} {q.get('unit') or ''}".rstrip() if q.get("value") is not None else ""
        return f"{name}{value}{' on ' + when if when else ''}"
    if rtype in ("Condition", "AllergyIntolerance"):
        return concept_text(res.get("code")) or ref
    if rtype == "Patient":
        return "the whole record"
    return ref


def patient_conflicts(*, gate: Any, who: Principal, patient_id: str, drafts: list[dict[str, Any]] | None = None,
                      resolve_conflicts: bool = True, labels: bool = False, merged: bool = False) -> dict[str, Any]:
    """check_record over what the caller may see of the person, each finding with its fingerprint and whether
    (and how) it was acknowledged; with `labels`, readable names of every involved resource under "labels";
    with `merged`, one finding per rule and summary as CDS Hooks cards show them (so an acknowledgement made on
    either is recognised on both)."""
    drafts = drafts or []
    resources = _record(gate, who, patient_id)
    result = service.check_record(resources=resources, draft_orders=drafts, resolve_conflicts=resolve_conflicts)
    if merged:
        result["findings"] = cds.merge_findings(result["findings"])
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in [*resources, *drafts]}
    fps = [cds.fingerprint(f, by_ref) for f in result["findings"]]
    reviews = cds.acknowledgements(gate=gate, who=who, patient_id=patient_id, fingerprints=fps)
    for f, fp in zip(result["findings"], fps):
        f["fingerprint"] = fp
        f["acknowledged"] = fp in reviews
        if labels and fp in reviews:
            f["review"] = reviews[fp]
    if labels:
        refs = {r for f in result["findings"] for r in f["involves"]}
        refs |= {c[k] for c in (result.get("resolution") or {}).get("changes", []) for k in ("target", "to")
                 if isinstance(c.get(k), str) and "/" in c[k]}
        refs |= {r for f in (result.get("resolution") or {}).get("residual", []) for r in f["involves"]}
        result["labels"] = {r: label(by_ref.get(r), r) for r in sorted(refs)}
        for f in [*result["findings"], *(result.get("resolution") or {}).get("residual", [])]:
            f["names"] = list(dict.fromkeys(result["labels"][r] for r in f["involves"]))
    return result


def review_finding(*, gate: Any, who: Principal, patient_id: str, fingerprint: str, outcome: str,
                   comment: str = "") -> str:
    """Record a clinician's review of one current finding (by fingerprint) in the person's record; returns the
    ClinicalImpression reference. A finding that no longer matches the record (it changed since the page was
    shown) is refused with 409 so nobody acknowledges something they have not seen."""
    if not sees_medicines(who):
        reason = "recording a review of a medicines alert needs a clinical role (one that sees the clinical record)"
        raise gate.refuse(who, reason[:1].upper() + reason[1:] + ".", action="update", entity=cds.ACK_TYPE,
                          patient_id=patient_id)
    if outcome not in REVIEW_OUTCOMES:
        raise FhirError(422, f"choose what you decided: {' or '.join(REVIEW_OUTCOMES.values())}", code="required")
    comment = (comment or "").strip()
    if outcome == "overridden" and not comment:
        raise FhirError(422, "say why it stays as it is (for example: benefit outweighs the risk, specialist "
                             "advice, the person's informed choice)", code="required")
    if len(comment) > 1000:
        raise FhirError(422, "the comment is longer than 1,000 characters", code="too-long")
    result = patient_conflicts(gate=gate, who=who, patient_id=patient_id, resolve_conflicts=False, merged=True)
    finding = next((f for f in result["findings"] if f["fingerprint"] == fingerprint), None)
    if finding is None:
        raise FhirError(409, "This alert has changed or gone since the page was shown (the record was updated). "
                             "Nothing was recorded: look at the current alerts and review again.", code="conflict")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    issued = cds.IssuedCard(service_id="medicines-safety-page", patient_id=patient_id, fingerprint=fingerprint,
                            finding=finding, suggestions={}, issued=now)
    res = cds.acknowledgement_resource(issued=issued, who=who, outcome=outcome, timestamp=now, coding=None,
                                       comment=comment or None, accepted=[], channel=WEB_CHANNEL)
    written = gate.update(who, cds.ACK_TYPE, res["id"], res)
    return f"{cds.ACK_TYPE}/{written.id}"
