# shellcheck shell=bash
# Helpers shared by run-dev.sh, stop-dev.sh and reset-dev.sh (sourced, not
# run). The development processes are recorded as data/run/NAME.pid.
#
# RUN_DATA_DIR (default ./data) moves everything `make run` writes (pids,
# logs, hosted repositories, the demo upstream): with it and the RUN_* /
# DEPOT__* overrides run-dev.sh documents, a second instance (a test) runs
# beside the developer's own without touching it.

DATA_DIR=${RUN_DATA_DIR:-data}
RUN_DIR=$DATA_DIR/run
# shellcheck disable=SC2034  # used by the scripts that source this file
LOG_DIR=$DATA_DIR/logs
# Stop order: the gateway first (no new syncs), then the worker, then the
# demo upstream the worker may still be talking to.
DEV_PROCESSES=(gateway worker upstream)

# Seconds a process gets after SIGTERM before SIGKILL. The worker finishes or
# releases its running syncs within worker.grace_seconds (30 by default).
stop_timeout() {
    case $1 in
        worker) echo 45 ;;
        *) echo 15 ;;
    esac
}

# True while PID exists and is not a zombie.
pid_alive() {
    local pid=$1 stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# True when PID runs one of our depot-* binaries (guards against a reused pid).
pid_is_depot() {
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *depot-* ]]
}

# stop_process NAME: SIGTERM the process recorded in RUN_DIR/NAME.pid, wait for
# it with a deadline, SIGKILL it if it overstays, remove the pid file.
stop_process() {
    local name=$1 pidfile pid deadline
    pidfile="$RUN_DIR/$name.pid"
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ ! $pid =~ ^[0-9]+$ ]] || ! pid_alive "$pid"; then
        rm -f "$pidfile"
        return 0
    fi
    if ! pid_is_depot "$pid"; then
        echo "$name: pid $pid is not a depot process any more; leaving it alone" >&2
        rm -f "$pidfile"
        return 0
    fi
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + $(stop_timeout "$name")))
    while pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "$name (pid $pid) ignored SIGTERM for $(stop_timeout "$name")s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

stop_all() {
    local name
    for name in "${DEV_PROCESSES[@]}"; do
        stop_process "$name"
    done
}

# True when any process recorded in RUN_DIR still runs.
any_running() {
    local name pidfile
    for name in "${DEV_PROCESSES[@]}"; do
        pidfile="$RUN_DIR/$name.pid"
        if [[ -f $pidfile ]] && pid_alive "$(<"$pidfile")" && pid_is_depot "$(<"$pidfile")"; then
            return 0
        fi
    done
    return 1
}
