# Depot Sync: developer entry points. `make` alone lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo

.PHONY: help services build run stop reset admin test lint fmt bench fuzz clean-data

help: ## list the targets
	@echo "Depot Sync make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 14

services: ## start Postgres and RabbitMQ if they are not answering (installs them when missing)
	@scripts/services.sh

build: ## build every binary (target/debug)
	$(CARGO) build --workspace --bins

run: ## everything on loopback: services, build (first one ~6 min), migrate, demo org, key, repo and sync (RUN_DETACH=1 to return)
	@scripts/run-dev.sh

stop: ## stop what `make run` started
	@scripts/stop-dev.sh

reset: ## drop the dev and test databases and delete ./data, to start over (asks first on a terminal)
	@scripts/reset-dev.sh

# `make admin ARGS='key create --org demo --scopes read'`
admin: ## depot-admin against the `make run` setup (deploy/dev.toml): ARGS='...'
	@$(CARGO) build -q -p depot-admin --bin depot-admin
	@target/debug/depot-admin --config deploy/dev.toml $(ARGS)

test: services ## the whole test suite against the local services (nextest when installed)
	@scripts/test.sh

lint: ## rustfmt check, clippy with warnings as errors, links in README.md and docs/
	scripts/check-links.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: ## benchmarks (scripts/bench.sh)
	@if [[ -f scripts/bench.sh ]]; then \
		bash scripts/bench.sh; \
	else \
		echo "bench: not yet (scripts/bench.sh does not exist)"; \
		exit 1; \
	fi

fuzz: services ## fuzz the parsers (cargo-fuzz) and the HTTP API (schemathesis), FUZZ_SECONDS each
	@scripts/fuzz.sh

clean-data: ## delete ./data (dev database rows stay; repos, logs, pids go; `make reset` drops both)
	@if compgen -G 'data/run/*.pid' >/dev/null; then \
		echo "clean-data: processes from 'make run' may still be running: 'make stop' first"; \
		exit 1; \
	fi
	rm -rf data
