"""The demo's patient account is a person with planted prescribing problems whose usual GP is the demo GP, so the
GP sees what the person does (their messages, who looked at their record)."""

from __future__ import annotations

import orjson

from joinedup.demo import _demo_patient
from joinedup.synth.service import generate, read_ndjson


def test_demo_patient_is_registered_with_the_demo_gp(tmp_path):
    out = tmp_path / "ics"
    generate(patients=400, seed=5, out=out, workers=1)
    with open(out / "ground-truth.ndjson", "rb") as fh:
        problems = {orjson.loads(line)["patient"].split("/", 1)[1] for line in fh
                    if b'"prescribing_problem"' in line}
    patients = {p["id"]: p for p in read_ndjson(out, "Patient")}
    gps = {g["reference"].split("/", 1)[1] for pid in problems for g in patients[pid].get("generalPractitioner", [])
           if g["reference"].startswith("Practitioner/") and not patients[pid].get("deceasedDateTime")}
    assert problems and gps
    for gp in sorted(gps)[:3]:
        chosen = _demo_patient(out, gp)
        assert chosen in problems and not patients[chosen].get("deceasedDateTime")
        assert {"reference": f"Practitioner/{gp}"} in patients[chosen]["generalPractitioner"]
    # without a GP to prefer: still someone with a planted problem
    fallback = _demo_patient(out)
    assert fallback in problems and not patients[fallback].get("deceasedDateTime")
