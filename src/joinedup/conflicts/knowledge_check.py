"""`joinedup knowledge check`: validate every file of a conflict knowledge directory and report one line per problem.

Checks (each problem names the file and the rule or code):
- every rule has an id (unique across the files), a known kind, a severity, a review date and sources, at least one
  of which names a document that can be found again (a URL, DOI, PMID/PMC id, a guideline number such as NICE
  NG28, an MHRA Drug Safety Update with its date, a STOPP/START criterion, a BNF/SmPC/label entry or a journal
  citation);
- a rule marked `verified: false` is never high or critical (nor is any of its dose bands);
- every class, ingredient, condition and result a rule (or a class membership, guidance entry or resolution step)
  names is defined in medicines.yaml, terminology/medicines.yaml, conditions.yaml or the result definitions;
- codes are well formed (`codes.py`): SNOMED CT and dm+d ids (Verhoeff check digit, concept partition), RxNorm
  (numeric), LOINC (mod 10 check digit), ICD-10 (pattern);
- every rule has a firing vignette with a close case that must stay silent (conflicts/vignettes.yaml, linked by
  `expect: RULE`), and running them through detection gives what they say.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from .catalogue import (
    DOSING_FILE,
    LIFESTYLE_FILE,
    SEVERITIES,
    VIGNETTES_FILE,
    KnowledgeFileError,
    raw_rules,
    read_vignettes,
    read_yaml,
    uses,
)
from .codes import dmd_problem, icd10_prefix_problem, loinc_problem, rxnorm_problem, snomed_problem
from .knowledge import RULE_FILES, knowledge_from
from .rules import KINDS
from .vignettes import run as run_vignette

_CITABLE = re.compile(
    r"https?://|\bdoi\b|\b10\.\d{4,}/|\bPMID\b|\bPMC\d+|"                       # URLs, DOIs, PubMed
    r"\bNICE\b|\b(NG|CG|TA|QS|KTT|PH|SC)\d+|\bSIGN\s?\d+|\bCKS\b|"                # NICE / SIGN guidance numbers
    r"\bMHRA\b|Drug Safety Update|\bDSU\b|"                                        # MHRA Drug Safety Update
    r"\bSTOPP\b|\bSTART\b|\bBNF\b|\bSmPCs?\b|\bFDA\b|\bEMA\b|label|"               # criteria, formularies, labels
    r"\b(19|20)\d\d;\s?\d+|\bet al\b|"                                              # journal citations
    r"CredibleMeds|Stockley|UKMi|Medsafe|bpac|\bSPS\b|GPnotebook|KDIGO|"           # named references
    r"\bACB\b|acbcalc|Beers|PrescQIPP|BMJ|Lancet",
    re.I,
)
_V3_ITEM = re.compile(r"^(STOPP|START) [A-M]\d{1,2}(, [A-M]\d{1,2})*$")
V3_ITEM_SOURCES = ("appendix", "reproduction")
_CRITERION = re.compile(r"^(STOPP|START) v[23] ([A-N]\d{1,2})( \(.*\))?$|^(START) v[23] ([A-N]\d{1,2})$")
RESULT_METRICS = ("egfr", "crcl")


class _Problems(list[str]):
    def add(self, where: str, msg: str) -> None:
        self.append(f"{where}: {msg}")


def _defined(root: Path) -> dict[str, set[str]]:
    meds = read_yaml(root, "medicines.yaml")
    term_meds = read_yaml(root, "terminology/medicines.yaml")
    conds = read_yaml(root, "conditions.yaml")
    results: set[str] = set()
    for name in ("conflicts/rules.yaml", *RULE_FILES):
        results |= set((read_yaml(root, name).get("results") or {}).keys())
    results |= set((read_yaml(root, "terminology/results.yaml").get("results") or {}).keys())
    return {
        "classes": set((meds.get("classes") or {}).keys()),
        "ingredients": set((meds.get("medicines") or {}).keys()) | set((term_meds.get("ingredients") or {}).keys()),
        "conditions": set((conds.get("conditions") or {}).keys()),
        "results": results | set(RESULT_METRICS),
    }


def _check_rule(p: _Problems, name: str, kind: str, r: dict[str, Any], defined: dict[str, set[str]]) -> None:
    rid = r.get("id")
    where = f"{name}: rule {rid}"
    if kind not in KINDS:
        p.add(where, f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    sev = r.get("severity")
    if sev not in SEVERITIES:
        p.add(where, f"severity {sev!r} is not one of {', '.join(SEVERITIES)}")
    sources = [str(s) for s in r.get("sources") or []]
    if not sources:
        p.add(where, "no sources")
    elif not any(_CITABLE.search(s) for s in sources):
        p.add(where, "no source names a document that can be found again (URL, DOI, PMID/PMC, guideline number, "
                     "Drug Safety Update date, criterion, BNF/SmPC entry or journal citation)")
    if not r.get("review_date"):
        p.add(where, "no review_date")
    if r.get("verified") is False:
        if sev in ("high", "critical"):
            p.add(where, f"unverified rule is {sev} (an unverified rule may be at most moderate)")
        for b in r.get("bands") or []:
            if b.get("severity") in ("high", "critical"):
                p.add(where, f"unverified rule has a {b['severity']} band (below {b.get('below')})")
    crit = r.get("criterion")
    if crit and not _CRITERION.match(str(crit)):
        p.add(where, f"criterion {crit!r} is not of the form 'STOPP v3 B4' / 'START v2 A1'")
    _check_v3_item(p, where, r)
    classes, ings, conds, results = uses(r)
    for c in classes:
        if c not in defined["classes"]:
            p.add(where, f"class {c!r} is not defined (medicines.yaml classes)")
    for i in ings:
        if i not in defined["ingredients"]:
            p.add(where, f"ingredient {i!r} is not defined (medicines.yaml or terminology/medicines.yaml)")
    for c in conds:
        if c not in defined["conditions"]:
            p.add(where, f"condition {c!r} is not defined (conditions.yaml)")
    for res in results:
        if res not in defined["results"]:
            p.add(where, f"result {res!r} is not defined (results)")


def _check_v3_item(p: _Problems, where: str, r: dict[str, Any]) -> None:
    """`v3_item` ("STOPP D13", "START B1, B2" or "none") needs a `v3_item_source` ("appendix": read in the v3
    appendix; "reproduction": one unofficial reproduction, not verified); a rule whose criterion is a v3 id taken from
    the reproduction is `verified: false` and names that id as its v3 item."""
    item, src = r.get("v3_item"), r.get("v3_item_source")
    if item is None:
        if src is not None:
            p.add(where, "v3_item_source without v3_item")
        return
    if str(item) != "none" and not _V3_ITEM.match(str(item)):
        p.add(where, f"v3_item {item!r} is not of the form 'STOPP D13' / 'START B1, B2' / 'none'")
    if src not in V3_ITEM_SOURCES:
        p.add(where, f"v3_item_source {src!r} is not one of {', '.join(V3_ITEM_SOURCES)}")
    crit = re.match(r"^(STOPP|START) v3 ([A-N]\d{1,2})", str(r.get("criterion") or ""))
    if crit:
        section, number = crit.group(1), crit.group(2)
        items = str(item).split(" ", 1)
        if items[0] != section or number not in (items[1].split(", ") if len(items) > 1 else []):
            p.add(where, f"criterion {r['criterion']!r} is not among its v3_item {item!r}")
        if src == "reproduction" and r.get("verified") is not False:
            p.add(where, "a v3 criterion read only in the reproduction must be marked verified: false")


def _check_codes(p: _Problems, root: Path) -> None:
    meds = read_yaml(root, "medicines.yaml")
    for key, m in (meds.get("medicines") or {}).items():
        for code in (m or {}).get("rxnorm") or []:
            if why := rxnorm_problem(str(code)):
                p.add("medicines.yaml", f"{key}: RxNorm {code}: {why}")
        for code in ((m or {}).get("dmd") or []):
            if why := dmd_problem(str(code)):
                p.add("medicines.yaml", f"{key}: dm+d {code}: {why}")
        for code in ((m or {}).get("snomed") or []):
            if why := snomed_problem(str(code)):
                p.add("medicines.yaml", f"{key}: SNOMED CT {code}: {why}")
    for key, c in (read_yaml(root, "conditions.yaml").get("conditions") or {}).items():
        for s in (c or {}).get("snomed") or []:
            code = str(s.get("code") if isinstance(s, dict) else s)
            if why := snomed_problem(code):
                p.add("conditions.yaml", f"{key}: SNOMED CT {code}: {why}")
        for prefix in (c or {}).get("icd10") or []:
            if why := icd10_prefix_problem(str(prefix)):
                p.add("conditions.yaml", f"{key}: ICD-10 {prefix}: {why}")
    term = read_yaml(root, "terminology/medicines.yaml")
    for code in (term.get("rxnorm") or {}):
        if why := rxnorm_problem(str(code)):
            p.add("terminology/medicines.yaml", f"RxNorm {code}: {why}")
    for a in ((term.get("non_medicinal") or {}).get("allergens") or []):
        if why := snomed_problem(str(a.get("code"))):
            p.add("terminology/medicines.yaml", f"allergen SNOMED CT {a.get('code')}: {why}")
    for name in ("terminology/results.yaml", "conflicts/rules.yaml", *RULE_FILES):
        for key, r in (read_yaml(root, name).get("results") or {}).items():
            for code in (r or {}).get("loinc") or []:
                if why := loinc_problem(str(code)):
                    p.add(name, f"result {key}: LOINC {code}: {why}")
            for code in (r or {}).get("snomed") or []:
                if why := snomed_problem(str(code)):
                    p.add(name, f"result {key}: SNOMED CT {code}: {why}")
    for name, col, label, check in (("terminology/dmd/dmd_products.csv", "dmd_id", "dm+d", dmd_problem),
                                    ("terminology/codelists/snomed_conditions.csv", "code", "SNOMED CT",
                                     snomed_problem)):
        try:
            with (Path(root) / name).open(encoding="utf-8", newline="") as fh:
                for n, row in enumerate(csv.DictReader(fh), start=2):
                    if why := check(str(row.get(col) or "")):
                        p.add(name, f"line {n}: {label} {row.get(col)}: {why}")
        except FileNotFoundError:
            p.add(name, "file not found")


def _check_definitions(p: _Problems, root: Path, defined: dict[str, set[str]], rule_ids: set[str]) -> None:
    meds = read_yaml(root, "medicines.yaml")
    for cls, spec in (meds.get("classes") or {}).items():
        for imp in (spec or {}).get("implies") or []:
            if imp not in defined["classes"]:
                p.add("medicines.yaml", f"class {cls}: implies undefined class {imp!r}")
    for key, m in (meds.get("medicines") or {}).items():
        for cls in (m or {}).get("classes") or []:
            if cls not in defined["classes"]:
                p.add("medicines.yaml", f"{key}: class {cls!r} is not defined")
    for cls, spec in (meds.get("class_members") or {}).items():
        if cls not in defined["classes"]:
            p.add("medicines.yaml", f"class_members: class {cls!r} is not defined")
        for ing in (spec or {}).get("members") or []:
            if ing not in defined["ingredients"]:
                p.add("medicines.yaml", f"class_members {cls}: ingredient {ing!r} is not defined")
    for cond, g in (read_yaml(root, "conflicts/guidance.yaml").get("guidance") or {}).items():
        where = f"conflicts/guidance.yaml: {cond}"
        if cond not in defined["conditions"]:
            p.add(where, "condition is not defined (conditions.yaml)")
        classes = list((g or {}).get("treats_classes") or []) + list(((g or {}).get("alternatives") or {}).keys())
        ings: list[str] = [i for alts in ((g or {}).get("alternatives") or {}).values() for i in alts or []]
        for step in (g or {}).get("steps") or []:
            classes += step.get("classes") or []
            ings += step.get("preferred") or []
        for c in dict.fromkeys(classes):
            if c not in defined["classes"]:
                p.add(where, f"class {c!r} is not defined")
        for i in dict.fromkeys(ings):
            if i not in defined["ingredients"]:
                p.add(where, f"ingredient {i!r} is not defined")
    resolution = read_yaml(root, "conflicts/resolution.yaml").get("resolution") or {}
    for block in ("stop_first", "keep_while"):
        for item in resolution.get(block) or []:
            classes, ings, _c, _r = uses({"drugs": [item.get("drugs") or {}]})
            for c in classes:
                if c not in defined["classes"]:
                    p.add("conflicts/resolution.yaml", f"{block}: class {c!r} is not defined")
            for i in ings:
                if i not in defined["ingredients"]:
                    p.add("conflicts/resolution.yaml", f"{block}: ingredient {i!r} is not defined")
            for rid in item.get("except_rules") or []:
                if rid not in rule_ids:
                    p.add("conflicts/resolution.yaml", f"{block}: except_rules names unknown rule {rid!r}")
    for r in read_yaml(root, DOSING_FILE).get("rules") or []:
        for b in r.get("bands") or []:
            for key in ("raised_by", "absorbs"):
                if b.get(key) and b[key] not in rule_ids:
                    p.add(DOSING_FILE, f"rule {r.get('id')}: band below {b.get('below')}: {key} names unknown rule "
                                       f"{b[key]!r}")
    lifestyle_ids = {str(ls.get("id")) for g in (read_yaml(root, "conflicts/guidance.yaml").get("guidance") or {})
                     .values() for ls in (g or {}).get("lifestyle") or []}
    for r in read_yaml(root, LIFESTYLE_FILE).get("clashes") or []:
        for a in r.get("advice") or []:
            if a not in lifestyle_ids:
                p.add(LIFESTYLE_FILE, f"rule {r.get('id')}: advice {a!r} is not a guidance lifestyle id")


def check_knowledge(root: Path, *, run_vignettes: bool = True) -> list[str]:
    """Every problem found in the knowledge directory `root` (empty when it is sound)."""
    root = Path(root)
    p = _Problems()
    try:
        rules = raw_rules(root)
        defined = _defined(root)
        vignettes = read_vignettes(root)
    except KnowledgeFileError as exc:
        return [str(exc)]
    ids: dict[str, str] = {}
    for name, kind, r in rules:
        rid = r.get("id")
        if not rid:
            p.add(name, f"a rule has no id (summary {r.get('summary')!r})")
            continue
        if rid in ids:
            p.add(name, f"rule {rid}: id already used in {ids[rid]}")
        ids.setdefault(str(rid), name)
        _check_rule(p, name, kind, r, defined)
    _check_definitions(p, root, defined, set(ids))
    _check_codes(p, root)
    firing: dict[str, list[dict[str, Any]]] = {}
    seen_vignettes: set[str] = set()
    for v in vignettes:
        vid = str(v.get("id"))
        if vid in seen_vignettes:
            p.add(VIGNETTES_FILE, f"vignette {vid}: id used twice")
        seen_vignettes.add(vid)
        if v.get("quiet"):
            continue
        rid = v.get("expect")
        if rid not in ids:
            p.add(VIGNETTES_FILE, f"vignette {vid}: expects unknown rule {rid!r}")
            continue
        if not isinstance(v.get("close"), dict) or not v["close"]:
            p.add(VIGNETTES_FILE, f"vignette {vid}: no close case")
        if not v.get("source"):
            p.add(VIGNETTES_FILE, f"vignette {vid}: no source")
        firing.setdefault(str(rid), []).append(v)
    for rid, name in ids.items():
        if not any(isinstance(v.get("close"), dict) and v["close"] for v in firing.get(rid, [])):
            p.add(name, f"rule {rid}: no vignette with a firing case and a close non-firing case "
                        f"({VIGNETTES_FILE}, expect: {rid})")
    if run_vignettes:
        try:
            kb = knowledge_from(root)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            p.add("knowledge", f"does not compile: {exc}")
            return list(p)
        for v in vignettes:
            if v.get("quiet") or v.get("expect") in ids:
                for msg in run_vignette(kb, v):
                    p.append(f"{VIGNETTES_FILE}: {msg}")
    return list(p)
