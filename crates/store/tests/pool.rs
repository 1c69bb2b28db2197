//! Service pools bound every wait on each of their connections
//! (crates/store/src/pool.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

#[tokio::test]
async fn service_pool_connections_carry_the_configured_session_limits() {
    let env: HashMap<String, String> = [
        (
            "DEPOT__DATABASE__URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        ("DEPOT__DATABASE__STATEMENT_TIMEOUT_MS", "1234"),
        ("DEPOT__DATABASE__LOCK_TIMEOUT_MS", "567"),
        ("DEPOT__DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_MS", "8901"),
        ("DEPOT__WORKER__CLAIM_LOCK_TIMEOUT_MS", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = depot_settings::Settings::load_from(None, env).unwrap();
    let pool = depot_store::pool::from_settings(&settings.database).unwrap();
    let client = pool.get().await.unwrap();
    for (name, expected) in [
        ("statement_timeout", "1234ms"),
        ("lock_timeout", "567ms"),
        ("idle_in_transaction_session_timeout", "8901ms"),
    ] {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), expected, "{name}");
    }
    // And it bites: a statement over the limit is cancelled, and the error
    // counts as transient (retry / 503), not as a bug.
    let err =
        depot_store::StoreError::from(client.execute("SELECT pg_sleep(3)", &[]).await.unwrap_err());
    assert_eq!(
        err.sql_state(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(err.is_transient(), "{err}");
}
