"""`joinedup views ...`: run SQL on FHIR v2 ViewDefinitions over NDJSON files or the store, and run the official
conformance suite (mounted by the root CLI)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from joinedup.terminal import check_output_file, cli_principal, describe_error, fail

from .compiler import ViewError

app = typer.Typer(help="SQL on FHIR v2 views: flatten FHIR resources into tables (DuckDB; Spark at scale).",
                  no_args_is_help=True, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SECONDARY = ("research", "planning", "commissioning", "analytics")
PURPOSES = ("case-finding", "direct-care", *SECONDARY)


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


@app.callback()
def _group() -> None:
    """SQL on FHIR v2 views."""


def _gate():
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable

    try:
        return get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        fail(describe_error(exc))


@app.command("run")
def run_command(
    view_file: Annotated[Path, typer.Argument(help="A ViewDefinition (JSON).")],
    source: Annotated[str, typer.Option("--source", help="A directory (or file) of FHIR NDJSON, or 'store' to read "
                                                         "the shared record through the governance gate.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Output file: .csv, .parquet or .ndjson.")],
    user: Annotated[str | None, typer.Option("--as", help="With --source store: the user the view runs as (an "
                                                          "analyst gets de-identified records, a clinician the "
                                                          "people they care for). Default: the command-line "
                                                          "operator (integration account).")] = None,
    purpose: Annotated[str | None, typer.Option(help="With --source store: case-finding (direct care) or research, "
                                                     "planning, commissioning, analytics (National Data Opt-out "
                                                     "applies). Default: planning for analysts, case-finding "
                                                     "otherwise.")] = None,
    engine: Annotated[Engine, typer.Option(help="duckdb (default) or spark (local mode).",
                                           case_sensitive=False)] = Engine.duckdb,
) -> None:
    """Run a view and write its rows to a file."""
    from . import runner
    from .compiler import compile_view

    view = _load(view_file)
    try:
        compile_view(view)  # a view that cannot run fails before any work
        runner.output_format(out_file)
    except ViewError as exc:
        fail(f"{view_file}: {exc}")
    check_output_file(out_file, "--out")
    if source != "store":
        if user is not None or purpose is not None:
            fail("--as and --purpose apply to --source store only")
        src = Path(source)
        if not src.exists():
            fail(f"--source {source}: no such file or directory (give a directory of NDJSON files, or 'store')")
        try:
            if engine is Engine.spark:
                from . import spark

                compiled, n = spark.run_view_on_files(view, src, out_file)
            else:
                compiled, n = runner.run_view_on_files(view, src, out_file)
        except ViewError as exc:
            fail(str(exc))
        _warn(compiled.warnings)
        out.print(f"wrote {n:,} rows ({len(compiled.columns)} columns) of {compiled.resource} to {out_file}",
                  highlight=False)
        return
    if engine is Engine.spark:
        fail("--engine spark reads NDJSON files; export the store first (joinedup export DIR) or use duckdb")
    from joinedup.governance import deid
    from joinedup.governance.accounts import get_user
    from joinedup.governance.policy import has_activity

    gate = _gate()
    who = cli_principal()
    if user is not None:
        who = get_user(gate, user)
        if who is None:
            fail(f"--as {user}: no such active user")
    analyst = who.role != "system" and has_activity(who, "pseudonymised-analytics")
    if purpose is None:
        purpose = "planning" if analyst else "case-finding"
    if purpose not in PURPOSES:
        fail(f"--purpose {purpose}: choose one of {', '.join(PURPOSES)}")
    if analyst and purpose not in SECONDARY:
        fail(f"--purpose {purpose}: an analyst works on de-identified data for research, planning, commissioning "
             "or analytics, not direct care")
    try:
        compiled, run = runner.run_view_on_store(view, gate, who, out_file, purpose=purpose)
    except ViewError as exc:
        gate.flush_audit()
        fail(str(exc))
    gate.flush_audit()
    _warn(compiled.warnings)
    if run.path == "de-identified":
        rows, people = deid.suppress(run.rows), deid.suppress(run.people)
        out.print(f"wrote {rows} rows of {compiled.resource} from {people} people to {out_file} (de-identified: "
                  "pseudonyms, no free text, dates to the month, National Data Opt-out applied; counts suppressed "
                  "1-7 and rounded to 5)", highlight=False)
        return
    note = "; National Data Opt-out applied" if purpose in SECONDARY else ""
    out.print(f"wrote {run.rows:,} rows of {compiled.resource} from {run.people:,} people to {out_file} (purpose "
              f"{purpose}, read through the governance gate{note})", highlight=False)


@app.command("conformance")
def conformance_command(
    tests_dir: Annotated[Path, typer.Argument(help="The suite's tests directory (tests/*.json).")],
    report_file: Annotated[Path, typer.Option("--report", help="Where to write the test report (JSON).")],
    engine: Annotated[Engine, typer.Option(help="duckdb (default) or spark (local mode).",
                                           case_sensitive=False)] = Engine.duckdb,
) -> None:
    """Run the SQL on FHIR v2 test suite and write the official test report; exit 1 when a case fails."""
    if not tests_dir.is_dir():
        fail(f"{tests_dir}: not a directory")
    check_output_file(report_file, "--report")
    try:
        if engine is Engine.spark:
            from . import spark

            results = spark.run_suite(tests_dir)
        else:
            from .conformance import run_suite

            results = run_suite(tests_dir)
    except ViewError as exc:
        fail(str(exc))
    from .conformance import report

    report_file.write_bytes(orjson.dumps(report(results), option=orjson.OPT_INDENT_2))
    passed = sum(r.passed for r in results)
    for r in results:
        if not r.passed:
            err.print(f"FAIL {r.file}: {r.name}: {r.reason}", highlight=False, markup=False)
    out.print(f"{passed}/{len(results)} cases passed on {engine.value}; report written to {report_file}",
              highlight=False)
    if passed != len(results):
        raise typer.Exit(1)


def _load(view_file: Path) -> dict:
    from .runner import load_view

    try:
        return load_view(view_file)
    except ViewError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # pragma: no cover


def _warn(warnings) -> None:
    for w in warnings:
        err.print(f"warning: {w}", highlight=False, markup=False)
