"""One person's story across the ICS: demographics, conditions, medicines, results and activity in every setting.

Everything here is a function of (seed, person index) only, so output for person i never depends on others.
Resources are plain dicts handed to `emit(resource_type, resource)`; ground-truth records go to `truth(record)`.
"""

from __future__ import annotations

import base64
import math
import random
from array import array
from bisect import bisect_left
from collections.abc import Callable
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from joinedup.fhir.nhs_number import check_digit
from joinedup.synth import care_processes, outcomes, workforce
from joinedup.synth.knowledge import cumulative, knowledge
from joinedup.synth.system import System

NHS = "https://fhir.nhs.uk/Id/nhs-number"
# identifiers an organisation numbers itself, namespaced by its ODS code (as the HL7 v2 feed maps them: docs/hl7-v2.md)
VISIT_NUMBER = "https://joinedup.example/fhir/Id/ods/{ods}/visit-number"
LA_ID = "https://joinedup.example/Id/local-authority-person"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DMD = "https://dmd.nhs.uk"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
EXT_IMD = "https://joinedup.example/fhir/StructureDefinition/imd-quintile"
EXT_ETH = "https://joinedup.example/fhir/StructureDefinition/ethnic-group"
RESTRICTED = [{"system": CONF, "code": "R", "display": "restricted"}]

CLASS_AMB = {"system": ACT, "code": "AMB", "display": "ambulatory"}
CLASS_EMER = {"system": ACT, "code": "EMER", "display": "emergency"}
CLASS_IMP = {"system": ACT, "code": "IMP", "display": "inpatient encounter"}
CLASS_HH = {"system": ACT, "code": "HH", "display": "home health"}
CLASS_VR = {"system": ACT, "code": "VR", "display": "virtual"}
DIED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "exp",
                    "display": "Expired"}], "text": "Died in hospital"}
ACTIVE = {"coding": [{"system": CLIN, "code": "active"}]}
CONFIRMED = {"coding": [{"system": VER, "code": "confirmed"}]}
CAT_VITAL = [{"coding": [{"system": OBS_CAT, "code": "vital-signs", "display": "Vital Signs"}]}]
CAT_LAB = [{"coding": [{"system": OBS_CAT, "code": "laboratory", "display": "Laboratory"}]}]
CAT_PROBLEM = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item", "display": "Problem List Item"}]}]
CONTINUOUS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                          "code": "continuous", "display": "Continuous long term therapy"}]}
ACUTE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                     "code": "acute", "display": "Short course (acute) therapy"}]}
POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
SPECIALTY_WARD = {"cardiology": "cardiology", "respiratory": "respiratory", "older_people": "older_people",
                  "renal": "renal", "diabetes": "renal", "rheumatology": "general"}
ADMISSION_SPECIALTY = {"heart_failure": "cardiology", "atrial_fibrillation": "cardiology", "ihd": "cardiology",
                       "copd": "respiratory", "asthma": "respiratory", "falls": "older_people",
                       "frailty": "older_people", "dementia": "older_people", "ckd": "renal",
                       "type2_diabetes": "diabetes", "stroke_tia": "older_people"}
PROBLEM_ORDER = ["nsaid_ckd", "nsaid_heart_failure", "triple_whammy", "anticoagulant_antiplatelet_no_ppi",
                 "metformin_low_egfr", "benzodiazepine_falls", "duplicate_class_after_discharge"]
DUPLICATE_GROUPS = ("ras_blocker", "anticoagulant", "statin", "ppi", "nsaid", "benzodiazepine", "antiplatelet",
                    "loop_diuretic", "ccb_dihydropyridine", "biguanide")


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


class Context:
    """Everything shared by all people of one run: knowledge, the system, dates and reusable fragments."""

    def __init__(self, *, seed: int, today: date, system: System, years: int = 3):
        k = knowledge()
        self.k = k
        self.seed = seed
        self.system = system
        self.today = today
        self.today_ord = today.toordinal()
        self.days = round(365.25 * years)
        self.t0 = self.today_ord - self.days
        self.years = years
        pop = k["population"]
        bands = pop["age_bands"]
        self.age_bands = [(lo, hi, ms) for lo, hi, _, ms in bands]
        self.age_cum = cumulative([pct for _, _, pct, _ in bands])
        eth = pop["ethnicity"]
        self.eth_keys = list(eth)
        self.eth_cum = cumulative([v[0] for v in eth.values()])
        self.eth_text = {key: v[1] for key, v in eth.items()}
        self.districts = pop["postcode_districts"]
        self.district_cum = cumulative([d["weight"] for d in self.districts])
        self.imd_cum = [cumulative(d["imd"]) for d in self.districts]
        self.names = k["names"]
        d = k["derived"]
        self.cond_order = d["order"]
        self.cond = k["conditions"]["conditions"]
        self.band_upper = d["band_upper"]
        self.base = d["base"]
        self.norm = d["norm"]
        self.depr = d["deprivation"]
        self.cond_code = {}
        for key, c in self.cond.items():
            code = {"coding": [{"system": SCT, "code": c["snomed"]["code"], "display": c["snomed"]["display"]}]}
            if c.get("text"):
                code["text"] = c["text"]
            self.cond_code[key] = code
        self.stage_codes = {s: {"coding": [{"system": SCT, "code": v["code"], "display": v["display"]}]}
                            for s, v in self.cond["ckd"]["stage_codes"].items()}
        self.stage_keys = list(self.cond["ckd"]["stage_mix"])
        self.stage_cum = cumulative(list(self.cond["ckd"]["stage_mix"].values()))
        tia = self.cond["stroke_tia"]["alt_snomed"]
        self.tia_code = {"coding": [{"system": SCT, "code": tia["code"], "display": tia["display"]}]}
        med = k["medicines"]
        self.products = med["products"]
        self.regimens = med["regimens"]
        self.problems = med["problems"]
        self.discrepancies = med["discrepancies"]
        self.appropriate_nsaid = med["appropriate_nsaid"]
        self.acute_courses = med["acute_courses"]
        self.extra_prescribing = med.get("extra_prescribing", {})
        self.med_concept = {}
        self.dosage = {}
        for key, p in self.products.items():
            self.med_concept[key] = {"coding": [{"system": DMD, "code": p["vmp"], "display": p["display"]}],
                                     "text": p["display"]}
            self.dosage[key] = self._dosage(p, p["text"])
        obs = k["observations"]
        self.oc = {}
        for key, c in obs["codes"].items():
            self.oc[key] = {"coding": [{"system": LOINC, "code": c["code"], "display": c["display"]}]}
        self.ounits = {key: (c.get("unit"), c.get("ucum")) for key, c in obs["codes"].items()}
        self.ov = obs["values"]
        o = k["organisations"]
        self.act = o["activity"]
        self.specialist = k["conditions"]["specialist_care"]
        self.social = pop["social_care"]
        self.carer = pop["carer"]
        self.care_home = pop["care_home"]
        self.mortality = pop["mortality"]
        self.enc_type = {}
        for text, v in o.get("encounter_types", {}).items():
            self.enc_type[text] = [{"coding": [{"system": SCT, "code": v["code"], "display": v["display"]}],
                                    "text": text}]
        dsum = o["document_types"]["discharge_summary"]
        self.discharge_type = {"coding": [{"system": SCT, "code": dsum["code"], "display": dsum["display"]}],
                               "text": "Discharge summary"}
        self.calibration = {key: c.get("calibration", 1.0) for key, c in self.cond.items()}
        # dates: day offset -> ISO string, from 110 years before today to today
        self.date_base = self.today_ord - 110 * 366
        self._dates: dict[int, str] = {}
        self.meta = {}
        for org in self._all_orgs():
            self.meta[org] = {"source": f"Organization/{org}"}
            self.meta[(org, "R")] = {"source": f"Organization/{org}", "security": RESTRICTED}
        self.org_ref = {org: ref("Organization", org) for org in self._all_orgs()}
        s = system
        self.ac = s.acute["id"]
        self.cm = s.community["id"]
        self.mh = s.mental_health["id"]
        self.la = s.local_authority["id"]

    def _all_orgs(self) -> list[str]:
        s = self.system
        out = [p["id"] for p in s.practices]
        out += [s.acute["id"], s.community["id"], s.mental_health["id"], s.local_authority["id"], s.icb]
        out += s.pharmacies + [c["id"] for c in s.care_homes]
        return out

    @staticmethod
    def _dosage(p: dict[str, Any], text: str) -> list[dict[str, Any]]:
        dose = {"doseQuantity": {"value": p["dose"], "unit": p["unit"]}}
        if p.get("as_needed"):
            return [{"text": text, "asNeededBoolean": True, "doseAndRate": [dose]}]
        if p.get("per_week"):
            timing = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}
        else:
            timing = {"repeat": {"frequency": p["per_day"], "period": 1, "periodUnit": "d"}}
        return [{"text": text, "timing": timing, "doseAndRate": [dose]}]

    def day(self, ordinal: int) -> str:
        s = self._dates.get(ordinal)
        if s is None:
            s = date.fromordinal(ordinal).isoformat()
            self._dates[ordinal] = s
        return s

    def dt(self, ordinal: int, minute: int) -> str:
        """Date-time string for a day ordinal and a minute of the day (UTC)."""
        return f"{self.day(ordinal)}T{minute // 60:02d}:{minute % 60:02d}:00Z"


