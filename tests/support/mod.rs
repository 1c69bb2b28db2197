//! Test harness for end-to-end tests: each test gets its own database, its
//! own broker namespace and storage directory, and runs the real
//! `depot-gateway`, `depot-worker` and `depot-admin` binaries against them,
//! or the gateway in-process ([`Gateway::InProcess`], the API tier).
//! Binaries come from the workspace's target directory (`make test` builds
//! them first; so does `cargo build --bins`).
//!
//! A test's database is leased from a pool of emptied clones of
//! `depot_tmpl_<hash of migrations/>` ([`pool`]), and the template is built
//! once by `depot-admin migrate` and kept between runs: cloning costs a
//! fraction of migrating, reusing a clone a fraction of cloning, and the
//! hash keeps a tree with other migrations from ever using either.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod calls;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use depot_testkit::{GitHttpServer, GitServerOptions, fixture};

pub mod ops;
pub mod pool;
pub mod python;
pub mod worker;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// A fixed test-only credential key (base64 of 32 bytes).
pub const CREDENTIAL_KEY: &str = "dGVzdC1vbmx5LWNyZWRlbnRpYWwta2V5LTMyYnl0ZXM=";
/// [`CREDENTIAL_KEY`] decoded.
pub const CREDENTIAL_KEY_BYTES: &[u8; 32] = b"test-only-credential-key-32bytes";

/// Directory holding the workspace's binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --bins`, which `make test` does)",
            path.display()
        );
    }
    Ok(path)
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Poll `check` until it returns `Some`, or fail after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    // Capped at 50 ms: most waits end within a second or two (a sync, a
    // process start), and a coarser step was time every such wait
    // overslept; a check is one request or query, cheap at this rate.
    let mut pause = Duration::from_millis(10);
    loop {
        let last = check().await;
        match last {
            Ok(Some(v)) => return Ok(v),
            Ok(None) if Instant::now() < deadline => {}
            Err(_) if Instant::now() < deadline => {}
            Ok(None) => bail!("timed out after {limit:?} waiting for {what}"),
            Err(e) => {
                return Err(e.context(format!("timed out after {limit:?} waiting for {what}")));
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A running binary; SIGKILLed on drop unless stopped before.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGTERM, then wait up to `limit` for exit; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Settings shared by every process of one test environment.
pub struct TestEnv {
    pub db_name: String,
    pub namespace: String,
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    pub gateway: Option<Proc>,
    /// The gateway when it runs inside the test process.
    in_process: Option<actix_web::dev::ServerHandle>,
    pub workers: Vec<Proc>,
    pub base_url: String,
    pub http: reqwest::Client,
    /// This test's hold on its database ([`pool`]); released by cleanup,
    /// by `Drop`, or by the process's death.
    lease: Option<pool::Lease>,
    /// Set by [`TestEnv::cleanup`]; otherwise `Drop` deletes the broker
    /// namespace (a failed test panics before `cleanup`).
    cleaned: bool,
}

#[derive(Debug, Clone)]
pub struct EnvOptions {
    pub extra_env: Vec<(String, String)>,
    pub workers: usize,
    pub gateway: Gateway,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            extra_env: Vec::new(),
            workers: 1,
            gateway: Gateway::Binary,
        }
    }
}

/// How a test runs the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    /// The real `depot-gateway` binary: for lifecycle, outage and log tests.
    Binary,
    /// `Application::build` on port 0 inside the test process, with the
    /// same settings: for validation, auth and contract tests, which need
    /// the HTTP API but not the process (its log is not captured: a test
    /// that reads gateway logs needs [`Gateway::Binary`]).
    InProcess,
}

impl EnvOptions {
    /// The real binaries, `workers` workers and these settings on top.
    pub fn with_env(extra: &[(&str, &str)], workers: usize) -> EnvOptions {
        EnvOptions {
            extra_env: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workers,
            ..EnvOptions::default()
        }
    }

    /// No worker and the gateway in-process: the API tier.
    pub fn api_only() -> EnvOptions {
        EnvOptions {
            workers: 0,
            gateway: Gateway::InProcess,
            ..EnvOptions::default()
        }
    }
}

