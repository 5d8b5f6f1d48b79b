"""Care coordination across organisations: one sub-package per service, each with its `service` (and helpers)
and its `routes` (API and pages) beside it.

* `plans` personalised care and support plan (`service`), key worker and care team (`team`), tasks and overdue
  escalation (`tasks`), merging single-condition reviews into the plan (`reviews`);
* `referrals` referrals and advice-and-guidance conversations; `mdt` multidisciplinary reviews and their decisions;
* `journey` where the person is in the system; `wards` virtual wards: remote monitoring with limits and alerts;
* `notifications` after-commit events delivered to inboxes (`service`) and FHIR Subscription checks
  (`subscriptions`); `cli` the care commands.
"""
