"""Regenerate r4/required-concepts.json: the CodeableConcept and Coding elements of every R4 resource type whose
binding is REQUIRED, with the codes of their value set where the value set is fully enumerable from the FHIR 4.0.1
definitions (code systems defined by the specification itself; value sets with filters or external code systems
such as SNOMED CT are left out, and so are left unchecked).

    python -m joinedup.fhir.definitions.build_bindings DIR

DIR holds the specification's `*.profile.json`, `valueset-*.json` and `codesystem-*.json` files (FHIR 4.0.1, e.g.
the fhir-ru/fhir-ru.github.io mirror of the specification or the hl7.fhir.r4.core 4.0.1 package; CC0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "r4" / "required-concepts.json"


def _concepts(concepts: list[dict]) -> list[str]:
    out: list[str] = []
    for c in concepts or []:
        if "code" in c:
            out.append(c["code"])
        out.extend(_concepts(c.get("concept") or []))
    return out


def build(folder: Path) -> dict:
    systems: dict[str, list[str]] = {}
    for f in folder.glob("codesystem-*.json"):
        cs = json.loads(f.read_text())
        if cs.get("resourceType") == "CodeSystem" and cs.get("content") == "complete" and cs.get("url"):
            systems[cs["url"]] = _concepts(cs.get("concept") or [])
    valuesets: dict[str, dict[str, list[str]] | None] = {}
    for f in folder.glob("valueset-*.json"):
        vs = json.loads(f.read_text())
        if vs.get("resourceType") != "ValueSet" or not vs.get("url"):
            continue
        compose = vs.get("compose") or {}
        codes: dict[str, list[str]] | None = {}
        if compose.get("exclude"):
            codes = None
        for inc in compose.get("include") or []:
            if codes is None or inc.get("filter") or inc.get("valueSet") or not inc.get("system"):
                codes = None
                break
            if inc.get("concept"):
                codes.setdefault(inc["system"], []).extend(c["code"] for c in inc["concept"])
            elif inc["system"] in systems:
                codes.setdefault(inc["system"], []).extend(systems[inc["system"]])
            else:
                codes = None
        valuesets[vs["url"]] = codes or None
    out: dict[str, dict] = {}
    for f in sorted(folder.glob("*.profile.json")):
        sd = json.loads(f.read_text())
        if sd.get("kind") != "resource" or sd.get("derivation") != "specialization" or sd.get("abstract"):
            continue
        rtype = sd["type"]
        for e in sd["snapshot"]["element"]:
            b = e.get("binding") or {}
            types = {t["code"] for t in e.get("type") or []}
            if b.get("strength") != "required" or not types & {"CodeableConcept", "Coding"} or "[x]" in e["path"]:
                continue
            url = (b.get("valueSet") or "").split("|")[0]
            codes = valuesets.get(url)
            if not codes:
                continue
            out.setdefault(rtype, {})[e["path"].split(".", 1)[1]] = {
                "valueSet": url, "type": sorted(types & {"CodeableConcept", "Coding"})[0],
                "codes": {s: sorted(set(c)) for s, c in sorted(codes.items())}}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m joinedup.fhir.definitions.build_bindings DIR", file=sys.stderr)
        return 2
    data = build(Path(argv[0]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"fhirVersion": "4.0.1", "elements": data}, indent=1, sort_keys=True) + "\n")
    print(f"{sum(len(v) for v in data.values())} required CodeableConcept/Coding elements in {len(data)} types")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
