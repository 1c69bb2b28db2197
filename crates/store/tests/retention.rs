//! Retention of sync history and idempotency keys, and the housekeeping
//! lease, against a real Postgres. Ages are made observable by backdating
//! rows, never by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_domain::{Direction, RefGlobs, Stats, SyncStatus};
use depot_store::syncs::{self, Claim, Enqueued};
use depot_store::{Pool, housekeeping, idempotency};
use std::time::Duration;

mod common;

const DAY: Duration = Duration::from_secs(86_400);

async fn setup(prefix: &str) -> (common::ScratchDb, Pool, String) {
    common::with_org(prefix, "ret", 4).await
}

async fn repo(pool: &Pool, org_id: &str, id: &str) {
    let client = pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO repos (id, org_id, name) VALUES ($1, $2, $1)",
            &[&id, &org_id],
        )
        .await
        .unwrap();
}

/// A queued sync of `repo_id`. Distinct globs per sync keep the
/// one-queued index quiet.
async fn queued(pool: &Pool, repo_id: &str, n: usize) -> String {
    let client = pool.get().await.unwrap();
    let id = depot_domain::ids::new_id("sync");
    let globs = RefGlobs {
        branches: format!("b{n}"),
        tags: String::new(),
    };
    let Enqueued::Created(_) = syncs::enqueue(&client, &id, repo_id, Direction::Pull, &globs)
        .await
        .unwrap()
    else {
        panic!("not created");
    };
    id
}

/// Claim `id` and, unless `status` is `in_progress`, finish it as `status`
/// `age_days` ago.
async fn drive(pool: &Pool, id: &str, status: SyncStatus, age_days: i32) {
    let mut client = pool.get().await.unwrap();
    let Claim::Claimed(c) = syncs::claim(&mut client, id, Duration::from_secs(60), None)
        .await
        .unwrap()
    else {
        panic!("not claimed");
    };
    if status == SyncStatus::InProgress {
        return;
    }
    let stats = Stats::sorted(vec![]);
    let error = (status == SyncStatus::Failed).then_some("x");
    let ok = syncs::finish(
        &client,
        id,
        c.sync.attempt,
        status,
        (status == SyncStatus::Completed).then_some(&stats),
        error,
    )
    .await
    .unwrap();
    assert!(ok);
    client
        .execute(
            "UPDATE syncs SET created_at = now() - make_interval(days => $2),
                    finished_at = now() - make_interval(days => $2) WHERE id = $1",
            &[&id, &age_days],
        )
        .await
        .unwrap();
}

async fn sync(pool: &Pool, repo_id: &str, n: usize, status: SyncStatus, age_days: i32) -> String {
    let id = queued(pool, repo_id, n).await;
    if status != SyncStatus::Queued {
        drive(pool, &id, status, age_days).await;
    }
    id
}

