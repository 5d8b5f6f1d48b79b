"""Shared vocabulary: the code systems, identifier systems and extension URLs JoinedUp reads and writes.

One place for every URL, so that no domain copies another's constant (or imports its internals to get it).
External systems are cited by their canonical URLs (HL7 terminology, NHS England identifiers); JoinedUp's own
code systems and extensions live under https://joinedup.example/fhir/.
"""

from __future__ import annotations

# -- identifiers (NHS England) -----------------------------------------------------------------------------
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORGANIZATION = "https://fhir.nhs.uk/Id/ods-organization-code"

# -- terminologies -----------------------------------------------------------------------------------------
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"

# -- JoinedUp's own code systems ---------------------------------------------------------------------------
CODE_SYSTEM = "https://joinedup.example/fhir/CodeSystem/"
DATA_SHARING = CODE_SYSTEM + "data-sharing"  # national-data-opt-out, private
REQUEST_CATEGORY = CODE_SYSTEM + "request-category"
CONVERSATION_MESSAGE = CODE_SYSTEM + "conversation-message"
CARE_SETTING = CODE_SYSTEM + "care-setting"
VIRTUAL_WARD_TAG = CODE_SYSTEM + "virtual-ward"
CARE_PLAN_KIND = CODE_SYSTEM + "care-plan-kind"
PERSON_REQUEST = CODE_SYSTEM + "person-request"
TASK_BUSINESS_STATUS = CODE_SYSTEM + "task-business-status"
CARE_PLAN_CODE = "personalised-care-and-support-plan"  # in CARE_PLAN_KIND: the shared personalised care plan
# A person's request to correct their record (a Communication category)
CORRECTION_REQUEST = {"system": PERSON_REQUEST, "code": "correction", "display": "Request to correct my record"}
# A person's message to their care team from their own portal (a Communication category)
PERSON_MESSAGE = {"system": PERSON_REQUEST, "code": "message", "display": "Message to my care team"}
# A carer's or proxy's access granted by the person: the Consent's provision.actor role (after the "delegatee" of the
# RelatedPerson Consent IG, build.fhir.org/ig/JohnMoehrke/RelatedPersonConsent), and the identifier system of the
# JoinedUp account the carer signs in with (on the actor's reference)
PROXY_ROLE = {"system": CODE_SYSTEM + "proxy-role", "code": "delegatee",
              "display": "Carer or proxy the person has given access to their record"}
USER_ACCOUNT = "https://joinedup.example/fhir/Id/user-account"

# -- JoinedUp's own extensions -----------------------------------------------------------------------------
EXTENSION = "https://joinedup.example/fhir/StructureDefinition/"
LAST_EDITED_BY = EXTENSION + "last-edited-by"
AUDIT_CHAIN = EXTENSION + "audit-chain"
TASK_OWNER_ORGANIZATION = EXTENSION + "task-owner-organization"
VIRTUAL_WARD_CAPACITY = EXTENSION + "virtual-ward-capacity"
VIRTUAL_WARD = EXTENSION + "virtual-ward"
ADMISSION_DECIDED_BY = EXTENSION + "admission-decided-by"
MONITORING_LIMITS = EXTENSION + "monitoring-limits"
WHAT_MATTERS_WRITTEN_BY = EXTENSION + "what-matters-written-by"
