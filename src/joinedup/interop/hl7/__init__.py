"""HL7 v2 ADT in: MLLP listener, file drop, mapping to FHIR, acknowledgements and the dead-letter store."""
