"""Record linkage through the governance machinery: a proposal grants no reach until it is confirmed; a confirmed
link grants reach exactly as an NHS-number link does and is recorded as Patient.link on both records; a rejected
pair stays rejected; every decision is audited. Runs on SQLite and PostgreSQL (the session database)."""

from __future__ import annotations

import json

import pytest

from joinedup.fhir.errors import FhirError
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.interop.linkage import service
from tests.interop.linkage.conftest import COUNCIL, gp_for, queue_pair, second_registration


def _actions(gate, patient_id: str) -> list[tuple[str, str]]:
    po = Principal(name="po-linkage", role="privacy-officer")
    gate.flush_audit()
    _, entries = gate.access_log(po, patient_id, count=500)
    return [(e["action"], e["outcome"]) for e in entries]


def _links(gate, patient_id: str) -> list[dict]:
    return gate.read(SYSTEM, "Patient", patient_id).content.get("link") or []


def test_dry_run_links_nothing_and_reports_every_pair(population, model_file, tmp_path):
    report = tmp_path / "pairs.ndjson"
    # Patient.link as it stands (another file's test may have linked this person's records already)
    before = {sc: _links(population.gate, sc) for sc, _ in population.truth}
    out = service.run(population.gate, SYSTEM, path=model_file, dry_run=True, report=report, organisation=COUNCIL)
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert len(lines) == out["pairs_scored"] > 0
    assert {"match_weight", "match_probability", "prior", "decision"} <= set(lines[0])
    assert all(0 < x["prior"] < 1 for x in lines)
    assert {x["decision"] for x in lines} <= set(service.DECISIONS)
    assert all(x["outcome"] in (None, "dry-run") for x in lines)
    assert out["outcomes"]["confirmed"] == out["outcomes"]["queued"] == 0
    assert {sc: _links(population.gate, sc) for sc, _ in population.truth} == before


def test_proposal_grants_nothing_until_accepted_and_rejection_is_remembered(population, model_file):
    gate = population.gate
    request_id = queue_pair(population, model_file)
    queue = {q["id"]: q for q in service.review_queue(gate, SYSTEM)}
    pair = queue[request_id]
    sc, other = pair["patient"].removeprefix("Patient/"), pair["other_patient"].removeprefix("Patient/")
    assert pair["status"] == "pending" and 0 < pair["match_probability"] <= 1
    assert set(pair["agreement"]) == {"first_name", "surname", "dob", "sex", "postcode", "address"}
    # the GP with a relationship to one record reaches nothing of the other while the pair waits
    gp = gp_for(population, other, "gp-linkage-1")
    with pytest.raises(FhirError) as refused:
        gate.read(gp, "Patient", sc)
    assert refused.value.status == 403
    assert ("link-request", "refused") in _actions(gate, sc)
    # reviewing is the privacy officer's: a GP may not decide
    with pytest.raises(FhirError) as no:
        service.decide_review(gate, gp, request_id, outcome="approved")
    assert no.value.status == 403
    po = Principal(name="po-linkage", role="privacy-officer")
    decided = service.decide_review(gate, po, request_id, outcome="approved", note="same person: checked")
    assert decided["status"] == "approved"
    assert gate.read(gp, "Patient", sc).id == sc  # reach now, as for records sharing an NHS number
    assert {"other": {"reference": f"Patient/{other}"}, "type": "seealso"} in _links(gate, sc)
    assert {"other": {"reference": f"Patient/{sc}"}, "type": "seealso"} in _links(gate, other)
    assert ("link-review", "allowed") in _actions(gate, sc)
    with pytest.raises(FhirError) as twice:
        service.decide_review(gate, po, request_id, outcome="rejected")
    assert twice.value.status == 409

    # a rejected pair is never proposed again, even when the model is confident
    second = queue_pair(population, model_file)
    q2 = {q["id"]: q for q in service.review_queue(gate, SYSTEM)}[second]
    a, b = q2["patient"].removeprefix("Patient/"), q2["other_patient"].removeprefix("Patient/")
    service.decide_review(gate, po, second, outcome="rejected", note="different people")
    assert gate.propose_link(SYSTEM, a, b, confirm=True, reason="Record linkage (Splink): test") == "rejected"
    assert gate.propose_link(SYSTEM, b, a, confirm=False, reason="Record linkage (Splink): test") == "rejected"
    assert not any(lk["other"]["reference"] == f"Patient/{b}" for lk in _links(gate, a))
    assert ("link-review", "allowed") in _actions(gate, a)


