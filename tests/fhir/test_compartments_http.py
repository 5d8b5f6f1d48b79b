"""Patient compartments over HTTP, on data nobody here wrote: Synthea R4 patient bundles and FHIR R4 examples.

Expectations come from the data itself (which entries of a Synthea bundle reference its patient) and from the FHIR
R4 specification (the patient CompartmentDefinition, https://hl7.org/fhir/R4/compartmentdefinition-patient.html,
Patient/$everything, https://hl7.org/fhir/R4/patient-operation-everything.html, and search handling of unknown
parameters, https://hl7.org/fhir/R4/search.html#errors), never from JoinedUp's own output.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
BUNDLES = sorted((DATA / "synthea-r4-bundles").glob("*.json.gz"))
EXAMPLES = DATA / "fhir-r4-examples"


def _refs(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                out.extend(_refs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_refs(v))
    return out


@pytest.fixture(scope="module")
def synthea(server) -> list[dict]:
    """The three Synthea bundles posted as transactions; for each, its patient's new id and, from the export
    itself, how many entries of each type reference that patient, and the new ids of the others' entries."""
    out = []
    with server.client("admin") as api:
        for path in BUNDLES:
            bundle = json.loads(gzip.decompress(path.read_bytes()))
            r = api.post("/fhir", json=bundle)
            assert r.status_code == 200, r.text[:800]
            response = r.json()
            assert response["type"] == "transaction-response"
            ids = [e["response"]["location"].split("/")[1] for e in response["entry"]]
            patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
            pid = ids[next(i for i, e in enumerate(bundle["entry"]) if e["fullUrl"] == patient_url)]
            expected = Counter(e["resource"]["resourceType"] for e in bundle["entry"]
                               if e["resource"]["resourceType"] != "Patient" and patient_url in _refs(e["resource"]))
            members = {(e["resource"]["resourceType"], ids[i]) for i, e in enumerate(bundle["entry"])
                       if patient_url in _refs(e["resource"])}
            out.append({"pid": pid, "expected": expected, "members": members, "name": path.name})
    return out


def _everything(api, pid: str, **params) -> dict:
    r = api.get(f"/fhir/Patient/{pid}/$everything", params=params)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _types(bundle: dict) -> Counter:
    return Counter(e["resource"]["resourceType"] for e in bundle.get("entry", []))


def test_everything_holds_the_whole_synthea_record_and_no_one_elses(api, synthea):
    for rec in synthea:
        expected = rec["expected"]
        # the claims side of the record is there (22% of a Synthea record was missing before)
        assert expected["Claim"] and expected["ExplanationOfBenefit"] and expected["ImagingStudy"], rec["name"]
        got = _everything(api, rec["pid"])
        counts = _types(got)
        for rtype, n in expected.items():
            assert counts[rtype] == n, (rec["name"], rtype, counts[rtype], n)
        assert counts["Patient"] == 1
        others = {pid for other in synthea if other is not rec for pid in [other["pid"]]}
        for e in got["entry"]:
            for ref in _refs(e["resource"]):
                assert not any(ref == f"Patient/{o}" for o in others), (rec["name"], e["fullUrl"], ref)
            assert not (e["resource"]["resourceType"] == "Patient" and e["resource"]["id"] != rec["pid"])
        assert got["total"] == len(got["entry"])


