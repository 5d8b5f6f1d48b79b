"""Messages nobody here wrote (tests/data/hl7/README.md: the HL7 v2.5 chapter 3 example 3.5.3 and the chapter 2
GOOD HEALTH HOSPITAL example), the generated hospital feed end to end (FHIR files loaded, then the ADT feed over
MLLP), and the `joinedup hl7` commands through the CLI."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from joinedup import config
from joinedup.fhir import codes
from joinedup.governance.identity import SYSTEM
from joinedup.interop.bulk_import import import_paths
from joinedup.interop.hl7 import mllp
from joinedup.interop.hl7.cli import split_messages

from .conftest import DATA, Ack, read_frame


def test_v25_chapter_3_register_example_is_mapped_field_by_field(feed):
    raw = (DATA / "v25-ch3-3.5.3-a04-register.hl7").read_text()
    if not feed.search("Organization", [("identifier", f"{codes.ODS_ORGANIZATION}|MCM")]):
        feed.gate.update(SYSTEM, "Organization", "org-mcm", {
            "resourceType": "Organization", "id": "org-mcm", "name": "MCM (HL7 example facility)",
            "identifier": [{"system": codes.ODS_ORGANIZATION, "value": "MCM"}]})
    ack = feed.send_one(raw)
    assert (ack.code, ack.control_id) == ("AA", "000001"), ack.text
    assert ack.seg("MSH")[11] == "2.5"
    [patient] = feed.search("Patient", [("identifier", "https://joinedup.example/fhir/Id/ods/MCM/genhos/"
                                                       "patient-number|191919")])
    p = patient.content
    assert p["name"] == [{"family": "MASSIE", "given": ["JAMES", "A"]}]       # PID-5 XPN
    assert p["birthDate"] == "1956-01-29" and p["gender"] == "male"           # PID-7, PID-8 (table 0001 M)
    assert p["address"] == [{"line": ["171 ZOBER-LEIN"], "city": "ISHPEMING", "district": "MI",
                             "postalCode": "49849"}]                           # PID-11 XAD ("" = no country)
    assert [t["use"] for t in p["telecom"]] == ["home", "work"]               # PID-13, PID-14
    [enc] = feed.search("Encounter", [("identifier", "https://joinedup.example/fhir/Id/ods/MCM/visit-number|1400")])
    e = enc.content
    assert e["class"]["code"] == "AMB"                                         # PV1-2 O -> AMB
    assert e["status"] == "in-progress"                                        # table 0004 O -> in-progress
    assert e["period"]["start"] == "1995-01-10T14:10:00Z"                      # PV1-44
    assert e["serviceType"]["coding"][0]["code"] == "AMB"                      # PV1-10 hospital service
    assert {pt["type"][0]["coding"][0]["code"] for pt in e["participant"]} == {"ATND", "REF", "CON", "ADM"}
    ward = feed.read("Location", e["location"][0]["location"]["reference"].split("/")[1])
    assert ward["name"] == "O/R"                                               # PV1-3.1 point of care


def test_chapter_2_example_declares_a_version_this_receiver_does_not_take(feed):
    raw = (DATA / "v28-ch2-goodhealth-a01-admit.hl7").read_text()
    ack = feed.send_one(raw)
    assert (ack.code, ack.control_id) == ("AR", "MSG00001")
    assert ack.err()[2] == "MSH^1^12" and ack.err()[3].startswith("203^")


def test_generated_feed_updates_the_loaded_encounters_end_to_end(feed, tmp_path):
    from joinedup.synth.service import generate

    out = tmp_path / "ics"
    generate(patients=25, seed=11, out=out, workers=1, hl7=True)
    gate = feed.gate
    import_paths(gate, SYSTEM, [out], workers=1)
    feed_file = out / "hl7" / "adt-feed.hl7"
    messages = split_messages(feed_file.read_bytes())
    assert messages and all(m.startswith(b"MSH|^~\\&|PAS|RZA|") for m in messages)
    before = gate.search(SYSTEM, "Encounter", [("service-provider", "Organization/org-acute"), ("_summary", "count")])
    with socket.create_connection(("127.0.0.1", feed.port), timeout=60) as s:
        acks = []
        for m in messages:
            s.sendall(mllp.frame(m))
            acks.append(Ack(read_frame(s)))
    assert [a.code for a in acks] == ["AA"] * len(messages), [a.text for a in acks if a.code != "AA"][:3]
    after = gate.search(SYSTEM, "Encounter", [("service-provider", "Organization/org-acute"), ("_summary", "count")])
    assert after.total == before.total  # the same encounters, found by their visit numbers: none added
    first = messages[0].decode().split("\r")
    visit = next(s for s in first if s.startswith("PV1")).split("|")[19]
    enc = gate.read(SYSTEM, "Encounter", visit).content
    assert enc["status"] == "finished" and enc["meta"]["versionId"] != "1"


def test_cli_import_dead_letters_and_replay(feed, tmp_path, monkeypatch):
    from joinedup.cli import app

    monkeypatch.setenv(config.setting("DATABASE_URL").env, feed.gate.database_url)
    good = feed.msg("A28", f"F1-{feed.uid}")
    stranger = f"Y{feed.uid[:5]}"
    bad = feed.msg("A28", f"F2-{feed.uid}", facility=stranger)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "batch.hl7").write_text(good.replace("\r", "\n") + bad.replace("\r", "\n"))
    acks = tmp_path / "acks.txt"
    runner = CliRunner()
    result = runner.invoke(app, ["hl7", "import", str(drop), "--acks", str(acks)])
    assert result.exit_code == 2, result.output
    assert "1 of 2 message(s) not applied" in result.output
    assert acks.read_text().count("MSA|AA|") == 1 and acks.read_text().count("MSA|AR|") == 1
    listed = runner.invoke(app, ["hl7", "dead-letters"])
    assert listed.exit_code == 0
    line = next(x for x in listed.output.splitlines() if f"F2-{feed.uid}" in x)
    held_id = line.split("\t")[0]
    assert "MSH^1^4" in line
    # still unknown: replaying fails with one line and exit 2, and the message stays held
    again = runner.invoke(app, ["hl7", "replay", held_id])
    assert again.exit_code == 2 and "still not applied" in again.output
    org = f"org-y{feed.uid.lower()}"
    feed.gate.update(SYSTEM, "Organization", org, {"resourceType": "Organization", "id": org, "name": "Y",
                                                   "identifier": [{"system": codes.ODS_ORGANIZATION,
                                                                   "value": stranger}]})
    done = runner.invoke(app, ["hl7", "replay", held_id])
    assert done.exit_code == 0 and "\tAA\t" in done.output
    assert feed.gate.held_message(SYSTEM, held_id)["status"] == "replayed"
    missing = runner.invoke(app, ["hl7", "replay", "no-such-id"])
    assert missing.exit_code == 2 and "no dead letter" in missing.output
    nothing = runner.invoke(app, ["hl7", "import", str(Path(tmp_path / "nowhere"))])
    assert nothing.exit_code == 2 and "no such file or directory" in nothing.output
    unmerge = runner.invoke(app, ["hl7", "unmerge", "no-such-patient", "--reason", "checking the error path"])
    assert unmerge.exit_code == 2 and len(unmerge.output.strip().splitlines()) == 1
    port = runner.invoke(app, ["hl7", "listen", "--port", "70000"])
    assert port.exit_code == 2 and "out of range" in port.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = runner.invoke(app, ["hl7", "listen", "--port", str(busy.getsockname()[1])])
    assert taken.exit_code == 2 and len(taken.output.strip().splitlines()) == 1
