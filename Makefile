# Everything a new machine needs goes through these targets: `make demo`, `make test`.
# Each installs what is missing (apt-get when root, pip into .venv) and starts the local services.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STREAMS := $(VENV)/bin/streams
DEMO_CONFIG ?= etc/streams.dev.yaml
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help bootstrap ceilometer-venv up down status demo soak test test-clock test-unit test-integration bench lint helm-lint image-lock clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

bootstrap: ## Install Debian packages (zookeeper, clickhouse-server) and the project venv, if missing
	@bash scripts/bootstrap.sh

ceilometer-venv: ## Ceilometer 27 + oslo.messaging[kafka] in .venv-ceilometer (the bridge's integration tests)
	@bash scripts/bootstrap-ceilometer.sh

up: bootstrap ## Start the local broker, ZooKeeper and ClickHouse (state in .dev/)
	@$(STREAMS) dev up

down: ## Stop the local services
	@$(STREAMS) dev down

status: ## Show the local services
	@$(STREAMS) dev status

demo: bootstrap ## Run the pipeline on this machine's real metrics for a minute and report from ClickHouse
	@$(STREAMS) --config $(DEMO_CONFIG) demo

test: bootstrap ceilometer-venv ## Unit and integration tests against the real local services, then the unit suite a year ahead
	@$(STREAMS) dev up
	@$(PY) -m pytest tests -ra $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-clock

test-clock: bootstrap ## The unit suite with the clock 400 days ahead (libfaketime): no test may depend on the date
	@echo "unit suite with the clock 400 days ahead (faketime -f '+400d')"
	@faketime -f '+400d' $(PY) -m pytest tests/unit -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: bootstrap ## Unit tests only (no services)
	@$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-integration: up ceilometer-venv ## Integration tests only
	@$(PY) -m pytest tests/integration -ra $(PYTEST_ARGS)

bench: bootstrap .venv-quix/.installed ## Benchmarks; prints figures and writes bench/results.json
	@$(STREAMS) dev up
	@$(PY) bench/run.py

# The Quix Streams yardstick runs in a venv of its own: quixstreams pins an older confluent-kafka.
.venv-quix/.installed: pyproject.toml
	@echo "bench: creating .venv-quix (Quix Streams 3.28 and this package)"
	@python3 -m venv .venv-quix
	@.venv-quix/bin/pip install --disable-pip-version-check -q -e . 'quixstreams==3.28.1'
	@touch $@

soak: bootstrap ## 30 minutes at 10,000 samples/s: RSS, consumer lag and p99 every 30 s, then a verdict (not in CI)
	@$(STREAMS) dev up
	@$(PY) bench/soak.py $(SOAK_ARGS)

.PHONY: chaos
chaos: bootstrap ## Fault suite (up to 15 min): private services, 5k samples/s, seven faults; prints the table, writes bench/chaos.json
	@$(PY) tests/chaos/run.py

lint: bootstrap ## Static checks (ruff)
	@$(VENV)/bin/ruff check streams tests bench

helm-lint: bootstrap ## Render, lint and validate the Helm chart and check the image's wheel (no cluster needed)
	@$(PY) -m pytest tests/unit/deploy -q $(PYTEST_ARGS)

image-lock: bootstrap ## Regenerate requirements.lock, the image's pinned and hashed dependencies (uv, needs PyPI)
	@$(PY) -m pip install -q uv
	@printf 'setuptools>=74.1\nwheel\n' | $(VENV)/bin/uv pip compile pyproject.toml - --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command "make image-lock" -o requirements.lock

clean: ## Stop services and delete .dev/ (data, logs)
	-@$(STREAMS) dev down --purge 2>/dev/null
	rm -rf .dev
