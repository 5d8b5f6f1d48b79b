"""The integrated care system itself: organisations, sites, practitioners and roles, sized to the population."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from joinedup.synth.knowledge import knowledge

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
STAFF_ID = "https://joinedup.example/Id/staff-number"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"


@dataclass
class System:
    """Compact description of the ICS that patient generation needs (picklable for worker processes)."""

    icb: str = ""
    practices: list[dict[str, Any]] = field(default_factory=list)
    practice_cum: list[float] = field(default_factory=list)
    acute: dict[str, Any] = field(default_factory=dict)
    community: dict[str, Any] = field(default_factory=dict)
    mental_health: dict[str, Any] = field(default_factory=dict)
    local_authority: dict[str, Any] = field(default_factory=dict)
    pharmacies: list[str] = field(default_factory=list)
    care_homes: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)


class _Builder:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.k = knowledge()
        self.resources: list[dict[str, Any]] = []
        self.n_pr = 0
        self.n_loc = 0
        self.used_names: set[str] = set()

    def org(self, oid: str, ods: str, name: str, type_code: str, type_display: str, part_of: str | None = None,
            address: dict | None = None) -> str:
        res: dict[str, Any] = {
            "resourceType": "Organization", "id": oid, "meta": {"source": f"Organization/{oid}"},
            "identifier": [{"system": ODS, "value": ods}], "active": True,
            "type": [{"coding": [{"system": ORG_TYPE, "code": type_code, "display": type_display}]}],
            "name": name,
        }
        if address:
            res["address"] = [address]
        if part_of:
            res["partOf"] = {"reference": f"Organization/{part_of}"}
        self.resources.append(res)
        return oid

    def location(self, org: str, name: str, kind: str, part_of: str | None = None) -> str:
        self.n_loc += 1
        lid = f"loc-{self.n_loc:05d}"
        res: dict[str, Any] = {
            "resourceType": "Location", "id": lid, "meta": {"source": f"Organization/{org}"}, "status": "active",
            "name": name, "type": [{"text": kind}], "managingOrganization": {"reference": f"Organization/{org}"},
        }
        if part_of:
            res["partOf"] = {"reference": f"Location/{part_of}"}
        self.resources.append(res)
        return lid

    def person_name(self) -> tuple[str, str, str]:
        names = self.k["names"]
        rng = self.rng
        for _ in range(50):
            group = rng.choices(["white", "asian", "black", "other"], [70, 18, 7, 5])[0]
            sex = rng.choice(["male", "female"])
            given = rng.choice(names["given"][group][sex])
            family = rng.choice(names["surnames"][group])
            if f"{given} {family}" not in self.used_names:
                break
        self.used_names.add(f"{given} {family}")
        return given, family, sex

    def practitioner(self, org: str, role: str, specialty: str | None, location: str | None,
                     doctor: bool) -> str:
        self.n_pr += 1
        pid = f"pr-{self.n_pr:05d}"
        given, family, sex = self.person_name()
        name: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
        if doctor:
            name["prefix"] = ["Dr"]
        self.resources.append({
            "resourceType": "Practitioner", "id": pid, "meta": {"source": f"Organization/{org}"},
            "identifier": [{"system": STAFF_ID, "value": f"ZS{self.n_pr:06d}"}], "active": True,
            "name": [name], "gender": sex,
        })
        role_res: dict[str, Any] = {
            "resourceType": "PractitionerRole", "id": f"prr-{self.n_pr:05d}",
            "meta": {"source": f"Organization/{org}"}, "active": True,
            "practitioner": {"reference": f"Practitioner/{pid}"},
            "organization": {"reference": f"Organization/{org}"}, "code": [{"text": role}],
        }
        if specialty:
            role_res["specialty"] = [{"text": specialty}]
        if location:
            role_res["location"] = [{"reference": f"Location/{location}"}]
        self.resources.append(role_res)
        return pid

    def staff(self, n: int, org: str, role: str, specialty: str | None, location: str | None,
              doctor: bool = False) -> list[str]:
        return [self.practitioner(org, role, specialty, location, doctor) for _ in range(max(1, n))]


def _per(n_patients: int, per_100k: float, minimum: int) -> int:
    return max(minimum, round(n_patients * per_100k / 100_000))


def build_system(*, patients: int, seed: int) -> System:
    """Build the ICS for a population of `patients` people (deterministic in seed and patients)."""
    rng = random.Random(f"{seed}:system")
    b = _Builder(rng)
    k = b.k
    o = k["organisations"]
    pop = k["population"]
    districts = pop["postcode_districts"]
    sysm = System()

    ics = o["ics"]
    sysm.icb = b.org("org-icb", ics["ods"], f"NHS {ics['short']} Integrated Care Board", "govt",
                     "Government")

    # GP practices and primary care networks
    n_prac = max(3, round(patients / o["practice_list_size"]))
    weights = [rng.uniform(0.5, 1.6) for _ in range(n_prac)]
    total = sum(weights)
    ratios = o["practice_staff_per_list"]
    act = o["activity"]
    n_pcn = max(1, math.ceil(n_prac / o["pcn_size"]))
    pcns = []
    for j in range(n_pcn):
        d = districts[j % len(districts)]
        pcns.append(b.org(f"org-pcn-{j + 1:03d}", f"UZ{j + 1:04d}", f"{d['town']} Primary Care Network {j + 1}",
                          "prov", "Healthcare Provider", part_of=sysm.icb))
    cum = 0.0
    names = o["practice_names"]
    for j in range(n_prac):
        d = districts[j % len(districts)]
        oid = f"org-gp-{j + 1:04d}"
        label = names[j % len(names)] + ("" if j < len(names) else f" {j // len(names) + 1}")
        addr = {"line": [f"{rng.randint(1, 90)} {rng.choice(k['names']['streets'])}"], "city": d["town"],
                "postalCode": f"{d['district']} {rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
                              f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}", "country": "GB"}
        b.org(oid, f"Z{j + 1:05d}", f"{label} Surgery", "prov", "Healthcare Provider",
              part_of=pcns[j // o["pcn_size"]], address=addr)
        loc = b.location(oid, f"{label} Surgery", "General practice premises")
        list_size = patients * weights[j] / total
        gps = b.staff(max(2, round(list_size / ratios["gp"])), oid, "GP", "General practice", loc, doctor=True)
        nurses = b.staff(max(1, round(list_size / ratios["practice_nurse"])), oid, "Practice nurse", None, loc)
        pharm = b.staff(max(1, round(list_size / ratios["practice_pharmacist"])), oid, "Practice pharmacist",
                        None, loc)
        lo, hi = act["usual_gp_share"]
        cum += weights[j] / total
        sysm.practices.append({"id": oid, "location": loc, "gps": gps, "nurses": nurses, "pharmacists": pharm,
                               "continuity": round(rng.uniform(lo, hi), 3)})
        sysm.practice_cum.append(cum)
    sysm.practice_cum[-1] = 1.0

    # Acute trust
    a = o["acute_trust"]
    acute = b.org("org-acute", a["ods"], a["name"], "prov", "Healthcare Provider", part_of=None)
    site = b.location(acute, a["site"], "Hospital")
    ae = b.location(acute, "Emergency Department", "Emergency department", part_of=site)
    wards = {w["kind"]: b.location(acute, w["name"], "Ward", part_of=site) for w in a["wards"]}
    clinics, consultants, nurses = {}, {}, {}
    for spec, info in a["specialties"].items():
        clinics[spec] = b.location(acute, info["clinic"], "Outpatient clinic", part_of=site)
        consultants[spec] = b.staff(_per(patients, a["consultants_per_100k"], 2), acute, "Consultant",
                                    info["display"], clinics[spec], doctor=True)
        nurses[spec] = b.staff(_per(patients, a["specialist_nurses_per_100k"], 1), acute, "Specialist nurse",
                               info["display"], clinics[spec])
    sysm.acute = {"id": acute, "ae": ae, "wards": wards, "clinics": clinics, "consultants": consultants,
                  "nurses": nurses, "specialty_display": {s: i["display"] for s, i in a["specialties"].items()},
                  "ods": a["ods"]}

    # Community trust
    c = o["community_trust"]
    comm = b.org("org-community", c["ods"], c["name"], "prov", "Healthcare Provider")
    teams = {t: b.location(comm, name, "Community team base") for t, name in c["teams"].items()}
    sysm.community = {
        "id": comm, "teams": teams,
        "nurses": b.staff(_per(patients, c["community_nurses_per_100k"], 2), comm, "Community nurse",
                          "District nursing", teams["district_nursing"]),
        "matrons": b.staff(_per(patients, c["matrons_per_100k"], 1), comm, "Community nurse",
                           "Community matron", teams["matrons"]),
        "physios": b.staff(_per(patients, c["physiotherapists_per_100k"], 1), comm, "Physiotherapist",
                           "Community therapies", teams["therapies"]),
        "coordinators": b.staff(_per(patients, c["care_coordinators_per_100k"], 1), comm, "Care coordinator",
                                "Care coordination", teams["care_coordination"]),
    }

    # Mental health trust
    m = o["mental_health_trust"]
    mh = b.org("org-mental-health", m["ods"], m["name"], "prov", "Healthcare Provider")
    mteams = {t: b.location(mh, name, "Mental health team base") for t, name in m["teams"].items()}
    sysm.mental_health = {
        "id": mh, "teams": mteams,
        "consultants": b.staff(_per(patients, m["consultants_per_100k"], 1), mh, "Consultant", "Psychiatry",
                               mteams["cmht"], doctor=True),
        "nurses": b.staff(_per(patients, m["specialist_nurses_per_100k"], 1), mh, "Specialist nurse",
                          "Mental health nursing", mteams["cmht"]),
    }

    # Local authority adult social care
    la = o["local_authority"]
    la_id = b.org("org-la", la["ods"], la["name"], "govt", "Government")
    la_loc = b.location(la_id, "Adult Social Care, Northshire Council Offices", "Council office")
    sysm.local_authority = {"id": la_id, "location": la_loc,
                            "social_workers": b.staff(_per(patients, la["social_workers_per_100k"], 1), la_id,
                                                      "Social worker", "Adult social care", la_loc)}

    # Community pharmacies and care homes
    for j in range(_per(patients, o["pharmacies_per_100k"], 2)):
        d = districts[j % len(districts)]
        name = o["pharmacy_names"][j % len(o["pharmacy_names"])]
        sysm.pharmacies.append(b.org(f"org-pharmacy-{j + 1:03d}", f"FZ{j + 1:03d}", f"{name} ({d['town']})",
                                     "prov", "Healthcare Provider", part_of=sysm.icb))
    for j in range(_per(patients, o["care_homes_per_100k"], 1)):
        d = districts[j % len(districts)]
        name = o["care_home_names"][j % len(o["care_home_names"])]
        addr = {"line": [name, f"{rng.randint(1, 60)} {rng.choice(k['names']['streets'])}"], "city": d["town"],
                "postalCode": f"{d['district']} {rng.randint(1, 9)}CH", "country": "GB"}
        oid = b.org(f"org-carehome-{j + 1:03d}", f"VZ{j + 1:03d}", f"{name} ({d['town']})", "prov",
                    "Healthcare Provider", address=addr)
        sysm.care_homes.append({"id": oid, "address": addr})
    _directory_services(b, sysm)  # the services directory (knowledge/system/synthetic-services.yaml)
    sysm.resources = b.resources
    return sysm


REFERRAL_METHOD = "http://terminology.hl7.org/CodeSystem/service-referral-method"


def _directory_services(b: _Builder, sysm: System) -> None:
    """A HealthcareService for each clinic, team and provider the ICS has (what it accepts, how to refer, advice and
    guidance, a response-time promise, contact routes, opening hours), linked from the PractitionerRoles based there."""
    from importlib import resources as pkg_resources

    import yaml

    from joinedup.fhir import codes

    spec = yaml.safe_load(pkg_resources.files("joinedup.knowledge").joinpath(
        "system/synthetic-services.yaml").read_text(encoding="utf-8"))
    needs_system = yaml.safe_load(pkg_resources.files("joinedup.knowledge").joinpath(
        "system/needs.yaml").read_text(encoding="utf-8"))["system"]
    names = {r["id"]: r.get("name") for r in b.resources if r["resourceType"] == "Organization"}
    places: list[tuple[dict, str, str | None]] = []
    for svc in spec["services"]:
        kind, _, key = svc["where"].partition(":")
        if kind == "acute" and key in sysm.acute.get("clinics", {}):
            places.append((svc, sysm.acute["id"], sysm.acute["clinics"][key]))
        elif kind in ("community", "mental_health"):
            part = sysm.community if kind == "community" else sysm.mental_health
            if key in part.get("teams", {}):
                places.append((svc, part["id"], part["teams"][key]))
        elif kind == "local_authority" and sysm.local_authority:
            places.append((svc, sysm.local_authority["id"], sysm.local_authority["location"]))
        elif kind == "practice":
            places += [(svc, p["id"], p["location"]) for p in sysm.practices]
        elif kind == "pharmacy":
            places += [(svc, oid, None) for oid in sysm.pharmacies]
    by_location: dict[str, str] = {}
    for n, (svc, org, loc) in enumerate(places, 1):
        hid = f"hs-{n:04d}"
        name = svc["name"].replace("{org}", names.get(org) or org)
        slug = ".".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split())
        res: dict[str, Any] = {
            "resourceType": "HealthcareService", "id": hid, "meta": {"source": f"Organization/{org}"},
            "active": True, "providedBy": {"reference": f"Organization/{org}"}, "name": name,
            "type": [{"text": svc["type"]}],
            "eligibility": [{"code": {"text": "Referral criteria"}, "comment": c} for c in svc["criteria"]],
            "referralMethod": [{"coding": [{"system": REFERRAL_METHOD, "code": m}]} for m in svc["referral"]],
            "telecom": [{"system": "phone", "value": f"01632 96{b.rng.randint(0, 9999):04d}", "use": "work"},
                        {"system": "email", "value": f"{slug[:40]}@northshire.example", "use": "work"}],
            "availableTime": [{"daysOfWeek": t["days"], **({"allDay": True} if t.get("all_day") else {
                "availableStartTime": t["start"] + ":00", "availableEndTime": t["end"] + ":00"})}
                for t in spec["hours"][svc["hours"]]],
            "appointmentRequired": svc["where"] not in ("pharmacy",),
        }
        chars = [{"coding": [{"system": needs_system, "code": k}]} for k in svc.get("needs") or ()]
        if svc.get("advice_and_guidance"):
            chars.append({"coding": [{"system": codes.CODE_SYSTEM + "service-offer", "code": "advice-and-guidance",
                                      "display": "Advice and guidance"}]})
        if chars:
            res["characteristic"] = chars
        if loc:
            res["location"] = [{"reference": f"Location/{loc}"}]
            by_location.setdefault(f"{org}|{loc}", hid)
        promise = svc.get("promise")
        if promise and svc.get("complete", True):
            code = {"hours": "h", "working days": "d", "days": "d", "weeks": "wk"}[promise["unit"]]
            res["extension"] = [{"url": codes.EXTENSION + "response-time-promise", "valueDuration": {
                "value": promise["value"], "unit": promise["unit"], "system": "http://unitsofmeasure.org",
                "code": code}}]
        b.resources.append(res)
    for r in b.resources:
        if r["resourceType"] == "PractitionerRole":
            org = (r.get("organization") or {}).get("reference", "").removeprefix("Organization/")
            loc = ((r.get("location") or [{}])[0].get("reference") or "").removeprefix("Location/")
            hid = by_location.get(f"{org}|{loc}")
            if hid:
                r["healthcareService"] = [{"reference": f"HealthcareService/{hid}"}]
