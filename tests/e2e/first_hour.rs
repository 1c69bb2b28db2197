//! A new user's first hour: the demo `make run` sets up works when run
//! twice, log files are plain text, every documented metric exists from the
//! start, a retrying sync says what it waits for, the admin CLI names its
//! configuration, and a worker with nothing running stops without waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::calls::Pull;
use depot_e2e::ops::json_lines;
use depot_e2e::worker::*;
use depot_e2e::{AMQP_URL, EnvOptions, PG_ADMIN_URL, TestEnv, Upstream, bin, bin_dir, eventually};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn env_opts(extra: &[(&str, &str)]) -> EnvOptions {
    EnvOptions::with_env(extra, 1)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The metric names in the first column of the tables under `### <section>`
/// of docs/operations.md's "Metrics" chapter.
fn documented_metrics(section: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let heading = format!("### {section}");
    let mut names = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with('#') {
            inside = line.trim() == heading;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(cell) = line.strip_prefix("| `")
            && let Some((name, _)) = cell.split_once('`')
            && name.starts_with("depot_")
        {
            names.push(name.to_string());
        }
    }
    assert!(!names.is_empty(), "no metrics under {heading}");
    names
}

/// Every documented metric of `section` is exposed, with at least one sample.
fn assert_lists_every_documented_metric(section: &str, text: &str) {
    for name in documented_metrics(section) {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{section}: {name} is documented but not exposed:\n{text}"
        );
        let sampled = text.lines().any(|l| {
            !l.starts_with('#')
                && l.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
        });
        assert!(sampled, "{section}: {name} has no sample:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_worker_and_gateway_list_every_metric_the_operations_doc_names() {
    let env = TestEnv::start(env_opts(&[])).await.unwrap();
    let worker = env.worker_admin_url(0).await.unwrap();
    let (status, text) = env.get_text(&format!("{worker}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert_lists_every_documented_metric("Worker", &text);
    // The counters alerts are written against read 0, not nothing.
    for series in [
        r#"depot_relay_publishes_total{result="ok",source="outbox"}"#,
        r#"depot_lease_expirations_total{result="requeued"}"#,
        r#"depot_syncs_finished_total{direction="pull",status="failed"}"#,
    ] {
        assert_eq!(
            depot_e2e::ops::sample(&text, series),
            Some(0.0),
            "{series}: {text}"
        );
    }
    // The gateway's first scrape: before it, only /healthz polls were made.
    let (status, text) = env.get_text(&env.url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert_lists_every_documented_metric("Gateway", &text);
    let series = r#"depot_http_requests_total{method="POST",route="/v1/{org}/{repo}/upstream/syncs",status="500"}"#;
    assert_eq!(depot_e2e::ops::sample(&text, series), Some(0.0), "{text}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_log_files_carry_no_colour_codes_and_name_route_and_status_once() {
    let env = TestEnv::start(env_opts(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let pretty = [("DEPOT__TELEMETRY__FORMAT", "pretty")];
    let worker = env.start_extra_worker("worker-pretty", &pretty).unwrap();
    let log = worker.log.clone();
    eventually(
        Duration::from_secs(30),
        "the readable worker to consume",
        || {
            let log = log.clone();
            async move {
                Ok(std::fs::read_to_string(&log)?
                    .contains("consuming sync jobs")
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // A readable gateway on a port of ours (its port is otherwise read from
    // a JSON line), stdout a file as under `make run`.
    let port = free_port();
    let log = env.dir.path().join("gateway-readable.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut gateway = Command::new(bin("depot-gateway").unwrap())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env.env)
        .env("DEPOT__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .env("DEPOT__TELEMETRY__FORMAT", "pretty")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = env.http.clone();
    eventually(Duration::from_secs(30), "the readable gateway", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let status = http
                .get(format!("{base}/v1/{ORG}/repos"))
                .bearer_auth("depot_wrong")
                .send()
                .await?
                .status();
            Ok((status == 401).then_some(()))
        }
    })
    .await
    .unwrap();
    let ok = http
        .get(format!("{base}/v1/{ORG}/repos"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let text = eventually(Duration::from_secs(10), "the 200 request line", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.contains("status=200").then_some(text))
        }
    })
    .await
    .unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    for (name, text) in [("gateway", &text), ("worker", &worker.log_text())] {
        assert!(
            !text.contains('\u{1b}'),
            "{name} log holds escape codes:\n{text}"
        );
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request finished"))
        .collect();
    // `grep status=401` finds the refused request.
    let unauthorized = lines
        .iter()
        .find(|l| l.contains("status=401"))
        .unwrap_or_else(|| panic!("no status=401 request line:\n{text}"));
    assert!(
        unauthorized.contains(r#"route="/v1/{org}/repos""#),
        "{unauthorized}"
    );
    for line in &lines {
        assert_eq!(line.matches("status=").count(), 1, "{line}");
        assert_eq!(line.matches("route=").count(), 1, "{line}");
        assert_eq!(line.matches("latency_ms=").count(), 1, "{line}");
    }
    env.cleanup().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_sync_shows_its_last_attempt_error_and_next_attempt_at() {
    // Backoff long enough to look at the sync between attempts.
    let env = TestEnv::start(env_opts(&[
        ("DEPOT__WORKER__MAX_ATTEMPTS", "4"),
        ("DEPOT__WORKER__RETRY_BASE_MS", "3000"),
        ("DEPOT__WORKER__RETRY_MAX_MS", "3000"),
    ]))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let up = Upstream::start("flaky").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    create_repo(&env, &key, "flaky", &up, None).await.unwrap();
    up.server.set_fault(Some(503));

    let flaky = format!("{ORG}/flaky");
    let (status, created) = env.post_sync(&key, &flaky, Pull).await;
    assert_eq!(status, 201, "{created}");
    assert!(created["last_attempt_error"].is_null(), "{created}");
    assert!(created["next_attempt_at"].is_null(), "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let waiting = eventually(SYNC_LIMIT, "the first attempt to fail", || async {
        let (_, s) = env.get_sync(&key, &flaky, &id).await;
        Ok((s["status"] == "queued" && s["attempt"] == 1).then_some(s))
    })
    .await
    .unwrap();
    // Mesa's shape of a queued sync is kept…
    assert!(waiting["error"].is_null(), "{waiting}");
    assert!(waiting["started_at"].is_null(), "{waiting}");
    assert!(waiting["stats"].is_null(), "{waiting}");
    // …and the extension fields say what it waits for.
    let last = waiting["last_attempt_error"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("upstream_unavailable: http 503"),
        "{waiting}"
    );
    let next = waiting["next_attempt_at"].as_str().unwrap_or_default();
    let created_at = waiting["created_at"].as_str().unwrap();
    assert!(
        next.len() == created_at.len() && next > created_at,
        "{waiting}"
    );
    // The list and the repository's latest_sync show the same.
    let (_, list) = env.list_syncs(&key, &flaky).await;
    assert_eq!(list["syncs"][0]["id"], id.as_str());
    assert!(list["syncs"][0]["last_attempt_error"].is_string(), "{list}");
    let (_, repo) = env.get_repo(&key, &flaky).await;
    let latest = &repo["upstream"]["latest_sync"];
    if latest["status"] == "queued" {
        assert!(latest["last_attempt_error"].is_string(), "{repo}");
    }

    up.server.set_fault(None);
    let done = env
        .wait_for_sync(&key, ORG, "flaky", &id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["error"].is_null(), "{done}");
    assert!(done["next_attempt_at"].is_null(), "{done}");
    assert!(
        done["last_attempt_error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("upstream_unavailable"),
        "the earlier attempt's failure stays on record: {done}"
    );
    let (status, body) = env.get_sync(&key, &flaky, &id).await;
    assert_eq!(status, 200, "{body}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_nothing_running_stops_without_waiting_for_syncs() {
    let mut env = TestEnv::start(env_opts(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let worker = &mut env.workers[0];
    let code = worker.terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0));
    let lines = json_lines(&worker.log_text());
    assert!(
        lines.iter().any(|v| v["message"] == "worker stopped"),
        "{lines:?}"
    );
    let waited: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "waiting for running syncs")
        .collect();
    assert!(
        waited.is_empty(),
        "finished runs counted as running: {waited:?}"
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depot_admin_against_a_missing_database_names_its_configuration_and_the_way_to_choose() {
    let out = Command::new(bin("depot-admin").unwrap())
        .args(["org", "create", "acme"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DEPOT__DATABASE__URL",
            "postgres://postgres@127.0.0.1:5432/depot_first_hour_missing",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        stderr.contains("configuration used: built-in defaults"),
        "{stderr}"
    );
    assert!(stderr.contains("DEPOT__DATABASE__"), "{stderr}");
    assert!(stderr.contains("--config deploy/dev.toml"), "{stderr}");
    assert!(stderr.contains("make admin"), "{stderr}");

    let out = Command::new(bin("depot-admin").unwrap())
        .args(["--config", "deploy/dev.toml", "org", "create", "acme"])
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DEPOT__DATABASE__URL",
            "postgres://postgres@127.0.0.1:5432/depot_first_hour_missing",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config file deploy/dev.toml (--config)"),
        "{stderr}"
    );
}

/// One `make run` instance of a test: its own data directory, database,
/// broker namespace and ports.
struct DevRun {
    data: tempfile::TempDir,
    db: String,
    namespace: String,
    gateway: String,
    metrics: String,
    upstream: String,
}

impl DevRun {
    fn new() -> DevRun {
        let suffix = format!("{:016x}", rand::random::<u64>());
        DevRun {
            data: tempfile::tempdir().unwrap(),
            db: format!("depot_test_run_{suffix}"),
            namespace: format!("test-run-{suffix}"),
            gateway: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
            upstream: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(repo_root().join("scripts").join(name));
        cmd.env("RUN_DATA_DIR", self.data.path())
            .env("RUN_GATEWAY", &self.gateway)
            .env("RUN_METRICS", &self.metrics)
            .env("RUN_UPSTREAM", &self.upstream)
            .env("RUN_BIN_DIR", bin_dir())
            .env("RUN_NO_BUILD", "1")
            .env("RUN_DETACH", "1")
            .env(
                "DEPOT__DATABASE__URL",
                format!("postgres://postgres@127.0.0.1:5432/{}", self.db),
            )
            .env("DEPOT__AMQP__NAMESPACE", &self.namespace)
            // `make reset` would drop the databases of every test running.
            .env("RESET_TEST_DBS", "0")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Run a script; its stdout, or a failure with both streams.
    fn run(&self, name: &str) -> String {
        let out = self.script(name).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        let _ = self.script("stop-dev.sh").output();
        let (db, namespace) = (self.db.clone(), self.namespace.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                    if let Ok(broker) = depot_broker::Broker::connect(depot_broker::BrokerOptions {
                        url: AMQP_URL.into(),
                        namespace,
                        timeout: Duration::from_secs(10),
                        delivery_limit: 10,
                        connection_name: "depot-e2e-cleanup".into(),
                    })
                    .await
                    {
                        let _ = broker.delete_topology().await;
                        broker.close().await;
                    }
                })
        })
        .join();
    }
}

/// The printed line that starts with `prefix` (after indentation).
fn printed<'a>(banner: &'a str, prefix: &str) -> &'a str {
    banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{banner}"))
}

/// Run a printed command as a user pasting it into bash would.
fn paste(command: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", command])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll_until_done(poll: &str) -> Value {
    let deadline = std::time::Instant::now() + SYNC_LIMIT;
    loop {
        let body: Value = serde_json::from_str(&paste(poll)).unwrap();
        if matches!(body["status"].as_str(), Some("completed" | "failed")) {
            return body;
        }
        assert!(body["id"].is_string(), "{poll}: {body}");
        assert!(std::time::Instant::now() < deadline, "{poll}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_run_twice_reuses_the_demo_and_its_printed_commands_work_each_time() {
    let run = DevRun::new();
    let first = run.run("run-dev.sh");
    let key = printed(&first, "depot_").to_string();
    assert!(first.contains("created now"), "{first}");
    let poll = printed(
        &first,
        &format!(
            "curl -sS http://{}/v1/demo/hello/upstream/syncs/sync_",
            run.gateway
        ),
    );
    let done = poll_until_done(poll);
    assert_eq!(done["status"], "completed", "{done}");
    run.run("stop-dev.sh");

    let second = run.run("run-dev.sh");
    assert_eq!(
        printed(&second, "depot_"),
        key,
        "a valid saved key is reused, not replaced:\n{second}"
    );
    assert!(second.contains("kept from an earlier run"), "{second}");
    let poll2 = printed(
        &second,
        &format!(
            "curl -sS http://{}/v1/demo/hello/upstream/syncs/sync_",
            run.gateway
        ),
    );
    assert_ne!(poll2, poll, "the poll names the new run's sync");
    let done = poll_until_done(poll2);
    assert_eq!(done["status"], "completed", "{done}");
    // The capture one-liner and the poll after it, pasted as printed.
    let capture = printed(&second, "id=$(curl");
    let follow = printed(
        &second,
        &format!(
            "curl -sS http://{}/v1/demo/hello/upstream/syncs/$id",
            run.gateway
        ),
    );
    let out = paste(&format!("{capture}\n{follow}"));
    let mut lines = out.lines();
    let id = lines.next().unwrap();
    assert!(id.starts_with("sync_"), "{out}");
    let polled: Value = serde_json::from_str(lines.collect::<String>().as_str()).unwrap();
    assert_eq!(polled["id"], id, "{out}");

    // The first run's logs are kept beside the second's, all plain text.
    let logs = run.data.path().join("logs");
    for name in ["gateway", "worker", "upstream"] {
        for file in [format!("{name}.log"), format!("{name}.log.1")] {
            let text =
                std::fs::read_to_string(logs.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!text.contains('\u{1b}'), "{file} holds escape codes");
        }
    }
    let old = std::fs::read_to_string(logs.join("gateway.log.1")).unwrap();
    assert!(
        old.contains("status=201"),
        "the first run's requests: {old}"
    );
    run.run("stop-dev.sh");

    // `make reset` (not a terminal: no question) drops the database and the data.
    let out = run.run("reset-dev.sh");
    assert!(out.contains("dropping database"), "{out}");
    assert!(!run.data.path().exists(), "{out}");
    let (client, conn) = tokio_postgres::connect(PG_ADMIN_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let left = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&run.db])
        .await
        .unwrap();
    assert!(left.is_none(), "database {} survived the reset", run.db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_reset_refuses_while_the_demo_runs() {
    let run = DevRun::new();
    run.run("run-dev.sh");
    let out = run.script("reset-dev.sh").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("make stop"), "{stderr}");
    assert!(run.data.path().join("logs").exists());
}

#[test]
fn the_link_check_passes_on_the_docs_and_names_a_dangling_reference() {
    let script = repo_root().join("scripts/check-links.sh");
    let ok = Command::new(&script).stdin(Stdio::null()).output().unwrap();
    assert!(
        ok.status.success(),
        "README.md or docs/ name missing files:\n{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "See [the design](DESIGN.md), `docs/api.md` and API.md.\n\
         ```\nfenced `NOT_CHECKED.md`\n```\n[fine](page.md) and `refs/heads/*`.\n",
    )
    .unwrap();
    let bad = Command::new(&script)
        .arg(&page)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("page.md:1: link to missing file DESIGN.md"),
        "{out}"
    );
    assert!(
        out.contains("page.md:1: names missing file API.md"),
        "{out}"
    );
    assert!(!out.contains("docs/api.md"), "{out}");
    assert!(!out.contains("NOT_CHECKED"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brace_alternation_in_ref_globs_is_refused_with_commas_as_the_way() {
    // A validation answer: the HTTP API is enough (the in-process tier).
    let env = TestEnv::start(EnvOptions::api_only()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let up = Upstream::start("project").unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let (status, body) = env
        .post_sync_globs(
            &key,
            &format!("{ORG}/mirror"),
            Pull,
            json!({"branches": "{a,b}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["details"]["field"], "ref_globs.branches",
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("alternation is not supported"),
        "{message}"
    );
    assert!(
        message.contains("separate patterns with commas"),
        "{message}"
    );
    assert!(!message.contains("maybe escape"), "{message}");
    env.cleanup().await.unwrap();
}
