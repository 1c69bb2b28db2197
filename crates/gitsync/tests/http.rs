//! pull and push against a real git smart-HTTP server on loopback
//! (`git http-backend` via depot-testkit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use depot_domain::{FailureCode, Outcome, RefGlobs, RefMatcher, RefStat};
use depot_gitsync::{Credentials, RunSpec, SyncError, branch_tip, ensure_repo, pull, push};
use depot_testkit::GitHttpServer;
use depot_testkit::fixture::{
    WorkRepo, all_ref_names, force_push, git_command, has_object, init_bare, refs_of,
    refuse_refs_hook, rev_parse,
};

struct Env {
    _tmp: tempfile::TempDir,
    server: GitHttpServer,
    work: WorkRepo,
    /// Bare repository the server serves as `up.git`.
    upstream: PathBuf,
    /// Our hosted repository (absent until a pull or `init_bare`).
    hosted: PathBuf,
    url: String,
    /// Every test server listens on 127.0.0.1.
    net: depot_gitsync::Net,
}

fn env_with(auth: Option<(&str, &str)>) -> Env {
    let common::Served {
        tmp,
        server,
        work,
        upstream,
    } = common::serve(auth, None);
    let hosted = tmp.path().join("hosted").join("org").join("repo.git");
    let url = server.repo_url("up");
    Env {
        _tmp: tmp,
        server,
        work,
        upstream,
        hosted,
        url,
        net: common::loopback(),
    }
}

fn env() -> Env {
    env_with(None)
}

fn all() -> RefMatcher {
    RefGlobs::all().compile().unwrap()
}

fn globs(branches: &str, tags: &str) -> RefMatcher {
    RefGlobs {
        branches: branches.into(),
        tags: tags.into(),
    }
    .compile()
    .unwrap()
}

fn spec<'a>(e: &'a Env, matcher: &'a RefMatcher) -> RunSpec<'a> {
    common::run_spec(&e.hosted, &e.url, matcher, &e.net)
}

/// Branches and tags of a repository, by name.
fn by_name(stats: Vec<RefStat>) -> BTreeMap<String, RefStat> {
    let mut out = BTreeMap::new();
    for s in stats {
        assert!(out.insert(s.name.clone(), s).is_none(), "duplicate entry");
    }
    out
}

fn assert_stat(
    s: &RefStat,
    before: Option<&str>,
    after: &str,
    outcome: Outcome,
    reason: Option<&str>,
) {
    assert_eq!(s.before.as_deref(), before, "before of {}", s.name);
    assert_eq!(s.after, after, "after of {}", s.name);
    assert_eq!(s.outcome, outcome, "outcome of {}", s.name);
    assert_eq!(s.reason.as_deref(), reason, "reason of {}", s.name);
}

/// main, a nested branch, a lightweight and an annotated tag.
fn seed_upstream(e: &Env) -> (String, String) {
    let c1 = e.work.commit("main", "one").unwrap();
    let c2 = e.work.commit("release/1.0/hotfix", "two").unwrap();
    e.work.tag("v1.0", &c1, false).unwrap();
    e.work.tag("v2.0", &c2, true).unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
    (c1, c2)
}

// ---------------------------------------------------------------- pull

#[test]
fn pull_into_empty_then_again() {
    let e = env();
    seed_upstream(&e);
    let m = all();

    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    let upstream = refs_of(&e.upstream);
    assert_eq!(upstream.len(), 4);
    assert_eq!(
        stats.keys().collect::<Vec<_>>(),
        upstream.keys().collect::<Vec<_>>()
    );
    for (name, id) in &upstream {
        assert_stat(&stats[name], None, id, Outcome::Updated, None);
    }
    // Annotated tags keep their tag object id.
    assert_eq!(
        upstream["refs/tags/v2.0"],
        rev_parse(&e.upstream, "refs/tags/v2.0").unwrap()
    );
    assert_ne!(
        upstream["refs/tags/v2.0"],
        rev_parse(&e.upstream, "v2.0^{commit}").unwrap()
    );
    assert_eq!(refs_of(&e.hosted), upstream);
    // Quarantine is gone and only branches and tags exist.
    assert_eq!(
        all_ref_names(&e.hosted),
        upstream.keys().cloned().collect::<Vec<_>>()
    );

    let again = by_name(pull(&spec(&e, &m)).unwrap());
    assert_eq!(again.len(), 4);
    for (name, id) in &upstream {
        assert_stat(&again[name], Some(id), id, Outcome::Unchanged, None);
    }
    assert_eq!(refs_of(&e.hosted), upstream);
    assert_eq!(
        branch_tip(&e.hosted, "main").unwrap().as_deref(),
        Some(upstream["refs/heads/main"].as_str())
    );
    assert_eq!(branch_tip(&e.hosted, "nope").unwrap(), None);
}