impl TestEnv {
    pub async fn start(options: EnvOptions) -> Result<TestEnv> {
        let suffix = random_suffix();
        let namespace = format!("test-{suffix}");
        let dir = tempfile::tempdir()?;
        let mut env: HashMap<String, String> = [
            ("DEPOT__DATABASE__POOL_SIZE", "8".into()),
            ("DEPOT__AMQP__URL", AMQP_URL.into()),
            ("DEPOT__AMQP__NAMESPACE", namespace.clone()),
            ("DEPOT__GATEWAY__LISTEN", "127.0.0.1:0".into()),
            ("DEPOT__GATEWAY__WORKERS", "2".into()),
            (
                "DEPOT__STORAGE__ROOT",
                dir.path().join("storage").display().to_string(),
            ),
            ("DEPOT__WORKER__CONCURRENCY", "2".into()),
            ("DEPOT__WORKER__RETRY_BASE_MS", "100".into()),
            ("DEPOT__WORKER__RETRY_MAX_MS", "1000".into()),
            ("DEPOT__WORKER__RELAY_INTERVAL_MS", "200".into()),
            ("DEPOT__WORKER__LEASE_SECONDS", "10".into()),
            ("DEPOT__WORKER__GRACE_SECONDS", "5".into()),
            ("DEPOT__WORKER__METRICS_LISTEN", "127.0.0.1:0".into()),
            ("DEPOT__UPSTREAM__ALLOWED_SCHEMES", "http,https".into()),
            ("DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS", "true".into()),
            ("DEPOT__UPSTREAM__TIMEOUT_SECONDS", "60".into()),
            ("DEPOT__SECRETS__CREDENTIAL_KEY", CREDENTIAL_KEY.into()),
            ("DEPOT__TELEMETRY__FORMAT", "json".into()),
            ("DEPOT__TELEMETRY__FILTER", "info,depot=debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &options.extra_env {
            env.insert(k.clone(), v.clone());
        }
        let mut test_env = TestEnv {
            db_name: String::new(),
            namespace,
            dir,
            env,
            gateway: None,
            in_process: None,
            workers: Vec::new(),
            base_url: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            lease: None,
            cleaned: false,
        };
        test_env.lease_database().await?;
        // Workers first: they need neither the gateway nor one another
        // (every broker connection declares the topology), so their start
        // overlaps the wait for the gateway to listen.
        for _ in 0..options.workers {
            test_env.start_worker()?;
        }
        match options.gateway {
            Gateway::Binary => test_env.start_gateway().await?,
            Gateway::InProcess => test_env.start_gateway_in_process().await?,
        }
        Ok(test_env)
    }

    /// This test's database: an emptied clone of the migrated template,
    /// leased from the pool (reusing one takes a fraction of cloning, which
    /// takes a fraction of applying every migration again).
    async fn lease_database(&mut self) -> Result<()> {
        let template = migrated_template(&self.env).await?;
        let lease = pool::lease(&template, migrations_hash()?).await?;
        self.db_name = lease.db_name.clone();
        self.env.insert(
            "DEPOT__DATABASE__URL".into(),
            format!("postgres://postgres@127.0.0.1:5432/{}", self.db_name),
        );
        self.lease = Some(lease);
        Ok(())
    }

    fn command(&self, binary: &str) -> Result<Command> {
        command_in(&self.env, binary)
    }

    /// Run `depot-admin ARGS`; returns stdout, fails on a non-zero exit.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = self.command("depot-admin")?.args(args).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "depot-admin {args:?} failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Create an org and a key with the given scopes; returns the key.
    pub fn org_and_key(&self, slug: &str, scopes: &str) -> Result<String> {
        self.admin(&["org", "create", slug, "--exists-ok"])?;
        let out = self.admin(&["key", "create", "--org", slug, "--scopes", scopes])?;
        out.lines()
            .last()
            .map(str::to_string)
            .context("no key printed")
    }

    fn spawn(&self, binary: &str, label: &str) -> Result<Proc> {
        self.spawn_with(binary, label, &[])
    }

    fn spawn_with(&self, binary: &str, label: &str, overrides: &[(&str, &str)]) -> Result<Proc> {
        let log = self.dir.path().join(format!("{label}.log"));
        let file = File::create(&log)?;
        let mut cmd = self.command(binary)?;
        cmd.envs(overrides.iter().copied());
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {binary}"))?;
        Ok(Proc {
            name: label.to_string(),
            child: Some(child),
            log,
        })
    }

    pub async fn start_gateway(&mut self) -> Result<()> {
        let proc = self.spawn("depot-gateway", "gateway")?;
        let log = proc.log.clone();
        self.gateway = Some(proc);
        let port = eventually(Duration::from_secs(20), "the gateway to listen", || {
            let log = log.clone();
            async move { Ok(listening_port(&std::fs::read_to_string(&log)?)) }
        })
        .await?;
        self.base_url = format!("http://127.0.0.1:{port}");
        let url = format!("{}/healthz", self.base_url);
        let http = self.http.clone();
        eventually(Duration::from_secs(20), "gateway /healthz", || {
            let (url, http) = (url.clone(), http.clone());
            async move {
                Ok(http
                    .get(&url)
                    .send()
                    .await?
                    .status()
                    .is_success()
                    .then_some(()))
            }
        })
        .await?;
        Ok(())
    }

    /// Build the gateway in this process from the environment the binary
    /// would get, bound to port 0, and serve it on the test's runtime.
    pub async fn start_gateway_in_process(&mut self) -> Result<()> {
        let settings = depot_settings::Settings::load_from(None, self.env.clone())?;
        let app = depot_gateway::Application::build(settings).await?;
        self.base_url = format!("http://127.0.0.1:{}", app.port());
        self.in_process = Some(app.handle());
        tokio::spawn(app.run_until_stopped());
        Ok(())
    }

    pub fn start_worker(&mut self) -> Result<usize> {
        self.start_worker_with(&[])
    }

    /// Start a worker with some environment variables of its own (e.g. a
    /// database URL through a fault-injecting proxy); returns its index.
    pub fn start_worker_with(&mut self, overrides: &[(&str, &str)]) -> Result<usize> {
        let n = self.workers.len();
        let proc = self.spawn_with("depot-worker", &format!("worker-{n}"), overrides)?;
        self.workers.push(proc);
        Ok(n)
    }

    /// Every log line written by the processes of this environment.
    pub fn all_logs(&self) -> String {
        let mut text = String::new();
        if let Some(g) = &self.gateway {
            text.push_str(&g.log_text());
        }
        for w in &self.workers {
            text.push_str(&w.log_text());
        }
        text
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Send a request with a JSON body (when given) and bearer key; returns
    /// status and parsed JSON body (Null when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow!("non-JSON body ({e}): {text}"))?
        };
        Ok((status, json))
    }