async fn ids_of(pool: &Pool, repo_id: &str) -> Vec<String> {
    let client = pool.get().await.unwrap();
    client
        .query(
            "SELECT id FROM syncs WHERE repo_id = $1 ORDER BY seq",
            &[&repo_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Old terminal syncs beyond the newest N go; the newest N, recent ones
/// and every queued or running one stay, in every repository.
#[tokio::test]
async fn sync_retention_keeps_the_newest_n_and_recent_ones_and_never_live_ones() {
    let (_db, pool, org) = setup("depot_ret").await;
    repo(&pool, &org, "repo_a").await;
    repo(&pool, &org, "repo_b").await;
    // repo_a, oldest first: 6 old terminal, 1 old but running (a long
    // backlog), 2 recent terminal, 1 queued. Keep 3 newest, 30 days.
    let mut a = Vec::new();
    for n in 0..6 {
        let status = if n % 2 == 0 {
            SyncStatus::Completed
        } else {
            SyncStatus::Failed
        };
        a.push(sync(&pool, "repo_a", n, status, 200).await);
    }
    // A sync older than the recent ones, still running (a long run, or one
    // that waited in a backlog): never deleted.
    let running = queued(&pool, "repo_a", 6).await;
    let recent1 = sync(&pool, "repo_a", 7, SyncStatus::Completed, 10).await;
    let recent2 = sync(&pool, "repo_a", 8, SyncStatus::Completed, 10).await;
    drive(&pool, &running, SyncStatus::InProgress, 0).await;
    let waiting = queued(&pool, "repo_a", 9).await;
    // repo_b: only two syncs, both old: fewer than N, all kept.
    let b: Vec<String> = vec![
        sync(&pool, "repo_b", 0, SyncStatus::Completed, 400).await,
        sync(&pool, "repo_b", 1, SyncStatus::Completed, 400).await,
    ];

    let client = pool.get().await.unwrap();
    // In batches of 2: the pass loops until a batch comes back short.
    let mut deleted = 0;
    loop {
        let n = syncs::delete_expired(&client, 3, 30 * DAY, 2)
            .await
            .unwrap();
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert_eq!(deleted, 6);
    assert_eq!(
        ids_of(&pool, "repo_a").await,
        vec![running, recent1, recent2, waiting]
    );
    assert_eq!(ids_of(&pool, "repo_b").await, b);
    // Nothing more to do.
    assert_eq!(
        syncs::delete_expired(&client, 3, 30 * DAY, 100)
            .await
            .unwrap(),
        0
    );
    // A deleted sync is gone for its status poll too.
    let gone = depot_store::syncs::by_id(&client, &a[0]).await.unwrap();
    assert!(gone.is_none());
}

/// With no age floor only the newest N remain, and the newest (the
/// repository's latest sync) always stays even with N = 1.
#[tokio::test]
async fn sync_retention_without_age_floor_keeps_exactly_the_newest_n_and_the_latest() {
    let (_db, pool, org) = setup("depot_ret").await;
    repo(&pool, &org, "repo_a").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(sync(&pool, "repo_a", n, SyncStatus::Completed, 0).await);
    }
    let client = pool.get().await.unwrap();
    assert_eq!(
        syncs::delete_expired(&client, 2, Duration::ZERO, 100)
            .await
            .unwrap(),
        3
    );
    assert_eq!(ids_of(&pool, "repo_a").await, ids[3..].to_vec());
    assert_eq!(
        syncs::delete_expired(&client, 1, Duration::ZERO, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(ids_of(&pool, "repo_a").await, ids[4..].to_vec());
    let latest = syncs::latest_for(&client, &["repo_a".to_string()])
        .await
        .unwrap();
    assert_eq!(latest[0].id, ids[4]);
}

/// Keys older than the retention are deleted in batches; younger ones stay
/// and still replay.
#[tokio::test]
async fn expired_idempotency_keys_are_deleted_in_batches() {
    let (_db, pool, org) = setup("depot_idem").await;
    let client = pool.get().await.unwrap();
    for i in 0..5 {
        let key = format!("old-{i}");
        let r = idempotency::reserve(&client, &org, &key, b"h", DAY)
            .await
            .unwrap();
        assert!(matches!(r, idempotency::Reservation::Fresh));
    }
    client
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    idempotency::reserve(&client, &org, "young", b"h", DAY)
        .await
        .unwrap();
    idempotency::complete(&client, &org, "young", 201, &serde_json::json!({"id": 1}))
        .await
        .unwrap();
    assert_eq!(
        idempotency::delete_expired(&client, DAY, 2).await.unwrap(),
        2
    );
    assert_eq!(
        idempotency::delete_expired(&client, DAY, 100)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        idempotency::delete_expired(&client, DAY, 100)
            .await
            .unwrap(),
        0
    );
    let left: i64 = client
        .query_one("SELECT count(*) FROM idempotency_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    let again = idempotency::reserve(&client, &org, "young", b"h", DAY)
        .await
        .unwrap();
    assert!(matches!(
        again,
        idempotency::Reservation::Replay { status: 201, .. }
    ));
}

/// A shorter retention expires a key sooner: reserving it again is fresh.
#[tokio::test]
async fn the_idempotency_retention_is_the_one_given() {
    let (_db, pool, org) = setup("depot_idem").await;
    let client = pool.get().await.unwrap();
    let hour = Duration::from_secs(3600);
    idempotency::reserve(&client, &org, "k", b"h", hour)
        .await
        .unwrap();
    client
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '2 hours'",
            &[],
        )
        .await
        .unwrap();
    let r = idempotency::reserve(&client, &org, "k", b"other", hour)
        .await
        .unwrap();
    assert!(matches!(r, idempotency::Reservation::Fresh));
}

/// The housekeeping lease and a sync's claim exclude each other, and a
/// stale holder cannot renew or release a lease it lost.
#[tokio::test]
async fn housekeeping_lease_and_sync_claims_exclude_each_other() {
    let (_db, pool, org) = setup("depot_hk").await;
    repo(&pool, &org, "repo_a").await;
    let lease = Duration::from_secs(60);
    let mut client = pool.get().await.unwrap();
    assert!(
        housekeeping::take(&mut client, "repo_a", "t1", lease)
            .await
            .unwrap()
    );
    assert!(
        !housekeeping::take(&mut client, "repo_a", "t2", lease)
            .await
            .unwrap(),
        "two leases at once"
    );
    // A queued sync waits while housekeeping runs.
    let id = sync(&pool, "repo_a", 0, SyncStatus::Queued, 0).await;
    let claim = syncs::claim(&mut client, &id, lease, None).await.unwrap();
    assert!(matches!(claim, Claim::Busy), "{claim:?}");
    assert!(
        housekeeping::renew(&client, "repo_a", "t1", lease)
            .await
            .unwrap()
    );
    assert!(
        !housekeeping::renew(&client, "repo_a", "t2", lease)
            .await
            .unwrap()
    );
    assert!(
        !housekeeping::release(&client, "repo_a", "t2")
            .await
            .unwrap()
    );
    assert!(
        housekeeping::release(&client, "repo_a", "t1")
            .await
            .unwrap()
    );
    // Released: the sync runs, and no lease is granted while it does.
    let claim = syncs::claim(&mut client, &id, lease, None).await.unwrap();
    assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");
    assert!(
        !housekeeping::take(&mut client, "repo_a", "t3", lease)
            .await
            .unwrap()
    );
    let idle = housekeeping::candidates(&client, Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(
        idle.is_empty(),
        "a running repository is no candidate: {idle:?}"
    );
}

/// An expired lease (its holder died) no longer blocks anyone, and its
/// holder cannot renew it.
#[tokio::test]
async fn an_expired_housekeeping_lease_frees_the_repository() {
    let (_db, pool, org) = setup("depot_hk").await;
    repo(&pool, &org, "repo_a").await;
    let mut client = pool.get().await.unwrap();
    assert!(
        housekeeping::take(&mut client, "repo_a", "dead", Duration::from_secs(60))
            .await
            .unwrap()
    );
    client
        .execute(
            "UPDATE repos SET housekeeping_until = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !housekeeping::renew(&client, "repo_a", "dead", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let id = sync(&pool, "repo_a", 0, SyncStatus::Queued, 0).await;
    let claim = syncs::claim(&mut client, &id, Duration::from_secs(60), None)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");
}

/// Candidates: never looked at first, then by age of the last look; one
/// looked at recently is not due.
#[tokio::test]
async fn housekeeping_candidates_are_the_repositories_not_looked_at_lately() {
    let (_db, pool, org) = setup("depot_hk").await;
    for r in ["repo_a", "repo_b", "repo_c"] {
        repo(&pool, &org, r).await;
    }
    let client = pool.get().await.unwrap();
    client
        .execute(
            "UPDATE repos SET housekept_at = CASE id
                 WHEN 'repo_a' THEN now() - interval '2 hours'
                 WHEN 'repo_b' THEN now() END",
            &[],
        )
        .await
        .unwrap();
    let due: Vec<String> = housekeeping::candidates(&client, Duration::from_secs(3600), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.repo_id)
        .collect();
    assert_eq!(due, vec!["repo_c".to_string(), "repo_a".to_string()]);
}

/// Webhook events whose deliveries are all done (succeeded or failed) are
/// deleted with their deliveries once older than the retention given; a
/// younger one and one with a pending delivery, however old, are kept.
#[tokio::test]
async fn webhook_events_older_than_the_retention_go_unless_a_delivery_is_pending() {
    use depot_store::webhooks;
    let (_db, pool, org) = setup("depot_hookret").await;
    let client = pool.get().await.unwrap();
    let events: Vec<String> = webhooks::EVENTS.iter().map(|e| e.to_string()).collect();
    webhooks::insert_target(
        &client,
        &webhooks::NewTarget {
            id: "wht_ret",
            org_id: &org,
            name: None,
            url: "https://hooks.example.com/",
            events: &events,
            repo_ids: None,
            secret: b"sealed",
        },
    )
    .await
    .unwrap();
    // Each repository's creation records one event with one delivery.
    for (id, status, age_hours) in [
        ("old_ok", "succeeded", 72),
        ("old_failed", "failed", 72),
        ("young_ok", "succeeded", 24),
        ("old_pending", "pending", 72),
    ] {
        repo(&pool, &org, id).await;
        client
            .execute(
                "UPDATE webhook_deliveries d SET status = $2 FROM webhook_events e
                 WHERE e.id = d.event_id AND e.repo_id = $1",
                &[&id, &status],
            )
            .await
            .unwrap();
        client
            .execute(
                "UPDATE webhook_events SET occurred_at = now() - make_interval(hours => $2)
                 WHERE repo_id = $1",
                &[&id, &age_hours],
            )
            .await
            .unwrap();
    }
    let retention = Duration::from_secs(48 * 3600);
    assert_eq!(webhooks::prune(&client, retention, 100).await.unwrap(), 2);
    let repos_of = async |sql: &str| -> Vec<String> {
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(
        repos_of("SELECT repo_id FROM webhook_events ORDER BY repo_id").await,
        ["old_pending", "young_ok"]
    );
    assert_eq!(
        repos_of(
            "SELECT e.repo_id FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id ORDER BY e.repo_id"
        )
        .await,
        ["old_pending", "young_ok"]
    );
}