#[test]
fn pull_fast_forwards_and_never_deletes() {
    let e = env();
    let (c1, _) = seed_upstream(&e);
    let m = all();
    pull(&spec(&e, &m)).unwrap();

    let c3 = e.work.commit("main", "three").unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &[":refs/heads/release/1.0/hotfix"],
    )
    .unwrap();
    let hotfix = rev_parse(&e.hosted, "refs/heads/release/1.0/hotfix").unwrap();
    // Left behind by a crashed earlier attempt of the same sync.
    let stale = format!("refs/depot/incoming/{}/heads/stale", spec(&e, &m).sync_id);
    git2::Repository::open_bare(&e.hosted)
        .unwrap()
        .reference(&stale, git2::Oid::from_str(&c1).unwrap(), false, "test")
        .unwrap();

    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        Some(&c1),
        &c3,
        Outcome::Updated,
        None,
    );
    assert!(!stats.contains_key("refs/heads/release/1.0/hotfix"));
    assert_eq!(stats.len(), 3);
    assert_eq!(rev_parse(&e.hosted, "refs/heads/main").unwrap(), c3);
    assert_eq!(
        rev_parse(&e.hosted, "refs/heads/release/1.0/hotfix").unwrap(),
        hotfix
    );
    assert!(
        !all_ref_names(&e.hosted)
            .iter()
            .any(|n| n.starts_with("refs/depot/"))
    );
}

#[test]
fn pull_removes_stale_locks_left_by_a_killed_run_and_keeps_fresh_ones() {
    let e = env();
    let (c1, _) = seed_upstream(&e);
    let m = all();
    pull(&spec(&e, &m)).unwrap();
    let c3 = e.work.commit("main", "three").unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    // What a run killed while updating main leaves behind: the ref's lock,
    // an hour old.
    let stale = e.hosted.join("refs/heads/main.lock");
    std::fs::write(&stale, format!("{c1}\n")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    // A lock a live run could be holding right now.
    let fresh = e.hosted.join("refs/heads/other.lock");
    std::fs::write(&fresh, "x").unwrap();

    // Left alone, the stale lock keeps main from moving.
    let _ = pull(&spec(&e, &m));
    assert_eq!(rev_parse(&e.hosted, "refs/heads/main").unwrap(), c1);
    assert!(stale.exists());

    let cleaning = RunSpec {
        stale_lock_age: Some(Duration::from_secs(30)),
        ..spec(&e, &m)
    };
    let stats = by_name(pull(&cleaning).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        Some(&c1),
        &c3,
        Outcome::Updated,
        None,
    );
    assert_eq!(rev_parse(&e.hosted, "refs/heads/main").unwrap(), c3);
    assert!(!stale.exists());
    assert!(fresh.exists(), "a lock younger than the age is not touched");
}

#[test]
fn pull_rejects_diverged_branch_and_moved_tag() {
    let e = env();
    let (c1, c2) = seed_upstream(&e);
    let m = all();
    pull(&spec(&e, &m)).unwrap();

    // Hosted main gets a commit upstream never sees; upstream main moves
    // elsewhere; upstream's v1.0 moves.
    let hosted_only = e
        .work
        .commit_on("hosted-only", Some(&c1), "hosted")
        .unwrap();
    force_push(
        e.work.path(),
        &e.hosted,
        &[&format!("{hosted_only}:refs/heads/main")],
    )
    .unwrap();
    let up = e.work.commit("main", "upstream").unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    e.work.tag("v1.0", &c2, false).unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &["refs/tags/v1.0:refs/tags/v1.0"],
    )
    .unwrap();

    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        Some(&hosted_only),
        &up,
        Outcome::Rejected,
        Some("non_fast_forward"),
    );
    assert_stat(
        &stats["refs/tags/v1.0"],
        Some(&c1),
        &c2,
        Outcome::Rejected,
        Some("tag_exists"),
    );
    assert_eq!(
        stats["refs/heads/release/1.0/hotfix"].outcome,
        Outcome::Unchanged
    );
    assert_eq!(
        rev_parse(&e.hosted, "refs/heads/main").unwrap(),
        hosted_only
    );
    assert_eq!(rev_parse(&e.hosted, "refs/tags/v1.0").unwrap(), c1);
    assert!(
        !all_ref_names(&e.hosted)
            .iter()
            .any(|n| n.starts_with("refs/depot/"))
    );
}

