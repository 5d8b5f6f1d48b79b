"""The population dashboard: `/population/dashboard` (charts and tables of every measure, register, risk segment and
the cost of care, from the precomputed published figures) and `POST /population/dashboard/download` (one figure's
table as CSV or Parquet: a form post, as other downloads of the web app). Analysts, the partnership board and clinicians; only clinicians (a direct-care relationship)
get links down to the case-finding worklist."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from joinedup.fhir.errors import FhirError
from joinedup.governance.policy import has_activity
from joinedup.web.pages import Viewer, error_page, gate_of, service_page

from . import figures as F
from .precompute import KEY

web_router = APIRouter(include_in_schema=False)
DIRECT_CARE = "view-clinical-record"


def _freshness(computed_at: str) -> str:
    try:
        then = datetime.fromisoformat(computed_at.replace("Z", "+00:00"))
    except ValueError:
        return computed_at
    hours = (datetime.now(UTC) - then).total_seconds() / 3600
    age = "less than an hour" if hours < 1 else f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.0f} days"
    return f"{then.strftime('%d %b %Y %H:%M')} UTC ({age} ago)"


@web_router.get("/population/dashboard")
def dashboard_page(request: Request, area: str = "", period: str = "current", by: str = "practice"):
    def build(gate, who) -> dict[str, Any]:
        started = time.perf_counter()
        filters = F.Filters(area=area.strip(), period=period, by=by)
        kept = gate.precomputed(who, KEY)
        ctx: dict[str, Any] = {"filters": filters, "problem": None, "doc": None, "figures": [], "sections": [],
                               "breakdowns": F.BREAKDOWN_WORDS, "periods": F.PERIOD_WORDS,
                               "drill": has_activity(who, DIRECT_CARE)}
        if kept is None:
            return ctx
        doc = kept["content"]
        ctx.update(doc=doc, computed_at=_freshness(kept["computed_at"]), compute_seconds=kept["seconds"])
        try:
            figs = F.build(doc, filters, drill=ctx["drill"])
        except F.FilterError as exc:
            ctx["problem"] = str(exc)
            figs = F.build(doc, F.Filters(), drill=ctx["drill"])
        ctx["figures"] = figs
        ctx["sections"] = [(key, title, [f for f in figs if f.section == key]) for key, title in (
            ("measures", "Shared outcome measures"), ("registers", "Long-term condition registers and care processes"),
            ("risk", "Risk segments"), ("cost", "Cost and activity of care across settings"))]
        ctx["cost"] = doc["cost"].get(filters.period) or doc["cost"].get("current")
        ctx["area_name"] = F.area_name(doc, filters) if not ctx["problem"] else F.area_name(doc, F.Filters())
        ctx["build_ms"] = round((time.perf_counter() - started) * 1000)
        return ctx

    return service_page(request, "population/dashboard.html", build)


@web_router.post("/population/dashboard/download")
def download(request: Request, who: Viewer, figure: str = Form(""), format: str = Form("csv"), area: str = Form(""),
             period: str = Form("current"), by: str = Form("practice")):
    if format not in ("csv", "parquet"):
        return error_page(request, 400, "Downloads are CSV or Parquet.", who=who)
    try:
        kept = gate_of(request).precomputed(who, KEY)
        if kept is None:
            return error_page(request, 404, "No dashboard figures have been computed yet.", who=who)
        figs = F.build(kept["content"], F.Filters(area=area.strip(), period=period, by=by),
                       drill=has_activity(who, DIRECT_CARE))
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    except F.FilterError as exc:
        return error_page(request, 400, str(exc), who=who)
    gate_of(request).flush_audit()
    chosen = next((f for f in figs if f.id == figure), None)
    if chosen is None:
        return error_page(request, 404, f"There is no figure '{figure}' on the dashboard.", who=who)
    name = f"joinedup-{chosen.id}-{period}"
    if format == "csv":
        return Response(to_csv(chosen), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return Response(to_parquet(chosen), media_type="application/vnd.apache.parquet",
                    headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})


def to_csv(fig: F.Figure) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([label for _, label in fig.columns])
    for r in fig.rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k, _ in fig.columns])
    return buf.getvalue()


def to_parquet(fig: F.Figure) -> bytes:
    """The table as Parquet (DuckDB writes it): every column text, as published ('*' and 'withheld' kept)."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="joinedup-download-") as tmp:
        path = Path(tmp) / "figure.parquet"
        con = duckdb.connect()
        try:
            cols = [label for _, label in fig.columns]
            con.sql("CREATE TABLE t (" + ", ".join(f'"{c.replace(chr(34), "")}" VARCHAR' for c in cols) + ")")
            if fig.rows:
                con.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in cols)})",
                                [["" if r.get(k) is None else str(r.get(k)) for k, _ in fig.columns]
                                 for r in fig.rows])
            con.sql(f"COPY t TO '{path}' (FORMAT parquet)")
        finally:
            con.close()
        return path.read_bytes()
