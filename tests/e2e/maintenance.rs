//! The worker's maintenance task end to end: sync history and idempotency
//! key retention, and housekeeping of a repository nobody syncs, with
//! settings that make each observable within seconds. Real binaries,
//! Postgres, RabbitMQ and a smart-HTTP upstream on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::worker::*;
use depot_e2e::{EnvOptions, TestEnv, Upstream, eventually};
use serde_json::json;
use std::time::{Duration, SystemTime};

fn env_opts(extra: &[(&str, &str)]) -> EnvOptions {
    EnvOptions::with_env(extra, 1)
}

/// Keep 2 syncs per repository and no age floor: of four pulls and a push,
/// the three oldest pulls go (their GET is 404), the newest two stay; an
/// idempotency key older than its retention is deleted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_deletes_old_syncs_and_expired_idempotency_keys() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(env_opts(&[
        ("DEPOT__MAINTENANCE__INTERVAL_SECONDS", "1"),
        ("DEPOT__MAINTENANCE__SYNC_HISTORY_KEEP", "2"),
        ("DEPOT__MAINTENANCE__SYNC_HISTORY_DAYS", "0"),
        ("DEPOT__GATEWAY__IDEMPOTENCY_RETENTION_HOURS", "1"),
    ]))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        up.work.commit("main", &format!("c{i}")).unwrap();
        up.publish().unwrap();
        let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        ids.push(done["id"].as_str().unwrap().to_string());
    }
    // An idempotency key used two hours ago (backdated: the retention is 1 h).
    let res = env
        .http
        .post(env.url(&format!("/v1/{ORG}/mirror/upstream/syncs")))
        .bearer_auth(&key)
        .header("Idempotency-Key", "old-key")
        .json(&json!({"direction": "push"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let db = env.db().await.unwrap();
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours'",
        &[],
    )
    .await
    .unwrap();

    eventually(Duration::from_secs(30), "old syncs to be deleted", || {
        let db = &db;
        let ids = &ids;
        async move {
            let left: i64 = db
                .query_one(
                    "SELECT count(*) FROM syncs WHERE id = ANY($1)",
                    &[&ids[..3].to_vec()],
                )
                .await?
                .get(0);
            let keys: i64 = db
                .query_one("SELECT count(*) FROM idempotency_keys", &[])
                .await?
                .get(0);
            Ok((left == 0 && keys == 0).then_some(()))
        }
    })
    .await
    .unwrap();
    for id in &ids[..3] {
        let (status, body) = env.get_sync(&key, &format!("{ORG}/mirror"), id).await;
        assert_eq!(status, 404, "{body}");
    }
    let kept = get_sync(&env, &key, "mirror", &ids[3]).await.unwrap();
    assert_eq!(kept["status"], "completed");
    let newest: Vec<String> = db
        .query("SELECT direction FROM syncs ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(newest, ["pull", "push"]);
    env.cleanup().await.unwrap();
}

/// A repository nobody syncs is housekept by the maintenance task under its
/// lease: a temporary pack file of a dead run (older than the grace) is
/// removed, its loose refs get packed, and the lease is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_housekeeps_a_repository_not_synced_lately() {
    let up = Upstream::start("project").unwrap();
    for b in ["main", "a", "b", "c"] {
        up.work.commit(b, b).unwrap();
    }
    up.publish().unwrap();
    let env = TestEnv::start(env_opts(&[
        ("DEPOT__MAINTENANCE__INTERVAL_SECONDS", "1"),
        ("DEPOT__HOUSEKEEPING__IDLE_SECONDS", "1"),
        ("DEPOT__HOUSEKEEPING__MAX_LOOSE_REFS", "2"),
        ("DEPOT__HOUSEKEEPING__PRUNE_GRACE_SECONDS", "3600"),
    ]))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    // What a run killed mid-download leaves: only maintenance can see it now.
    let dead = hosted.join("objects").join("pack").join("tmp_pack_dead");
    std::fs::write(&dead, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&dead)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    // And loose refs above the threshold (the pull's own housekeeping
    // packed its refs), as an older version left them.
    let db = env.db().await.unwrap();
    db.execute(
        "UPDATE repos SET housekept_at = now() - interval '1 hour'",
        &[],
    )
    .await
    .unwrap();
    for b in ["a", "b", "c"] {
        let oid = depot_e2e::fixture::rev_parse(&up.bare, &format!("refs/heads/{b}")).unwrap();
        let path = hosted.join("refs").join("heads").join(b);
        std::fs::write(&path, format!("{oid}\n")).unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "housekeeping by the maintenance task",
        || {
            let dead = dead.clone();
            let hosted = hosted.clone();
            async move {
                let loose = std::fs::read_dir(hosted.join("refs").join("heads"))?.count();
                Ok((!dead.exists() && loose == 0).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    let refs = refs_of(&hosted);
    assert_eq!(refs.len(), 4, "{refs:?}");
    let out = git(&hosted, &["fsck", "--no-dangling"]);
    assert!(out.is_ok(), "{out:?}");
    eventually(Duration::from_secs(10), "the lease to be released", || {
        let db = &db;
        let repo_id = repo_id.clone();
        async move {
            let row = db
                .query_one(
                    "SELECT housekeeping_until IS NULL AND housekept_at > now() - interval '1 minute'
                     FROM repos WHERE id = $1",
                    &[&repo_id],
                )
                .await?;
            Ok(row.get::<_, bool>(0).then_some(()))
        }
    })
    .await
    .unwrap();
    env.cleanup().await.unwrap();
}

/// Without the git CLI housekeeping cannot work: the worker says so and
/// refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_git_cli_refuses_to_start_and_says_why() {
    let env = TestEnv::start(env_opts(&[])).await.unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut worker = env
        .start_extra_worker("no-git", &[("PATH", empty.path().to_str().unwrap())])
        .unwrap();
    let log = eventually(Duration::from_secs(20), "the worker's refusal", || {
        let log = worker.log_text();
        async move {
            Ok(log
                .contains("housekeeping needs the git CLI")
                .then_some(log))
        }
    })
    .await
    .unwrap();
    assert!(log.contains("housekeeping.enabled = false"), "{log}");
    // It has exited already (SIGTERM to an exited child changes nothing).
    assert_eq!(worker.terminate(Duration::from_secs(10)).unwrap(), Some(2));
    env.cleanup().await.unwrap();
}
