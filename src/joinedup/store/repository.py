"""The resource store: versioned writes with their search-index rows, reads, history.

Only `joinedup.governance.gate` calls this module: every other path reaches data through the gate.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from joinedup.fhir.errors import FhirError
from joinedup.fhir.search_params import SearchParameters, registry
from joinedup.fhir.validation import validate_resource
from joinedup.store.engine import SQLITE_PRAGMAS, engine_for
from joinedup.store.turns import turns_for

INDEX_SQL = {
    "token": ("idx_token", ("param", "system", "code", "text")),
    "string": ("idx_string", ("param", "value_norm", "value_exact")),
    "date": ("idx_date", ("param", "low", "high")),
    "reference": ("idx_reference", ("param", "target_type", "target_id", "target_url")),
    "quantity": ("idx_quantity", ("param", "value", "system", "code", "unit")),
    "uri": ("idx_uri", ("param", "value")),
}


# how much stored JSON `Store.compartment_shared` keeps parsed per store (the oldest parsed goes first)
PARSED_CACHE_BYTES = 16 * 1024 * 1024
# and how many of its latest answers it keeps whole, each with the versions it was made from
COMPARTMENTS_KEPT = 8


def now_instant() -> tuple[str, str]:
    """(FHIR instant for meta.lastUpdated, normalised UTC column value) for this moment."""
    column = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return column + "Z", column


def new_id() -> str:
    return str(uuid.uuid4())


def canonical(resource: dict) -> bytes:
    """Canonical JSON of a resource's content, without the server-managed version and timestamp."""
    meta = resource.get("meta")
    if meta and ("versionId" in meta or "lastUpdated" in meta):
        resource = dict(resource)
        resource["meta"] = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if not resource["meta"]:
            del resource["meta"]
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def content_hash(resource: dict) -> str:
    """Hash of a resource's content, ignoring the server-managed version and timestamp."""
    return hashlib.sha1(canonical(resource)).hexdigest()


@dataclass
class Prepared:
    """A validated resource with its index rows, ready to be written."""

    rtype: str
    id: str
    resource: dict | None  # None when only the stored form is needed (bulk import workers)
    doc: str  # canonical JSON as stored (no versionId/lastUpdated: those come from the row)
    hash: str
    patient_id: str | None
    source: str | None
    rows: dict[str, list[tuple]]  # per index table kind, each row (res_type, res_id, param, *columns)
    line_hash: str | None = None  # `line_key` of the bulk-import line it came from (None: any other write)


FINGERPRINT_VERSION = b"1"  # bump when `canonical` or the stamping of meta.source changes: old line hashes then miss


def line_key(line: bytes, source: str | None) -> str:
    """Hash of one NDJSON line as a bulk import with this source reads it: the same line imported the same way always
    gives the same stored content (`fingerprint`), so a live entry whose `line_hash` is this was written from exactly
    this line and is unchanged."""
    return hashlib.sha1(b"%s\x00%s\x00%s" % (FINGERPRINT_VERSION, (source or "").encode(), line.strip())).hexdigest()


def fingerprint(resource: dict, source: str | None = None) -> str:
    """The content hash a resource will be stored under (after `source` is stamped on meta.source), without
    validating or indexing it: lets a bulk load skip resources that are already stored unchanged."""
    return hashlib.sha1(stamped(resource, source)[1]).hexdigest()


def stamped(resource: dict, source: str | None) -> tuple[dict, bytes]:
    """(the resource with `source` stamped on meta.source where it names none, its canonical JSON): what
    `prepare` stores and `fingerprint` hashes. The resource passed in is not changed."""
    meta = resource.get("meta")
    src = (meta or {}).get("source") or source
    if src and (not meta or meta.get("source") != src):
        resource = {**resource, "meta": {**(meta or {}), "source": src}}
    return resource, canonical(resource)


def prepare(resource: dict, *, source: str | None = None, validate: bool = True,
            params: SearchParameters | None = None, assign_id: bool = False, keep: bool = True,
            canonical_doc: bytes | None = None, line_hash: str | None = None) -> Prepared:
    """Validate a resource and compute its index rows (pure: safe to run in a worker process).

    `canonical_doc`: the resource's canonical JSON after `source` is stamped (from `stamped`), when the caller
    has it already (bulk import hashes it first to skip unchanged resources)."""
    params = params or registry()
    if assign_id and not resource.get("id"):
        resource["id"] = new_id()
    rid = resource.get("id")
    if not rid:
        raise FhirError(400, f"{resource.get('resourceType')} has no id", code="required",
                        expression=[f"{resource.get('resourceType')}.id"])
    meta = resource.get("meta")
    src = (meta or {}).get("source") or source
    if src and (not meta or meta.get("source") != src):
        resource["meta"] = {**(meta or {}), "source": src}
    doc = canonical_doc if canonical_doc is not None else canonical(resource)
    if validate:
        validate_resource(resource, serialized=doc)
    return Prepared(
        rtype=resource["resourceType"], id=rid, resource=resource if keep else None, doc=doc.decode(),
        hash=hashlib.sha1(doc).hexdigest(), patient_id=params.patient_of(resource), source=src,
        rows=params.keyed_index_rows(resource, rid), line_hash=line_hash,
    )


class StaleWrite(Exception):
    """An entry changed between the read a write was planned from and the write (another writer came first)."""


@dataclass
class Written:
    """Outcome of one write."""

    rtype: str
    id: str
    version: int
    status: str  # created | updated | unchanged | deleted
    resource: dict | None = None
    last_updated: str = ""


@dataclass
class Stored:
    """A resource as held: current content plus version bookkeeping."""

    rtype: str
    id: str
    version: int
    deleted: bool
    content: dict | None
    last_updated: str = ""
    source: str | None = None
    patient_id: str | None = None
    extra: dict = field(default_factory=dict)


