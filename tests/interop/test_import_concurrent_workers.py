"""Two import workers write at once (PostgreSQL: nothing serialises their transactions, unlike SQLite's one
writer). Each batch that changes access facts (a PractitionerRole, a Consent) marks them changed in the one
`governance_epoch` row; two workers' first such batches, in flight together on an empty store, must not both try to
create that row (a unique-key violation stopped the bulk import of a synthetic care system of 3,000 people)."""

from __future__ import annotations

import threading

import pytest

from joinedup.governance.gate import get_gate
from joinedup.store.repository import prepare
from tests.conftest import BACKENDS, fresh_database


def _role(n: int) -> dict:
    # a PractitionerRole as FHIR R4 defines it (hl7.org/fhir/R4/practitionerrole.html): its writes change facts
    return {"resourceType": "PractitionerRole", "id": f"role-{n}", "active": True,
            "practitioner": {"reference": f"Practitioner/prac-{n}"},
            "organization": {"reference": "Organization/org-1"}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_first_fact_changes_in_flight_together_both_commit(backend, tmp_path):
    url = fresh_database(backend, tmp_path, "workers")
    gate = get_gate(url)
    store = gate._store
    facts = gate._facts
    first_written = threading.Event()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            first_written.wait(10)
            with store.writing() as conn:  # waits for the first (SQLite) or runs beside it (PostgreSQL)
                store.write_prepared(conn, [prepare(_role(2))])
                facts._bump(conn)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            second_done.set()

    other = threading.Thread(target=second)
    other.start()
    with store.writing() as conn:
        store.write_prepared(conn, [prepare(_role(1))])
        facts._bump(conn)
        first_written.set()
        second_done.wait(1)  # PostgreSQL: the second is now blocked on the row this transaction created
    other.join(20)
    assert not other.is_alive()
    assert errors == []
    assert {s.id for s in (store.read("PractitionerRole", "role-1"), store.read("PractitionerRole", "role-2"))} == {
        "role-1", "role-2"}
