"""Care coordination across organisations (each service a plain module, its routes beside it).

* `plans` personalised care and support plan (what matters, goals, owned actions); `team` key worker and care team;
  `tasks` tasks, overdue escalation; `reviews` merging single-condition reviews into the plan;
* `referrals` referrals and advice-and-guidance conversations; `mdt` multidisciplinary reviews and their decisions;
* `journey` where the person is in the system; `virtual_wards` remote monitoring with limits and alerts;
* `notifications` after-commit events delivered to inboxes; `subscriptions` FHIR Subscription checks;
* `*_routes` the API and pages of each; `cli` the care commands.
"""
