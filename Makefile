# wmq: `make figures` runs the study, `make test` tests it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.wmq-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install figures test goldens bench

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV)

# Torch is installed pinned (a local CPU wheel) only when none is importable: an unpinned install pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	@$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

figures: install
	@$(BIN)/python -m wmqlib.reproduce --profile full

test: install
	@$(BIN)/python -m pytest -q
