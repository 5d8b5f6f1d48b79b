"""The notification event: what the people caring for a person should hear about (shared by the notification
service and the domains that raise events, such as virtual-ward reading alerts)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Event:
    """Something the people who care about a person should hear about."""

    type: str
    patient_id: str
    source_ref: str
    title: str
    detail: str = ""
    occurred: str | None = None
    also_to: set[str] = field(default_factory=set)   # practitioner ids the event is addressed to
    also_orgs: set[str] = field(default_factory=set)  # organisation ids the event is addressed to (their staff)
    queued_at: float = 0.0
