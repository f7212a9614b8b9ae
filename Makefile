# Two commands do everything on a fresh machine:
#   make run     set up the virtual environment (once), run every lesson in teaching order, then
#                the trainer, and print a summary (one line per lesson, the trainer's verdict)
#   make test    set up the virtual environment with the test tools (once) and run pytest
#                (make test-processes: the tests that start process trees; CI runs both)
#   make book    the lab as a static web book in book/ (every lesson executed); make test-book
#                opens it in a real browser (Chromium)
# More:
#   make bench   the benchmark table (about 9 minutes here; BENCH_ARGS="--rows 2,3 --json bench.json")
#   make mutate  small wrong edits of the lessons and the trainer; each must fail a test
#   make lesson L=05_gradient_computation_backward    one lesson, with the environment's Python
# Overrides: VENV=path (where the environment lives), PYTHON=python3.x, DEVICE=auto|cpu|cuda.

VENV ?= .venv
PYTHON ?= python3
DEVICE ?= auto
BENCH_ARGS ?=
L ?=
ARGS ?=
NOTEBOOKS ?= notebooks
NOTEBOOK_ARGS ?=
PY := $(VENV)/bin/python

.PHONY: run lesson notebook train test test-processes book test-book bench mutate package clean help

help:
	@echo "make run     - install (once), run the lessons in teaching order and the trainer, print a summary"
	@echo "make test    - install (once) and run the tests"
	@echo "make test-processes - the tests that start process trees (torchrun, DDP, the bench, JupyterLab)"
	@echo "make book    - build the lab as a static web book in book/ (open book/index.html)"
	@echo "make test-book - build book/ if it is older than its sources, then test it in Chromium"
	@echo "make lesson L=NAME - run one lesson with the environment's Python (make lesson lists them)"
	@echo "make notebook L=NAME - open a lesson as a notebook in JupyterLab (installs the test tools once)"
	@echo "make train   - run the trainer once (python -m tensor_features.train)"
	@echo "make bench   - install (once) and print the benchmark table (BENCH_ARGS=... for options)"
	@echo "make mutate  - install (once) and check that every listed wrong edit fails a test"
	@echo "make clean   - remove the virtual environment ($(VENV)) and caches"

$(PY):
	$(PYTHON) -m venv $(VENV)

# A stamp per requirements file: pip runs again only when a requirements file changes. The
# package itself is installed in editable mode (pyproject.toml), so it runs from any folder;
# `package` re-points it when this clone is not the one the environment was made for.
$(VENV)/.installed-run: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed-run

package: $(VENV)/.installed-run
	@(cd / && $(abspath $(PY)) -c "import sys, tensor_features; sys.exit(tensor_features.__file__ != '$(CURDIR)/tensor_features/__init__.py')") 2>/dev/null \
		|| $(PY) -m pip install --quiet --no-deps -e .

run: $(VENV)/.installed-run package
	$(PY) -m tensor_features.lab.lessons --device $(DEVICE)

# L is a lesson's file name, with or without .py; ARGS are passed on (ARGS="--try 2").
lesson: $(VENV)/.installed-run package
	@if [ -z "$(L)" ] || [ ! -f "$(basename $(L)).py" ]; then \
		echo "usage: make lesson L=NAME [ARGS=...], NAME one of (teaching order):" >&2; \
		$(PY) -c "from tensor_features.lab.lessons import lesson_paths; print('\n'.join('  ' + p.stem for p in lesson_paths()))" >&2; \
		exit 2; fi
	$(PY) $(basename $(L)).py --device $(DEVICE) $(ARGS)

# The lesson as a notebook: its introduction and `# %%` cells become $(NOTEBOOKS)/NAME.ipynb
# (tensor_features/lab/notebook.py, through jupytext), opened in JupyterLab from the environment
# (the test tools include it). NOTEBOOK_ARGS go to `jupyter lab`.
notebook: $(VENV)/.installed-dev package
	@if [ -z "$(L)" ] || [ ! -f "$(basename $(L)).py" ]; then \
		echo "usage: make notebook L=NAME, NAME one of (teaching order):" >&2; \
		$(PY) -c "from tensor_features.lab.lessons import lesson_paths; print('\n'.join('  ' + p.stem for p in lesson_paths()))" >&2; \
		exit 2; fi
	@mkdir -p $(NOTEBOOKS)
	$(PY) -m tensor_features.lab.notebook $(basename $(L)).py $(NOTEBOOKS)/$(notdir $(basename $(L))).ipynb
	$(VENV)/bin/jupyter lab $(NOTEBOOK_ARGS) $(NOTEBOOKS)/$(notdir $(basename $(L))).ipynb

train: $(VENV)/.installed-run package
	$(PY) -m tensor_features.train --device $(DEVICE)

# Two workers, a test file each at a time (a file's tests share its kernel and module fixtures; a
# lesson's terminal run is shared by both workers: tests/support.py, terminal_run).
test: $(VENV)/.installed-dev package
	$(PY) -m pytest -n 2 --dist loadfile -m "not processes and not book"

# The tests that start process trees (torchrun and DDP worlds, the bench's own runs, JupyterLab):
# about 100 s of CPU that would push make test past its 3 minutes. .ci/run runs both.
test-processes: $(VENV)/.installed-dev package
	$(PY) -m pytest -n 2 --dist loadfile -m processes

# The web book (tensor_features/lab/book.py): every lesson run as a notebook in its own kernel,
# two at a time, and written as HTML by nbconvert; the build fails, leaving book/ as it was, when
# a check disagrees. `make book` always builds; `make test-book` builds only when book/ is older
# than what it is made from, then opens every page in Chromium (Playwright; tests/book).
BOOK_SOURCES = $(wildcard [0-9][0-9]_*.py) README.md docs/performance.md \
	$(shell find tensor_features -name '*.py' -o -name '*.j2' -o -name '*.css' -o -name '*.json')

book: $(VENV)/.installed-dev package
	$(PY) -m tensor_features.lab.book --out book

book/index.html: $(BOOK_SOURCES) | $(VENV)/.installed-dev package
	$(PY) -m tensor_features.lab.book --out book

test-book: book/index.html $(VENV)/.installed-dev package
	$(PY) -m pytest -m book tests/book

# Row 6 of the table times the test suite, so the bench needs the test tools too.
bench: $(VENV)/.installed-dev package
	$(PY) -m bench --device $(DEVICE) $(BENCH_ARGS)

mutate: $(VENV)/.installed-dev package
	$(PY) -m tests.mutate

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
