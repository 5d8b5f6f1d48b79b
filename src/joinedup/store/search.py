"""FHIR search: parse URL parameters and turn them into SQL over the typed index tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from joinedup.fhir.errors import FhirError
from joinedup.fhir.search_params import SearchParam, SearchParameters, date_range, normalise, split_reference
from joinedup.store import schema

CONTROL = {"_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total",
           "_format", "_pretty", "_include:iterate", "_revinclude:iterate", "_contained", "_containedType"}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")


def _unescape(s: str) -> str:
    return s.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


@dataclass
class Include:
    """An _include or _revinclude directive."""

    source_type: str
    param: str
    target_type: str | None
    iterate: bool = False


@dataclass
class Clause:
    """One search condition: as an IN-subquery (to drive the query) or as a correlated EXISTS (to filter)."""

    rank: int  # lower = expected to be more selective; the lowest-ranked clause drives the query
    driver: Any
    filter: Any


# Which clauses are likely to be most selective (first one drives the query, the rest filter by EXISTS).
RANK = {"reference": 1, "uri": 2, "string": 3, "token": 4, "quantity": 5, "number": 5, "date": 6}
SELECTIVE_TOKENS = {"identifier", "_id", "email", "phone", "telecom"}


@dataclass
class SearchPlan:
    """A parsed search: filters as SQL clauses plus result controls."""

    rtype: str
    where: list[Any] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    ignored: list[str] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)
    clauses: list[Clause] = field(default_factory=list)


def _bad(msg: str, param: str | None = None) -> FhirError:
    return FhirError(400, msg, code="invalid", expression=[param] if param else None)


def parse(params: list[tuple[str, str]], rtype: str, registry: SearchParameters, *,
          strict: bool = False, default_count: int = 50, max_count: int = 1000) -> SearchPlan:
    """Turn query parameters into a SearchPlan, refusing malformed values with a 400."""
    plan = SearchPlan(rtype=rtype, count=default_count)
    r = schema.resource
    for raw_name, raw_value in params:
        if raw_name in CONTROL or raw_name.split(":")[0] in ("_include", "_revinclude"):
            _control(plan, raw_name, raw_value, registry, max_count)
            continue
        name, _, modifier = raw_name.partition(":")
        if "." in name:
            raise _bad(f"Chained search '{raw_name}' is not supported; search the referenced type first", raw_name)
        if name == "_has" or name.startswith("_has"):
            raise _bad(f"Reverse chaining '{raw_name}' is not supported", raw_name)
        param = registry.get(rtype, name)
        if param is None or param.type in ("composite", "special"):
            if strict:
                raise _bad(f"{unsupported_reason(registry, rtype, name)} (Prefer: handling=strict)", raw_name)
            plan.ignored.append(raw_name)
            continue
        plan.used.append((raw_name, raw_value))
        plan.clauses.append(_clause(r, rtype, param, modifier, raw_value))
    if plan.ignored and not plan.clauses:
        # lenient handling ignores what it cannot do, but a search left with no filter at all would answer with
        # every entry of the type instead of the few asked for: refuse it (FHIR R4 search 3.1.1.4: the server
        # may reject a search it cannot process as asked)
        names = ", ".join(f"'{n}'" for n in dict.fromkeys(plan.ignored))
        reasons = "; ".join(dict.fromkeys(unsupported_reason(registry, rtype, n.partition(":")[0])
                                          for n in plan.ignored))
        raise _bad(f"{rtype} search by {names} only: {reasons}. Nothing else filters the search, so it would "
                   f"return every {rtype}; refused (see the CapabilityStatement for the parameters supported)",
                   plan.ignored[0])
    plan.clauses.sort(key=lambda c: c.rank)
    plan.where = [c.driver if i == 0 else c.filter for i, c in enumerate(plan.clauses)]
    return plan


def unsupported_reason(registry: SearchParameters, rtype: str, name: str) -> str:
    """Why a search parameter is not served: not defined for the type at all, or defined but not supported."""
    why = registry.unsupported.get(rtype, {}).get(name)
    param = registry.by_type.get(rtype, {}).get(name)
    if why is None and param is not None:
        why = f"{param.type} parameters are not supported"
    if why:
        return f"search parameter '{name}' of {rtype} is defined by FHIR R4 but not supported here ({why})"
    return f"'{name}' is not a search parameter of {rtype}"


# Paging bounds. _offset pages by skipping rows, so a deep offset costs a scan of everything before it and a huge
# one overflows the database's integer; 10 million is past any page a person reads (narrow the search, e.g. with
# _lastUpdated, or use bulk $export for whole collections). _count asks for a page size, capped at the server's
# page size; a value past the same bound is a mistake, not a wish for a bigger page.
MAX_OFFSET = 10_000_000
MAX_COUNT_PARAM = 10_000_000
_WHY = {"_offset": "paging deeper than that costs a scan of every earlier row: narrow the search (e.g. _lastUpdated) "
                   "or use bulk $export",
        "_count": "pages are capped at the server's page size anyway"}


def parse_int(name: str, value: str, *, low: int = 0, high: int = MAX_OFFSET, why: str | None = None) -> int:
    """A whole-number parameter in [low, high] (ASCII digits, optional minus sign), or a 400 saying what is allowed."""
    text = value if isinstance(value, str) else ""
    digits = text.removeprefix("-")
    shown = text[:40] + ("…" if len(text) > 40 else "")
    if not digits or not digits.isascii() or not digits.isdigit():
        raise _bad(f"{name} must be a whole number from {low:,} to {high:,}, not '{shown}'", name)
    if len(digits.lstrip("0")) > 18 or not low <= int(text) <= high:
        reason = why or _WHY.get(name)
        raise _bad(f"{name} must be from {low:,} to {high:,}, not {shown}" + (f" ({reason})" if reason else ""), name)
    return int(text)


def _control(plan: SearchPlan, name: str, value: str, registry: SearchParameters, max_count: int) -> None:
    if name == "_count":
        plan.count = min(parse_int("_count", value, high=MAX_COUNT_PARAM), max_count)
    elif name == "_offset":
        plan.offset = parse_int("_offset", value, high=MAX_OFFSET)
    elif name == "_sort":
        for part in value.split(","):
            desc = part.startswith("-")
            key = part[1:] if desc else part
            if key not in ("_id", "_lastUpdated") and registry.get(plan.rtype, key) is None:
                raise _bad(f"Cannot sort {plan.rtype} by unknown parameter '{key}'", "_sort")
            plan.sort.append((key, desc))
    elif name.startswith("_include") or name.startswith("_revinclude"):
        iterate = name.endswith(":iterate")
        parts = value.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise _bad(f"{name} must look like Type:param[:TargetType], not '{value}'", name)
        src, param = parts[0], parts[1]
        if param != "*":
            p = registry.get(src, param)
            if p is None or p.type != "reference":
                raise _bad(f"{name}: '{param}' is not a reference search parameter of {src}", name)
        inc = Include(src, param, parts[2] if len(parts) == 3 else None, iterate)
        (plan.revinclude if name.startswith("_revinclude") else plan.include).append(inc)
    elif name == "_summary":
        if value not in ("true", "false", "text", "data", "count"):
            raise _bad(f"_summary must be true, false, text, data or count, not '{value}'", "_summary")
        plan.summary = None if value == "false" else value
    elif name == "_elements":
        plan.elements = [e.strip() for e in value.split(",") if e.strip()]
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise _bad(f"_total must be none, estimate or accurate, not '{value}'", "_total")
        plan.total = value


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _clause(r: sa.Table, rtype: str, param: SearchParam, modifier: str, raw: str) -> Clause:
    name = param.name
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(f"{name}:missing takes true or false, not '{raw}'", name)
        present = _present(r, rtype, param)
        cond = ~present if raw == "true" else present
        return Clause(9, cond, cond)
    values = [_unescape(v) for v in _SPLIT_COMMA.split(raw)]
    values = [v for v in values if v != ""]
    if not values:
        raise _bad(f"Search parameter '{name}' has no value", name)

    if name == "_id":
        cond = r.c.id.in_(values)
        return Clause(9 if modifier == "not" else 0, ~cond if modifier == "not" else cond,
                      ~cond if modifier == "not" else cond)
    if name == "_lastUpdated":
        cond = sa.or_(*[_date_cond(r.c.last_updated, r.c.last_updated, v, name) for v in values])
        return Clause(8, cond, cond)
    if name == "_source":
        cond = r.c.source.in_(values)
        return Clause(7, cond, cond)

    kind = param.type
    table = schema.INDEX_TABLES[kind]
    ors = []
    for v in values:
        if kind == "token":
            ors.append(_token_cond(table, v, modifier, name))
        elif kind == "string":
            ors.append(_string_cond(table, v, modifier))
        elif kind == "date":
            ors.append(_date_cond(table.c.low, table.c.high, v, name))
        elif kind == "reference":
            ors.append(_reference_cond(table, v, modifier, param))
        elif kind in ("quantity", "number"):
            ors.append(_quantity_cond(table, v, name, kind))
        elif kind == "uri":
            ors.append(_uri_cond(table, v, modifier))
    match = [table.c.res_type == rtype, table.c.param == name, sa.or_(*ors)]
    sub = sa.select(table.c.res_id).where(*match)
    exists = sa.exists().where(table.c.res_id == r.c.id, *match)
    if modifier == "not" and kind == "token":
        return Clause(9, ~r.c.id.in_(sub), ~exists)
    rank = RANK.get(kind, 6)
    if kind == "token" and (name in SELECTIVE_TOKENS or modifier == "text"):
        rank = 2
    return Clause(rank, r.c.id.in_(sub), exists)


def _present(r: sa.Table, rtype: str, param: SearchParam):
    if param.name in ("_id", "_lastUpdated"):
        return sa.true()
    if param.name == "_source":
        return r.c.source.is_not(None)
    table = schema.INDEX_TABLES[param.type]
    return r.c.id.in_(sa.select(table.c.res_id).where(table.c.res_type == rtype, table.c.param == param.name))


def _token_cond(t: sa.Table, value: str, modifier: str, name: str):
    if modifier == "text":
        return t.c.text.like(normalise(value).replace("%", r"\%") + "%", escape="\\")
    if modifier not in ("", "not", "of-type"):
        raise _bad(f"Modifier ':{modifier}' is not supported on token parameter '{name}'", name)
    parts = _SPLIT_PIPE.split(value, maxsplit=1)
    if len(parts) == 1:
        return t.c.code == _unescape(parts[0])
    system, code = _unescape(parts[0]), _unescape(parts[1])
    if system == "":
        return sa.and_(t.c.system.is_(None), t.c.code == code)
    if code == "":
        return t.c.system == system
    return sa.and_(t.c.system == system, t.c.code == code)


def _string_cond(t: sa.Table, value: str, modifier: str):
    if modifier == "exact":
        return t.c.value_exact == value
    norm = normalise(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if modifier == "contains":
        return t.c.value_norm.like(f"%{norm}%", escape="\\")
    if modifier:
        raise _bad(f"Modifier ':{modifier}' is not supported on string parameters")
    return t.c.value_norm.like(f"{norm}%", escape="\\")


def _date_cond(low_col, high_col, value: str, name: str):
    prefix, v = _split_prefix(value)
    rng = date_range(v)
    if rng is None:
        raise _bad(f"'{value}' is not a valid date for search parameter '{name}'", name)
    lo, hi = rng
    if prefix == "eq" or prefix == "ap":
        return sa.and_(low_col >= lo, high_col <= hi) if prefix == "eq" else \
            sa.and_(low_col <= hi, high_col >= lo)
    if prefix == "ne":
        return sa.or_(low_col < lo, high_col > hi)
    if prefix == "gt":
        return high_col > hi
    if prefix == "lt":
        return low_col < lo
    if prefix == "ge":
        return high_col >= lo
    if prefix == "le":
        return low_col <= hi
    if prefix == "sa":
        return low_col > hi
    return high_col < lo  # eb


def _reference_cond(t: sa.Table, value: str, modifier: str, param: SearchParam):
    if modifier and modifier not in ("identifier",) and not modifier[:1].isupper():
        raise _bad(f"Modifier ':{modifier}' is not supported on reference parameter '{param.name}'")
    if modifier == "identifier":
        raise _bad(f"'{param.name}:identifier' is not supported; search by id", param.name)
    rtype, rid = split_reference(value)
    if rtype is None:
        if "/" in value or "?" in value or value.startswith("urn:"):
            return t.c.target_url == value
        rid = value
        rtype = modifier or (next(iter(param.target)) if len(param.target) == 1 else None)
    cond = t.c.target_id == rid
    if rtype:
        cond = sa.and_(cond, t.c.target_type == rtype)
    return cond


def _quantity_cond(t: sa.Table, value: str, name: str, kind: str):
    prefix, rest = _split_prefix(value)
    parts = _SPLIT_PIPE.split(rest)
    try:
        num = Decimal(parts[0])
    except InvalidOperation:
        num = None
    if num is None or not num.is_finite() or abs(num.adjusted()) > 300:  # NaN, Infinity, 1e999999: not a value
        raise _bad(f"'{value[:60]}' is not a valid number for search parameter '{name}'", name)
    exp = num.as_tuple().exponent
    half = Decimal(5).scaleb(exp - 1) if isinstance(exp, int) else Decimal(0)
    x, lo, hi = float(num), float(num - half), float(num + half)
    col = t.c.value
    cond = {
        "eq": sa.and_(col >= lo, col < hi), "ap": sa.and_(col >= x * 0.9, col <= x * 1.1),
        "ne": sa.or_(col < lo, col >= hi), "gt": col > x, "lt": col < x, "ge": col >= x,
        "le": col <= x, "sa": col > x, "eb": col < x,
    }[prefix]
    if kind == "quantity" and len(parts) == 3:
        system, code = parts[1], parts[2]
        if system:
            cond = sa.and_(cond, t.c.system == system)
        if code:
            cond = sa.and_(cond, sa.or_(t.c.code == code, t.c.unit == code))
    return cond


def _uri_cond(t: sa.Table, value: str, modifier: str):
    if modifier == "below":
        return t.c.value.like(value.replace("%", "\\%") + "%", escape="\\")
    if modifier == "above":
        return sa.literal(value).like(sa.func.replace(t.c.value, "%", "\\%") + "%", escape="\\")
    return t.c.value == value


def sort_key(r: sa.Table, rtype: str, key: str, desc: bool, registry: SearchParameters):
    """An ORDER BY expression for a search parameter."""
    if key == "_id":
        return r.c.id.desc() if desc else r.c.id.asc()
    if key == "_lastUpdated":
        return r.c.last_updated.desc() if desc else r.c.last_updated.asc()
    param = registry.get(rtype, key)
    table = schema.INDEX_TABLES[param.type]
    column = {"date": "high" if desc else "low", "string": "value_norm", "token": "code", "quantity": "value",
              "number": "value", "uri": "value", "reference": "target_id"}[param.type]
    col = table.c[column]
    agg = sa.func.max(col) if desc else sa.func.min(col)
    sub = (sa.select(agg).where(table.c.res_id == r.c.id, table.c.res_type == rtype, table.c.param == key)
           .scalar_subquery())
    return sa.nulls_last(sub.desc()) if desc else sa.nulls_last(sub.asc())


def reference_param_names(registry: SearchParameters, rtype: str) -> list[str]:
    return [p.name for p in registry.params(rtype).values() if p.type == "reference"]


def execute(store, plan: SearchPlan, restrict: list[Any] | None = None):
    """Run a plan: (total or None, page of matches, included resources). `restrict` narrows by policy."""
    r = schema.resource
    cond = [r.c.res_type == plan.rtype, r.c.deleted.is_(False), *plan.where, *(restrict or [])]
    with store.reading() as conn:
        total = None
        if plan.summary == "count" or plan.total == "accurate" or plan.count == 0:
            total = conn.execute(sa.select(sa.func.count()).select_from(r).where(*cond)).scalar_one()
            if plan.summary == "count" or plan.count == 0:
                return total, [], [], False
        q = sa.select(r.c.id, r.c.version, r.c.content, r.c.last_updated, r.c.source, r.c.patient_id).where(*cond)
        order = [sort_key(r, plan.rtype, k, d, store.params) for k, d in plan.sort] or []
        q = q.order_by(*order, r.c.id).limit(plan.count + 1).offset(plan.offset)
        rows = conn.execute(q).all()
        from joinedup.store.repository import Stored

        has_more = len(rows) > plan.count
        page = [Stored(plan.rtype, x[0], x[1], False, store._load(x[2], x[1], x[3]), x[3], x[4], x[5])
                for x in rows[: plan.count]]
        if total is None and plan.total != "none":
            if not has_more:
                total = plan.offset + len(page)
            elif plan.total is None:
                total = conn.execute(sa.select(sa.func.count()).select_from(r).where(*cond)).scalar_one()
        included = _includes(store, conn, plan, page, restrict) if (plan.include or plan.revinclude) else []
        return total, page, included, has_more


def _includes(store, conn, plan: SearchPlan, page, restrict) -> list:
    t = schema.idx_reference
    seen = {(s.rtype, s.id) for s in page}
    out = []
    frontier = list(page)
    for depth in range(3):
        wanted: list[tuple[str, str]] = []
        for inc in plan.include:
            if depth > 0 and not inc.iterate:
                continue
            ids = [s.id for s in frontier if s.rtype == inc.source_type]
            if not ids:
                continue
            cond = [t.c.res_type == inc.source_type, t.c.res_id.in_(ids), t.c.target_id.is_not(None)]
            if inc.param != "*":
                cond.append(t.c.param == inc.param)
            if inc.target_type:
                cond.append(t.c.target_type == inc.target_type)
            wanted.extend((a, b) for a, b in conn.execute(sa.select(t.c.target_type, t.c.target_id).where(*cond)))
        for inc in plan.revinclude:
            if depth > 0 and not inc.iterate:
                continue
            targets = [s for s in frontier if inc.target_type in (None, s.rtype)]
            for ttype in {s.rtype for s in targets}:
                ids = [s.id for s in targets if s.rtype == ttype]
                cond = [t.c.res_type == inc.source_type, t.c.target_type == ttype, t.c.target_id.in_(ids)]
                if inc.param != "*":
                    cond.append(t.c.param == inc.param)
                wanted.extend((inc.source_type, i) for (i,) in conn.execute(sa.select(t.c.res_id).where(*cond)))
        wanted = [k for k in dict.fromkeys(wanted) if k not in seen]
        if not wanted:
            break
        found = store.read_many(wanted, conn)
        if restrict:
            allowed = _restricted_keys(conn, found, restrict)
            found = [s for s in found if (s.rtype, s.id) in allowed]
        for s in found:
            seen.add((s.rtype, s.id))
        out.extend(found)
        frontier = found
        if not any(i.iterate for i in plan.include + plan.revinclude):
            break
    return out


def _restricted_keys(conn, found, restrict) -> set[tuple[str, str]]:
    """Which of the found resources also satisfy the policy restriction."""
    r = schema.resource
    keys: set[tuple[str, str]] = set()
    by_type: dict[str, list[str]] = {}
    for s in found:
        by_type.setdefault(s.rtype, []).append(s.id)
    for rtype, ids in by_type.items():
        q = sa.select(r.c.id).where(r.c.res_type == rtype, r.c.id.in_(ids), *restrict)
        keys.update((rtype, i) for (i,) in conn.execute(q))
    return keys


__all__ = ["MAX_OFFSET", "Include", "SearchPlan", "execute", "parse", "parse_int", "reference_param_names",
           "sort_key", "split_reference"]
