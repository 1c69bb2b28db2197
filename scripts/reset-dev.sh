#!/usr/bin/env bash
# `make reset`: start the development setup over. Drops the dev database
# (database.url of deploy/dev.toml, or DEPOT__DATABASE__URL) and the test
# suite's databases on that server (everything named depot_tmpl_*: the
# migrated templates and their pools, tests/support/pool.rs; the next test
# run builds them again, so end running tests first; RESET_TEST_DBS=0
# keeps them, as the test of this script does), and deletes ./data
# (RUN_DATA_DIR): hosted repositories, the demo upstream, logs, the saved
# admin key. The next `make run` migrates a new database and mints a
# new key. Asks first when stdin is a terminal (RESET_YES=1 skips that);
# refuses while `make run`'s processes are running.
# Postgres and RabbitMQ keep running; jobs left in the dev broker namespace
# name syncs the new database does not know, and workers drop them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/dev-common.sh
source scripts/dev-common.sh

readonly CONFIG=deploy/dev.toml
die() { echo "reset: ERROR: $*" >&2; exit 1; }

if any_running; then
    die "processes from 'make run' are still running: 'make stop' first"
fi

# The [database] url of the config file, unless the environment overrides it.
url=${DEPOT__DATABASE__URL:-}
if [[ -z $url ]]; then
    url=$(sed -n '/^\[database\]/,/^\[/{s/^url *= *"\(.*\)"/\1/p}' "$CONFIG" | head -n 1)
fi
[[ -n $url ]] || die "no database.url in $CONFIG"
base=${url%%\?*}
db=${base##*/}
[[ $db =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$db' (from $url) is not a plain identifier"
[[ $db != postgres && $db != template0 && $db != template1 ]] || die "refusing to drop '$db'"
admin_url="${base%/*}/postgres"

if [[ -t 0 && ${RESET_YES:-0} != 1 ]]; then
    read -r -p "reset: drop database '$db' and the test databases (depot_tmpl_*), and delete $DATA_DIR/? [y/N] " answer
    [[ $answer == [yY]* ]] || { echo "reset: nothing changed"; exit 1; }
fi

echo "reset: dropping database $db"
psql -w "$admin_url" -X -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
    || die "could not drop database $db"
test_dbs=()
if [[ ${RESET_TEST_DBS:-1} != 0 ]]; then
    list=$(psql -w "$admin_url" -X -A -t -v ON_ERROR_STOP=1 \
        -c "SELECT datname FROM pg_database WHERE datname LIKE 'depot\_tmpl\_%' ORDER BY 1") \
        || die "could not list the test databases"
    [[ -z $list ]] || mapfile -t test_dbs <<<"$list"
    echo "reset: dropping ${#test_dbs[@]} test database(s) (depot_tmpl_*)"
fi
# The templates are marked as such, which DROP DATABASE refuses.
for test_db in "${test_dbs[@]}"; do
    [[ $test_db =~ ^depot_tmpl_[A-Za-z0-9_]+$ ]] || die "unexpected test database name '$test_db'"
    psql -w "$admin_url" -X -q -v ON_ERROR_STOP=1 \
        -c "ALTER DATABASE \"$test_db\" IS_TEMPLATE false" \
        -c "DROP DATABASE IF EXISTS \"$test_db\" WITH (FORCE)" \
        || die "could not drop test database $test_db"
done
echo "reset: deleting $DATA_DIR/"
rm -rf -- "$DATA_DIR"
echo "reset: done; 'make run' starts from scratch"
