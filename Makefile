# The two commands: `make run` (the product, locally) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install-smoke bench screenshots clean

run: $(STAMP)
	@scripts/install-system-deps.sh
	$(VENV)/bin/gateway dev

# Lint, then the wheel on every Python found, the benchmarks' smoke runs (bench/run.py, and bench/ratelimit.py:
# 3 gateway processes, ~20 s, fails if a quota admits other than exactly its limit), and the suite last
# (its closing line is the run's summary).
test: $(STAMP)
	@scripts/install-system-deps.sh test
	$(VENV)/bin/ruff check .
	$(PY) tests/install/run.py
	$(PY) bench/run.py --smoke --output artifacts/bench-smoke.json
	$(PY) bench/ratelimit.py --smoke --output artifacts/bench-ratelimit-smoke.json
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The wheel installed into a fresh venv per CPython >= 3.11 found, and run from outside the tree.
install-smoke: $(STAMP)
	@scripts/install-system-deps.sh
	$(PY) tests/install/run.py

# The benchmark of issue #6 (about 6 minutes; see bench/README.md).
bench: $(STAMP)
	@scripts/install-system-deps.sh test
	$(PY) bench/run.py

# The browser tests save screenshots of the page (list and its flags, create and reveal dialogs, the key's
# detail view and its chart, the roll dialog and the Activity view; 320/375 px, 1280 px; the sign-in view,
# the no-access screen and the provider-down banner).
screenshots: $(STAMP)
	@scripts/install-system-deps.sh test
	$(PY) -m pytest -q tests/browser
	@echo "screenshots in artifacts/screenshots/"

$(STAMP): pyproject.toml
	@scripts/install-system-deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis *.egg-info
