"""`make bench`: run every benchmark in turn (each prints figures and writes bench/results/*.json)."""

from __future__ import annotations

import importlib
import sys
import traceback

BENCHMARKS = ["bench.bench_store", "bench.bench_generate", "bench.bench_conflicts", "bench.bench_record", "bench.bench_policy",
              "bench.bench_care_worklist", "bench.bench_notifications", "bench.bench_responsiveness", "bench.bench_hl7",
              "bench.bench_views", "bench.bench_population", "bench.bench_population_scale", "bench.bench_person_page",
              "bench.bench_linkage", "bench.bench_import", "bench.bench_reads", "bench.bench_assessment"]


def main(argv: list[str]) -> int:
    chosen = [b for b in BENCHMARKS if not argv or any(a in b for a in argv)]
    failed = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        try:
            importlib.import_module(name).main()
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"(skipped: {name} is not present)")
                continue
            traceback.print_exc()
            failed.append(name)
        except Exception:  # noqa: BLE001 - report and carry on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
