"""The conflict knowledge as a catalogue of rules a person can inspect: `rule_entries` reads the rule files of a
knowledge directory (the packaged one, or a copy under review) as they are written - without compiling them - and
gives one `RuleEntry` per rule with its file, kind, severity, verification, criterion, sources and the classes,
ingredients, conditions and results it uses; `render_text`, `render_json`, `render_markdown` and `render_rule` turn
the catalogue into the `joinedup knowledge list|show` output and the generated reference page
(docs/knowledge-reference.md).

Rule files (paths relative to the knowledge directory): `conflicts/rules.yaml` and the files of
`knowledge.RULE_FILES` (`rules:`), `conflicts/lifestyle.yaml` (`clashes:`), `conflicts/schedules.yaml` (`timing:` and
`reviews:`) and `dosing.yaml` (`rules:`, kind `dose`). Vignettes (`conflicts/vignettes.yaml`) are each rule's test
cases: a firing case (`expect: RULE`) with a close case that must stay silent (`close:`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .knowledge import RULE_FILES
from .terminology import SAFE_LOADER

RULES_FILE = "conflicts/rules.yaml"
LIFESTYLE_FILE = "conflicts/lifestyle.yaml"
SCHEDULES_FILE = "conflicts/schedules.yaml"
DOSING_FILE = "dosing.yaml"
VIGNETTES_FILE = "conflicts/vignettes.yaml"
SEVERITIES = ("critical", "high", "moderate", "low")
# selector keys naming classes / ingredients (knowledge.Knowledge.selector)
_SELECTOR_LISTS = ("drugs", "unless", "indicated", "with_drugs", "exclude_drugs", "after_stopped")


class KnowledgeFileError(ValueError):
    """A knowledge file is missing or is not readable YAML (message: one line naming the file)."""


@dataclass
class RuleEntry:
    """One rule as written in its file, with what it uses."""

    id: str
    kind: str
    file: str
    severity: str
    verified: bool
    summary: str
    sources: list[str]
    review_date: str
    criterion: str = ""
    # the STOPP/START version 3 item the rule corresponds to ("STOPP D13", "START B1, B2" or "none") and where that
    # number was read: "appendix" (the v3 Appendix 1 text, verified) or "reproduction" (one unofficial reproduction
    # of Appendix 1, not verified - see v3_item_note and the rule's sources)
    v3_item: str = ""
    v3_item_source: str = ""
    v3_item_note: str = ""
    mechanism: str = ""
    detail: str = ""
    classes: list[str] = field(default_factory=list)
    ingredients: list[str] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    vignettes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def public(self) -> dict[str, Any]:
        """The JSON shape (without the raw YAML)."""
        out = asdict(self)
        out.pop("raw")
        return out


def read_yaml(root: Path, name: str) -> dict[str, Any]:
    """A knowledge file under `root`, parsed (KnowledgeFileError when missing or not YAML)."""
    path = Path(root) / name
    try:
        with path.open("r", encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=SAFE_LOADER)
    except FileNotFoundError:
        raise KnowledgeFileError(f"{name}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KnowledgeFileError(f"{name}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KnowledgeFileError(f"{name}: expected a mapping at the top level")
    return data


def _walk_selector(spec: Any, classes: list[str], ingredients: list[str]) -> None:
    if not isinstance(spec, dict):
        return
    if "class" in spec:
        classes.append(str(spec["class"]))
    classes.extend(str(c) for c in spec.get("any_class") or [])
    if "ingredient" in spec:
        ingredients.append(str(spec["ingredient"]))
    ingredients.extend(str(i) for i in spec.get("any_ingredient") or [])
    for part in spec.get("any_of") or []:
        _walk_selector(part, classes, ingredients)


def uses(rule: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(classes, ingredients, conditions, results) a rule names, in order of first mention."""
    classes: list[str] = []
    ingredients: list[str] = []
    for key in _SELECTOR_LISTS:
        for spec in rule.get(key) or []:
            _walk_selector(spec, classes, ingredients)
    classes.extend(str(c) for c in rule.get("duplicate_classes") or [])
    if rule.get("add"):
        ingredients.append(str(rule["add"]))
    if rule.get("ingredient"):
        ingredients.append(str(rule["ingredient"]))
    ingredients.extend(str(i) for i in rule.get("ingredients") or [])
    conditions = [str(c) for key in ("conditions", "conditions_any_two", "unless_conditions", "with_conditions")
                  for c in rule.get(key) or []]
    results = []
    if isinstance(rule.get("result"), dict) and rule["result"].get("code"):
        results.append(str(rule["result"]["code"]))
    if isinstance(rule.get("without_result"), dict) and rule["without_result"].get("code"):
        results.append(str(rule["without_result"]["code"]))
    for spec in rule.get("result_any") or []:
        if isinstance(spec, dict) and spec.get("code"):
            results.append(str(spec["code"]))
    if rule.get("check") == "renal":
        results.append(str(rule.get("metric", "egfr")))
    dedupe = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return dedupe(classes), dedupe(ingredients), dedupe(conditions), dedupe(results)


