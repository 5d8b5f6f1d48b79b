"""A bulk import validates a batch of new data as it parses it and looks it up by content hash afterwards, and a
re-run the other way round (`bulk_import._CHECK_FIRST`): both must give the same counts, the same rejects in line
order, and write nothing when nothing changed (data: the public Synthea sample's Conditions)."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.interop.bulk_import import import_paths
from tests.conftest import BACKENDS, SAMPLES, fresh_database


def _conditions(n: int) -> list[dict]:
    lines = gzip.decompress((SAMPLES / "Condition.000.ndjson.gz").read_bytes()).splitlines()[:n]
    return [orjson.loads(line) for line in lines]


def _rejected(path) -> list[tuple[int, str]]:
    return [(r["line"], r["reason"]) for r in map(orjson.loads, path.read_bytes().splitlines())]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_give_the_same_outcome_whichever_way_they_are_checked(backend, tmp_path):
    docs = _conditions(60)
    del docs[24]["subject"]  # Condition.subject is 1..1 in R4: rejected
    docs[41]["clinicalStatus"]["coding"][0]["code"] = "banana"  # outside its required value set: rejected
    data = tmp_path / "in"
    data.mkdir()
    (data / "Condition.ndjson").write_bytes(b"\n".join(orjson.dumps(d) for d in docs) + b"\n")
    gate = get_gate(fresh_database(backend, tmp_path, "batch_order"))

    first = import_paths(gate, SYSTEM, [data], workers=1, batch=7, rejects=tmp_path / "r1.ndjson")
    assert (first.read, first.created, first.unchanged, first.rejected) == (60, 58, 0, 2)
    rejects = _rejected(tmp_path / "r1.ndjson")
    assert [line for line, _ in rejects] == [25, 42]
    assert "subject" in rejects[0][1] and "banana" in rejects[1][1]

    # the same content written differently (other separators, keys in another order): parsed, found unchanged by
    # content hash, nothing written; the invalid lines are rejected again, in the same order
    text = "\n".join(json.dumps(dict(reversed(list(d.items()))), separators=(", ", ": ")) for d in docs) + "\n"
    (data / "Condition.ndjson").write_text(text)
    again = import_paths(gate, SYSTEM, [data], workers=1, batch=7, rejects=tmp_path / "r2.ndjson")
    gate.flush_audit()
    assert (again.read, again.created, again.updated, again.unchanged, again.rejected) == (60, 0, 0, 58, 2)
    assert _rejected(tmp_path / "r2.ndjson") == rejects
    assert all(gate.read(SYSTEM, "Condition", d["id"]).content["meta"]["versionId"] == "1"
               for i, d in enumerate(docs) if i not in (24, 41))

    # a re-run in which some batches changed and others did not: the changed ones written, once each
    for i in (3, 50):
        docs[i]["note"] = [{"text": f"changed in run 3 ({i})"}]  # Condition.note: Annotation 0..*
    (data / "Condition.ndjson").write_bytes(b"\n".join(orjson.dumps(d) for d in docs) + b"\n")
    third = import_paths(gate, SYSTEM, [data], workers=1, batch=7, rejects=tmp_path / "r3.ndjson")
    assert (third.updated, third.unchanged, third.rejected) == (2, 56, 2)
    for i in (3, 50):
        stored = gate.read(SYSTEM, "Condition", docs[i]["id"]).content
        assert stored["note"] == [{"text": f"changed in run 3 ({i})"}] and stored["meta"]["versionId"] == "2"
