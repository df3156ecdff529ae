# Tierstack: the two commands a user needs are `make demo` and `make test`.
# Everything else is a step of one of them, exposed for day-to-day work.

TIERCTL := deploy/local/tierctl
SHELL := /bin/bash

.PHONY: demo up down status smoke test lint rules bench-sessions bench-cache bench-outbox bench-telemetry bench-oha toolchain

## demo: bring up the local tier (release build), run the load ladder 25/50/100/120 with its
## verdict, the side-by-side comparison with the hold-session mode, and 1000 users.
demo: toolchain
	loadtest/demo.sh

## up / down / status / smoke: the local tier on ports 15400-15431.
up: toolchain
	$(TIERCTL) up --tier local --profile release

down:
	$(TIERCTL) down --tier local

status:
	$(TIERCTL) status --tier local

smoke:
	$(TIERCTL) smoke --tier local

## test: lint, unit tests, then integration tests against a test tier (ports 16400-16431)
## that it starts and stops itself. KEEP_TIER=1 leaves the tier running afterwards.
test: toolchain lint rules
	@set -euo pipefail; \
	$(TIERCTL) up --tier test --profile debug; \
	if [ "$${KEEP_TIER:-0}" != 1 ]; then trap '$(TIERCTL) down --tier test' EXIT; fi; \
	set -a; eval "$$($(TIERCTL) env --tier test)"; set +a; \
	cargo test --workspace --locked

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

## rules: promtool checks and unit tests of the alerting rules; the dashboards' JSON.
rules:
	deploy/prometheus/check.sh

## bench-sessions: 100 concurrent clients creating payments, disciplined vs demonstration mode.
bench-sessions: toolchain
	loadtest/bench-sessions.sh

## bench-cache: the read-heavy ladder with the Redis cache on and off, side by side.
bench-cache: toolchain
	loadtest/bench-cache.sh

## bench-outbox: the payment ladder with the outbox on and off, and the pipeline's lag under it.
bench-outbox: toolchain
	loadtest/bench-outbox.sh

## bench-telemetry: the ladder with telemetry exporting, sampled at 10 %, and off.
bench-telemetry: toolchain
	loadtest/bench-telemetry.sh

## bench-oha: the load tool's numbers against oha's, same endpoint and concurrency.
bench-oha: toolchain
	loadtest/bench-oha.py

toolchain:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs), then rerun" >&2; exit 1; }
	@command -v cc >/dev/null || { echo "a C compiler is needed for TLS crates: apt-get install -y gcc" >&2; exit 1; }
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "python3 3.11 or newer runs deploy/local/tierctl and the bench scripts: apt-get install -y python3" >&2; exit 1; }
