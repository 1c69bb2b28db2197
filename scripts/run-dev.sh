#!/usr/bin/env bash
# `make run`: a complete local Depot on loopback.
#   1. Postgres and RabbitMQ (scripts/services.sh)
#   2. cargo build --bins
#   3. migrate the dev database, create org "demo"
#   4. start the demo git upstream, the worker and the gateway in the background
#      (logs in data/logs/, the previous runs' kept as NAME.log.1 … .3; pids in
#      data/run/)
#   5. wait for the gateway's /healthz; reuse the saved admin key while it is
#      valid (else create one), create or update the demo repository "hello",
#      start a pull sync, and print the key and requests that work as printed
# Running it again reuses all of that: the printed requests never meet
# REPO_ALREADY_EXISTS, and no key is minted while the saved one is valid.
# Then it stays in the foreground until Ctrl-C / SIGTERM and stops the three
# processes. With RUN_DETACH=1 it returns after step 5 and leaves them
# running; `make stop` stops them.
#
# Overrides (a second instance beside the developer's own, e.g. a test):
#   RUN_DATA_DIR    instead of ./data (also sets storage.root under it)
#   RUN_GATEWAY, RUN_METRICS, RUN_UPSTREAM   host:port of the three listeners
#   RUN_BIN_DIR     where the binaries are (default target/debug)
#   RUN_NO_BUILD=1  skip steps 1 and 2 (services answer, binaries are built)
#   DEPOT__*        any setting, e.g. DEPOT__DATABASE__URL, DEPOT__AMQP__NAMESPACE
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/dev-common.sh
source scripts/dev-common.sh

readonly CONFIG=deploy/dev.toml
# gateway.listen and worker.metrics_listen in deploy/dev.toml, unless overridden.
readonly GATEWAY="${RUN_GATEWAY:-${DEPOT__GATEWAY__LISTEN:-127.0.0.1:8080}}"
readonly METRICS="${RUN_METRICS:-${DEPOT__WORKER__METRICS_LISTEN:-127.0.0.1:9091}}"
readonly UPSTREAM="${RUN_UPSTREAM:-127.0.0.1:9418}"
readonly UPSTREAM_USER=demo UPSTREAM_PASSWORD=demo-password
readonly ORG=demo REPO=hello
readonly START_TIMEOUT="${RUN_START_TIMEOUT:-60}"
readonly BIN="${RUN_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}"
readonly KEY_FILE="$RUN_DIR/$ORG-admin.key"
# How many earlier logs of each process are kept (NAME.log.1 is the last run's).
readonly KEEP_LOGS="${RUN_KEEP_LOGS:-3}"
export DEPOT__GATEWAY__LISTEN="$GATEWAY" DEPOT__WORKER__METRICS_LISTEN="$METRICS"
if [[ -n ${RUN_DATA_DIR:-} ]]; then
    export DEPOT__STORAGE__ROOT="$DATA_DIR/repos"
fi

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

if [[ ${RUN_NO_BUILD:-0} != 1 ]]; then
    scripts/services.sh
    say "cargo build --bins (the first build takes about 6 minutes on 2 cores; later ones seconds)"
    cargo build --bins
fi
for bin in depot-admin depot-gateway depot-worker depot-dev-upstream; do
    [[ -x $BIN/$bin ]] || die "$BIN/$bin was not built: does the workspace define that binary yet?"
done

# ----------------------------------------------------------------- database

say "migrating the database named in $CONFIG"
"$BIN/depot-admin" --config "$CONFIG" migrate </dev/null
"$BIN/depot-admin" --config "$CONFIG" org create "$ORG" --name "Demo" --exists-ok </dev/null

mkdir -p "$RUN_DIR" "$LOG_DIR" "$DATA_DIR/upstream" "$DATA_DIR/repos"

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

# rotate_log NAME: keep the previous runs' logs (NAME.log.1 the latest,
# up to KEEP_LOGS of them) instead of truncating them.
rotate_log() {
    local file="$LOG_DIR/$1.log" n
    [[ -f $file ]] || return 0
    rm -f "$file.$KEEP_LOGS"
    for ((n = KEEP_LOGS - 1; n >= 1; n--)); do
        if [[ -f $file.$n ]]; then
            mv -f "$file.$n" "$file.$((n + 1))"
        fi
    done
    mv -f "$file" "$file.1"
}

