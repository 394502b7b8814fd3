# `make run` trains the cpu preset (Atari learning on 2 CPU cores); `make test` runs the test suite.
# Both create .venv on first use and re-install when requirements.txt changes.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-all bench clean

$(STAMP): requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python run.py train --preset cpu

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -q

# Slow tests too (marked `slow`; skipped by `make test`).
test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m ""

bench: $(STAMP)
	$(VENV)/bin/python run.py bench throughput --json

clean:
	rm -rf $(VENV) runs
