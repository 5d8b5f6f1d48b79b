"""Outcome measures over HTTP: `GET /api/measures` (definitions) and `GET /api/measures/{id}?by=&date=` (figures
through the gate for analysts, the partnership board and the integration account; suppressed)."""

from __future__ import annotations

from fastapi import APIRouter

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.population.service import parse_day

from . import definitions as defs
from . import service

api_router = APIRouter(tags=["population: outcome measures"], responses=api_errors())


@api_router.get("/api/measures", summary="Shared outcome measures: definitions with their sources")
def list_measures(who: CurrentUser, gate: GateDep):
    gate.check(who, "assess" if who.role != "system" and not _analyst(who) else "extract", None,
               entity="measures:definitions")
    return {"measures": service.catalogue(), "breakdowns": defs.BREAKDOWNS}


@api_router.get("/api/measures/{measure_id}", summary="One outcome measure: total and breakdown, suppressed")
def get_measure(measure_id: str, who: CurrentUser, gate: GateDep, by: str | None = None, date: str | None = None):
    today = parse_day(date)
    try:
        service.chosen(measure_id, by)
    except defs.MeasureInputError as exc:
        raise FhirError(exc.status, str(exc), code="not-found" if exc.status == 404 else "value",
                        expression=None if exc.status == 404 else ["by"]) from None
    return service.run(gate, who, measure_id=measure_id, by=by, today=today)


def _analyst(who) -> bool:
    from joinedup.governance.policy import has_activity

    return has_activity(who, "pseudonymised-analytics")
