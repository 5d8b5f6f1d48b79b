"""CLI errors are one line and exit 2, everywhere: unwritable output paths, databases that cannot be used, ports
that cannot be listened on, usage errors, ids `users add` cannot find; and bad data is refused at import with its
file and line. Run through Typer's runner (the real root command, in-process) and as the installed script."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app

SCRIPT = Path(sys.executable).with_name("joinedup")
ROOT = Path(__file__).resolve().parents[2]
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
BAD_URLS = {  # name: (URL, what the one line must name)
    "not-a-database": ("nonsense://x", "nonsense"),
    "unreachable-postgres": ("postgresql+psycopg://nobody@127.0.0.1:1/x", "127.0.0.1"),
    "sqlite-in-missing-dir": ("sqlite:////nonexistent-joinedup-dir/sub/store.db", "/nonexistent-joinedup-dir/sub"),
}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_line_exit_2(result, *must_contain: str) -> str:
    """Exit 2 and exactly one non-empty line, no traceback; returns the line."""
    output = result.output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    lines = _lines(output)
    assert len(lines) == 1, output
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def invoke(args: list[str], url: str, **env: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"JOINEDUP_DATABASE_URL": url, **env})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def store_url(tmp_path) -> str:
    """A SQLite store in a directory that exists (created on first use)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture()
