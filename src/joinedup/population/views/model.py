"""What the compiler knows about FHIR R4 elements: whether each is a list, its type, and the choice elements.

Read from the fhir.resources R4B models (R4B's resources are R4's, with the same element cardinalities), so a
path such as `name.given` compiles to the JSON path `$.name[*].given[*]` and `subject.reference` to
`$.subject.reference` — what a person writing the SQL by hand would write. An element the models do not know
is handled without that knowledge (as a collection of unknown type).
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from functools import cache

from joinedup.fhir.fastvalid import unwrap_annotation

PRIMITIVES = {"boolean", "integer", "integer64", "string", "decimal", "uri", "url", "canonical", "base64Binary",
              "instant", "date", "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt", "positiveInt",
              "uuid", "xhtml"}
_FORMAT_TYPES = {"Integer": "integer", "DateTime": "dateTime", "Uri": "uri", "Instant": "instant", "Code": "code",
                 "String": "string", "Markdown": "markdown", "PositiveInt": "positiveInt", "Date": "date",
                 "Time": "time", "EncodedBytes": "base64Binary", "Oid": "oid", "Decimal": "decimal",
                 "UuidVersion": "uuid", "Id": "id", "Url": "url", "Canonical": "canonical",
                 "UnsignedInt": "unsignedInt", "Xhtml": "xhtml", "Integer64": "integer64"}
STRING_LIKE = {"string", "uri", "url", "canonical", "base64Binary", "instant", "date", "dateTime", "time", "code",
               "oid", "id", "markdown", "uuid", "xhtml"}
INTEGER_LIKE = {"integer", "unsignedInt", "positiveInt", "integer64"}


@dataclass(frozen=True)
class Element:
    name: str  # the JSON key
    is_list: bool
    type: str | None  # FHIR type name (HumanName, string, ...); None when unknown
    klass: type | None  # the model of a complex type, for the next step


@dataclass(frozen=True)
class Choice:
    name: str  # value (for value[x])
    variants: tuple[Element, ...]
    is_list: bool = False


def _klass(abc_type: type) -> type | None:
    ref = getattr(abc_type, "_model_klass", None)
    if ref is None:
        return None
    if isinstance(ref, type):
        return ref
    module, _, name = str(ref).rpartition(".")
    return getattr(importlib.import_module(module), name, None)


@cache
def resource_class(resource_type: str) -> type | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    if cls.__name__ != resource_type or not hasattr(cls, "get_resource_type"):
        return None
    return cls


def is_resource_type(name: str) -> bool:
    return bool(name) and name[:1].isupper() and resource_class(name) is not None


def type_name_of(klass: type) -> str:
    """The FHIR type of a model: backbone elements count as BackboneElement."""
    name = klass.__name__
    try:
        from fhir.resources.R4B.backboneelement import BackboneElement

        if issubclass(klass, BackboneElement) and name != "BackboneElement":
            return "BackboneElement"
    except ImportError:  # pragma: no cover - fhir.resources is a dependency
        pass
    return name


@cache
def children(klass: type) -> dict[str, Element | Choice]:
    """The elements of a model by JSON key, with each choice element (value[x]) under its group name too."""
    out: dict[str, Element | Choice] = {}
    groups: dict[str, list[Element]] = {}
    for name, info in klass.model_fields.items():
        key = info.alias or name
        if key.endswith("__ext") or key.startswith("_") or name == "fhir_comments":
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        ann, is_list = unwrap_annotation(info.annotation)
        ftype: str | None = None
        sub: type | None = None
        if ann is bool:
            ftype = "boolean"
        elif typing.get_origin(ann) is typing.Annotated:
            _, *meta = typing.get_args(ann)
            ftype = _FORMAT_TYPES.get(type(meta[0]).__name__) if meta else None
        elif isinstance(ann, type) and hasattr(ann, "_model_klass"):
            sub = _klass(ann)
            if ann.__name__ == "ResourceType":
                ftype, sub = "Resource", None
            elif sub is not None:
                ftype = type_name_of(sub)
        group = extra.get("one_of_many")
        if group and key.startswith(group):
            suffix = key[len(group):]
            if suffix[:1].lower() + suffix[1:] in PRIMITIVES:
                ftype = suffix[:1].lower() + suffix[1:]
        element = Element(key, is_list, ftype, sub)
        out[key] = element
        if group:
            groups.setdefault(group, []).append(element)
    for group, variants in groups.items():
        if group not in out:
            out[group] = Choice(group, tuple(variants))
    return out


def choice_key(group: str, type_name: str) -> str:
    """valueQuantity for value.ofType(Quantity), deceasedBoolean for deceased.ofType(boolean)."""
    return group + type_name[:1].upper() + type_name[1:]
