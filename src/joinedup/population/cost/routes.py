"""Cost of care over HTTP: `GET /api/population/cost?date=` (analysts, the partnership board and the integration
account; figures through the gate, suppressed)."""

from __future__ import annotations

from fastapi import APIRouter

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.population.service import parse_day

from . import service

api_router = APIRouter(tags=["population: cost of care"], responses=api_errors())


@api_router.get("/api/population/cost",
                summary="Activity and cost per person, per setting and per population segment (suppressed)")
def cost_report(who: CurrentUser, gate: GateDep, date: str | None = None):
    return service.run(gate, who, today=parse_day(date))
