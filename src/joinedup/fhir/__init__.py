"""FHIR R4 at the edge: the shared language every other package speaks.

* `validation` full validation (structure, R4B models, required value sets, NHS numbers); `fastvalid` the fast
  structural validator compiled from the models; `nhs_number` the modulus 11 check;
* `search_params` search-parameter definitions (the FHIR R4 definitions in `definitions/`) compiled into extractors;
* `bundles` Bundle checks and reference rewriting; `errors` OperationOutcome errors; `values` small readers;
* `codes` code systems, identifier systems and extension URLs.
"""
