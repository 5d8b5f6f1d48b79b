"""Shared outcome measures: each formula against a worked example from its published definition, the engine against
the synthetic ICS's ground truth, the CLI and the API through the gate (analyst, board, refused clinician), bad
input (unknown measure or breakdown: OperationOutcome / exit 2) and small-number suppression."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.measures import definitions as defs
from joinedup.population.measures import engine, service

TODAY = date(2026, 6, 30)
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def _directory() -> list[dict]:
    out = [{"resourceType": "Organization", "id": "gp", "identifier": [{"system": ODS, "value": "Z90001"}],
            "name": "Test Surgery"},
           {"resourceType": "Organization", "id": "acute", "identifier": [{"system": ODS, "value": "RZ9"}],
            "name": "Test Hospital"}]
    for gp in "ABC":
        out.append({"resourceType": "PractitionerRole", "id": f"r{gp}", "practitioner": {"reference": f"Practitioner/{gp}"},
                    "organization": {"reference": "Organization/gp"}, "code": [{"text": "GP"}]})
    out.append({"resourceType": "PractitionerRole", "id": "rN", "practitioner": {"reference": "Practitioner/N"},
                "organization": {"reference": "Organization/gp"}, "code": [{"text": "Practice nurse"}]})
    return out


def _patient(pid: str, named: str = "A", **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1950-03-01",
            "generalPractitioner": [{"reference": "Organization/gp"}, {"reference": f"Practitioner/{named}"}], **extra}


def _visit(pid: str, n: int, day: str, who: str, cls: str = "AMB", org: str = "gp") -> dict:
    return {"resourceType": "Encounter", "id": f"{pid}-v{n:02d}", "status": "finished",
            "class": {"system": ACT, "code": cls}, "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": f"{day}T10:00:00Z", "end": f"{day}T10:10:00Z"},
            "serviceProvider": {"reference": f"Organization/{org}"},
            "participant": [{"individual": {"reference": f"Practitioner/{who}"}}]}


def _admission(pid: str, n: int, start: str, end: str, *, dx: str = "J18.9", died: bool = False,
               ready: str | None = None) -> dict:
    res = {"resourceType": "Encounter", "id": f"{pid}-a{n}", "status": "finished",
           "class": {"system": ACT, "code": "IMP"}, "subject": {"reference": f"Patient/{pid}"},
           "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "183452005"}]}],
           "period": {"start": f"{start}T08:00:00Z", "end": f"{end}T12:00:00Z"},
           "serviceProvider": {"reference": "Organization/acute"},
           "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": dx}]}],
           "hospitalization": {"dischargeDisposition": {"coding": [{"code": "exp" if died else "home"}]}}}
    if ready:
        res["extension"] = [{"url": "https://joinedup.example/fhir/StructureDefinition/discharge-ready-date",
                             "valueDate": ready}]
    return res


def _run(tmp_path: Path, resources: list[dict], measure_id: str, by: str | None = None) -> dict:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    engine.write_resources(folder, resources + _directory())
    return engine.compute(folder, [defs.measure(measure_id)], today=TODAY, by=by)[measure_id]


# -- formulas: worked examples from the published definitions ---------------------------------------------------
def test_continuity_indices_worked_example(tmp_path):
    """Five GP consultations, in order with GPs A, A, B, A, C (and a practice nurse, who is not a GP).

    Worked from the published formulas (restated in BMC Health Serv Res 2022;22:647 Table 2):
    UPC (Breslau & Reeb 1975) = max n_i / N = 3/5 = 0.6;
    COC (Bice & Boxerman 1977) = (sum n_i^2 - N) / (N (N - 1)) = (9 + 1 + 1 - 5) / (5 x 4) = 0.3;
    SECON (Steinwachs 1979) = same-provider consecutive pairs / (N - 1): AA, AB, BA, AC -> 1/4 = 0.25;
    named GP (A) share = 3/5."""
    visits = [_visit("p1", i, d, w) for i, (d, w) in enumerate(
        [("2026-01-05", "A"), ("2026-02-05", "A"), ("2026-03-05", "B"), ("2026-04-05", "A"), ("2026-05-05", "C")])]
    visits.append(_visit("p1", 9, "2026-02-20", "N"))  # practice nurse: not a GP consultation
    visits.append(_visit("p1", 10, "2026-02-21", "A", org="acute"))  # another organisation
    data = [_patient("p1"), *visits]
    assert _run(tmp_path, data, "continuity-upc")["total"]["all"] == {"denominator": 1, "value": pytest.approx(0.6)}
    assert _run(tmp_path, data, "continuity-coc")["total"]["all"]["value"] == pytest.approx(0.3)
    assert _run(tmp_path, data, "continuity-secon")["total"]["all"]["value"] == pytest.approx(0.25)
    named = _run(tmp_path, data, "continuity-named-gp")["total"]["all"]
    assert (named["numerator"], named["denominator"]) == (3, 5)


def test_continuity_bounds_and_minimum_visits(tmp_path):
    """All visits with one GP: every index is 1 (the published upper bound); alternating between two GPs: COC = 0.333
    ((4+4-4)/(4x3)), SECON = 0; one visit only: not counted (COC undefined for N = 1)."""
    same = [_visit("p1", i, f"2026-0{i + 1}-10", "B") for i in range(4)]
    alt = [_visit("p2", i, f"2026-0{i + 1}-10", "AB"[i % 2]) for i in range(4)]
    one = [_visit("p3", 0, "2026-03-03", "A")]
    data = [_patient("p1"), _patient("p2"), _patient("p3"), *same, *alt, *one]
    upc = _run(tmp_path, data, "continuity-upc", by="practice")
    assert upc["total"]["all"]["denominator"] == 2
    assert upc["total"]["all"]["value"] == pytest.approx((1 + 0.5) / 2)
    coc = _run(tmp_path, data, "continuity-coc")["total"]["all"]
    assert coc["value"] == pytest.approx((1 + 1 / 3) / 2)
    secon = _run(tmp_path, data, "continuity-secon")["total"]["all"]
    assert secon["value"] == pytest.approx((1 + 0) / 2)
    assert upc["groups"] == {"Z90001": {"denominator": 2, "value": pytest.approx(0.75)}}


def test_hospital_measures_worked_example(tmp_path):
    """One person: admitted with heart failure (I50.0, chronic ACSC) 1-5 Feb, delayed 2 days past the discharge ready
    date, readmitted 20 Feb (15 days later: a 30-day readmission) with pneumonia (J18.9, not chronic ACSC), GP
    follow-up 4 days after the first discharge; the second stay ends in death (excluded from readmissions and
    follow-up). A second person: admitted for COPD (J44.1) in 2024, outside the period."""
    data = [_patient("p1"), _patient("p2", deceasedDateTime="2026-03-01T12:00:00Z"),
            _admission("p1", 1, "2026-02-01", "2026-02-05", dx="I50.0", ready="2026-02-03"),
            _visit("p1", 1, "2026-02-09", "B", cls="VR"),
            _admission("p1", 2, "2026-02-20", "2026-02-22", dx="J18.9", died=True),
            _admission("p2", 1, "2024-02-01", "2024-02-05", dx="J44.1", ready="2024-02-05")]
    acsc = _run(tmp_path, data, "acsc-admissions", by="month")
    assert acsc["total"]["all"]["numerator"] == 1
    assert acsc["total"]["all"]["denominator"] == 2  # both alive on the period's middle day (2025-12-30)
    assert acsc["total"]["all"]["value"] == pytest.approx(50_000)
    assert acsc["groups"]["2026-02"]["numerator"] == 1 and acsc["groups"]["2026-03"]["numerator"] == 0
    re = _run(tmp_path, data, "readmissions-30d")["total"]["all"]
    assert (re["numerator"], re["denominator"]) == (1, 1)
    delayed = _run(tmp_path, data, "delayed-discharges", by="organisation")
    assert delayed["total"]["all"] == {"numerator": 1, "denominator": 1, "value": 100.0, "mean_delay_days": 2.0}
    assert list(delayed["groups"]) == ["RZ9"]
    follow = _run(tmp_path, data, "follow-up-7d")["total"]["all"]
    assert (follow["numerator"], follow["denominator"]) == (1, 1)


def test_acsc_code_list_matches_by_prefix_and_is_cited():
    lst = defs.codelist("acsc-chronic-icd10.yaml")
    assert lst["source"]["url"].startswith("https://digital.nhs.uk/") and lst["source"]["version"]
    codes = {c for g in lst["groups"].values() for c in g["codes"]}
    assert {"I50", "I11.0", "J45", "J46", "B18.0", "D50.1", "I10", "I11.9", "G40"} <= codes
    assert [k for k, g in lst["groups"].items() if not g["verified"]] == ["atrial_fibrillation"]


def test_advice_and_guidance_median_and_p90(tmp_path):
    """Four answered requests (1, 2, 3 and 10 days) and one unanswered: median = 2.5 days; P90 by linear
    interpolation between closest ranks = 3 + 0.7 x (10 - 3) = 7.9 days."""
    data = [_patient("p1")]
    for i, days in enumerate([1, 2, 3, 10, None]):
        q = {"resourceType": "Communication", "id": f"q{i}", "status": "completed",
             "category": [{"text": "Advice and guidance request"}], "subject": {"reference": "Patient/p1"},
             "sent": "2026-03-01T09:00:00Z"}
        data.append(q)
        if days is not None:
            data.append({"resourceType": "Communication", "id": f"r{i}", "status": "completed",
                         "category": [{"text": "Advice and guidance response"}], "subject": {"reference": "Patient/p1"},
                         "inResponseTo": [{"reference": f"Communication/q{i}"}],
                         "sent": f"2026-03-{1 + days:02d}T09:00:00Z"})
    got = _run(tmp_path, data, "advice-guidance-response")["total"]["all"]
    assert got == {"requests": 5, "answered": 4, "unanswered": 1, "median_days": pytest.approx(2.5),
                   "p90_days": pytest.approx(7.9)}


def test_every_definition_is_complete_and_cited():
    for d in defs.measures().values():
        assert d["numerator"] and d["denominator"] and d["exclusions"] and d["period"]["months"] == 12
        assert d["source"]["url"].startswith("https://") and d["source"]["version"]
        assert set(d["breakdowns"]) <= set(defs.BREAKDOWNS)


# -- the synthetic ICS's ground truth --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from joinedup.synth.service import generate

    out = tmp_path_factory.mktemp("ics")
    generate(patients=600, seed=11, out=out, workers=1)
    return out


def test_engine_reproduces_the_ground_truth(generated):
    expected = {r["measure"]: r for r in map(orjson.loads, (generated / "ground-truth.ndjson").read_bytes().splitlines())
                if r["kind"] == "measure_expected"}
    assert set(expected) == set(defs.measures())
    got = engine.compute_on_files(generated, list(defs.measures().values()), today=TODAY, by=None)
    for mid, exp in expected.items():
        total = got[mid]["total"]["all"]
        for key, value in exp.items():
            if key in ("kind", "measure"):
                continue
            if isinstance(value, float):
                assert total[key] == pytest.approx(value, abs=1e-5), (mid, key)
            else:
                assert total[key] == value, (mid, key)
    # every measure has data to measure
    assert expected["acsc-admissions"]["numerator"] > 0 and expected["care-plan-what-matters"]["numerator"] > 0
    assert 0 < expected["follow-up-7d"]["value"] < 100 and 0 < expected["delayed-discharges"]["value"] < 100
    assert expected["advice-guidance-response"]["answered"] > 0


def test_breakdowns_add_up_to_the_total(generated):
    chosen = [defs.measure("readmissions-30d"), defs.measure("care-plan-what-matters")]
    for by in ("practice", "pcn", "imd", "age", "ethnicity"):
        got = engine.compute_on_files(generated, chosen, today=TODAY, by=by)
        for fig in got.values():
            assert sum(g["denominator"] for g in fig["groups"].values()) == fig["total"]["all"]["denominator"]
            assert sum(g["numerator"] for g in fig["groups"].values()) == fig["total"]["all"]["numerator"]


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_list_run_and_bad_input(generated):
    runner = CliRunner()
    listed = runner.invoke(app, ["measures", "list", "--format", "json"])
    assert listed.exit_code == 0 and {m["id"] for m in json.loads(listed.stdout)} == set(defs.measures())
    run = runner.invoke(app, ["measures", "run", "--measure", "follow-up-7d", "--by", "month", "--source",
                              str(generated), "--date", "2026-06-30", "--format", "csv"])
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    assert lines[0].startswith("measure,period_start,period_end,by,group,numerator")
    assert lines[1].startswith("follow-up-7d,2025-06-24,2026-06-23,month,all,")
    assert len(lines) == 2 + 13  # the total and 13 calendar months touched by the period
    for args, words in ((["--measure", "no-such-measure"], "unknown measure 'no-such-measure'"),
                        (["--by", "postcode"], "unknown breakdown 'postcode'"),
                        (["--measure", "continuity-coc", "--by", "month"], "cannot be broken down by month"),
                        (["--date", "30/06/2026"], "--date must be YYYY-MM-DD")):
        bad = runner.invoke(app, ["measures", "run", *args])
        assert bad.exit_code == 2 and words in bad.output, bad.output


# -- the API through the gate ---------------------------------------------------------------------------------------
def _load_cohort(api: httpx.Client, uid: str) -> None:
    """Ten people with an admission in the period, one readmitted: enough to publish, small enough to suppress."""
    entries = []
    for i in range(10):
        pid = f"ms-{uid}-{i}"
        entries.append(_patient(pid))
        entries.append(_admission(pid, 1, "2026-01-10", "2026-01-14", dx="I50.0", ready="2026-01-12"))
    entries.append(_admission(f"ms-{uid}-0", 2, "2026-01-20", "2026-01-22", dx="J18.9"))
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in entries]}
    # practitioners named by the records are not needed: the practice and hospital are left unresolved on purpose
    resp = api.post("/fhir", json=bundle)
    assert resp.status_code == 200, resp.text


def test_api_roles_suppression_and_bad_input(server, api, uid):
    from joinedup.governance.accounts import add_user, issue_token

    _load_cohort(api, uid)
    add_user(server.gate, name=f"board-{uid}", role="board", password="pw-pw-pw-pw", replace=True)
    board = issue_token(server.gate, f"board-{uid}")
    listed = api.get("/api/measures")
    assert listed.status_code == 200 and len(listed.json()["measures"]) == len(defs.measures())
    with server.client("analyst") as c:
        r = c.get("/api/measures/readmissions-30d", params={"date": "2026-06-30", "by": "month"})
        assert r.status_code == 200, r.text
        m = r.json()["measures"][0]
        assert m["id"] == "readmissions-30d" and m["source"]["url"] and m["period_end"] == "2026-05-31"
        for cell in [m["total"], *m["groups"]]:
            for key in ("numerator", "denominator"):
                assert cell[key] == "*" or (isinstance(cell[key], int) and cell[key] % 5 == 0)
            if "*" in (cell["numerator"], cell["denominator"]):
                assert cell["value"] is None
        assert r.json()["excluded"].startswith("people who opted out")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {board}"}, timeout=120) as c:
        assert c.get("/api/measures/delayed-discharges", params={"date": "2026-06-30"}).status_code == 200
    with server.client("gp") as c:  # a clinician: direct care, not published population figures
        refused = c.get("/api/measures/readmissions-30d")
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    unknown = api.get("/api/measures/no-such-measure")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    bad_by = api.get("/api/measures/continuity-upc", params={"by": "month"})
    assert bad_by.status_code == 400 and "cannot be broken down by month" in bad_by.text
    assert api.get("/api/measures/acsc-admissions", params={"by": "postcode"}).status_code == 400


def test_published_values_rest_on_unsuppressed_counts():
    raw = {"readmissions-30d": {"period": {"all": {"first": TODAY.toordinal() - 364, "last": TODAY.toordinal()}},
                                "total": {"all": {"numerator": 3, "denominator": 40, "value": 7.5}}}}
    cell = service.publish(raw, by=None)["measures"][0]["total"]
    assert cell == {"numerator": "*", "denominator": 40, "value": None}


@pytest.mark.slow
def test_the_measure_views_give_the_same_rows_on_spark(generated):
    """The ViewDefinitions the measures are computed from flatten the generated ICS identically on Spark."""
    from joinedup.population.views import runner, spark

    for name, view in defs.views().items():
        resource = view["resource"]
        data = [r for p in runner.ndjson_files(generated, resource) if p.name.split(".")[0] == resource
                for r in map(orjson.loads, p.read_bytes().splitlines()[:400])]
        on_duck = runner.run_on_resources(view, data)
        on_spark = spark.run_on_resources(view, data)
        assert on_spark.columns == on_duck.columns, name
        assert sorted(on_spark.rows, key=repr) == sorted(on_duck.rows, key=repr), name