class Store:
    """The store over one database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.dialect = self.engine.dialect.name
        self.params = registry()
        self._pg = self.dialect == "postgresql"
        self._pinned = threading.local()  # reads_together(): this thread's reads share one connection
        self._point = threading.local()  # point(): this thread's own SQLite connection for one-row lookups
        # SQLite files: the writers take turns (turns.py) and the WAL is checkpointed off the writers' path
        path = "" if self._pg else (self.engine.url.database or "")
        self._turns = turns_for(path) if path and path != ":memory:" and not path.startswith("file:") else None
        # the upkeep done every so many commits, off the writers' path: SQLite's WAL checkpoints, PostgreSQL's
        # planner statistics where autovacuum is off
        self._upkeep: _Upkeep | None = (_statistics(self) if self._pg else
                                        _checkpoints(self) if self._turns is not None else None)
        # compartment_shared(): parsed contents by (type, id), each with its (version, lastUpdated, hash)
        self._parsed: dict[tuple[str, str], tuple] = {}
        self._parsed_size = 0
        self._parsed_lock = threading.Lock()
        # compartment_shared(): its latest answers, by (person, types, since): (the rows read, the entries)
        self._compartments: dict[tuple, tuple[list, list[Stored]]] = {}
        ph = "%s" if self._pg else "?"
        self._sql_upsert = (
            "INSERT INTO resource (res_type, id, version, last_updated, source, patient_id, deleted,"
            f" content_hash, content, line_hash) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})"
            " ON CONFLICT (res_type, id) DO UPDATE SET version=excluded.version,"
            " last_updated=excluded.last_updated, source=excluded.source, patient_id=excluded.patient_id,"
            " deleted=excluded.deleted, content_hash=excluded.content_hash, content=excluded.content,"
            " line_hash=excluded.line_hash"
        )
        self._sql_version = (
            "INSERT INTO resource_version (res_type, id, version, last_updated, source, deleted, method,"
            f" content, patient_id) VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph}, {ph})"
        )
        self._sql_index = {
            kind: (f"INSERT INTO {table} (res_type, res_id, {', '.join(cols)}) VALUES "
                   f"({', '.join([ph] * (len(cols) + 2))})")
            for kind, (table, cols) in INDEX_SQL.items()
        }
        self._sql_unindex = {
            table: f"DELETE FROM {table} WHERE res_id = {ph} AND res_type = {ph}"
            for table, _ in INDEX_SQL.values()
        }
        self._sql_read = (f"SELECT version, deleted, content, last_updated, source, patient_id FROM resource"
                          f" WHERE res_type = {ph} AND id = {ph}")
        # the resources holding one of n identifiers (system|value), as the search `identifier=s|v,...` finds them
        self._sql_by_identifier = lambda n: (
            f"SELECT id, version, content, last_updated, source, patient_id FROM resource WHERE res_type = {ph}"
            f" AND deleted = {ph} AND id IN (SELECT res_id FROM idx_token WHERE res_type = {ph} AND param ="
            f" 'identifier' AND ({' OR '.join([f'(system = {ph} AND code = {ph})'] * n)})) ORDER BY id LIMIT {ph}")
        self._ph = ph
        self._inserts: dict[tuple, str] = {}  # insert(): statements by (table, columns)
        self.repair_indexes()  # a bulk load killed mid-way left the search indexes dropped: build them now

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A connection for reads (inside `reads_together`, this thread's shared one). On PostgreSQL it is in
        autocommit mode: at READ COMMITTED each statement reads its own snapshot whether or not a transaction is
        open, so an open transaction would add nothing but a BEGIN and a ROLLBACK round trip to every read."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        with self._reader() as conn:
            yield conn

    @contextmanager
    def _reader(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT") if self._pg else conn

    def point(self, sql: str, params: tuple) -> Any:
        """The first row of a plain one-row lookup (a bearer token, a resource by id: the statements behind every
        API read), or None. SQLite: on this thread's own connection, kept open and in autocommit mode (each
        statement reads the newest committed state; nothing is held between statements), so a lookup costs no pool
        checkout and reset, and the driver's statement cache keeps it prepared. PostgreSQL: a pooled connection
        in autocommit mode (`reading`), on the driver's cursor."""
        if self._pg or getattr(self._pinned, "conn", None) is not None:
            with self.reading() as conn:
                return _fetch(conn, sql, params, one=True)
        db = getattr(self._point, "db", None)
        if db is None:
            raw = self.engine.raw_connection()  # with the engine's pragmas (WAL, busy timeout, cache, mmap)
            db = raw.driver_connection
            raw.detach()  # this thread's for good: never back in the pool
            db.isolation_level = None
            self._point.db = db
        try:
            cur = db.execute(sql, params)
            try:
                return cur.fetchone()
            finally:
                cur.close()
        except Exception:
            self._point.db = None  # start afresh on the next lookup
            try:
                db.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
            raise

    @contextmanager
    def reads_together(self) -> Iterator[None]:
        """This thread's reads share one connection until the block ends, instead of taking one from the pool and
        resetting it for each (many small lookups in a row: an HL7 batch's plans). Writes still get their own."""
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self._reader() as conn:
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE so writers queue instead of deadlocking)."""
        with self.engine.connect() as conn:
            if self._pg:
                with conn.begin():
                    yield conn
                if self._upkeep is not None:
                    self._upkeep.committed()
                return
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            with self._turn():  # the writers of this file take turns, waking as soon as it is free (turns.py)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            if self._upkeep is not None:
                self._upkeep.committed()

    def _turn(self) -> AbstractContextManager[None]:
        return self._turns.turn() if self._turns is not None else nullcontext()

    def insert(self, conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> None:
        """One row into `table` on the driver's cursor (the statement built once per table and set of columns: no
        SQLAlchemy compilation on a feed's hot path). A key already taken raises SQLAlchemy's IntegrityError, as
        `conn.execute(table.insert(), row)` would."""
        key = (table.name, tuple(row))
        sql = self._inserts.get(key)
        if sql is None:
            quote = self.engine.dialect.identifier_preparer.quote
            sql = self._inserts[key] = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in row)})"
                                        f" VALUES ({', '.join([self._ph] * len(row))})")
        params = tuple(row.values())
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(sql, params)
        except self.engine.dialect.loaded_dbapi.IntegrityError as exc:
            raise sa.exc.IntegrityError(sql, params, exc) from exc
        finally:
            cur.close()

    def sql(self, text: str) -> str:
        """A plain statement written with ? placeholders, in the dialect's own (for `rows` and `run`)."""
        return text.replace("?", "%s") if self._pg else text

    @staticmethod
    def rows(conn: sa.Connection, sql: str, params: tuple = ()) -> list:
        """The rows of a plain statement (`sql()`) on the driver's cursor."""
        return _fetch(conn, sql, params)

    @staticmethod
    def run(conn: sa.Connection, sql: str, params: tuple = ()) -> int:
        """A plain statement (`sql()`) on the driver's cursor; returns the rows it changed."""
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.execute(sql, params)
            return max(cur.rowcount or 0, 0)
        finally:
            cur.close()

    @staticmethod
    def _load(value: Any, version: int, last_updated: str) -> Any:
        """Stored JSON → resource, with meta.versionId and meta.lastUpdated from the row."""
        if value is None:
            return None
        doc = value if isinstance(value, dict) else orjson.loads(value)
        meta = doc.get("meta")
        meta = dict(meta) if meta else {}
        meta["versionId"] = str(version)
        meta["lastUpdated"] = last_updated + "Z"
        doc["meta"] = meta
        # resourceType, id and meta first, as people and most FHIR tools expect to read them
        return {"resourceType": doc.pop("resourceType", None), "id": doc.pop("id", None), "meta": doc.pop("meta"),
                **doc}

    # -- reads ---------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str, conn: sa.Connection | None = None) -> Stored | None:
        """The current version of a resource (tombstone when deleted), or None if never stored."""
        row = self.point(self._sql_read, (rtype, rid)) if conn is None else \
            _fetch(conn, self._sql_read, (rtype, rid), one=True)
        if row is None:
            return None
        return Stored(rtype, rid, row[0], bool(row[1]), self._load(row[2], row[0], row[3]), row[3], row[4],
                      row[5])

    def by_identifier(self, rtype: str, pairs: list[tuple[str, str]], limit: int) -> list[Stored]:
        """Current resources of a type holding any of the identifiers (system, value), by id, at most `limit`: what
        the search `identifier=system|value,...` matches, in one plain statement on the driver's cursor (the HL7
        feed looks up several identifiers a message: a compiled search cost ten times as much)."""
        args: list[Any] = [rtype, False, rtype]
        for system, value in pairs:
            args += [system, value]
        with self.reading() as conn:
            rows = _fetch(conn, self._sql_by_identifier(len(pairs)), (*args, limit))
        return [Stored(rtype, x[0], x[1], False, self._load(x[2], x[1], x[3]), x[3], x[4], x[5]) for x in rows]

    def by_reference(self, rtype: str, param: str, target_type: str, target_id: str, limit: int) -> list[Stored]:
        """Current resources of a type whose reference search parameter `param` points at target_type/target_id, by
        id, at most `limit`: what the search `param=Type/id` matches, in one plain statement on the reference index
        (the notification worker looks up each admitted person's care teams: a compiled search cost far more)."""
        ph = self._ph
        sql = (f"SELECT id, version, content, last_updated, source, patient_id FROM resource WHERE res_type = {ph}"
               f" AND deleted = {ph} AND id IN (SELECT res_id FROM idx_reference WHERE res_type = {ph} AND param ="
               f" {ph} AND target_type = {ph} AND target_id = {ph}) ORDER BY id LIMIT {ph}")
        with self.reading() as conn:
            rows = _fetch(conn, sql, (rtype, False, rtype, param, target_type, target_id, limit))
        return [Stored(rtype, x[0], x[1], False, self._load(x[2], x[1], x[3]), x[3], x[4], x[5]) for x in rows]

    def by_references(self, rtype: str, param: str, target_type: str, target_ids: list[str]
                      ) -> dict[str, list[Stored]]:
        """`by_reference` for several targets at once: the current resources of a type whose reference parameter
        points at each target_type/id, by target id, each list in id order (no limit: the caller pages)."""
        ph = self._ph
        out: dict[str, dict[str, Stored]] = {}
        with self.reading() as conn:
            for chunk in _chunks(sorted(set(target_ids)), 200):
                sql = (f"SELECT x.target_id, r.id, r.version, r.content, r.last_updated, r.source, r.patient_id"
                       f" FROM idx_reference x JOIN resource r ON r.res_type = x.res_type AND r.id = x.res_id"
                       f" WHERE x.res_type = {ph} AND x.param = {ph} AND x.target_type = {ph}"
                       f" AND x.target_id IN ({', '.join([ph] * len(chunk))}) AND r.deleted = {ph}")
                for x in _fetch(conn, sql, (rtype, param, target_type, *chunk, False)):
                    out.setdefault(x[0], {})[x[1]] = Stored(rtype, x[1], x[2], False, self._load(x[3], x[2], x[4]),
                                                            x[4], x[5], x[6])
        return {t: [found[i] for i in sorted(found)] for t, found in out.items()}

    def read_many(self, keys: Iterable[tuple[str, str]], conn: sa.Connection | None = None) -> list[Stored]:
        """Current, non-deleted resources for (type, id) pairs, in no particular order."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return []
        if conn is None:
            with self.reading() as c:
                return self.read_many(keys, c)
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        ph = self._ph
        out: list[Stored] = []
        for t, ids in by_type.items():
            for chunk in _chunks(ids, 500):  # a plain statement: a compiled IN of a new length each time cost 1-2 ms
                sql = (f"SELECT id, version, content, last_updated, source, patient_id FROM resource WHERE res_type ="
                       f" {ph} AND id IN ({', '.join([ph] * len(chunk))}) AND deleted = {ph}")
                out.extend(Stored(t, row[0], row[1], False, self._load(row[2], row[1], row[3]), row[3], row[4], row[5])
                           for row in _fetch(conn, sql, (t, *chunk, False)))
        return out

    def vread(self, rtype: str, rid: str, version: int) -> Stored | None:
        """A specific version of a resource."""
        v = _version_table()
        with self.reading() as conn:
            row = conn.execute(sa.select(v.c.deleted, v.c.content, v.c.last_updated, v.c.source, v.c.patient_id)
                               .where(v.c.res_type == rtype, v.c.id == rid, v.c.version == version)).first()
        if row is None:
            return None
        return Stored(rtype, rid, version, bool(row[0]), self._load(row[1], version, row[2]), row[2], row[3],
                      row[4])

    def history(self, *, rtype: str | None = None, rid: str | None = None, since: str | None = None,
                count: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Versions newest first, as (total, [{rtype, id, version, deleted, method, content, last_updated,
        patient_id, source}]) - each version with the person whose record it belonged to."""
        v = _version_table()
        cond = []
        if rtype:
            cond.append(v.c.res_type == rtype)
        if rid:
            cond.append(v.c.id == rid)
        if since:
            cond.append(v.c.last_updated >= since)
        with self.reading() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(v).where(*cond)).scalar_one()
            rows = conn.execute(
                sa.select(v.c.res_type, v.c.id, v.c.version, v.c.deleted, v.c.method, v.c.content,
                          v.c.last_updated, v.c.patient_id, v.c.source)
                .where(*cond).order_by(v.c.last_updated.desc(), v.c.version.desc())
                .limit(count).offset(offset)
            ).all()
        return total, [
            {"rtype": r[0], "id": r[1], "version": r[2], "deleted": bool(r[3]), "method": r[4],
             "content": self._load(r[5], r[2], r[6]), "last_updated": r[6], "patient_id": r[7], "source": r[8]}
            for r in rows
        ]

    def compartment_in_use(self, patient_id: str) -> bool:
        """Whether any entry (deleted ones included) is, or was, filed under this person's id."""
        r = _resource_table()
        with self.reading() as conn:  # tombstones keep their person, so deleted entries count
            return conn.execute(sa.select(r.c.id).where(r.c.patient_id == patient_id).limit(1)).first() is not None

    def compartment(self, patient_id: str, *, types: set[str] | None = None,
                    since: str | None = None) -> list[Stored]:
        """Every current resource in a patient's compartment (the Patient itself included)."""
        r = _resource_table()
        cond = [r.c.patient_id == patient_id, r.c.deleted.is_(False)]
        if types:
            cond.append(r.c.res_type.in_(sorted(types)))
        if since:
            cond.append(r.c.last_updated >= since)
        with self.reading() as conn:
            rows = conn.execute(sa.select(r.c.res_type, r.c.id, r.c.version, r.c.content, r.c.last_updated,
                                          r.c.source).where(*cond).order_by(r.c.res_type, r.c.id)).all()
        return [Stored(x[0], x[1], x[2], False, self._load(x[3], x[2], x[4]), x[4], x[5], patient_id)
                for x in rows]

    def compartment_shared(self, patient_id: str, *, types: set[str] | None = None,
                           since: str | None = None) -> list[Stored]:
        """`compartment`, with each entry's content parsed once per version and shared between readers: READ ONLY
        (a caller must never change a returned content, nor keep it beyond its request). One statement reads the
        rows' versions (no content); only the entries not already parsed at that (version, lastUpdated, content
        hash) are read in full. A write anywhere (any process) changes the version, so it is never stale. Each
        entry's `extra` is a memo shared by that version's readers (e.g. the references the gate collects). When
        that statement finds the very versions a recent call found, the answer is that call's entries (the same
        `Stored`s, READ ONLY too), without building one per entry again (a lifetime record has thousands)."""
        ph = self._ph
        where = f"patient_id = {ph} AND deleted = {ph}"
        args: list[Any] = [patient_id, False]
        if types:  # SQLite: "+" keeps the person's index (it would otherwise walk every entry of these types)
            where += f" AND {'' if self._pg else '+'}res_type IN ({', '.join([ph] * len(types))})"
            args += sorted(types)
        if since:
            where += f" AND last_updated >= {ph}"
            args.append(since)
        cache = self._parsed
        with self.reading() as conn:
            # ordered as `compartment` orders them: by the database's collation on PostgreSQL; SQLite's is binary,
            # which Python's sort matches (an ORDER BY there would walk the primary key instead of the person's index)
            rows = _fetch(conn, f"SELECT res_type, id, version, last_updated, source, content_hash FROM resource"
                                f" WHERE {where}{' ORDER BY res_type, id' if self._pg else ''}", tuple(args))
            if not self._pg:
                rows.sort(key=lambda x: (x[0], x[1]))
            asked = (patient_id, tuple(sorted(types)) if types else None, since)
            with self._parsed_lock:
                answered = self._compartments.get(asked)
                if answered is not None and answered[0] == rows:  # the same versions of the same entries
                    return list(answered[1])
                held = [cache.get((x[0], x[1])) for x in rows]
            missing = [x for x, h in zip(rows, held) if h is None or h[0] != (x[2], x[3], x[5])]
            fresh: dict[tuple[str, str], tuple] = {}
            if len(missing) > len(rows) // 2:  # mostly unread: the whole compartment in one statement
                for x in _fetch(conn, f"SELECT res_type, id, version, last_updated, source, content_hash, content"
                                      f" FROM resource WHERE {where}", tuple(args)):
                    fresh[(x[0], x[1])] = x
            elif missing:
                by_type: dict[str, list[str]] = {}
                for x in missing:
                    by_type.setdefault(x[0], []).append(x[1])
                for t, ids in by_type.items():
                    for chunk in _chunks(ids, 500):
                        for x in _fetch(conn, f"SELECT res_type, id, version, last_updated, source, content_hash,"
                                              f" content FROM resource WHERE res_type = {ph} AND deleted = {ph} AND"
                                              f" patient_id = {ph} AND id IN ({', '.join([ph] * len(chunk))})",
                                        (t, False, patient_id, *chunk)):
                            fresh[(x[0], x[1])] = x
        out: list[Stored] = []
        added: list[tuple[tuple[str, str], tuple]] = []
        for x, h in zip(rows, held):
            key = (x[0], x[1])
            if h is None or h[0] != (x[2], x[3], x[5]):
                y = fresh.get(key)
                if y is None or y[6] is None:  # deleted since the first statement
                    continue
                h = ((y[2], y[3], y[5]), self._load(y[6], y[2], y[3]), {}, len(y[6]))
                added.append((key, h))
                x = y
            out.append(Stored(x[0], x[1], h[0][0], False, h[1], h[0][1], x[4], patient_id, h[2]))
        if added:
            with self._parsed_lock:
                for key, h in added:
                    old = cache.pop(key, None)
                    self._parsed_size += h[3] - (old[3] if old else 0)
                    cache[key] = h
                while self._parsed_size > PARSED_CACHE_BYTES and cache:
                    self._parsed_size -= cache.pop(next(iter(cache)))[3]
        if len(out) == len(rows):  # none deleted meanwhile: the next read of the same versions is this answer
            with self._parsed_lock:
                self._compartments.pop(asked, None)
                self._compartments[asked] = (rows, out)
                while len(self._compartments) > COMPARTMENTS_KEPT:
                    self._compartments.pop(next(iter(self._compartments)))
        return list(out)

    def iter_type(self, rtype: str, *, since: str | None = None, batch: int = 2000) -> Iterator[Stored]:
        """Stream every current resource of a type (keyset paging, constant memory)."""
        r = _resource_table()
        last = ""
        while True:
            cond = [r.c.res_type == rtype, r.c.deleted.is_(False), r.c.id > last]
            if since:
                cond.append(r.c.last_updated >= since)
            with self.reading() as conn:
                rows = conn.execute(sa.select(r.c.id, r.c.version, r.c.content, r.c.last_updated, r.c.source,
                                              r.c.patient_id)
                                    .where(*cond).order_by(r.c.id).limit(batch)).all()
            if not rows:
                return
            for x in rows:
                yield Stored(rtype, x[0], x[1], False, self._load(x[2], x[1], x[3]), x[3], x[4], x[5])
            last = rows[-1][0]

    def iter_records(self, *, types: set[str] | None = None, batch: int = 500,
                     shard: tuple[int, int] | None = None) -> Iterator[tuple[Stored, list[Stored]]]:
        """Stream every patient with their compartment (optionally only some types), batch by batch.

        shard=(k, n) yields only every n-th batch starting at k, so n processes can share a population.
        """
        r = _resource_table()
        patients = self.iter_type("Patient", batch=batch)
        index = -1
        while True:
            chunk = [p for _, p in zip(range(batch), patients)]
            if not chunk:
                return
            index += 1
            if shard is not None and index % shard[1] != shard[0]:
                continue
            ids = [p.id for p in chunk]
            cond = [r.c.patient_id.in_(ids), r.c.deleted.is_(False), r.c.res_type != "Patient"]
            if types:
                cond.append(r.c.res_type.in_(sorted(types)))
            grouped: dict[str, list[Stored]] = {i: [] for i in ids}
            with self.reading() as conn:
                for x in conn.execute(sa.select(r.c.res_type, r.c.id, r.c.version, r.c.content, r.c.last_updated,
                                                r.c.source, r.c.patient_id).where(*cond)):
                    grouped[x[6]].append(Stored(x[0], x[1], x[2], False, self._load(x[3], x[2], x[4]), x[4], x[5],
                                                x[6]))
            for p in chunk:
                yield p, grouped[p.id]

    def types_present(self) -> list[str]:
        """Resource types with at least one current resource."""
        r = _resource_table()
        with self.reading() as conn:
            return [x[0] for x in conn.execute(sa.select(r.c.res_type).where(r.c.deleted.is_(False))
                                               .group_by(r.c.res_type).order_by(r.c.res_type))]

    def iter_versions(self, rtypes: Iterable[str], *, since: str | None = None,
                      batch: int = 2000) -> Iterator[dict[str, Any]]:
        """Stream every version of some types written since `since` (keyset paging, oldest first per entry):
        {rtype, id, version, deleted, content, last_updated, patient_id, source}."""
        v = _version_table()
        for rtype in sorted(set(rtypes)):
            last = ("", 0)
            while True:
                cond = [v.c.res_type == rtype, sa.tuple_(v.c.id, v.c.version) > last]
                if since:
                    cond.append(v.c.last_updated >= since)
                with self.reading() as conn:
                    rows = conn.execute(sa.select(v.c.id, v.c.version, v.c.deleted, v.c.content, v.c.last_updated,
                                                  v.c.patient_id, v.c.source)
                                        .where(*cond).order_by(v.c.id, v.c.version).limit(batch)).all()
                if not rows:
                    break
                for x in rows:
                    yield {"rtype": rtype, "id": x[0], "version": x[1], "deleted": bool(x[2]),
                           "content": self._load(x[3], x[1], x[4]), "last_updated": x[4], "patient_id": x[5],
                           "source": x[6]}
                last = (rows[-1][0], rows[-1][1])

    def last_write_by_source(self) -> dict[str, str]:
        """The latest write (lastUpdated of any version, deletions included) recorded by each source."""
        v = _version_table()
        with self.reading() as conn:
            rows = conn.execute(sa.select(v.c.source, sa.func.max(v.c.last_updated))
                                .where(v.c.source.is_not(None)).group_by(v.c.source)).all()
        return {x[0]: x[1] for x in rows if x[0]}

    # -- writes --------------------------------------------------------------------------------
    def current_versions(self, conn: sa.Connection, rtype: str, ids: list[str],
                         lock: bool = False) -> dict[str, tuple[int, str | None, bool, str | None]]:
        """{id: (version, content_hash, deleted, patient_id)} for the ids that exist (deleted ones included)."""
        out: dict[str, tuple[int, str | None, bool, str | None]] = {}
        ph = self._ph
        if self._pg:
            sql = _PG_BY_KEY.format(cols="version, content_hash, deleted, patient_id",
                                    lock=" FOR UPDATE" if lock else "")
            for chunk in _chunks(ids, 2000):
                for row in _fetch(conn, sql, (chunk, rtype)):
                    out[row[0]] = (row[1], row[2], bool(row[3]), row[4])
            return out
        for chunk in _chunks(ids, 500):  # plain SQL: this runs for every write (building a select cost more)
            sql = (f"SELECT id, version, content_hash, deleted, patient_id FROM resource WHERE res_type = {ph}"
                   f" AND id IN ({', '.join([ph] * len(chunk))})")
            for row in _fetch(conn, sql, (rtype, *chunk)):
                out[row[0]] = (row[1], row[2], bool(row[3]), row[4])
        return out

    def unchanged_lines(self, conn: sa.Connection, rtype: str, wanted: dict[str, str]) -> set[str]:
        """Of {id: line hash}, the ids stored live with exactly that line hash (written from that very line)."""
        same: set[str] = set()
        ph = self._ph
        if self._pg:
            sql = _PG_BY_KEY.format(cols="line_hash, deleted", lock="")
            for chunk in _chunks(list(wanted), 2000):
                same.update(rid for rid, digest, deleted in _fetch(conn, sql, (chunk, rtype))
                            if not deleted and digest is not None and digest == wanted[rid])
            return same
        for chunk in _chunks(list(wanted), 500):
            rows = conn.exec_driver_sql(
                f"SELECT id, line_hash FROM resource WHERE res_type = {ph} AND id IN ({', '.join([ph] * len(chunk))})"
                f" AND deleted = {ph}", (rtype, *chunk, False))
            same.update(rid for rid, digest in rows if digest is not None and digest == wanted[rid])
        return same

    def write_prepared(self, conn: sa.Connection, items: list[Prepared], *, method: str = "PUT",
                       skip_unchanged: bool = True,
                       expected: dict[tuple[str, str], int | None] | None = None) -> list[Written]:
        """Write prepared resources in the caller's transaction: versions, current rows, index rows. `expected`:
        {(type, id): version or None (absent)} as the caller read them before the transaction: StaleWrite (nothing
        written) when an item's current version is another."""
        by_type: dict[str, list[str]] = {}
        for p in items:
            by_type.setdefault(p.rtype, []).append(p.id)
        existing: dict[tuple[str, str], tuple[int, str | None, bool]] = {}
        for t, ids in by_type.items():
            for i, v in self.current_versions(conn, t, ids, lock=True).items():
                existing[(t, i)] = v
        if expected:
            for p in items:
                key = (p.rtype, p.id)
                if key in expected and (existing[key][0] if key in existing else None) != expected[key]:
                    raise StaleWrite(f"{p.rtype}/{p.id} changed since the write was planned")
        meta_instant, column_instant = now_instant()
        upserts, inserts, versions, unindex = [], [], [], []
        index_rows: dict[str, list[tuple]] = {k: [] for k in INDEX_SQL}
        results: list[Written] = []
        seen: dict[tuple[str, str], int] = {}
        latest_rows: dict[tuple[str, str], dict[str, list[tuple]]] = {}
        for p in items:
            key = (p.rtype, p.id)
            old = existing.get(key)
            if key in seen:  # same id twice in one batch: the later one is a new version
                old = (seen[key], None, False, p.patient_id)
            if old and old[2] and old[3] and old[3] != p.patient_id:
                raise FhirError(409, f"{p.rtype}/{p.id} was deleted from another person's record and its id is not "
                                     "reused for a different person: create the entry with a new id",
                                code="conflict")
            if old and skip_unchanged and not old[2] and old[1] == p.hash:
                results.append(Written(p.rtype, p.id, old[0], "unchanged"))
                continue
            version = (old[0] + 1) if old else 1
            seen[key] = version
            res = None
            if p.resource is not None:
                res = p.resource
                meta = dict(res.get("meta") or {})
                meta["versionId"] = str(version)
                meta["lastUpdated"] = meta_instant
                res["meta"] = meta
            doc = p.doc
            # a new entry is inserted (PostgreSQL: copied in); an existing one (or a second version in this batch)
            # replaces its current row
            (upserts if old else inserts).append((p.rtype, p.id, version, column_instant, p.source, p.patient_id,
                                                  False, p.hash, doc, p.line_hash))
            versions.append((p.rtype, p.id, version, column_instant, p.source, False,
                             "PUT" if old else ("POST" if method == "POST" else "PUT"), doc, p.patient_id))
            if old:
                unindex.append((p.rtype, p.id))
            latest_rows[key] = p.rows  # the same id twice in one batch: only the later version is indexed
            results.append(Written(p.rtype, p.id, version, "updated" if old and not old[2] else "created",
                                   res, meta_instant))
        for rows_of in latest_rows.values():
            for kind, rows in rows_of.items():
                if rows:
                    index_rows[kind].extend(rows)
        self._flush(conn, inserts, upserts, versions, unindex, index_rows)
        return results

    def _flush(self, conn, inserts, upserts, versions, unindex, index_rows) -> None:
        if not inserts and not upserts:
            return
        raw = conn.connection.driver_connection
        cur = raw.cursor()
        try:
            if self._pg and len(versions) + sum(map(len, index_rows.values())) >= PG_COPY_MIN_ROWS:
                if unindex:
                    self._unindex(cur, unindex)
                # COPY: one stream per table instead of a statement per row
                _copy(cur, "resource_version", _VERSION_COLUMNS, versions)
                _copy(cur, "resource", _RESOURCE_COLUMNS, inserts)
                for kind, rows in index_rows.items():
                    if rows:
                        table, cols = INDEX_SQL[kind]
                        _copy(cur, table, ("res_type", "res_id", *cols), rows)
                if upserts:
                    cur.executemany(self._sql_upsert, upserts)
                return
            # a few rows (PostgreSQL: every statement sent at once and answered together, one round trip instead of
            # one or two for each table - psycopg's pipeline mode; an error is raised when the pipeline ends)
            with raw.pipeline() if self._pg else nullcontext():
                if unindex:
                    self._unindex(cur, unindex)
                cur.executemany(self._sql_version, versions)
                if inserts:
                    cur.executemany(self._sql_upsert, inserts)
                for kind, rows in index_rows.items():
                    if rows:
                        cur.executemany(self._sql_index[kind], rows)
                if upserts:
                    cur.executemany(self._sql_upsert, upserts)
        finally:
            cur.close()

    def _unindex(self, cur, keys: list[tuple[str, str]]) -> None:
        """Delete the index rows of these entries: one statement per table, type and 500 ids (probes of the
        ix_*_res indexes; while a bulk load has deferred them, one scan per chunk instead of one per entry)."""
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        ph = self._ph
        for rtype, ids in by_type.items():
            for chunk in _chunks(ids, 500):
                marks = ", ".join([ph] * len(chunk))
                for table, _ in INDEX_SQL.values():
                    cur.execute(f"DELETE FROM {table} WHERE res_type = {ph} AND res_id IN ({marks})", (rtype, *chunk))

    def delete(self, conn: sa.Connection, rtype: str, rid: str) -> Written | None:
        """Delete (tombstone) a resource in the caller's transaction; None when it was not there."""
        cur_v = self.current_versions(conn, rtype, [rid], lock=True).get(rid)
        if cur_v is None or cur_v[2]:
            return None
        version = cur_v[0] + 1
        meta_instant, column_instant = now_instant()
        raw = conn.connection.driver_connection
        cur = raw.cursor()
        ph = self._ph
        try:
            for sql in self._sql_unindex.values():
                cur.execute(sql, (rid, rtype))
            cur.execute(self._sql_version, (rtype, rid, version, column_instant, None, True, "DELETE", None, cur_v[3]))
            cur.execute(f"UPDATE resource SET version = {ph}, last_updated = {ph}, deleted = {ph},"
                        f" content_hash = NULL, line_hash = NULL WHERE res_type = {ph} AND id = {ph}",
                        (version, column_instant, True, rtype, rid))
        finally:
            cur.close()
        return Written(rtype, rid, version, "deleted", None, meta_instant)

    # -- bulk loads: the search-index tables' secondary indexes deferred ----------------------------------------
    # Inserting millions of index rows into B-trees keyed by random ids costs more than the rest of a bulk load; a
    # large load into a (near-)empty store drops the index tables' secondary indexes first and builds them once at
    # the end (sorted, in one pass). The loading process holds a lock for as long as they are deferred (a file lock
    # beside a SQLite database, a session advisory lock on PostgreSQL) that the operating system or the server
    # releases when the process dies, so a store opened with indexes missing and nobody holding the lock - a load
    # killed with -9 - builds them again before it is used (`repair_indexes`, run whenever a Store is created).
    # Every write stays correct meanwhile: the search tables are complete, only slower to search and to delete from.

    @staticmethod
    def deferred_index_names() -> list[str]:
        """The secondary indexes of the search-index tables (those a bulk load defers)."""
        return [ix.name for ix in _deferrable_indexes()]

    def missing_indexes(self) -> list[str]:
        """Names of the search-index tables' indexes that are not in the database (deferred, or a load died)."""
        with self.reading() as conn:
            if self._pg:
                present = {x[0] for x in conn.exec_driver_sql(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
            else:
                present = {x[0] for x in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        return [name for name in self.deferred_index_names() if name not in present]

    @contextmanager
    def _loader_lock(self) -> Iterator[bool]:
        """Hold the bulk-load lock (True), or learn that another live process holds it (False)."""
        if self._pg:
            with self.engine.connect() as conn:
                raw = conn.connection.driver_connection
                got = raw.execute("SELECT pg_try_advisory_lock(%s)", (BULK_LOCK_KEY,)).fetchone()[0]
                raw.commit()
                try:
                    yield bool(got)
                finally:
                    if got:
                        raw.execute("SELECT pg_advisory_unlock(%s)", (BULK_LOCK_KEY,))
                        raw.commit()
            return
        database = self.engine.url.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            yield False  # no file to lock beside: never deferred
            return
        import fcntl

        with open(f"{database}-bulkload.lock", "a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _create_indexes(self, names: list[str]) -> None:
        wanted = [ix for ix in _deferrable_indexes() if ix.name in names]
        if not wanted:
            return
        if self._pg:
            # one connection per core, each building the indexes of its share of the tables (balanced by size),
            # each index by its own backend: on two cores, 5.2 s -> 4.0 s for 200,000 Synthea-shaped resources
            # against one connection with PostgreSQL's parallel workers. Each share is its own transaction: if the
            # process dies meanwhile, `repair_indexes` builds what is missing at the next start.
            shares = self._index_shares(wanted, os.cpu_count() or 1)

            def build(share: list[sa.Index]) -> None:
                with self.writing() as conn:
                    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{256 // len(shares)}MB'")
                    conn.exec_driver_sql("SET LOCAL max_parallel_maintenance_workers = 0")
                    for ix in share:
                        ix.create(conn, checkfirst=True)

            if len(shares) == 1:
                build(shares[0])
                return
            with ThreadPoolExecutor(max_workers=len(shares)) as pool:
                for done in [pool.submit(build, share) for share in shares]:
                    done.result()
            return
        # SQLite: the sort spills to a temporary file and the table is read without memory-mapping it, so building
        # the indexes takes the same memory whatever the store's size; the sort of each index runs on every core
        # (nothing else writes meanwhile: the load has ended). The sorter takes as much memory as the page cache
        # allows, per thread: with the store's 256 MiB cache the build of 100,000 people's indexes peaked at 1.0 GB
        # and took 64.8 s; with a 32 MiB cache, 176 MB and 51.0 s (smaller sorted runs merge as fast here).
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            raw.execute("PRAGMA temp_store=FILE")
            raw.execute("PRAGMA mmap_size=0")
            raw.execute(f"PRAGMA cache_size=-{INDEX_BUILD_CACHE_KIB}")
            raw.execute(f"PRAGMA threads={min(8, os.cpu_count() or 1)}")
            try:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    for ix in wanted:
                        ix.create(conn, checkfirst=True)
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            finally:
                raw.execute(f"PRAGMA temp_store={SQLITE_PRAGMAS['temp_store']}")
                raw.execute(f"PRAGMA mmap_size={SQLITE_PRAGMAS['mmap_size']}")
                raw.execute(f"PRAGMA cache_size={SQLITE_PRAGMAS['cache_size']}")
                raw.execute("PRAGMA threads=0")

    def _index_shares(self, wanted: list[sa.Index], n: int) -> list[list[sa.Index]]:
        """The indexes split into at most n shares of whole tables, the largest tables first, each to the share
        with the least bytes so far (PostgreSQL)."""
        tables = sorted({ix.table.name for ix in wanted})
        with self.reading() as conn:
            size = {t: conn.exec_driver_sql("SELECT pg_total_relation_size(%s::regclass)", (t,)).scalar_one()
                    for t in tables}
        shares: list[tuple[int, list[sa.Index]]] = [(0, []) for _ in range(max(1, min(n, len(tables))))]
        for t in sorted(tables, key=lambda t: -size[t]):
            k = min(range(len(shares)), key=lambda i: shares[i][0])
            shares[k] = (shares[k][0] + size[t], shares[k][1] + [ix for ix in wanted if ix.table.name == t])
        return [share for _, share in shares if share]

    def repair_indexes(self) -> list[str]:
        """Build the search-index tables' indexes that are missing when no bulk load is running (a load killed
        mid-way left them dropped); returns the names built."""
        missing = self.missing_indexes()
        if not missing:
            return []
        with self._loader_lock() as mine:
            if not mine:  # a live bulk load has deferred them: it builds them when it ends
                return []
            missing = self.missing_indexes()
            self._create_indexes(missing)
        return missing

    def holds_at_most(self, n: int) -> bool:
        """Whether the store holds at most n entries (a bounded count: cheap whatever the store's size)."""
        with self.reading() as conn:
            held = conn.exec_driver_sql(
                f"SELECT count(*) FROM (SELECT 1 FROM resource LIMIT {int(n) + 1}) AS held").scalar_one()
        return held <= n

    @contextmanager
    def bulk_load(self, expected: int) -> Iterator[bool]:
        """Defer the search-index tables' secondary indexes while `expected` entries (an estimate) are loaded,
        when that is worth it: a large load (>= BULK_DEFER_MIN) into a store holding fewer than a quarter as many
        entries. Yields whether they were deferred; they are built again when the block ends, however it ends
        (and by `repair_indexes` at the next start if the process is killed)."""
        if expected < BULK_DEFER_MIN or not self.holds_at_most(expected // 4):
            yield False
            return
        with self._loader_lock() as mine:
            if not mine:  # another load has them deferred already
                yield False
                return
            try:
                missing = set(self.missing_indexes())
                with self.writing() as conn:
                    for ix in _deferrable_indexes():
                        if ix.name not in missing:
                            ix.drop(conn)
                yield True
            finally:
                self._create_indexes(self.missing_indexes())
                self.optimize()

    def optimize(self) -> None:
        """Refresh the query planner's statistics (after bulk loads, and at start-up)."""
        with self.engine.connect() as conn:
            if self._pg:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
            else:
                conn.exec_driver_sql("PRAGMA analysis_limit=4000")
                conn.exec_driver_sql("ANALYZE")
                # A table that held a handful of rows when analysed is costed as that small until the next ANALYZE:
                # SQLite then scans it rather than search its indexes, however large it has grown (a new site's
                # inbox or audit trail, scanned at every delivery or access-log read). Such tables keep SQLite's
                # defaults (a large table, indexes worth using) instead.
                small = [r[0] for r in conn.exec_driver_sql(
                    "SELECT tbl FROM sqlite_stat1 GROUP BY tbl HAVING max(CAST(stat AS INTEGER)) < ?",
                    (PLANNER_MIN_ROWS,))]
                if small:
                    marks = ", ".join("?" * len(small))
                    stats = [r[0] for r in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'sqlite_stat%'")]
                    for stat in stats:  # sqlite_stat4 too, where SQLite was built with it
                        conn.exec_driver_sql(f"DELETE FROM {stat} WHERE tbl IN ({marks})", tuple(small))
                    conn.exec_driver_sql("ANALYZE sqlite_schema")  # this connection reads the statistics again
                conn.commit()

    def reset(self) -> None:
        """Remove every row (tests and demo reloads only)."""
        from joinedup.store.schema import metadata

        with self.writing() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())


_RESOURCE_COLUMNS = ("res_type", "id", "version", "last_updated", "source", "patient_id", "deleted", "content_hash",
                     "content", "line_hash")
_VERSION_COLUMNS = ("res_type", "id", "version", "last_updated", "source", "deleted", "method", "content",
                    "patient_id")


def _copy(cur, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """PostgreSQL COPY of rows into a table (psycopg 3, text format: JSON documents go in as text)."""
    if not rows:
        return
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# PostgreSQL: the current rows of a list of ids of one type, each found through the primary key. A plain `id IN
# (...)` is planned from the table's statistics, which a bulk load into an empty store has not got yet: the planner
# then chose the (res_type, last_updated) index and filtered every row of the type against the list, so each batch
# cost in proportion to what was loaded before it (a load quadratic in its size). The LIMIT keeps the per-id
# subquery from being flattened into a join the planner could plan the same way.
_PG_BY_KEY = ("SELECT k.id, r.* FROM unnest(%s::text[]) AS k(id) CROSS JOIN LATERAL (SELECT {cols} FROM resource"
              " WHERE res_type = %s AND id = k.id LIMIT 1{lock}) AS r")


INDEX_BUILD_CACHE_KIB = 32 * 1024  # SQLite page cache while the deferred indexes are built (see _create_indexes)
PG_COPY_MIN_ROWS = 200  # rows a write puts in the version and index tables: from this many, COPY (see _flush)
PLANNER_MIN_ROWS = 1000  # a table analysed with fewer rows keeps no statistics (see optimize)
BULK_DEFER_MIN = 10_000  # entries: below this, a load keeps its indexes (building them again costs more)
BULK_LOCK_KEY = 0x4A55424C  # PostgreSQL advisory lock held by the process that has the indexes deferred


def _deferrable_indexes() -> list[sa.Index]:
    from joinedup.store.schema import INDEX_TABLES

    tables = list(dict.fromkeys(INDEX_TABLES.values()))
    return [ix for t in tables for ix in sorted(t.indexes, key=lambda ix: ix.name)]


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class _Upkeep:
    """Upkeep of the store done every `every` commits on a daemon thread with a connection of its own, outside any
    write transaction, while the writers go on: `work(db)` on the driver's connection (autocommit), kept between
    rounds or (`keep_connection=False`) opened for each. A round that fails is tried afresh next time, on a new
    connection; `work` returning False ends the upkeep (nothing for it to do on this database)."""

    def __init__(self, store: Store, work: Callable[[Any], bool | None], *, every: int, name: str,
                 keep_connection: bool = True) -> None:
        self.store, self.work, self.every, self.name, self.keep = store, work, every, name, keep_connection
        self.count = 0
        self.ended = False
        self.due = threading.Event()
        self.thread: threading.Thread | None = None
        self.guard = threading.Lock()

    def committed(self) -> None:
        if self.ended:
            return
        self.count += 1  # a lost update between threads only moves the next round by a commit
        if self.count >= self.every:
            self.count = 0
            with self.guard:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self.thread.start()
            self.due.set()

    def _run(self) -> None:
        db = None
        while not self.ended:
            self.due.wait()
            self.due.clear()
            try:
                if db is None:
                    raw = self.store.engine.raw_connection()
                    db = raw.driver_connection
                    raw.detach()  # this thread's, not the pool's
                    if self.store._pg:
                        db.autocommit = True
                    else:
                        db.isolation_level = None
                self.ended = self.work(db) is False
                if not self.keep or self.ended:
                    db.close()
                    db = None
            except Exception:  # noqa: BLE001 - tried afresh next time
                if db is not None:
                    try:
                        db.close()
                    except Exception:  # noqa: BLE001 - it is being thrown away
                        pass
                db = None


CHECKPOINT_EVERY = 32  # commits between SQLite's passive WAL checkpoints (see _checkpoints)
STATISTICS_EVERY = 200  # commits between PostgreSQL's looks for tables to analyse (see _statistics)


def _checkpoints(store: Store) -> _Upkeep:
    """SQLite: WAL checkpoints on a thread of their own. SQLite copies the write-ahead log back into the database
    file once it holds `wal_autocheckpoint` pages, at the end of the COMMIT that crossed the line: that commit then
    also writes and syncs tens of megabytes, with the write turn still held, so every other writer waits tens of ms.
    Here a passive checkpoint runs every CHECKPOINT_EVERY commits instead (the automatic one stays as the backstop
    for a process that commits faster than this keeps up)."""

    def work(db) -> None:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    return _Upkeep(store, work, every=CHECKPOINT_EVERY, name="joinedup-wal-checkpoint")


def _statistics(store: Store) -> _Upkeep:
    """PostgreSQL with autovacuum off: the planner's statistics kept by the store. Without them a table is planned
    at the size it had when last analysed, and a statement prepared while it was empty keeps its sequential scan
    however large the table grows (a new site's inbox and its governance steps, read at every delivery and every
    write). Every STATISTICS_EVERY commits, the tables changed by more than autovacuum's own analyze threshold since
    they were last analysed (autovacuum_analyze_threshold + autovacuum_analyze_scale_factor x their rows) are
    analysed; that also makes the server plan again the statements prepared on them. With autovacuum on, the server
    does this itself, and the upkeep ends at its first round. A connection for each round: a server's connections
    are few, and none is held between rounds."""

    def work(db) -> bool:
        if db.execute("SELECT current_setting('autovacuum')").fetchone()[0] == "on":
            return False
        stale = [r[0] for r in db.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables"
            " WHERE n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float"
            " + current_setting('autovacuum_analyze_scale_factor')::float * greatest(n_live_tup, 0)"
            " ORDER BY relname").fetchall()]
        for table in stale:
            db.execute(f"ANALYZE {table}")
        return True

    return _Upkeep(store, work, every=STATISTICS_EVERY, name="joinedup-statistics", keep_connection=False)


def _fetch(conn: sa.Connection, sql: str, params: tuple, *, one: bool = False) -> Any:
    """Rows of a plain statement run on the driver's cursor (no result wrapping: the reads behind every write)."""
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchone() if one else cur.fetchall()
    finally:
        cur.close()


def _resource_table():
    from joinedup.store.schema import resource

    return resource


def _version_table():
    from joinedup.store.schema import resource_version

    return resource_version


_stores: dict[str, Store] = {}


def get_store(url: str | None = None) -> Store:
    """The shared Store for a database URL (default: the configured one)."""
    if url is None:
        from joinedup.config import get_settings

        url = get_settings().database_url
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = Store(url)
    return store
