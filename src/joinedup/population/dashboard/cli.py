"""`joinedup population precompute` (mounted by the main CLI)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Population dashboards: precompute the published figures they show.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _group() -> None:
    """Population dashboards."""


@app.command("precompute")
def precompute(date: Annotated[str | None, typer.Option("--date", help="Reference date YYYY-MM-DD (default today): "
                                                                     "periods end on it.")] = None) -> None:
    """Compute every dashboard figure through the gate (integration account, audited), publish it with small-number
    suppression and keep it for the dashboards; prints when and how long each part took."""
    from datetime import date as _date

    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable
    from joinedup.terminal import cli_principal, describe_error, fail

    from . import precompute as pre

    try:
        today = _date.fromisoformat(date) if date else None
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not '{date}'")
    try:
        gate = get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        fail(describe_error(exc))
    doc = pre.run(gate, cli_principal(), today=today)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in doc["timings_seconds"].items())
    typer.echo(f"population dashboard figures computed at {doc['computed_at']} for {doc['date']}: {parts}")
