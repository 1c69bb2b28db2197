#!/usr/bin/env bash
# A virtualenv holding Mesa's Python SDK (`mesa-sdk`, from PyPI) for the
# end-to-end tests that drive Depot through Mesa's own clients
# (tests/python/). Prints the venv's python on stdout.
#
# Reused when it already holds the pinned version; rebuilt otherwise.
# Concurrent callers (tests running in parallel) wait for one another.
#   MESA_VENV   where (default: target/mesa-venv)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MESA_SDK_VERSION=0.49.1
VENV=${MESA_VENV:-target/mesa-venv}
mkdir -p "$(dirname "$VENV")"

has_sdk() {
    [[ -x $VENV/bin/python ]] && "$VENV/bin/python" - "$MESA_SDK_VERSION" <<'PY' 2>/dev/null
import importlib.metadata, sys
sys.exit(importlib.metadata.version("mesa-sdk") != sys.argv[1])
PY
}

exec 9>"$VENV.lock"
flock 9
if ! has_sdk; then
    echo "mesa-venv: installing mesa-sdk==$MESA_SDK_VERSION into $VENV" >&2
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
        echo "mesa-venv: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "mesa-sdk==$MESA_SDK_VERSION" >&2
    has_sdk
fi
echo "$(cd "$VENV" && pwd)/bin/python"
