"""Bulk import of real-world-shaped Synthea NDJSON, read back over HTTP; rejects; provenance."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.identity import SYSTEM
from joinedup.interop.bulk_import import import_paths
from tests.conftest import SAMPLES, sample_lines

TOTAL = 7160
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _sample_resources() -> list[dict]:
    out = []
    for f in sorted(SAMPLES.glob("*.ndjson.gz")):
        if f.name == "log.ndjson.gz":
            continue
        out.extend(json.loads(line) for line in sample_lines(f.name.removesuffix(".000.ndjson.gz")))
    return out


@pytest.fixture(scope="module")
def imported(server, tmp_path_factory):
    """The sample imported once into the server's database (the report of that first import)."""
    rejects = tmp_path_factory.mktemp("synthea") / "rejects.ndjson"
    report = import_paths(server.gate, SYSTEM, [SAMPLES], rejects=rejects, workers=1)
    server.gate.flush_audit()
    return report, rejects


def test_sample_imports_without_rejects(imported):
    report, rejects = imported
    assert report.files == 13
    assert report.read == TOTAL
    assert report.rejected == 0
    assert not rejects.exists()
    assert report.created + report.updated + report.unchanged == TOTAL
    assert report.by_type["Patient"] == 13
    assert report.by_type["Procedure"] == 2056
    assert sum(report.by_type.values()) == TOTAL


def test_reimport_is_idempotent(server, imported):
    again = import_paths(server.gate, SYSTEM, [SAMPLES], workers=1)
    assert again.read == TOTAL
    assert again.unchanged == TOTAL
    assert again.created == again.updated == again.rejected == 0


def test_everything_returns_each_patients_whole_record(server, api, imported):
    resources = _sample_resources()
    patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 13
    expected: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for res in resources:
        for key in ("subject", "patient"):
            ref = (res.get(key) or {}).get("reference", "")
            if ref.startswith("Patient/"):
                expected[ref[8:]].add((res["resourceType"], res["id"]))
    missing: dict[str, int] = defaultdict(int)
    for pid in patients:
        r = api.get(f"/fhir/Patient/{pid}/$everything")
        assert r.status_code == 200, r.text
        b = r.json()
        got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in b["entry"]}
        assert ("Patient", pid) in got
        for rtype, _ in expected[pid] - got:
            missing[rtype] += 1
        assert b["total"] == len(b["entry"])
        # nothing from another patient's record
        for e in b["entry"]:
            res = e["resource"]
            for key in ("subject", "patient"):
                ref = (res.get(key) or {}).get("reference", "")
                if ref.startswith("Patient/"):
                    assert ref == f"Patient/{pid}", (pid, res["resourceType"], res["id"])
    assert not missing, f"$everything lacks resources that reference the patient, by type: {dict(missing)}"


def test_counts_by_type_over_http(api, imported):
    resources = _sample_resources()
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    want = sum(
        1
        for r in resources
        if r["resourceType"] == "Encounter" and r["subject"]["reference"] == f"Patient/{pid}"
    )
    r = api.get("/fhir/Encounter", params={"patient": pid, "_summary": "count"})
    assert r.json()["total"] == want
    r = api.get(
        "/fhir/Patient",
        params={
            "_id": ",".join(x["id"] for x in resources if x["resourceType"] == "Patient"),
            "_summary": "count",
        },
    )
    assert r.json()["total"] == 13


def test_conditional_references_survive_import(api, imported):
    enc = next(
        r
        for r in _sample_resources()
        if r["resourceType"] == "Encounter" and "?" in r["participant"][0]["individual"]["reference"]
    )
    stored = api.get(f"/fhir/Encounter/{enc['id']}").json()
    ref = stored["participant"][0]["individual"]["reference"]
    assert ref == enc["participant"][0]["individual"]["reference"]
    assert ref.startswith("Practitioner?identifier=")
    assert stored["serviceProvider"]["reference"].startswith("Organization?identifier=")


# -- rejects and provenance through the CLI -------------------------------------------------------------


def _runner_env(server) -> dict:
    return {"JOINEDUP_DATABASE_URL": server.db_url}


