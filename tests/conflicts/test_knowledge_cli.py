"""`joinedup knowledge list|show|check` through the real command line (the main CLI, Typer's runner), including a
broken copy of the knowledge directory in tmp that must give exit 2 naming the precise problem; and the committed
reference page (docs/knowledge-reference.md) must be what the command generates."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.conflicts.codes import icd10_problem, loinc_problem, rxnorm_problem, snomed_problem

REPO = Path(__file__).resolve().parents[2]
KNOWLEDGE = REPO / "src" / "joinedup" / "knowledge"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["knowledge", *args])


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """A copy of the packaged knowledge directory to break."""
    dest = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def _problems(result) -> list[str]:
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()


def test_the_packaged_knowledge_passes_every_check() -> None:
    r = _run("check")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("ok: ") and "rules checked" in r.output


def test_a_rule_without_sources_is_reported(copy: Path) -> None:
    _edit(copy / "conflicts/interactions.yaml",
          '      - "Fluoroquinolone SmPCs: use with caution in myasthenia gravis - may exacerbate muscle weakness '
          '(not re-read this session)"\n', "")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert "conflicts/interactions.yaml: rule ix-fluoroquinolone-myasthenia: no sources" in lines
    assert lines[-1].startswith("error: 1 problem in ")


def test_a_source_that_names_no_document_is_reported(copy: Path) -> None:
    _edit(copy / "conflicts/interactions.yaml",
          "Fluoroquinolone SmPCs: use with caution in myasthenia gravis",
          "Someone said: use with caution in myasthenia gravis")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert any(x.startswith("conflicts/interactions.yaml: rule ix-fluoroquinolone-myasthenia: no source names a "
                            "document") for x in lines), lines


def test_an_unverified_rule_may_not_be_high(copy: Path) -> None:
    _edit(copy / "conflicts/interactions.yaml",
          "  - id: ix-fluoroquinolone-myasthenia\n    kind: drug-disease\n    severity: moderate\n",
          "  - id: ix-fluoroquinolone-myasthenia\n    kind: drug-disease\n    severity: high\n")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert ("conflicts/interactions.yaml: rule ix-fluoroquinolone-myasthenia: unverified rule is high (an "
            "unverified rule may be at most moderate)") in lines


def test_a_class_that_is_not_defined_is_reported(copy: Path) -> None:
    _edit(copy / "conflicts/interactions.yaml", "    drugs: [{class: fluoroquinolone}]\n    conditions: "
          "[myasthenia_gravis]", "    drugs: [{class: quinolones}]\n    conditions: [myasthenia_gravis]")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert ("conflicts/interactions.yaml: rule ix-fluoroquinolone-myasthenia: class 'quinolones' is not defined "
            "(medicines.yaml classes)") in lines


def test_an_unknown_condition_is_reported(copy: Path) -> None:
    _edit(copy / "conflicts/interactions.yaml", "    conditions: [myasthenia_gravis]\n",
          "    conditions: [myasthenia]\n")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert ("conflicts/interactions.yaml: rule ix-fluoroquinolone-myasthenia: condition 'myasthenia' is not "
            "defined (conditions.yaml)") in lines


def test_malformed_codes_are_reported(copy: Path) -> None:
    # SNOMED CT 38341003 (hypertensive disorder) with its Verhoeff check digit changed; LOINC 2160-0 (creatinine)
    # with a wrong mod 10 check digit; an ICD-10 category that is not one; an RxNorm code with letters
    _edit(copy / "conditions.yaml", '{code: "38341003",', '{code: "38341004",')
    _edit(copy / "terminology/results.yaml", 'loinc: ["2160-0",', 'loinc: ["2160-1",')
    _edit(copy / "conditions.yaml", 'icd10: ["I10", "I11",', 'icd10: ["I10", "11I",')
    _edit(copy / "terminology/medicines.yaml", '  "1191": "Aspirin"', '  "1191x": "Aspirin"')
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert "conditions.yaml: hypertension: SNOMED CT 38341004: Verhoeff check digit does not match" in lines
    assert "terminology/results.yaml: result creatinine: LOINC 2160-1: check digit should be 0" in lines
    assert any(x.startswith("conditions.yaml: hypertension: ICD-10 11I: not an ICD-10 code") for x in lines), lines
    assert any(x.startswith("terminology/medicines.yaml: RxNorm 1191x:") for x in lines), lines


def test_a_dmd_id_outside_a_concept_partition_is_reported(copy: Path) -> None:
    csv_path = copy / "terminology/dmd/dmd_products.csv"
    text = csv_path.read_text(encoding="utf-8")
    # a description-partition id (..01x) where a concept id belongs: line 2 of the file
    first = text.splitlines()[1].split(",")[0]
    csv_path.write_text(text.replace(first + ",", "10065611000001011,", 1), encoding="utf-8")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert ("terminology/dmd/dmd_products.csv: line 2: dm+d 10065611000001011: partition 01 is not a concept "
            "partition (00 or 10)") in lines


def test_a_rule_without_vignettes_is_reported(copy: Path) -> None:
    path = copy / "conflicts/vignettes.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["vignettes"] = [v for v in doc["vignettes"] if v.get("expect") != "dd-acei-arb"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    lines = _problems(_run("check", "--dir", str(copy), "--no-vignettes"))
    assert ("conflicts/rules.yaml: rule dd-acei-arb: no vignette with a firing case and a close non-firing case "
            "(conflicts/vignettes.yaml, expect: dd-acei-arb)") in lines


def test_vignettes_are_run_and_a_close_case_that_fires_is_reported(copy: Path) -> None:
    # the close case of dual-ras-ramipril-losartan is made the same as its firing case: it must be caught
    _edit(copy / "conflicts/vignettes.yaml",
          '    close: {meds: ["Ramipril 5mg capsules", "Amlodipine 5mg tablets"]}\n  - id: triple-whammy',
          '    close: {meds: ["Ramipril 5mg capsules", "Losartan 50mg tablets"]}\n  - id: triple-whammy')
    lines = _problems(_run("check", "--dir", str(copy)))
    assert lines[:-1] == ["conflicts/vignettes.yaml: vignette dual-ras-ramipril-losartan: close case also raises "
                          "dd-acei-arb"]


def test_a_yaml_error_is_one_line(copy: Path) -> None:
    (copy / "conflicts/nice.yaml").write_text("rules: [\n  - id: x\n", encoding="utf-8")
    lines = _problems(_run("check", "--dir", str(copy)))
    assert len(lines) == 2 and lines[0].startswith("conflicts/nice.yaml: not valid YAML at line ")


def test_a_directory_that_does_not_exist_is_exit_2(tmp_path: Path) -> None:
    r = _run("check", "--dir", str(tmp_path / "nowhere"))
    assert r.exit_code == 2 and "is not a directory" in r.output


def test_list_as_json_and_by_kind() -> None:
    r = _run("list", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["count"] == len(doc["rules"]) >= 170
    by_id = {x["id"]: x for x in doc["rules"]}
    acei = by_id["dd-acei-arb"]
    assert acei["kind"] == "drug-drug" and acei["classes"] == ["ace_inhibitor", "arb"]
    assert acei["sources"] and acei["vignettes"] == ["dual-ras-ramipril-losartan"]
    assert not [x["id"] for x in doc["rules"] if not x["verified"] and x["severity"] in ("high", "critical")]
    r = _run("list", "--kind", "dose")
    assert r.exit_code == 0 and "dose-metformin-renal" in r.output and "dd-acei-arb" not in r.output
    r = _run("list", "--kind", "nonsense")
    assert r.exit_code == 2 and "unknown kind 'nonsense'" in r.output


# STOPP/START v3 criteria whose text could be read in a reproduction of the v3 appendix (O'Mahony et al., Eur Geriatr
# Med 2023;14:625-632, PMC10447584): the English Appendix 1 through B4 and the Spanish translation of v3 through B6
# (a new B5, beta-blocker monotherapy for uncomplicated hypertension, moves amiodarone from v2 B5 to B6). Only these
# ids may be claimed as verified v3 ids; every other criterion is cited by its v2 id and marked "(v3_id: unverified)",
# or - for a criterion new or changed in v3 - by the v3 id read in the one full, unofficial reproduction of Appendix 1
# (github rhavekost/clinical-toolkit @b357fe5), then still marked "(v3_id: unverified)" and `verified: false`.
V3_READ = {"A1", "A2", "A3", "B1", "B2", "B3", "B4", "B5", "B6"}
REPRODUCTION = "rhavekost/clinical-toolkit @b357fe5"


def test_a_rule_claims_a_v3_id_only_where_the_v3_text_was_read() -> None:
    r = _run("list", "--format", "json")
    assert r.exit_code == 0, r.output
    claimed: set[str] = set()
    from_reproduction: set[str] = set()
    for rule in json.loads(r.output)["rules"]:
        crit = str(rule.get("criterion") or "")
        sources = rule["sources"]
        reproduction = rule["v3_item_source"] == "reproduction"
        for s in sources:
            m = re.match(r"STOPP/START v3 (?:START )?([A-N]\d+)\b", s)
            if m and "(v3_id: unverified" in s:
                # a v3 id read only in the reproduction: allowed on an unverified rule that says where it was read
                assert reproduction and not rule["verified"] and REPRODUCTION in s, (rule["id"], s)
                from_reproduction.add(m.group(1))
            elif m:
                assert m.group(1) in V3_READ and "unverified" not in s, (rule["id"], s)
                assert "verified" in s and "PMC10447584" in s, (rule["id"], s)  # says where it was read
                claimed.add(m.group(1))
            if s.startswith("STOPP/START v2"):
                assert "(v3_id: unverified)" in s, (rule["id"], s)
        m = re.match(r"(STOPP|START) v([23]) ([A-N]\d+)", crit)
        if m and m.group(2) == "3" and reproduction:
            assert not rule["verified"], (rule["id"], crit)
            assert any("(v3_id: unverified" in s and REPRODUCTION in s for s in sources), (rule["id"], crit)
        elif m and m.group(2) == "3":
            assert m.group(3) in V3_READ, (rule["id"], crit)
            assert any(re.match(rf"STOPP/START v3 {m.group(3)}\b", s) for s in sources), (rule["id"], crit)
        if m and m.group(2) == "2":
            assert any("(v3_id: unverified)" in s for s in sources), (rule["id"], crit)
    # the criteria the engine applies that were read in the v3 appendix: duplicates (A3), verapamil/diltiazem in heart
    # failure (B2), beta-blocker with verapamil/diltiazem (B3), rate-limiting drugs with bradycardia (B4)
    # and beta-blocker monotherapy for uncomplicated hypertension (B5, new in v3)
    assert claimed == {"A3", "B2", "B3", "B4", "B5"}
    # criteria new or changed in v3, from the reproduction only (unverified): e.g. DOAC with a P-gp inhibitor (C14),
    # aspirin above 100 mg/day (C1), SGLT2 inhibitor in heart failure (START B8)
    assert {"C1", "C13", "C14", "B8", "B1", "M1"} <= from_reproduction


def test_every_stopp_start_rule_names_its_v3_item() -> None:
    """Each rule citing a STOPP/START criterion names the v3 item it corresponds to (or "none"), and where that was
    read: the verified v3 appendix text for A1-B6, else the unofficial reproduction (still unverified)."""
    r = _run("list", "--format", "json")
    assert r.exit_code == 0, r.output
    rules = json.loads(r.output)["rules"]
    stopp = [x for x in rules if x["criterion"] or any(s.startswith("STOPP/START") for s in x["sources"])]
    missing = [x["id"] for x in stopp if not x["v3_item"]]
    assert not missing, missing
    for x in stopp:
        assert x["v3_item_source"] in ("appendix", "reproduction"), x["id"]
        if x["v3_item_source"] == "appendix":
            assert re.fullmatch(r"(STOPP|START) [AB][1-6]", x["v3_item"]), x["id"]
        if x["v3_item"] == "none":
            assert x["v3_item_note"], x["id"]  # says why there is no v3 item
    by_id = {x["id"]: x for x in rules}
    # mappings read in the reproduction: v2 -> v3 renumbering (thiazide B8 -> B9, SSRI hyponatraemia D4 -> D6,
    # START A1 anticoagulant in AF -> C1), and the v3 variant beside the verified v2 rule where v3 changed a threshold
    assert by_id["stopp-thiazide-hyponatraemia"]["v3_item"] == "STOPP B9"
    assert by_id["stopp-ssri-hyponatraemia"]["v3_item"] == "STOPP D6"
    assert by_id["start-a1-anticoagulant-af"]["v3_item"] == "START C1"
    assert by_id["dup-same-class"]["v3_item_source"] == "appendix"
    v2, v3 = by_id["dose-aspirin-long-term-stopp-c1"], by_id["dose-aspirin-long-term-stopp-v3-c1"]
    assert v2["verified"] and v2["criterion"] == "STOPP v2 C1" and v3["criterion"] == "STOPP v3 C1"
    assert not v3["verified"] and v3["severity"] in ("low", "moderate")
    assert len(stopp) >= 120


def test_check_refuses_a_reproduction_v3_criterion_marked_verified(copy: Path) -> None:
    path = copy / "conflicts" / "stopp_start_v3.yaml"
    text = path.read_text(encoding="utf-8")
    block = text.index("id: stopp-v3-c13-dabigatran-rate-limiting-ccb")
    path.write_text(text[:block] + text[block:].replace("    verified: false\n", "", 1), encoding="utf-8")
    r = _run("check", "--no-vignettes", "--dir", str(copy))
    assert r.exit_code == 2
    assert ("conflicts/stopp_start_v3.yaml: rule stopp-v3-c13-dabigatran-rate-limiting-ccb: a v3 criterion read only "
            "in the reproduction must be marked verified: false") in r.output


def test_show_a_rule_and_an_unknown_one() -> None:
    r = _run("show", "dose-metformin-renal")
    assert r.exit_code == 0, r.output
    assert "band: below 30" in r.output and "raised by dr-metformin-egfr-30" in r.output
    assert "Glucophage (metformin) SmPC" in r.output and "vignettes: dose-metformin-2g-egfr-38" in r.output
    r = _run("show", "metformin")
    assert r.exit_code == 2 and "no rule 'metformin'" in r.output and "dr-metformin-egfr-30" in r.output


def test_the_reference_page_is_up_to_date() -> None:
    r = _run("list", "--format", "markdown")
    assert r.exit_code == 0, r.output
    page = (REPO / "docs" / "knowledge-reference.md").read_text(encoding="utf-8")
    assert r.output == page, "docs/knowledge-reference.md is stale: run joinedup knowledge list --format markdown"


# -- code formats, from the published definitions -----------------------------------------------------------------
@pytest.mark.parametrize("code", ["38341003", "22298006", "195967001", "1011481000000105", "10065611000001109"])
def test_published_snomed_and_dmd_ids_are_well_formed(code: str) -> None:
    # hypertensive disorder, myocardial infarction, asthma (International release); an eGFR code and a dm+d AMP
    # from the UK extension (long format, namespace 1000001 / 1000000)
    assert snomed_problem(code) is None


def test_snomed_check_digit_and_partition() -> None:
    assert snomed_problem("22298007") == "Verhoeff check digit does not match"
    assert snomed_problem("123") == "3 digits (an SCTID has 6-18)"
    assert snomed_problem("2229800x") == "not all digits"
    assert "partition 02" in str(snomed_problem("1000021"))


@pytest.mark.parametrize("code", ["2160-0", "62238-1", "33914-3", "2823-3", "4548-4", "8867-4"])
def test_published_loinc_codes_pass_the_mod_10_check(code: str) -> None:
    assert loinc_problem(code) is None


def test_loinc_rxnorm_icd10_formats() -> None:
    assert loinc_problem("62238-2") == "check digit should be 1"
    assert loinc_problem("62238") == "not of the form NNNNN-N"
    assert rxnorm_problem("314076") is None and rxnorm_problem("0314") is not None
    assert icd10_problem("E11.9") is None and icd10_problem("M1A") is None and icd10_problem("E1") is not None
