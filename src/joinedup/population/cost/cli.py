"""`joinedup cost report` (mounted by the main CLI)."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Cost and activity of care across settings, priced with a national unit-cost schedule.",
                  no_args_is_help=True, add_completion=False)


class Format(StrEnum):
    json = "json"
    csv = "csv"


@app.callback()
def _group() -> None:
    """Cost of care."""


@app.command("report")
def report(date: Annotated[str | None, typer.Option("--date", help="Period end YYYY-MM-DD (default today): the 12 "
                                                                 "months to it.")] = None,
           by: Annotated[str | None, typer.Option("--by", help="CSV rows for one breakdown: setting, practice, pcn, "
                                                             "multimorbidity, frailty or cms (default all).")] = None,
           source: Annotated[Path | None, typer.Option("--source", help="A directory of FHIR NDJSON (e.g. a "
                                                                      "generated ICS) instead of the store.")] = None,
           format: Annotated[Format, typer.Option("--format", help="json or csv.")] = Format.json) -> None:
    """Activity and cost per person, per setting and per population segment, with the unit costs, their sources
    and the assumptions; through the gate (integration account, audited) with small-number suppression."""
    from datetime import date as _date

    from joinedup.terminal import cli_principal, describe_error, fail

    from . import engine, people, service

    try:
        today = _date.fromisoformat(date) if date else _date.today()
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not '{date}'")
    if by is not None and by not in service.BREAKDOWNS:
        fail(f"--by must be one of {', '.join(service.BREAKDOWNS)}, not '{by}'")
    if source is not None:
        if not source.is_dir():
            fail(f"--source {source}: no such directory")
        raw = service.measure_cost(people.iter_ndjson_records(source),
                                   people.iter_ndjson_directory(source, engine.DIRECTORY_TYPES), today=today)
        out = service.publish(raw)
        out["source"] = str(source)
    else:
        from joinedup.config import get_settings
        from joinedup.governance.gate import get_gate
        from joinedup.store.engine import DatabaseUnavailable

        try:
            gate = get_gate(get_settings().database_url)
        except DatabaseUnavailable as exc:
            fail(describe_error(exc))
        out = service.run(gate, cli_principal(), today=today)
    if format == Format.json:
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    buf = io.StringIO()
    rows = service.rows(out, by)
    w = csv.DictWriter(buf, fieldnames=["period_start", "period_end", *rows[0].keys()] if rows else ["breakdown"])
    w.writeheader()
    for r in rows:
        w.writerow({"period_start": out["period_start"], "period_end": out["period_end"],
                    **{k: "" if v is None else v for k, v in r.items()}})
    typer.echo(buf.getvalue(), nl=False)
