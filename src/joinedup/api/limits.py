"""Request limits: body size, bundle entries, integer parameters (a clear OperationOutcome, never a 500)."""

from __future__ import annotations

from fastapi import FastAPI

from joinedup.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add the request-limit middleware to the app."""
