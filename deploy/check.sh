#!/usr/bin/env bash
# Schema-validate the deployment files with tools from PyPI (no Docker, no
# cluster, no network beyond PyPI):
#   - deploy/compose.yaml against the Compose specification (check-jsonschema);
#   - every Kubernetes object of deploy/k8s/base, strictly (unknown fields
#     fail), against the Kubernetes OpenAPI schemas bundled in
#     kubernetes-validate (KEDA's CRDs have no bundled schema: the e2e test
#     `deploy_manifests_declare_what_an_ops_team_needs` checks them);
#   - yamllint on every YAML file.
# The virtualenv is cached in target/deploy-check-venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
K8S_VERSION=${K8S_VERSION:-1.31.0}
venv=target/deploy-check-venv
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q \
        check-jsonschema==0.39.0 kubernetes-validate==1.37.0 yamllint==1.38.0
fi
echo "+ check-jsonschema (compose spec) deploy/compose.yaml"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
echo "+ kubernetes-validate --strict -k $K8S_VERSION deploy/k8s/base"
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" deploy/k8s/base/*.yaml
echo "+ yamllint deploy/"
"$venv/bin/yamllint" -s -d '{extends: relaxed, rules: {line-length: {max: 200}}}' deploy/
echo "deploy: ok"
