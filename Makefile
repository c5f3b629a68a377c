# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export MOAT_DEMO_ROOT ?= /var/lib/moat-demo

.PHONY: demo test bootstrap build fmt-check clippy unit

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(CARGO) build --release --workspace

demo: build
	@scripts/demo

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: bootstrap
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: bootstrap fmt-check clippy
	@scripts/test