def a_file(tmp_path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


@pytest.fixture()
def unwritable(tmp_path) -> Path:
    """A directory this process cannot write in (root ignores modes: then a read-only system directory)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            yield candidate
            return
    pytest.skip("no directory here that root cannot write in")


# -- output paths -----------------------------------------------------------------------------------------------
# (command line with {out} for the path, whether the path is a directory or a file)
OUTPUT_COMMANDS = {
    "export": (["export", "{out}"], "dir"),
    "export-typed": (["export", "{out}", "--type", "Patient"], "dir"),
    "generate": (["generate", "--patients", "3", "--out", "{out}", "-q"], "dir"),
    "extract": (["extract", "--out", "{out}"], "dir"),
    "conflicts-screen": (["conflicts", "screen", "--out", "{out}", "-q"], "dir"),
    "demo-data-dir": (["demo", "--no-serve", "--patients", "3", "--data-dir", "{out}"], "dir"),
    "sar": (["sar", "9995860635", "--out", "{out}"], "file"),
    "import-rejects": (["import", "{input}", "--rejects", "{out}", "--workers", "1", "-q"], "file"),
}


def _bad_output(kind: str, shape: str, tmp_path: Path, a_file: Path, unwritable: Path | None) -> Path:
    if kind == "under-a-file":
        return a_file / "sub" / ("out" if shape == "dir" else "report.json")
    if kind == "wrong-kind":  # a file where a directory is wanted, a directory where a file is wanted
        if shape == "dir":
            return a_file
        d = tmp_path / "a-dir"
        d.mkdir()
        return d
    assert kind == "unwritable" and unwritable is not None
    return unwritable / f"joinedup-test-{os.getpid()}" / ("out" if shape == "dir" else "report.json")


@pytest.mark.parametrize("kind", ["under-a-file", "wrong-kind", "unwritable"])
@pytest.mark.parametrize("name", sorted(OUTPUT_COMMANDS))
def test_an_output_path_that_cannot_be_written_is_one_line_and_exit_2(name, kind, tmp_path, a_file, store_url,
                                                                       request):
    args, shape = OUTPUT_COMMANDS[name]
    unwritable = request.getfixturevalue("unwritable") if kind == "unwritable" else None
    target = _bad_output(kind, shape, tmp_path, a_file, unwritable)
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    argv = [a.replace("{out}", str(target)).replace("{input}", str(source)) for a in args]
    line = one_line_exit_2(invoke(argv, store_url), str(target))
    assert line.startswith("error:")
    assert not Path(store_url.split("///", 1)[1]).exists(), "the check comes before the database is opened"


def test_a_missing_output_directory_is_created(tmp_path, store_url):
    out = tmp_path / "new" / "deeper" / "export"
    result = invoke(["export", out, "--type", "Patient"], store_url)
    assert result.exit_code == 0, result.output
    assert out.is_dir()


@pytest.mark.parametrize("args", [["import", "{missing}"], ["import", "{damaged}", "--workers", "1", "-q"],
                                  ["conflicts", "check", "{missing}"], ["conflicts", "check", "{dir}"]],
                         ids=["import-missing", "import-damaged-gzip", "check-missing", "check-directory"])
def test_an_input_path_that_cannot_be_read_is_one_line_and_exit_2(args, tmp_path, store_url):
    damaged = tmp_path / "Patient.ndjson.gz"
    damaged.write_bytes(gzip.compress(b'{"resourceType": "Patient", "id": "x"}\n')[:15])
    paths = {"{missing}": tmp_path / "missing.ndjson", "{damaged}": damaged, "{dir}": tmp_path}
    argv = [str(paths.get(a, a)) for a in args]
    named = next(str(paths[a]) for a in args if a in paths)
    one_line_exit_2(invoke(argv, store_url), Path(named).name)


# -- databases that cannot be used ------------------------------------------------------------------------------
STORE_COMMANDS = {
    "users-list": ["users", "list"],
    "users-add": ["users", "add", "someone", "--role", "system"],
    "users-disable": ["users", "disable", "someone"],
    "token": ["token", "admin"],
    "audit-verify": ["audit", "verify"],
    "export": ["export", "{tmp}/export"],
    "import": ["import", "{tmp}/in.ndjson", "--workers", "1", "-q"],
    "sar": ["sar", "9995860635"],
    "extract": ["extract", "--out", "{tmp}/extract"],
    "privacy-reviews": ["privacy", "reviews"],
    "conflicts-screen": ["conflicts", "screen", "--out", "{tmp}/screen", "-q"],
    "care-escalate": ["care", "escalate"],
    "care-worklist": ["care", "worklist", "someone"],
    "demo": ["demo", "--no-serve", "--patients", "3", "--data-dir", "{tmp}/demo"],
    "serve": ["serve", "--port", "{port}"],
}


@pytest.mark.parametrize("url", sorted(BAD_URLS), ids=str)
@pytest.mark.parametrize("name", sorted(STORE_COMMANDS))
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(name, url, tmp_path):
    (tmp_path / "in.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{port}", str(_free_port())) for a in STORE_COMMANDS[name]]
    bad, named = BAD_URLS[url]
    result = invoke(argv, bad, JOINEDUP_TRUSTED_HOSTS="127.0.0.1")
    line = one_line_exit_2(result, named)
    assert line.startswith("error:")


def test_a_database_password_is_never_shown(tmp_path):
    result = invoke(["users", "list"], "postgresql+psycopg://nobody:s3cret-pw@127.0.0.1:1/x")
    line = one_line_exit_2(result, "127.0.0.1")
    assert "s3cret-pw" not in line and "***" in line


@pytest.mark.parametrize("url", sorted(BAD_URLS), ids=str)
def test_the_installed_script_says_one_line_for_a_bad_database(url):
    proc = subprocess.run([str(SCRIPT), "users", "list"], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "JOINEDUP_DATABASE_URL": BAD_URLS[url][0]})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(_lines(proc.stderr)) == 1 and not proc.stdout.strip(), proc.stderr
    assert proc.stderr.startswith("error:") and BAD_URLS[url][1] in proc.stderr and "JOINEDUP_DATABASE_URL" in proc.stderr


def test_a_sqlite_file_in_a_missing_directory_is_not_created():
    result = invoke(["users", "list"], BAD_URLS["sqlite-in-missing-dir"][0])
    one_line_exit_2(result, "/nonexistent-joinedup-dir/sub", "does not exist")
    assert not Path("/nonexistent-joinedup-dir").exists()


# -- ports ------------------------------------------------------------------------------------------------------
@pytest.fixture()
def port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield str(s.getsockname()[1])


@pytest.mark.parametrize("port", ["0", "70000", "-1", "abc", "in-use"])
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_that_cannot_be_listened_on_is_one_line_and_exit_2(command, port, port_in_use, tmp_path, store_url):
    value = port_in_use if port == "in-use" else port
    args = [command, "--host", "127.0.0.1", "--port", value]
    if command == "demo":
        args += ["--patients", "3", "--data-dir", str(tmp_path / "demo")]
    line = one_line_exit_2(invoke(args, store_url, JOINEDUP_TRUSTED_HOSTS="127.0.0.1"), "--port" if
                           port != "in-use" else value)
    if port == "in-use":
        assert "in use" in line
    assert not (tmp_path / "demo").exists(), "nothing is generated before the port is known to be free"
    assert not Path(store_url.split("///", 1)[1]).exists(), "nor is the store opened"


def test_an_unknown_host_is_one_line_and_exit_2(store_url):
    one_line_exit_2(invoke(["serve", "--host", "no-such-host.invalid", "--port", "8000"], store_url),
                    "no-such-host.invalid")


# -- usage errors -----------------------------------------------------------------------------------------------
USAGE = {
    "unknown-command": ["no-such-command"],
    "unknown-root-option": ["--bogus"],
    "export-unknown-option": ["export", "x", "--bogus"],
    "export-missing-argument": ["export"],
    "import-missing-argument": ["import"],
    "users-add-missing-name": ["users", "add"],
    "users-add-missing-role": ["users", "add", "someone"],
    "token-missing-name": ["token"],
    "sar-missing-number": ["sar"],
    "extract-missing-out": ["extract"],
    "generate-not-a-number": ["generate", "--patients", "ten"],
    "serve-not-a-number": ["serve", "--workers", "two"],
    "conflicts-check-missing-file": ["conflicts", "check"],
    "conflicts-screen-bad-choice": ["conflicts", "screen", "--severity", "extreme"],
    "care-worklist-missing-user": ["care", "worklist"],
    "privacy-review-missing-options": ["privacy", "review", "g1"],
    "audit-unknown-command": ["audit", "no-such-thing"],
}


@pytest.mark.parametrize("name", sorted(USAGE))
def test_a_usage_error_is_one_short_line_and_exit_2(name, store_url):
    line = one_line_exit_2(invoke(USAGE[name], store_url))
    assert line.startswith("error:") and "--help" in line
    assert len(line) < 300


def test_the_installed_script_gives_usage_errors_in_one_line():
    proc = subprocess.run([str(SCRIPT), "export", "--bogus"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2
    assert _lines(proc.stderr) == ["error: No such option: --bogus (see 'joinedup export --help')"], proc.stderr
    assert "╭" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_group_alone_still_shows_its_help():
    result = CliRunner().invoke(app, ["users"])
    assert "Usage" in result.output and "add" in result.output and "Traceback" not in result.output


# -- bad data at import -----------------------------------------------------------------------------------------
def test_import_refuses_codes_outside_required_value_sets_with_file_and_line(tmp_path, store_url):
    lines = [
        {"resourceType": "Patient", "id": "good-1", "gender": "female"},
        {"resourceType": "Patient", "id": "banana-1", "gender": "banana"},
        {"resourceType": "Observation", "id": "obs-1", "status": "done", "code": {"text": "x"}},
        {"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "wish",
         "subject": {"reference": "Patient/good-1"}, "medicationCodeableConcept": {"text": "x"}},
        {"resourceType": "Encounter", "id": "enc-1", "status": "over", "class": {"code": "AMB"}},
        {"resourceType": "Observation", "id": "obs-2", "status": "corrected", "code": {"text": "x"}},
    ]
    src = tmp_path / "Mixed.ndjson"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rejects = tmp_path / "out" / "rejects.ndjson"
    result = invoke(["import", src, "--rejects", rejects, "--workers", "1", "-q"], store_url)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "2 created" in text and "4 rejected" in text
    assert f"first rejected: {src}:2: Patient.gender: 'banana'" in text
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rows] == [(str(src), n) for n in (2, 3, 4, 5)]
    assert "Patient.gender" in rows[0]["reason"] and "'banana'" in rows[0]["reason"] and "male" in rows[0]["reason"]
    assert "Observation.status" in rows[1]["reason"] and "'done'" in rows[1]["reason"]
    assert "MedicationRequest.intent" in rows[2]["reason"] and "'wish'" in rows[2]["reason"]
    assert "Encounter.status" in rows[3]["reason"] and "'over'" in rows[3]["reason"]
    out = tmp_path / "export"
    assert invoke(["export", out], store_url).exit_code == 0
    assert {json.loads(x)["id"] for x in (out / "Patient.ndjson").read_text().splitlines()} == {"good-1"}
    assert {json.loads(x)["id"] for x in (out / "Observation.ndjson").read_text().splitlines()} == {"obs-2"}


def test_an_unwritable_rejects_file_is_refused_before_anything_is_imported(tmp_path, a_file, store_url):
    src = tmp_path / "Patient.ndjson"
    src.write_text(json.dumps({"resourceType": "Patient", "id": "p", "gender": "banana"}) + "\n")
    one_line_exit_2(invoke(["import", src, "--rejects", a_file / "r.ndjson", "-q"], store_url), str(a_file))
    assert not Path(store_url.split("///", 1)[1]).exists()


# -- users add names only what the store holds -------------------------------------------------------------------
@pytest.fixture()
def people(db_url, uid, tmp_path) -> dict[str, str]:
    """A practitioner, an organisation and a patient in the test database (SQLite, and PostgreSQL when set)."""
    ids = {"practitioner": f"pr-{uid}", "organization": f"org-{uid}", "patient": f"pat-{uid}"}
    src = tmp_path / "people.ndjson"
    src.write_text("".join(json.dumps(r) + "\n" for r in (
        {"resourceType": "Practitioner", "id": ids["practitioner"]},
        {"resourceType": "Organization", "id": ids["organization"], "name": f"Practice {uid}"},
        {"resourceType": "Patient", "id": ids["patient"]},
    )))
    result = invoke(["import", src, "--workers", "1", "-q"], db_url)
    assert result.exit_code == 0 and "3 created" in result.stdout, result.output
    return ids


@pytest.mark.parametrize("missing", ["practitioner", "organization", "patient"])
def test_users_add_refuses_ids_the_store_does_not_hold(missing, people, db_url, uid):
    role = "patient" if missing == "patient" else "gp"
    args = ["users", "add", f"u-{missing}-{uid}", "--role", role]
    wanted = ["patient"] if role == "patient" else ["practitioner", "organization"]
    for option in wanted:
        args += [f"--{option}", f"nobody-{uid}" if option == missing else people[option]]
    one_line_exit_2(invoke(args, db_url), f"nobody-{uid}", f"--{missing}")
    assert f"u-{missing}-{uid}\t" not in invoke(["users", "list"], db_url).stdout


@pytest.mark.parametrize("role", ["gp", "patient"])
def test_users_add_accepts_ids_the_store_holds(role, people, db_url, uid):
    extra = (["--patient", people["patient"]] if role == "patient"
             else ["--practitioner", people["practitioner"], "--organization", people["organization"]])
    result = invoke(["users", "add", f"ok-{role}-{uid}", "--role", role, *extra], db_url)
    assert result.exit_code == 0, result.output


# -- the README's examples work on the demo data ------------------------------------------------------------------
README = (ROOT / "README.md").read_text()


def test_readme_says_how_to_put_joinedup_on_the_path():
    assert "source .venv/bin/activate" in README and ".venv/bin/joinedup" in README


def test_readme_examples_name_people_and_ids_the_demo_data_holds(tmp_path):
    from joinedup.synth.service import generate, read_ndjson

    cli = README.split("## The command line", 1)[1].split("## ", 1)[0]
    sar = re.search(r"joinedup sar (\d{10})", cli)
    add = re.search(r"joinedup users add \S+ --role gp --practitioner (\S+) --organization (\S+)", cli)
    assert sar and add, "the README's sar and users add examples name real ids"
    out = tmp_path / "ics"
    generate(patients=30, seed=42, out=out, workers=1)  # the demo's seed: the same people, fewer of them
    nhs = {i["value"] for p in read_ndjson(out, "Patient") for i in p.get("identifier", [])
           if i.get("system") == NHS_SYSTEM}
    assert sar.group(1) in nhs
    assert add.group(1) in {p["id"] for p in read_ndjson(out, "Practitioner")}
    assert add.group(2) in {o["id"] for o in read_ndjson(out, "Organization")}
    roles = [r for r in read_ndjson(out, "PractitionerRole")
             if r["practitioner"]["reference"] == f"Practitioner/{add.group(1)}"]
    assert any(r["organization"]["reference"] == f"Organization/{add.group(2)}" for r in roles)