def _pick(rng: random.Random, cum: list[float]) -> int:
    return bisect_left(cum, rng.random())


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def _weighted(rng: random.Random, options: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(o["w"] for o in options)
    x = rng.random() * total
    for o in options:
        x -= o["w"]
        if x <= 0:
            return o
    return options[-1]


@lru_cache(maxsize=4)
def _valid_bases(prefix: int) -> array:
    """All six-digit suffixes b for which prefix*10^6 + b has a valid modulus 11 check digit, ascending."""
    digits = f"{prefix:03d}"
    s0 = int(digits[0]) * 10 + int(digits[1]) * 9 + int(digits[2]) * 8
    hi_w = [(h // 100) * 7 + (h // 10 % 10) * 6 + (h % 10) * 5 for h in range(1000)]
    lo_w = [(x // 100) * 4 + (x // 10 % 10) * 3 + (x % 10) * 2 for x in range(1000)]
    out = array("i")
    for h in range(1000):
        base, hw = h * 1000, s0 + hi_w[h]
        out.extend(base + x for x in range(1000) if (hw + lo_w[x]) % 11 != 1)
    return out


# Identifier for people beyond the capacity of the NHS number test range (populations over ~909,000).
SYNTHETIC_ID = "https://joinedup.example/Id/synthetic-person"


def nhs_number(index: int, seed: int) -> str | None:
    """A valid NHS number unique to `index` within a run, from the 999 test range (deterministic).

    People are spread over the ~909,000 valid 999-range numbers by a seed-dependent bijection. The 999 range
    is the only one reserved for test data, so people beyond its capacity get no NHS number (None) rather
    than a number that could belong to someone real; see docs/synthetic-population.md.
    """
    prefix = 999
    valid = _valid_bases(prefix)
    v = len(valid)
    if index >= v:
        return None
    step = 600_011
    while math.gcd(step, v) != 1:
        step += 2
    base = valid[(index * step + seed * 7_919) % v]
    nine = f"{prefix:03d}{base:06d}"
    return nine + str(check_digit(nine))


class Person:
    """Generates one person; call `run()`."""

    def __init__(self, ctx: Context, index: int, emit: Callable[[str, dict], None],
                 truth: Callable[[dict], None]):
        self.c = ctx
        self.i = index
        self.rng = random.Random(ctx.seed * 1_000_003 + index)
        self.emit = emit
        self.truth = truth
        self.pid = f"p-{index:07d}"
        self.pref = ref("Patient", self.pid)
        self.counters: dict[str, int] = {}
        self.meds: list[dict[str, Any]] = []     # GP medication list entries
        self.conds: dict[str, dict[str, Any]] = {}
        self.latest_egfr: tuple[int, float, str] | None = None
        self.specialties: set[str] = set()
        self.community_staff: str | None = None
        self.social_worker: str | None = None
        self.admissions = 0
        self.doc_for_switch: dict[str, str] = {}
        self.end = ctx.today_ord        # last day of activity: the reference date, or the day of death
        self.death: tuple[int, str] | None = None
        self.death_minute: int | None = None
        self.death_encounter: str | None = None

    # -- helpers -----------------------------------------------------------------------------------------
    def nid(self, prefix: str) -> str:
        n = self.counters.get(prefix, 0) + 1
        self.counters[prefix] = n
        return f"{prefix}-{self.i:07d}-{n:04d}"

    def rand_day(self, lo: int, hi: int) -> int:
        return lo if hi <= lo else self.rng.randrange(lo, hi)

    # -- the story -----------------------------------------------------------------------------------------
    def run(self) -> None:
        self.demographics()
        self.conditions()
        self.medicines()
        self.gp_activity()
        care_processes.emit(self)  # population health: care processes (some overdue) and eFI deficits
        self.hospital_activity()
        self.community_activity()
        self.mental_health_activity()
        self.social_care()
        self.carers()
        self.care_team()
        outcomes.emit(self)  # outcome measures: follow-up after discharge, care plans (own random stream)
        self.problems_truth()
        self.death_truth()
        care_processes.truth(self)  # expected register membership
        outcomes.truth(self)  # each outcome measure's numerator and denominator for this person

    def demographics(self) -> None:
        c, rng = self.c, self.rng
        lo, hi, male_share = c.age_bands[_pick(rng, c.age_cum)]
        self.age = age = rng.randint(lo, hi)
        self.male = male = rng.random() < male_share
        self.birth_ord = c.today_ord - int(age * 365.25) - rng.randrange(365)
        self.band = bisect_left(c.band_upper, age)
        self.eth = c.eth_keys[_pick(rng, c.eth_cum)]
        d = _pick(rng, c.district_cum)
        self.district = c.districts[d]
        self.imd = _pick(rng, c.imd_cum[d]) + 1
        names = c.names
        sex = "male" if male else "female"
        group = self.eth
        if group == "mixed":
            group = ("white", "white", "black", "asian")[rng.randrange(4)]
        self.name_group = group
        self.given = rng.choice(names["given"][group][sex])
        sgroup = group if rng.random() < 0.85 else "white"
        self.family = rng.choice(names["surnames"][sgroup])
        s = c.system
        self.practice = s.practices[_pick(rng, s.practice_cum)]
        self.org = self.practice["id"]
        self.usual_gp = rng.choice(self.practice["gps"])
        dist = self.district
        self.address = {"use": "home", "line": [f"{rng.randint(1, 180)} {rng.choice(names['streets'])}"],
                        "city": dist["town"],
                        "postalCode": f"{dist['district']} {rng.randint(1, 9)}{rng.choice(POSTCODE_LETTERS)}"
                                      f"{rng.choice(POSTCODE_LETTERS)}", "country": "GB"}
        self.nhs = nhs_number(self.i, c.seed)

    def conditions(self) -> None:
        c, rng = self.c, self.rng
        sex = 1 if self.male else 0
        b = self.band
        present: dict[str, bool] = {}
        for key in c.cond_order:
            p = c.base[key][sex][b]
            if p <= 0:
                continue
            p *= c.depr[key][self.imd - 1]
            deps = c.cond[key].get("co_occurs_with")
            if deps:
                for dep, rr in deps.items():
                    if dep in present:
                        p *= rr
                p /= c.norm[key][sex][b]
            p *= c.calibration[key]
            if rng.random() < min(p, 0.95):
                present[key] = True
        self.decide_death(present)
        # onset, stage, record on the GP problem list
        for key in c.cond_order:
            if key not in present:
                continue
            if rng.random() < 0.12 or self.age < 4:
                onset = self.rand_day(max(c.t0, self.birth_ord + 1), self.end - 30)
            else:
                lo_age = max(0, self.age - 25)
                onset_age = rng.uniform(lo_age, max(lo_age, self.age - 3))
                onset = min(c.t0 - 1, self.birth_ord + int(onset_age * 365.25))
            entry: dict[str, Any] = {"onset": onset}
            if key == "ckd":
                entry["stage"] = c.stage_keys[_pick(rng, c.stage_cum)]
            self.conds[key] = entry
        self.n_cond = len(self.conds)
        for key, entry in self.conds.items():
            code = c.cond_code[key]
            if key == "ckd":
                code = c.stage_codes[entry["stage"][0]]
            elif key == "stroke_tia" and rng.random() < c.cond[key]["alt_share"]:
                code = c.tia_code
            entry["code"] = code
            sensitive = rng.random() < c.cond[key].get("sensitive_share", 0.0)
            cid = self.nid("con")
            entry["id"] = cid
            self.emit("Condition", {
                "resourceType": "Condition", "id": cid,
                "meta": c.meta[(self.org, "R")] if sensitive else c.meta[self.org],
                "clinicalStatus": ACTIVE, "verificationStatus": CONFIRMED, "category": CAT_PROBLEM,
                "code": code, "subject": self.pref, "onsetDateTime": c.day(entry["onset"]),
                "recordedDate": c.day(max(entry["onset"], self.birth_ord)),
                "recorder": ref("Practitioner", self.usual_gp),
            })

    def decide_death(self, present: dict[str, bool]) -> None:
        """Whether (and when, where) this person dies during the activity window (ONS rates x multimorbidity)."""
        c, rng = self.c, self.rng
        m = c.mortality
        x = rng.random()    # drawn for everyone so later draws do not depend on age
        if self.age < m["by_age"][0][0]:
            return
        rate = next(r[2] if self.male else r[3] for r in m["by_age"] if r[0] <= self.age <= r[1])
        f = m["factor"]
        factor = f["base"] + f["per_condition"] * len(present) + sum(v for k, v in m["conditions"].items()
                                                                     if k in present)
        rate *= min(factor, f["max"])
        if x >= 1 - math.exp(-rate * c.years):
            return
        day = c.t0 + 30 + rng.randrange(max(1, c.days - 31))
        y = rng.random()
        place = "hospital"
        for key, share in m["place"].items():
            if y < share:
                place = key
                break
            y -= share
        self.end = day
        self.death = (day, place)

    # -- medicines ---------------------------------------------------------------------------------------
    def groups(self) -> set[str]:
        out: set[str] = set()
        for m in self.meds:
            if m["status"] == "active":
                out.update(self.c.products[m["product"]]["groups"])
        return out

    def classes(self) -> set[str]:
        out: set[str] = set()
        for m in self.meds:
            if m["status"] == "active":
                out.update(self.c.products[m["product"]]["classes"])
        return out

    def add_med(self, product: str, start: int, reason: str | None, planted: str | None = None,
                course: str = "continuous", end: int | None = None) -> dict[str, Any]:
        m = {"product": product, "start": start, "reason": reason, "planted": planted, "course": course,
             "status": "active" if course == "continuous" else "completed", "end": end, "id": self.nid("mrq"),
             "prescriber": self.usual_gp}
        self.meds.append(m)
        return m

    def med_start(self, reason: str | None) -> int:
        c = self.c
        onset = self.conds[reason]["onset"] if reason in self.conds else c.t0
        return min(max(onset + self.rng.randrange(0, 60), self.birth_ord + 1), max(self.end - 1, self.birth_ord + 1))

    def medicines(self) -> None:
        c, rng = self.c, self.rng
        if self.age < 12:
            if "asthma" in self.conds:
                self.add_med("salbutamol_inhaler", self.med_start("asthma"), "asthma")
            for m in self.meds:
                self.emit_request(m)
            return
        stage = self.conds.get("ckd", {}).get("stage", "")
        for key in c.cond_order:
            if key not in self.conds or key not in c.regimens:
                continue
            for line in c.regimens[key]:
                if rng.random() >= line["p"]:
                    continue
                if line.get("not_if_ckd_stage") and stage[:1] in line["not_if_ckd_stage"]:
                    continue
                cls = self.classes()
                if any(x in cls for x in line.get("skip_if_classes", ())):
                    continue
                if line.get("only_if_classes") and not set(line["only_if_classes"]) & cls:
                    continue
                have = self.groups()
                options = [o for o in line["options"] if not set(c.products[o["product"]]["groups"]) & have
                           and c.products[o["product"]].get("sex", "male" if self.male else "female")
                           == ("male" if self.male else "female")]
                if not options:
                    continue
                self.add_med(_weighted(rng, options)["product"], self.med_start(key), key)
        # gastro-protection when an anticoagulant and an antiplatelet are both needed (NICE NG196)
        g = self.groups()
        if "anticoagulant" in g and "antiplatelet" in g and "ppi" not in g:
            self.add_med("omeprazole_20", self.med_start(None), None)
        # appropriate NSAID use
        an = c.appropriate_nsaid
        reason = next((k for k in an["conditions"] if k in self.conds), None)
        g = self.groups()
        if (reason and rng.random() < an["p"] and self.age < 75 and not {"ckd", "heart_failure", "peptic_ulcer"}
                & set(self.conds) and "anticoagulant" not in g and "nsaid" not in g
                and not ("ras_blocker" in g and ({"loop_diuretic", "mra"} & self.classes()))):
            self.add_med(_weighted(rng, an["options"])["product"], self.med_start(reason), reason)
            if self.age >= an["ppi_from_age"] and "ppi" not in g:
                self.add_med("omeprazole_20", self.med_start(reason), reason)
        # prescribing for problems outside the condition list (overactive bladder in older women)
        for x in c.extra_prescribing.values():
            p = x["p_frail"] if ({"frailty", "falls"} & set(self.conds)) else x["p"]
            if (("male" if self.male else "female") == x["sex"] and self.age >= x["min_age"]
                    and x["product"] not in {m["product"] for m in self.meds} and rng.random() < p):
                self.add_med(x["product"], self.rand_day(c.t0, self.end - 30), None)
        # acute courses
        for key, course in c.acute_courses.items():
            if key in self.conds and "falls" not in self.conds and rng.random() < course["p"]:
                start = self.rand_day(c.t0, self.end - 30)
                self.add_med(course["product"], start, key, course="acute", end=start + course["days"])
        self.plant_problems()
        for m in self.meds:
            self.emit_request(m)

    def plant_problems(self) -> None:
        c, rng = self.c, self.rng
        conds = self.conds
        stage = conds.get("ckd", {}).get("stage", "")
        p = c.problems
        recent = max(c.t0, self.end - 540)

        def plant(kind: str, reason: str | None) -> None:
            product = _weighted(rng, p[kind]["products"])["product"]
            start = self.rand_day(max(recent, self.conds[reason]["onset"] if reason in conds else recent),
                                  self.end - 14)
            self.add_med(product, start, reason, planted=kind)

        g = self.groups
        if "ckd" in conds and "nsaid" not in g() and rng.random() < p["nsaid_ckd"]["rate"]:
            plant("nsaid_ckd", "ckd")
        if "heart_failure" in conds and "nsaid" not in g() and rng.random() < p["nsaid_heart_failure"]["rate"]:
            plant("nsaid_heart_failure", "heart_failure")
        if ("ras_blocker" in g() and {"loop_diuretic", "mra"} & self.classes() and "nsaid" not in g()
                and rng.random() < p["triple_whammy"]["rate"]):
            plant("triple_whammy", None)
        if ("anticoagulant" in g() and "antiplatelet" not in g() and "ppi" not in g()
                and ({"ihd", "stroke_tia"} & set(conds) or self.age >= 75)
                and rng.random() < p["anticoagulant_antiplatelet_no_ppi"]["rate"]):
            plant("anticoagulant_antiplatelet_no_ppi", None)
        if ("type2_diabetes" in conds and stage[:1] in ("4", "5") and "biguanide" not in g()
                and rng.random() < p["metformin_low_egfr"]["rate"]):
            plant("metformin_low_egfr", "type2_diabetes")
        if "falls" in conds and "benzodiazepine" not in g() and rng.random() < p["benzodiazepine_falls"]["rate"]:
            plant("benzodiazepine_falls", None)
        if ("bisphosphonate_oral" in self.classes() and "calcium_supplement" not in self.classes()
                and rng.random() < p["bisphosphonate_calcium_timing"]["rate"]):
            plant("bisphosphonate_calcium_timing", "osteoporosis")

    def emit_request(self, m: dict[str, Any]) -> None:
        c = self.c
        res: dict[str, Any] = {
            "resourceType": "MedicationRequest", "id": m["id"], "meta": c.meta[self.org],
            "status": m["status"], "intent": "order",
            "courseOfTherapyType": CONTINUOUS if m["course"] == "continuous" else ACUTE,
            "medicationCodeableConcept": c.med_concept[m["product"]], "subject": self.pref,
            "authoredOn": c.day(m["start"]), "requester": ref("Practitioner", m["prescriber"]),
            "dosageInstruction": c.dosage[m["product"]],
        }
        if m["reason"] and m["reason"] in self.conds:
            res["reasonReference"] = [ref("Condition", self.conds[m["reason"]]["id"])]
        if m["end"]:
            res["dispenseRequest"] = {"validityPeriod": {"start": c.day(m["start"]), "end": c.day(m["end"])}}
        self.emit("MedicationRequest", res)

    def active_at(self, day: int) -> list[dict[str, Any]]:
        return [m for m in self.meds if m["status"] == "active" and m["start"] <= day]

    # -- observations ------------------------------------------------------------------------------------
    def obs(self, key: str, day: int, minute: int, value: float, org: str, enc: str | None = None,
            method: str | None = None, decimals: int = 0) -> str:
        c = self.c
        oid = self.nid("obs")
        unit, ucum = c.ounits[key]
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": oid, "meta": c.meta[org], "status": "final",
            "category": CAT_LAB if key in ("creatinine", "egfr", "potassium", "hba1c") else CAT_VITAL,
            "code": c.oc[key], "subject": self.pref, "effectiveDateTime": c.dt(day, minute),
            "valueQuantity": {"value": round(value, decimals) if decimals else round(value), "unit": unit,
                              "system": UCUM, "code": ucum},
        }
        if enc:
            res["encounter"] = ref("Encounter", enc)
        if method:
            res["method"] = {"text": method}
        self.emit("Observation", res)
        return oid

    def bp(self, day: int, minute: int, org: str, enc: str | None, method: str | None = None) -> None:
        c, rng = self.c, self.rng
        v = c.ov
        htn = "hypertension" in self.conds
        sbp = v["systolic"]["mean"] + max(0, self.age - 40) * v["systolic"]["per_year_over_40"] \
            + (v["systolic"]["hypertension"] if htn else 0) + rng.gauss(0, v["systolic"]["sd"])
        dbp = v["diastolic"]["mean"] + (v["diastolic"]["hypertension"] if htn else 0) \
            + rng.gauss(0, v["diastolic"]["sd"])
        sbp = min(max(sbp, v["systolic"]["min"]), v["systolic"]["max"])
        dbp = min(max(dbp, v["diastolic"]["min"]), min(v["diastolic"]["max"], sbp - 15))
        oid = self.nid("obs")
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": oid, "meta": c.meta[org], "status": "final",
            "category": CAT_VITAL, "code": c.oc["bp_panel"], "subject": self.pref,
            "effectiveDateTime": c.dt(day, minute),
            "component": [
                {"code": c.oc["systolic"], "valueQuantity": {"value": int(sbp), "unit": "mm[Hg]", "system": UCUM,
                                                            "code": "mm[Hg]"}},
                {"code": c.oc["diastolic"], "valueQuantity": {"value": int(dbp), "unit": "mm[Hg]", "system": UCUM,
                                                             "code": "mm[Hg]"}},
            ],
        }
        if enc:
            res["encounter"] = ref("Encounter", enc)
        if method:
            res["method"] = {"text": method}
        self.emit("Observation", res)

    def egfr_value(self) -> float:
        c, rng = self.c, self.rng
        v = c.ov
        stage = self.conds.get("ckd", {}).get("stage")
        if stage:
            lo, hi = v["egfr_stage"][stage]
            return rng.uniform(lo, hi)
        e = v["egfr_no_ckd"]
        x = e["start"] - max(0, self.age - 30) * e["per_year_over_30"] + rng.gauss(0, e["sd"])
        return min(max(x, e["min"]), e["max"])

    def renal_bloods(self, day: int) -> None:
        c, rng = self.c, self.rng
        minute = rng.randrange(480, 720)
        egfr = self.egfr_value()
        # creatinine from the CKD-EPI relationship, roughly inverted (umol/L)
        creat = (80.0 if self.male else 65.0) * (95.0 / egfr) ** 1.1 * (1 + rng.gauss(0, 0.04))
        k = c.ov["potassium"]
        pot = k["mean"] + rng.gauss(0, k["sd"])
        if self.conds.get("ckd", {}).get("stage", "")[:1] in ("4", "5"):
            pot += k["ckd_4_5"]
        if "ras_blocker" in self.groups():
            pot += k["ras_blocker"]
        pot = min(max(pot, k["min"]), k["max"])
        self.obs("creatinine", day, minute, creat, self.c.ac)
        oid = self.obs("egfr", day, minute, egfr, self.c.ac)
        self.obs("potassium", day, minute, pot, self.c.ac, decimals=1)
        if self.latest_egfr is None or day >= self.latest_egfr[0]:
            self.latest_egfr = (day, round(egfr), oid)

    def hba1c(self, day: int) -> None:
        c, rng = self.c, self.rng
        h = c.ov["hba1c"]
        if "type2_diabetes" in self.conds:
            val = rng.gauss(h["diabetes_mean"], h["diabetes_sd"])
        else:
            val = rng.gauss(h["mean"], h["sd"])
        self.obs("hba1c", day, rng.randrange(480, 720), min(max(val, h["min"]), h["max"]), c.ac)

    # -- encounters ----------------------------------------------------------------------------------------
    def encounter(self, org: str, cls: dict, type_text: str, day: int, minute: int, minutes: int,
                  practitioner: str | None, location: str | None, end_day: int | None = None,
                  service: str | None = None, subject: dict | None = None, sensitive: bool = False,
                  extra: dict | None = None, end_minute: int | None = None) -> str:
        c = self.c
        eid = self.nid("enc")
        end_ord = end_day if end_day is not None else day
        end_min = minute + minutes if end_day is None else minute
        if end_minute is not None:
            end_min = end_minute
        if end_min >= 1440:
            end_min = 1439
        res: dict[str, Any] = {
            "resourceType": "Encounter", "id": eid, "meta": c.meta[(org, "R")] if sensitive else c.meta[org],
            "status": "finished", "class": cls, "type": c.enc_type.get(type_text) or [{"text": type_text}],
            "subject": subject or self.pref,
            "period": {"start": c.dt(day, minute), "end": c.dt(end_ord, end_min)},
            "serviceProvider": c.org_ref[org],
        }
        if service:
            res["serviceType"] = {"text": service}
        if practitioner:
            res["participant"] = [{"individual": ref("Practitioner", practitioner)}]
        if location:
            res["location"] = [{"location": ref("Location", location)}]
        if extra:
            res.update(extra)
        if org == c.ac and c.system.acute.get("ods"):  # the hospital PAS's visit number (PV1-19 of its ADT feed)
            res["identifier"] = [{"system": VISIT_NUMBER.format(ods=c.system.acute["ods"]), "value": eid}]
        outcomes.on_encounter(self, res, org=org, cls=cls, day=day, minute=minute, end_day=end_ord,
                              practitioner=practitioner, subject=subject)  # outcome measures: contacts, diagnoses
        self.emit("Encounter", res)
        return eid

    def gp_activity(self) -> None:
        c, rng = self.c, self.rng
        a = c.act["gp_per_year"]
        lam = a["base"] + a["per_condition"] * self.n_cond + (a["age_75_plus"] if self.age >= 75 else 0) \
            + (a["female_16_45"] if (not self.male and 16 <= self.age <= 45) else 0)
        n = _poisson(rng, min(lam, a["max"]) * c.years)
        prac = self.practice
        days = sorted(self.rand_day(max(c.t0, self.birth_ord), self.end) for _ in range(n))
        cv = {"hypertension", "type2_diabetes", "ckd", "ihd", "stroke_tia", "heart_failure"} & set(self.conds)
        resp = {"copd", "heart_failure", "asthma"} & set(self.conds)
        last_weight = -10_000
        v = c.ov
        bmi = min(max(rng.gauss(v["bmi"]["mean"] + (v["bmi"]["diabetes"] if "type2_diabetes" in self.conds
                                                   else 0), v["bmi"]["sd"]), v["bmi"]["min"]), v["bmi"]["max"])
        height = (1.76 if self.male else 1.62) + rng.gauss(0, 0.07)
        for day in days:
            if rng.random() < c.act["gp_share_nurse"]:
                who, kind = rng.choice(prac["nurses"]), "Practice nurse appointment"
            elif rng.random() < prac["continuity"] or len(prac["gps"]) == 1:
                who, kind = self.usual_gp, "GP consultation"
            else:
                who, kind = rng.choice(prac["gps"]), "GP consultation"
            minute = rng.randrange(480, 1080, 10)
            remote = rng.random() < 0.3
            eid = self.encounter(self.org, CLASS_VR if remote else CLASS_AMB,
                                 kind + (" (telephone)" if remote else ""), day, minute, 10, who, prac["location"])
            if remote:
                continue
            if self.age >= 18 and ((cv and rng.random() < 0.6) or rng.random() < 0.12):
                self.bp(day, minute + 2, self.org, eid)
            if self.age >= 18 and day - last_weight > 300 and rng.random() < 0.5:
                last_weight = day
                bmi_now = bmi + rng.gauss(0, 0.4)
                self.obs("weight", day, minute + 3, bmi_now * height * height, self.org, eid, decimals=1)
                self.obs("bmi", day, minute + 3, bmi_now, self.org, eid, decimals=1)
            if resp and rng.random() < 0.5:
                s = v["spo2"]
                val = s["mean"] + rng.gauss(0, s["sd"]) + (s["copd"] if "copd" in self.conds else 0) \
                    + (s["heart_failure"] if "heart_failure" in self.conds else 0)
                self.obs("spo2", day, minute + 4, min(max(val, s["min"]), s["max"]), self.org, eid)
                h = v["heart_rate"]
                hr = h["mean"] + rng.gauss(0, h["sd"]) + (h["atrial_fibrillation"] if "atrial_fibrillation"
                                                          in self.conds else 0)
                self.obs("heart_rate", day, minute + 4, min(max(hr, h["min"]), h["max"]), self.org, eid)
        # scheduled bloods (annual reviews; CKD 4-5 quarterly; diabetes HbA1c six-monthly)
        if self.age >= 18:
            renal = cv or "atrial_fibrillation" in self.conds or "ras_blocker" in self.groups()
            stage = self.conds.get("ckd", {}).get("stage", "")
            every = 90 if stage[:1] in ("4", "5") else 365
            if renal:
                d = c.t0 + rng.randrange(0, every)
                while d < self.end:
                    self.renal_bloods(d)
                    d += every + rng.randrange(-20, 21)
            elif rng.random() < 0.25:
                self.renal_bloods(self.rand_day(c.t0, self.end))
            if "type2_diabetes" in self.conds:
                d = c.t0 + rng.randrange(0, 180)
                while d < self.end:
                    self.hba1c(d)
                    d += 180 + rng.randrange(-20, 21)
            elif self.age >= 40 and rng.random() < 0.2:
                self.hba1c(self.rand_day(c.t0, self.end))
        # GP registration
        reg_start = max(self.birth_ord, self.end - rng.randrange(0, 40 * 365))
        self.emit("EpisodeOfCare", {
            "resourceType": "EpisodeOfCare", "id": self.nid("eoc"), "meta": c.meta[self.org],
            "status": "finished" if self.death else "active",
            "type": [{"text": "GP registration"}], "patient": self.pref,
            "managingOrganization": c.org_ref[self.org],
            "period": {"start": c.day(reg_start), **({"end": c.day(self.end)} if self.death else {})},
            "careManager": ref("Practitioner", self.usual_gp),
        })

    # -- hospital --------------------------------------------------------------------------------------------
    def hospital_condition(self, key: str, org: str, recorder: str, day: int, sensitive: bool = False) -> None:
        """The same problem as held by another organisation, sometimes with a different onset date."""
        c, rng = self.c, self.rng
        entry = self.conds[key]
        onset = entry["onset"]
        differs = rng.random() < c.discrepancies["condition_onset_differs"]["rate"]
        if differs:
            onset = max(self.birth_ord + 1, onset + rng.choice((-1, 1)) * rng.randrange(200, 1500))
            onset = min(onset, day)
        cid = self.nid("con")
        self.emit("Condition", {
            "resourceType": "Condition", "id": cid, "meta": c.meta[(org, "R")] if sensitive else c.meta[org],
            "clinicalStatus": ACTIVE, "verificationStatus": CONFIRMED, "code": entry["code"],
            "subject": self.pref, "onsetDateTime": c.day(onset) if differs else c.day(entry["onset"])[:7],
            "recordedDate": c.day(day), "recorder": ref("Practitioner", recorder),
        })
        if differs:
            self.truth({"kind": "discrepancy", "type": "condition_onset_differs", "patient": f"Patient/{self.pid}",
                        "condition": key,
                        "a": {"organization": f"Organization/{self.org}", "resource": f"Condition/{entry['id']}",
                              "value": c.day(entry["onset"])},
                        "b": {"organization": f"Organization/{org}", "resource": f"Condition/{cid}",
                              "value": c.day(onset)}})

    def hospital_activity(self) -> None:
        c, rng = self.c, self.rng
        s = c.system
        ac = s.acute
        # outpatients for conditions under specialist care
        for key, info in c.specialist.items():
            if key not in self.conds or info["specialty"] in ("memory_clinic", "mental_health"):
                continue
            share = info["share"]
            if key == "ckd" and self.conds["ckd"]["stage"][:1] in ("4", "5"):
                share = info["share_stage_4_5"]
            spec = info["specialty"]
            if spec in self.specialties or rng.random() >= share:
                continue
            self.specialties.add(spec)
            consultant = rng.choice(ac["consultants"][spec])
            clinic = ac["clinics"][spec]
            display = ac["specialty_display"][spec]
            new_referral = rng.random() < 0.4
            if new_referral:
                ref_day = self.rand_day(c.t0, self.end - 30)
                wait = max(7, int(rng.gauss(c.act["referral_wait_days"]["mean"], c.act["referral_wait_days"]["sd"])))
                first = ref_day + wait
                sid = self.nid("srq")
                self.emit("ServiceRequest", {
                    "resourceType": "ServiceRequest", "id": sid, "meta": c.meta[self.org],
                    "status": "completed" if first < self.end else "active", "intent": "order",
                    "category": [{"text": "Outpatient referral"}], "code": {"text": f"Referral to {display}"},
                    "subject": self.pref, "authoredOn": c.day(ref_day), "requester": ref("Practitioner", self.usual_gp),
                    "performer": [c.org_ref[c.ac]], "reasonReference": [ref("Condition", self.conds[key]["id"])],
                })
                day = first
                based = {"basedOn": [ref("ServiceRequest", sid)]}
            else:
                day = c.t0 + rng.randrange(0, 200)
                based = None
            first_visit = True
            while day < self.end:
                eid = self.encounter(c.ac, CLASS_AMB, "Outpatient appointment", day, rng.randrange(540, 1020, 15),
                                     20, consultant if rng.random() < 0.7 else rng.choice(ac["nurses"][spec]), clinic,
                                     service=display, extra=based if first_visit else None)
                if first_visit:
                    self.hospital_condition(key, c.ac, consultant, day)
                    if key in ("heart_failure", "ckd"):
                        self.renal_bloods(day)
                    if key in ("hypertension", "heart_failure", "ckd", "type2_diabetes"):
                        self.bp(day, 600, c.ac, eid)
                first_visit = False
                lo, hi = c.act["outpatient_follow_up_days"]
                day += rng.randrange(lo, hi)
        # advice and guidance between the GP and a consultant
        aag = c.act["advice_and_guidance"]
        specs = [c.specialist[k]["specialty"] for k in self.conds if k in c.specialist
                 and c.specialist[k]["specialty"] in ac["consultants"]]
        if self.n_cond >= 2 and specs and rng.random() < aag["p_multimorbid"]:
            spec = rng.choice(specs)
            consultant = rng.choice(ac["consultants"][spec])
            key = next(k for k in self.conds if c.specialist.get(k, {}).get("specialty") == spec)
            sent = self.rand_day(c.t0, self.end - 20)
            minute = rng.randrange(480, 1080)
            qid = self.nid("com")
            self.emit("Communication", {
                "resourceType": "Communication", "id": qid, "meta": c.meta[self.org], "status": "completed",
                "category": [{"text": "Advice and guidance request"}], "subject": self.pref,
                "sent": c.dt(sent, minute), "sender": ref("Practitioner", self.usual_gp),
                "recipient": [ref("Practitioner", consultant)],
                "reasonReference": [ref("Condition", self.conds[key]["id"])],
                "payload": [{"contentString": f"Advice please on managing {key.replace('_', ' ')} alongside "
                                              f"{self.n_cond - 1} other long-term conditions."}],
            })
            answered = None
            if rng.random() >= aag["unanswered"]:
                delay = rng.lognormvariate(math.log(aag["median_days"]), aag["sigma"])
                rmin = minute + int(delay * 1440)
                rday, rmin = sent + rmin // 1440, rmin % 1440
                if rday < self.end:
                    answered = (rday, rmin)
                    self.emit("Communication", {
                        "resourceType": "Communication", "id": self.nid("com"), "meta": c.meta[c.ac],
                        "status": "completed", "category": [{"text": "Advice and guidance response"}],
                        "subject": self.pref, "inResponseTo": [ref("Communication", qid)],
                        "sent": c.dt(rday, rmin), "sender": ref("Practitioner", consultant),
                        "recipient": [ref("Practitioner", self.usual_gp)],
                        "payload": [{"contentString": "Advice given: see recommendations; no need to refer."}],
                    })
            outcomes.on_advice(self, sent, minute, answered)
        # A&E attendances and emergency admissions
        ae = c.act["ae_per_year"]
        n_ae = _poisson(rng, (ae["base"] + ae["per_condition"] * self.n_cond
                              + (ae["age_80_plus"] if self.age >= 80 else 0)) * c.years)
        for _ in range(n_ae):
            day = self.rand_day(max(c.t0, self.birth_ord), self.end)
            self.encounter(c.ac, CLASS_EMER, "Emergency department attendance", day, rng.randrange(0, 1300),
                           rng.randrange(90, 300), None, ac["ae"], service="Emergency medicine")
        ad = c.act["admission_per_year"]
        lam = (ad["base"] + ad["per_condition"] * self.n_cond + (ad["frailty"] if "frailty" in self.conds else 0)
               + (ad["age_80_plus"] if self.age >= 80 else 0)) * c.years
        days = sorted(self.rand_day(max(c.t0, self.birth_ord), self.end - 2) for _ in range(_poisson(rng, lam)))
        last_discharge = -1
        for day in days:
            if day <= last_discharge:
                continue
            last_discharge = self.admission(day)
            if rng.random() < c.act["readmission_30d"]:
                re_day = last_discharge + rng.randrange(2, 30)
                if re_day < self.end - 2:
                    last_discharge = self.admission(re_day)
        if self.death and self.death[1] == "hospital":
            self.final_admission(last_discharge)

    def final_admission(self, last_discharge: int) -> None:
        """The emergency admission in which the person dies: A&E, then an inpatient stay ending on the day of death."""
        c, rng = self.c, self.rng
        ac = c.system.acute
        day_of_death = self.death[0]
        start = min(day_of_death, max(last_discharge + 1, day_of_death - max(0, int(rng.lognormvariate(1.6, 0.8)))))
        reasons = [k for k in self.conds if k in ADMISSION_SPECIALTY]
        reason = rng.choice(reasons) if reasons else None
        spec = ADMISSION_SPECIALTY.get(reason, "older_people")
        ward = ac["wards"].get(SPECIALTY_WARD.get(spec, "general"), ac["wards"]["general"])
        consultant = rng.choice(ac["consultants"][spec])
        minute = rng.randrange(0, 1000)
        self.admissions += 1
        self.encounter(c.ac, CLASS_EMER, "Emergency department attendance", start, minute, 180, None, ac["ae"],
                       service="Emergency medicine")
        extra: dict[str, Any] = {"hospitalization": {"admitSource": {"text": "Emergency department"},
                                                     "dischargeDisposition": DIED}}
        if reason:
            extra["reasonReference"] = [ref("Condition", self.conds[reason]["id"])]
        death_minute = rng.randrange(0, 1440)
        if day_of_death == start:
            death_minute = max(death_minute, min(minute + 200, 1439))
        self.death_minute = death_minute
        eid = self.encounter(c.ac, CLASS_IMP, "Emergency admission", start, min(minute + 200, 1439), 0, consultant,
                             ward, end_day=day_of_death, service=ac["specialty_display"][spec], extra=extra,
                             end_minute=death_minute)
        self.death_encounter = eid

    def admission(self, day: int) -> int:
        c, rng = self.c, self.rng
        ac = c.system.acute
        self.admissions += 1
        reasons = [k for k in self.conds if k in ADMISSION_SPECIALTY]
        reason = rng.choice(reasons) if reasons else None
        spec = ADMISSION_SPECIALTY.get(reason, "older_people" if self.age >= 75 else "respiratory")
        ward = ac["wards"].get(SPECIALTY_WARD.get(spec, "general"), ac["wards"]["general"])
        if rng.random() < 0.35:
            ward = ac["wards"]["amu"]
        consultant = rng.choice(ac["consultants"][spec])
        los_med = c.act["los_days"]["median_80_plus" if self.age >= 80 else "median"]
        los = max(1, int(rng.lognormvariate(math.log(los_med), 0.7)))
        discharge = min(day + los, self.end - 1)
        minute = rng.randrange(0, 1200)
        self.encounter(c.ac, CLASS_EMER, "Emergency department attendance", day, minute, 180, None, ac["ae"],
                       service="Emergency medicine")
        extra: dict[str, Any] = {"hospitalization": {"admitSource": {"text": "Emergency department"},
                                                     "dischargeDisposition": {"text": "Usual place of residence"}}}
        if reason:
            extra["reasonReference"] = [ref("Condition", self.conds[reason]["id"])]
        eid = self.encounter(c.ac, CLASS_IMP, "Emergency admission", day, min(minute + 200, 1439), 0, consultant,
                             ward, end_day=discharge, service=ac["specialty_display"][spec], extra=extra)
        if reason and rng.random() < 0.5:
            self.hospital_condition(reason, c.ac, consultant, day)
        self.renal_bloods(day)
        # discharge medicines: the hospital's list, with the changes the GP list may not pick up
        meds = self.active_at(day)
        lines = []
        doc_id = self.nid("doc")
        d = c.discrepancies
        switch_map = c.problems["duplicate_class_after_discharge"]["switches"]
        changed = stopped = None
        if meds and rng.random() < d["dose_changed_in_hospital"]["rate"]:
            cands = [m for m in meds if m["product"] in d["dose_changed_in_hospital"]["changes"]]
            changed = rng.choice(cands) if cands else None
        if meds and rng.random() < d["stopped_at_discharge"]["rate"]:
            cands = [m for m in meds if m["product"] in d["stopped_at_discharge"]["stoppable"] and m is not changed]
            stopped = rng.choice(cands) if cands else None
        switch = None
        cands = [m for m in meds if m["product"] in switch_map and m is not changed and m is not stopped]
        if cands and rng.random() < c.problems["duplicate_class_after_discharge"]["rate"]:
            switch = rng.choice(cands)
        for m in meds:
            p = c.products[m["product"]]
            mid = self.nid("mst")
            res: dict[str, Any] = {
                "resourceType": "MedicationStatement", "id": mid, "meta": c.meta[c.ac], "status": "active",
                "medicationCodeableConcept": c.med_concept[m["product"]], "subject": self.pref,
                "context": ref("Encounter", eid), "effectivePeriod": {"start": c.day(m["start"])},
                "dateAsserted": c.day(discharge), "informationSource": ref("Practitioner", consultant),
                "dosage": c.dosage[m["product"]], "note": [{"text": "Medication on discharge"}],
            }
            if m is changed:
                text = d["dose_changed_in_hospital"]["changes"][m["product"]]
                res["dosage"] = c._dosage(p, text)
                self.truth({"kind": "discrepancy", "type": "dose_changed_in_hospital", "patient": f"Patient/{self.pid}",
                            "medicine": p["display"],
                            "a": {"organization": f"Organization/{self.org}", "resource": f"MedicationRequest/{m['id']}",
                                  "value": p["text"]},
                            "b": {"organization": f"Organization/{c.ac}", "resource": f"MedicationStatement/{mid}",
                                  "value": text}})
                lines.append(f"{p['display']}: DOSE CHANGED - {text}")
            elif m is stopped or m is switch:
                res["status"] = "stopped"
                res["statusReason"] = [{"text": "Stopped during admission"}]
                res["effectivePeriod"] = {"start": c.day(m["start"]), "end": c.day(discharge)}
                self.truth({"kind": "discrepancy", "type": "stopped_at_discharge_still_on_gp_list",
                            "patient": f"Patient/{self.pid}", "medicine": p["display"],
                            "a": {"organization": f"Organization/{self.org}", "resource": f"MedicationRequest/{m['id']}",
                                  "value": "active"},
                            "b": {"organization": f"Organization/{c.ac}", "resource": f"MedicationStatement/{mid}",
                                  "value": "stopped"}})
                lines.append(f"{p['display']}: STOPPED")
            else:
                lines.append(f"{p['display']}: continue - {p['text']}")
            self.emit("MedicationStatement", res)
        if switch is not None:
            new_product = switch_map[switch["product"]]
            np_ = c.products[new_product]
            mid = self.nid("mst")
            self.emit("MedicationStatement", {
                "resourceType": "MedicationStatement", "id": mid, "meta": c.meta[c.ac], "status": "active",
                "medicationCodeableConcept": c.med_concept[new_product], "subject": self.pref,
                "context": ref("Encounter", eid), "effectivePeriod": {"start": c.day(discharge)},
                "dateAsserted": c.day(discharge), "informationSource": ref("Practitioner", consultant),
                "dosage": c.dosage[new_product], "note": [{"text": "Medication on discharge (new)"}],
            })
            lines.append(f"{np_['display']}: NEW - started in hospital instead of {c.products[switch['product']]['display']}")
            # the GP adds the new medicine from the discharge letter but does not stop the old one
            start = min(discharge + rng.randrange(2, 10), self.end - 1)
            new = self.add_med(new_product, start, switch["reason"], planted="duplicate_class_after_discharge")
            new["replaces"] = switch["id"]
            new["document"] = doc_id
            self.emit_request(new)
        text = (f"Discharge summary\nAdmitted {c.day(day)} via the emergency department; discharged {c.day(discharge)}.\n"
                f"Diagnosis: {(reason or 'acute illness').replace('_', ' ')}.\nMedicines on discharge:\n"
                + "\n".join(lines) + "\nGP actions: please review medicines as above.\n")
        self.emit("DocumentReference", {
            "resourceType": "DocumentReference", "id": doc_id, "meta": c.meta[c.ac], "status": "current",
            "type": c.discharge_type, "subject": self.pref, "date": c.dt(discharge, 900),
            "author": [ref("Practitioner", consultant)], "custodian": c.org_ref[c.ac],
            "content": [{"attachment": {"contentType": "text/plain", "language": "en-GB",
                                        "data": base64.b64encode(text.encode()).decode(),
                                        "title": "Discharge summary"}}],
            "context": {"encounter": [ref("Encounter", eid)],
                        "period": {"start": c.day(day), "end": c.day(discharge)}},
        })
        return discharge

    # -- community, mental health, social care --------------------------------------------------------------
    def community_activity(self) -> None:
        c, rng = self.c, self.rng
        cm = c.system.community
        a = c.act["community"]
        p = max(a["frailty"] if "frailty" in self.conds else 0, a["heart_failure"] if "heart_failure" in self.conds
                else 0, a["age_85_plus"] if self.age >= 85 else 0)
        if p and rng.random() < p:
            complex_ = self.n_cond >= 5
            nurse = rng.choice(cm["matrons"] if complex_ else cm["nurses"])
            self.community_staff = nurse
            team = cm["teams"]["matrons" if complex_ else "district_nursing"]
            months = rng.randint(*a["months"])
            start = self.rand_day(c.t0, self.end - 30)
            n = months * a["visits_per_month"]
            day = start
            for j in range(n):
                if day >= self.end:
                    break
                eid = self.encounter(c.cm, CLASS_HH, "Community nursing visit", day, rng.randrange(540, 1020, 10),
                                     30, nurse, team, service="District nursing" if not complex_ else "Community matron")
                if j == 0:
                    for m in self.active_at(day):
                        self.emit("MedicationStatement", {
                            "resourceType": "MedicationStatement", "id": self.nid("mst"), "meta": c.meta[c.cm],
                            "status": "active", "medicationCodeableConcept": c.med_concept[m["product"]],
                            "subject": self.pref, "dateAsserted": c.day(day),
                            "informationSource": ref("Practitioner", nurse), "dosage": c.dosage[m["product"]],
                            "note": [{"text": "Medicines reconciliation at first community visit"}],
                        })
                if rng.random() < 0.3:
                    self.bp(day, 600, c.cm, eid)
                day += rng.randrange(7, 21)
        if "falls" in self.conds and rng.random() < c.act["physio_after_falls"]:
            physio = rng.choice(cm["physios"])
            day = self.rand_day(c.t0, self.end - 60)
            for _ in range(rng.randint(3, 6)):
                self.encounter(c.cm, CLASS_HH, "Physiotherapy (falls prevention)", day, rng.randrange(540, 1020, 15),
                               45, physio, cm["teams"]["therapies"], service="Community therapies")
                day += rng.randrange(7, 15)
        rm = c.act["remote_monitoring"]
        target = "heart_failure" if "heart_failure" in self.conds else ("copd" if "copd" in self.conds else None)
        if target and rng.random() < rm[target]:
            weeks = rng.randint(*rm["weeks"])
            day = self.rand_day(c.t0, self.end - weeks * 7)
            method = "Home remote monitoring (patient-entered)"
            bmi_w = (80.0 if self.male else 68.0) + rng.gauss(0, 8)
            for _ in range(weeks * rm["readings_per_week"]):
                minute = rng.randrange(420, 600)
                if target == "heart_failure":
                    self.obs("weight", day, minute, bmi_w + rng.gauss(0, 0.8), c.cm, method=method, decimals=1)
                    self.bp(day, minute, c.cm, None, method=method)
                else:
                    s = c.ov["spo2"]
                    self.obs("spo2", day, minute, min(max(rng.gauss(s["mean"] + s["copd"], 1.5), s["min"]), 99),
                             c.cm, method=method)
                    self.obs("heart_rate", day, minute, rng.gauss(80, 8), c.cm, method=method)
                day += rng.choice((3, 4))

    def mental_health_activity(self) -> None:
        c, rng = self.c, self.rng
        mh = c.system.mental_health
        share = c.act["mental_health_sensitive_share"]
        for key in ("dementia", "depression", "anxiety"):
            info = c.specialist[key]
            if key not in self.conds or rng.random() >= info["share"]:
                continue
            memory = key == "dementia"
            team = mh["teams"]["memory" if memory else "cmht"]
            clinician = rng.choice(mh["consultants"] if memory or rng.random() < 0.4 else mh["nurses"])
            day = self.rand_day(c.t0, self.end - 30)
            sensitive = (not memory) and rng.random() < share
            for j in range(rng.randint(2, 6)):
                if day >= self.end:
                    break
                self.encounter(c.mh, CLASS_AMB, "Memory assessment" if memory else "Mental health review", day,
                               rng.randrange(540, 1020, 15), 45, clinician, team,
                               service="Memory assessment service" if memory else "Community mental health",
                               sensitive=sensitive)
                if j == 0:
                    self.hospital_condition(key, c.mh, clinician, day, sensitive=sensitive)
                day += rng.randrange(30, 120)
            break

    def social_care(self) -> None:
        c, rng = self.c, self.rng
        sc = c.social
        p = max(sc["dementia"] if "dementia" in self.conds else 0, sc["frailty"] if "frailty" in self.conds else 0,
                sc["falls"] if "falls" in self.conds else 0, sc["age_85_plus"] if self.age >= 85 else 0)
        ch = c.care_home
        self.care_home = None
        ch_p = next((q for lo, hi, q in ch["by_age"] if lo <= self.age <= hi), 0.0)
        if "dementia" in self.conds:
            ch_p *= ch["dementia_multiplier"]
        if ch_p and rng.random() < ch_p:
            self.care_home = rng.choice(c.system.care_homes)
            self.address = dict(self.care_home["address"], use="home")
            p = 1.0
        self.emit_patient()
        if not p or rng.random() >= p:
            return
        la = c.system.local_authority
        sw = rng.choice(la["social_workers"])
        self.social_worker = sw
        scid = f"sc-{self.i:07d}"
        variations: list[str] = []
        ident = [{"system": LA_ID, "value": f"NC{(self.i * 7_919 + c.seed) % 10_000_000:07d}"}]
        if self.nhs is not None and rng.random() >= sc["no_nhs_number"]:
            ident.append({"system": NHS, "value": self.nhs})
        else:
            variations.append("no_nhs_number")
        given, family = self.given, self.family
        if rng.random() < sc["name_variation"]:
            nick = c.names["nicknames"].get(given)
            choice = rng.random()
            if nick and choice < 0.4:
                given = nick
                variations.append("nickname")
            elif len(family) > 4 and choice < 0.8:
                j = rng.randrange(1, len(family) - 2)
                family = family[:j] + family[j + 1] + family[j] + family[j + 2:]
                variations.append("surname_transposition")
            else:
                family = family[:-1] if len(family) > 4 else family + family[-1]
                variations.append("surname_spelling")
        birth = date.fromordinal(self.birth_ord)
        if rng.random() < sc["dob_variation"]:
            if birth.day <= 12 and birth.day != birth.month:
                birth = birth.replace(day=birth.month, month=birth.day)
                variations.append("dob_day_month_swapped")
            else:
                birth = birth + timedelta(days=1 if birth.day < 28 else -1)
                variations.append("dob_off_by_one_day")
        address = self.address
        arng = random.Random(f"{c.seed}:{self.i}:address")  # own stream: the draws above are unchanged
        if arng.random() < sc.get("address_variation", 0.0):
            dist = self.district
            address = {"use": "home", "line": [f"{arng.randint(1, 180)} {arng.choice(c.names['streets'])}"],
                       "city": dist["town"],
                       "postalCode": f"{dist['district']} {arng.randint(1, 9)}{arng.choice(POSTCODE_LETTERS)}"
                                     f"{arng.choice(POSTCODE_LETTERS)}", "country": "GB"}
            variations.append("moved_address")
        self.emit("Patient", {
            "resourceType": "Patient", "id": scid, "meta": c.meta[c.la], "identifier": ident, "active": True,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": "male" if self.male else "female", "birthDate": birth.isoformat(), "address": [address],
        })
        self.truth({"kind": "same_person", "patient": f"Patient/{self.pid}", "record": f"Patient/{scid}",
                    "organization": f"Organization/{c.la}", "variations": variations})
        scref = ref("Patient", scid)
        day = self.rand_day(c.t0, self.end - 60)
        self.encounter(c.la, CLASS_HH, "Care Act needs assessment", day, rng.randrange(540, 960, 15), 90, sw,
                       la["location"], service="Adult social care", subject=scref)
        review = day + rng.randrange(300, 400)
        if review < self.end:
            self.encounter(c.la, CLASS_HH, "Care and support plan review", review, rng.randrange(540, 960, 15), 60,
                           sw, la["location"], service="Adult social care", subject=scref)
        start = day + rng.randrange(7, 45)
        if start < self.end:
            ended = rng.random() < 0.2
            period = {"start": c.day(start)}
            if ended:
                period["end"] = c.day(min(self.end - 1, start + rng.randrange(30, 400)))
            elif self.death:
                ended = True
                period["end"] = c.day(self.end)
            kind = "Residential care placement" if self.care_home else "Home care package"
            self.emit("EpisodeOfCare", {
                "resourceType": "EpisodeOfCare", "id": self.nid("eoc"), "meta": c.meta[c.la],
                "status": "finished" if ended else "active", "type": [{"text": kind}], "patient": scref,
                "managingOrganization": c.org_ref[c.la], "period": period, "careManager": ref("Practitioner", sw),
            })

    def emit_patient(self) -> None:
        c = self.c
        self.emit("Patient", {
            "resourceType": "Patient", "id": self.pid, "meta": c.meta[self.org],
            "extension": [{"url": EXT_ETH, "valueCodeableConcept": {"text": c.eth_text[self.eth]}},
                          {"url": EXT_IMD, "valueInteger": self.imd}],
            "identifier": ([{"system": NHS, "value": self.nhs}] if self.nhs is not None
                           else [{"system": SYNTHETIC_ID, "value": self.pid}]), "active": True,
            "name": [{"use": "official", "family": self.family, "given": [self.given]}],
            "gender": "male" if self.male else "female", "birthDate": c.day(self.birth_ord),
            "address": [self.address],
            "generalPractitioner": [c.org_ref[self.org], ref("Practitioner", self.usual_gp)],
            **({"deceasedDateTime": self.death_dt()} if self.death else {}),
        })

    def death_dt(self) -> str:
        if self.death[1] != "hospital":
            self.death_minute = getattr(self, "death_minute", None) or (self.i * 7 % 1440)
        return self.c.dt(self.death[0], self.death_minute)

    def death_truth(self) -> None:
        if not self.death:
            return
        day, place = self.death
        if place == "care_home" and not self.care_home:
            place = "home"
        resources = [f"Patient/{self.pid}"]
        if place == "hospital":
            resources.append(f"Encounter/{self.death_encounter}")
        self.truth({"kind": "death", "patient": f"Patient/{self.pid}", "date": self.death_dt(), "place": place,
                    "age": (day - self.birth_ord) // 365, "conditions": sorted(self.conds), "resources": resources})

    def carers(self) -> None:
        c, rng = self.c, self.rng
        cp = c.carer
        p = max(cp["dementia"] if "dementia" in self.conds else 0, cp["frailty"] if "frailty" in self.conds else 0,
                cp["other_social_care"] if self.social_worker else 0)
        if self.care_home or not p or rng.random() >= p:
            return
        code, display = rng.choice((("SPS", "spouse"), ("DAU", "daughter"), ("SON", "son"), ("FRND", "friend")))
        sex = {"SPS": "female" if self.male else "male", "DAU": "female", "SON": "male"}.get(code, "female")
        given = rng.choice(c.names["given"][self.name_group][sex])
        family = self.family if code in ("SPS", "SON") or rng.random() < 0.5 \
            else rng.choice(c.names["surnames"][self.name_group])
        res: dict[str, Any] = {
            "resourceType": "RelatedPerson", "id": self.nid("rp"), "meta": c.meta[self.org], "active": True,
            "patient": self.pref,
            "relationship": [{"coding": [{"system": ROLE, "code": code, "display": display}]},
                             {"text": "Unpaid carer"}],
            "name": [{"family": family, "given": [given]}], "gender": sex,
        }
        if code == "SPS":
            res["address"] = [self.address]
        self.emit("RelatedPerson", res)

    def care_team(self) -> None:
        c, rng = self.c, self.rng
        if self.n_cond < 2:
            return
        s = c.system
        parts = [{"role": [{"text": "GP"}], "member": ref("Practitioner", self.usual_gp),
                  "onBehalfOf": c.org_ref[self.org]}]
        for spec in sorted(self.specialties):
            parts.append({"role": [{"text": "Consultant"}], "member": ref("Practitioner",
                                                                         s.acute["consultants"][spec][0]),
                          "onBehalfOf": c.org_ref[c.ac]})
        if self.community_staff:
            parts.append({"role": [{"text": "Community nurse"}], "member": ref("Practitioner", self.community_staff),
                          "onBehalfOf": c.org_ref[c.cm]})
        if self.social_worker:
            parts.append({"role": [{"text": "Social worker"}], "member": ref("Practitioner", self.social_worker),
                          "onBehalfOf": c.org_ref[c.la]})
        score = self.n_cond + 2 * ("frailty" in self.conds) + 2 * ("dementia" in self.conds) \
            + 1.5 * min(self.admissions, 4) + (1 if self.care_home else 0)
        self.key_worker = None
        if score >= 6:
            kw = rng.choice(s.community["coordinators"])
            self.key_worker = kw
            parts.append({"role": [{"text": "care coordinator"}], "member": ref("Practitioner", kw),
                          "onBehalfOf": c.org_ref[c.cm]})
        team = {
            "resourceType": "CareTeam", "id": self.nid("ct"), "meta": c.meta[self.org], "status": "active",
            "name": "Multidisciplinary care team", "subject": self.pref, "participant": parts,
            "managingOrganization": [c.org_ref[self.org]],
        }
        workforce.emit(self, team)  # key worker handovers and tasks between organisations (own random streams)
        self.emit("CareTeam", team)

    # -- ground truth for prescribing problems -----------------------------------------------------------------
    def problems_truth(self) -> None:
        for rec in detect_problems(self.c, self.meds, self.conds, self.latest_egfr, self.age):
            rec["patient"] = f"Patient/{self.pid}"
            self.truth(rec)


def detect_problems(c: Context, meds: list[dict[str, Any]], conds: dict[str, dict[str, Any]],
                    latest_egfr: tuple[int, int, str] | None, age: int) -> list[dict[str, Any]]:
    """Every prescribing problem present in the final GP record (planted or co-occurring), in a fixed order."""
    active = [m for m in meds if m["status"] == "active"]
    prods = c.products

    def with_class(*classes: str) -> list[dict[str, Any]]:
        return [m for m in active if set(prods[m["product"]]["classes"]) & set(classes)]

    def rec(kind: str, items: list[dict[str, Any]], cond_keys: tuple[str, ...] = (),
            extra: list[str] | None = None) -> dict[str, Any]:
        resources = [f"MedicationRequest/{m['id']}" for m in items]
        resources += [f"Condition/{conds[k]['id']}" for k in cond_keys if k in conds]
        resources += extra or []
        planted = any(m.get("planted") == kind for m in items)
        return {"kind": "prescribing_problem", "problem": kind, "resources": resources, "planted": planted}

    out = []
    nsaids = with_class("nsaid")
    if nsaids and "ckd" in conds:
        out.append(rec("nsaid_ckd", nsaids, ("ckd",)))
    if nsaids and "heart_failure" in conds:
        out.append(rec("nsaid_heart_failure", nsaids, ("heart_failure",)))
    ras, diur = with_class("ace_inhibitor", "arb"), with_class("loop_diuretic", "mra")
    if nsaids and ras and diur:
        out.append(rec("triple_whammy", nsaids + ras + diur))
    anticoag, antiplat = with_class("anticoagulant_doac", "anticoagulant_vka"), with_class("antiplatelet")
    if anticoag and antiplat and not with_class("ppi"):
        out.append(rec("anticoagulant_antiplatelet_no_ppi", anticoag + antiplat))
    metformin = with_class("biguanide")
    if metformin and latest_egfr and latest_egfr[1] < 30:
        out.append(rec("metformin_low_egfr", metformin, extra=[f"Observation/{latest_egfr[2]}"]))
    benzos = with_class("benzodiazepine")
    if benzos and "falls" in conds:
        out.append(rec("benzodiazepine_falls", benzos, ("falls",)))
    # administration-timing clashes: calcium taken with an oral bisphosphonate or levothyroxine blocks absorption
    calcium = with_class("calcium_supplement")
    for kind, cls in (("bisphosphonate_calcium_timing", "bisphosphonate_oral"),
                      ("levothyroxine_calcium_timing", "thyroid_hormone")):
        partner = with_class(cls)
        if calcium and partner:
            out.append(rec(kind, partner + calcium))
    for group in DUPLICATE_GROUPS:
        items = [m for m in active if group in prods[m["product"]]["groups"]]
        if len(items) > 1:
            r = rec("duplicate_class_after_discharge", items,
                    extra=[f"DocumentReference/{m['document']}" for m in items if m.get("document")])
            r["group"] = group
            out.append(r)
    return out
