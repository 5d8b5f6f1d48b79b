"""A generated population's Patient records (the GP's, and the council's social care records, some without an NHS
number and with realistic errors) loaded into the test server's database, with the generator's ground truth.

Ids and organisation references get the prefix 'lk-' so that this population never collides with another test's
generated one in the shared session database; linkage runs are restricted to this population's council
(`organisation=`), so other tests' records are never proposed for linking."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import orjson
import pytest

from tests.conftest import once_per_database

PEOPLE = 3000
SEED = 11
PREFIX = "lk-"
COUNCIL = f"{PREFIX}org-la"


@dataclass
class Population:
    gate: object
    url: str
    data: Path
    patients: dict[str, dict]  # id -> Patient resource as loaded
    truth: set[tuple[str, str]]  # (council record without NHS number, GP record): the same person
    truth_all: set[tuple[str, str]]  # every (council record, GP record) pair of one person
    tokens: dict[str, str]


def _prefixed(resource: dict) -> dict:
    text = orjson.dumps(resource).decode()
    for kind in ("Organization", "Practitioner"):
        text = text.replace(f'"{kind}/', f'"{kind}/{PREFIX}')
    doc = orjson.loads(text)
    doc["id"] = PREFIX + doc["id"]
    return doc


@pytest.fixture(scope="session")
def population(server, tmp_root) -> Population:
    return once_per_database("linkage-population", server.db_url, lambda: _population(server, tmp_root))


def _population(server, tmp_root: Path) -> Population:
    from joinedup.governance.accounts import add_user, issue_token
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths
    from joinedup.synth.service import generate

    out = tmp_root / "linkage-ics"
    generate(patients=PEOPLE, seed=SEED, out=out, workers=1, today=date(2026, 6, 30))
    patients = {}
    for f in sorted(glob.glob(str(out / "Patient.*.ndjson"))):
        for line in Path(f).read_bytes().splitlines():
            p = _prefixed(orjson.loads(line))
            patients[p["id"]] = p
    load = tmp_root / "linkage-load"
    load.mkdir(exist_ok=True)
    (load / "Patient.ndjson").write_bytes(b"\n".join(orjson.dumps(p) for p in patients.values()) + b"\n")
    report = import_paths(server.gate, SYSTEM, [load])
    assert report.rejected == 0, report.first_reject
    truth, truth_all = set(), set()
    for line in (out / "ground-truth.ndjson").read_bytes().splitlines():
        t = orjson.loads(line)
        if t["kind"] != "same_person":
            continue
        pair = (PREFIX + t["record"].split("/")[1], PREFIX + t["patient"].split("/")[1])
        truth_all.add(pair)
        if "no_nhs_number" in t["variations"]:
            truth.add(pair)
    tokens = {}
    for name, spec in {"po-linkage": dict(role="privacy-officer")}.items():
        add_user(server.gate, name=name, password=f"{name}-pw", replace=True, **spec)
        tokens[name] = issue_token(server.gate, name)
    return Population(server.gate, server.url, out, patients, truth, truth_all, tokens)


def gp_for(population: Population, patient_id: str, name: str):
    """A GP user of the practice the person is registered with (a legitimate relationship with their GP record)."""
    from joinedup.governance.accounts import add_user

    p = population.patients[patient_id]
    org = next(g["reference"].split("/")[1] for g in p["generalPractitioner"]
               if g["reference"].startswith("Organization/"))
    prac = next(g["reference"].split("/")[1] for g in p["generalPractitioner"]
                if g["reference"].startswith("Practitioner/"))
    return add_user(population.gate, name=name, role="gp", practitioner=prac, organization=org,
                    password=f"{name}-pw", replace=True)


@pytest.fixture(scope="session")
def model_file(population, tmp_root) -> Path:
    """The linkage model trained on the session database (through the gate, as the integration account)."""
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.linkage import service

    def train() -> Path:
        path = tmp_root / f"linkage-model-{abs(hash(population.url))}.json"
        service.train(population.gate, SYSTEM, path=path)
        return path

    return once_per_database("linkage-model", population.url, train)


def queue_pair(population: Population, model_file: Path) -> str:
    """Put one scored pair of this population that is not yet decided into the clerical review queue (through
    Gate.propose_link, as record linkage does); returns the link request's id."""
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.linkage import service

    for attempt in range(2):
        run = service.run(population.gate, SYSTEM, path=model_file, dry_run=True, organisation=COUNCIL)
        for pair in run["pairs"]:
            if pair["decision"] == "below-threshold":
                continue
            if population.gate.propose_link(SYSTEM, pair["unlinked"], pair["reference"], confirm=False,
                                            reason=service.reason_for(pair)) == "queued":
                queue = service.review_queue(population.gate, SYSTEM)
                return next(q["id"] for q in queue if q["patient"] == f"Patient/{pair['unlinked']}"
                            and q["other_patient"] == f"Patient/{pair['reference']}")
        if attempt == 0:
            # every pair of the population has been decided by earlier tests (their order varies with how the
            # run is split between workers): the council registers one more record of a known person
            _another_council_record(population)
    raise AssertionError("no undecided pair left to queue")


def _another_council_record(population: Population) -> None:
    import uuid

    from joinedup.governance.identity import SYSTEM

    council_id = sorted(population.truth)[0][0]
    doc = dict(population.patients[council_id])
    doc["id"] = f"{council_id}-{uuid.uuid4().hex[:8]}"
    population.gate.update(SYSTEM, "Patient", doc["id"], doc)


def second_registration(population: Population) -> tuple[dict, dict, str]:
    """Another practice registers someone with the name, date of birth, sex and address of a registered patient of
    one practice, without an NHS number (written through the gate as the integration account). Returns (the new
    record, the known patient's record, the other practice's reference)."""
    import uuid

    from joinedup.governance.identity import SYSTEM

    known = next(p for i, p in sorted(population.patients.items()) if i.startswith(f"{PREFIX}p-")
                 and any(x.get("system") == "https://fhir.nhs.uk/Id/nhs-number" for x in p.get("identifier") or ()))
    practice = next(g["reference"] for g in known["generalPractitioner"] if g["reference"].startswith("Organization/"))
    other = next(g["reference"] for p in population.patients.values() for g in p.get("generalPractitioner") or ()
                 if g["reference"].startswith("Organization/") and g["reference"] != practice)
    doc = {k: v for k, v in known.items() if k not in ("identifier", "link", "meta")}
    doc["id"] = f"{PREFIX}reg-{uuid.uuid4().hex[:8]}"
    doc["meta"] = {"source": other}
    doc["generalPractitioner"] = [{"reference": other}]
    population.gate.update(SYSTEM, "Patient", doc["id"], doc)
    return doc, known, other
