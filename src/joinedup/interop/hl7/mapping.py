"""HL7 v2 data types and tables to FHIR R4, after the HL7 Version 2 to FHIR Implementation Guide (v2-to-fhir).

Pure functions: no reads, no writes. The segment maps (PID[Patient], PD1[Patient], PV1[Encounter], MRG) are applied
in `service.py`; docs/hl7-v2.md lists every field. Sources:
  * HL7 v2-to-FHIR IG: ConceptMap v2-0004 to Encounter Class, Table HL70004 to Encounter Status,
    Segment PV1[Encounter] (mappings/segments, github.com/HL7/v2-to-fhir), data type maps CX, XPN, XAD, XTN, PL.
  * NHS number in PID-3: CX.1 the number, CX.4 assigning authority NHS, CX.5 identifier type NH (NHS England
    North West Genomics / UK Core NHS Number identifier profiles: system https://fhir.nhs.uk/Id/nhs-number).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from joinedup.fhir import codes
from joinedup.interop.hl7.parse import Fault, comp, comps

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
V2_0007 = "http://terminology.hl7.org/CodeSystem/v2-0007"
V2_0023 = "http://terminology.hl7.org/CodeSystem/v2-0023"
V2_0069 = "http://terminology.hl7.org/CodeSystem/v2-0069"
V2_0112 = "http://terminology.hl7.org/CodeSystem/v2-0112"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
LOCATION_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
NHS_AUTHORITY = "NHS"
NHS_TYPE = "NH"
# identifiers the sending organisation assigns, namespaced by its ODS code
LOCAL_BASE = "https://joinedup.example/fhir/Id/ods/"

# ConceptMap v2-0004 -> Encounter.class (v2-to-fhir IG); codes it leaves unmapped keep their v2-0004 code
PATIENT_CLASS = {"E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"), "O": ("AMB", "ambulatory"),
                 "P": ("PRENC", "pre-admission")}
PATIENT_CLASS_TEXT = {"R": "Recurring patient", "B": "Obstetrics", "C": "Commercial Account", "N": "Not Applicable",
                      "U": "Unknown"}
# Table HL70004 -> Encounter.status (v2-to-fhir IG, used when PV1-45 is not valued)
CLASS_STATUS = {"E": "in-progress", "I": "in-progress", "O": "in-progress", "P": "planned", "R": "in-progress",
                "B": "in-progress"}
# HL7 table 0001 administrative sex -> AdministrativeGender (v2-to-fhir ConceptMap table-hl70001)
SEX = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
_ID_SAFE = re.compile(r"[^A-Za-z0-9\-.]")


def local_system(ods: str, kind: str) -> str:
    """The identifier system of something the sending organisation numbers (patient-number, visit-number, ...)."""
    return f"{LOCAL_BASE}{ods.upper()}/{kind}"


def safe_id(*parts: str) -> str:
    """A FHIR id (64 characters of [A-Za-z0-9-.]) made from parts, stable for the same parts."""
    text = "-".join(_ID_SAFE.sub("-", p.strip()).strip("-").lower() for p in parts if p and p.strip())
    if len(text) > 64:
        import hashlib

        text = text[:47].rstrip("-") + "-" + hashlib.sha1(text.encode()).hexdigest()[:16]
    return text or "x"


def ts(value: str, *, where: tuple[str, int] | None = None) -> str | None:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]) -> FHIR dateTime; raises Fault when malformed."""
    value = (value or "").strip()
    if not value or value == '""':
        return None
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?", value)
    if not m:
        if where:
            raise Fault("AE", 102, f"{where[0]}-{where[1]} '{value}' is not an HL7 date/time", where[0], where[1])
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    except ValueError:
        if where:
            raise Fault("AE", 102, f"{where[0]}-{where[1]} '{value}' is not a real date", where[0], where[1]) from None
        return None
    if not mo:
        return y
    if not d:
        return f"{y}-{mo}"
    if not h:
        return f"{y}-{mo}-{d}"
    zone = "Z" if not tz else f"{tz[:3]}:{tz[3:]}"
    return f"{y}-{mo}-{d}T{h}:{mi or '00'}:{s or '00'}{'.' + frac if frac else ''}{zone}"


def date_only(value: str | None) -> str | None:
    return value[:10] if value else None


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def later(a: str | None, b: str | None) -> bool:
    """Whether FHIR dateTime a is after b (both given)."""
    da, db = _dt(a), _dt(b)
    return da is not None and db is not None and da > db


def _dt(v: str | None) -> datetime | None:
    if not v:
        return None
    try:
        d = datetime.fromisoformat(v.replace("Z", "+00:00")) if "T" in v else datetime.fromisoformat(v[:10])
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


# -- identifiers ---------------------------------------------------------------------------------------------
def is_nhs(rep: str) -> bool:
    """PID-3 repetition carrying the NHS number: CX.5 'NH' or CX.4 assigning authority 'NHS'."""
    return comp(rep, 5).upper() == NHS_TYPE or comp(rep, 4).split("&")[0].upper() == NHS_AUTHORITY


# HL7 table 0203 identifier types -> the name of the sender's numbering
ID_KIND = {"MR": "patient-number", "PI": "patient-number", "PT": "patient-number", "AN": "account-number",
           "VN": "visit-number"}


