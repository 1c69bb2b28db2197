#!/usr/bin/env bash
# Make sure the services Depot needs answer on this machine, and that the
# git CLI (worker housekeeping, test upstreams) is installed:
#   PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)
#   RabbitMQ   on 127.0.0.1:5672 (guest/guest)
# Whatever already answers is left alone; whatever is missing is installed from
# Debian's packages (root only) and started, without systemd. Every wait has a
# deadline (SERVICES_TIMEOUT seconds each, default 90). Needs no stdin.
set -euo pipefail

readonly PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres
readonly AMQP_HOST=127.0.0.1 AMQP_PORT=5672
readonly TIMEOUT="${SERVICES_TIMEOUT:-90}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

apt_updated=0
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "packages missing ($*) and not root: install them, or run this as root"
    command -v apt-get >/dev/null || die "packages missing ($*) and apt-get is not available"
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        timeout 600 apt-get update -q </dev/null || die "apt-get update failed"
        apt_updated=1
    fi
    log "apt-get install $*"
    timeout 1200 apt-get install -y -q -o DPkg::Lock::Timeout=120 "$@" </dev/null \
        || die "apt-get install $* failed"
}

# True when the TCP port accepts a connection within 2 seconds.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_answers() {
    command -v psql >/dev/null || return 1
    psql -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc 'select 1' \
        </dev/null >/dev/null 2>&1
}

# "VERSION NAME" of the cluster configured for our port, else the first one.
pg_cluster() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '
        $3 == port { print $1, $2; found = 1; exit }
        NR == 1 { first = $1 " " $2 }
        END { if (!found && first != "") print first }'
}

# Trust local TCP connections (127.0.0.1 and ::1); only for a cluster that
# this script has just installed.
pg_trust_loopback() {
    local version=$1 name=$2 hba
    hba="/etc/postgresql/$version/$name/pg_hba.conf"
    [[ -f $hba ]] || die "no $hba"
    log "fresh install: trusting loopback TCP connections in $hba"
    sed -i -E \
        -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+)[^[:space:]]+#\1trust#' \
        -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+)[^[:space:]]+#\1trust#' \
        "$hba"
    grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" \
        || printf 'host    all             all             127.0.0.1/32            trust\n' >>"$hba"
}

ensure_postgres() {
    if pg_answers; then
        log "postgres: already answering on $PG_HOST:$PG_PORT"
        return
    fi
    local fresh=0 cluster version name
    if ! command -v pg_ctlcluster >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        apt_install postgresql postgresql-client
        fresh=1
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    cluster=$(pg_cluster)
    if [[ -z $cluster ]]; then
        # The package normally creates one; some images disable that.
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n1)
        [[ -n $version ]] || die "postgres: no server version under /usr/lib/postgresql"
        log "postgres: creating cluster $version/main"
        pg_createcluster "$version" main </dev/null >/dev/null
        cluster=$(pg_cluster)
        fresh=1
    fi
    read -r version name <<<"$cluster"
    if [[ $fresh -eq 1 ]]; then
        pg_trust_loopback "$version" "$name"
    fi

    local status
    status=$(pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v n="$name" '$1 == v && $2 == n { print $4 }')
    if [[ $status == online* ]]; then
        if [[ $fresh -eq 1 ]]; then
            pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload </dev/null
        fi
        log "postgres: cluster $version/$name is running; waiting for it to answer"
    else
        log "postgres: starting cluster $version/$name"
        if ! pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start </dev/null; then
            die "postgres: 'pg_ctlcluster $version $name start' failed; last lines of its log:
$(tail -n 10 "/var/log/postgresql/postgresql-$version-$name.log" 2>/dev/null)"
        fi
    fi

    # pg_isready: 0 accepting, 1 rejecting (starting up), 2 no answer.
    local deadline=$((SECONDS + TIMEOUT)) refused=0
    until pg_answers; do
        if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" </dev/null; then
            refused=$((refused + 1))
            if ((refused >= 5)); then
                die "postgres accepts connections on $PG_HOST:$PG_PORT but refuses 'psql -U $PG_USER -d postgres' without a password: set 'trust' for 127.0.0.1/32 in /etc/postgresql/$version/$name/pg_hba.conf and reload"
            fi
        fi
        if ((SECONDS >= deadline)); then
            die "postgres did not answer on $PG_HOST:$PG_PORT within ${TIMEOUT}s (log: /var/log/postgresql/postgresql-$version-$name.log)"
        fi
        sleep 1
    done
    log "postgres: answering on $PG_HOST:$PG_PORT"
}

# ------------------------------------------------------------------ RabbitMQ

ensure_rabbitmq() {
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        log "rabbitmq: already answering on $AMQP_HOST:$AMQP_PORT"
        return
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
    fi
    local startlog=/tmp/depot-rabbitmq-start.log starts=0 next_check=0
    local deadline=$((SECONDS + TIMEOUT))
    until port_open "$AMQP_HOST" "$AMQP_PORT"; do
        if ((SECONDS >= deadline)); then
            die "rabbitmq did not open $AMQP_HOST:$AMQP_PORT within ${TIMEOUT}s (logs: /var/log/rabbitmq/, $startlog)"
        fi
        # No node at all (never started, or one that was still stopping has
        # gone): start one. A second start is the last.
        if ((SECONDS >= next_check)) && ! pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1; then
            if ((starts >= 2)); then
                die "rabbitmq exited during startup; see /var/log/rabbitmq/ and $startlog: $(tail -n 3 "$startlog" 2>/dev/null)"
            fi
            log "rabbitmq: starting (rabbitmq-server -detached; output in $startlog)"
            # Detached node: no stdin, and nothing of ours left open, so that a
            # caller reading our output (make, CI) is not held up by the broker.
            rabbitmq-server -detached </dev/null >"$startlog" 2>&1 \
                || log "rabbitmq: rabbitmq-server -detached reported an error: $(tail -n 3 "$startlog")"
            starts=$((starts + 1))
            next_check=$((SECONDS + 10))
        elif ((starts == 0 && next_check == 0)); then
            log "rabbitmq: a node is running but not listening yet; waiting for it"
            next_check=$((SECONDS + 1))
        fi
        sleep 1
    done
    # The AMQP listener opens late in boot; confirm the node says it is up.
    local left=$((deadline - SECONDS))
    ((left >= 5)) || left=5
    if ! timeout "$left" rabbitmqctl -q await_startup </dev/null >/dev/null 2>&1; then
        die "rabbitmq opened $AMQP_HOST:$AMQP_PORT but 'rabbitmqctl await_startup' did not succeed within ${left}s"
    fi
    log "rabbitmq: answering on $AMQP_HOST:$AMQP_PORT"
}

# The worker's housekeeping runs the git CLI (and the test upstream runs
# `git http-backend`).
ensure_git() {
    if command -v git >/dev/null; then
        log "git: $(git --version)"
        return
    fi
    apt_install git
}

ensure_git
ensure_postgres
ensure_rabbitmq
