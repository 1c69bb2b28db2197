#!/usr/bin/env bash
# `make run`: a complete local Depot on loopback.
#   1. Postgres and RabbitMQ (scripts/services.sh)
#   2. cargo build --bins
#   3. migrate the dev database, create org "demo" and a fresh admin API key
#   4. start the demo git upstream, the worker and the gateway in the background
#      (logs in data/logs/, pids in data/run/)
#   5. wait for the gateway's /healthz, then print the key and example requests
# Then it stays in the foreground until Ctrl-C / SIGTERM and stops the three
# processes. With RUN_DETACH=1 it returns after step 5 and leaves them
# running; `make stop` stops them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/dev-common.sh
source scripts/dev-common.sh

readonly CONFIG=deploy/dev.toml
readonly GATEWAY=127.0.0.1:8080            # gateway.listen in deploy/dev.toml
readonly METRICS=127.0.0.1:9091            # worker.metrics_listen in deploy/dev.toml
readonly UPSTREAM=127.0.0.1:9418
readonly UPSTREAM_USER=demo UPSTREAM_PASSWORD=demo-password
readonly ORG=demo
readonly START_TIMEOUT="${RUN_START_TIMEOUT:-60}"
readonly BIN="${CARGO_TARGET_DIR:-target}/debug"

say() { echo "run: $*"; }
die() { echo "run: ERROR: $*" >&2; exit 1; }

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}

show_log() {
    local file="$LOG_DIR/$1.log"
    [[ -f $file ]] || return 0
    echo "---- last lines of $file ----" >&2
    tail -n 20 "$file" >&2
    echo "----" >&2
}

# ------------------------------------------------------------ preconditions

for name in "${DEV_PROCESSES[@]}"; do
    pidfile="$RUN_DIR/$name.pid"
    if [[ -f $pidfile ]] && pid_alive "$(<"$pidfile")" && pid_is_depot "$(<"$pidfile")"; then
        die "$name is already running (pid $(<"$pidfile")): stop it with 'make stop' first"
    fi
done
for addr in "$GATEWAY" "$METRICS" "$UPSTREAM"; do
    if port_open "$addr"; then
        die "$addr is already in use: stop whatever listens there (a previous 'make run'? try 'make stop')"
    fi
done

# ------------------------------------------------------------------- build

scripts/services.sh
say "cargo build --bins"
cargo build --bins
for bin in depot-admin depot-gateway depot-worker depot-dev-upstream; do
    [[ -x $BIN/$bin ]] || die "$BIN/$bin was not built: does the workspace define that binary yet?"
done

# ----------------------------------------------------------------- database

say "migrating the database named in $CONFIG"
"$BIN/depot-admin" --config "$CONFIG" migrate </dev/null
"$BIN/depot-admin" --config "$CONFIG" org create "$ORG" --name "Demo" --exists-ok </dev/null
key_out=$("$BIN/depot-admin" --config "$CONFIG" key create --org "$ORG" --scopes read,write,admin \
    --name "make-run $(date -u +%Y-%m-%dT%H:%M:%SZ)" </dev/null)
KEY=$(printf '%s\n' "$key_out" | tail -n 1)
[[ -n $KEY && $KEY != *[[:space:]]* ]] || die "depot-admin key create did not print a key on its last line"

mkdir -p "$RUN_DIR" "$LOG_DIR" data/upstream data/repos
( umask 077 && printf '%s\n' "$KEY" >"$RUN_DIR/$ORG-admin.key" )

# ---------------------------------------------------------------- processes

started=()
# shellcheck disable=SC2317  # called from a trap / indirectly
on_startup_failure() {
    local name
    for name in "${started[@]}"; do
        show_log "$name"
    done
    echo "run: startup failed; stopping what was started" >&2
    stop_all
}
trap on_startup_failure EXIT

# start NAME COMMAND...: run it in its own session (a Ctrl-C in the terminal
# reaches only this script, which then stops it with SIGTERM), log to
# data/logs/NAME.log, record the pid in data/run/NAME.pid.
start() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$LOG_DIR/$name.log" 2>&1 &
    echo $! >"$RUN_DIR/$name.pid"
    started+=("$name")
    say "started $name (pid $!, log $LOG_DIR/$name.log)"
}

