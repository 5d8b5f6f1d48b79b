"""Registers and care gaps over HTTP: `GET /api/registers` (register sizes by practice), `GET
/api/registers/worklist` (care processes due/overdue, JSON) and the worklist page `/population/worklist`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.population import service

from . import engine

api_router = APIRouter(tags=["population: registers"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


def _bad(exc: Exception) -> FhirError:
    return FhirError(400, str(exc), code="value")


@api_router.get("/api/registers", summary="Long-term condition registers: sizes by practice (direct care)")
def register_sizes(who: CurrentUser, gate: GateDep, practice: str | None = None, pcn: str | None = None,
                   date: str | None = None):
    try:
        return service.register_sizes(gate=gate, who=who, practice=practice, pcn=pcn, today=service.parse_day(date))
    except service.PopulationInputError as exc:
        raise _bad(exc) from None


@api_router.get("/api/registers/worklist",
                summary="Care processes due or overdue for people on each register (direct care: opt-outs stay on it)")
def worklist(who: CurrentUser, gate: GateDep, practice: str | None = None, pcn: str | None = None,
             register: str | None = None, status: str | None = None, date: str | None = None,
             include_deceased: bool = False):
    try:
        return service.worklist(gate=gate, who=who, practice=practice, pcn=pcn, register=register, status=status,
                                today=service.parse_day(date), include_deceased=include_deceased)
    except service.PopulationInputError as exc:
        raise _bad(exc) from None


STATUS_WORDS = {"overdue": "Overdue", "due": "Due within 30 days"}


@web_router.get("/population/worklist")
def worklist_page(request: Request, practice: str = "", register: str = "", status: str = ""):
    from joinedup.web import pages as web

    def build(gate, who):
        problem = None
        try:
            data = service.worklist(gate=gate, who=who, practice=practice.strip() or None,
                                    register=register or None, status=status or None)
        except service.PopulationInputError as exc:
            problem = str(exc)
            data = service.worklist(gate=gate, who=who)
        regs = engine.knowledge()["registers"]
        return {"w": data, "problem": problem, "practice": practice, "register": register, "status": status,
                "registers": {k: v["display"] for k, v in regs.items()}, "status_words": STATUS_WORDS,
                "shown": data["rows"][:500], "more": max(0, len(data["rows"]) - 500)}

    return web.service_page(request, "population/worklist.html", build)