#[test]
fn pull_globs_filter_what_is_reported_and_fetched() {
    let e = env();
    let main = e.work.commit("main", "base").unwrap();
    let hotfix = e
        .work
        .commit_on("release/1.0/hotfix", Some(&main), "hotfix")
        .unwrap();
    let feature = e
        .work
        .commit_on("feature/release/x", Some(&main), "feature")
        .unwrap();
    let tagged = e.work.commit_on("tagbase", Some(&main), "tagged").unwrap();
    e.work.tag("v1.0", &main, false).unwrap();
    e.work.tag("v2.0", &tagged, true).unwrap();
    e.work.push_all_to(&e.upstream).unwrap();

    let m = globs("main, release/*", "v1.*");
    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    let names: Vec<&str> = stats.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "refs/heads/main",
            "refs/heads/release/1.0/hotfix",
            "refs/tags/v1.0"
        ]
    );
    assert!(stats.values().all(|s| s.outcome == Outcome::Updated));
    assert_eq!(
        all_ref_names(&e.hosted),
        [
            "refs/heads/main",
            "refs/heads/release/1.0/hotfix",
            "refs/tags/v1.0"
        ]
    );
    assert!(has_object(&e.hosted, &hotfix));
    // Objects of unmatched refs never arrived.
    assert!(!has_object(&e.hosted, &feature));
    assert!(!has_object(&e.hosted, &tagged));
    assert!(!has_object(
        &e.hosted,
        &rev_parse(&e.upstream, "refs/tags/v2.0").unwrap()
    ));

    // A glob that matches nothing: nothing reported, nothing fetched.
    let none = globs("", "nope*");
    assert_eq!(pull(&spec(&e, &none)).unwrap(), vec![]);
}

#[test]
fn pull_filters_branch_at_non_commit() {
    let e = env();
    seed_upstream(&e);
    let blob = {
        let up = git2::Repository::open_bare(&e.upstream).unwrap();
        let blob = up.blob(b"not a commit\n").unwrap();
        up.reference("refs/heads/blobby", blob, false, "test")
            .unwrap();
        blob.to_string()
    };
    let stats = by_name(pull(&spec(&e, &all())).unwrap());
    assert_stat(
        &stats["refs/heads/blobby"],
        None,
        &blob,
        Outcome::Filtered,
        Some("not_a_commit"),
    );
    assert_eq!(stats["refs/heads/main"].outcome, Outcome::Updated);
    assert!(!all_ref_names(&e.hosted).contains(&"refs/heads/blobby".to_string()));
}

#[test]
fn pull_pack_limit_fails_and_cleans_quarantine() {
    let e = env();
    seed_upstream(&e);
    let m = all();
    let mut s = spec(&e, &m);
    s.max_pack_bytes = Some(1);
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::PackTooLarge.into()))
    );
    // The repository was created, nothing landed, no quarantine left.
    assert_eq!(all_ref_names(&e.hosted), Vec::<String>::new());
}

// ---------------------------------------------------------------- push

/// Hosted repo with main, a nested branch and two tags.
fn seed_hosted(e: &Env) -> (String, String) {
    init_bare(&e.hosted).unwrap();
    let c1 = e.work.commit("main", "one").unwrap();
    let c2 = e.work.commit("release/1.0/hotfix", "two").unwrap();
    e.work.tag("v1.0", &c1, false).unwrap();
    e.work.tag("v2.0", &c2, true).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    (c1, c2)
}

