"""Three engine inputs the last computable STOPP/START v3 criteria need (criterion texts as the reproduction of
Appendix 1 words them: rhavekost/clinical-toolkit, .../stopp-start-v3-criteria.md @b357fe5; O'Mahony D et al., Eur
Geriatr Med 2023;14:625-632):

- the monitoring a criterion asks for is missing (`without_result`): STOPP B13 "aldosterone antagonists with
  concurrent potassium-conserving drugs (ACEIs, ARBs, amiloride, triamterene) without monitoring serum potassium";
- only lines of some routes (`routes`): STOPP L4 "topical lidocaine (lignocaine) patch for chronic osteoarthritis
  pain" - a plaster, not a lidocaine injection into the joint;
- only lines of one action length (`acting`, `unless_acting`): STOPP L3 "long-acting opioids without short-acting
  opioids for break-through moderate/severe pain";
- an omission after a medicine was stopped (`after_stopped`, the record's medicine history `rec.stopped`): START H6
  "anti-resorptive treatment after discontinuation of at least two doses of denosumab", H7 "... after
  discontinuation of teriparatide/abaloparatide treatment".
"""

from __future__ import annotations

from typing import Any

from joinedup.conflicts.detect import build_record
from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.service import detect_findings

from .builders import cond, days_ago, med, obs, patient

B13 = "stopp-v3-b13-mra-potassium-conserving-no-potassium-check"
L4 = "stopp-v3-l4-lidocaine-plaster-osteoarthritis"
L3 = "stopp-v3-l3-long-acting-opioid-no-short-acting"
H6 = "start-v3-h6-antiresorptive-after-denosumab"
H7 = "start-v3-h7-antiresorptive-after-teriparatide"


def _rules(*resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["rule"]: f for f in detect_findings(resources=[patient(), *resources])["findings"]}


def _ended(text: str, start: str, end: str, *, rtype: str = "MedicationStatement",
           status: str = "completed") -> dict[str, Any]:
    r = med(text, rtype=rtype, status=status)
    if rtype == "MedicationStatement":
        r["effectivePeriod"] = {"start": start, "end": end}
    else:
        r["authoredOn"] = start
        r["dispenseRequest"] = {"validityPeriod": {"start": start, "end": end}}
    return r


# -- without_result: monitoring missing ------------------------------------------------------------------------------
def test_mra_with_ace_inhibitor_and_no_potassium_ever_measured() -> None:
    f = _rules(med("Spironolactone 25mg tablets"), med("Lisinopril 10mg tablets"))[B13]
    assert f["severity"] in ("low", "moderate") and f["verified"] is False
    assert "potassium" in f["summary"].lower()


def test_a_recent_potassium_is_the_monitoring_the_criterion_asks_for() -> None:
    assert B13 not in _rules(med("Spironolactone 25mg tablets"), med("Amiloride 5mg tablets"),
                             obs("2823-3", 4.4, days_ago(40)))


def test_a_potassium_older_than_its_window_is_not_monitoring_and_is_shown_as_why_now() -> None:
    old = obs("2823-3", 4.4, days_ago(400))
    f = _rules(med("Eplerenone 25mg tablets"), med("Candesartan 8mg tablets"), old)[B13]
    assert f"Observation/{old['id']}" in f["involves"]
    assert any(w["ref"] == f"Observation/{old['id']}" and w["date"] == old["effectiveDateTime"] for w in f["why_now"])


def test_an_undated_potassium_is_not_monitoring() -> None:
    undated = obs("2823-3", 4.4)
    del undated["effectiveDateTime"]
    assert B13 in _rules(med("Spironolactone 25mg tablets"), med("Ramipril 5mg capsules"), undated)


def test_mra_alone_is_not_the_criterion() -> None:
    assert B13 not in _rules(med("Spironolactone 25mg tablets"), med("Amlodipine 5mg tablets"))


# -- routes: only the routes a criterion is about --------------------------------------------------------------------
def test_lidocaine_plaster_or_patch_for_osteoarthritis() -> None:
    for name in ("Lidocaine 700mg medicated plasters", "Lidocaine 5% patch"):
        assert L4 in _rules(med(name), cond("Osteoarthritis of hip")), name


