"""The fast validator may only accept what the fhir.resources models accept (differential test)."""

from __future__ import annotations

import copy
import random

import orjson
import pytest
from pydantic import ValidationError

from joinedup.fhir.fastvalid import is_certainly_valid
from joinedup.fhir.validation import model_class
from tests.conftest import SAMPLES, sample_lines

MUTANTS = [None, "", " ", "x y", 0, -1, 3.5, True, [], {}, [1], ["a"], {"a": 1}, "2023-02-30", "2023-13-01",
           "2023-01-01T10:00", "2023-01-01T10:00:00", "2023-01-01T25:00:00Z", "not a date", "urn:uuid:x",
           2**40, "12345678901234567890123456789012345678901234567890123456789012345"]


def _sample(n_per_file: int = 40) -> list[dict]:
    docs = []
    for f in sorted(SAMPLES.glob("*.ndjson.gz")):
        if f.name == "log.ndjson.gz":
            continue
        for line in sample_lines(f.name.removesuffix(".000.ndjson.gz"))[:n_per_file]:
            docs.append(orjson.loads(line))
    return docs


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p[0] != "resourceType"]
    path = rng.choice(paths)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    op = rng.random()
    if op < 0.5:
        parent[last] = copy.deepcopy(rng.choice(MUTANTS))
    elif op < 0.7 and isinstance(parent, dict):
        del parent[last]
    elif op < 0.85 and isinstance(parent, dict):
        parent[f"{last}Extra" if isinstance(last, str) else "bogus"] = "x"
    else:
        value = parent[last]
        parent[last] = [value] if not isinstance(value, list) else (value[0] if value else None)
    return doc


def _model_accepts(doc: dict) -> bool:
    try:
        model_class(doc["resourceType"]).model_validate(doc)
        return True
    except (ValidationError, ValueError, TypeError):
        return False


def test_real_world_sample_passes_fast_path():
    docs = _sample()
    assert docs
    assert all(is_certainly_valid(d) for d in docs)


@pytest.mark.parametrize("seed", range(4))
def test_fast_validator_never_accepts_what_the_models_refuse(seed):
    rng = random.Random(seed)
    docs = _sample(12)
    refused_by_models = 0
    for _ in range(600):
        mutant = _mutate(rng.choice(docs), rng)
        model_ok = _model_accepts(mutant)
        refused_by_models += not model_ok
        if is_certainly_valid(mutant):
            assert model_ok, f"fast validator accepted an invalid resource: {orjson.dumps(mutant)[:500]!r}"
    assert refused_by_models > 100  # the mutations really do produce invalid resources
