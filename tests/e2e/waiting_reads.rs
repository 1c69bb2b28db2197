//! Conditional and waiting reads of syncs (docs/api.md): a strong `ETag`
//! on sync GETs and lists, `If-None-Match` answered with a bodiless 304, and
//! `Prefer: wait=N` holding a matching request until the worker's status
//! write is pushed through `LISTEN/NOTIFY`, or N seconds pass, without
//! holding a pool connection while it waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::worker::{ORG, create_repo, post_sync};
use depot_e2e::{EnvOptions, TestEnv, Upstream, eventually};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

struct Answer {
    status: u16,
    etag: Option<String>,
    applied: Option<String>,
    body: String,
}

async fn get(env: &TestEnv, key: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = env.http.get(env.url(path)).bearer_auth(key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, etag, applied) = (
        res.status().as_u16(),
        header("etag"),
        header("preference-applied"),
    );
    Answer {
        status,
        etag,
        applied,
        body: res.text().await.unwrap(),
    }
}

fn upstream() -> Upstream {
    let upstream = Upstream::start("project").unwrap();
    upstream.work.commit("main", "first").unwrap();
    upstream.publish().unwrap();
    upstream
}

/// An environment without a worker (syncs stay queued until one starts),
/// a repo and a queued sync: (env, key, sync path, list path).
async fn queued_sync(extra_env: &[(&str, &str)]) -> (TestEnv, String, String, String, Upstream) {
    let upstream = upstream();
    let env = TestEnv::start(EnvOptions::with_env(extra_env, 0))
        .await
        .unwrap();
    let key = env.org_and_key(ORG, "write").unwrap();
    create_repo(&env, &key, "r", &upstream, None).await.unwrap();
    let sync = post_sync(&env, &key, "r", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap();
    let path = format!("/v1/{ORG}/r/upstream/syncs/{id}");
    let list = format!("/v1/{ORG}/r/upstream/syncs");
    (env, key, path, list, upstream)
}

/// Until the gateway holds `n` waiting requests.
async fn waiting(env: &TestEnv, n: f64) {
    eventually(
        Duration::from_secs(10),
        "the gateway to hold the GET",
        || async {
            let (_, text) = env.get_text(&env.url("/metrics")).await?;
            Ok(
                (depot_e2e::ops::sample(&text, "depot_gateway_waiting_requests") == Some(n))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_get_has_a_strong_etag_and_a_matching_if_none_match_gets_a_bodiless_304() {
    let (env, key, path, _, _upstream) = queued_sync(&[]).await;
    let first = get(&env, &key, &path, &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.etag.expect("ETag");
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    assert_eq!(
        get(&env, &key, &path, &[]).await.etag.as_deref(),
        Some(etag.as_str())
    );
    let again = get(&env, &key, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert_eq!(again.body, "");
    assert_eq!(again.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(again.applied, None);
    let other = get(&env, &key, &path, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(other.status, 200);
    serde_json::from_str::<Value>(&other.body).unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_list_has_an_etag_that_changes_with_a_new_sync() {
    let (env, key, _, list, _upstream) = queued_sync(&[]).await;
    let first = get(&env, &key, &list, &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.etag.expect("ETag");
    let same = get(&env, &key, &list, &[("if-none-match", &etag)]).await;
    assert_eq!((same.status, same.body.as_str()), (304, ""));
    post_sync(&env, &key, "r", json!({"direction": "push"}))
        .await
        .unwrap();
    let changed = get(&env, &key, &list, &[("if-none-match", &etag)]).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.etag.as_deref(), Some(etag.as_str()));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_get_is_answered_when_the_worker_changes_the_sync() {
    let (mut env, key, path, _, _upstream) = queued_sync(&[]).await;
    let etag = get(&env, &key, &path, &[]).await.etag.unwrap();
    let held = {
        let req = env
            .http
            .get(env.url(&path))
            .bearer_auth(&key)
            .header("if-none-match", &etag)
            .header("prefer", "wait=30");
        tokio::spawn(async move {
            let started = Instant::now();
            let res = req.send().await.unwrap();
            let applied = res
                .headers()
                .get("preference-applied")
                .map(|v| v.to_str().unwrap().to_string());
            let status = res.status().as_u16();
            (
                status,
                applied,
                res.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    waiting(&env, 1.0).await;
    env.start_worker().unwrap();
    let (status, applied, body, elapsed) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("answered within the wait")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied.as_deref(), Some("wait=30"));
    assert_ne!(body["status"], "queued", "{body}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_list_is_answered_when_a_sync_is_added() {
    let (env, key, _, list, _upstream) = queued_sync(&[]).await;
    let etag = get(&env, &key, &list, &[]).await.etag.unwrap();
    let held = {
        let req = env
            .http
            .get(env.url(&list))
            .bearer_auth(&key)
            .header("if-none-match", &etag)
            .header("prefer", "wait=30");
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    waiting(&env, 1.0).await;
    post_sync(&env, &key, "r", json!({"direction": "push"}))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("answered within the wait")
        .unwrap();
    assert_eq!(status, 200);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_get_without_change_times_out_with_a_304() {
    let (env, key, path, _, _upstream) = queued_sync(&[]).await;
    let etag = get(&env, &key, &path, &[]).await.etag.unwrap();
    let started = Instant::now();
    let answer = get(
        &env,
        &key,
        &path,
        &[("if-none-match", &etag), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(answer.status, 304);
    assert_eq!(answer.body, "");
    assert_eq!(answer.applied.as_deref(), Some("wait=1"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_get_holds_no_pool_connection() {
    let (env, key, path, list, _upstream) =
        queued_sync(&[("DEPOT__DATABASE__POOL_SIZE", "1")]).await;
    let etag = get(&env, &key, &path, &[]).await.etag.unwrap();
    let held = {
        let req = env
            .http
            .get(env.url(&path))
            .bearer_auth(&key)
            .header("if-none-match", &etag)
            .header("prefer", "wait=20");
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    waiting(&env, 1.0).await;
    // The pool's only connection is free: another request is answered while
    // the first one still waits.
    let started = Instant::now();
    let other = get(&env, &key, &list, &[]).await;
    assert_eq!(other.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!held.is_finished(), "the waiting GET was answered early");
    waiting(&env, 1.0).await;
    held.abort();
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_held_get_with_its_304_at_once_and_the_gateway_exits() {
    let (mut env, key, path, _, _upstream) = queued_sync(&[]).await;
    let etag = get(&env, &key, &path, &[]).await.etag.unwrap();
    let held = {
        let req = env
            .http
            .get(env.url(&path))
            .bearer_auth(&key)
            .header("if-none-match", &etag)
            .header("prefer", "wait=60");
        tokio::spawn(async move {
            let res = req.send().await.unwrap();
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let answer = (
                res.status().as_u16(),
                header("etag"),
                header("preference-applied"),
                header("connection"),
            );
            (answer, res.text().await.unwrap(), Instant::now())
        })
    };
    waiting(&env, 1.0).await;
    let gateway = env.gateway.as_mut().expect("the gateway binary");
    let pid = nix::unistd::Pid::from_raw(gateway.pid().unwrap());
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let ((status, tag, applied, connection), body, answered) =
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("the held GET answered within 5 s of SIGTERM")
            .unwrap();
    assert_eq!(status, 304);
    assert_eq!(body, "");
    assert_eq!(tag.as_deref(), Some(etag.as_str()));
    assert_eq!(applied.as_deref(), Some("wait=60"));
    assert_eq!(connection.as_deref(), Some("close"));
    assert!(
        answered - signalled < Duration::from_secs(2),
        "{:?}",
        answered - signalled
    );
    // `terminate` signals again (harmless) and waits for the exit.
    let code = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    env.cleanup().await.unwrap();
}
