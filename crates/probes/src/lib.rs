//! The probes every daemon serves, one copy for the gateway's API port and
//! the worker's admin port:
//! - `GET /healthz`: 200 `{"status":"ok"}` while the process answers;
//! - `GET /readyz`: 200 when Postgres answers `SELECT 1` within
//!   [`DATABASE_TIMEOUT`] and the broker is connected, else 503; the body
//!   names both checks (`{"status", "checks": {"database", "broker"}}`).
//!
//! Readiness never waits longer than [`DATABASE_TIMEOUT`]: the broker check
//! reads the supervisor's current connection, it does not open one.

use actix_web::{HttpResponse, web};
use depot_broker::BrokerHandle;
use depot_store::Pool;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How long the database check may take before it counts as down.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks, as `web::Data` of the serving app.
pub struct Probes {
    pool: Pool,
    broker: Arc<BrokerHandle>,
}

/// The result of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub broker: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database && self.broker
    }
}

impl Probes {
    pub fn new(pool: Pool, broker: Arc<BrokerHandle>) -> Self {
        Probes { pool, broker }
    }

    pub async fn readiness(&self) -> Readiness {
        let database = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        let database = tokio::time::timeout(DATABASE_TIMEOUT, database)
            .await
            .ok()
            .flatten()
            .is_some();
        Readiness {
            database,
            broker: self.broker.get().is_some(),
        }
    }
}

/// Route `/healthz` and `/readyz`; the app must hold `web::Data<Probes>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Postgres and the broker are reachable.
pub async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    let r = probes.readiness().await;
    let body = json!({
        "status": if r.is_ready() { "ok" } else { "unavailable" },
        "checks": { "database": r.database, "broker": r.broker },
    });
    if r.is_ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
