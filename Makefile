# pgod: `make demo` and `make test` install what they need, then run.
PYTHON ?= python3
VENV   := .venv
STAMPS := .make

.PHONY: all deps venv test demo benchmark clean

all: test

$(STAMPS):
	mkdir -p $(STAMPS)

$(STAMPS)/os-deps: scripts/install-deps.sh | $(STAMPS)
	bash scripts/install-deps.sh
	touch $@

$(VENV)/.installed: pyproject.toml $(STAMPS)/os-deps
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

deps: $(STAMPS)/os-deps
venv: $(VENV)/.installed

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/python -m demo

benchmark: venv
	$(VENV)/bin/python -m benchmarks.ingest
	$(VENV)/bin/python -m benchmarks.pgo

clean:
	rm -rf $(STAMPS) demo-state build
