# One command to install and run the demo, one to run the tests (README).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: demo test bench
demo: $(VENV)/.installed
	$(VENV)/bin/hci-upgrade demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check cli flows hciupgrade tasks tests benchmarks
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/rolling_upgrade.py
