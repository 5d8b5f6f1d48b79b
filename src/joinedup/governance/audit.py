"""The one audit writer: every access, allowed or refused, becomes an AuditEvent in a keyed hash chain.

Three guarantees (docs/governance.md, "Audit"):

* **Keyed chain.** Each entry's hash is HMAC-SHA256, under a secret audit key, of the previous entry's hash, the
  AuditEvent JSON and the searchable columns. The key's id is inside the JSON (chain extension), so keys can be
  rotated: the first configured key signs new entries, older ones stay listed so older entries verify. Someone
  who can edit the database but does not hold the key cannot recompute the chain.
* **Signed checkpoints outside the database.** After every committed batch the chain head (entry number and hash,
  with the time) is HMAC-signed and appended as one line to `JOINEDUP_AUDIT_CHECKPOINT_FILE` (O_APPEND, so several
  processes may append at once). `verify_chain` checks the chain against every checkpoint of this database:
  removing the newest entries (or all of them) no longer goes unnoticed.
* **Durable before the response.** `record()` returns only once its event is committed (group commit: the first
  waiter flushes every buffered event in one transaction while the others wait on it). Inside an HTTP request
  wrapped by `AuditDurabilityMiddleware` the wait moves to the moment the response is about to be sent, without
  blocking the event loop: requests reaching their responses in the same turn of the loop share one commit
  (SQLite: made on the loop itself, never waiting for a lock; PostgreSQL: by the writer thread). A write can
  append its event inside its own transaction with `record(..., conn=conn)`, so a committed write never lacks its
  event.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from joinedup.store import schema

if TYPE_CHECKING:
    from joinedup.governance.identity import Principal

log = logging.getLogger("joinedup.audit")

GENESIS = "0" * 64
CHAIN_URL = "https://joinedup.example/fhir/StructureDefinition/audit-chain"
CHECKPOINT_FORMAT = "joinedup-audit-checkpoint/1"
REST_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACTION_CODE = {"create": "C", "import": "C", "read": "R", "vread": "R", "search": "E", "history": "R",
               "everything": "E", "export": "E", "update": "U", "delete": "D", "transaction": "E",
               "batch": "E", "login": "E", "break-glass": "E"}
MAX_BATCH = 2000  # events per transaction: bounds how long one flush holds the write lock
WAL_CHECKPOINT_S = 1.0  # SQLite: how often the writer thread copies the WAL back (see AuditWriter._wal_checkpoint)
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


# -- keys --------------------------------------------------------------------------------------------------------
class AuditKeyError(ValueError):
    """The audit keys are malformed or missing."""


@dataclass(frozen=True)
class AuditKeys:
    """HMAC keys for the chain and the checkpoints, by id; the first one signs new entries."""

    keys: tuple[tuple[str, bytes], ...]
    source: str = "explicit keys"

    @property
    def active(self) -> tuple[str, bytes]:
        if not self.keys:
            raise AuditKeyError(f"no audit key ({self.source})")
        return self.keys[0]

    @property
    def ids(self) -> list[str]:
        return [k for k, _ in self.keys]

    def get(self, key_id: str) -> bytes | None:
        for k, secret in self.keys:
            if k == key_id:
                return secret
        return None


def parse_keys(text: str, *, source: str = "JOINEDUP_AUDIT_KEYS") -> AuditKeys:
    """Keys from "id:secret,id:secret" (commas or new lines); a lone secret without an id is "k1"."""
    items = [p.strip() for p in re.split(r"[,\n]", text) if p.strip() and not p.strip().startswith("#")]
    out: list[tuple[str, bytes]] = []
    for item in items:
        kid, sep, secret = item.partition(":")
        if not sep:
            if len(items) > 1:
                raise AuditKeyError(f"{source}: each key must be written id:secret")
            kid, secret = "k1", item
        kid, secret = kid.strip(), secret.strip()
        if not _KEY_ID.match(kid):
            raise AuditKeyError(f"{source}: key id '{kid}' must be 1-32 letters, digits, '.', '_' or '-'")
        if len(secret) < 16:
            raise AuditKeyError(f"{source}: the secret of key '{kid}' is shorter than 16 characters")
        if any(k == kid for k, _ in out):
            raise AuditKeyError(f"{source}: key id '{kid}' is listed twice")
        out.append((kid, secret.encode()))
    if not out:
        raise AuditKeyError(f"{source}: no key given")
    return AuditKeys(tuple(out), source)


def new_key_secret() -> str:
    return secrets.token_urlsafe(32)


def _read_key_file(path: Path) -> AuditKeys:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("audit key file %s is readable by others (mode %o); it should be 0600", path, mode)
    except OSError:
        pass
    return parse_keys(path.read_text(), source=f"key file {path}")


def _create_key_file(path: Path) -> None:
    """A new random key "k1" in `path`, mode 0600; safe when several processes race to create it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"k1:{new_key_secret()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic: fails if another process created the file first, which then wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_keys(keys: AuditKeys | str | Sequence[tuple[str, str | bytes]] | None = None, *, settings=None,
              create: bool = False) -> AuditKeys:
    """The audit keys: explicit ones, else JOINEDUP_AUDIT_KEYS, else the key file (created when `create`).

    Without `create` a missing key file gives an empty key set (verification then names the keys it lacks)."""
    if isinstance(keys, AuditKeys):
        return keys
    if isinstance(keys, str):
        return parse_keys(keys, source="explicit keys")
    if keys is not None:
        pairs = tuple((k, s.encode() if isinstance(s, str) else bytes(s)) for k, s in keys)
        return parse_keys(",".join(f"{k}:{s.decode()}" for k, s in pairs), source="explicit keys")
    if settings is None:
        from joinedup.config import get_settings

        settings = get_settings()
    if settings.audit_keys.strip():
        return parse_keys(settings.audit_keys)
    path = Path(settings.audit_key_file)
    if not path.exists():
        if not create:
            return AuditKeys((), f"no key file at {path} and JOINEDUP_AUDIT_KEYS is empty")
        _create_key_file(path)
    return _read_key_file(path)


