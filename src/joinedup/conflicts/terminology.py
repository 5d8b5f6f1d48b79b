"""Terminology that real feeds use: medicine names (RxNorm SCD/SBD/GPCK/BPCK grammar, dm+d VTM/VMP/AMP/VMPP/AMPP
names, free text with strengths and forms), condition code lists, result codes and units.

Map of this module:
- Medicine names: `parse_medicine_name` turns a name into a `ParsedName` (ingredient segments with their
  `Strength`, dose form, route, release, quantity, brand, pack, name type). The grammar follows the NLM RxNorm
  Technical Documentation naming conventions (SCD "Ingredient Strength Dose Form", SBD "SCD [Brand]", GPCK/BPCK
  "{n (SCD) / n (SCD)} Pack [Brand]", quantity factor "10 ML ...", release duration "24 HR ...") and the NHS dm+d
  naming conventions (VMP "Furosemide 40mg tablets", AMP "... (Supplier)", VMPP/AMPP "... 28 tablet").
- `TermData` / `load_term_data`: the packaged data in `knowledge/terminology/` (names, brands, RxNorm and dm+d codes,
  non-medicinal items, SNOMED CT condition code lists, result codes and units).
- Joining to the knowledge base: `merge_ingredients` (names into medicines), `compile_terms` -> `CompiledTerms`
  (code lists, implied conditions, brands, product codes, result codes/units, non-medicinal items).
- Conditions: `ckd_stage_from_text`, `ckd_stage_from_egfr`, `ckd_from_egfr_history`, `diabetes_type_from_text`.
- Results: `convert_result` (UCUM units to the engine's canonical unit per result), `hba1c_ifcc_from_dcct`,
  `hba1c_dcct_from_ifcc`, `cockcroft_gault`.
This module does not import the rest of the engine (knowledge.py imports it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

TERMINOLOGY_PACKAGE = "joinedup.knowledge"
TERMINOLOGY_DIR = "terminology"
# the C (libyaml) safe loader when PyYAML was built with it: the knowledge files load ~10x faster
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# -- strengths --------------------------------------------------------------------------------------------------------
UNIT_ALIASES = {
    "mg": "mg", "milligram": "mg", "milligrams": "mg", "g": "g", "gram": "g", "grams": "g", "gm": "g",
    "mcg": "mcg", "microgram": "mcg", "micrograms": "mcg", "µg": "mcg", "ug": "mcg", "nanogram": "ng",
    "nanograms": "ng", "ng": "ng", "unt": "unit", "unit": "unit", "units": "unit", "iu": "unit", "u": "unit",
    "ml": "ml", "l": "l", "mmol": "mmol", "meq": "meq", "%": "%", "actuat": "actuation", "actuation": "actuation",
    "dose": "dose", "doses": "dose", "hr": "hour", "hour": "hour", "24hr": "day", "day": "day", "mg/mg": "mg/mg",
}
MASS_TO_MG = {"mg": 1.0, "g": 1000.0, "mcg": 0.001, "ng": 0.000001}
_NUM = r"(\d+(?:[.,]\d+)?)"
_UNIT = r"(mg|g|gm|grams?|mcg|micrograms?|µg|ug|nanograms?|ng|milligrams?|unt|units?|iu|ml|mmol|meq|%)"
_PER = r"(?:\s*/\s*" + r"(\d+(?:\.\d+)?)?\s*(ml|l|actuat|actuation|dose|hr|hour|24hr|day|g|mg|unt|unit)\b)?"
STRENGTH_RE = re.compile(_NUM + r"\s*" + _UNIT + r"(?![a-z])" + _PER, re.I)
# "30mg/500mg", "0.15/30", "5mg/40mg": compound strengths of a named combination (one per ingredient, in order)
_COMPOUND_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(mg|mcg|microgram|g)?\s*/\s*(\d+(?:\.\d+)?)\s*(mg|mcg|microgram|g)\b", re.I)


@dataclass(frozen=True, slots=True)
class Strength:
    """An amount of one ingredient: `value unit` per `per_value per_unit` (per_unit "" = per dose unit, e.g. one
    tablet)."""

    value: float
    unit: str
    per_value: float = 1.0
    per_unit: str = ""

    def mg_per_unit(self) -> float | None:
        """Milligrams per one dose unit (tablet, capsule) or per one `per_unit` (e.g. per ml); None if not a mass."""
        factor = MASS_TO_MG.get(self.unit)
        if factor is None:
            return None
        return self.value * factor / (self.per_value or 1.0)


def parse_strength(text: str) -> Strength | None:
    """The first strength in a text ("500mg", "10 MG/ML", "0.09 MG/ACTUAT", "100micrograms/dose")."""
    m = STRENGTH_RE.search(text)
    if not m:
        return None
    value = float(m.group(1).replace(",", "."))
    unit = UNIT_ALIASES.get(m.group(2).lower(), m.group(2).lower())
    per_value = float(m.group(3)) if m.group(3) else 1.0
    per_unit = UNIT_ALIASES.get((m.group(4) or "").lower(), (m.group(4) or "").lower())
    return Strength(value, unit, per_value, per_unit)


# -- dose forms and routes ----------------------------------------------------------------------------------------------
# (phrase, form, route), longest first; RxNorm dose forms and dm+d forms
_FORMS: list[tuple[str, str, str]] = [
    ("extended release oral tablet", "tablet", "oral"), ("extended release oral capsule", "capsule", "oral"),
    ("delayed release oral capsule", "capsule", "oral"), ("delayed release oral tablet", "tablet", "oral"),
    ("disintegrating oral tablet", "tablet", "oral"), ("chewable tablet", "tablet", "oral"),
    ("oral tablet", "tablet", "oral"), ("oral capsule", "capsule", "oral"), ("oral solution", "solution", "oral"),
    ("oral suspension", "suspension", "oral"), ("oral gel", "gel", "oral"), ("oral powder", "powder", "oral"),
    ("injectable solution", "injection", "parenteral"), ("injectable suspension", "injection", "parenteral"),
    ("solution for injection", "injection", "parenteral"), ("suspension for injection", "injection", "parenteral"),
    ("powder for solution for injection", "injection", "parenteral"), ("prefilled syringe", "injection", "parenteral"),
    ("pre-filled syringe", "injection", "parenteral"), ("pen injector", "injection", "subcutaneous"),
    ("auto-injector", "injection", "intramuscular"), ("injection", "injection", "parenteral"),
    ("metered dose inhaler", "inhaler", "inhalation"), ("dry powder inhaler", "inhaler", "inhalation"),
    ("inhalation solution", "nebuliser solution", "inhalation"), ("inhalation suspension", "nebuliser solution",
                                                                  "inhalation"),
    ("inhalation powder", "inhaler", "inhalation"), ("inhalant solution", "inhalant", "inhalation"),
    ("pressurised inhalation", "inhaler", "inhalation"), ("inhaler", "inhaler", "inhalation"),
    ("transdermal system", "patch", "transdermal"), ("transdermal patch", "patch", "transdermal"),
    ("patches", "patch", "transdermal"), ("patch", "patch", "transdermal"),
    ("medicated plasters", "plaster", "cutaneous"), ("medicated plaster", "plaster", "cutaneous"),
    ("plasters", "plaster", "cutaneous"), ("plaster", "plaster", "cutaneous"),
    ("drug implant", "implant", "subdermal"), ("implant", "implant", "subdermal"),
    ("intrauterine system", "intrauterine system", "intrauterine"), ("vaginal ring", "vaginal ring", "vaginal"),
    ("vaginal system", "vaginal ring", "vaginal"), ("pessaries", "pessary", "vaginal"), ("pessary", "pessary", "vaginal"),
    ("vaginal tablets", "tablet", "vaginal"), ("vaginal tablet", "tablet", "vaginal"),
    ("vaginal inserts", "pessary", "vaginal"), ("vaginal insert", "pessary", "vaginal"),
    ("vaginal cream", "cream", "vaginal"), ("vaginal gel", "gel", "vaginal"), ("topical cream", "cream", "topical"), ("cream", "cream", "topical"),
    ("ointment", "ointment", "topical"), ("gel", "gel", "topical"), ("mucosal spray", "spray", "sublingual"),
    ("sublingual tablets", "tablet", "sublingual"), ("nasal spray", "spray", "nasal"), ("eye drops", "drops", "eye"),
    ("ear drops", "drops", "ear"), ("suppositories", "suppository", "rectal"), ("enema", "enema", "rectal"),
    ("gastro-resistant tablets", "tablet", "oral"), ("modified-release tablets", "tablet", "oral"),
    ("modified-release capsules", "capsule", "oral"), ("prolonged-release tablets", "tablet", "oral"),
    ("dispersible tablets", "tablet", "oral"), ("effervescent tablets", "tablet", "oral"),
    ("soluble tablets", "tablet", "oral"), ("orodispersible tablets", "tablet", "oral"),
    ("film-coated tablets", "tablet", "oral"), ("chewable tablets", "tablet", "oral"),
    ("tablets", "tablet", "oral"), ("tablet", "tablet", "oral"), ("capsules", "capsule", "oral"),
    ("capsule", "capsule", "oral"), ("oral drops", "drops", "oral"), ("sachets", "sachet", "oral"),
    ("liquid", "liquid", "oral"), ("syrup", "liquid", "oral"), ("solution", "solution", ""),
    ("suspension", "suspension", ""),
]
_FORMS.sort(key=lambda f: -len(f[0]))
_RELEASE = [("extended release", "extended"), ("modified-release", "modified"), ("modified release", "modified"),
            ("prolonged-release", "modified"), ("delayed release", "delayed"), ("gastro-resistant", "delayed"),
            ("abuse-deterrent", "extended")]

_BRAND_RE = re.compile(r"\[([^\]]+)\]\s*$")
_SUPPLIER_RE = re.compile(r"\s*\(([^()]*(?:ltd|limited|plc|pharma|pharmaceuticals|healthcare|laboratories|"
                          r"uk|inc|gmbh|a/s|s\.a\.|bv|llc)[^()]*)\)", re.I)
_PACK_RE = re.compile(r"^\{(.*)\}\s*pack\b", re.I)
_DAY_PACK_RE = re.compile(r"\b(\d+)\s*day\s*pack\b", re.I)
_LEAD_QTY_RE = re.compile(r"^(?:nda\d+\s+|anda\d+\s+|bla\d+\s+)?(?:abuse-deterrent\s+)?"
                          r"(?:(\d+(?:\.\d+)?)\s*(hr|ml|actuat|mg|g|unt|day)\s+)?(?:(\d+(?:\.\d+)?)\s*(hr|ml|actuat)\s+)?",
                          re.I)
_VMPP_QTY_RE = re.compile(r"\s+(\d+(?:\.\d+)?)\s*(tablet|capsule|ml|dose|sachet|pre-filled (?:disposable )?"
                          r"(?:injection|syringe)|ampoule|vial|patch|inhaler|device|gram|applicator)s?\s*$", re.I)


@dataclass(slots=True)
class ParsedIngredient:
    """One ingredient segment of a medicine name: its name text and strength."""

    name: str
    strength: Strength | None = None


@dataclass(slots=True)
class ParsedName:
    """A medicine name split into its parts (keys to ingredients are resolved by the knowledge base)."""

    text: str
    ingredients: list[ParsedIngredient] = field(default_factory=list)
    form: str | None = None
    route: str | None = None
    release: str | None = None
    duration_hours: float | None = None
    quantity: tuple[float, str] | None = None
    brand: str | None = None
    supplier: str | None = None
    pack: bool = False
    pack_days: int | None = None
    name_type: str = "free"  # SCD, SBD, GPCK, BPCK (RxNorm), VMP/AMP/VMPP (dm+d-style), free
    compound: list[Strength] = field(default_factory=list)  # "30mg/500mg" of a named combination, in order

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for JSON output)."""
        return {
            "text": self.text, "name_type": self.name_type, "form": self.form, "route": self.route,
            "release": self.release, "duration_hours": self.duration_hours,
            "quantity": list(self.quantity) if self.quantity else None, "brand": self.brand, "pack": self.pack,
            "ingredients": [{"name": i.name, "strength": None if i.strength is None else {
                "value": i.strength.value, "unit": i.strength.unit, "per_value": i.strength.per_value,
                "per_unit": i.strength.per_unit}} for i in self.ingredients],
        }


