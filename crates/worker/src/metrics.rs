//! The worker's admin port (`worker.metrics_listen`): `GET /metrics`
//! (Prometheus text), `GET /healthz` (process up) and `GET /readyz`
//! (Postgres and the broker reachable).
//!
//! Counters and histograms are updated by the runs and the relay as they
//! happen; backlog gauges (outbox, queue depths) are read from Postgres and
//! RabbitMQ when scraped. Those gauges describe the whole deployment, so
//! every replica reports the same value: aggregate them with `max`, not `sum`.
//!
//! Labels are bounded (direction, status, outcome, source); ids, URLs and
//! error texts never become labels. Because they are bounded, every series
//! exists from the start at 0 ([`WorkerMetrics::new`]): a counter that
//! appeared only with its first event would give an alert on its rate no
//! data instead of 0 (and `increase()` misses that first event).

use crate::Ctx;
use actix_web::{App, HttpResponse, HttpServer, web};
use depot_domain::{Direction, FailureCode, Outcome, Stats};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The worker's series. One set per process, like its log subscriber.
pub(crate) struct WorkerMetrics {
    registry: Registry,
    runs: IntCounterVec,
    failures: IntCounterVec,
    finished: IntCounterVec,
    refs: IntCounterVec,
    run_duration: HistogramVec,
    attempts: IntCounterVec,
    queue_lag: HistogramVec,
    relay_publishes: IntCounterVec,
    lease_expirations: IntCounterVec,
    upstream_bytes: IntCounterVec,
    upstream_connections: IntCounterVec,
    run_bytes: HistogramVec,
    outbox_backlog: IntGauge,
    missing_messages: IntGauge,
    queue_messages: IntGaugeVec,
    dependency_up: IntGaugeVec,
}

static METRICS: LazyLock<WorkerMetrics> = LazyLock::new(WorkerMetrics::new);

pub(crate) fn metrics() -> &'static WorkerMetrics {
    &METRICS
}

/// The registry `/metrics` renders, for modules that keep their own series
/// (`maintenance`).
pub(crate) fn registry() -> &'static Registry {
    &METRICS.registry
}

const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1500.0,
];

/// 1 KiB to 4 GiB, by powers of 4.
const BYTE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

#[allow(clippy::expect_used)] // fixed, valid metric definitions
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
    registry.register(Box::new(c.clone())).expect("register");
    c
}

#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
    .expect("metric definition");
    registry.register(Box::new(h.clone())).expect("register");
    h
}

const DIRECTIONS: [Direction; 2] = [Direction::Pull, Direction::Push];
/// `result` of a run: [`run_ended`]'s values plus `lost_lease`.
const RUN_RESULTS: [&str; 5] = ["completed", "failed", "retry", "released", "lost_lease"];
const FINAL_STATUSES: [&str; 2] = ["completed", "failed"];
const OUTCOMES: [Outcome; 4] = [
    Outcome::Updated,
    Outcome::Unchanged,
    Outcome::Rejected,
    Outcome::Filtered,
];
const ATTEMPT_KINDS: [&str; 2] = ["first", "retry"];
const RELAY_RESULTS: [&str; 2] = ["ok", "error"];
const LEASE_RESULTS: [&str; 2] = ["requeued", "failed"];
const QUEUES: [&str; 2] = ["jobs", "dead"];
const DEPENDENCIES: [&str; 2] = ["database", "broker"];
/// Upstream traffic: `in` received, `out` sent.
const FLOWS: [&str; 2] = ["in", "out"];