# -- hashing ---------------------------------------------------------------------------------------------------
def event_hash(prev_hash: str, content: str, columns: tuple, key: bytes | None = None) -> str:
    """Chain hash over the previous hash, the AuditEvent JSON and every searchable column of the row.

    HMAC-SHA256 under `key`; without a key, plain SHA-256 (only entries written before the chain was keyed)."""
    cols = "\x1f".join("" if c is None else str(c) for c in columns)
    msg = f"{prev_hash}\x1e{content}\x1e{cols}".encode()
    if key is None:
        return hashlib.sha256(msg).hexdigest()
    return hmac.digest(key, msg, "sha256").hex()  # one-shot: what hmac.new(...).hexdigest() gives, cheaper


# -- checkpoints -----------------------------------------------------------------------------------------------
def database_tag(url: str) -> str:
    """Which database a checkpoint is about: the URL without credentials (a SQLite file by its real path)."""
    u = sa.engine.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = u.database or ":memory:"
        if db != ":memory:" and not db.startswith("file:"):
            db = os.path.realpath(db)
        return f"sqlite:{db}"
    port = u.port or {"postgresql": 5432}.get(backend, "")
    tag = f"{backend}://{u.host or 'localhost'}:{port}/{u.database or ''}"
    extra = sorted((k, str(v)) for k, v in u.query.items() if k not in ("password", "sslpassword"))
    return tag + ("?" + "&".join(f"{k}={v}" for k, v in extra) if extra else "")


def _checkpoint_message(db: str, seq: int, h: str, when: str, kid: str) -> bytes:
    return "\x1f".join((CHECKPOINT_FORMAT, db, str(seq), h, when, kid)).encode()


def checkpoint_line(keys: AuditKeys, db: str, seq: int, h: str, when: str | None = None) -> bytes:
    """One signed checkpoint line (JSON, newline-terminated) for the chain head (seq, hash)."""
    kid, secret = keys.active
    when = when or _now()
    sig = hmac.new(secret, _checkpoint_message(db, seq, h, when, kid), hashlib.sha256).hexdigest()
    return orjson.dumps({"v": 1, "db": db, "seq": seq, "hash": h, "time": when, "key": kid, "sig": sig}) + b"\n"


