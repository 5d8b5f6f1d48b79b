"""Users, bearer tokens and passwords."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from joinedup.governance.policy import known_roles
from joinedup.store import schema


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user with a role and, for professionals, their practitioner and organisation."""

    name: str
    role: str
    display: str | None = None
    practitioner_id: str | None = None
    organization_id: str | None = None
    patient_id: str | None = None

    @property
    def source(self) -> str | None:
        """The meta.source this principal's writes carry (their organisation)."""
        return f"Organization/{self.organization_id}" if self.organization_id else None


SYSTEM = Principal(name="system", role="system", display="JoinedUp integration account")


class IdentityError(ValueError):
    """A user or token problem with a message fit to show."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, digest = stored.split("$")
    test = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(test.hex(), digest)


def add_user(store, *, name: str, role: str, display: str | None = None, practitioner: str | None = None,
             organization: str | None = None, patient: str | None = None, password: str | None = None,
             replace: bool = False) -> Principal:
    """Create (or with replace=True, redefine) a user."""
    if role not in known_roles():
        raise IdentityError(f"unknown role '{role}'; choose one of: {', '.join(sorted(known_roles()))}")
    if not name or len(name) > 128:
        raise IdentityError("a user name must be 1 to 128 characters")
    if role == "patient" and not patient:
        raise IdentityError("a patient user needs --patient PATIENT_ID")
    u = schema.app_user
    row = {"name": name, "role": role, "display": display, "practitioner_id": practitioner,
           "organization_id": organization, "patient_id": patient,
           "password_hash": hash_password(password) if password else None,
           "created": _now().isoformat(), "active": True}
    with store.writing() as conn:
        exists = conn.execute(sa.select(u.c.name).where(u.c.name == name)).first()
        if exists and not replace:
            raise IdentityError(f"user '{name}' already exists")
        if exists:
            conn.execute(u.update().where(u.c.name == name).values(**row))
        else:
            conn.execute(u.insert().values(**row))
    _cache.clear()
    return Principal(name, role, display, practitioner, organization, patient)


def get_user(store, name: str) -> Principal | None:
    u = schema.app_user
    with store.reading() as conn:
        row = conn.execute(sa.select(u).where(u.c.name == name, u.c.active.is_(True))).mappings().first()
    if row is None:
        return None
    return Principal(row["name"], row["role"], row["display"], row["practitioner_id"], row["organization_id"],
                     row["patient_id"])


def list_users(store) -> list[Principal]:
    u = schema.app_user
    with store.reading() as conn:
        rows = conn.execute(sa.select(u).where(u.c.active.is_(True)).order_by(u.c.name)).mappings().all()
    return [Principal(r["name"], r["role"], r["display"], r["practitioner_id"], r["organization_id"],
                      r["patient_id"]) for r in rows]


def issue_token(store, name: str, *, hours: int = 720) -> str:
    """A new bearer token for a user (only its hash is kept)."""
    if get_user(store, name) is None:
        raise IdentityError(f"no such user '{name}'")
    token = "ju_" + secrets.token_urlsafe(32)
    t = schema.api_token
    now = _now()
    with store.writing() as conn:
        conn.execute(t.insert().values(token_hash=hashlib.sha256(token.encode()).hexdigest(), user_name=name,
                                       created=now.isoformat(),
                                       expires=(now + timedelta(hours=hours)).isoformat(), revoked=False))
    return token


def login(store, name: str, password: str, *, hours: int = 12) -> str | None:
    """Check a password and issue a token, or None when the credentials are wrong."""
    u = schema.app_user
    with store.reading() as conn:
        stored = conn.execute(sa.select(u.c.password_hash).where(u.c.name == name, u.c.active.is_(True))).first()
    if stored is None or not check_password(password, stored[0]):
        return None
    return issue_token(store, name, hours=hours)


_cache: dict[str, tuple[float, Principal | None]] = {}


def authenticate(store, token: str | None) -> Principal | None:
    """The principal a bearer token stands for, or None (cached for a minute)."""
    if not token:
        return None
    hit = _cache.get(token)
    now = time.monotonic()
    if hit and hit[0] > now:
        return hit[1]
    t, u = schema.api_token, schema.app_user
    with store.reading() as conn:
        row = conn.execute(
            sa.select(u.c.name, u.c.role, u.c.display, u.c.practitioner_id, u.c.organization_id, u.c.patient_id,
                      t.c.expires, t.c.revoked)
            .join(u, u.c.name == t.c.user_name)
            .where(t.c.token_hash == hashlib.sha256(token.encode()).hexdigest(), u.c.active.is_(True))
        ).first()
    who = None
    if row is not None and not row[7] and row[6] > _now().isoformat():
        who = Principal(*row[:6])
    if len(_cache) > 10000:
        _cache.clear()
    _cache[token] = (now + 60, who)
    return who


def revoke_tokens(store, name: str) -> int:
    t = schema.api_token
    with store.writing() as conn:
        n = conn.execute(t.update().where(t.c.user_name == name).values(revoked=True)).rowcount
    _cache.clear()
    return n