# wait_for NAME WHAT CHECK...: poll CHECK until it succeeds; fail if the
# process dies or the deadline passes.
wait_for() {
    local name=$1 what=$2 deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    until "$@"; do
        pid_alive "$(<"$RUN_DIR/$name.pid")" || die "$name exited during startup"
        ((SECONDS < deadline)) || die "$name: $what not ready within ${START_TIMEOUT}s"
        sleep 0.5
    done
}

# shellcheck disable=SC2317  # called from a trap / indirectly
healthy() {
    curl -fsS -o /dev/null --max-time 2 "http://$GATEWAY/healthz" 2>/dev/null
}

start upstream "$BIN/depot-dev-upstream" --root ./data/upstream --listen "$UPSTREAM" \
    --user "$UPSTREAM_USER" --password "$UPSTREAM_PASSWORD" --seed demo
wait_for upstream "git server on $UPSTREAM" port_open "$UPSTREAM"
start worker "$BIN/depot-worker" --config "$CONFIG"
start gateway "$BIN/depot-gateway" --config "$CONFIG"
wait_for gateway "http://$GATEWAY/healthz" healthy
pid_alive "$(<"$RUN_DIR/worker.pid")" || die "worker exited during startup"
trap - EXIT

# ------------------------------------------------------------------ summary

cat <<EOF

Depot is running on http://$GATEWAY  (logs: $LOG_DIR/, pids: $RUN_DIR/)
  gateway  http://$GATEWAY  (/healthz, /readyz, /metrics, /v1/openapi.json)
  worker   http://$METRICS  (/metrics, /healthz, /readyz)
  upstream http://$UPSTREAM/demo.git  (git smart HTTP, user $UPSTREAM_USER, password $UPSTREAM_PASSWORD)

Admin API key for org "$ORG" (also saved in $RUN_DIR/$ORG-admin.key):
  $KEY

Try it (the key is filled in):
  # create a repository mirroring the demo upstream
  curl -sS -X POST http://$GATEWAY/v1/$ORG/repos -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"name":"hello","upstream":{"url":"http://$UPSTREAM/demo.git","auth":{"kind":"username_password","username":"$UPSTREAM_USER","password":"$UPSTREAM_PASSWORD"}}}'

  # start a pull sync (the answer carries the sync's id)
  curl -sS -X POST http://$GATEWAY/v1/$ORG/hello/upstream/syncs -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"direction":"pull"}'

  # poll it until its status is completed or failed
  curl -sS http://$GATEWAY/v1/$ORG/hello/upstream/syncs/<id> -H "Authorization: Bearer $KEY"

  # refs on the upstream, and in the hosted copy (it lives under ./data/repos)
  git ls-remote http://$UPSTREAM_USER:$UPSTREAM_PASSWORD@$UPSTREAM/demo.git
  find data/repos -type d -name objects -prune -printf '%h\n'    # the git directories there
  git --git-dir <one of them> for-each-ref

EOF

if [[ ${RUN_DETACH:-0} == 1 ]]; then
    say "RUN_DETACH=1: leaving them running; 'make stop' stops them"
    exit 0
fi

# --------------------------------------------------------------- foreground

# shellcheck disable=SC2317  # called from a trap / indirectly
on_signal() {
    trap '' INT TERM
    echo
    say "stopping"
    stop_all
    exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
say "running in the foreground; Ctrl-C stops gateway, worker and upstream"

pids=()
for name in "${DEV_PROCESSES[@]}"; do
    pids+=("$(<"$RUN_DIR/$name.pid")")
done
# Returns when one child exits (or a trapped signal arrives: the trap exits).
wait -n "${pids[@]}" || true
for name in "${DEV_PROCESSES[@]}"; do
    if ! pid_alive "$(<"$RUN_DIR/$name.pid")"; then
        echo "run: ERROR: $name exited unexpectedly" >&2
        show_log "$name"
    fi
done
trap '' INT TERM
stop_all
exit 1
