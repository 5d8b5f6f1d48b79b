"""The one settings registry: every JOINEDUP_* environment variable is declared here once, with its default and help.

Nothing else in the application reads the environment for a JOINEDUP_* setting: code takes a `Settings` (the
values as one object, for the app and the CLI) or calls `value(NAME)` (a setting read where it is used, so that a
change to the environment takes effect without rebuilding the app). `docs/settings.md` lists the same settings; a
test fails when the two disagree (tests/test_docs.py).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "JOINEDUP_"


@dataclass(frozen=True)
class Setting:
    """One setting: its environment variable (without the prefix), default, type and what it is for."""

    name: str
    default: str
    help: str
    kind: type = str

    @property
    def env(self) -> str:
        return PREFIX + self.name

    def parse(self, raw: str) -> Any:
        if self.kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if self.kind is Path:
            return Path(raw)
        return self.kind(raw)


REGISTRY: tuple[Setting, ...] = (
    # -- where things are ------------------------------------------------------------------------------------
    Setting("DATABASE_URL", "sqlite:///joinedup.db",
            "The store: a SQLAlchemy URL (sqlite:///FILE, or postgresql+psycopg://USER@HOST:PORT/DB)."),
    Setting("BASE_URL", "http://127.0.0.1:8000",
            "The public address of the server: used in links it hands out; its host is a trusted host."),
    Setting("EXPORT_DIR", "var/exports", "Where bulk export ($export) files are written.", Path),
    Setting("SECRET_KEY", "",
            "Secret for pseudonyms and CSRF tokens. Empty: a per-installation secret kept in SECRET_FILE."),
    Setting("SECRET_FILE", "var/secret.key", "Where the per-installation secret is kept when SECRET_KEY is empty.",
            Path),
    # -- API -------------------------------------------------------------------------------------------------
    Setting("TOKEN_TTL_HOURS", "720", "Lifetime of tokens issued with `joinedup token` (hours).", int),
    Setting("MAX_BODY_BYTES", str(64 * 1024 * 1024), "Largest request body accepted (bytes); larger gets 413.", int),
    Setting("MAX_BUNDLE_ENTRIES", "20000", "Most entries in one batch or transaction Bundle.", int),
    # -- governance ------------------------------------------------------------------------------------------
    Setting("POLICY_REFRESH_MS", "200",
            "How soon other processes see changed access facts (relationships, choices, grants), in ms.", int),
    Setting("BREAK_GLASS_HOURS", "4", "Longest an emergency (break-glass) grant lasts, in hours.", float),
    Setting("SUPPRESS_LOW", "1", "Small-number suppression: smallest count shown as '*'.", int),
    Setting("SUPPRESS_HIGH", "7", "Small-number suppression: largest count shown as '*'.", int),
    Setting("SUPPRESS_ROUND", "5", "Small-number suppression: other counts are rounded to a multiple of this.", int),
    # -- audit -----------------------------------------------------------------------------------------------
    Setting("AUDIT_FLUSH_MS", "200",
            "How often the background audit writer commits events nobody waits for (ms); requests always wait for "
            "their own events to be committed.", int),
    Setting("AUDIT_KEYS", "",
            "HMAC keys of the audit chain, 'id:secret,id:secret'; the first signs new entries, the others still "
            "verify older ones (key rotation). Empty: a per-installation key in AUDIT_KEY_FILE."),
    Setting("AUDIT_KEY_FILE", "var/audit.key", "Where the per-installation audit key is kept (mode 0600).", Path),
    Setting("AUDIT_CHECKPOINT_FILE", "var/audit-checkpoints.log",
            "Append-only file of signed audit chain checkpoints, kept outside the database.", Path),
    # -- sign-in and sessions --------------------------------------------------------------------------------
    Setting("TRUSTED_HOSTS", "127.0.0.1,localhost,testserver",
            "Host names the server answers to (comma-separated; any port; '*.domain' and '*' allowed)."),
    Setting("SECURE_COOKIES", "0", "Mark cookies Secure (and send HSTS): set when served over HTTPS.", bool),
    Setting("LOGIN_MAX_FAILURES", "5", "Wrong passwords before an account is locked.", int),
    Setting("LOGIN_LOCKOUT_SECONDS", "900", "How long a first lock lasts (doubles after each further lock).", int),
    Setting("LOGIN_IP_MAX_FAILURES", "20", "Failed sign-ins from one address before it is locked.", int),
    # -- care coordination -----------------------------------------------------------------------------------
    Setting("ESCALATE_SECONDS", "900", "How often overdue tasks are escalated by the background worker (s).",
            float),
    # -- HL7 v2 feeds ----------------------------------------------------------------------------------------
    Setting("HL7_PORT", "0", "`joinedup serve` also listens for HL7 v2 ADT over MLLP on this TCP port (0: not).",
            int),
    Setting("HL7_HOST", "127.0.0.1", "Interface the HL7 v2 MLLP listener binds (serve, and `hl7 listen`)."),
    Setting("HL7_PROCESSES", "1",
            "Processes of the MLLP listener `joinedup serve` starts: it accepts every connection and deals them out "
            "in turn to itself and the others, as `hl7 listen --processes` does (a feed then uses more cores).",
            int),
    Setting("HL7_MAX_MESSAGE_BYTES", "1048576", "Largest HL7 v2 message accepted in one MLLP frame (bytes).", int),
    Setting("HL7_FRAME_TIMEOUT", "30",
            "Seconds to wait for the end of an MLLP frame before the partial message is kept and refused (AR).",
            float),
    # -- record linkage (interop/linkage) --------------------------------------------------------------------
    Setting("LINKAGE_MODEL", "var/linkage-model.json",
            "The trained Splink record-linkage model (`joinedup link train` writes it, `link run` reads it).", Path),
    Setting("LINKAGE_CONFIRM_PROBABILITY", "0.95",
            "Record linkage: a pair at or above this match probability becomes a confirmed link.", float),
    Setting("LINKAGE_REVIEW_PROBABILITY", "0.2",
            "Record linkage: a pair at or above this (and below the confirm level) goes to clerical review.", float),
    # -- population health -----------------------------------------------------------------------------------
    Setting("SPARK_MASTER", "local[2]",
            "Spark master for `joinedup views ... --engine spark` (local[N] on one machine, or a cluster URL)."),
    Setting("SPARK_DRIVER_MEMORY", "2g",
            "Memory of Spark's driver JVM (in local mode it also holds the tables: raise it for large populations)."),
    # -- decision support ------------------------------------------------------------------------------------
    Setting("CONFLICT_ROUTINE_ALERTS", "0",
            "Show low-severity schedule and lifestyle findings on CDS cards and the person page by default "
            "(each clinician can still choose 'all' in their alert settings).", bool),
)
_BY_NAME = {s.name: s for s in REGISTRY}


def setting(name: str) -> Setting:
    """The registry entry for a setting (without the JOINEDUP_ prefix)."""
    try:
        return _BY_NAME[name.removeprefix(PREFIX)]
    except KeyError:
        raise KeyError(f"{PREFIX}{name} is not a registered setting (add it to joinedup.config.REGISTRY)") from None


def value(name: str) -> Any:
    """A setting's current value from the environment (or its default), parsed to its type."""
    s = setting(name)
    return s.parse(os.environ.get(s.env, s.default))


