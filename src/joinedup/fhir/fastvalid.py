"""A fast structural validator compiled from the fhir.resources R4B models.

It checks what the models check for well-formed data — known elements only, arrays vs single values,
primitive formats (FHIR regexes and real calendar dates), required elements, one value per choice
element — an order of magnitude faster than building the pydantic models. It is deliberately at least as
strict as the models: anything it doubts is handed to the models, which give the precise message (or accept
it, in which case the model's verdict stands).

It also knows the codes of `code` elements bound to REQUIRED value sets (Patient.gender, Observation.status,
MedicationRequest.intent, ...), which the models do not check: the fast path doubts a code outside its value set,
and `check_required_codes` refuses it with the element's path and the codes allowed (the models would accept
"banana" as a gender).
"""

from __future__ import annotations

import re
import typing
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import orjson

_DATE = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
_DATETIME = (r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
             r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]"
             r"|14:00)))?)?)?")
_INSTANT = (r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
            r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]"
            r"|14:00))")
STRING_FORMATS = {
    "Id": re.compile(r"[A-Za-z0-9\-.]{1,64}"),
    "Code": re.compile(r"[^\s]+( [^\s]+)*"),
    "Uri": re.compile(r"\S+"),
    "Url": re.compile(r"\S+"),
    "Canonical": re.compile(r"\S+"),
    "Oid": re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+"),
    "UuidVersion": re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "Date": re.compile(_DATE),
    "DateTime": re.compile(_DATETIME),
    "Instant": re.compile(_INSTANT),
    "Time": re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"),
    "String": re.compile(r"[\s\S]*\S[\s\S]*"),
    "Markdown": re.compile(r"[\s\S]*\S[\s\S]*"),
    "Xhtml": re.compile(r"\s*<[\s\S]+"),
    "EncodedBytes": re.compile(r"(\s*([0-9a-zA-Z+/=]){4}\s*)+"),
}
INT_RANGES = {"Integer": (-2147483648, 2147483647), "PositiveInt": (1, 2147483647),
              "UnsignedInt": (0, 2147483647)}


class Doubt(Exception):
    """The fast validator is not sure; the models decide."""


# -- codes of REQUIRED bindings ---------------------------------------------------------------------------------
# The fhir.resources models list the codes of a `code` element with a required binding (`enum_values`), from the
# element's short description in the specification. Where that description ends in "+" the list is incomplete;
# these are the whole value sets from the FHIR R4 (and R4B: unchanged) specification. Elements whose list ends
# in "+" and are not completed here are not checked (their codes could not be verified).
_OBSERVATION_STATUS = ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error",
                       "unknown")  # http://hl7.org/fhir/ValueSet/observation-status (8 codes)
_ENCOUNTER_STATUS = ("planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
                     "entered-in-error", "unknown")  # http://hl7.org/fhir/ValueSet/encounter-status (9 codes)
