"""Synthetic ICS generator: validity, references, determinism, distributions and ground truth."""

from __future__ import annotations

import collections
import hashlib
import math
import re
from bisect import bisect_left
from datetime import date
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from joinedup.fhir.nhs_number import is_valid
from joinedup.synth.cli import generate_command
from joinedup.synth.knowledge import knowledge
from joinedup.synth.service import GenerateError, generate, read_ndjson

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
N = 3000
TODAY = date(2026, 6, 30)


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ics") / "out"
    generate(patients=N, seed=11, out=out, workers=2)
    return out


def _all(out: Path):
    for p in sorted(out.glob("*.ndjson")):
        if p.name.startswith("ground-truth"):
            continue
        with open(p, "rb") as fh:
            for line in fh:
                yield orjson.loads(line)


def _refs(obj, acc):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                acc.append(v)
            else:
                _refs(v, acc)
    elif isinstance(obj, list):
        for v in obj:
            _refs(v, acc)
    return acc


def _truth(out: Path) -> list[dict]:
    with open(out / "ground-truth.ndjson", "rb") as fh:
        return [orjson.loads(line) for line in fh]


def test_ids_unique_meta_source_and_references_resolve(population):
    ids: dict[str, set[str]] = collections.defaultdict(set)
    refs: list[str] = []
    sources: list[str] = []
    for r in _all(population):
        rid = r["id"]
        assert ID_RE.match(rid), rid
        assert rid not in ids[r["resourceType"]], f"duplicate {r['resourceType']}/{rid}"
        ids[r["resourceType"]].add(rid)
        sources.append(r["meta"]["source"])
        _refs(r, refs)
    for x in refs + sources:
        rtype, rid = x.split("/")
        assert rid in ids[rtype], f"unresolved reference {x}"
    assert all(s.startswith("Organization/") for s in sources)
    for rtype in ("Patient", "Condition", "MedicationRequest", "MedicationStatement", "Observation", "Encounter",
                  "ServiceRequest", "Communication", "DocumentReference", "CareTeam", "EpisodeOfCare",
                  "RelatedPerson", "Organization", "Location", "Practitioner", "PractitionerRole"):
        assert ids[rtype], f"no {rtype} generated"


def test_sample_validates_with_fhir_resources(population):
    from fhir.resources.R4B import get_fhir_model_class

    seen: collections.Counter[str] = collections.Counter()
    for r in _all(population):
        rt = r["resourceType"]
        seen[rt] += 1
        if seen[rt] % 7 == 1 and seen[rt] < 7 * 60:
            get_fhir_model_class(rt).model_validate(r)


def test_patients_nhs_numbers_practice_and_social_care_records(population):
    patients = list(read_ndjson(population, "Patient"))
    gp = [p for p in patients if p["id"].startswith("p-")]
    la = [p for p in patients if p["id"].startswith("sc-")]
    assert len(gp) == N
    numbers = [i["value"] for p in gp for i in p["identifier"] if i["system"] == "https://fhir.nhs.uk/Id/nhs-number"]
    assert len(numbers) == N and len(set(numbers)) == N
    assert all(is_valid(n) and n.startswith("999") for n in numbers)
    for p in gp:
        refs = [g["reference"] for g in p["generalPractitioner"]]
        assert refs[0].startswith("Organization/org-gp-") and refs[1].startswith("Practitioner/")
    assert la and all(p["meta"]["source"] == "Organization/org-la" for p in la)
    assert all(any(i["system"] == "https://joinedup.example/Id/local-authority-person" for i in p["identifier"])
               for p in la)
    without = [p for p in la if not any("nhs-number" in i["system"] for i in p["identifier"])]
    assert 0.15 < len(without) / len(la) < 0.6


