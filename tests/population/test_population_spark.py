"""Every outcome measure and every register (with its care processes and the risk bands) on Spark: the same
ViewDefinitions and the same SQL as on DuckDB (`measures.engine`, `registers.population`, with the spellings that
differ taken from `views/dialect.py`), run for real on Spark in local mode (Debian's Java) over a synthetic ICS of a few
hundred people. Spark must reproduce the ICS's ground truth (the expected value of each measure, who is on each
register) and give the same figures as DuckDB, measure by measure, breakdown by breakdown, person by person.

Slow: one Spark session serves the test session (`spark_session`, tuned for tiny data: no code generation),
one ICS is generated."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from joinedup.population.measures import definitions as defs
from joinedup.population.measures import engine
from joinedup.population.registers import population

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ics(tmp_path_factory) -> Path:
    from joinedup.synth.service import generate

    out = tmp_path_factory.mktemp("ics-spark")
    generate(patients=300, seed=11, out=out, workers=1)
    return out


@pytest.fixture(scope="module")
def today(ics) -> date:
    return date.fromisoformat(json.loads((ics / "manifest.json").read_text())["today"])


def _truth(ics: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (ics / "ground-truth.ndjson").read_text().splitlines()) if r["kind"] == kind]


def _same(a, b, where=()):
    """Equal figures; floats equal to 1e-9 relative (a sum of doubles may be added up in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            _same(a[k], b[k], (*where, k))
    else:
        assert a == b, where


def test_every_measure_on_spark_is_the_ground_truth_and_duckdb(ics, today, spark_session):
    chosen = list(defs.measures().values())
    on_spark = engine.Flattened(ics, "spark")
    on_duck = engine.Flattened(ics)
    try:
        compared = 0
        for d in chosen:
            for by in [None, *d["breakdowns"]]:
                _same(on_spark.figures(d, today=today, by=by), on_duck.figures(d, today=today, by=by), (d["id"], by))
                compared += 1
        expected = {r["measure"]: r for r in _truth(ics, "measure_expected")}
        assert set(expected) == {d["id"] for d in chosen}
        for mid, exp in expected.items():
            total = on_spark.figures(defs.measure(mid), today=today, by=None)["total"]["all"]
            for key, value in exp.items():
                if key not in ("kind", "measure"):
                    assert total[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), \
                        (mid, key)
    finally:
        on_spark.close()
        on_duck.close()
    assert compared >= 2 * len(chosen)  # every breakdown of every measure


def test_every_register_on_spark_is_the_ground_truth_and_duckdb(ics, today, spark_session):
    with population.Population(ics, today, engine="spark") as pop:
        people, tallies = pop.people(), pop.tallies()
    with population.Population(ics, today) as pop:
        people_duck, tallies_duck = pop.people(), pop.tallies()
    assert people == people_duck  # every person: registers, each care process's status and dates, eFI, CMS, medicines
    assert sorted(tallies.pop("segments")) == sorted(tallies_duck.pop("segments"))
    assert tallies == tallies_duck
    expected: dict[str, set[str]] = defaultdict(set)
    for t in _truth(ics, "register"):
        expected[t["register"]].add(t["patient"].removeprefix("Patient/"))
    got: dict[str, set[str]] = defaultdict(set)
    for pid, p in people.items():
        if not p["deceased"]:
            for rid in p["registers"]:
                got[rid].add(pid)
    assert expected and all(got[rid] == members for rid, members in expected.items())
    assert any(s["status"] == "overdue" for p in people.values() for procs in p["registers"].values()
               for s in procs.values())


def test_a_bad_engine_is_refused(ics, today):
    with pytest.raises(ValueError, match="unknown engine"):
        engine.Flattened(ics, "postgres")
