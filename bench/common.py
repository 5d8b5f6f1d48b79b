"""Helpers shared by the benchmarks: results files, a served app, wrk runs."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def host_speed() -> float:
    """Seconds a fixed pure-Python loop of 10 million additions takes here now (best of three runs of a third of
    it): the machines benchmarks run on are shared, and the same code has run twice as fast on one as on another, so
    every result says how fast this one was when it was written."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        i = 0
        for _ in range(3_333_333):
            i += 1
        best = min(best, time.perf_counter() - t)
    return round(best * 3, 2)


def write_result(name: str, figures: dict) -> Path:
    """Print figures and write bench/results/NAME.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                       "python_loop_10m_seconds": host_speed()},
           **figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def joinedup_bin() -> str:
    exe = Path(sys.executable).with_name("joinedup")
    return str(exe) if exe.exists() else "joinedup"


class Served:
    """`joinedup serve` in a subprocess against a database, stopped on exit."""

    def __init__(self, db_url: str, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, JOINEDUP_DATABASE_URL=db_url)
        self.proc = subprocess.Popen([joinedup_bin(), "serve", "--port", str(self.port), "--workers", str(workers)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx

        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, *, token: str, script: str | None = None, connections: int = 32, seconds: int = 15,
        threads: int = 1) -> dict:
    """Run wrk against url; returns requests/s and latency percentiles in ms."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make bench installs it: apt-get install wrk)")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
           "-H", f"Authorization: Bearer {token}", "-H", "Accept: application/fhir+json"]
    tmp = None
    if script:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"wrk-{os.getpid()}.lua"
        tmp.write_text(script)
        cmd += ["-s", str(tmp)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    if tmp:
        tmp.unlink(missing_ok=True)
    figures = {"connections": connections, "seconds": seconds}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figures["requests_per_s"] = float(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        figures[f"p{pct}_ms"] = round(float(m.group(1)) * _UNITS[m.group(2)], 2) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    figures["requests"] = int(m.group(1)) if m else None
    return figures


def fresh_database(kind: str, tmp: Path, tag: str) -> str:
    """A new, empty database for one benchmark run: a SQLite file in `tmp`, or `<name>_<tag>` dropped and created
    again on the server JOINEDUP_BENCH_DATABASE_URL names."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'{tag}.db'}"
    import sqlalchemy as sa

    url = sa.engine.make_url(os.environ["JOINEDUP_BENCH_DATABASE_URL"])
    name = f"{url.database}_{tag}".replace("-", "_")
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # FORCE: the run before (in this process too: a bench reads its results through the gate) may still be
        # connected to it
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)