def test_age_sex_and_prevalence_within_tolerance(population):
    k = knowledge()
    der = k["derived"]
    cond = k["conditions"]["conditions"]
    code2key = {}
    for key, c in cond.items():
        code2key[c["snomed"]["code"]] = key
        for s in c.get("stage_codes", {}).values():
            code2key[s["code"]] = key
        if "alt_snomed" in c:
            code2key[c["alt_snomed"]["code"]] = key
    has: dict[str, set[str]] = collections.defaultdict(set)
    for c in read_ndjson(population, "Condition"):
        if c["meta"]["source"].startswith("Organization/org-gp-"):
            has[c["subject"]["reference"].split("/")[1]].add(code2key[c["code"]["coding"][0]["code"]])
    expected: collections.Counter[str] = collections.Counter()
    observed: collections.Counter[str] = collections.Counter()
    ages = []
    for p in read_ndjson(population, "Patient"):
        if not p["id"].startswith("p-"):
            continue
        age = (TODAY - date.fromisoformat(p["birthDate"])).days // 365
        ages.append(age)
        band = bisect_left(der["band_upper"], age)
        sex = 1 if p["gender"] == "male" else 0
        for key in der["order"]:
            expected[key] += der["base"][key][sex][band]
            observed[key] += key in has[p["id"]]
    # ONS mid-2022: about 18.6% aged 65+, 49% male
    assert abs(sum(a >= 65 for a in ages) / N - 0.186) < 0.03
    for key in der["order"]:
        e, o = expected[key] / N, observed[key] / N
        tol = max(0.3 * e, 4 * math.sqrt(e * (1 - e) / N)) + 0.002
        assert abs(o - e) <= tol, f"{key}: expected {e:.4f}, observed {o:.4f}"
    # co-occurrence: hypertension is commoner with diabetes, anxiety with depression (Barnett 2012)
    def cond_p(a, b):
        with_b = [p for p, s in has.items() if b in s]
        return sum(a in has[p] for p in with_b) / max(1, len(with_b))
    assert cond_p("hypertension", "type2_diabetes") > 1.3 * observed["hypertension"] / N
    assert cond_p("anxiety", "depression") > 2 * observed["anxiety"] / N
    multimorbid = sum(len(s) >= 2 for s in has.values()) / N
    assert 0.15 < multimorbid < 0.32


def test_codes_come_from_the_knowledge_files(population):
    k = knowledge()
    vmps = {p["vmp"]: p["display"] for p in k["medicines"]["products"].values()}
    for rtype in ("MedicationRequest", "MedicationStatement"):
        for r in read_ndjson(population, rtype):
            coding = r["medicationCodeableConcept"]["coding"][0]
            assert coding["system"] == "https://dmd.nhs.uk" and vmps[coding["code"]] == coding["display"]
    loinc = {c["code"] for c in k["observations"]["codes"].values()}
    for o in read_ndjson(population, "Observation"):
        c = o["code"]["coding"][0]
        assert c["system"] == "http://loinc.org" and c["code"] in loinc
        if "valueQuantity" in o:
            assert o["valueQuantity"]["system"] == "http://unitsofmeasure.org"


def test_continuity_and_key_workers(population):
    practice_of, usual = {}, {}
    for p in read_ndjson(population, "Patient"):
        if p["id"].startswith("p-"):
            practice_of[p["id"]] = p["generalPractitioner"][0]["reference"]
            usual[p["id"]] = p["generalPractitioner"][1]["reference"]
    gp_consults = usual_hits = 0
    for e in read_ndjson(population, "Encounter"):
        if e["type"][0]["text"] == "GP consultation":
            pid = e["subject"]["reference"].split("/")[1]
            gp_consults += 1
            usual_hits += e["participant"][0]["individual"]["reference"] == usual[pid]
            assert e["serviceProvider"]["reference"] == practice_of[pid]
    assert 0.3 < usual_hits / gp_consults < 0.85
    teams = list(read_ndjson(population, "CareTeam"))
    key = [t for t in teams if any(p["role"][0]["text"] == "care coordinator" for p in t["participant"])]
    assert 0.02 < len(key) / N < 0.08
    restricted = [r for r in _all(population) if r["meta"].get("security")]
    assert restricted and all(s["code"] == "R" for r in restricted for s in r["meta"]["security"])