def append_checkpoint(path: Path, line: bytes) -> None:
    """Append one line with a single O_APPEND write (atomic among concurrent writers for lines this short)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    seq: int
    hash: str
    time: str
    key: str
    line: int


@dataclass
class CheckpointScan:
    """This database's validly signed checkpoints, and what is wrong with the file: `problem` an edited, forged or
    unreadable line, or two checkpoints disagreeing about entry `bad_seq`; `key_problem` the first line of this
    database signed with a key that is not configured.

    `digests` maps each checkpointed entry number to its 32-byte hash (compact: a busy server writes many lines);
    the line and time of one are found again with `locate` when a problem is reported."""

    path: Path
    db: str
    digests: dict[int, bytes] = field(default_factory=dict)
    newest: Checkpoint | None = None
    problem: str | None = None
    bad_seq: int | None = None
    key_problem: str | None = None

    def locate(self, seq: int) -> Checkpoint | None:
        """The first line of this database checkpointing entry `seq`."""
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if b'"seq":%d,' % seq not in raw:
                    continue
                try:
                    d = orjson.loads(raw)
                except ValueError:
                    continue
                if d.get("db") == self.db and d.get("seq") == seq:
                    return Checkpoint(seq, d["hash"], d["time"], d["key"], n)
        return None


def read_checkpoints(path: Path, keys: AuditKeys, db: str) -> CheckpointScan:
    """Read and check every line of the checkpoint file; lines about other databases are checked when their key
    is known and otherwise skipped."""
    scan = CheckpointScan(path, db)
    found = scan.digests
    if not path.exists():
        return scan
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                d = orjson.loads(raw)
                cdb, seq, h, when, kid, sig = d["db"], d["seq"], d["hash"], d["time"], d["key"], d["sig"]
                if not (isinstance(seq, int) and isinstance(h, str) and isinstance(sig, str)
                        and all(isinstance(x, str) for x in (cdb, when, kid))):
                    raise TypeError
                digest = bytes.fromhex(h)
            except (ValueError, KeyError, TypeError):
                scan.problem = scan.problem or (f"checkpoint file {path} line {n} is not a checkpoint (edited "
                                                "or damaged)")
                continue
            secret = keys.get(kid)
            if secret is None:
                if cdb == db and scan.key_problem is None:
                    scan.key_problem = (f"checkpoint file {path} line {n} is signed with key '{kid}', which is not "
                                        f"configured (keys: {', '.join(keys.ids) or 'none'}; {keys.source})")
                continue
            good = hmac.new(secret, _checkpoint_message(cdb, seq, h, when, kid), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(good, sig):
                scan.problem = scan.problem or (f"checkpoint file {path} line {n} has a bad signature: it was "
                                                f"edited or forged (it claims entry {seq})")
                continue
            if cdb != db:
                continue
            other = found.setdefault(seq, digest)
            if other != digest and scan.problem is None:
                first = scan.locate(seq)
                scan.problem = (f"signed checkpoints disagree about entry {seq} (lines {first.line if first else '?'} "
                                f"and {n} of {path}, {first.time if first else '?'} and {when}): the chain was "
                                "rewritten from there on")
                scan.bad_seq = seq
            if scan.newest is None or seq > scan.newest.seq:
                scan.newest = Checkpoint(seq, h, when, kid, n)
    return scan


# -- the writer ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Pending:
    recorded: str
    user_name: str | None
    role: str | None
    action: str
    outcome: str
    patient_id: str | None
    entity: str | None
    content: tuple
    ticket: int = 0
    id: str = ""
    head: str = ""  # the event JSON before "extension" (sorted keys, no closing brace)
    tail: str = ""  # and after "id" (no opening brace): the chain fields go between, once the head is known
    born: float = 0.0  # time.monotonic() when recorded

    def prepare(self) -> None:
        """Serialise everything that does not depend on the chain head, outside any lock."""
        self.id = uuid7()
        try:
            self.head, self.tail = _halves(AuditWriter.build_event(self))
        except Exception as exc:  # noqa: BLE001 - an event is never dropped for being odd
            self.head, self.tail = _halves(_plain_event(self, exc))

    def text(self, seq: int, prev: str, kid: str) -> str:
        """The AuditEvent JSON with its id and chain fields: what orjson with sorted keys would write."""
        return (f'{self.head},"extension":[{{"extension":[{{"url":"sequence","valueInteger":{seq}}},'
                f'{{"url":"previousHash","valueString":"{prev}"}},{{"url":"key","valueString":"{kid}"}}],'
                f'"url":"{CHAIN_URL}"}}],"id":"{self.id}",{self.tail}')


def uuid7() -> str:
    """A UUID version 7 (RFC 9562 section 5.7): 48 bits of Unix time in milliseconds, the version, 74 random bits
    and the variant. Python has `uuid.uuid7` only from 3.14. Ids that grow with time are added at the right edge
    of the unique index on the event id, instead of on a random page of it (uuid4): about one page fewer written
    per event."""
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b, 6 unused
    value = ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
             | 0b10 << 62 | rand & ((1 << 62) - 1))
    h = f"{value:032x}"  # the canonical 8-4-4-4-12 form, without building a UUID object for each event
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Scope:
    """Events recorded while handling one HTTP request and not yet known to be durable: {writer: newest ticket}.

    A scope that `defers` (Gate.answering for a feed's messages) keeps its events instead, {writer: [events]}, for
    the write transaction that follows to append (`AuditWriter.append_deferred`): the reads behind a batch of HL7
    messages commit with the batch's writes, not in a transaction of their own. What no transaction took is
    committed when the scope ends (`settle_deferred`)."""

    __slots__ = ("open", "pending", "deferred")

    def __init__(self, defer: bool = False) -> None:
        self.pending: dict[AuditWriter, int] = {}
        self.open = True
        self.deferred: dict[AuditWriter, list[Pending]] | None = {} if defer else None

    def settle_deferred(self) -> None:
        """Buffer the deferred events no transaction took (to be committed by the waits that follow)."""
        deferred, self.deferred = self.deferred or {}, None
        for writer, events in deferred.items():
            if events:
                self.pending[writer] = writer._enqueue(events)

    async def settle(self) -> None:
        while self.pending:
            writer, ticket = self.pending.popitem()
            await writer.wait_async(ticket)


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("joinedup_audit_scope", default=None)


class AuditDurabilityMiddleware:
    """ASGI middleware: no byte of a response leaves before the audit events recorded while producing it are
    committed. Inside it `record()` returns at once and the request waits (asynchronously, so other requests run
    and share the commit) just before each message it sends. Add it as the outermost middleware."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder = _Scope()
        token = _scope.set(holder)

        async def durable_send(message) -> None:
            if holder.pending:
                await holder.settle()
            await send(message)

        try:
            await self.app(scope, receive, durable_send)
        finally:
            holder.open = False
            _scope.reset(token)


class AuditWriter:
    """Appends AuditEvents to the keyed chain; `record()` returns once the event is committed."""

    def __init__(self, store, flush_ms: int = 200, *,
                 keys: AuditKeys | str | Sequence[tuple[str, str | bytes]] | None = None,
                 checkpoint_path: str | Path | None = None) -> None:
        """`keys`: "id:secret,..." (first signs) or AuditKeys; default JOINEDUP_AUDIT_KEYS, else the key file
        (JOINEDUP_AUDIT_KEY_FILE, created with a random key "k1", mode 0600). `checkpoint_path`: default
        JOINEDUP_AUDIT_CHECKPOINT_FILE. `flush_ms`: how often the background writer looks for events nobody waits
        for (the request path never sleeps on it)."""
        settings = None
        if keys is None or checkpoint_path is None:
            from joinedup.config import get_settings

            settings = get_settings()
        self.store = store
        self.flush_ms = flush_ms
        self.keys = load_keys(keys, settings=settings, create=True)
        self.keys.active  # noqa: B018 - fail now, not at the first access, when there is no key
        self.checkpoint_path = Path(checkpoint_path if checkpoint_path is not None
                                    else settings.audit_checkpoint_file)
        self.db_tag = database_tag(store.url)
        self._buf: list[Pending] = []
        self._lock = threading.Lock()  # guards _buf, _ticket, _durable, _waiters
        self._flush_lock = threading.Lock()  # one flush at a time in this process (group commit leader)
        self._ticket = 0  # last ticket handed out
        self._durable = 0  # every ticket up to this one is committed
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._wake = threading.Event()
        self._kick_scheduled = False
        self._retry_pending = False
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._tx = threading.local()  # head appended inside the caller's transaction, awaiting its commit
        self._pg = store.dialect == "postgresql"
        self._dbs: dict[bool | str, Any] = {}  # DBAPI connections for our own batches (see _connection)
        self._commits = 0  # since the last WAL checkpoint
        self._cp_lock = threading.Lock()
        self._cp_fd: int | None = None
        self._cp_checked = 0.0
        self._checkpoint_error_logged = 0.0
        atexit.register(self.close)
        _writers.add(self)

    # -- recording ---------------------------------------------------------------------------------------------
    def record(self, who: Principal | None, action: str, *, allowed: bool, reason: str,
               entity: str | None = None, patient_id: str | None = None, query: str | None = None,
               detail: dict[str, Any] | None = None, conn: sa.Connection | None = None) -> None:
        """Record one access; returns once the AuditEvent is committed (or raises, never dropping it).

        With `conn` (an open write transaction, e.g. from `store.writing()`): the event is appended inside that
        transaction and commits or rolls back with it; call `committed()` after the transaction commits (or use
        `AuditWriter.writing()`), which writes the checkpoint. Inside `AuditDurabilityMiddleware` the wait is
        deferred to the moment the response is sent."""
        p = Pending(_now(), _col(who.name, 128) if who else None, _col(who.role, 64) if who else None,
                    _col(action, 32) or "unknown", "allowed" if allowed else "refused", _col(patient_id, 64),
                    _col(entity, 255), (who, allowed, reason, query, detail), born=time.monotonic())
        p.prepare()
        if conn is not None:
            self._append_in(conn, [p])
            return
        scope = _scope.get()
        if scope is not None and scope.open and scope.deferred is not None:
            scope.deferred.setdefault(self, []).append(p)  # for the scope's next write transaction
            return
        ticket = self._enqueue([p])
        if scope is not None and scope.open:
            scope.pending[self] = ticket  # committed before the response leaves (AuditDurabilityMiddleware)
            if self._thread is None:
                self._ensure_thread()  # also commits events of requests that end without sending anything
            return
        self.wait(ticket)

    def _enqueue(self, events: list[Pending]) -> int:
        """Buffer events for the next commit; returns the last one's ticket."""
        with self._lock:
            for p in events:
                self._ticket += 1
                p.ticket = self._ticket
                self._buf.append(p)
            return self._ticket

    def append_deferred(self, conn: sa.Connection) -> list[Pending]:
        """Append the events the caller's deferring scope holds for this writer (see _Scope) inside the open write
        transaction `conn`; returns them, for `defer_again` should that transaction not commit."""
        scope = _scope.get()
        events = scope.deferred.pop(self, []) if scope is not None and scope.deferred else []
        if events:
            self._append_in(conn, events)
        return events

    def defer_again(self, events: list[Pending]) -> None:
        """Events `append_deferred` took for a transaction that rolled back: held by the scope again (or, the scope
        gone, buffered), never lost."""
        if not events:
            return
        scope = _scope.get()
        if scope is not None and scope.deferred is not None:
            scope.deferred[self] = events + scope.deferred.get(self, [])
        else:
            self.wait(self._enqueue(events))

    def wait(self, ticket: int | None = None) -> None:
        """Block until `ticket` (default: everything recorded so far) is committed. The first waiter commits
        every buffered event in one transaction; concurrent waiters find theirs done when it finishes."""
        if ticket is None:
            ticket = self._ticket
        while self._durable < ticket:
            self._guard_self_deadlock()
            with self._flush_lock:
                if self._durable >= ticket:
                    return
                if self._flush_locked() == 0 and self._durable < ticket:  # pragma: no cover - invariant
                    raise RuntimeError(f"audit event {ticket} is neither buffered nor committed")

    async def wait_async(self, ticket: int) -> None:
        """Wait, without blocking the event loop, until `ticket` is committed (see _flush_on_loop and _run)."""
        if self._durable >= ticket:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._durable >= ticket:
                return
            self._waiters.append((ticket, loop, fut))
            first, self._kick_scheduled = not self._kick_scheduled, True
        if first:
            # Once this turn of the event loop is done, so that every request reaching its response in the same
            # turn joins the same commit. SQLite commits are quick (WAL, no fsync): done on the loop itself.
            # PostgreSQL's wait for the WAL flush: done by the writer thread.
            loop.call_soon(self._kick if self._pg else self._flush_on_loop)
        await fut

    def flush(self) -> int:
        """Commit every buffered event now; returns how many were written."""
        written = 0
        with self._flush_lock:
            while True:
                n = self._flush_locked()
                if not n:
                    return written
                written += n

    # -- appending inside the caller's write transaction -------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """`store.writing()` whose audit events (record(..., conn=conn)) are checkpointed once it commits. The
        events a deferring scope holds (see _Scope) are appended first, and held again if it does not commit."""
        self._tx.head = None
        deferred: list[Pending] = []
        try:
            with self.store.writing() as conn:
                deferred = self.append_deferred(conn)
                yield conn
        except BaseException:
            self._tx.head = None  # nothing of the transaction was kept
            self.defer_again(deferred)
            raise
        head, self._tx.head = getattr(self._tx, "head", None), None
        if head is not None:
            self._checkpoint(*head[1:])

    def committed(self) -> None:
        """After a write transaction that appended events with `record(..., conn=conn)` has committed: write the
        checkpoint for them (checked against the database, so calling it after a rollback is harmless)."""
        head, self._tx.head = getattr(self._tx, "head", None), None
        if head is None:
            return
        _conn, seq, h = head
        a = schema.audit_event
        with self.store.reading() as conn:
            row = conn.execute(sa.select(a.c.hash).where(a.c.seq == seq)).first()
        if row is not None and row[0] == h:
            self._checkpoint(seq, h)

    def _append_in(self, conn: sa.Connection, batch: list[Pending]) -> None:
        if not self._open_transaction(conn):
            raise RuntimeError("record(conn=...) needs an open write transaction (store.writing())")
        head = getattr(self._tx, "head", None)
        # the head this transaction appended last (kept right across savepoints rolled back: _MessageBatch) is still
        # the chain's head: the write lock (SQLite) or the table lock (PostgreSQL) taken with it is held
        after = (head[1], head[2]) if head is not None and head[0] is conn else None
        cur = conn.connection.driver_connection.cursor()
        try:
            seq, h = self._append_rows(cur, batch, after=after)
        finally:
            cur.close()
        self._tx.head = (conn, seq, h)

    def _open_transaction(self, conn: sa.Connection) -> bool:
        if conn.closed:
            return False
        if self.store.dialect == "postgresql":
            return conn.in_transaction()
        return bool(getattr(conn.connection.driver_connection, "in_transaction", False))

    def _guard_self_deadlock(self) -> None:
        head = getattr(self._tx, "head", None)
        if head is not None and self._open_transaction(head[0]):
            raise RuntimeError("record() without conn= inside a write transaction that already appended audit "
                               "events would wait on itself; pass conn= for every event in that transaction")

    # -- the chain ---------------------------------------------------------------------------------------------
    def _flush_locked(self, nowait: bool = False) -> int | None:
        """Commit up to MAX_BATCH buffered events in one transaction (caller holds _flush_lock). With `nowait`
        (SQLite, on the event loop) give up, returning None, when another process holds the write lock."""
        with self._lock:
            batch, self._buf = self._buf[:MAX_BATCH], self._buf[MAX_BATCH:]
            self._kick_scheduled = False  # waiters from now on wake the writer again
        if not batch:
            return 0
        try:
            seq, h = self._commit_batch(batch, nowait)
        except _Busy:
            with self._lock:
                self._buf[:0] = batch
            return None
        except BaseException as exc:
            with self._lock:
                self._buf[:0] = batch  # nothing is dropped: the events are retried with the next flush
            self._fail_waiters(batch[-1].ticket, exc)
            raise
        with self._lock:
            self._durable = max(self._durable, batch[-1].ticket)
        self._commits += 1
        self._checkpoint(seq, h)
        self._resolve_waiters()
        return len(batch)

    def _commit_batch(self, batch: list[Pending], nowait: bool = False) -> tuple[int, str]:
        """One transaction of our own on a dedicated connection (no pool or SQLAlchemy round trips on this hot
        path); returns the new chain head."""
        db = self._connection(nowait)
        cur = db.cursor()
        try:
            if not self._pg:
                try:
                    cur.execute("BEGIN IMMEDIATE")  # the write lock first: the head read below stays the head
                except Exception as exc:
                    if nowait and "locked" in str(exc):
                        raise _Busy from exc
                    raise
            head = self._append_rows(cur, batch)
            if self._pg:
                db.commit()
            else:
                cur.execute("COMMIT")
            return head
        except _Busy:
            raise
        except BaseException:
            try:
                if self._pg:
                    db.rollback()
                elif db.in_transaction:
                    cur.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection is unusable: start afresh next time
                self._drop_connection(nowait)
            raise
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                self._drop_connection(nowait)

    def _connection(self, nowait: bool = False):
        """A DBAPI connection this writer commits its own batches on (taken out of the pool for good); the
        `nowait` one (SQLite) does not wait for another process's write lock."""
        db = self._dbs.get(nowait)
        if db is None:
            raw = self.store.engine.raw_connection()
            db = raw.driver_connection
            raw.detach()
            if self._pg:
                db.autocommit = False
            else:
                db.isolation_level = None  # explicit BEGIN IMMEDIATE / COMMIT
                if nowait:  # on the event loop: never wait for a lock, never checkpoint (see _wal_checkpoint)
                    db.execute("PRAGMA busy_timeout = 0")
                    db.execute("PRAGMA wal_autocheckpoint = 0")
            self._dbs[nowait] = db
        return db

    def _drop_connection(self, nowait: bool | str | None = None) -> None:
        for key in (False, True, "checkpoint") if nowait is None else (nowait,):
            db = self._dbs.pop(key, None)
            if db is not None:
                try:
                    db.close()
                except Exception:  # it is being thrown away
                    log.debug("closing the audit connection failed", exc_info=True)

    def _flush_on_loop(self, delay: float = 0.0) -> None:
        """At the end of an event-loop turn (SQLite): commit what the turn's requests recorded, right here. If
        another flush is under way in this process, or another process holds the write lock, try again shortly
        (the loop serves other requests meanwhile): never wait for a lock on the loop, and never hand the commit
        to a thread, whose every step would queue for the GIL while holding the database's write lock."""
        if delay:
            self._retry_pending = False
        if self._flush_lock.acquire(blocking=False):
            try:
                n = self._flush_locked(nowait=True)
                while n and self._buf_waited():
                    n = self._flush_locked(nowait=True)
            except Exception:  # the waiters were told (their requests fail); the events are retried
                log.exception("audit flush failed; will retry")
                n = 0
            finally:
                self._flush_lock.release()
            if n is not None:
                return
        with self._lock:
            if not self._waiters or self._retry_pending:
                return
            self._retry_pending = True
        delay = min(max(delay * 2, 0.0002), 0.002)
        asyncio.get_running_loop().call_later(delay, self._flush_on_loop, delay)

    def _buf_waited(self) -> bool:
        """Whether events someone waits for are still buffered (more than one batch's worth came in)."""
        with self._lock:
            return bool(self._buf) and bool(self._waiters)

    def _append_rows(self, cur, batch: list[Pending], *, after: tuple[int, str] | None = None) -> tuple[int, str]:
        """Append the events after the chain head within the transaction `cur` belongs to; returns the new head.
        PostgreSQL: the table lock orders concurrent appenders (held to the end of the transaction). `after`: the
        head as this transaction left it (already locked), instead of reading it."""
        if after is not None:
            seq, prev = after
        else:
            if self._pg:
                cur.execute("LOCK TABLE audit_event IN EXCLUSIVE MODE")
            cur.execute("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")
            last = cur.fetchone()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS)
        kid, secret = self.keys.active
        rows = []
        for p in batch:  # little work here: the write lock is held
            seq += 1
            text = p.text(seq, prev, kid)
            columns = (seq, p.id, p.recorded, p.user_name, p.role, p.action, p.outcome, p.patient_id, p.entity)
            h = event_hash(prev, text, columns, secret)
            rows.append((*columns, prev, h, text))
            prev = h
        ph = "%s" if self._pg else "?"
        cur.executemany(
            "INSERT INTO audit_event (seq, id, recorded, user_name, role, action, outcome, patient_id,"
            f" entity, prev_hash, hash, content) VALUES ({', '.join([ph] * 12)})", rows)
        return seq, prev

    def _checkpoint(self, seq: int, h: str) -> None:
        """Sign and append the chain head to the checkpoint file (after its transaction committed).

        The file stays open (O_APPEND: each line is one write, so processes appending at once do not interleave);
        it is reopened when it was moved away (log shipping) or a second has passed."""
        try:
            line = checkpoint_line(self.keys, self.db_tag, seq, h)
            with self._cp_lock:
                now = time.monotonic()
                if self._cp_fd is None or now - self._cp_checked > 1.0:
                    self._cp_checked = now
                    self._reopen_checkpoints()
                os.write(self._cp_fd, line)
        except OSError:
            # The events are committed; only the protection against removing the newest ones is weakened. Say so
            # loudly (at most every ten seconds) rather than failing every request.
            now = time.monotonic()
            if now - self._checkpoint_error_logged > 10:
                self._checkpoint_error_logged = now
                log.exception("could not append the audit checkpoint to %s", self.checkpoint_path)

    def _reopen_checkpoints(self) -> None:
        path = self.checkpoint_path
        if self._cp_fd is not None:
            try:
                st, cur = os.stat(path), os.fstat(self._cp_fd)
                if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                    return
            except OSError:
                pass
            os.close(self._cp_fd)
            self._cp_fd = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._cp_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    # -- the background writer for requests waiting asynchronously --------------------------------------------
    def _kick(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped = False
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """PostgreSQL: commits the batches requests wait for (woken by them). Both: every flush_ms, commits events
        nobody waits for (a request that ended without sending anything) once they are that old; SQLite: copies
        the WAL back every second."""
        last_wal_checkpoint = time.monotonic()
        period = max(self.flush_ms, 1) / 1000
        while not self._stopped:
            kicked = self._wake.wait(period)
            self._wake.clear()
            if self._stopped:
                break
            if kicked or self._oldest_age() >= period:
                try:
                    self.flush()
                except Exception:  # waiters were told; the events stay buffered and are retried
                    log.exception("audit flush failed; will retry")
                    time.sleep(0.05)
            if not self._pg and self._commits and time.monotonic() - last_wal_checkpoint >= WAL_CHECKPOINT_S:
                last_wal_checkpoint = time.monotonic()
                self._commits = 0
                self._wal_checkpoint()

    def _oldest_age(self) -> float:
        with self._lock:
            return time.monotonic() - self._buf[0].born if self._buf else 0.0

    def _wal_checkpoint(self) -> None:
        """SQLite: copy the WAL back into the database here, off the request path. Audit commits made on the event
        loop never do it themselves (wal_autocheckpoint=0 on that connection): a checkpoint syncs the database
        file and can take long enough to stall every request of the process. PASSIVE: never waits for or blocks
        readers and writers; on its own connection, so commits go on meanwhile."""
        try:
            db = self._dbs.get("checkpoint")
            if db is None:
                raw = self.store.engine.raw_connection()
                db = raw.driver_connection
                raw.detach()
                db.isolation_level = None
                self._dbs["checkpoint"] = db
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:  # only housekeeping: the next round tries again
            log.warning("audit: WAL checkpoint failed", exc_info=True)
            self._drop_connection("checkpoint")

    def _resolve_waiters(self) -> None:
        with self._lock:
            if not self._waiters:
                return
            ready = [w for w in self._waiters if w[0] <= self._durable]
            self._waiters = [w for w in self._waiters if w[0] > self._durable]
        _settle(ready, None)

    def _fail_waiters(self, upto: int, exc: BaseException) -> None:
        with self._lock:
            if not self._waiters:
                return
            failed = [w for w in self._waiters if w[0] <= upto]
            self._waiters = [w for w in self._waiters if w[0] > upto]
        _settle(failed, exc)

    def close(self) -> None:
        """Stop the background writer after committing what is buffered; release the connection and file."""
        self._stopped = True
        self._wake.set()
        try:
            self.flush()
        except Exception:  # at interpreter exit the database may already be gone
            log.debug("audit flush at exit failed", exc_info=True)
        with self._flush_lock:
            self._drop_connection(None)
        with self._cp_lock:
            if self._cp_fd is not None:
                os.close(self._cp_fd)
                self._cp_fd = None

    # -- the event ---------------------------------------------------------------------------------------------
    @staticmethod
    def build_event(p: Pending) -> dict[str, Any]:
        """The FHIR AuditEvent for a recorded access (without id and chain extension)."""
        who, allowed, reason, query, detail = p.content
        agent: dict[str, Any] = {"requestor": True,
                                 "who": {"display": who.name if who else "anonymous"},
                                 "role": [{"text": who.role if who else "none"}]}
        if who and who.practitioner_id:
            agent["who"]["reference"] = f"Practitioner/{who.practitioner_id}"
        if who and who.organization_id:
            agent["location"] = {"reference": f"Organization/{who.organization_id}"}
        if who and who.patient_id and who.role == "patient":
            agent["who"]["reference"] = f"Patient/{who.patient_id}"
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                     "display": "RESTful Operation"},
            "subtype": [{"system": REST_INTERACTION, "code": p.action}],
            "action": ACTION_CODE.get(p.action, "E"),
            "recorded": p.recorded,
            "outcome": "0" if allowed else "8",
            "outcomeDesc": str(reason or "")[:1000],
            "agent": [agent],
            "source": {"observer": {"display": "JoinedUp"}},
        }
        entities = []
        if p.entity:
            entities.append({"what": {"reference": p.entity}})
        if p.patient_id and p.entity != f"Patient/{p.patient_id}":
            entities.append({"what": {"reference": f"Patient/{p.patient_id}"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                      "code": "1", "display": "Patient"}})
        if query:
            entities.append({"query": _b64(query[:2000]), "description": query[:2000]})
        if detail:
            entities.append({"detail": [{"type": str(k), "valueString": str(v)[:500]} for k, v in detail.items()]})
        if entities:
            event["entity"] = entities
        return event


