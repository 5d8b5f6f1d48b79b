"""Load the conflict knowledge base from package YAML once and compile it into dicts/sets for fast matching.

Map of this module: text helpers (`code_system`, `normalise_text`, `tokens`, `PhraseIndex`); `Selector` and
`Knowledge` (the compiled knowledge base); `compile_knowledge` (parsed YAML -> Knowledge; each rules.yaml rule gains
`_drugs`, `_unless`, `_exclude`, `_conditions` and `_kind`, its key in `conflicts.rules.KINDS`, and `Knowledge.kinds`
lists every rule with its kind's class for the engine to dispatch on); `load_knowledge` (the packaged files,
cached); recognisers for free text and ICD-10 codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from .dose_rules import compile_dose_rules
from .rules import KINDS, PATIENT_FILTERS, RuleIndex, RuleKind, kind_of, rule_index, rule_items
from .terminology import (
    SAFE_LOADER,
    CompiledTerms,
    TermData,
    compile_terms,
    load_term_data,
    merge_ingredients,
    read_term_data,
)

KNOWLEDGE_PACKAGE = "joinedup.knowledge"

_TOKEN = re.compile(r"[a-z][a-z0-9'\-]*")
_COMPONENT_SPLIT = re.compile(r"\s+/\s+|\s+\+\s+|\s+and\s+|\s+with\s+|\s*;\s*")
_SKIP_PREFIXES = ("no ", "not ", "suspected ", "possible ", "query ", "?", "family history", "fh ", "denies ")
_SHORT = 3  # synonyms this short only match when they are the whole text
# strength/form/packaging words: a " / "-separated component made only of these is not an unrecognised ingredient
_FORM_TEXT = """
dose doses inhaler inhalers tablet tablets capsule capsules oral solution suspension injection injectable cream gel
day days pack system spray modified release extended chewable effervescent gastro resistant dispersible human regular
microgram micrograms mcg unit units unt actuat actuation mucosal drug implant auto injector intrauterine vaginal
inhalation hour hours powder liquid sachet sachets drops eye ear nasal patch patches film coated soluble sugar free
per with plus and ml mg device devices cartridge cartridges cfc spacer plaster plasters medicated
"""
FORM_WORDS = frozenset(_FORM_TEXT.split())

SYSTEM_RXNORM = "rxnorm"
SYSTEM_SCT = "sct"  # SNOMED CT and dm+d share the SNOMED identifier space
SYSTEM_ICD10 = "icd10"
SYSTEM_LOINC = "loinc"


def code_system(system: str | None) -> str | None:
    """Map a FHIR coding system URI to an internal system key."""
    if not system:
        return None
    s = system.lower()
    if "rxnorm" in s:
        return SYSTEM_RXNORM
    if "snomed" in s or "dmd" in s:
        return SYSTEM_SCT
    if "icd-10" in s or "icd10" in s:
        return SYSTEM_ICD10
    if "loinc" in s:
        return SYSTEM_LOINC
    return None


def normalise_text(text: str) -> str:
    """Lower-case and tidy a display string (keeps hyphens inside words, e.g. co-amilofruse)."""
    t = text.lower().replace("[", " ").replace("]", " ").replace("(", " ").replace(")", " ")
    t = t.replace("’", "'")
    return " ".join(t.split())


def tokens(text: str) -> list[str]:
    """Words of a normalised text; numbers, strengths and punctuation drop out."""
    return [w.strip("-'") for w in _TOKEN.findall(text) if w.strip("-'")]


@dataclass
class PhraseIndex:
    """Longest-match phrase dictionary over word n-grams."""

    phrases: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    whole: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_len: int = 1

    def add(self, phrase: str, values: tuple[str, ...]) -> None:
        """Register a phrase (lower-case) mapping to values."""
        norm = normalise_text(phrase)
        words = tuple(tokens(norm))
        if not words:
            return
        if len(norm) <= _SHORT:
            self.whole[norm] = values
            return
        for variant in {words, tuple(w for part in words for w in part.split("-") if w)}:
            existing = self.phrases.get(variant)
            self.phrases[variant] = values if existing is None else tuple(dict.fromkeys(existing + values))
            self.max_len = max(self.max_len, len(variant))

    def match(self, text: str) -> list[tuple[str, ...]]:
        """Return the value tuples of all longest, non-overlapping matches in text."""
        norm = normalise_text(text)
        if norm in self.whole:
            return [self.whole[norm]]
        words = tokens(norm)
        found: list[tuple[str, ...]] = []
        i, n = 0, len(words)
        while i < n:
            for size in range(min(self.max_len, n - i), 0, -1):
                hit = self.phrases.get(tuple(words[i : i + size]))
                if hit is not None:
                    found.append(hit)
                    i += size
                    break
            else:
                i += 1
        return found


@dataclass
class Selector:
    """A compiled medicine selector: the set of ingredient keys it matches."""

    ingredients: frozenset[str]
    label: str


@dataclass
class Knowledge:
    """The compiled knowledge base."""

    version: str
    medicines: dict[str, dict[str, Any]]
    ingredient_classes: dict[str, frozenset[str]]
    ingredient_acb: dict[str, int]
    ingredient_falls: dict[str, bool]
    class_display: dict[str, str]
    falls_sources: dict[str, str]
    med_codes: dict[tuple[str, str], tuple[str, ...]]
    med_text: PhraseIndex
    condition_display: dict[str, str]
    condition_codes: dict[tuple[str, str], str]
    condition_icd10: list[tuple[str, str]]
    condition_text: PhraseIndex
    history_counts: frozenset[str]
    result_loinc: dict[str, str]
    result_text: PhraseIndex
    rules: list[dict[str, Any]]
    guidance: dict[str, dict[str, Any]]
    lifestyle: list[dict[str, Any]]
    timing: list[dict[str, Any]]
    reviews: dict[str, Any]
    severity_weights: dict[str, int]
    acb_source: str
    # resolution sequencing: stop-first selectors and medicines never to stop while a result is above a threshold
    stop_first: list[dict[str, Any]] = field(default_factory=list)
    keep_guards: list[dict[str, Any]] = field(default_factory=list)
    result_units: dict[str, str] = field(default_factory=dict)
    # terminology (terminology.py: code lists, brands, product codes, result codes/units) and dose checks (dose_rules)
    term: CompiledTerms = field(default_factory=CompiledTerms)
    dose_rules: list[dict[str, Any]] = field(default_factory=list)
    # every rule (rules, lifestyle clashes, review merge, timing) with its kind's class, in the engine's order
    kinds: list[tuple[type[RuleKind], dict[str, Any]]] = field(default_factory=list)
    # the rules indexed by what a record must hold for them to fire (rules.rule_index): detection looks only at those
    index: RuleIndex | None = None
    # free text -> (ingredients, unmatched components): the same names recur across records
    text_cache: dict[str, tuple[frozenset[str], list[str]]] = field(default_factory=dict)
    # (what, text, codes...) -> condition keys / result key (recognition.py): the same codes recur across records
    recognised: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    # vaccines (START v3 section L): CVX code -> vaccine key, words in a vaccine's name -> key, key -> display
    vaccine_cvx: dict[str, str] = field(default_factory=dict)
    vaccine_words: list[tuple[str, str]] = field(default_factory=list)
    vaccine_display: dict[str, str] = field(default_factory=dict)

    def selector(self, spec: dict[str, Any]) -> Selector:
        """Compile a selector spec ({class}, {any_class}, {ingredient}, {any_ingredient}, {falls_risk})."""
        if "class" in spec:
            cls = {spec["class"]}
        elif "any_class" in spec:
            cls = set(spec["any_class"])
        else:
            cls = set()
        if cls:
            ings = {k for k, c in self.ingredient_classes.items() if c & cls}
            return Selector(frozenset(ings), "/".join(sorted(cls)))
        if "ingredient" in spec:
            return Selector(frozenset({spec["ingredient"]}), spec["ingredient"])
        if "any_ingredient" in spec:
            return Selector(frozenset(spec["any_ingredient"]), "/".join(spec["any_ingredient"]))
        if "any_of" in spec:
            parts = [self.selector(x) for x in spec["any_of"]]
            return Selector(frozenset().union(*(x.ingredients for x in parts)), " or ".join(x.label for x in parts))
        if "acb_min" in spec:
            n = int(spec["acb_min"])
            return Selector(frozenset(k for k, v in self.ingredient_acb.items() if v >= n),
                            f"anticholinergic (ACB score {n} or more)")
        if spec.get("falls_risk"):
            return Selector(frozenset(k for k, v in self.ingredient_falls.items() if v), "falls-risk medicine")
        raise ValueError(f"unknown selector {spec!r}")

    def classes_of(self, ingredients: frozenset[str]) -> frozenset[str]:
        """Union of (expanded) classes of ingredients."""
        out: set[str] = set()
        for i in ingredients:
            out |= self.ingredient_classes.get(i, frozenset())
        return frozenset(out)

    def display_of(self, ingredient: str) -> str:
        """Human-readable name of an ingredient key."""
        syn = self.medicines.get(ingredient, {}).get("synonyms") or [ingredient.replace("_", " ")]
        return str(syn[0])


def knowledge_root() -> Any:
    """The packaged knowledge directory (src/joinedup/knowledge)."""
    return resources.files(KNOWLEDGE_PACKAGE)


def _read(name: str, root: Any = None) -> dict[str, Any]:
    path = (root if root is not None else knowledge_root()).joinpath(name)
    with path.open("r", encoding="utf-8") as fh:
        return yaml.load(fh, Loader=SAFE_LOADER) or {}  # libyaml's safe loader when available (terminology.py)


def _expand(classes: list[str], class_meta: dict[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    stack = list(classes)
    while stack:
        c = stack.pop()
        if c in out:
            continue
        out.add(c)
        stack.extend((class_meta.get(c) or {}).get("implies", []) or [])
    return frozenset(out)


def compile_knowledge(
    conditions: dict[str, Any],
    medicines: dict[str, Any],
    rules: dict[str, Any],
    guidance: dict[str, Any],
    lifestyle: dict[str, Any],
    schedules: dict[str, Any],
    terminology: TermData | None = None,
    dosing: dict[str, Any] | None = None,
) -> Knowledge:
    """Build the compiled knowledge from parsed YAML documents (plus the terminology data and dose limits)."""
    class_meta = medicines.get("classes", {}) or {}
    falls_sources = medicines.get("falls_risk_classes", {}) or {}
    meds = merge_ingredients(medicines["medicines"], terminology)
    ingredient_classes: dict[str, frozenset[str]] = {}
    ingredient_acb: dict[str, int] = {}
    ingredient_falls: dict[str, bool] = {}
    med_codes: dict[tuple[str, str], tuple[str, ...]] = {}
    med_text = PhraseIndex()
    extra_classes: dict[str, list[str]] = {}
    for cls, spec in (medicines.get("class_members", {}) or {}).items():
        if cls not in class_meta:
            raise ValueError(f"class_members: class {cls!r} is not defined under classes")
        for ing in (spec or {}).get("members", []) or []:
            if ing not in meds:
                raise ValueError(f"class_members {cls!r}: unknown ingredient {ing!r}")
            extra_classes.setdefault(ing, []).append(cls)
    for key, m in meds.items():
        classes = _expand(list(m.get("classes", [])) + extra_classes.get(key, []), class_meta)
        ingredient_classes[key] = classes
        ingredient_acb[key] = int(m.get("anticholinergic_burden") or 0)
        ingredient_falls[key] = bool(classes & set(falls_sources))
        target = tuple(m.get("ingredients") or [key])
        if target != (key,):
            # a fixed-combination entry (e.g. diclofenac with misoprostol): keep its own key for classes
            target = (key,)
        for code in m.get("rxnorm", []) or []:
            med_codes[(SYSTEM_RXNORM, str(code))] = target
        for code in (m.get("dmd", []) or []) + (m.get("snomed", []) or []):
            med_codes[(SYSTEM_SCT, str(code))] = target
        for syn in [key.replace("_", " ")] + list(m.get("synonyms", []) or []):
            med_text.add(str(syn), target)
    for name, parts in (medicines.get("combinations", {}) or {}).items():
        med_text.add(str(name), tuple(parts))

    condition_display: dict[str, str] = {}
    condition_codes: dict[tuple[str, str], str] = {}
    condition_icd10: list[tuple[str, str]] = []
    condition_text = PhraseIndex()
    history: set[str] = set()
    for key, c in conditions["conditions"].items():
        condition_display[key] = c.get("display", key)
        for s in c.get("snomed", []) or []:
            condition_codes[(SYSTEM_SCT, str(s["code"]))] = key
        for p in c.get("icd10", []) or []:
            condition_icd10.append((str(p).replace(".", "").upper(), key))
        for t in [c.get("display", "")] + list(c.get("text", []) or []):
            if t:
                condition_text.add(str(t), (key,))
        if c.get("history_counts"):
            history.add(key)
    condition_icd10.sort(key=lambda x: -len(x[0]))

    result_loinc: dict[str, str] = {}
    result_text = PhraseIndex()
    for key, r in (rules.get("results", {}) or {}).items():
        for code in r.get("loinc", []) or []:
            result_loinc[str(code)] = key
        for t in r.get("text", []) or []:
            result_text.add(str(t), (key,))

    kb = Knowledge(
        version=str(rules.get("version", "")),
        medicines=meds,
        ingredient_classes=ingredient_classes,
        ingredient_acb=ingredient_acb,
        ingredient_falls=ingredient_falls,
        class_display={k: (v or {}).get("display", k) for k, v in class_meta.items()},
        falls_sources=falls_sources,
        med_codes=med_codes,
        med_text=med_text,
        condition_display=condition_display,
        condition_codes=condition_codes,
        condition_icd10=condition_icd10,
        condition_text=condition_text,
        history_counts=frozenset(history),
        result_loinc=result_loinc,
        result_text=result_text,
        rules=[],
        guidance=guidance.get("guidance", {}) or {},
        lifestyle=lifestyle.get("clashes", []) or [],
        timing=[],
        reviews=(schedules.get("reviews") or {}),
        severity_weights=dict(rules.get("severity_weights") or {"critical": 1000, "high": 100, "moderate": 20, "low": 3}),
        acb_source=str(medicines.get("acb_source", "")),
    )
    result_windows = {k: (v or {}).get("recency_days") for k, v in (rules.get("results", {}) or {}).items()}
    compiled_rules = []
    seen_ids: set[str] = set()
    for r in rules.get("rules", []) or []:
        cr = dict(r)
        rid = str(r.get("id"))
        if rid in seen_ids:
            raise ValueError(f"rule {rid!r} is defined twice")
        seen_ids.add(rid)
        if r.get("verified") is False and r.get("severity") in ("high", "critical"):
            raise ValueError(f"rule {rid!r}: an unverified rule cannot be {r['severity']}")
        if (r.get("v3_item_source") == "reproduction" and str(r.get("criterion") or "").split(" ")[1:2] == ["v3"]
                and r.get("verified") is not False):
            raise ValueError(f"rule {rid!r}: a v3 criterion read only in the reproduction must be verified: false")
        cr["_drugs"] = [kb.selector(s) for s in r.get("drugs", []) or []]
        cr["_unless"] = [kb.selector(s) for s in (r.get("unless") or r.get("indicated") or [])]
        cr["_with"] = [kb.selector(s) for s in r.get("with_drugs", []) or []]
        cr["_filters"] = any(k in r for k in PATIENT_FILTERS)
        if "result" in r:
            window = r.get("recency_days", result_windows.get(r["result"]["code"]))
            cr["_window"] = int(window) if window is not None else None
        if r.get("without_result"):  # the monitoring a criterion asks for is missing (STOPP v3 B13)
            code = r["without_result"]["code"]
            window = r["without_result"].get("within_days", result_windows.get(code))
            cr["_without_window"] = int(window) if window is not None else None
        if r.get("after_stopped"):  # an omission after a medicine is stopped (START v3 H6, H7)
            cr["_after_stopped"] = [kb.selector(s) for s in r["after_stopped"]]
        if r.get("result_any"):  # an omission indicated by a result (e.g. START A4 raised blood pressure)
            cr["_result_any"] = [(spec, result_windows.get(spec["code"])) for spec in r["result_any"]]
        if r.get("vaccine") and r["vaccine"] not in (rules.get("vaccines") or {}):
            raise ValueError(f"rule {rid!r}: vaccine {r['vaccine']!r} is not defined under `vaccines`")
        if r.get("vaccine"):  # an omission met by a completed immunisation, not by a medicine (START v3 L)
            cr["_suggest"] = {"action": "add", "vaccine": r["vaccine"],
                              "display": str(((rules.get("vaccines") or {}).get(r["vaccine"]) or {}).get("display", ""))}
        if r.get("add"):
            cr["add_protection"] = r["add"]
            cr["_suggest"] = {"action": "add", "ingredient": r["add"], "display": kb.display_of(r["add"])}
        excl: set[str] = set()
        for s in r.get("exclude_drugs", []) or []:
            excl |= kb.selector(s).ingredients
        cr["_exclude"] = frozenset(excl)
        if cr["_drugs"] and excl:
            cr["_drugs"] = [Selector(sel.ingredients - excl, sel.label) for sel in cr["_drugs"]]
        cr["_conditions"] = tuple(r.get("conditions", []) or [])
        cr["_kind"] = kind_of(r)
        # ingredient sets of which the record must hold at least one each for the rule to be able to fire (lets
        # detection skip a rule with one set intersection instead of scanning the medicines)
        need = [sel.ingredients for sel in cr["_with"]]
        if cr["_kind"] == "drug-drug":
            need += [sel.ingredients for sel in cr["_drugs"]]
        elif cr["_kind"] in ("drug-disease", "drug-result") and cr["_drugs"]:
            need.append(cr["_drugs"][0].ingredients)
        cr["_need"] = tuple(need)
        if cr["_kind"] not in KINDS:
            raise ValueError(f"rule {r.get('id')!r}: unknown kind {cr['_kind']!r} (known: {', '.join(sorted(KINDS))})")
        compiled_rules.append(cr)
    kb.rules = compiled_rules
    res_block = rules.get("resolution") or {}
    for item in res_block.get("stop_first", []) or []:
        kb.stop_first.append({**item, "_ingredients": kb.selector(item["drugs"]).ingredients})
    for item in res_block.get("keep_while", []) or []:
        kb.keep_guards.append({**item, "_ingredients": kb.selector(item["drugs"]).ingredients})
    kb.result_units = {k: str((v or {}).get("unit", "")) for k, v in (rules.get("results", {}) or {}).items()}
    for key, v in (rules.get("vaccines") or {}).items():
        kb.vaccine_display[key] = str((v or {}).get("display", key))
        for code in (v or {}).get("cvx", []) or []:
            kb.vaccine_cvx[str(code)] = key
        kb.vaccine_words.extend((normalise_text(str(w)), key) for w in (v or {}).get("text", []) or [])
    timing = []
    for t in schedules.get("timing", []) or []:
        ct = dict(t)
        ct["_drugs"] = [kb.selector(s) for s in t.get("drugs", [])]
        timing.append(ct)
    kb.timing = timing
    kb.term = compile_terms(kb, terminology, conditions, phrase_index=PhraseIndex,
                            recognise_text=recognise_medicine_text, rxnorm=SYSTEM_RXNORM, sct=SYSTEM_SCT)
    kb.dose_rules = compile_dose_rules(kb, dosing)
    kb.kinds = rule_items(kb)
    kb.index = rule_index(kb.kinds)
    return kb


# further rule files (same shape as rules.yaml: `results` and `rules`), merged after rules.yaml in this order
RULE_FILES = ("conflicts/results.yaml", "conflicts/interactions.yaml", "conflicts/mhra.yaml",
              "conflicts/stopp_start_v3.yaml", "conflicts/nice.yaml", "conflicts/resolution.yaml")


def merged_rules(base: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    """rules.yaml with the rules and result definitions of the further rule files appended."""
    out = dict(base)
    out["results"] = dict(base.get("results") or {})
    out["rules"] = list(base.get("rules") or [])
    out["resolution"] = dict(base.get("resolution") or {})
    out["vaccines"] = dict(base.get("vaccines") or {})
    for doc in extra:
        out["vaccines"].update(doc.get("vaccines") or {})
        for key, val in (doc.get("results") or {}).items():
            out["results"][key] = {**out["results"].get(key, {}), **val}
        out["rules"].extend(doc.get("rules") or [])
        for key, val in (doc.get("resolution") or {}).items():
            out["resolution"][key] = list(out["resolution"].get(key) or []) + list(val or [])
    return out


@lru_cache(maxsize=1)
def load_knowledge() -> Knowledge:
    """Load and compile the packaged knowledge base (cached once per process)."""
    return compile_knowledge(
        _read("conditions.yaml"),
        _read("medicines.yaml"),
        merged_rules(_read("conflicts/rules.yaml"), [_read(name) for name in RULE_FILES]),
        _read("conflicts/guidance.yaml"),
        _read("conflicts/lifestyle.yaml"),
        _read("conflicts/schedules.yaml"),
        terminology=load_term_data(),
        dosing=_read("dosing.yaml"),
    )


def knowledge_from(root: Any) -> Knowledge:
    """Compile the knowledge base held in another knowledge directory (same layout as src/joinedup/knowledge), e.g.
    a copy under review; raises ValueError or OSError when it cannot be compiled."""
    return compile_knowledge(
        _read("conditions.yaml", root),
        _read("medicines.yaml", root),
        merged_rules(_read("conflicts/rules.yaml", root), [_read(name, root) for name in RULE_FILES]),
        _read("conflicts/guidance.yaml", root),
        _read("conflicts/lifestyle.yaml", root),
        _read("conflicts/schedules.yaml", root),
        terminology=read_term_data(root),
        dosing=_read("dosing.yaml", root),
    )


TEXT_CACHE_MAX = 50_000


def recognise_medicine_text(kb: Knowledge, text: str) -> tuple[frozenset[str], list[str]]:
    """Ingredients named in free text, and the components that matched nothing (remembered per text: the same
    names recur across records; callers must not change the returned list)."""
    hit = kb.text_cache.get(text)
    if hit is not None:
        return hit
    if len(kb.text_cache) >= TEXT_CACHE_MAX:
        kb.text_cache.clear()
    out = kb.text_cache[text] = _recognise_medicine_text(kb, text)
    return out


def _recognise_medicine_text(kb: Knowledge, text: str) -> tuple[frozenset[str], list[str]]:
    norm = normalise_text(text)
    found: set[str] = set()
    missing: list[str] = []
    parts = [p for p in _COMPONENT_SPLIT.split(norm) if p.strip()] or [norm]
    for part in parts:
        hits = kb.med_text.match(part)
        if hits:
            for h in hits:
                found.update(h)
        elif tokens(part):
            missing.append(part.strip())
    if found and missing:
        # a component may be a strength/form fragment split off by " / " (e.g. "70 unt/ml"): only report words
        missing = [m for m in missing if any(len(w) > 3 and w not in FORM_WORDS for w in tokens(m))]
    return frozenset(found), missing


def recognise_condition_text(kb: Knowledge, text: str) -> str | None:
    """Condition key named in free text, or None (negated/uncertain/family-history text never matches)."""
    norm = normalise_text(text)
    if not norm or norm.startswith(_SKIP_PREFIXES) or "family history" in norm:
        return None
    hits = kb.condition_text.match(norm)
    return hits[0][0] if hits else None


def recognise_icd10(kb: Knowledge, code: str) -> str | None:
    """Condition key for an ICD-10 code by category prefix."""
    c = code.replace(".", "").upper().strip()
    for prefix, key in kb.condition_icd10:
        if c.startswith(prefix):
            return key
    return None
