"""The synthetic ICS carries the work the workforce view measures (knowledge/synth/workforce.yaml): tasks between
organisations with owners, organisations and due dates, some completed late, some open and overdue, some reassigned;
key worker handovers recorded as care/plans/team.handover records them. Generated, imported with `joinedup import`
and reported with `joinedup workforce report`, whose whole-system handovers must equal an independent count of the
generated handover and reassignment entries in the 12 months."""

from __future__ import annotations

import json
from datetime import date

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.synth.service import generate, read_ndjson

N = 600
SEED = 3
AS_AT = "2026-06-30"  # the generator's reference date
FIRST = "2025-07-01"  # the first day of the 12 months to it
EXT = "https://joinedup.example/fhir/StructureDefinition/"


@pytest.fixture(scope="module")
def ics(tmp_path_factory):
    out = tmp_path_factory.mktemp("wf-ics") / "ics"
    generate(patients=N, seed=SEED, out=out, workers=1, today=date(2026, 6, 30))
    return out


def _entries(resource: dict, url: str) -> list[dict]:
    return [{p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in e["extension"]}
            for e in resource.get("extension") or () if e["url"] == url]


def test_tasks_have_owners_due_dates_and_realistic_outcomes(ics):
    tasks = list(read_ndjson(ics, "Task"))
    people = {t["for"]["reference"] for t in tasks}
    assert len(tasks) > 50 and len(people) > 20
    for t in tasks:
        assert t["owner"]["reference"].startswith("Practitioner/")
        org = next(e for e in t["extension"] if e["url"] == EXT + "task-owner-organization")
        assert org["valueReference"]["reference"].startswith("Organization/")
        due = t["restriction"]["period"]["end"]
        assert due > t["authoredOn"][:10]
        # set by one organisation for another's professional (meta.source: the setter)
        assert t["meta"]["source"] != org["valueReference"]["reference"] or _entries(t, EXT + "task-reassignment")
        if t["status"] == "completed":
            assert t["executionPeriod"]["end"] > t["authoredOn"]
    done = [t for t in tasks if t["status"] == "completed"]
    late = [t for t in done if t["executionPeriod"]["end"][:10] > t["restriction"]["period"]["end"]]
    open_now = [t for t in tasks if t["status"] in ("requested", "in-progress")]
    overdue = [t for t in open_now if t["restriction"]["period"]["end"] < AS_AT]
    reassigned = [t for t in tasks if _entries(t, EXT + "task-reassignment")]
    assert 0.1 < len(late) / len(done) < 0.4  # 25% late (an assumption, knowledge/synth/workforce.yaml)
    assert open_now and overdue and len(overdue) < len(open_now) + 1
    assert 0.02 < len(reassigned) / len(tasks) < 0.2  # 8% reassigned (assumption)
    for t in reassigned:
        e = _entries(t, EXT + "task-reassignment")[0]
        assert e["to"] == t["owner"] and e["from"] != e["to"] and e["when"] > t["authoredOn"]


def test_key_worker_handovers_as_the_app_records_them(ics):
    teams = list(read_ndjson(ics, "CareTeam"))
    handed = [t for t in teams if _entries(t, EXT + "key-worker-handover")]
    with_kw = [t for t in teams if any("coordinator" in p["role"][0]["text"].lower() for p in t["participant"])]
    assert handed and len(handed) < len(with_kw)
    for t in handed:
        current = [p for p in t["participant"] if p["role"][0]["text"] == "Key worker (care coordinator)"
                   and "end" not in p.get("period", {})]
        assert len(current) == 1
        last = _entries(t, EXT + "key-worker-handover")[-1]
        assert last["to"] == current[0]["member"] and current[0]["period"]["start"] == last["when"]
        previous = [p for p in t["participant"] if p["role"][0]["text"] == "Previous coordinator"]
        assert len(previous) == len(_entries(t, EXT + "key-worker-handover"))
        assert all(p["period"]["end"] <= AS_AT + "T23:59:59Z" for p in previous)


def test_imported_ics_reports_the_generated_handovers(ics, tmp_path):
    url = f"sqlite:///{tmp_path / 'wf.db'}"
    env = {"JOINEDUP_DATABASE_URL": url}
    imported = CliRunner().invoke(app, ["import", str(ics)], env=env)
    assert imported.exit_code == 0, imported.output
    result = CliRunner().invoke(app, ["workforce", "report", "--format", "json", "--as-at", AS_AT],
                                env={**env, "JOINEDUP_SUPPRESS_HIGH": "0", "JOINEDUP_SUPPRESS_ROUND": "1"})
    assert result.exit_code == 0, result.output
    rep = json.loads(result.output)
    kw = sum(1 for t in read_ndjson(ics, "CareTeam") for e in _entries(t, EXT + "key-worker-handover")
             if FIRST <= e["when"][:10] <= AS_AT)
    moved = sum(1 for t in read_ndjson(ics, "Task") for e in _entries(t, EXT + "task-reassignment")
                if FIRST <= e["when"][:10] <= AS_AT)
    assert rep["system"]["key_worker_handovers"]["value"] == kw
    assert rep["system"]["reassignments"]["value"] == moved
    assert rep["system"]["handovers"]["value"] == kw + moved
    open_on_day = sum(1 for t in read_ndjson(ics, "Task") if t["authoredOn"][:10] <= AS_AT and (
        t["status"] in ("requested", "in-progress") or t["executionPeriod"]["end"][:10] > AS_AT))
    assert rep["system"]["open"]["value"] == open_on_day
    names = {o["name"] for o in rep["organisations"]}
    assert any("Community" in n for n in names)