#[test]
fn push_into_empty_then_fast_forward() {
    let e = env();
    let (c1, _) = seed_hosted(&e);
    {
        let hosted = git2::Repository::open_bare(&e.hosted).unwrap();
        hosted
            .reference_symbolic("refs/heads/alias", "refs/heads/main", false, "test")
            .unwrap();
    }
    let m = all();

    let stats = by_name(push(&spec(&e, &m)).unwrap());
    let hosted = refs_of(&e.hosted);
    assert_stat(
        &stats["refs/heads/alias"],
        None,
        &c1,
        Outcome::Filtered,
        Some("symbolic_ref"),
    );
    for (name, id) in &hosted {
        assert_stat(&stats[name], None, id, Outcome::Updated, None);
    }
    assert_eq!(stats.len(), hosted.len() + 1);
    assert_eq!(refs_of(&e.upstream), hosted);

    let c3 = e.work.commit("main", "three").unwrap();
    force_push(
        e.work.path(),
        &e.hosted,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    let stats = by_name(push(&spec(&e, &m)).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        Some(&c1),
        &c3,
        Outcome::Updated,
        None,
    );
    assert_eq!(
        stats["refs/heads/release/1.0/hotfix"].outcome,
        Outcome::Unchanged
    );
    assert_eq!(stats["refs/tags/v2.0"].outcome, Outcome::Unchanged);
    assert_eq!(rev_parse(&e.upstream, "refs/heads/main").unwrap(), c3);
    assert_eq!(refs_of(&e.upstream), refs_of(&e.hosted));
}

#[test]
fn push_rejects_diverged_upstream_and_moved_tag() {
    let e = env();
    let (c1, c2) = seed_hosted(&e);
    let m = all();
    push(&spec(&e, &m)).unwrap();

    let upstream_only = e
        .work
        .commit_on("upstream-only", Some(&c1), "theirs")
        .unwrap();
    force_push(
        e.work.path(),
        &e.upstream,
        &[&format!("{upstream_only}:refs/heads/main")],
    )
    .unwrap();
    let ours = e.work.commit("main", "ours").unwrap();
    force_push(
        e.work.path(),
        &e.hosted,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    e.work.tag("v1.0", &c2, false).unwrap();
    force_push(e.work.path(), &e.hosted, &["refs/tags/v1.0:refs/tags/v1.0"]).unwrap();

    let stats = by_name(push(&spec(&e, &m)).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        Some(&upstream_only),
        &ours,
        Outcome::Rejected,
        Some("non_fast_forward"),
    );
    assert_stat(
        &stats["refs/tags/v1.0"],
        Some(&c1),
        &c2,
        Outcome::Rejected,
        Some("tag_exists"),
    );
    assert_eq!(
        rev_parse(&e.upstream, "refs/heads/main").unwrap(),
        upstream_only
    );
    assert_eq!(rev_parse(&e.upstream, "refs/tags/v1.0").unwrap(), c1);
}

#[test]
fn push_reports_remote_refusal_per_ref() {
    let e = env();
    init_bare(&e.hosted).unwrap();
    let main = e.work.commit("main", "one").unwrap();
    let protected = e.work.commit_on("protected", Some(&main), "two").unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    refuse_refs_hook(&e.upstream, &["refs/heads/protected"]).unwrap();

    let stats = by_name(push(&spec(&e, &all())).unwrap());
    assert_stat(
        &stats["refs/heads/main"],
        None,
        &main,
        Outcome::Updated,
        None,
    );
    let refused = &stats["refs/heads/protected"];
    assert_eq!(refused.outcome, Outcome::Rejected);
    assert_eq!(refused.after, protected);
    assert_eq!(refused.before, None);
    // receive-pack's words for a refusing `update` hook.
    assert_eq!(
        refused.reason.as_deref(),
        Some("remote_rejected: hook declined")
    );
    assert_eq!(
        refs_of(&e.upstream).into_iter().collect::<Vec<_>>(),
        [("refs/heads/main".to_string(), main)]
    );
}

#[test]
fn push_without_hosted_repo_or_matches_is_a_no_op() {
    let e = env();
    let before = e.server.request_count();
    assert_eq!(push(&spec(&e, &all())).unwrap(), vec![]);
    seed_hosted(&e);
    assert_eq!(push(&spec(&e, &globs("nope", ""))).unwrap(), vec![]);
    assert_eq!(e.server.request_count(), before);
    assert!(refs_of(&e.upstream).is_empty());
}

// ---------------------------------------------------------------- auth

#[test]
fn basic_auth_right_and_wrong() {
    let e = env_with(Some(("alice", "s3cret-pw")));
    seed_upstream(&e);
    let m = all();

    let good = Credentials::UsernamePassword {
        username: "alice".into(),
        password: "s3cret-pw".into(),
    };
    let mut s = spec(&e, &m);
    s.credentials = Some(&good);
    let stats = pull(&s).unwrap();
    assert_eq!(stats.len(), 4);
    assert_eq!(refs_of(&e.hosted), refs_of(&e.upstream));

    let token = Credentials::Token {
        token: "s3cret-pw".into(),
        username: Some("alice".into()),
    };
    s.credentials = Some(&token);
    assert!(
        pull(&s)
            .unwrap()
            .iter()
            .all(|r| r.outcome == Outcome::Unchanged)
    );
    let c3 = e.work.commit("main", "three").unwrap();
    force_push(
        e.work.path(),
        &e.hosted,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    let pushed = by_name(push(&s).unwrap());
    assert_eq!(pushed["refs/heads/main"].outcome, Outcome::Updated);
    assert_eq!(rev_parse(&e.upstream, "refs/heads/main").unwrap(), c3);

    let bad = Credentials::UsernamePassword {
        username: "alice".into(),
        password: "wrong-pw-XYZ".into(),
    };
    for run in [pull, push] {
        s.credentials = Some(&bad);
        let before = e.server.request_count();
        let started = Instant::now();
        let err = run(&s).unwrap_err();
        assert_eq!(
            err,
            SyncError::Permanent(FailureCode::AuthenticationFailed.into())
        );
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("alice") && !text.contains("wrong-pw"),
            "{text}"
        );
        let requests = e.server.request_count() - before;
        // One 401 without credentials, one with the wrong ones, then stop.
        assert_eq!(requests, 2);
        assert!(started.elapsed() < Duration::from_secs(30));

        s.credentials = None;
        let before = e.server.request_count();
        assert_eq!(
            run(&s),
            Err(SyncError::Permanent(
                FailureCode::AuthenticationFailed.into()
            ))
        );
        assert!(e.server.request_count() - before <= 2);
    }
}

// ---------------------------------------------------------------- failures

#[test]
fn server_errors_are_classified() {
    let e = env();
    seed_upstream(&e);
    seed_hosted_by_pull(&e);
    let m = all();

    e.server.set_fault(Some(503));
    let err = pull(&spec(&e, &m)).unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.to_string(), "upstream_unavailable: http 503");
    e.work.commit("main", "more").unwrap();
    force_push(
        e.work.path(),
        &e.hosted,
        &["refs/heads/main:refs/heads/main"],
    )
    .unwrap();
    assert_eq!(
        push(&spec(&e, &m)),
        Err(SyncError::Transient(
            FailureCode::UpstreamUnavailable.with("http 503")
        ))
    );
    e.server.set_fault(Some(429));
    assert!(pull(&spec(&e, &m)).unwrap_err().is_transient());
    e.server.set_fault(None);

    let mut s = spec(&e, &m);
    let missing = e.server.repo_url("missing");
    s.url = &missing;
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::UpstreamNotFound.into()))
    );

    // Nothing listens on this port any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x.git", l.local_addr().unwrap())
    };
    s.url = &closed;
    assert_eq!(
        pull(&s),
        Err(SyncError::Transient(FailureCode::ConnectFailed.into()))
    );

    s.url = "file:///etc";
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::InvalidUrl.into()))
    );
}

