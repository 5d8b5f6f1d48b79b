"""`joinedup hl7 ...`: the MLLP listener, the file drop, the dead-letter store and unmerge."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from joinedup import config
from joinedup.interop.hl7.service import Hl7Service

app = typer.Typer(help="HL7 v2 ADT feeds: MLLP listener, file drop, dead letters, replay, unmerge.",
                  no_args_is_help=True)
out = Console(soft_wrap=True)
FILE_SUFFIXES = (".hl7", ".er7", ".txt", ".adt", ".mllp")


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


def _service(gate) -> Hl7Service:
    from joinedup.care.notifications import service as notifications

    notifications.install(gate)  # admissions, transfers and discharges notify as FHIR writes do
    return Hl7Service(gate)


def _finish(gate) -> None:
    from joinedup.care.notifications import service as notifications

    n = notifications.notifier_for(gate)
    if n is not None:
        n.flush(60)
    gate.flush_audit()


def split_messages(data: bytes) -> list[bytes]:
    """The messages in a file: MLLP frames when it holds any, else one message per MSH segment (batch header and
    trailer segments FHS/BHS/BTS/FTS are not messages)."""
    if b"\x0b" in data:
        return [part.split(b"\x1c")[0] for part in data.split(b"\x0b")[1:] if part.split(b"\x1c")[0].strip()]
    text = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    messages: list[list[bytes]] = []
    for seg in text.split(b"\r"):
        if not seg.strip() or seg[:3] in (b"FHS", b"BHS", b"BTS", b"FTS"):
            continue
        if seg.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(seg)
    return [b"\r".join(m) + b"\r" for m in messages]


def discover(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in FILE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            _fail(f"no such file or directory: {p}")
    return found


def _end_with_parent() -> None:
    """An extra listener process (--handed) ends when the listener that started it ends, however that ends
    (a SIGKILL included): Linux's parent-death signal; where that is unavailable it ends with its parent's SIGTERM."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone before the signal was asked for
        raise SystemExit(0)


@app.command("listen")
def listen(host: str = typer.Option(None, help="Interface to listen on (default JOINEDUP_HL7_HOST)."),
           port: int = typer.Option(2575, help="TCP port (2575 is the port registered for HL7 over MLLP)."),
           processes: int = typer.Option(1, help="Listener processes: this one accepts every connection and "
                                                 "deals them out in turn (itself included), so each serves an "
                                                 "equal share and a connection's messages are still applied in "
                                                 "order by one process."),
           handed: int = typer.Option(-1, "--handed", hidden=True,
                                      help="Serve the connections handed over on this file descriptor (the "
                                           "other processes of --processes).")) -> None:
    """Listen for HL7 v2 ADT messages over MLLP and acknowledge each one."""
    import signal
    import socket
    import subprocess
    import threading

    from joinedup.interop.hl7 import mllp
    from joinedup.terminal import check_port

    host = host or config.value("HL7_HOST")
    if processes < 1:
        _fail("--processes must be at least 1")
    if processes > 1 and not hasattr(socket, "send_fds"):
        _fail("--processes needs connections handed between processes (SCM_RIGHTS), which this system does not "
              "have: use --processes 1")
    if handed < 0:
        check_port(host, port)
    else:
        _end_with_parent()
    gate = _gate()
    service = _service(gate)

    def stop(_signum, _frame) -> None:  # a service manager's SIGTERM ends the listener as Ctrl-C does
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # (signal handlers belong to the main thread)
        signal.signal(signal.SIGTERM, stop)
    # each other process gets its connections over a Unix socket of its own
    hand_to, others = mllp.start_processes(processes - 1 if handed < 0 else 0, host=host, port=port)
    try:
        mllp.run(service, host=host, port=port, max_bytes=config.value("HL7_MAX_MESSAGE_BYTES"),
                 frame_timeout=config.value("HL7_FRAME_TIMEOUT"), hand_to=hand_to,
                 handed_from=socket.socket(fileno=handed) if handed >= 0 else None,
                 ready=lambda addr: out.print(f"listening for HL7 v2 (MLLP) on {addr[0]}:{addr[1]}"
                                              + (f" ({processes} processes)" if processes > 1 else ""),
                                              highlight=False))
    except KeyboardInterrupt:
        pass
    finally:
        for proc in others:
            proc.terminate()
        for proc in others:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        _finish(gate)


