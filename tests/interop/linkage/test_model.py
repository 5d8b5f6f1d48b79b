"""The Splink model on a generated population: accuracy against the generator's ground truth (targets precision
>= 0.99 and recall >= 0.95 of confirmed links), the comparison rows, and the model file."""

from __future__ import annotations

import json

import pytest

from joinedup.interop.linkage import model, service
from tests.interop.linkage.conftest import COUNCIL


def test_postcode_is_put_in_its_standard_form():
    # UK postcodes: outward code, one space, inward code of digit + two letters (e.g. "SW1A 1AA", "M1 1AE")
    assert model.postcode("sw1a1aa") == "SW1A 1AA"
    assert model.postcode(" m1  1ae ") == "M1 1AE"
    assert model.postcode("not a postcode") == "NOT A POSTCODE"
    assert model.postcode(None) is None


def test_comparison_row_reads_the_patient_resource():
    r = model.row({"resourceType": "Patient", "id": "x", "meta": {"source": "Organization/o1"},
                   "name": [{"use": "nickname", "given": ["Bob"]}, {"use": "official", "family": "O'Brien",
                                                                       "given": ["Róisín", "Mary"]}],
                   "gender": "female", "birthDate": "1941-03-07",
                   "address": [{"use": "work", "line": ["1 Work St"]},
                               {"use": "home", "line": ["12 Mill Lane"], "postalCode": "ls6 2ab"}]})
    assert r == {"unique_id": "x", "organisation": "o1", "registered_at": None, "first_name": "ROISIN",
                 "surname": "O BRIEN", "dob": "1941-03-07", "sex": "female", "postcode": "LS6 2AB",
                 "address": "12 MILL LANE", "first_name_groups": ["ROISIN"], "nhs_number": None}
    assert model.agreement(r, {**r, "dob": "1941-07-03", "postcode": None})["dob"] == "differs"
    assert model.agreement(r, {**r, "postcode": None})["postcode"] == "missing"
    assert model.differences(r, {**r, "dob": "1941-07-03", "postcode": "LS6 9ZZ"}) == {
        "dob": "day and month swapped", "postcode": "same district"}
    assert model.differences(r, {**r, "dob": "1941-03-08"}) == {"dob": "one digit different"}