fn seed_hosted_by_pull(e: &Env) {
    pull(&spec(e, &all())).unwrap();
}

#[test]
fn deadline_and_cancel_stop_before_network() {
    let e = env();
    seed_upstream(&e);
    let m = all();
    let before = e.server.request_count();

    let mut s = spec(&e, &m);
    s.deadline = Instant::now() - Duration::from_millis(1);
    assert_eq!(
        pull(&s),
        Err(SyncError::Transient(FailureCode::Timeout.into()))
    );
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    assert_eq!(
        push(&s),
        Err(SyncError::Transient(FailureCode::Timeout.into()))
    );

    let cancel = std::sync::Arc::new(AtomicBool::new(true));
    let mut s = spec(&e, &m);
    s.cancel = Some(&cancel);
    assert_eq!(pull(&s), Err(SyncError::Cancelled));
    assert_eq!(push(&s), Err(SyncError::Cancelled));
    assert_eq!(e.server.request_count(), before);
    assert!(refs_of(&e.upstream).len() == 4 && all_ref_names(&e.hosted).len() == 4);
}

#[test]
fn ensure_repo_creates_bare_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a").join("b.git");
    assert_eq!(branch_tip(&path, "main").unwrap(), None);
    ensure_repo(&path).unwrap();
    ensure_repo(&path).unwrap();
    let repo = git2::Repository::open_bare(&path).unwrap();
    assert!(repo.is_bare());
    assert_eq!(branch_tip(&path, "main").unwrap(), None);
}

