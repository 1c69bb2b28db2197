#!/usr/bin/env bash
# Schema-validate the deployment files with tools from PyPI (no Docker, no
# cluster, no network beyond PyPI):
#   - deploy/compose.yaml against the Compose specification (check-jsonschema);
#   - every Kubernetes object of deploy/k8s/base, strictly (unknown fields
#     fail), against the Kubernetes OpenAPI schemas bundled in
#     kubernetes-validate (KEDA's CRDs have no bundled schema: the e2e test
#     `deploy_manifests_declare_what_an_ops_team_needs` checks them);
#   - the worker's egress NetworkPolicy is present, listed in the
#     kustomization, selects the worker pods and denies private, loopback,
#     link-local and metadata addresses (its rules are checked in detail by
#     the e2e test `the_worker_egress_policy_admits_only_what_it_needs`);
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
echo "+ worker egress NetworkPolicy"
"$venv/bin/python" - <<'PY'
import sys, yaml
base = "deploy/k8s/base"
def fail(msg):
    sys.exit(f"deploy/check.sh: {msg}")
with open(f"{base}/kustomization.yaml") as f:
    resources = yaml.safe_load(f)["resources"]
if "worker-networkpolicy.yaml" not in resources:
    fail("worker-networkpolicy.yaml is not in the kustomization")
with open(f"{base}/worker-networkpolicy.yaml") as f:
    policy = yaml.safe_load(f)
with open(f"{base}/worker-deployment.yaml") as f:
    worker = yaml.safe_load(f)
if policy.get("kind") != "NetworkPolicy":
    fail("worker-networkpolicy.yaml holds no NetworkPolicy")
spec = policy["spec"]
if spec["podSelector"]["matchLabels"] != worker["spec"]["template"]["metadata"]["labels"]:
    fail("the egress policy does not select the worker pods")
if "Egress" not in spec.get("policyTypes", []):
    fail("the worker NetworkPolicy does not restrict egress")
denied = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16"}
for rule in spec["egress"]:
    for peer in rule.get("to", []):
        block = peer.get("ipBlock")
        if block and block["cidr"] == "0.0.0.0/0" and not rule.get("ports"):
            missing = denied - set(block.get("except", []))
            if missing:
                fail(f"the worker's internet egress does not exclude {sorted(missing)}")
    if not rule.get("to"):
        fail("a worker egress rule without `to` admits every destination")
PY
echo "+ yamllint deploy/"
"$venv/bin/yamllint" -s -d '{extends: relaxed, rules: {line-length: {max: 200}}}' deploy/
echo "deploy: ok"
