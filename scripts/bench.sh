#!/usr/bin/env bash
# `make bench`: measure the gateway and the worker against baselines run on
# the same machine in the same run (wrk vs pgbench, depot syncs vs plain git),
# print a table of ratios and record it in docs/benchmarks.md.
#
#   1. install what is missing (wrk, pgbench, psql, git, python3, curl, pika)
#   2. cargo build --release --bins
#   3. scripts/bench/bench.py: everything else (see its docstring for the
#      BENCH_* knobs). It uses its own database and broker namespace, ports
#      BENCH_PORT_BASE+18/+80/+90.. (default 18418, 18480, 18490..), and
#      removes what it created when it ends.
#
# Needs Postgres on 127.0.0.1:5432 (trust, user postgres) and RabbitMQ on
# 127.0.0.1:5672 (guest/guest), as `make services` provides; it never stops
# or restarts them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Everything in one function: bash parses it whole before running it, so an
# edit of this file during a run (a shared working tree) cannot derail it.
main() {

say() { echo "bench: $*"; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

started=$SECONDS

# ------------------------------------------------------------------- tools

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v psql >/dev/null || missing+=(postgresql-client)
# Debian ships pgbench with the server package (postgresql-15 on bookworm);
# the postgresql-contrib metapackage pulls in the current one.
if ! command -v pgbench >/dev/null || ! pgbench --version >/dev/null 2>&1; then
    missing+=(postgresql-contrib)
fi
command -v git >/dev/null || missing+=(git)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    sudo=()
    ((EUID == 0)) || sudo=(sudo -n)
    say "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" </dev/null >/dev/null
fi
pgbench --version >/dev/null 2>&1 || die "pgbench does not run (install postgresql-contrib)"

# pika (AMQP client) for purging and deleting this run's queues; kept in the
# target directory, not installed system-wide.
TARGET="${CARGO_TARGET_DIR:-target}"
[[ $TARGET = /* ]] || TARGET="$PWD/$TARGET"
PYLIB="$TARGET/bench-pylib"
if ! PYTHONPATH="$PYLIB" python3 -c 'import pika' 2>/dev/null; then
    say "installing pika into $PYLIB"
    if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null; then
        sudo=()
        ((EUID == 0)) || sudo=(sudo -n)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3-pip </dev/null >/dev/null || true
    fi
    # --target writes only into $PYLIB; Debian's "externally managed"
    # guard may still ask for --break-system-packages.
    python3 -m pip install -q --disable-pip-version-check --target "$PYLIB" pika </dev/null >/dev/null 2>&1 ||
        python3 -m pip install -q --disable-pip-version-check --break-system-packages --target "$PYLIB" pika \
            </dev/null >/dev/null 2>&1 ||
        say "warning: pika not installed; broker objects of the run will not be deleted"
fi
export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"

# ------------------------------------------------------------------ services

timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null ||
    die "Postgres is not answering on 127.0.0.1:5432 ('make services' starts it)"
timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null ||
    die "RabbitMQ is not answering on 127.0.0.1:5672 ('make services' starts it)"

# ------------------------------------------------------------------- build

export BENCH_BIN="${BENCH_BIN:-$TARGET/release}"
bins=(depot-admin depot-gateway depot-worker depot-dev-upstream)
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    say "cargo build --release --bins"
    build_start=$SECONDS
    if ! cargo build --release --bins; then
        # A shared working tree may be mid-edit: measure the last good build
        # rather than nothing, and say so.
        for bin in "${bins[@]:1}"; do
            [[ -x $BENCH_BIN/$bin ]] || die "the release build failed and $BENCH_BIN/$bin does not exist"
        done
        say "WARNING: the release build failed; measuring the binaries of the last successful build"
    fi
    say "build took $((SECONDS - build_start)) s"
fi
# depot-admin only sets up (migrate, org, key) and is never measured: a
# debug build of it will do.
for bin in "${bins[@]:1}"; do
    [[ -x $BENCH_BIN/$bin ]] || die "$BENCH_BIN/$bin is missing"
done
[[ -x $BENCH_BIN/depot-admin || -x $TARGET/debug/depot-admin ]] || die "no depot-admin binary (release or debug)"

# ------------------------------------------------------------------ measure

rc=0
python3 scripts/bench/bench.py || rc=$?
say "make bench took $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s in all"
exit "$rc"
}

main "$@"
