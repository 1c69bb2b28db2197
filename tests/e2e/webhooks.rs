//! Webhook targets and deliveries end to end: the real gateway and worker,
//! Postgres, RabbitMQ and a receiver on loopback. Every delivery the tests
//! rely on is verified by Mesa's own SDK (`mesa_sdk.Webhooks.receive`,
//! tests/python/webhook_verify.py), never by our signing code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::api::assert_error;
use depot_e2e::python::run_script;
use depot_e2e::worker::{ORG, SYNC_LIMIT, create_repo, post_sync, sync_and_wait};
use depot_e2e::{EnvOptions, TestEnv, Upstream, eventually};
use depot_testkit::{Received, WebhookReceiver};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
/// How many events this service emits (all of them, when `events` is omitted).
const SUPPORTED_EVENTS: usize = 7;

/// Short retries, so tests see several attempts in seconds.
fn webhook_env(extra: &[(&str, &str)]) -> EnvOptions {
    let mut extra_env: Vec<(String, String)> = [
        ("DEPOT__WEBHOOKS__RETRY_BASE_MS", "200"),
        ("DEPOT__WEBHOOKS__RETRY_MAX_MS", "800"),
        ("DEPOT__WEBHOOKS__TIMEOUT_MS", "2000"),
        ("DEPOT__WEBHOOKS__MAX_ATTEMPTS", "8"),
        ("DEPOT__WEBHOOKS__REPO_URL_BASE", "https://git.example.test"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    extra_env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    EnvOptions {
        extra_env,
        ..EnvOptions::default()
    }
}

/// The same settings, no worker and the gateway in-process: for the target
/// operations and their validation, which need the HTTP API only (nothing
/// is delivered).
fn webhook_api_tier() -> EnvOptions {
    EnvOptions {
        extra_env: webhook_env(&[]).extra_env,
        ..EnvOptions::api_only()
    }
}

/// Create a target; returns `(id, secret)`.
async fn create_target(env: &TestEnv, key: &str, body: Value) -> (String, String) {
    // Typed calls go through `api`: the answer is checked against
    // proto-schemas/openapi.yaml.
    let (status, t) = env.post_target(key, ORG, &body).await;
    assert_eq!(status, 201, "{t}");
    (
        t["id"].as_str().unwrap().to_string(),
        t["secret"].as_str().unwrap().to_string(),
    )
}

/// Verify deliveries with Mesa's SDK; returns the validated events, and
/// fails the test on any the SDK refuses.
async fn verified(secret: &str, received: &[Received]) -> Vec<Value> {
    verified_each(&[(secret, received)]).await.remove(0)
}

/// [`verified`] for several lists at once, each with its own secret: one
/// run of the script (starting Python and importing the SDK is most of a
/// run, seconds on a loaded machine).
async fn verified_each(lists: &[(&str, &[Received])]) -> Vec<Vec<Value>> {
    let items: Vec<Value> = lists
        .iter()
        .flat_map(|(secret, received)| {
            received
                .iter()
                .map(move |r| json!({"secret": secret, "body": r.body, "headers": r.headers}))
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&items).unwrap()).unwrap();
    let out = run_script(
        "webhook_verify.py",
        &[("WEBHOOK_DELIVERIES", file.path().display().to_string())],
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let results: Vec<Value> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(results.len(), items.len(), "one result per delivery");
    let mut events = results.into_iter().map(|r| {
        assert_eq!(r["ok"], true, "mesa_sdk refused a delivery: {r}");
        r["event"].clone()
    });
    lists
        .iter()
        .map(|(_, received)| events.by_ref().take(received.len()).collect())
        .collect()
}

/// Wait until the receiver has answered 2xx to `n` requests.
async fn accepted(receiver: &WebhookReceiver, n: usize) -> Vec<Received> {
    eventually(
        DELIVERY_LIMIT,
        &format!("{n} accepted deliveries"),
        || async {
            let ok: Vec<Received> = receiver
                .received()
                .into_iter()
                .filter(|r| (200..300).contains(&r.answered))
                .collect();
            Ok((ok.len() >= n).then_some(ok))
        },
    )
    .await
    .unwrap()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

fn of_sync<'a>(events: &'a [Value], sync_id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["data"]["sync"]["id"] == sync_id)
        .collect()
}

async fn deliveries(env: &TestEnv, key: &str, target: &str) -> Vec<Value> {
    let (status, body) = env.list_deliveries(key, ORG, target, 100).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_pull_and_a_repo_lifecycle_arrive_in_order_and_verify_with_mesa_sdk() {
    let upstream = Upstream::start("hooks").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let (_target, secret) =
        create_target(&env, &key, json!({"url": receiver.url(), "name": "ci"})).await;

    let repo_id = create_repo(&env, &key, "mirror", &upstream, None)
        .await
        .unwrap();
    let sync = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(sync["status"], "completed", "{sync}");
    let sync_id = sync["id"].as_str().unwrap();
    accepted(&receiver, 4).await;
    let (status, _) = env
        .patch_repo(
            &key,
            &format!("{ORG}/mirror"),
            &json!({"name": "renamed", "tags": {"team": "infra"}}),
        )
        .await;
    assert_eq!(status, 200);
    accepted(&receiver, 5).await;
    let (status, _) = env.delete_repo(&key, &format!("{ORG}/renamed")).await;
    assert_eq!(status, 200);
    let received = accepted(&receiver, 6).await;
    let events = verified(&secret, &received).await;

    let sync_events = of_sync(&events, sync_id);
    let sync_types: Vec<&str> = sync_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        sync_types,
        ["sync.queued", "sync.in_progress", "sync.completed"]
    );
    let completed = sync_events[2];
    assert_eq!(completed["data"]["sync"]["status"], "completed");
    assert!(completed["data"]["sync"]["stats"]["refs"].is_array());
    assert_eq!(completed["organization"]["slug"], ORG);
    assert_eq!(completed["repository"]["id"], repo_id.as_str());
    assert_eq!(
        completed["repository"]["url"],
        format!("https://git.example.test/{ORG}/mirror.git")
    );
    let repo_types: Vec<String> = types(&events)
        .into_iter()
        .filter(|t| t.starts_with("repo."))
        .collect();
    assert_eq!(repo_types, ["repo.created", "repo.updated", "repo.deleted"]);
    let updated = events.iter().find(|e| e["type"] == "repo.updated").unwrap();
    assert_eq!(updated["data"]["before"]["name"], "mirror");
    assert_eq!(updated["data"]["after"]["name"], "renamed");
    assert_eq!(updated["data"]["after"]["tags"], json!({"team": "infra"}));
    // Every event once, with its own id.
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "{events:?}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_each_event_once_in_order() {
    let upstream = Upstream::start("hooks-retry").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    create_repo(&env, &key, "mirror", &upstream, None)
        .await
        .unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    receiver.script(&[500, 500, 500]);
    let (target, secret) = create_target(
        &env,
        &key,
        json!({"url": receiver.url(), "events": ["sync.queued", "sync.in_progress", "sync.completed"]}),
    )
    .await;
    let sync = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let received = accepted(&receiver, 3).await;
    let all = receiver.received();
    let [events, first] = <[Vec<Value>; 2]>::try_from(
        verified_each(&[
            (secret.as_str(), received.as_slice()),
            (secret.as_str(), &all[..all.len().min(4)]),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(
        types(&events),
        ["sync.queued", "sync.in_progress", "sync.completed"]
    );
    for e in &events {
        assert_eq!(e["data"]["sync"]["id"], sync["id"]);
    }
    // The three refusals were all of the first event: nothing overtook it.
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(receiver.received().len(), 6, "nothing more arrived");
    assert!(first.iter().all(|e| e["id"] == events[0]["id"]));
    let log = deliveries(&env, &key, &target).await;
    let queued = log
        .iter()
        .find(|d| d["event_type"] == "sync.queued")
        .unwrap();
    assert_eq!(queued["status"], "succeeded", "{queued}");
    assert_eq!(queued["attempts"], 4);
    assert_eq!(queued["last_status_code"], 200);
    // The worker counted the attempts by outcome.
    let admin = env.worker_admin_url(0).await.unwrap();
    let (_, metrics) = env.get_text(&format!("{admin}/metrics")).await.unwrap();
    let count = |outcome: &str| -> f64 {
        let prefix = format!("depot_webhook_delivery_attempts_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(count("retried"), 3.0, "{metrics}");
    assert_eq!(count("succeeded"), 3.0, "{metrics}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_out_of_attempts_is_failed_and_the_next_event_goes_on() {
    let env = TestEnv::start(webhook_env(&[("DEPOT__WEBHOOKS__MAX_ATTEMPTS", "2")]))
        .await
        .unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    receiver.script(&[500, 502]);
    let (target, secret) = create_target(&env, &key, json!({"url": receiver.url()})).await;
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    let (status, _) = env
        .patch_repo(&key, &format!("{ORG}/one"), &json!({"tags": {"k": "v"}}))
        .await;
    assert_eq!(status, 200);
    let received = accepted(&receiver, 1).await;
    let all = receiver.received();
    let [events, sent] = <[Vec<Value>; 2]>::try_from(
        verified_each(&[
            (secret.as_str(), received.as_slice()),
            (secret.as_str(), all.as_slice()),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(types(&events), ["repo.updated"]);
    let log = deliveries(&env, &key, &target).await;
    let created = log
        .iter()
        .find(|d| d["event_type"] == "repo.created")
        .unwrap();
    assert_eq!(created["status"], "failed", "{created}");
    assert_eq!(created["attempts"], 2);
    assert_eq!(created["last_status_code"], 502);
    assert_eq!(created["next_attempt_at"], Value::Null);
    // Both refusals were of repo.created: repo.updated waited for it.
    assert_eq!(all.len(), 3);
    assert_eq!(receiver.received().len(), 3, "nothing more arrived");
    assert_eq!(
        types(&sent),
        ["repo.created", "repo.created", "repo.updated"]
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_sends_the_same_event_again() {
    let env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let (target, secret) = create_target(&env, &key, json!({"url": receiver.url()})).await;
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    accepted(&receiver, 1).await;
    let first = eventually(DELIVERY_LIMIT, "the delivery recorded", || async {
        let log = deliveries(&env, &key, &target).await;
        Ok(log.first().filter(|d| d["status"] == "succeeded").cloned())
    })
    .await
    .unwrap();
    let (status, again) = env
        .redeliver(&key, ORG, &target, first["id"].as_str().unwrap())
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["status"], "pending");
    assert_eq!(again["event_id"], first["event_id"]);
    assert_ne!(again["id"], first["id"]);
    let events = verified(&secret, &accepted(&receiver, 2).await).await;
    assert_eq!(events[0]["id"], events[1]["id"]);
    assert_eq!(events[0]["id"], first["event_id"]);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_outbox_rows_decode_as_delivery_jobs() {
    use depot_contracts::Message as _;
    use depot_contracts::sync_v1::{JobKind, SyncJob};
    let env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    // A target nobody answers for: only the rows matter here.
    create_target(&env, &key, json!({"url": "http://127.0.0.1:9/none"})).await;
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    let db = env.db().await.unwrap();
    let rows = db
        .query(
            "SELECT o.kind, o.delivery_id, o.payload, o.sync_id FROM outbox o
             WHERE o.delivery_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let kind: String = rows[0].get(0);
    let delivery_id: String = rows[0].get(1);
    let payload: Vec<u8> = rows[0].get(2);
    let sync_id: Option<String> = rows[0].get(3);
    assert_eq!(kind, "webhook_delivery");
    assert_eq!(sync_id, None);
    let job = SyncJob::decode(payload.as_slice()).unwrap();
    assert_eq!(job.kind(), JobKind::WebhookDelivery);
    assert_eq!(job.delivery_id, delivery_id);
    assert!(job.sync_id.is_empty());
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_failing_after_retries_reports_each_attempt_then_the_failure() {
    let env = TestEnv::start(webhook_env(&[("DEPOT__WORKER__MAX_ATTEMPTS", "2")]))
        .await
        .unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    // An upstream that is gone: a closed port, a transient failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (status, body) = env
        .post_repo(
            &key,
            ORG,
            &json!({"name": "gone", "upstream": {"url": format!("http://127.0.0.1:{port}/x.git")}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let receiver = WebhookReceiver::start().unwrap();
    let (_, secret) = create_target(
        &env,
        &key,
        json!({"url": receiver.url(), "events": ["sync.queued", "sync.in_progress", "sync.failed", "sync.completed"]}),
    )
    .await;
    let sync = post_sync(&env, &key, "gone", json!({"direction": "pull"}))
        .await
        .unwrap();
    let done = env
        .wait_for_sync(&key, ORG, "gone", sync["id"].as_str().unwrap(), SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    let received = accepted(&receiver, 4).await;
    let events = verified(&secret, &received).await;
    assert_eq!(
        types(&events),
        [
            "sync.queued",
            "sync.in_progress",
            "sync.in_progress",
            "sync.failed"
        ]
    );
    assert_eq!(events[1]["data"]["sync"]["attempt"], 1);
    assert_eq!(events[2]["data"]["sync"]["attempt"], 2);
    assert!(events[3]["data"]["sync"]["error"].is_string());
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_loses_no_event() {
    let mut env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    receiver.hang(true);
    let (target, secret) = create_target(
        &env,
        &key,
        json!({"url": receiver.url(), "events": ["repo.created"]}),
    )
    .await;
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    eventually(DELIVERY_LIMIT, "the delivery to be in flight", || async {
        Ok((!receiver.received().is_empty()).then_some(()))
    })
    .await
    .unwrap();
    env.workers[0].kill9();
    receiver.hang(false);
    env.start_worker().unwrap();
    let received = accepted(&receiver, 1).await;
    let events = verified(&secret, &received).await;
    assert_eq!(types(&events), ["repo.created"]);
    let log = deliveries(&env, &key, &target).await;
    assert_eq!(log[0]["status"], "succeeded", "{log:?}");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_delays_no_sync() {
    let upstream = Upstream::start("hooks-slow").unwrap();
    upstream.work.commit("main", "one").unwrap();
    upstream.publish().unwrap();
    let env = TestEnv::start(webhook_env(&[("DEPOT__WEBHOOKS__TIMEOUT_MS", "30000")]))
        .await
        .unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    receiver.hang(true);
    create_target(&env, &key, json!({"url": receiver.url()})).await;
    for name in ["a", "b", "c"] {
        create_repo(&env, &key, name, &upstream, None)
            .await
            .unwrap();
    }
    // Deliveries to the target are being held open (30 s each) ...
    eventually(
        DELIVERY_LIMIT,
        "a delivery held by the receiver",
        || async { Ok((!receiver.received().is_empty()).then_some(())) },
    )
    .await
    .unwrap();
    // ... and syncs run as if there were none.
    let started = Instant::now();
    for name in ["a", "b", "c"] {
        let s = sync_and_wait(&env, &key, name, json!({"direction": "pull"}))
            .await
            .unwrap();
        assert_eq!(s["status"], "completed", "{s}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(receiver.received().iter().all(|r| r.answered == 0));
    receiver.hang(false);
    env.cleanup().await.unwrap();
}

/// `webhooks.max_response_bytes`: a receiver that answers 200 and then
/// streams a body forever is read only that far; the delivery succeeds at
/// once instead of holding the connection until `webhooks.timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_streaming_an_endless_answer_is_read_only_up_to_the_cap() {
    let env = TestEnv::start(webhook_env(&[
        ("DEPOT__WEBHOOKS__TIMEOUT_MS", "30000"),
        ("DEPOT__WEBHOOKS__MAX_RESPONSE_BYTES", "1048576"),
    ]))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    receiver.flood(true);
    let (target, _) = create_target(&env, &key, json!({"url": receiver.url()})).await;
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "flooded"})).await;
    assert_eq!(status, 201);
    // Well inside the 30 s timeout an unbounded read would run into.
    let log = eventually(Duration::from_secs(20), "the delivery to succeed", || {
        let (env, key, target) = (&env, &key, &target);
        async move {
            let log = deliveries(env, key, target).await;
            Ok(log
                .iter()
                .any(|d| d["event_type"] == "repo.created" && d["status"] == "succeeded")
                .then_some(log))
        }
    })
    .await
    .unwrap();
    let created = log
        .iter()
        .find(|d| d["event_type"] == "repo.created")
        .unwrap();
    assert_eq!(created["attempts"], 1, "{created}");
    assert_eq!(created["last_status_code"], 200, "{created}");
    receiver.flood(false);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_get_only_the_events_and_repositories_they_asked_for() {
    let env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let (status, one) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    let one_id = one["id"].as_str().unwrap();
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "two"})).await;
    assert_eq!(status, 201);
    let only_one = WebhookReceiver::start().unwrap();
    let only_deleted = WebhookReceiver::start().unwrap();
    let (_, one_secret) = create_target(
        &env,
        &key,
        json!({"url": only_one.url(), "repo_ids": [one_id], "events": ["repo.updated", "repo.deleted"]}),
    )
    .await;
    let (_, deleted_secret) = create_target(
        &env,
        &key,
        json!({"url": only_deleted.url(), "events": ["repo.deleted"]}),
    )
    .await;
    for name in ["one", "two"] {
        let (status, _) = env
            .patch_repo(&key, &format!("{ORG}/{name}"), &json!({"tags": {"k": "v"}}))
            .await;
        assert_eq!(status, 200);
    }
    for name in ["two", "one"] {
        let (status, _) = env.delete_repo(&key, &format!("{ORG}/{name}")).await;
        assert_eq!(status, 200);
    }
    let (to_one, to_deleted) = (
        accepted(&only_one, 2).await,
        accepted(&only_deleted, 2).await,
    );
    let [got_one, got_deleted] = <[Vec<Value>; 2]>::try_from(
        verified_each(&[
            (one_secret.as_str(), to_one.as_slice()),
            (deleted_secret.as_str(), to_deleted.as_slice()),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(types(&got_one), ["repo.updated", "repo.deleted"]);
    assert!(got_one.iter().all(|e| e["repository"]["id"] == one_id));
    assert_eq!(types(&got_deleted), ["repo.deleted", "repo.deleted"]);
    // Nothing more arrives: the filters held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(only_one.received().len(), 2);
    assert_eq!(only_deleted.received().len(), 2);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_on_a_refused_network_is_400_and_never_connected_to() {
    let env = TestEnv::start(webhook_env(&[(
        "DEPOT__UPSTREAM__ALLOW_PRIVATE_NETWORKS",
        "false",
    )]))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let (status, body) = env
        .post_target(&key, ORG, &json!({"url": receiver.url()}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "url");
    // Stored while allowed, then the policy tightened: no delivery connects.
    let db = env.db().await.unwrap();
    db.execute(
        "INSERT INTO webhook_targets (id, org_id, url, events, secret)
         SELECT 'wht_refusedtarget0000000', id, $1, ARRAY['repo.created'], '\\x00'::bytea
         FROM orgs WHERE slug = $2",
        &[&receiver.url(), &ORG],
    )
    .await
    .unwrap();
    let (status, _) = env.post_repo(&key, ORG, &json!({"name": "one"})).await;
    assert_eq!(status, 201);
    let log = eventually(DELIVERY_LIMIT, "a refused attempt", || async {
        let log = deliveries(&env, &key, "wht_refusedtarget0000000").await;
        Ok(log
            .first()
            .filter(|d| d["attempts"].as_i64().unwrap_or(0) >= 1)
            .cloned())
    })
    .await
    .unwrap();
    assert!(
        log["last_error"]
            .as_str()
            .unwrap()
            .starts_with("url_refused"),
        "{log}"
    );
    assert!(receiver.received().is_empty());
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesas_generated_client_drives_the_five_target_operations() {
    let env = TestEnv::start(webhook_api_tier()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let other = env.org_and_key("other", "read,write,admin").unwrap();
    let out = run_script(
        "webhook_targets_flow.py",
        &[
            ("MESA_TEST_API_URL", env.url("/v1")),
            ("MESA_TEST_KEY", key.clone()),
            ("MESA_TEST_OTHER_KEY", other),
            ("MESA_TEST_OTHER_ORG", "other".into()),
            ("MESA_TEST_ORG", ORG.into()),
        ],
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let result: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(result["created"]["has_secret"], true, "{result}");
    assert_eq!(result["got"]["has_secret"], false, "{result}");
    assert_eq!(result["listed"], json!([result["created"]["id"]]));
    assert_eq!(result["patched"]["name"], Value::Null);
    assert_eq!(result["patched"]["events"], json!(["sync.failed"]));
    assert_eq!(result["other_org"], 404);
    assert_eq!(result["deleted"], true);
    assert_eq!(result["after_delete"], 404);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_requests_are_validated_field_by_field_and_need_admin() {
    let env = TestEnv::start(webhook_api_tier()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let writer = env.org_and_key(ORG, "read,write").unwrap();
    let post = |body: Value| {
        let (env, key) = (&env, key.clone());
        async move { env.post_target(&key, ORG, &body).await }
    };
    let url = "https://hooks.example.com/x";
    assert_error(
        &post(json!({"url": url, "colour": "red"})).await,
        400,
        "INVALID_REQUEST",
        Some("colour"),
    );
    assert_error(
        &post(json!({"name": "x"})).await,
        400,
        "INVALID_REQUEST",
        Some("url"),
    );
    let push = post(json!({"url": url, "events": ["sync.failed", "push"]})).await;
    assert_error(&push, 400, "INVALID_REQUEST", Some("events[1]"));
    assert!(
        push.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sync.completed")
    );
    assert_error(
        &post(json!({"url": url, "repo_ids": ["repo_nosuchrepository0000"]})).await,
        400,
        "INVALID_REQUEST",
        Some("repo_ids[0]"),
    );
    assert_error(
        &post(json!({"url": "ftp://hooks.example.com/x"})).await,
        400,
        "INVALID_REQUEST",
        Some("url"),
    );
    assert_error(
        &env.post_target(&writer, ORG, &json!({"url": url})).await,
        403,
        "FORBIDDEN",
        None,
    );
    let created = post(json!({"url": url})).await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(
        created.1["events"].as_array().unwrap().len(),
        SUPPORTED_EVENTS
    );
    assert_eq!(created.1["repo_ids"], Value::Null);
    let id = created.1["id"].as_str().unwrap();
    assert_error(
        &env.patch_target(&key, ORG, id, &json!({"url": null})).await,
        400,
        "INVALID_REQUEST",
        Some("url"),
    );
    let (status, got) = env.get_target(&key, ORG, id).await;
    assert_eq!(status, 200);
    assert!(got.get("secret").is_none(), "{got}");
    let (status, list) = env.list_targets(&key, ORG).await;
    assert_eq!(status, 200);
    assert_eq!(list["webhook_targets"][0]["id"], id);
    assert_eq!(list["has_more"], false);
    env.cleanup().await.unwrap();
}

/// Webhook secrets are sealed with `secrets.credential_key` too: after
/// `depot-admin secrets rotate` and the removal of the old key everywhere,
/// a target created under the old key still gets deliveries its secret
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_keeps_verifying_after_a_key_rotation_drops_the_old_key() {
    const NEW_KEY: &str = "bmV3LXRlc3QtY3JlZGVudGlhbC1rZXktMzItYnl0ZXM=";
    let mut env = TestEnv::start(webhook_env(&[])).await.unwrap();
    let key = env.org_and_key(ORG, "read,write,admin").unwrap();
    let receiver = WebhookReceiver::start().unwrap();
    let (_, secret) = create_target(&env, &key, json!({"url": receiver.url()})).await;

    let old_key = env.env["DEPOT__SECRETS__CREDENTIAL_KEY"].clone();
    env.env
        .insert("DEPOT__SECRETS__CREDENTIAL_KEY".into(), NEW_KEY.into());
    env.env
        .insert("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS".into(), old_key);
    let out = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(out.contains("re-encrypted 1 webhook secrets"), "{out}");
    let again = env.admin(&["secrets", "rotate"]).unwrap();
    assert!(
        again.contains("re-encrypted 0 webhook secrets; 1 already under the current key"),
        "{again}"
    );

    env.env.remove("DEPOT__SECRETS__PREVIOUS_CREDENTIAL_KEYS");
    env.workers[0].terminate(Duration::from_secs(30)).unwrap();
    env.start_worker().unwrap();
    let (status, _) = env
        .post_repo(&key, ORG, &json!({"name": "after-rotation"}))
        .await;
    assert_eq!(status, 201);
    let events = verified(&secret, &accepted(&receiver, 1).await).await;
    assert_eq!(types(&events), ["repo.created"]);
    env.cleanup().await.unwrap();
}