/// Answers every request with a redirect to `location` (+ the request's
/// path and query); returns its base URL and a count of requests served.
fn redirector(location: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    // Never joined: it blocks in accept() until the test process exits.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("/");
            let response = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}{target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (base, served)
}

#[test]
fn redirects_to_another_host_are_refused() {
    let e = env();
    seed_upstream(&e);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    // Same server, named differently: another host as far as a URL goes.
    let elsewhere = format!("http://localhost:{}", e.server.addr().port());
    let (base, served) = redirector(elsewhere);
    let url = format!("{base}/up.git");
    let m = all();
    let mut s = spec(&e, &m);
    s.url = &url;
    let before = e.server.request_count();

    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::RedirectRefused.into()))
    );
    assert_eq!(
        push(&s),
        Err(SyncError::Permanent(FailureCode::RedirectRefused.into()))
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(e.server.request_count(), before);
}

#[test]
fn pull_from_empty_upstream_creates_hosted_repo() {
    let e = env();
    assert_eq!(pull(&spec(&e, &all())).unwrap(), vec![]);
    assert!(git2::Repository::open_bare(&e.hosted).unwrap().is_bare());
    assert!(all_ref_names(&e.hosted).is_empty());
}

#[test]
fn token_uses_default_username() {
    let e = env_with(Some(("x-access-token", "ghs_tok")));
    let (c1, _) = seed_upstream(&e);
    let token = Credentials::Token {
        token: "ghs_tok".into(),
        username: None,
    };
    let m = globs("main", "");
    let mut s = spec(&e, &m);
    s.credentials = Some(&token);
    let stats = pull(&s).unwrap();
    assert_eq!(stats.len(), 1);
    assert_stat(&stats[0], None, &c1, Outcome::Updated, None);
}

#[test]
fn pull_points_head_at_the_default_branch_and_clones_check_it_out() {
    let e = env();
    let (c1, _) = seed_upstream(&e);
    let m = all();
    let mut s = spec(&e, &m);
    s.default_branch = Some("main");
    pull(&s).unwrap();
    let hosted = git2::Repository::open_bare(&e.hosted).unwrap();
    assert_eq!(
        hosted
            .find_reference("HEAD")
            .unwrap()
            .symbolic_target()
            .unwrap(),
        "refs/heads/main"
    );
    // A clone of the hosted repository checks the default branch out.
    let clone = e.hosted.parent().unwrap().join("clone");
    let status = git_command()
        .arg("clone")
        .arg("-q")
        .arg(&e.hosted)
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(rev_parse(&clone, "HEAD").unwrap(), c1);

    // A changed default branch is followed at the next pull, even unborn.
    s.default_branch = Some("trunk");
    pull(&s).unwrap();
    let hosted = git2::Repository::open_bare(&e.hosted).unwrap();
    assert_eq!(
        hosted
            .find_reference("HEAD")
            .unwrap()
            .symbolic_target()
            .unwrap(),
        "refs/heads/trunk"
    );
}

