//! The worker's reliability limits (issue 11): no database wait is
//! unbounded, a run never outlives its lease, a sync released at shutdown
//! never meets a young lock of its last run (stopped or abandoned), and
//! the lost-message republish never multiplies a backlog.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use depot_e2e::calls::Pull;
use depot_e2e::worker::*;
use depot_e2e::{EnvOptions, TestEnv, UPSTREAM_PASSWORD, UPSTREAM_USER, Upstream, eventually};
use depot_testkit::TcpProxy;
use serde_json::json;
use std::time::Duration;

/// Create repo `name` in `org` mirroring `up`; returns its id.
async fn repo_in(env: &TestEnv, key: &str, org: &str, name: &str, up: &Upstream) -> String {
    let (status, repo) = env
        .post_repo(
            key,
            org,
            &json!({
                "name": name,
                "upstream": {
                    "url": up.url(),
                    "auth": {
                        "kind": "username_password",
                        "username": UPSTREAM_USER,
                        "password": UPSTREAM_PASSWORD,
                    }
                }
            }),
        )
        .await;
    assert_eq!(status, 201, "{repo}");
    repo["id"].as_str().unwrap().to_string()
}

async fn pull_in(env: &TestEnv, key: &str, org: &str, repo: &str) -> String {
    let (status, sync) = env.post_sync(key, &format!("{org}/{repo}"), Pull).await;
    assert_eq!(status, 201, "{sync}");
    sync["id"].as_str().unwrap().to_string()
}

/// Item 2: an org whose row stays locked (an operator's open transaction,
/// a stuck claimer) holds none of a worker's permits: its claims give up
/// after `worker.claim_lock_timeout_ms` and come back later without
/// spending an attempt, and another org's sync runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_org_row_blocks_neither_other_orgs_nor_spends_attempts() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    // One worker, worker.concurrency 2 (the test environment's value).
    let env = TestEnv::start(EnvOptions::default()).await.unwrap();
    let key_a = env.org_and_key(ORG, "read,write").unwrap();
    let key_b = env.org_and_key("beta", "read,write").unwrap();
    let mut blocked = Vec::new();
    for i in 0..3 {
        let name = format!("a{i}");
        repo_in(&env, &key_a, ORG, &name, &up).await;
        blocked.push(name);
    }
    repo_in(&env, &key_b, "beta", "b0", &up).await;

    // Held like `SELECT … FOR NO KEY UPDATE` in psql, in a transaction
    // left open.
    let holder = env.db().await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "SELECT 1 FROM orgs WHERE slug = $1 FOR NO KEY UPDATE",
            &[&ORG],
        )
        .await
        .unwrap();

    // More syncs of the locked org than the worker has permits.
    let mut ids = Vec::new();
    for name in &blocked {
        ids.push((name.clone(), pull_in(&env, &key_a, ORG, name).await));
    }
    let other = pull_in(&env, &key_b, "beta", "b0").await;
    let done = env
        .wait_for_sync(&key_b, "beta", "b0", &other, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the other org's sync never ran: {e:#}\n{}", env.all_logs()));
    assert_eq!(done["status"], "completed", "{done}");

    for (_, id) in &ids {
        assert_eq!(
            db_state(&env, id).await.unwrap(),
            ("queued".to_string(), 0),
            "a blocked claim changed its sync"
        );
    }

    holder.batch_execute("COMMIT").await.unwrap();
    for (name, id) in &ids {
        let done = env
            .wait_for_sync(&key_a, ORG, name, id, SYNC_LIMIT)
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "waiting for the lock cost an attempt");
    }
    env.cleanup().await.unwrap();
}

/// The database URL of `env`, through `proxy` instead of straight to Postgres.
fn url_through(env: &TestEnv, proxy: &TcpProxy) -> String {
    env.env["DEPOT__DATABASE__URL"].replace("127.0.0.1:5432", &proxy.addr().to_string())
}

