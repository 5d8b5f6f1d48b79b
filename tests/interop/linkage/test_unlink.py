"""Unlinking a link record linkage confirmed: through the gate, from the API, the command line and the review page;
audited on both records; reach through either record stops at once; the pair is not proposed again; undone with
relink, which puts the same link back. The records manager works the queue (and nothing else of governance)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.fhir.errors import FhirError
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.interop.linkage import service
from tests.browser.conftest import shot
from tests.interop.linkage.conftest import COUNCIL, gp_for

SCREENSHOTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "record-linkage"  # git-ignored: docs/screenshots keeps the reviewed copies
runner = CliRunner()
_used: set[str] = set()


def _confirmed_pair(population, model_file) -> tuple[str, str]:
    """A true pair of this population linked by record linkage (confirmed through Gate.propose_link)."""
    gate = population.gate
    run = service.run(gate, SYSTEM, path=model_file, dry_run=True, organisation=COUNCIL)
    for p in run["pairs"]:
        pair = (p["unlinked"], p["reference"])
        if pair not in population.truth or p["unlinked"] in _used:
            continue
        state = gate.propose_link(SYSTEM, *pair, confirm=True, reason=service.reason_for(p))
        if state in ("confirmed", "linked"):
            service.write_links(gate, *pair)
            _used.add(p["unlinked"])
            return pair
    raise AssertionError("no linkable pair left")


def _manager(population, name: str = "rm-linkage"):
    from joinedup.governance.accounts import add_user, issue_token

    user = add_user(population.gate, name=name, role="records-manager", password=f"{name}-pw", replace=True)
    return user, issue_token(population.gate, name)


def _actions(gate, patient_id: str) -> list[str]:
    gate.flush_audit()
    _, entries = gate.access_log(Principal(name="po-linkage", role="privacy-officer"), patient_id, count=500)
    return [e["action"] for e in entries]


def test_records_manager_unlinks_over_the_api_and_links_again(population, model_file, server):
    import httpx

    gate = population.gate
    sc, ref = _confirmed_pair(population, model_file)
    gp = gp_for(population, ref, "gp-unlink-1")
    assert gate.read(gp, "Patient", sc).id == sc  # linked: the GP of one record reaches the other
    _user, token = _manager(population)
    with httpx.Client(base_url=population.url, headers={"Authorization": f"Bearer {token}"}) as c:
        listed = c.get("/api/linkage/links").json()
        assert {"patient": f"Patient/{min(sc, ref)}", "other_patient": f"Patient/{max(sc, ref)}"}.items() <= next(
            lk for lk in listed["links"] if {lk["patient"], lk["other_patient"]} == {f"Patient/{sc}", f"Patient/{ref}"}
        ).items()
        bad = c.post("/api/linkage/unlink", json={"patient": f"Patient/{sc}", "other_patient": f"Patient/{ref}",
                                                  "reason": "no"})
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
        bad = c.post("/api/linkage/unlink", json={"patient": f"Patient/{sc}", "other_patient": "Patient/lk-nobody",
                                                  "reason": "different date of birth on the paper record"})
        assert bad.status_code == 404 and bad.json()["resourceType"] == "OperationOutcome"
        r = c.post("/api/linkage/unlink", json={"patient": f"Patient/{sc}", "other_patient": f"Patient/{ref}",
                                                "reason": "different date of birth on the paper record"})
        assert r.status_code == 200, r.text
        unlink_id = r.json()["id"]
        assert r.json()["status"] == "unlinked"
        # reach stops at once; Patient.link removed from both; audited on both records
        with pytest.raises(FhirError) as refused:
            gate.read(gp, "Patient", sc)
        assert refused.value.status == 403
        for x, y in ((sc, ref), (ref, sc)):
            assert not any((lk.get("other") or {}).get("reference") == f"Patient/{y}"
                           for lk in gate.read(SYSTEM, "Patient", x).content.get("link") or [])
            assert "unlink" in _actions(gate, x)
        # never proposed again while unlinked
        assert gate.propose_link(SYSTEM, sc, ref, confirm=True, reason="Record linkage (Splink): again") == "rejected"
        again = c.post("/api/linkage/unlink", json={"patient": f"Patient/{sc}", "other_patient": f"Patient/{ref}",
                                                    "reason": "different date of birth on the paper record"})
        assert again.status_code == 404
        # undone: the same link back, reach back, audited
        r = c.post(f"/api/linkage/unlinks/{unlink_id}/relink", json={"reason": "birth certificate seen: same person"})
        assert r.status_code == 200 and r.json()["status"] == "relinked"
        assert gate.read(gp, "Patient", sc).id == sc
        assert {"other": {"reference": f"Patient/{ref}"}, "type": "seealso"} in gate.read(
            SYSTEM, "Patient", sc).content["link"]
        assert "relink" in _actions(gate, sc)
        assert c.post(f"/api/linkage/unlinks/{unlink_id}/relink",
                      json={"reason": "birth certificate seen: same person"}).status_code == 409
        # the records manager works the linkage queue only: the privacy officer's other queues are refused
        assert c.get("/api/linkage/reviews").status_code == 200
        assert c.get("/api/privacy/link-requests").status_code in (403, 404)


def test_a_gp_may_not_unlink(population, model_file):
    sc, ref = _confirmed_pair(population, model_file)
    gp = gp_for(population, ref, "gp-unlink-2")
    with pytest.raises(FhirError) as refused:
        service.unlink(population.gate, gp, f"Patient/{sc}", f"Patient/{ref}", reason="I do not think so at all")
    assert refused.value.status == 403
    assert population.gate.read(gp, "Patient", sc).id == sc  # still linked


def test_unlink_and_relink_on_the_command_line(population, model_file, server, monkeypatch):
    monkeypatch.setenv("JOINEDUP_DATABASE_URL", server.db_url)
    sc, ref = _confirmed_pair(population, model_file)
    r = runner.invoke(app, ["link", "unlink", f"Patient/{sc}", f"Patient/{ref}", "--reason", "short"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "10 characters" in r.output
    r = runner.invoke(app, ["link", "unlink", f"Patient/{sc}", f"Patient/{ref}", "--reason",
                            "two people at one address", "--json"])
    assert r.exit_code == 0, r.output
    import json

    unlink_id = json.loads(r.output)["id"]
    r = runner.invoke(app, ["link", "links", "--json"])
    assert r.exit_code == 0 and any(u["id"] == unlink_id for u in json.loads(r.output)["unlinked"])
    r = runner.invoke(app, ["link", "relink", "no-such-unlink", "--reason", "wrong id given here"])
    assert r.exit_code == 2 and "no-such-unlink" in r.output
    r = runner.invoke(app, ["link", "relink", unlink_id, "--reason", "checked again: one person"])
    assert r.exit_code == 0, r.output


def test_records_manager_unlinks_on_the_review_page(page, population, model_file):
    from tests.interop.linkage.test_browser import login

    sc, ref = _confirmed_pair(population, model_file)
    _manager(population, "rm-linkage-web")
    login(page, population.url, "rm-linkage-web", "rm-linkage-web-pw")
    page.get_by_role("link", name="Record linkage review", exact=True).click()
    page.wait_for_url(re.compile(r".*/linkage/review$"))
    row = page.locator("tr", has=page.locator(f"input[name='patient'][value='Patient/{min(sc, ref)}']"))
    assert row.count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "review-records-manager.png"), full_page=True)
    # no reason: refused, the page says why
    row.get_by_role("button", name="Unlink").click()
    assert "at least 10 characters" in page.get_by_role("alert").inner_text()
    row = page.locator("tr", has=page.locator(f"input[name='patient'][value='Patient/{min(sc, ref)}']"))
    row.get_by_label("Why are these not one person?").fill("twins: different first names on the birth register")
    row.get_by_role("button", name="Unlink").click()
    page.wait_for_url(re.compile(r".*done=unlinked"))
    assert "unlinked" in page.get_by_role("status").inner_text()
    item = page.locator("li", has_text="twins: different first names")
    assert item.count() == 1
    shot(page, "linkage-unlinked", full_page=True)
    item.get_by_label("Why link them again?").fill("registrar confirmed one person")
    item.get_by_role("button", name="Link again").click()
    page.wait_for_url(re.compile(r".*done=relinked"))
    page.screenshot(path=str(SCREENSHOTS / "relinked-records-manager.png"), full_page=True)
    assert "linked again by rm-linkage-web" in page.locator("li", has_text="twins: different first names").inner_text()
