# `make test` and `make demo` are all a newcomer needs: both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; override with `make TORCH=torch` for the default (CUDA) build.
TORCH ?= torch==2.13.0

.PHONY: test demo bench conformance lint clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

bench: $(VENV)/.installed
	$(PY) scripts/bench_generation.py --compile --json benchmarks/bench_generation.json --plot benchmarks/bench_generation.png
	$(PY) scripts/bench_training.py --json benchmarks/bench_training.json --plot benchmarks/bench_training.png
	$(PY) scripts/bench_kernels.py --json benchmarks/bench_kernels.json

# transformers' own common model tests (from the installed version's sdist) against H3, S4D and S5; set
# TRANSFORMERS_TESTS_DIR to a transformers checkout's tests/ to run its generate() and export mixins too.
conformance: $(VENV)/.installed
	RUN_SLOW=1 $(PY) conformance/run.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
