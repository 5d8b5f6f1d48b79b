# JoinedUp: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
HL7_PORT ?= 2575

.PHONY: demo test bench lint system-deps venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[analytics,test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the browser tests and benchmarks need (chromium for Playwright, wrk for load, Java 17 for Spark).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium wrk default-jre-headless; \
	fi

demo: $(STAMP)
	JOINEDUP_HL7_PORT=$(HL7_PORT) $(VENV)/bin/joinedup demo --host $(HOST) --port $(PORT)

# Three worker processes on two cores (pytest-xdist; whole files per worker, the longest files first, each worker
# with its own PostgreSQL database): much of the suite waits on PostgreSQL round trips, servers and browsers, so a
# third worker fills cores the other two leave idle.
TEST_WORKERS ?= 3
test: $(STAMP) system-deps lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP) system-deps
	$(PY) -m bench.run $(BENCH)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm
