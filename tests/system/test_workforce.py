"""The workforce view over its real interfaces: `GET /api/workforce` as a partnership board member (refused to a GP,
an analyst and a patient; bad `as_at` answered with an OperationOutcome) and `joinedup workforce report`, on teams
built for the purpose in 1931 - a year no other test's data reaches - so that every expected figure can be worked
out by hand from the definitions in knowledge/system/workforce.yaml.

Directory: a hospital H with the service FALLS (consultant CONS works in it), a community trust C with the service
COORD (key workers KW1 and KW2) and a community nurse NURSE whose role names no service (so she counts for C as a
whole: the team "C (no service named)"). Figures as at 1931-06-30: the points are the last days of July 1930 ...
May 1931 (indexes 0-10) and 30 June 1931 (11).

* P (10 people): care team CONS, and KW1 as key worker from 1 January 1930, handed over to KW2 on 15 March 1931
  (as care/plans/team.handover records it). Caseload of FALLS and COORD 10 at every point, key worker caseload of
  COORD 10 at every point, one handover per person in March 1931 (index 8) for COORD (both sides in one team).
* D (10): care team CONS, died 15 December 1930: in FALLS' caseload at indexes 0-4 only.
* O (10): care team CONS, National Data Opt-out: never counted.
* S (3): care team NURSE: C's own caseload 3 - suppressed by default.
* Q (10): a task for CONS set 10 January 1931, due 1 February, still open: FALLS open 10 from index 6 (31 January),
  overdue 10 from index 7; and a task for NURSE set 1 November 1930, due 15 November, completed 10 December: open
  and overdue 10 at index 4 (30 November) only.
* R (10): a task set 1 April 1931 for CONS, reassigned to NURSE on 20 April (task-reassignment entry), due 1 May,
  completed 15 June: handovers 10 in April (index 9) for FALLS and for C's nurse; open for the nurse at index 9,
  open and overdue at index 10, closed at 11.
* V (10): today, a task for CONS whose owner an update changes to NURSE (version history, no reassignment entry): a
  handover in the current month for both teams when the figures are for today.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM
from joinedup.governance.identity import SYSTEM

EXT = "https://joinedup.example/fhir/StructureDefinition/"
AS_AT = "1931-06-30"


def _put(gate, resource: dict) -> None:
    gate.update(SYSTEM, resource["resourceType"], resource["id"], resource)


def _ref(rtype: str, rid: str) -> dict:
    return {"reference": f"{rtype}/{rid}"}


@pytest.fixture(scope="module")
def world(server):
    gate, u = server.gate, uuid.uuid4().hex[:8]
    w = {"u": u, "H": f"wf-h-{u}", "C": f"wf-c-{u}", "FALLS": f"wf-falls-{u}", "COORD": f"wf-coord-{u}",
         "CONS": f"wf-cons-{u}", "KW1": f"wf-kw1-{u}", "KW2": f"wf-kw2-{u}", "NURSE": f"wf-nurse-{u}"}
    _put(gate, {"resourceType": "Organization", "id": w["H"], "name": f"Wold Hospital {u}", "active": True})
    _put(gate, {"resourceType": "Organization", "id": w["C"], "name": f"Wold Community {u}", "active": True})
    _put(gate, {"resourceType": "HealthcareService", "id": w["FALLS"], "active": True, "name": f"Falls clinic {u}",
                "providedBy": _ref("Organization", w["H"])})
    _put(gate, {"resourceType": "HealthcareService", "id": w["COORD"], "active": True,
                "name": f"Care coordination {u}", "providedBy": _ref("Organization", w["C"])})
    for prac, org, service in (("CONS", "H", "FALLS"), ("KW1", "C", "COORD"), ("KW2", "C", "COORD"),
                               ("NURSE", "C", None)):
        _put(gate, {"resourceType": "Practitioner", "id": w[prac], "active": True,
                    "name": [{"family": f"{prac.title()}{u}"}]})
        role = {"resourceType": "PractitionerRole", "id": f"role-{w[prac]}", "active": True,
                "practitioner": _ref("Practitioner", w[prac]), "organization": _ref("Organization", w[org])}
        if service:
            role["healthcareService"] = [_ref("HealthcareService", w[service])]
        _put(gate, role)
    cons = {"role": [{"text": "Consultant"}], "member": _ref("Practitioner", w["CONS"]),
            "onBehalfOf": _ref("Organization", w["H"])}

    def person(group: str, i: int, **extra) -> str:
        pid = f"wf-{group}{i}-{u}"
        _put(gate, {"resourceType": "Patient", "id": pid, "birthDate": "1880-01-01", **extra})
        return pid

    def team(pid: str, participants: list, **extra) -> None:
        _put(gate, {"resourceType": "CareTeam", "id": f"{pid}-team", "status": "active",
                    "subject": _ref("Patient", pid), "participant": participants, **extra})

    def task(tid: str, pid: str, owner: str, org: str, authored: str, due: str, status: str = "requested",
             done: str | None = None, extension: list | None = None) -> dict:
        t = {"resourceType": "Task", "id": tid, "status": status, "intent": "order", "for": _ref("Patient", pid),
             "authoredOn": authored, "owner": _ref("Practitioner", w[owner]),
             "restriction": {"period": {"end": due}},
             "extension": [{"url": EXT + "task-owner-organization", "valueReference": _ref("Organization", w[org])},
                           *(extension or [])]}
        if done:
            t["executionPeriod"] = {"start": authored, "end": done}
        _put(gate, t)
        return t

    for i in range(10):
        pid = person("P", i)
        team(pid, [cons,
                   {"role": [{"text": "Previous coordinator"}], "member": _ref("Practitioner", w["KW1"]),
                    "onBehalfOf": _ref("Organization", w["C"]),
                    "period": {"start": "1930-01-01T09:00:00Z", "end": "1931-03-15T10:00:00Z"}},
                   {"role": [{"text": "Key worker (care coordinator)"}], "member": _ref("Practitioner", w["KW2"]),
                    "onBehalfOf": _ref("Organization", w["C"]), "period": {"start": "1931-03-15T10:00:00Z"}}],
             extension=[{"url": EXT + "key-worker-handover", "extension": [
                 {"url": "when", "valueDateTime": "1931-03-15T10:00:00Z"},
                 {"url": "from", "valueReference": _ref("Practitioner", w["KW1"])},
                 {"url": "to", "valueReference": _ref("Practitioner", w["KW2"])},
                 {"url": "toOrganization", "valueReference": _ref("Organization", w["C"])},
                 {"url": "reason", "valueString": "Key worker left the service"}]}])
        team(person("D", i, deceasedDateTime="1930-12-15T08:00:00Z"), [cons])
        pid = person("O", i)
        team(pid, [cons])
        _put(gate, {"resourceType": "Consent", "id": f"wf-oo-{i}-{u}", "status": "active",
                    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                          "code": "research"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
                    "patient": _ref("Patient", pid), "provision": {"type": "deny"}})
        task(f"wf-oo-task-{i}-{u}", pid, "CONS", "H", "1931-01-10T09:00:00Z", "1931-02-01")  # never counted
        pid = person("Q", i)
        task(f"wf-q1-{i}-{u}", pid, "CONS", "H", "1931-01-10T09:00:00Z", "1931-02-01")
        task(f"wf-q2-{i}-{u}", pid, "NURSE", "C", "1930-11-01T09:00:00Z", "1930-11-15", status="completed",
             done="1930-12-10T12:00:00Z")
        pid = person("R", i)
        task(f"wf-r-{i}-{u}", pid, "NURSE", "C", "1931-04-01T09:00:00Z", "1931-05-01", status="completed",
             done="1931-06-15T12:00:00Z", extension=[{"url": EXT + "task-reassignment", "extension": [
                 {"url": "when", "valueDateTime": "1931-04-20T09:00:00Z"},
                 {"url": "from", "valueReference": _ref("Practitioner", w["CONS"])},
                 {"url": "to", "valueReference": _ref("Practitioner", w["NURSE"])},
                 {"url": "fromOrganization", "valueReference": _ref("Organization", w["H"])},
                 {"url": "toOrganization", "valueReference": _ref("Organization", w["C"])},
                 {"url": "reason", "valueString": "Owner on leave"}]}])
        pid = person("V", i)
        today = datetime.now(UTC).date().isoformat()
        t = task(f"wf-v-{i}-{u}", pid, "CONS", "H", f"{today}T00:00:00Z", "2099-01-01")
        t["owner"] = _ref("Practitioner", w["NURSE"])
        t["extension"][0]["valueReference"] = _ref("Organization", w["C"])
        _put(gate, t)  # version 2: the owner changed by an update
    for i in range(3):
        team(person("S", i), [{"role": [{"text": "Community nurse"}], "member": _ref("Practitioner", w["NURSE"]),
                               "onBehalfOf": _ref("Organization", w["C"])}])
    board = f"wf-board-{u}"
    add_user(gate, name=board, role="board", display="Board member", password="pw", replace=True)
    gate.flush_audit()
    w["board_token"] = issue_token(gate, board)
    return w


def _get(server, token: str, **params) -> httpx.Response:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
        return c.get("/api/workforce", params=params)


def _cli(server, *args: str, **env: str):
    return CliRunner().invoke(app, ["workforce", "report", *args], env={"JOINEDUP_DATABASE_URL": server.db_url, **env})


def _exact(server, as_at: str) -> dict:
    """The report with suppression switched off (JOINEDUP_SUPPRESS_HIGH=0, ROUND=1): exact counts, computed afresh
    (another test in this process may have computed today's figures before this world was built)."""
    result = _cli(server, "--format", "json", "--as-at", as_at, "--fresh", JOINEDUP_SUPPRESS_LOW="1",
                  JOINEDUP_SUPPRESS_HIGH="0", JOINEDUP_SUPPRESS_ROUND="1")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _find(rep: dict, world: dict) -> dict:
    orgs = {o["id"]: o for o in rep["organisations"]}
    h, c = orgs[world["H"]], orgs[world["C"]]
    teams = {t["id"]: t for o in (h, c) for t in o["teams"]}
    return {"H": h, "C": c, "FALLS": teams[world["FALLS"]], "COORD": teams[world["COORD"]],
            "C-own": teams[world["C"]]}


def test_exact_figures_per_team_and_month(server, world):
    rep = _exact(server, AS_AT)
    assert rep["months"] == ["1930-07", "1930-08", "1930-09", "1930-10", "1930-11", "1930-12", "1931-01", "1931-02",
                             "1931-03", "1931-04", "1931-05", "1931-06"]
    assert rep["points"][0] == "1930-07-31" and rep["points"][-1] == AS_AT
    assert rep["period"] == {"start": "1930-07-01", "end": AS_AT}
    f = _find(rep, world)
    falls, coord, nurse = f["FALLS"], f["COORD"], f["C-own"]
    assert falls["name"] == f"Falls clinic {world['u']}" and falls["reference"] == f"HealthcareService/{world['FALLS']}"
    assert nurse["name"] == f"Wold Community {world['u']} (no service named)"
    # caseload: P throughout, D until death (15 December 1930), O never (opted out)
    assert falls["caseload"]["series"] == [20] * 5 + [10] * 7 and falls["caseload"]["value"] == 10
    assert coord["caseload"]["series"] == [10] * 12 and coord["key_worker"]["series"] == [10] * 12
    assert falls["key_worker"]["series"] == [0] * 12
    assert nurse["caseload"]["series"] == [3] * 12
    # tasks: Q's open from 31 January, overdue from 28 February; O's never counted
    assert falls["open"]["series"] == [0] * 6 + [10] * 6
    assert falls["overdue"]["series"] == [0] * 7 + [10] * 5
    assert falls["overdue_share"]["value"] == 100.0
    # the nurse: Q's completed task open and overdue on 30 November; R's after its reassignment
    assert nurse["open"]["series"] == [0, 0, 0, 0, 10, 0, 0, 0, 0, 10, 10, 0]
    assert nurse["overdue"]["series"] == [0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 10, 0]
    # handovers: P's key worker handovers in March (one team on both sides), R's reassignments in April
    assert coord["handovers"]["series"] == [0] * 8 + [10, 0, 0, 0] and coord["handovers"]["value"] == 10
    assert falls["handovers"]["series"] == [0] * 9 + [10, 0, 0]
    assert nurse["handovers"]["series"] == [0] * 9 + [10, 0, 0]
    # organisations count each person once across their teams: C = COORD's 10 (P) and the nurse's 3 (S)
    assert f["C"]["caseload"]["series"] == [13] * 12
    assert f["C"]["handovers"]["series"] == [0] * 8 + [10, 10, 0, 0]
    assert f["H"]["open"]["series"] == falls["open"]["series"]
    # the whole system holds at least these (other tests' care teams without periods count in 1931 too)
    s = rep["system"]
    assert s["key_worker_handovers"]["series"][8] >= 10 and s["reassignments"]["series"][9] >= 10
    assert s["open"]["series"][6] >= 10


def test_definitions_and_periods_come_with_every_figure(server, world):
    rep = _exact(server, AS_AT)
    d = rep["definitions"]
    assert set(d) == {"caseload", "key_worker", "open", "overdue", "overdue_share", "handovers"}
    for f in d.values():
        assert f["title"] and f["definition"] and f["unit"] and f["period"]["end"] == AS_AT
    assert d["caseload"]["period"]["points"][-1] == AS_AT
    assert d["handovers"]["period"] == {"start": "1930-07-01", "end": AS_AT, "each": "calendar month"}
    assert "Task.restriction.period.end" in d["overdue"]["definition"]


def test_owner_changed_by_an_update_is_a_handover_this_month(server, world):
    today = datetime.now(UTC).date().isoformat()
    f = _find(_exact(server, today), world)
    assert f["FALLS"]["handovers"]["series"][-1] == 10 and f["C-own"]["handovers"]["series"][-1] == 10
    assert f["C-own"]["open"]["value"] == 10  # V's, owned by the nurse now (Q's and R's are done)
    assert f["FALLS"]["open"]["value"] == 10  # Q's, set in 1931 and still open


def test_board_gets_suppressed_figures_over_http(server, world):
    resp = _get(server, world["board_token"], as_at=AS_AT)
    assert resp.status_code == 200, resp.text
    f = _find(resp.json(), world)
    assert f["C-own"]["caseload"]["series"] == ["*"] * 12  # 3 people: 1-7 are not published
    assert f["C"]["caseload"]["value"] == 15  # 13 rounded to the nearest 5
    assert f["FALLS"]["caseload"]["series"] == [20] * 5 + [10] * 7  # 10 and 20 are published as they are
    assert f["FALLS"]["overdue_share"]["value"] == 100.0
    assert resp.json()["suppression"].startswith("counts from JOINEDUP_SUPPRESS_LOW")
    assert '"3"' not in resp.text and ": 3," not in resp.text and ": 13" not in resp.text


@pytest.mark.parametrize("who", ["gp", "analyst", "pat"])
def test_other_roles_are_refused(server, world, who):
    resp = _get(server, server.tokens[who], as_at=AS_AT)
    assert resp.status_code == 403
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden"


@pytest.mark.parametrize("as_at, says", [("30/06/1931", "is not a date"), ("2999-01-01", "is in the future")])
def test_bad_as_at_is_a_400_outcome(server, world, as_at, says):
    resp = _get(server, world["board_token"], as_at=as_at)
    assert resp.status_code == 400
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and says in body["issue"][0]["diagnostics"]


def test_cli_text_report_and_bad_input(server, world):
    result = _cli(server, "--as-at", AS_AT)
    assert result.exit_code == 0, result.output
    assert f"Workforce view as at {AS_AT} (months 1930-07 to 1931-06" in result.output
    assert f"  Falls clinic {world['u']}: caseload 10, key worker 0, open tasks 10, overdue 10 (100%)" in result.output
    assert "Definitions:" in result.output and "Overdue tasks (tasks): Of the open tasks" in result.output
    bad = _cli(server, "--format", "xml")
    assert bad.exit_code == 2 and "--format must be one of json, text" in bad.output
    bad = _cli(server, "--as-at", "June 1931")
    assert bad.exit_code == 2 and "is not a date" in bad.output and len(bad.output.strip().splitlines()) == 1
    gp = _cli(server, "--user", "gp", "--as-at", AS_AT)
    assert gp.exit_code == 2 and "Access refused" in gp.output
