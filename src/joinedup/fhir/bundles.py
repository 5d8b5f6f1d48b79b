"""Bundle helpers: entry ordering, urn:uuid reference rewriting, search-set assembly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError

METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def check_bundle(bundle: Any) -> str:
    """Check a posted Bundle's shape; return its type."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base URL needs a Bundle", code="structure", expression=["resourceType"])
    btype = bundle.get("type")
    if btype not in ("transaction", "batch"):
        raise FhirError(400, f"Bundle.type must be transaction or batch, not '{btype}'", code="value",
                        expression=["Bundle.type"])
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "Bundle.entry must be a list", code="structure", expression=["Bundle.entry"])
    for i, e in enumerate(entries):
        req = e.get("request") if isinstance(e, dict) else None
        if not isinstance(req, dict) or req.get("method") not in METHOD_ORDER or not isinstance(req.get("url"), str):
            raise FhirError(400, f"Bundle.entry[{i}].request needs a method (GET, POST, PUT, DELETE) and a url",
                            code="required", expression=[f"Bundle.entry[{i}].request"])
        if req["method"] in ("POST", "PUT") and not isinstance(e.get("resource"), dict):
            raise FhirError(400, f"Bundle.entry[{i}] ({req['method']}) has no resource", code="required",
                            expression=[f"Bundle.entry[{i}].resource"])
    return btype


def split_url(url: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """(type, id or None, query params) of a relative request URL such as 'Patient/1' or 'Patient?x=y'."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    segs = path.split("/") if path else []
    if not segs:
        raise FhirError(400, f"request url '{url}' names no resource type", code="value")
    rtype = segs[0]
    rid = segs[1] if len(segs) > 1 else None
    return rtype, rid, parse_qsl(parts.query, keep_blank_values=True)


def rewrite_references(node: Any, mapping: dict[str, str]) -> Any:
    """Replace references found in mapping (e.g. urn:uuid:… → Patient/123) throughout a resource."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in mapping:
                node[k] = mapping[v]
            elif isinstance(v, (dict, list)):
                rewrite_references(v, mapping)
    elif isinstance(node, list):
        for item in node:
            rewrite_references(item, mapping)
    return node


def conditional_references(node: Any, out: set[str] | None = None) -> set[str]:
    """Every conditional reference ('Type?param=value') in a resource."""
    out = set() if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and "?" in v and v[:1].isupper():
                out.add(v)
            elif isinstance(v, (dict, list)):
                conditional_references(v, out)
    elif isinstance(node, list):
        for item in node:
            conditional_references(item, out)
    return out


def searchset(entries: list[dict[str, Any]], *, total: int | None, links: list[dict[str, str]]) -> dict:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = entries
    return bundle


def apply_elements(resource: dict, elements: list[str]) -> dict:
    """Keep only the named top-level elements (plus id, meta, resourceType), marked SUBSETTED."""
    keep = {"resourceType", "id", "meta", *elements}
    out = {k: v for k, v in resource.items() if k in keep}
    return mark_subsetted(out)


def mark_subsetted(resource: dict) -> dict:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    tags.append({"system": codes.V3_OBSERVATION_VALUE, "code": "SUBSETTED"})
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


_SUMMARY_CACHE: dict[str, set[str]] = {}


def summary_elements(rtype: str) -> set[str]:
    """Top-level elements marked isSummary in the R4B model of a type."""
    if rtype in _SUMMARY_CACHE:
        return _SUMMARY_CACHE[rtype]
    from joinedup.fhir.validation import model_class

    names = {"resourceType", "id", "meta", "implicitRules"}
    cls = model_class(rtype)
    if cls is not None:
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra or {}
            if isinstance(extra, dict) and extra.get("summary_element_property"):
                names.add(info.alias or name)
    _SUMMARY_CACHE[rtype] = names
    return names


def apply_summary(resource: dict, mode: str) -> dict:
    """_summary=true|text|data applied to one resource."""
    rtype = resource.get("resourceType", "")
    if mode == "true":
        keep = summary_elements(rtype)
        out = {k: v for k, v in resource.items() if k in keep}
    elif mode == "text":
        out = {k: v for k, v in resource.items() if k in ("resourceType", "id", "meta", "text")}
    elif mode == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        return resource
    return mark_subsetted(out)


Resolver = Callable[[str], "str | None"]
