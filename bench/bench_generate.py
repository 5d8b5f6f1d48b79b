"""Benchmark: synthetic ICS generation speed and memory; prints figures and writes bench/results/generate.json.

Run: python -m bench.bench_generate [PATIENTS]   (default 20,000 people, 2 workers; `make bench` runs the default)
     python -m bench.bench_generate 1000000     (the full-scale run behind issue 3's figure: ~18 GB of NDJSON in a
                                                 temporary directory, removed afterwards; writes generate-1m.json)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from joinedup.synth.service import generate

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _results_file(patients: int) -> Path:
    if patients == 20_000:
        return RESULTS_DIR / "generate.json"
    name = f"{patients // 1_000_000}m" if patients % 1_000_000 == 0 else f"{patients}"
    return RESULTS_DIR / f"generate-{name}.json"


class _TreeRss:
    """Samples the summed resident memory of this process and its children (Linux /proc) every 0.5 s."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_kib(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return 0
        return 0

    def _tree(self) -> list[int]:
        me = os.getpid()
        pids = [me]
        try:
            with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as fh:
                pids += [int(x) for x in fh.read().split()]
        except OSError:
            return pids
        return pids

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total = sum(self._rss_kib(pid) for pid in self._tree()) / 1024
            self.peak_mb = max(self.peak_mb, total)

    def __enter__(self) -> _TreeRss:
        if Path("/proc/self/status").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def main(patients: int = 20_000, workers: int = 2, seed: int = 42) -> dict:
    """Generate `patients` people, measure throughput and peak memory, extrapolate to 1,000,000 people."""
    out = Path(tempfile.mkdtemp(prefix="joinedup-bench-gen-")) / "ics"
    try:
        with _TreeRss() as tree:
            start = time.perf_counter()
            result = generate(patients=patients, seed=seed, out=out, workers=workers)
            elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.iterdir())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    kib = 1 if platform.system() == "Linux" else 1 / 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1024
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024
    figures = {
        "patients": patients, "workers": workers, "cpus": os.cpu_count(), "seconds": round(elapsed, 2),
        "patients_per_second": round(patients / elapsed, 1),
        "resources": result.resources, "resources_per_patient": round(result.resources / patients, 1),
        "resources_per_second": round(result.resources / elapsed),
        "bytes_per_patient": round(size / patients), "output_mb": round(size / 2**20, 1),
        "peak_rss_worker_mb": round(child_peak, 1), "peak_rss_parent_mb": round(self_peak, 1),
        "peak_rss_total_estimate_mb": round(self_peak + workers * child_peak, 1),
        "peak_rss_tree_sampled_mb": round(tree.peak_mb, 1),
        "projected_seconds_1m": round(1_000_000 / (patients / elapsed)),
        "projected_output_gb_1m": round(size / patients * 1_000_000 / 2**30, 1),
        "counts": result.counts, "ground_truth": result.truth,
    }
    results = _results_file(patients)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"generate: {patients:,} people in {elapsed:.1f}s with {workers} workers")
    print(f"  {figures['patients_per_second']:,} people/s, {figures['resources_per_second']:,} resources/s, "
          f"{figures['resources_per_patient']} resources/person, {figures['bytes_per_patient']:,} bytes/person")
    print(f"  peak RSS: worker {figures['peak_rss_worker_mb']} MB, parent {figures['peak_rss_parent_mb']} MB "
          f"(total ~{figures['peak_rss_total_estimate_mb']} MB; sampled whole tree {figures['peak_rss_tree_sampled_mb']} MB)")
    print(f"  projected 1,000,000 people: {figures['projected_seconds_1m'] / 60:.1f} min, "
          f"{figures['projected_output_gb_1m']} GB of NDJSON")
    print(f"  wrote {results}")
    return figures


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
