# The README's two commands: `make demo` (set up + main job) and `make test` (set up + tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall whenever the dependency declaration changes.
STAMP := $(VENV)/.installed

.PHONY: demo test install data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import core, torch, torchvision" && touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/python -c "from core.data import provision; print('MNIST under', provision())"

# The main job: a smoke-scale ablation (baseline, attention off, linear schedule; 2 seeds) stored in
# MongoDB (the embedded server starts by itself when no database is configured), its report in
# outputs/demo-report/, and an audit of the stored runs.
DEMO_SWEEP := --plan ofat --only attention,schedule --seeds 0,1
demo: data
	$(BIN)/python ablations/sweep.py $(DEMO_SWEEP) with smoke
	$(BIN)/python analysis/report.py --sweep $$($(BIN)/python ablations/sweep.py $(DEMO_SWEEP) --print-id with smoke) \
		--out outputs/demo-report
	$(BIN)/python -m ablations.store status

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs .pytest_cache
