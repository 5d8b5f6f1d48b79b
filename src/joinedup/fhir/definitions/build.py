"""Regenerate the shipped FHIR R4 search-parameter and compartment data from the official definitions.

    python -m joinedup.fhir.definitions.build SEARCH_PARAMETERS_JSON COMPARTMENT_JSON... [--out DIR]

SEARCH_PARAMETERS_JSON is the R4 (4.0.1) `search-parameters.json` Bundle of SearchParameter resources and each
COMPARTMENT_JSON a `compartmentdefinition-*.json` CompartmentDefinition of the same release (see README.md here for
where to get them). The FHIRPath expression of every parameter is translated into the plain path language of
`joinedup.fhir.search_params` (dotted element names, `name[x]` for any choice, a named choice such as `valueQuantity`,
`seg[field=value]` for `.where(field='value')`, and `target` for `.where(resolve() is Type)`). An expression outside
that language is kept with the reason, and the server reports that parameter as unsupported.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
OUT = HERE / "r4"
ANY_TYPE = 100  # Reference(Any) is spelt out as every resource type (145 in R4)
ENGINE = {"Resource", "DomainResource"}  # _id, _lastUpdated, _tag, ... are served by the engine for every type
_AS = re.compile(r"^\(?(?P<path>[A-Za-z][A-Za-z0-9_.]*)\s+as\s+(?P<type>[A-Za-z]+)\)?$")
_AS_THEN = re.compile(r"^\((?P<path>[A-Za-z][A-Za-z0-9_.]*)\s+as\s+(?P<type>[A-Za-z]+)\)\.(?P<rest>[A-Za-z0-9_.]+)$")
_AS_FN = re.compile(r"^(?P<path>[A-Za-z][A-Za-z0-9_.]*)\.as\((?P<type>[A-Za-z]+)\)$")
_WHERE_RESOLVE = re.compile(r"^(?P<path>.+)\.where\(resolve\(\) is (?P<type>[A-Za-z]+)\)$")
_WHERE_EQ = re.compile(r"\.where\((?P<field>[A-Za-z]+)\s*=\s*'(?P<value>[^']*)'\)")
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\[[A-Za-z]+=[^\]]+\])?$")


class Untranslatable(ValueError):
    """An expression the plain path language cannot say."""


def split_union(expression: str) -> list[str]:
    """Top-level `|` alternatives of a FHIRPath expression (not those inside parentheses or quotes)."""
    out, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == "|":
            out.append(expression[start:i].strip())
            start = i + 1
    out.append(expression[start:].strip())
    return [t for t in out if t]


def _choice_names(xpath: str | None) -> set[str]:
    return set(re.findall(r"f:([A-Za-z][A-Za-z0-9]*)", xpath or ""))


def translate(term: str, rtype: str, xpath: str | None) -> tuple[str, str | None]:
    """(path, target type or None) for one FHIRPath alternative rooted at `rtype`."""
    term = term.strip()
    while term.startswith("(") and term.endswith(")") and term.count("(") == term.count(")") == 1:
        term = term[1:-1].strip()
    target = None
    m = _AS_THEN.match(term)
    if m:  # (Observation.value as CodeableConcept).text -> Observation.valueCodeableConcept.text
        head, _, last = m["path"].rpartition(".")
        term = f"{head}.{last}{m['type'][0].upper()}{m['type'][1:]}.{m['rest']}"
    m = _WHERE_RESOLVE.match(term)
    if m:
        term, target = m["path"], m["type"]
    choice_type = None
    m = _AS.match(term) or _AS_FN.match(term)
    if m:
        term, choice_type = m["path"], m["type"]
    term = _WHERE_EQ.sub(lambda w: f"[{w['field']}={w['value']}]", term)
    if not term.startswith(rtype + "."):
        raise Untranslatable(f"not rooted at {rtype}: {term}")
    segs = term[len(rtype) + 1:].split(".")
    if not all(_PLAIN.match(s) for s in segs):
        raise Untranslatable(f"FHIRPath beyond plain paths: {term}")
    names = _choice_names(xpath)
    out = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        base, _, rest = seg.partition("[")
        if last and choice_type:
            seg = base + choice_type[0].upper() + choice_type[1:] + (("[" + rest) if rest else "")
        elif base not in names and any(n.startswith(base) and len(n) > len(base) and n[len(base)].isupper()
                                       for n in names):
            seg = base + "[x]" + (("[" + rest) if rest else "")
        out.append(seg)
    return ".".join(out), target


def build_search(bundle: dict[str, Any]) -> dict[str, Any]:
    """{type: {code: {...}}} from the SearchParameter Bundle."""
    by_url = {e["resource"]["url"]: e["resource"] for e in bundle["entry"]}
    types: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        sp = entry["resource"]
        for rtype in sp["base"]:
            if rtype in ENGINE:
                continue
            spec: dict[str, Any] = {"type": sp["type"], "url": sp["url"]}
            expression = sp.get("expression")
            terms = split_union(expression or "")
            if len(sp["base"]) == 1:  # a few R4 expressions are relative (InsurancePlan-name: "name | alias")
                terms = [t if re.match(r"^\(?[A-Z]", t) else f"{rtype}.{t}" for t in terms]
            own = [t for t in terms if re.match(rf"^\(?{rtype}\.", t) or t == rtype]
            if own:
                spec["expression"] = " | ".join(own)
            if sp["type"] == "composite":
                spec["components"] = [by_url[c["definition"]]["code"] for c in sp.get("component") or ()
                                      if c["definition"] in by_url]
            elif sp["type"] == "special" or not own:
                spec["unsupported"] = ("a special search (not a value index)" if sp["type"] == "special"
                                       else "no FHIRPath expression in the definition")
            else:
                paths, targets, narrowing = [], set(), []
                try:
                    for term in own:
                        path, target = translate(term, rtype, sp.get("xpath"))
                        paths.append(path)
                        if target:
                            targets.add(target)
                            narrowing.append(term)
                except Untranslatable as exc:
                    spec["unsupported"] = str(exc)
                else:
                    spec["path"] = list(dict.fromkeys(paths))
                    if sp["type"] == "reference":
                        declared = sp.get("target") or []
                        # `.where(resolve() is X)` narrows the declared targets when every alternative says so
                        narrowed = len(narrowing) == len(own)
                        chosen = targets if narrowed else set(declared) | targets
                        if narrowed or len(chosen) < ANY_TYPE:  # a target list naming every type means "any"
                            spec["target"] = sorted(chosen)
            types.setdefault(rtype, {})[sp["code"]] = spec
    return {t: dict(sorted(p.items())) for t, p in sorted(types.items())}


def build_compartments(definitions: list[dict[str, Any]]) -> dict[str, Any]:
    """{compartment code: {type: [param, ...]}} in the definitions' own order."""
    out: dict[str, Any] = {}
    for cd in definitions:
        members = {r["code"]: list(r["param"]) for r in cd["resource"] if r.get("param")}
        out[cd["code"]] = {"url": cd["url"], "version": cd.get("version"), "resources": members}
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("search_parameters", type=Path)
    ap.add_argument("compartments", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    bundle = json.loads(args.search_parameters.read_text(encoding="utf-8"))
    versions = {e["resource"].get("version") for e in bundle.get("entry") or ()}
    if bundle.get("resourceType") != "Bundle" or versions != {"4.0.1"}:
        print(f"{args.search_parameters}: not the FHIR 4.0.1 SearchParameter Bundle (versions {sorted(map(str, versions))})",
              file=sys.stderr)
        return 2
    cds = [json.loads(p.read_text(encoding="utf-8")) for p in args.compartments]
    bad = [str(p) for p, cd in zip(args.compartments, cds)
           if cd.get("resourceType") != "CompartmentDefinition" or cd.get("version") not in (None, "4.0.1")]
    if bad:
        print(f"not FHIR 4.0.1 CompartmentDefinitions: {', '.join(bad)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    search = {"fhirVersion": "4.0.1", "source": "http://hl7.org/fhir/R4/search-parameters.json",
              "types": build_search(bundle)}
    comps = {"fhirVersion": "4.0.1", "source": "http://hl7.org/fhir/R4/compartmentdefinition.html",
             "compartments": build_compartments(cds)}
    (args.out / "search-parameters.json").write_text(json.dumps(search, indent=1, sort_keys=False) + "\n")
    (args.out / "compartments.json").write_text(json.dumps(comps, indent=1) + "\n")
    n = sum(len(v) for v in search["types"].values())
    unsupported = sum(1 for v in search["types"].values() for p in v.values() if "unsupported" in p)
    print(f"{len(search['types'])} types, {n} parameters ({unsupported} unsupported), "
          f"{len(comps['compartments'])} compartments -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
