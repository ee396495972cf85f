# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# bash with pipefail: a failing command fails its pipeline (the pip lines below filter its output).
SHELL := bash
.SHELLFLAGS := -o pipefail -c
# Reinstall whenever the dependency declaration or the lock changes.
STAMP := $(VENV)/.installed

.PHONY: demo test install lock data clean device-kit

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The exact versions of requirements.lock, then this package itself (editable, so the CLIs run by path).
# (Some machines' pip configuration names package folders that do not exist; its warnings are dropped,
# its errors are not.) pip compiles the packages' bytecode on one core; compileall does it on all of them
# (a 2-core Xeon: 81 + 37 s against 150 s). Its non-zero exit is torch's one file of Python 3.12 syntax
# (torch/testing/_internal/py312_intrinsics.py, unused here), which pip fails to compile and skips too.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
		> /dev/null || true
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -c "import core, ablations, analysis, torch, torchvision" || { echo "The packages in $(VENV) do" \
		"not import (above). pip does not replace a file missing from a package it finds installed (seen" \
		"once: libnccl.so.2), so remove the environment and run make again: rm -rf $(VENV)"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

# Pin what is installed now (after changing pyproject.toml's ranges and installing them).
lock: install
	{ sed -n '1,2p' requirements.lock; $(BIN)/pip freeze --all --exclude-editable | grep -v '^pip=='; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

data: install
	$(BIN)/python -c "from core.data import provision; print('MNIST under', provision())"

# The main job: a smoke-scale ablation (baseline, attention off, linear schedule; 2 seeds) stored in
# MongoDB (the embedded server starts by itself when no database is configured), its report in
# outputs/demo-report/, and an audit of the stored runs.
DEMO_SWEEP := --plan ofat --only attention,schedule --seeds 0,1
demo: data
	$(BIN)/python ablations/sweep.py $(DEMO_SWEEP) with smoke
	sweep=$$($(BIN)/python ablations/sweep.py $(DEMO_SWEEP) --print-id with smoke) && \
		$(BIN)/python analysis/report.py --sweep $$sweep --out outputs/demo-report && \
		$(BIN)/python analysis/audit.py --sweep $$sweep
	$(BIN)/python -m ablations.store status

# Three workers, a test module each at a time, one torch thread each (tests/conftest.py); TEST_WORKERS=0 runs
# the tests in one process. On 2 cores a third worker fills the time the others wait on a server or a process they
# started: 777 s against 812 s for two, run after each other (README: The two commands).
TEST_WORKERS ?= 3
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# What a GPU machine needs beside the working tree (benchmarks/device/README.md): .device/
device-kit: install
	bash benchmarks/device/kit.sh

clean:
	rm -rf outputs .pytest_cache
