#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of the parsers (cargo-fuzz, libFuzzer)
# for FUZZ_SECONDS each, then a schema-driven HTTP fuzz of the running API
# (scripts/fuzz-http.sh). Bounded in time; nothing leaves this machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer); the machine has one
# stable toolchain, which accepts them with RUSTC_BOOTSTRAP. Fuzzing only:
# never set this for the product's own builds.
export RUSTC_BOOTSTRAP=1
for target in ref_globs request_body upstream_url; do
    echo "fuzz: $target for ${FUZZ_SECONDS}s"
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048
done
echo "fuzz: parsers done, no crash"

scripts/fuzz-http.sh
