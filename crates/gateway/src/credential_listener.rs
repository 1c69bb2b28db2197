//! One Postgres connection per gateway process that `LISTEN`s on
//! `depot_credentials` and applies each notification to the credential
//! cache (crate::credential_cache), so a key revoked or deleted on any
//! replica's database is dropped from every replica's cache. The same
//! connection listens on `depot_syncs` and hands sync changes to the
//! requests waiting for them (crate::sync_watch).
//!
//! Invariants:
//! - Notifications are applied on the task that drives the connection, in
//!   the order Postgres sends them, before the answer of any later ping is
//!   seen: a ping answered means every change committed before it was sent
//!   is applied.
//! - The listener pings every quarter of the revocation bound and reports
//!   each answer to the cache; the cache itself decides what a silent
//!   listener means (entries older than the bound are read again), so a
//!   hung connection degrades to database reads, never to stale answers.
//! - A lost connection empties the cache at once; it is reopened with
//!   exponential backoff (100 ms to 5 s), for as long as the process runs,
//!   and each new connection starts a new cache generation and wakes every
//!   waiting request (changes may have gone unnoticed meanwhile).

use crate::credential_cache::CredentialCache;
use crate::sync_watch::{self, SyncWatch};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{AsyncMessage, NoTls};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Start the listener on the current runtime; it runs until the process ends.
pub fn spawn(config: tokio_postgres::Config, cache: Arc<CredentialCache>, syncs: Arc<SyncWatch>) {
    tokio::spawn(run(config, cache, syncs));
}

async fn run(
    mut config: tokio_postgres::Config,
    cache: Arc<CredentialCache>,
    syncs: Arc<SyncWatch>,
) {
    config.application_name("depot-gateway-listener");
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let outcome = session(&config, &cache, &syncs).await;
        cache.not_listening();
        // A connection that served a while earns a quick first retry.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(
            error = %outcome,
            retry_ms = backoff.as_millis() as u64,
            "credential listener lost its connection; cached credentials are re-read within the revocation bound"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life; returns why it ended.
async fn session(
    config: &tokio_postgres::Config,
    cache: &Arc<CredentialCache>,
    syncs: &Arc<SyncWatch>,
) -> String {
    let bound = cache.revocation_bound();
    let connect = tokio::time::timeout(bound.max(Duration::from_secs(3)), config.connect(NoTls));
    let (client, mut connection) = match connect.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect: timed out".into(),
    };
    let applier = cache.clone();
    let watch = syncs.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == sync_watch::CHANNEL => {
                    watch.notified(n.payload())
                }
                Ok(AsyncMessage::Notification(n)) => applier.invalidate(n.payload()),
                Ok(_) => {}
                Err(e) => return format!("connection: {e}"),
            }
        }
        "connection closed".to_string()
    });
    let listen = format!(
        "LISTEN {}; LISTEN {}",
        depot_store::keys::CHANGES_CHANNEL,
        sync_watch::CHANNEL
    );
    match tokio::time::timeout(bound, client.batch_execute(&listen)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            driver.abort();
            return format!("LISTEN: {e}");
        }
        Err(_) => {
            driver.abort();
            return "LISTEN: timed out".into();
        }
    }
    let generation = cache.listening();
    syncs.changed_all();
    tracing::info!(generation, "credential listener listening");
    let interval = bound / 4;
    loop {
        let sent = Instant::now();
        tokio::select! {
            answered = tokio::time::timeout(bound, client.simple_query("")) => match answered {
                Ok(Ok(_)) => cache.confirmed(generation, sent),
                Ok(Err(e)) => {
                    driver.abort();
                    return format!("ping: {e}");
                }
                Err(_) => {
                    driver.abort();
                    return "ping: no answer within the revocation bound".into();
                }
            },
            ended = &mut driver => return ended.unwrap_or_else(|e| format!("driver: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            ended = &mut driver => return ended.unwrap_or_else(|e| format!("driver: {e}")),
        }
    }
}
