"""`Notifier.holding()`: a thread that applies batch after batch (the HL7 listener) raises its own writes' notifications
on its own thread (with its next batch, or on their own), instead of the worker thread. Nothing is lost or sent
twice, the same people are told, and `flush()` waits for what a thread holds as for what is queued."""

from __future__ import annotations

from joinedup.care.notifications import service as notifications
from joinedup.governance.identity import SYSTEM
from tests.care.test_notifications import admission, drop_users, make_world


def _inbox(gate, user: str) -> list[dict]:
    from joinedup.governance.accounts import get_user

    return notifications.inbox(gate=gate, who=get_user(gate, user))["items"]


def test_held_writes_are_told_on_delivery_once_and_flush_waits_for_them(server, uid):
    gate = server.gate
    world = make_world(gate, uid)
    try:
        notifier = notifications.install(gate)
        assert notifier.flush(10)
        held = notifier.holding()
        with held:
            enc = gate.create(SYSTEM, admission(world))
        ref = f"Encounter/{enc.id}"
        # held, not queued: nobody is told yet, and flush says it is not done
        assert not notifier.flush(0.3)
        assert [i for i in _inbox(gate, f"gp.{uid}") if i["source"] == ref] == []
        held.ready().finish()  # delivered on their own (no transaction to write them with)
        assert notifier.flush(0.1)
        for who in ("gp", "cons", "kw", "nurse"):
            got = [i for i in _inbox(gate, f"{who}.{uid}") if i["source"] == ref]
            assert [(i["event"], i["count"]) for i in got] == [("admission", 1)], who
        assert _inbox(gate, f"out.{uid}") == []
        assert held.ready() is None  # handed over once: nothing left to tell twice
        assert [i["count"] for i in _inbox(gate, f"gp.{uid}") if i["source"] == ref] == [1]
        # a write on another thread (or after the block) still goes to the worker
        enc2 = gate.create(SYSTEM, admission(world))
        assert notifier.flush(10)
        assert any(i["source"] == f"Encounter/{enc2.id}" for i in _inbox(gate, f"gp.{uid}"))
    finally:
        drop_users(gate, uid)
