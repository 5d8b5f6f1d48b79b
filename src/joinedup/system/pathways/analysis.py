"""Process figures from traces: the process map (directly-follows graph: how often one step is directly followed by
another, and the median wait between them), variants (the commonest sequences of steps), the gaps people fall
through and the guideline comparisons (knowledge/system/pathways.yaml).

`Figures` accumulates one trace at a time, so a whole population streams through it inside the gate, and `result()`
gives figures only: nested mappings of short names to numbers (Gate figure paths check that nothing else leaves).
Counts here are raw; `service.publish` suppresses small numbers before anyone sees them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from .definitions import code_of, pathways
from .events import Request, Trace

DAY = 86400.0
MAX_VARIANT_STEPS = 12  # a variant longer than this is cut, and its key ends in '>+'
TOP_VARIANTS = 15
TOP_EDGES = 40


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    def __contains__(self, when: datetime) -> bool:
        return self.start <= when < self.end


@dataclass(frozen=True)
class Promise:
    value: float
    working_days: bool

    def deadline(self, sent: datetime) -> datetime:
        if not self.working_days:
            return sent + timedelta(days=self.value)
        left, day = int(round(self.value)), sent
        while left > 0:
            day += timedelta(days=1)
            if day.weekday() < 5:
                left -= 1
        return day


def promise_from(p: dict[str, Any] | None) -> Promise | None:
    """A directory promise ({value, unit}, system/service.py promise_of) as days (hours and weeks converted)."""
    if not p or p.get("value") is None:
        return None
    unit = str(p.get("unit") or "").lower()
    value = float(p["value"])
    if "working" in unit:
        return Promise(value, True)
    if unit.startswith(("h", "hour")):
        return Promise(value / 24, False)
    if unit.startswith(("w", "wk", "week")):
        return Promise(value * 7, False)
    if unit.startswith(("mo", "month")):
        return Promise(value * 30, False)
    return Promise(value, False)


def _days(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / DAY


def _median(values: list[float]) -> float | None:
    return round(median(values), 1) if values else None


class Figures:
    """Streams traces; `result()` gives the figures for `period`, as at `now`."""

    def __init__(self, period: Period, now: datetime, promises: dict[str, Promise] | None = None) -> None:
        self.period, self.now = period, now
        self.promises = promises or {}
        self.defs = pathways()
        self.people = 0
        self.events = 0
        self.activities: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()
        self.edges: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.variants: Counter[str] = Counter()
        self.gaps = {g: [0, 0] for g in self.defs["gaps"]}  # [count, denominator]
        self.guides: dict[str, dict[str, Any]] = {g: {"within": 0, "denominator": 0, "days": []}
                                                   for g in self.defs["guidelines"]}

    # -- one person ---------------------------------------------------------------------------------------------
    def add(self, t: Trace) -> None:
        evs = [e for e in t.events if e.time in self.period]
        if evs:
            self.people += 1
            self.events += len(evs)
            for e in evs:
                self.activities[e.activity] += 1
            self.starts[evs[0].activity] += 1
            self.ends[evs[-1].activity] += 1
            for a, b in zip(evs, evs[1:]):
                self.edges[(a.activity, b.activity)].append(_days(a.time, b.time))
            self.variants[self._variant([e.activity for e in evs])] += 1
        self._discharge_gaps(t)
        self._request_gaps(t)
        self._task_gaps(t)

    @staticmethod
    def _variant(steps: list[str]) -> str:
        collapsed = [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s]  # runs of one step count once
        codes = [code_of(s) for s in collapsed[:MAX_VARIANT_STEPS]]
        return ">".join(codes) + (">+" if len(collapsed) > MAX_VARIANT_STEPS else "")

    def _first_follow_up(self, t: Trace, after: datetime) -> datetime | None:
        steps = set(self.defs["follow_up_steps"])
        return next((e.time for e in t.events if e.activity in steps and e.time > after), None)

    def _discharge_gaps(self, t: Trace) -> None:
        gap = self.defs["gaps"]["discharge-without-follow-up"]
        for d in t.discharges:
            if d.time not in self.period:
                continue
            follow = self._first_follow_up(t, d.time)
            window = d.time + timedelta(days=gap["within_days"])
            if window <= self.now and not (t.died and t.died <= window):
                self.gaps["discharge-without-follow-up"][1] += 1
                if follow is None or follow > window:
                    self.gaps["discharge-without-follow-up"][0] += 1
            for gid, g in self.defs["guidelines"].items():
                if g.get("after") != "discharge" or (g.get("cohort") == "copd-admission" and not d.copd):
                    continue
                window = d.time + timedelta(days=g["within_days"])
                if window > self.now or (t.died and t.died <= window):
                    continue
                acc = self.guides[gid]
                acc["denominator"] += 1
                if follow is not None:
                    acc["days"].append(_days(d.time, follow))
                    if follow <= window:
                        acc["within"] += 1

    def _promise(self, r: Request) -> Promise:
        gap = self.defs["gaps"]["advice-without-reply" if r.kind == "advice" else "referral-without-reply"]
        return self.promises.get(f"{r.kind}:{r.target}") or Promise(float(gap["default_days"]), False)

    def _request_gaps(self, t: Trace) -> None:
        for r in t.requests:
            if r.sent not in self.period:
                continue
            gid = "advice-without-reply" if r.kind == "advice" else "referral-without-reply"
            deadline = self._promise(r).deadline(r.sent)
            if deadline > self.now:
                continue  # its promised time has not passed yet
            if r.answered is None and r.closed:
                continue  # completed or withdrawn with no dated answer: not counted either way
            self.gaps[gid][1] += 1
            if r.answered is None or r.answered > deadline:
                self.gaps[gid][0] += 1

    def _task_gaps(self, t: Trace) -> None:
        for task in t.tasks:
            if task.open and task.cross_organisation and task.authored is not None and task.authored in self.period:
                self.gaps["task-overdue-across-organisations"][1] += 1
                if task.due is not None and task.due < self.now:
                    self.gaps["task-overdue-across-organisations"][0] += 1

    # -- the figures --------------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        edges = sorted(self.edges.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        return {
            "people": self.people,
            "events": self.events,
            "activities": {code_of(a): n for a, n in sorted(self.activities.items())},
            "starts": {code_of(a): n for a, n in sorted(self.starts.items())},
            "ends": {code_of(a): n for a, n in sorted(self.ends.items())},
            "edges": {f"{code_of(a)}>{code_of(b)}": {"count": len(w), "median_days": _median(w)}
                      for (a, b), w in edges[:TOP_EDGES]},
            "edge_kinds": len(self.edges),
            "variants": dict(self.variants.most_common(TOP_VARIANTS)),
            "variant_kinds": len(self.variants),
            "gaps": {g: {"count": c, "denominator": d} for g, (c, d) in self.gaps.items()},
            "guidelines": {g: {"within": a["within"], "denominator": a["denominator"],
                               "median_days": _median(a["days"])} for g, a in self.guides.items()},
        }
