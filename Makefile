# Two commands do everything on a fresh machine:
#   make run    set up the virtual environment (once) and run every lesson, then the trainer
#   make test   set up the virtual environment with the test tools (once) and run pytest
#   make bench  the benchmark table (a few minutes; BENCH_ARGS="--rows 2,3 --json bench.json")
# Overrides: VENV=path (where the environment lives), PYTHON=python3.x, DEVICE=auto|cpu|cuda.

VENV ?= .venv
PYTHON ?= python3
DEVICE ?= auto
BENCH_ARGS ?=
PY := $(VENV)/bin/python
LESSONS := $(sort $(wildcard [0-9][0-9]_*.py))

.PHONY: run lessons train test bench clean help

help:
	@echo "make run    - install (once) and run the lessons in order, then the trainer"
	@echo "make test   - install (once) and run the tests"
	@echo "make bench  - install (once) and print the benchmark table (BENCH_ARGS=... for options)"
	@echo "make clean  - remove the virtual environment ($(VENV)) and caches"

$(PY):
	$(PYTHON) -m venv $(VENV)

# A stamp per requirements file: pip runs again only when a requirements file changes.
$(VENV)/.installed-run: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed-run

run: lessons train

lessons: $(VENV)/.installed-run
	@set -e; for lesson in $(LESSONS); do \
		echo; echo "=== $$lesson"; \
		$(PY) $$lesson --device $(DEVICE); \
	done

train: $(VENV)/.installed-run
	@echo; echo "=== python -m tensor_features.train"
	$(PY) -m tensor_features.train --device $(DEVICE)

test: $(VENV)/.installed-dev
	$(PY) -m pytest

# Row 6 of the table times the test suite, so the bench needs the test tools too.
bench: $(VENV)/.installed-dev
	$(PY) -m bench --device $(DEVICE) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
