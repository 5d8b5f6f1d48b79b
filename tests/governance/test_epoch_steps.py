"""A change of care relationships made by one process is followed in place by every other process's cache of the
access facts (governance_epoch_step), so that a listener or web worker does not reload its facts and rebuild every
principal's reach after each admission another process writes - and the answers stay exactly right: a relationship
another process adds is seen, one it ends is gone, and a change that is not a step (a person's choice) still makes
every cache reload.

The second process is a second Gate on the same database: its own AccessFacts cache, sharing nothing with the first
but the database, as two listener processes do.
"""

from __future__ import annotations

import time
import uuid

import pytest

from joinedup.governance.accounts import add_user
from joinedup.governance.audit import AuditWriter
from joinedup.governance.gate import Gate, get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.store.repository import Store


@pytest.fixture
def two(db_url):
    writer = get_gate(db_url)
    store = Store(db_url)
    audit = AuditWriter(store, 200)
    other = Gate(store, audit)
    yield writer, other
    audit.close()


def _wait_for_refresh(facts) -> None:
    time.sleep(facts.refresh + 0.05)  # the other process looks at the epoch again after JOINEDUP_POLICY_REFRESH_MS


def _episode(eid: str, pid: str, org: str, status: str) -> dict:
    return {"resourceType": "EpisodeOfCare", "id": eid, "status": status, "patient": {"reference": f"Patient/{pid}"},
            "managingOrganization": {"reference": f"Organization/{org}"}}


def test_another_process_follows_a_care_relationship_change_in_place(two):
    writer, other = two
    uid = uuid.uuid4().hex[:8]
    here, elsewhere, pid = f"team-{uid}", f"far-{uid}", f"p-{uid}"
    for org in (here, elsewhere):
        writer.update(SYSTEM, "Organization", org, {"resourceType": "Organization", "id": org, "name": org})
    writer.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": "Step"}]})
    nurse = add_user(writer, name=f"nurse-{uid}", role="community-nurse", organization=here)
    bystander = add_user(writer, name=f"far-{uid}", role="community-nurse", organization=elsewhere)
    facts = other.facts_for_tests
    assert facts.reach(nurse) == {} and facts.reach(bystander) == {}  # both reaches cached
    cached = facts.snapshot()
    assert (None, elsewhere) in cached.reach

    # the first process opens an episode of care with the nurse's team: a step
    writer.update(SYSTEM, "EpisodeOfCare", f"e-{uid}", _episode(f"e-{uid}", pid, here, "active"))
    _wait_for_refresh(facts)
    assert facts.related(nurse, [pid]) == {pid}
    assert other.relationship_of(nurse, pid) == "episode"
    assert facts.snapshot() is cached  # followed in place, not reloaded
    assert (None, elsewhere) in cached.reach  # the reach of a principal the change does not name is kept

    # the episode ends: the relationship is gone in the other process too, still in place
    writer.update(SYSTEM, "EpisodeOfCare", f"e-{uid}", _episode(f"e-{uid}", pid, here, "finished"))
    _wait_for_refresh(facts)
    assert facts.related(nurse, [pid]) == set() and not other.relationship_of(nurse, pid)
    assert facts.snapshot() is cached

    # a change that is not a step (the person objects to sharing with the nurse's team): the other cache reloads
    writer.update(SYSTEM, "Consent", f"c-{uid}", {
        "resourceType": "Consent", "id": f"c-{uid}", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {"type": "deny", "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]},
            "reference": {"reference": f"Organization/{here}"}}]}})
    _wait_for_refresh(facts)
    assert facts.snapshot() is not cached
    assert facts.objection(nurse, pid)


def test_steps_that_are_no_longer_kept_make_the_cache_reload(two):
    writer, other = two
    uid = uuid.uuid4().hex[:8]
    org, pid = f"team-{uid}", f"p-{uid}"
    writer.update(SYSTEM, "Organization", org, {"resourceType": "Organization", "id": org, "name": org})
    writer.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid})
    nurse = add_user(writer, name=f"nurse-{uid}", role="community-nurse", organization=org)
    facts = other.facts_for_tests
    assert facts.reach(nurse) == {}
    cached = facts.snapshot()
    writer.update(SYSTEM, "EpisodeOfCare", f"e-{uid}", _episode(f"e-{uid}", pid, org, "active"))
    # the other process's cache is further behind than the steps kept (pruned): it cannot follow, so it reloads
    writer.facts_for_tests.prune(keep=0)
    _wait_for_refresh(facts)
    assert facts.related(nurse, [pid]) == {pid}
    assert facts.snapshot() is not cached
