//! Connection pools. Every connection of a service pool carries session
//! limits (`statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout`), so no wait on Postgres is
//! unbounded: a statement stuck behind a lock, a slow query, or a
//! transaction its client forgot all end with an error the caller handles
//! (a retry, a 503) instead of holding a connection, a worker permit or a
//! row lock for ever.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
use tokio_postgres::NoTls;

#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_size: usize,
    /// Bounds waiting for a free connection and opening a new one, so that
    /// requests fail fast while Postgres is down instead of piling up.
    pub timeout: Duration,
}

/// Server-side limits set on every connection of a pool at startup (as
/// `-c` options of the connection, so they hold from the first statement
/// and survive `DISCARD ALL`). `None` leaves the server's default.
#[derive(Debug, Clone, Default)]
pub struct SessionLimits {
    pub statement_timeout: Option<Duration>,
    pub lock_timeout: Option<Duration>,
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl SessionLimits {
    /// The `options` startup parameter carrying these limits.
    fn startup_options(&self) -> String {
        [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout,
            ),
        ]
        .iter()
        .filter_map(|(name, d)| d.map(|d| format!("-c {name}={}", d.as_millis())))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("database.url: {0}")]
pub struct PoolConfigError(String);

/// A pool without session limits (tools such as `depot-admin`, whose
/// migrations may legitimately run long); services use [`from_settings`].
pub fn connect(url: &str, options: &PoolOptions) -> Result<Pool, PoolConfigError> {
    connect_with(url, options, &SessionLimits::default())
}

/// A pool that recovers from a Postgres restart by itself: a connection
/// whose socket closed is dropped at checkout and replaced (`Fast`
/// recycling checks exactly that). `Verified` would also send a query per
/// checkout, a round trip on every request (make bench: about 2 of the 5 a
/// status poll made); a connection that dies between checkout and use fails
/// that one request, which the API answers with a 500 the client retries.
pub fn connect_with(
    url: &str,
    options: &PoolOptions,
    limits: &SessionLimits,
) -> Result<Pool, PoolConfigError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PoolConfigError(e.to_string()))?;
    pg.connect_timeout(options.timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("depot");
    }
    let ours = limits.startup_options();
    if !ours.is_empty() {
        // After any options of the URL's own: the later `-c` wins, and these
        // limits are what the settings promise.
        let all = match pg.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        pg.options(&all);
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(options.timeout),
            create: Some(options.timeout),
            recycle: Some(options.timeout),
        })
        .build()
        .map_err(|e| PoolConfigError(e.to_string()))
}

/// The pool a service process uses, as `database.*` configures it.
pub fn from_settings(db: &depot_settings::Database) -> Result<Pool, PoolConfigError> {
    let limit = |ms: u64| Some(Duration::from_millis(ms));
    connect_with(
        db.url.expose(),
        &PoolOptions {
            max_size: db.pool_size,
            timeout: Duration::from_millis(db.connect_timeout_ms),
        },
        &SessionLimits {
            statement_timeout: limit(db.statement_timeout_ms),
            lock_timeout: limit(db.lock_timeout_ms),
            idle_in_transaction_timeout: limit(db.idle_in_transaction_timeout_ms),
        },
    )
}
