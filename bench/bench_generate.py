"""Benchmark: synthetic ICS generation speed and memory; prints figures and writes bench/results/generate.json.

Run: python -m bench.bench_generate [PATIENTS]   (default 20,000 people, 2 workers)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from joinedup.synth.service import generate

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"


def main(patients: int = 20_000, workers: int = 2, seed: int = 42) -> dict:
    """Generate `patients` people, measure throughput and peak memory, extrapolate to 1,000,000 people."""
    out = Path(tempfile.mkdtemp(prefix="joinedup-bench-gen-")) / "ics"
    try:
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
        "projected_seconds_1m": round(1_000_000 / (patients / elapsed)),
        "projected_output_gb_1m": round(size / patients * 1_000_000 / 2**30, 1),
        "counts": result.counts, "ground_truth": result.truth,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"generate: {patients:,} people in {elapsed:.1f}s with {workers} workers")
    print(f"  {figures['patients_per_second']:,} people/s, {figures['resources_per_second']:,} resources/s, "
          f"{figures['resources_per_patient']} resources/person, {figures['bytes_per_patient']:,} bytes/person")
    print(f"  peak RSS: worker {figures['peak_rss_worker_mb']} MB, parent {figures['peak_rss_parent_mb']} MB "
          f"(total ~{figures['peak_rss_total_estimate_mb']} MB)")
    print(f"  projected 1,000,000 people: {figures['projected_seconds_1m'] / 60:.1f} min, "
          f"{figures['projected_output_gb_1m']} GB of NDJSON")
    print(f"  wrote {RESULTS}")
    return figures


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
