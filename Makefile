# edgepipe: `make up` runs the whole pipeline locally on real services,
# `make test` runs the suite against them. Both work from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SENSORS ?= 3
MODEL_PATH ?= models
PYTEST_ARGS ?=

.PHONY: help up down services status logs test test-fast lint model venv chromium \
	bench bench-bridge bench-sim bench-worker bench-analytics bench-api bench-codecs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "venv: installing edgepipe and its dependencies (first run takes a few minutes)"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project

services:  ## start Mosquitto, Kafka, the MongoDB-wire server and mongo-express
	@bash local_stack/stack.sh up

status:  ## one line per local service
	@bash local_stack/stack.sh status

logs:  ## last lines of every service log (make logs SVC=kafka for one)
	@bash local_stack/stack.sh logs $(SVC)

model: $(STAMP)  ## create the demo model in MODEL_PATH unless a model is there
	@$(PY) -m model_worker make-demo-model --if-missing --out $(MODEL_PATH)/default.json \
	  --sensors temperature,humidity

up: $(STAMP) services model  ## run the whole pipeline in the foreground (Ctrl-C stops it)
	@SENSORS=$(SENSORS) bash local_stack/run_pipeline.sh

down:  ## stop the pipeline and the local services
	@bash local_stack/run_pipeline.sh stop || true
	@bash local_stack/stack.sh down

chromium:  ## headless Chromium for the dashboard test (Debian package)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then echo "chromium: installing from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium'"; exit 1; fi; }

lint: $(STAMP)  ## ruff and mypy
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy .

test: $(STAMP) chromium services  ## set up, start the services and run the whole suite
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## only the tests that need no service
	@$(VENV)/bin/pytest -m "not services" $(PYTEST_ARGS)

bench: $(STAMP) services  ## end-to-end: N devices through the whole pipeline, against the seed design
	@$(PY) -m bench.bench_e2e

bench-bridge: $(STAMP) services  ## MQTT -> Kafka -> MongoDB, against the naive way
	@$(PY) -m bench.bench_bridge

bench-codecs: $(STAMP)  ## payloads/s per codec
	@$(PY) -m bench.bench_codecs

bench-sim: $(STAMP) services  ## devices and messages/s one simulator process sustains
	@$(PY) -m bench.bench_sim

bench-worker: $(STAMP) services  ## events/s scored, against per-event predict
	@$(PY) -m bench.bench_worker

bench-analytics: $(STAMP)  ## windows and statistics throughput and added cost
	@$(PY) -m bench.bench_analytics

bench-api: $(STAMP) services  ## /compute/metrics latency over 1 h and 24 h, ingest rate
	@$(PY) -m bench.bench_api

clean:  ## remove caches (keeps .stack; `make down` first to stop services)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
