# s4kit: `make demo` and `make test` each work on a fresh machine with Python 3.11+ and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.s4kit-installed
DEMO   ?= runs/demo
DATA   ?= data/digits
export PYTHONUNBUFFERED := 1

.PHONY: install test test-slow book test-book demo table benchmark mutants clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

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

# Every method on digits 1_16 (+ supervised on full): results table and figures.
demo: $(STAMP)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/python -m s4kit.demo --data $(DATA) --out $(DEMO) --figures figures

# The README results table: 3 seeds of every method on digits 1_16 (+ supervised full).
table: $(STAMP)
	$(BIN)/s4kit data digits --root $(DATA)
	$(BIN)/python -m s4kit.demo --data $(DATA) --out runs/table --seeds 0 1 2 --figures ""

benchmark: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py
	$(BIN)/python benchmarks/sampling_cost.py --repeats 3
	$(BIN)/python benchmarks/tsne_cost.py

# Named mutations of s4kit, one at a time in a temporary copy: which do the fast tests kill?
mutants: $(STAMP)
	$(BIN)/python benchmarks/mutants.py

clean-demo:
	rm -rf $(DEMO)
