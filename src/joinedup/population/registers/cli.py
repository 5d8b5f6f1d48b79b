"""`joinedup registers list|worklist` (mounted by the main CLI)."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Long-term condition registers (QOF-style) and care processes due or overdue.",
                  no_args_is_help=True, add_completion=False)


class Format(StrEnum):
    json = "json"
    csv = "csv"


Practice = Annotated[str | None, typer.Option("--practice", help="ODS code of a practice, e.g. Z00001.")]
Pcn = Annotated[str | None, typer.Option("--pcn", help="ODS code of a primary care network: all its practices.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="json or csv.")]
DateOpt = Annotated[str | None, typer.Option("--date", help="Date of the list, YYYY-MM-DD (default today).")]


@app.callback()
def _group() -> None:
    """Registers and care gaps."""


def _run(fn, **kwargs):
    from datetime import date as _date

    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.population import service
    from joinedup.store.engine import DatabaseUnavailable
    from joinedup.terminal import cli_principal, describe_error, fail

    day = kwargs.pop("day", None)
    try:
        today = _date.fromisoformat(day) if day else None
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not '{day}'")
    for name in ("practice", "pcn"):  # before the database is opened
        value = kwargs.get(name)
        if value is not None and not service.ODS.match(value):
            fail(f"--{name} must be an ODS code such as Z00001, not '{value}'")
    try:
        gate = get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        fail(describe_error(exc))
    try:
        return fn(gate=gate, who=cli_principal(), today=today, **kwargs)
    except service.PopulationInputError as exc:
        fail(str(exc))


def _emit(text: str) -> None:
    typer.echo(text, nl=False)


@app.command("list")
def list_(practice: Practice = None, pcn: Pcn = None, format: FormatOpt = Format.json, date: DateOpt = None) -> None:
    """How many people are on each register, per practice."""
    from joinedup.population import service

    out = _run(service.register_sizes, practice=practice, pcn=pcn, day=date)
    if format == Format.json:
        _emit(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["register", "display", "practice", "people"])
    for r in out["registers"]:
        for p, n in sorted(r["by_practice"].items()):
            w.writerow([r["register"], r["display"], p, n])
    _emit(buf.getvalue())


@app.command("worklist")
def worklist(practice: Practice = None, pcn: Pcn = None, format: FormatOpt = Format.json, date: DateOpt = None,
             register: Annotated[str | None, typer.Option("--register", help="Only this register.")] = None,
             status: Annotated[str | None, typer.Option("--status", help="due or overdue.")] = None,
             include_deceased: Annotated[bool, typer.Option("--include-deceased")] = False) -> None:
    """Care processes due or overdue, one row per person and process, most overdue people first."""
    from joinedup.population import service

    out = _run(service.worklist, practice=practice, pcn=pcn, register=register, status=status, day=date,
               include_deceased=include_deceased)
    if format == Format.json:
        _emit(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient", "name", "birth_date", "practice", "register", "process", "status", "last_done", "due_by"])
    for r in out["rows"]:
        for g in r["gaps"]:
            w.writerow([r["patient"], r["name"], r["birth_date"], r["practice"], g["register"], g["process"],
                        g["status"], g["last_done"] or "", g["due_by"] or ""])
    _emit(buf.getvalue())
