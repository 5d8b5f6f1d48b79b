"""User accounts and sessions through the gate: what the CLI, the demo loader, the API and the web layer call.

The account tables (app_user, api_token, auth_throttle) are the gate's like every other table; these functions take
the gate and reach its store for the `identity` functions, which keep the rules (roles, hashing, token lifetime,
throttling). Administrative changes are audited by their callers (`gate.record(..., "user-admin", ...)`), log-ins
and log-outs by `sign_in` and the API / web layer.
"""

from __future__ import annotations

from joinedup.governance import identity
from joinedup.governance.gate import Gate
from joinedup.governance.identity import IdentityError, Principal, SignIn, UserRow, sign_in

__all__ = ["IdentityError", "SignIn", "UserRow", "add_user", "all_users", "authenticate", "disable_user",
           "get_user", "issue_token", "list_users", "login", "remove_user", "revoke_token", "revoke_tokens",
           "sign_in", "unlock"]


def add_user(gate: Gate, *, name: str, role: str, display: str | None = None, practitioner: str | None = None,
             organization: str | None = None, patient: str | None = None, password: str | None = None,
             replace: bool = False) -> Principal:
    """Create (or with replace=True, redefine) a user."""
    return identity.add_user(gate._store, name=name, role=role, display=display, practitioner=practitioner,
                             organization=organization, patient=patient, password=password, replace=replace)


def get_user(gate: Gate, name: str) -> Principal | None:
    """The active user of that name, or None."""
    return identity.get_user(gate._store, name)


def list_users(gate: Gate) -> list[Principal]:
    """Every active user, by name."""
    return identity.list_users(gate._store)


def all_users(gate: Gate) -> list[UserRow]:
    """Every user, active or disabled, by name."""
    return identity.all_users(gate._store)


def issue_token(gate: Gate, name: str, *, hours: int = 720) -> str:
    """A new bearer token for a user (only its hash is kept)."""
    return identity.issue_token(gate._store, name, hours=hours)


def login(gate: Gate, name: str, password: str, *, hours: int = 12) -> str | None:
    """A bearer token for a right password (no throttling: the demo loader and tests; people use `sign_in`)."""
    return identity.login(gate._store, name, password, hours=hours)


def authenticate(gate: Gate, token: str | None) -> Principal | None:
    """The principal a bearer token stands for, or None."""
    return identity.authenticate(gate._store, token)


def revoke_token(gate: Gate, token: str | None) -> bool:
    """Revoke one token (log-out); True if it was live."""
    return identity.revoke_token(gate._store, token)


def revoke_tokens(gate: Gate, name: str) -> int:
    """Revoke every token of a user."""
    return identity.revoke_tokens(gate._store, name)


def disable_user(gate: Gate, name: str) -> int:
    """Disable a user and revoke their tokens; returns how many tokens were revoked."""
    return identity.disable_user(gate._store, name)


def remove_user(gate: Gate, name: str) -> int:
    """Remove a user and their tokens; returns how many tokens went."""
    return identity.remove_user(gate._store, name)


def unlock(gate: Gate, name: str) -> bool:
    """Clear an account's failed log-ins and lock; True if there was one."""
    return identity.unlock(gate._store, name)
