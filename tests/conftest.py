"""Shared fixtures: a real database per backend (SQLite always, PostgreSQL when configured) and a real
HTTP server on loopback serving the app against it."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# The Synthea 10-patient bulk export, shipped as test data (Apache-2.0; see tests/data/synthea-10-patients/README.md)
SAMPLES = Path(__file__).resolve().parent / "data" / "synthea-10-patients"


def sample_lines(name: str) -> list[str]:
    """The NDJSON lines of one file of the Synthea sample (e.g. "MedicationRequest")."""
    import gzip

    with gzip.open(SAMPLES / f"{name}.000.ndjson.gz", "rt", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]
PG_URL = os.environ.get("JOINEDUP_TEST_DATABASE_URL")


def _worker_database(url: str, worker: str) -> str:
    """Under pytest-xdist each worker gets a PostgreSQL database of its own (`<name>_<worker>`, created on first
    use), so one worker emptying its database at session start never pulls another's data from under it."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


if PG_URL and os.environ.get("PYTEST_XDIST_WORKER"):
    # set before any test module reads the variable (conftest is imported first), and inherited by CLI subprocesses
    PG_URL = os.environ["JOINEDUP_TEST_DATABASE_URL"] = _worker_database(PG_URL, os.environ["PYTEST_XDIST_WORKER"])
# Audit key and signed checkpoints of this test session, apart from any earlier run's: the PostgreSQL test database is
# emptied each session, and an earlier run's checkpoints would (rightly) report its chain as removed.
_AUDIT_DIR = Path(tempfile.mkdtemp(prefix="joinedup-audit-"))
os.environ.setdefault("JOINEDUP_AUDIT_CHECKPOINT_FILE", str(_AUDIT_DIR / "checkpoints.log"))
os.environ.setdefault("JOINEDUP_AUDIT_KEY_FILE", str(_AUDIT_DIR / "audit.key"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # each worker writes its own databases' checkpoints: the file the controller chose would be shared by both
    os.environ["JOINEDUP_AUDIT_CHECKPOINT_FILE"] = str(_AUDIT_DIR / "checkpoints.log")
    os.environ["JOINEDUP_AUDIT_KEY_FILE"] = str(_AUDIT_DIR / "audit.key")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(backend: str, tmp_path: Path, tag: str) -> str:
    """A new, empty database of its own for one test: a SQLite file in tmp_path, or `<test database>_<tag>` dropped
    and created again on the PostgreSQL server (for tests that kill importers or need a store nobody else wrote)."""
    import sqlalchemy as sa

    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'{tag}.db'}"
    base = sa.engine.make_url(PG_URL)
    name = f"{base.database}_{tag}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a PostgreSQL database that `fresh_database` made (its connections are closed by force)."""
    import sqlalchemy as sa

    base = sa.engine.make_url(url)
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{base.database}" WITH (FORCE)'))
    admin.dispose()


def _reset_postgres(url: str) -> None:
    import sqlalchemy as sa

    from joinedup.store.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("joinedup")


_ONCE: dict[tuple[str, str], object] = {}


def once_per_database(name: str, db_url: str, build):
    """`build()` once per test process and database. A session fixture parametrised by backend is set up again
    whenever the run switches backend (pytest-xdist hands a worker files in any order): what it built for a
    database - the emptied schema, the server, the demo population - is kept and handed back, never rebuilt."""
    key = (name, db_url)
    if key not in _ONCE:
        _ONCE[key] = build()
    return _ONCE[key]


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request, tmp_root) -> str:
    """A fresh database: a SQLite file, or the PostgreSQL test database emptied at session start."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_root / 'store.db'}"
    once_per_database("emptied", PG_URL, lambda: _reset_postgres(PG_URL))
    return PG_URL


@dataclass
class Server:
    url: str
    db_url: str
    tokens: dict[str, str]
    gate: object

    def client(self, user: str | None = "admin") -> httpx.Client:
        headers = {"Accept": "application/fhir+json"}
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


# The files that take longest start first, so that under pytest-xdist (`--dist loadfile`, one file per worker at a
# time) no worker is left running a long file after the others have finished: the order of the files' summed
# durations in a full run (`--durations`, December 2026), the Spark and linkage group (SAME_WORKER) first. Only the
# order of files changes: the tests inside each file, and every other file, keep pytest's order (tests never depend
# on the order of files). pytest-xdist's own reordering (by number of tests) is turned off for this.
LONGEST_FIRST = ("population/test_population_spark.py", "governance/test_authorization_matrix.py",
                 "security/test_fuzz.py", "browser/test_accessibility.py", "browser/test_roles_crawl.py",
                 "browser/test_person_view.py", "interop/test_import_deferred_indexes.py",
                 "browser/test_population_dashboard.py", "browser/test_portal.py", "population/test_dashboard.py",
                 "security/test_signin.py", "browser/test_pathways.py", "browser/test_virtual_wards.py",
                 "browser/test_workforce.py", "browser/test_role_pages.py", "interop/hl7/test_processes.py",
                 "browser/test_directory_and_assessment.py", "population/test_cost.py",
                 "security/test_audit_durability.py", "browser/test_care_plan_journey.py",
                 "security/test_web_security.py", "population/test_views_files.py",
                 "interop/test_import_guarantees.py", "security/test_limits.py", "browser/test_advice_and_mdt.py",
                 "conflicts/test_screen.py", "record/test_summary_api.py", "fhir/test_compartments_http.py",
                 "record/test_summary_synthea.py", "security/test_audit_chain_attacks.py")


# Files that share an expensive per-process resource run on one worker, as one unit of work: Spark's JVM (seconds to
# start, and its first queries run slow until the JIT warms up) and the linkage population and trained model
# (`once_per_database` in tests/interop/linkage/conftest.py), which each worker would otherwise build again.
SAME_WORKER = {name: "spark-and-linkage" for name in (
    "population/test_spark.py", "population/test_population_spark.py", "population/test_measures.py",
    "interop/linkage/test_api.py", "interop/linkage/test_browser.py", "interop/linkage/test_cli.py",
    "interop/linkage/test_governance.py", "interop/linkage/test_model.py", "interop/linkage/test_nicknames.py",
    "interop/linkage/test_unlink.py")}


class _Scheduling:
    """A plugin for pytest-xdist's scheduler hook (registered only when xdist is loaded: `-p no:xdist` runs work)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        """`--dist loadfile`, except that the files of SAME_WORKER go to one worker together."""
        from xdist.scheduler import LoadFileScheduling

        class FilesAndGroups(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                file = nodeid.split("::", 1)[0]
                return SAME_WORKER.get(file.removeprefix("tests/"), file)

        if config.getvalue("dist") == "loadfile":
            config.option.loadscopereorder = False  # keep LONGEST_FIRST (xdist orders units by their test count)
            return FilesAndGroups(config, log)
        return None


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduling(), "joinedup-scheduling")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))


