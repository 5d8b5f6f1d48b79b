"""Web security around every request: security headers, trusted hosts, CSRF on cookie-authenticated form posts."""

from __future__ import annotations

from fastapi import FastAPI

from joinedup.config import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add the security middleware to the app."""
