//! The gateways' credential cache end to end, with two gateway processes on
//! one database: a cached key costs no database read, and a key revoked or
//! deleted is refused by both within the 1 s revocation bound, also when
//! the change happens while a gateway's listener is disconnected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use depot_e2e::{EnvOptions, TestEnv, bin, eventually};
use serde_json::Value;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bound every gateway keeps (`auth.revocation_bound_ms`, default).
const BOUND: Duration = Duration::from_secs(1);

/// A second gateway on the environment's database; killed on drop.
struct SecondGateway {
    child: Child,
    base_url: String,
}

impl Drop for SecondGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn second_gateway(env: &TestEnv) -> Result<SecondGateway> {
    let log = env.dir.path().join("gateway-2.log");
    let file = File::create(&log)?;
    let mut cmd = Command::new(bin("depot-gateway")?);
    cmd.env_clear();
    for key in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    let child = cmd
        .envs(&env.env)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("spawn the second gateway")?;
    let mut gateway = SecondGateway {
        child,
        base_url: String::new(),
    };
    let port = eventually(Duration::from_secs(20), "the second gateway", || {
        let log = log.clone();
        async move {
            Ok(std::fs::read_to_string(&log)?
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == "gateway listening")
                .and_then(|v| v["port"].as_u64()))
        }
    })
    .await?;
    gateway.base_url = format!("http://127.0.0.1:{port}");
    Ok(gateway)
}

/// Both gateways' base URLs.
fn gateways(env: &TestEnv, second: &SecondGateway) -> [String; 2] {
    [env.base_url.clone(), second.base_url.clone()]
}

async fn whoami(env: &TestEnv, base: &str, key: &str) -> u16 {
    env.http
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Wait until both gateways' listeners are connected, so the test starts
/// from the steady state.
async fn listeners_up(env: &TestEnv, n: i64) {
    let db = env.db().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the gateways' listeners",
        || async {
            let up: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database()
                   AND application_name = 'depot-gateway-listener'",
                    &[],
                )
                .await?
                .get(0);
            Ok((up >= n).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// Poll both gateways until each refuses `key`; the time from `from` to
/// the later refusal.
async fn refused_by_both(env: &TestEnv, urls: &[String; 2], key: &str, from: Instant) -> Duration {
    let mut last = Duration::ZERO;
    for url in urls {
        eventually(Duration::from_secs(5), "the key's refusal", || async {
            Ok((whoami(env, url, key).await == 401).then_some(()))
        })
        .await
        .unwrap();
        last = last.max(from.elapsed());
    }
    last
}

async fn two_gateways() -> (TestEnv, SecondGateway, String) {
    let env = TestEnv::start(EnvOptions {
        workers: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let second = second_gateway(&env).await.unwrap();
    listeners_up(&env, 2).await;
    let key = env.org_and_key("acme", "read").unwrap();
    (env, second, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_is_verified_without_a_database_read() {
    let (env, second, key) = two_gateways().await;
    let urls = gateways(&env, &second);
    for url in &urls {
        assert_eq!(whoami(&env, url, &key).await, 200);
    }
    // Past the bound, entries are served on the listener's word alone: the
    // passing of time is what this test is about, not a condition to await.
    tokio::time::sleep(BOUND + Duration::from_millis(300)).await;
    // With the key table out of reach, only a cached verdict can answer.
    let db = env.db().await.unwrap();
    db.batch_execute("ALTER TABLE api_keys RENAME TO api_keys_away")
        .await
        .unwrap();
    for url in &urls {
        assert_eq!(whoami(&env, url, &key).await, 200, "{url}");
    }
    let fresh_key_status = env
        .http
        .get(format!("{}/v1/whoami", urls[0]))
        .bearer_auth("depot_notcachedanywhereatall0000000000000000")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(fresh_key_status, 500, "an uncached key needs the table");
    db.batch_execute("ALTER TABLE api_keys_away RENAME TO api_keys")
        .await
        .unwrap();
    drop(second);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_gateway_within_a_second() {
    let (env, second, key) = two_gateways().await;
    let urls = gateways(&env, &second);
    let (_, me) = env.whoami(&key).await;
    for url in &urls {
        assert_eq!(whoami(&env, url, &key).await, 200);
    }
    let started = Instant::now();
    env.admin(&["key", "revoke", me["key_id"].as_str().unwrap()])
        .unwrap();
    let took = refused_by_both(&env, &urls, &key, started).await;
    assert!(took < BOUND, "refused by both after {took:?}");
    drop(second);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_by_every_gateway_within_a_second() {
    let (env, second, key) = two_gateways().await;
    let urls = gateways(&env, &second);
    for url in &urls {
        assert_eq!(whoami(&env, url, &key).await, 200);
    }
    let db = env.db().await.unwrap();
    let started = Instant::now();
    db.execute("DELETE FROM api_keys", &[]).await.unwrap();
    let took = refused_by_both(&env, &urls, &key, started).await;
    assert!(took < BOUND, "refused by both after {took:?}");
    drop(second);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_listeners_are_disconnected_is_refused_within_a_second() {
    let (env, second, key) = two_gateways().await;
    let urls = gateways(&env, &second);
    let (_, me) = env.whoami(&key).await;
    for url in &urls {
        assert_eq!(whoami(&env, url, &key).await, 200);
    }
    // Cut both listeners (waiting for their backends to exit), then revoke
    // in the same transaction: its notification goes to nobody.
    let db = env.db().await.unwrap();
    let started = Instant::now();
    db.batch_execute(&format!(
        "BEGIN;
         SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
          WHERE datname = current_database()
            AND application_name = 'depot-gateway-listener';
         UPDATE api_keys SET revoked_at = now() WHERE id = '{}';
         COMMIT;",
        me["key_id"].as_str().unwrap()
    ))
    .await
    .unwrap();
    let took = refused_by_both(&env, &urls, &key, started).await;
    assert!(took < BOUND, "refused by both after {took:?}");
    // And the listeners come back by themselves.
    listeners_up(&env, 2).await;
    drop(second);
    env.cleanup().await.unwrap();
}