/// Item 3: a worker cut off from Postgres in the middle of a run stops that
/// run before its lease can run out, so when the sweeper hands the sync to
/// another worker the two runs never overlap (the upstream never serves the
/// repository to two clients at once), and the sync ends `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_postgres_stops_its_run_before_the_lease_is_handed_on() {
    let up = Upstream::start("project").unwrap();
    // About 1.5 MB that does not compress: at 100 kB/s the fetch takes
    // longer than a lease, and keeps libgit2's progress callbacks running.
    let noise: Vec<u8> = (0..1_500_000).map(|_| rand::random::<u8>()).collect();
    std::fs::write(up.work.path().join("noise.bin"), noise).unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions {
        workers: 0,
        extra_env: vec![
            // One permit each: the cut-off worker's permit stays with the
            // run that is writing its outcome, so it takes no other job.
            ("DEPOT__WORKER__CONCURRENCY".into(), "1".into()),
            ("DEPOT__WORKER__REQUEUE_AFTER_SECONDS".into(), "3".into()),
        ],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    let proxied = url_through(&env, &proxy);
    let cut_off = env
        .start_worker_with(&[("DEPOT__DATABASE__URL", &proxied)])
        .unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();

    up.server.set_pace(Some(100_000));
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap().to_string();
    wait_in_progress(&env, &key, "mirror", &id, 1)
        .await
        .unwrap();
    eventually(SYNC_LIMIT, "the fetch to start", || async {
        Ok((up.server.request_count() >= 2).then_some(()))
    })
    .await
    .unwrap();
    env.start_worker().unwrap();
    proxy.cut();

    let done = env
        .wait_for_sync(&key, ORG, "mirror", &id, Duration::from_secs(150))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.all_logs()));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(
        up.server.max_in_flight_for("project"),
        1,
        "two runs of the repository overlapped\n{}",
        env.all_logs()
    );
    assert!(
        env.workers[cut_off]
            .log_text()
            .contains("no renewal confirmed within the lease"),
        "the cut-off run did not stop itself"
    );
    env.cleanup().await.unwrap();
}

