"""Governance commands: subject access reports, the break-glass review queue, de-identified extracts, and the
audit trail (`joinedup audit verify`, `joinedup audit rotate-key`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table

privacy_app = typer.Typer(help="Privacy officer: break-glass review queue.", no_args_is_help=True)
audit_app = typer.Typer(help="Check the tamper-evident audit trail and rotate its key.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _gate():
    from joinedup.config import get_settings
    from joinedup.governance.gate import get_gate

    return get_gate(get_settings().database_url)


def _operator():
    from joinedup.governance.identity import Principal

    return Principal(name=f"cli:{os.environ.get('USER', 'operator')}", role="system",
                     display="command-line operator")


def sar_command(nhs_number: str = typer.Argument(..., help="The person's NHS number (10 digits)."),
                out_file: Path | None = typer.Option(None, "--out", "-o",
                                                        help="Write the report here (default: standard output).")
                ) -> None:
    """Subject access report: the person's whole record plus who accessed it (JSON)."""
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.service import normalise_nhs_number, subject_access_report

    try:
        normalise_nhs_number(nhs_number)
    except ValueError as exc:
        _fail(str(exc))
    if out_file is not None and out_file.is_dir():
        _fail(f"{out_file} is a directory; give a file name")
    gate = _gate()
    try:
        report = subject_access_report(gate, _operator(), nhs_number)
    except LookupError as exc:
        _fail(str(exc))
    except FhirError as exc:
        _fail(exc.diagnostics)
    gate._audit.flush()
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"
    if out_file is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(data)
    n = sum(len(r["entries"]) for r in report["records"])
    a = sum(r["access_log_total"] for r in report["records"])
    console.print(f"subject access report for {report['nhs_number']}: {n} entries, {a} access log lines -> "
                  f"{out_file}", highlight=False)


@privacy_app.command("reviews")
def reviews(status: str = typer.Option("pending", help="pending, reviewed or all.")) -> None:
    """List break-glass grants awaiting review (or all)."""
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.service import review_queue

    if status not in ("pending", "reviewed", "all"):
        _fail("--status must be pending, reviewed or all")
    gate = _gate()
    try:
        rows = review_queue(gate, _operator(), status=status)
    except FhirError as exc:
        _fail(exc.diagnostics)
    gate._audit.flush()
    table = Table(title=f"break-glass grants ({status})")
    # the id is what `privacy review` is given: never shortened, whatever the terminal's width
    table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=2))
    for name in ("granted", "user", "role", "patient", "category", "reason", "accesses", "outcome"):
        table.add_column(name)
    for r in rows:
        table.add_row(r["id"], r["granted"], r["user"], r["role"], r["patient"], r["reason_category"], r["reason"],
                      str(r["accesses_during_grant"]), r["outcome"] or "pending")
    out.print(table)
    out.print(f"{len(rows)} grant(s)")


@privacy_app.command("review")
def review(grant_id: str = typer.Argument(..., help="The grant id (from `joinedup privacy reviews`)."),
           outcome: str = typer.Option(..., help="appropriate or inappropriate."),
           reviewer: str = typer.Option(..., help="The privacy officer's user name."),
           note: str | None = typer.Option(None, help="What was found (required when inappropriate).")) -> None:
    """Record the outcome of one break-glass review."""
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.identity import get_user
    from joinedup.governance.service import record_review

    gate = _gate()
    who = get_user(gate._store, reviewer)
    if who is None:
        _fail(f"no such user '{reviewer}'")
    try:
        done = record_review(gate, who, grant_id, outcome=outcome, note=note)
    except FhirError as exc:
        _fail(exc.diagnostics)
    gate._audit.flush()
    out.print(f"grant {done['id']} reviewed: {done['outcome']} (by {done['reviewed_by']})")


def extract_command(out_dir: Path = typer.Option(..., "--out", "-o", help="Directory for the de-identified NDJSON."),
                    purpose: str = typer.Option("research", help="research or planning (recorded in the audit)."),
                    birth: str = typer.Option("year", "--birth-precision", help="Birth dates to year or month.")
                    ) -> None:
    """De-identified extract for research and planning (opt-outs excluded, pseudonymised, no free text)."""
    from joinedup.governance import deid

    if purpose not in ("research", "planning"):
        _fail("--purpose must be research or planning")
    if birth not in ("year", "month"):
        _fail("--birth-precision must be year or month")
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"{out_dir} exists and is not a directory")
    gate = _gate()
    records = gate.deidentified_records(_operator(), purpose=purpose, birth_precision=birth)
    summary = deid.write_extract(records, out_dir)
    gate._audit.flush()
    for t, n in sorted(summary["resources"].items()):
        out.print(f"{t}.ndjson\t{n}")
    out.print(f"extracted {summary['people']:,} people ({sum(summary['resources'].values()):,} resources) to "
              f"{out_dir}; summary.json holds suppressed counts")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the keyed audit chain and the signed checkpoints: exit 0 with a one-line summary, or exit 2 with a
    one-line problem naming the first bad entry (modified, inserted, removed, unknown key, truncated)."""
    from joinedup.config import get_settings
    from joinedup.governance.audit import verify_chain
    from joinedup.store.repository import get_store

    settings = get_settings()
    try:
        store = get_store(settings.database_url)  # not the gate: verifying must never create an audit key
        report = verify_chain(store)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback (database unreachable, unreadable file)
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"cannot verify the audit chain: {exc.__class__.__name__}: {first}")
    if report.ok:
        out.print(report.summary, highlight=False, soft_wrap=True)
        return
    console.print(f"[red]{report.summary}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@audit_app.command("rotate-key")
def audit_rotate_key(write: bool = typer.Option(False, "--write",
                                                help="Put the new key first in the key file (only when the keys "
                                                     "come from JOINEDUP_AUDIT_KEY_FILE).")) -> None:
    """Print a new JOINEDUP_AUDIT_KEYS value: a new signing key first, every current key kept after it.

    Restart every server process with it (entries signed meanwhile by the old key still verify: it stays
    listed). Never drop a key while entries signed with it exist."""
    import re

    from joinedup.config import get_settings
    from joinedup.governance.audit import AuditKeyError, load_keys, new_key_secret

    settings = get_settings()
    try:
        current = load_keys(settings=settings, create=False)
    except (AuditKeyError, OSError) as exc:
        _fail(str(exc))
    numbers = [int(m.group(1)) for k in current.ids if (m := re.fullmatch(r"k(\d+)", k))]
    new_id = f"k{max(numbers, default=len(current.ids)) + 1}"
    while new_id in current.ids:  # pragma: no cover - only with hand-made ids
        new_id += "x"
    pairs = [(new_id, new_key_secret())] + [(k, s.decode()) for k, s in current.keys]
    if not write:
        sys.stdout.write("JOINEDUP_AUDIT_KEYS=" + ",".join(f"{k}:{s}" for k, s in pairs) + "\n")
        sys.stdout.flush()
        console.print(f"new signing key {new_id}; kept: {', '.join(current.ids) or 'none'}. Set this on every "
                      "server process and restart them; keep it secret.", highlight=False, soft_wrap=True)
        return
    if settings.audit_keys.strip():
        _fail("the keys come from JOINEDUP_AUDIT_KEYS: set it to the value printed without --write")
    path = Path(settings.audit_key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, "".join(f"{k}:{s}\n" for k, s in pairs).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    out.print(f"{path}: new signing key {new_id}; kept: {', '.join(current.ids) or 'none'}. Restart every server "
              "process to sign with it.", highlight=False, soft_wrap=True)
