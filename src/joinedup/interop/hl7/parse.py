"""Reading one HL7 v2 ADT message: the header checks that decide AR, then the segments parsed with python-hl7.

The header (MSH) is checked first, field by field, so that every refusal names the segment and field at fault
(`Fault.location`, written to ERR-2 of the acknowledgement): no MSH, encoding characters other than `^~\\&`, a
missing sending facility or control id, an unsupported version, message type or trigger event. What passes is
split into segments, fields, repetitions and components by python-hl7 (`hl7.parse`, BSD licence,
https://github.com/johnpaulett/python-hl7); the segments the mapping reads are kept, each as its list of fields in
ER7, and the mapping reads the fields it needs (its data types are checked where they are read: dates, NHS numbers,
table values). hl7apy, used before, built a full element tree of every field and component (about 8 ms a message
on this machine, against 0.35 ms) and at the validation level that accepts real feeds (QUIET) refused nothing the
checks here do not already refuse (docs/hl7-v2.md, Performance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import hl7
import hl7.parser

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
# trigger event -> what it means here (docs/hl7-v2.md)
TRIGGERS = {
    "A01": "admit / visit notification", "A02": "transfer a patient", "A03": "discharge / end visit",
    "A04": "register a patient", "A05": "pre-admit a patient", "A08": "update patient information",
    "A11": "cancel admit / visit notification", "A12": "cancel transfer", "A13": "cancel discharge / end visit",
    "A28": "add person information", "A31": "update person information", "A40": "merge patient - patient "
    "identifier list",
}
VISIT_TRIGGERS = {"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A12", "A13"}
PROCESSING_IDS = {"P", "T", "D"}
ENCODING = "^~\\&"
# the segments the mapping reads; the rest of the message (NK1, OBX, AL1, DG1, IN1, Z-segments, ...) is kept in the
# raw text and acknowledged, but not parsed
MAPPED = ("MSH", "EVN", "PID", "PD1", "PV1", "PV2", "MRG")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass
class Fault(Exception):
    """Why a message cannot be applied: the acknowledgement code (AR reject / AE error), the HL7 table 0357 error
    code, a one-line reason and where (segment, field, component) the problem is."""

    ack: str
    code: int
    text: str
    segment: str | None = None
    field_no: int | None = None
    component: int | None = None
    seq: int = 1

    def __str__(self) -> str:
        return self.text

    @property
    def location(self) -> str | None:
        """ERR-2 (ERL): segment ^ sequence ^ field ^ repetition ^ component."""
        if not self.segment:
            return None
        parts = [self.segment, str(self.seq)]
        if self.field_no is not None:
            parts.append(str(self.field_no))
            if self.component is not None:
                parts += ["1", str(self.component)]
        return "^".join(parts)


@dataclass
class Header:
    """What the acknowledgement needs from MSH (as far as it could be read)."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    trigger: str = ""
    version: str = "2.5.1"
    processing_id: str = "P"


@dataclass
class Message:
    """One parsed ADT message: its header and the mapped segments (each a list of field lists)."""

    raw: str
    header: Header
    segments: dict[str, list[list[str]]] = field(default_factory=dict)

    @property
    def trigger(self) -> str:
        return self.header.trigger

    def segment(self, name: str) -> list[str] | None:
        found = self.segments.get(name)
        return found[0] if found else None


