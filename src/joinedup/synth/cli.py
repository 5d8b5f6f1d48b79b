"""`joinedup generate`: write a synthetic integrated care system as FHIR R4 NDJSON."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from joinedup.synth.models import DEFAULT_TODAY
from joinedup.synth.service import GenerateError, generate


def _fail(message: str) -> None:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(2)


def generate_command(
    patients: Annotated[int, typer.Option("--patients", "-n",
                                          help="Number of people in the population (1-5,000,000).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", "-s",
                                      help="Random seed; the same seed and size give identical files.")] = 42,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created; earlier generator "
                                                          "output in it is replaced).")] = Path("synthetic-ics"),
    workers: Annotated[int, typer.Option("--workers", "-w",
                                         help="Worker processes (output does not depend on this).")] = 2,
    today: Annotated[str, typer.Option("--today", help="Fixed reference date YYYY-MM-DD: activity covers the "
                                                       "years before it.")] = DEFAULT_TODAY.isoformat(),
    years: Annotated[int, typer.Option("--years", help="Years of activity before --today (1-10).")] = 3,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty directory that holds other "
                                                        "files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    hl7: Annotated[bool, typer.Option("--hl7", help="Also write the acute trust's HL7 v2 ADT feed for its "
                                                    "encounters (hl7/adt-feed.hl7).")] = False,
) -> None:
    """Generate a synthetic integrated care system (FHIR R4 NDJSON plus ground truth) into a directory."""
    try:
        ref_date = date.fromisoformat(today)
    except ValueError:
        _fail(f"--today must be a date like 2026-06-30, not '{today}'")
    if patients < 1:
        _fail("--patients must be at least 1")
    if workers < 1:
        _fail("--workers must be at least 1")
    from joinedup.terminal import check_output_dir, describe_error

    check_output_dir(out, "--out")  # fails at once, in one line, rather than after the people are made
    console = Console(stderr=True, quiet=quiet)
    try:
        with Progress(TextColumn("[bold]Generating[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("people"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet,
                      transient=True) as bar:
            task = bar.add_task("people", total=patients)
            result = generate(patients=patients, seed=seed, out=out, workers=workers, today=ref_date,
                              years=years, force=force, progress=lambda n: bar.advance(task, n), hl7=hl7)
    except GenerateError as exc:
        _fail(str(exc))
    except OSError as exc:  # e.g. the disk filled up: the path and the problem, in one line
        _fail(describe_error(exc))
    if not quiet:
        console.print(f"Wrote {result.resources:,} resources for {result.patients:,} people "
                      f"in {result.files} files to {result.out}")
        for rtype, n in result.counts.items():
            console.print(f"  {rtype:<20} {n:>12,}")
        console.print(f"Ground truth: {result.out / 'ground-truth.ndjson'}")
        if hl7:
            console.print(f"HL7 v2 ADT feed: {result.out / 'hl7' / 'adt-feed.hl7'}")