def export(name: str, raw: str) -> None:
    """Set a setting for this process and the server processes it starts (e.g. the host `serve` binds)."""
    os.environ[setting(name).env] = raw


def _from(name: str):
    return lambda: value(name)


@dataclass(frozen=True)
class Settings:
    """The settings of one app or command, read from the environment when made (each field is a registry entry)."""

    database_url: str = field(default_factory=_from("DATABASE_URL"))
    base_url: str = field(default_factory=_from("BASE_URL"))
    export_dir: Path = field(default_factory=_from("EXPORT_DIR"))
    token_ttl_hours: int = field(default_factory=_from("TOKEN_TTL_HOURS"))
    audit_flush_ms: int = field(default_factory=_from("AUDIT_FLUSH_MS"))
    secret_key: str = field(default_factory=lambda: value("SECRET_KEY") or _stable_secret())
    audit_keys: str = field(default_factory=_from("AUDIT_KEYS"))
    audit_key_file: Path = field(default_factory=_from("AUDIT_KEY_FILE"))
    audit_checkpoint_file: Path = field(default_factory=_from("AUDIT_CHECKPOINT_FILE"))
    trusted_hosts: str = field(default_factory=_from("TRUSTED_HOSTS"))
    secure_cookies: bool = field(default_factory=_from("SECURE_COOKIES"))
    login_max_failures: int = field(default_factory=_from("LOGIN_MAX_FAILURES"))
    login_lockout_seconds: int = field(default_factory=_from("LOGIN_LOCKOUT_SECONDS"))
    login_ip_max_failures: int = field(default_factory=_from("LOGIN_IP_MAX_FAILURES"))
    max_body_bytes: int = field(default_factory=_from("MAX_BODY_BYTES"))
    max_bundle_entries: int = field(default_factory=_from("MAX_BUNDLE_ENTRIES"))
    # API paging (not environment settings: the FHIR search page sizes)
    default_page_size: int = 50
    max_page_size: int = 1000


def _stable_secret() -> str:
    """A per-installation secret kept beside the working directory (used for pseudonyms and sessions)."""
    path = value("SECRET_FILE")
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.write_text(token)
    return token


def get_settings() -> Settings:
    """Read settings from the current environment."""
    return Settings()
