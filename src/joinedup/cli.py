"""The `joinedup` command: one command group per domain."""

from __future__ import annotations

import errno
import functools
import socket
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer import _click  # the Click that Typer runs on (vendored): its exceptions are the ones raised
from typer.core import TyperGroup

from joinedup import config
from joinedup.care import cli as care_cli
from joinedup.config import get_settings
from joinedup.conflicts.cli import app as conflicts_app
from joinedup.conflicts.knowledge_cli import app as knowledge_app
from joinedup.governance import cli as governance_cli
from joinedup.interop.hl7.cli import app as hl7_app
from joinedup.interop.linkage.cli import app as link_app
from joinedup.population.cost.cli import app as cost_app
from joinedup.population.dashboard.cli import app as population_app
from joinedup.population.measures.cli import app as measures_app
from joinedup.population.registers.cli import app as registers_app
from joinedup.population.risk.cli import app as risk_app
from joinedup.population.views.cli import app as views_app
from joinedup.synth.cli import generate_command
from joinedup.system.cli import assessment_app, directory_app
from joinedup.system.pathways.cli import app as pathways_app
from joinedup.system.workforce_cli import app as workforce_app
from joinedup.terminal import (
    check_output_dir,
    check_output_file,
    check_port,
    cli_principal,
    console,
    describe_error,
    fail,
)

out = Console(soft_wrap=True)


class OneLineErrors(TyperGroup):
    """The root command: usage errors and anything a command raises become one line on stderr and exit code 2
    (no traceback, no box). `python -X dev -m joinedup.cli ...` shows the traceback of an unexpected error."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:  # the help (Typer has printed it already)
            text = exc.format_message()
            if text.strip():
                _click.echo(text, err=True)
            sys.exit(exc.exit_code)
        except _click.exceptions.UsageError as exc:
            hint = ""
            if exc.ctx is not None and exc.ctx.command.get_help_option(exc.ctx) is not None:
                hint = f" (see '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}')"
            _one_line(f"{exc.format_message()}{hint}")
            sys.exit(exc.exit_code)
        except typer.TyperException as exc:
            _one_line(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            _one_line("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits, aborts, Click's usage errors
            raise
        except Exception as exc:  # the point: one line, never a traceback
            if sys.flags.dev_mode:
                raise
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:  # output piped to a closed reader
                sys.exit(1)
            _one_line(describe_error(exc))
            raise typer.Exit(2) from None


def _one_line(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


app = typer.Typer(help="JoinedUp: an open integrated care platform (FHIR shared care record, governance, "
                       "care coordination, population health).", no_args_is_help=True, add_completion=False,
                  cls=OneLineErrors)
users_app = typer.Typer(help="Manage users (roles, practitioner and organisation links).", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(governance_cli.audit_app, name="audit")  # verify (exit 2 naming the first bad entry), rotate-key
app.add_typer(assessment_app, name="assessment")  # the integration self-assessment (report --format json, score)
app.add_typer(directory_app, name="directory")  # the services directory (search NEED)
app.add_typer(pathways_app, name="pathways")  # journeys as event logs (export --format xes|ocel), figures
app.add_typer(workforce_app, name="workforce")  # caseload, overdue work and handovers per team (report)
app.add_typer(registers_app, name="registers")  # long-term condition registers and care-gap worklists
app.add_typer(risk_app, name="risk")  # risk and burden scores per person and per population
app.add_typer(measures_app, name="measures")  # shared outcome measures (list, run --measure --by --format)
app.add_typer(cost_app, name="cost")  # cost and activity of care across settings (report --format json|csv)
app.add_typer(population_app, name="population")  # dashboards: precompute the published figures they show
app.add_typer(link_app, name="link")  # record linkage without an NHS number (train, run --report, review)


def _gate():
    from joinedup.governance.gate import get_gate
    from joinedup.store.engine import DatabaseUnavailable

    try:
        return get_gate(get_settings().database_url)
    except DatabaseUnavailable as exc:
        fail(describe_error(exc))


@app.command("serve")
def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          workers: int = typer.Option(1, help="Worker processes."),
          log_level: str = typer.Option("warning", help="Uvicorn log level.")) -> None:
    """Serve the API (FHIR at /fhir, OpenAPI docs at /docs) and web app."""
    import uvicorn

    if workers < 1:
        fail("--workers must be at least 1")
    check_port(host, port)
    gate = _gate()  # migrate before workers start (and a database that cannot be used is one line, exit 2)
    _trust_bound_host(host)
    _start_hl7_listener(gate)
    # uvloop and httptools (uvicorn[standard] installs both) named outright: a missing one is an error at start,
    # never a quiet fall-back to the pure-Python loop and parser, which cost several times as much per request
    uvicorn.run("joinedup.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, loop="uvloop", http="httptools")


def _start_hl7_listener(gate) -> None:
    """With JOINEDUP_HL7_PORT set, the HL7 v2 MLLP listener runs beside the web server (in this process)."""
    port = config.value("HL7_PORT")
    if not port:
        return
    from joinedup.care.notifications import service as notifications
    from joinedup.interop.hl7 import mllp
    from joinedup.interop.hl7.service import Hl7Service

    host = config.value("HL7_HOST")
    processes = config.value("HL7_PROCESSES")
    if processes < 1:
        fail(f"JOINEDUP_HL7_PROCESSES must be at least 1, not {processes}")
    if processes > 1 and not hasattr(socket, "send_fds"):
        fail("JOINEDUP_HL7_PROCESSES above 1 needs connections handed between processes (SCM_RIGHTS), which this "
             "system does not have: set it to 1")
    check_port(host, port)
    notifications.install(gate)
    hand_to, _others = mllp.start_processes(processes - 1, host=host, port=port)  # they end with this process
    _, bound = mllp.start_in_thread(Hl7Service(gate), host=host, port=port,
                                    max_bytes=config.value("HL7_MAX_MESSAGE_BYTES"),
                                    frame_timeout=config.value("HL7_FRAME_TIMEOUT"), hand_to=hand_to)
    console.print(f"listening for HL7 v2 (MLLP) on {bound[0]}:{bound[1]}"
                  + (f" ({processes} processes)" if processes > 1 else ""), highlight=False)


def _trust_bound_host(host: str) -> None:
    """Requests must name a trusted host (JOINEDUP_TRUSTED_HOSTS): the interface served on is trusted too;
    on every interface (0.0.0.0, ::) this machine's own names are."""

    trusted = get_settings().trusted_hosts
    names = {h.strip().lower() for h in trusted.split(",") if h.strip()}
    if "*" in names:
        return
    wildcard = host in ("0.0.0.0", "::", "")
    extra = [socket.gethostname(), socket.getfqdn()] if wildcard else [f"[{host}]" if ":" in host else host]
    add = [h for h in dict.fromkeys(x.lower() for x in extra if x) if h not in names]
    if add:
        config.export("TRUSTED_HOSTS", ",".join([trusted, *add]) if trusted else ",".join(add))
    if wildcard:
        console.print(f"serving on every interface: requests must name one of the trusted hosts "
                      f"({config.value('TRUSTED_HOSTS')}); set JOINEDUP_TRUSTED_HOSTS to the "
                      "names clients use", highlight=False)


