"""The record-linkage API over HTTP: the integration account runs it; the privacy officer reviews; everyone else
is refused; bad input is answered with an OperationOutcome."""

from __future__ import annotations

import httpx

from tests.interop.linkage.conftest import COUNCIL, queue_pair


def _client(population, server, user: str) -> httpx.Client:
    token = population.tokens.get(user) or server.tokens[user]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}",
                                                      "Accept": "application/json"}, timeout=300)


def _outcome(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["resourceType"] == "OperationOutcome"
    assert words.lower() in doc["issue"][0]["diagnostics"].lower()


def test_bad_input_gets_an_operation_outcome(population, server):
    with _client(population, server, "admin") as c:
        _outcome(c.post("/api/linkage/run", json={"confirm": 2}), 400, "match probability")
        _outcome(c.post("/api/linkage/run", json={"confirm": "high"}), 400, "match probability")
        _outcome(c.post("/api/linkage/run", json={"threshold": 0.9}), 400, "unknown field")
        _outcome(c.post("/api/linkage/run", json={"dry_run": "yes"}), 400, "true or false")
        _outcome(c.post("/api/linkage/run", json={"confirm": 0.5, "review": 0.9}), 400, "review")
        _outcome(c.post("/api/linkage/run", json={"organisation": ""}), 400, "organisation")
        _outcome(c.post("/api/linkage/run", content=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "")
    with _client(population, server, "po-linkage") as c:
        _outcome(c.get("/api/linkage/reviews", params={"status": "maybe"}), 400, "status")
        _outcome(c.post("/api/linkage/reviews/no-such-request", json={"outcome": "approved"}), 404, "no link request")
        _outcome(c.post("/api/linkage/reviews/no-such-request", json={"outcome": "perhaps"}), 400, "outcome")


def test_roles(population, server, model_file):
    request_id = queue_pair(population, model_file)
    with _client(population, server, "gp") as c:
        _outcome(c.post("/api/linkage/run", json={"dry_run": True}), 403, "integration account")
        assert c.get("/api/linkage/reviews").status_code == 403
        _outcome(c.post(f"/api/linkage/reviews/{request_id}", json={"outcome": "approved"}), 403, "refused")
    with _client(population, server, "pat") as c:
        assert c.get("/api/linkage/reviews").status_code == 403
    with _client(population, server, "po-linkage") as c:
        _outcome(c.post("/api/linkage/run", json={"dry_run": True}), 403, "integration account")
        r = c.get("/api/linkage/reviews")
        assert r.status_code == 200
        pair = next(p for p in r.json()["pairs"] if p["id"] == request_id)
        assert pair["status"] == "pending" and set(pair["fields"]) == set(pair["agreement"])
        done = c.post(f"/api/linkage/reviews/{request_id}", json={"outcome": "rejected", "note": "not the same"})
        assert done.status_code == 200 and done.json()["status"] == "rejected"
        _outcome(c.post(f"/api/linkage/reviews/{request_id}", json={"outcome": "approved"}), 409, "already decided")


def test_integration_account_runs_linkage(population, server, model_file, monkeypatch):
    monkeypatch.setenv("JOINEDUP_LINKAGE_MODEL", str(model_file))
    with _client(population, server, "admin") as c:
        r = c.post("/api/linkage/run", json={"dry_run": True, "organisation": f"Organization/{COUNCIL}"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["organisation"] == COUNCIL and doc["dry_run"] is True
        assert doc["pairs_scored"] == len(doc["pairs"]) > 0
        assert {"match_weight", "match_probability", "decision"} <= set(doc["pairs"][0])
