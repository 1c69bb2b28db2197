//! Configuration for every Depot binary, read by the `config` crate in this
//! order (later wins): built-in defaults, an optional TOML file (`--config
//! PATH` or `DEPOT_CONFIG`), then environment variables `DEPOT__SECTION__KEY`
//! (lists comma-separated, e.g. `DEPOT__UPSTREAM__ALLOWED_SCHEMES=http,https`).
//!
//! A bad value is reported as one line naming the key; secrets are held in
//! [`Secret`], whose `Debug` never shows them.

use base64::Engine;
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "upstream.allowed_schemes",
    "secrets.previous_credential_keys",
];

const DEFAULTS: &str = r#"
[database]
url = "postgres://postgres@127.0.0.1:5432/depot"
pool_size = 16
connect_timeout_ms = 3000
statement_timeout_ms = 30000
lock_timeout_ms = 5000
idle_in_transaction_timeout_ms = 60000

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
namespace = "depot"
publish_timeout_ms = 5000
delivery_limit = 10

[gateway]
listen = "127.0.0.1:8080"
max_body_bytes = 65536
workers = 0
shutdown_seconds = 30
idempotency_retention_hours = 24

[auth]
cache_seconds = 60
revocation_bound_ms = 1000
cache_capacity = 100000

[storage]
root = "./data/repos"

[worker]
concurrency = 4
max_attempts = 5
retry_base_ms = 1000
retry_max_ms = 300000
lease_seconds = 60
grace_seconds = 30
relay_interval_ms = 1000
requeue_after_seconds = 120
metrics_listen = "127.0.0.1:9090"
max_runs_per_org = 16
claim_lock_timeout_ms = 1000
republish_max_per_tick = 100

[maintenance]
interval_seconds = 300
batch_size = 1000
sync_history_keep = 100
sync_history_days = 90

[housekeeping]
enabled = true
max_packs = 8
max_loose_refs = 256
max_loose_objects = 1024
prune_grace_seconds = 3600
prune_interval_hours = 24
idle_seconds = 3600
repos_per_tick = 8
time_limit_seconds = 1200

[upstream]
allowed_schemes = ["https"]
allow_private_networks = false
timeout_seconds = 600
max_pack_bytes = 2147483648
max_refs = 100000
max_advertisement_bytes = 41943040
stall_timeout_seconds = 60

[webhooks]
repo_url_base = "http://127.0.0.1:8080"
concurrency = 8
per_target_concurrency = 2
timeout_ms = 10000
max_attempts = 32
retry_base_ms = 60000
retry_max_ms = 7200000
max_response_bytes = 65536
event_retention_hours = 720

[secrets]

[telemetry]
format = "pretty"
filter = "info"
service_name = ""
"#;

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    fn key(key: &str, problem: impl fmt::Display) -> Self {
        SettingsError(format!("{key}: {problem}"))
    }
}

/// A value that must never be printed.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: Database,
    pub amqp: Amqp,
    pub gateway: Gateway,
    pub auth: Auth,
    pub storage: Storage,
    pub worker: Worker,
    pub maintenance: Maintenance,
    pub housekeeping: Housekeeping,
    pub upstream: Upstream,
    pub secrets: Secrets,
    pub webhooks: Webhooks,
    pub telemetry: Telemetry,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// May carry a password, hence a secret.
    pub url: Secret,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Session limits of every pooled connection (Postgres's
    /// `statement_timeout`, `lock_timeout`,
    /// `idle_in_transaction_session_timeout`): no wait on the database is
    /// unbounded.
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    pub url: Secret,
    /// Prefix of every exchange and queue, so that several deployments or
    /// test runs share one broker.
    pub namespace: String,
    pub publish_timeout_ms: u64,
    /// Deliveries of one message before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_seconds: u64,
    /// How long the first response to an `Idempotency-Key` is replayed; the
    /// worker's maintenance task deletes older keys.
    pub idempotency_retention_hours: u64,
}

