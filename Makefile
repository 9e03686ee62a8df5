# The README's commands. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.runtime-installed
PYTEST_ARGS ?=

.PHONY: help venv run test test-unit lint format image bench system-deps clean gen image-clean docker-stop nix-check flake-check release-check dist test-container gates fuzz

help:
	@echo "make run    - install into $(VENV) (runtime deps only) and run the agent on its zero-config default"
	@echo "make test   - install system packages + test deps and run the whole suite"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict, import contracts, shellcheck"
	@echo "make image  - build the container images (secretivex:dev, secretivex:softhsm)"
	@echo "make bench  - full side-by-side comparison with OpenSSH's ssh-agent (~7 min)"
	@echo "make gates  - short smoke/SLO/reconnect/soak gates and comparison"
	@echo "make fuzz   - long stateful fuzz of a real agent (FUZZ_STEPS, FUZZ_SEED=N|random, FUZZ_RUNS)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,testing,plot,bench]'
	touch $(STAMP)

venv: $(STAMP)

# `make run` needs the runtime dependencies only (the test and dev extras come with
# `make test` / `make venv`).
# -qq: errors only (setuptools' editable-install BuildBackendWarning is noise here).
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -qq -e .
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/secretivex agent --print-env

system-deps:
	bash ci/install-system-deps.sh

test: system-deps $(STAMP)
	bash ci/run-tests.sh $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/python ci/gen-config-docs.py --check
	$(BIN)/ruff check secretivex tests
	$(BIN)/ruff format --check secretivex tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	shellcheck ci/*.sh .ci/run docker/*.sh

format: $(STAMP)
	$(BIN)/ruff format secretivex tests
	$(BIN)/ruff check --fix secretivex tests

image: $(STAMP)
	bash ci/build-image.sh

bench: $(STAMP)
	COMPARE_OUT=.build/compare bash ci/compare-openssh.sh

gates: $(STAMP)
	bash ci/gate-smoke.sh
	SLO_DURATION=1s bash ci/gate-slo.sh
	RECONNECT_DURATION=1s bash ci/gate-reconnect.sh
	SOAK_DURATION=4 bash ci/soak.sh
	COMPARE_SHORT=1 bash ci/compare-openssh.sh

# Long stateful fuzz of one real agent process per run (make test runs a short, fixed
# seed). FUZZ_SEED=random picks a new seed each run; a failure prints its seed.
FUZZ_STEPS ?= 5000
FUZZ_SEED ?= random
FUZZ_RUNS ?= 3
fuzz: $(STAMP)
	for run in $$(seq $(FUZZ_RUNS)); do \
	  SECRETIVEX_FUZZ_STEPS=$(FUZZ_STEPS) SECRETIVEX_FUZZ_SEED=$(FUZZ_SEED) \
	    $(BIN)/pytest -q -s -p no:randomly -o timeout=0 tests/integration/test_agent_fuzz.py || exit 1; \
	done

clean:
	rm -rf $(VENV) build dist .build *.egg-info

gen: $(STAMP)
	$(BIN)/python ci/gen-config-docs.py

image-clean:
	-docker image rm secretivex:dev secretivex:softhsm secretivex-systemd:dev secretivex-build:cache secretivex-base:bookworm

docker-stop:
	bash ci/docker-engine.sh stop

nix-check: $(STAMP)
	$(BIN)/pytest -q tests/nix

flake-check:
	nix flake check

release-check:
	bash ci/check-changelog.sh $(TAG)

dist: $(STAMP)
	$(BIN)/python -m build --outdir dist

test-container: $(STAMP)
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/pytest tests/container -q $(PYTEST_ARGS)
