//! The domain steps of "Sync upstream" (`POST …/upstream/syncs`), behind one
//! function returning typed outcomes; the route handler keeps the HTTP
//! concerns (parsing, status codes, bodies).
//!
//! Invariants:
//! - Without an `Idempotency-Key` the whole write is one statement
//!   (`depot_store::syncs::create_queued`): one round trip, no explicit
//!   transaction. With one, the reservation, that statement and the
//!   recorded answer share one transaction, so a replay never sees a sync
//!   that was not written or misses one that was.
//! - The job message is built once, before the write; its outbox row is
//!   committed with the sync, and only then offered to the background
//!   publisher (crate::publisher): the 201 never waits for the broker.

use crate::publisher::{Publisher, Queued};
use depot_contracts::Message as _;
use depot_domain::ids::new_id;
use depot_domain::{Direction, RefGlobs};
use depot_store::idempotency::{self, Reservation};
use depot_store::syncs::{Created, SyncRecord};
use depot_store::{Pool, StoreError};
use serde_json::Value;
use std::time::Duration;

/// A validated request to sync.
pub struct Request<'a> {
    pub org_id: &'a str,
    pub repo_name: &'a str,
    pub direction: Direction,
    pub globs: &'a RefGlobs,
}

/// The request's `Idempotency-Key` and the hash of what it names.
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub retention: Duration,
}

/// What became of a request.
// Made once per POST and matched at once.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Written and committed; its job is on its way.
    Created(SyncRecord),
    AlreadyQueued(String),
    RepoGone,
    UpstreamNotConfigured,
    /// The key's first request was answered with this.
    Replay {
        status: u16,
        body: Value,
    },
    /// The key was used for a different request, or that request is still
    /// being answered.
    KeyReused,
}

/// Record the sync (or find why not). `answer` renders the final answer of
/// an outcome (`Created`, `AlreadyQueued`) for the idempotency record; the
/// rendering is the handler's, the recording ours.
pub async fn enqueue(
    pool: &Pool,
    publisher: &Publisher,
    request: &Request<'_>,
    idem: Option<&Idempotency<'_>>,
    answer: impl Fn(&Outcome) -> Option<(u16, Value)>,
) -> Result<Outcome, StoreError> {
    let sync_id = new_id("sync");
    // repo_id is appended by the statement that finds the repository.
    let mut job = depot_broker::job(&sync_id, "", 0, depot_telemetry::inject_current());
    let job_without_repo = job.encode_to_vec();
    let mut client = pool.get().await?;
    let (outcome, outbox_id) = match idem {
        None => {
            let created = create(&client, request, &sync_id, &job_without_repo).await?;
            split(created)
        }
        Some(idem) => {
            let tx = client.transaction().await?;
            match idempotency::reserve(
                &tx,
                request.org_id,
                idem.key,
                idem.request_hash,
                idem.retention,
            )
            .await?
            {
                Reservation::Fresh => {}
                Reservation::Replay { status, body } => {
                    return Ok(Outcome::Replay { status, body });
                }
                Reservation::Mismatch | Reservation::InFlight => return Ok(Outcome::KeyReused),
            }
            let (outcome, outbox_id) =
                split(create(&tx, request, &sync_id, &job_without_repo).await?);
            match answer(&outcome) {
                Some((status, body)) => {
                    idempotency::complete(&tx, request.org_id, idem.key, status, &body).await?;
                    tx.commit().await?;
                }
                // Not a final answer (the repository is gone): the
                // reservation rolls back, the key stays free.
                None => return Ok(outcome),
            }
            (outcome, outbox_id)
        }
    };
    drop(client);
    if let (Outcome::Created(sync), Some(outbox_id)) = (&outcome, outbox_id) {
        tracing::info!(sync_id = %sync.id, repo_id = %sync.repo_id, direction = %sync.direction, "sync enqueued");
        job.repo_id.clone_from(&sync.repo_id);
        publisher.offer(Queued { outbox_id, job });
    }
    Ok(outcome)
}

async fn create(
    client: &impl depot_store::GenericClient,
    request: &Request<'_>,
    sync_id: &str,
    job_without_repo: &[u8],
) -> Result<Created, StoreError> {
    depot_store::syncs::create_queued(
        client,
        request.org_id,
        request.repo_name,
        sync_id,
        request.direction,
        request.globs,
        job_without_repo,
    )
    .await
}

fn split(created: Created) -> (Outcome, Option<i64>) {
    match created {
        Created::Created { sync, outbox_id } => (Outcome::Created(sync), Some(outbox_id)),
        Created::AlreadyQueued(id) => (Outcome::AlreadyQueued(id), None),
        Created::RepoGone => (Outcome::RepoGone, None),
        Created::UpstreamNotConfigured => (Outcome::UpstreamNotConfigured, None),
    }
}
