"""Search-parameter definitions (data file) compiled into fast extractors of index rows."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources as pkg_resources
from typing import Any

import orjson
import yaml

# Parameters every type supports (handled from meta / resource columns).
COMMON = {
    "_id": "token",
    "_lastUpdated": "date",
    "_source": "uri",
    "_tag": "token",
    "_security": "token",
    "_profile": "uri",
}
CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}
_SEG = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<choice>\[x\])?(?:\[(?P<fk>[A-Za-z]+)=(?P<fv>[^\]]+)\])?$")


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type."""

    name: str
    type: str
    paths: tuple[str, ...] = ()
    target: frozenset[str] = frozenset()
    components: tuple[str, ...] = ()
    extract: Callable[[dict], list[Any]] | None = field(default=None, compare=False, repr=False)
    heads: tuple[tuple[str, bool], ...] = ()  # first path segment of each path: (name, is choice)

    def may_apply(self, resource: dict) -> bool:
        """Cheap pre-check: does the resource have the top-level element any path starts from?"""
        for name, choice in self.heads:
            if choice:
                n = len(name)
                if any(k.startswith(name) and len(k) > n and k[n].isupper() for k in resource):
                    return True
            elif name in resource:
                return True
        return False


def _compile_path(path: str) -> Callable[[dict], list[Any]]:
    segs = []
    for raw in path.split("."):
        m = _SEG.match(raw)
        if not m:
            raise ValueError(f"bad search path segment {raw!r} in {path!r}")
        segs.append((m["name"], bool(m["choice"]), m["fk"], m["fv"]))
    if len(segs) == 1 and not segs[0][1] and segs[0][2] is None:  # "code", "subject": the commonest shape
        only = segs[0][0]

        def run_one(resource: dict) -> list[Any]:
            v = resource.get(only)
            if v is None:
                return []
            return v if type(v) is list else [v]

        return run_one
    if len(segs) == 2 and not any(s[1] or s[2] is not None for s in segs):  # "participant.individual"
        first, second = segs[0][0], segs[1][0]

        def run_two(resource: dict) -> list[Any]:
            v = resource.get(first)
            if v is None:
                return []
            out: list[Any] = []
            for node in v if isinstance(v, list) else (v,):
                if isinstance(node, dict):
                    w = node.get(second)
                    if w is not None:
                        if isinstance(w, list):
                            out.extend(w)
                        else:
                            out.append(w)
            return out

        return run_two

    def run(resource: dict) -> list[Any]:
        nodes: list[Any] = [resource]
        for name, choice, fk, fv in segs:
            nxt: list[Any] = []
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                if not choice:
                    v = node.get(name)
                    if v is None:
                        continue
                    if isinstance(v, list):
                        nxt.extend(v)
                    else:
                        nxt.append(v)
                    continue
                n = len(name)
                for k, v in node.items():
                    if k.startswith(name) and len(k) > n and k[n].isupper():
                        if isinstance(v, list):
                            nxt.extend(v)
                        else:
                            nxt.append(v)
            if fk is not None:
                nxt = [x for x in nxt if isinstance(x, dict) and str(x.get(fk)) == fv]
            nodes = nxt
            if not nodes:
                return nodes
        return nodes

    return run


def _head(path: str) -> tuple[str, bool]:
    m = _SEG.match(path.split(".", 1)[0])
    return (m["name"], bool(m["choice"])) if m else (path, False)


def _compile_paths(paths: Iterable[str]) -> Callable[[dict], list[Any]]:
    runs = [_compile_path(p) for p in paths]
    if len(runs) == 1:
        return runs[0]

    def run(resource: dict) -> list[Any]:
        out: list[Any] = []
        for r in runs:
            out.extend(r(resource))
        return out

    return run


