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


# -- codes of REQUIRED bindings (the models accept any code; the fast validator and check_required_codes do not) --
REQUIRED_CODE_CASES = [
    ({"resourceType": "Patient", "id": "p", "gender": "banana"}, "Patient.gender", "male | female | other | unknown"),
    ({"resourceType": "Patient", "id": "p", "contact": [{"gender": "x"}]}, "Patient.contact[0].gender", "female"),
    ({"resourceType": "Patient", "id": "p", "name": [{"family": "A", "use": "nick"}]}, "Patient.name[0].use",
     "nickname"),
    ({"resourceType": "Observation", "id": "o", "status": "done", "code": {"text": "x"}}, "Observation.status",
     "corrected"),
    ({"resourceType": "Encounter", "id": "e", "status": "over", "class": {"code": "AMB"}}, "Encounter.status",
     "entered-in-error"),
    ({"resourceType": "MedicationRequest", "id": "m", "status": "active", "intent": "wish",
      "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": "x"}}, "MedicationRequest.intent",
     "original-order"),
    ({"resourceType": "MedicationRequest", "id": "m", "status": "paused", "intent": "order",
      "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": "x"}}, "MedicationRequest.status",
     "on-hold"),
    ({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
      "identifier": [{"use": "main", "value": "1"}]}, "Condition.identifier[0].use", "official"),
    ({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
      "contained": [{"resourceType": "Patient", "id": "c1", "gender": "F"}]}, "Observation.contained[0].gender",
     "female"),
    ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Task", "id": "t",
      "status": "open", "intent": "order"}}]}, "Bundle.entry[0].resource.status", "in-progress"),
]


@pytest.mark.parametrize("doc,where,allowed", REQUIRED_CODE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_a_code_outside_its_required_value_set_is_refused_with_its_path(doc, where, allowed):
    from joinedup.fhir.errors import FhirError
    from joinedup.fhir.fastvalid import check_required_codes, required_code_problem

    assert _model_accepts(doc), "the R4B models accept it: only the code check refuses it"
    assert not is_certainly_valid(doc)
    problem = required_code_problem(doc)
    assert problem is not None and problem.startswith(f"{where}: ") and allowed in problem
    with pytest.raises(FhirError) as caught:
        check_required_codes(doc)
    assert caught.value.status == 422 and caught.value.issues[0]["expression"] == [where]


@pytest.mark.parametrize("doc", [
    {"resourceType": "Patient", "id": "p", "gender": "unknown", "contact": [{"gender": "other"}]},
    {"resourceType": "Observation", "id": "o", "status": "entered-in-error", "code": {"text": "x"}},
    {"resourceType": "Encounter", "id": "e", "status": "unknown", "class": {"code": "AMB"},
     "statusHistory": [{"status": "onleave", "period": {"start": "2024-01-01"}}]},
    {"resourceType": "DiagnosticReport", "id": "d", "status": "appended", "code": {"text": "x"}},
    {"resourceType": "Task", "id": "t", "status": "failed", "intent": "order"},
    {"resourceType": "SupplyRequest", "id": "s", "status": "completed", "itemCodeableConcept": {"text": "x"},
     "quantity": {"value": 1}},  # a value set not completed here: not checked, so not refused
])
def test_codes_in_their_required_value_sets_pass(doc):
    from joinedup.fhir.fastvalid import required_code_problem

    assert required_code_problem(doc) is None
    assert is_certainly_valid(doc)


def test_completed_value_sets_extend_what_the_models_list():
    from joinedup.fhir.fastvalid import COMPLETED_VALUE_SETS, _spec
    from joinedup.fhir.validation import model_class

    for element, codes in COMPLETED_VALUE_SETS.items():
        cls_name, field = element.split(".")
        if cls_name == "EncounterStatusHistory":
            from fhir.resources.R4B.encounter import EncounterStatusHistory as cls
        else:
            cls = model_class(cls_name)
        listed = cls.model_fields[field].json_schema_extra["enum_values"]
        assert "+" in listed and set(listed) - {"+"} <= set(codes), element
        kind, _list, allowed, _req, _group = _spec(cls)[field]
        assert kind == "code" and set(allowed) == set(codes)


def test_the_samples_and_the_generator_use_only_allowed_codes(tmp_path):
    from joinedup.fhir.fastvalid import required_code_problem
    from joinedup.synth.service import generate

    docs = [orjson.loads(line) for f in sorted(SAMPLES.glob("*.ndjson.gz")) if f.name != "log.ndjson.gz"
            for line in sample_lines(f.name.removesuffix(".000.ndjson.gz"))]
    out = tmp_path / "ics"
    generate(patients=40, seed=11, out=out, workers=1)
    for f in sorted(out.glob("*.ndjson")):
        if f.name != "ground-truth.ndjson":
            docs += [orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
    problems = [p for p in map(required_code_problem, docs) if p]
    assert len(docs) > 1000 and problems == []


# -- the shortcuts for free text and base64 decide exactly as the FHIR regexes they stand in for ----------------
@pytest.mark.parametrize("fmt", ["String", "Markdown", "EncodedBytes"])
def test_string_shortcuts_agree_with_the_fhir_regex(fmt):
    import random

    from joinedup.fhir.fastvalid import STRING_FORMATS, _string_ok

    rng = random.Random(fmt)
    alphabet = "AB+/=09xyz \t\r\n\x0b\x0c\x1c\x85\u00a0\u2028\u3000é"
    samples = ["", " ", "QUJD", "QUJD\n", "QUJ", "QU JD", "====", "\u00a0", "a\u3000", "QUJDRA=="]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(50000)]
    for value in samples:
        assert _string_ok(value, fmt) == (STRING_FORMATS[fmt].fullmatch(value) is not None), repr(value)
