"""`joinedup conflicts ...` commands (mounted by the main CLI)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from . import service

app = typer.Typer(help="Multimorbidity conflict engine: detect clashes and propose least-harm resolutions.",
                  no_args_is_help=True, add_completion=False)


class OutputFormat(StrEnum):
    json = "json"
    text = "text"


class ScreenFormat(StrEnum):
    csv = "csv"
    json = "json"
    both = "both"


class Severity(StrEnum):
    critical = "critical"
    high = "high"
    moderate = "moderate"
    low = "low"


@app.callback()
def _group() -> None:
    """Multimorbidity conflict engine."""


def render_text(result: dict[str, Any]) -> str:
    """Plain-text report of a check result."""
    lines = [f"Patient: {result.get('patient') or '(unknown)'}"]
    findings = result.get("findings", [])
    lines.append(f"Findings: {len(findings)}")
    for f in findings:
        lines.append(f"  [{f['severity'].upper()}] {f['kind']}: {f['summary']}")
        lines.append(f"      involves: {', '.join(f['involves'])}")
        lines.append(f"      rule: {f['rule']}; sources: {' | '.join(f['sources'])}")
    unrec = result.get("unrecognised", [])
    lines.append(f"Unrecognised: {len(unrec)}")
    for u in unrec:
        lines.append(f"  {u['reference']}: {u.get('text') or ''} ({u['reason']})")
    res = result.get("resolution")
    if res is not None:
        lines.append(f"Proposed changes: {len(res['changes'])}")
        for c in res["changes"]:
            lines.append(f"  - {c['action']} {c['target']}" + (f" -> {c['to']}" if c.get("to") else ""))
            lines.append(f"      {c['reason']}")
        lines.append(f"Residual findings: {len(res['residual'])}")
        for f in res["residual"]:
            lines.append(f"  [{f['severity'].upper()}] {f['summary']}")
        if res.get("note"):
            lines.append(f"Note: {res['note']}")
    lines.append("Decision support only: it supports, and does not replace, clinical judgement.")
    return "\n".join(lines)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="FHIR Bundle (JSON) holding one person's record")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="json or text",
                                                 case_sensitive=False)] = OutputFormat.json,
    no_resolve: Annotated[bool, typer.Option("--no-resolve", help="detection only, skip the optimiser")] = False,
) -> None:
    """Check one person's record (a FHIR Bundle file) for conflicts."""
    try:
        bundle = service.read_bundle_file(path=file)
        result = service.check_bundle(bundle=bundle, resolve_conflicts=not no_resolve)
    except service.BundleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if format == OutputFormat.json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(render_text(result))


@app.command("screen")
def screen_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for worklist.csv, practices.csv, screen.json")
                   ] = Path("conflict-screen"),
    format: Annotated[ScreenFormat, typer.Option("--format", "-f", help="csv, json or both",
                                                 case_sensitive=False)] = ScreenFormat.both,
    severity: Annotated[Severity, typer.Option("--severity", help="minimum severity to list",
                                               case_sensitive=False)] = Severity.low,
    practice: Annotated[str | None, typer.Option("--practice", help="only this practice (Organization/id, id or "
                                                                    "name)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or summary")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, max=16,
                                         help="processes sharing the population")] = 2,
    include_deceased: Annotated[bool, typer.Option("--include-deceased",
                                                   help="also screen people recorded as deceased")] = False,
) -> None:
    """Screen the whole store for conflicts (detection only) and write a worklist with counts per practice."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from joinedup.config import get_settings
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable
    from joinedup.terminal import check_output_dir, cli_principal, describe_error

    from . import screen

    check_output_dir(out, "--out")
    console = Console(stderr=True)
    try:
        gate = get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        typer.echo(f"error: {describe_error(exc)}", err=True)
        raise typer.Exit(code=2) from None
    who = cli_principal()
    formats = {"csv", "json"} if format == ScreenFormat.both else {format.value}
    try:
        total = gate.search(who, "Patient", [("_summary", "count")], query_text="Patient?_summary=count").total
        with Progress(TextColumn("[bold]screening"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=quiet or not console.is_terminal) as bar:
            task = bar.add_task("screen", total=total)
            result = screen.screen_population(gate=gate, who=who, severity=severity.value, practice=practice,
                                              progress=lambda n: bar.update(task, completed=n), workers=workers,
                                              include_deceased=include_deceased)
        files = screen.write_outputs(result, out=out, formats=formats)
    except (screen.ScreenError, FhirError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        gate.flush_audit()
    if not quiet:
        table = Table(title=f"Conflict screen: {result.flagged} of {result.screened} people flagged "
                            f"(severity >= {severity.value}) in {result.seconds:.1f} s")
        for col in ("practice", "name", "screened", "flagged", "critical", "high", "moderate", "low"):
            table.add_column(col, justify="left" if col in ("practice", "name") else "right")
        for c in result.practices[:25]:
            table.add_row(c["practice"], c["practice_name"], *(str(c[k]) for k in
                          ("screened", "flagged", "critical", "high", "moderate", "low")))
        if len(result.practices) > 25:
            table.caption = f"... and {len(result.practices) - 25} more practices (see the files)"
        console.print(table)
    for f in files:
        typer.echo(str(f))
