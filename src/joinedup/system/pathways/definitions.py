"""The pathway definitions (knowledge/system/pathways.yaml), loaded once per process."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources as pkg_resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def pathways() -> dict[str, Any]:
    text = pkg_resources.files("joinedup.knowledge").joinpath("system/pathways.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=1)
def copd_codes() -> tuple[frozenset[str], tuple[str, ...]]:
    """SNOMED CT codes and ICD-10 prefixes of COPD from the shared condition list (knowledge/conditions.yaml)."""
    text = pkg_resources.files("joinedup.knowledge").joinpath("conditions.yaml").read_text(encoding="utf-8")
    copd = yaml.safe_load(text)["conditions"]["copd"]
    return frozenset(c["code"] for c in copd.get("snomed") or ()), tuple(copd.get("icd10") or ())


def activities() -> dict[str, dict[str, Any]]:
    return pathways()["activities"]


def name_of(activity: str) -> str:
    return activities()[activity]["name"]


def code_of(activity: str) -> str:
    return activities()[activity]["code"]


def activity_of_code(code: str) -> str | None:
    return next((k for k, v in activities().items() if v["code"] == code), None)
