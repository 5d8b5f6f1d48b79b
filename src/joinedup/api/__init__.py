"""The platform's HTTP APIs and what wraps every request.

* `fhir_routes` FHIR R4 REST (`/fhir`: read, vread, search, history, create/update/delete, batch/transaction,
  `$everything`); `capability` the CapabilityStatement; `export` Bulk Data `$export`;
* `auth` bearer tokens, the OAuth2 password grant (throttled) and log-out;
* `governance_routes` break-glass, its review queue, a person's access log; `privacy_routes` link requests and
  changes to people's choices;
* `security` trusted hosts, CSRF, security headers; `limits` body size, bundle entries, bad text;
* `responses` the FHIR JSON response and the OperationOutcome error handlers.
"""
