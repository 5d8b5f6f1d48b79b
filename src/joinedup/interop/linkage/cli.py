"""`joinedup link train|run|review`: record linkage for records without an NHS number."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Record linkage (Splink) for records without an NHS number: train, run, review, unlink.",
                  no_args_is_help=True)
out = Console(soft_wrap=True)
BACKENDS = ("duckdb", "spark")


def _fail(message: str) -> None:
    from joinedup.terminal import fail

    fail(message)


def _gate():
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable
    from joinedup.terminal import describe_error

    try:
        return get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        _fail(describe_error(exc))


def _backend(value: str) -> str:
    if value not in BACKENDS:
        _fail(f"--backend {value!r}: use one of {', '.join(BACKENDS)}")
    return value


def _call(fn, *args, **kwargs):
    from joinedup.fhir.errors import FhirError

    try:
        return fn(*args, **kwargs)
    except FhirError as exc:
        _fail(exc.diagnostics if hasattr(exc, "diagnostics") else str(exc))


@app.command("train")
def train(model: Path = typer.Option(None, "--model", help="Where to save the model (default: the "
                                                             "JOINEDUP_LINKAGE_MODEL setting)."),
          backend: str = typer.Option("duckdb", "--backend", help="duckdb (in-process) or spark."),
          as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Estimate the linkage model from the population (records linked by NHS number are its labels)."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import check_output_file, cli_principal

    backend = _backend(backend)
    target = service.model_path(model)
    check_output_file(target, "--model")
    gate = _gate()
    summary = _call(service.train, gate, cli_principal(), path=target, backend=backend)
    gate.flush_audit()
    out.print_json(json.dumps(summary)) if as_json else out.print(
        f"Trained on {summary['unlinked']} records to link and {summary['reference']} reference records "
        f"({summary['labelled_pairs']} labelled pairs, {summary['method']}); saved to {summary['model']}")


@app.command("run")
def run(model: Path = typer.Option(None, "--model", help="The trained model (default: JOINEDUP_LINKAGE_MODEL)."),
        report: Path = typer.Option(None, "--report", help="Write every scored pair (NDJSON: weight, probability,"
                                                            " decision) to this file."),
        confirm: float = typer.Option(None, "--confirm", help="Match probability to confirm a link (default: "
                                                              "JOINEDUP_LINKAGE_CONFIRM_PROBABILITY)."),
        review: float = typer.Option(None, "--review", help="Match probability to queue for clerical review "
                                                            "(default: JOINEDUP_LINKAGE_REVIEW_PROBABILITY)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Score and report; link and queue nothing."),
        organisation: str = typer.Option(None, "--organisation", help="Only link the records this organisation "
                                                                      "holds (e.g. Organization/org-la)."),
        backend: str = typer.Option("duckdb", "--backend", help="duckdb (in-process) or spark."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Link records without an NHS number: confident pairs become confirmed links, uncertain ones go to review."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import check_output_file, cli_principal

    backend = _backend(backend)
    for name, value in (("--confirm", confirm), ("--review", review)):
        if value is not None and not 0 < value <= 1:
            _fail(f"{name} {value}: give a match probability above 0 and at most 1")
    if report is not None:
        check_output_file(report, "--report")
    gate = _gate()
    summary = _call(service.run, gate, cli_principal(), path=model, confirm=confirm, review=review, report=report,
                    dry_run=dry_run, backend=backend, organisation=organisation)
    gate.flush_audit()
    summary.pop("pairs")
    if as_json:
        out.print_json(json.dumps(summary))
        return
    d, o = summary["decisions"], summary["outcomes"]
    out.print(f"{summary['records_without_nhs_number']} records without an NHS number; {summary['pairs_scored']} "
              f"pairs scored: {d['confirm']} to confirm, {d['review']} to review, {d['below-threshold']} below")
    out.print(f"confirmed {o['confirmed']}, queued for review {o['queued']}, already linked {o['linked']}, "
              f"already waiting {o['pending']}, refused before {o['rejected']}" + (" (dry run)" if dry_run else ""))
    if report is not None:
        out.print(f"Report: {report}")


@app.command("review")
def review(status: str = typer.Option("pending", "--status", help="pending, approved, rejected or all."),
           as_json: bool = typer.Option(False, "--json", help="Print the queue as JSON.")) -> None:
    """The clerical review queue (decide on the web page /linkage/review or POST /api/linkage/reviews/{id})."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import cli_principal

    if status not in ("pending", "approved", "rejected", "all"):
        _fail(f"--status {status!r}: use pending, approved, rejected or all")
    gate = _gate()
    queue = _call(service.review_queue, gate, cli_principal(), status=status)
    gate.flush_audit()
    if as_json:
        out.print_json(json.dumps(queue))
        return
    table = Table("request", "probability", "weight", "records", "agree", "differ", "status")
    for q in queue:
        agree = [model_label for f, model_label in q["labels"].items() if q["agreement"].get(f) == "agrees"]
        differ = [model_label for f, model_label in q["labels"].items() if q["agreement"].get(f) == "differs"]
        table.add_row(q["id"], f"{q['match_probability']:.3f}", f"{q['match_weight']:.2f}",
                      f"{q['patient']} / {q['other_patient']}", ", ".join(agree), ", ".join(differ), q["status"])
    out.print(table)
    out.print(f"{len(queue)} pair(s)")


@app.command("unlink")
def unlink(patient: str = typer.Argument(..., help="One record, e.g. Patient/sc-0000042."),
           other: str = typer.Argument(..., help="The record it is linked to."),
           reason: str = typer.Option(..., "--reason", help="Why these are not one person (at least 10 characters)."),
           as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Undo a link record linkage confirmed (reversible with `joinedup link relink ID`)."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import cli_principal

    gate = _gate()
    done = _call(service.unlink, gate, cli_principal(), patient, other, reason=reason)
    gate.flush_audit()
    if as_json:
        out.print_json(json.dumps(done))
        return
    out.print(f"Unlinked {done['patient']} and {done['other_patient']} (unlink {done['id']}; undo with "
              f"`joinedup link relink {done['id']} --reason ...`)")


@app.command("relink")
def relink(unlink_id: str = typer.Argument(..., help="The unlink's id (from `joinedup link unlink` or `links`)."),
           reason: str = typer.Option(..., "--reason", help="Why the records are linked again (at least 10 "
                                                              "characters)."),
           as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Undo an unlink: the same link back, as it was."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import cli_principal

    gate = _gate()
    done = _call(service.relink, gate, cli_principal(), unlink_id, reason=reason)
    gate.flush_audit()
    if as_json:
        out.print_json(json.dumps(done))
        return
    out.print(f"Linked {done['patient']} and {done['other_patient']} again")


@app.command("links")
def links(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Links record linkage confirmed (or a reviewer accepted), and pairs unlinked since."""
    from joinedup.interop.linkage import service
    from joinedup.terminal import cli_principal

    gate = _gate()
    doc = _call(service.links, gate, cli_principal())
    gate.flush_audit()
    if as_json:
        out.print_json(json.dumps(doc))
        return
    table = Table("records", "basis", "confirmed by", "when")
    for lk in doc["links"]:
        table.add_row(f"{lk['patient']} / {lk['other_patient']}", lk["basis"], lk["confirmed_by"], lk["confirmed_at"])
    out.print(table)
    for u in doc["unlinked"]:
        out.print(f"unlink {u['id']}: {u['patient']} / {u['other_patient']} {u['status']} by {u['requested_by']} "
                  f"({u['reason']})")
    out.print(f"{len(doc['links'])} link(s), {len(doc['unlinked'])} unlink(s)")
