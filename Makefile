# The two commands: `make run` (the product, locally) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test system-deps clean

run: system-deps $(STAMP)
	$(VENV)/bin/gateway dev

test: system-deps $(STAMP)
	$(PY) -m pytest -q

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis *.egg-info
