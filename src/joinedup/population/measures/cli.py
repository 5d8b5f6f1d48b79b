"""`joinedup measures list|run` (mounted by the main CLI)."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Shared outcome measures across organisations (definitions, figures by breakdown).",
                  no_args_is_help=True, add_completion=False)


class Format(StrEnum):
    json = "json"
    csv = "csv"


FormatOpt = Annotated[Format, typer.Option("--format", help="json or csv.")]


@app.callback()
def _group() -> None:
    """Outcome measures."""


def _emit(text: str) -> None:
    typer.echo(text, nl=False)


@app.command("list")
def list_(format: FormatOpt = Format.json) -> None:
    """Every measure: numerator, denominator, exclusions, period, breakdowns and the source of its definition."""
    from . import service

    items = service.catalogue()
    if format == Format.json:
        _emit(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "title", "kind", "breakdowns", "source", "url", "version"])
    for d in items:
        w.writerow([d["id"], d["title"], d["kind"], " ".join(d["breakdowns"]), d["source"]["document"],
                    d["source"]["url"], d["source"]["version"]])
    _emit(buf.getvalue())


@app.command("run")
def run(measure: Annotated[str | None, typer.Option("--measure", help="One measure id (default: all).")] = None,
        by: Annotated[str | None, typer.Option("--by", help="practice, pcn, organisation, imd, age, ethnicity or "
                                                          "month (trend).")] = None,
        date: Annotated[str | None, typer.Option("--date", help="Reference date YYYY-MM-DD (default today): "
                                                              "periods end on it.")] = None,
        source: Annotated[Path | None, typer.Option("--source", help="A directory of FHIR NDJSON (e.g. a generated "
                                                                    "ICS) instead of the store; raw figures.")] = None,
        format: FormatOpt = Format.json) -> None:
    """Compute measures through the gate (integration account, audited) with small-number suppression."""
    from datetime import date as _date

    from joinedup.terminal import cli_principal, describe_error, fail

    from . import definitions as defs
    from . import engine, service

    try:
        today = _date.fromisoformat(date) if date else None
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not '{date}'")
    try:
        items = service.chosen(measure, by)
    except defs.MeasureInputError as exc:
        fail(str(exc))
    if source is not None:
        if not source.is_dir():
            fail(f"--source {source}: no such directory")
        raw = engine.compute_on_files(source, items, today=today or _date.today(), by=by)
        out = service.publish(raw, by=by)
        out["source"] = str(source)
        out["suppression"] = "none: figures over files, not the shared record"
        for m, fig in zip(out["measures"], raw.values()):
            m["total"] = fig["total"]["all"]
            if by:
                m["groups"] = [{"group": k, **v} for k, v in fig.get("groups", {}).items()]
    else:
        from joinedup.config import get_settings
        from joinedup.governance.gate import get_gate
        from joinedup.store.engine import DatabaseUnavailable

        try:
            gate = get_gate(get_settings().database_url)
        except DatabaseUnavailable as exc:
            fail(describe_error(exc))
        out = service.run(gate, cli_principal(), measure_id=measure, by=by, today=today)
    if format == Format.json:
        _emit(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    fields = ["numerator", "denominator", "value", "mean_delay_days", "requests", "answered", "unanswered",
              "median_days", "p90_days"]
    w.writerow(["measure", "period_start", "period_end", "by", "group", *fields])
    for m in out["measures"]:
        rows = [("all", m["total"])] + [(g["group"], g) for g in m.get("groups", [])]
        for group, cell in rows:
            w.writerow([m["id"], m["period_start"], m["period_end"], by or "", group,
                        *("" if cell.get(f) is None else cell.get(f) for f in fields)])
    _emit(buf.getvalue())
