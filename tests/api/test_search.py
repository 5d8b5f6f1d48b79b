"""FHIR search over real HTTP: parameter types, modifiers, prefixes, paging, sorting, includes, summaries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


class Data:
    """Resources created once for this module, all tagged with a unique suffix."""

    def __init__(self, u: str):
        self.u = u
        self.sys = f"https://joinedup.example/test/search/{u}"
        self.pager_sys = f"https://joinedup.example/test/search-pager/{u}"
        self.ids: dict[str, str] = {}


def _ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


@pytest.fixture(scope="module")
def d(server) -> Data:
    data = Data(uuid.uuid4().hex[:10])
    u, sys = data.u, data.sys
    data.before = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with server.client("admin") as api:

        def put(res: dict) -> str:
            r = api.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res)
            assert r.status_code in (200, 201), r.text
            return res["id"]

        def post(res: dict) -> str:
            r = api.post(f"/fhir/{res['resourceType']}", json=res)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        prac = put({"resourceType": "Practitioner", "id": f"prac-{u}", "name": [{"family": f"Doc{u}"}]})
        data.ids["prac"] = prac
        data.ids["A"] = post(
            {
                "resourceType": "Patient",
                "identifier": [{"system": sys, "value": f"A-{u}"}, {"system": NHS, "value": "9434765919"}],
                "name": [{"family": "Ångström", "given": ["Anna"]}],
                "gender": "female",
                "birthDate": "1970-03-15",
                "maritalStatus": {"text": "Married"},
                "generalPractitioner": [{"reference": f"Practitioner/{prac}"}],
            }
        )
        data.ids["B"] = post(
            {
                "resourceType": "Patient",
                "identifier": [{"system": sys, "value": f"B-{u}"}],
                "name": [{"family": "Smith", "given": ["Bob"]}],
                "gender": "male",
                "birthDate": "1970-07-01",
                "active": True,
            }
        )
        data.ids["C"] = post(
            {
                "resourceType": "Patient",
                "identifier": [{"system": sys, "value": f"C-{u}"}],
                "name": [{"family": "Smithson", "given": ["Carl"]}],
                "birthDate": "1985",
            }
        )
        data.ids["D"] = post(
            {
                "resourceType": "Patient",
                "identifier": [{"system": sys, "value": f"D-{u}"}, {"value": f"nosys-{u}"}],
                "name": [{"family": "Brown", "given": ["Dee"]}],
                "gender": "other",
                "birthDate": "2001-12-31",
                "address": [{"city": "Leeds", "postalCode": "LS1 4AP"}],
            }
        )
        a = data.ids["A"]
        b = data.ids["B"]

        def obs(
            key,
            pid,
            value,
            when,
            code="2823-3",
            display="Potassium [Moles/volume] in Serum or Plasma",
            unit="mmol/L",
            text="Serum potassium",
        ):
            data.ids[key] = post(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": sys, "value": key}],
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": text},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": when,
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                }
            )

        obs("o1", a, 4.1, "2023-05-10T10:00:00Z")
        obs("o2", a, 5.5, "2023-06-20T12:30:00+01:00")
        obs("o3", a, 6.0, "2024-01-05")
        obs(
            "o4",
            b,
            7,
            "2023-05-11",
            code="2345-7",
            display="Glucose [Mass/volume] in Serum or Plasma",
            unit="mg/dL",
            text="Glucose",
        )
        data.ids["e1"] = post(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "identifier": [{"system": sys, "value": "e1"}],
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": f"Patient/{a}"},
                "period": {"start": "2022-01-01T09:00:00Z", "end": "2022-01-03T17:00:00Z"},
            }
        )
        data.ids["e2"] = post(
            {
                "resourceType": "Encounter",
                "status": "in-progress",
                "identifier": [{"system": sys, "value": "e2"}],
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{a}"},
                "period": {"start": "2022-02-10"},
            }
        )
        data.ids["cond"] = post(
            {
                "resourceType": "Condition",
                "identifier": [{"system": sys, "value": "cond"}],
                "code": {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "38341003",
                            "display": "Hypertensive disorder",
                        }
                    ],
                    "text": "High blood pressure",
                },
                "subject": {"reference": f"Patient/{b}"},
                "recordedDate": "2020-04-04",
            }
        )
        data.pager = [
            post(
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": data.pager_sys, "value": str(i)}],
                    "name": [{"family": f"Pager{i:02d}"}],
                }
            )
            for i in range(11)
        ]
    with server.client("gp") as gp:
        r = gp.post(
            "/fhir/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": sys, "value": f"G-{u}"}],
                "name": [{"family": "Gee"}],
            },
        )
        assert r.status_code == 201
        data.ids["G"] = r.json()["id"]
    return data


def _patients(api, d: Data, **params) -> set[str]:
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "_count": 100, **params})
    assert r.status_code == 200, r.text
    return set(_ids(r.json()))


def _by(d: Data, *keys: str) -> set[str]:
    return {d.ids[k] for k in keys}


# -- token -------------------------------------------------------------------------------------------


def test_token_system_and_code(api, d):
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|A-{d.u}"})
    assert r.json()["resourceType"] == "Bundle" and r.json()["type"] == "searchset"
    assert _ids(r.json()) == [d.ids["A"]]
    assert r.json()["total"] == 1
    assert _ids(api.get("/fhir/Patient", params={"identifier": f"A-{d.u}"}).json()) == [d.ids["A"]]
    assert _ids(api.get("/fhir/Patient", params={"identifier": f"http://other|A-{d.u}"}).json()) == []
    # system only
    assert _patients(api, d) == _by(d, "A", "B", "C", "D", "G")
    # |code matches identifiers without a system only
    assert _ids(api.get("/fhir/Patient", params={"identifier": f"|nosys-{d.u}"}).json()) == [d.ids["D"]]
    assert _ids(api.get("/fhir/Patient", params={"identifier": f"|A-{d.u}"}).json()) == []
    # comma = OR, repeated parameter = AND
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|A-{d.u},{d.sys}|B-{d.u}"})
    assert set(_ids(r.json())) == _by(d, "A", "B")
    r = api.get("/fhir/Patient", params=[("identifier", f"{d.sys}|"), ("identifier", f"{NHS}|9434765919")])
    assert set(_ids(r.json())) == _by(d, "A")


def test_token_code_on_codeable_concept(api, d):
    a = d.ids["A"]
    r = api.get("/fhir/Observation", params={"subject": f"Patient/{a}", "code": f"{LOINC}|2823-3"})
    assert set(_ids(r.json())) == _by(d, "o1", "o2", "o3")
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "code": "2345-7"})
    assert set(_ids(r.json())) == _by(d, "o4")


def test_token_not_modifier(api, d):
    assert _patients(api, d, **{"gender:not": "male"}) == _by(d, "A", "C", "D", "G")
    assert _patients(api, d, **{"gender:not": "female"}) == _by(d, "B", "C", "D", "G")


def test_token_text_modifier(api, d):
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "code:text": "serum pot"})
    assert set(_ids(r.json())) == _by(d, "o1", "o2", "o3")
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "code:text": "GLUCOSE"})
    assert set(_ids(r.json())) == _by(d, "o4")
    r = api.get("/fhir/Condition", params={"identifier": f"{d.sys}|", "code:text": "hypertensive"})
    assert set(_ids(r.json())) == _by(d, "cond")


def test_token_boolean(api, d):
    assert _patients(api, d, active="true") == _by(d, "B")


# -- string ------------------------------------------------------------------------------------------


def test_string_default_is_case_and_accent_insensitive_prefix(api, d):
    assert _patients(api, d, family="angstrom") == _by(d, "A")
    assert _patients(api, d, family="ÅNGSTRÖM") == _by(d, "A")
    assert _patients(api, d, family="Ang") == _by(d, "A")
    assert _patients(api, d, family="smith") == _by(d, "B", "C")
    assert _patients(api, d, family="mith") == set()
    assert _patients(api, d, given="ann") == _by(d, "A")
    assert _patients(api, d, name="bob") == _by(d, "B")
    assert _patients(api, d, name="smithson") == _by(d, "C")
    assert _patients(api, d, **{"address-city": "LEEDS"}) == _by(d, "D")
    assert _patients(api, d, address="ls1") == _by(d, "D")


def test_string_exact_and_contains(api, d):
    assert _patients(api, d, **{"family:exact": "Smith"}) == _by(d, "B")
    assert _patients(api, d, **{"family:exact": "smith"}) == set()
    assert _patients(api, d, **{"family:exact": "Ångström"}) == _by(d, "A")
    assert _patients(api, d, **{"family:exact": "Angstrom"}) == set()
    assert _patients(api, d, **{"family:contains": "MITH"}) == _by(d, "B", "C")
    assert _patients(api, d, **{"family:contains": "gstr"}) == _by(d, "A")


# -- date ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1970", "AB"),
        ("1970-03", "A"),
        ("1970-03-15", "A"),
        ("eq1970-07-01", "B"),
        ("1985", "C"),
        ("1985-06", ""),
        ("ne1970", "CD"),
        ("gt1970", "CD"),
        ("gt1970-03-15", "BCD"),
        ("lt1985", "AB"),
        ("lt1970-07-01", "A"),
        ("ge1985", "CD"),
        ("ge1970-07", "BCD"),
        ("le1970-07-01", "AB"),
        ("le1969", ""),
        ("ge2001-12-31", "D"),
    ],
)
def test_birthdate_prefixes_and_precision(api, d, value, expected):
    assert _patients(api, d, birthdate=value) == _by(d, *expected)


def test_birthdate_range_with_two_values_is_and(api, d):
    r = api.get(
        "/fhir/Patient",
        params=[("identifier", f"{d.sys}|"), ("birthdate", "ge1970-01-01"), ("birthdate", "le1985-12-31")],
    )
    assert set(_ids(r.json())) == _by(d, "A", "B", "C")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2023", ["o1", "o2", "o4"]),
        ("2023-05", ["o1", "o4"]),
        ("2023-05-10", ["o1"]),
        ("ge2023-06-01", ["o2", "o3"]),
        ("lt2023-06-20", ["o1", "o4"]),
        ("le2023-06-20", ["o1", "o2", "o4"]),
        ("gt2023-12-31", ["o3"]),
        ("ne2023", ["o3"]),
        ("2023-06-20T11:30:00Z", ["o2"]),
        ("2023-06-20T12:30:00+01:00", ["o2"]),
        ("lt2023-06-20T11:30:00Z", ["o1", "o4"]),
        ("2022", []),
    ],
)
def test_observation_date(api, d, value, expected):
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "date": value, "_count": 100})
    assert r.status_code == 200, r.text
    assert set(_ids(r.json())) == _by(d, *expected)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("2022-01", ["e1"]),
        ("2022-01-02", []),
        ("ap2022-01-02", ["e1"]),
        ("ge2022-02-01", ["e2"]),
        ("lt2022-02-01", ["e1"]),
        ("lt2022-03-01", ["e1", "e2"]),
        ("gt2030-01-01", ["e2"]),
        ("2022", ["e1"]),
    ],
)
def test_encounter_period(api, d, value, expected):
    r = api.get("/fhir/Encounter", params={"identifier": f"{d.sys}|", "date": value})
    assert r.status_code == 200, r.text
    assert set(_ids(r.json())) == _by(d, *expected)


# -- reference -------------------------------------------------------------------------------------------


def test_reference_forms(api, d):
    a, b = d.ids["A"], d.ids["B"]
    expected_a = _by(d, "o1", "o2", "o3")
    for params in (
        {"subject": f"Patient/{a}"},
        {"subject": a},
        {"patient": a},
        {"patient": f"Patient/{a}"},
        {"subject:Patient": a},
        {"subject": f"{api.base_url}/fhir/Patient/{a}"},
    ):
        r = api.get("/fhir/Observation", params=params)
        assert r.status_code == 200, (params, r.text)
        assert set(_ids(r.json())) == expected_a, params
    assert set(_ids(api.get("/fhir/Observation", params={"patient": b}).json())) == _by(d, "o4")
    assert _ids(api.get("/fhir/Observation", params={"subject": f"Group/{a}"}).json()) == []
    assert set(_ids(api.get("/fhir/Encounter", params={"patient": a}).json())) == _by(d, "e1", "e2")
    assert set(_ids(api.get("/fhir/Condition", params={"subject": f"Patient/{b}"}).json())) == _by(d, "cond")
    assert _patients(api, d, **{"general-practitioner": f"Practitioner/{d.ids['prac']}"}) == _by(d, "A")


def test_missing_modifier(api, d):
    assert _patients(api, d, **{"gender:missing": "true"}) == _by(d, "C", "G")
    assert _patients(api, d, **{"gender:missing": "false"}) == _by(d, "A", "B", "D")
    assert _patients(api, d, **{"birthdate:missing": "true"}) == _by(d, "G")
    assert _patients(api, d, **{"general-practitioner:missing": "false"}) == _by(d, "A")


# -- quantity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        (f"gt5.4|{UCUM}|mmol/L", ["o2", "o3"]),
        ("gt5.4", ["o2", "o3", "o4"]),
        ("5.5", ["o2"]),
        ("6", ["o2", "o3"]),
        ("lt5", ["o1"]),
        ("le5.5", ["o1", "o2"]),
        ("ge4.1||mmol/L", ["o1", "o2", "o3"]),
        (f"gt1|{UCUM}|mg/dL", ["o4"]),
        ("ne5.5|http://unitsofmeasure.org|mmol/L", ["o1", "o3"]),
    ],
)
def test_value_quantity(api, d, value, expected):
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "value-quantity": value})
    assert r.status_code == 200, r.text
    assert set(_ids(r.json())) == _by(d, *expected)


# -- common parameters -------------------------------------------------------------------------------------


def test_id_last_updated_and_source(api, d):
    a, b = d.ids["A"], d.ids["B"]
    assert set(_ids(api.get("/fhir/Patient", params={"_id": f"{a},{b}"}).json())) == {a, b}
    assert _ids(api.get("/fhir/Patient", params={"_id": f"nope-{d.u}"}).json()) == []
    assert _patients(api, d, _lastUpdated=f"gt{d.before}") == _by(d, "A", "B", "C", "D", "G")
    assert _patients(api, d, _lastUpdated=f"lt{d.before}") == set()
    assert _patients(api, d, _lastUpdated="gt2999-01-01") == set()
    assert _patients(api, d, _source="Organization/practice-1") == _by(d, "G")


def test_paging_follows_next_until_the_end(api, d):
    expected = set(d.pager)
    r = api.get("/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_count": 3})
    bundle = r.json()
    assert bundle["total"] == 11
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        ids = _ids(bundle)
        assert len(ids) <= 3
        seen.extend(ids)
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert "self" in links
        if pages > 1:
            assert "previous" in links
        if "next" not in links:
            break
        assert pages < 10, "paging does not end"
        bundle = api.get(links["next"]).json()
    assert pages == 4
    assert len(seen) == len(set(seen)) == 11
    assert set(seen) == expected
    # previous from the last page leads back to the third page
    prev = {link["relation"]: link["url"] for link in bundle["link"]}["previous"]
    back = api.get(prev).json()
    assert _ids(back) == seen[6:9]
    first = {link["relation"]: link["url"] for link in back["link"]}["first"]
    assert _ids(api.get(first).json()) == seen[0:3]


def test_paging_keeps_sort_order(api, d):
    r = api.get("/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_count": 4, "_sort": "-family"})
    assert r.status_code == 200, r.text
    seen = []
    bundle = r.json()
    while True:
        seen.extend(e["resource"]["name"][0]["family"] for e in bundle["entry"])
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        bundle = api.get(nxt[0]).json()
    assert seen == [f"Pager{i:02d}" for i in reversed(range(11))]


def test_count_zero_gives_total_only(api, d):
    b = api.get("/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_count": 0}).json()
    assert b["total"] == 11 and not b.get("entry")


def _order(api, d: Data, sort: str) -> list[str]:
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "_sort": sort})
    assert r.status_code == 200, r.text
    return _ids(r.json())


def test_sort_by_date(api, d):
    a, b, c, dd, g = (d.ids[k] for k in "ABCDG")
    assert _order(api, d, "birthdate") == [a, b, c, dd, g]  # missing values last
    assert _order(api, d, "-birthdate") == [dd, c, b, a, g]
    r = api.get("/fhir/Observation", params={"subject": f"Patient/{a}", "_sort": "-date"})
    assert _ids(r.json()) == [d.ids["o3"], d.ids["o2"], d.ids["o1"]]
    r = api.get("/fhir/Observation", params={"subject": f"Patient/{a}", "_sort": "date"})
    assert _ids(r.json()) == [d.ids["o1"], d.ids["o2"], d.ids["o3"]]


def test_sort_by_string(api, d):
    a, b, c, dd, g = (d.ids[k] for k in "ABCDG")
    assert _order(api, d, "family") == [a, dd, g, b, c]  # angstrom, brown, gee, smith, smithson
    assert _order(api, d, "-family") == [c, b, g, dd, a]


def test_sort_by_token_and_quantity(api, d):
    r = api.get("/fhir/Observation", params={"identifier": f"{d.sys}|", "_sort": "-value-quantity"})
    assert r.status_code == 200, r.text
    assert _ids(r.json()) == [d.ids[k] for k in ("o4", "o3", "o2", "o1")]
    r = api.get("/fhir/Patient", params={"_id": f"{d.ids['A']},{d.ids['B']}", "_sort": "gender"})
    assert r.status_code == 200, r.text
    assert _ids(r.json()) == [d.ids["A"], d.ids["B"]]  # female < male


def test_sort_by_last_updated_and_id(api, d):
    lu = _ids(
        api.get(
            "/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_sort": "_lastUpdated", "_count": 100}
        ).json()
    )
    assert lu == d.pager
    desc = _ids(
        api.get(
            "/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_sort": "-_lastUpdated", "_count": 100}
        ).json()
    )
    assert desc == list(reversed(d.pager))
    by_id = _ids(
        api.get(
            "/fhir/Patient", params={"identifier": f"{d.pager_sys}|", "_sort": "_id", "_count": 100}
        ).json()
    )
    assert by_id == sorted(d.pager)


def test_include_and_revinclude(api, d):
    a = d.ids["A"]
    r = api.get(
        "/fhir/Observation", params={"subject": f"Patient/{a}", "_include": "Observation:subject"}
    ).json()
    assert set(_ids(r)) == _by(d, "o1", "o2", "o3")
    assert _ids(r, "include") == [a]
    assert r["total"] == 3  # includes do not count
    r = api.get(
        "/fhir/Observation", params={"_id": d.ids["o1"], "_include": "Observation:patient:Patient"}
    ).json()
    assert _ids(r, "include") == [a]
    r = api.get("/fhir/Patient", params={"_id": a, "_revinclude": "Observation:subject"}).json()
    assert _ids(r) == [a]
    assert set(_ids(r, "include")) == _by(d, "o1", "o2", "o3")
    r = api.get(
        "/fhir/Patient",
        params=[("_id", a), ("_revinclude", "Observation:subject"), ("_revinclude", "Encounter:subject")],
    ).json()
    assert set(_ids(r, "include")) == _by(d, "o1", "o2", "o3", "e1", "e2")
    inc = [e for e in r["entry"] if e["search"]["mode"] == "include"]
    assert all(e["fullUrl"].endswith(f"/{e['resource']['resourceType']}/{e['resource']['id']}") for e in inc)
    # without iterate the Practitioner two steps away is not included; with it, it is
    r = api.get(
        "/fhir/Observation", params=[("_id", d.ids["o1"]), ("_include", "Observation:subject")]
    ).json()
    assert d.ids["prac"] not in _ids(r, "include")
    r = api.get(
        "/fhir/Observation",
        params=[
            ("_id", d.ids["o1"]),
            ("_include", "Observation:subject"),
            ("_include:iterate", "Patient:general-practitioner"),
        ],
    ).json()
    assert set(_ids(r, "include")) == {a, d.ids["prac"]}
    r = api.get("/fhir/Patient", params={"_id": a, "_include": "Patient:general-practitioner"}).json()
    assert _ids(r, "include") == [d.ids["prac"]]


def test_summary_count(api, d):
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "_summary": "count"})
    b = r.json()
    assert b["total"] == 5
    assert not b.get("entry")


def test_summary_true_and_elements(api, d):
    r = api.get("/fhir/Patient", params={"_id": d.ids["A"], "_summary": "true"}).json()
    res = r["entry"][0]["resource"]
    assert "maritalStatus" not in res
    assert res["birthDate"] == "1970-03-15" and res["name"]
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    } in res["meta"]["tag"]
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "_elements": "birthDate,gender"}).json()
    assert len(_ids(r)) == 5
    for e in r["entry"]:
        res = e["resource"]
        assert set(res) <= {"resourceType", "id", "meta", "birthDate", "gender"}
        assert "name" not in res
        assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    assert any("birthDate" in e["resource"] for e in r["entry"])
    full = api.get("/fhir/Patient", params={"_id": d.ids["A"]}).json()["entry"][0]["resource"]
    assert "maritalStatus" in full and "tag" not in full.get("meta", {})


def test_unknown_parameter_is_ignored_with_warning_or_refused_when_strict(api, d):
    r = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "shoe-size": "42"})
    assert r.status_code == 200
    b = r.json()
    assert set(_ids(b)) == _by(d, "A", "B", "C", "D", "G")
    outcomes = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert outcomes[0]["resource"]["resourceType"] == "OperationOutcome"
    assert issue["severity"] == "warning" and "shoe-size" in issue["diagnostics"]
    self_link = next(link["url"] for link in b["link"] if link["relation"] == "self")
    assert "shoe-size" not in self_link
    s = api.get(
        "/fhir/Patient",
        params={"identifier": f"{d.sys}|", "shoe-size": "42"},
        headers={"Prefer": "handling=strict"},
    )
    assert s.status_code == 400
    assert s.json()["resourceType"] == "OperationOutcome"
    assert "shoe-size" in s.json()["issue"][0]["diagnostics"]


def test_post_search_form(api, d):
    r = api.post("/fhir/Patient/_search", data={"identifier": f"{d.sys}|", "family": "smith"})
    assert r.status_code == 200, r.text
    assert set(_ids(r.json())) == _by(d, "B", "C")
    r = api.post(f"/fhir/Patient/_search?identifier={d.sys}|", data={"gender": "male"})
    assert set(_ids(r.json())) == _by(d, "B")


def test_self_link_reproduces_the_search(api, d):
    b = api.get("/fhir/Patient", params={"identifier": f"{d.sys}|", "family": "smith"}).json()
    self_url = next(link["url"] for link in b["link"] if link["relation"] == "self")
    assert set(_ids(api.get(self_url).json())) == _by(d, "B", "C")


def test_patient_everything(api, d):
    a = d.ids["A"]
    r = api.get(f"/fhir/Patient/{a}/$everything")
    assert r.status_code == 200
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json()["entry"]}
    want = {("Patient", a), ("Practitioner", d.ids["prac"])} | {
        (t, d.ids[k])
        for t, k in [
            ("Observation", "o1"),
            ("Observation", "o2"),
            ("Observation", "o3"),
            ("Encounter", "e1"),
            ("Encounter", "e2"),
        ]
    }
    assert got == want
    only = api.get(f"/fhir/Patient/{a}/$everything", params={"_type": "Encounter"}).json()
    assert {e["resource"]["id"] for e in only["entry"]} == _by(d, "e1", "e2")
