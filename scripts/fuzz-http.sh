#!/usr/bin/env bash
# Schema-driven HTTP fuzzing (schemathesis, from PyPI) of the running API:
# every operation in the served OpenAPI document, with generated valid and
# invalid inputs. Passes only with zero 5xx and every response as documented
# (which includes the error envelope). Bounded by FUZZ_SECONDS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
GATEWAY=127.0.0.1:8080

if ! command -v schemathesis >/dev/null 2>&1; then
    echo "fuzz-http: installing schemathesis"
    python3 -m pip install --quiet 'schemathesis>=4,<5'
fi

RUN_DETACH=1 scripts/run-dev.sh >/dev/null
trap 'scripts/stop-dev.sh >/dev/null || true' EXIT
key=$(cat data/run/demo-admin.key)

# A repository with an upstream, so the sync operations reach their logic.
curl -sS -o /dev/null -X POST "http://$GATEWAY/v1/demo/repos" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"name":"fuzz","upstream":{"url":"http://127.0.0.1:9418/demo.git"}}'

echo "fuzz-http: schemathesis for ${FUZZ_SECONDS}s"
schemathesis --config-file scripts/schemathesis.toml run "http://$GATEWAY/v1/openapi.json" \
    --url "http://$GATEWAY/v1" \
    -H "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-time "$FUZZ_SECONDS" \
    --max-examples 200
