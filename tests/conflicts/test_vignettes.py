"""Clinical vignettes (src/joinedup/knowledge/conflicts/vignettes.yaml, written from MHRA, NICE, STOPP/START, BNF
and SmPC text): each names the hazard a pharmacist expects, and a close case that must stay silent; `quiet` people
on appropriate treatment must raise nothing serious. Detection runs through the public service (`detect_findings`),
as the CLI and API do; the people are built by `conflicts.vignettes.build` (the same cases `joinedup knowledge
check` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from joinedup.conflicts.service import detect_findings
from joinedup.conflicts.vignettes import build

DATA = Path(__file__).resolve().parents[2] / "src" / "joinedup" / "knowledge" / "conflicts" / "vignettes.yaml"
VIGNETTES: list[dict[str, Any]] = yaml.safe_load(DATA.read_text())["vignettes"]
RANK = {"low": 0, "moderate": 1, "high": 2, "critical": 3}


def findings(v: dict[str, Any]) -> list[dict[str, Any]]:
    return detect_findings(resources=build(v))["findings"]


FIRING = [v for v in VIGNETTES if not v.get("quiet")]
QUIET = [v for v in VIGNETTES if v.get("quiet")]


def test_the_vignette_set_is_broad() -> None:
    assert len(FIRING) >= 40
    assert len({v["expect"] for v in FIRING}) >= 40
    assert all(v.get("source") and v.get("hazard") and v.get("close") for v in FIRING)
    ids = [v["id"] for v in VIGNETTES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("v", FIRING, ids=[v["id"] for v in FIRING])
def test_vignette_raises_the_named_hazard(v: dict[str, Any]) -> None:
    found = [f for f in findings(v) if f["rule"] == v["expect"] and f["kind"] == v.get("expect_kind", f["kind"])]
    assert found, f"{v['id']}: expected {v['expect']} ({v['hazard']}) from {v['source']}"
    f = found[0]
    assert RANK[f["severity"]] >= RANK[v["min_severity"]], f
    if "max_severity" in v:
        assert RANK[f["severity"]] <= RANK[v["max_severity"]], f
    text = " ".join([f["summary"], f["detail"], f.get("mechanism", "")]).lower()
    assert v["hazard"].lower() in text, (v["hazard"], text)
    assert f["sources"] and f["why_now"], f
    assert {w["ref"] for w in f["why_now"]} <= set(f["involves"])
    if "add" in v:
        assert f["kind"] == "omission" and f["suggest"]["ingredient"] == v["add"], f


@pytest.mark.parametrize("v", FIRING, ids=[v["id"] for v in FIRING])
def test_close_case_stays_silent(v: dict[str, Any]) -> None:
    close = {**v, **v["close"]}
    assert v["expect"] not in {f["rule"] for f in findings(close)}, close


@pytest.mark.parametrize("v", QUIET, ids=[v["id"] for v in QUIET])
def test_appropriate_treatment_raises_nothing_serious(v: dict[str, Any]) -> None:
    loud = [f for f in findings(v) if RANK[f["severity"]] > RANK[v["max_severity"]]]
    assert not loud, loud


def vignette_rules() -> set[str]:
    """Rules covered by a firing vignette (with its close case)."""
    return {v["expect"] for v in FIRING}