    /// Poll a sync until it is `completed` or `failed`.
    pub async fn wait_for_sync(
        &self,
        key: &str,
        org: &str,
        repo: &str,
        sync_id: &str,
        limit: Duration,
    ) -> Result<Value> {
        let path = format!("/v1/{org}/{repo}/upstream/syncs/{sync_id}");
        eventually(limit, &format!("sync {sync_id} to finish"), || {
            let path = path.clone();
            async move {
                let (status, body) = self.call("GET", &path, Some(key), None).await?;
                if status != 200 {
                    bail!("GET {path}: {status} {body}");
                }
                Ok(matches!(body["status"].as_str(), Some("completed" | "failed")).then_some(body))
            }
        })
        .await
    }

    /// Where the worker keeps a repository's bare git data.
    pub async fn hosted_repo_path(&self, repo_id: &str) -> Result<PathBuf> {
        let client = self.db().await?;
        let row = client
            .query_one("SELECT org_id FROM repos WHERE id = $1", &[&repo_id])
            .await?;
        let org_id: String = row.get(0);
        Ok(self
            .dir
            .path()
            .join("storage")
            .join(org_id)
            .join(format!("{repo_id}.git")))
    }

    /// A direct connection to this test's database.
    pub async fn db(&self) -> Result<tokio_postgres::Client> {
        let url = &self.env["DEPOT__DATABASE__URL"];
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Stop the processes, delete the broker namespace and give the
    /// database back to the pool (the next lease empties it).
    pub async fn cleanup(mut self) -> Result<()> {
        if let Some(handle) = self.in_process.take() {
            handle.stop(false).await;
        }
        self.stop_all();
        self.release_database();
        delete_namespace(&self.namespace).await?;
        self.cleaned = true;
        Ok(())
    }

    /// End the lease. A lease that ended early (its connection lost, as
    /// when a test restarts Postgres) may have let another test have this
    /// database meanwhile: said on stderr, since such a test expects it.
    fn release_database(&mut self) {
        if let Some(lease) = self.lease.take()
            && !lease.is_held()
        {
            eprintln!(
                "test database pool: the lease on {} ended before the test did",
                self.db_name
            );
        }
    }

    fn stop_all(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.kill9();
        }
        if let Some(handle) = self.in_process.take() {
            // Sent at once; the returned future only waits for the end.
            drop(handle.stop(false));
        }
        for w in &mut self.workers {
            w.kill9();
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.stop_all();
        self.release_database();
        // Drop may run inside the test's runtime (which cannot be blocked
        // on from within): a thread with its own runtime does the work.
        let namespace = self.namespace.clone();
        let outcome = std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(delete_namespace(&namespace))
        })
        .join();
        if !matches!(outcome, Ok(Ok(()))) {
            eprintln!(
                "test cleanup failed: broker namespace {} may be left behind",
                self.namespace
            );
        }
    }
}

