"""Options and results of a synthetic ICS generation run."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_TODAY = date(2026, 6, 30)


class GenerateOptions(BaseModel):
    """What to generate: population size, seed, output directory and the fixed reference date."""

    patients: int = Field(2000, ge=1, le=5_000_000)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    out: Path
    workers: int = Field(2, ge=1, le=64)
    today: date = DEFAULT_TODAY
    years: int = Field(3, ge=1, le=10)
    force: bool = False


class GenerateResult(BaseModel):
    """What was written: counts per resource type and ground-truth records per kind."""

    out: Path
    patients: int
    seed: int
    resources: int
    counts: dict[str, int]
    truth: dict[str, int]
    files: int
