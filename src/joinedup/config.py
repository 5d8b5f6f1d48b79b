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
    # -- audit (governance issue part 5) --------------------------------------------------------------
    # HMAC keys for the audit chain, "id:secret,id:secret"; the first is the active key (rotation: put the new key
    # first and keep the old ones listed so `audit verify` can check older entries). Empty: a per-installation key
    # file (AUDIT_KEY_FILE) is created and used.
    audit_keys: str = field(default_factory=lambda: _env("AUDIT_KEYS", ""))
    audit_key_file: Path = field(default_factory=lambda: Path(_env("AUDIT_KEY_FILE", "var/audit.key")))
    # Signed checkpoints of the audit chain head, kept outside the database (an append-only file).
    audit_checkpoint_file: Path = field(
        default_factory=lambda: Path(_env("AUDIT_CHECKPOINT_FILE", "var/audit-checkpoints.log")))
    # -- sign-in and sessions (part 6) -----------------------------------------------------------------
    trusted_hosts: str = field(default_factory=lambda: _env("TRUSTED_HOSTS", "127.0.0.1,localhost,testserver"))
    secure_cookies: bool = field(default_factory=lambda: _env("SECURE_COOKIES", "0") in ("1", "true", "yes"))
    login_max_failures: int = field(default_factory=lambda: int(_env("LOGIN_MAX_FAILURES", "5")))
    login_lockout_seconds: int = field(default_factory=lambda: int(_env("LOGIN_LOCKOUT_SECONDS", "900")))
    login_ip_max_failures: int = field(default_factory=lambda: int(_env("LOGIN_IP_MAX_FAILURES", "20")))
    # -- request limits (part 7) -----------------------------------------------------------------------
    max_body_bytes: int = field(default_factory=lambda: int(_env("MAX_BODY_BYTES", str(64 * 1024 * 1024))))
    max_bundle_entries: int = field(default_factory=lambda: int(_env("MAX_BUNDLE_ENTRIES", "20000")))


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