@app.command("import")
def import_(paths: list[Path] = typer.Argument(..., help="NDJSON files, Bundles, or directories of them."),
            source: str | None = typer.Option(None, help="meta.source for resources that do not carry one, "
                                                           "e.g. Organization/ODS123."),
            rejects: Path | None = typer.Option(None, help="Where to write rejected lines with reasons."),
            workers: int = typer.Option(2, help="Processes validating in parallel (1 = in-process)."),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Load FHIR NDJSON files or Bundles (idempotent; bad lines go to a rejects file)."""
    from joinedup.interop.bulk_import import ImportFileError, discover, import_paths

    if workers < 1:
        fail("--workers must be at least 1")
    try:
        discover(paths)
    except OSError as exc:
        fail(str(exc) if exc.filename is None else describe_error(exc))
    if rejects is not None:
        check_output_file(rejects, "--rejects")
    gate = _gate()
    who = cli_principal()
    with Progress(TextColumn("[bold]importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("import", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = import_paths(gate, who, paths, source=source, rejects=rejects, workers=workers,
                                  progress=progress)
        except ImportFileError as exc:
            gate.flush_audit()
            fail(str(exc))
    gate.flush_audit()
    out.print(f"read {report.read:,} resources from {report.files} file(s) in {report.seconds:.1f}s "
              f"({report.rate:,.0f}/s): {report.created:,} created, {report.updated:,} updated, "
              f"{report.unchanged:,} unchanged, {report.rejected:,} rejected", highlight=False)
    if report.rejects_path:
        out.print(f"rejected lines and reasons: {report.rejects_path}", highlight=False)
    if report.first_reject:
        out.print(f"first rejected: {report.first_reject}", highlight=False)


@app.command("export")
def export(out_dir: Path = typer.Argument(..., help="Directory for the NDJSON files."),
           types: str | None = typer.Option(None, "--type", help="Comma-separated resource types."),
           since: str | None = typer.Option(None, help="Only resources changed since this instant.")) -> None:
    """Export the store as Bulk Data NDJSON files (one per resource type)."""
    from joinedup.fhir.errors import FhirError
    from joinedup.fhir.search_params import date_range
    from joinedup.interop.bulk_export import export_to_dir, parse_types

    since_norm = None
    if since:
        rng = date_range(since)
        if rng is None:
            fail(f"--since '{since}' is not a valid FHIR instant or date")
        since_norm = rng[0]
    try:
        wanted = parse_types(types)
    except FhirError as exc:
        fail(exc.diagnostics)
    check_output_dir(out_dir, "output directory")
    gate = _gate()
    counts = export_to_dir(gate, cli_principal(), out_dir, types=wanted, since=since_norm, label="cli export")
    gate.flush_audit()
    for t, n in sorted(counts.items()):
        out.print(f"{t}.ndjson\t{n}")
    out.print(f"exported {sum(counts.values()):,} resources in {len(counts)} file(s) to {out_dir}")


@users_app.command("add")
def users_add(name: str = typer.Argument(..., help="User name (log-in name)."),
              role: str = typer.Option(..., help="Role, e.g. gp, consultant, care-coordinator, analyst, system."),
              practitioner: str | None = typer.Option(None, help="Practitioner id this user acts as."),
              organization: str | None = typer.Option(None, help="Organization id the user works for."),
              patient: str | None = typer.Option(None, help="Patient id (for role patient)."),
              display: str | None = typer.Option(None, help="Display name."),
              password: str | None = typer.Option(None, help="Password for web log-in (optional)."),
              replace: bool = typer.Option(False, help="Redefine an existing user.")) -> None:
    """Add a user."""
    from joinedup.governance.accounts import IdentityError, add_user

    gate = _gate()
    for option, rtype, rid in (("--practitioner", "Practitioner", practitioner),
                               ("--organization", "Organization", organization), ("--patient", "Patient", patient)):
        if rid is None:
            continue
        found = gate.entry_status(rtype, rid)
        if found is None:
            fail(f"{option} {rid}: there is no {rtype}/{rid} in the store (import it first, or check the id)")
        if found == "deleted":
            fail(f"{option} {rid}: {rtype}/{rid} has been deleted from the store")
    try:
        who = add_user(gate, name=name, role=role, display=display, practitioner=practitioner,
                       organization=organization, patient=patient, password=password, replace=replace)
    except IdentityError as exc:
        fail(str(exc))
    out.print(f"user {who.name} ({who.role}) saved")


@users_app.command("list")
def users_list() -> None:
    """List users with role, organisation and whether they are active (a table on a terminal, tab-separated
    lines when piped)."""
    from joinedup.governance.accounts import all_users

    users = all_users(_gate())
    if not out.is_terminal:
        for u in users:
            sys.stdout.write("\t".join([u.name, u.role, u.organization_id or "", "active" if u.active else "disabled"])
                             + "\n")
        return
    table = Table("name", "role", "organisation", "active")
    for u in users:
        table.add_row(u.name, u.role, u.organization_id or "", "yes" if u.active else "no (disabled)")
    out.print(table)


@users_app.command("disable")
def users_disable(name: str = typer.Argument(..., help="User name.")) -> None:
    """Disable a user: their tokens are revoked and refused from their next request (history is kept)."""
    from joinedup.governance.accounts import IdentityError, disable_user

    gate = _gate()
    try:
        revoked = disable_user(gate, name)
    except IdentityError as exc:
        fail(str(exc))
    gate.record(cli_principal(), "user-admin", allowed=True, reason=f"user '{name}' disabled",
                detail={"user": name, "tokens revoked": revoked})
    gate.flush_audit()
    out.print(f"user {name} disabled ({revoked} token(s) revoked)", highlight=False)


@users_app.command("remove")
def users_remove(name: str = typer.Argument(..., help="User name.")) -> None:
    """Remove a user and their tokens (the audit trail keeps their history)."""
    from joinedup.governance.accounts import IdentityError, remove_user

    gate = _gate()
    try:
        removed = remove_user(gate, name)
    except IdentityError as exc:
        fail(str(exc))
    gate.record(cli_principal(), "user-admin", allowed=True, reason=f"user '{name}' removed",
                detail={"user": name, "tokens removed": removed})
    gate.flush_audit()
    out.print(f"user {name} removed ({removed} token(s) removed)", highlight=False)


@app.command("token")
def token(name: str = typer.Argument(..., help="User name."),
          hours: int | None = typer.Option(None, help="Hours until the token expires (default "
                                                      "JOINEDUP_TOKEN_TTL_HOURS, 720).")) -> None:
    """Issue a bearer token for a user (printed as the last word)."""
    from joinedup.governance.accounts import IdentityError, issue_token

    hours = get_settings().token_ttl_hours if hours is None else hours

    if hours <= 0:
        fail("--hours must be positive")
    try:
        value = issue_token(_gate(), name, hours=hours)
    except IdentityError as exc:
        fail(str(exc))
    sys.stdout.write(f"bearer token for {name}: {value}\n")


@app.command("demo")
def demo(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
         port: int = typer.Option(8000, help="Port to listen on."),
         patients: int = typer.Option(2000, help="Size of the synthetic population."),
         seed: int = typer.Option(42, help="Random seed for the synthetic population."),
         data_dir: Path = typer.Option(Path("demo-data"), help="Where generated NDJSON is written."),
         serve_app: bool = typer.Option(True, "--serve/--no-serve", help="Serve after loading.")) -> None:
    """Load a synthetic integrated care system, create demo users and serve the app."""
    from joinedup.demo import load_demo

    if patients < 1:
        fail("--patients must be at least 1")
    if serve_app:
        check_port(host, port)
    check_output_dir(data_dir, "--data-dir")
    gate = _gate()
    users = load_demo(gate, patients=patients, seed=seed, data_dir=data_dir, console=console)
    from joinedup.governance.identity import SYSTEM
    from joinedup.population.dashboard import precompute

    console.print("computing the population dashboard's figures ...")
    doc = precompute.run(gate, SYSTEM)
    console.print("  " + ", ".join(f"{k} {v:.0f}s" for k, v in doc["timings_seconds"].items()))
    table = Table("user", "role", "password", title="Demo log-ins (web app and POST /auth/token)")
    for u in users:
        table.add_row(u["name"], u["role"], u["password"])
    out.print(table)
    out.print("Bearer tokens for the API (Authorization: Bearer ...):")
    for u in users:
        out.print(f"  {u['name']:<18} {u['token']}", highlight=False, soft_wrap=True)
    out.print(f"API: http://{host}:{port}/fhir   docs: http://{host}:{port}/docs   web: http://{host}:{port}/")
    if serve_app:
        serve(host=host, port=port, workers=1, log_level="warning")


def _checking(command, check):
    """The command with `check(**its arguments)` run first (same parameters, help and name for Typer)."""

    @functools.wraps(command)
    def checked(*args, **kwargs):
        check(**kwargs)
        return command(*args, **kwargs)

    return checked


def _sar_outputs(out_file: Path | None = None, **_: Any) -> None:
    if out_file is not None:
        check_output_file(out_file, "--out")


def _extract_outputs(out_dir: Path, **_: Any) -> None:
    check_output_dir(out_dir, "--out")


app.command("generate", help="Generate a synthetic integrated care system as FHIR NDJSON.")(generate_command)
app.command("sar")(_checking(governance_cli.sar_command, _sar_outputs))
app.command("extract")(_checking(governance_cli.extract_command, _extract_outputs))
app.add_typer(governance_cli.privacy_app, name="privacy")
app.add_typer(conflicts_app, name="conflicts", help="Multimorbidity conflict engine: check records, screen populations.")
app.add_typer(knowledge_app, name="knowledge")  # the conflict knowledge: list, show RULE, check (exit 2 per problem)
app.add_typer(care_cli.app, name="care")
app.add_typer(views_app, name="views", help="SQL on FHIR v2 views over NDJSON files or the store (DuckDB, Spark).")
app.add_typer(hl7_app, name="hl7")


if __name__ == "__main__":  # pragma: no cover
    app()
