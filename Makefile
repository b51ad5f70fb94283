# Two commands do all the set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use and install the project with every extra.

VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install demo demo-advantages test test-slow lint docs docs-serve clean

install: $(VENV)/.installed

# torch is pinned first to the CPU build that the CI machine holds on disk (any torch>=2.2 works: edit freely);
# the project itself asks only for a range.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/rlhf-oracle demo

# the demo once per advantage estimator (GAE and the critic-free ones), then the README's table: about 7 minutes
demo-advantages: install
	$(PY) scripts/compare_advantages.py

# the default suite on both cores (pytest-xdist): about 5.5 min here, 12.5 min sequentially
test: install
	$(VENV)/bin/pytest -n 2

test-slow: install
	$(VENV)/bin/pytest -m slow

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: install
	$(VENV)/bin/mkdocs build --strict

docs-serve: install
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