def normalise(raw: str | bytes) -> str:
    """Segments end with CR; files and some senders use LF or CRLF instead."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t\x0b\x1c")
    return "\r".join(s for s in text.split("\r") if s.strip())


def read_header(text: str) -> Header:
    """The header as far as it can be read (for acknowledging even a message that is then refused)."""
    h = Header()
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return h
    sep = first[3]
    f = first.split(sep)
    comp = f[1][:1] if len(f) > 1 and f[1] else "^"

    def get(n: int, c: int = 1) -> str:
        value = f[n - 1] if len(f) >= n else ""
        parts = value.split(comp) if comp else [value]
        return parts[c - 1].strip() if len(parts) >= c else ""

    h.sending_app, h.sending_facility = get(3), get(4)
    h.receiving_app, h.receiving_facility = get(5), get(6)
    h.control_id = (f[9] if len(f) > 9 else "").strip()
    h.trigger = get(9, 2).upper()
    h.version = get(12) or h.version
    h.processing_id = get(11) or h.processing_id
    return h


def parse(raw: str | bytes) -> Message:
    """Parse and check one message; raises `Fault` saying what is wrong and where."""
    text = normalise(raw)
    if not text:
        raise Fault("AR", 100, "empty message: no MSH segment", "MSH")
    if not text.startswith("MSH"):
        first = text.split("\r", 1)[0][:3]
        raise Fault("AR", 100, f"the message must begin with an MSH segment, not '{first}'", "MSH")
    header = read_header(text)
    msh = text.split("\r", 1)[0]
    if len(msh) < 8 or msh[3] != "|":
        raise Fault("AR", 102, "MSH-1 field separator must be '|'", "MSH", 1)
    fields = msh.split("|")
    if fields[1] != ENCODING:
        raise Fault("AR", 102, f"MSH-2 encoding characters must be '{ENCODING}', not '{fields[1]}'", "MSH", 2)

    def msh_field(n: int) -> str:
        return fields[n - 1].strip() if len(fields) >= n else ""

    if not header.sending_facility:
        raise Fault("AR", 101, "MSH-4 sending facility is required (the sending organisation's ODS code)", "MSH", 4)
    if not header.control_id:
        raise Fault("AR", 101, "MSH-10 message control id is required", "MSH", 10)
    if len(header.control_id) > 199:
        raise Fault("AR", 102, "MSH-10 message control id is longer than 199 characters", "MSH", 10)
    version = msh_field(12).split("^")[0]
    if version not in SUPPORTED_VERSIONS:
        raise Fault("AR", 203, f"MSH-12 version '{version}' is not supported (supported: "
                               f"{', '.join(SUPPORTED_VERSIONS)})", "MSH", 12)
    header.version = version
    mtype = msh_field(9).split("^")
    if mtype[0] != "ADT":
        raise Fault("AR", 200, f"MSH-9 message type '{mtype[0]}' is not supported: this receiver takes ADT",
                    "MSH", 9, 1)
    trigger = mtype[1].strip().upper() if len(mtype) > 1 else ""
    if not trigger:  # v2.3 senders sometimes leave MSH-9.2 empty and give the event in EVN-1
        evn = next((s for s in text.split("\r") if s.startswith("EVN|")), "")
        trigger = evn.split("|")[1].strip().upper() if evn.count("|") >= 1 else ""
    if trigger not in TRIGGERS:
        raise Fault("AR", 201, f"MSH-9 trigger event '{trigger or '(none)'}' is not supported (supported: "
                               f"{', '.join(sorted(TRIGGERS))})", "MSH", 9, 2)
    header.trigger = trigger
    pid = msh_field(11).split("^")[0]
    if pid not in PROCESSING_IDS:
        raise Fault("AR", 202, f"MSH-11 processing id '{pid}' is not supported (P, T or D)", "MSH", 11)
    segments = text.split("\r")
    for n, seg in enumerate(segments, 1):
        if not _SEGMENT_ID.match(seg[:3]) or (len(seg) > 3 and seg[3] != "|"):
            raise Fault("AE", 100, f"segment {n} ('{seg[:12]}') is not an HL7 segment", seg[:3] or None, seq=n)
    kept = [s for s in segments if s[:3] in MAPPED]
    try:
        parsed = _parse_fields("\r".join(kept))
    except (hl7.ParseException, ValueError, TypeError, KeyError, IndexError) as exc:
        raise Fault("AE", 102, f"the message does not parse as HL7 v{version}: {exc}", "MSH") from None
    out: dict[str, list[list[str]]] = {}
    for seg in parsed:  # python-hl7 keeps MSH-1 (the separator) at index 1: MSH-n is at index n like every segment
        parts = [str(f) for f in seg]
        out.setdefault(parts[0], []).append(parts)
    msg = Message(text, header, out)
    _check_structure(msg)
    return msg


class _FieldsPlan(hl7.parser._ParsePlan):
    """python-hl7's parse plan, stopping at fields: a field is kept as its text (and each level's plan is made once,
    not once for every field)."""

    def applies(self, text: str) -> bool:
        return self.containers[0] is not self.factory.create_field and super().applies(text)

    def container(self, data):
        return data[0] if self.containers[0] is self.factory.create_field else super().container(data)

    def next(self):
        child = self.__dict__.get("_next", self)
        if child is self:
            child = self._next = super().next()
        return child


def _parse_fields(text: str) -> hl7.Message:
    """`hl7.parse`, down to fields: python-hl7's own parse plan for the message (its separators from MSH-1/MSH-2,
    MSH's fields as the library numbers them), each field left whole. The mapping reads repetitions and components
    itself (`reps`, `comp`), so splitting every field further into repetition, component and sub-component
    containers only to join them back into text cost most of the parse (python-hl7 0.4, pinned in pyproject:
    `hl7.parser.create_parse_plan`, its `_ParsePlan` and the splitter `_split` that follows it)."""
    text = text.strip()  # as hl7.parse does
    base = hl7.parser.create_parse_plan(text)
    plan = _FieldsPlan(base.separator, base.separators, base.containers, base.esc, base.factory)
    return hl7.parser._split(text, plan)


def _check_structure(msg: Message) -> None:
    trigger = msg.trigger
    if msg.segment("PID") is None:
        raise Fault("AE", 100, f"ADT^{trigger} needs a PID segment", "PID")
    if trigger in VISIT_TRIGGERS and msg.segment("PV1") is None:
        raise Fault("AE", 100, f"ADT^{trigger} needs a PV1 segment", "PV1")
    if trigger == "A40" and msg.segment("MRG") is None:
        raise Fault("AE", 100, "ADT^A40 needs an MRG segment naming the record merged away", "MRG")


# -- reading fields -------------------------------------------------------------------------------------------
_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_ESCAPE = re.compile(r"\\([FSTRE]|X[0-9A-Fa-f]+|\.br|H|N)\\")


def unescape(value: str) -> str:
    """Undo HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\, \\.br\\); highlighting is dropped."""
    if "\\" not in value:
        return value

    def one(m: re.Match) -> str:
        code = m.group(1)
        if code in _ESCAPES:
            return _ESCAPES[code]
        if code == ".br":
            return "\n"
        if code.startswith("X"):
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return ""
        return ""

    return _ESCAPE.sub(one, value)


def escape(value: str) -> str:
    """Escape text for an ER7 field (the ACK's text fields)."""
    value = value.replace("\\", "\\E\\")
    for ch, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        value = value.replace(ch, f"\\{code}\\")
    return value.replace("\r", " ").replace("\n", " ")


def reps(fields: list[str] | None, n: int) -> list[str]:
    """The repetitions of field n (raw ER7), empty ones left out."""
    if not fields or len(fields) <= n or not fields[n]:
        return []
    return [r for r in fields[n].split("~") if r.strip() and r.strip() != '""']


def comps(rep: str) -> list[str]:
    """The components of one repetition, unescaped (sub-components kept joined with '&'); the HL7 null '""' is
    empty."""
    return ["" if c.strip() == '""' else unescape(c).strip() for c in rep.split("^")]


def comp(rep: str | None, k: int) -> str:
    if not rep:
        return ""
    parts = rep.split("^")
    value = unescape(parts[k - 1]).strip() if len(parts) >= k else ""
    return "" if value == '""' else value


def first(fields: list[str] | None, n: int, k: int = 1) -> str:
    """Component k of the first repetition of field n ('' when empty)."""
    r = reps(fields, n)
    return comp(r[0], k) if r else ""
