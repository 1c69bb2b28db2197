//! In-process fan-out of sync changes to the requests held by
//! `Prefer: wait` (routes/syncs.rs). The gateway's one listening connection
//! (crate::credential_listener) receives the `depot_syncs` notifications the
//! database sends with each status write (migrations/V8) and calls
//! [`SyncWatch::notified`]; each waiting request holds an [`Interest`] in one
//! sync or one repository's list.
//!
//! Invariants:
//! - A change is never missed by a request that took its [`Interest`] before
//!   reading: an interest remembers every change signalled after it was
//!   taken, until [`Interest::changed`] consumes it.
//! - A waiting request costs one channel receiver and no pool connection;
//!   the entry of a key lives only while an interest in it does.
//! - When notifications may have been lost (the listener reconnected),
//!   every interest is woken: a request re-reads and answers or waits on;
//!   a spurious wake costs a read, a missed one would cost the whole wait.
//! - Once the gateway is stopping ([`SyncWatch::stop`]), no request waits:
//!   held ones are woken to give their 304 at once, later ones do not start
//!   waiting, so a graceful shutdown never waits for a `Prefer: wait` to run
//!   out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, watch};

/// The `LISTEN`/`NOTIFY` channel of sync changes; payload
/// `<repo_id> <sync_id>`.
pub const CHANNEL: &str = "depot_syncs";

#[derive(Default)]
pub struct SyncWatch {
    keys: Mutex<HashMap<Key, watch::Sender<()>>>,
    stopping: AtomicBool,
    stop: Notify,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Sync(Box<str>),
    Repo(Box<str>),
}

/// One request's interest in a key; dropped when the request ends.
pub struct Interest {
    watch: Arc<SyncWatch>,
    key: Key,
    rx: Option<watch::Receiver<()>>,
}

impl SyncWatch {
    pub fn new() -> Arc<SyncWatch> {
        Arc::new(SyncWatch::default())
    }

    /// Interest in one sync's representation.
    pub fn sync(self: &Arc<Self>, sync_id: &str) -> Interest {
        self.interest(Key::Sync(sync_id.into()))
    }

    /// Interest in a repository's sync list.
    pub fn repo(self: &Arc<Self>, repo_id: &str) -> Interest {
        self.interest(Key::Repo(repo_id.into()))
    }

    fn interest(self: &Arc<Self>, key: Key) -> Interest {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = match keys.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                keys.insert(key.clone(), tx);
                rx
            }
        };
        Interest {
            watch: self.clone(),
            key,
            rx: Some(rx),
        }
    }

    /// A `depot_syncs` notification's payload arrived.
    pub fn notified(&self, payload: &str) {
        let Some((repo_id, sync_id)) = payload.split_once(' ') else {
            tracing::warn!(payload, "malformed sync change notification");
            return;
        };
        self.changed_sync(sync_id);
        self.changed_repo(repo_id);
    }

    pub fn changed_sync(&self, sync_id: &str) {
        self.signal(&Key::Sync(sync_id.into()));
    }

    /// A repository's list changed (a sync was added here, or a
    /// notification named it).
    pub fn changed_repo(&self, repo_id: &str) {
        self.signal(&Key::Repo(repo_id.into()));
    }

    fn signal(&self, key: &Key) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = keys.get(key) {
            tx.send_replace(());
        }
    }

    /// Notifications may have been lost: wake everyone.
    pub fn changed_all(&self) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for tx in keys.values() {
            tx.send_replace(());
        }
    }

    /// The gateway is stopping: end every wait now and start no new one.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once [`SyncWatch::stop`] was called (at once if it was).
    pub async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a stop between the two is
        // not missed (`notify_waiters` wakes only registered futures).
        notified.as_mut().enable();
        if self.is_stopping() {
            return;
        }
        notified.await;
    }

    /// Keys with at least one interest (tests, metrics).
    pub fn watched(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Interest {
    /// Resolves at the first change signalled since the interest was taken
    /// or this last returned.
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                // The sender lives as long as any receiver does (removed in
                // `drop` below only when the last one goes).
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut keys = self
            .watch
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if keys
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    async fn woken(interest: &mut Interest) -> bool {
        tokio::time::timeout(Duration::from_millis(50), interest.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_change_after_the_interest_is_seen_even_before_waiting() {
        let watch = SyncWatch::new();
        let mut interest = watch.sync("sync_a");
        watch.notified("repo_r sync_a");
        assert!(woken(&mut interest).await);
        assert!(!woken(&mut interest).await, "consumed");
    }

    #[tokio::test]
    async fn other_syncs_do_not_wake_an_interest() {
        let watch = SyncWatch::new();
        let mut interest = watch.sync("sync_a");
        watch.notified("repo_r sync_b");
        assert!(!woken(&mut interest).await);
    }

    #[tokio::test]
    async fn a_notification_wakes_its_repository_list() {
        let watch = SyncWatch::new();
        let mut list = watch.repo("repo_r");
        watch.notified("repo_r sync_b");
        assert!(woken(&mut list).await);
    }

    #[tokio::test]
    async fn changed_all_wakes_every_interest() {
        let watch = SyncWatch::new();
        let mut a = watch.sync("sync_a");
        let mut b = watch.repo("repo_r");
        watch.changed_all();
        assert!(woken(&mut a).await);
        assert!(woken(&mut b).await);
    }

    #[tokio::test]
    async fn stop_wakes_those_waiting_for_it_and_later_callers_at_once() {
        let watch = SyncWatch::new();
        let waiting = tokio::spawn({
            let watch = watch.clone();
            async move { watch.stopped().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        watch.stop();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_millis(50), watch.stopped())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_entry_goes_with_the_last_interest() {
        let watch = SyncWatch::new();
        let a = watch.sync("sync_a");
        let b = watch.sync("sync_a");
        assert_eq!(watch.watched(), 1);
        drop(a);
        assert_eq!(watch.watched(), 1);
        drop(b);
        assert_eq!(watch.watched(), 0);
    }
}
