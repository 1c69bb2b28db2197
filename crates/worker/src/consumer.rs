//! The consuming loop: take deliveries from the jobs queue, run each in its
//! own task, reconnect when the broker goes away, and drain on shutdown.

use crate::Ctx;
use crate::run::handle_delivery;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken, grace: Duration) {
    let mut tasks = JoinSet::new();
    let tag = crate::worker_identity();
    let mut backoff = Duration::from_millis(100);
    // `worker.concurrency` bounds runs, not just one channel's prefetch:
    // runs taken on a channel that broke go on while the next channel
    // receives its own prefetch, and without these permits the worker ran
    // up to twice its concurrency after every broker reconnect.
    let concurrency = usize::from(ctx.settings.worker.concurrency);
    let permits = Arc::new(Semaphore::new(concurrency));
    'outer: while !shutdown.is_cancelled() {
        let broker = tokio::select! {
            b = ctx.broker.wait(Duration::from_secs(5)) => b,
            _ = shutdown.cancelled() => break,
        };
        let Some(broker) = broker else { continue };
        let prefetch = ctx.settings.worker.concurrency;
        let (channel, mut consumer) = match broker.consume(prefetch, &tag).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start consuming");
                ctx.broker.report_broken();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(prefetch, "consuming sync jobs");
        let stop = async |tasks: &mut JoinSet<()>| {
            // Stop receiving; deliveries already taken run on and are acked
            // on this (still open) channel.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                channel.basic_cancel(tag.as_str().into(), Default::default()),
            )
            .await;
            drain(&ctx, tasks, grace).await;
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
                        let ctx = ctx.clone();
                        tasks.spawn(async move {
                            handle_delivery(ctx, delivery).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer failed; reconnecting");
                        ctx.broker.report_broken();
                        break;
                    }
                    None => {
                        tracing::warn!("consumer cancelled by the broker; reconnecting");
                        ctx.broker.report_broken();
                        break;
                    }
                }
            }
        }
    }
    drain(&ctx, &mut tasks, grace).await;
}

/// Wait up to `grace` for running syncs; then tell the rest to stop (they
/// release their syncs back to `queued`) and wait for that.
async fn drain(ctx: &Ctx, tasks: &mut JoinSet<()>, grace: Duration) {
    // The set still holds runs that ended since the consuming loop last
    // reaped it: count only those still running, or the log claims a wait
    // for syncs that are long done.
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
        ctx.hard_stop.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
