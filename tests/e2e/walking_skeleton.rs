//! The walking skeleton, end to end with real parts: create a repo with an
//! upstream through the API, POST a pull, poll until it ends, and check the
//! hosted repository's refs with git.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::calls::Pull;
use depot_e2e::{EnvOptions, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream, fixture};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_the_api_lands_every_ref_in_the_hosted_repo() {
    let upstream = Upstream::start("project").unwrap();
    let main = upstream.work.commit("main", "first").unwrap();
    let main = {
        let _ = main;
        upstream.work.commit("main", "second").unwrap()
    };
    let feature = upstream
        .work
        .commit_on("feature/deep/x", Some(&main), "feature work")
        .unwrap();
    upstream.work.tag("v1.0", &main, true).unwrap();
    upstream.publish().unwrap();

    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();

    let (status, repo) = env
        .post_repo(
            &key,
            "acme",
            &json!({
                "name": "mirror",
                "upstream": {
                    "url": upstream.url(),
                    "auth": { "kind": "username_password", "username": UPSTREAM_USER, "password": UPSTREAM_PASSWORD }
                }
            }),
        )
        .await;
    assert_eq!(status, 201, "{repo}");
    assert_eq!(repo["upstream"]["auth_kind"], "username_password");
    assert!(repo["upstream"]["latest_sync"].is_null());
    assert_eq!(repo["head_change_id"], "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
    let repo_id = repo["id"].as_str().unwrap().to_string();

    let (status, sync) = env.post_sync(&key, "acme/mirror", Pull).await;
    assert_eq!(status, 201, "{sync}");
    assert_eq!(sync["status"], "queued");
    assert_eq!(sync["attempt"], 0);
    assert_eq!(sync["repo_id"], repo_id.as_str());
    assert_eq!(sync["ref_globs"], json!({"branches": "*", "tags": "*"}));
    for field in ["stats", "error", "started_at", "finished_at"] {
        assert!(
            sync[field].is_null(),
            "{field} should be null while queued: {sync}"
        );
    }
    let sync_id = sync["id"].as_str().unwrap();

    let done = env
        .wait_for_sync(&key, "acme", "mirror", sync_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(done["attempt"], 1);
    assert!(done["error"].is_null());
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    // Every upstream ref is now in the hosted repository, with the same ids.
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    let hosted_refs = fixture::list_refs(&hosted).unwrap();
    let upstream_refs = upstream.refs().unwrap();
    assert_eq!(hosted_refs, upstream_refs);
    assert!(
        hosted_refs
            .iter()
            .any(|(n, id)| n == "refs/heads/feature/deep/x" && *id == feature)
    );

    // The stats list exactly those refs, sorted, all created.
    let stats = done["stats"]["refs"].as_array().unwrap();
    let names: Vec<&str> = stats.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let expected: Vec<&str> = upstream_refs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected);
    for r in stats {
        assert_eq!(r["outcome"], "updated", "{r}");
        assert!(r["before"].is_null());
        let id = upstream_refs
            .iter()
            .find(|(n, _)| n == r["name"].as_str().unwrap())
            .unwrap();
        assert_eq!(r["after"], id.1.as_str());
    }

    // The repo shows the default branch tip and the latest sync.
    let (status, repo) = env.get_repo(&key, "acme/mirror").await;
    assert_eq!(status, 200);
    let expected_change: String = main[..32]
        .chars()
        .map(|c| (b'z' - c.to_digit(16).unwrap() as u8) as char)
        .collect();
    assert_eq!(repo["head_change_id"], expected_change.as_str());
    assert_eq!(repo["upstream"]["latest_sync"]["id"], sync_id);

    // No credential ever reached a log line.
    let logs = env.all_logs();
    assert!(
        !logs.contains(UPSTREAM_PASSWORD),
        "password leaked into logs"
    );
    assert!(!logs.contains(&key), "API key leaked into logs");

    env.cleanup().await.unwrap();
}
