# The two commands the README names:
#   make serve  - set up a torch-free environment and run the service on the shipped models
#   make test   - set up the full environment and run ruff, mypy and the whole pytest suite
SHELL := /bin/bash
SERVE_VENV ?= .venv-serve
DEV_VENV ?= .venv
BENCH_VENV ?= .venv-bench
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test models setup-serve setup-dev setup-bench lint typecheck pytest format bench \
	bench-peers clean

setup-serve:
	scripts/setup-env.sh $(SERVE_VENV) serve

setup-dev:
	scripts/setup-env.sh $(DEV_VENV) serve,train,dev

# On loopback the demo needs no API key (BREASTDX_ALLOW_ANONYMOUS=true unless set); on any other
# HOST keys are required: create one with 'breastdx api-keys create NAME'.
SERVE_ANONYMOUS ?= $(if $(filter 127.0.0.1 localhost ::1,$(HOST)),true,false)

serve: setup-serve
	BREASTDX_ALLOW_ANONYMOUS=$${BREASTDX_ALLOW_ANONYMOUS:-$(SERVE_ANONYMOUS)} \
	    $(SERVE_VENV)/bin/breastdx serve --host $(HOST) --port $(PORT)

# Rebuild the shipped models from scratch: train, export with parity, register, promote, verify
# (scripts/build-models.sh; data from BREASTDX_DATA_ROOT, default ../shared/data).
models:
	VENV=$(DEV_VENV) scripts/build-models.sh

test: setup-dev
	scripts/system-deps.sh
	$(MAKE) lint typecheck pytest

lint:
	$(DEV_VENV)/bin/ruff check .
	$(DEV_VENV)/bin/ruff format --check .

format:
	$(DEV_VENV)/bin/ruff format .
	$(DEV_VENV)/bin/ruff check --fix .

typecheck:
	$(DEV_VENV)/bin/mypy

pytest:
	$(DEV_VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup-dev
	$(DEV_VENV)/bin/python bench/bench_imaging.py

# breastdx beside LitServe and BentoML (bench/bench_peers.py), from a venv of their own: the
# peers never reach the product's environments. BENCH_PEERS_ARGS, e.g. --json peers.json.
setup-bench:
	scripts/setup-bench-env.sh $(BENCH_VENV)

bench-peers: setup-bench
	$(BENCH_VENV)/bin/python bench/bench_peers.py $(BENCH_PEERS_ARGS)

clean:
	rm -rf $(SERVE_VENV) $(DEV_VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