class SearchParameters:
    """Registry of search parameters per resource type, with the compartments each type belongs to.

    `definitions` maps a type to its parameters ({name: {type, path, target, components}}) plus `_compartment`, the
    parameters that place it in the Patient compartment, tried in that order to find the person it is about.
    Parameters marked `unsupported` (with the reason) are known but not served; `compartments` holds every
    compartment ({"Patient": {type: (param, ...)}, "Practitioner": ...}).
    """

    def __init__(self, definitions: dict[str, dict[str, Any]],
                 compartments: dict[str, dict[str, tuple[str, ...]]] | None = None) -> None:
        self.by_type: dict[str, dict[str, SearchParam]] = {}
        self.compartment: dict[str, tuple[SearchParam, ...]] = {}
        self.unsupported: dict[str, dict[str, str]] = {}
        self.urls: dict[tuple[str, str], str] = {}
        for rtype, params in definitions.items():
            compiled: dict[str, SearchParam] = {}
            for name, spec in params.items():
                if name.startswith("_"):
                    continue
                if spec.get("unsupported"):
                    self.unsupported.setdefault(rtype, {})[name] = spec["unsupported"]
                    continue
                if spec.get("url"):
                    self.urls[(rtype, name)] = spec["url"]
                paths = tuple(spec.get("path") or ())
                compiled[name] = SearchParam(
                    name=name, type=spec["type"], paths=paths,
                    target=frozenset(spec.get("target") or ()),
                    components=tuple(spec.get("components") or ()),
                    extract=_compile_paths(paths) if paths else None,
                    heads=tuple(_head(p) for p in paths),
                )
            self.by_type[rtype] = compiled
            members = tuple(compiled[p] for p in (params.get("_compartment") or []) if p in compiled)
            if members:
                self.compartment[rtype] = members
        self.compartments: dict[str, dict[str, tuple[str, ...]]] = compartments or {
            "Patient": {t: tuple(p.name for p in ps) for t, ps in self.compartment.items()}}
        self._shapes: dict[tuple, tuple] = {}

    def params(self, rtype: str) -> dict[str, SearchParam]:
        """Search parameters defined for a type (empty for types stored without search support)."""
        return self.by_type.get(rtype, {})

    def get(self, rtype: str, name: str) -> SearchParam | None:
        if name in COMMON:
            return SearchParam(name=name, type=COMMON[name])
        return self.by_type.get(rtype, {}).get(name)

    def patient_of(self, resource: dict) -> str | None:
        """The id of the patient whose compartment holds this resource, if any.

        Only a relative reference ("Patient/123") names a person held here: an absolute one
        ("https://hospital.example/fhir/Patient/123") names a patient of another server, and filing the entry under
        this server's Patient/123 would put it in a stranger's record. Such an entry is stored under no person (the
        gate shows it only to the organisation that recorded it)."""
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            return resource.get("id")
        for param in self.compartment.get(rtype, ()):
            for value in param.extract(resource):
                ref = value.get("reference") if isinstance(value, dict) else None
                if isinstance(ref, str) and "://" not in ref:
                    t, i = split_reference(ref)
                    if t == "Patient" and i:
                        return i
        return None

    def index_rows(self, resource: dict) -> dict[str, list[tuple]]:
        """Index rows per table kind for one resource: tuples without (res_type, res_id)."""
        keyed = self.keyed_index_rows(resource, resource.get("id"))
        return {kind: [row[2:] for row in rows] for kind, rows in keyed.items()}

    def keyed_index_rows(self, resource: dict, rid: Any) -> dict[str, list[tuple]]:
        """Index rows per table kind for one resource, each tuple starting (res_type, res_id) as the index tables
        hold them. The parameters that can apply are found once per type and resource shape (its top-level
        elements), and parameters sharing a path extract it once."""
        rtype = resource["resourceType"]
        rows: dict[str, list[tuple]] = {"token": [], "string": [], "date": [], "reference": [],
                                        "quantity": [], "uri": []}
        meta = resource.get("meta")
        if meta:
            for tag in meta.get("tag") or ():
                rows["token"].append((rtype, rid, "_tag", tag.get("system"), _clip(tag.get("code")), None))
            for sec in meta.get("security") or ():
                rows["token"].append((rtype, rid, "_security", sec.get("system"), _clip(sec.get("code")), None))
            for prof in meta.get("profile") or ():
                rows["uri"].append((rtype, rid, "_profile", _clip(prof, 512)))
        shape = (rtype, *resource)
        plan = self._shapes.get(shape)
        if plan is None:
            plan = self._shape_plan(rtype, resource, shape)
        for extract, users in plan:
            values = extract(resource)
            if values:
                for indexer, name, target in users:
                    indexer(rtype, rid, name, target, values, rows)
        return rows

    def _shape_plan(self, rtype: str, resource: dict, shape: tuple) -> tuple:
        """The (extract, ((indexer, name, target), ...)) groups that can apply to resources with these top-level
        elements (a parameter applies when an element its paths start from is present)."""
        groups: dict[tuple[str, ...], tuple[Callable, list]] = {}
        for param in self.by_type.get(rtype, {}).values():
            indexer = KEYED_INDEXERS.get(param.type)
            if param.extract is None or indexer is None or not param.may_apply(resource):
                continue
            group = groups.setdefault(param.paths, (param.extract, []))
            group[1].append((indexer, param.name, param.target))
        plan = tuple((extract, _fused(users)) for extract, users in groups.values())
        if len(self._shapes) >= 50_000:
            self._shapes.clear()
        self._shapes[shape] = plan
        return plan


def _clip(value: Any, n: int = 255) -> Any:
    if isinstance(value, str) and len(value) > n:
        return value[:n]
    return value


@lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Lower-case, accent-free form used for default string matching."""
    if text.isascii():
        return text.lower()[:255]
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()[:255]


# Indexers: (res_type, res_id, parameter name, reference targets, values, rows by table kind) -> rows appended, each
# (res_type, res_id, name, *columns of the kind's table).

def _token(rt: str, rid: Any, name: str, _target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["token"]
    for v in values:
        if isinstance(v, dict):  # the commonest first: CodeableConcept, Coding, Identifier, ContactPoint
            if "coding" in v or ("text" in v and "value" not in v and "code" not in v):
                text = v.get("text")
                for c in v.get("coding") or ():
                    display = c.get("display")
                    code = c.get("code")
                    out.append((rt, rid, name, c.get("system"),
                                code[:255] if isinstance(code, str) and len(code) > 255 else code,
                                normalise(display) if isinstance(display, str) else None))
                if isinstance(text, str):
                    out.append((rt, rid, name, None, None, normalise(text)))
            elif "code" in v:
                display = v.get("display")
                out.append((rt, rid, name, v.get("system"), _clip(v.get("code")),
                            normalise(display) if isinstance(display, str) else None))
            elif "value" in v:
                system = v.get("system")
                if system in CONTACT_SYSTEMS:
                    system = None
                val = v.get("value")
                if val is not None:
                    out.append((rt, rid, name, system, _clip(str(val)), None))
        elif isinstance(v, str):
            out.append((rt, rid, name, None, _clip(v), None))
        elif isinstance(v, bool):
            out.append((rt, rid, name, None, "true" if v else "false", None))


_STRING_PARTS = ("family", "text", "city", "district", "state", "postalCode", "country")
_STRING_LISTS = ("given", "prefix", "suffix", "line")


def _string(rt: str, rid: Any, name: str, _target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["string"]

    def add(s: Any) -> None:
        if isinstance(s, str) and s:
            out.append((rt, rid, name, normalise(s), _clip(s)))

    for v in values:
        if isinstance(v, str):
            add(v)
        elif isinstance(v, dict):
            for key in _STRING_PARTS:
                add(v.get(key))
            for key in _STRING_LISTS:
                for part in v.get(key) or ():
                    add(part)
            if "display" in v and "reference" in v:
                add(v.get("display"))


@lru_cache(maxsize=65536)
def split_reference(ref: str) -> tuple[str | None, str | None]:
    """(type, id) of a relative or absolute literal reference; (None, None) otherwise."""
    if "?" in ref or ref.startswith(("urn:", "#")):
        return None, None
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2], parts[-1]
    return None, None


def _reference(rt: str, rid: Any, name: str, target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["reference"]
    for v in values:
        ref = v.get("reference") if isinstance(v, dict) else v if isinstance(v, str) else None
        if not isinstance(ref, str):
            continue
        t, i = split_reference(ref)
        if t is None:
            out.append((rt, rid, name, None, None, ref[:512]))
        elif not target or t in target:
            out.append((rt, rid, name, t, i, None))


def _references(rt: str, rid: Any, _name: None, users: tuple, values: list[Any], rows: dict) -> None:
    """`_reference` for several parameters of one path ((name, target) each, as Encounter's `patient` and `subject`):
    each reference split once; the rows are those `_reference` gives for each parameter in turn."""
    out = rows["reference"]
    refs = []
    for v in values:
        ref = v.get("reference") if isinstance(v, dict) else v if isinstance(v, str) else None
        if isinstance(ref, str):
            refs.append((*split_reference(ref), ref))
    for name, target in users:
        for t, i, ref in refs:
            if t is None:
                out.append((rt, rid, name, None, None, ref[:512]))
            elif not target or t in target:
                out.append((rt, rid, name, t, i, None))


def _fused(users: list[tuple]) -> tuple:
    """The (indexer, name, target) calls of one extracted path, those of several reference parameters made one."""
    if len(users) > 1 and all(indexer is _reference for indexer, _n, _t in users):
        return ((_references, None, tuple((name, target) for _i, name, target in users)),)
    return tuple(users)


def _quantity(rt: str, rid: Any, name: str, target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["quantity"]
    for v in values:
        if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
            out.append((rt, rid, name, float(v["value"]), v.get("system"), _clip(v.get("code"), 64),
                        _clip(v.get("unit"), 64)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((rt, rid, name, float(v), None, None, None))
        elif isinstance(v, dict) and isinstance(v.get("low"), dict):  # Range
            _quantity(rt, rid, name, target, [v["low"], v.get("high") or {}], rows)


def _uri(rt: str, rid: Any, name: str, _target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["uri"]
    for v in values:
        if isinstance(v, str):
            out.append((rt, rid, name, _clip(v, 512)))


def _date(rt: str, rid: Any, name: str, target: frozenset, values: list[Any], rows: dict) -> None:
    out = rows["date"]
    for v in values:
        if isinstance(v, str):
            rng = date_range(v)
            if rng:
                out.append((rt, rid, name, *rng))
        elif isinstance(v, dict):
            if "start" in v or "end" in v:  # Period
                lo = date_range(v["start"]) if isinstance(v.get("start"), str) else None
                hi = date_range(v["end"]) if isinstance(v.get("end"), str) else None
                out.append((rt, rid, name, lo[0] if lo else MIN_DATE, hi[1] if hi else MAX_DATE))
            elif "event" in v:  # Timing
                for e in v.get("event") or ():
                    rng = date_range(e) if isinstance(e, str) else None
                    if rng:
                        out.append((rt, rid, name, *rng))
            elif "boundsPeriod" in (v.get("repeat") or {}):
                _date(rt, rid, name, target, [v["repeat"]["boundsPeriod"]], rows)


MIN_DATE = "0001-01-01T00:00:00.000000"
MAX_DATE = "9999-12-31T23:59:59.999999"
_FMT = "%Y-%m-%dT%H:%M:%S.%f"


@lru_cache(maxsize=65536)
def date_range(value: str) -> tuple[str, str] | None:
    """The UTC [low, high] range a FHIR date, dateTime or instant stands for; None if unparseable."""
    try:
        n = len(value)
        if n == 4:
            y = int(value)
            return f"{y:04d}-01-01T00:00:00.000000", f"{y:04d}-12-31T23:59:59.999999"
        if n == 7:
            start = datetime(int(value[:4]), int(value[5:7]), 1)
            nxt = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1)
            return start.strftime(_FMT), (nxt - timedelta(microseconds=1)).strftime(_FMT)
        if n == 10:
            datetime(int(value[:4]), int(value[5:7]), int(value[8:10]))
            return f"{value}T00:00:00.000000", f"{value}T23:59:59.999999"
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        low = dt.strftime(_FMT)
        time_part = value[11:]
        if "." in time_part:
            return low, low
        if len(time_part) >= 8 and time_part[5:6] == ":":
            return low, (dt + timedelta(seconds=1, microseconds=-1)).strftime(_FMT)
        return low, (dt + timedelta(minutes=1, microseconds=-1)).strftime(_FMT)
    except (ValueError, IndexError):
        return None


KEYED_INDEXERS: dict[str, Callable[[str, Any, str, frozenset, list[Any], dict], None]] = {
    "token": _token,
    "string": _string,
    "reference": _reference,
    "quantity": _quantity,
    "number": _quantity,
    "uri": _uri,
    "date": _date,
}  # composite and special parameters are not indexed


DEFINITIONS = "definitions"


def load_definitions() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, tuple[str, ...]]]]:
    """The R4 definitions shipped in `definitions/r4/` with JoinedUp's additions applied: (per-type parameters
    with `_compartment`, {compartment: {type: params}})."""
    base = pkg_resources.files("joinedup.fhir").joinpath(DEFINITIONS)
    types = orjson.loads(base.joinpath("r4", "search-parameters.json").read_bytes())["types"]
    comps = orjson.loads(base.joinpath("r4", "compartments.json").read_bytes())["compartments"]
    local = yaml.safe_load(base.joinpath("joinedup-additions.yaml").read_text())
    for rtype, params in (local.get("approximations") or {}).items():
        for name, spec in params.items():
            types.setdefault(rtype, {})[name] = {**types.get(rtype, {}).get(name, {}), **spec,
                                                 "unsupported": None}
    compartments = {code: {t: tuple(ps) for t, ps in c["resources"].items()} for code, c in comps.items()}
    patient = dict(compartments.get("Patient") or {})
    for rtype, extra in (local.get("patient_compartment") or {}).items():
        patient[rtype] = tuple(dict.fromkeys((*patient.get(rtype, ()), *extra)))
    compartments["Patient"] = patient
    priority = {name: i for i, name in enumerate(local.get("patient_priority") or ())}
    definitions: dict[str, dict[str, Any]] = {}
    for rtype in sorted(set(types) | set(patient)):
        params = dict(types.get(rtype) or {})
        members = patient.get(rtype, ())
        params["_compartment"] = sorted(members, key=lambda p: (priority.get(p, len(priority)), members.index(p)))
        definitions[rtype] = params
    return definitions, compartments


@lru_cache(maxsize=1)
def registry() -> SearchParameters:
    """The search-parameter registry: the FHIR R4 definitions shipped as package data, with JoinedUp's additions."""
    definitions, compartments = load_definitions()
    return SearchParameters(definitions, compartments)
