# pgod: `make demo` and `make test` install what they need, then run.
PYTHON ?= python3
VENV   := .venv
STAMPS := .make

# The suite and the demo run as root: pgod is a root daemon, and its tests switch to other users
# (nobody) to prove its access control. A non-root user's runs go through sudo, leaving no
# root-owned caches in the checkout; the demo's folder is given back to the user afterwards.
ifeq ($(shell id -u),0)
AS_ROOT :=
PYTEST_NO_CACHE :=
else
# The opt-in test inputs (NIXPKGS_LIB, NIXPKGS, NIX_BIN_DIR) and the guest tests' settings
# (PGOD_GUEST_TESTS, PGOD_GUEST_CACHE, PGOD_POWER_CUTS) go along: sudo drops the rest.
AS_ROOT := sudo env PYTHONDONTWRITEBYTECODE=1 $(foreach v,NIXPKGS_LIB NIXPKGS NIX_BIN_DIR PGOD_GUEST_TESTS PGOD_GUEST_CACHE PGOD_POWER_CUTS,$(if $($(v)),$(v)=$($(v))))
PYTEST_NO_CACHE := -p no:cacheprovider
endif

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
	$(AS_ROOT) $(VENV)/bin/python -m pytest -q $(PYTEST_NO_CACHE) $(PYTEST_ARGS)

demo: venv
	$(AS_ROOT) $(VENV)/bin/python -m demo; status=$$?; \
	  $(if $(AS_ROOT),sudo chown -R "$$(id -u):$$(id -g)" demo-state;) exit $$status

benchmark: venv
	$(AS_ROOT) $(VENV)/bin/python -m benchmarks.ingest
	$(AS_ROOT) $(VENV)/bin/python -m benchmarks.pgo
	$(AS_ROOT) $(VENV)/bin/python -m benchmarks.hostile
	$(AS_ROOT) $(VENV)/bin/python -m benchmarks.fairness

clean:
	$(AS_ROOT) rm -rf $(STAMPS) demo-state build
