"""The workforce view over HTTP: `GET /api/workforce?as_at=` (the published, suppressed figures as JSON) and the page
`/workforce` (trend charts and a table per organisation and team) for the partnership board."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.system import charts, workforce

api_router = APIRouter(tags=["system: workforce view"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)

AS_AT = Query(None, description="the day the figures are for, YYYY-MM-DD (default: today); the 12 months end there")


@api_router.get("/api/workforce", summary="Caseload, open and overdue tasks and handovers per team, 12 months "
                                          "(suppressed figures)")
def workforce_api(who: CurrentUser, gate: GateDep, as_at: str | None = AS_AT):
    day = workforce.check_as_at(as_at)
    return JSONResponse(workforce.report(gate=gate, who=who, as_at=day))


def shown(v: Any) -> str:
    """A published figure in words: '*' for a suppressed count, '–' when there is none."""
    if v is None:
        return "–"
    if v == "*":
        return "*"
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def trends(rep: dict[str, Any]) -> dict[str, Any]:
    """The system's trend charts (caseload; open and overdue tasks; handovers per month)."""
    s, labels = rep["system"], rep["months"]
    return {
        "caseload": charts.trend_chart("Caseload at each month end: people with a care team, and with a key worker",
                                       labels, [("People with a care team", s["caseload"]["series"]),
                                                ("With a key worker", s["key_worker"]["series"])]),
        "tasks": charts.trend_chart("Open and overdue tasks at each month end", labels,
                                    [("Open tasks", s["open"]["series"]), ("Overdue", s["overdue"]["series"])]),
        "handovers": charts.trend_chart("Handovers each month: key worker handovers and task reassignments", labels,
                                        [("Key worker handovers", s["key_worker_handovers"]["series"]),
                                         ("Task reassignments", s["reassignments"]["series"])]),
    }


def sparkline(team: dict[str, Any], labels: list[str]) -> Any:
    return charts.trend_chart(f"{team['name']}: open and overdue tasks at each month end", labels,
                              [("Open", team["open"]["series"]), ("Overdue", team["overdue"]["series"])],
                              width=200, height=70, compact=True)


@web_router.get("/workforce")
def workforce_page(request: Request, as_at: str | None = AS_AT):
    from joinedup.web import pages

    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        form = {"as_at": as_at or ""}
        try:
            day = workforce.check_as_at(as_at)
        except FhirError as exc:
            gate.check(who, "assess", None, entity=f"figures:{workforce.PURPOSE}")  # refused first if not allowed
            return {"rep": None, "form": form, "error": exc.diagnostics}
        rep = workforce.report(gate=gate, who=who, as_at=day)
        return {"rep": rep, "form": form, "error": None, "shown": shown, "charts": trends(rep),
                "sparkline": sparkline}

    resp = pages.service_page(request, "system/workforce.html", build)
    if getattr(resp, "context", None) and resp.context.get("error"):
        resp.status_code = 400
    return resp
