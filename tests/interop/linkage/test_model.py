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
    assert r == {"unique_id": "x", "organisation": "o1", "first_name": "ROISIN", "surname": "O BRIEN",
                 "dob": "1941-03-07", "sex": "female", "postcode": "LS6 2AB", "address": "12 MILL LANE",
                 "first_name_groups": ["ROISIN"]}
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