_FORM_BY_PHRASE = {phrase: (form, route) for phrase, form, route in _FORMS}
_FORM_RE = re.compile(r"(?<![a-z])(?=(" + "|".join(re.escape(p) for p, _f, _r in _FORMS) + r")(?![a-z]))")


def _find_form(low: str) -> tuple[str | None, str | None, int]:
    """(form, route, start index) of the dose form phrase that ends last in the text (the longest one there)."""
    best: tuple[str | None, str | None, int] = (None, None, -1)
    best_key = (-1, 0)
    for m in _FORM_RE.finditer(low):
        phrase = m.group(1)
        key = (m.start() + len(phrase), len(phrase))
        if key > best_key:
            best_key = key
            form, route = _FORM_BY_PHRASE[phrase]
            best = (form, route or None, m.start())
    return best


def _segment(text: str) -> ParsedIngredient:
    """An ingredient segment ("Furosemide 10 MG/ML", "Metformin hydrochloride 500 MG") -> name + strength."""
    m = STRENGTH_RE.search(text)
    strength = parse_strength(text) if m else None
    name = text[: m.start()] if m else text
    return ParsedIngredient(name=" ".join(name.replace("(", " ").replace(")", " ").split()).strip(" ,-"),
                            strength=strength)


def parse_medicine_name(text: str) -> ParsedName:
    """Parse an RxNorm, dm+d or free-text medicine name into its parts (ingredient segments, strengths, form,
    route, release, quantity factor, brand, pack). Names are not resolved to ingredients here."""
    raw = " ".join(str(text or "").split())
    out = ParsedName(text=raw)
    if not raw:
        return out
    s = raw
    bm = _BRAND_RE.search(s)
    if bm:
        out.brand = bm.group(1).strip()
        s = s[: bm.start()].strip()
    pm = _PACK_RE.match(s)
    if pm:  # GPCK/BPCK: {21 (Ethinyl Estradiol 0.03 MG / Levonorgestrel 0.15 MG Oral Tablet) / 7 (Inert ...) } Pack
        out.pack = True
        out.name_type = "BPCK" if out.brand else "GPCK"
        for part in re.findall(r"\d+\s*\(([^()]*)\)", pm.group(1)):
            inner = parse_medicine_name(part)
            for ing in inner.ingredients:
                if "inert" not in ing.name.lower() and all(ing.name.lower() != x.name.lower() for x in out.ingredients):
                    out.ingredients.append(ing)
            out.form, out.route = out.form or inner.form, out.route or inner.route
        return out
    dm = _DAY_PACK_RE.search(s)
    if dm:  # "Yaz 28 Day Pack": a branded pack named by its brand only
        out.pack = True
        out.pack_days = int(dm.group(1))
        out.name_type = "BPCK"
        out.brand = out.brand or s[: dm.start()].strip()
        head = s[: dm.start()].strip()
        out.ingredients.append(ParsedIngredient(name=re.sub(r"\s+[\d./+]+$", "", head)))
        return out
    sm = _SUPPLIER_RE.search(s)
    if sm:  # dm+d AMP/AMPP: "(Accord Healthcare Ltd)"
        out.supplier = sm.group(1).strip()
        s = (s[: sm.start()] + s[sm.end():]).strip()
        out.name_type = "AMP"
    qm = _VMPP_QTY_RE.search(s)
    if qm and not STRENGTH_RE.fullmatch(qm.group(0).strip()):
        out.quantity = (float(qm.group(1)), qm.group(2).lower())
        s = s[: qm.start()].strip()
        out.name_type = "AMPP" if out.name_type == "AMP" else "VMPP"
    lead = _LEAD_QTY_RE.match(s)
    if lead and lead.group(0):
        for v, u in ((lead.group(1), lead.group(2)), (lead.group(3), lead.group(4))):
            if not v:
                continue
            if u.lower() == "hr":
                out.duration_hours = float(v)
            elif out.quantity is None:
                out.quantity = (float(v), UNIT_ALIASES.get(u.lower(), u.lower()))
        s = s[lead.end():].strip()
    low = s.lower()
    for phrase, rel in _RELEASE:
        if phrase in raw.lower():
            out.release = rel
            break
    if out.duration_hours and not out.release:
        out.release = "extended"
    form, route, at = _find_form(low)
    if form is not None:
        out.form, out.route = form, route
        body = s[:at]
    else:
        body = s
    for phrase, _rel in _RELEASE:
        body = re.sub(re.escape(phrase), " ", body, flags=re.I)
    parts = [p for p in re.split(r"\s+/\s+|\s+\+\s+|\s+with\s+|\s+and\s+(?=[a-z]+\s+\d)", body, flags=re.I)
             if p.strip()]
    if len(parts) == 1 and "/" in parts[0] and not STRENGTH_RE.search(parts[0]):
        parts = [p for p in parts[0].split("/") if p.strip()]  # "Acetaminophen/Hydrocodone"
    out.ingredients = [_segment(p) for p in parts]
    if len(out.ingredients) == 1:
        cm = _COMPOUND_RE.search(body)
        if cm:  # "Co-codamol 30mg/500mg tablets": one strength per ingredient of the combination, in order
            u2 = (cm.group(4) or "mg").lower()
            u1 = (cm.group(2) or u2).lower()
            out.ingredients[0] = ParsedIngredient(out.ingredients[0].name, None)
            out.compound = [Strength(float(cm.group(1)), UNIT_ALIASES.get(u1, u1)),
                            Strength(float(cm.group(3)), UNIT_ALIASES.get(u2, u2))]
    if out.name_type == "free":
        if out.brand:
            out.name_type = "SBD"
        elif (any(i.strength for i in out.ingredients) or out.compound) and form is not None:
            out.name_type = "SCD" if re.search(r"\b(MG|MCG|UNT|ML)\b", raw) else "VMP"
    return out


