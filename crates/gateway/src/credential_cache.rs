//! The gateway's in-process cache of verified credentials: API keys by the
//! SHA-256 of the key, private keys by their public key. A hit costs no
//! database read; the status poll, the dominant load, then needs only its
//! own one statement (docs/operations.md, "Credential cache").
//!
//! Invariants (`bound` = `auth.revocation_bound_ms`):
//! - Only credentials found active are cached; misses, revoked and
//!   expired keys are read from the database every time, so a new key works
//!   at once and a refused one stays refused.
//! - An entry younger than `bound` is served whatever the listener's
//!   state. An older one only while the listener (crate::credential_listener)
//!   is on the same connection as when the entry was read and has been
//!   confirmed alive, by a ping answered, within `bound`: every change
//!   committed before that ping was sent has been applied by then (the
//!   listener applies notifications in the order Postgres sends them, before
//!   the ping's answer). So a revoked or deleted key is refused within
//!   `bound` of its commit, on every gateway, listener up or down.
//! - No entry is served past `auth.cache_seconds`; an API key's own
//!   `expires_at` is checked on every use.
//! - An invalidation racing a database read cannot be undone by it: reads
//!   note the shelf's epoch before they query, and an insert is dropped if
//!   any invalidation happened since.

use depot_store::keys::{KeyRecord, PrivateKeyRecord};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where the listener stands, as entries are judged against it.
#[derive(Debug, Clone, Copy)]
struct Health {
    /// Bumped on every (re)connection whose `LISTEN` succeeded; 0 = never.
    generation: u64,
    /// Send time of the latest answered ping on this generation.
    confirmed_at: Option<Instant>,
}

struct Entry<T> {
    value: Arc<T>,
    fetched: Instant,
    generation: u64,
}

struct Shelf<T> {
    epoch: u64,
    entries: HashMap<[u8; 32], Entry<T>>,
}

impl<T> Default for Shelf<T> {
    fn default() -> Self {
        Shelf {
            epoch: 0,
            entries: HashMap::new(),
        }
    }
}

/// Taken before a database read; hands the read's result to the cache.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket {
    epoch: u64,
    generation: u64,
    at: Instant,
}

pub struct CredentialCache {
    api_keys: RwLock<Shelf<KeyRecord>>,
    private_keys: RwLock<Shelf<PrivateKeyRecord>>,
    health: RwLock<Health>,
    max_age: Duration,
    bound: Duration,
    capacity: usize,
}

/// Something a key record can be matched on by a notification.
pub trait Owned {
    fn key_id(&self) -> &str;
    fn org_id(&self) -> &str;
}

impl Owned for KeyRecord {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn org_id(&self) -> &str {
        &self.org_id
    }
}

impl Owned for PrivateKeyRecord {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn org_id(&self) -> &str {
        &self.org_id
    }
}

