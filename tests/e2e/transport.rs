//! The worker's memory against upstreams that send too much, end to end:
//! the real `depot-worker` binary (its own /proc/<pid>/status, not the test
//! process's), real Postgres, RabbitMQ and smart-HTTP upstreams on
//! loopback. An endless advertisement and an oversized pack fail their
//! sync permanently; a pull of a pack of a few hundred MiB completes; in
//! each the worker's peak RSS stays within 128 MiB of its idle RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::worker::*;
use depot_e2e::{EnvOptions, TestEnv, Upstream, fixture};
use depot_testkit::Hostile;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Instant;

/// What the worker may grow past its idle RSS while a sync runs.
const MAX_GROWTH_MIB: u64 = 128;

/// A `VmRSS:` / `VmHWM:` field of a process's status, in MiB.
fn status_mib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

async fn env_with(extra: &[(&str, &str)]) -> TestEnv {
    TestEnv::start(EnvOptions::with_env(extra, 1))
        .await
        .unwrap()
}

/// A warm-up pull of a small repository (the worker's first sync sets up
/// libgit2, TLS and the broker consumer), then the worker's RSS: its idle
/// size, what a sync may grow from.
async fn warm_idle_mib(env: &TestEnv, key: &str) -> u64 {
    let small = Upstream::start("small").unwrap();
    small.work.commit("main", "small").unwrap();
    small.publish().unwrap();
    create_repo(env, key, "small", &small, None).await.unwrap();
    let done = sync_and_wait(env, key, "small", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    status_mib(env.workers[0].pid().unwrap(), "VmRSS:")
}

/// The worker's peak RSS past `idle`, in MiB.
fn growth_mib(env: &TestEnv, idle: u64) -> u64 {
    status_mib(env.workers[0].pid().unwrap(), "VmHWM:").saturating_sub(idle)
}

fn assert_failed_permanently(sync: &Value, code: &str) {
    assert_eq!(sync["status"], "failed", "{sync}");
    assert_eq!(sync["attempt"], 1, "{code} is permanent: {sync}");
    assert_eq!(sync["error"], code, "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_advertisement_fails_permanently_within_the_worker_memory_bound() {
    // The default cap: the advertisement is read up to it.
    let env = env_with(&[]).await;
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let idle = warm_idle_mib(&env, &key).await;
    let endless = Upstream::start("endless").unwrap();
    endless
        .server
        .set_hostile(Some(Hostile::EndlessAdvertisement));
    create_repo(&env, &key, "endless", &endless, None)
        .await
        .unwrap();
    let sync = sync_and_wait(&env, &key, "endless", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_failed_permanently(&sync, "advertisement_too_large");
    let growth = growth_mib(&env, idle);
    assert!(growth < MAX_GROWTH_MIB, "worker peak RSS grew {growth} MiB");
    env.cleanup().await.unwrap();
}

/// Random bytes, fast (xorshift): incompressible, so a pack holding them is
/// at least as large.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An upstream whose main branch carries `files` incompressible files of
/// `mib` MiB each, written without compression or delta search so it is
/// made in seconds, and kept as one pack upstream (served by reuse).
fn big_upstream(name: &str, files: usize, mib: usize) -> Upstream {
    let up = Upstream::start(name).unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let st = fixture::git_command()
            .arg("-C")
            .arg(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    for (k, v) in [
        ("core.compression", "0"),
        ("core.bigFileThreshold", "1m"),
        ("pack.window", "0"),
    ] {
        git(up.work.path(), &["config", k, v]);
        git(&up.bare, &["config", k, v]);
    }
    git(&up.bare, &["config", "transfer.unpackLimit", "1"]);
    for i in 0..files {
        let path = up.work.path().join(format!("blob{i}.bin"));
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(&noise(mib << 20, i as u64 + 7)).unwrap();
    }
    up.work.commit("main", "big").unwrap();
    up.publish().unwrap();
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_pack_fails_permanently_within_the_worker_memory_bound() {
    let big = big_upstream("big", 4, 16);
    let env = env_with(&[(
        "DEPOT__UPSTREAM__MAX_PACK_BYTES",
        &(32u64 << 20).to_string(),
    )])
    .await;
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let idle = warm_idle_mib(&env, &key).await;
    create_repo(&env, &key, "big", &big, None).await.unwrap();
    let sync = sync_and_wait(&env, &key, "big", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_failed_permanently(&sync, "pack_too_large");
    let growth = growth_mib(&env, idle);
    assert!(growth < MAX_GROWTH_MIB, "worker peak RSS grew {growth} MiB");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_300_mib_pack_keeps_the_worker_memory_bound() {
    let started = Instant::now();
    let big = big_upstream("big", 20, 15);
    let made = started.elapsed();
    let env = env_with(&[("DEPOT__UPSTREAM__MAX_PACK_BYTES", &(1u64 << 30).to_string())]).await;
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let idle = warm_idle_mib(&env, &key).await;
    create_repo(&env, &key, "big", &big, None).await.unwrap();
    let sync = sync_and_wait(&env, &key, "big", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(sync["status"], "completed", "{sync}");
    let (_, repo) = env.get_repo(&key, &format!("{ORG}/big")).await;
    let hosted = env
        .hosted_repo_path(repo["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        fixture::rev_parse(&hosted, "refs/heads/main").unwrap(),
        fixture::rev_parse(&big.bare, "refs/heads/main").unwrap()
    );
    let growth = growth_mib(&env, idle);
    assert!(growth < MAX_GROWTH_MIB, "worker peak RSS grew {growth} MiB");
    eprintln!(
        "made the upstream in {made:?}, whole test {:?}, growth {growth} MiB",
        started.elapsed()
    );
    env.cleanup().await.unwrap();
}
