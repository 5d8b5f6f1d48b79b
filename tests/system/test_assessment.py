"""The integration self-assessment over its real interfaces: scoring through `PUT /api/assessment/items/{id}` as a
board member (refused for GP, patient and analyst), rounds and change, the stored FHIR QuestionnaireResponse, and
`joinedup assessment report --format json` with its live evidence computed on a population built for the purpose
(expected values worked out by hand from the measure definitions in knowledge/system/measures.yaml)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tests.system.world import service
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.identity import SYSTEM

QUESTIONNAIRE = "https://joinedup.example/fhir/Questionnaire/integration-self-assessment"
ROUND_TAG = {"system": "https://joinedup.example/fhir/CodeSystem/record-kind", "code": "integration-assessment-round"}
FRAMEWORK_ITEMS = {
    # SELFIE's six components (Leijten et al. 2018)
    "selfie-service-delivery", "selfie-leadership-governance", "selfie-workforce", "selfie-financing",
    "selfie-technologies", "selfie-information-research",
    # the eleven checklist themes named in the brief
    "checklist-initial-considerations", "checklist-model-of-care", "checklist-patient-centred-care",
    "checklist-organisational-commitment", "checklist-project-delivery", "checklist-clinical-leadership",
    "checklist-working-together", "checklist-coordination-of-care", "checklist-operating-procedures",
    "checklist-workforce", "checklist-monitoring",
    # the six factor families (Bhat et al. 2022)
    "factor-organisational-culture", "factor-workforce-management", "factor-interorganisational-collaboration",
    "factor-leadership", "factor-economic", "factor-political",
}


@pytest.fixture(scope="module")
def board(server):
    uid = uuid.uuid4().hex[:6]
    name = f"board-{uid}"
    add_user(server.gate, name=name, role="board", display="Board member", password="pw", replace=True)
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {issue_token(server.gate, name)}"},
                        timeout=120)


def test_board_scores_items_in_rounds_with_change(server, board):
    label1, label2 = f"R1 {uuid.uuid4().hex[:4]}", f"R2 {uuid.uuid4().hex[:4]}"
    assert board.post("/api/assessment/rounds", json={"label": label1}).status_code == 201
    r = board.put("/api/assessment/items/checklist-coordination-of-care",
                  json={"score": 2, "evidence": "Key workers only in two PCNs", "owner": "Director of integration"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == label1
    assert board.post("/api/assessment/rounds", json={"label": label1}).status_code == 409
    assert board.post("/api/assessment/rounds", json={"label": label2}).status_code == 201
    r = board.put("/api/assessment/items/checklist-coordination-of-care", json={"score": 4, "owner": "ICB"})
    assert r.status_code == 200
    rep = board.get("/api/assessment").json()
    item = next(i for i in rep["items"] if i["id"] == "checklist-coordination-of-care")
    assert item["latest_score"]["score"] == 4 and item["latest_score"]["round"] == label2
    assert item["previous_score"] == {"score": 2, "round": label1}
    assert item["change"] == 2
    rounds = {r["label"]: r for r in rep["rounds"]}
    assert rounds[label1]["status"] == "completed" and rounds[label2]["status"] == "in-progress"
    # every round is a QuestionnaireResponse to the generated Questionnaire, about no person
    with server.client("admin") as admin:
        qrs = admin.get("/fhir/QuestionnaireResponse", params={"questionnaire": QUESTIONNAIRE, "_count": "100"}).json()
        labels = {e["resource"]["identifier"]["value"] for e in qrs["entry"]}
        assert {label1, label2} <= labels
        assert all("reference" not in (e["resource"].get("subject") or {}) for e in qrs["entry"])
        q = admin.get("/fhir/Questionnaire/integration-self-assessment").json()
        link_ids = {i["linkId"] for g in q["item"] for i in g["item"]}
        assert link_ids == FRAMEWORK_ITEMS


@pytest.mark.parametrize("body, status, field", [
    ({"score": 0}, 422, "score"), ({"score": 6}, 422, "score"), ({"score": "high"}, 422, "score"),
    ({"score": True}, 422, "score"), ({"score": 3, "evidence": "x" * 4001}, 422, "evidence"),
    ({"score": 3, "owner": 7}, 422, "owner"), ({"score": 3, "colour": "red"}, 422, "colour")])
def test_bad_scores_are_refused_precisely(board, body, status, field):
    r = board.put("/api/assessment/items/selfie-workforce", json=body)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["expression"] == [field]


def test_unknown_item_and_bad_body(board):
    assert board.put("/api/assessment/items/selfie-nonsense", json={"score": 3}).status_code == 404
    r = board.put("/api/assessment/items/selfie-workforce", content=b"[1,2]",
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert board.post("/api/assessment/rounds", json={"label": "<script>"}).status_code == 422


@pytest.mark.parametrize("user", ["gp", "pat", "analyst"])
def test_only_the_board_scores_and_sees_the_assessment(server, user):
    with server.client(user) as c:
        r = c.put("/api/assessment/items/selfie-workforce", json={"score": 5})
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
        assert c.get("/api/assessment").status_code == 403
        assert c.post("/api/assessment/rounds", json={"label": "sneaky"}).status_code == 403
        # nor through the FHIR API: a write carrying the round's tag is refused, and a look-alike without it is no
        # round (the board's rounds never include it)
        qr = {"resourceType": "QuestionnaireResponse", "questionnaire": QUESTIONNAIRE, "status": "completed",
              "subject": {"display": "partnership"}, "identifier": {"value": f"forged-{user}"}}
        tagged = {**qr, "meta": {"tag": [ROUND_TAG]}}
        assert c.post("/fhir/QuestionnaireResponse", json=tagged).status_code == 403
        c.post("/fhir/QuestionnaireResponse", json=qr)
    with server.client("admin") as admin:
        real = admin.get("/fhir/QuestionnaireResponse", params={"_tag": f"{ROUND_TAG['system']}|{ROUND_TAG['code']}",
                                                                "_count": "1"}).json()["entry"][0]["resource"]
    with server.client(user) as c:
        assert c.delete(f"/fhir/QuestionnaireResponse/{real['id']}").status_code == 403
        real["status"] = "amended"
        assert c.put(f"/fhir/QuestionnaireResponse/{real['id']}", json=real).status_code == 403
    from joinedup.governance.identity import Principal

    rounds = server.gate.assessment_rounds(Principal(name="b", role="board"), questionnaire=QUESTIONNAIRE)
    assert not any((s.content.get("identifier") or {}).get("value", "").startswith("forged-") for s in rounds)


def test_the_board_cannot_file_a_round_under_a_person(server):
    from joinedup.fhir.errors import FhirError
    from joinedup.governance.identity import Principal

    who = Principal(name="b", role="board")
    qr = {"resourceType": "QuestionnaireResponse", "questionnaire": QUESTIONNAIRE, "status": "completed",
          "subject": {"reference": "Patient/self-1"}}
    with pytest.raises(FhirError) as exc:
        server.gate.save_assessment_round(who, qr, questionnaire=QUESTIONNAIRE)
    assert exc.value.status == 422
    with pytest.raises(FhirError) as exc:
        server.gate.save_assessment_round(Principal(name="g", role="gp"), {**qr, "subject": {"display": "x"}},
                                          questionnaire=QUESTIONNAIRE)
    assert exc.value.status == 403


# -- the CLI report and its live evidence, on a population built for the purpose ---------------------------------
def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def _population(gate) -> None:
    """Four people: A (two problems, key worker, care plan with what matters, entries from three organisations),
    B (two active problems and a resolved one, a plan without what matters, one organisation), C (one problem),
    D (two problems and a key worker, but opted out of planning use). Three advice requests (first replies after
    10 and 30 hours, one unanswered); tasks; two correction requests (one answered); two services (one complete)."""
    now = datetime.now(UTC)
    active = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    resolved = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}
    for org in ("ev-a", "ev-b", "ev-c"):
        gate.update(SYSTEM, "Organization", org, {"resourceType": "Organization", "id": org, "name": org})
    for pid in ("A", "B", "C", "D"):
        gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "birthDate": "1940-01-01"})

    def cond(pid, n, status, org):
        gate.update(SYSTEM, "Condition", f"{pid}-c{n}", {
            "resourceType": "Condition", "id": f"{pid}-c{n}", "meta": {"source": f"Organization/{org}"},
            "clinicalStatus": status, "code": {"text": f"problem {n}"}, "subject": {"reference": f"Patient/{pid}"}})

    cond("A", 1, active, "ev-a")
    cond("A", 2, active, "ev-b")
    gate.update(SYSTEM, "Observation", "A-o1", {
        "resourceType": "Observation", "id": "A-o1", "meta": {"source": "Organization/ev-c"}, "status": "final",
        "code": {"text": "weight"}, "subject": {"reference": "Patient/A"}})
    cond("B", 1, active, "ev-a")
    cond("B", 2, active, "ev-a")
    cond("B", 3, resolved, "ev-a")
    cond("C", 1, active, "ev-a")
    cond("D", 1, active, "ev-a")
    cond("D", 2, active, "ev-a")
    for pid in ("A", "D"):
        gate.update(SYSTEM, "CareTeam", f"{pid}-team", {
            "resourceType": "CareTeam", "id": f"{pid}-team", "status": "active",
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"role": [{"text": "Key worker (care coordinator)"}],
                             "member": {"reference": "Practitioner/kw-1", "display": "Kim Worker"}}]})
    plan_cat = [{"coding": [{"system": "https://joinedup.example/fhir/CodeSystem/care-plan-kind",
                             "code": "personalised-care-and-support-plan"}]}]
    gate.update(SYSTEM, "CarePlan", "A-plan", {
        "resourceType": "CarePlan", "id": "A-plan", "status": "active", "intent": "plan", "category": plan_cat,
        "description": "Staying in my own home with my cat", "subject": {"reference": "Patient/A"}})
    gate.update(SYSTEM, "CarePlan", "B-plan", {
        "resourceType": "CarePlan", "id": "B-plan", "status": "active", "intent": "plan", "category": plan_cat,
        "subject": {"reference": "Patient/B"}})
    gate.update(SYSTEM, "Consent", "D-optout", {
        "resourceType": "Consent", "id": "D-optout", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"text": "National Data Opt-out"}],
        "policyRule": {"coding": [{"system": "https://joinedup.example/fhir/CodeSystem/data-sharing",
                                   "code": "national-data-opt-out"}]},
        "patient": {"reference": "Patient/D"}, "provision": {"type": "deny"}})
    asked = now - timedelta(days=20)
    advice = [{"system": "https://joinedup.example/fhir/CodeSystem/request-category", "code": "advice"}]
    first = "https://joinedup.example/fhir/StructureDefinition/first-response"
    for n, hours in ((1, 10), (2, 30), (3, None)):
        sr = {"resourceType": "ServiceRequest", "id": f"adv-{n}", "status": "active", "intent": "order",
              "category": [{"coding": advice}], "subject": {"reference": "Patient/A" if n < 3 else "Patient/B"},
              "authoredOn": _iso(asked)}
        if hours:
            sr["extension"] = [{"url": first, "valueDateTime": _iso(asked + timedelta(hours=hours))}]
        gate.update(SYSTEM, "ServiceRequest", f"adv-{n}", sr)
    owner = "https://joinedup.example/fhir/StructureDefinition/task-owner-organization"
    for tid, pid, owner_org, due in (("t-cross", "A", "ev-b", now - timedelta(days=3)),
                                     ("t-same", "A", "ev-a", now - timedelta(days=3)),
                                     ("t-future", "B", "ev-b", now + timedelta(days=3))):
        gate.update(SYSTEM, "Task", tid, {
            "resourceType": "Task", "id": tid, "meta": {"source": "Organization/ev-a"}, "status": "requested",
            "intent": "order", "for": {"reference": f"Patient/{pid}"}, "description": tid,
            "restriction": {"period": {"end": _iso(due)}},
            "extension": [{"url": owner, "valueReference": {"reference": f"Organization/{owner_org}"}}]})
    correction = [{"system": "https://joinedup.example/fhir/CodeSystem/person-request", "code": "correction"}]
    for n in (1, 2):
        gate.update(SYSTEM, "Communication", f"corr-{n}", {
            "resourceType": "Communication", "id": f"corr-{n}", "meta": {"source": "Patient/A"},
            "status": "completed", "category": [{"coding": correction}], "subject": {"reference": "Patient/A"},
            "sent": _iso(now - timedelta(days=5))})
    gate.update(SYSTEM, "Communication", "corr-1-answer", {
        "resourceType": "Communication", "id": "corr-1-answer", "meta": {"source": "Organization/ev-a"},
        "status": "completed", "subject": {"reference": "Patient/A"}, "inResponseTo": [{"reference": "Communication/corr-1"}],
        "sent": _iso(now - timedelta(days=4))})
    gate.update(SYSTEM, "HealthcareService", "ev-hs-1", service("ev-hs-1", "ev-a", "Complete service", criteria=["x"],
                                                               promise=(2, "working days")))
    gate.update(SYSTEM, "HealthcareService", "ev-hs-2", service("ev-hs-2", "ev-a", "No promise", criteria=["x"]))


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    from joinedup.governance.gate import get_gate

    url = f"sqlite:///{tmp_path_factory.mktemp('assessment') / 'population.db'}"
    gate = get_gate(url)
    _population(gate)
    gate.flush_audit()
    return url


def _report(url: str, **env: str) -> dict:
    result = CliRunner().invoke(app, ["assessment", "report", "--format", "json"],
                                env={"JOINEDUP_DATABASE_URL": url, **env})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_report_lists_every_item_with_source_score_and_evidence(population):
    rep = _report(population)
    items = {i["id"]: i for i in rep["items"]}
    assert set(items) == FRAMEWORK_ITEMS
    for i in items.values():
        assert i["source"]["citation"] and i["source"]["wording"] in ("verified", "paraphrased")
        assert i["latest_score"] is None
        assert i.get("no_evidence") is True or all({"measure", "value", "period"} <= set(e) for e in i["evidence"])
        assert not (i.get("no_evidence") and i.get("evidence"))
    assert items["selfie-service-delivery"]["source"]["doi"] == "10.1016/j.healthpol.2017.06.002"
    assert "Health Policy" in items["selfie-service-delivery"]["source"]["citation"]
    assert items["factor-leadership"]["source"]["doi"] == "10.1136/bmjopen-2021-049296"
    assert items["factor-leadership"]["most_influential"] is True
    # items JoinedUp cannot measure say so
    for key in ("selfie-leadership-governance", "checklist-clinical-leadership", "factor-political"):
        assert items[key]["no_evidence"] is True
    # financing and economic factors have the cost of care across settings (issue 16), and say what still rests on
    # the board's own evidence: the record holds no payments or budgets
    for key in ("selfie-financing", "factor-economic"):
        assert [e["measure"] for e in items[key]["evidence"]] == ["cost_share_by_setting",
                                                                  "cost_per_person_by_multimorbidity"]
        assert "board's own evidence" in items[key]["evidence_note"] and "no_evidence" not in items[key]


def test_live_evidence_values_without_suppression(population):
    """With suppression switched off (JOINEDUP_SUPPRESS_HIGH=0, ROUND=1) the figures are exact: people with two or
    more active problems and not opted out are A and B."""
    rep = _report(population, JOINEDUP_SUPPRESS_LOW="1", JOINEDUP_SUPPRESS_HIGH="0", JOINEDUP_SUPPRESS_ROUND="1")
    m = {e["measure"]: e for e in rep["measures"]}
    assert m["key_worker_share"]["value"] == 50.0  # A of A, B (D has one but opted out)
    assert (m["key_worker_share"]["numerator"], m["key_worker_share"]["denominator"]) == (1, 2)
    assert m["care_plan_what_matters_share"]["value"] == 50.0  # A's plan records what matters; B's does not
    assert m["multi_org_record_share"]["value"] == 50.0  # A: ev-a, ev-b, ev-c
    assert m["overdue_cross_org_tasks"]["value"] == 1  # t-cross only
    assert m["correction_requests_answered"]["value"] == 50.0
    assert m["patient_written_entries"]["value"] == 2
    assert m["advice_unanswered"]["value"] == 1
    # first replies after 10 and 30 hours: median 20; 90th percentile 10 + 0.9 * 20 = 28 (linear interpolation)
    assert m["advice_first_reply_hours"]["value"] == 20.0 and m["advice_first_reply_hours"]["p90"] == 28.0
    assert m["directory_completeness"]["value"] == 50.0
    today = datetime.now(UTC).date()
    assert m["advice_unanswered"]["period"] == {"start": (today - timedelta(days=365)).isoformat(),
                                                "end": today.isoformat()}
    assert m["key_worker_share"]["period"] == {"start": today.isoformat(), "end": today.isoformat()}
    coordination = next(i for i in rep["items"] if i["id"] == "checklist-coordination-of-care")
    assert [e["measure"] for e in coordination["evidence"]] == ["key_worker_share", "overdue_cross_org_tasks",
                                                                "cost_share_by_setting",
                                                                "cost_per_person_by_multimorbidity"]


def test_published_counts_are_suppressed_by_default(population):
    """Default suppression (1-7 shown as '*'): every small count here is '*', and no share built on one is shown."""
    rep = _report(population)
    m = {e["measure"]: e for e in rep["measures"]}
    assert m["overdue_cross_org_tasks"]["value"] == "*"
    assert m["key_worker_share"]["value"] == "*" and m["key_worker_share"]["suppressed"] is True
    assert m["advice_first_reply_hours"]["value"] == "*"  # two replies: too few for a median
    text = json.dumps(rep)
    assert '"numerator": 1' not in text and '"denominator": 2' not in text


def test_cli_scoring_as_board_and_refusals(server):
    env = {"JOINEDUP_DATABASE_URL": server.db_url}
    name = f"cli-board-{uuid.uuid4().hex[:5]}"
    add_user(server.gate, name=name, role="board", password="pw", replace=True)
    r = CliRunner().invoke(app, ["assessment", "score", "factor-leadership", "--score", "3", "--owner", "Chair",
                                 "--user", name], env=env)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["assessment", "score", "factor-leadership", "--score", "9", "--user", name], env=env)
    assert r.exit_code == 2 and "score must be a whole number from 1" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["assessment", "score", "factor-leadership", "--score", "3", "--user", "pat"], env=env)
    assert r.exit_code == 2 and "Access refused" in r.output
    r = CliRunner().invoke(app, ["assessment", "report", "--format", "json", "--user", "analyst"], env=env)
    assert r.exit_code == 2 and "Access refused" in r.output
    r = CliRunner().invoke(app, ["assessment", "report", "--format", "yaml"], env=env)
    assert r.exit_code == 2