def test_only_the_integration_account_proposes_links(population):
    gate = population.gate
    sc, gp_rec = sorted(population.truth)[-1]
    gp = gp_for(population, gp_rec, "gp-linkage-2")
    with pytest.raises(FhirError) as refused:
        gate.propose_link(gp, sc, gp_rec, confirm=True, reason="I think so")
    assert refused.value.status == 403
    with pytest.raises(FhirError):
        gate.read(gp, "Patient", sc)


def test_confident_matches_become_confirmed_links_with_reach(population, model_file, tmp_path):
    gate = population.gate
    out = service.run(gate, SYSTEM, path=model_file, organisation=COUNCIL, report=tmp_path / "r.ndjson")
    confirmed = [p for p in out["pairs"] if p["outcome"] == "confirmed"]
    assert confirmed
    p = next(x for x in confirmed if (x["unlinked"], x["reference"]) in population.truth)
    sc, other = p["unlinked"], p["reference"]
    gp = gp_for(population, other, "gp-linkage-3")
    assert gate.read(gp, "Patient", sc).id == sc
    assert {"other": {"reference": f"Patient/{other}"}, "type": "seealso"} in _links(gate, sc)
    assert ("link", "allowed") in _actions(gate, sc) and ("link", "allowed") in _actions(gate, other)
    # running again changes nothing: the pairs are already linked (or waiting, or refused)
    again = service.run(gate, SYSTEM, path=model_file, organisation=COUNCIL)
    assert again["outcomes"]["confirmed"] == again["outcomes"]["queued"] == 0
    # a GP of an unrelated practice still reaches neither record
    stranger = gp_for(population, next(i for i in population.patients if i.startswith("lk-p-") and i != other
                                       and population.patients[i]["generalPractitioner"][0]
                                       != population.patients[other]["generalPractitioner"][0]), "gp-linkage-4")
    with pytest.raises(FhirError):
        gate.read(stranger, "Patient", sc)


def test_two_practices_registrations_of_one_name_are_not_linked(population, model_file, tmp_path):
    """A second practice registers someone with the very name, date of birth, sex and address of a registered
    patient of another practice, without an NHS number: a person is registered with one practice at a time, so the
    run confirms nothing between them; the pair waits for review with a caution saying why."""
    gate = population.gate
    doc, known, other = second_registration(population)
    out = service.run(gate, SYSTEM, path=model_file, organisation=other, report=tmp_path / "pairs.ndjson")
    pair = next(p for p in out["pairs"] if {p["unlinked"], p["reference"]} == {doc["id"], known["id"]})
    assert pair["match_probability"] >= 0.95 and pair["decision"] == "review" and pair["outcome"] == "queued"
    assert not any(p["outcome"] == "confirmed" and known["id"] in (p["unlinked"], p["reference"]) for p in out["pairs"])
    assert _links(gate, doc["id"]) == []
    queued = next(q for q in service.review_queue(gate, SYSTEM) if {q["patient"], q["other_patient"]}
                  == {f"Patient/{doc['id']}", f"Patient/{known['id']}"})
    assert "registered with one practice at a time" in queued["caution"]
    reported = [json.loads(x) for x in (tmp_path / "pairs.ndjson").read_text().splitlines()]
    assert any("caution" in x for x in reported)
