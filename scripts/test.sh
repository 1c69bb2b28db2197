#!/usr/bin/env bash
# The whole test suite (`make test`). Services must be up (`make services`).
#
# Tests whose name starts with `disruptive_` restart Postgres or RabbitMQ,
# which would break every other test running at that moment, so they run
# afterwards, one at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}

echo "+ cargo build --bins   (end-to-end tests run the real binaries)"
$CARGO build --bins

# Tests that drive Depot through Mesa's own Python clients (tests/python/)
# share one virtualenv under target/; made here once, reused when current.
echo "+ scripts/mesa-venv.sh   (Mesa's Python SDK for the end-to-end tests)"
MESA_VENV=target/mesa-venv scripts/mesa-venv.sh

rc=0
if $CARGO nextest --version >/dev/null 2>&1; then
    echo "+ cargo nextest run (everything but disruptive_*)"
    $CARGO nextest run --workspace --no-fail-fast --no-tests=pass -E 'not test(/^disruptive_/)' || rc=1
    echo "+ cargo nextest run (disruptive_*, one at a time)"
    $CARGO nextest run --workspace --no-fail-fast --no-tests=pass -j 1 -E 'test(/^disruptive_/)' || rc=1
else
    echo "+ cargo test (everything but disruptive_*)"
    $CARGO test --workspace --no-fail-fast -- --skip disruptive_ || rc=1
    echo "+ cargo test (disruptive_*, one at a time)"
    $CARGO test --workspace --no-fail-fast -- disruptive_ --test-threads=1 || rc=1
fi
exit $rc
