"""Recognition of a person's resources against the compiled knowledge and terminology, for `detect.build_record`:
the conditions a Condition.code stands for (`condition_keys`), the result an Observation is and its value in the
canonical unit (`result_key`, `result_value`), items positively identified as not medicines (`non_medicinal`), and
the dose a medicine line delivers (`product_name`, `med_dose`). Kept apart from terminology.py (pure name grammar,
data and formulae) so that no import circle forms: this module imports knowledge, terminology and dosage.
"""

from __future__ import annotations

import re
from typing import Any

from .dosage import ingredient_strengths, line_dose, schedule_of
from .knowledge import (
    SYSTEM_ICD10,
    SYSTEM_LOINC,
    SYSTEM_SCT,
    code_system,
    normalise_text,
    recognise_condition_text,
    recognise_icd10,
)
from .terminology import (
    ckd_from_egfr_history,
    ckd_stage_from_text,
    convert_result,
    diabetes_type_from_text,
    parsed_name,
)

CACHE_MAX = 50_000


def _concept_key(concept: dict[str, Any] | None, text: str) -> tuple[Any, ...]:
    return (text, *((str(c.get("system")), str(c.get("code"))) for c in (concept or {}).get("coding") or ()
                    if isinstance(c, dict)))


def _remember(kb: Any, key: tuple[Any, ...], value: Any) -> Any:
    cache = kb.recognised
    if len(cache) >= CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def condition_keys(kb: Any, concept: dict[str, Any] | None, text: str) -> tuple[str, ...]:
    """Every condition a Condition.code stands for: SNOMED CT codes through the code lists (a code may belong to
    several, e.g. CKD due to hypertension) and conditions.yaml, ICD-10 by category, else the text; then the
    conditions these imply (CKD stage -> CKD, type 2 diabetes -> diabetes) and a CKD stage named in the text.
    Remembered per distinct code and text (`Knowledge.recognised`): the same codes recur across records."""
    key = ("condition", *_concept_key(concept, text))
    hit = kb.recognised.get(key)
    if hit is None:
        hit = _remember(kb, key, _condition_keys(kb, concept, text))
    return hit


def _condition_keys(kb: Any, concept: dict[str, Any] | None, text: str) -> tuple[str, ...]:
    keys: tuple[str, ...] = ()
    for c in (concept or {}).get("coding") or []:
        if c.get("code") is None:
            continue
        system, code = code_system(c.get("system")), str(c["code"])
        if system == SYSTEM_SCT:
            keys = kb.term.condition_codes.get(code) or (
                (kb.condition_codes[(SYSTEM_SCT, code)],) if (SYSTEM_SCT, code) in kb.condition_codes else ())
        elif system == SYSTEM_ICD10:
            k = recognise_icd10(kb, code)
            keys = (k,) if k else ()
        if keys:
            break
    if not keys:
        k = recognise_condition_text(kb, text)
        if k in ("type1_diabetes", "type2_diabetes", "diabetes"):
            k = diabetes_type_from_text(text) or k  # the text index drops numbers: "type 1" vs "type 2" by pattern
        keys = (k,) if k else ()
    if not keys:
        return ()
    out = list(keys)
    if "ckd" in out or any(k.startswith("ckd_stage_") for k in out):
        stage = ckd_stage_from_text(text)
        if stage and f"ckd_stage_{stage[0]}" not in out:
            out.append(f"ckd_stage_{stage[0]}")
    i = 0
    while i < len(out):
        for implied in kb.term.condition_implies.get(out[i], ()):
            if implied not in out:
                out.append(implied)
        i += 1
    return tuple(out)


def result_key(kb: Any, concept: dict[str, Any] | None, text: str) -> str | None:
    """The result an Observation.code is: LOINC (rule files, then results.yaml), SNOMED CT, else its text
    (remembered per distinct code and text)."""
    key = ("result", *_concept_key(concept, text))
    hit = kb.recognised.get(key, _MISSING)
    if hit is _MISSING:
        hit = _remember(kb, key, _result_key(kb, concept, text))
    return hit  # type: ignore[return-value]


_MISSING = object()


