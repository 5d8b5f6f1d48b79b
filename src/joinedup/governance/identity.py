"""Users, bearer tokens, passwords and sign-in.

Sign-in is throttled per account and per client address (table auth_throttle, keys "user:NAME" and "addr:IP"):
after `login_max_failures` wrong passwords an account is locked for `login_lockout_seconds`, doubling with each
further failure after a lock ends (back-off), and an address is locked the same way after `login_ip_max_failures`.
Unknown user names cost the same scrypt as a wrong password and get the same answer, so names cannot be probed.
Tokens are looked up on every request (no cache), so revoking a token, disabling or removing a user or changing
their role takes effect on their next request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    return datetime.now(UTC)


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


@dataclass(frozen=True)
class UserRow:
    """A user as `joinedup users list` shows them (active or not)."""

    name: str
    role: str
    organization_id: str | None
    practitioner_id: str | None
    patient_id: str | None
    active: bool


def all_users(store) -> list[UserRow]:
    """Every user, active or disabled, by name."""
    u = schema.app_user
    with store.reading() as conn:
        rows = conn.execute(sa.select(u.c.name, u.c.role, u.c.organization_id, u.c.practitioner_id, u.c.patient_id,
                                      u.c.active).order_by(u.c.name)).all()
    return [UserRow(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store, name: str, *, hours: int = 720) -> str:
    """A new bearer token for a user (only its hash is kept)."""
    if get_user(store, name) is None:
        raise IdentityError(f"no such user '{name}'")
    token = "ju_" + secrets.token_urlsafe(32)
    t = schema.api_token
    now = _now()
    with store.writing() as conn:
        conn.execute(t.insert().values(token_hash=_token_hash(token), user_name=name, created=now.isoformat(),
                                       expires=(now + timedelta(hours=hours)).isoformat(), revoked=False))
    return token


_dummy_lock = threading.Lock()
_dummy_hash: list[str] = []


def _dummy() -> str:
    """A real scrypt hash of a random password: checked when there is no user, so that costs the same time."""
    if not _dummy_hash:
        with _dummy_lock:
            if not _dummy_hash:
                _dummy_hash.append(hash_password(secrets.token_urlsafe(16)))
    return _dummy_hash[0]


def _check(store, name: str, password: str) -> bool:
    """Whether the password is right for an active user; the same scrypt runs whether or not the user exists,
    is active or has a password."""
    u = schema.app_user
    with store.reading() as conn:
        row = conn.execute(sa.select(u.c.password_hash).where(u.c.name == name, u.c.active.is_(True))).first()
    stored = row[0] if row is not None else None
    usable = bool(stored and stored.startswith("scrypt$") and stored.count("$") == 2)
    ok = check_password(password, stored if usable else _dummy())
    return ok and usable


def login(store, name: str, password: str, *, hours: int = 12) -> str | None:
    """Check a password and issue a token, or None when the credentials are wrong (no throttling: for trusted
    callers such as the demo loader; people sign in through `sign_in`)."""
    if not _check(store, name, password):
        return None
    return issue_token(store, name, hours=hours)


# -- throttled sign-in ----------------------------------------------------------------------------------------
ACCOUNT_MEMORY = timedelta(hours=24)  # an account's failures are forgotten a day after the last one (or its lock)
MAX_BACKOFF_DOUBLINGS = 6  # a lock lasts at most 64 times login_lockout_seconds
WRONG = "wrong user name or password"


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt: a token, or why not (a message fit to show, the same for unknown names
    and wrong passwords) and, when locked, until when."""

    token: str | None
    message: str = ""
    locked_until: datetime | None = None
    locked: str | None = None  # "account" or "address"

    @property
    def retry_after(self) -> int:
        """Seconds until the lock ends (0 when not locked)."""
        if self.locked_until is None:
            return 0
        return max(1, int((self.locked_until - _now()).total_seconds() + 0.999))


def _key_user(name: str) -> str:
    return ("user:" + name)[:200]


def _key_addr(address: str | None) -> str:
    return ("addr:" + (address or "unknown"))[:200]


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def format_time(when: datetime) -> str:
    """'14:05 UTC on 3 June 2026' (to the minute, rounded up so the lock has surely ended)."""
    when = (when + timedelta(seconds=59)).replace(second=0, microsecond=0)
    return f"{when:%H:%M} UTC on {when.day} {when:%B %Y}"


def _locked_message(kind: str, until: datetime) -> str:
    if kind == "address":
        return (f"Too many failed log-ins from your network address: log-in from it is locked until "
                f"{format_time(until)}. Try again then.")
    return (f"This account is locked after too many failed log-ins. It unlocks at {format_time(until)}; "
            "try again then, or ask your administrator.")


def throttle_state(store, key: str) -> dict | None:
    """The auth_throttle row for a key ("user:NAME" or "addr:IP"), or None."""
    t = schema.auth_throttle
    with store.reading() as conn:
        row = conn.execute(sa.select(t).where(t.c.key == key)).mappings().first()
    return dict(row) if row else None


