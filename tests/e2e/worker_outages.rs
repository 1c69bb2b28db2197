//! The worker under infrastructure outages: RabbitMQ or Postgres restarted
//! in the middle of a batch of syncs, and every accepted sync still ends
//! `completed` or `failed`; a broker reconnect does not lift the worker's
//! concurrency limit.
//!
//! These tests stop shared services, so their names start with
//! `disruptive_`: `scripts/test.sh` runs them after everything else, one at
//! a time. Each one restores the service through a drop guard, also when it
//! fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::worker::*;
use depot_e2e::{EnvOptions, TestEnv, Upstream, eventually};
use serde_json::{Value, json};
use std::time::Duration;

const BATCH: usize = 6;

fn opts() -> EnvOptions {
    EnvOptions {
        extra_env: vec![
            // Lost messages are re-published quickly, so the test does not
            // wait the production two minutes.
            ("DEPOT__WORKER__REQUEUE_AFTER_SECONDS".into(), "3".into()),
        ],
        workers: 2,
        ..EnvOptions::default()
    }
}

/// An environment with `BATCH` repos mirroring one upstream.
async fn setup() -> (TestEnv, String, Upstream) {
    let up = Upstream::start("project").unwrap();
    let c1 = up.work.commit("main", "m1").unwrap();
    up.work.commit_on("dev", Some(&c1), "d1").unwrap();
    up.work.tag("v1", &c1, true).unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(opts()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    for i in 0..BATCH {
        create_repo(&env, &key, &format!("r{i}"), &up, None)
            .await
            .unwrap();
    }
    (env, key, up)
}

/// Wait for every sync of `ids` to end; returns them.
async fn wait_all(env: &TestEnv, key: &str, ids: &[(String, String)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (repo, id) in ids {
        let done = env
            .wait_for_sync(key, ORG, repo, id, Duration::from_secs(180))
            .await
            .unwrap_or_else(|e| {
                panic!("sync {id} of {repo} never ended: {e:#}\n{}", env.all_logs())
            });
        out.push(done);
    }
    out
}

/// Every sync of `ids` ends, and ends `completed`.
async fn assert_all_completed(env: &TestEnv, key: &str, ids: &[(String, String)]) {
    for d in wait_all(env, key, ids).await {
        assert_eq!(d["status"], "completed", "{d}");
    }
}

/// The workers survived the outage: a new sync still runs to the end.
async fn assert_still_takes_work(env: &TestEnv, key: &str, direction: &str) {
    let after = sync_and_wait(env, key, "r0", json!({"direction": direction}))
        .await
        .unwrap();
    assert_eq!(after["status"], "completed", "{after}");
}

async fn post_batch(env: &TestEnv, key: &str, ids: &mut Vec<(String, String)>, direction: &str) {
    for i in 0..BATCH {
        let repo = format!("r{i}");
        let s = post_sync(env, key, &repo, json!({"direction": direction}))
            .await
            .unwrap();
        ids.push((repo, s["id"].as_str().unwrap().to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_rabbitmq_restart_during_a_batch_every_sync_still_ends() {
    let (env, key, up) = setup().await;
    // Slow enough that the batch is still running when the broker goes.
    up.server.set_delay(Some(Duration::from_millis(300)));
    let mut ids = Vec::new();
    post_batch(&env, &key, &mut ids, "pull").await;

    let mut rabbit = RabbitGuard::stop().unwrap();
    // Syncs accepted while the broker is away: the outbox relay publishes
    // them once it is back.
    post_batch(&env, &key, &mut ids, "push").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbit.start().unwrap();

    assert_all_completed(&env, &key, &ids).await;
    assert_still_takes_work(&env, &key, "pull").await;
    drop(rabbit);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_a_broker_reconnect_never_runs_more_syncs_than_the_concurrency() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    // One worker, `worker.concurrency` 2 (the test environment's value).
    let env = TestEnv::start(EnvOptions {
        workers: 1,
        ..opts()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let repo = format!("c{i}");
        create_repo(&env, &key, &repo, &up, None).await.unwrap();
        ids.push(repo);
    }
    // Every request waits 4 s at the upstream, so the two first runs
    // (two requests each) outlive the broker's restart.
    up.server.set_delay(Some(Duration::from_secs(4)));
    let mut syncs = Vec::new();
    for repo in ids {
        let s = post_sync(&env, &key, &repo, json!({"direction": "pull"}))
            .await
            .unwrap();
        syncs.push((repo, s["id"].as_str().unwrap().to_string()));
    }
    eventually(
        Duration::from_secs(30),
        "two runs at the upstream",
        || async { Ok((up.server.request_count() >= 2).then_some(())) },
    )
    .await
    .unwrap();

    // The channel those two runs came from dies with the broker; the next
    // one may bring the other two syncs while the first two still run.
    let mut rabbit = RabbitGuard::stop().unwrap();
    rabbit.start().unwrap();

    assert_all_completed(&env, &key, &syncs).await;
    assert_eq!(
        up.server.max_in_flight(),
        2,
        "runs talking to the upstream at once, with worker.concurrency = 2\n{}",
        env.all_logs()
    );
    drop(rabbit);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_postgres_restart_during_a_batch_every_sync_still_ends() {
    let (env, key, up) = setup().await;
    up.server.set_delay(Some(Duration::from_millis(300)));
    let mut ids = Vec::new();
    post_batch(&env, &key, &mut ids, "pull").await;
    // Let some of them start, so that runs are in flight when the database
    // goes away.
    let first = ids[0].clone();
    eventually(Duration::from_secs(60), "a run to start", || async {
        let s = get_sync(&env, &key, &first.0, &first.1).await?;
        Ok((s["status"] != "queued").then_some(()))
    })
    .await
    .unwrap();

    let mut pg = PostgresGuard::stop().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start().unwrap();

    assert_all_completed(&env, &key, &ids).await;
    assert_still_takes_work(&env, &key, "push").await;
    drop(pg);
    env.cleanup().await.unwrap();
}