impl Gateway {
    pub fn idempotency_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idempotency_retention_hours.saturating_mul(3600))
    }
}

/// The worker's periodic maintenance task: retention of tables that would
/// otherwise only grow, and scheduling of housekeeping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// Time between two passes of the task (each worker runs one).
    pub interval_seconds: u64,
    /// Rows deleted per statement; a pass repeats until a batch comes back
    /// short.
    pub batch_size: u32,
    /// Sync history kept per repository: at least the newest this many...
    pub sync_history_keep: u32,
    /// ...and every sync finished less than this many days ago (0: only
    /// the newest `sync_history_keep`).
    pub sync_history_days: u32,
}

/// Housekeeping of hosted repositories' git data (crates/gitsync
/// `housekeeping`): after pulls, and from the maintenance task for
/// repositories not looked at for `idle_seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Housekeeping {
    /// Off: no repacking or pruning at all (packs then accumulate).
    pub enabled: bool,
    /// More packs than this: geometric repack.
    pub max_packs: usize,
    /// More loose refs than this: pack refs.
    pub max_loose_refs: usize,
    /// More loose objects than this (estimated): geometric repack.
    pub max_loose_objects: usize,
    /// Unreachable objects, temporary files and locks are removed only once
    /// this old; at least `upstream.timeout_seconds + worker.lease_seconds`,
    /// so nothing a run (even one that lost its lease) may still need goes.
    pub prune_grace_seconds: u64,
    /// Pruning rewrites every pack: at most this often per repository.
    pub prune_interval_hours: u64,
    /// The maintenance task looks at repositories not looked at for this
    /// long.
    pub idle_seconds: u64,
    /// Repositories the maintenance task looks at per pass.
    pub repos_per_tick: u32,
    /// Cap on one repository's housekeeping; a git command still running
    /// then is killed.
    pub time_limit_seconds: u64,
}

/// The gateway's cache of verified credentials (docs/operations.md,
/// "Credential cache").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Longest a verified key is trusted without reading it again, even
    /// while revocations arrive by notification.
    pub cache_seconds: u64,
    /// A revoked or deleted key is refused by every gateway within this
    /// long: while the gateway's listener is not confirmed up, cached
    /// entries older than this are read again.
    pub revocation_bound_ms: u64,
    /// Most keys cached per gateway process; beyond it keys are verified
    /// against the database on every request.
    pub cache_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub root: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Syncs one worker process runs at once (also the broker prefetch).
    pub concurrency: u16,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub lease_seconds: u64,
    /// How long SIGTERM waits for running syncs before releasing them.
    pub grace_seconds: u64,
    pub relay_interval_ms: u64,
    /// A `queued` sync untouched this long is published again, in case its
    /// message was lost.
    pub requeue_after_seconds: u64,
    pub metrics_listen: SocketAddr,
    /// Syncs of one org running at once across all workers (0 = no limit),
    /// so one org's burst cannot take every worker.
    pub max_runs_per_org: u32,
    /// How long a claim waits for the repository's or org's row lock
    /// before it gives its permit back and defers the job (no attempt
    /// spent); shorter than `database.lock_timeout_ms`, so one busy org
    /// cannot hold every permit of a worker.
    pub claim_lock_timeout_ms: u64,
    /// Most lost messages the relay of one worker publishes again per tick.
    pub republish_max_per_tick: u32,
}

/// Webhook deliveries (docs/operations.md, "Webhook deliveries").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Base of a hosted repository's clone URL in event bodies:
    /// `<base>/<org slug>/<repo name>.git`.
    pub repo_url_base: String,
    /// Deliveries one worker sends at once.
    pub concurrency: u16,
    /// Of those, at most this many to one target, so a slow target cannot
    /// take every slot.
    pub per_target_concurrency: u16,
    /// A delivery not answered with a 2xx within this long failed.
    pub timeout_ms: u64,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// Exponential backoff between attempts: base and cap (equal jitter).
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Most bytes of a receiver's answer read (the rest is dropped).
    pub max_response_bytes: usize,
    /// Events whose deliveries are all done are deleted, with their
    /// deliveries, once this old (the delivery log and redelivery reach
    /// back this far). Events with a pending delivery are always kept.
    pub event_retention_hours: u64,
}