impl WorkerMetrics {
    /// Touch every label combination the worker can ever report, so each
    /// series is listed (at 0) before its first event.
    fn init_series(&self) {
        for d in DIRECTIONS.map(Direction::as_str) {
            for result in RUN_RESULTS {
                self.runs.with_label_values(&[d, result]);
                self.run_duration.with_label_values(&[d, result]);
            }
            for status in FINAL_STATUSES {
                self.finished.with_label_values(&[d, status]);
            }
            for code in FailureCode::ALL.map(FailureCode::as_str) {
                self.failures.with_label_values(&[d, code]);
            }
            for outcome in OUTCOMES {
                self.refs.with_label_values(&[d, outcome_label(outcome)]);
            }
            for kind in ATTEMPT_KINDS {
                self.attempts.with_label_values(&[d, kind]);
            }
            self.queue_lag.with_label_values(&[d]);
            for flow in FLOWS {
                self.upstream_bytes.with_label_values(&[d, flow]);
                self.run_bytes.with_label_values(&[d, flow]);
            }
            self.upstream_connections.with_label_values(&[d]);
        }
        for source in RelaySource::ALL.map(RelaySource::label) {
            for result in RELAY_RESULTS {
                self.relay_publishes.with_label_values(&[source, result]);
            }
        }
        for result in LEASE_RESULTS {
            self.lease_expirations.with_label_values(&[result]);
        }
        for queue in QUEUES {
            self.queue_messages.with_label_values(&[queue]);
        }
        for dependency in DEPENDENCIES {
            self.dependency_up.with_label_values(&[dependency]);
        }
    }

    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let r = Registry::new();
        let outbox_backlog = IntGauge::new(
            "depot_outbox_backlog",
            "Outbox rows not yet confirmed by the broker (deployment-wide; read at scrape).",
        )
        .expect("metric definition");
        r.register(Box::new(outbox_backlog.clone()))
            .expect("register");
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "depot_queue_messages",
                "Messages ready in a broker queue: jobs (waiting for a worker) and dead (dead-lettered) (deployment-wide; read at scrape).",
            ),
            &["queue"],
        )
        .expect("metric definition");
        r.register(Box::new(queue_messages.clone()))
            .expect("register");
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "depot_dependency_up",
                "1 when the dependency answered at the last scrape, else 0.",
            ),
            &["dependency"],
        )
        .expect("metric definition");
        r.register(Box::new(dependency_up.clone()))
            .expect("register");
        let missing_messages = IntGauge::new(
            "depot_relay_missing_messages",
            "At the last lost-message pass of this worker: due queued syncs in excess of the messages ready in the jobs queue (each pass publishes at most worker.republish_max_per_tick of them again).",
        )
        .expect("metric definition");
        r.register(Box::new(missing_messages.clone()))
            .expect("register");
        let m = WorkerMetrics {
            runs: counter(
                &r,
                "depot_sync_runs_total",
                "Sync runs (attempts) ended, by direction and result: completed, failed, retry (re-queued with backoff), released (shutdown), lost_lease (outcome discarded).",
                &["direction", "result"],
            ),
            failures: counter(
                &r,
                "depot_sync_run_failures_total",
                "Runs that ended in failure (retried or final), by direction and failure code (docs/sync-semantics.md lists the codes).",
                &["direction", "code"],
            ),
            finished: counter(
                &r,
                "depot_syncs_finished_total",
                "Syncs that reached a final status (completed or failed), by direction.",
                &["direction", "status"],
            ),
            refs: counter(
                &r,
                "depot_sync_ref_outcomes_total",
                "Per-ref outcomes of completed runs: updated, unchanged, rejected, filtered.",
                &["direction", "outcome"],
            ),
            run_duration: histogram(
                &r,
                "depot_sync_run_duration_seconds",
                "Wall-clock time of one run, from claim to outcome, by direction and result.",
                &["direction", "result"],
            ),
            attempts: counter(
                &r,
                "depot_sync_attempts_total",
                "Runs started (claims), by direction and whether it was the first attempt or a retry.",
                &["direction", "kind"],
            ),
            queue_lag: histogram(
                &r,
                "depot_sync_queue_lag_seconds",
                "Time from a sync's creation to the start of its first run.",
                &["direction"],
            ),
            relay_publishes: counter(
                &r,
                "depot_relay_publishes_total",
                "Job messages published by the relay, by source (outbox, lease_expired, presumed_lost) and result (ok, error).",
                &["source", "result"],
            ),
            lease_expirations: counter(
                &r,
                "depot_lease_expirations_total",
                "Runs whose lease ran out (worker died or hung), by what the sweeper did: requeued or failed.",
                &["result"],
            ),
            upstream_bytes: counter(
                &r,
                "depot_upstream_bytes_total",
                "HTTP body bytes exchanged with upstreams, by run direction and flow (in = received, out = sent).",
                &["direction", "flow"],
            ),
            upstream_connections: counter(
                &r,
                "depot_upstream_connections_total",
                "TCP connections opened to upstreams (or CONNECT tunnels through upstream.proxy), by run direction.",
                &["direction"],
            ),
            run_bytes: {
                #[allow(clippy::expect_used)]
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "depot_upstream_run_bytes",
                        "HTTP body bytes one run exchanged with its upstream, by direction and flow.",
                    )
                    .buckets(BYTE_BUCKETS.to_vec()),
                    &["direction", "flow"],
                )
                .expect("metric definition");
                #[allow(clippy::expect_used)]
                r.register(Box::new(h.clone())).expect("register");
                h
            },
            outbox_backlog,
            missing_messages,
            queue_messages,
            dependency_up,
            registry: r,
        };
        m.init_series();
        m
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Updated => "updated",
        Outcome::Unchanged => "unchanged",
        Outcome::Rejected => "rejected",
        Outcome::Filtered => "filtered",
    }
}