// A poisoned lock only means another request panicked while holding it;
// the maps stay consistent (every mutation is a single insert/remove), so
// the data is used as is.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl CredentialCache {
    pub fn new(settings: &depot_settings::Auth) -> Self {
        CredentialCache {
            api_keys: RwLock::new(Shelf::default()),
            private_keys: RwLock::new(Shelf::default()),
            health: RwLock::new(Health {
                generation: 0,
                confirmed_at: None,
            }),
            max_age: Duration::from_secs(settings.cache_seconds),
            bound: Duration::from_millis(settings.revocation_bound_ms),
            capacity: settings.cache_capacity,
        }
    }

    pub fn revocation_bound(&self) -> Duration {
        self.bound
    }

    fn servable<T>(&self, entry: &Entry<T>, now: Instant) -> bool {
        let age = now.saturating_duration_since(entry.fetched);
        if age >= self.max_age {
            return false;
        }
        if age < self.bound {
            return true;
        }
        let health = *read(&self.health);
        health.generation == entry.generation
            && health
                .confirmed_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.bound)
    }

    fn get<T>(&self, shelf: &RwLock<Shelf<T>>, id: &[u8; 32]) -> Option<Arc<T>> {
        let now = Instant::now();
        let shelf = read(shelf);
        let entry = shelf.entries.get(id)?;
        self.servable(entry, now).then(|| entry.value.clone())
    }

    fn ticket<T>(&self, shelf: &RwLock<Shelf<T>>) -> ReadTicket {
        // Time and generation first, epoch last: every one of them only
        // makes the entry look older or more doubtful than it is.
        let at = Instant::now();
        let generation = read(&self.health).generation;
        ReadTicket {
            epoch: read(shelf).epoch,
            generation,
            at,
        }
    }

    fn put<T>(&self, shelf: &RwLock<Shelf<T>>, id: [u8; 32], value: Arc<T>, ticket: ReadTicket) {
        let mut shelf = write(shelf);
        if shelf.epoch != ticket.epoch {
            return;
        }
        if shelf.entries.len() >= self.capacity && !shelf.entries.contains_key(&id) {
            let max_age = self.max_age;
            shelf.entries.retain(|_, e| e.fetched.elapsed() < max_age);
            if shelf.entries.len() >= self.capacity {
                return;
            }
        }
        shelf.entries.insert(
            id,
            Entry {
                value,
                fetched: ticket.at,
                generation: ticket.generation,
            },
        );
    }

    fn drop_matching<T: Owned>(shelf: &RwLock<Shelf<T>>, hit: impl Fn(&T) -> bool) {
        let mut shelf = write(shelf);
        shelf.epoch += 1;
        shelf.entries.retain(|_, e| !hit(&e.value));
    }

    /// An API key by the SHA-256 of its text.
    pub fn api_key(&self, digest: &[u8; 32]) -> Option<Arc<KeyRecord>> {
        self.get(&self.api_keys, digest)
    }

    pub fn api_key_ticket(&self) -> ReadTicket {
        self.ticket(&self.api_keys)
    }

    pub fn put_api_key(&self, digest: [u8; 32], key: Arc<KeyRecord>, ticket: ReadTicket) {
        self.put(&self.api_keys, digest, key, ticket)
    }

    /// A registered private key by its public key.
    pub fn private_key(&self, public_key: &[u8; 32]) -> Option<Arc<PrivateKeyRecord>> {
        self.get(&self.private_keys, public_key)
    }

    pub fn private_key_ticket(&self) -> ReadTicket {
        self.ticket(&self.private_keys)
    }

    pub fn put_private_key(
        &self,
        public_key: [u8; 32],
        key: Arc<PrivateKeyRecord>,
        ticket: ReadTicket,
    ) {
        self.put(&self.private_keys, public_key, key, ticket)
    }

    /// Apply one notification of channel `depot_credentials`: a key id, or
    /// `org:<id>` for every key of an org.
    pub fn invalidate(&self, payload: &str) {
        match payload.strip_prefix(depot_store::keys::ORG_CHANGE_PREFIX) {
            Some(org) => {
                Self::drop_matching(&self.api_keys, |k| k.org_id() == org);
                Self::drop_matching(&self.private_keys, |k| k.org_id() == org);
            }
            None => {
                Self::drop_matching(&self.api_keys, |k| k.key_id() == payload);
                Self::drop_matching(&self.private_keys, |k| k.key_id() == payload);
            }
        }
    }

    /// The listener is listening on a new connection: changes made while it
    /// was not were never heard, so nothing read before is kept.
    pub fn listening(&self) -> u64 {
        let generation = {
            let mut health = write(&self.health);
            health.generation += 1;
            health.confirmed_at = None;
            health.generation
        };
        Self::drop_matching(&self.api_keys, |_| true);
        Self::drop_matching(&self.private_keys, |_| true);
        generation
    }

    /// The listener lost its connection. Its silence alone would stop
    /// entries older than the bound from being served; dropping them all
    /// at once also spares younger ones: the database the listener cannot
    /// reach is the one a revocation would be written to.
    pub fn not_listening(&self) {
        write(&self.health).confirmed_at = None;
        Self::drop_matching(&self.api_keys, |_| true);
        Self::drop_matching(&self.private_keys, |_| true);
    }

    /// A ping sent at `sent` on connection `generation` was answered.
    pub fn confirmed(&self, generation: u64, sent: Instant) {
        let mut health = write(&self.health);
        if health.generation == generation && health.confirmed_at.is_none_or(|t| t < sent) {
            health.confirmed_at = Some(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use depot_domain::Scope;

    fn settings(bound_ms: u64) -> depot_settings::Auth {
        depot_settings::Auth {
            cache_seconds: 60,
            revocation_bound_ms: bound_ms,
            cache_capacity: 4,
        }
    }

    fn key(id: &str, org: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: id.into(),
            org_id: org.into(),
            org_slug: "acme".into(),
            org_name: "Acme".into(),
            scopes: vec![Scope::Read],
            expires_at: None,
            revoked_at: None,
        })
    }

    /// A cache whose listener is up and was confirmed just now.
    fn listening_cache(bound_ms: u64) -> (CredentialCache, u64) {
        let cache = CredentialCache::new(&settings(bound_ms));
        let generation = cache.listening();
        cache.confirmed(generation, Instant::now());
        (cache, generation)
    }

    #[test]
    fn a_fresh_entry_is_served_and_a_notification_removes_it() {
        let (cache, _) = listening_cache(1000);
        let t = cache.api_key_ticket();
        cache.put_api_key([1; 32], key("key_a", "org_a"), t);
        assert_eq!(cache.api_key(&[1; 32]).unwrap().id, "key_a");
        cache.invalidate("key_b");
        assert!(cache.api_key(&[1; 32]).is_some());
        cache.invalidate("key_a");
        assert!(cache.api_key(&[1; 32]).is_none());
    }

    #[test]
    fn an_org_notification_removes_every_key_of_the_org() {
        let (cache, _) = listening_cache(1000);
        cache.put_api_key([1; 32], key("key_a", "org_a"), cache.api_key_ticket());
        cache.put_api_key([2; 32], key("key_b", "org_b"), cache.api_key_ticket());
        cache.invalidate("org:org_a");
        assert!(cache.api_key(&[1; 32]).is_none());
        assert!(cache.api_key(&[2; 32]).is_some());
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let (cache, _) = listening_cache(1000);
        let t = cache.api_key_ticket();
        // The key is revoked while the request's database read is under way.
        cache.invalidate("key_a");
        cache.put_api_key([1; 32], key("key_a", "org_a"), t);
        assert!(cache.api_key(&[1; 32]).is_none());
    }

    #[test]
    fn past_the_bound_an_entry_needs_a_recently_confirmed_listener() {
        let (cache, generation) = listening_cache(100);
        let mut t = cache.api_key_ticket();
        t.at -= Duration::from_millis(500);
        cache.put_api_key([1; 32], key("key_a", "org_a"), t);
        // Confirmed just now, same connection: served.
        assert!(cache.api_key(&[1; 32]).is_some());
        // The listener's last answered ping is older than the bound.
        {
            let mut h = write(&cache.health);
            h.confirmed_at = Some(Instant::now() - Duration::from_millis(200));
        }
        assert!(cache.api_key(&[1; 32]).is_none());
        cache.confirmed(generation, Instant::now());
        assert!(cache.api_key(&[1; 32]).is_some());
    }

    #[test]
    fn a_reconnected_listener_drops_what_was_read_before() {
        let (cache, _) = listening_cache(100);
        cache.put_api_key([1; 32], key("key_a", "org_a"), cache.api_key_ticket());
        let generation = cache.listening();
        cache.confirmed(generation, Instant::now());
        assert!(cache.api_key(&[1; 32]).is_none());
        // And an entry read on the old connection, put late, is trusted
        // only within the bound.
        let mut t = cache.api_key_ticket();
        t.generation -= 1;
        t.at -= Duration::from_millis(150);
        cache.put_api_key([2; 32], key("key_b", "org_a"), t);
        assert!(cache.api_key(&[2; 32]).is_none());
    }

    #[test]
    fn a_lost_listener_empties_the_cache() {
        let (cache, _) = listening_cache(1000);
        cache.put_api_key([1; 32], key("key_a", "org_a"), cache.api_key_ticket());
        cache.not_listening();
        assert!(cache.api_key(&[1; 32]).is_none());
    }

    #[test]
    fn without_a_listener_entries_live_for_the_bound_only() {
        let cache = CredentialCache::new(&settings(100));
        cache.put_api_key([1; 32], key("key_a", "org_a"), cache.api_key_ticket());
        assert!(cache.api_key(&[1; 32]).is_some());
        let mut t = cache.api_key_ticket();
        t.at -= Duration::from_millis(100);
        cache.put_api_key([2; 32], key("key_b", "org_a"), t);
        assert!(cache.api_key(&[2; 32]).is_none());
    }

    #[test]
    fn the_capacity_bounds_the_entries() {
        let (cache, _) = listening_cache(1000);
        for i in 0..10u8 {
            cache.put_api_key(
                [i; 32],
                key(&format!("key_{i}"), "org"),
                cache.api_key_ticket(),
            );
        }
        assert_eq!(read(&cache.api_keys).entries.len(), 4);
    }
}
