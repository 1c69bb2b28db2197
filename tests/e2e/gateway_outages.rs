//! The gateway when its dependencies fail: a broker that cannot be reached
//! while syncs are POSTed (the sync is accepted, and the relay in the worker
//! delivers it later), and a Postgres restart while requests flow (requests
//! fail fast with a 500 envelope carrying a trace id; the gateway recovers
//! by itself).
//!
//! `disruptive_*` tests restart a shared service; `scripts/test.sh` runs them
//! one at a time after everything else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::api::Req;
use depot_e2e::calls::Pull;
use depot_e2e::{
    AMQP_URL, EnvOptions, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream, eventually,
};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

async fn repo_with_upstream(env: &TestEnv, key: &str, upstream: &Upstream) {
    let (status, repo) = env
        .post_repo(
            key,
            "acme",
            &json!({
                "name": "mirror",
                "upstream": {
                    "url": upstream.url(),
                    "auth": {"kind": "username_password", "username": UPSTREAM_USER, "password": UPSTREAM_PASSWORD}
                }
            }),
        )
        .await;
    assert_eq!(status, 201, "{repo}");
}

fn upstream_with_history() -> Upstream {
    let upstream = Upstream::start("project").unwrap();
    let main = upstream.work.commit("main", "first").unwrap();
    upstream.work.tag("v1.0", &main, true).unwrap();
    upstream.publish().unwrap();
    upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_during_post_then_the_relay_delivers() {
    let upstream = upstream_with_history();
    // The gateway's broker URL points at a closed port; the worker, started
    // later, gets the real one.
    let mut env = TestEnv::start(EnvOptions {
        workers: 0,
        extra_env: vec![(
            "DEPOT__AMQP__URL".into(),
            "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        )],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "write").unwrap();
    repo_with_upstream(&env, &key, &upstream).await;

    // Every POST is accepted, promptly, while the broker is unreachable.
    let mut ids = Vec::new();
    for globs in [
        json!({"branches": "*"}),
        json!({"tags": "*"}),
        json!({"branches": "main", "tags": "v*"}),
    ] {
        let started = Instant::now();
        let (status, sync) = env.post_sync_globs(&key, "acme/mirror", Pull, globs).await;
        assert_eq!(status, 201, "{sync}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "POST took {:?}",
            started.elapsed()
        );
        ids.push(sync["id"].as_str().unwrap().to_string());
    }
    // Nothing was published: the outbox holds them all.
    let db = env.db().await.unwrap();
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 3);
    // The gateway says it is not ready (no broker) but keeps serving.
    let readyz = env
        .request_unchecked("GET", "/readyz", Req::default())
        .await
        .unwrap();
    assert_eq!(readyz.status, 503);
    assert_eq!(readyz.body["checks"]["broker"], false);

    // A worker with the real broker: its relay publishes the outbox rows and
    // every sync completes.
    env.env.insert("DEPOT__AMQP__URL".into(), AMQP_URL.into());
    env.start_worker().unwrap();
    for id in &ids {
        let done = env
            .wait_for_sync(&key, "acme", "mirror", id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
        // The finished sync, stats and all, matches the document too.
        let (status, got) = env.get_sync(&key, "acme/mirror", id).await;
        assert_eq!((status, got["attempt"].clone()), (200, json!(1)));
        assert!(got["stats"]["refs"].is_array(), "{got}");
    }
    let (status, repo) = env.get_repo(&key, "acme/mirror").await;
    assert_eq!(status, 200);
    assert_ne!(repo["head_change_id"], "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz");
    assert_eq!(repo["upstream"]["latest_sync"]["id"], ids[2].as_str());
    let (status, list) = env.list_syncs(&key, "acme/mirror").await;
    assert_eq!(status, 200);
    assert_eq!(list["syncs"].as_array().unwrap().len(), 3);
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
    assert!(env.all_logs().contains("relay published job"));
    assert!(!env.all_logs().contains(UPSTREAM_PASSWORD));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_right_after_a_burst_of_201s_every_sync_still_runs() {
    let upstream = upstream_with_history();
    let mut env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "write").unwrap();
    repo_with_upstream(&env, &key, &upstream).await;

    // Distinct globs, so none is a twin of another (409).
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let post = env
            .http
            .post(env.url("/v1/acme/mirror/upstream/syncs"))
            .bearer_auth(&key)
            .json(&json!({"direction": "pull", "ref_globs": {"branches": format!("b{i}*")}}));
        posts.spawn(async move {
            let res = post.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        });
    }
    let answers = posts.join_all().await;
    // SIGKILL at once: jobs the publisher had not confirmed yet are only in
    // the outbox.
    env.gateway.as_mut().unwrap().kill9();
    let mut ids = Vec::new();
    for (status, sync) in answers {
        assert_eq!(status, 201, "{sync}");
        ids.push(sync["id"].as_str().unwrap().to_string());
    }

    let db = env.db().await.unwrap();
    let finished = eventually(Duration::from_secs(90), "every accepted sync to run", || {
        let (db, ids) = (&db, &ids);
        async move {
            let rows = db
                .query(
                    "SELECT id, status FROM syncs WHERE id = ANY($1) AND status IN ('completed', 'failed')",
                    &[ids],
                )
                .await?;
            Ok((rows.len() == ids.len()).then_some(rows))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", env.all_logs()));
    for row in finished {
        assert_eq!(row.get::<_, &str>(1), "completed", "{}", env.all_logs());
    }
    env.cleanup().await.unwrap();
}

/// Starts Postgres again when dropped, whatever happened in between.
struct PostgresGuard;

impl PostgresGuard {
    fn stop() -> PostgresGuard {
        pg_ctl("stop");
        PostgresGuard
    }
}

fn pg_ctl(action: &str) {
    let mut cmd = Command::new("pg_ctlcluster");
    cmd.args(["--skip-systemctl-redirect", "15", "main", action]);
    if action == "stop" {
        cmd.args(["-m", "fast"]);
    }
    let status = cmd.status().expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

fn postgres_answers() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok()
}

impl Drop for PostgresGuard {
    fn drop(&mut self) {
        if !postgres_answers() {
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", "15", "main", "start"])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !postgres_answers() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_postgres_restart_while_requests_flow() {
    let upstream = upstream_with_history();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key("acme", "write").unwrap();
    repo_with_upstream(&env, &key, &upstream).await;
    let (status, _) = env.api("GET", "/v1/acme/mirror", Some(&key), None).await;
    assert_eq!(status, 200);

    let guard = PostgresGuard::stop();
    // While Postgres is down: every request fails fast, with the envelope
    // and a trace id, and without internal detail.
    let pull = json!({"direction": "pull"});
    for (method, path, body) in [
        ("GET", "/v1/acme/mirror", None),
        ("GET", "/v1/whoami", None),
        ("GET", "/v1/acme/mirror/upstream/syncs", None),
        ("POST", "/v1/acme/mirror/upstream/syncs", Some(&pull)),
    ] {
        for _ in 0..3 {
            let started = Instant::now();
            let (status, body) = env.api(method, path, Some(&key), body).await;
            let took = started.elapsed();
            assert_eq!(status, 500, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
            assert!(
                body["error"]["trace_id"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty()),
                "{body}"
            );
            let text = body.to_string().to_lowercase();
            assert!(
                !text.contains("postgres") && !text.contains("connection"),
                "{body}"
            );
            assert!(
                took < Duration::from_secs(5),
                "{method} {path} took {took:?}"
            );
        }
    }
    // The process keeps serving what needs no database.
    let (status, _) = env.api("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);

    // Postgres comes back: the same gateway process serves again.
    pg_ctl("start");
    drop(guard);
    let (status, _) = eventually(
        Duration::from_secs(30),
        "the gateway to recover",
        || async {
            let (status, body) = env.call("GET", "/v1/acme/mirror", Some(&key), None).await?;
            Ok((status == 200).then_some((status, body)))
        },
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, sync) = env
        .api(
            "POST",
            "/v1/acme/mirror/upstream/syncs",
            Some(&key),
            Some(&pull),
        )
        .await;
    assert_eq!(status, 201, "{sync}");
    let done = env
        .wait_for_sync(
            &key,
            "acme",
            "mirror",
            sync["id"].as_str().unwrap(),
            Duration::from_secs(90),
        )
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let _: Option<Value> = None;
    env.cleanup().await.unwrap();
}
