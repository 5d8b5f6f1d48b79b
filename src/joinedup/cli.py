"""The `joinedup` command: one command group per domain."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from joinedup import config
from joinedup.care import cli as care_cli
from joinedup.config import get_settings
from joinedup.conflicts.cli import app as conflicts_app
from joinedup.governance import cli as governance_cli
from joinedup.synth.cli import generate_command

app = typer.Typer(help="JoinedUp: an open integrated care platform (FHIR shared care record, governance, "
                       "care coordination, population health).", no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage users (roles, practitioner and organisation links).", no_args_is_help=True)
audit_app = typer.Typer(help="Check and read the tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str) -> None:
    """One-line error and exit code 2."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _gate():
    from joinedup.governance.gate import get_gate

    return get_gate(get_settings().database_url)


def _cli_principal():
    from joinedup.governance.identity import Principal

    return Principal(name=f"cli:{os.environ.get('USER', 'operator')}", role="system",
                     display="command-line operator")


@app.command("serve")
def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          workers: int = typer.Option(1, help="Worker processes."),
          log_level: str = typer.Option("warning", help="Uvicorn log level.")) -> None:
    """Serve the API (FHIR at /fhir, OpenAPI docs at /docs) and web app."""
    import uvicorn

    _trust_bound_host(host)
    _gate()  # migrate before workers start
    uvicorn.run("joinedup.api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)


def _trust_bound_host(host: str) -> None:
    """Requests must name a trusted host (JOINEDUP_TRUSTED_HOSTS): the interface served on is trusted too;
    on every interface (0.0.0.0, ::) this machine's own names are."""
    import socket

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
            source: Optional[str] = typer.Option(None, help="meta.source for resources that do not carry one, "
                                                           "e.g. Organization/ODS123."),
            rejects: Optional[Path] = typer.Option(None, help="Where to write rejected lines with reasons."),
            workers: int = typer.Option(2, help="Processes validating in parallel (1 = in-process)."),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Load FHIR NDJSON files or Bundles (idempotent; bad lines go to a rejects file)."""
    from joinedup.interop.bulk_import import discover, import_paths

    try:
        discover(paths)
    except FileNotFoundError as exc:
        fail(str(exc))
    gate = _gate()
    who = _cli_principal()
    with Progress(TextColumn("[bold]importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("import", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = import_paths(gate, who, paths, source=source, rejects=rejects, workers=workers, progress=progress)
    gate.audit.flush()
    out.print(f"read {report.read:,} resources from {report.files} file(s) in {report.seconds:.1f}s "
              f"({report.rate:,.0f}/s): {report.created:,} created, {report.updated:,} updated, "
              f"{report.unchanged:,} unchanged, {report.rejected:,} rejected", highlight=False)
    if report.rejects_path:
        out.print(f"rejected lines and reasons: {report.rejects_path}", highlight=False)


@app.command("export")
def export(out_dir: Path = typer.Argument(..., help="Directory for the NDJSON files."),
           types: Optional[str] = typer.Option(None, "--type", help="Comma-separated resource types."),
           since: Optional[str] = typer.Option(None, help="Only resources changed since this instant.")) -> None:
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
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"{out_dir} exists and is not a directory")
    gate = _gate()
    counts = export_to_dir(gate, _cli_principal(), out_dir, types=wanted, since=since_norm, label="cli export")
    gate.audit.flush()
    for t, n in sorted(counts.items()):
        out.print(f"{t}.ndjson\t{n}")
    out.print(f"exported {sum(counts.values()):,} resources in {len(counts)} file(s) to {out_dir}")


@users_app.command("add")
def users_add(name: str = typer.Argument(..., help="User name (log-in name)."),
              role: str = typer.Option(..., help="Role, e.g. gp, consultant, care-coordinator, analyst, system."),
              practitioner: Optional[str] = typer.Option(None, help="Practitioner id this user acts as."),
              organization: Optional[str] = typer.Option(None, help="Organization id the user works for."),
              patient: Optional[str] = typer.Option(None, help="Patient id (for role patient)."),
              display: Optional[str] = typer.Option(None, help="Display name."),
              password: Optional[str] = typer.Option(None, help="Password for web log-in (optional)."),
              replace: bool = typer.Option(False, help="Redefine an existing user.")) -> None:
    """Add a user."""
    from joinedup.governance.identity import IdentityError, add_user

    try:
        who = add_user(_gate().store, name=name, role=role, display=display, practitioner=practitioner,
                       organization=organization, patient=patient, password=password, replace=replace)
    except IdentityError as exc:
        fail(str(exc))
    out.print(f"user {who.name} ({who.role}) saved")


@users_app.command("list")
def users_list() -> None:
    """List users with role, organisation and whether they are active (a table on a terminal, tab-separated
    lines when piped)."""
    from joinedup.governance.identity import all_users

    users = all_users(_gate().store)
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
    from joinedup.governance.identity import IdentityError, disable_user

    gate = _gate()
    try:
        revoked = disable_user(gate.store, name)
    except IdentityError as exc:
        fail(str(exc))
    gate.audit.record(_cli_principal(), "user-admin", allowed=True, reason=f"user '{name}' disabled",
                      detail={"user": name, "tokens revoked": revoked})
    gate.audit.flush()
    out.print(f"user {name} disabled ({revoked} token(s) revoked)", highlight=False)


@users_app.command("remove")
def users_remove(name: str = typer.Argument(..., help="User name.")) -> None:
    """Remove a user and their tokens (the audit trail keeps their history)."""
    from joinedup.governance.identity import IdentityError, remove_user

    gate = _gate()
    try:
        removed = remove_user(gate.store, name)
    except IdentityError as exc:
        fail(str(exc))
    gate.audit.record(_cli_principal(), "user-admin", allowed=True, reason=f"user '{name}' removed",
                      detail={"user": name, "tokens removed": removed})
    gate.audit.flush()
    out.print(f"user {name} removed ({removed} token(s) removed)", highlight=False)


@app.command("token")
def token(name: str = typer.Argument(..., help="User name."),
          hours: Optional[int] = typer.Option(None, help="Hours until the token expires (default "
                                                      "JOINEDUP_TOKEN_TTL_HOURS, 720).")) -> None:
    """Issue a bearer token for a user (printed as the last word)."""
    from joinedup.governance.identity import IdentityError, issue_token

    hours = get_settings().token_ttl_hours if hours is None else hours

    if hours <= 0:
        fail("--hours must be positive")
    try:
        value = issue_token(_gate().store, name, hours=hours)
    except IdentityError as exc:
        fail(str(exc))
    sys.stdout.write(f"bearer token for {name}: {value}\n")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit hash chain; exit 1 naming the first bad entry if it was tampered with."""
    from joinedup.governance.audit import verify_chain

    gate = _gate()
    gate.audit.flush()
    report = verify_chain(gate.store)
    if report.ok:
        out.print(f"audit chain intact: {report.checked:,} entries verified")
        return
    console.print(f"[red]audit chain broken[/red]: {report.problem} (first bad entry: {report.first_bad_seq})")
    raise typer.Exit(1)


@app.command("demo")
def demo(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
         port: int = typer.Option(8000, help="Port to listen on."),
         patients: int = typer.Option(2000, help="Size of the synthetic population."),
         seed: int = typer.Option(42, help="Random seed for the synthetic population."),
         data_dir: Path = typer.Option(Path("demo-data"), help="Where generated NDJSON is written."),
         serve_app: bool = typer.Option(True, "--serve/--no-serve", help="Serve after loading.")) -> None:
    """Load a synthetic integrated care system, create demo users and serve the app."""
    from joinedup.demo import load_demo

    gate = _gate()
    users = load_demo(gate, patients=patients, seed=seed, data_dir=data_dir, console=console)
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


app.command("generate", help="Generate a synthetic integrated care system as FHIR NDJSON.")(generate_command)
app.command("sar")(governance_cli.sar_command)
app.command("extract")(governance_cli.extract_command)
app.add_typer(governance_cli.privacy_app, name="privacy")
app.add_typer(conflicts_app, name="conflicts", help="Multimorbidity conflict engine: check records, screen populations.")
app.add_typer(care_cli.app, name="care")


if __name__ == "__main__":  # pragma: no cover
    app()