def _result_key(kb: Any, concept: dict[str, Any] | None, text: str) -> str | None:
    for c in (concept or {}).get("coding") or []:
        if c.get("code") is None:
            continue
        system, code = code_system(c.get("system")), str(c["code"])
        if system == SYSTEM_LOINC:
            key = kb.result_loinc.get(code) or kb.term.result_loinc.get(code)
        elif system == SYSTEM_SCT:
            key = kb.term.result_snomed.get(code)
        else:
            key = None
        if key:
            return key
    hits = kb.result_text.match(text) or (kb.term.result_text.match(text) if kb.term.result_text else [])
    return hits[0][0] if hits else None


def result_value(kb: Any, key: str, value: float, unit: str) -> float | None:
    """The value in the result's canonical unit (results.yaml); None when its unit is not one the engine knows."""
    spec = kb.term.result_specs.get(key)
    if spec is None:
        return value
    return convert_result(spec, value, unit)


def non_medicinal(kb: Any, concept: dict[str, Any] | None, text: str) -> str | None:
    """"allergen" or "device" when a concept is positively identified as not a medicine (a listed SNOMED CT allergen
    code, or a name that is a listed allergen or device); None otherwise (it then stays unrecognised)."""

    for c in (concept or {}).get("coding") or []:
        if code_system(c.get("system")) == SYSTEM_SCT and str(c.get("code")) in kb.term.allergen_codes:
            return "allergen"
    t = normalise_text(re.sub(r"\((?:substance|organism|product|physical object)\)", " ", text or "", flags=re.I))
    if not t or kb.term.allergen_text is None:
        return None
    for index, what in ((kb.term.allergen_text, "allergen"), (kb.term.device_text, "device")):
        hits = index.match(t)
        if hits and not kb.med_text.match(t):
            return what
    return None




def product_name(kb: Any, concept: dict[str, Any] | None) -> str:
    """The product name to parse for strengths: the concept's text, a coding display, else the name the terminology
    holds for its code."""

    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for c in concept.get("coding") or []:
        if c.get("display"):
            return str(c["display"])
    for c in concept.get("coding") or []:
        name = kb.term.code_names.get((code_system(c.get("system")), str(c.get("code"))))
        if name:
            return name
    return ""


def med_dose(kb: Any, concept: dict[str, Any] | None, res: dict[str, Any], ingredients: frozenset[str]) -> Any:
    """The `dosage.LineDose` of a medicine line (None when its dosage cannot be read)."""

    schedule = schedule_of(res)
    if schedule is None:
        return None
    name = product_name(kb, concept)
    cache = kb.term.strengths_cache
    hit = cache.get((name, ingredients))
    if hit is not None:
        return line_dose(hit[0], schedule, hit[1])
    parsed = parsed_name(name)

    def resolve(seg: str) -> list[str]:
        keys = [k for hit in kb.med_text.match(seg) for k in hit if k in ingredients]
        if not keys:
            for brand, ings in kb.term.brands.items():
                if brand in seg.lower():
                    return [i for i in ings if i in ingredients]
        return list(dict.fromkeys(keys))

    strengths = ingredient_strengths(parsed, resolve)
    if not strengths and len(ingredients) == 1 and len(parsed.ingredients) == 1 and parsed.ingredients[0].strength:
        strengths = {next(iter(ingredients)): parsed.ingredients[0].strength}
    if len(cache) > 50_000:
        cache.clear()
    cache[(name, ingredients)] = (strengths, parsed)
    return line_dose(strengths, schedule, parsed)


def ckd_from_egfr(rec: Any, history: list[tuple[str, float, str]]) -> None:
    """Record CKD shown by eGFR results (NICE NG203: GFR < 60 for more than 3 months, `ckd_from_egfr_history`) as the
    conditions `ckd` and `ckd_stage_N`, involving the low eGFR results; a coded CKD keeps its code and only gains the
    stage when none is coded."""
    stage = ckd_from_egfr_history([(d, v) for d, v, _r in history])
    if stage is None:
        return
    low = [(d, r) for d, v, r in sorted(history) if v < 60][-2:]
    refs = [r for _d, r in low]
    keys = [f"ckd_stage_{stage[0]}"]
    if "ckd" not in rec.conditions:
        keys.insert(0, "ckd")
    elif any(k.startswith("ckd_stage_") for k in rec.conditions):
        return
    for k in keys:
        rec.conditions.setdefault(k, []).extend(refs)
    for d, r in low:
        rec.facts.setdefault(r, {"what": f"CKD G{stage} shown by eGFR results under 60 for over 3 months",
                                 "date": d, "source": ""})
