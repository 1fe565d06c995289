# The two commands of the README:
#   make run   build and start the local all-in-one (aggregator on SQLite + an agent)
#   make test  format and lint checks, then every test (unit, storage, end to end)
# Both install what they need first.

CARGO ?= cargo

.PHONY: run test coverage deps services build lint bench bench-events bench-system clean

run: deps
	$(CARGO) build --release --workspace --bins
	./target/release/infrawatch up

test: deps services
	$(CARGO) fmt --all -- --check
	$(CARGO) build --workspace --bins
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

# Line coverage per crate of every test `make test` runs, end-to-end tests included
# (instrumented binaries, in target/llvm-cov-target); reports in target/coverage/.
# Not part of `make test` or CI: about 15 minutes on two cores, building included.
coverage:
	.ci/coverage

deps:
	@.ci/ensure-deps

services:
	@.ci/ensure-services

build: deps
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps services
	$(CARGO) bench --workspace
	tests/bench/agent-cost.sh 60
	tests/bench/system.sh

# The aggregator under infrawatch-loadgen (1,000 and 10,000 agents; SQLite and
# PostgreSQL); about 12 minutes after the release build.
bench-system: deps services
	tests/bench/system.sh

bench-events: deps
	$(CARGO) build --release --workspace --bins
	./target/release/event-bench

clean:
	$(CARGO) clean
