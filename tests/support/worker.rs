//! Helpers for the worker's end-to-end tests (`tests/e2e/worker*.rs`):
//! repositories with an upstream, syncs through the public API, direct
//! access to the hosted repository and the broker, and drop guards that
//! bring Postgres or RabbitMQ back after a disruptive test.

use crate::{AMQP_URL, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream, eventually, fixture};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a test waits for one sync to end.
pub const SYNC_LIMIT: Duration = Duration::from_secs(90);

/// The org every worker test uses.
pub const ORG: &str = "acme";

/// Create repo `name` in [`ORG`] whose upstream is `upstream`, with the
/// given basic-auth credentials (`None`: the right ones). Returns its id.
pub async fn create_repo(
    env: &TestEnv,
    key: &str,
    name: &str,
    upstream: &Upstream,
    password: Option<&str>,
) -> Result<String> {
    let (status, repo) = env
        .call(
            "POST",
            &format!("/v1/{ORG}/repos"),
            Some(key),
            Some(&json!({
                "name": name,
                "upstream": {
                    "url": upstream.url(),
                    "auth": {
                        "kind": "username_password",
                        "username": UPSTREAM_USER,
                        "password": password.unwrap_or(UPSTREAM_PASSWORD),
                    }
                }
            })),
        )
        .await?;
    if status != 201 {
        bail!("creating repo {name}: {status} {repo}");
    }
    repo["id"]
        .as_str()
        .map(str::to_string)
        .context("repo without id")
}

/// POST a sync; returns the created sync (fails unless 201).
pub async fn post_sync(env: &TestEnv, key: &str, repo: &str, body: Value) -> Result<Value> {
    let (status, sync) = env
        .call(
            "POST",
            &format!("/v1/{ORG}/{repo}/upstream/syncs"),
            Some(key),
            Some(&body),
        )
        .await?;
    if status != 201 {
        bail!("POST sync on {repo}: {status} {sync}");
    }
    Ok(sync)
}

/// GET a sync.
pub async fn get_sync(env: &TestEnv, key: &str, repo: &str, id: &str) -> Result<Value> {
    let (status, sync) = env
        .call(
            "GET",
            &format!("/v1/{ORG}/{repo}/upstream/syncs/{id}"),
            Some(key),
            None,
        )
        .await?;
    if status != 200 {
        bail!("GET sync {id}: {status} {sync}");
    }
    Ok(sync)
}

/// POST a sync and wait until it ends; returns the final sync object.
pub async fn sync_and_wait(env: &TestEnv, key: &str, repo: &str, body: Value) -> Result<Value> {
    let sync = post_sync(env, key, repo, body).await?;
    let id = sync["id"].as_str().context("sync without id")?;
    env.wait_for_sync(key, ORG, repo, id, SYNC_LIMIT).await
}

/// Wait until a sync is `in_progress` with the given attempt.
pub async fn wait_in_progress(
    env: &TestEnv,
    key: &str,
    repo: &str,
    id: &str,
    attempt: u64,
) -> Result<Value> {
    eventually(
        SYNC_LIMIT,
        &format!("sync {id} in progress, attempt {attempt}"),
        || async move {
            let s = get_sync(env, key, repo, id).await?;
            Ok((s["status"] == "in_progress" && s["attempt"] == attempt).then_some(s))
        },
    )
    .await
}

