"""CDS Hooks 2.0 services over real HTTP: discovery, hooks with and without prefetch, feedback and suppression,
bad requests, authentication and refusal through the gate."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .builders import days_ago

SERVICE_PV = "joinedup-conflicts-patient-view"
SERVICE_OS = "joinedup-conflicts-order-select"
SERVICE_SIGN = "joinedup-conflicts-order-sign"


def _record(pid: str, *, egfr: float = 38, egfr_date: str | None = None) -> list[dict[str, Any]]:
    egfr_date = egfr_date or days_ago(90)  # results must be recent to drive a finding
    subj = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "birthDate": "1944-03-02",
         "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
         "name": [{"family": "Testperson", "given": ["Ada"]}],
         "generalPractitioner": [{"reference": "Organization/practice-1"}]},  # the gp user's practice
        {"resourceType": "Condition", "id": f"{pid}-ckd", "subject": subj,
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "709044004",
                              "display": "Chronic kidney disease"}]}},
        {"resourceType": "MedicationStatement", "id": f"{pid}-ramipril", "status": "active", "subject": subj,
         "medicationCodeableConcept": {"text": "Ramipril 5mg capsules"}},
        {"resourceType": "MedicationStatement", "id": f"{pid}-furosemide", "status": "active", "subject": subj,
         "medicationCodeableConcept": {"text": "Furosemide 40mg tablets"}},
        _egfr(pid, f"{pid}-egfr1", egfr, egfr_date),
    ]


def _egfr(pid: str, oid: str, value: float, when: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1", "display": "eGFR"}]},
            "valueQuantity": {"value": value, "unit": "mL/min/1.73m2"}, "effectiveDateTime": when}


def _store(api, resources: list[dict[str, Any]]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in resources]}
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text


def _draft_nsaid(pid: str, mid: str = "draft-nsaid") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": mid, "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "medicationCodeableConcept": {"text": "Naproxen 500mg tablets"}}


def _hook(hook: str, pid: str, *, drafts: list[dict] | None = None, selections: list[str] | None = None,
          prefetch: dict | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"userId": "Practitioner/gp-1", "patientId": pid}
    if drafts is not None:
        ctx["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                              "entry": [{"resource": d} for d in drafts]}
    if selections is not None:
        ctx["selections"] = selections
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": ctx}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _searchset(resources: list[dict]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _prefetch(resources: list[dict]) -> dict[str, Any]:
    def by(t):
        return [r for r in resources if r["resourceType"] == t]
    return {"patient": by("Patient")[0], "conditions": _searchset(by("Condition")),
            "medications": _searchset(by("MedicationRequest")),
            "medicationStatements": _searchset(by("MedicationStatement")),
            "observations": _searchset(by("Observation")), "allergies": _searchset([])}


def _rules(resp) -> set[str]:
    return {c["source"]["topic"]["code"] for c in resp.json()["cards"]}


def test_discovery_lists_three_services_with_prefetch(server) -> None:
    with server.client(None) as c:
        r = c.get("/cds-services")
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-select", "order-sign"}
    pre = services[SERVICE_OS]["prefetch"]
    assert pre["patient"] == "Patient/{{context.patientId}}"
    assert {"conditions", "medications", "observations", "allergies"} <= set(pre)
    assert all(s["description"] for s in services.values())


def test_patient_view_with_prefetch_does_not_need_the_store(server, api, uid) -> None:
    pid = f"cds-pf-{uid}"
    _store(api, _record(pid)[:1])  # only the registration is stored: the record itself comes from prefetch
    res = _record(pid) + [{"resourceType": "MedicationStatement", "id": f"{pid}-ibu", "status": "active",
                           "subject": {"reference": f"Patient/{pid}"},
                           "medicationCodeableConcept": {"text": "Ibuprofen 400mg tablets"}}]
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid, prefetch=_prefetch(res)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["extension"]["example.joinedup.read-from-store"] == []
    rules = _rules(r)
    assert {"ddis-nsaid-ckd", "dr-nsaid-egfr-50", "dd-triple-whammy"} <= rules
    for card in body["cards"]:
        assert len(card["summary"]) <= 140 and card["indicator"] in ("info", "warning", "critical")
        assert uuid.UUID(card["uuid"]) and card["source"]["label"] and card["source"]["url"]
        assert card["overrideReasons"] and card["detail"]
        if card.get("suggestions"):
            assert card["selectionBehavior"] == "at-most-one"
    # the card's source link resolves to the rule with its sources
    url = next(c["source"]["url"] for c in body["cards"] if c["source"]["topic"]["code"] == "dd-triple-whammy")
    with server.client(None) as c:
        rule = c.get(url.replace(server.url, ""))
    assert rule.status_code == 200 and rule.json()["sources"]


def test_patient_view_without_prefetch_reads_the_store(server, api, uid) -> None:
    pid = f"cds-st-{uid}"
    _store(api, _record(pid) + [{"resourceType": "MedicationStatement", "id": f"{pid}-ibu", "status": "active",
                                 "subject": {"reference": f"Patient/{pid}"},
                                 "medicationCodeableConcept": {"text": "Ibuprofen 400mg tablets"}}])
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid))
    assert r.status_code == 200, r.text
    assert "patient" in r.json()["extension"]["example.joinedup.read-from-store"]
    assert {"ddis-nsaid-ckd", "dd-triple-whammy"} <= _rules(r)
    # partial prefetch: only the missing keys are read from the store
    with server.client("gp") as c:
        r2 = c.post(f"/cds-services/{SERVICE_PV}",
                    json=_hook("patient-view", pid, prefetch={"patient": _record(pid)[0], "allergies": None}))
    fetched = r2.json()["extension"]["example.joinedup.read-from-store"]
    assert "patient" not in fetched and "allergies" in fetched and "conditions" in fetched
    assert _rules(r2) == _rules(r)
    # the access was made as the caller, through the gate, and audited (once the writer has flushed)
    server.gate.flush_audit()
    with server.client("admin") as c:
        audit = c.get("/fhir/AuditEvent", params={"patient": pid, "agent-name": "gp"})
    assert audit.status_code == 200 and audit.json().get("total", 0) >= 1


def test_order_select_override_suppresses_until_facts_change(server, api, uid) -> None:
    pid = f"cds-os-{uid}"
    _store(api, _record(pid))
    draft = _draft_nsaid(pid)
    req = _hook("order-select", pid, drafts=[draft], selections=[f"MedicationRequest/{draft['id']}"])
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_OS}", json=req)
    assert r.status_code == 200, r.text
    cards = {c["source"]["topic"]["code"]: c for c in r.json()["cards"]}
    assert {"ddis-nsaid-ckd", "dr-nsaid-egfr-50", "dd-triple-whammy"} <= set(cards)
    ckd = cards["ddis-nsaid-ckd"]
    assert ckd["indicator"] in ("warning", "critical")
    assert all("MedicationRequest/draft-nsaid" in c["detail"] for c in r.json()["cards"])
    actions = [a for s in ckd["suggestions"] for a in s["actions"]]
    assert {"type": "delete", "description": "Remove the draft order for Naproxen 500mg tablets",
            "resourceId": "MedicationRequest/draft-nsaid"} in actions
    egfr_card = cards["dr-nsaid-egfr-50"]
    monitoring = [a for s in egfr_card["suggestions"] for a in s["actions"] if a["type"] == "create"]
    assert any(a["resource"]["resourceType"] == "ServiceRequest" for a in monitoring)

    # override both renal cards (one with a reason), accept the triple-whammy suggestion
    tw = cards["dd-triple-whammy"]
    feedback = {"feedback": [
        {"card": ckd["uuid"], "outcome": "overridden", "outcomeTimestamp": "2025-11-23T10:00:00Z",
         "overrideReason": {"reason": ckd["overrideReasons"][0], "userComment": "short course, renal team aware"}},
        {"card": egfr_card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2025-11-23T10:00:01Z"},
        {"card": tw["uuid"], "outcome": "accepted", "outcomeTimestamp": "2025-11-23T10:00:02Z",
         "acceptedSuggestions": [{"id": tw["suggestions"][0]["uuid"]}]},
    ]}
    with server.client("gp") as c:
        fb = c.post(f"/cds-services/{SERVICE_OS}/feedback", json=feedback)
        assert fb.status_code == 200, fb.text
        issues = fb.json()["recorded"]
        assert len(issues) == 3
        stored = c.get(f"/fhir/{issues[0]}").json()
        assert stored["resourceType"] == "ClinicalImpression" and stored["subject"]["reference"] == f"Patient/{pid}"
        assert stored["code"]["coding"][0]["code"] == "overridden"
        assert "renal team aware" in stored["summary"] and stored["finding"][0]["itemCodeableConcept"]
        assert stored["extension"][0]["valueCoding"]["code"] == ckd["overrideReasons"][0]["code"]
        # the same hook again: acknowledged cards are not repeated
        again = c.post(f"/cds-services/{SERVICE_OS}", json=req)
        assert again.status_code == 200
        assert not {"ddis-nsaid-ckd", "dr-nsaid-egfr-50", "dd-triple-whammy"} & _rules(again)
        assert again.json()["extension"]["example.joinedup.acknowledged-not-shown"] >= 3
        # order-sign of the same draft: still acknowledged
        sign = c.post(f"/cds-services/{SERVICE_SIGN}", json=_hook("order-sign", pid, drafts=[draft]))
        assert sign.status_code == 200 and "ddis-nsaid-ckd" not in _rules(sign)
    # the facts change: a new, lower eGFR -> the eGFR card returns; the CKD card (same facts) stays acknowledged
    _store(api, [_egfr(pid, f"{pid}-egfr2", 29, days_ago(5))])
    with server.client("gp") as c:
        changed = c.post(f"/cds-services/{SERVICE_OS}", json=req)
    rules = _rules(changed)
    assert "dr-nsaid-egfr-50" in rules and "ddis-nsaid-ckd" not in rules
    # the patient conflicts API shows acknowledgement per finding
    with server.client("gp") as c:
        pc = c.post(f"/api/patients/{pid}/conflicts", json={"draftOrders": [draft]})
    assert pc.status_code == 200, pc.text
    by_rule = {f["rule"]: f for f in pc.json()["findings"]}
    assert by_rule["ddis-nsaid-ckd"]["acknowledged"] is True
    assert by_rule["dr-nsaid-egfr-50"]["acknowledged"] is False
    assert "resolution" in pc.json()


def test_patient_conflicts_get(server, api, uid) -> None:
    pid = f"cds-get-{uid}"
    _store(api, _record(pid))
    with server.client("gp") as c:
        r = c.get(f"/api/patients/{pid}/conflicts")
    missing = api.get(f"/api/patients/nobody-{uid}/conflicts")
    assert r.status_code == 200
    assert r.json()["patient"] == f"Patient/{pid}" and "resolution" in r.json()
    assert missing.status_code == 404


def test_order_select_only_cards_about_the_selection(server, api, uid) -> None:
    pid = f"cds-sel-{uid}"
    res = _record(pid)
    _store(api, res[:1])
    other = {"resourceType": "MedicationRequest", "id": "draft-para", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{pid}"}, "medicationCodeableConcept": {"text": "Paracetamol 500mg"}}
    req = _hook("order-select", pid, drafts=[_draft_nsaid(pid), other], selections=["MedicationRequest/draft-para"],
                prefetch=_prefetch(res))
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_OS}", json=req)
    assert r.status_code == 200
    assert not any("draft-nsaid" in c["detail"] for c in r.json()["cards"])


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: b.pop("hookInstance"), "hookInstance"),
    (lambda b: b.update(hook="patient-view"), "'hook' must be 'order-select'"),
    (lambda b: b["context"].pop("patientId"), "context.patientId"),
    (lambda b: b["context"].pop("draftOrders"), "draftOrders"),
    (lambda b: b["context"].update(selections=["MedicationRequest/nope"]), "not in context.draftOrders"),
    (lambda b: b["context"].update(selections=[]), "selections"),
    (lambda b: b.update(prefetch={"patient": {"resourceType": "Patient", "id": "someone-else"}}), "someone-else"),
    (lambda b: b.update(prefetch={"conditions": "nope"}), "prefetch.conditions"),
    (lambda b: b.update(context="x"), "'context'"),
])
def test_bad_hook_requests_are_400(server, uid, mutate, fragment) -> None:
    pid = f"cds-bad-{uid}"
    body = _hook("order-select", pid, drafts=[_draft_nsaid(pid)], selections=["MedicationRequest/draft-nsaid"])
    mutate(body)
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_OS}", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["error"] == "bad-request" and fragment in err["message"]


def test_malformed_json_unknown_service_unknown_card_and_auth(server, uid) -> None:
    pid = f"cds-misc-{uid}"
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        r = c.post("/cds-services/no-such-service", json=_hook("patient-view", pid))
        assert r.status_code == 404 and r.json()["error"] == "unknown-service"
        # a person the gp has no relationship with: refused by the gate (whether or not we hold the record)
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid))
        assert r.status_code == 403
    with server.client("admin") as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid))
        assert r.status_code == 412 and "not known" in r.json()["message"]
    with server.client("gp") as c:
        fb = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                            "outcomeTimestamp": "2025-11-23T10:00:00Z"}]}
        r = c.post(f"/cds-services/{SERVICE_PV}/feedback", json=fb)
        assert r.status_code == 404 and r.json()["error"] == "unknown-card"
        r = c.post(f"/cds-services/{SERVICE_PV}/feedback", json={"feedback": [{"card": "x", "outcome": "maybe"}]})
        assert r.status_code == 400 and "outcome" in r.json()["message"]
        r = c.post(f"/cds-services/{SERVICE_PV}/feedback", json={"nope": 1})
        assert r.status_code == 400
    with server.client(None) as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid))
        assert r.status_code == 401
        r = c.post(f"/cds-services/{SERVICE_PV}/feedback", json=fb)
        assert r.status_code == 401


def test_refused_caller_gets_403_through_the_gate(server, api, uid) -> None:
    pid = f"cds-ref-{uid}"
    _store(api, _record(pid))
    with server.client("analyst") as c:
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        # even with full prefetch, acknowledgements are read through the gate, so the analyst is refused
        r = c.post(f"/cds-services/{SERVICE_PV}", json=_hook("patient-view", pid, prefetch=_prefetch(_record(pid))))
        assert r.status_code == 403
        r = c.get(f"/api/patients/{pid}/conflicts")
        assert r.status_code == 403


def test_duplicate_records_of_one_medicine_give_one_card(server, api, uid) -> None:
    """The same medicine recorded by GP and hospital must not multiply cards (one per rule)."""
    pid = f"cds-dup-{uid}"
    extra = [{"resourceType": "MedicationStatement", "id": f"{pid}-ramipril-h", "status": "active",
              "subject": {"reference": f"Patient/{pid}"}, "medicationCodeableConcept": {"text": "Ramipril 5mg"}},
             {"resourceType": "MedicationStatement", "id": f"{pid}-furosemide-h", "status": "active",
              "subject": {"reference": f"Patient/{pid}"}, "medicationCodeableConcept": {"text": "Furosemide 40mg"}}]
    _store(api, _record(pid) + extra)
    req = _hook("order-select", pid, drafts=[_draft_nsaid(pid)], selections=["MedicationRequest/draft-nsaid"])
    with server.client("gp") as c:
        r = c.post(f"/cds-services/{SERVICE_OS}", json=req)
    assert r.status_code == 200
    tw = [c for c in r.json()["cards"] if c["source"]["topic"]["code"] == "dd-triple-whammy"]
    assert len(tw) == 1 and f"MedicationStatement/{pid}-ramipril-h" in tw[0]["detail"]
