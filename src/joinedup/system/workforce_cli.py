"""`joinedup workforce report`: the workforce view (caseload, open and overdue tasks, handovers per team over 12
months, every count suppressed) from the command line, as the integration account or a named user (--user)."""

from __future__ import annotations

import json

import typer

from joinedup.system import workforce
from joinedup.system.cli import _format, _run

app = typer.Typer(help="The workforce view: caseload, overdue work and handovers per team.", no_args_is_help=True)


def _line(name: str, block: dict) -> str:
    share = block["overdue_share"]["value"]
    share_text = "–" if share is None else ("*" if share == "*" else f"{share:g}%")
    return (f"{name}: caseload {block['caseload']['value']}, key worker {block['key_worker']['value']}, "
            f"open tasks {block['open']['value']}, overdue {block['overdue']['value']} ({share_text}), "
            f"handovers in 12 months {block['handovers']['value']}")


@app.command("report")
def report_command(fmt: str = typer.Option("text", "--format", help="json or text"),
                   as_at: str | None = typer.Option(None, "--as-at", help="the day the figures are for, YYYY-MM-DD "
                                                                          "(default today)"),
                   user: str | None = typer.Option(None, "--user", help="run as this user (default: the integration "
                                                                        "account)"),
                   fresh: bool = typer.Option(False, "--fresh", help="compute the figures now, even if this process "
                                                                     "computed them in the last five minutes")):
    """Per organisation and team: caseload, key worker caseload, open and overdue tasks on the day, and handovers
    per month over the 12 months to it - each count small-number suppressed, each figure with its definition."""
    fmt = _format(fmt)
    rep = _run(user, lambda gate, who: workforce.report(gate=gate, who=who, as_at=workforce.check_as_at(as_at),
                                                        fresh=fresh))
    if fmt == "json":
        typer.echo(json.dumps(rep, indent=2, ensure_ascii=False))
        return
    typer.echo(f"Workforce view as at {rep['as_at']} (months {rep['months'][0]} to {rep['months'][-1]}; "
               f"computed {rep['computed_at']})")
    typer.echo(_line("Whole system", rep["system"]))
    for o in rep["organisations"]:
        typer.echo(_line(o["name"], o))
        for t in o["teams"]:
            typer.echo("  " + _line(t["name"], t))
    typer.echo("Definitions:")
    for d in rep["definitions"].values():
        typer.echo(f"  {d['title']} ({d['unit']}): {d['definition']}")
    typer.echo(rep["suppression"])
