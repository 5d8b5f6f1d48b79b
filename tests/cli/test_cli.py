"""The `joinedup` command over its real interface (Typer's runner in-process, and the installed script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from joinedup.cli import app

SCRIPT = Path(sys.executable).with_name("joinedup")


@pytest.fixture()
def run(server):
    """Invoke the CLI against the test server's database."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), env={"JOINEDUP_DATABASE_URL": server.db_url})

    return invoke


def test_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("serve", "import", "export", "users", "token", "audit"):
        assert cmd in result.output
    users = CliRunner().invoke(app, ["users", "--help"])
    assert users.exit_code == 0 and "add" in users.output and "list" in users.output


def test_installed_script_runs():
    assert SCRIPT.exists(), SCRIPT
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "import" in proc.stdout and "audit" in proc.stdout


def test_no_arguments_shows_help_not_a_traceback():
    result = CliRunner().invoke(app, [])
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_users_add_unknown_role_is_exit_2_with_one_line(run, uid):
    result = run("users", "add", f"u-{uid}", "--role", "wizard")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    text = " ".join(result.output.split())
    assert "unknown role 'wizard'" in text
    assert "Traceback" not in result.output
    assert len(lines) <= 2  # one message (Rich may wrap it once at the console width)
    assert lines[0].startswith("error:")


def test_users_add_patient_without_patient_id_is_exit_2(run, uid):
    result = run("users", "add", f"p-{uid}", "--role", "patient")
    assert result.exit_code == 2
    assert "--patient" in result.output


def test_token_works_against_the_api(server, run, uid, api):
    name = f"cli-gp-{uid}"
    # users add refuses ids the store does not hold: the practitioner and organisation exist first
    api.put(f"/fhir/Practitioner/pr-{uid}", json={"resourceType": "Practitioner", "id": f"pr-{uid}"})
    api.put(f"/fhir/Organization/org-{uid}", json={"resourceType": "Organization", "id": f"org-{uid}",
                                                  "name": f"Org {uid}"})
    added = run(
        "users", "add", name, "--role", "gp", "--practitioner", f"pr-{uid}", "--organization", f"org-{uid}"
    )
    assert added.exit_code == 0, added.output
    assert name in added.output
    again = run("users", "add", name, "--role", "gp")
    assert again.exit_code == 2 and "already exists" in again.output
    listed = run("users", "list")
    assert listed.exit_code == 0 and name in listed.output

    result = run("token", name)
    assert result.exit_code == 0, result.output
    token = result.stdout.split()[-1]
    assert token.startswith("ju_")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Tok{uid}"}]})
        assert r.status_code == 201, r.text
        # the token carries the user's organisation into provenance
        assert r.json()["meta"]["source"] == f"Organization/org-{uid}"
        assert c.get(f"/fhir/Patient/{r.json()['id']}").status_code == 200
        assert c.get("/fhir/AuditEvent").status_code == 403  # a gp, not an auditor
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}x"}) as c:
        assert c.get("/fhir/Patient").status_code == 401


def test_token_for_unknown_user_or_bad_hours_is_exit_2(run, uid):
    result = run("token", f"nobody-{uid}")
    assert result.exit_code == 2 and "no such user" in result.output
    result = run("token", "admin", "--hours", "0")
    assert result.exit_code == 2


def test_import_missing_path_is_exit_2(run, tmp_path):
    result = run("import", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert "missing" in result.output and "Traceback" not in result.output


def test_export_writes_ndjson(api, run, tmp_path, uid):
    pid = api.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Exp{uid}"}]}
    ).json()["id"]
    api.post(
        "/fhir/Condition",
        json={
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"text": f"c {uid}"},
        },
    )
    out = tmp_path / "export"
    result = run("export", str(out), "--type", "Patient,Condition")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["Condition.ndjson", "Patient.ndjson"]
    patients = [json.loads(line) for line in (out / "Patient.ndjson").read_text().splitlines()]
    conditions = [json.loads(line) for line in (out / "Condition.ndjson").read_text().splitlines()]
    assert all(p["resourceType"] == "Patient" for p in patients)
    assert all(c["resourceType"] == "Condition" for c in conditions)
    assert pid in {p["id"] for p in patients}
    assert any(c["subject"]["reference"] == f"Patient/{pid}" for c in conditions)
    text = " ".join(result.stdout.split())
    assert f"Patient.ndjson {len(patients)}" in text and f"Condition.ndjson {len(conditions)}" in text
    assert f"exported {len(patients) + len(conditions):,} resources in 2 file(s)" in text


def test_export_since_future_writes_nothing(run, tmp_path):
    out = tmp_path / "empty"
    result = run("export", str(out), "--since", "2999-01-01T00:00:00Z")
    assert result.exit_code == 0, result.output
    assert list(out.iterdir()) == []
    assert "exported 0 resources" in result.stdout


@pytest.mark.parametrize("args", [["--type", "Shoe"], ["--since", "tomorrow-ish"]])
def test_export_bad_options_are_exit_2(run, tmp_path, args):
    result = run("export", str(tmp_path / "x"), *args)
    assert result.exit_code == 2
    assert "error" in result.output and "Traceback" not in result.output


def test_export_to_a_file_is_exit_2(run, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    result = run("export", str(f))
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_audit_verify_is_exit_0_on_an_intact_chain(server, api, run):
    api.get("/fhir/Patient", params={"_count": 1})
    server.gate.flush_audit()
    result = run("audit", "verify")
    assert result.exit_code == 0, result.output
    assert "audit chain intact" in result.output
    n = int(result.output.split("intact:")[1].split("entries")[0].replace(",", ""))
    assert n > 0
