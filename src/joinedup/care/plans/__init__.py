"""Personalised care and support plans: `service` the plan itself (what matters, goals, owned actions); `team` the key
worker and care team; `tasks` tasks, my people and overdue escalation; `reviews` merging single-condition reviews into
the plan; `routes` their API and pages.
"""