def test_lidocaine_by_another_route_is_not_a_plaster() -> None:
    for name in ("Lidocaine 1% solution for injection", "Lidocaine 2% gel", "Lidocaine"):
        assert L4 not in _rules(med(name), cond("Osteoarthritis of hip")), name


# -- acting: long- or short-acting forms, read from the product name ------------------------------------------------
def test_long_acting_opioid_forms_alone() -> None:
    for name in ("Oxycodone 10mg prolonged-release tablets", "Buprenorphine 5micrograms/hour transdermal patches",
                 "12 HR Oxycodone Hydrochloride 10 MG Extended Release Oral Tablet"):
        assert L3 in _rules(med(name)), name
    # two long-acting opioids are still no short-acting one for breakthrough pain
    assert L3 in _rules(med("Morphine sulfate 30mg modified-release tablets"),
                        med("Fentanyl 12micrograms/hour transdermal patches"))


def test_a_short_acting_opioid_is_what_the_criterion_asks_for() -> None:
    assert L3 not in _rules(med("Morphine sulfate 30mg modified-release tablets"),
                            med("Morphine sulfate 10mg/5ml oral solution", prn=True))
    assert L3 not in _rules(med("Oxycodone 5mg capsules"))  # short-acting alone is not the criterion


# -- after_stopped: the medicine history ----------------------------------------------------------------------------
def test_stopped_and_expired_lines_are_kept_as_history_not_as_current() -> None:
    kb = load_knowledge()
    done = _ended("Denosumab 60mg/1ml solution for injection pre-filled syringes", days_ago(800), days_ago(100))
    expired = _ended("Teriparatide 20micrograms/80microlitres solution for injection pre-filled pen", days_ago(700),
                     days_ago(30), rtype="MedicationRequest", status="active")
    rec = build_record(kb, [patient(), done, expired])
    assert not rec.meds
    assert [(s.ref, sorted(s.ingredients)) for s in rec.stopped] == [
        (f"MedicationStatement/{done['id']}", ["denosumab"]), (f"MedicationRequest/{expired['id']}", ["teriparatide"])]
    assert rec.stopped[1].end == expired["dispenseRequest"]["validityPeriod"]["end"]


def test_denosumab_stopped_after_two_doses_without_an_antiresorptive() -> None:
    stopped = _ended("Denosumab 60mg/1ml solution for injection pre-filled syringes", days_ago(800), days_ago(100))
    f = _rules(stopped, cond("Osteoporosis"))[H6]
    assert f["kind"] == "omission" and f["suggest"]["action"] == "add"
    assert f"MedicationStatement/{stopped['id']}" in f["involves"]
    assert any("stopped or ended" in w["what"] for w in f["why_now"])


def test_denosumab_followed_by_a_bisphosphonate_restarted_or_given_once_is_not_an_omission() -> None:
    stopped = _ended("Denosumab 60mg/1ml solution for injection pre-filled syringes", days_ago(800), days_ago(100))
    assert H6 not in _rules(stopped, med("Alendronic acid 70mg tablets"))
    assert H6 not in _rules(stopped, med("Denosumab 60mg/1ml solution for injection pre-filled syringes"))
    once = _ended("Denosumab 60mg/1ml solution for injection pre-filled syringes", days_ago(200), days_ago(100))
    assert H6 not in _rules(once)


def test_teriparatide_course_ended_without_an_antiresorptive() -> None:
    ended = _ended("Teriparatide 20micrograms/80microlitres solution for injection pre-filled pen", days_ago(700),
                   days_ago(30), rtype="MedicationRequest", status="active")
    assert H7 in _rules(ended)
    assert H7 not in _rules(ended, med("Zoledronic acid 5mg/100ml solution for infusion"))


def test_rules_about_a_stopped_medicine_are_indexed_by_the_medicine_history() -> None:
    """Detection looks only at the rules a record could raise (rules.RuleIndex): H6 needs denosumab in the history."""
    kb = load_knowledge()
    assert kb.index is not None
    pos = next(i for i, (_, r) in enumerate(kb.kinds) if r["id"] == H6)
    assert pos not in kb.index.always
    assert pos in kb.index.candidates(frozenset(), [], frozenset({"denosumab"}))
    assert pos not in kb.index.candidates(frozenset({"denosumab"}), ["osteoporosis"])