/// A run started: its attempt and, for a first attempt, the queue lag.
pub(crate) fn run_started(
    direction: Direction,
    attempt: i32,
    created_at: chrono::DateTime<chrono::Utc>,
) {
    let m = metrics();
    let kind = if attempt <= 1 { "first" } else { "retry" };
    m.attempts
        .with_label_values(&[direction.as_str(), kind])
        .inc();
    if attempt <= 1 {
        let lag = (chrono::Utc::now() - created_at)
            .to_std()
            .unwrap_or_default();
        m.queue_lag
            .with_label_values(&[direction.as_str()])
            .observe(lag.as_secs_f64());
    }
}

/// A run failed with `code` (whether it is retried or final).
pub(crate) fn run_failed(direction: Direction, code: FailureCode) {
    metrics()
        .failures
        .with_label_values(&[direction.as_str(), code.as_str()])
        .inc();
}

/// A run ended with `result` (completed, failed, retry, released), unless
/// `fenced` (its outcome was discarded because it lost its lease).
pub(crate) fn run_ended(
    direction: Direction,
    result: &str,
    stats: Option<&Stats>,
    elapsed: Duration,
    fenced: bool,
) {
    let m = metrics();
    let d = direction.as_str();
    let result = if fenced { "lost_lease" } else { result };
    m.runs.with_label_values(&[d, result]).inc();
    m.run_duration
        .with_label_values(&[d, result])
        .observe(elapsed.as_secs_f64());
    if matches!(result, "completed" | "failed") {
        m.finished.with_label_values(&[d, result]).inc();
    }
    if result == "completed"
        && let Some(stats) = stats
    {
        for r in &stats.refs {
            m.refs
                .with_label_values(&[d, outcome_label(r.outcome)])
                .inc();
        }
    }
}

/// What one run's transport moved, whatever the run's result.
pub(crate) fn transferred(direction: Direction, t: &depot_gitsync::Transfer) {
    let m = metrics();
    let d = direction.as_str();
    let [flow_in, flow_out] = FLOWS;
    for (flow, bytes) in [(flow_in, t.bytes_in()), (flow_out, t.bytes_out())] {
        m.upstream_bytes.with_label_values(&[d, flow]).inc_by(bytes);
        m.run_bytes
            .with_label_values(&[d, flow])
            .observe(bytes as f64);
    }
    m.upstream_connections
        .with_label_values(&[d])
        .inc_by(t.connections());
}

/// Why the relay published a job: the `source` label of
/// `depot_relay_publishes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelaySource {
    /// An outbox row the gateway could not confirm.
    Outbox,
    /// A run whose lease ran out, re-queued by the sweeper.
    LeaseExpired,
    /// A queued sync the jobs queue has no message for.
    PresumedLost,
}

