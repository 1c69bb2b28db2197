//! The worker end to end: per-ref outcomes of pull and push, retries,
//! failures, recovery of killed workers, duplicate and poison messages,
//! SIGTERM. Real binaries, Postgres, RabbitMQ and smart-HTTP upstreams with
//! basic auth on loopback; everything is driven through the public API, with
//! direct database and broker access only where a test needs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::worker::*;
use depot_e2e::{EnvOptions, TestEnv, UPSTREAM_PASSWORD, Upstream, eventually, fixture};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

fn env_opts(extra: &[(&str, &str)], workers: usize) -> EnvOptions {
    EnvOptions::with_env(extra, workers)
}

/// `head_change_id` of a commit: reverse hex over its first 16 bytes.
fn change_id(commit: &str) -> String {
    commit[..32]
        .chars()
        .map(|c| (b'z' - c.to_digit(16).unwrap() as u8) as char)
        .collect()
}

fn assert_no_quarantine(hosted: &std::path::Path) {
    let names = all_ref_names(hosted);
    assert!(
        names.iter().all(|n| !n.starts_with("refs/depot/")),
        "quarantine refs left behind: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reports_every_outcome_and_never_deletes() {
    let up = Upstream::start("project").unwrap();
    let w = &up.work;
    let c1 = w.commit("main", "m1").unwrap();
    let f1 = w.commit_on("feature/x", Some(&c1), "f1").unwrap();
    let r1 = w.commit_on("release/1.0/hotfix", Some(&c1), "r1").unwrap();
    let d1 = w.commit_on("doomed", Some(&c1), "d1").unwrap();
    let h1 = w.commit_on("hosted-ahead", Some(&c1), "h1").unwrap();
    w.tag("v1.0", &c1, false).unwrap();
    w.tag("v2.0", &f1, true).unwrap();
    up.publish().unwrap();
    let v2 = fixture::rev_parse(&up.bare, "refs/tags/v2.0").unwrap();

    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();

    // 1. Into an empty hosted repository: everything created.
    let first = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(first["status"], "completed", "{first}\n{}", env.all_logs());
    assert_eq!(first["attempt"], 1);
    let upstream_refs = up.refs().unwrap();
    let names: Vec<String> = upstream_refs.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(stat_names(&first), names, "full names, sorted");
    let stats = stats_by_name(&first);
    for (name, id) in &upstream_refs {
        assert_ref(&stats, name, None, id, "updated", None);
    }
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    assert_eq!(refs_of(&hosted), upstream_refs.iter().cloned().collect());
    assert_no_quarantine(&hosted);
    // HEAD follows the repo's default branch, so clones of the hosted
    // repository check out `main`.
    assert_eq!(
        git(&hosted, &["symbolic-ref", "HEAD"]).unwrap(),
        "refs/heads/main"
    );

    // 2. Both sides move. Upstream: main fast-forwards, feature/x is
    // rewritten, v1.0 is moved, a branch appears, `doomed` is deleted.
    // Hosted: hosted-ahead gets a commit of its own, and a branch of its own.
    let c2 = w.commit_on("main", Some(&c1), "m2").unwrap();
    let f2 = w.commit_on("feature/x", Some(&c1), "f1 rewritten").unwrap();
    w.tag("v1.0", &c2, false).unwrap();
    let n1 = w.commit_on("new/branch", Some(&c2), "n1").unwrap();
    up.publish().unwrap();
    git(&up.bare, &["update-ref", "-d", "refs/heads/doomed"]).unwrap();

    let scratch = scratch_dir(&env);
    let hw = scratch_work(&scratch, "hosted-work").unwrap();
    fetch_all(hw.path(), &hosted).unwrap();
    let h2 = hw.commit_on("hosted-ahead", Some(&h1), "h2").unwrap();
    let l1 = hw.commit_on("local-only", Some(&c1), "l1").unwrap();
    force_push(
        hw.path(),
        &hosted,
        &["refs/heads/hosted-ahead", "refs/heads/local-only"],
    )
    .unwrap();

    let second = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(second["status"], "completed", "{second}");
    assert!(second["error"].is_null());
    let stats = stats_by_name(&second);
    assert_ref(&stats, "refs/heads/main", Some(&c1), &c2, "updated", None);
    assert_ref(
        &stats,
        "refs/heads/feature/x",
        Some(&f1),
        &f2,
        "rejected",
        Some("non_fast_forward"),
    );
    assert_ref(
        &stats,
        "refs/heads/hosted-ahead",
        Some(&h2),
        &h1,
        "rejected",
        Some("non_fast_forward"),
    );
    assert_ref(
        &stats,
        "refs/heads/release/1.0/hotfix",
        Some(&r1),
        &r1,
        "unchanged",
        None,
    );
    assert_ref(&stats, "refs/heads/new/branch", None, &n1, "updated", None);
    assert_ref(
        &stats,
        "refs/tags/v1.0",
        Some(&c1),
        &c2,
        "rejected",
        Some("tag_exists"),
    );
    assert_ref(&stats, "refs/tags/v2.0", Some(&v2), &v2, "unchanged", None);
    // Only upstream refs that matched are reported.
    assert!(!stats.contains_key("refs/heads/doomed"));
    assert!(!stats.contains_key("refs/heads/local-only"));
    let mut sorted = stat_names(&second);
    sorted.sort();
    assert_eq!(stat_names(&second), sorted);

    let now = refs_of(&hosted);
    assert_eq!(now["refs/heads/main"], c2);
    assert_eq!(now["refs/heads/feature/x"], f1, "rejected ref untouched");
    assert_eq!(now["refs/heads/hosted-ahead"], h2);
    assert_eq!(now["refs/tags/v1.0"], c1, "tags never move");
    assert_eq!(now["refs/heads/doomed"], d1, "deletions never propagate");
    assert_eq!(now["refs/heads/local-only"], l1);
    assert_no_quarantine(&hosted);

    // The gateway shows the new default branch tip.
    let (_, repo) = env.get_repo(&key, &format!("{ORG}/mirror")).await;
    assert_eq!(repo["head_change_id"], change_id(&c2).as_str());

    // 3. Globs: comma lists, `*` across `/`, a key left out matches nothing.
    let globbed = sync_and_wait(
        &env,
        &key,
        "mirror",
        json!({"direction": "pull", "ref_globs": {"branches": "release/*, new/*", "tags": "v2*"}}),
    )
    .await
    .unwrap();
    assert_eq!(globbed["status"], "completed");
    assert_eq!(
        globbed["ref_globs"],
        json!({"branches": "release/*, new/*", "tags": "v2*"})
    );
    assert_eq!(
        stat_names(&globbed),
        [
            "refs/heads/new/branch",
            "refs/heads/release/1.0/hotfix",
            "refs/tags/v2.0"
        ]
    );
    let only_main = sync_and_wait(
        &env,
        &key,
        "mirror",
        json!({"direction": "pull", "ref_globs": {"branches": "main"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        only_main["ref_globs"],
        json!({"branches": "main", "tags": ""})
    );
    assert_eq!(stat_names(&only_main), ["refs/heads/main"]);
    let nothing = sync_and_wait(
        &env,
        &key,
        "mirror",
        json!({"direction": "pull", "ref_globs": {"tags": "no-such-*"}}),
    )
    .await
    .unwrap();
    assert_eq!(nothing["status"], "completed");
    assert_eq!(nothing["stats"], json!({"refs": []}));

    assert!(!env.all_logs().contains(UPSTREAM_PASSWORD));
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reports_every_outcome_and_the_remote_refusal() {
    let up = Upstream::start("project").unwrap();
    let w = &up.work;
    let c1 = w.commit("main", "m1").unwrap();
    let p1 = w.commit_on("protected", Some(&c1), "p1").unwrap();
    let s1 = w.commit_on("same", Some(&c1), "s1").unwrap();
    let dv = w.commit_on("diverged", Some(&c1), "dv").unwrap();
    let bh = w.commit_on("behind", Some(&c1), "bh").unwrap();
    let uo = w.commit_on("upstream-only", Some(&c1), "uo").unwrap();
    w.tag("v1.0", &c1, false).unwrap();
    up.publish().unwrap();
    // The upstream refuses any update of `protected` from now on.
    fixture::refuse_refs_hook(&up.bare, &["refs/heads/protected"]).unwrap();

    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let seeded = sync_and_wait(
        &env,
        &key,
        "mirror",
        json!({"direction": "pull", "ref_globs": {"branches": "main,protected,same,diverged,behind", "tags": "*"}}),
    )
    .await
    .unwrap();
    assert_eq!(seeded["status"], "completed", "{seeded}");
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();

    // Hosted side: main and protected fast-forward, diverged gets its own
    // commit, v1.0 moves, a new tag and a new nested branch, a symbolic ref.
    let hw = scratch_work(&scratch_dir(&env), "hosted-work").unwrap();
    fetch_all(hw.path(), &hosted).unwrap();
    let c2 = hw.commit_on("main", Some(&c1), "m2").unwrap();
    let p2 = hw.commit_on("protected", Some(&p1), "p2").unwrap();
    let dl = hw.commit_on("diverged", Some(&c1), "local div").unwrap();
    let t1 = hw.commit_on("topic/deep/x", Some(&c2), "t1").unwrap();
    hw.tag("v1.0", &c2, false).unwrap();
    hw.tag("v2.0", &c2, true).unwrap();
    force_push(
        hw.path(),
        &hosted,
        &[
            "refs/heads/main",
            "refs/heads/protected",
            "refs/heads/diverged",
            "refs/heads/topic/deep/x",
            "refs/tags/v1.0",
            "refs/tags/v2.0",
        ],
    )
    .unwrap();
    git(
        &hosted,
        &["symbolic-ref", "refs/heads/alias", "refs/heads/main"],
    )
    .unwrap();
    let v2 = fixture::rev_parse(&hosted, "refs/tags/v2.0").unwrap();
    // Upstream side: behind moves on (hosted never saw it), diverged too.
    let bh2 = w.commit_on("behind", Some(&bh), "bh2").unwrap();
    let du = w.commit_on("diverged", Some(&dv), "upstream div").unwrap();
    up.publish().unwrap();

    let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "push"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(done["attempt"], 1);
    let stats = stats_by_name(&done);
    assert_ref(&stats, "refs/heads/main", Some(&c1), &c2, "updated", None);
    assert_ref(&stats, "refs/heads/same", Some(&s1), &s1, "unchanged", None);
    assert_ref(
        &stats,
        "refs/heads/topic/deep/x",
        None,
        &t1,
        "updated",
        None,
    );
    assert_ref(&stats, "refs/tags/v2.0", None, &v2, "updated", None);
    assert_ref(
        &stats,
        "refs/heads/diverged",
        Some(&du),
        &dl,
        "rejected",
        Some("non_fast_forward"),
    );
    assert_ref(
        &stats,
        "refs/heads/behind",
        Some(&bh2),
        &bh,
        "rejected",
        Some("non_fast_forward"),
    );
    assert_ref(
        &stats,
        "refs/tags/v1.0",
        Some(&c1),
        &c2,
        "rejected",
        Some("tag_exists"),
    );
    assert_ref(
        &stats,
        "refs/heads/alias",
        None,
        &c2,
        "filtered",
        Some("symbolic_ref"),
    );
    let protected = &stats["refs/heads/protected"];
    assert_eq!(protected["outcome"], "rejected", "{protected}");
    assert_eq!(protected["before"], p1.as_str());
    assert_eq!(protected["after"], p2.as_str());
    let reason = protected["reason"].as_str().unwrap();
    assert!(reason.starts_with("remote_rejected: "), "{reason}");
    assert!(!stats.contains_key("refs/heads/upstream-only"));
    let mut sorted = stat_names(&done);
    sorted.sort();
    assert_eq!(stat_names(&done), sorted);

    // What landed: the refused ref did not, the others did; nothing deleted.
    let remote = refs_of(&up.bare);
    assert_eq!(remote["refs/heads/main"], c2);
    assert_eq!(remote["refs/heads/protected"], p1);
    assert_eq!(remote["refs/heads/topic/deep/x"], t1);
    assert_eq!(remote["refs/tags/v2.0"], v2);
    assert_eq!(remote["refs/heads/diverged"], du);
    assert_eq!(remote["refs/heads/behind"], bh2);
    assert_eq!(remote["refs/tags/v1.0"], c1);
    assert_eq!(remote["refs/heads/upstream-only"], uo);
    assert!(!remote.contains_key("refs/heads/alias"));

    // Globs apply to push too.
    let globbed = sync_and_wait(
        &env,
        &key,
        "mirror",
        json!({"direction": "push", "ref_globs": {"branches": "topic/*,main"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        stat_names(&globbed),
        ["refs/heads/main", "refs/heads/topic/deep/x"]
    );
    for r in globbed["stats"]["refs"].as_array().unwrap() {
        assert_eq!(r["outcome"], "unchanged", "{r}");
    }
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_at_the_first_attempt_without_leaking() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let wrong = "wrong-pw-4f1d9c0e";
    create_repo(&env, &key, "mirror", &up, Some(wrong))
        .await
        .unwrap();
    let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 1, "permanent errors are not retried");
    assert_eq!(done["error"], "authentication_failed");
    assert!(done["finished_at"].is_string());
    let text = done.to_string();
    assert!(!text.contains(wrong) && !text.contains(UPSTREAM_PASSWORD));
    let logs = env.all_logs();
    assert!(!logs.contains(wrong), "password leaked into logs");
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503_is_retried_until_max_attempts_then_fails() {
    let env = TestEnv::start(env_opts(
        &[
            ("DEPOT__WORKER__MAX_ATTEMPTS", "3"),
            ("DEPOT__WORKER__RETRY_BASE_MS", "1000"),
        ],
        1,
    ))
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();

    // Down for good: three attempts, then failed.
    let down = Upstream::start("down").unwrap();
    down.work.commit("main", "m1").unwrap();
    down.publish().unwrap();
    create_repo(&env, &key, "down", &down, None).await.unwrap();
    down.server.set_fault(Some(503));
    let done = sync_and_wait(&env, &key, "down", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 3);
    let error = done["error"].as_str().unwrap();
    assert!(
        error.starts_with("upstream_unavailable: http 503"),
        "{error}"
    );
    assert!(down.server.request_count() >= 3);

    // Down for a moment: the retry after it completes.
    let flaky = Upstream::start("flaky").unwrap();
    let c1 = flaky.work.commit("main", "m1").unwrap();
    flaky.publish().unwrap();
    create_repo(&env, &key, "flaky", &flaky, None)
        .await
        .unwrap();
    flaky.server.set_fault(Some(503));
    let sync = post_sync(&env, &key, "flaky", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap();
    // Between attempts the sync is queued again, attempt kept, no error.
    let waiting = eventually(SYNC_LIMIT, "the first attempt to fail", || async {
        let s = get_sync(&env, &key, "flaky", id).await?;
        Ok((s["status"] == "queued" && s["attempt"] == 1).then_some(s))
    })
    .await
    .unwrap();
    assert!(waiting["error"].is_null() && waiting["started_at"].is_null());
    flaky.server.set_fault(None);
    let done = env
        .wait_for_sync(&key, ORG, "flaky", id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let attempt = done["attempt"].as_u64().unwrap();
    assert!((2..=3).contains(&attempt), "{done}");
    assert_ref(
        &stats_by_name(&done),
        "refs/heads/main",
        None,
        &c1,
        "updated",
        None,
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_recovered_by_another_with_attempt_2() {
    let up = Upstream::start("project").unwrap();
    let c1 = up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();

    up.server.set_delay(Some(Duration::from_secs(120)));
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap();
    wait_in_progress(&env, &key, "mirror", id, 1).await.unwrap();
    eventually(SYNC_LIMIT, "the run to reach the upstream", || async {
        Ok((up.server.request_count() > 0).then_some(()))
    })
    .await
    .unwrap();
    env.workers[0].kill9();
    // Had it been killed while writing main, main's lock would be left:
    // the next run must not trip over it (it is older than half a lease by
    // the time the lease runs out and the sync is claimed again).
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    let lock = hosted.join("refs/heads/main.lock");
    std::fs::write(&lock, format!("{c1}\n")).unwrap();
    up.server.set_delay(None);
    env.start_worker().unwrap();

    let done = env
        .wait_for_sync(&key, ORG, "mirror", id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(done["attempt"], 2);
    assert!(!lock.exists());
    assert_eq!(
        log_lines_with(&env, "removed stale lock files left by an interrupted run").len(),
        1
    );
    assert_ref(
        &stats_by_name(&done),
        "refs/heads/main",
        None,
        &c1,
        "updated",
        None,
    );
    assert_eq!(refs_of(&hosted)["refs/heads/main"], c1);
    assert_no_quarantine(&hosted);
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_delivered_five_times_to_two_workers_runs_once() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        workers: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    // A slow upstream keeps the run going while the copies arrive.
    up.server.set_delay(Some(Duration::from_millis(700)));

    let broker = broker(&env).await.unwrap();
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap();
    let job = depot_broker::job(id, &repo_id, 0, HashMap::new());
    for _ in 0..4 {
        broker.publish(&job).await.unwrap();
    }
    let done = env
        .wait_for_sync(&key, ORG, "mirror", id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);

    // Every copy has been consumed (and dropped) by now...
    let jobs = broker.topology().jobs_queue();
    eventually(SYNC_LIMIT, "the jobs queue to drain", || async {
        Ok((broker.queue_depth(&jobs).await? == 0).then_some(()))
    })
    .await
    .unwrap();
    // ...and only one of them started a run.
    let started: Vec<String> = log_lines_with(&env, "sync run started")
        .into_iter()
        .filter(|l| l.contains(id))
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(db_state(&env, id).await.unwrap(), ("completed".into(), 1));
    broker.close().await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_worker_carries_on() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();

    let broker = broker(&env).await.unwrap();
    // Not protobuf at all, and a well-formed job naming no sync.
    broker
        .publish_raw(b"\xff\xff\xff\xff not a job")
        .await
        .unwrap();
    broker
        .publish(&depot_broker::job("", "", 0, HashMap::new()))
        .await
        .unwrap();
    let dead = broker.topology().dead_queue();
    eventually(
        SYNC_LIMIT,
        "both messages in the dead-letter queue",
        || async { Ok((broker.queue_depth(&dead).await? == 2).then_some(())) },
    )
    .await
    .unwrap();
    let jobs = broker.topology().jobs_queue();
    assert_eq!(broker.queue_depth(&jobs).await.unwrap(), 0);

    let done = sync_and_wait(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    broker.close().await;
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_a_short_run_and_releases_a_stuck_one_cleanly() {
    let up = Upstream::start("project").unwrap();
    let c1 = up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    // Grace 5 s (the harness default).
    let mut env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();

    // A run that fits in the grace period is finished, then the worker exits 0.
    up.server.set_delay(Some(Duration::from_millis(400)));
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let first = sync["id"].as_str().unwrap().to_string();
    wait_in_progress(&env, &key, "mirror", &first, 1)
        .await
        .unwrap();
    let code = env.workers[0].terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0));
    let done = get_sync(&env, &key, "mirror", &first).await.unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(done["attempt"], 1);
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    assert_eq!(refs_of(&hosted)["refs/heads/main"], c1);

    // A run stuck on a silent upstream past the grace period is released
    // back to queued, with nothing written, and the worker still exits 0.
    let c2 = up.work.commit_on("main", Some(&c1), "m2").unwrap();
    up.publish().unwrap();
    up.server.set_delay(Some(Duration::from_secs(120)));
    env.start_worker().unwrap();
    // Counted before the sync exists: the run may reach the upstream
    // before `wait_in_progress` returns.
    let requests = up.server.request_count();
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let second = sync["id"].as_str().unwrap().to_string();
    wait_in_progress(&env, &key, "mirror", &second, 1)
        .await
        .unwrap();
    eventually(SYNC_LIMIT, "the run to reach the upstream", || async {
        Ok((up.server.request_count() > requests).then_some(()))
    })
    .await
    .unwrap();
    let before = refs_of(&hosted);
    let code = env.workers[1].terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0));
    let released = get_sync(&env, &key, "mirror", &second).await.unwrap();
    assert_eq!(released["status"], "queued", "{released}");
    assert_eq!(released["attempt"], 1);
    for field in ["started_at", "finished_at", "stats", "error"] {
        assert!(released[field].is_null(), "{field}: {released}");
    }
    assert_eq!(refs_of(&hosted), before, "nothing half-written");
    assert_no_quarantine(&hosted);

    // The next worker runs it to the end.
    up.server.set_delay(None);
    env.start_worker().unwrap();
    let done = env
        .wait_for_sync(&key, ORG, "mirror", &second, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_ref(
        &stats_by_name(&done),
        "refs/heads/main",
        Some(&c1),
        &c2,
        "updated",
        None,
    );
    env.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_of_one_repository_never_run_at_once_and_waiting_costs_no_attempt() {
    let up = Upstream::start("project").unwrap();
    let c1 = up.work.commit("main", "m1").unwrap();
    up.work.commit_on("dev", Some(&c1), "d1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        workers: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    up.server.set_delay(Some(Duration::from_millis(300)));

    let bodies = [
        json!({"direction": "pull"}),
        json!({"direction": "pull", "ref_globs": {"branches": "main"}}),
        json!({"direction": "push"}),
        json!({"direction": "pull", "ref_globs": {"branches": "dev"}}),
    ];
    let mut ids = Vec::new();
    for body in bodies {
        let s = post_sync(&env, &key, "mirror", body).await.unwrap();
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let done = env
            .wait_for_sync(&key, ORG, "mirror", id, SYNC_LIMIT)
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "a busy repository costs no attempt");
    }
    // Full-precision run intervals, in start order, never overlap.
    let db = env.db().await.unwrap();
    let rows = db
        .query(
            "SELECT started_at, finished_at FROM syncs WHERE repo_id = $1 ORDER BY started_at",
            &[&repo_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    let mut previous_end: Option<std::time::SystemTime> = None;
    for row in &rows {
        let started: std::time::SystemTime = row.get(0);
        let finished: std::time::SystemTime = row.get(1);
        if let Some(end) = previous_end {
            assert!(end <= started, "runs overlapped: {rows:?}");
        }
        previous_end = Some(finished);
    }
    env.cleanup().await.unwrap();
}

/// `worker.max_runs_per_org`: with a limit of one, syncs of different
/// repositories of one org run one after another (never overlapping), and
/// waiting for the org's slot costs no attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_never_runs_more_syncs_at_once_than_its_limit() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        workers: 2,
        extra_env: vec![("DEPOT__WORKER__MAX_RUNS_PER_ORG".into(), "1".into())],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let mut names = Vec::new();
    for i in 0..3 {
        let name = format!("mirror{i}");
        create_repo(&env, &key, &name, &up, None).await.unwrap();
        names.push(name);
    }
    // Slow enough that, without the limit, two workers would overlap.
    up.server.set_delay(Some(Duration::from_millis(300)));
    let mut ids = Vec::new();
    for name in &names {
        let s = post_sync(&env, &key, name, json!({"direction": "pull"}))
            .await
            .unwrap();
        ids.push((name.clone(), s["id"].as_str().unwrap().to_string()));
    }
    for (name, id) in &ids {
        let done = env
            .wait_for_sync(&key, ORG, name, id, SYNC_LIMIT)
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["attempt"], 1,
            "waiting for the org's slot costs no attempt"
        );
    }
    let db = env.db().await.unwrap();
    let rows = db
        .query(
            "SELECT started_at, finished_at FROM syncs ORDER BY started_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let mut previous_end: Option<std::time::SystemTime> = None;
    for row in &rows {
        let started: std::time::SystemTime = row.get(0);
        let finished: std::time::SystemTime = row.get(1);
        if let Some(end) = previous_end {
            assert!(end <= started, "runs of one org overlapped: {rows:?}");
        }
        previous_end = Some(finished);
    }
    env.cleanup().await.unwrap();
}
