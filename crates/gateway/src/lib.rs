//! `depot-gateway`: the public HTTP API (`docs/api.md`). Stateless but for a
//! cache of verified credentials (kept current by `LISTEN/NOTIFY`): every request
//! reads and writes Postgres; accepted syncs are published to RabbitMQ as
//! jobs, through the transactional outbox so that none is lost.

pub mod auth;
pub mod conditional;
pub mod credential_cache;
pub mod credential_listener;
pub mod enqueue;
pub mod error;
pub mod json;
pub mod metrics;
pub mod pagination;
pub mod policy;
pub mod publisher;
pub mod routes;
pub mod sync_watch;
pub mod token;
pub mod views;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use depot_broker::{BrokerHandle, BrokerOptions};
use depot_secrets::CredentialKey;
use depot_settings::Settings;
use depot_store::Pool;
use std::net::TcpListener;
use std::sync::Arc;

/// Shared by all request handlers.
pub struct AppState {
    pub pool: Pool,
    pub broker: Arc<BrokerHandle>,
    /// Publishes accepted syncs' jobs off the request path.
    pub publisher: publisher::Publisher,
    pub credential_key: CredentialKey,
    pub credentials: Arc<credential_cache::CredentialCache>,
    /// Sync changes, for the requests held by `Prefer: wait`.
    pub sync_watch: Arc<sync_watch::SyncWatch>,
    pub settings: Settings,
}

/// The built server, bound but not yet running (zero-to-production style:
/// tests bind port 0 and read the port back).
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let key = settings.credential_key()?;
        let pool = depot_store::pool::from_settings(&settings.database)?;
        let listener_config: tokio_postgres::Config = settings
            .database
            .url
            .expose()
            .parse()
            .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        let credentials = Arc::new(credential_cache::CredentialCache::new(&settings.auth));
        let sync_watch = sync_watch::SyncWatch::new();
        credential_listener::spawn(listener_config, credentials.clone(), sync_watch.clone());
        let broker = BrokerHandle::spawn(BrokerOptions::from_settings(
            &settings.amqp,
            "depot-gateway".into(),
        ));
        let listener = TcpListener::bind(settings.gateway.listen)
            .map_err(|e| anyhow::anyhow!("gateway.listen {}: {e}", settings.gateway.listen))?;
        let port = listener.local_addr()?.port();
        let workers = settings.gateway.workers;
        let shutdown_seconds = settings.gateway.shutdown_seconds;
        let openapi = web::Data::new(routes::openapi::OpenApiDoc::load()?);
        let probes = web::Data::new(depot_probes::Probes::new(pool.clone(), broker.clone()));
        let publisher = publisher::Publisher::spawn(pool.clone(), broker.clone());
        let state = web::Data::new(AppState {
            pool,
            broker,
            publisher,
            credential_key: CredentialKey::new(&key),
            credentials,
            sync_watch,
            settings,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                // Outermost: one span, metrics and x-request-id for every request.
                .wrap(actix_web::middleware::from_fn(metrics::observe))
                .app_data(state.clone())
                .app_data(openapi.clone())
                .app_data(probes.clone())
                .configure(|cfg| routes::configure(cfg, &state.settings))
        })
        .listen(listener)?
        // Finish in-flight requests on SIGTERM for at most this long.
        .shutdown_timeout(shutdown_seconds);
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Application {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server from elsewhere (tests that run it in-process).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Runs until SIGTERM/SIGINT (actix handles both: stop accepting, drain).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
