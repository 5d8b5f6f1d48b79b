"""The acute trust's HL7 v2.4 ADT feed for the encounters the generator made (`joinedup generate --hl7`).

For every hospital inpatient stay (class IMP) an A01 admission at its start and an A03 discharge at its end, and for
every A&E attendance (class EMER) an A04 registration and an A03 at its end, in time order across the population,
written to `hl7/adt-feed.hl7` (segments end with CR, one message per MSH). PID-3 carries the hospital number (the
person's id) and the NHS number (CX.4 NHS, CX.5 NH); PV1-19 is the visit number the generated Encounter carries, so
loading the FHIR files and then the feed updates the same encounters. People the generator gives no NHS number are
left out: the loaded record has no hospital number to find them by.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from joinedup.synth.person import NHS

FEED_DIR = "hl7"
FEED_FILE = "adt-feed.hl7"


def read_ndjson(out: Path, rtype: str) -> Iterator[dict]:
    """The generated resources of one type (every chunk file, in order)."""
    for p in sorted(out.glob(f"{rtype}.*ndjson")):
        if p.name.split(".")[0] == rtype:
            with open(p, "rb") as fh:
                for line in fh:
                    yield orjson.loads(line)


def _esc(value: str) -> str:
    value = str(value).replace("\\", "\\E\\")
    for ch, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        value = value.replace(ch, f"\\{code}\\")
    return value.replace("\r", " ").replace("\n", " ")


def _ts(iso: str | None) -> str:
    """FHIR dateTime (the generator's UTC 'YYYY-MM-DDTHH:MM:SSZ' or a date) -> HL7 TS."""
    if not iso:
        return ""
    digits = iso.replace("-", "").replace(":", "").replace("T", "").replace("Z", "")
    return digits[:14] + ("+0000" if len(digits) >= 12 else "")


def _pv1(**fields: str) -> str:
    parts = ["PV1"] + [""] * 54
    for key, value in fields.items():
        parts[int(key[1:])] = value
    return "|".join(parts).rstrip("|")


def write_feed(out: Path, *, ods: str | None = None) -> int:
    """Write the feed into `out/hl7/`; returns the number of messages."""
    orgs = {o["id"]: o for o in read_ndjson(out, "Organization")}
    acute = orgs.get("org-acute")
    if acute is None:
        return 0
    ods = ods or next(i["value"] for i in acute.get("identifier") or [] if "ods" in i.get("system", ""))
    locations = {loc["id"]: loc.get("name", loc["id"]) for loc in read_ndjson(out, "Location")}
    people: dict[str, dict] = {}
    for p in read_ndjson(out, "Patient"):
        nhs = next((i["value"] for i in p.get("identifier") or [] if i.get("system") == NHS), None)
        if nhs:
            people[p["id"]] = {**p, "_nhs": nhs}
    events: list[tuple[str, int, str]] = []
    n = 0
    for enc in read_ndjson(out, "Encounter"):
        if (enc.get("serviceProvider") or {}).get("reference") != "Organization/org-acute":
            continue
        cls = (enc.get("class") or {}).get("code")
        if cls not in ("IMP", "EMER"):
            continue
        pid = (enc.get("subject") or {}).get("reference", "").split("/")[-1]
        person = people.get(pid)
        if person is None:
            continue
        period = enc.get("period") or {}
        loc_id = next(((x.get("location") or {}).get("reference", "").split("/")[-1]
                       for x in enc.get("location") or []), "")
        ward = locations.get(loc_id, "")
        name = (person.get("name") or [{}])[0]
        addr = (person.get("address") or [{}])[0]
        pid_seg = "|".join([
            "PID", "1", "", f"{_esc(pid)}^^^{ods}^MR~{person['_nhs']}^^^NHS^NH", "",
            f"{_esc(name.get('family', ''))}^{_esc((name.get('given') or [''])[0])}", "",
            (person.get("birthDate") or "").replace("-", ""), {"male": "M", "female": "F"}.get(person.get("gender"), "U"),
            "", "", "^".join([_esc(" ".join(addr.get("line") or [])), "", _esc(addr.get("city", "")), "",
                              _esc(addr.get("postalCode", ""))])])
        v2_class = "I" if cls == "IMP" else "E"
        disposition = _esc((enc.get("hospitalization") or {}).get("dischargeDisposition", {}).get("text", ""))
        first, last = ("A01", "A03") if cls == "IMP" else ("A04", "A03")
        for trigger, when in ((first, period.get("start")), (last, period.get("end"))):
            if not when:
                continue
            n += 1
            pv1 = _pv1(f2=v2_class, f3=f"{_esc(ward)}^^^{ods}" if ward else "", f19=_esc(enc["id"]),
                       f36=f"^{disposition}" if trigger == "A03" and disposition else "",
                       f44=_ts(period.get("start")), f45=_ts(period.get("end")) if trigger == "A03" else "")
            structure = {"A01": "ADT_A01", "A04": "ADT_A01", "A03": "ADT_A03"}[trigger]
            msg = "\r".join([
                f"MSH|^~\\&|PAS|{ods}|JOINEDUP|JOINEDUP|{_ts(when)}||ADT^{trigger}^{structure}|"
                f"{_esc(enc['id'])}-{trigger}|P|2.4",
                f"EVN|{trigger}|{_ts(when)}", pid_seg, pv1]) + "\r\n"
            events.append((when, 0 if trigger != "A03" else 1, msg))
    events.sort(key=lambda e: (e[0], e[1]))
    folder = out / FEED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FEED_FILE, "w", encoding="utf-8", newline="") as fh:
        fh.writelines(msg for _, _, msg in events)
    return n
