"""`joinedup assessment ...` and `joinedup directory ...`: the self-assessment report and scores, and the services
directory, from the command line (as the integration account, or as a named user with --user)."""

from __future__ import annotations

import json
from typing import Any

import typer

from joinedup.fhir.errors import FhirError
from joinedup.system import assessment
from joinedup.system import service as directory

assessment_app = typer.Typer(help="The integration self-assessment: framework items, scores, live evidence.",
                             no_args_is_help=True)
directory_app = typer.Typer(help="The services and roles directory across settings.", no_args_is_help=True)

FORMATS = ("json", "text")


def _context(user: str | None):
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.terminal import cli_principal, fail

    gate = get_gate(get_settings().database_url)
    if not user:
        return gate, cli_principal()
    from joinedup.governance.accounts import get_user

    who = get_user(gate, user)
    if who is None:
        fail(f"no user called '{user}'")
    return gate, who


def _run(user: str | None, fn) -> Any:
    from joinedup.terminal import fail

    gate, who = _context(user)
    try:
        return fn(gate, who)
    except FhirError as exc:
        fail(exc.diagnostics)
    finally:
        gate.flush_audit()


def _format(value: str) -> str:
    from joinedup.terminal import fail

    if value not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not '{value}'")
    return value


@assessment_app.command("report")
def report_command(fmt: str = typer.Option("text", "--format", help="json or text"),
                   user: str | None = typer.Option(None, "--user", help="run as this user (default: the integration "
                                                                        "account)")):
    """Every framework item with its source, the latest score if any, and its live evidence (or no_evidence)."""
    fmt = _format(fmt)
    rep = _run(user, lambda gate, who: assessment.report(gate=gate, who=who))
    if fmt == "json":
        typer.echo(json.dumps(rep, indent=2, ensure_ascii=False))
        return
    for f in rep["frameworks"]:
        typer.echo(f"{f['title']} ({f['source']['citation']})")
        for it in f["items"]:
            s = it["latest_score"]
            score = f"score {s['score']} ({s['round']})" if s else "not scored"
            change = f", change {it['change']:+d}" if it["change"] is not None else ""
            typer.echo(f"  {it['id']}: {it['title']} - {score}{change}")
            if it.get("no_evidence"):
                typer.echo("    no measurable evidence")
            for e in it.get("evidence") or ():
                typer.echo(f"    {e['title']}: {e['value']} ({e['period']['start']} to {e['period']['end']})")
            if it.get("evidence_note"):
                typer.echo(f"    not measured: {it['evidence_note']}")


@assessment_app.command("score")
def score_command(item: str = typer.Argument(..., help="item id, e.g. selfie-workforce"),
                  score: int = typer.Option(..., "--score", help="1 (not started) to 5 (embedded)"),
                  evidence: str | None = typer.Option(None, "--evidence", help="free-text evidence"),
                  owner: str | None = typer.Option(None, "--owner", help="who owns the item"),
                  user: str | None = typer.Option(None, "--user", help="score as this user (a board member)")):
    """Score one framework item in the open round."""
    got = _run(user, lambda gate, who: assessment.score_item(gate=gate, who=who, item_id=item, score=score,
                                                             evidence_text=evidence, owner=owner))
    typer.echo(f"{got['item']}: score {got['score']} saved in round {got['label']}")


@assessment_app.command("round")
def round_command(label: str = typer.Argument(..., help="the new round's name, e.g. '2026 Q4'"),
                  user: str | None = typer.Option(None, "--user", help="as this user (a board member)")):
    """Open a new round (the open one is completed)."""
    got = _run(user, lambda gate, who: assessment.start_round(gate=gate, who=who, label=label))
    typer.echo(f"round {got['label']} opened")


@assessment_app.command("questionnaire")
def questionnaire_command():
    """Print the FHIR Questionnaire generated from the framework files."""
    typer.echo(json.dumps(assessment.questionnaire(), indent=2, ensure_ascii=False))


@directory_app.command("search")
def search_command(need: str = typer.Argument(..., help="what the person needs help with, e.g. 'falls'"),
                   fmt: str = typer.Option("text", "--format", help="json or text"),
                   user: str | None = typer.Option(None, "--user", help="search as this user")):
    """Services that can help with a need."""
    fmt = _format(fmt)
    got = _run(user, lambda gate, who: directory.find_services(gate=gate, who=who, need=need))
    if fmt == "json":
        typer.echo(json.dumps(got, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{got['total']} service(s) for '{got['need']}'")
    for s in got["services"]:
        promise = s["response_promise"]["text"] if s["response_promise"] else "no response promise"
        typer.echo(f"  {s['name']} - {s['organization']['name']} ({promise})")
