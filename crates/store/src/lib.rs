//! Postgres: the source of truth for orgs, keys, repositories, syncs, the
//! outbox, idempotency keys and webhooks.
//!
//! Every function takes a [`GenericClient`], so a caller's transaction can
//! span several of them; statements are prepared once per connection
//! (`prepare_cached`).

pub mod credentials;
pub mod housekeeping;
pub mod idempotency;
pub mod keys;
pub mod migrate;
pub mod orgs;
pub mod outbox;
pub mod pool;
pub mod repos;
pub mod syncs;
pub mod webhooks;

pub use deadpool_postgres::{GenericClient, Object as PooledClient, Pool, Transaction};
pub use tokio_postgres::Error as PgError;
/// Pool error types, for callers converting them.
pub mod deadpool_error {
    pub use deadpool_postgres::PoolError;
}
pub use pool::{PoolOptions, SessionLimits, connect, connect_with};

use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        self.sql_state() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            StoreError::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Lost connection, pool exhausted, server shutting down: worth retrying
    /// later rather than reporting as a bug.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Db(e) => {
                e.is_closed()
                    || e.code().is_none()
                    || matches!(
                        e.code(),
                        Some(c) if *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CANNOT_CONNECT_NOW
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::TOO_MANY_CONNECTIONS
                            // statement_timeout, lock_timeout (crates/store
                            // pool.rs): the database was busy, not wrong.
                            || *c == SqlState::QUERY_CANCELED
                            || *c == SqlState::LOCK_NOT_AVAILABLE
                    )
            }
            StoreError::Corrupt(_) => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