_DIAGNOSTIC_REPORT_STATUS = ("registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                             "cancelled", "entered-in-error", "unknown")  # .../diagnostic-report-status (10 codes)
_TASK_STATUS = ("draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
                "on-hold", "failed", "completed", "entered-in-error")  # http://hl7.org/fhir/ValueSet/task-status (12)
COMPLETED_VALUE_SETS: dict[str, tuple[str, ...]] = {
    "Observation.status": _OBSERVATION_STATUS,
    "DetectedIssue.status": _OBSERVATION_STATUS,
    "RiskAssessment.status": _OBSERVATION_STATUS,
    "Encounter.status": _ENCOUNTER_STATUS,
    "EncounterStatusHistory.status": _ENCOUNTER_STATUS,
    "DiagnosticReport.status": _DIAGNOSTIC_REPORT_STATUS,
    "Task.status": _TASK_STATUS,
}


class Codes(frozenset):
    """The codes of a value set (set lookups), remembering the specification's order for messages."""

    order: tuple[str, ...]

    def __new__(cls, codes) -> typing.Self:
        self = super().__new__(cls, codes)
        self.order = tuple(codes)
        return self


def _required_codes(cls: type, name: str, extra: dict) -> Codes | None:
    """The codes allowed in a `code` element with a required binding, or None when they are not known."""
    listed = extra.get("enum_values")
    if not listed:
        return None
    if "+" not in listed:
        return Codes(listed)
    whole = COMPLETED_VALUE_SETS.get(f"{cls.__name__}.{name}")
    if whole is None or not set(listed) - {"+"} <= set(whole):
        return None
    return Codes(whole)


class CodeNotAllowed(Doubt):
    """A code outside the required value set of its element (the models would accept it: they do not check)."""

    def __init__(self, where: str, value: str, allowed: Codes) -> None:
        super().__init__(f"{where}: '{value}' is not one of the codes allowed ({' | '.join(allowed.order)})")
        self.where = where
        self.value = value
        self.allowed = allowed


# field spec: (kind, is_list, payload, required, choice_group)
#   kind: "str" (payload: format name), "int" (payload: range), "dec", "bool", "complex" (payload: class),
#         "resource", "ext" (primitive extension element), "skip"


def unwrap_annotation(annotation: Any) -> tuple[Any, bool]:
    """(the element type, whether it is a list) of a fhir.resources field annotation; (None, _) for a union."""
    is_list = False
    ann = annotation
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return None, is_list
            ann = args[0]
            continue
        if origin is list:
            is_list = True
            ann = typing.get_args(ann)[0]
            continue
        return ann, is_list


@cache
def _spec(cls: type) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for name, info in cls.model_fields.items():
        key = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "fhir_comments":
            out[key] = ("skip", False, None, False, None)
            continue
        ann, is_list = unwrap_annotation(info.annotation)
        required = info.is_required() or bool(extra.get("element_required"))
        group = extra.get("one_of_many")
        if ann is None:
            raise TypeError(f"{cls.__name__}.{name}: unsupported annotation")
        if typing.get_origin(ann) is typing.Annotated:
            base, *meta = typing.get_args(ann)
            fmt = type(meta[0]).__name__ if meta else None
            if fmt in INT_RANGES:
                out[key] = ("int", is_list, INT_RANGES[fmt], required, group)
            elif fmt == "Decimal":
                out[key] = ("dec", is_list, None, required, group)
            elif fmt == "Code" and (codes := _required_codes(cls, key, extra)) is not None:
                out[key] = ("code", is_list, codes, required, group)
            elif fmt in STRING_FORMATS:
                out[key] = ("str", is_list, fmt, required, group)
            else:
                raise TypeError(f"{cls.__name__}.{name}: unknown primitive {fmt}")
        elif ann is bool:
            out[key] = ("bool", is_list, None, required, group)
        elif isinstance(ann, type) and hasattr(ann, "_model_klass"):
            tname = ann.__name__
            if tname == "ResourceType":
                out[key] = ("resource", is_list, None, required, group)
            elif tname == "FHIRPrimitiveExtensionType":
                out[key] = ("ext", is_list, None, False, None)
            else:
                out[key] = ("complex", is_list, _klass(ann), required, group)
        else:
            raise TypeError(f"{cls.__name__}.{name}: unsupported type {ann!r}")
    return out


@cache
def _klass(abc_type: type) -> type:
    ref = abc_type._model_klass
    if isinstance(ref, type):
        return ref
    module, _, name = str(ref).rpartition(".")
    import importlib

    return getattr(importlib.import_module(module), name)


@cache
def _groups(cls: type) -> dict[str, tuple[list[str], bool]]:
    groups: dict[str, tuple[list[str], bool]] = {}
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        g = extra.get("one_of_many")
        if g:
            keys, req = groups.get(g, ([], False))
            keys.append(info.alias or name)
            groups[g] = (keys, req or bool(extra.get("one_of_many_required")))
    return groups


def _check_date(value: str, fmt: str) -> None:
    if fmt in ("Date", "DateTime", "Instant") and len(value) >= 10:
        try:
            datetime(int(value[:4]), int(value[5:7]), int(value[8:10]))
        except ValueError:
            raise Doubt from None


_BASE64_RUN = re.compile(r"[0-9a-zA-Z+/=]+")


def _string_ok(value: str, fmt: str) -> bool:
    """The FHIR regex of a string format, with the two that dominate real records (free text and attachments'
    base64) decided without it: `[\\s\\S]*\\S[\\s\\S]*` is "not empty and not all whitespace" (re's \\s is str.isspace);
    base64 with no whitespace in it is whole groups of four of its alphabet (anything else: the FHIR regex)."""
    if fmt == "String" or fmt == "Markdown":
        return bool(value) and not value.isspace()
    if fmt == "EncodedBytes" and len(value) % 4 == 0 and _BASE64_RUN.fullmatch(value):
        return True
    return STRING_FORMATS[fmt].fullmatch(value) is not None


def _element(cls: type, node: Any, *, is_resource: bool) -> None:
    """Check one element (or resource) of a class against its compiled plan; raise Doubt at the first doubt."""
    (_NODE_CHECKS.get((cls, is_resource)) or _node_check(cls, is_resource))(node)


# -- the compiled plans -----------------------------------------------------------------------------------------
# Each class's fields become one checker each (a closure specialised for the field's kind, format and
# cardinality), so checking an element is a dict lookup and a call per key: no dispatch on the kind at run time.
# Strings of the formats checked by regex remember the values they passed (bounded sets): codes, systems, ids and
# dates repeat across a file, and the same value always gets the same verdict.
_PLANS: dict[tuple[type, bool], tuple[dict[str, Any], tuple[tuple[str, str], ...], tuple[tuple[tuple[str, ...], bool], ...]]] = {}
_NODE_CHECKS: dict[tuple[type, bool], Any] = {}
_GOOD_MAX = 200_000


def _plan(cls: type, is_resource: bool):
    spec = _spec(cls)
    checks: dict[str, Any] = {}
    for key, (kind, is_list, payload, _req, _group) in spec.items():
        checks[key] = _field_check(kind, is_list, payload)
    if is_resource:
        checks["resourceType"] = _accept
    elif "resourceType" in checks:  # pragma: no cover - no element class has one
        del checks["resourceType"]
    required = tuple((key, f"_{key}") for key in _required_keys(cls))
    groups = tuple((tuple(keys), req) for keys, req in _groups(cls).values())
    plan = (checks, required, groups)
    _PLANS[(cls, is_resource)] = plan
    return plan


def _node_check(cls: type, is_resource: bool):
    """The checker of one element (or resource) of a class with its plan bound in (compiled at its first use: a
    class may hold itself): a dict lookup and a call per key, then the required elements and the choice groups."""
    bound: list[tuple] = []

    def check_node(node: Any) -> None:
        if type(node) is not dict or not node:
            raise Doubt
        if not bound:
            bound.append(_PLANS.get((cls, is_resource)) or _plan(cls, is_resource))
        checks, required, groups = bound[0]
        get = checks.get
        for key, value in node.items():
            check = get(key)
            if check is None:  # an element the class does not have
                raise Doubt
            check(value)
        if required:
            for key, underscored in required:
                if key not in node and underscored not in node:
                    raise Doubt
        if groups:
            for keys, req in groups:
                present = 0
                for k in keys:
                    if k in node:
                        present += 1
                if present > 1 or (req and present == 0):
                    raise Doubt

    _NODE_CHECKS[(cls, is_resource)] = check_node
    return check_node


def _accept(_value: Any) -> None:
    return None


def _not_none(value: Any) -> None:
    if value is None:
        raise Doubt


def _field_check(kind: str, is_list: bool, payload: Any):
    if kind == "skip":
        return _not_none
    if kind == "complex":
        item = _complex_check(payload)
    elif kind == "resource":
        item = validate_fast
    elif kind == "ext":
        ext = _ext_class()
        ext_node = _NODE_CHECKS.get((ext, False)) or _node_check(ext, False)

        def item(v: Any) -> None:
            if v is not None:
                ext_node(v)
        if not is_list:
            def single_ext(v: Any) -> None:
                if v is None or type(v) is list:
                    raise Doubt
                ext_node(v)
            return single_ext
    else:
        item = _primitive_check(kind, payload)
    if not is_list:
        return item  # a list or None fails the item's own type check (a dict, a str, ...): Doubt

    def many(value: Any) -> None:
        if type(value) is not list or not value:
            raise Doubt
        for v in value:
            item(v)
    return many


class _Seen:
    """Elements of one class that passed, by their JSON (codings, references and the like repeat across a file:
    the same JSON is the same element, with the same verdict). A class whose elements rarely repeat (identifiers,
    periods, attachments) stops being remembered after its first tries."""

    __slots__ = ("good", "tries", "hits", "on")

    def __init__(self) -> None:
        self.good: set[bytes] = set()
        self.tries = 0
        self.hits = 0
        self.on = True


@cache
def _complex_check(cls: type):
    seen = _Seen()
    dumps = orjson.dumps
    good = seen.good
    node = _NODE_CHECKS.get((cls, False)) or _node_check(cls, False)

    def check(v: Any) -> None:
        if not seen.on or type(v) is not dict:
            node(v)
            return
        key = dumps(v)
        if key in good:
            seen.hits += 1
            return
        node(v)
        seen.tries += 1
        if seen.tries >= 2000 and seen.hits < seen.tries // 2:
            seen.on = False
            good.clear()
            return
        if len(good) >= _GOOD_MAX // 10:
            good.clear()
        good.add(key)
    return check


def _primitive_check(kind: str, payload: Any):
    if kind == "code":
        def check(v: Any, allowed=payload) -> None:
            if type(v) is not str or v not in allowed:
                raise Doubt
    elif kind == "bool":
        def check(v: Any) -> None:
            if type(v) is not bool:
                raise Doubt
    elif kind == "int":
        def check(v: Any, lo=payload[0], hi=payload[1]) -> None:
            if type(v) is not int or not lo <= v <= hi:
                raise Doubt
    elif kind == "dec":
        def check(v: Any) -> None:
            if type(v) is not int and type(v) is not float:
                raise Doubt
    elif payload in ("String", "Markdown"):
        def check(v: Any) -> None:
            if type(v) is not str or not v or v.isspace():
                raise Doubt
    else:
        check = _format_check(payload)
    return check


@cache
def _format_check(fmt: str):
    """The check of a string format decided by regex (and a real calendar date for the date formats), remembering
    the values it passed."""
    good: set[str] = set()
    dated = fmt in ("Date", "DateTime", "Instant")

    def check(v: Any) -> None:
        if type(v) is not str:
            raise Doubt
        if v in good:
            return
        if not _string_ok(v, fmt):
            raise Doubt
        if dated:
            _check_date(v, fmt)
        if len(good) >= _GOOD_MAX:
            good.clear()
        good.add(v)
    return check


@cache
def _required_keys(cls: type) -> tuple[str, ...]:
    return tuple(key for key, fs in _spec(cls).items() if fs[3])


@lru_cache(maxsize=1)
def _ext_class() -> type:
    from fhir.resources.R4B.element import Element

    return Element


def validate_fast(resource: Any) -> None:
    """Raise Doubt unless the resource is certainly valid."""

    if type(resource) is not dict:
        raise Doubt
    rtype = resource.get("resourceType")
    node = _RESOURCE_NODES.get(rtype) if type(rtype) is str else None
    if node is None:
        cls = model_class(rtype)
        if cls is None:
            raise Doubt
        node = _RESOURCE_NODES[rtype] = _NODE_CHECKS.get((cls, True)) or _node_check(cls, True)
    node(resource)


_RESOURCE_NODES: dict[str, Any] = {}  # resource type -> the checker of its resources


@cache
def _has_codes(cls: type) -> bool:
    """True when a required-binding code element can occur anywhere inside elements of this class."""
    seen: set[type] = set()
    stack = [cls]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        try:
            spec = _spec(c)
        except TypeError:  # pragma: no cover - a model shape the fast validator does not know: not checked
            continue
        for kind, _list, payload, _req, _group in spec.values():
            if kind in ("code", "resource"):
                return True
            if kind == "complex":
                stack.append(payload)
    return False


@cache
def _code_plan(cls: type) -> dict[str, tuple[str, Any]]:
    """The elements of a class to visit for required codes: key -> ("code", allowed) | ("complex", class) |
    ("resource", None)."""
    plan: dict[str, tuple[str, Any]] = {}
    for key, (kind, _list, payload, _req, _group) in _spec(cls).items():
        if kind == "code":
            plan[key] = ("code", payload)
        elif kind == "resource":
            plan[key] = ("resource", None)
        elif kind == "complex" and _has_codes(payload):
            plan[key] = ("complex", payload)
    return plan


def _walk_codes(cls: type, node: Any, where: str) -> None:
    if type(node) is not dict:
        return
    plan = _code_plan(cls)
    for key, value in node.items():
        step = plan.get(key)
        if step is None or value is None:
            continue
        kind, payload = step
        many = type(value) is list
        for i, item in enumerate(value if many else (value,)):
            path = f"{where}.{key}[{i}]" if many else f"{where}.{key}"
            if kind == "code":
                if type(item) is str and item not in payload:
                    raise CodeNotAllowed(path, item, payload)
            elif kind == "complex":
                _walk_codes(payload, item, path)
            else:
                _resource_codes(item, path)


def _resource_codes(resource: Any, where: str | None = None) -> None:

    if type(resource) is not dict:
        return
    rtype = resource.get("resourceType")
    cls = model_class(rtype) if type(rtype) is str else None
    if cls is None:
        return
    try:
        _walk_codes(cls, resource, where or rtype)
    except (TypeError, RecursionError):  # pragma: no cover - shapes the models refuse anyway
        return


def required_code_problem(resource: Any) -> str | None:
    """The first `code` element outside its REQUIRED value set ("Patient.gender: 'banana' is not one of the
    codes allowed (female | male | other | unknown)"), or None. Set lookups along the elements that can hold
    such codes only; anything that is not the expected shape is left to the structural checks."""
    try:
        _resource_codes(resource)
    except CodeNotAllowed as exc:
        return str(exc)
    return None


def check_required_codes(resource: Any) -> None:
    """Raise FhirError 422 (code "code-invalid", with the element's path) for a code outside the required value
    set of its element."""
    try:
        _resource_codes(resource)
    except CodeNotAllowed as exc:
        from joinedup.fhir.errors import FhirError

        raise FhirError(422, str(exc), code="code-invalid", expression=[exc.where]) from None


def is_certainly_valid(resource: Any) -> bool:
    try:
        validate_fast(resource)
    except Doubt:
        return False
    except (TypeError, RecursionError):
        return False
    return True


@cache
def model_class(resource_type: str):
    """The fhir.resources R4B model for a resource type, or None when the type is unknown."""
    from fhir.resources.R4B import get_fhir_model_class

    if not resource_type or not resource_type[0].isupper():
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    if cls.__name__ != resource_type or not hasattr(cls, "get_resource_type"):
        return None
    return cls
