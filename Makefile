# s4kit: `make demo` and `make test` each work on a fresh machine with Python 3.11+ and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s4kit-installed
DEMO   ?= runs/demo
DATA   ?= data/digits
export PYTHONUNBUFFERED := 1

.PHONY: install test test-slow book test-book demo demo-all table benchmark mutants clean-demo

CORE   := $(VENV)/.s4kit-core-installed

# make test, make book: s4kit with the dev extra (tests, the book's Sphinx, Chromium driver)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP) $(CORE)

# make demo: s4kit alone (what the runs need; a minute less to install than the dev extra)
$(CORE): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $(CORE)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not teaching" --durations=15

# Every notebook at its default (teaching) settings: about 5 minutes each on 2 cores.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "teaching" --durations=0

# The book: every notebook executed at its teaching settings + the method notes, as HTML in
# book/_build/html (an unchanged notebook is not executed again: jupyter-cache).
BOOK_OPTS ?= -q -W --keep-going
book: $(STAMP)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/sphinx-build -b html $(BOOK_OPTS) -c book . book/_build/html
	@echo "open book/_build/html/book/index.html"

# The book at smoke-test settings, served and checked in headless Chromium (screenshots in
# book/_build/screenshots/).
test-book: $(STAMP)
	$(BIN)/python -m pytest -q -m book tests/test_book.py

# The tour: CSS, PRCL and the mean teacher on digits 1_16 between supervised 1_16 and full (5 runs,
# seed 0): results table and figures. demo-all adds reco, rc2l, allspark and their networks' baselines (10 runs).
demo: $(CORE)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/python -m s4kit.demo --data $(DATA) --out $(DEMO) --figures figures

demo-all: $(CORE)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/python -m s4kit.demo --all --data $(DATA) --out $(DEMO) --figures figures

# The README results table: 3 seeds of every method on digits 1_16 (+ supervised full).
table: $(CORE)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/python -m s4kit.demo --all --data $(DATA) --out runs/table --seeds 0 1 2 --figures ""

benchmark: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/sampling_cost.py --repeats 3
	$(BIN)/python benchmarks/tsne_cost.py

# Named mutations of s4kit, one at a time in a temporary copy: which do the fast tests kill?
mutants: $(STAMP)
	$(BIN)/python benchmarks/mutants.py

clean-demo:
	rm -rf $(DEMO)