impl RelaySource {
    const ALL: [RelaySource; 3] = [
        RelaySource::Outbox,
        RelaySource::LeaseExpired,
        RelaySource::PresumedLost,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RelaySource::Outbox => "outbox",
            RelaySource::LeaseExpired => "lease_expired",
            RelaySource::PresumedLost => "presumed_lost",
        }
    }

    /// The reason, as the relay's log lines say it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            RelaySource::Outbox => "outbox",
            RelaySource::LeaseExpired => "lease expired",
            RelaySource::PresumedLost => "message presumed lost",
        }
    }
}

/// The relay published (or failed to publish) a job.
pub(crate) fn relay_published(source: RelaySource, ok: bool) {
    metrics()
        .relay_publishes
        .with_label_values(&[source.label(), if ok { "ok" } else { "error" }])
        .inc();
}

/// The shortfall the last lost-message pass found.
pub(crate) fn missing_messages(n: i64) {
    metrics().missing_messages.set(n);
}

/// The sweeper returned an expired run to `queued` (`requeued`) or failed it.
pub(crate) fn lease_expired(requeued: bool) {
    metrics()
        .lease_expirations
        .with_label_values(&[if requeued { "requeued" } else { "failed" }])
        .inc();
}

/// Bind the admin port; an unusable address stops the worker at start.
pub(crate) fn bind(ctx: &Ctx) -> anyhow::Result<std::net::TcpListener> {
    let addr = ctx.settings.worker.metrics_listen;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("worker.metrics_listen {addr}: {e}"))?;
    let port = listener.local_addr()?.port();
    tracing::info!(port, "metrics listening");
    Ok(listener)
}

/// Serve the admin port until `shutdown`.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) {
    let server = match server(ctx, listener) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the metrics port");
            return;
        }
    };
    let handle = server.handle();
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "metrics server failed");
            }
        }
        _ = shutdown.cancelled() => handle.stop(false).await,
    }
}

/// The admin port's server (actix-web, as the gateway's; the probes are the
/// gateway's too).
fn server(
    ctx: Arc<Ctx>,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let probes = web::Data::new(depot_probes::Probes::new(
        ctx.pool.clone(),
        ctx.broker.clone(),
    ));
    let ctx = web::Data::from(ctx);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(ctx.clone())
            .app_data(probes.clone())
            .configure(depot_probes::configure)
            .route("/metrics", web::get().to(endpoint))
            .default_service(web::to(not_found))
    })
    // A scrape is small and rare: one thread, and no signal handling of
    // its own (the worker's shutdown stops it).
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

async fn endpoint(ctx: web::Data<Ctx>) -> HttpResponse {
    refresh_gauges(&ctx).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics().render())
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain")
        .body("not found\n")
}

/// Read the deployment-wide gauges. A dependency that does not answer leaves
/// its gauges at their last value and sets `depot_dependency_up` to 0.
async fn refresh_gauges(ctx: &Ctx) {
    let m = metrics();
    let backlog = async {
        let client = ctx.pool.get().await.ok()?;
        depot_store::outbox::backlog(&client).await.ok()
    };
    let backlog = tokio::time::timeout(Duration::from_secs(2), backlog)
        .await
        .ok()
        .flatten();
    if let Some(n) = backlog {
        m.outbox_backlog.set(n);
    }
    crate::webhooks::refresh_gauges(ctx).await;
    m.dependency_up
        .with_label_values(&["database"])
        .set(i64::from(backlog.is_some()));
    let mut broker_ok = false;
    if let Some(broker) = ctx.broker.get() {
        let topology = broker.topology().clone();
        let depths = async {
            let jobs = broker.queue_depth(&topology.jobs_queue()).await.ok()?;
            let dead = broker.queue_depth(&topology.dead_queue()).await.ok()?;
            Some((jobs, dead))
        };
        if let Ok(Some((jobs, dead))) = tokio::time::timeout(Duration::from_secs(2), depths).await {
            m.queue_messages
                .with_label_values(&["jobs"])
                .set(i64::from(jobs));
            m.queue_messages
                .with_label_values(&["dead"])
                .set(i64::from(dead));
            broker_ok = true;
        }
    }
    m.dependency_up
        .with_label_values(&["broker"])
        .set(i64::from(broker_ok));
}