# -- packaged data ------------------------------------------------------------------------------------------------------
@dataclass
class TermData:
    """The terminology files, parsed (not yet joined to the knowledge base: knowledge.py does that)."""

    medicines: dict[str, Any]
    results: dict[str, Any]
    dmd: list[tuple[str, str, str]]  # (dm+d id, type, name)
    condition_codes: list[tuple[str, str, str, str]]  # (SNOMED code, condition key, list id, term)


def _files(root: Any = None) -> Any:
    return (root if root is not None else resources.files(TERMINOLOGY_PACKAGE)).joinpath(TERMINOLOGY_DIR)


def _yaml(name: str, root: Any = None) -> dict[str, Any]:
    with _files(root).joinpath(name).open("r", encoding="utf-8") as fh:
        return yaml.load(fh, Loader=SAFE_LOADER) or {}


def _csv(name: str, root: Any = None) -> list[dict[str, str]]:
    with _files(root).joinpath(name).open("r", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def read_term_data(root: Any = None) -> TermData:
    """Read the terminology files under `root` (a knowledge directory; default the packaged one)."""
    return TermData(
        medicines=_yaml("medicines.yaml", root),
        results=_yaml("results.yaml", root),
        dmd=[(r["dmd_id"], r["dmd_type"], r["dmd_name"]) for r in _csv("dmd/dmd_products.csv", root)],
        condition_codes=[(r["code"], r["condition"], r["codelist"], r["term"])
                         for r in _csv("codelists/snomed_conditions.csv", root)],
    )


@lru_cache(maxsize=1)
def load_term_data() -> TermData:
    """Read the packaged terminology files once per process."""
    return read_term_data()


def condition_keys_for_term(key: str, term: str, by_term: dict[str, str] | None) -> tuple[str, ...]:
    """Condition keys a code-list row stands for: its list's condition, a more specific one chosen by the row's term
    (e.g. "type 2" in the diabetes register -> type2_diabetes) and a CKD stage named in the term."""
    low = f" {term.lower()} "
    keys = [key]
    for phrase, specific in (by_term or {}).items():
        if phrase in low and specific not in keys:
            keys.append(specific)
            break
    stage = ckd_stage_from_text(term) if key == "ckd" else None
    if stage:
        keys.append(f"ckd_stage_{stage[0]}")
    return tuple(keys)


_DM_TYPE_RE = re.compile(r"\btype\s*(1|i|one|2|ii|two)\b|\b(non[- ]insulin[- ]dependent|insulin[- ]dependent)\b", re.I)


def diabetes_type_from_text(text: str) -> str | None:
    """type1_diabetes / type2_diabetes named in a diabetes term ("Type 1 diabetes mellitus", "Diabetes mellitus type
    2", "Non-insulin dependent diabetes"), else None."""
    m = _DM_TYPE_RE.search(text or "")
    if not m:
        return None
    word = (m.group(1) or m.group(2) or "").lower()
    if word in ("1", "i", "one", "insulin dependent", "insulin-dependent", "insulin dependent"):
        return "type1_diabetes"
    return "type2_diabetes"


# -- CKD stages -----------------------------------------------------------------------------------------------------
_CKD_TEXT_RE = re.compile(r"(?:stage|g)\s*([1-5])\s*([ab])?\b", re.I)


def ckd_stage_from_text(text: str) -> str | None:
    """The CKD stage ("1", "2", "3a", "3b", "3", "4", "5") named in a condition term, e.g. "Chronic kidney disease
    stage 3A" -> "3a"."""
    m = _CKD_TEXT_RE.search(text or "")
    if not m or not re.search(r"kidney|renal|ckd", text, re.I):
        return None
    return m.group(1) + (m.group(2) or "").lower()


def ckd_stage_from_egfr(egfr: float) -> str:
    """GFR category (KDIGO 2012 CKD guideline, adopted by NICE NG203 table 1): G1 >= 90, G2 60-89, G3a 45-59,
    G3b 30-44, G4 15-29, G5 < 15 (mL/min/1.73m2). A category alone is not a CKD diagnosis: NG203 needs a
    GFR < 60 (or markers of kidney damage) for more than 3 months - see `ckd_from_egfr_history`."""
    if egfr >= 90:
        return "1"
    if egfr >= 60:
        return "2"
    if egfr >= 45:
        return "3a"
    if egfr >= 30:
        return "3b"
    if egfr >= 15:
        return "4"
    return "5"


def ckd_from_egfr_history(values: list[tuple[str, float]], min_days: int = 90) -> str | None:
    """The CKD stage shown by eGFR results (ISO date, value): two results < 60 at least `min_days` apart with none
    >= 60 between them (NICE NG203 1.1: CKD is a GFR < 60 for more than 3 months); the stage is that of the latest
    result. None when the history does not show CKD."""
    from datetime import date as _date

    pts = sorted((d[:10], v) for d, v in values if d and len(d) >= 10)
    low: str | None = None
    for d, v in pts:
        if v >= 60:
            low = None
            continue
        if low is None:
            low = d
        elif (_date.fromisoformat(d) - _date.fromisoformat(low)).days >= min_days:
            last = pts[-1][1]
            return ckd_stage_from_egfr(last) if last < 60 else None
    return None


# -- results: units and formulae ------------------------------------------------------------------------------------
def hba1c_ifcc_from_dcct(percent: float) -> float:
    """HbA1c in mmol/mol (IFCC) from % (NGSP/DCCT) by the IFCC-NGSP master equation
    NGSP = 0.09148 x IFCC + 2.152 (Hoelzel et al., Clin Chem 2004;50:166-174)."""
    return (percent - 2.152) / 0.09148


def hba1c_dcct_from_ifcc(mmol_mol: float) -> float:
    """HbA1c in % (NGSP/DCCT) from mmol/mol (IFCC), the same master equation."""
    return 0.09148 * mmol_mol + 2.152


def convert_result(spec: dict[str, Any], value: float, unit: str | None) -> float | None:
    """A result value in its canonical unit (`spec` is a results.yaml entry). A missing unit is read as the canonical
    unit; an HbA1c without a unit is read as % when below 20 (no mmol/mol value is that low in life); an unknown unit
    gives None (the value is then not used, never guessed)."""
    units: dict[str, Any] = spec.get("units") or {}
    u = (unit or "").strip()
    if not u:
        if spec.get("unit") == "mmol/mol" and value < 20:
            return round(hba1c_ifcc_from_dcct(value), 1)
        return value
    factor = units.get(u)
    if factor is None:
        low = {k.lower(): f for k, f in units.items()}
        factor = low.get(u.lower())
    if factor is None:
        return None
    if factor == "dcct":
        return round(hba1c_ifcc_from_dcct(value), 1)
    return value * float(factor)


def cockcroft_gault(age: float, weight_kg: float, creatinine_umol_l: float, sex: str | None) -> float | None:
    """Creatinine clearance (mL/min) by the Cockcroft-Gault formula in SI units, as the BNF ("Prescribing in renal
    impairment") and MHRA Drug Safety Update (October 2019, "Prescribing medicines in renal impairment: using the
    appropriate estimate of renal function") give it: CrCl = (140 - age) x weight (kg) x 1.23 (men) or 1.04 (women)
    / serum creatinine (umol/L), with actual body weight (Cockcroft DW, Gault MH. Nephron 1976;16:31-41).
    None when sex is unknown or a value is missing/implausible."""
    if sex not in ("male", "female") or not age or not weight_kg or not creatinine_umol_l:
        return None
    if creatinine_umol_l <= 0 or weight_kg <= 0 or age >= 140:
        return None
    k = 1.23 if sex == "male" else 1.04
    return (140 - age) * weight_kg * k / creatinine_umol_l


# -- joining the terminology to the knowledge base ------------------------------------------------------------------
def merge_ingredients(meds: dict[str, Any], data: TermData | None) -> dict[str, Any]:
    """The medicines of ../medicines.yaml plus the terminology's ingredients: new keys come in without classes (class
    membership stays in medicines.yaml), known keys gain the extra names. Returns a new dict."""
    out = {k: dict(v) for k, v in meds.items()}
    if data is None:
        return out
    for key, names in (data.medicines.get("ingredients") or {}).items():
        names = [str(n) for n in names or []]
        if key in out:
            syn = list(out[key].get("synonyms") or [])
            out[key]["synonyms"] = syn + [n for n in names if n not in syn]
        else:
            out[key] = {"classes": [], "synonyms": [key.replace("_", " "), *names], "_terminology": True}
    return out


@dataclass
class CompiledTerms:
    """Terminology compiled for fast lookup (held by `Knowledge.term`)."""

    version: str = ""
    condition_codes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # SNOMED code -> condition keys
    condition_implies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    codelists: list[dict[str, Any]] = field(default_factory=list)
    result_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    result_loinc: dict[str, str] = field(default_factory=dict)
    result_snomed: dict[str, str] = field(default_factory=dict)
    result_text: Any = None  # PhraseIndex
    allergen_codes: frozenset[str] = frozenset()
    allergen_text: Any = None  # PhraseIndex
    device_text: Any = None  # PhraseIndex
    brands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    code_names: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, code) -> product name
    # (product name, ingredients) -> ingredient strengths and parsed name: names repeat across a population
    strengths_cache: dict[tuple[str, frozenset[str]], tuple[Any, Any]] = field(default_factory=dict)


