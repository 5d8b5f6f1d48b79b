"""Information governance: the one gate, the one policy decision point, the one audit writer.

* `gate` `Gate`: every read and write of data is checked, audited and only then touches the store (which only it
  holds); `policy` `decide()` and the roles in `roles.yaml`; `facts` relationships, choices, seals and confirmed
  links derived from FHIR writes;
* `audit` the keyed, checkpointed, durable audit chain; `identity` principals, passwords, tokens, sign-in
  throttling; `accounts` user and token operations through the gate;
* `service` break-glass and its review queue, link requests, choice changes, subject access; `platform` the
  platform's own tables (inbox, preferences, export jobs); `deid` de-identification and small-number suppression;
* `cli` the privacy and audit commands.
"""