_writers: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with its own connections, file, locks and thread; what the parent had buffered is
    the parent's to commit."""
    for w in list(_writers):
        w._dbs = {}
        w._commits = 0
        w._cp_fd = None
        w._buf = []
        w._waiters = []
        w._lock = threading.Lock()
        w._flush_lock = threading.Lock()
        w._cp_lock = threading.Lock()
        w._wake = threading.Event()
        w._kick_scheduled = False
        w._retry_pending = False
        w._thread = None
        w._tx = threading.local()
        w._durable = w._ticket


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Busy(Exception):
    """Another process holds SQLite's write lock (only raised when not waiting for it)."""


def _settle(waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]], exc: BaseException | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for _t, loop, fut in waiters:
        by_loop.setdefault(loop, []).append(fut)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, futs in by_loop.items():
        if loop is running:
            _finish(futs, exc)
            continue
        try:
            loop.call_soon_threadsafe(_finish, futs, exc)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _finish(futs: list[asyncio.Future], exc: BaseException | None) -> None:
    for f in futs:
        if not f.done():
            if exc is None:
                f.set_result(None)
            else:
                f.set_exception(RuntimeError(f"the audit event could not be committed: {exc!r}"))


def _plain_event(p: Pending, exc: Exception) -> dict[str, Any]:
    """A minimal event for an access whose full event could not be built or serialised (odd input)."""
    _who, allowed, reason, _query, _detail = p.content
    ev: dict[str, Any] = {
        "resourceType": "AuditEvent", "subtype": [{"system": REST_INTERACTION, "code": _col(p.action, 32)}],
        "action": ACTION_CODE.get(p.action, "E"), "recorded": _col(p.recorded, 40),
        "outcome": "0" if allowed else "8",
        "outcomeDesc": _col(f"{reason!r} (event simplified: {exc.__class__.__name__})", 1000),
        "agent": [{"requestor": True, "who": {"display": _col(p.user_name, 128) or "anonymous"},
                   "role": [{"text": _col(p.role, 64) or "none"}]}],
        "source": {"observer": {"display": "JoinedUp"}}}
    if p.entity:
        ev["entity"] = [{"what": {"reference": _col(p.entity, 255)}}]
    return ev