def _kind(rule: dict[str, Any], default: str) -> str:
    if rule.get("allergy"):
        return "allergy"
    if "burden" in rule:
        return "burden"
    return str(rule.get("kind") or default)


def raw_rules(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(file, kind, rule) for every rule in the directory's rule files, in the engine's order."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for name in (RULES_FILE, *RULE_FILES):
        for r in read_yaml(root, name).get("rules") or []:
            out.append((name, _kind(r, ""), r))
    for r in read_yaml(root, LIFESTYLE_FILE).get("clashes") or []:
        out.append((LIFESTYLE_FILE, "lifestyle", r))
    sched = read_yaml(root, SCHEDULES_FILE)
    for r in sched.get("timing") or []:
        out.append((SCHEDULES_FILE, "timing", r))
    if sched.get("reviews"):
        out.append((SCHEDULES_FILE, "reviews", sched["reviews"]))
    for r in read_yaml(root, DOSING_FILE).get("rules") or []:
        out.append((DOSING_FILE, "dose", r))
    return [(f, k, r) for f, k, r in out if isinstance(r, dict)]


def read_vignettes(root: Path) -> list[dict[str, Any]]:
    """The vignettes of a knowledge directory (conflicts/vignettes.yaml)."""
    return [v for v in read_yaml(root, VIGNETTES_FILE).get("vignettes") or [] if isinstance(v, dict)]


def rule_entries(root: Path) -> list[RuleEntry]:
    """Every rule of the knowledge directory as a RuleEntry, with the vignettes that test it."""
    by_rule: dict[str, list[str]] = {}
    for v in read_vignettes(root):
        if v.get("expect"):
            by_rule.setdefault(str(v["expect"]), []).append(str(v.get("id")))
    out = []
    for name, kind, r in raw_rules(root):
        classes, ings, conds, results = uses(r)
        out.append(RuleEntry(
            id=str(r.get("id", "")), kind=kind, file=name, severity=str(r.get("severity", "")),
            verified=r.get("verified", True) is not False, summary=str(r.get("summary", "")).strip(),
            sources=[str(s) for s in r.get("sources") or []], review_date=str(r.get("review_date", "")),
            criterion=str(r.get("criterion", "")), v3_item=str(r.get("v3_item", "") or ""),
            v3_item_source=str(r.get("v3_item_source", "") or ""),
            v3_item_note=" ".join(str(r.get("v3_item_note", "") or "").split()), mechanism=str(r.get("mechanism", "")).strip(),
            detail=" ".join(str(r.get("detail", "")).split()), classes=classes, ingredients=ings,
            conditions=conds, results=results, vignettes=by_rule.get(str(r.get("id", "")), []), raw=r,
        ))
    return out


# -- rendering ----------------------------------------------------------------------------------------------------
def render_text(entries: list[RuleEntry]) -> str:
    """One line per rule: id, kind, severity (unverified marked), criterion, summary."""
    lines = []
    for e in entries:
        sev = e.severity + ("" if e.verified else " (unverified)")
        crit = f" [{e.criterion}]" if e.criterion else ""
        lines.append(f"{e.id}  {e.kind}  {sev}{crit}  {e.summary}")
    lines.append(f"{len(entries)} rules")
    return "\n".join(lines)


def render_json(entries: list[RuleEntry]) -> str:
    """The catalogue as JSON: {"rules": [...], "count"}."""
    return json.dumps({"rules": [e.public() for e in entries], "count": len(entries)}, indent=2, ensure_ascii=False)


def render_rule(e: RuleEntry) -> str:
    """Everything about one rule, as text (`joinedup knowledge show RULE`)."""
    lines = [f"{e.id}: {e.summary}", f"  kind: {e.kind}", f"  severity: {e.severity}",
             f"  verified: {'yes' if e.verified else 'no (never high or critical)'}", f"  file: {e.file}"]
    if e.criterion:
        lines.append(f"  criterion: {e.criterion}")
    if e.v3_item:
        lines.append(f"  STOPP/START v3 item: {v3_label(e)}")
    if e.mechanism:
        lines.append(f"  mechanism: {e.mechanism}")
    if e.detail:
        lines.append(f"  detail: {e.detail}")
    for label, items in (("classes", e.classes), ("ingredients", e.ingredients), ("conditions", e.conditions),
                         ("results", e.results)):
        if items:
            lines.append(f"  {label}: {', '.join(items)}")
    raw = e.raw
    for key in ("age_min", "age_max", "sex", "childbearing_potential", "min_days", "regular_only", "distinct",
                "routes", "exclude_routes", "stopped_min_days", "acting", "unless_acting"):
        if key in raw:
            lines.append(f"  {key}: {raw[key]}")
    if isinstance(raw.get("without_result"), dict):
        w = raw["without_result"]
        lines.append(f"  without a recent result: {w.get('code')}"
                     + (f" (within {w['within_days']} days)" if "within_days" in w else " (within its recency window)"))
    if raw.get("after_stopped"):
        lines.append("  after stopping: " + ", ".join(str(next(iter(s.values()))) for s in raw["after_stopped"]))
    if "result" in raw:
        r = raw["result"]
        lines.append(f"  result: {r.get('code')} {r.get('op')} {r.get('value')}")
    for r in raw.get("result_any") or []:
        lines.append(f"  result (any): {r.get('code')} {r.get('op')} {r.get('value')}")
    for b in raw.get("bands") or []:
        lines.append(f"  band: below {b.get('below')} -> max {b.get('max_mg_per_day')} mg/day "
                     f"({b.get('severity', e.severity)}): {b.get('text', '')}"
                     + (f" [raised by {b['raised_by']}]" if b.get("raised_by") else "")
                     + (f" [absorbs {b['absorbs']}]" if b.get("absorbs") else ""))
    lines.append("  sources:")
    lines.extend(f"    - {s}" for s in e.sources)
    lines.append(f"  review date: {e.review_date}")
    lines.append(f"  vignettes: {', '.join(e.vignettes) if e.vignettes else '(none)'}")
    return "\n".join(lines)


def v3_label(e: RuleEntry) -> str:
    """The v3 item with where it was read ("STOPP D13 (v3 reproduction, unverified)"), or "" when none is set."""
    if not e.v3_item:
        return ""
    if e.v3_item == "none":
        where = "no corresponding item in the v3 reproduction"
        return where + (f": {e.v3_item_note}" if e.v3_item_note else "")
    where = "v3 appendix, verified" if e.v3_item_source == "appendix" else "v3 reproduction, unverified"
    return f"{e.v3_item} ({where})" + (f"; {e.v3_item_note}" if e.v3_item_note else "")


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


KIND_ORDER = ("drug-drug", "drug-disease", "allergy", "drug-result", "dose", "omission", "duplicate", "burden",
              "lifestyle", "timing", "reviews")


def render_markdown(entries: list[RuleEntry], version: str = "") -> str:
    """The reference page (docs/knowledge-reference.md): a summary table, then every rule grouped by kind."""
    out = ["# Conflict knowledge reference", "",
           "Generated by `joinedup knowledge list --format markdown > docs/knowledge-reference.md` from the rule files "
           "in `src/joinedup/knowledge/`; do not edit by hand (`tests/conflicts/test_knowledge_cli.py` fails when "
           "this page is out of date). `joinedup knowledge check` validates the same files.", ""]
    if version:
        out += [f"Knowledge version {version}.", ""]
    unverified = sum(1 for e in entries if not e.verified)
    out += [f"{len(entries)} rules; {unverified} marked unverified (content not checked against its source: never "
            "high or critical). Every rule is tested by the vignettes listed (a firing case and a close case that "
            "must stay silent, `src/joinedup/knowledge/conflicts/vignettes.yaml`).", "",
            "| kind | rules | critical | high | moderate | low | unverified |", "|---|---|---|---|---|---|---|"]
    kinds = [k for k in KIND_ORDER if any(e.kind == k for e in entries)]
    kinds += sorted({e.kind for e in entries} - set(kinds))
    for k in kinds:
        es = [e for e in entries if e.kind == k]
        counts = [sum(1 for e in es if e.severity == s) for s in SEVERITIES]
        out.append(f"| {k} | {len(es)} | " + " | ".join(map(str, counts))
                   + f" | {sum(1 for e in es if not e.verified)} |")
    for k in kinds:
        out += ["", f"## {k}", "", "| rule | severity | criterion | summary | uses | sources | vignettes |",
                "|---|---|---|---|---|---|---|"]
        for e in (e for e in entries if e.kind == k):
            sev = e.severity + ("" if e.verified else " (unverified)")
            used = "; ".join(f"{label}: {', '.join(items)}" for label, items in
                             (("classes", e.classes), ("ingredients", e.ingredients), ("conditions", e.conditions),
                              ("results", e.results)) if items)
            crit = "; ".join(x for x in (e.criterion, f"v3 item: {v3_label(e)}" if e.v3_item else "") if x)
            out.append(f"| `{e.id}` | {sev} | {_md(crit)} | {_md(e.summary)} | {_md(used)} | "
                       + "<br>".join(_md(s) for s in e.sources) + f" | {', '.join(e.vignettes)} |")
    return "\n".join(out) + "\n"