@app.command("import")
def import_(paths: list[Path] = typer.Argument(..., help="HL7 v2 files (.hl7 .er7 .txt .adt .mllp) or directories "
                                                          "of them."),
            acks: Path | None = typer.Option(None, help="Write every acknowledgement to this file.")) -> None:
    """Apply HL7 v2 ADT messages from files, in file order; messages that cannot be applied are kept in the dead
    letters (exit code 2 when any was not applied)."""
    from joinedup.terminal import check_output_file

    files = discover(paths)
    if acks is not None:
        check_output_file(acks, "--acks")
    gate = _gate()
    service = _service(gate)
    counts: dict[str, int] = {}
    held: list[str] = []
    ack_fh = acks.open("w", encoding="utf-8") if acks is not None else None
    try:
        for f in files:
            try:
                data = f.read_bytes()
            except OSError as exc:
                _fail(f"cannot read {f}: {exc.strerror or exc}")
            for n, raw in enumerate(split_messages(data), 1):
                result = service.handle(raw, channel=f"file:{f}#{n}")
                counts[result.ack_code] = counts.get(result.ack_code, 0) + 1
                if result.held:
                    held.append(f"{f}#{n}: {result.text} (dead letter {result.held})")
                if ack_fh is not None:
                    ack_fh.write(result.ack.replace("\r", "\n") + "\n")
    finally:
        if ack_fh is not None:
            ack_fh.close()
        _finish(gate)
    total = sum(counts.values())
    out.print(f"{total} message(s) from {len(files)} file(s): " +
              ", ".join(f"{counts[k]} {k}" for k in sorted(counts)), highlight=False)
    if held:
        _fail(f"{len(held)} of {total} message(s) not applied and kept in the dead letters (joinedup hl7 "
              f"dead-letters); first: {held[0]}")


@app.command("dead-letters")
def dead_letters(all_: bool = typer.Option(False, "--all", help="Also those already replayed."),
                 as_json: bool = typer.Option(False, "--json", help="JSON lines, with the raw message.")) -> None:
    """Messages that could not be applied, with the reason and the segment and field at fault."""
    from joinedup.terminal import cli_principal

    gate = _gate()
    rows = gate.held_messages(cli_principal(), status=None if all_ else "held", limit=100_000)
    gate.flush_audit()
    for r in rows:
        if as_json:
            sys.stdout.write(json.dumps(r, default=str) + "\n")
        else:
            sys.stdout.write("\t".join([r["id"], r["received"], r["status"], r["ack_code"], r["facility"] or "-",
                                        r["control_id"] or "-", r["trigger"] or "-", r["location"] or "-",
                                        r["reason"]]) + "\n")
    if not as_json:
        out.print(f"{len(rows)} dead letter(s)", highlight=False, style="dim")


@app.command("replay")
def replay(held_id: str | None = typer.Argument(None, help="The dead letter to apply again."),
           all_: bool = typer.Option(False, "--all", help="Replay every held dead letter, oldest first.")) -> None:
    """Apply dead letters again (after putting the cause right, e.g. adding the sending organisation)."""
    from joinedup.terminal import cli_principal

    if bool(held_id) == bool(all_):
        _fail("give one dead letter id, or --all")
    gate = _gate()
    service = _service(gate)
    ids = [held_id] if held_id else [r["id"] for r in gate.held_messages(cli_principal(), status="held",
                                                                           limit=100_000)]
    still = 0
    try:
        for i in ids:
            try:
                result = service.replay(i)
            except KeyError:
                _fail(f"no dead letter {i} (see joinedup hl7 dead-letters)")
            except ValueError as exc:
                _fail(str(exc))
            still += result.ack_code != "AA"
            sys.stdout.write(f"{i}\t{result.ack_code}\t{result.text}\n")
    finally:
        _finish(gate)
    if still:
        _fail(f"{still} of {len(ids)} dead letter(s) still not applied")


@app.command("unmerge")
def unmerge(patient: str = typer.Argument(..., help="The Patient id that an A40 merged into another record."),
            reason: str = typer.Option(..., help="Why the merge is undone (at least 10 characters; audited).")) -> None:
    """Undo an A40 merge: the record is active again and no longer linked to the one it was merged into."""
    from joinedup.fhir.errors import FhirError
    from joinedup.terminal import cli_principal

    gate = _gate()
    try:
        done = Hl7Service(gate).unmerge(cli_principal(), patient, reason=reason)
    except ValueError as exc:
        _fail(str(exc))
    except FhirError as exc:
        _fail(exc.diagnostics)
    finally:
        gate.flush_audit()
    out.print(f"Patient/{done['restored']} restored; no longer merged into Patient/{done['survivor']}",
              highlight=False)