/// A pull sync of `repo`, waited for until it completed.
async fn pull_to_completion(env: &TestEnv, key: &str, repo: &str) {
    let sync = post_sync(env, key, repo, json!({"direction": "pull"}))
        .await
        .unwrap();
    let done = env
        .wait_for_sync(key, ORG, repo, sync["id"].as_str().unwrap(), SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
}

/// `git update-ref --stdin` of `count` branches `bNNNNN` to `value` in
/// one transaction; `verb` is `create` or `update`.
fn set_branches(bare: &std::path::Path, verb: &str, count: usize, value: &str) {
    let mut lines = String::new();
    for i in 0..count {
        lines.push_str(&format!("{verb} refs/heads/b{i:05} {value}\n"));
    }
    depot_e2e::fixture::git_in_dir_with_input(bare, &["update-ref", "--stdin"], lines.as_bytes())
        .unwrap_or_else(|e| panic!("update-ref {verb}: {e:#}"));
}

/// Item 4: a worker stopped (SIGTERM, `worker.grace_seconds` = 1) in the
/// middle of the ref writes of a pull that fast-forwards thousands of
/// branches gives the sync back so that the
/// next run never meets a young `.lock` left by the stopped one: after a
/// restart, the sync completes without `lock_contention`. (Here the git
/// thread sees the stop before its next ref and stops in time; a thread
/// that cannot is the next test's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_released_at_shutdown_never_meets_a_young_lock_of_its_last_run() {
    const BRANCHES: usize = 3000;
    let up = Upstream::start("project").unwrap();
    let c1 = up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    set_branches(&up.bare, "create", BRANCHES, &c1);

    let mut env = TestEnv::start(EnvOptions {
        workers: 1,
        extra_env: vec![("DEPOT__WORKER__GRACE_SECONDS".into(), "1".into())],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let hosted = env.hosted_repo_path(&repo_id).await.unwrap();
    // A first pull creates every branch (in one write of packed-refs); the
    // upstream then moves them all, so the next pull fast-forwards each
    // branch with a loose write of its own, one by one: the long stretch
    // of ref writes the stop is to land in.
    pull_to_completion(&env, &key, "mirror").await;
    let c2 = up.work.commit("main", "m2").unwrap();
    up.publish().unwrap();
    set_branches(&up.bare, "update", BRANCHES, &c2);

    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap().to_string();
    wait_in_progress(&env, &key, "mirror", &id, 1)
        .await
        .unwrap();
    // Stop it while it writes refs (the first loose ref file appears).
    eventually(SYNC_LIMIT, "the run to write refs", || async {
        let written = std::fs::read_dir(hosted.join("refs/heads"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        Ok(written.then_some(()))
    })
    .await
    .unwrap();
    let code = env.workers[0].terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0));

    env.start_worker().unwrap();
    let done = env
        .wait_for_sync(&key, ORG, "mirror", &id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(stat_names(&done).len(), BRANCHES + 1, "every ref matched");
    let contention = log_lines_with(&env, "lock_contention");
    assert!(contention.is_empty(), "{contention:#?}");
    env.cleanup().await.unwrap();
}

/// Item 4, a git thread that cannot stop in time: the network part of a run
/// stops on its cancel flag (the transport watches it), so the run is made
/// to hang where nothing can interrupt it, on storage: the hosted
/// repository's `objects/info/alternates` is a FIFO nobody writes, and
/// libgit2's `open(2)` of it blocks, as a read from a hung disk or NFS
/// mount would, past `worker.grace_seconds` plus the 2 s abandon bound.
/// Whatever that thread may have written until the process exited, the
/// sync is not claimed again before it is half a lease old, the age at
/// which the next pull removes a stale `.lock`: the released sync shows
/// that in `next_attempt_at`, the next attempt starts no earlier, and it
/// completes without `lock_contention`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_abandoned_at_shutdown_is_claimed_again_only_once_its_locks_are_stale() {
    const LEASE_SECONDS: f64 = 10.0;
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let mut env = TestEnv::start(EnvOptions {
        workers: 1,
        extra_env: vec![
            ("DEPOT__WORKER__GRACE_SECONDS".into(), "1".into()),
            (
                "DEPOT__WORKER__LEASE_SECONDS".into(),
                LEASE_SECONDS.to_string(),
            ),
        ],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    // A first pull creates the hosted repository the fault goes into.
    pull_to_completion(&env, &key, "mirror").await;
    let fifo = env
        .hosted_repo_path(&repo_id)
        .await
        .unwrap()
        .join("objects/info/alternates");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    up.work.commit("main", "m2").unwrap();
    up.publish().unwrap();

    let before = up.server.request_count();
    let sync = post_sync(&env, &key, "mirror", json!({"direction": "pull"}))
        .await
        .unwrap();
    let id = sync["id"].as_str().unwrap().to_string();
    wait_in_progress(&env, &key, "mirror", &id, 1)
        .await
        .unwrap();
    eventually(SYNC_LIMIT, "the run to ask for the refs", || async {
        Ok((up.server.request_count() > before).then_some(()))
    })
    .await
    .unwrap();
    let code = env.workers[0].terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(code, Some(0));
    let db = env.db().await.unwrap();
    // The database's clock, as every timestamp compared below: no thread
    // of the stopped worker writes after this moment.
    let exited: String = db
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        env.workers[0]
            .log_text()
            .contains("run did not stop in time"),
        "the git thread stopped in time; the test proves nothing\n{}",
        env.all_logs()
    );
    let seconds_after_exit = |at: String| {
        let db = &db;
        let exited = exited.clone();
        async move {
            let row = db
                .query_one(
                    "SELECT extract(epoch FROM $1::text::timestamptz - $2::text::timestamptz)::float8",
                    &[&at, &exited],
                )
                .await
                .unwrap();
            row.get::<_, f64>(0)
        }
    };

    let released = get_sync(&env, &key, "mirror", &id).await.unwrap();
    assert_eq!(released["status"], "queued", "{released}");
    let next = released["next_attempt_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no next_attempt_at: {released}"))
        .to_string();
    let next_after = seconds_after_exit(next).await;
    assert!(
        next_after >= LEASE_SECONDS / 2.0,
        "next attempt allowed {next_after:.1} s after the worker exited, \
         before its locks are stale ({} s)\n{released}",
        LEASE_SECONDS / 2.0
    );

    // The storage recovers: the next attempt may run.
    std::fs::remove_file(&fifo).unwrap();
    env.start_worker().unwrap();
    let done = env
        .wait_for_sync(&key, ORG, "mirror", &id, SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}\n{}", env.all_logs());
    assert_eq!(done["attempt"], 2, "{done}");
    let started = done["started_at"].as_str().unwrap().to_string();
    let started_after = seconds_after_exit(started).await;
    assert!(
        started_after >= LEASE_SECONDS / 2.0,
        "attempt 2 started {started_after:.1} s after the worker exited\n{done}"
    );
    let contention = log_lines_with(&env, "lock_contention");
    assert!(contention.is_empty(), "{contention:#?}");
    env.cleanup().await.unwrap();
}

/// Item 8: with one worker running one sync at a time behind a slow
/// upstream and a backlog of 300 queued syncs, every sync's message waits
/// in the jobs queue longer than `worker.requeue_after_seconds`; the
/// lost-message pass must not publish them again, so the queue never holds
/// more than the backlog plus a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_waiting_in_the_queue_is_never_published_again() {
    const BACKLOG: usize = 300;
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        workers: 1,
        extra_env: vec![
            ("DEPOT__WORKER__CONCURRENCY".into(), "1".into()),
            ("DEPOT__WORKER__REQUEUE_AFTER_SECONDS".into(), "2".into()),
        ],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    up.server.set_delay(Some(Duration::from_millis(500)));
    for i in 0..BACKLOG {
        // Distinct globs: distinct syncs, none refused as already queued.
        post_sync(
            &env,
            &key,
            "mirror",
            json!({"direction": "pull", "ref_globs": {"branches": format!("b{i}")}}),
        )
        .await
        .unwrap();
    }
    let broker = broker(&env).await.unwrap();
    let jobs = broker.topology().jobs_queue();
    let mut most = 0u32;
    // Long past requeue_after (2 s) for every message in the queue, while
    // the worker gets through only a few of them.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < until {
        most = most.max(broker.queue_depth(&jobs).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = env.db().await.unwrap();
    let queued: i64 = db
        .query_one("SELECT count(*) FROM syncs WHERE status = 'queued'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(queued > 200, "the backlog drained; the test proves nothing");
    assert!(
        most <= BACKLOG as u32 + 5,
        "the jobs queue held {most} messages for {BACKLOG} syncs"
    );
    broker.close().await;
    env.cleanup().await.unwrap();
}

/// Item 8, the other side: a sync whose message really is lost (here it
/// never had one: inserted without an outbox row) is published again and
/// runs, and the pass counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_lost_message_is_published_again() {
    let up = Upstream::start("project").unwrap();
    up.work.commit("main", "m1").unwrap();
    up.publish().unwrap();
    let env = TestEnv::start(EnvOptions {
        workers: 1,
        extra_env: vec![("DEPOT__WORKER__REQUEUE_AFTER_SECONDS".into(), "2".into())],
        ..EnvOptions::default()
    })
    .await
    .unwrap();
    let key = env.org_and_key(ORG, "read,write").unwrap();
    let repo_id = create_repo(&env, &key, "mirror", &up, None).await.unwrap();
    let db = env.db().await.unwrap();
    db.execute(
        "INSERT INTO syncs (id, repo_id, direction, branches_glob, tags_glob)
         VALUES ('sync_lostmessage00000001', $1, 'pull', '*', '*')",
        &[&repo_id],
    )
    .await
    .unwrap();
    let done = env
        .wait_for_sync(&key, ORG, "mirror", "sync_lostmessage00000001", SYNC_LIMIT)
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let republished = log_lines_with(&env, "re-published job");
    assert_eq!(republished.len(), 1, "{republished:#?}");
    env.cleanup().await.unwrap();
}