def _detect(out: Path) -> set[tuple[str, str]]:
    """An independent reading of the GP record: which prescribing problems does the data show?"""
    k = knowledge()
    prods = {p["vmp"]: p for p in k["medicines"]["products"].values()}
    cond = k["conditions"]["conditions"]
    ckd_codes = {s["code"] for s in cond["ckd"]["stage_codes"].values()}
    meds: dict[str, list[dict]] = collections.defaultdict(list)
    for m in read_ndjson(out, "MedicationRequest"):
        if m["status"] == "active":
            meds[m["subject"]["reference"]].append(prods[m["medicationCodeableConcept"]["coding"][0]["code"]])
    conds: dict[str, set[str]] = collections.defaultdict(set)
    for c in read_ndjson(out, "Condition"):
        if c["meta"]["source"].startswith("Organization/org-gp-"):
            code = c["code"]["coding"][0]["code"]
            conds[c["subject"]["reference"]].add("ckd" if code in ckd_codes else code)
    egfr: dict[str, tuple[str, float]] = {}
    for o in read_ndjson(out, "Observation"):
        if o["code"]["coding"][0]["code"] == "62238-1":
            s = o["subject"]["reference"]
            if s not in egfr or o["effectiveDateTime"] >= egfr[s][0]:
                egfr[s] = (o["effectiveDateTime"], o["valueQuantity"]["value"])
    hf, falls = cond["heart_failure"]["snomed"]["code"], cond["falls"]["snomed"]["code"]
    found = set()
    for pat, items in meds.items():
        classes = collections.Counter(c for p in items for c in set(p["classes"]))
        groups = collections.Counter(g for p in items for g in p["groups"])
        cs = conds[pat]
        if classes["nsaid"] and "ckd" in cs:
            found.add((pat, "nsaid_ckd"))
        if classes["nsaid"] and hf in cs:
            found.add((pat, "nsaid_heart_failure"))
        if classes["nsaid"] and (classes["ace_inhibitor"] or classes["arb"]) and (classes["loop_diuretic"]
                                                                                  or classes["mra"]):
            found.add((pat, "triple_whammy"))
        if groups["anticoagulant"] and classes["antiplatelet"] and not classes["ppi"]:
            found.add((pat, "anticoagulant_antiplatelet_no_ppi"))
        if classes["biguanide"] and pat in egfr and egfr[pat][1] < 30:
            found.add((pat, "metformin_low_egfr"))
        if classes["benzodiazepine"] and falls in cs:
            found.add((pat, "benzodiazepine_falls"))
        if classes["calcium_supplement"] and classes["bisphosphonate_oral"]:
            found.add((pat, "bisphosphonate_calcium_timing"))
        if classes["calcium_supplement"] and classes["thyroid_hormone"]:
            found.add((pat, "levothyroxine_calcium_timing"))
        if any(n > 1 for n in groups.values()):
            found.add((pat, "duplicate_class_after_discharge"))
    return found


def test_ground_truth_agrees_with_the_data(population):
    truth = _truth(population)
    kinds = collections.Counter(t["kind"] for t in truth)
    assert kinds["prescribing_problem"] and kinds["same_person"] and kinds["discrepancy"]
    problems = {(t["patient"], t["problem"]) for t in truth if t["kind"] == "prescribing_problem"}
    assert problems == _detect(population)
    planted = collections.Counter(t["problem"] for t in truth if t["kind"] == "prescribing_problem" and t["planted"])
    # rare kinds (metformin with eGFR < 30, benzodiazepine with falls) need bigger populations; see the bench
    assert len(planted) >= 3 and planted["duplicate_class_after_discharge"] > 0
    index = {}
    for r in _all(population):
        index[f"{r['resourceType']}/{r['id']}"] = r
    for t in truth:
        if t["kind"] == "prescribing_problem":
            assert all(x in index for x in t["resources"])
            assert all(index[x]["subject"]["reference"] == t["patient"] for x in t["resources"]
                       if not x.startswith("DocumentReference/"))
        elif t["kind"] == "same_person":
            gp, la = index[t["patient"]], index[t["record"]]
            has_nhs = any("nhs-number" in i["system"] for i in la["identifier"])
            assert has_nhs != ("no_nhs_number" in t["variations"])
            if has_nhs:
                assert la["identifier"][1]["value"] == gp["identifier"][0]["value"]
            if "nickname" not in t["variations"] and not any(v.startswith("surname") for v in t["variations"]):
                assert la["name"] == gp["name"]
            if not any(v.startswith("dob") for v in t["variations"]):
                assert la["birthDate"] == gp["birthDate"]
            else:
                assert la["birthDate"] != gp["birthDate"]
        elif t["kind"] == "discrepancy":
            a, b = index[t["a"]["resource"]], index[t["b"]["resource"]]
            assert a["meta"]["source"] == t["a"]["organization"] and b["meta"]["source"] == t["b"]["organization"]
            if t["type"] == "dose_changed_in_hospital":
                assert a["dosageInstruction"][0]["text"] == t["a"]["value"]
                assert b["dosage"][0]["text"] == t["b"]["value"] != t["a"]["value"]
            elif t["type"] == "stopped_at_discharge_still_on_gp_list":
                assert a["status"] == "active" and b["status"] == "stopped"
            else:
                assert a["onsetDateTime"] == t["a"]["value"] and b["onsetDateTime"] == t["b"]["value"]


