"""`joinedup pathways ...`: the event log of people's journeys across settings for process-mining tools (XES, OCEL
2.0) and the published pathway figures, as the integration account or as a named user (--user)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from joinedup.fhir.errors import FhirError

app = typer.Typer(help="Pathway and process analytics: event logs (XES, OCEL 2.0), process map, variants, gaps.",
                  no_args_is_help=True, add_completion=False)


class Format(StrEnum):
    xes = "xes"
    ocel = "ocel"


def _context(user: str | None):
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable
    from joinedup.terminal import cli_principal, describe_error, fail

    try:
        gate = get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        fail(describe_error(exc))
    if not user:
        return gate, cli_principal()
    from joinedup.governance.accounts import get_user

    who = get_user(gate, user)
    if who is None:
        fail(f"--user {user}: no such active user")
    return gate, who


@app.command("export")
def export_command(
    fmt: Annotated[str, typer.Option("--format", help="xes (IEEE 1849-2016) or ocel (OCEL 2.0 JSON).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The file to write.")],
    user: Annotated[str | None, typer.Option("--user", help="Run as this user (an analyst gets de-identified "
                                                            "journeys; a clinician the people they care for). "
                                                            "Default: the command-line operator.")] = None,
    purpose: Annotated[str | None, typer.Option(help="planning (default), research, commissioning, analytics "
                                                     "(National Data Opt-out applies) or direct-care (not for "
                                                     "analysts).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Only steps on or after this day (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Only steps on or before this day (YYYY-MM-DD).")] = None,
) -> None:
    """Write every person's journey (one trace per person) as an event log."""
    from joinedup.terminal import check_output_file, console, describe_error, fail

    from . import export, service

    if fmt not in {f.value for f in Format}:
        fail(f"--format {fmt}: choose xes or ocel")
    purpose = purpose or "planning"
    if purpose not in service.PURPOSES:
        fail(f"--purpose {purpose}: choose one of {', '.join(service.PURPOSES)}")
    try:
        period = service.period_of(start, end) if (start or end) else None
    except FhirError as exc:
        fail(f"--from/--to: {exc.diagnostics}")
    check_output_file(out_file, "--out")
    gate, who = _context(user)
    tmp = out_file.with_name(f".{out_file.name}.part")
    try:
        traces, info = service.event_log(gate, who, purpose=purpose, period=period)
        if fmt == Format.xes:
            desc = f"JoinedUp journeys across settings ({info['path']} records, purpose {purpose})"
            with tmp.open("w", encoding="utf-8") as fh:
                counts = export.write_xes(traces, fh, description=desc)
            what = f"{counts['traces']:,} traces and {counts['events']:,} events"
        else:
            with tmp.open("wb") as fh:
                counts = export.write_ocel(traces, fh)
            what = f"{counts['events']:,} events and {counts['objects']:,} objects"
        tmp.replace(out_file)
    except FhirError as exc:
        tmp.unlink(missing_ok=True)
        gate.flush_audit()
        fail(describe_error(exc))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(f"--out {out_file}: cannot write it: {exc.strerror or exc}")
    gate.flush_audit()
    note = ("de-identified: pseudonyms, dates to the month, National Data Opt-out applied"
            if info["path"] == "de-identified" else f"purpose {purpose}, read through the governance gate"
            + ("; National Data Opt-out applied" if purpose in service.SECONDARY else ""))
    console.print(f"wrote {what} to {out_file} ({note})", highlight=False, soft_wrap=True)


@app.command("figures")
def figures_command(
    user: Annotated[str | None, typer.Option("--user", help="Run as this user (analyst or board member). Default: "
                                                            "the command-line operator.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="First day of the period (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last day of the period (YYYY-MM-DD); default today.")] = None,
) -> None:
    """Print the published pathway figures (process map, variants, gaps, guideline timing) as JSON."""
    from joinedup.terminal import describe_error, fail

    from . import service

    try:
        service.period_of(start, end)
    except FhirError as exc:
        fail(f"--from/--to: {exc.diagnostics}")
    gate, who = _context(user)
    try:
        fig = service.figures(gate, who, start=start, end=end)
    except FhirError as exc:
        gate.flush_audit()
        fail(describe_error(exc))
    gate.flush_audit()
    typer.echo(json.dumps(fig, indent=2, ensure_ascii=False))
