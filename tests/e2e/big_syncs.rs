//! The cost of big syncs: a page of 100 repositories whose latest syncs each
//! list 20,000 refs is served within a memory bound (the gateway streams it
//! one repository at a time and sends stored stats as text), and a single
//! big sync reads back whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::{EnvOptions, TestEnv};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::io::Write as _;

const REPOS: i64 = 100;
const REFS: i64 = 20_000;
/// The gateway's peak RSS may grow by at most this while serving the page
/// (the page itself is about 190 MiB of JSON).
const BOUND_MIB: u64 = 64;

#[derive(Deserialize)]
struct Page {
    has_more: bool,
    repos: Vec<RepoItem>,
}
#[derive(Deserialize)]
struct RepoItem {
    upstream: UpstreamItem,
}
#[derive(Deserialize)]
struct UpstreamItem {
    latest_sync: SyncItem,
}
#[derive(Deserialize)]
struct SyncItem {
    status: String,
    stats: StatsItem,
}
#[derive(Deserialize)]
struct StatsItem {
    refs: Vec<IgnoredAny>,
}

/// Peak resident set size of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `repos` repositories with an upstream, each with a completed sync
/// listing 20,000 refs, written straight to the database (running them
/// would take minutes and measure git, not the listing). Each one is about
/// 2 MiB of stats to write: a test makes only as many as it reads.
async fn big_syncs(env: &TestEnv, repos: i64) {
    let db = env.db().await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO repos (id, org_id, name)
             SELECT 'repo_big' || lpad(i::text, 3, '0'), (SELECT id FROM orgs WHERE slug = 'acme'),
                    'big' || lpad(i::text, 3, '0')
             FROM generate_series(1, {repos}) i;
         INSERT INTO upstreams (repo_id, url)
             SELECT id, 'https://example.com/x.git' FROM repos WHERE name LIKE 'big%';
         WITH st AS (
             SELECT jsonb_build_object('refs', jsonb_agg(jsonb_build_object(
                        'name', 'refs/heads/b' || lpad(n::text, 5, '0'), 'before', NULL,
                        'after', md5(n::text) || '01234567', 'outcome', 'updated') ORDER BY n)) AS stats
             FROM generate_series(1, {REFS}) n)
         INSERT INTO syncs (id, repo_id, direction, status, attempt, branches_glob, tags_glob,
                            stats, started_at, finished_at)
             SELECT 'sync_big' || lpad(substr(r.id, 9), 17, '0'), r.id, 'pull', 'completed', 1, '*', '*', st.stats, now(), now()
             FROM repos r, st WHERE r.name LIKE 'big%';"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_100_repos_with_20000_ref_syncs_stays_within_the_memory_bound() {
    let env = TestEnv::start(EnvOptions {
        workers: 0,
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read").unwrap();
    big_syncs(&env, REPOS).await;
    let pid = env.gateway.as_ref().unwrap().pid().unwrap();
    let before = peak_rss_kib(pid);

    let mut res = env
        .http
        .get(env.url("/v1/acme/repos?limit=100"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // To a file: the test must not hold the whole page either.
    let path = env.dir.path().join("page.json");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut bytes = 0usize;
    while let Some(chunk) = res.chunk().await.unwrap() {
        bytes += chunk.len();
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let grown_mib = peak_rss_kib(pid).saturating_sub(before) / 1024;

    let page: Page =
        serde_json::from_reader(std::io::BufReader::new(std::fs::File::open(&path).unwrap()))
            .unwrap();
    assert!(!page.has_more);
    assert_eq!(page.repos.len() as i64, REPOS);
    for repo in &page.repos {
        assert_eq!(repo.upstream.latest_sync.status, "completed");
        assert_eq!(repo.upstream.latest_sync.stats.refs.len() as i64, REFS);
    }
    assert!(bytes > 100 * 1024 * 1024, "the page is big ({bytes} bytes)");
    assert!(
        grown_mib <= BOUND_MIB,
        "peak RSS grew by {grown_mib} MiB serving a {} MiB page",
        bytes / (1024 * 1024)
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_repo_and_its_big_sync_read_back_whole() {
    let env = TestEnv::start(EnvOptions {
        workers: 0,
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key("acme", "read").unwrap();
    // The repository read back and nothing else: one big sync.
    big_syncs(&env, 1).await;
    for path in [
        "/v1/acme/big001",
        "/v1/acme/big001/upstream/syncs/sync_big00000000000000001",
    ] {
        let (status, body) = env.call("GET", path, Some(&key), None).await.unwrap();
        assert_eq!(status, 200, "{path}");
        let sync = body.get("upstream").map_or(&body, |u| &u["latest_sync"]);
        let refs = sync["stats"]["refs"].as_array().unwrap();
        assert_eq!(refs.len() as i64, REFS, "{path}");
        assert_eq!(refs[0]["name"], "refs/heads/b00001", "{path}");
    }
    env.cleanup().await.unwrap();
}