def compile_terms(kb: Any, data: TermData | None, conditions: dict[str, Any], *, phrase_index: Any,
                  recognise_text: Any, rxnorm: str, sct: str) -> CompiledTerms:
    """Join the terminology data to a compiled knowledge base (`kb`): brand names and RxNorm/dm+d product codes go
    into its medicine index (a code is mapped only when its product name resolves completely), code lists and
    implied conditions, result codes/units and non-medicinal items into the returned `CompiledTerms`. knowledge.py
    passes its phrase index class, its text recogniser and its system keys (this module does not import it)."""
    PhraseIndex, recognise_medicine_text = phrase_index, recognise_text  # noqa: N806
    SYSTEM_RXNORM, SYSTEM_SCT = rxnorm, sct  # noqa: N806
    ct = CompiledTerms()
    ct.result_text, ct.allergen_text, ct.device_text = PhraseIndex(), PhraseIndex(), PhraseIndex()
    for key, c in (conditions.get("conditions") or {}).items():
        for s in c.get("snomed", []) or []:
            ct.condition_codes[str(s["code"])] = (key,)
        if c.get("implies"):
            ct.condition_implies[key] = tuple(c["implies"])
    for key in list(conditions.get("conditions") or {}):
        if key.startswith("ckd_stage_"):
            ct.condition_implies.setdefault(key, ("ckd",))
    for t in ("type1_diabetes", "type2_diabetes"):
        ct.condition_implies.setdefault(t, ("diabetes",))
    if data is None:
        return ct
    ct.version = str(data.medicines.get("version", ""))
    # conditions: code lists (a code may stand for several conditions)
    lists = {cl["id"]: cl for cl in conditions.get("codelists", []) or []}
    ct.codelists = list(lists.values())
    for code, key, list_id, term in data.condition_codes:
        keys = condition_keys_for_term(key, term, (lists.get(list_id) or {}).get("by_term"))
        prev = ct.condition_codes.get(code, ())
        ct.condition_codes[code] = tuple(dict.fromkeys(prev + keys))
    # medicines: brands, then product codes named by their product names
    for brand, spec in (data.medicines.get("brands") or {}).items():
        ings = tuple(spec["ingredients"])
        unknown = [i for i in ings if i not in kb.medicines]
        if unknown:
            raise ValueError(f"terminology brand {brand!r}: unknown ingredient(s) {unknown}")
        ct.brands[str(brand)] = ings
        kb.med_text.add(str(brand), ings)
        if len(str(brand)) <= 3:  # a short brand matches only as the whole text: also as a pack ("Yaz 28 Day Pack")
            kb.med_text.add(f"{brand} day pack", ings)
    named: list[tuple[str, str, str]] = [(SYSTEM_RXNORM, str(c), str(n))
                                         for c, n in (data.medicines.get("rxnorm") or {}).items()]
    named += [(SYSTEM_SCT, i, n) for i, _t, n in data.dmd]
    for system, code, name in named:
        ct.code_names[(system, code)] = name
        if (system, code) in kb.med_codes:
            continue
        ings, missing = recognise_medicine_text(kb, name)
        if ings and not missing:
            kb.med_codes[(system, code)] = tuple(sorted(ings))
    # results
    for key, spec in (data.results.get("results") or {}).items():
        ct.result_specs[key] = spec
        if hasattr(kb, "result_units"):
            kb.result_units.setdefault(key, str(spec.get("unit", "")))  # values are converted to this unit
        for code in spec.get("loinc", []) or []:
            ct.result_loinc[str(code)] = key
        for code in spec.get("snomed", []) or []:
            ct.result_snomed[str(code)] = key
        for t in spec.get("text", []) or []:
            ct.result_text.add(str(t), (key,))
    # non-medicinal items
    nm = data.medicines.get("non_medicinal") or {}
    ct.allergen_codes = frozenset(str(a["code"]) for a in nm.get("allergens", []) or [])
    for t in nm.get("allergen_text", []) or []:
        ct.allergen_text.add(str(t), ("allergen",))
    for t in nm.get("device_text", []) or []:
        ct.device_text.add(str(t), ("device",))
    return ct


@lru_cache(maxsize=8192)
def parsed_name(text: str) -> ParsedName:
    """`parse_medicine_name`, cached per distinct name (names repeat across a population); treat as read-only."""
    return parse_medicine_name(text)
