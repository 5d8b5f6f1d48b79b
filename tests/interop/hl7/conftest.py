"""A real MLLP listener on a loopback port in front of the test database (SQLite, and PostgreSQL when configured),
and a client that speaks MLLP over a real socket."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from joinedup.care.notifications import service as notifications
from joinedup.governance.gate import get_gate
from joinedup.governance.identity import SYSTEM
from joinedup.interop.hl7 import mllp
from joinedup.interop.hl7.service import Hl7Service

DATA = Path(__file__).resolve().parents[2] / "data" / "hl7"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def read_frame(sock: socket.socket) -> str:
    """One MLLP frame from the socket, read byte by byte so that a second frame arriving in the same TCP segment
    (the listener answers pipelined messages back to back) is left for the next call."""
    buf = b""
    while not buf.endswith(b"\x1c\x0d"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"connection closed before a whole ACK frame: {buf!r}")
        buf += chunk
    assert buf.startswith(b"\x0b"), buf
    return buf[1:-2].decode()


@dataclass
class Ack:
    """An acknowledgement read into its segments: seg('MSA')[1] is MSA-1."""

    text: str

    @property
    def segments(self) -> list[list[str]]:
        return [s.split("|") for s in self.text.split("\r") if s]

    def seg(self, name: str) -> list[str]:
        return next(s for s in self.segments if s[0] == name)

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    @property
    def code(self) -> str:
        return self.seg("MSA")[1]

    @property
    def control_id(self) -> str:
        return self.seg("MSA")[2]

    def err(self) -> list[str]:
        return self.seg("ERR") + [""] * 12


@dataclass
class Feed:
    """One test's sending organisation (a fresh ODS code) and the listener's port."""

    gate: object
    port: int
    ods: str
    org_id: str
    uid: str
    nhs: str

    def send(self, *messages: str | bytes) -> list[Ack]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            out = []
            for m in messages:
                s.sendall(mllp.frame(m))
                out.append(Ack(read_frame(s)))
            return out

    def send_one(self, message: str | bytes) -> Ack:
        return self.send(message)[0]

    def msg(self, trigger: str, control: str, *, pid: str | None = None, pv1: dict[int, str] | None = None,
            version: str = "2.5.1", facility: str | None = None, extra: list[str] | None = None,
            evn_time: str = "20261204101500") -> str:
        structure = {"A01": "ADT_A01", "A04": "ADT_A01", "A05": "ADT_A05", "A08": "ADT_A01", "A13": "ADT_A01",
                     "A02": "ADT_A02", "A03": "ADT_A03", "A11": "ADT_A09", "A12": "ADT_A12", "A28": "ADT_A05",
                     "A31": "ADT_A05", "A40": "ADT_A39"}[trigger]
        segs = [f"MSH|^~\\&|PAS|{facility or self.ods}|JOINEDUP|JOINEDUP|{evn_time}||ADT^{trigger}^{structure}|"
                f"{control}|P|{version}", f"EVN|{trigger}|{evn_time}",
                pid or self.pid()]
        segs += extra or []
        if pv1 is not None:
            fields = ["PV1"] + [""] * 54
            for k, v in pv1.items():
                fields[k] = v
            segs.append("|".join(fields).rstrip("|"))
        return "\r".join(segs) + "\r"

    def pid(self, mrn: str | None = None, nhs: str | None = "", family: str = "SMITH",
            given: str = "JANE", birth: str = "19500101", sex: str = "F") -> str:
        ids = [f"{mrn or 'M' + self.uid}^^^{self.ods}^MR"]
        nhs = self.nhs if nhs == "" else nhs
        if nhs:
            ids.append(f"{nhs}^^^NHS^NH")
        return f"PID|1||{'~'.join(ids)}||{family}^{given}||{birth}|{sex}|||1 HIGH STREET^^LEEDS^^LS1 1AA"

    def search(self, rtype: str, params: list[tuple[str, str]]):
        return self.gate.search(SYSTEM, rtype, params).matches

    def read(self, rtype: str, rid: str) -> dict:
        return self.gate.read(SYSTEM, rtype, rid).content


_servers: dict[str, tuple[object, int]] = {}


@pytest.fixture
def feed(db_url) -> Feed:
    """A listener (one per database, started once) and a fresh sending organisation for this test."""
    if db_url not in _servers:
        gate = get_gate(db_url)
        notifications.install(gate)
        _, bound = mllp.start_in_thread(Hl7Service(gate), host="127.0.0.1", port=0, max_bytes=200_000,
                                        frame_timeout=2.0)
        _servers[db_url] = (gate, bound[1])
    gate, port = _servers[db_url]
    uid = uuid.uuid4().hex[:8].upper()
    ods = f"T{uid[:5]}"
    org_id = f"org-{uid.lower()}"
    gate.update(SYSTEM, "Organization", org_id, {
        "resourceType": "Organization", "id": org_id, "name": f"Test Hospital {uid}", "active": True,
        "identifier": [{"system": ODS, "value": ods}]})
    return Feed(gate, port, ods, org_id, uid, new_nhs_number(gate))


def new_nhs_number(gate) -> str:
    """A valid NHS number in the 999 test range (modulus 11 check digit, NHS Data Dictionary) that no person in the
    store holds (the database is shared with other tests' populations, which use the same range)."""
    import random

    from joinedup.fhir import codes
    from joinedup.fhir.nhs_number import check_digit

    while True:
        nine = "999" + "".join(random.choice("0123456789") for _ in range(6))
        digit = check_digit(nine)
        if digit is not None and not gate.search(SYSTEM, "Patient", [
                ("identifier", f"{codes.NHS_NUMBER}|{nine}{digit}")]).matches:
            return nine + str(digit)