def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_same_seed_and_size_give_identical_bytes_whatever_the_workers(tmp_path):
    generate(patients=600, seed=5, out=tmp_path / "a", workers=1)
    generate(patients=600, seed=5, out=tmp_path / "b", workers=2)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b
    generate(patients=600, seed=6, out=tmp_path / "c", workers=2)
    assert _digest(tmp_path / "c")["Patient.0000.ndjson"] != a["Patient.0000.ndjson"]
    # regenerating into the same directory replaces the earlier output
    generate(patients=300, seed=5, out=tmp_path / "a", workers=2)
    manifest = orjson.loads((tmp_path / "a" / "manifest.json").read_bytes())
    assert manifest["patients"] == 300 and sorted(manifest["files"]) == sorted(
        p.name for p in (tmp_path / "a").glob("*.ndjson"))


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GenerateError):
        generate(patients=10, seed=1, out=tmp_path, workers=1)
    assert (tmp_path / "notes.txt").exists()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("generate")(generate_command)

    @app.command("noop")
    def noop() -> None:  # a second command so "generate" stays a sub-command, as in joinedup.cli
        """Nothing."""

    return app


def test_cli_generates_and_rejects_bad_options(tmp_path):
    runner = CliRunner()
    app = _app()
    ok = runner.invoke(app, ["generate", "--patients", "250", "--seed", "3", "--out", str(tmp_path / "o"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "manifest.json").exists()
    for args in (["--patients", "0"], ["--today", "yesterday"], ["--workers", "0"], ["--patients", "ten"]):
        bad = runner.invoke(app, ["generate", "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 2, (args, bad.output)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "keep.txt").write_text("x")
    bad = runner.invoke(app, ["generate", "--patients", "5", "--out", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "not empty" in bad.output


def _subject_of(r: dict) -> str | None:
    x = r.get("subject") or r.get("patient")
    return x.get("reference") if isinstance(x, dict) else None


def _dates_of(r: dict) -> list[str]:
    out = []
    for key in ("authoredOn", "effectiveDateTime", "sent", "dateAsserted", "recordedDate", "date"):
        if key in r:
            out.append(r[key])
    for key in ("period", "effectivePeriod"):
        if key in r:
            out += [v for v in r[key].values()]
    return out


def test_deaths_are_recorded_and_activity_stops_at_death(population):
    truth = [t for t in _truth(population) if t["kind"] == "death"]
    assert truth, "no deaths in the population"
    patients = {p["id"]: p for p in read_ndjson(population, "Patient")}
    died = {t["patient"]: t for t in truth}
    # every deceased patient is in the truth and vice versa
    deceased = {f"Patient/{p['id']}" for p in patients.values() if "deceasedDateTime" in p}
    assert deceased == set(died)
    ages = []
    for pat, t in died.items():
        assert patients[pat.split("/")[1]]["deceasedDateTime"] == t["date"]
        assert t["place"] in ("hospital", "home", "care_home")
        ages.append(t["age"])
    # social care records of the same people
    sc_of = {t["record"]: t["patient"] for t in _truth(population) if t["kind"] == "same_person"}
    encounters = {}
    for r in _all(population):
        if r["resourceType"] in ("Patient", "Organization", "Location", "Practitioner", "PractitionerRole"):
            continue
        subj = _subject_of(r)
        subj = sc_of.get(subj, subj)
        if subj in died:
            limit = died[subj]["date"]
            for d in _dates_of(r):
                assert d[:10] <= limit[:10], (r["resourceType"], r["id"], d, limit)
            if r["resourceType"] == "Encounter":
                encounters[r["id"]] = r
    for t in truth:
        if t["place"] == "hospital":
            enc = encounters[t["resources"][1].split("/")[1]]
            assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "exp"
            assert enc["period"]["end"] == t["date"]
    # deaths concentrate in the oldest: ONS-order crude rate among 80+ over 3 years, few under 60
    old = [p for p in patients.values() if p["id"].startswith("p-")
           and (TODAY - date.fromisoformat(p["birthDate"])).days // 365 >= 80]
    share_old = sum(f"Patient/{p['id']}" in died for p in old) / len(old)
    assert 0.1 < share_old < 0.45, share_old
    assert min(ages) >= 57 and 0.005 < len(died) / N < 0.05


def test_encounter_and_document_types_are_coded(population):
    k = knowledge()
    codes = {v["code"] for v in k["organisations"]["encounter_types"].values()}
    seen = collections.Counter()
    for e in read_ndjson(population, "Encounter"):
        t = e["type"][0]
        assert t["text"]
        assert "coding" in t, f"uncoded encounter type {t['text']!r}"
        assert t["coding"][0]["system"] == "http://snomed.info/sct" and t["coding"][0]["code"] in codes
        seen[t["coding"][0]["code"]] += 1
    # every setting is coded: consultations, telephone, home visits, A&E attendances and emergency admissions
    assert {"11429006", "185317003", "439708006", "4525004", "183452005"} <= set(seen)
    by_class = {(e["class"]["code"], e["type"][0]["coding"][0]["code"]) for e in read_ndjson(population, "Encounter")}
    assert ("EMER", "4525004") in by_class and ("IMP", "183452005") in by_class
    docs = list(read_ndjson(population, "DocumentReference"))
    assert docs and all(d["type"]["coding"][0]["code"] == "373942005" for d in docs)


def test_guideline_medicines_per_condition_at_plausible_rates(population):
    k = knowledge()
    prods = {p["vmp"]: p for p in k["medicines"]["products"].values()}
    cond = k["conditions"]["conditions"]
    code2key = {c["snomed"]["code"]: key for key, c in cond.items()}
    has: dict[str, set[str]] = collections.defaultdict(set)
    for c in read_ndjson(population, "Condition"):
        if c["meta"]["source"].startswith("Organization/org-gp-"):
            key = code2key.get(c["code"]["coding"][0]["code"])
            if key:
                has[c["subject"]["reference"]].add(key)
    classes: dict[str, set[str]] = collections.defaultdict(set)
    sex = {f"Patient/{p['id']}": p["gender"] for p in read_ndjson(population, "Patient")}
    for m in read_ndjson(population, "MedicationRequest"):
        p = prods[m["medicationCodeableConcept"]["coding"][0]["code"]]
        classes[m["subject"]["reference"]].update(p["classes"])
        if p["key"] == "valproate_500_mr":
            assert sex[m["subject"]["reference"]] == "male"     # MHRA: no valproate for women here

    def rate(condition: str, wanted: set[str]) -> float:
        people = [p for p, s in has.items() if condition in s]
        assert people, condition
        return sum(bool(classes[p] & wanted) for p in people) / len(people)

    # (condition, classes, low, high): guideline-typical treatment rates (see medicines.yaml regimens)
    for condition, wanted, lo, hi in (
            ("depression", {"ssri", "antidepressant_other"}, 0.5, 0.8),
            ("hypothyroidism", {"thyroid_hormone"}, 0.85, 1.0),
            ("dementia", {"acetylcholinesterase_inhibitor", "nmda_antagonist"}, 0.35, 0.9),
            ("osteoporosis", {"bisphosphonate_oral"}, 0.4, 0.8),
            ("heart_failure", {"beta_blocker"}, 0.5, 0.9),
            ("type2_diabetes", {"sulfonylurea", "sglt2_inhibitor"}, 0.25, 0.65),
            ("epilepsy", {"antiepileptic"}, 0.6, 1.0),
            ("asthma", {"ics"}, 0.3, 0.75),
            ("copd", {"ics"}, 0.15, 0.6),
            ("heart_failure", {"mra"}, 0.15, 0.5),
            ("copd", {"lama"}, 0.35, 0.75),
            ("osteoporosis", {"calcium_supplement"}, 0.15, 0.5),
            ("parkinsons", {"dopaminergic"}, 0.6, 1.0),
            ("ihd", {"nitrate"}, 0.25, 0.65)):
        assert lo <= rate(condition, wanted) <= hi, condition
    assert any("antimuscarinic_bladder" in c for c in classes.values())
    # methotrexate comes with weekly folic acid for nearly everyone; every calcium is given beside a bisphosphonate
    on_mtx = [c for c in classes.values() if "dmard" in c]
    assert on_mtx and sum("vitamin" in c for c in on_mtx) / len(on_mtx) >= 0.75
    assert all("bisphosphonate_oral" in c for c in classes.values() if "calcium_supplement" in c)
    epilepsy_drugs = collections.Counter(
        prods[m["medicationCodeableConcept"]["coding"][0]["code"]]["key"]
        for m in read_ndjson(population, "MedicationRequest")
        if "antiepileptic" in prods[m["medicationCodeableConcept"]["coding"][0]["code"]]["classes"])
    assert epilepsy_drugs["levetiracetam_500"] and epilepsy_drugs["lamotrigine_100"]


# ground-truth problem -> the conflict engine rule that must report it (knowledge/conflicts/*.yaml)
PROBLEM_RULES = {
    "nsaid_ckd": "ddis-nsaid-ckd", "nsaid_heart_failure": "ddis-nsaid-heart-failure",
    "triple_whammy": "dd-triple-whammy", "anticoagulant_antiplatelet_no_ppi": "dd-antiplatelet-anticoagulant",
    "metformin_low_egfr": "dr-metformin-egfr-30", "benzodiazepine_falls": "ddis-falls-risk-drug-with-falls",
    # warfarin + apixaban is a duplicate; ramipril + candesartan is reported by the specific ACE inhibitor + ARB rule
    "duplicate_class_after_discharge": ("dup-same-class", "dd-acei-arb"),
    "bisphosphonate_calcium_timing": "sch-bisphosphonate-calcium-iron",
    "levothyroxine_calcium_timing": "sch-levothyroxine-calcium-iron",
}


def test_conflict_engine_finds_every_ground_truth_problem(population):
    """Each prescribing problem in the ground truth is reported by the conflict engine from the person's record
    (the GP's medicines list), naming the medicines the ground truth names."""
    from joinedup.conflicts.service import check_record

    truth = [t for t in _truth(population) if t["kind"] == "prescribing_problem"]
    assert {t["problem"] for t in truth} <= set(PROBLEM_RULES)
    assert {"bisphosphonate_calcium_timing"} <= {t["problem"] for t in truth if t["planted"]}
    wanted = {t["patient"] for t in truth}
    gp: dict[str, list[dict]] = collections.defaultdict(list)
    for rtype in ("Patient", "Condition", "MedicationRequest", "Observation"):
        for r in read_ndjson(population, rtype):
            subject = f"Patient/{r['id']}" if rtype == "Patient" else r["subject"]["reference"]
            # the GP's medicines list, with problems and results from whichever organisation holds them
            # (blood results come from the acute trust's laboratory)
            if subject in wanted and (rtype != "MedicationRequest"
                                      or r["meta"]["source"].startswith("Organization/org-gp-")):
                gp[subject].append(r)
    missed = []
    dead_checked = 0
    for t in truth:
        result = check_record(resources=gp[t["patient"]], resolve_conflicts=False, today=TODAY)
        if result["deceased"]:  # the dead get no findings (issue 17 part 5) unless a report asks for them
            assert result["findings"] == []
            dead_checked += 1
            result = check_record(resources=gp[t["patient"]], resolve_conflicts=False, today=TODAY,
                                  include_deceased=True)
        meds = {x for x in t["resources"] if x.startswith("MedicationRequest/")}
        rules = PROBLEM_RULES[t["problem"]]
        hits = [f for f in result["findings"] if f["rule"] in ((rules,) if isinstance(rules, str) else rules)
                and meds & set(f["involves"])]
        if not hits:
            missed.append((t["patient"], t["problem"], [f["rule"] for f in result["findings"]]))
    assert not missed, missed[:5]
    assert dead_checked  # the population has deceased people with planted problems: both paths are exercised


def test_conflict_engine_recognises_every_generated_medicine(population):
    from joinedup.conflicts.service import check_record

    by_patient: dict[str, list[dict]] = collections.defaultdict(list)
    for rtype in ("MedicationRequest", "MedicationStatement"):
        for r in read_ndjson(population, rtype):
            by_patient[r["subject"]["reference"]].append(r)
    seen_products = set()
    batch: list[dict] = []
    for pat, resources in by_patient.items():
        new = {r["medicationCodeableConcept"]["coding"][0]["code"] for r in resources} - seen_products
        if not new:
            continue
        seen_products |= new
        batch.append(pat)
        result = check_record(resources=resources, resolve_conflicts=False, today=TODAY)
        assert not result["unrecognised"], (pat, result["unrecognised"])
    k = knowledge()
    # every product the generator knows appears at least once in a population this size, or is checked alone
    for key, p in k["medicines"]["products"].items():
        if p["vmp"] in seen_products:
            continue
        res = {"resourceType": "MedicationRequest", "id": "x", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/x"},
               "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": p["vmp"],
                                                         "display": p["display"]}], "text": p["display"]}}
        assert not check_record(resources=[res], resolve_conflicts=False, today=TODAY)["unrecognised"], key
