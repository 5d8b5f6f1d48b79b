"""Index rows extracted from FHIR R4 specification examples (tests/data/fhir-r4-examples, unchanged copies).

Expectations come from the examples' own content and the R4 search parameter registry
(https://hl7.org/fhir/R4/searchparameter-registry.html): ImagingStudy `bodysite` is `ImagingStudy.series.bodySite`
(a two-step path), `modality` is `ImagingStudy.series.modality`; CarePlan `subject` is `CarePlan.subject` (targets
Group, Patient) and `patient` is `CarePlan.subject.where(resolve() is Patient)` (target Patient): one path, two
reference parameters whose targets differ.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from joinedup.fhir.search_params import registry

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "fhir-r4-examples"


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def _rows(resource: dict, kind: str, param: str) -> list[tuple]:
    return [r[3:] for r in registry().keyed_index_rows(resource, resource["id"])[kind] if r[2] == param]


def test_two_step_paths_from_the_imaging_study_example() -> None:
    study = _example("imagingstudy-example.json")
    # series[0].bodySite: SNOMED CT 67734004 "Upper Trunk Structure"; series[0].modality: DICOM CT
    assert _rows(study, "token", "bodysite") == [("http://snomed.info/sct", "67734004", "upper trunk structure")]
    assert _rows(study, "token", "modality") == [("http://dicom.nema.org/resources/ontology/DCM", "CT", None)]
    # two series: a value for each, in order
    two = copy.deepcopy(study)
    second = copy.deepcopy(two["series"][0])
    second["bodySite"] = {"system": "http://snomed.info/sct", "code": "51185008", "display": "Thorax"}
    two["series"].append(second)
    assert [r[1] for r in _rows(two, "token", "bodysite")] == ["67734004", "51185008"]
    # a series without a body site adds nothing
    del two["series"][1]["bodySite"]
    assert [r[1] for r in _rows(two, "token", "bodysite")] == ["67734004"]


def test_one_path_two_reference_parameters_from_the_care_plan_example() -> None:
    plan = _example("careplan-example.json")
    # subject: Patient/example - indexed under both parameters
    assert _rows(plan, "reference", "subject") == [("Patient", "example", None)]
    assert _rows(plan, "reference", "patient") == [("Patient", "example", None)]
    # a Group subject: `subject` (Group | Patient) holds it, `patient` (Patient only) does not
    group = copy.deepcopy(plan)
    group["subject"] = {"reference": "Group/102"}
    assert _rows(group, "reference", "subject") == [("Group", "102", None)]
    assert _rows(group, "reference", "patient") == []
