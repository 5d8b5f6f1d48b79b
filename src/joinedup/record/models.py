"""The holistic view of a person: pydantic schemas of the summary (sections follow the PRSB Core Information
Standard headings where they apply) and the timeline."""

from __future__ import annotations

from pydantic import BaseModel, Field

# Care settings, derived from the organisation that recorded an item.
SETTINGS = ("GP practice", "Hospital", "Community", "Mental health", "Social care", "Pharmacy", "Care home",
            "Other")

# Section headings: PRSB Core Information Standard (v2) section names where one applies.
HEADINGS = {
    "person": "Person demographics",
    "gp": "GP practice",
    "professional_contacts": "Professional contacts",
    "personal_contacts": "Personal contacts",
    "about_me": "About me: what matters to me",
    "alerts": "Alerts",
    "problems": "Problems and issues",
    "medications": "Medications and medical devices",
    "allergies": "Allergies and adverse reactions",
    "results": "Investigation results",
    "encounters": "Encounters and events",
    "referrals": "Referrals and advice requests",
    "social_care": "Social care and support",
}


class Source(BaseModel):
    """The organisation that recorded an item, and the setting it belongs to."""

    id: str | None = Field(None, description="Organization id (meta.source)")
    name: str = "Unknown organisation"
    setting: str = "Other"


class Provenance(BaseModel):
    """Where one fact came from and how fresh it is."""

    ref: str = Field(..., description="Type/id of the FHIR resource")
    source: Source
    recorded: str | None = Field(None, description="clinical date the item was recorded or asserted")
    last_updated: str | None = Field(None, description="when the shared record last changed (meta.lastUpdated)")


class Person(BaseModel):
    id: str
    name: str
    nhs_number: str | None = None
    birth_date: str | None = None
    age: int | None = None
    gender: str | None = None
    address: str | None = None
    telecom: list[str] = []
    deceased: bool = Field(False, description="Patient.deceased[x] on any of the person's linked records")
    deceased_date: str | None = Field(None, description="date of death (deceasedDateTime), when recorded")
    provenance: Provenance


class SectionAccess(BaseModel):
    """Whether a section is empty because nothing is recorded, or because entries are not shown to this reader.

    `not_shown_to_role` counts, by kind, entries the reader's role may not see (the gate's count: no content);
    `withheld_at_request` says only that some entries are withheld at the person's request (marked private, or an
    objection to sharing), and `restricted` that some are sealed by the organisation that recorded them."""

    shown: int = Field(0, description="items shown in the section")
    state: str = Field("shown", description="shown, none recorded, not shown to your role, withheld at the "
                                            "person's request or restricted by the recording organisation")
    not_shown_to_role: dict[str, int] = Field({}, description="kind of entry -> number the role may not see")
    withheld_at_request: bool = False
    restricted: bool = False
    note: str | None = Field(None, description="the same in plain words, for the reader")
    role_note: str | None = Field(None, description="only what is not shown to the reader's role, in plain words "
                                                    "(the person page says once, at the top, what is withheld)")


class NextStep(BaseModel):
    what: str
    when: str | None = None
    kind: str
    status: str | None = None
    provenance: Provenance


class Professional(BaseModel):
    name: str
    role: str | None = None
    organisation: str | None = None
    practitioner_id: str | None = None
    provenance: Provenance | None = None


class GpPractice(BaseModel):
    practice: str | None = None
    practice_id: str | None = None
    usual_gp: str | None = None
    usual_gp_id: str | None = None


class ProblemEntry(BaseModel):
    display: str
    status: str | None = None
    onset: str | None = None
    provenance: Provenance


class Problem(BaseModel):
    """One problem, de-duplicated across organisations (by SNOMED code, else by normalised text)."""

    key: str
    display: str
    code: str | None = None
    system: str | None = None
    active: bool = True
    onset: str | None = None
    entries: list[ProblemEntry]
    notes: list[str] = []


class MedicineEntry(BaseModel):
    kind: str = Field(..., description="prescription (MedicationRequest) or statement (MedicationStatement)")
    product: str
    dose: str | None = None
    status: str
    date: str | None = None
    note: str | None = None
    earlier: int = Field(0, description="earlier entries from the same organisation, superseded by this one")
    provenance: Provenance


