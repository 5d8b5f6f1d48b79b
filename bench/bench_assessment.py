"""The board report and the services directory on a generated integrated care system.

`joinedup generate` makes JOINEDUP_BENCH_ASSESSMENT_PATIENTS people (default 1,000) with the synthetic ICS's
HealthcareServices, `joinedup import` loads them into SQLite; then, in process, the whole self-assessment report
(every framework item with its live evidence: one pass over every record through Gate.published_figures) is made
three times as a board member, and the directory answers five typed needs and one person's "who can help".
Writes bench/results/assessment.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import joinedup_bin, write_result

NEEDS = ["falls", "breathlessness", "memory", "help at home with washing", "diabetes"]


def main() -> None:
    patients = int(os.environ.get("JOINEDUP_BENCH_ASSESSMENT_PATIENTS", "1000"))
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-assessment-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'bench.db'}"
        env = dict(os.environ, JOINEDUP_DATABASE_URL=url, JOINEDUP_AUDIT_CHECKPOINT_FILE=str(root / "cp.log"),
                   JOINEDUP_AUDIT_KEY_FILE=str(root / "audit.key"), JOINEDUP_SECRET_FILE=str(root / "secret"))
        subprocess.run([joinedup_bin(), "generate", "--patients", str(patients), "--seed", "11", "--out",
                        str(root / "ics")], env=env, check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run([joinedup_bin(), "import", str(root / "ics")], env=env, check=True, capture_output=True)
        load_s = time.perf_counter() - t0
        os.environ.update({k: v for k, v in env.items() if k.startswith("JOINEDUP_")})
        from joinedup.governance.gate import get_gate
        from joinedup.governance.identity import SYSTEM, Principal
        from joinedup.system import assessment
        from joinedup.system import service as directory

        gate = get_gate(url)
        board = Principal(name="bench-board", role="board")
        report_s = []
        for _ in range(3):
            t = time.perf_counter()
            rep = assessment.report(gate=gate, who=board)
            report_s.append(time.perf_counter() - t)
        need_ms = []
        for need in NEEDS:
            t = time.perf_counter()
            found = directory.find_services(gate=gate, who=SYSTEM, need=need)
            need_ms.append((time.perf_counter() - t) * 1000)
            assert found["total"] >= 1, need
        person = gate.search(SYSTEM, "Patient", [("_count", "1")]).matches[0].id
        t = time.perf_counter()
        directory.who_can_help(gate=gate, who=SYSTEM, patient_id=person)
        help_ms = (time.perf_counter() - t) * 1000
        gate.flush_audit()
        services = len(directory.directory(gate=gate, who=SYSTEM)["services"])
    write_result("assessment", {
        "patients": patients, "services": services, "load_seconds": round(load_s, 1),
        "report_seconds": {"median": round(statistics.median(report_s), 2), "max": round(max(report_s), 2)},
        "report_items": len(rep["items"]),
        "directory_need_ms": {"median": round(statistics.median(need_ms), 1), "max": round(max(need_ms), 1)},
        "who_can_help_ms": round(help_ms, 1),
    })


if __name__ == "__main__":
    main()
