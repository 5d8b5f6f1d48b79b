"""Record-linkage API: run the model (integration account), the clerical review queue and decisions (privacy
officer). Errors are FHIR OperationOutcomes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from joinedup.api.responses import FhirResponse, json_responses
from joinedup.deps import CurrentUser, GateDep, JsonObject
from joinedup.fhir.errors import FhirError
from joinedup.interop.linkage import service

router = APIRouter(prefix="/api/linkage", tags=["record linkage"])
_JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


def _json(doc, status: int = 200) -> FhirResponse:
    return FhirResponse(doc, status_code=status, media_type="application/json")


def _probability(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise FhirError(400, f"'{key}' must be a match probability above 0 and at most 1", code="value",
                        expression=[key])
    return float(value)


@router.post("/run", summary="Score records without an NHS number; confirm or queue pairs (integration account)",
             responses=json_responses(400, 401, 403, 413, 422), openapi_extra=_JSON_BODY)
def run(who: CurrentUser, gate: GateDep, body: JsonObject):
    unknown = sorted(set(body) - {"confirm", "review", "dry_run", "organisation"})
    if unknown:
        raise FhirError(400, f"unknown field(s): {', '.join(unknown)} (allowed: confirm, review, dry_run, organisation)",
                        code="value", expression=unknown)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise FhirError(400, "'dry_run' must be true or false", code="value", expression=["dry_run"])
    if who.role != "system":
        raise gate.refuse(who, "Access refused: only the integration account runs record linkage.",
                          action="update", entity="record-linkage")
    out = service.run(gate, who, confirm=_probability(body, "confirm"), review=_probability(body, "review"),
                      dry_run=dry_run, organisation=body.get("organisation"))
    out["pairs"] = [{k: p[k] for k in ("unlinked", "reference", "match_weight", "match_probability", "decision",
                                       "outcome")} for p in out["pairs"]]
    return _json(out)


@router.get("/reviews", summary="The clerical review queue (privacy officer)", responses=json_responses(400, 401, 403))
def reviews(who: CurrentUser, gate: GateDep, status: str = "pending"):
    return _json({"pairs": service.review_queue(gate, who, status=status)})


@router.post("/reviews/{request_id}", summary="Accept (approved) or reject a pair (privacy officer)",
             responses=json_responses(400, 401, 403, 404, 409, 413), openapi_extra=_JSON_BODY)
def decide(request_id: str, who: CurrentUser, gate: GateDep, body: JsonObject):
    return _json(service.decide_review(gate, who, request_id, outcome=body.get("outcome"), note=body.get("note")))


@router.get("/links", summary="Confirmed record-linkage links and pairs unlinked since (privacy officer, records "
            "manager)", responses=json_responses(401, 403))
def links(who: CurrentUser, gate: GateDep):
    return _json(service.links(gate, who))


@router.post("/unlink", summary="Unlink two records record linkage linked (reversible; reason required)",
             responses=json_responses(400, 401, 403, 404, 409, 413), openapi_extra=_JSON_BODY)
def unlink(who: CurrentUser, gate: GateDep, body: JsonObject):
    unknown = sorted(set(body) - {"patient", "other_patient", "reason"})
    if unknown:
        raise FhirError(400, f"unknown field(s): {', '.join(unknown)} (allowed: patient, other_patient, reason)",
                        code="value", expression=unknown)
    return _json(service.unlink(gate, who, body.get("patient"), body.get("other_patient"), reason=body.get("reason")))


@router.post("/unlinks/{unlink_id}/relink", summary="Undo an unlink: the same link back (reason required)",
             responses=json_responses(400, 401, 403, 404, 409, 413), openapi_extra=_JSON_BODY)
def relink(unlink_id: str, who: CurrentUser, gate: GateDep, body: JsonObject):
    return _json(service.relink(gate, who, unlink_id, reason=body.get("reason")))
