#!/usr/bin/env bash
# Stop what `make run` started (`make stop`): the gateway, the worker and the
# demo upstream recorded in data/run/*.pid. Postgres and RabbitMQ keep running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/dev-common.sh
source scripts/dev-common.sh

if ! compgen -G "$RUN_DIR/*.pid" >/dev/null; then
    echo "nothing to stop (no pid files in $RUN_DIR)"
    exit 0
fi
stop_all
echo "stopped"
