"""Runs one ViewDefinition with the `sqlonfhir` package (PyPI, SAS, Apache-2.0) over NDJSON files and prints
{"seconds": ..., "rows": [...]} on stdout; `seconds` covers reading and parsing the files and evaluating the view.

Run by bench/bench_views.py --peers in a virtual environment of its own (bench/.peers/), so that the peer is not a
dependency of JoinedUp. Usage: python sqlonfhir_run.py VIEW.json FILE.ndjson [FILE.ndjson ...]
"""

import json
import sys
import time
from decimal import Decimal

import sqlonfhir

view_file, *files = sys.argv[1:]
view = json.loads(open(view_file, encoding="utf-8").read())
start = time.perf_counter()
resources = [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]
rows = sqlonfhir.evaluate(resources, view)
seconds = time.perf_counter() - start


def _plain(value):
    """fhirpathpy gives FHIR decimals as Decimal: as JSON numbers, like the other implementations."""
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


sys.stdout.write(json.dumps({"seconds": seconds, "rows": rows}, default=_plain))