_SERVERS: list = []


@pytest.fixture(scope="session", autouse=True)
def _stop_servers():
    """Stop every test server at the end of the session (servers outlive a switch of backend: see
    once_per_database)."""
    yield
    for srv, thread in _SERVERS:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(db_url, tmp_root) -> Server:
    """The app served by uvicorn on a loopback port, with users of several roles (one per database)."""
    return once_per_database("server", db_url, lambda: _start_server(db_url, tmp_root))


def _start_server(db_url: str, tmp_root: Path) -> Server:
    import uvicorn

    from joinedup.app import create_app
    from joinedup.config import Settings
    from joinedup.governance.accounts import add_user, issue_token
    from joinedup.governance.gate import get_gate

    settings = Settings(database_url=db_url, export_dir=tmp_root / f"exports-{abs(hash(db_url))}",
                        secret_key="test-secret")
    app = create_app(settings)
    gate = get_gate(db_url)
    users = {
        "admin": dict(role="system"),
        "gp": dict(role="gp", practitioner="gp-1", organization="practice-1"),
        "analyst": dict(role="analyst"),
        "pat": dict(role="patient", patient="self-1"),
    }
    tokens = {}
    for name, spec in users.items():
        add_user(gate, name=name, password=f"{name}-pw", replace=True, **spec)
        tokens[name] = issue_token(gate, name)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    _SERVERS.append((srv, thread))
    return Server(f"http://127.0.0.1:{port}", db_url, tokens, gate)


@pytest.fixture()
def api(server) -> httpx.Client:
    """An HTTP client authenticated as the integration account."""
    with server.client("admin") as c:
        yield c


@pytest.fixture()
def uid() -> str:
    """A unique suffix so tests sharing a database do not see each other's data."""
    import uuid

    return uuid.uuid4().hex[:10]


# -- the one browser of the test session -------------------------------------------------------------------------
# Playwright's sync API allows one running instance per thread: every browser test (tests/browser and the pages of
# other packages) shares this session fixture.
CHROMIUM = os.environ.get("JOINEDUP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def chromium():
    import shutil

    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(chromium):
    context = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    pg = context.new_page()
    pg.set_default_timeout(15000)
    yield pg
    context.close()
