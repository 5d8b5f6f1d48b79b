"""`joinedup link train|run|review` through Typer's CliRunner: bad input exits 2 with one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from tests.interop.linkage.conftest import COUNCIL

runner = CliRunner()


@pytest.fixture()
def env(population, server, monkeypatch, tmp_path):
    monkeypatch.setenv("JOINEDUP_DATABASE_URL", server.db_url)
    monkeypatch.setenv("JOINEDUP_LINKAGE_MODEL", str(tmp_path / "model.json"))
    return tmp_path


def _fails(args: list[str], words: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    text = r.output.strip()
    assert len(text.splitlines()) == 1, text
    assert words.lower() in text.lower(), text


def test_bad_input_exits_2_with_one_line(env):
    _fails(["link", "run"], "run `joinedup link train` first")
    _fails(["link", "run", "--confirm", "2"], "--confirm 2.0")
    _fails(["link", "run", "--review", "0"], "--review 0.0")
    _fails(["link", "run", "--backend", "oracle"], "--backend")
    _fails(["link", "train", "--model", str(env)], "is a directory")
    _fails(["link", "review", "--status", "maybe"], "--status")
    (env / "bad.json").write_text("{}")
    _fails(["link", "run", "--model", str(env / "bad.json")], "not a JoinedUp linkage model")


def test_train_run_report_review(env, model_file):
    r = runner.invoke(app, ["link", "train", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["labelled_pairs"] > 0 and (env / "model.json").exists()
    report = env / "out" / "pairs.ndjson"
    r = runner.invoke(app, ["link", "run", "--dry-run", "--organisation", COUNCIL, "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "pairs scored" in r.output and "(dry run)" in r.output
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert lines and all({"match_weight", "match_probability", "decision"} <= set(x) for x in lines)
    r = runner.invoke(app, ["link", "review", "--status", "all", "--json"])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads(r.output), list)