/// `stats.refs` by name.
pub fn stats_by_name(sync: &Value) -> BTreeMap<String, Value> {
    sync["stats"]["refs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Check one `stats.refs` entry: before, after, outcome and reason.
pub fn assert_ref(
    stats: &BTreeMap<String, Value>,
    name: &str,
    before: Option<&str>,
    after: &str,
    outcome: &str,
    reason: Option<&str>,
) {
    let r = stats
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from stats: {stats:?}"));
    assert_eq!(r["before"].as_str(), before, "before of {name}: {r}");
    assert_eq!(r["after"].as_str(), Some(after), "after of {name}: {r}");
    assert_eq!(
        r["outcome"].as_str(),
        Some(outcome),
        "outcome of {name}: {r}"
    );
    assert_eq!(r["reason"].as_str(), reason, "reason of {name}: {r}");
}

/// Names in `stats.refs`, in the order given.
pub fn stat_names(sync: &Value) -> Vec<String> {
    sync["stats"]["refs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .map(|r| r["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub use depot_testkit::fixture::{all_ref_names, fetch_all, force_push, refs_of};

/// Run `git` in `dir` and return its stdout, trimmed.
pub use depot_testkit::fixture::git_in_dir as git;

/// A broker connection on the test's namespace.
pub async fn broker(env: &TestEnv) -> Result<depot_broker::Broker> {
    Ok(depot_broker::Broker::connect(depot_broker::BrokerOptions {
        url: AMQP_URL.into(),
        namespace: env.namespace.clone(),
        timeout: Duration::from_secs(10),
        delivery_limit: 10,
        connection_name: "depot-e2e-worker".into(),
    })
    .await?)
}

/// The sync's status and attempt, straight from Postgres.
pub async fn db_state(env: &TestEnv, sync_id: &str) -> Result<(String, i32)> {
    let db = env.db().await?;
    let row = db
        .query_one(
            "SELECT status, attempt FROM syncs WHERE id = $1",
            &[&sync_id],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Log lines (JSON) of every process mentioning `needle`.
pub fn log_lines_with(env: &TestEnv, needle: &str) -> Vec<String> {
    env.all_logs()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A scratch directory with a work repository, for authoring hosted refs.
pub fn scratch_work(dir: &Path, name: &str) -> Result<fixture::WorkRepo> {
    fixture::WorkRepo::new(&dir.join(name))
}

/// Restarts RabbitMQ's application on drop (also when the test panics).
pub struct RabbitGuard {
    stopped: bool,
}

impl RabbitGuard {
    /// `rabbitmqctl stop_app`.
    pub fn stop() -> Result<RabbitGuard> {
        run_cmd("rabbitmqctl", &["stop_app"])?;
        Ok(RabbitGuard { stopped: true })
    }

    /// `rabbitmqctl start_app`, then wait for port 5672.
    pub fn start(&mut self) -> Result<()> {
        if self.stopped {
            run_cmd("rabbitmqctl", &["start_app"])?;
            self.stopped = false;
        }
        wait_for_port(5672, Duration::from_secs(60))
    }
}

impl Drop for RabbitGuard {
    fn drop(&mut self) {
        if let Err(e) = self.start() {
            eprintln!("RabbitGuard: could not restart RabbitMQ: {e:#}");
        }
    }
}

/// Starts the Postgres cluster again on drop (also when the test panics).
pub struct PostgresGuard {
    stopped: bool,
}

const PG_CTL: &str = "pg_ctlcluster";

impl PostgresGuard {
    /// `pg_ctlcluster 15 main stop`.
    pub fn stop() -> Result<PostgresGuard> {
        run_cmd(PG_CTL, &["--skip-systemctl-redirect", "15", "main", "stop"])?;
        Ok(PostgresGuard { stopped: true })
    }

    /// `pg_ctlcluster 15 main start`, then wait for port 5432.
    pub fn start(&mut self) -> Result<()> {
        if self.stopped {
            run_cmd(
                PG_CTL,
                &["--skip-systemctl-redirect", "15", "main", "start"],
            )?;
            self.stopped = false;
        }
        wait_for_port(5432, Duration::from_secs(60))
    }
}

impl Drop for PostgresGuard {
    fn drop(&mut self) {
        if let Err(e) = self.start() {
            eprintln!("PostgresGuard: could not restart Postgres: {e:#}");
        }
    }
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        )
        .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Directory for scratch work repositories of one test.
pub fn scratch_dir(env: &TestEnv) -> PathBuf {
    env.dir.path().join("scratch")
}
