# `make run` and `make test` work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What `make run` needs (the service), and what tests and benchmarks add on top.
STAMP  := $(VENV)/.installed-run
TESTS  := $(VENV)/.installed-test

.PHONY: install run replay migrate test bench soak clean

$(STAMP): setup.cfg pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . -e './client[async]'
	touch $(STAMP)

$(TESTS): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TESTS)

install: $(TESTS)

run: $(STAMP)            ## serve on LLM_METRICS_HOST:LLM_METRICS_PORT (default 127.0.0.1:8001)
	exec $(PY) -m service serve

replay: $(STAMP)         ## rebuild the read models from the whole log (service stopped)
	$(PY) -m service replay $(REPLAY_ARGS)

migrate: $(STAMP)
	$(PY) -m service migrate

test: $(TESTS)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(TESTS)
	$(PY) -m bench

soak: $(TESTS)           ## about a minute of mixed load: RSS flat, p99 steady (not in `make test`)
	$(PY) -m tests.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