async fn delete_namespace(namespace: &str) -> Result<()> {
    let broker = depot_broker::Broker::connect(depot_broker::BrokerOptions {
        url: AMQP_URL.into(),
        namespace: namespace.to_string(),
        timeout: Duration::from_secs(10),
        delivery_limit: 10,
        connection_name: "depot-e2e-cleanup".into(),
    })
    .await?;
    broker.delete_topology().await?;
    broker.close().await;
    Ok(())
}

/// The name of a database holding exactly the migrations of this tree,
/// built by `depot-admin migrate` the first time any test needs it.
/// Named by a hash of `migrations/`: a tree with other migrations (an
/// edited one, another branch's) gets its own. Built under another name
/// and renamed when complete, so a test killed halfway leaves no
/// half-migrated template; marked a template without connections, so
/// concurrent clones never find it in use.
/// `env` is the environment its `depot-admin migrate` gets.
pub(crate) async fn migrated_template(env: &HashMap<String, String>) -> Result<String> {
    let name = format!("depot_tmpl_{:016x}", migrations_hash()?);
    let client = admin_client().await?;
    // Arbitrary constant naming "depot e2e template" among advisory locks.
    client
        .batch_execute("SELECT pg_advisory_lock(7355608002)")
        .await?;
    let built = async {
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate",
                &[&name],
            )
            .await?
            .is_some();
        if !exists {
            let building = format!("{name}_build_{}", random_suffix());
            let url = format!("postgres://postgres@127.0.0.1:5432/{building}");
            let out = command_in(env, "depot-admin")?
                .env("DEPOT__DATABASE__URL", &url)
                .arg("migrate")
                .output()?;
            if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("applied") {
                bail!(
                    "depot-admin migrate into {building}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            client
                .batch_execute(&format!(
                    "ALTER DATABASE \"{building}\" RENAME TO \"{name}\"; \
                     ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
                ))
                .await?;
        }
        Ok(())
    }
    .await;
    client
        .batch_execute("SELECT pg_advisory_unlock(7355608002)")
        .await?;
    built.map(|()| name)
}

/// `binary` with only `env` (and the PATH, HOME and LANG of the test).
fn command_in(env: &HashMap<String, String>, binary: &str) -> Result<Command> {
    let mut cmd = Command::new(bin(binary)?);
    cmd.env_clear();
    for key in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env).stdin(Stdio::null());
    Ok(cmd)
}

async fn admin_client() -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A hash of every file in `migrations/`, names and contents.
pub(crate) fn migrations_hash() -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// The port from the gateway's JSON log line `gateway listening`.
fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "gateway listening")
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// An upstream server with basic auth and one bare repository `name`
/// holding history authored in a work repository.
pub struct Upstream {
    pub server: GitHttpServer,
    pub work: fixture::WorkRepo,
    pub bare: PathBuf,
    pub name: String,
    _dir: tempfile::TempDir,
}

pub const UPSTREAM_USER: &str = "alice";
pub const UPSTREAM_PASSWORD: &str = "s3cret-upstream-pw";

impl Upstream {
    pub fn start(name: &str) -> Result<Upstream> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("srv");
        std::fs::create_dir_all(&root)?;
        let bare = root.join(format!("{name}.git"));
        fixture::init_bare(&bare)?;
        let work = fixture::WorkRepo::new(&dir.path().join("work"))?;
        let server = GitHttpServer::start(GitServerOptions {
            root,
            basic_auth: Some((UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into())),
            listen: None,
        })?;
        Ok(Upstream {
            server,
            work,
            bare,
            name: name.to_string(),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        self.server.repo_url(&self.name)
    }

    pub fn publish(&self) -> Result<()> {
        self.work.push_all_to(&self.bare)
    }

    pub fn refs(&self) -> Result<Vec<(String, String)>> {
        fixture::list_refs(&self.bare)
    }
}
