//! The consuming loop, one for every kind of job: take messages from the
//! kind's queue, run each in its own task, reconnect when the broker goes
//! away, and drain on shutdown.
//!
//! Invariants:
//! - each kind has its own queue, channel and permits ([`Jobs`]): a
//!   slow webhook target can hold every delivery slot and never a sync's;
//! - a kind never runs more than its concurrency at once, not even across a
//!   reconnect (messages taken on a broken channel still hold permits);
//! - on shutdown no new message is taken; what runs is left to the kind's
//!   [`Jobs::drain`].

use crate::Ctx;
use depot_broker::Delivery;
use futures_util::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The queue a kind consumes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Queue {
    Jobs,
    Webhooks,
}

/// What the runner needs to know of a kind of job.
pub(crate) trait Jobs: Send + Sync + 'static {
    /// Names the kind in logs ("sync jobs").
    const WHAT: &'static str;
    const QUEUE: Queue;
    /// Consumer tag: unique per worker and kind.
    fn tag(&self) -> String;
    /// Most messages run at once (and the channel's prefetch).
    fn concurrency(&self) -> u16;
    /// Run one message to its ack (or reject); never fails.
    fn handle(self: &Arc<Self>, delivery: Delivery) -> impl Future<Output = ()> + Send + 'static;
    /// On shutdown, after consuming stopped: end what still runs.
    fn drain(&self, tasks: &mut JoinSet<()>) -> impl Future<Output = ()> + Send;
}

pub(crate) async fn run<K: Jobs>(ctx: Arc<Ctx>, kind: Arc<K>, shutdown: CancellationToken) {
    let mut tasks = JoinSet::new();
    let tag = kind.tag();
    let mut backoff = Duration::from_millis(100);
    let prefetch = kind.concurrency();
    // The concurrency bounds runs, not just one channel's prefetch: runs
    // taken on a channel that broke go on while the next channel receives
    // its own prefetch, and without these permits the worker ran up to
    // twice its concurrency after every broker reconnect.
    let permits = Arc::new(Semaphore::new(usize::from(prefetch)));
    'outer: while !shutdown.is_cancelled() {
        let broker = tokio::select! {
            b = ctx.broker.wait(Duration::from_secs(5)) => b,
            _ = shutdown.cancelled() => break,
        };
        let Some(broker) = broker else { continue };
        let consumed = match K::QUEUE {
            Queue::Jobs => broker.consume(prefetch, &tag).await,
            Queue::Webhooks => broker.consume_webhooks(prefetch, &tag).await,
        };
        let (channel, mut consumer) = match consumed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, what = K::WHAT, "cannot start consuming");
                ctx.broker.report_broken();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(prefetch, "consuming {}", K::WHAT);
        let stop = async |tasks: &mut JoinSet<()>| {
            // Stop receiving; messages already taken run on and are acked
            // on this (still open) channel.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                channel.basic_cancel(tag.as_str().into(), Default::default()),
            )
            .await;
            kind.drain(tasks).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                channel.close(200, "shutdown".into()),
            )
            .await;
        };
        loop {
            // Reap finished runs so the set does not grow.
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => {
                    stop(&mut tasks).await;
                    break 'outer;
                }
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // Never closed; should it be, stop taking work.
                    Err(_) => break 'outer,
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    stop(&mut tasks).await;
                    break 'outer;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let run = kind.handle(delivery);
                        tasks.spawn(async move {
                            run.await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, what = K::WHAT, "consumer failed; reconnecting");
                        ctx.broker.report_broken();
                        break;
                    }
                    None => {
                        tracing::warn!(what = K::WHAT, "consumer cancelled by the broker; reconnecting");
                        ctx.broker.report_broken();
                        break;
                    }
                }
            }
        }
    }
    kind.drain(&mut tasks).await;
}

/// Sync jobs: `worker.concurrency` runs, drained for the shutdown grace.
pub(crate) struct SyncJobs {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) grace: Duration,
}

impl Jobs for SyncJobs {
    const WHAT: &'static str = "sync jobs";
    const QUEUE: Queue = Queue::Jobs;

    fn tag(&self) -> String {
        crate::worker_identity()
    }

    fn concurrency(&self) -> u16 {
        self.ctx.settings.worker.concurrency
    }

    fn handle(self: &Arc<Self>, delivery: Delivery) -> impl Future<Output = ()> + Send + 'static {
        crate::run::handle_delivery(self.ctx.clone(), delivery)
    }

    /// Wait up to the grace for running syncs; then tell the rest to stop
    /// (they release their syncs back to `queued`) and wait for that.
    async fn drain(&self, tasks: &mut JoinSet<()>) {
        let grace = self.grace;
        // The set still holds runs that ended since the consuming loop last
        // reaped it: count only those still running, or the log claims a
        // wait for syncs that are long done.
        while tasks.try_join_next().is_some() {}
        if tasks.is_empty() {
            tracing::debug!("no running syncs to wait for");
            return;
        }
        tracing::info!(
            running = tasks.len(),
            grace_seconds = grace.as_secs(),
            "waiting for running syncs"
        );
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "grace period over; releasing running syncs"
            );
            self.ctx.hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
    }
}
