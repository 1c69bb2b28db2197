//! Mesa's own Python SDK (`mesa_sdk.Mesa`, installed from PyPI by
//! scripts/mesa-venv.sh) drives the real binaries unchanged but for its
//! `api_url`: a private key from the admin CLI, then whoami, a repo with an
//! upstream, pull and push syncs, listing, and the SDK's typed errors;
//! and a repo-scoped token from the SDK's own signer, sent by `mesa_rest`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::python::run_script;
use depot_e2e::{EnvOptions, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesa_sdk_drives_repos_and_syncs_with_a_private_key() {
    let upstream = Upstream::start("sdk").unwrap();
    let one = upstream.work.commit("main", "one").unwrap();
    upstream.work.tag("v1.0", &one, false).unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    env.admin(&["org", "create", "acme"]).unwrap();
    let out = env
        .admin(&["key", "create", "--org", "acme", "--kind", "private-key"])
        .unwrap();
    let private_key = out.lines().last().unwrap().to_string();
    let key_id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap()
        .to_string();

    let stdout = run_script(
        "mesa_sdk_flow.py",
        &[
            ("MESA_TEST_PRIVATE_KEY", private_key.clone()),
            ("MESA_TEST_API_URL", env.url("/v1")),
            ("MESA_TEST_UPSTREAM_URL", upstream.url()),
            ("MESA_TEST_UPSTREAM_USER", UPSTREAM_USER.into()),
            ("MESA_TEST_UPSTREAM_PASSWORD", UPSTREAM_PASSWORD.into()),
        ],
        Duration::from_secs(240),
    )
    .await
    .unwrap();
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    assert_eq!(
        result["whoami"],
        json!({"org": "acme", "key_id": key_id, "scopes": ["read", "write", "admin"]})
    );
    assert_eq!(result["repo"]["name"], "mirror");
    assert_eq!(result["pull"]["status"], "completed", "{result}");
    assert_eq!(
        result["pull"]["refs"],
        json!([
            {"name": "refs/heads/main", "outcome": "updated"},
            {"name": "refs/tags/v1.0", "outcome": "updated"},
        ]),
        "{result}"
    );
    let listed: Vec<&str> = result["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![result["pull"]["id"].as_str().unwrap()]);
    assert_eq!(result["push"]["status"], "completed", "{result}");
    assert_eq!(
        result["not_found"],
        json!({"type": "NotFoundError", "status": 404})
    );
    assert_eq!(
        result["conflict"],
        json!({"type": "ConflictError", "status": 409})
    );
    // The hosted repo now has the upstream's main.
    let hosted = env
        .hosted_repo_path(result["repo"]["id"].as_str().unwrap())
        .await
        .unwrap();
    let refs = depot_e2e::fixture::list_refs(&hosted).unwrap();
    assert!(
        refs.iter().any(|(name, _)| name == "refs/heads/main"),
        "{refs:?}"
    );
    // The private key never travelled: only tokens signed with it did.
    assert!(!env.all_logs().contains(&private_key[20..]));
    env.cleanup().await.unwrap();
}

/// The rename rule for repo-scoped tokens, with the token signed by Mesa's
/// SDK code and the requests sent by Mesa's REST client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_scoped_token_from_mesas_signer_renames_only_within_its_grant() {
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    env.admin(&["org", "create", "acme"]).unwrap();
    let out = env
        .admin(&["key", "create", "--org", "acme", "--kind", "private-key"])
        .unwrap();
    let private_key = out.lines().last().unwrap().to_string();
    let stdout = run_script(
        "scoped_rename.py",
        &[
            ("MESA_TEST_PRIVATE_KEY", private_key),
            ("MESA_TEST_API_URL", env.url("/v1")),
        ],
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({
            "hidden": 403,
            "elsewhere": 403,
            "renamed": 200,
            "after": {"status": 200, "name": "renamed"},
        })
    );
    env.cleanup().await.unwrap();
}
