# synthmed developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ROOT   ?= $(CURDIR)
PORT   ?= 5000

.DEFAULT_GOAL := help
.PHONY: help venv pg-install test-setup lint demo test test-fast bench bench-gpu ui server server-stop clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed  ## create .venv and install synthmed with dev extras

demo: venv  ## train a small DDPM on the built-in phantom data (CPU, a few minutes), log it to MLflow
	$(VENV)/bin/synthmed train experiment=demo paths.root=$(ROOT)

# Browser tests drive Debian's chromium through the playwright package (its own browser download cannot work
# offline). Idempotent: apt runs only when the binary is missing; needs root (as in CI) or sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
/usr/bin/chromium:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

# The tracking-server tests start a real PostgreSQL (Debian's postgresql, installed only when initdb is missing).
PG_INITDB := $(firstword $(shell command -v initdb) $(wildcard /usr/lib/postgresql/*/bin/initdb))
pg-install:
	@[ -n "$(PG_INITDB)" ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

test-setup: venv /usr/bin/chromium pg-install  ## what the tests need on a fresh machine: venv, dev extras, chromium, postgresql

lint: venv  ## layer contracts (import-linter) and ruff lint
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check synthmed tests benchmarks experiments

test: test-setup lint  ## lint, then the whole test suite (what CI runs)
	$(PY) -m pytest -q --durations=25  # the slowest tests are named in every CI log

test-fast: test-setup  ## the fast tier only (skips tests marked slow)
	$(PY) -m pytest -q -m "not slow"

bench: venv  ## CPU benchmarks: side-by-side ratios against a plain PyTorch loop / pytorch-fid / MONAI's inferer
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/fid.py
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/utility.py

bench-gpu: venv  ## the one-go GPU benchmark (< 8 min on one H200): benchmarks/results/gpu-*.{json,md}
	$(PY) benchmarks/gpu.py

ui: venv  ## MLflow UI on http://127.0.0.1:$(PORT) over the local store
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///$(ROOT)/mlflow.db

server: venv pg-install  ## team tracking server: PostgreSQL + MLflow on http://127.0.0.1:$(PORT) (Ctrl-C stops)
	$(VENV)/bin/synthmed server --root $(ROOT) --port $(PORT)

server-stop: venv  ## stop the server that `make server` started (from its pid/state file)
	$(VENV)/bin/synthmed server stop --root $(ROOT)

clean:  ## remove run outputs (keeps .venv)
	rm -rf outputs multirun checkpoints reports .cache mlartifacts mlruns mlflow.db .pytest_cache
