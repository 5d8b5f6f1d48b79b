"""Notifications: `service` after-commit events delivered to inboxes (the background worker fed by the gate);
`subscriptions` FHIR Subscription checks and rest-hook delivery; `routes` the inbox API and pages.
"""
