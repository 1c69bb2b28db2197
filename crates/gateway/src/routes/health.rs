use crate::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;
use std::time::Duration;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Postgres and the broker are reachable: the gateway can accept syncs.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    let database = tokio::time::timeout(Duration::from_secs(2), database)
        .await
        .ok()
        .flatten()
        .is_some();
    let broker = state.broker.get().is_some();
    let body = json!({
        "status": if database && broker { "ok" } else { "unavailable" },
        "checks": { "database": database, "broker": broker },
    });
    if database && broker {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