class Flag(BaseModel):
    kind: str
    severity: str = "warning"
    text: str


class Medicine(BaseModel):
    """One medicine (by ingredient) reconciled across settings, with every organisation's latest entry."""

    key: str
    name: str
    current: bool
    entries: list[MedicineEntry]
    flags: list[Flag] = []


class Allergy(BaseModel):
    substance: str
    reaction: str | None = None
    criticality: str | None = None
    status: str | None = None
    provenance: Provenance


class ResultPoint(BaseModel):
    date: str
    value: float


class Result(BaseModel):
    """Latest value of one test (LOINC code) with its trend."""

    code: str
    display: str
    unit: str | None = None
    latest: float
    latest_date: str
    previous: float | None = None
    trend: str = Field("none", description="up, down, steady or none")
    points: list[ResultPoint] = []
    count: int = 0
    full_name: str | None = Field(None, description="the test's name as coded (display is the short name)")
    low: float | None = Field(None, description="lower limit of the reference range")
    high: float | None = Field(None, description="upper limit of the reference range")
    range_source: str | None = Field(None, description="where the range comes from: 'the result itself' or the "
                                                        "cited default (knowledge/record/results.yaml)")
    range_verified: bool = True
    flag: str | None = Field(None, description="high, low, abnormal or normal (interpretation, else range)")
    better: str | None = Field(None, description="higher, lower or in-range: which way is clinically better")
    trend_meaning: str = Field("none", description="better, worse, steady, changed or none")
    provenance: Provenance


class Event(BaseModel):
    """One contact or event on the timeline across settings."""

    date: str | None
    end: str | None = None
    kind: str = Field(..., description="Encounter, Appointment, EpisodeOfCare, ServiceRequest, ...")
    type: str = Field(..., description="encounter, appointment, episode, referral, advice, document")
    title: str
    detail: str | None = None
    status: str | None = None
    setting: str
    upcoming: bool = False
    provenance: Provenance


class Referral(BaseModel):
    kind: str = Field(..., description="referral, advice request or correction request")
    title: str
    status: str
    date: str | None = None
    to: str | None = None
    detail: str | None = None
    provenance: Provenance


class CarePackage(BaseModel):
    title: str
    status: str | None = None
    start: str | None = None
    end: str | None = None
    manager: str | None = None
    provenance: Provenance


class Carer(BaseModel):
    name: str
    relationship: str | None = None
    telecom: list[str] = []
    provenance: Provenance


class Alert(BaseModel):
    text: str
    category: str | None = None
    provenance: Provenance


class WhatMatters(BaseModel):
    text: str
    written_by: str | None = Field(None, description="who wrote it, e.g. 'the person' or 'a carer on their behalf'")
    provenance: Provenance


class Summary(BaseModel):
    """One screen's worth of a person across GP, hospital, community, mental health and social care."""

    person: Person
    gp_practice: GpPractice
    key_worker: Professional | None = None
    care_team: list[Professional] = []
    problems: list[Problem] = []
    medicines: list[Medicine] = []
    allergies: list[Allergy] = []
    results: list[Result] = []
    timeline: list[Event] = []
    referrals: list[Referral] = []
    social_care: list[CarePackage] = []
    carers: list[Carer] = []
    alerts: list[Alert] = []
    what_matters: list[WhatMatters] = []
    next_steps: list[NextStep] = Field([], description="booked appointments and open referrals, soonest first")
    warnings: list[Alert] = Field([], description="resuscitation decisions and similar flags for the banner")
    access: dict[str, SectionAccess] = Field({}, description="per section: none recorded vs not shown to this "
                                                             "reader vs withheld at the person's request")
    organisations: list[Source] = Field([], description="every organisation that contributed to this view")
    linked_records: list[str] = Field([], description="other records of the same person (same NHS number)")
    headings: dict[str, str] = HEADINGS
    resources: int = Field(0, description="resources the view was built from")
    generated: str


class Timeline(BaseModel):
    patient: str
    total: int
    settings: list[str]
    types: list[str]
    events: list[Event]
