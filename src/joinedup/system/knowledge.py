"""The system domain's data files (knowledge/system/): the self-assessment frameworks, the live measures' definitions
and the needs -> services matching, plus the shared condition list (knowledge/conditions.yaml) it recognises
problems with. Loaded once per process."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib import resources as pkg_resources
from typing import Any

import yaml

FRAMEWORK_FILES = ("selfie.yaml", "integration-checklist.yaml", "factor-families.yaml")


def _read(path: str) -> dict[str, Any]:
    return yaml.safe_load(pkg_resources.files("joinedup.knowledge").joinpath(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def frameworks() -> list[dict[str, Any]]:
    """The three frameworks (SELFIE, the integration checklist, the factor families), in report order."""
    return [_read(f"system/frameworks/{name}") for name in FRAMEWORK_FILES]


@lru_cache(maxsize=1)
def measures() -> dict[str, Any]:
    """The live measures' definitions (knowledge/system/measures.yaml)."""
    return _read("system/measures.yaml")


@lru_cache(maxsize=1)
def needs() -> dict[str, Any]:
    """The needs -> services matching (knowledge/system/needs.yaml)."""
    return _read("system/needs.yaml")


@lru_cache(maxsize=1)
def conditions() -> dict[str, Any]:
    """The shared condition recognition list (knowledge/conditions.yaml): verified codes and synonyms."""
    return _read("conditions.yaml")["conditions"]


def normalise(text: str | None) -> str:
    """Lower case, accents and punctuation removed, single spaces: for whole-phrase matching."""
    t = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode().lower()
    return " " + re.sub(r"[^a-z0-9]+", " ", t).strip() + " "


def contains_phrase(haystack: str, phrase: str) -> bool:
    """Whether a normalised text holds the phrase as whole words."""
    p = normalise(phrase)
    return p.strip() != "" and p in haystack


@lru_cache(maxsize=1)
def code_index() -> dict[str, str]:
    """SNOMED CT code -> condition key, from the shared condition list."""
    out: dict[str, str] = {}
    for key, spec in conditions().items():
        for c in spec.get("snomed") or ():
            out.setdefault(str(c["code"]), key)
    return out