#[test]
fn pull_removes_quarantine_refs_left_by_crashed_runs() {
    let e = env();
    let (c1, _) = seed_upstream(&e);
    let m = all();
    pull(&spec(&e, &m)).unwrap();
    // What a run of another sync killed mid-fetch leaves behind.
    let hosted = git2::Repository::open_bare(&e.hosted).unwrap();
    let oid = git2::Oid::from_str(&c1).unwrap();
    hosted
        .reference("refs/depot/incoming/sync_dead/heads/main", oid, false, "t")
        .unwrap();
    hosted
        .reference("refs/depot/incoming/other-dead/tags/v1.0", oid, false, "t")
        .unwrap();
    drop(hosted);
    pull(&spec(&e, &m)).unwrap();
    assert!(
        all_ref_names(&e.hosted)
            .iter()
            .all(|n| !n.starts_with("refs/depot/")),
        "{:?}",
        all_ref_names(&e.hosted)
    );
}

/// Hundreds of refs take the wildcard fetch; the result is the same as the
/// per-ref fetch (every matched ref, nothing else, no quarantine left), and
/// a re-sync with nothing new transfers no pack at all.
#[test]
fn many_refs_use_the_wildcard_fetch_and_a_no_op_resync_fetches_nothing() {
    let e = env();
    let base = e.work.commit("main", "base").unwrap();
    // 300 branches over a few commits: more than the per-ref refspec limit.
    let mut tips = Vec::new();
    for i in 0..5 {
        tips.push(
            e.work
                .commit_on(&format!("line/{i}"), Some(&base), &format!("line {i}"))
                .unwrap(),
        );
    }
    e.work.push_all_to(&e.upstream).unwrap();
    let upstream_repo = git2::Repository::open_bare(&e.upstream).unwrap();
    for i in 0..300 {
        let oid = git2::Oid::from_str(&tips[i % tips.len()]).unwrap();
        upstream_repo
            .reference(&format!("refs/heads/many/{i:03}"), oid, false, "test")
            .unwrap();
    }
    // A matched subset only: `many/*` and `main`, not `line/*`.
    let m = globs("many/*,main", "");
    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    assert_eq!(stats.len(), 301);
    assert!(
        stats
            .values()
            .all(|s| s.outcome == Outcome::Updated && s.before.is_none())
    );
    let hosted = refs_of(&e.hosted);
    let upstream = refs_of(&e.upstream);
    assert_eq!(hosted.len(), 301, "only matched refs are created");
    for (name, id) in &hosted {
        assert_eq!(upstream.get(name), Some(id), "{name}");
    }
    assert!(
        all_ref_names(&e.hosted)
            .iter()
            .all(|n| !n.starts_with("refs/depot/"))
    );

    // Nothing new: the listing is all that crosses the network.
    let before = e.server.request_count();
    let stats = by_name(pull(&spec(&e, &m)).unwrap());
    assert!(stats.values().all(|s| s.outcome == Outcome::Unchanged));
    let requests = e.server.request_count() - before;
    assert!(
        requests <= 2,
        "a no-op re-sync made {requests} requests; it should only list refs"
    );
}

/// More matched refs than `max_refs`: the run fails before it transfers or
/// writes anything, in both directions; at the limit it goes through.
#[test]
fn the_refs_per_run_limit_fails_a_run_before_any_transfer() {
    let e = env();
    seed_upstream(&e);
    let m = all();
    let upstream_refs = refs_of(&e.upstream).len();
    let mut s = spec(&e, &m);
    s.max_refs = Some(upstream_refs - 1);
    let before = e.server.request_count();
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::TooManyRefs.into()))
    );
    assert!(
        e.server.request_count() - before <= 2,
        "only the listing may happen"
    );
    assert_eq!(all_ref_names(&e.hosted), Vec::<String>::new());
    s.max_refs = Some(upstream_refs);
    assert_eq!(pull(&s).unwrap().len(), upstream_refs);

    // Push: the hosted side now has those refs; the empty upstream gets none.
    let target = e._tmp.path().join("root").join("target.git");
    init_bare(&target).unwrap();
    let url = e.server.repo_url("target");
    let mut p = spec(&e, &m);
    p.url = &url;
    p.max_refs = Some(upstream_refs - 1);
    let before = e.server.request_count();
    assert_eq!(
        push(&p),
        Err(SyncError::Permanent(FailureCode::TooManyRefs.into()))
    );
    assert_eq!(
        e.server.request_count(),
        before,
        "refused before connecting"
    );
    assert!(refs_of(&target).is_empty());
}
