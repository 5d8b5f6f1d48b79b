"""Browser-test fixtures: a small generated integrated care system loaded once into the test server's database,
and headless Debian chromium driven by Playwright (no browser downloads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, once_per_database  # noqa: F401 - the one browser (tests/conftest.py)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

DEMO_PATIENTS = 150
DEMO_SEED = 7


@dataclass
class Demo:
    url: str
    gate: object
    patient_id: str
    user: str
    name: str
    family: str
    nhs: str


def _pick(gate, data_dir: Path):
    """A person with a live medicines discrepancy whom a demo professional (the GP if possible) may see,
    preferring people known to the most organisations."""
    import orjson

    from joinedup.fhir.errors import FhirError
    from joinedup.governance.accounts import get_user
    from joinedup.governance.identity import SYSTEM
    from joinedup.record import service

    pids = []
    for path in sorted(data_dir.glob("Patient*.ndjson")):
        pids += [orjson.loads(line)["id"] for line in path.read_bytes().splitlines() if line.strip()]
    summaries = {pid: service.summarise(gate=gate, who=SYSTEM, patient_id=pid) for pid in pids}
    # a living person (the dead have no current medicines to reconcile)
    candidates = [pid for pid, s in summaries.items() if not s.person.deceased
                  and any(f.severity != "info" for m in s.medicines for f in m.flags)]
    for user in ("dr.gp", "dr.consultant", "key.worker", "nurse.community"):
        who = get_user(gate, user)
        seen = []
        for pid in candidates:
            try:  # as this professional sees the record (linked records need their own relationship)
                seen.append(service.summarise(gate=gate, who=who, patient_id=pid))
            except FhirError:
                continue
        if seen:
            return user, max(seen, key=lambda s: len(s.organisations))
    raise RuntimeError("no suitable demo patient in the generated population")


def _add_pharmacy_check(gate, data_dir: Path, s) -> None:
    """The generator seldom puts one person in four organisations' records together with a live medicines
    discrepancy (about 1 in 200 people are known to four organisations; none of 400 also had a discrepancy),
    and it emits nothing from community pharmacies: record a pharmacy's medicines check (and, if the person
    is known to only two organisations, a district nursing visit) as those organisations' systems would."""
    import orjson

    from joinedup.governance.identity import SYSTEM

    orgs = [orjson.loads(line) for line in (data_dir / "Organization.ndjson").read_bytes().splitlines()]
    pharmacy = next(o for o in orgs if "pharmacy" in o.get("name", "").lower())
    med = next(m for m in s.medicines if any(f.severity != "info" for f in m.flags))
    gp = next((e for e in med.entries if e.provenance.source.setting == "GP practice"), med.entries[0])
    rid = f"{s.person.id}-pharmacy-check"
    if len(s.organisations) < 3:
        community = next(o for o in orgs if "community" in o.get("name", "").lower())
        eid = f"{s.person.id}-community-visit"
        gate.update(SYSTEM, "Encounter", eid, {
            "resourceType": "Encounter", "id": eid, "meta": {"source": f"Organization/{community['id']}"},
            "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
            "type": [{"text": "Community nursing visit"}], "subject": {"reference": f"Patient/{s.person.id}"},
            "period": {"start": "2026-05-12T10:00:00Z", "end": "2026-05-12T10:30:00Z"},
            "serviceProvider": {"reference": f"Organization/{community['id']}"}})
    gate.update(SYSTEM, "MedicationStatement", rid, {
        "resourceType": "MedicationStatement", "id": rid, "meta": {"source": f"Organization/{pharmacy['id']}"},
        "status": "active", "medicationCodeableConcept": {"text": gp.product},
        "subject": {"reference": f"Patient/{s.person.id}"}, "dateAsserted": "2026-06-01",
        "dosage": [{"text": gp.dose or "As directed"}], "note": [{"text": "New Medicine Service check"}]})


@pytest.fixture(scope="session")
def demo(server, tmp_root) -> Demo:
    """150 generated people and the demo users, loaded once into the server's database."""
    return once_per_database("demo", server.db_url, lambda: _load_demo(server, tmp_root))


def _load_demo(server, tmp_root: Path) -> Demo:
    from rich.console import Console

    from joinedup.demo import load_demo

    data_dir = tmp_root / "demo-ics"
    with open(os.devnull, "w") as quiet:
        load_demo(server.gate, patients=DEMO_PATIENTS, seed=DEMO_SEED, data_dir=data_dir, console=Console(file=quiet),
                  workers=1)
    user, s = _pick(server.gate, data_dir)
    if len(s.organisations) < 4:
        _add_pharmacy_check(server.gate, data_dir, s)
    family = s.person.name.split()[-1]
    return Demo(server.url, server.gate, s.person.id, user, s.person.name, family, s.person.nhs_number or "")


def shot(page, name: str, *, full_page: bool = False) -> Path:
    """Keep a screenshot as a test artefact (test-artifacts/ is git-ignored)."""
    from playwright.sync_api import Error

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    for attempt in range(3):
        try:
            page.screenshot(path=str(path), full_page=full_page)
            return path
        except Error as exc:  # Chromium's "Unable to capture screenshot" when the renderer is busy: try again
            if "Unable to capture screenshot" not in str(exc) or attempt == 2:
                raise
            page.wait_for_timeout(500)
    return path


@pytest.fixture(autouse=True)
def _axe_once_per_page(request):
    """axe (tests/browser/axe.py, used only by these tests) checks the pages of a test on its SQLite pass only: the
    PostgreSQL pass renders the same markup from the same data."""
    from tests.browser import axe

    params = getattr(getattr(request.node, "callspec", None), "params", {})
    axe.RUN["axe"] = params.get("db_url") != "postgresql"
    yield
    axe.RUN["axe"] = True