def cx_identifier(rep: str, ods: str, *, default_kind: str = "patient-number") -> dict:
    """CX -> Identifier (v2-to-fhir CX[Identifier]): CX.1 value, CX.4 assigning authority -> system, CX.5 type."""
    c = comps(rep)
    value = c[0] if c else ""
    authority = (c[3] if len(c) > 3 else "").split("&")
    id_type = c[4] if len(c) > 4 else ""
    if is_nhs(rep):
        return {"system": codes.NHS_NUMBER, "value": value.replace(" ", ""),
                "type": {"coding": [{"system": V2_0203, "code": NHS_TYPE}]}}
    kind = ID_KIND.get(id_type.upper(), safe_id(id_type)) if id_type else default_kind
    if len(authority) >= 3 and authority[2].upper() == "ISO" and authority[1]:
        system = f"urn:oid:{authority[1]}"
    elif authority[0] and authority[0].upper() != ods.upper():
        system = local_system(ods, f"{safe_id(authority[0])}/{kind}")
    else:
        system = local_system(ods, kind)
    ident: dict = {"system": system, "value": value}
    if id_type:
        ident["type"] = {"coding": [{"system": V2_0203, "code": id_type}]}
    return ident


# -- demographics --------------------------------------------------------------------------------------------
NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous", "C": "old",
            "B": "official", "S": "anonymous", "U": "usual", "P": "usual", "R": "official", "T": "temp"}


def xpn_name(rep: str) -> dict | None:
    """XPN -> HumanName: XPN.1 family, XPN.2 and .3 given, XPN.4 suffix, XPN.5 prefix, XPN.7 use."""
    c = comps(rep) + [""] * 9
    family = c[0].split("&")[0]
    given = [g for g in (c[1], c[2]) if g]
    if not family and not given:
        return None
    name: dict = {}
    if NAME_USE.get(c[6].upper()):
        name["use"] = NAME_USE[c[6].upper()]
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if c[4]:
        name["prefix"] = [c[4]]
    if c[3]:
        name["suffix"] = [c[3]]
    return name


ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "M": "home", "P": "home"}


def xad_address(rep: str) -> dict | None:
    """XAD -> Address: XAD.1-.2 lines, .3 city, .4 district (state), .5 postal code, .6 country, .7 use."""
    c = comps(rep) + [""] * 8
    lines = [x for x in (c[0].split("&")[0], c[1]) if x]
    addr: dict = {}
    if ADDRESS_USE.get(c[6].upper()):
        addr["use"] = ADDRESS_USE[c[6].upper()]
    if lines:
        addr["line"] = lines
    for key, value in (("city", c[2]), ("district", c[3]), ("postalCode", c[4]), ("country", c[5])):
        if value:
            addr[key] = value
    return addr if len(addr) > ("use" in addr) else None


TELECOM_USE = {"PRN": "home", "ORN": "home", "WPN": "work", "VHN": "home", "ASN": "work", "EMR": "home",
               "NET": "home", "BPN": "work", "PRS": "mobile"}


def xtn_telecom(rep: str, default_use: str) -> dict | None:
    """XTN -> ContactPoint: XTN.1 (or .6/.7 area code and number, or .4 e-mail), XTN.2 use, XTN.3 equipment."""
    c = comps(rep) + [""] * 12
    equipment = c[2].upper()
    if equipment == "INTERNET" or c[1].upper() == "NET":
        value = c[3] or c[0]
        return {"system": "email", "value": value, "use": "home" if default_use == "home" else "work"} \
            if value else None
    value = c[0] or " ".join(x for x in (c[5], c[6]) if x)
    if not value:
        return None
    use = "mobile" if equipment == "CP" else TELECOM_USE.get(c[1].upper(), default_use)
    return {"system": "fax" if equipment == "FX" else "phone", "value": value, "use": use}


# -- visit ---------------------------------------------------------------------------------------------------
def encounter_class(pv1_2: str) -> dict:
    """PV1-2 -> Encounter.class (ConceptMap v2-0004 to Encounter Class)."""
    code = (pv1_2 or "").strip().upper()
    if code in PATIENT_CLASS:
        c, display = PATIENT_CLASS[code]
        return {"system": V3_ACT_CODE, "code": c, "display": display}
    if code in PATIENT_CLASS_TEXT:
        return {"system": V2_0004, "code": code, "display": PATIENT_CLASS_TEXT[code]}
    raise Fault("AE", 103, f"PV1-2 patient class '{pv1_2}' is not in HL7 table 0004", "PV1", 2)


def cwe_concept(rep: str, system: str | None = None) -> dict | None:
    """CWE/CE/IS -> CodeableConcept: .1 code, .2 text, .3 coding system (HL7nnnn -> the v2 code system)."""
    c = comps(rep) + [""] * 3
    code, text, cs = c[0], c[1], c[2]
    if not code and not text:
        return None
    concept: dict = {}
    if code:
        if cs.upper().startswith("HL7") and cs[3:].isdigit():
            sys_ = f"http://terminology.hl7.org/CodeSystem/v2-{cs[3:].zfill(4)}"
        else:
            sys_ = system if not cs else None
        coding = {"code": code}
        if sys_:
            coding = {"system": sys_, "code": code}
        if text:
            coding["display"] = text
        concept["coding"] = [coding]
    if text:
        concept["text"] = text
    return concept


def xcn(rep: str) -> tuple[str, str]:
    """XCN -> (id number, display name)."""
    c = comps(rep) + [""] * 7
    name = " ".join(x for x in (c[5], c[2], c[3], c[1]) if x)
    return c[0], name


def pl_parts(rep: str) -> dict[str, str]:
    """PL -> its parts: point of care, room, bed, facility, building, floor, description."""
    c = comps(rep) + [""] * 9
    return {"poc": c[0], "room": c[1], "bed": c[2], "facility": c[3].split("&")[0], "building": c[6],
            "floor": c[7], "description": c[8]}
