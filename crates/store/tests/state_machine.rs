//! The sync state machine, as the SQL in `syncs.rs` implements it, driven by
//! random sequences of worker operations against a real Postgres and checked
//! against a model after every step:
//! - the status/timestamp/stats/error combinations of
//!   `docs/sync-semantics.md` ("Lifecycle of a sync") hold;
//! - `attempt` only grows, by one per successful claim;
//! - a write carrying a stale attempt (fencing token) changes nothing;
//! - `completed` and `failed` are final.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_domain::{Direction, RefGlobs, Stats, SyncStatus};
use depot_store::Pool;
use depot_store::syncs::{self, Claim, Enqueued};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::time::Duration;
use tokio::runtime::Runtime;

mod common;
const MAX_ATTEMPTS: i32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Claim,
    Heartbeat { stale: bool },
    Complete { stale: bool },
    Fail { stale: bool },
    Requeue { stale: bool },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Claim),
        1 => any::<bool>().prop_map(|stale| Op::Heartbeat { stale }),
        1 => any::<bool>().prop_map(|stale| Op::Complete { stale }),
        1 => any::<bool>().prop_map(|stale| Op::Fail { stale }),
        2 => any::<bool>().prop_map(|stale| Op::Requeue { stale }),
        2 => Just(Op::Sweep),
    ]
}

/// The model: what the row should say.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Model {
    status: SyncStatus,
    attempt: i32,
}

async fn check_row(pool: &Pool, id: &str, model: Model) -> Result<(), TestCaseError> {
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT status, attempt, started_at IS NOT NULL, finished_at IS NOT NULL,
                    stats IS NOT NULL, error IS NOT NULL, lease_until IS NOT NULL
             FROM syncs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let status: String = row.get(0);
    let attempt: i32 = row.get(1);
    let (started, finished, stats, error, lease): (bool, bool, bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
    prop_assert_eq!(status.as_str(), model.status.as_str());
    prop_assert_eq!(attempt, model.attempt);
    match model.status {
        SyncStatus::Queued => prop_assert!(!started && !finished && !stats && !error && !lease),
        SyncStatus::InProgress => prop_assert!(started && !finished && !stats && !error && lease),
        SyncStatus::Completed => prop_assert!(started && finished && stats && !error && !lease),
        SyncStatus::Failed => prop_assert!(finished && error && !lease),
    }
    Ok(())
}

async fn run_case(pool: &Pool, repo_id: &str, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let id = depot_domain::ids::new_id("sync");
    // Distinct globs per case: the "one fresh queued sync" index would
    // otherwise refuse the insert.
    let globs = RefGlobs {
        branches: id.clone(),
        tags: String::new(),
    };
    let client = pool.get().await.unwrap();
    match syncs::enqueue(&client, &id, repo_id, Direction::Pull, &globs)
        .await
        .unwrap()
    {
        Enqueued::Created(s) => prop_assert_eq!(s.status, SyncStatus::Queued),
        Enqueued::AlreadyQueued(_) => prop_assert!(false, "fresh globs cannot be queued already"),
    }
    drop(client);
    let mut model = Model {
        status: SyncStatus::Queued,
        attempt: 0,
    };
    // A lease of zero: every run is at once "expired", so a sweep always has
    // something to recover.
    let lease = Duration::ZERO;
    for op in ops {
        let token = |stale: bool| {
            if stale {
                model.attempt - 1
            } else {
                model.attempt
            }
        };
        let live = model.status == SyncStatus::InProgress;
        let client = pool.get().await.unwrap();
        match op {
            Op::Claim => {
                let mut c = pool.get().await.unwrap();
                let result = syncs::claim(&mut c, &id, lease, Some(1)).await.unwrap();
                match (model.status, result) {
                    (SyncStatus::Queued, Claim::Claimed(claimed)) => {
                        prop_assert_eq!(claimed.sync.attempt, model.attempt + 1);
                        model = Model {
                            status: SyncStatus::InProgress,
                            attempt: model.attempt + 1,
                        };
                    }
                    (SyncStatus::Queued, other) => {
                        prop_assert!(false, "claim of a queued sync gave {:?}", other)
                    }
                    (_, Claim::Gone) => {}
                    (_, other) => {
                        prop_assert!(false, "claim of a non-queued sync gave {:?}", other)
                    }
                }
            }
            Op::Heartbeat { stale } => {
                let ok = syncs::heartbeat(&client, &id, token(stale), lease)
                    .await
                    .unwrap();
                prop_assert_eq!(ok, live && !stale);
            }
            Op::Complete { stale } => {
                let stats = Stats::default();
                let ok = syncs::finish(
                    &client,
                    &id,
                    token(stale),
                    SyncStatus::Completed,
                    Some(&stats),
                    None,
                )
                .await
                .unwrap();
                prop_assert_eq!(ok, live && !stale);
                if ok {
                    model.status = SyncStatus::Completed;
                }
            }
            Op::Fail { stale } => {
                let ok = syncs::finish(
                    &client,
                    &id,
                    token(stale),
                    SyncStatus::Failed,
                    None,
                    Some("x"),
                )
                .await
                .unwrap();
                prop_assert_eq!(ok, live && !stale);
                if ok {
                    model.status = SyncStatus::Failed;
                }
            }
            Op::Requeue { stale } => {
                let ok = syncs::requeue(&client, &id, token(stale), Duration::ZERO)
                    .await
                    .unwrap();
                prop_assert_eq!(ok, live && !stale);
                if ok {
                    model.status = SyncStatus::Queued;
                }
            }
            Op::Sweep => {
                // Cases run one after another and delete their sync at the
                // end, so whatever in-progress sync is swept is this one.
                let swept = syncs::sweep_expired_leases(&client, MAX_ATTEMPTS, 100)
                    .await
                    .unwrap();
                let ours: Vec<_> = swept.iter().filter(|s| s.id == id).collect();
                prop_assert_eq!(swept.len(), ours.len());
                if live {
                    prop_assert_eq!(ours.len(), 1);
                    model.status = if model.attempt >= MAX_ATTEMPTS {
                        SyncStatus::Failed
                    } else {
                        SyncStatus::Queued
                    };
                    prop_assert_eq!(ours[0].status, model.status);
                } else {
                    prop_assert!(ours.is_empty());
                }
            }
        }
        check_row(pool, &id, model).await?;
    }
    let client = pool.get().await.unwrap();
    client
        .execute("DELETE FROM syncs WHERE id = $1", &[&id])
        .await
        .unwrap();
    Ok(())
}

#[test]
fn every_sequence_of_worker_operations_keeps_the_invariants() {
    let rt = Runtime::new().unwrap();
    let (_db, pool, org_id) = rt.block_on(common::with_org("depot_prop", "prop", 2));
    rt.block_on(async {
        let client = pool.get().await.unwrap();
        client
            .execute(
                "INSERT INTO repos (id, org_id, name) VALUES ('repo_prop', $1, 'r')",
                &[&org_id],
            )
            .await
            .unwrap();
    });
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..24), |ops| {
        rt.block_on(run_case(&pool, "repo_prop", ops))
    });
    drop(pool);
    if let Err(e) = result {
        panic!("{e}");
    }
}