# start NAME COMMAND...: run it in its own session (a Ctrl-C in the terminal
# reaches only this script, which then stops it with SIGTERM), log to
# data/logs/NAME.log, record the pid in data/run/NAME.pid.
start() {
    local name=$1
    shift
    rotate_log "$name"
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

start upstream "$BIN/depot-dev-upstream" --root "$DATA_DIR/upstream" --listen "$UPSTREAM" \
    --user "$UPSTREAM_USER" --password "$UPSTREAM_PASSWORD" --seed demo
wait_for upstream "git server on $UPSTREAM" port_open "$UPSTREAM"
start worker "$BIN/depot-worker" --config "$CONFIG"
start gateway "$BIN/depot-gateway" --config "$CONFIG"
wait_for gateway "http://$GATEWAY/healthz" healthy
pid_alive "$(<"$RUN_DIR/worker.pid")" || die "worker exited during startup"

# ------------------------------------------------------------ demo content

# call METHOD PATH [BODY]: the API with the admin key; sets STATUS and BODY.
call() {
    local method=$1 path=$2 out
    out=$(mktemp)
    local args=(-sS --max-time 10 -o "$out" -w '%{http_code}' -X "$method"
        -H "Authorization: Bearer ${KEY:-none}" "http://$GATEWAY$path")
    if [[ $# -ge 3 ]]; then
        args+=(-H 'Content-Type: application/json' -d "$3")
    fi
    STATUS=$(curl "${args[@]}") || STATUS=000
    BODY=$(<"$out")
    rm -f "$out"
}

# The saved key while it still works (a reset database forgets it), so
# running again does not mint a key per run.
KEY=
if [[ -s $KEY_FILE ]]; then
    KEY=$(<"$KEY_FILE")
    call GET "/v1/$ORG"
    if [[ $STATUS == 200 ]]; then
        key_note="saved in $KEY_FILE by an earlier run, still valid"
    else
        KEY=
    fi
fi
if [[ -z $KEY ]]; then
    key_out=$("$BIN/depot-admin" --config "$CONFIG" key create --org "$ORG" --scopes read,write,admin \
        --name "make-run $(date -u +%Y-%m-%dT%H:%M:%SZ)" </dev/null)
    KEY=$(printf '%s\n' "$key_out" | tail -n 1)
    [[ -n $KEY && $KEY != *[[:space:]]* ]] || die "depot-admin key create did not print a key on its last line"
    ( umask 077 && printf '%s\n' "$KEY" >"$KEY_FILE" )
    key_note="new; saved in $KEY_FILE"
fi

upstream_json="{\"url\":\"http://$UPSTREAM/demo.git\",\"auth\":{\"kind\":\"username_password\",\"username\":\"$UPSTREAM_USER\",\"password\":\"$UPSTREAM_PASSWORD\"}}"
call GET "/v1/$ORG/$REPO"
case $STATUS in
    200)
        # Point it at this run's upstream again (its address may differ).
        call PATCH "/v1/$ORG/$REPO" "{\"upstream\":$upstream_json}"
        [[ $STATUS == 200 ]] || die "updating the demo repository: HTTP $STATUS $BODY"
        repo_note="kept from an earlier run"
        ;;
    404)
        call POST "/v1/$ORG/repos" "{\"name\":\"$REPO\",\"upstream\":$upstream_json}"
        [[ $STATUS == 201 ]] || die "creating the demo repository: HTTP $STATUS $BODY"
        repo_note="created now"
        ;;
    *) die "looking up the demo repository: HTTP $STATUS $BODY" ;;
esac

call POST "/v1/$ORG/$REPO/upstream/syncs" '{"direction":"pull"}'
case $STATUS in
    # 409 SYNC_ALREADY_QUEUED names the queued twin in details.sync_id.
    201 | 409) SYNC_ID=$(grep -o '"sync_[a-z0-9]*"' <<<"$BODY" | head -n 1 | tr -d '"') || true ;;
    *) SYNC_ID= ;;
esac
[[ -n $SYNC_ID ]] || die "starting the demo sync: HTTP $STATUS $BODY"
trap - EXIT

# ------------------------------------------------------------------ summary

AUTH="-H \"Authorization: Bearer $KEY\""
cat <<EOF

Depot is running on http://$GATEWAY  (logs: $LOG_DIR/, pids: $RUN_DIR/)
  gateway  http://$GATEWAY  (/healthz, /readyz, /metrics, /v1/openapi.json)
  worker   http://$METRICS  (/metrics, /healthz, /readyz)
  upstream http://$UPSTREAM/demo.git  (git smart HTTP, user $UPSTREAM_USER, password $UPSTREAM_PASSWORD)

Admin API key for org "$ORG" ($key_note):
  $KEY

Repository "$REPO" mirrors the demo upstream ($repo_note); a pull sync was just
started. Try it (key and ids are filled in):

  # poll that sync until its status is completed or failed
  curl -sS http://$GATEWAY/v1/$ORG/$REPO/upstream/syncs/$SYNC_ID $AUTH

  # start another pull sync, keep its id, poll it
  id=\$(curl -sS -X POST http://$GATEWAY/v1/$ORG/$REPO/upstream/syncs $AUTH -H 'Content-Type: application/json' -d '{"direction":"pull"}' | grep -o '"sync_[a-z0-9]*"' | head -n 1 | tr -d '"'); echo "\$id"
  curl -sS http://$GATEWAY/v1/$ORG/$REPO/upstream/syncs/\$id $AUTH

  # the repository, with its latest sync; all its syncs
  curl -sS http://$GATEWAY/v1/$ORG/$REPO $AUTH
  curl -sS http://$GATEWAY/v1/$ORG/$REPO/upstream/syncs $AUTH

  # refs on the upstream, and in the hosted copy (it lives under $DATA_DIR/repos)
  git ls-remote http://$UPSTREAM_USER:$UPSTREAM_PASSWORD@$UPSTREAM/demo.git
  find $DATA_DIR/repos -type d -name objects -prune -printf '%h\n'    # the git directories there
  git --git-dir <one of them> for-each-ref

  # the admin CLI against this setup: make admin ARGS='key create --org $ORG --scopes read'
  # Mesa's SDK signs its own tokens from a private key (README, the API section):
  #   make admin ARGS='key create --org $ORG --kind private-key --name sdk'   # last line: the key
  #   Mesa(private_key=<that key>, api_url="http://$GATEWAY/v1")
  # start over (drops the dev database and $DATA_DIR): make stop && make reset

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
