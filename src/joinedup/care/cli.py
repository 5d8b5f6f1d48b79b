"""`joinedup care ...` commands: overdue escalation and worklists from the command line."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Care coordination: overdue escalation and worklists.", no_args_is_help=True,
                  add_completion=False)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(message: str) -> None:
    from rich.markup import escape

    err.print(f"[red]error:[/red] {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _gate():
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable

    try:
        return get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        from joinedup.terminal import describe_error

        _fail(describe_error(exc))


@app.callback()
def _group() -> None:
    """Care coordination."""


@app.command("escalate")
def escalate_command(
    now: Annotated[str | None, typer.Option(help="Treat this date (YYYY-MM-DD) as today")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Mark open tasks past their due date as overdue and raise their priority (each task once)."""
    from joinedup.care.plans.tasks import escalate_overdue
    from joinedup.governance.identity import Principal

    when = None
    if now:
        try:
            when = datetime.fromisoformat(now).replace(tzinfo=UTC) if len(now) == 10 else datetime.fromisoformat(now)
        except ValueError:
            _fail(f"--now '{now}' is not a date (use YYYY-MM-DD)")
    who = Principal(name=f"cli:{os.environ.get('USER', 'operator')}", role="system",
                    display="JoinedUp overdue-task escalation (command line)")
    gate = _gate()
    result = escalate_overdue(gate=gate, who=who, now=when)
    gate.flush_audit()
    if as_json:
        out.print(json.dumps(result), highlight=False)
    else:
        out.print(f"checked {result['checked']} open tasks; escalated {result['escalated']} overdue "
                  f"(today {result['today']})", highlight=False)


@app.command("worklist")
def worklist_command(
    user: Annotated[str, typer.Argument(help="The user whose worklist to print")],
    people: Annotated[bool, typer.Option("--people", help="My people instead of my tasks")] = False,
) -> None:
    """Print a professional's tasks (or people) as JSON, read through the gate as that user."""
    from joinedup.care.plans.tasks import my_people, my_tasks
    from joinedup.governance.accounts import get_user

    gate = _gate()
    who = get_user(gate, user)
    if who is None:
        _fail(f"no user '{user}'")
    result = my_people(gate=gate, who=who) if people else my_tasks(gate=gate, who=who)
    gate.flush_audit()
    out.print(json.dumps(result, indent=1), highlight=False)
