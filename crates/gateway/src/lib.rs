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
    sync_watch: Arc<sync_watch::SyncWatch>,
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
            sync_watch: sync_watch.clone(),
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
        .shutdown_timeout(shutdown_seconds)
        // Ours (`run_until_stopped`): a graceful stop must first end the
        // requests held by `Prefer: wait`, which actix's would wait for.
        .disable_signals();
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Application {
            port,
            server: server.run(),
            sync_watch,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server from elsewhere (tests that run it in-process).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Stops gracefully as SIGTERM does: held waits answered (304) at once,
    /// then no new connections and in-flight requests finished for at most
    /// `gateway.shutdown_seconds`.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            server: self.server.handle(),
            sync_watch: self.sync_watch.clone(),
        }
    }

    /// Runs until stopped: SIGTERM stops gracefully ([`Stopper::stop`]),
    /// SIGINT and SIGQUIT at once (as actix's own handling did).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper();
        let signals = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::quit()),
            ) else {
                tracing::error!("cannot listen for shutdown signals");
                return;
            };
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received; stopping gracefully");
                    stopper.stop().await;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received; stopping now");
                    stopper.stop_now().await;
                }
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT received; stopping now");
                    stopper.stop_now().await;
                }
            }
        });
        let result = self.server.await;
        signals.abort();
        result
    }
}

/// Stops a running [`Application`].
#[derive(Clone)]
pub struct Stopper {
    server: actix_web::dev::ServerHandle,
    sync_watch: Arc<sync_watch::SyncWatch>,
}

impl Stopper {
    /// Graceful: held waits end first (each with its 304), so only real
    /// work in flight is waited for.
    pub async fn stop(&self) {
        self.sync_watch.stop();
        self.server.stop(true).await;
    }

    pub async fn stop_now(&self) {
        self.sync_watch.stop();
        self.server.stop(false).await;
    }
}