@dataclass
class _Reserved:
    """One key's count after an attempt was reserved, and what to restore if the password turns out right."""

    key: str
    threshold: int
    failures: int
    locked_until: datetime | None  # the lock this attempt set (reaching the limit), else None
    before: str | None  # locked_until as it was before


def _reserve(conn, key: str, threshold: int, lockout: int, memory: timedelta, now: datetime
             ) -> tuple[datetime | None, _Reserved | None]:
    """Count an attempt as a failure before the password is checked, so that concurrent guesses cannot all
    slip past the limit: (the lock in force, None) when locked, else (None, what was reserved)."""
    t = schema.auth_throttle
    row = conn.execute(sa.select(t).where(t.c.key == key).with_for_update()).mappings().first()
    locked_until = _parse(row["locked_until"]) if row else None
    if locked_until is not None and locked_until > now:
        return locked_until, None
    if row is None:
        failures, first = 1, now
    else:
        last = max(d for d in (_parse(row["last_failure"]), locked_until, now - memory * 2) if d)
        if now - last > memory:  # long quiet: start counting again
            failures, first = 1, now
        else:
            failures, first = row["failures"] + 1, _parse(row["first_failure"]) or now
    new_lock = None
    if failures >= threshold:  # this attempt reaches the limit: locked after it, longer each time (back-off)
        new_lock = now + timedelta(seconds=lockout * 2 ** min(failures - threshold, MAX_BACKOFF_DOUBLINGS))
    before = row["locked_until"] if row else None
    values = {"failures": failures, "first_failure": first.isoformat(), "last_failure": now.isoformat(),
              "locked_until": new_lock.isoformat() if new_lock else before}
    if row is None:
        conn.execute(t.insert().values(key=key, **values))
    else:
        conn.execute(t.update().where(t.c.key == key).values(**values))
    return None, _Reserved(key, threshold, failures, new_lock, before)


def _release(conn, r: _Reserved) -> None:
    """The password was right: take the reserved failure back off a key's count (and the lock it set)."""
    t = schema.auth_throttle
    row = conn.execute(sa.select(t).where(t.c.key == r.key).with_for_update()).mappings().first()
    if row is None:
        return
    failures = max(0, row["failures"] - 1)
    values: dict = {"failures": failures}
    if r.locked_until is not None and row["locked_until"] == r.locked_until.isoformat() and failures < r.threshold:
        values["locked_until"] = r.before
    conn.execute(t.update().where(t.c.key == r.key).values(**values))


def _prune(conn, now: datetime) -> None:
    t = schema.auth_throttle
    cutoff, now_text = (now - ACCOUNT_MEMORY).isoformat(), now.isoformat()
    conn.execute(t.delete().where(t.c.last_failure < cutoff,
                                  sa.or_(t.c.locked_until.is_(None), t.c.locked_until < now_text)))


def _retrying(store, fn):
    """Run fn(conn) in a write transaction, again if a concurrent first attempt inserted the same key."""
    for attempt in range(3):
        try:
            with store.writing() as conn:
                return fn(conn)
        except sa.exc.IntegrityError:
            if attempt == 2:
                raise
    return None


def sign_in(gate, name: str, password: str, *, address: str | None, settings, channel: str,
            hours: int = 12) -> SignIn:
    """A person signing in (web form or OAuth2 password grant), throttled per account and per client address;
    every failure, lockout and refused attempt while locked is audited.

    Each attempt is counted before its password is checked (and taken back if it was right), so a burst of
    concurrent guesses gets no more tries than a slow one. `gate`: the Gate; `settings`:
    login_max_failures, login_lockout_seconds, login_ip_max_failures; `channel`: "web" or "api" (for the audit)."""
    store, audit = gate._store, gate._audit
    name = (name or "").strip()
    who_tried = {"user": name[:128], "address": address or "unknown", "channel": channel}
    if not name or not password:
        audit.record(None, "login", allowed=False, reason=f"{channel} log-in without a user name or password",
                     detail=who_tried)
        return SignIn(None, WRONG)
    lockout = max(1, int(settings.login_lockout_seconds))
    keys = [("address", _key_addr(address), max(1, int(settings.login_ip_max_failures)), timedelta(seconds=lockout)),
            ("account", _key_user(name), max(1, int(settings.login_max_failures)), ACCOUNT_MEMORY)]

    def reserve(conn) -> tuple[tuple[str, datetime] | None, dict[str, _Reserved]]:
        now, reserved = _now(), {}
        for kind, key, _, _ in keys:  # the address first: it says more about who is trying
            until = conn.execute(sa.select(schema.auth_throttle.c.locked_until)
                                 .where(schema.auth_throttle.c.key == key)).scalar()
            if until and _parse(until) > now:
                return (kind, _parse(until)), {}
        for kind, key, threshold, memory in keys:
            held, r = _reserve(conn, key, threshold, lockout, memory, now)
            if held is not None:  # (locked meanwhile) nothing is written: the transaction rolls back
                raise _Locked(kind, held)
            reserved[kind] = r
        if secrets.randbelow(200) == 0:  # now and then, forget long-quiet rows (names tried once, say)
            _prune(conn, now)
        return None, reserved

    try:
        lock, reserved = _retrying(store, reserve)
    except _Locked as exc:
        lock, reserved = (exc.kind, exc.until), {}
    if lock is not None:
        kind, until = lock
        audit.record(None, "login", allowed=False, detail={**who_tried, "locked_until": until.isoformat()},
                     reason=f"{channel} log-in refused for '{name[:64]}' from {address}: {kind} locked until "
                            f"{until.isoformat()}")
        return SignIn(None, _locked_message(kind, until), until, kind)
    if _check(store, name, password):
        token = issue_token(store, name, hours=hours)
        t = schema.auth_throttle
        with store.writing() as conn:  # a successful log-in clears the account's count; the address's is untouched
            conn.execute(t.delete().where(t.c.key == _key_user(name)))
            _release(conn, reserved["address"])
        audit.record(get_user(store, name), "login", allowed=True, detail=who_tried,
                     reason=f"{channel} log-in from {address}")
        return SignIn(token)
    audit.record(None, "login", allowed=False, detail=who_tried,
                 reason=f"{channel} log-in failed for '{name[:64]}' from {address}: {WRONG}")
    locked = {kind: r.locked_until for kind, r in reserved.items() if r.locked_until is not None}
    for kind, until in locked.items():
        target = f"account '{name[:64]}'" if kind == "account" else f"address {address}"
        audit.record(None, "login", allowed=False, detail={**who_tried, "locked_until": until.isoformat()},
                     reason=f"lockout: {target} locked until {until.isoformat()} after too many failed log-ins")
    if locked:
        kind = "address" if "address" in locked else "account"
        return SignIn(None, _locked_message(kind, locked[kind]), locked[kind], kind)
    return SignIn(None, WRONG)


