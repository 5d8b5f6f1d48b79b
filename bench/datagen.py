"""Plain FHIR resources in volume for load benchmarks (the synthetic ICS generator makes realistic ones)."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from joinedup.fhir.nhs_number import check_digit

LOINC = [("8867-4", "Heart rate", "/min", 50, 110), ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 180),
         ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.2, 5.8),
         ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5, 11)]
SNOMED = [("38341003", "Hypertensive disorder"), ("44054006", "Diabetes mellitus type 2"),
          ("13645005", "Chronic obstructive lung disease"), ("195967001", "Asthma")]


def nhs_number(rng: random.Random) -> str:
    while True:
        nine = "999" + "".join(str(rng.randint(0, 9)) for _ in range(6))
        check = check_digit(nine)
        if check is not None:
            return nine + str(check)


def write_population(out: Path, resources: int, seed: int = 1) -> dict[str, int]:
    """Write about `resources` resources (patients with observations, conditions, encounters) as NDJSON."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_patient = 20
    patients = max(1, resources // per_patient)
    files = {t: (out / f"{t}.ndjson").open("wb") for t in ("Patient", "Observation", "Condition", "Encounter")}
    counts = dict.fromkeys(files, 0)
    try:
        for i in range(patients):
            pid = f"bp-{i:07d}"
            files["Patient"].write(orjson.dumps({
                "resourceType": "Patient", "id": pid,
                "meta": {"source": f"Organization/gp-{i % 50:03d}"},
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number(rng)}],
                "name": [{"family": f"Family{i % 997}", "given": [f"Given{i % 131}"]}],
                "gender": rng.choice(["male", "female"]),
                "birthDate": f"{rng.randint(1930, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "address": [{"postalCode": f"LS{rng.randint(1, 29)} {rng.randint(1, 9)}AB"}],
            }) + b"\n")
            counts["Patient"] += 1
            for k in range(2):
                code, text = rng.choice(SNOMED)
                files["Condition"].write(orjson.dumps({
                    "resourceType": "Condition", "id": f"{pid}-c{k}",
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                   "code": "active"}]},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": text}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "onsetDateTime": f"{rng.randint(2005, 2024)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                }) + b"\n")
                counts["Condition"] += 1
            for k in range(3):
                files["Encounter"].write(orjson.dumps({
                    "resourceType": "Encounter", "id": f"{pid}-e{k}", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T09:00:00Z",
                               "end": f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T09:20:00Z"},
                }) + b"\n")
                counts["Encounter"] += 1
            for k in range(per_patient - 6):
                code, text, unit, lo, hi = rng.choice(LOINC)
                files["Observation"].write(orjson.dumps({
                    "resourceType": "Observation", "id": f"{pid}-o{k}", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "laboratory"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": f"202{rng.randint(0, 5)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:00:00Z",
                    "valueQuantity": {"value": round(rng.uniform(lo, hi), 1), "unit": unit,
                                      "system": "http://unitsofmeasure.org", "code": unit},
                }) + b"\n")
                counts["Observation"] += 1
    finally:
        for fh in files.values():
            fh.close()
    return counts
