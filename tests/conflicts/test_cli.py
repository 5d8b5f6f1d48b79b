"""The `joinedup conflicts check` command over its real interface, including bad input."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from joinedup.conflicts.cli import app

from .builders import bundle, egfr, med, patient

root = typer.Typer()
root.add_typer(app, name="conflicts")
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(root, ["conflicts", "check", *args])


def test_json_output(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps(bundle(patient(), med("Metformin 500mg"), egfr(25))))
    r = _run(str(p), "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["patient"] == "Patient/pt1"
    assert {"findings", "unrecognised", "resolution"} <= set(out)
    assert "dr-metformin-egfr-30" in {f["rule"] for f in out["findings"]}
    assert all({"involves", "rule", "why_now", "mechanism"} <= set(f) for f in out["findings"])
    assert set(out["resolution"]) >= {"changes", "residual"}


def test_text_output(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps(bundle(patient(), med("Metformin 500mg"), egfr(25))))
    r = _run(str(p), "--format", "text")
    assert r.exit_code == 0 and "Metformin with eGFR below 30" in r.output and "clinical judgement" in r.output


def test_empty_bundle_is_not_an_error(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"resourceType": "Bundle", "type": "collection"}))
    r = _run(str(p))
    assert r.exit_code == 0
    assert json.loads(r.output)["findings"] == []


def _bad(r) -> None:
    assert r.exit_code == 2
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_missing_file(tmp_path: Path) -> None:
    _bad(_run(str(tmp_path / "nope.json")))


def test_malformed_json(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text("{not json")
    _bad(_run(str(p)))


def test_not_a_bundle(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"resourceType": "Patient", "id": "x"}))
    _bad(_run(str(p)))


def test_entry_without_resource(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]}))
    _bad(_run(str(p)))


def test_directory_is_unreadable(tmp_path: Path) -> None:
    _bad(_run(str(tmp_path)))
