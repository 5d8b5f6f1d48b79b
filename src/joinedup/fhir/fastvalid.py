"""A fast structural validator compiled from the fhir.resources R4B models.

It checks what the models check for well-formed data — known elements only, arrays vs single values,
primitive formats (FHIR regexes and real calendar dates), required elements, one value per choice
element — an order of magnitude faster than building the pydantic models. It is deliberately at least as
strict as the models: anything it doubts is handed to the models, which give the precise message (or accept
it, in which case the model's verdict stands).
"""

from __future__ import annotations

import re
import typing
from datetime import datetime
from functools import lru_cache
from typing import Any

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


# field spec: (kind, is_list, payload, required, choice_group)
#   kind: "str" (payload: format name), "int" (payload: range), "dec", "bool", "complex" (payload: class),
#         "resource", "ext" (primitive extension element), "skip"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
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
        if origin in (list, typing.List):
            is_list = True
            ann = typing.get_args(ann)[0]
            continue
        return ann, is_list


@lru_cache(maxsize=None)
def _spec(cls: type) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for name, info in cls.model_fields.items():
        key = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "fhir_comments":
            out[key] = ("skip", False, None, False, None)
            continue
        ann, is_list = _unwrap(info.annotation)
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


@lru_cache(maxsize=None)
def _klass(abc_type: type) -> type:
    ref = abc_type._model_klass
    if isinstance(ref, type):
        return ref
    module, _, name = str(ref).rpartition(".")
    import importlib

    return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=None)
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


def _prim(kind: str, payload: Any, value: Any) -> None:
    if kind == "str":
        if type(value) is not str or not STRING_FORMATS[payload].fullmatch(value):
            raise Doubt
        _check_date(value, payload)
    elif kind == "bool":
        if type(value) is not bool:
            raise Doubt
    elif kind == "int":
        if type(value) is not int or not payload[0] <= value <= payload[1]:
            raise Doubt
    elif kind == "dec":
        if type(value) not in (int, float):
            raise Doubt


def _element(cls: type, node: Any, *, is_resource: bool) -> None:
    if type(node) is not dict or not node:
        raise Doubt
    spec = _spec(cls)
    for key, value in node.items():
        if key == "resourceType":
            if not is_resource:
                raise Doubt
            continue
        fs = spec.get(key)
        if fs is None or value is None:
            raise Doubt
        kind, is_list, payload, _req, _group = fs
        if kind == "skip":
            continue
        if is_list:
            if type(value) is not list or not value:
                raise Doubt
            items = value
        else:
            if type(value) is list:
                raise Doubt
            items = (value,)
        if kind == "complex":
            for item in items:
                _element(payload, item, is_resource=False)
        elif kind == "resource":
            for item in items:
                validate_fast(item)
        elif kind == "ext":
            for item in items:
                if item is not None:
                    _element(_ext_class(), item, is_resource=False)
        else:
            for item in items:
                _prim(kind, payload, item)
    for key, fs in spec.items():
        if fs[3] and key not in node and f"_{key}" not in node:
            raise Doubt
    groups = _groups(cls)
    if groups:
        for keys, req in groups.values():
            present = sum(1 for k in keys if k in node)
            if present > 1 or (req and present == 0):
                raise Doubt


@lru_cache(maxsize=1)
def _ext_class() -> type:
    from fhir.resources.R4B.element import Element

    return Element


def validate_fast(resource: Any) -> None:
    """Raise Doubt unless the resource is certainly valid."""
    from joinedup.fhir.validation import model_class

    if type(resource) is not dict:
        raise Doubt
    cls = model_class(resource.get("resourceType"))
    if cls is None:
        raise Doubt
    _element(cls, resource, is_resource=True)


def is_certainly_valid(resource: Any) -> bool:
    try:
        validate_fast(resource)
    except Doubt:
        return False
    except (TypeError, RecursionError):
        return False
    return True