def _halves(ev: dict[str, Any]) -> tuple[str, str]:
    """The sorted-keys JSON of an event without "extension" and "id", split where those two keys belong."""
    head = _dumps({k: v for k, v in ev.items() if k < "extension"})
    tail = _dumps({k: v for k, v in ev.items() if k > "id"})
    return head[:-1], tail[1:]


def _dumps(ev: dict) -> str:
    return orjson.dumps(ev, option=orjson.OPT_SORT_KEYS).decode()


def _col(value: Any, n: int) -> str | None:
    """A column value the database will accept: text, no NUL, valid UTF-8, at most n characters."""
    if value is None:
        return None
    s = str(value)
    if not s.isascii():
        s = s.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    return s[:n] or None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8", "replace")).decode()


# -- verification ----------------------------------------------------------------------------------------------
@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    keys_used: list[str] = field(default_factory=list)
    legacy: int = 0  # entries from before the chain was keyed (plain SHA-256), all at the start
    checkpoints: int = 0
    newest_checkpoint: Checkpoint | None = None
    checkpoint_path: Path | None = None

    @property
    def summary(self) -> str:
        """One line: what was verified, or what is wrong."""
        if not self.ok:
            where = f" (first bad entry: {self.first_bad_seq})" if self.first_bad_seq is not None else ""
            return f"audit chain broken: {self.problem}{where}"
        parts = [f"audit chain intact: {self.checked:,} entries verified"]
        if self.keys_used:
            parts.append(f"keys {', '.join(self.keys_used)}")
        if self.legacy:
            parts.append(f"{self.legacy:,} early entries unkeyed (plain SHA-256)")
        if self.newest_checkpoint is not None:
            c = self.newest_checkpoint
            parts.append(f"{self.checkpoints:,} signed checkpoints, newest at entry {c.seq:,} ({c.time})")
        else:
            parts.append(f"no checkpoints for this database in {self.checkpoint_path}: removal of the newest "
                         "entries cannot be ruled out")
        return "; ".join(parts)