impl Webhooks {
    pub fn event_retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.event_retention_hours.saturating_mul(3600))
    }

    /// The shortest time from the first attempt to the last the retry
    /// schedule allows (every jitter at its minimum, half the delay).
    pub fn min_retry_span(&self) -> std::time::Duration {
        (1..self.max_attempts)
            .map(|retry| {
                let exp = retry.saturating_sub(1).min(30);
                let full = self
                    .retry_base_ms
                    .saturating_mul(1u64 << exp)
                    .min(self.retry_max_ms.max(self.retry_base_ms));
                std::time::Duration::from_millis(full / 2)
            })
            .sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub allowed_schemes: Vec<String>,
    pub allow_private_networks: bool,
    pub timeout_seconds: u64,
    pub max_pack_bytes: u64,
    /// Most refs one run may match (each is listed in the sync's stats).
    pub max_refs: usize,
    /// Cap on one ref advertisement received from an upstream.
    pub max_advertisement_bytes: u64,
    /// A transfer that moves no byte for this long fails with `timeout`.
    pub stall_timeout_seconds: u64,
    /// `http://host:port` of an HTTP CONNECT proxy for all upstream traffic.
    #[serde(default)]
    pub proxy: Option<String>,
    /// PEM bundle of the CAs trusted for https upstreams, instead of the
    /// system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Base64 of 32 bytes: the AES-256-GCM key for upstream credentials.
    pub credential_key: Option<Secret>,
    /// Keys being rotated out: still accepted for reading credentials,
    /// never used to seal. See docs/operations.md, "Rotating the
    /// credential key".
    #[serde(default)]
    pub previous_credential_keys: Vec<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` overrides.
    pub filter: String,
    pub otlp_endpoint: Option<String>,
    /// Empty = the binary's own name.
    pub service_name: String,
}

impl Settings {
    /// Load from defaults, the file named by `path` or `DEPOT_CONFIG`, and the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let from_env = std::env::var_os("DEPOT_CONFIG").map(PathBuf::from);
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(path.or(from_env.as_deref()), env)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_from(
        path: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(SettingsError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let mut environment = Environment::with_prefix("DEPOT")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(Some(env.into_iter().collect()));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let config = builder
            .add_source(environment)
            .build()
            .map_err(|e| SettingsError(one_line(e)))?;
        let settings: Settings = config
            .try_deserialize()
            .map_err(|e| SettingsError(one_line(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        check_url(
            &self.database.url,
            "database.url",
            &["postgres", "postgresql"],
        )?;
        check_url(&self.amqp.url, "amqp.url", &["amqp", "amqps"])?;
        positive(self.database.pool_size as u64, "database.pool_size")?;
        positive(self.worker.concurrency.into(), "worker.concurrency")?;
        positive(self.worker.max_attempts.into(), "worker.max_attempts")?;
        positive(self.worker.retry_base_ms, "worker.retry_base_ms")?;
        positive(self.worker.lease_seconds, "worker.lease_seconds")?;
        // 0 would switch Postgres's limit off: every wait must stay bounded.
        positive(
            self.database.statement_timeout_ms,
            "database.statement_timeout_ms",
        )?;
        positive(self.database.lock_timeout_ms, "database.lock_timeout_ms")?;
        positive(
            self.database.idle_in_transaction_timeout_ms,
            "database.idle_in_transaction_timeout_ms",
        )?;
        positive(
            self.worker.claim_lock_timeout_ms,
            "worker.claim_lock_timeout_ms",
        )?;
        positive(
            self.worker.republish_max_per_tick.into(),
            "worker.republish_max_per_tick",
        )?;
        if self.worker.claim_lock_timeout_ms > self.database.lock_timeout_ms {
            return Err(SettingsError::key(
                "worker.claim_lock_timeout_ms",
                "must not be above database.lock_timeout_ms",
            ));
        }
        positive(self.upstream.timeout_seconds, "upstream.timeout_seconds")?;
        positive(self.upstream.max_refs as u64, "upstream.max_refs")?;
        positive(
            self.upstream.max_advertisement_bytes,
            "upstream.max_advertisement_bytes",
        )?;
        positive(
            self.upstream.stall_timeout_seconds,
            "upstream.stall_timeout_seconds",
        )?;
        if let Some(proxy) = &self.upstream.proxy {
            check_url(&Secret::new(proxy.clone()), "upstream.proxy", &["http"])?;
        }
        if let Some(ca) = &self.upstream.ca_file
            && !ca.is_file()
        {
            return Err(SettingsError::key(
                "upstream.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        positive(self.gateway.max_body_bytes as u64, "gateway.max_body_bytes")?;
        positive(self.amqp.delivery_limit.into(), "amqp.delivery_limit")?;
        positive(self.auth.cache_seconds, "auth.cache_seconds")?;
        // The listener is confirmed alive by a ping each quarter of the
        // bound; below 100 ms that would be a busy loop.
        if !(100..=60_000).contains(&self.auth.revocation_bound_ms) {
            return Err(SettingsError::key(
                "auth.revocation_bound_ms",
                "must be between 100 and 60000",
            ));
        }
        if self.auth.revocation_bound_ms > self.auth.cache_seconds.saturating_mul(1000) {
            return Err(SettingsError::key(
                "auth.revocation_bound_ms",
                "must not exceed auth.cache_seconds",
            ));
        }
        positive(
            self.gateway.idempotency_retention_hours,
            "gateway.idempotency_retention_hours",
        )?;
        positive(
            self.maintenance.interval_seconds,
            "maintenance.interval_seconds",
        )?;
        positive(self.maintenance.batch_size.into(), "maintenance.batch_size")?;
        positive(
            self.maintenance.sync_history_keep.into(),
            "maintenance.sync_history_keep",
        )?;
        positive(self.housekeeping.max_packs as u64, "housekeeping.max_packs")?;
        positive(
            self.housekeeping.repos_per_tick.into(),
            "housekeeping.repos_per_tick",
        )?;
        positive(
            self.housekeeping.time_limit_seconds,
            "housekeeping.time_limit_seconds",
        )?;
        let longest_run = self.upstream.timeout_seconds + self.worker.lease_seconds;
        if self.housekeeping.prune_grace_seconds < longest_run {
            return Err(SettingsError::key(
                "housekeeping.prune_grace_seconds",
                format!(
                    "must be at least upstream.timeout_seconds + worker.lease_seconds ({longest_run}): \
                     a run may still need the objects it downloaded"
                ),
            ));
        }
        if self.worker.retry_max_ms < self.worker.retry_base_ms {
            return Err(SettingsError::key(
                "worker.retry_max_ms",
                "must not be below worker.retry_base_ms",
            ));
        }
        // RabbitMQ requeues a delivery held unacked past its consumer timeout
        // (30 min by default): a run must end well before that.
        if self.upstream.timeout_seconds > 25 * 60 {
            return Err(SettingsError::key(
                "upstream.timeout_seconds",
                "must be at most 1500 (RabbitMQ's consumer timeout is 30 minutes)",
            ));
        }
        let ns = &self.amqp.namespace;
        if ns.is_empty()
            || ns.len() > 100
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(SettingsError::key(
                "amqp.namespace",
                "must be 1-100 characters of [A-Za-z0-9._-]",
            ));
        }
        if self.upstream.allowed_schemes.is_empty() {
            return Err(SettingsError::key(
                "upstream.allowed_schemes",
                "must not be empty",
            ));
        }
        for scheme in &self.upstream.allowed_schemes {
            if !matches!(scheme.as_str(), "https" | "http") {
                return Err(SettingsError::key(
                    "upstream.allowed_schemes",
                    format!("{scheme:?} is not supported (only http and https)"),
                ));
            }
        }
        let w = &self.webhooks;
        check_url(
            &Secret::new(w.repo_url_base.clone()),
            "webhooks.repo_url_base",
            &["http", "https"],
        )?;
        positive(w.concurrency.into(), "webhooks.concurrency")?;
        positive(
            w.per_target_concurrency.into(),
            "webhooks.per_target_concurrency",
        )?;
        if w.per_target_concurrency > w.concurrency {
            return Err(SettingsError::key(
                "webhooks.per_target_concurrency",
                "must not be above webhooks.concurrency",
            ));
        }
        if !(100..=60_000).contains(&w.timeout_ms) {
            return Err(SettingsError::key(
                "webhooks.timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        positive(w.max_attempts.into(), "webhooks.max_attempts")?;
        positive(w.retry_base_ms, "webhooks.retry_base_ms")?;
        if w.retry_max_ms < w.retry_base_ms {
            return Err(SettingsError::key(
                "webhooks.retry_max_ms",
                "must not be below webhooks.retry_base_ms",
            ));
        }
        positive(w.max_response_bytes as u64, "webhooks.max_response_bytes")?;
        // Above ten years is a typo, not a policy; it would also overflow
        // the interval the prune computes.
        if !(1..=87_600).contains(&w.event_retention_hours) {
            return Err(SettingsError::key(
                "webhooks.event_retention_hours",
                "must be between 1 and 87600",
            ));
        }
        if let Some(key) = &self.secrets.credential_key {
            self::credential_key_bytes(key)
                .map_err(|p| SettingsError::key("secrets.credential_key", p))?;
        }
        for key in &self.secrets.previous_credential_keys {
            self::credential_key_bytes(key)
                .map_err(|p| SettingsError::key("secrets.previous_credential_keys", p))?;
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            check_url(
                &Secret::new(endpoint.clone()),
                "telemetry.otlp_endpoint",
                &["http", "https"],
            )?;
        }
        Ok(())
    }

    /// The credential key, required by the binaries that read or write
    /// upstream credentials.
    pub fn credential_key(&self) -> Result<[u8; 32], SettingsError> {
        let key = self.secrets.credential_key.as_ref().ok_or_else(|| {
            SettingsError::key(
                "secrets.credential_key",
                "is required (base64 of 32 random bytes)",
            )
        })?;
        credential_key_bytes(key).map_err(|p| SettingsError::key("secrets.credential_key", p))
    }
}

impl Settings {
    /// Keys being rotated out, decoded (validated at load).
    pub fn previous_credential_keys(&self) -> Result<Vec<[u8; 32]>, SettingsError> {
        self.secrets
            .previous_credential_keys
            .iter()
            .map(|k| {
                credential_key_bytes(k)
                    .map_err(|p| SettingsError::key("secrets.previous_credential_keys", p))
            })
            .collect()
    }
}

fn credential_key_bytes(key: &Secret) -> Result<[u8; 32], &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose().trim())
        .map_err(|_| "is not valid base64")?;
    bytes
        .try_into()
        .map_err(|_| "must decode to exactly 32 bytes")
}

fn positive(value: u64, key: &str) -> Result<(), SettingsError> {
    if value == 0 {
        return Err(SettingsError::key(key, "must be greater than 0"));
    }
    Ok(())
}

fn check_url(value: &Secret, key: &str, schemes: &[&str]) -> Result<(), SettingsError> {
    // The error names the key and the problem, never the value: URLs may
    // carry passwords.
    let parsed = url::Url::parse(value.expose())
        .map_err(|e| SettingsError::key(key, format!("is not a valid URL ({e})")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(SettingsError::key(
            key,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    Ok(())
}

fn one_line(e: impl fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn webhook_defaults_retry_for_at_least_a_day() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.webhooks.timeout_ms, 10_000);
        assert!(s.webhooks.min_retry_span() >= std::time::Duration::from_secs(24 * 3600));
    }

    #[test]
    fn webhook_events_are_kept_thirty_days_unless_set() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(
            s.webhooks.event_retention(),
            std::time::Duration::from_secs(30 * 86_400)
        );
        let s = Settings::load_from(
            None,
            env(&[("DEPOT__WEBHOOKS__EVENT_RETENTION_HOURS", "48")]),
        )
        .unwrap();
        assert_eq!(
            s.webhooks.event_retention(),
            std::time::Duration::from_secs(2 * 86_400)
        );
    }

    #[test]
    fn webhook_settings_are_validated() {
        for (key, value) in [
            ("DEPOT__WEBHOOKS__CONCURRENCY", "0"),
            ("DEPOT__WEBHOOKS__PER_TARGET_CONCURRENCY", "9"),
            ("DEPOT__WEBHOOKS__TIMEOUT_MS", "10"),
            ("DEPOT__WEBHOOKS__RETRY_MAX_MS", "1"),
            ("DEPOT__WEBHOOKS__REPO_URL_BASE", "ftp://x"),
            ("DEPOT__WEBHOOKS__EVENT_RETENTION_HOURS", "0"),
            ("DEPOT__WEBHOOKS__EVENT_RETENTION_HOURS", "87601"),
        ] {
            let e = Settings::load_from(None, env(&[(key, value)])).unwrap_err();
            let name = key
                .trim_start_matches("DEPOT__")
                .replace("__", ".")
                .to_lowercase();
            assert!(e.to_string().contains(&name), "{key}: {e}");
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(
            s.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/depot"
        );
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.amqp.namespace, "depot");
        assert_eq!(s.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.storage.root, PathBuf::from("./data/repos"));
        assert_eq!(s.worker.max_attempts, 5);
        assert_eq!(s.worker.retry_base_ms, 1000);
        assert_eq!(s.worker.lease_seconds, 60);
        assert_eq!(s.database.statement_timeout_ms, 30_000);
        assert_eq!(s.database.lock_timeout_ms, 5_000);
        assert_eq!(s.database.idle_in_transaction_timeout_ms, 60_000);
        assert_eq!(s.worker.claim_lock_timeout_ms, 1_000);
        assert_eq!(s.worker.republish_max_per_tick, 100);
        assert_eq!(s.upstream.allowed_schemes, vec!["https"]);
        assert!(!s.upstream.allow_private_networks);
        assert_eq!(s.telemetry.format, LogFormat::Pretty);
        assert!(s.telemetry.otlp_endpoint.is_none());
        assert!(s.secrets.credential_key.is_none());
        assert!(s.credential_key().is_err());
        assert_eq!(s.auth.revocation_bound_ms, 1000);
        assert_eq!(s.auth.cache_seconds, 60);
    }

    #[test]
    fn file_then_environment_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depot.toml");
        std::fs::write(
            &path,
            "[worker]\nconcurrency = 7\nmax_attempts = 3\n[amqp]\nnamespace = \"fromfile\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&path),
            env(&[
                ("DEPOT__WORKER__MAX_ATTEMPTS", "9"),
                ("DEPOT__UPSTREAM__ALLOWED_SCHEMES", "http,https"),
                ("DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS", "true"),
                ("DEPOT__TELEMETRY__FORMAT", "json"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.worker.max_attempts, 9);
        assert_eq!(s.amqp.namespace, "fromfile");
        assert_eq!(s.upstream.allowed_schemes, vec!["http", "https"]);
        assert!(s.upstream.allow_private_networks);
        assert_eq!(s.telemetry.format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_key_on_one_line() {
        for (key, value, expected) in [
            ("DEPOT__WORKER__CONCURRENCY", "many", "worker.concurrency"),
            ("DEPOT__WORKER__MAX_ATTEMPTS", "0", "worker.max_attempts"),
            ("DEPOT__GATEWAY__LISTEN", "nowhere", "gateway.listen"),
            ("DEPOT__DATABASE__URL", "mysql://x", "database.url"),
            ("DEPOT__AMQP__NAMESPACE", "a b", "amqp.namespace"),
            (
                "DEPOT__AUTH__REVOCATION_BOUND_MS",
                "5",
                "auth.revocation_bound_ms",
            ),
            (
                "DEPOT__UPSTREAM__ALLOWED_SCHEMES",
                "file",
                "upstream.allowed_schemes",
            ),
            (
                "DEPOT__SECRETS__CREDENTIAL_KEY",
                "c2hvcnQ=",
                "secrets.credential_key",
            ),
            ("DEPOT__TELEMETRY__FORMAT", "xml", "telemetry.format"),
            ("DEPOT__WORKER__NO_SUCH_KEY", "1", "no_such_key"),
            (
                "DEPOT__DATABASE__STATEMENT_TIMEOUT_MS",
                "0",
                "database.statement_timeout_ms",
            ),
            (
                "DEPOT__WORKER__CLAIM_LOCK_TIMEOUT_MS",
                "6000",
                "worker.claim_lock_timeout_ms",
            ),
            (
                "DEPOT__WORKER__REPUBLISH_MAX_PER_TICK",
                "0",
                "worker.republish_max_per_tick",
            ),
        ] {
            let err = Settings::load_from(None, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{key}={value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
        let s = Settings::load_from(
            None,
            env(&[
                ("DEPOT__SECRETS__CREDENTIAL_KEY", key),
                ("DEPOT__DATABASE__URL", "postgres://u:hunter2@db/depot"),
            ]),
        )
        .unwrap();
        assert_eq!(
            &s.credential_key().unwrap(),
            b"0123456789abcdef0123456789abcdef"
        );
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(key) && !dbg.contains("hunter2"), "{dbg}");
        let err = Settings::load_from(None, env(&[("DEPOT__DATABASE__URL", "hunter2 not a url")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn previous_credential_keys_are_a_list() {
        let a = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let b = "YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk=";
        let s = Settings::load_from(
            None,
            env(&[(
                "DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS",
                &format!("{a},{b}"),
            )]),
        )
        .unwrap();
        let keys = s.previous_credential_keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(&keys[0], b"0123456789abcdef0123456789abcdef");
        let err = Settings::load_from(
            None,
            env(&[("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS", "bm9wZQ==")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("secrets.previous_credential_keys"), "{err}");
        assert!(!err.contains("bm9wZQ"), "{err}");
    }

    #[test]
    fn retention_and_housekeeping_defaults() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.gateway.idempotency_retention_hours, 24);
        assert_eq!(
            s.gateway.idempotency_retention(),
            std::time::Duration::from_secs(86_400)
        );
        assert_eq!(s.maintenance.sync_history_keep, 100);
        assert_eq!(s.maintenance.sync_history_days, 90);
        assert!(s.housekeeping.enabled);
        assert!(s.housekeeping.prune_grace_seconds >= s.upstream.timeout_seconds);
    }

    #[test]
    fn prune_grace_must_outlast_any_run() {
        let err = Settings::load_from(
            None,
            env(&[("DEPOT__HOUSEKEEPING__PRUNE_GRACE_SECONDS", "60")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("housekeeping.prune_grace_seconds"), "{err}");
        let s = Settings::load_from(
            None,
            env(&[
                ("DEPOT__HOUSEKEEPING__PRUNE_GRACE_SECONDS", "60"),
                ("DEPOT__UPSTREAM__TIMEOUT_SECONDS", "30"),
                ("DEPOT__WORKER__LEASE_SECONDS", "30"),
            ]),
        );
        assert!(s.is_ok());
        let err = Settings::load_from(None, env(&[("DEPOT__MAINTENANCE__SYNC_HISTORY_KEEP", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("maintenance.sync_history_keep"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err =
            Settings::load_from(Some(Path::new("/nonexistent/depot.toml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/depot.toml"));
    }
}
