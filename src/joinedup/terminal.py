"""What every command group shares: one-line errors (exit code 2), checks made before any work (output paths,
ports), and the principal a command-line operator acts as. Below the domains' CLIs and the root `cli.py`, so that
a domain's commands never import the root command."""

from __future__ import annotations

import os
import socket
import tempfile
import zlib
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> None:
    """One-line error and exit code 2."""
    message = " ".join(str(message).split())
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong, for an exception a command did not handle itself."""
    from joinedup.fhir.errors import FhirError
    from joinedup.store.engine import DatabaseUnavailable

    if isinstance(exc, DatabaseUnavailable):
        return f"{exc} (check JOINEDUP_DATABASE_URL)"
    if isinstance(exc, FhirError):
        return exc.diagnostics
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{where}: {exc.strerror or exc.__class__.__name__}"
    try:
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.DBAPIError):
            reason = exc.orig if exc.orig is not None else exc
            return f"database error: {' '.join(str(reason).split()) or reason.__class__.__name__}"
        if isinstance(exc, sa.exc.SQLAlchemyError):
            return f"database error: {' '.join(str(exc).split())}"
    except ImportError:  # pragma: no cover - SQLAlchemy is a hard dependency
        pass
    text = " ".join(str(exc).split())
    if isinstance(exc, (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, LookupError)):
        return text or exc.__class__.__name__
    return f"unexpected {exc.__class__.__name__}: {text}" if text else f"unexpected {exc.__class__.__name__}"


# -- checks made before any work, so a command fails at once, in one line ----------------------------------------
def _nearest_existing(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists (a file ancestor included)."""
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable_dir(directory: Path, label: str) -> None:
    """Fail unless `directory` is a directory this process can write in, or one it can create."""
    try:
        if directory.exists():
            if not directory.is_dir():
                fail(f"{label}: {directory} exists and is not a directory")
            base = directory
        else:
            base = _nearest_existing(directory)
            if not base.is_dir():
                fail(f"{label}: cannot create {directory}: {base} is not a directory")
    except OSError as exc:
        fail(f"{label}: {exc.strerror or exc}")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".joinedup-probe-"):
            pass
    except OSError as exc:
        fail(f"{label}: cannot write in {base}: {exc.strerror or exc}")


def check_output_dir(path: Path, option: str) -> None:
    """Fail (one line naming the path, exit 2) unless `path` is a directory this process can write in, or one
    it can create. `option` names it in the message (e.g. "--out")."""
    _writable_dir(path, f"{option} {path}")


def check_output_file(path: Path, option: str) -> None:
    """Fail (one line naming the path, exit 2) unless `path` names a file this process can write (its directory
    may be created)."""
    label = f"{option} {path}"
    try:
        if path.is_dir():
            fail(f"{label}: is a directory; give a file name")
        if path.exists():
            with path.open("ab"):
                return
    except OSError as exc:
        fail(f"{label}: cannot write it: {exc.strerror or exc}")
    _writable_dir(path.parent, label)


def check_port(host: str, port: int) -> None:
    """Fail (one line, exit 2) unless the server could listen on host:port now."""
    if not 1 <= port <= 65535:
        fail(f"--port {port} is out of range: give a port from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        fail(f"--host {host}: {getattr(exc, 'strerror', None) or exc}")
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(address)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def cli_principal():
    from joinedup.governance.identity import Principal

    return Principal(name=f"cli:{os.environ.get('USER', 'operator')}", role="system",
                     display="command-line operator")
