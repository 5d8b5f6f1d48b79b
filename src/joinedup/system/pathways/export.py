"""The event log for process-mining tools: XES (IEEE 1849-2016, XES 2.0) and OCEL 2.0 JSON.

XES: one trace per person (`concept:name` the person's id, or pseudonym in a de-identified log), one event per step
with `concept:name` (the step's name), `time:timestamp`, `org:resource` and `org:group` (the organisation that
recorded or performed the step), `lifecycle:transition` (complete) and `joinedup:source` (the FHIR resource it
came from). Written without a default namespace, as the standard's XML Schema declares its elements, with the
Concept, Time, Organizational and Lifecycle extensions, globals and an Activity classifier.

OCEL 2.0: `objectTypes`, `eventTypes`, `objects` and `events`, each event related to the objects it concerns
(person, organisation, referral - referrals and advice requests -, encounter, task, care plan, episode) with a
qualifier; each object other than a person or organisation is related to its person ("of-person"). Attribute values
are strings, as the published JSON schema declares them.

In a de-identified log dates are cut to the month: each such event carries `joinedup:time-precision` = month
(XES) / `time-precision` (OCEL) and its time is the first instant of that month; the order of steps within a month
is the steps' usual order (knowledge/system/pathways.yaml `order`), not their true order.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import IO, Any
from xml.sax.saxutils import quoteattr

import orjson

from .definitions import activities, name_of
from .events import Trace

XES_EXTENSIONS = (("Concept", "concept", "http://www.xes-standard.org/concept.xesext"),
                  ("Time", "time", "http://www.xes-standard.org/time.xesext"),
                  ("Organizational", "org", "http://www.xes-standard.org/org.xesext"),
                  ("Lifecycle", "lifecycle", "http://www.xes-standard.org/lifecycle.xesext"))
OBJECT_TYPES = ("person", "organisation", "referral", "encounter", "task", "care-plan", "episode")


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S") + ".000Z"


def _attr(kind: str, key: str, value: str) -> str:
    return f"<{kind} key={quoteattr(key)} value={quoteattr(value)}/>"


def write_xes(traces: Iterable[Trace], out: IO[str], *, description: str) -> dict[str, int]:
    """Stream traces as an XES log into `out`; returns {traces, events}."""
    counts = {"traces": 0, "events": 0}
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<log xes.version="2.0" xes.features="">\n')
    for name, prefix, uri in XES_EXTENSIONS:
        out.write(f"  <extension name={quoteattr(name)} prefix={quoteattr(prefix)} uri={quoteattr(uri)}/>\n")
    out.write('  <global scope="trace">' + _attr("string", "concept:name", "UNKNOWN") + "</global>\n")
    out.write('  <global scope="event">' + _attr("string", "concept:name", "UNKNOWN")
              + _attr("date", "time:timestamp", "1970-01-01T00:00:00.000Z")
              + _attr("string", "org:resource", "UNKNOWN") + _attr("string", "lifecycle:transition", "complete")
              + "</global>\n")
    out.write('  <classifier name="Activity" keys="concept:name"/>\n')
    out.write("  " + _attr("string", "concept:name", description) + "\n")
    for t in traces:
        if not t.events:
            continue
        counts["traces"] += 1
        out.write("  <trace>" + _attr("string", "concept:name", f"Patient/{t.person}") + "\n")
        for e in t.events:
            counts["events"] += 1
            org = e.organisation or "UNKNOWN"
            parts = [_attr("string", "concept:name", name_of(e.activity)), _attr("date", "time:timestamp", iso(e.time)),
                     _attr("string", "org:resource", org), _attr("string", "org:group", org),
                     _attr("string", "lifecycle:transition", "complete"), _attr("string", "joinedup:source", e.source)]
            if e.precision not in ("instant", "day"):
                parts.append(_attr("string", "joinedup:time-precision", e.precision))
            out.write("    <event>" + "".join(parts) + "</event>\n")
        out.write("  </trace>\n")
    out.write("</log>\n")
    return counts


def ocel(traces: Iterable[Trace]) -> dict[str, Any]:
    """The traces as one OCEL 2.0 JSON document."""
    objects: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    used_types: set[str] = set()
    for t in traces:
        person = f"Patient/{t.person}"
        for e in t.events:
            used_types.add(e.activity)
            rels = []
            for otype, oid, qualifier in e.objects:
                obj = objects.get(oid)
                if obj is None:
                    obj = objects[oid] = {"id": oid, "type": otype, "attributes": [], "relationships": []}
                    if otype not in ("person", "organisation"):
                        obj["relationships"].append({"objectId": person, "qualifier": "of-person"})
                rels.append({"objectId": oid, "qualifier": qualifier})
            request = next((oid for otype, oid, q in e.objects if otype == "referral" and q == "request"), None)
            to = next((oid for otype, oid, q in e.objects if otype == "organisation" and q == "to"), None)
            if request and to and {"objectId": to, "qualifier": "addressed-to"} not in objects[request]["relationships"]:
                objects[request]["relationships"].append({"objectId": to, "qualifier": "addressed-to"})
            attrs = [{"name": "source", "value": e.source}]
            if e.precision not in ("instant", "day"):
                attrs.append({"name": "time-precision", "value": e.precision})
            events.append({"id": f"e{len(events) + 1}", "type": name_of(e.activity), "time": iso(e.time),
                           "attributes": attrs, "relationships": rels})
    event_types = [{"name": v["name"], "attributes": [{"name": "source", "type": "string"},
                                                      {"name": "time-precision", "type": "string"}]}
                   for k, v in sorted(activities().items(), key=lambda kv: kv[1]["order"]) if k in used_types]
    return {"objectTypes": [{"name": o, "attributes": []} for o in OBJECT_TYPES],
            "eventTypes": event_types,
            "objects": list(objects.values()),
            "events": events}


def write_ocel(traces: Iterable[Trace], out: IO[bytes]) -> dict[str, int]:
    doc = ocel(traces)
    out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return {"objects": len(doc["objects"]), "events": len(doc["events"])}