def test_rejects_file_lists_bad_lines_and_good_lines_load(server, api, uid, tmp_path):
    sys = f"https://joinedup.example/test/import/{uid}"
    good1 = {"resourceType": "Patient", "id": f"imp1-{uid}", "identifier": [{"system": sys, "value": "1"}]}
    invalid = {
        "resourceType": "Patient",
        "id": f"imp2-{uid}",
        "identifier": [{"system": sys, "value": "2"}],
        "birthDate": "not a date",
    }
    bad_nhs = {
        "resourceType": "Patient",
        "id": f"imp3-{uid}",
        "identifier": [{"system": sys, "value": "3"}, {"system": NHS, "value": "9434765918"}],
    }
    good2 = {
        "resourceType": "Patient",
        "id": f"imp4-{uid}",
        "identifier": [{"system": sys, "value": "4"}, {"system": NHS, "value": "9434765919"}],
    }
    good3 = {
        "resourceType": "Condition",
        "id": f"impc-{uid}",
        "subject": {"reference": f"Patient/imp1-{uid}"},
        "code": {"text": "x"},
    }
    lines = [
        json.dumps(good1),
        '{"resourceType": "Patient", "id": ',
        json.dumps(invalid),
        json.dumps(good2),
        "",
        json.dumps(bad_nhs),
        json.dumps(good3),
    ]
    src = tmp_path / "mixed.ndjson"
    src.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "out" / "rejects.ndjson"
    result = CliRunner().invoke(
        app, ["import", str(src), "--rejects", str(rejects), "--workers", "1", "-q"], env=_runner_env(server)
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # Rich may wrap the summary at the console width
    assert text.startswith("read 6 resources from 1 file(s)"), result.stdout
    assert "3 created, 0 updated, 0 unchanged, 3 rejected" in text
    assert "rejected lines and reasons:" in text
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [r["line"] for r in rows] == [2, 3, 6]
    assert all(r["file"] == str(src) for r in rows)
    assert "JSON" in rows[0]["reason"]
    assert "birthDate" in rows[1]["reason"]
    assert "modulus 11" in rows[2]["reason"]
    assert json.loads(rows[1]["record"])["id"] == f"imp2-{uid}"
    found = api.get("/fhir/Patient", params={"identifier": f"{sys}|", "_count": 10}).json()
    assert {e["resource"]["id"] for e in found["entry"]} == {f"imp1-{uid}", f"imp4-{uid}"}
    assert api.get(f"/fhir/Condition/impc-{uid}").status_code == 200
    assert api.get(f"/fhir/Patient/imp2-{uid}").status_code == 404


def test_import_source_sets_meta_source_where_missing(server, api, uid, tmp_path):
    plain = {"resourceType": "Patient", "id": f"src1-{uid}"}
    sourced = {"resourceType": "Patient", "id": f"src2-{uid}", "meta": {"source": f"Organization/orig-{uid}"}}
    src = tmp_path / "Patient.ndjson"
    src.write_text(json.dumps(plain) + "\n" + json.dumps(sourced) + "\n")
    result = CliRunner().invoke(
        app,
        ["import", str(src), "--source", f"Organization/feed-{uid}", "--workers", "1", "-q"],
        env=_runner_env(server),
    )
    assert result.exit_code == 0, result.output
    assert api.get(f"/fhir/Patient/src1-{uid}").json()["meta"]["source"] == f"Organization/feed-{uid}"
    assert api.get(f"/fhir/Patient/src2-{uid}").json()["meta"]["source"] == f"Organization/orig-{uid}"
    r = api.get("/fhir/Patient", params={"_source": f"Organization/feed-{uid}"}).json()
    assert [e["resource"]["id"] for e in r["entry"]] == [f"src1-{uid}"]
    r = api.get("/fhir/Patient", params={"_source": f"Organization/orig-{uid}"}).json()
    assert [e["resource"]["id"] for e in r["entry"]] == [f"src2-{uid}"]


def test_import_of_a_bundle_file(server, api, uid, tmp_path):
    p_urn = "urn:uuid:0b7b8a2e-1f6e-4a55-9c55-" + uid[:10].ljust(12, "0")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": p_urn, "resource": {"resourceType": "Patient", "name": [{"family": f"Bun{uid}"}]}},
            {
                "fullUrl": f"urn:uuid:{uid}-c",
                "resource": {
                    "resourceType": "Condition",
                    "id": f"bc-{uid}",
                    "subject": {"reference": p_urn},
                    "code": {"text": "x"},
                },
            },
        ],
    }
    src = tmp_path / "bundle.json"
    src.write_text(json.dumps(bundle))
    result = CliRunner().invoke(app, ["import", str(src), "--workers", "1", "-q"], env=_runner_env(server))
    assert result.exit_code == 0, result.output
    cond = api.get(f"/fhir/Condition/bc-{uid}").json()
    pid = p_urn[9:]
    assert cond["subject"]["reference"] == f"Patient/{pid}"
    assert api.get(f"/fhir/Patient/{pid}").json()["name"][0]["family"] == f"Bun{uid}"


def test_import_missing_path_exits_2(server, tmp_path):
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nowhere.ndjson")], env=_runner_env(server))
    assert result.exit_code == 2
    assert "nowhere.ndjson" in result.output
    assert "Traceback" not in result.output


def test_rejects_path_is_written(server, tmp_path: Path, uid):
    src = tmp_path / "only-bad.ndjson"
    src.write_text("not json\n")
    rejects = tmp_path / "r.ndjson"
    result = CliRunner().invoke(
        app, ["import", str(src), "--rejects", str(rejects), "--workers", "1", "-q"], env=_runner_env(server)
    )
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "0 created" in text and "1 rejected" in text
    assert json.loads(rejects.read_text())["line"] == 1
