"""Settings from the environment (JOINEDUP_*)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"JOINEDUP_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field can be set with a JOINEDUP_* environment variable."""

    database_url: str = field(default_factory=lambda: _env("DATABASE_URL", "sqlite:///joinedup.db"))
    base_url: str = field(default_factory=lambda: _env("BASE_URL", "http://127.0.0.1:8000"))
    export_dir: Path = field(default_factory=lambda: Path(_env("EXPORT_DIR", "var/exports")))
    token_ttl_hours: int = field(default_factory=lambda: int(_env("TOKEN_TTL_HOURS", "720")))
    audit_flush_ms: int = field(default_factory=lambda: int(_env("AUDIT_FLUSH_MS", "200")))
    default_page_size: int = 50
    max_page_size: int = 1000
    secret_key: str = field(default_factory=lambda: _env("SECRET_KEY", "") or _stable_secret())


def _stable_secret() -> str:
    """A per-installation secret kept beside the working directory (used for pseudonyms and sessions)."""
    path = Path(_env("SECRET_FILE", "var/secret.key"))
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value)
    return value


def get_settings() -> Settings:
    """Read settings from the current environment."""
    return Settings()
