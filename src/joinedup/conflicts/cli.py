"""`joinedup conflicts ...` commands (mounted by the main CLI)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from . import service

app = typer.Typer(help="Multimorbidity conflict engine: detect clashes and propose least-harm resolutions.",
                  no_args_is_help=True, add_completion=False)


class OutputFormat(str, Enum):
    json = "json"
    text = "text"


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