def verify_chain(store, *, keys: AuditKeys | str | None = None,
                 checkpoint_path: str | Path | None = None) -> ChainReport:
    """Recompute the keyed chain and check it against the signed checkpoints; report the first problem.

    Defaults: the keys and checkpoint file from the settings (the key file is never created here)."""
    settings = None
    if keys is None or checkpoint_path is None:
        from joinedup.config import get_settings

        settings = get_settings()
    try:
        keyset = load_keys(keys, settings=settings, create=False)
    except (AuditKeyError, OSError) as exc:
        return ChainReport(False, 0, None, f"the audit keys cannot be read: {exc}")
    path = Path(checkpoint_path if checkpoint_path is not None else settings.audit_checkpoint_file)
    # checkpoints first: any checkpoint read now was written after its entries committed, so they must be there
    scan = read_checkpoints(path, keyset, database_tag(store.url))
    cps = scan.digests
    report = ChainReport(True, 0, checkpoint_path=path)
    a = schema.audit_event
    prev = GENESIS
    expected_seq = 1
    keyed_from: int | None = None
    used: list[str] = []
    with store.reading() as conn:
        for seq, prev_hash, h, content, *columns in _stream(conn, a):
            if seq != expected_seq:
                return _bad(report, expected_seq, f"entry {expected_seq} is missing (next entry found is {seq})")
            if prev_hash != prev:
                return _bad(report, seq, f"entry {seq} does not follow entry {seq - 1} (previous hash differs)")
            try:
                doc = orjson.loads(content)
                chain = {e["url"]: e for e in doc["extension"][0]["extension"]}
                if chain["sequence"]["valueInteger"] != seq or chain["previousHash"]["valueString"] != prev:
                    return _bad(report, seq, f"entry {seq} carries chain fields that do not match")
                kid = chain["key"]["valueString"] if "key" in chain else None
            except (ValueError, KeyError, IndexError, TypeError):
                return _bad(report, seq, f"entry {seq} is not a readable AuditEvent")
            if kid is None:
                if keyed_from is not None:
                    return _bad(report, seq, f"entry {seq} carries no key id although the chain is keyed from "
                                             f"entry {keyed_from} on (rewritten without the key)")
                secret = None
                report.legacy += 1
            else:
                if keyed_from is None:
                    keyed_from = seq
                secret = keyset.get(kid)
                if secret is None:
                    return _bad(report, seq, f"entry {seq} is signed with key '{kid}', which is not configured "
                                             f"(keys: {', '.join(keyset.ids) or 'none'}; {keyset.source}); "
                                             "keep every key that ever signed entries listed")
                if kid not in used:
                    used.append(kid)
            if event_hash(prev, content, (seq, *columns), secret) != h:
                under = f" under key '{kid}'" if kid else " (an unkeyed early entry)"
                return _bad(report, seq, f"entry {seq} was modified (hash does not match{under})")
            digest = cps.get(seq)
            if digest is not None and digest.hex() != h:
                cp = scan.locate(seq)
                return _bad(report, seq, f"entry {seq} differs from the signed checkpoint of {cp.time} (line "
                                         f"{cp.line} of {path}): the chain was rewritten from here on")
            prev = h
            expected_seq += 1
            report.checked += 1
    report.keys_used = used
    if scan.problem:  # after the chain: with a wrong key every line looks forged, and the chain says so better
        return _bad(report, scan.bad_seq, scan.problem)
    if scan.newest is not None:
        newest = scan.newest
        report.checkpoints, report.newest_checkpoint = len(cps), newest
        last = expected_seq - 1
        if last < newest.seq:
            if last == 0:
                return _bad(report, 1, f"the audit chain is empty but a signed checkpoint of {newest.time} (line "
                                       f"{newest.line} of {path}) records {newest.seq:,} entries: they were deleted")
            gone = (f"entry {newest.seq:,} was removed" if last + 1 == newest.seq
                    else f"entries {last + 1:,} to {newest.seq:,} were removed")
            return _bad(report, last + 1, f"the chain ends at entry {last:,} but a signed checkpoint of "
                                          f"{newest.time} (line {newest.line} of {path}) records entry "
                                          f"{newest.seq:,}: {gone}")
    if scan.key_problem:
        return _bad(report, None, scan.key_problem)
    return report


