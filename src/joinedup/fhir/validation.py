"""Validation at the edge: JSON shape, resource type, the R4B model, NHS numbers."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

import orjson

from joinedup.fhir.errors import FhirError
from joinedup.fhir.fastvalid import check_required_codes, is_certainly_valid, model_class
from joinedup.fhir.nhs_number import NHS_NUMBER_SYSTEM, is_valid

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_NHS_SYSTEM_BYTES = NHS_NUMBER_SYSTEM.encode()


def is_resource_type(name: str) -> bool:
    """True when name is a FHIR resource type this server can store."""
    return model_class(name) is not None and name not in {"Bundle", "OperationOutcome", "Parameters"}


def parse_json(body: bytes) -> Any:
    """Parse a request body, refusing anything that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, f"The body is not valid JSON: {exc}", code="structure") from None


def require_type(resource: Any, expected: str | None = None) -> str:
    """Check the body is a resource (of the expected type); return its type."""
    if not isinstance(resource, dict):
        raise FhirError(400, "The body must be a JSON object holding a FHIR resource", code="structure")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirError(400, "The resource has no resourceType", code="required", expression=["resourceType"])
    if model_class(rtype) is None:
        raise FhirError(400, f"Unknown resource type '{rtype}'", code="not-supported",
                        expression=["resourceType"])
    if expected and rtype != expected:
        raise FhirError(400, f"resourceType '{rtype}' does not match the URL's type '{expected}'",
                        code="invalid", expression=["resourceType"])
    return rtype


def _location(rtype: str, loc: tuple) -> str:
    out = rtype
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("__root__",):
            continue
        else:
            out += f".{part}"
    return out


def validate_resource(resource: Any, expected: str | None = None, *, serialized: bytes | None = None) -> str:
    """Validate a resource fully (structure, R4B model, NHS numbers); return its type or raise FhirError.

    The fast structural validator settles the common case; anything it doubts goes to the R4B models.
    """
    rtype = require_type(resource, expected)
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        raise FhirError(422, f"Resource id '{rid}' is not a valid FHIR id", expression=[f"{rtype}.id"])
    if is_certainly_valid(resource):
        if serialized is None or _NHS_SYSTEM_BYTES in serialized:
            check_nhs_numbers(resource, rtype)
        if rtype in _required_concepts():
            check_required_concepts(resource, rtype)
        return rtype
    from pydantic import ValidationError  # (the models: only for what the fast validator doubts)

    try:
        model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors()[:20]:
            where = _location(rtype, tuple(err.get("loc") or ()))
            issues.append({"severity": "error", "code": "invalid",
                           "diagnostics": f"{where}: {err.get('msg')}", "expression": [where]})
        raise FhirError(422, issues[0]["diagnostics"], issues=issues) from None
    except (ValueError, TypeError) as exc:
        raise FhirError(422, f"{rtype}: {exc}") from None
    check_required_codes(resource)  # the models take any code; a required value set's codes are checked here
    check_required_concepts(resource, rtype)
    check_nhs_numbers(resource, rtype)
    return rtype


@cache
def _required_concepts() -> dict[str, list[tuple[list[str], str, str, dict[str, frozenset[str]]]]]:
    """{type: [(element path parts, path, value set, {system: codes})]} from fhir/definitions/r4/required-concepts.json
    (generated from the FHIR 4.0.1 definitions by joinedup.fhir.definitions.build_bindings)."""
    doc = json.loads(resources.files("joinedup.fhir.definitions").joinpath("r4/required-concepts.json").read_text())
    return {rtype: [(path.split("."), path, spec["valueSet"], {s: frozenset(c) for s, c in spec["codes"].items()})
                    for path, spec in sorted(elements.items())]
            for rtype, elements in doc["elements"].items()}


def _at(node: Any, parts: list[str], where: str):
    """(path, value) of every occurrence of an element path inside a resource (lists expanded)."""
    if not parts:
        yield where, node
        return
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _at(item, parts, f"{where}[{i}]")
    elif isinstance(node, dict) and parts[0] in node:
        value = node[parts[0]]
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _at(item, parts[1:], f"{where}.{parts[0]}[{i}]")
        else:
            yield from _at(value, parts[1:], f"{where}.{parts[0]}")


def check_required_concepts(resource: dict, rtype: str) -> None:
    """A CodeableConcept or Coding element with a REQUIRED binding (Condition.clinicalStatus and
    verificationStatus, AllergyIntolerance.clinicalStatus and verificationStatus, ...) must carry a code from its
    value set: a coding in the value set's code system with a code outside it, or no coding from the value set at
    all, is refused with 422 "code-invalid" naming the element. The models accept any coding."""
    for parts, _path, value_set, allowed in _required_concepts().get(rtype, ()):
        for where, value in _at(resource, parts, rtype):
            if not isinstance(value, dict):
                continue
            codings = value.get("coding") if "coding" in value or "text" in value else [value]
            codings = [c for c in codings or [] if isinstance(c, dict)]
            ours = [c for c in codings if c.get("system") in allowed]
            for c in ours:
                if c.get("code") not in allowed[c["system"]]:
                    raise FhirError(422, f"{where}: '{c.get('code')}' is not a code of {value_set} (required "
                                         f"binding: {' | '.join(sorted(allowed[c['system']]))})",
                                    code="code-invalid", expression=[where])
            if not ours:
                systems = ", ".join(sorted(allowed))
                raise FhirError(422, f"{where}: a coding from {systems} is required (required binding to "
                                     f"{value_set})", code="code-invalid", expression=[where])


def check_nhs_numbers(resource: dict, rtype: str) -> None:
    """Refuse any identifier with the NHS number system whose value fails the modulus 11 check."""
    for path, value in _nhs_identifiers(resource, rtype):
        if not is_valid(value):
            raise FhirError(422, f"{path} has NHS number '{value}', which fails the modulus 11 check",
                            code="value", expression=[path])


def _nhs_identifiers(node: Any, path: str):
    if isinstance(node, dict):
        if node.get("system") == NHS_NUMBER_SYSTEM and "value" in node:
            yield path, str(node.get("value"))
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from _nhs_identifiers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _nhs_identifiers(item, f"{path}[{i}]")
