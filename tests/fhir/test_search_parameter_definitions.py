"""The FHIR R4 search-parameter data file is well formed and covers the types the platform uses."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml

REQUIRED_TYPES = {
    "Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "RelatedPerson",
    "Condition", "MedicationRequest", "MedicationStatement", "AllergyIntolerance", "Observation",
    "Encounter", "EpisodeOfCare", "Procedure", "Immunization", "DocumentReference", "CarePlan",
    "CareTeam", "Goal", "Task", "ServiceRequest", "Communication", "Appointment", "Flag", "Consent",
    "Provenance", "AuditEvent", "Device", "DiagnosticReport", "Medication", "Subscription", "Group",
    "Questionnaire", "QuestionnaireResponse", "ClinicalImpression", "NutritionOrder",
    "MedicationAdministration", "MedicationDispense",
}

# All FHIR R4 (4.0.1) resource type names.
R4_RESOURCE_TYPES = {
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment",
    "AppointmentResponse", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
    "BodyStructure", "Bundle", "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry",
    "ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse", "ClinicalImpression",
    "CodeSystem", "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition",
    "ConceptMap", "Condition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
    "DeviceRequest", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest",
    "DocumentReference", "EffectEvidenceSynthesis", "Encounter", "Endpoint", "EnrollmentRequest",
    "EnrollmentResponse", "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable",
    "ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal",
    "GraphDefinition", "Group", "GuidanceResponse", "HealthcareService", "ImagingStudy",
    "Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation", "ImplementationGuide",
    "InsurancePlan", "Invoice", "Library", "Linkage", "List", "Location", "Measure",
    "MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
    "MedicationKnowledge", "MedicationRequest", "MedicationStatement", "MedicinalProduct",
    "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect", "MessageDefinition", "MessageHeader", "MolecularSequence",
    "NamingSystem", "NutritionOrder", "Observation", "ObservationDefinition", "OperationDefinition",
    "OperationOutcome", "Organization", "OrganizationAffiliation", "Parameters", "Patient",
    "PaymentNotice", "PaymentReconciliation", "Person", "PlanDefinition", "Practitioner",
    "PractitionerRole", "Procedure", "Provenance", "Questionnaire", "QuestionnaireResponse",
    "RelatedPerson", "RequestGroup", "ResearchDefinition", "ResearchElementDefinition",
    "ResearchStudy", "ResearchSubject", "RiskAssessment", "RiskEvidenceSynthesis", "Schedule",
    "SearchParameter", "ServiceRequest", "Slot", "Specimen", "SpecimenDefinition",
    "StructureDefinition", "StructureMap", "Subscription", "Substance", "SubstanceNucleicAcid",
    "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial", "SubstanceSpecification", "SupplyDelivery", "SupplyRequest", "Task",
    "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet", "VerificationResult",
    "VisionPrescription",
}

PARAM_TYPES = {"token", "string", "date", "reference", "quantity", "uri", "number", "composite"}
ENGINE_PARAMS = {"_id", "_lastUpdated", "_source", "_profile", "_tag", "_security"}
PARAM_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PATH_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[x\])?(\[[A-Za-z]+=[^\]]+\])?$")


@pytest.fixture(scope="module")
def definitions() -> dict:
    text = resources.files("joinedup.fhir").joinpath("search_parameters.yaml").read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _params(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def test_every_required_type_is_defined(definitions: dict) -> None:
    missing = REQUIRED_TYPES - definitions.keys()
    assert not missing, f"types missing from search_parameters.yaml: {sorted(missing)}"
    unknown = set(definitions) - R4_RESOURCE_TYPES
    assert not unknown, f"not R4 resource types: {sorted(unknown)}"


def test_params_are_well_formed(definitions: dict) -> None:
    problems = []
    for rtype, spec in definitions.items():
        assert isinstance(spec, dict), rtype
        assert _params(spec), f"{rtype} defines no search parameters"
        for key in spec:
            if key.startswith("_"):
                if key in ENGINE_PARAMS:
                    problems.append(f"{rtype}.{key}: handled by the engine, do not define")
                elif key != "_compartment":
                    problems.append(f"{rtype}.{key}: unknown directive")
        for name, p in _params(spec).items():
            where = f"{rtype}.{name}"
            if not PARAM_NAME.match(name):
                problems.append(f"{where}: bad parameter name")
            if not isinstance(p, dict) or p.get("type") not in PARAM_TYPES:
                problems.append(f"{where}: bad type {p!r}")
                continue
            if set(p) - {"type", "path", "target", "components"}:
                problems.append(f"{where}: unknown keys {sorted(set(p) - {'type', 'path', 'target', 'components'})}")
            if p["type"] == "composite":
                comps = p.get("components") or []
                if not comps:
                    problems.append(f"{where}: composite without components")
                for c in comps:
                    if c not in spec or c.startswith("_"):
                        problems.append(f"{where}: component {c!r} is not a parameter of {rtype}")
                continue
            paths = p.get("path")
            if not isinstance(paths, list) or not paths:
                problems.append(f"{where}: empty path")
                continue
            for path in paths:
                if not isinstance(path, str) or not all(PATH_SEGMENT.match(s) for s in path.split(".")):
                    problems.append(f"{where}: bad path {path!r}")
                elif path.split(".")[0] == rtype:
                    problems.append(f"{where}: path must not start with the type name")
            if "target" in p:
                if p["type"] != "reference":
                    problems.append(f"{where}: target on a non-reference parameter")
                bad = [t for t in p["target"] or [] if t not in R4_RESOURCE_TYPES]
                if bad or not p["target"]:
                    problems.append(f"{where}: bad target {p['target']!r}")
    assert not problems, "\n".join(problems)


def test_compartment_entries_name_defined_reference_params(definitions: dict) -> None:
    problems = []
    for rtype, spec in definitions.items():
        for name in spec.get("_compartment") or []:
            if name in ("_id", "link"):
                continue
            p = spec.get(name)
            if not isinstance(p, dict):
                problems.append(f"{rtype}: compartment param {name!r} is not defined")
            elif p.get("type") != "reference":
                problems.append(f"{rtype}: compartment param {name!r} is not a reference")
    assert not problems, "\n".join(problems)


def test_key_patient_compartment_memberships(definitions: dict) -> None:
    # Spot checks against the R4 patient CompartmentDefinition.
    expect = {
        "Condition": {"patient", "asserter"},
        "Observation": {"subject", "performer"},
        "MedicationRequest": {"subject"},
        "AllergyIntolerance": {"patient", "recorder", "asserter"},
        "Communication": {"subject", "sender", "recipient"},
        "Appointment": {"actor"},
        "DocumentReference": {"subject", "author"},
        "Patient": {"link"},
        "Device": {"patient"},  # JoinedUp's deliberate additions to the R4 compartment (see the YAML comments)
        "Task": {"patient"},
    }
    for rtype, params in expect.items():
        assert set(definitions[rtype]["_compartment"]) == params, rtype
    for rtype in ("Practitioner", "Organization", "Location", "Medication"):
        assert not definitions[rtype].get("_compartment"), rtype


def test_patient_params_are_restricted_to_patient(definitions: dict) -> None:
    for rtype, spec in definitions.items():
        p = spec.get("patient")
        if p is not None:
            assert p["type"] == "reference" and p.get("target") == ["Patient"], rtype
