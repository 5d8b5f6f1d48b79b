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
        else:
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
