# wmq: `make figures` runs the study, `make test` tests it. Every target creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.wmq-installed
GOLDENS := tests/notebooks
TEST_WORKERS ?= 2
BENCHMARKS := $(sort $(wildcard benchmarks/*.py))
# Idle OpenMP threads spin by default and starve a second process on a small machine.
export OMP_WAIT_POLICY ?= PASSIVE

.DEFAULT_GOAL := help
.PHONY: help install figures test test-compile goldens bench train book

help:
	@echo "make figures   run every notebook (full profile), writing notebooks/ and figures/"
	@echo "make test      unit tests, then the golden notebooks under $(GOLDENS) with nbval"
	@echo "make test-compile  the torch.compile parity checks that make test leaves out (CI runs both)"
	@echo "make goldens   re-execute the golden notebooks (smoke profile) on purpose"
	@echo "make bench     run every benchmarks/*.py"
	@echo "make book      render the committed executed notebooks as a static site in build/book (no re-execution)"
	@echo "make train     retrain the shipped models data/checkpoints/mini-wall and mini-pusht (CPU, 1.5-2 h each), their QAT fine-tunes and the RSSM mini-wall-rssm"
	@echo "make install   create $(VENV) and install wmq with its dev extras (the targets above do it)"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV)

# Torch is installed pinned (a CPU wheel) only when none is importable: an unpinned install pulls a CUDA build, and
# a torch the user put into $(VENV) themselves (e.g. a CUDA one) is kept.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	@$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(STAMP)

figures: install
	@$(BIN)/python -m wmqlib.reproduce --profile full

# The goldens are looked up when the recipe runs, so `make goldens test` checks the fresh ones. tests/check_goldens.sh
# checks them with nbval on two float paths side by side (README "Golden notebooks").
test: install
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not compile"
	@bash tests/check_goldens.sh $(BIN)/python

# The torch.compile parity checks (tests/test_compile.py), about two minutes of inductor C++ on two cores; CI runs
# them after `make test`.
test-compile: install
	@$(BIN)/python -m pytest -q -m compile

book: install
	@$(BIN)/python -m wmqlib.book --out build/book

goldens: install
	@$(BIN)/python -m wmqlib.reproduce --profile smoke --output $(GOLDENS)

bench: install
ifeq ($(BENCHMARKS),)
	@echo "no benchmarks/*.py yet: nothing to run"
else
	@set -e; for script in $(BENCHMARKS); do echo "== $$script"; $(BIN)/python $$script; done
endif

# Rebuilds the shipped small models from scratch (datasets are regenerated under data/datasets/ when missing).
# Then their QAT W4 / W3 fine-tunes (notebook 04), with the commands their cards record (~1-2 min each).
train: install
	@for name in mini-wall mini-pusht; do \
		$(BIN)/python -m wmqlib.train --preset $$name --out data/checkpoints/$$name || exit 1; \
		for bits in 4 3; do \
			$(BIN)/python -m wmqlib.qat --checkpoint $$name --bits $$bits --steps 800 --lr 0.0003 --batch-size 32 \
				--seed 0 --device cpu --out data/checkpoints/$$name-qat-w$$bits || exit 1; \
		done; \
	done
	@$(BIN)/python -m wmqlib.train --preset mini-wall-rssm --out data/checkpoints/mini-wall-rssm