def _bad(report: ChainReport, seq: int | None, problem: str) -> ChainReport:
    report.ok, report.first_bad_seq, report.problem = False, seq, problem
    return report


def _stream(conn, a) -> Iterator[tuple]:
    last = 0
    while True:
        rows = conn.execute(sa.select(a.c.seq, a.c.prev_hash, a.c.hash, a.c.content, a.c.id, a.c.recorded,
                                      a.c.user_name, a.c.role, a.c.action, a.c.outcome, a.c.patient_id, a.c.entity)
                            .where(a.c.seq > last).order_by(a.c.seq).limit(5000)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def search_events(store, *, patient_id: str | None = None, user_name: str | None = None,
                  action: str | None = None, outcome: str | None = None, since: str | None = None,
                  until: str | None = None, count: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
    """AuditEvents newest first, filtered; returns (total, events)."""
    a = schema.audit_event
    cond = []
    if patient_id:
        cond.append(a.c.patient_id == patient_id)
    if user_name:
        cond.append(a.c.user_name == user_name)
    if action:
        cond.append(a.c.action == action)
    if outcome:
        cond.append(a.c.outcome == outcome)
    if since:
        cond.append(a.c.recorded >= since)
    if until:
        cond.append(a.c.recorded <= until)
    with store.reading() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(a).where(*cond)).scalar_one()
        rows = conn.execute(sa.select(a.c.content).where(*cond).order_by(a.c.seq.desc())
                            .limit(count).offset(offset)).all()
    return total, [orjson.loads(r[0]) for r in rows]