class _Locked(Exception):
    def __init__(self, kind: str, until: datetime) -> None:
        super().__init__(kind)
        self.kind, self.until = kind, until


def unlock(store, name: str) -> bool:
    """Clear an account's failed log-ins and lock (an administrator's action); True if there was one."""
    t = schema.auth_throttle
    with store.writing() as conn:
        return bool(conn.execute(t.delete().where(t.c.key == _key_user(name))).rowcount)


# -- sessions -------------------------------------------------------------------------------------------------
_AUTH_SQL = {ph: ("SELECT u.name, u.role, u.display, u.practitioner_id, u.organization_id, u.patient_id, t.expires,"
                  f" t.revoked FROM api_token t JOIN app_user u ON u.name = t.user_name WHERE t.token_hash = {ph}"
                  f" AND u.active = {ph}") for ph in ("?", "%s")}


def authenticate(store, token: str | None) -> Principal | None:
    """The principal a bearer token stands for, or None: looked up on every request (an indexed query), so a
    revoked token, a disabled or removed user or a changed role counts from the very next request."""
    if not token or len(token) > 512:
        return None
    # plain SQL, written once, on the store's cheapest path for one-row lookups: this runs on every API request
    row = store.point(_AUTH_SQL["%s" if store.dialect == "postgresql" else "?"], (_token_hash(token), True))
    if row is None or row[7] or row[6] <= _now().isoformat():
        return None
    return Principal(*row[:6])


def revoke_token(store, token: str | None) -> bool:
    """Revoke one token (log-out); True if it was live."""
    if not token:
        return False
    t = schema.api_token
    with store.writing() as conn:
        n = conn.execute(t.update().where(t.c.token_hash == _token_hash(token), t.c.revoked.is_(False))
                         .values(revoked=True)).rowcount
    return bool(n)


def revoke_tokens(store, name: str) -> int:
    """Revoke every token of a user."""
    t = schema.api_token
    with store.writing() as conn:
        return conn.execute(t.update().where(t.c.user_name == name, t.c.revoked.is_(False))
                            .values(revoked=True)).rowcount


def _must_exist(conn, name: str) -> None:
    u = schema.app_user
    if conn.execute(sa.select(u.c.name).where(u.c.name == name)).first() is None:
        raise IdentityError(f"no such user '{name}'")


def disable_user(store, name: str) -> int:
    """Disable a user (kept, with their history) and revoke their tokens; returns how many tokens were revoked."""
    u, t = schema.app_user, schema.api_token
    with store.writing() as conn:
        _must_exist(conn, name)
        conn.execute(u.update().where(u.c.name == name).values(active=False))
        return conn.execute(t.update().where(t.c.user_name == name, t.c.revoked.is_(False))
                            .values(revoked=True)).rowcount


def remove_user(store, name: str) -> int:
    """Remove a user and their tokens (the audit trail keeps their history); returns how many tokens went."""
    u, t, th = schema.app_user, schema.api_token, schema.auth_throttle
    with store.writing() as conn:
        _must_exist(conn, name)
        n = conn.execute(t.delete().where(t.c.user_name == name)).rowcount
        conn.execute(th.delete().where(th.c.key == _key_user(name)))
        conn.execute(u.delete().where(u.c.name == name))
    return n
