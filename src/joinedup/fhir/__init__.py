"""JoinedUp fhir domain."""
