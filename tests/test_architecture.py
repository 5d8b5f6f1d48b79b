"""Architecture rules checked by scanning the source (issue 12: "the gate owns every table").

Only `store/` (the tables, the repository, the migrations) and `governance/` (the gate, policy, audit, facts and the
platform / account services) touch tables: everything else asks the gate or a governance function, never `schema`,
SQL or the gate's private store, facts and audit.
"""

from __future__ import annotations

import re
from pathlib import Path

from joinedup.governance.gate import Gate

SRC = Path(__file__).resolve().parents[1] / "src" / "joinedup"
ALLOWED = ("store", "governance")  # store/migrations is under store/
# Ways into the tables: the schema module's tables, SQL statements, raw driver SQL, and the gate's private parts
# (the test-only accessors `store_for_tests` & co. are for tests and benches, never for src/).
FORBIDDEN = re.compile(
    r"\bschema\.|\bsa\.select\(|\bsa\.text\(|\.execute\(|exec_driver_sql"
    r"|(?<![A-Za-z0-9])_(?:store|facts|audit)\b|\b(?:store|facts|audit)_for_tests\b"
    r"|\bgate(?:_of\([^()]*\))?\.(?:store|facts|audit)\b"  # the names the gate no longer has (they would fail late)
)


def _offences() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ALLOWED:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if m := FORBIDDEN.search(line):
                found.append(f"src/joinedup/{rel.as_posix()}:{n}: {m.group(0)!r} in {line.strip()[:100]}")
    return found


def test_only_store_and_governance_touch_tables():
    offences = _offences()
    assert not offences, ("only store/ and governance/ may touch tables; ask the gate or a governance function "
                          "(governance.platform, governance.accounts) instead:\n" + "\n".join(offences))


def test_the_scan_finds_what_it_looks_for():
    for bad in ("with gate._store.writing() as conn:", "conn.execute(q)", "sa.select(t)", "schema.export_job",
                "conn.exec_driver_sql('ANALYZE')", "gate._audit.flush()", "gate.store_for_tests.read(x)",
                "authenticate(gate.store, t)", "gate_of(request).store", "self.gate.facts.relationship(u, p)"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("gate.flush_audit()", "gate.record(who, 'x', allowed=True, reason='r')", "from joinedup.store "
                 "import search", "gate.optimize()", "gate.relationship_of(who, pid)"):
        assert not FORBIDDEN.search(fine), fine


def test_gate_exposes_no_store():
    private = {"store", "facts", "audit"}
    assert not private & {name for name in dir(Gate) if not name.startswith("_")}
    gate = Gate(object(), object())  # a gate's attributes, without a database
    assert not private & {name for name in dir(gate) if not name.startswith("_")}
    assert {"_store", "_facts", "_audit"} <= set(vars(gate))


def test_the_import_layers_hold():
    """fhir < store < governance < domains < api/pages < app/cli, as the import-linter contracts in pyproject.toml
    say (docs/architecture.md); a new upward import fails here."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    done = subprocess.run([exe, "--config", str(root / "pyproject.toml")], cwd=root / "src", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_circles_at_run_time():
    """No import cycle of any length between modules (imports made for type checking only do not run)."""
    import grimp

    graph = grimp.build_graph("joinedup", exclude_type_checking_imports=True)
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in imports.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_no_page_route_checks_log_in_by_hand():
    """Pages take the signed-in person as `who: Viewer` (web/pages.py); only the page layer itself looks the session
    up - and the inbox badge, which shows nothing (rather than a log-in page) to nobody."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "joinedup"
    allowed = {src / "web" / "pages.py", src / "care" / "notifications" / "routes.py"}
    offenders = [f"{p.relative_to(src)}:{n}" for p in src.rglob("*.py") if p not in allowed
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if "current_who(" in line or "to_login(" in line]
    assert not offenders, offenders
