//! Operations, end to end with the real binaries: one trace from the POST to
//! the worker's run (and exported over OTLP), Prometheus metrics and probes
//! on the gateway and the worker's admin port, credentials that never reach
//! anything the processes write, a scale-out run with two gateways and three
//! workers, and the deployment manifests under `deploy/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::ops::{OtlpSink, admin_url, json_lines, sample, sum_samples};
use depot_e2e::{
    CREDENTIAL_KEY, EnvOptions, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream, eventually,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SYNCS_ROUTE: &str = "/v1/{org}/{repo}/upstream/syncs";

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

async fn create_repo(env: &TestEnv, key: &str, name: &str, upstream: Value) -> Value {
    let (status, repo) = env
        .post_repo(key, "acme", &json!({ "name": name, "upstream": upstream }))
        .await;
    assert_eq!(status, 201, "{repo}");
    repo
}

fn basic_upstream(upstream: &Upstream, password: &str) -> Value {
    json!({
        "url": upstream.url(),
        "auth": { "kind": "username_password", "username": UPSTREAM_USER, "password": password }
    })
}

async fn post_sync(env: &TestEnv, key: &str, repo: &str, direction: &str) -> Value {
    let (status, sync) = env
        .post_sync_body(
            key,
            &format!("acme/{repo}"),
            &json!({ "direction": direction }),
        )
        .await;
    assert_eq!(status, 201, "{sync}");
    sync
}

/// The first JSON log line with `message` whose span (or event) field
/// `sync_id` is `sync_id`.
fn line_for_sync<'a>(lines: &'a [Value], message: &str, sync_id: &str) -> Option<&'a Value> {
    lines.iter().find(|v| {
        v["message"] == message && (v["span"]["sync_id"] == sync_id || v["sync_id"] == sync_id)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_request_and_run_and_is_exported_over_otlp() {
    let sink = OtlpSink::start().await.unwrap();
    let upstream = Upstream::start("traced").unwrap();
    upstream.work.commit("main", "first").unwrap();
    upstream.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions {
        extra_env: vec![
            (
                "DEPOT__TELEMETRY__OTLP_ENDPOINT".into(),
                sink.endpoint.clone(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        workers: 1,
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_repo(
        &env,
        &key,
        "mirror",
        basic_upstream(&upstream, UPSTREAM_PASSWORD),
    )
    .await;

    // A caller's trace context and request id are continued and echoed.
    let trace_id = random_hex(16);
    let parent_span = random_hex(8);
    let res = env
        .http
        .post(env.url("/v1/acme/mirror/upstream/syncs"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{parent_span}-01"))
        .header("x-request-id", "ops-req-1")
        .json(&json!({"direction": "pull"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-request-id"], "ops-req-1");
    let sync: Value = res.json().await.unwrap();
    let sync_id = sync["id"].as_str().unwrap().to_string();
    let done = env
        .wait_for_sync(&key, "acme", "mirror", &sync_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");

    let gateway = json_lines(&env.gateway.as_ref().unwrap().log_text());
    let enqueued = line_for_sync(&gateway, "sync enqueued", &sync_id)
        .unwrap_or_else(|| panic!("no `sync enqueued` line: {gateway:?}"));
    assert_eq!(
        enqueued["span"]["trace_id"],
        trace_id.as_str(),
        "{enqueued}"
    );
    assert_eq!(enqueued["span"]["request_id"], "ops-req-1", "{enqueued}");
    let finished = gateway
        .iter()
        .find(|v| v["message"] == "request finished" && v["span"]["request_id"] == "ops-req-1")
        .expect("request finished line");
    assert_eq!(finished["span"]["route"], SYNCS_ROUTE, "{finished}");
    assert_eq!(finished["span"]["method"], "POST", "{finished}");
    assert_eq!(finished["status"], 201, "{finished}");
    assert!(finished["latency_ms"].is_number(), "{finished}");
    // The worker logs "sync run ended" after it has written the outcome the
    // API showed above: wait for the line rather than race it.
    let worker = eventually(Duration::from_secs(10), "the run ended line", || {
        let lines = json_lines(&env.workers[0].log_text());
        let found = line_for_sync(&lines, "sync run ended", &sync_id).is_some();
        async move { Ok(found.then_some(lines)) }
    })
    .await
    .unwrap();
    let started = line_for_sync(&worker, "sync run started", &sync_id).expect("run started");
    assert_eq!(started["span"]["trace_id"], trace_id.as_str(), "{started}");
    let ended = line_for_sync(&worker, "sync run ended", &sync_id).expect("run ended");
    assert_eq!(ended["span"]["status"], "completed", "{ended}");
    assert_eq!(ended["span"]["direction"], "pull", "{ended}");
    assert_eq!(ended["span"]["attempt"], 1, "{ended}");
    assert!(ended["span"]["updated"].as_u64().unwrap() >= 1, "{ended}");

    // Without a caller's context the gateway starts the trace, and the run
    // still joins it.
    let second = post_sync(&env, &key, "mirror", "pull").await;
    let second_id = second["id"].as_str().unwrap().to_string();
    env.wait_for_sync(&key, "acme", "mirror", &second_id, Duration::from_secs(60))
        .await
        .unwrap();
    let gateway = json_lines(&env.gateway.as_ref().unwrap().log_text());
    let own_trace =
        line_for_sync(&gateway, "sync enqueued", &second_id).unwrap()["span"]["trace_id"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(own_trace.len(), 32);
    assert_ne!(own_trace, trace_id);
    let worker = json_lines(&env.workers[0].log_text());
    let started = line_for_sync(&worker, "sync run started", &second_id).unwrap();
    assert_eq!(started["span"]["trace_id"], own_trace.as_str(), "{started}");

    // A 500 names the caller's trace. Dropping this test's own database
    // makes every request fail without touching anything shared.
    let client = env.db().await.unwrap();
    drop(client);
    {
        let (admin, conn) = tokio_postgres::connect(depot_e2e::PG_ADMIN_URL, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                env.db_name
            ))
            .await
            .unwrap();
    }
    let failing_trace = random_hex(16);
    let res = env
        .http
        .get(env.url("/v1/acme/mirror"))
        .bearer_auth(&key)
        .header(
            "traceparent",
            format!("00-{failing_trace}-{}-01", random_hex(8)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["trace_id"], failing_trace.as_str(), "{body}");

    // SIGTERM flushes what is still batched; everything reached the sink.
    env.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(40))
        .unwrap();
    env.workers[0].terminate(Duration::from_secs(40)).unwrap();
    let requests = sink.requests();
    assert!(!requests.is_empty(), "nothing exported over OTLP");
    assert!(
        requests.iter().all(|(path, _)| path == "/v1/traces"),
        "{:?}",
        requests.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    for id in [&trace_id, &own_trace, &failing_trace] {
        assert!(sink.received(&hex_bytes(id)), "trace {id} not exported");
    }
    for name in [
        &b"sync_run"[..],
        b"request",
        b"depot-gateway",
        b"depot-worker",
    ] {
        assert!(
            sink.received(name),
            "{} not exported",
            String::from_utf8_lossy(name)
        );
    }
    env.cleanup().await.unwrap();
}

/// A completed pull of `measured` (a branch and a tag) through the real
/// binaries: what the metrics tests count.
async fn measured_env() -> (Upstream, TestEnv, String, Value) {
    let upstream = Upstream::start("measured").unwrap();
    let main = upstream.work.commit("main", "first").unwrap();
    upstream.work.tag("v1", &main, false).unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_repo(
        &env,
        &key,
        "mirror",
        basic_upstream(&upstream, UPSTREAM_PASSWORD),
    )
    .await;
    let sync = post_sync(&env, &key, "mirror", "pull").await;
    (upstream, env, key, sync)
}

/// The real gateway and one worker, nothing recorded yet: the probes.
async fn probed_env() -> TestEnv {
    TestEnv::start(EnvOptions::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_counts_requests_by_route_template_and_status_with_latencies() {
    let (_upstream, env, key, _) = measured_env().await;
    let (status, _) = env.get_repo(&key, "acme/nope").await;
    assert_eq!(status, 404);

    // Gateway: requests by route template and status, with latencies.
    let (status, text) = env.get_text(&env.url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    let post = format!(r#"{{method="POST",route="{SYNCS_ROUTE}",status="201"}}"#);
    assert_eq!(
        sample(&text, &format!("depot_http_requests_total{post}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"depot_http_requests_total{method="GET",route="/v1/{org}/{repo}",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            &format!(
                r#"depot_http_request_duration_seconds_count{{method="POST",route="{SYNCS_ROUTE}"}}"#
            )
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert!(!text.contains("acme") && !text.contains("mirror"), "{text}");

    env.cleanup().await.unwrap();
}

/// A run that fails is counted under its failure code; other codes stay
/// listed at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_counts_failed_runs_by_failure_code() {
    let upstream = Upstream::start("measured").unwrap();
    upstream.work.commit("main", "first").unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    create_repo(&env, &key, "mirror", basic_upstream(&upstream, "wrong")).await;
    let sync = post_sync(&env, &key, "mirror", "pull").await;
    let done = env
        .wait_for_sync(
            &key,
            "acme",
            "mirror",
            sync["id"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(done["error"], "authentication_failed", "{done}");
    let admin = env.worker_admin_url(0).await.unwrap();
    let failed = r#"depot_sync_run_failures_total{code="authentication_failed",direction="pull"}"#;
    let text = eventually(Duration::from_secs(10), "the failure counted", || {
        let url = format!("{admin}/metrics");
        let env = &env;
        async move {
            let (status, text) = env.get_text(&url).await?;
            Ok((status == 200 && sample(&text, failed) == Some(1.0)).then_some(text))
        }
    })
    .await
    .unwrap();
    let other = r#"depot_sync_run_failures_total{code="timeout",direction="pull"}"#;
    assert_eq!(sample(&text, other), Some(0.0), "{text}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_counts_syncs_ref_outcomes_attempts_lag_backlog_and_traffic() {
    let (_upstream, env, key, sync) = measured_env().await;
    let sync_id = sync["id"].as_str().unwrap();
    let done = env
        .wait_for_sync(&key, "acme", "mirror", sync_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    // Worker: syncs, per-ref outcomes, durations, attempts, queue lag,
    // backlog gauges.
    let admin = env.worker_admin_url(0).await.unwrap();
    let text = eventually(Duration::from_secs(10), "worker metrics", || {
        let url = format!("{admin}/metrics");
        let env = &env;
        async move {
            let (status, text) = env.get_text(&url).await?;
            Ok((status == 200
                && sample(
                    &text,
                    r#"depot_syncs_finished_total{direction="pull",status="completed"}"#,
                ) == Some(1.0))
            .then_some(text))
        }
    })
    .await
    .unwrap();
    for (series, value) in [
        (
            r#"depot_sync_ref_outcomes_total{direction="pull",outcome="updated"}"#,
            2.0,
        ),
        (
            r#"depot_sync_runs_total{direction="pull",result="completed"}"#,
            1.0,
        ),
        (
            r#"depot_sync_run_duration_seconds_count{direction="pull",result="completed"}"#,
            1.0,
        ),
        (
            r#"depot_sync_attempts_total{direction="pull",kind="first"}"#,
            1.0,
        ),
        (
            r#"depot_sync_queue_lag_seconds_count{direction="pull"}"#,
            1.0,
        ),
        ("depot_outbox_backlog", 0.0),
        (r#"depot_queue_messages{queue="jobs"}"#, 0.0),
        (r#"depot_queue_messages{queue="dead"}"#, 0.0),
        (r#"depot_dependency_up{dependency="database"}"#, 1.0),
        (r#"depot_dependency_up{dependency="broker"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    assert!(text.contains("# TYPE depot_sync_run_duration_seconds histogram"));
    // The transport's traffic of that one pull.
    assert!(
        sample(
            &text,
            r#"depot_upstream_connections_total{direction="pull"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for flow in ["in", "out"] {
        let series = format!(r#"depot_upstream_bytes_total{{direction="pull",flow="{flow}"}}"#);
        assert!(
            sample(&text, &series).is_some_and(|n| n > 0.0),
            "{series}\n{text}"
        );
        let per_run =
            format!(r#"depot_upstream_run_bytes_count{{direction="pull",flow="{flow}"}}"#);
        assert_eq!(sample(&text, &per_run), Some(1.0), "{per_run}");
    }

    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_probes_answer_on_the_gateway_and_the_worker_admin_port() {
    let env = probed_env().await;
    let admin = env.worker_admin_url(0).await.unwrap();
    // Liveness holds from the first answer on.
    for url in [env.url("/healthz"), format!("{admin}/healthz")] {
        let (status, body) = env.get_text(&url).await.unwrap();
        assert_eq!(status, 200, "{url}: {body}");
    }
    // Readiness follows the connections, which both daemons open in the
    // background after they listen (a loaded machine takes a moment): wait
    // for it, and name the last answer if it never comes.
    for url in [env.url("/readyz"), format!("{admin}/readyz")] {
        let last = std::sync::Mutex::new(String::new());
        let ready = eventually(Duration::from_secs(20), "readiness", || async {
            let (status, body) = env.get_text(&url).await?;
            *last.lock().unwrap() = format!("{status} {body}");
            Ok((status == 200).then_some(()))
        })
        .await;
        assert!(ready.is_ok(), "{url}: {}", last.lock().unwrap());
    }
    let (status, _) = env.get_text(&format!("{admin}/nope")).await.unwrap();
    assert_eq!(status, 404);

    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_its_broker_is_alive_but_not_ready() {
    let env = probed_env().await;
    // A gateway whose broker is unreachable is alive but not ready.
    let mut lonely = env
        .start_extra_gateway(
            "gateway-no-broker",
            &[("DEPOT__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
        )
        .await
        .unwrap();
    let (status, _) = env
        .get_text(&format!("{}/healthz", lonely.base_url))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = env
        .get_text(&format!("{}/readyz", lonely.base_url))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"], json!({"database": true, "broker": false}));
    lonely.proc.kill9();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_its_broker_is_alive_but_not_ready() {
    let env = probed_env().await;
    let mut lonely_worker = env
        .start_extra_worker(
            "worker-no-broker",
            &[("DEPOT__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
        )
        .unwrap();
    let lonely_admin = admin_url(&lonely_worker).await.unwrap();
    let (status, _) = env
        .get_text(&format!("{lonely_admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = env
        .get_text(&format!("{lonely_admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"], json!({"database": true, "broker": false}));
    lonely_worker.kill9();

    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_gateway_and_worker_are_alive_but_not_ready() {
    let env = probed_env().await;
    let admin = env.worker_admin_url(0).await.unwrap();
    // Without Postgres (this test's database dropped), both are unready but
    // alive.
    let (admin_db, conn) = tokio_postgres::connect(depot_e2e::PG_ADMIN_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    admin_db
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            env.db_name
        ))
        .await
        .unwrap();
    for url in [env.url("/readyz"), format!("{admin}/readyz")] {
        let env = &env;
        eventually(Duration::from_secs(15), "readyz to fail", || {
            let url = url.clone();
            async move { Ok((env.get_text(&url).await?.0 == 503).then_some(())) }
        })
        .await
        .unwrap();
    }
    for url in [env.url("/healthz"), format!("{admin}/healthz")] {
        assert_eq!(env.get_text(&url).await.unwrap().0, 200, "{url}");
    }
    env.cleanup().await.unwrap();
}

/// Where `text` holds a URL with user info (`scheme://user:pass@`).
fn userinfo_url(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let after = &rest[i + 3..];
        let authority: String = after
            .chars()
            .take_while(|c| !matches!(c, '/' | ' ' | '"' | '\'' | '\n' | '\\' | '?' | '#'))
            .collect();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            let start = i.saturating_sub(20);
            return Some(rest[start..(i + 3 + authority.len()).min(rest.len())].to_string());
        }
        rest = after;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_spans_metrics_or_error_bodies() {
    let sink = OtlpSink::start().await.unwrap();
    let upstream = Upstream::start("guarded").unwrap();
    upstream.work.commit("main", "first").unwrap();
    upstream.publish().unwrap();
    let wrong_password = "wr0ng-pw-7c1d9e";
    let token = "tok-ops-5e6f7a8b9c";
    let url_password = "url-pw-3b4c5d";
    let mut env = TestEnv::start(EnvOptions {
        extra_env: vec![
            (
                "DEPOT__TELEMETRY__OTLP_ENDPOINT".into(),
                sink.endpoint.clone(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
            ("DEPOT__WORKER__MAX_ATTEMPTS".into(), "2".into()),
            // Everything the libraries log, too.
            ("DEPOT__TELEMETRY__FILTER".into(), "debug".into()),
        ],
        workers: 1,
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    let mut bodies = Vec::new();

    create_repo(
        &env,
        &key,
        "good",
        basic_upstream(&upstream, UPSTREAM_PASSWORD),
    )
    .await;
    create_repo(&env, &key, "bad", basic_upstream(&upstream, wrong_password)).await;
    create_repo(
        &env,
        &key,
        "tokened",
        json!({"url": upstream.url(), "auth": {"kind": "token", "token": token}}),
    )
    .await;
    // A URL carrying credentials is refused without echoing them.
    let with_userinfo = upstream
        .url()
        .replacen("://", &format!("://mallory:{url_password}@"), 1);
    let (status, body) = env
        .post_repo(
            &key,
            "acme",
            &json!({"name": "leaky", "upstream": {"url": with_userinfo}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    bodies.push(body.to_string());
    let (status, body) = env
        .patch_repo(
            &key,
            "acme/good",
            &json!({"upstream": {"url": with_userinfo}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    bodies.push(body.to_string());
    // Unknown and malformed keys.
    let bogus_key = format!("depot_{}", random_hex(20));
    let (status, body) = env.whoami(&bogus_key).await;
    assert_eq!(status, 401);
    bodies.push(body.to_string());

    let mut ids = Vec::new();
    for (repo, direction) in [
        ("good", "pull"),
        ("good", "push"),
        ("bad", "pull"),
        ("tokened", "pull"),
    ] {
        let sync = post_sync(&env, &key, repo, direction).await;
        ids.push((repo, sync["id"].as_str().unwrap().to_string()));
        if direction == "pull" && repo == "good" {
            let done = env
                .wait_for_sync(
                    &key,
                    "acme",
                    repo,
                    &ids.last().unwrap().1,
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            assert_eq!(done["status"], "completed", "{done}");
        }
    }
    for (repo, id) in &ids {
        let done = env
            .wait_for_sync(&key, "acme", repo, id, Duration::from_secs(90))
            .await
            .unwrap();
        if *repo != "good" {
            assert_eq!(done["status"], "failed", "{done}");
        }
        bodies.push(done.to_string());
        let (_, repo_body) = env.get_repo(&key, &format!("acme/{repo}")).await;
        bodies.push(repo_body.to_string());
    }
    let (_, gateway_metrics) = env.get_text(&env.url("/metrics")).await.unwrap();
    let admin = env.worker_admin_url(0).await.unwrap();
    let (_, worker_metrics) = env.get_text(&format!("{admin}/metrics")).await.unwrap();
    // Flush the spans, then look at everything the processes wrote.
    env.gateway
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(40))
        .unwrap();
    env.workers[0].terminate(Duration::from_secs(40)).unwrap();
    let logs = env.all_logs();
    assert!(
        logs.contains("sync run ended"),
        "the worker logged no runs: {logs}"
    );
    let exported: Vec<String> = sink
        .requests()
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(!exported.is_empty(), "nothing exported over OTLP");
    let written = [
        ("logs", logs),
        ("gateway metrics", gateway_metrics),
        ("worker metrics", worker_metrics),
        ("response bodies", bodies.join("\n")),
        ("exported spans", exported.join("\n")),
    ];
    let secrets = [
        UPSTREAM_PASSWORD,
        wrong_password,
        token,
        url_password,
        key.as_str(),
        bogus_key.as_str(),
        CREDENTIAL_KEY,
        "guest:guest",
    ];
    for (what, text) in &written {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{what} contain a credential ({secret})"
            );
        }
        if let Some(found) = userinfo_url(text) {
            panic!("{what} contain a URL with user info: {found}");
        }
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_two_gateways_three_workers_run_every_sync_exactly_once() {
    const REPOS: usize = 24;
    let upstream = Upstream::start("shared").unwrap();
    let main = upstream.work.commit("main", "first").unwrap();
    upstream.work.commit("main", "second").unwrap();
    upstream.work.tag("v1", &main, true).unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        extra_env: vec![("DEPOT__WORKER__CONCURRENCY".into(), "2".into())],
        workers: 3,
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let second = env.start_extra_gateway("gateway-2", &[]).await.unwrap();
    let key = env.org_and_key("acme", "read,write").unwrap();
    env.wait_for_workers_consuming().await.unwrap();
    let gateways = [env.base_url.clone(), second.base_url.clone()];

    // Repositories and syncs alternate between the two gateways.
    let mut syncs = Vec::new();
    for i in 0..REPOS {
        let base = &gateways[i % 2];
        let name = format!("repo-{i:02}");
        let res = env
            .http
            .post(format!("{base}/v1/acme/repos"))
            .bearer_auth(&key)
            .json(&json!({"name": name, "upstream": basic_upstream(&upstream, UPSTREAM_PASSWORD)}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let res = env
            .http
            .post(format!("{base}/v1/acme/{name}/upstream/syncs"))
            .bearer_auth(&key)
            .json(&json!({"direction": "pull"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let sync: Value = res.json().await.unwrap();
        syncs.push((name, sync["id"].as_str().unwrap().to_string()));
    }
    for (repo, id) in &syncs {
        let done = env
            .wait_for_sync(&key, "acme", repo, id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "{done}");
        let refs = done["stats"]["refs"].as_array().unwrap();
        assert_eq!(refs.len(), 2, "{done}");
    }

    // Each sync ran exactly once, and every worker took a share.
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    for w in &env.workers {
        let lines = json_lines(&w.log_text());
        let started: Vec<String> = lines
            .iter()
            .filter(|v| v["message"] == "sync run started")
            .map(|v| v["span"]["sync_id"].as_str().unwrap().to_string())
            .collect();
        per_worker.push(started.len());
        for id in started {
            *runs.entry(id).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), REPOS, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a sync ran twice: {runs:?}");
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "work did not spread over the workers: {per_worker:?}"
    );
    // The workers' counters add up to the batch.
    let mut completed = 0.0;
    for n in 0..env.workers.len() {
        let admin = env.worker_admin_url(n).await.unwrap();
        let (_, text) = env.get_text(&format!("{admin}/metrics")).await.unwrap();
        completed += sum_samples(
            &text,
            "depot_syncs_finished_total",
            &[r#"status="completed""#],
        );
    }
    assert_eq!(completed, REPOS as f64);
    // Both gateways served.
    let gateway_lines = json_lines(&second.proc.log_text());
    assert!(
        gateway_lines
            .iter()
            .any(|v| v["message"] == "sync enqueued")
    );
    drop(second);
    env.cleanup().await.unwrap();
}

// ---------------------------------------------------------------------------
// Deployment manifests: parsed and checked for what an ops team relies on.

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every YAML document of every file under `deploy/`, as JSON values.
fn load_all() -> Vec<(PathBuf, Value)> {
    use serde::Deserialize as _;
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let json =
                serde_json::to_value(&value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            docs.push((file.clone(), json));
        }
    }
    docs
}

fn k8s<'a>(docs: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/"))
}

/// The first container of a Deployment or Job.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn assert_hardened(what: &str, workload: &Value) {
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"], false,
        "{what}"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"], true,
        "{what}"
    );
    assert!(c["resources"]["requests"]["cpu"].is_string(), "{what}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
}

#[test]
fn every_kubernetes_object_is_well_formed() {
    let docs = load_all();
    // Every Kubernetes object is well formed.
    for (file, d) in &docs {
        if d.get("apiVersion").is_some() && d["kind"] != "Kustomization" {
            assert!(d["kind"].is_string(), "{}: {d}", file.display());
            assert!(d["metadata"]["name"].is_string(), "{}: {d}", file.display());
        }
    }
}

#[test]
fn the_kustomize_base_lists_every_manifest_beside_it_and_nothing_missing() {
    let docs = load_all();
    // The kustomize base lists every manifest file next to it, and each exists.
    let base = deploy_dir().join("k8s/base");
    let kustomization = docs
        .iter()
        .find(|(f, d)| f.starts_with(&base) && d["kind"] == "Kustomization")
        .map(|(_, d)| d)
        .expect("deploy/k8s/base/kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in &listed {
        assert!(base.join(r).is_file(), "kustomization lists missing {r}");
    }
    let mut here = Vec::new();
    yaml_files(&base, &mut here);
    for f in here {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "{name} not in the kustomization"
            );
        }
    }
}

#[test]
fn the_gateway_has_probes_a_service_a_cpu_autoscaler_and_time_to_drain() {
    let docs = load_all();
    // Gateway: Deployment with probes, Service, HPA on CPU, PDB.
    let gateway = k8s(&docs, "Deployment", "depot-gateway");
    let c = container(gateway);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_hardened("gateway", gateway);
    let gateway_grace = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    // actix drains in-flight requests for 30 s after SIGTERM.
    assert!(gateway_grace > 30, "gateway terminationGracePeriodSeconds");
    let service = k8s(&docs, "Service", "depot-gateway");
    assert_eq!(
        service["spec"]["selector"],
        gateway["spec"]["selector"]["matchLabels"]
    );
    let hpa = k8s(&docs, "HorizontalPodAutoscaler", "depot-gateway");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "depot-gateway");
    assert!(
        hpa["spec"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["resource"]["name"] == "cpu"),
        "{hpa}"
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
}

#[test]
fn the_worker_has_probes_a_pod_grace_beyond_its_own_and_keda_on_the_jobs_queue() {
    let docs = load_all();
    // Worker: Deployment with probes on its admin port, a termination grace
    // period longer than its own grace period, KEDA on the jobs queue.
    let worker = k8s(&docs, "Deployment", "depot-worker");
    let config = k8s(&docs, "ConfigMap", "depot-config");
    let c = container(worker);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_hardened("worker", worker);
    let worker_grace: u64 = config["data"]["DEPOT__WORKER__GRACE_SECONDS"]
        .as_str()
        .expect("the ConfigMap sets the worker's grace period")
        .parse()
        .unwrap();
    let pod_grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        pod_grace > worker_grace + 10,
        "terminationGracePeriodSeconds {pod_grace} must exceed worker.grace_seconds {worker_grace} plus the release time"
    );
    assert!(
        config["data"]["DEPOT__WORKER__METRICS_LISTEN"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0.0:"),
        "the worker's admin port must listen beyond loopback for probes"
    );
    assert_eq!(config["data"]["DEPOT__TELEMETRY__FORMAT"], "json");
    let scaled = k8s(&docs, "ScaledObject", "depot-worker");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "depot-worker");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    let namespace = config["data"]["DEPOT__AMQP__NAMESPACE"].as_str().unwrap();
    assert_eq!(
        trigger["metadata"]["queueName"],
        format!("{namespace}.sync.jobs").as_str()
    );
    assert!(trigger["authenticationRef"]["name"].is_string());
}

#[test]
fn gateway_and_worker_read_one_config_map_and_credentials_only_from_a_secret() {
    let docs = load_all();
    let gateway = k8s(&docs, "Deployment", "depot-gateway");
    let worker = k8s(&docs, "Deployment", "depot-worker");
    let config = k8s(&docs, "ConfigMap", "depot-config");
    // Both read the same settings; secrets come from a Secret.
    for w in [gateway, worker] {
        let c = container(w);
        let from: Vec<&Value> = c["envFrom"].as_array().unwrap().iter().collect();
        assert!(
            from.iter()
                .any(|e| e["configMapRef"]["name"] == "depot-config")
        );
        assert!(
            from.iter()
                .any(|e| e["secretRef"]["name"] == "depot-secrets")
        );
    }
    let secret = k8s(&docs, "Secret", "depot-secrets");
    for key in [
        "DEPOT__DATABASE__URL",
        "DEPOT__AMQP__URL",
        "DEPOT__SECRETS__CREDENTIAL_KEY",
    ] {
        assert!(
            secret["stringData"][key].is_string() || secret["data"][key].is_string(),
            "Secret lacks {key}"
        );
    }
    assert!(
        config["data"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("URL") && !k.contains("KEY")),
        "credentials belong in the Secret"
    );
}

#[test]
fn workers_mount_one_read_write_many_claim_at_the_storage_root() {
    let docs = load_all();
    let worker = k8s(&docs, "Deployment", "depot-worker");
    let config = k8s(&docs, "ConfigMap", "depot-config");
    // Shared repository storage: one ReadWriteMany claim mounted by the
    // workers at storage.root.
    let pvc = k8s(&docs, "PersistentVolumeClaim", "depot-repos");
    assert!(
        pvc["spec"]["accessModes"]
            .as_array()
            .unwrap()
            .contains(&json!("ReadWriteMany"))
    );
    let storage_root = config["data"]["DEPOT__STORAGE__ROOT"].as_str().unwrap();
    let volumes = worker["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let repo_volume = volumes
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == "depot-repos")
        .expect("worker mounts depot-repos");
    assert!(
        container(worker)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == repo_volume["name"] && m["mountPath"] == storage_root)
    );
}

#[test]
fn both_sides_have_a_disruption_budget() {
    let docs = load_all();
    // Disruption budgets for both sides.
    for name in ["depot-gateway", "depot-worker"] {
        let pdb = k8s(&docs, "PodDisruptionBudget", name);
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert!(
            pdb["spec"]["minAvailable"].is_number() || pdb["spec"]["maxUnavailable"].is_number()
        );
    }
}

#[test]
fn migrations_run_as_a_hardened_job() {
    let docs = load_all();
    // Migrations: a Job running `depot-admin migrate`.
    let migrate = k8s(&docs, "Job", "depot-migrate");
    let c = container(migrate);
    assert!(
        c["args"].as_array().unwrap().iter().any(|a| a == "migrate"),
        "{c}"
    );
    assert_hardened("migrate", migrate);
}

#[test]
fn compose_runs_the_whole_system_on_one_host() {
    let docs = load_all();
    // Compose: the whole system on one host.
    let (_, compose) = docs
        .iter()
        .find(|(f, _)| f.file_name().unwrap() == "compose.yaml")
        .expect("deploy/compose.yaml");
    let services = compose["services"].as_object().unwrap();
    for s in [
        "postgres",
        "rabbitmq",
        "otel-collector",
        "migrate",
        "gateway",
        "worker",
    ] {
        assert!(services.contains_key(s), "compose lacks {s}");
    }
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .contains("management")
    );
    assert_eq!(services["worker"]["deploy"]["replicas"], 2);
    assert_eq!(
        services["gateway"]["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        services["worker"]["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );
    assert!(
        services["worker"]["stop_grace_period"].is_string(),
        "the worker needs time to finish runs on stop"
    );
}

#[test]
fn dockerfiles_are_multi_stage_and_never_run_as_root() {
    // Dockerfiles: multi-stage, non-root runtime.
    for name in ["gateway", "worker"] {
        let path = deploy_dir().join(format!("docker/{name}.Dockerfile"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stages = text
            .lines()
            .filter(|l| l.trim_start().to_uppercase().starts_with("FROM "))
            .count();
        assert!(stages >= 2, "{name}: not multi-stage");
        let user = text
            .lines()
            .rev()
            .find(|l| l.trim_start().to_uppercase().starts_with("USER "))
            .unwrap_or_else(|| panic!("{name}: no USER"));
        let user = user.split_whitespace().nth(1).unwrap();
        assert!(user != "root" && user != "0", "{name} runs as root");
        assert!(text.contains(&format!("depot-{name}")), "{name}");
    }
}

/// Is `ip` inside `cidr` (`a.b.c.d/n` or an IPv6 `x::/n`)? Families differ:
/// no.
fn cidr_contains(cidr: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let net: IpAddr = net.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let (net, ip, bits) = match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => (u128::from(u32::from(n)), u128::from(u32::from(i)), 32),
        (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
        _ => return false,
    };
    let len: u32 = if len.is_empty() {
        bits
    } else {
        len.parse().unwrap()
    };
    assert!(len <= bits, "{cidr}");
    let shift = bits - len;
    let mask = if shift >= 128 {
        0
    } else {
        (u128::MAX << shift) & (u128::MAX >> (128 - bits))
    };
    net & mask == ip & mask
}

/// Could the rule's `ipBlock` peers reach `ip` (selectors aside)?
fn ip_blocks_admit(rule: &Value, ip: std::net::IpAddr) -> bool {
    rule["to"].as_array().unwrap().iter().any(|peer| {
        let block = &peer["ipBlock"];
        block.is_object()
            && cidr_contains(block["cidr"].as_str().unwrap(), ip)
            && !block["except"]
                .as_array()
                .map(|e| e.iter().any(|c| cidr_contains(c.as_str().unwrap(), ip)))
                .unwrap_or(false)
    })
}

fn rule_ports(rule: &Value) -> Vec<(String, u64)> {
    rule["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    (
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                        p["port"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The worker's egress NetworkPolicy: DNS, Postgres, RabbitMQ and the OTLP
/// collector on their ports, the public internet on any port, and never a
/// private, loopback, link-local or metadata address for upstream traffic
/// (the DNS-rebinding window the URL policy cannot close by itself).
#[test]
fn the_worker_egress_policy_admits_only_what_it_needs() {
    let docs = load_all();
    let policy = k8s(&docs, "NetworkPolicy", "depot-worker-egress");
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    let worker = k8s(&docs, "Deployment", "depot-worker");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        worker["spec"]["template"]["metadata"]["labels"],
        "the policy must select the worker pods"
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Egress"]));
    let rules = policy["spec"]["egress"].as_array().unwrap();
    for rule in rules {
        assert!(
            rule["to"].as_array().is_some_and(|t| !t.is_empty()),
            "a rule without `to` admits every destination: {rule}"
        );
    }
    let with_port = |proto: &str, port: u64| {
        rules
            .iter()
            .find(|r| rule_ports(r).contains(&(proto.to_string(), port)))
            .unwrap_or_else(|| panic!("no egress rule for {proto} {port}"))
    };
    let dns = with_port("UDP", 53);
    assert!(rule_ports(dns).contains(&("TCP".into(), 53)));
    assert_eq!(
        dns["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns",
        "DNS goes to the cluster resolver only"
    );
    for port in [5432, 5672] {
        with_port("TCP", port);
    }

    let metadata = ["169.254.169.254", "fd00:ec2::254", "fd20:ce::254"];
    let inside = [
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "127.0.0.1",
        "100.64.0.1",
        "169.254.10.1",
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "fec0::1",
        "2002:a00:5::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "::ffff:10.0.0.5",
    ];
    let unrestricted: Vec<&Value> = rules.iter().filter(|r| r["ports"].is_null()).collect();
    assert!(!unrestricted.is_empty(), "no internet egress rule");
    for rule in &unrestricted {
        for ip in metadata.iter().chain(&inside) {
            assert!(
                !ip_blocks_admit(rule, ip.parse().unwrap()),
                "upstream traffic may reach {ip}: {rule}"
            );
        }
        assert!(
            rule["to"]
                .as_array()
                .unwrap()
                .iter()
                .all(|peer| peer["ipBlock"].is_object()),
            "a rule on any port must not admit cluster pods by selector: {rule}"
        );
    }
    for public in [
        "140.82.112.3",
        "8.8.8.8",
        "2606:4700::1111",
        "64:ff9b::8c52:7003",
    ] {
        assert!(
            unrestricted
                .iter()
                .any(|r| ip_blocks_admit(r, public.parse().unwrap())),
            "the public address {public} must be reachable"
        );
    }
    // The metadata address is out of reach on every port, whatever the rule.
    for rule in rules {
        for ip in metadata.iter().take(1).chain(&["127.0.0.1"]) {
            assert!(
                !ip_blocks_admit(rule, ip.parse().unwrap()),
                "{ip} reachable: {rule}"
            );
        }
    }
}
