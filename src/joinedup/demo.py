"""`joinedup demo` / `make demo`: generate and load a synthetic ICS, and create demo users of several roles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from joinedup.fhir.values import human_name
from joinedup.governance.accounts import add_user, get_user, issue_token, login
from joinedup.governance.gate import Gate
from joinedup.governance.identity import SYSTEM

DEMO_PASSWORD = "demo"

# (user name, role, PractitionerRole.code text to pick a practitioner by, display)
PROFESSIONALS = [
    ("dr.gp", "gp", "GP", "GP"),
    ("nurse.practice", "practice-nurse", "Practice nurse", "Practice nurse"),
    ("pharmacist", "pharmacist", "Practice pharmacist", "Practice pharmacist"),
    ("dr.consultant", "consultant", "Consultant", "Hospital consultant"),
    ("nurse.specialist", "specialist-nurse", "Specialist nurse", "Specialist nurse"),
    ("nurse.community", "community-nurse", "Community nurse", "Community nurse"),
    ("social.worker", "social-worker", "Social worker", "Social worker"),
    ("key.worker", "care-coordinator", "Care coordinator", "Care coordinator / key worker"),
]


def load_demo(gate: Gate, *, patients: int, seed: int, data_dir: Path, console: Console | None = None,
              workers: int = 2) -> list[dict[str, str]]:
    """Generate (unless already there for these settings) and import the population; return demo log-ins."""
    from joinedup.interop.bulk_import import import_paths
    from joinedup.synth.service import generate

    console = console or Console(stderr=True)
    manifest = data_dir / "manifest.json"
    current = json.loads(manifest.read_text()) if manifest.exists() else {}
    if current.get("patients") != patients or current.get("seed") != seed:
        console.print(f"generating a synthetic integrated care system of {patients:,} people (seed {seed}) ...")
        result = generate(patients=patients, seed=seed, out=data_dir, workers=workers, force=True)
        console.print(f"  {result.resources:,} resources written to {data_dir}")
    console.print("loading it into the shared record ...")
    report = import_paths(gate, SYSTEM, [data_dir], workers=workers, rejects=data_dir / "rejects.ndjson")
    gate.flush_audit()
    console.print(f"  {report.read:,} resources in {report.seconds:.0f}s: {report.created:,} new, "
                  f"{report.updated:,} changed, {report.unchanged:,} unchanged, {report.rejected:,} rejected")
    create_demo_wards(gate)
    return create_demo_users(gate, data_dir)


DEMO_WARDS = [  # (name, kind, capacity, organisation id in the generated system)
    ("Hospital at home (acute)", "acute", 20, "org-acute"),
    ("Frailty virtual ward (preventive)", "preventive", 40, "org-community"),
]


def create_demo_wards(gate: Gate) -> None:
    """Virtual wards for the demo, once (acute at the acute trust, preventive at the community trust)."""
    from joinedup.care.wards.service import create_ward, wards

    have = {w.get("name") for w in wards(gate=gate, who=SYSTEM)}
    orgs = {s.id for s in gate.search(SYSTEM, "Organization", [("_id", ",".join(o for *_, o in DEMO_WARDS))],
                                      query_text="Organization?_id=(demo ward hosts)").matches}
    for name, kind, capacity, org in DEMO_WARDS:
        if name not in have and org in orgs:
            create_ward(gate=gate, who=SYSTEM, name=name, kind=kind, capacity=capacity, organization_id=org)


def _roles_by_text(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    path = data_dir / "PractitionerRole.ndjson"
    if not path.exists():
        return out
    with path.open("rb") as fh:
        for line in fh:
            role = orjson.loads(line)
            for code in role.get("code") or []:
                text = code.get("text") or ""
                out.setdefault(text, []).append(role)
    return out


def _practitioner_names(data_dir: Path) -> dict[str, str]:
    """Practitioner id → 'Dr Sophie Wood'-style name from the generated directory."""
    out: dict[str, str] = {}
    path = data_dir / "Practitioner.ndjson"
    if path.exists():
        with path.open("rb") as fh:
            for line in fh:
                pr = orjson.loads(line)
                if pr.get("name"):
                    out[pr["id"]] = human_name(pr)
    return out


def _demo_patient(data_dir: Path, gp_practitioner: str | None = None) -> str | None:
    """A person with planted prescribing problems (the most interesting record to show), preferring one whose
    usual GP is the demo GP (so the demo GP sees what the person does: their messages, their access log)."""
    truth = data_dir / "ground-truth.ndjson"
    if not truth.exists():
        return None
    candidates: list[str] = []
    with truth.open("rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            if rec.get("kind") == "prescribing_problem" and rec.get("patient"):
                pid = rec["patient"].split("/", 1)[1]
                if pid not in candidates:
                    candidates.append(pid)
    if not candidates:
        return None
    wanted, living = set(candidates), set()
    for path in sorted(data_dir.glob("Patient*.ndjson")):
        with path.open("rb") as fh:
            for line in fh:
                p = orjson.loads(line)
                if p.get("id") not in wanted or p.get("deceasedDateTime"):
                    continue
                if gp_practitioner and any(g.get("reference") == f"Practitioner/{gp_practitioner}"
                                           for g in p.get("generalPractitioner") or []):
                    return p["id"]
                living.add(p["id"])
    return next((c for c in candidates if c in living), candidates[0])


def create_demo_users(gate: Gate, data_dir: Path) -> list[dict[str, str]]:
    """Demo users linked to practitioners and organisations of the generated system, with tokens."""
    roles = _roles_by_text(data_dir)
    names = _practitioner_names(data_dir)
    users: list[dict[str, str]] = []

    def add(name: str, role: str, display: str, **links: str | None) -> None:
        existing = get_user(gate, name)
        if existing is not None and (existing.role != role or any(
                getattr(existing, f"{k}_id") != v for k, v in links.items())):
            # someone else's account with this name: leave it (and its password) alone
            users.append({"name": name, "role": existing.role, "password": "(unchanged)",
                          "token": issue_token(gate, name)})
            return
        if existing is None:
            add_user(gate, name=name, role=role, display=display, password=DEMO_PASSWORD, **links)
        token = login(gate, name, DEMO_PASSWORD)
        users.append({"name": name, "role": role, "password": DEMO_PASSWORD if token else "(unchanged)",
                      "token": token or issue_token(gate, name)})

    add("admin", "system", "Integration account")
    gp_practitioner = None
    for name, role, text, display in PROFESSIONALS:
        candidates = roles.get(text) or []
        if not candidates:
            continue
        pr = candidates[0]
        practitioner = (pr.get("practitioner") or {}).get("reference", "").split("/")[-1] or None
        organization = (pr.get("organization") or {}).get("reference", "").split("/")[-1] or None
        person = names.get(practitioner or "")
        if name == "dr.gp":
            gp_practitioner = practitioner
        add(name, role, f"{person} ({display})" if person else display, practitioner=practitioner,
            organization=organization)
    add("analyst", "analyst", "ICS analyst")
    add("privacy.officer", "privacy-officer", "Privacy officer")
    add("records.manager", "records-manager", "Health records manager")  # the record-linkage review queue
    add("board", "board", "Partnership board member")  # the integration self-assessment (system/)
    patient = _demo_patient(data_dir, gp_practitioner)
    if patient:
        add("patient", "patient", "Patient (demo)", patient=patient)
        _demo_carer(gate, add)
    return users


def _demo_carer(gate: Gate, add) -> None:
    """The demo patient's daughter, given access to their appointments and plan for 90 days (as the person would
    from "Sharing and carers"), so the carer's view can be tried: user `carer`."""
    from datetime import UTC, datetime, timedelta

    from joinedup.portal import proxy

    person = get_user(gate, "patient")
    if person is None or person.role != "patient":
        return
    add("carer", "carer", "Carer (demo)", patient=person.patient_id)
    carer = get_user(gate, "carer")
    if carer is None or carer.role != "carer" or carer.patient_id != person.patient_id:
        return
    if any(g["account"] == "carer" and g["live"] for g in proxy.grants(gate=gate, who=person)):
        return
    until = (datetime.now(UTC).date() + timedelta(days=90)).isoformat()
    proxy.grant(gate=gate, who=person, name="Grace Demo", relationship="Daughter", account="carer",
                scope="appointments-plan", until=until)
