"""The CapabilityStatement, built from what the server really supports."""

from __future__ import annotations

from functools import lru_cache

from joinedup import __version__
from joinedup.fhir.search_params import COMMON, SearchParameters

INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create",
                "search-type"]
DOC = "https://hl7.org/fhir/R4/searchparameter-registry.html"


@lru_cache(maxsize=4)
def _rest_resources(params: SearchParameters) -> tuple:
    out = []
    for rtype in sorted(params.by_type):
        search = [{"name": name, "type": t, "documentation": "Supported on every type"} for name, t in COMMON.items()]
        not_served = dict(params.unsupported.get(rtype, {}))
        for p in params.params(rtype).values():
            if p.type in ("composite", "special"):
                not_served[p.name] = f"{p.type} parameters are not supported"
                continue
            entry = {"name": p.name, "type": p.type}
            if (rtype, p.name) in params.urls:
                entry["definition"] = params.urls[(rtype, p.name)]
            search.append(entry)
        ref_params = [p.name for p in params.params(rtype).values() if p.type == "reference"]
        entry = {
            "type": rtype,
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "not-supported",
            "searchInclude": [f"{rtype}:{n}" for n in ref_params] + ["*"],
            "searchRevInclude": ["*"],
            "searchParam": search,
        }
        if not_served:
            entry["documentation"] = ("FHIR R4 search parameters of this type not supported (a search by one of "
                                      "them alone is refused with 400; with other filters it is ignored and "
                                      "reported): " + "; ".join(f"{n} ({why})" for n, why in sorted(not_served.items())))
        if rtype == "Patient":
            entry["operation"] = [
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
            ]
        out.append(entry)
    return tuple(out)


def capability_statement(base: str, params: SearchParameters, *, max_body_bytes: int | None = None,
                         max_bundle_entries: int | None = None, max_page_size: int | None = None) -> dict:
    """A CapabilityStatement for this server at `base` (stating its request limits when given)."""
    limits = []
    if max_body_bytes:
        limits.append(f"request bodies of at most {max_body_bytes:,} bytes")
    if max_bundle_entries:
        limits.append(f"at most {max_bundle_entries:,} entries in one batch or transaction Bundle")
    if max_page_size:
        limits.append(f"pages of at most {max_page_size:,} entries (_count), _offset up to 10,000,000")
    documentation = ("Resources of every FHIR R4 type can be stored and read; the types listed here also support "
                     "search. Every request needs a bearer token.")
    if limits:
        documentation += " Limits: " + "; ".join(limits) + " (413 or 400 with an OperationOutcome beyond them)."
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "JoinedUp",
        "kind": "instance",
        "software": {"name": "JoinedUp", "version": __version__},
        "implementation": {"description": "JoinedUp shared care record", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": [],
        "rest": [{
            "mode": "server",
            "documentation": documentation,
            "security": {"cors": True, "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth",
                "display": "OAuth"}]}],
                "description": "Bearer tokens from `joinedup token NAME` or the OAuth2 password grant at /auth/token"},
            "resource": list(_rest_resources(params)),
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "operation": [{"name": "export",
                           "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
        }],
    }
