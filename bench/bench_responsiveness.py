"""Responsiveness under a large write: /healthz latency while a 20,000-entry transaction Bundle is processed.

`joinedup serve` (one worker process, so nothing can hide behind a second worker) runs against a fresh SQLite
store. The bench first polls `/healthz` with no other work (the same-run baseline), then POSTs one transaction
Bundle of JOINEDUP_BENCH_BATCH_ENTRIES entries (default 20,000: PUTs of Patients and of vital-sign Observations
about them, as a GP system catching up would send) and polls `/healthz` from another connection the whole time
the Bundle is in flight. Figures: p50/p99/max /healthz latency for both phases, the number of polls, and how long
the Bundle took.

A store call made on the event loop shows up here as /healthz waiting for the whole Bundle (seconds); with store
work in the thread pool it waits only for the interpreter lock (milliseconds).

Set JOINEDUP_BENCH_BEFORE_SRC to another checkout's `src` (e.g. `git worktree add ../before HEAD~1`, then
`../before/src`) to measure that code too, in the same run, as `before`. Writes bench/results/responsiveness.json.
Bounded: at most 50,000 entries, polls every 20 ms, gives up after 600 s; loopback only.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

from bench.common import ROOT, Served, joinedup_bin, write_result

MAX_ENTRIES = 50_000
POLL_EVERY_S = 0.02
BASELINE_S = 5.0
TIMEOUT_S = 600.0
LOINC = [("8867-4", "Heart rate", "/min", 50, 110), ("9279-1", "Respiratory rate", "/min", 10, 28),
         ("59408-5", "Oxygen saturation", "%", 88, 100), ("8310-5", "Body temperature", "Cel", 35.5, 39.5),
         ("29463-7", "Body weight", "kg", 45, 120), ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 180),
         ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 110)]


def transaction(entries: int) -> dict:
    """A transaction Bundle: one Patient per 50 entries, the rest vital-sign Observations about them."""
    n_patients = max(1, entries // 50)
    out = []
    for p in range(n_patients):
        pid = f"rb-{p:06d}"
        out.append({"resource": {
            "resourceType": "Patient", "id": pid, "active": True, "gender": "female" if p % 2 else "male",
            "birthDate": f"{1930 + p % 70}-{1 + p % 12:02d}-{1 + p % 28:02d}",
            "name": [{"family": f"Bench{p}", "given": ["Resp"]}],
            "identifier": [{"system": "https://example.org/bench-mrn", "value": f"MRN{p:07d}"}]},
            "request": {"method": "PUT", "url": f"Patient/{pid}"}})
    i = 0
    while len(out) < entries:
        p = i % n_patients
        code, display, unit, lo, hi = LOINC[i % len(LOINC)]
        value = round(lo + (hi - lo) * ((i * 7919) % 1000) / 1000, 1)
        oid = f"ro-{i:07d}"
        out.append({"resource": {
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": f"Patient/rb-{p:06d}"},
            "effectiveDateTime": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}},
            "request": {"method": "PUT", "url": f"Observation/{oid}"}})
        i += 1
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def _pct(samples: list[float]) -> dict:
    s = sorted(samples)
    if not s:
        return {"n": 0}
    # nearest rank: with few samples (a stalled server answers few polls) p99 is the worst one, as it should be
    return {"p50_ms": round(statistics.median(s), 1), "p99_ms": round(s[math.ceil(len(s) * 0.99) - 1], 1),
            "max_ms": round(s[-1], 1), "n": len(s)}


def _poll(url: str, stop: threading.Event, deadline: float) -> list[float]:
    """Ask /healthz every POLL_EVERY_S until stopped; latencies in ms (a failure or timeout counts as its time)."""
    out = []
    with httpx.Client(timeout=TIMEOUT_S) as c:
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                c.get(f"{url}/healthz")
            except httpx.HTTPError:
                pass
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(POLL_EVERY_S)
    return out


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([joinedup_bin(), *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"joinedup {' '.join(args)} failed: {done.stderr[-500:]}")
    return done.stdout


def measure(body: bytes, entries: int, src: str | None = None) -> dict:
    """Serve the code in `src` (default: this checkout) on a fresh store and measure both phases."""
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-resp-") as tmp:
        tmp_path = Path(tmp)
        db_url = f"sqlite:///{tmp_path / 'bench.db'}"
        env = dict(os.environ, JOINEDUP_DATABASE_URL=db_url, JOINEDUP_SECRET_FILE=str(tmp_path / "secret.key"),
                   JOINEDUP_AUDIT_KEY_FILE=str(tmp_path / "audit.key"), JOINEDUP_EXPORT_DIR=str(tmp_path / "exports"),
                   JOINEDUP_AUDIT_CHECKPOINT_FILE=str(tmp_path / "audit-checkpoints.log"))
        if src:
            env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        _cli(env, "users", "add", "bench", "--role", "system", "--replace")
        token = _cli(env, "token", "bench").split()[-1]
        saved = dict(os.environ)
        os.environ.update(env)  # Served passes os.environ on to `joinedup serve`
        try:
            srv = Served(db_url, workers=1)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        with srv:
            _poll(srv.url, threading.Event(), time.monotonic() + 1.0)  # warm-up
            baseline = _poll(srv.url, threading.Event(), time.monotonic() + BASELINE_S)
            result: dict = {}

            def post() -> None:
                t0 = time.perf_counter()
                try:
                    r = httpx.post(f"{srv.url}/fhir", content=body, timeout=TIMEOUT_S,
                                   headers={"Authorization": f"Bearer {token}",
                                            "Content-Type": "application/fhir+json"})
                    result["status"] = r.status_code
                    if r.status_code == 200:
                        result["entries_ok"] = sum(1 for e in r.json().get("entry", [])
                                                   if str(e.get("response", {}).get("status", "")).startswith("20"))
                    else:
                        result["error"] = r.text[:300]
                except httpx.HTTPError as exc:
                    result["status"] = None
                    result["error"] = f"{type(exc).__name__}: {exc}"
                result["seconds"] = round(time.perf_counter() - t0, 2)
                stop.set()

            stop = threading.Event()
            poster = threading.Thread(target=post)
            poster.start()
            during = _poll(srv.url, stop, time.monotonic() + TIMEOUT_S)
            poster.join()
    return {"code": "another checkout (JOINEDUP_BENCH_BEFORE_SRC)" if src else "this checkout", "baseline_healthz": _pct(baseline), "during_batch_healthz": _pct(during),
            "batch": {"entries": entries, "bytes": len(body), **result}}


def _commit(src: str | None) -> str | None:
    try:
        where = Path(src).parent if src else ROOT
        return subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> dict:
    entries = min(int(os.environ.get("JOINEDUP_BENCH_BATCH_ENTRIES", "20000")), MAX_ENTRIES)
    body = orjson.dumps(transaction(entries))
    print(f"transaction Bundle: {entries:,} entries, {len(body) / 1e6:.1f} MB")
    figures: dict = {}
    before_src = os.environ.get("JOINEDUP_BENCH_BEFORE_SRC")
    if before_src:
        figures["before"] = measure(body, entries, before_src)
        figures["before"]["commit"] = _commit(before_src)
        print(f"before: {figures['before']}")
    after = measure(body, entries)
    after["commit"] = _commit(None)
    print(f"this checkout: {after}")
    figures.update({
        "entries": entries,
        "workers": 1,
        "poll_every_ms": POLL_EVERY_S * 1000,
        "baseline_healthz": after["baseline_healthz"],
        "during_batch_healthz": after["during_batch_healthz"],
        "batch": after["batch"],
        "commit": after["commit"],
        "goal": {"during_batch_p99_ms": 250},
    })
    figures["meets_goal"] = (after["batch"].get("status") == 200
                             and (after["during_batch_healthz"].get("p99_ms") or 1e9) <= 250)
    write_result("responsiveness", figures)
    return figures


if __name__ == "__main__":
    main()