def test_records_merged_away_and_inactive_ones_are_not_linked():
    merged = {"id": "a", "active": False, "link": [{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]}
    unlinked, reference = model.split([merged, {"id": "b", "identifier": []}])
    assert [u["unique_id"] for u in unlinked] == ["b"] and reference == []


def test_model_meets_the_targets_on_the_generated_population(population, tmp_path):
    people = list(population.patients.values())
    unlinked_t, reference_t, labels = model.training_sets(people)
    # labels come from the data itself: council records that do carry the NHS number
    assert labels and all(a.startswith("lk-sc-") and b.startswith("lk-p-") for a, b in labels)
    trained = model.train(unlinked_t, reference_t, labels)
    assert trained.trained_on["method"] == "m from labelled pairs"
    path = tmp_path / "m.json"
    trained.save(path)
    again = model.Trained.load(path)
    unlinked, reference = model.split(people)
    unlinked = [u for u in unlinked if u["organisation"] == COUNCIL]
    assert {u["unique_id"] for u in unlinked} == {a for a, _ in population.truth}
    pairs = service.decide(model.score(again, unlinked, reference), *service.thresholds())
    confirmed = {(p["unlinked"], p["reference"]) for p in pairs if p["decision"] == "confirm"}
    tp = len(confirmed & population.truth)
    precision = tp / len(confirmed)
    recall = tp / len(population.truth)
    assert precision >= 0.99, sorted(confirmed - population.truth)
    assert recall >= 0.95, sorted(population.truth - confirmed)
    # every decision follows from the probability and the thresholds
    c, r = service.thresholds()
    for p in pairs:
        assert (p["decision"] == "below-threshold") == (p["match_probability"] < r)
        if p["decision"] == "confirm":
            assert p["match_probability"] >= c


def test_model_file_errors_are_clear(tmp_path):
    with pytest.raises(model.ModelError, match="run `joinedup link train` first"):
        model.Trained.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(model.ModelError, match="not a JoinedUp linkage model"):
        model.Trained.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(model.ModelError, match="cannot read"):
        model.Trained.load(tmp_path / "broken.json")


def _pair(a: str, b: str, weight: float) -> dict:
    return {"unlinked": a, "reference": b, "match_weight": weight, "match_probability": 2 ** weight / (1 + 2 ** weight)}


def test_a_record_is_one_person_so_near_equal_candidates_go_to_review():
    # Bayes' rule when at most one candidate is the match: P(i) = o_i / (1 + sum of the candidates' odds o_j)
    lone, = service.decide([_pair("u1", "r1", 10)], 0.95, 0.2)
    assert lone["decision"] == "confirm" and lone["exclusive_probability"] == pytest.approx(1024 / 1025)
    # two candidates at odds 2**10 each: each 1024 / 2049, just under a half
    twins = service.decide([_pair("u1", "r1", 10), _pair("u1", "r2", 10)], 0.95, 0.2)
    assert [p["decision"] for p in twins] == ["review", "review"]
    assert twins[0]["exclusive_probability"] == pytest.approx(1024 / 2049)
    # a far weaker rival (odds 1) leaves a strong pair confirmed: 2**20 / (1 + 2**20 + 1)
    strong = service.decide([_pair("u1", "r1", 20), _pair("u1", "r2", 0)], 0.95, 0.2)
    assert [p["decision"] for p in strong] == ["confirm", "review"]
    # the reference record's side counts too: two records to link both near-certain for one reference record
    both = service.decide([_pair("u1", "r1", 12), _pair("u2", "r1", 12)], 0.95, 0.2)
    assert [p["decision"] for p in both] == ["review", "review"]
    # one person's GP and hospital records (one vouched NHS number) are one candidate, not rivals
    one_person = service.decide([_pair("u1", "gp", 12), _pair("u1", "hosp", 10)], 0.95, 0.2,
                                {"gp": "9990000018", "hosp": "9990000018"})
    assert [p["decision"] for p in one_person] == ["confirm", "confirm"]


def test_two_records_without_an_nhs_number_are_linked_to_each_other(population, model_file):
    # a person whose GP record lacks the NHS number too (in a population larger than the 999 test range, people
    # past its capacity carry none): their council record can only be linked to that GP record
    council_id, gp_id = next((c, g) for c, g in sorted(population.truth) if all(
        model.row(population.patients[c])[f] == model.row(population.patients[g])[f] for f in model.FIELDS))
    people = [dict(p) for p in population.patients.values()]
    for p in people:
        if p["id"] == gp_id:
            p["identifier"] = [i for i in p.get("identifier") or () if i.get("system") != model.NHS_NUMBER_SYSTEM]
    without, reference = model.split(people)
    assert gp_id in {u["unique_id"] for u in without}
    pairs = model.score(model.Trained.load(model_file), [u for u in without if u["organisation"] == COUNCIL],
                        [*reference, *without])
    service.decide(pairs, *service.thresholds())
    found = {(p["unlinked"], p["reference"]) for p in pairs if p["decision"] == "confirm"}
    assert (council_id, gp_id) in found or (gp_id, council_id) in found
    # each pair once, never a record with itself
    assert len({frozenset((p["unlinked"], p["reference"])) for p in pairs}) == len(pairs)
    assert all(p["unlinked"] != p["reference"] for p in pairs)


def test_a_practice_own_registration_record_is_known_by_its_practice():
    gp_record = {"resourceType": "Patient", "id": "a", "meta": {"source": "Organization/gp-1"},
                 "generalPractitioner": [{"reference": "Organization/gp-1"}, {"reference": "Practitioner/pr-1"}]}
    assert model.registered_at(gp_record) == "gp-1"
    assert model.row(gp_record)["registered_at"] == "gp-1"
    # a hospital's or a council's record naming the practice (PD1-3) is not the practice's own: it may be stale
    hospital = {**gp_record, "meta": {"source": "Organization/trust-1"}}
    assert model.registered_at(hospital) is None
    # a practice's record that names only a practitioner, or another practice, is not a registration it holds
    assert model.registered_at({**gp_record, "generalPractitioner": [{"reference": "Practitioner/pr-1"}]}) is None
    assert model.registered_at({**gp_record, "generalPractitioner": [{"reference": "Organization/gp-2"}]}) is None
    assert model.registered_at({"resourceType": "Patient", "id": "c"}) is None


def _registered(a: str, b: str, weight: float, at: tuple[str | None, str | None]) -> dict:
    return {**_pair(a, b, weight), "registered_at": list(at)}


def test_two_practices_registrations_are_never_linked_automatically():
    # a person is registered with one practice at a time: two practices' own registration records are two people
    # (or a duplicate registration for a records manager), however alike
    alike, faint = service.decide([_registered("gp-b-1", "gp-a-1", 20, ("gp-b", "gp-a")),
                                   _registered("gp-b-1", "gp-a-2", 2, ("gp-b", "gp-a"))], 0.95, 0.2)
    assert alike["decision"] == "review" and "one practice at a time" in alike["caution"]
    assert "Organization/gp-b" in alike["caution"] and "Organization/gp-a" in alike["caution"]
    assert faint["decision"] == "below-threshold"
    # one practice's two records of a person, or a practice's record and a council's, are linked as before
    same_practice, = service.decide([_registered("gp-a-9", "gp-a-1", 20, ("gp-a", "gp-a"))], 0.95, 0.2)
    council, = service.decide([_registered("sc-1", "gp-a-1", 20, (None, "gp-a"))], 0.95, 0.2)
    assert same_practice["decision"] == council["decision"] == "confirm"
    # and such a pair is no rival: the council record's match to the practice record without an NHS number stands
    pairs = service.decide([_registered("sc-1", "gp-b-1", 12, (None, "gp-b")),
                            _registered("gp-b-1", "gp-a-1", 12, ("gp-b", "gp-a"))], 0.95, 0.2)
    assert [p["decision"] for p in pairs] == ["confirm", "review"]
    assert pairs[0]["exclusive_probability"] == pytest.approx(4096 / 4097)


def _rowd(uid: str, org: str, first: str, surname: str, dob: str, postcode: str = "ZX1 1AA") -> dict:
    return {"unique_id": uid, "organisation": org, "first_name": first, "surname": surname, "dob": dob,
            "postcode": postcode}


def test_each_pair_of_organisations_gets_the_prior_its_records_show():
    # the council's 12 records to link each agree on name and date of birth with a GP record at practice A (the
    # deterministic rules find 12 pairs); practice B's 20 registrations without a number agree with nothing
    council = [_rowd(f"sc-{i}", "la", "ANN", f"SURNAME{i}", f"1940-01-{i + 1:02d}") for i in range(12)]
    practice_a = [_rowd(f"a-{i}", "gp-a", "ANN", f"SURNAME{i}", f"1940-01-{i + 1:02d}") for i in range(12)] + \
        [_rowd(f"a-x{i}", "gp-a", "TOM", f"OTHER{i}", "1970-05-05") for i in range(38)]
    practice_b = [_rowd(f"b-{i}", "gp-b", "JOE", f"NOBODY{i}", "1980-02-02", "ZY9 9ZZ") for i in range(20)]
    to_link = council + practice_b
    priors = model.organisation_priors(to_link, [*practice_a, *to_link], rule_recall=0.4)
    # (pairs found / recall) / pairs compared: the council's 12 records x practice A's 50 candidates
    assert priors == {model.organisation_key("la", "gp-a"): pytest.approx((12 / 0.4) / (12 * 50))}
    assert model.organisation_key("gp-a", "la") == model.organisation_key("la", "gp-a")
    # fewer pairs than MIN_PRIOR_HITS: no prior of their own (the model's is used)
    few = model.organisation_priors(council[:5], practice_a, rule_recall=0.4)
    assert few == {}