def test_everything_pages_follow_next_links_to_the_same_record(api, synthea):
    rec = synthea[-1]
    whole = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in _everything(api, rec["pid"])["entry"]}
    seen, pages = [], 0
    page = _everything(api, rec["pid"], _count="25")
    while True:
        pages += 1
        rels = {link["relation"]: link["url"] for link in page["link"]}
        assert "self" in rels and page["total"] == len(whole)
        assert len(page["entry"]) <= 25
        seen.extend((e["resource"]["resourceType"], e["resource"]["id"]) for e in page["entry"])
        if "next" not in rels:
            break
        nxt = urlsplit(rels["next"])
        assert nxt.path.endswith(f"/Patient/{rec['pid']}/$everything")
        r = api.get(nxt.path, params={k: v[0] for k, v in parse_qs(nxt.query).items()})
        assert r.status_code == 200
        page = r.json()
    assert pages == -(-len(whole) // 25)
    assert len(seen) == len(set(seen)) and set(seen) == whole


def test_everything_type_filter_and_bad_parameters(api, synthea):
    rec = synthea[0]
    got = _everything(api, rec["pid"], _type="Claim,ExplanationOfBenefit")
    assert _types(got) == Counter({t: rec["expected"][t] for t in ("Claim", "ExplanationOfBenefit")})
    r = api.get(f"/fhir/Patient/{rec['pid']}/$everything", params={"_type": "Claim,NotAType"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert "NotAType" in r.json()["issue"][0]["diagnostics"]
    r = api.get(f"/fhir/Patient/{rec['pid']}/$everything", params={"_count": "ten"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("rtype", ["Claim", "ExplanationOfBenefit", "ImagingStudy"])
def test_search_by_patient_filters_to_that_patient(api, synthea, rtype):
    for rec in synthea:
        r = api.get(f"/fhir/{rtype}", params={"patient": rec["pid"], "_count": "100"})
        assert r.status_code == 200
        body = r.json()
        found = {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"}
        want = {i for t, i in rec["members"] if t == rtype}
        assert found == want, rtype
        assert not [e for e in body["entry"] if e["resource"]["resourceType"] == "OperationOutcome"]


def test_unknown_parameter_alone_is_refused_not_answered_with_everyone(api, synthea):
    r = api.get("/fhir/Claim", params={"colour": "blue"})
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "colour" in outcome["issue"][0]["diagnostics"] and outcome["issue"][0]["expression"] == ["colour"]
    # a parameter R4 defines that this server does not serve (special / composite) is refused the same way
    r = api.get("/fhir/Location", params={"near": "42.256500|-83.694710|11.20|km"})
    assert r.status_code == 400 and "not supported" in r.json()["issue"][0]["diagnostics"]
    r = api.get("/fhir/Observation", params={"code-value-quantity": "http://loinc.org|8480-6$gt100"})
    assert r.status_code == 400 and "not supported" in r.json()["issue"][0]["diagnostics"]
    # paging controls are not filters
    r = api.get("/fhir/Claim", params={"colour": "blue", "_count": "5"})
    assert r.status_code == 400


def test_unknown_parameter_beside_a_known_one_is_reported_and_ignored(api, synthea):
    rec = synthea[1]
    r = api.get("/fhir/Claim", params={"patient": rec["pid"], "colour": "blue", "_count": "100"})
    assert r.status_code == 200
    body = r.json()
    outcomes = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning" and "colour" in issue["diagnostics"]
    claims = {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"}
    assert claims == {i for t, i in rec["members"] if t == "Claim"}
    # Prefer: handling=strict refuses any parameter it cannot use (R4 search 3.1.1.4)
    r = api.get("/fhir/Claim", params={"patient": rec["pid"], "colour": "blue"},
                headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def _example(name: str, uid: str, patients: dict[str, str]) -> dict:
    res = json.loads((EXAMPLES / f"{name}-example.json").read_text())
    res["id"] = f"{res['id']}-{uid}"[:64]
    text = json.dumps(res)
    for old, new in patients.items():
        text = text.replace(f'"Patient/{old}"', f'"Patient/{new}"')
    return json.loads(text)


def test_spec_examples_are_filed_under_their_person(api, uid):
    # coverage-example: subscriber and beneficiary Patient/4, policy holder an Organization
    a, b = f"cmp-a-{uid}", f"cmp-b-{uid}"
    for pid in (a, b):
        assert api.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code in (200, 201)
    examples = {
        "coverage": _example("coverage", uid, {"4": a}),
        "claim": _example("claim", uid, {"1": a}),
        "explanationofbenefit": _example("explanationofbenefit", uid, {"pat1": a}),
        "imagingstudy": _example("imagingstudy", uid, {"dicom": a}),
        "careplan": _example("careplan", uid, {"example": a}),
    }
    # the same Coverage with a parent as policy holder and subscriber: it is the beneficiary's (the child's)
    parent_cover = copy.deepcopy(examples["coverage"])
    parent_cover["id"] = f"cov-child-{uid}"
    parent_cover["policyHolder"] = {"reference": f"Patient/{b}"}
    parent_cover["subscriber"] = {"reference": f"Patient/{b}"}
    for res in [*examples.values(), parent_cover]:
        r = api.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text[:500]
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in _everything(api, a)["entry"]}
    for res in [*examples.values(), parent_cover]:
        assert (res["resourceType"], res["id"]) in got
    got_b = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in _everything(api, b)["entry"]}
    assert ("Coverage", parent_cover["id"]) not in got_b
    # Coverage?beneficiary= and ?patient= (R4 Coverage-patient: Coverage.beneficiary)
    for param in ("beneficiary", "patient"):
        r = api.get("/fhir/Coverage", params={param: a})
        assert {e["resource"]["id"] for e in r.json()["entry"]} == {examples["coverage"]["id"], parent_cover["id"]}
    r = api.get("/fhir/Coverage", params={"policy-holder": b})
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {parent_cover["id"]}


def test_capability_statement_lists_what_is_supported(api):
    cs = api.get("/fhir/metadata").json()
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    for rtype in ("Claim", "ExplanationOfBenefit", "ImagingStudy", "Coverage", "CarePlan"):
        names = {p["name"] for p in by_type[rtype]["searchParam"]}
        assert "patient" in names, rtype
    claim_patient = next(p for p in by_type["Claim"]["searchParam"] if p["name"] == "patient")
    assert claim_patient == {"name": "patient", "type": "reference",
                             "definition": "http://hl7.org/fhir/SearchParameter/Claim-patient"}
    loc = by_type["Location"]
    assert "near" not in {p["name"] for p in loc["searchParam"]}
    assert "near" in loc["documentation"]


@pytest.fixture(scope="module")
def bulk_export(server) -> list[dict]:
    """The Synthea 10-patient bulk export (tests/data/synthea-10-patients) loaded as the integration account."""
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths

    folder = DATA / "synthea-10-patients"
    report = import_paths(server.gate, SYSTEM, [folder], workers=1)
    assert report.rejected == 0
    out = []
    for f in sorted(folder.glob("*.000.ndjson.gz")):
        out.extend(json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines() if line.strip())
    return out


def test_everything_per_type_equals_what_the_bulk_export_says_of_each_patient(api, bulk_export):
    patients = [r["id"] for r in bulk_export if r["resourceType"] == "Patient"]
    assert len(patients) == 13
    for pid in patients:
        expected = Counter(r["resourceType"] for r in bulk_export
                           if r["resourceType"] != "Patient" and f"Patient/{pid}" in _refs(r))
        got = _everything(api, pid, _type=",".join(sorted(expected)) or "Patient")
        counts = _types(got)
        assert {t: counts[t] for t in expected} == dict(expected), pid
        for e in got["entry"]:
            refs = [x for x in _refs(e["resource"]) if x.startswith("Patient/")]
            assert all(x == f"Patient/{pid}" for x in refs), (pid, e["fullUrl"])
