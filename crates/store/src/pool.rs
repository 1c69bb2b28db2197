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

#[derive(Debug, thiserror::Error)]
#[error("database.url: {0}")]
pub struct PoolConfigError(String);

/// A pool that recovers from a Postgres restart by itself: a connection
/// whose socket closed is dropped at checkout and replaced (`Fast`
/// recycling checks exactly that). `Verified` would also send a query per
/// checkout, a round trip on every request (make bench: about 2 of the 5 a
/// status poll made); a connection that dies between checkout and use fails
/// that one request, which the API answers with a 500 the client retries.
pub fn connect(url: &str, options: &PoolOptions) -> Result<Pool, PoolConfigError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PoolConfigError(e.to_string()))?;
    pg.connect_timeout(options.timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("depot");
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
    connect(
        db.url.expose(),
        &PoolOptions {
            max_size: db.pool_size,
            timeout: Duration::from_millis(db.connect_timeout_ms),
        },
    )
}
