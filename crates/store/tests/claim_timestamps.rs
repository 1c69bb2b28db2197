//! `syncs::claim` against a real Postgres: a claim that had to wait for the
//! repository's lock records its `started_at` after the `finished_at` of the
//! run it waited for, so the API never shows two runs of one repository
//! overlapping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_domain::{Direction, RefGlobs, SyncStatus};
use depot_store::Pool;
use depot_store::syncs::{self, Claim, Enqueued};
use std::time::{Duration, Instant};

mod common;

const LEASE: Duration = Duration::from_secs(60);

async fn queued(pool: &Pool, repo_id: &str, branches: &str) -> String {
    let id = depot_domain::ids::new_id("sync");
    // Distinct globs: the "one queued sync per request" index would refuse
    // a second sync with the same ones.
    let globs = RefGlobs {
        branches: branches.to_string(),
        tags: String::new(),
    };
    let client = pool.get().await.unwrap();
    match syncs::enqueue(&client, &id, repo_id, Direction::Pull, &globs)
        .await
        .unwrap()
    {
        Enqueued::Created(_) => id,
        Enqueued::AlreadyQueued(other) => panic!("{branches} already queued as {other:?}"),
    }
}

/// Polls until some backend of this database waits for a lock.
async fn until_a_claim_waits_for_a_lock(pool: &Pool) {
    let client = pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no claim ever waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_waited_for_the_repository_starts_after_the_run_before_it_ended() {
    let (_db, pool, org_id) = common::with_org("claim_ts", "ts", 4).await;
    let setup = pool.get().await.unwrap();
    setup
        .execute(
            "INSERT INTO repos (id, org_id, name) VALUES ('repo_ts', $1, 'ts')",
            &[&org_id],
        )
        .await
        .unwrap();
    drop(setup);
    let first = queued(&pool, "repo_ts", "a").await;
    let second = queued(&pool, "repo_ts", "b").await;
    let mut c = pool.get().await.unwrap();
    assert!(matches!(
        syncs::claim(&mut c, &first, LEASE, None).await.unwrap(),
        Claim::Claimed(_)
    ));
    drop(c);

    // Hold the repository's row lock, so the second claim's transaction
    // begins now and then waits.
    let mut holder = pool.get().await.unwrap();
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM repos WHERE id = 'repo_ts' FOR NO KEY UPDATE",
        &[],
    )
    .await
    .unwrap();
    let claimer = {
        let pool = pool.clone();
        let second = second.clone();
        tokio::spawn(async move {
            let mut c = pool.get().await.unwrap();
            syncs::claim(&mut c, &second, LEASE, None).await.unwrap()
        })
    };
    until_a_claim_waits_for_a_lock(&pool).await;
    // The first run ends while the second claim waits; then the lock goes.
    let c = pool.get().await.unwrap();
    assert!(
        syncs::finish(&c, &first, 1, SyncStatus::Completed, None, None)
            .await
            .unwrap()
    );
    drop(c);
    hold.commit().await.unwrap();
    drop(holder);
    let claimed = match claimer.await.unwrap() {
        Claim::Claimed(claimed) => claimed,
        other => panic!("the second claim gave {other:?}"),
    };

    let ended = syncs::by_id(&pool.get().await.unwrap(), &first)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    let started = claimed.sync.started_at.unwrap();
    assert!(
        started >= ended,
        "second run started at {started}, before the first ended at {ended}"
    );
}
