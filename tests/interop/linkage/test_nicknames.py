"""First names that are a name and its nickname agree at a level of their own, from the cited nickname list
(src/joinedup/interop/linkage/data/nicknames.csv: carltonnorthern/nicknames, Apache-2.0); and the same trained model
gives the same results on Spark as on DuckDB.

Expected pairs come from the list's own rows (names.csv: "william,has_nickname,bill", "margaret,has_nickname,peggy",
"elizabeth,has_nickname,beth", "william,has_nickname,will")."""

from __future__ import annotations

import csv
import importlib.util
import shutil

import pytest

from joinedup.interop.linkage import model


def _shares(a: str, b: str) -> bool:
    return bool(set(model.name_groups(a)) & set(model.name_groups(b)))


def test_the_list_is_the_cited_one_with_its_licence():
    with open(model.NICKNAMES, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {"name1", "relationship", "name2"} <= set(rows[0])
    assert {"name1": "william", "relationship": "has_nickname", "name2": "bill"} in rows
    licence = (model.NICKNAMES.parent / "nicknames-LICENSE.txt").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "carltonnorthern/nicknames" in (model.NICKNAMES.parent / "nicknames-SOURCE.md").read_text()


def test_a_name_and_its_nickname_share_a_group():
    assert _shares("WILLIAM", "BILL") and _shares("BILL", "WILLIAM")
    assert _shares("MARGARET", "PEGGY") and _shares("ELIZABETH", "BETH")
    assert _shares("BILL", "WILL")  # two nicknames of William
    assert not _shares("JOHN", "MARY") and not _shares("MARGARET", "PRUDENCE")
    assert model.name_groups(None) is None
    # the comparison row carries the groups, from the normalised first name (case and accents folded)
    assert "WILLIAM" in model.row({"id": "x", "name": [{"given": ["bill"], "family": "Smith"}]})["first_name_groups"]


def _person(pid: str, given: str, *, nhs: str | None = None, org: str = "org-a") -> dict:
    p = {"resourceType": "Patient", "id": pid, "meta": {"source": f"Organization/{org}"},
         "name": [{"use": "official", "family": "Abernethy-Quist", "given": [given]}], "gender": "female",
         "birthDate": "1948-02-17", "address": [{"use": "home", "line": ["7 Orchard Row"], "postalCode": "ZX9 4QT"}]}
    if nhs:
        p["identifier"] = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]
    return p


def test_a_nickname_scores_above_an_unrelated_first_name(model_file):
    trained = model.Trained.load(model_file)
    levels = [lv.get("label_for_charts", "") for c in trained.settings["comparisons"]
              if c["output_column_name"] == "first_name" for lv in c["comparison_levels"]]
    assert any(lv.startswith("Nickname") for lv in levels)
    unlinked, reference = model.split([
        _person("ref", "Margaret", nhs="9990000018", org="org-gp"),
        _person("nick", "Peggy"), _person("other", "Prudence")])
    pairs = {p["unlinked"]: p for p in model.score(trained, unlinked, reference, threshold=0.0)}
    assert pairs["nick"]["match_weight"] > pairs["other"]["match_weight"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("pyspark") is None or shutil.which("java") is None,
                    reason="Spark needs pyspark and a Java runtime")
def test_spark_gives_the_same_results_as_duckdb(population, model_file):
    """The same trained model scored on both backends over a small population: the same pairs, the same weights."""
    trained = model.Trained.load(model_file)
    people = list(population.patients.values())[:400]
    unlinked, reference = model.split(people)
    assert unlinked and reference
    duck = model.score(trained, unlinked, reference, threshold=0.01, backend="duckdb")
    spark = model.score(trained, unlinked, reference, threshold=0.01, backend="spark")
    assert duck, "the small population has pairs to compare"
    assert [(p["unlinked"], p["reference"]) for p in spark] == [(p["unlinked"], p["reference"]) for p in duck]
    for a, b in zip(duck, spark):
        assert a["match_weight"] == pytest.approx(b["match_weight"], abs=1e-6)
        assert a["fields"] == b["fields"]
