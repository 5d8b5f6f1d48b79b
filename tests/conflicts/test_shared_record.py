"""The same medicine recorded by several organisations (GP prescription, hospital discharge list, community
reconciliation) is one medicine for the rules: burden scores, medicine counts, alerts and proposals count it once."""

from __future__ import annotations

from joinedup.conflicts.service import check_record

from .builders import cond, med, patient


def _from(org: str, res: dict, when: str) -> dict:
    res["meta"] = {"source": f"Organization/{org}"}
    res["authoredOn" if res["resourceType"] == "MedicationRequest" else "dateAsserted"] = when
    return res


def test_one_medicine_recorded_by_three_organisations_counts_once():
    gp = _from("gp", med("Amitriptyline 10mg tablets", rtype="MedicationRequest"), "2025-01-01")
    hosp = _from("acute", med("Amitriptyline 10mg tablets"), "2026-02-01")
    comm = _from("community", med("Amitriptyline 10mg tablets"), "2025-06-01")
    oxy = _from("gp", med("Oxybutynin 5mg tablets", rtype="MedicationRequest"), "2025-01-01")
    out = check_record(resources=[patient(), gp, hosp, comm, oxy, cond("Recurrent falls")])
    # the GP prescription stands for the other organisations' copies
    assert out["recorded_elsewhere"] == {f"MedicationRequest/{gp['id']}": [f"MedicationStatement/{hosp['id']}",
                                                                           f"MedicationStatement/{comm['id']}"]}
    acb = [f for f in out["findings"] if f["rule"] == "burden-anticholinergic"]
    # amitriptyline (ACB 3) once plus oxybutynin (ACB 3): 6, not 12
    assert len(acb) == 1 and acb[0]["summary"].endswith("total ACB score 6")
    falls = [f for f in out["findings"] if f["rule"] == "ddis-falls-risk-drug-with-falls"]
    assert [f["involves"][0] for f in falls] == [f"MedicationRequest/{gp['id']}"]
    targets = [c["target"] for c in out["resolution"]["changes"] if c["action"] in ("stop", "switch", "adjust-dose")]
    assert len(targets) == len(set(targets)) and f"MedicationStatement/{hosp['id']}" not in targets


def test_without_a_prescription_the_latest_entry_stands_for_the_medicine():
    hosp = _from("acute", med("Amitriptyline 10mg tablets"), "2026-02-01")
    comm = _from("community", med("Amitriptyline 10mg tablets"), "2025-06-01")
    out = check_record(resources=[patient(), comm, hosp, cond("Recurrent falls")], resolve_conflicts=False)
    assert out["recorded_elsewhere"] == {f"MedicationStatement/{hosp['id']}": [f"MedicationStatement/{comm['id']}"]}


def test_same_medicine_twice_on_one_organisations_list_stays_visible():
    a = _from("gp", med("Amitriptyline 10mg tablets", rtype="MedicationRequest"), "2025-01-01")
    b = _from("gp", med("Amitriptyline 10mg tablets", rtype="MedicationRequest"), "2025-03-01")
    out = check_record(resources=[patient(), a, b, cond("Recurrent falls")], resolve_conflicts=False)
    assert out["recorded_elsewhere"] == {}
    falls = [f for f in out["findings"] if f["rule"] == "ddis-falls-risk-drug-with-falls"]
    assert len(falls) == 2


def test_regular_and_as_needed_use_are_different_lines():
    gp = _from("gp", med("Naproxen 500mg tablets", rtype="MedicationRequest", prn=True), "2025-01-01")
    hosp = _from("acute", med("Naproxen 500mg tablets"), "2026-02-01")
    out = check_record(resources=[patient(), gp, hosp], resolve_conflicts=False)
    assert out["recorded_elsewhere"] == {}


def test_brand_and_generic_on_one_organisations_list_count_once():
    """Zestril is AstraZeneca's brand of lisinopril: a practice list holding both names is one medicine, so the
    dual renin-angiotensin blockade with losartan is one finding, not two (MHRA DSU June 2014)."""
    generic = _from("gp", med("Lisinopril 10mg tablets", rtype="MedicationRequest"), "2025-01-01")
    brand = _from("gp", med("Zestril 10mg tablets"), "2025-03-01")
    arb = _from("gp", med("Losartan 50mg tablets", rtype="MedicationRequest"), "2025-01-01")
    out = check_record(resources=[patient(), generic, brand, arb], resolve_conflicts=False)
    assert out["brand_and_generic"] == {f"MedicationRequest/{generic['id']}": [f"MedicationStatement/{brand['id']}"]}
    assert out["recorded_elsewhere"] == {}
    dual = [f for f in out["findings"] if f["rule"] == "dd-acei-arb"]
    assert [f["involves"] for f in dual] == [[f"MedicationRequest/{generic['id']}", f"MedicationRequest/{arb['id']}"]]


def test_rxnorm_branded_and_clinical_drug_names_count_once_and_other_organisations_still_merge():
    # an RxNorm SBD ("... [Zestril]") and its SCD from one practice, and the hospital's copy of the same medicine
    scd = _from("gp", med("Lisinopril 10 MG Oral Tablet", rtype="MedicationRequest"), "2025-01-01")
    sbd = _from("gp", med("Lisinopril 10 MG Oral Tablet [Zestril]"), "2025-02-01")
    hosp = _from("acute", med("Lisinopril 10mg tablets"), "2026-02-01")
    out = check_record(resources=[patient(), scd, sbd, hosp, med("Losartan 50mg tablets")], resolve_conflicts=False)
    assert out["brand_and_generic"] == {f"MedicationRequest/{scd['id']}": [f"MedicationStatement/{sbd['id']}"]}
    assert out["recorded_elsewhere"] == {f"MedicationRequest/{scd['id']}": [f"MedicationStatement/{hosp['id']}"]}
    assert len([f for f in out["findings"] if f["rule"] == "dd-acei-arb"]) == 1


def test_brand_and_generic_both_prescribed_by_one_organisation_is_a_duplicate_prescription():
    """Two live prescriptions of one medicine under its brand and generic names (Zestril is a brand of lisinopril)
    may both be dispensed and taken: STOPP/START v3 A3 (duplicate prescription). A prescription beside the
    person's own statement of the same medicine is one medicine recorded twice, not a duplicate."""
    generic = _from("gp", med("Lisinopril 10mg tablets", rtype="MedicationRequest"), "2025-01-01")
    brand = _from("gp", med("Zestril 10mg tablets", rtype="MedicationRequest"), "2025-03-01")
    out = check_record(resources=[patient(), generic, brand], resolve_conflicts=False)
    dup = [f for f in out["findings"] if f["rule"] == "dup-same-class"]
    assert len(dup) == 1
    assert sorted(dup[0]["involves"]) == sorted([f"MedicationRequest/{generic['id']}",
                                                 f"MedicationRequest/{brand['id']}"])
    assert "two names" in dup[0]["summary"] and dup[0]["severity"] == "moderate"
    statement = _from("gp", med("Zestril 10mg tablets"), "2025-03-01")
    out = check_record(resources=[patient(), generic, statement], resolve_conflicts=False)
    assert not [f for f in out["findings"] if f["rule"] == "dup-same-class"]
