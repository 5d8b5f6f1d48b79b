"""The documentation agrees with the code (in the manner of Datasette's tests/test_docs.py): every setting in the
registry is documented with its default, nothing undocumented is read, and no code reads a JOINEDUP_* variable
behind the registry's back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from joinedup.config import PREFIX, REGISTRY, Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()
NOT_APPLICATION = {"JOINEDUP_TEST_DATABASE_URL", "JOINEDUP_CHROMIUM"}


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda s: s.env)
def test_every_setting_is_documented_with_its_default(entry):
    row = next((line for line in SETTINGS_DOC.splitlines() if line.startswith(f"| `{entry.env}` |")), None)
    assert row is not None, f"{entry.env} is missing from docs/settings.md"
    default = f"`{entry.default}`" if entry.default else "(empty)"
    assert f"| {default} |" in row, f"docs/settings.md gives another default for {entry.env}"


def test_the_docs_name_no_setting_the_registry_lacks():
    registered = {s.env for s in REGISTRY}
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md")) + (ROOT / "README.md").read_text()
    named = set(re.findall(rf"{PREFIX}[A-Z][A-Z0-9_]*[A-Z0-9]", docs))
    unknown = {n for n in named - registered - NOT_APPLICATION if not n.startswith("JOINEDUP_BENCH")}
    assert not unknown, f"documented but not in joinedup.config.REGISTRY: {sorted(unknown)}"


def test_no_code_reads_a_setting_outside_the_registry():
    offenders = []
    for path in (ROOT / "src" / "joinedup").rglob("*.py"):
        if path.name == "config.py" and path.parent.name == "joinedup":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(os\.environ|getenv)\S*\(?\s*[\"']" + PREFIX, line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, f"read joinedup.config.value(...) instead: {offenders}"


def test_every_settings_field_comes_from_the_registry():
    names = {s.name.lower() for s in REGISTRY}
    paging = {"default_page_size", "max_page_size"}
    fields = set(Settings.__dataclass_fields__) - paging
    assert fields <= names, f"Settings fields without a registry entry: {sorted(fields - names)}"
