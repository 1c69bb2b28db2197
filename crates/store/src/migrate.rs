//! Schema migrations: plain SQL in `migrations/`, embedded at build time,
//! applied in order and recorded in `refinery_schema_history`.

use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database.url: {0}")]
    Url(String),
    #[error("cannot connect to Postgres: {0}")]
    Connect(tokio_postgres::Error),
    #[error("cannot create database {0}: {1}")]
    Create(String, tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Applied migrations' names, in order.
pub fn known_migrations() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}

async fn open(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}

/// Create the database named in `url` when it does not exist (connecting to
/// the server's `postgres` database to do so).
pub async fn create_database_if_missing(url: &str) -> Result<(), MigrateError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| MigrateError::Url(e.to_string()))?;
    let name = config
        .get_dbname()
        .ok_or_else(|| MigrateError::Url("names no database".into()))?
        .to_string();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = open(&admin).await.map_err(MigrateError::Connect)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another migrator won the race: fine.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(MigrateError::Create(name, e)),
        }
    }
    Ok(())
}

/// Apply every pending migration; returns the names applied now. Safe to run
/// from several processes at once: an advisory lock serialises them.
pub async fn run(url: &str) -> Result<Vec<String>, MigrateError> {
    create_database_if_missing(url).await?;
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| MigrateError::Url(e.to_string()))?;
    let mut client = open(&config).await.map_err(MigrateError::Connect)?;
    // Arbitrary constant naming "depot migrations" among advisory locks.
    client
        .execute("SELECT pg_advisory_lock(7355608001)", &[])
        .await?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await
        .map_err(|e| MigrateError::Migration(e.to_string()));
    client
        .execute("SELECT pg_advisory_unlock(7355608001)", &[])
        .await?;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
