//! A pull that writes each hosted ref once and leaves its refs packed, and
//! housekeeping of the hosted object store, against a real git smart-HTTP
//! server on loopback and checked with the git CLI (`for-each-ref`, `fsck`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use depot_domain::{Outcome, RefGlobs, RefMatcher};
use depot_gitsync::housekeeping::{self, Policy};
use depot_gitsync::{RunSpec, pull};
use depot_testkit::GitHttpServer;
use depot_testkit::fixture::{WorkRepo, git_command, git_in_dir_with_input, has_object, list_refs};

struct Env {
    _tmp: tempfile::TempDir,
    _server: GitHttpServer,
    work: WorkRepo,
    upstream: PathBuf,
    hosted: PathBuf,
    url: String,
    net: depot_gitsync::Net,
}

fn env() -> Env {
    let common::Served {
        tmp,
        server,
        work,
        upstream,
    } = common::serve(None, None);
    let hosted = tmp.path().join("hosted").join("repo.git");
    let url = server.repo_url("up");
    Env {
        _tmp: tmp,
        _server: server,
        work,
        upstream,
        hosted,
        url,
        net: common::loopback(),
    }
}

fn all() -> RefMatcher {
    RefGlobs::all().compile().unwrap()
}

fn spec<'a>(e: &'a Env, matcher: &'a RefMatcher) -> RunSpec<'a> {
    common::run_spec(&e.hosted, &e.url, matcher, &e.net)
}

fn policy() -> Policy {
    Policy {
        max_packs: 4,
        max_loose_refs: 64,
        max_loose_objects: 1024,
        grace: Duration::from_secs(3600),
        prune_every: Duration::from_secs(86_400),
        time_limit: Duration::from_secs(300),
    }
}

fn git(repo: &Path, args: &[&str]) -> std::process::Output {
    git_command()
        .arg(format!("--git-dir={}", repo.display()))
        .args(args)
        .output()
        .unwrap()
}

/// `git fsck --strict` passes (errors only; dangling objects are fine).
fn assert_fsck(repo: &Path) {
    let out = git(repo, &["fsck", "--strict", "--no-dangling"]);
    assert!(
        out.status.success(),
        "git fsck: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn loose_ref_files(repo: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(repo.join("refs"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// `n` branches `bulk/NNNNN` at a few commits, written straight into the
/// upstream (one `git update-ref --stdin`), plus `main`.
fn many_branches(e: &Env, n: usize) -> String {
    let base = e.work.commit("main", "base").unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
    let input: String = (0..n)
        .map(|i| format!("create refs/heads/bulk/{i:05} {base}\n"))
        .collect();
    git_in_dir_with_input(&e.upstream, &["update-ref", "--stdin"], input.as_bytes()).unwrap();
    base
}

/// Every hosted ref the pull wrote has exactly one reflog entry: written
/// once, straight to its final value (no quarantine copy moved over it).
#[test]
fn pull_writes_each_hosted_ref_exactly_once() {
    let e = env();
    many_branches(&e, 400);
    let m = all();
    depot_gitsync::ensure_repo(&e.hosted).unwrap();
    let out = git(&e.hosted, &["config", "core.logAllRefUpdates", "always"]);
    assert!(out.status.success());
    let stats = pull(&spec(&e, &m)).unwrap();
    assert_eq!(stats.len(), 401);
    assert!(stats.iter().all(|s| s.outcome == Outcome::Updated));
    for name in [
        "refs/heads/main",
        "refs/heads/bulk/00000",
        "refs/heads/bulk/00399",
    ] {
        let out = git(&e.hosted, &["reflog", "show", "--format=%gs", name]);
        let log = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            ["depot-sync: pull"],
            "{name}"
        );
    }
    // Nothing but the hosted refs was ever written, not even transiently:
    // a quarantine ref leaves its reflog directory behind.
    assert!(!e.hosted.join("logs").join("refs").join("depot").exists());
    assert!(
        list_refs(&e.hosted)
            .unwrap()
            .iter()
            .all(|(n, _)| n.starts_with("refs/heads/"))
    );
}

/// A pull of 5,000 refs ends with them in `packed-refs`: a handful of loose
/// ref files at most, and git reads every ref and the object graph fine.
#[test]
fn pull_of_5000_refs_leaves_them_packed_and_readable_by_git() {
    let e = env();
    let base = many_branches(&e, 5_000);
    let m = all();
    let stats = pull(&spec(&e, &m)).unwrap();
    assert_eq!(stats.len(), 5_001);
    let loose = loose_ref_files(&e.hosted);
    assert!(loose.len() <= 5, "{} loose refs: {loose:?}", loose.len());
    assert!(e.hosted.join("packed-refs").is_file());
    let refs = list_refs(&e.hosted).unwrap();
    assert_eq!(refs, list_refs(&e.upstream).unwrap());
    assert_eq!(refs.len(), 5_001);
    assert!(refs.iter().all(|(_, id)| *id == base));
    assert_fsck(&e.hosted);
    // A re-sync reads the packed refs back: nothing to do.
    let again = pull(&spec(&e, &m)).unwrap();
    assert!(again.iter().all(|s| s.outcome == Outcome::Unchanged));
}

/// A hundred incremental pulls, each adding a pack, with housekeeping after
/// each: the pack count stays bounded and git reads the result.
#[test]
fn housekeeping_after_each_pull_keeps_the_pack_count_bounded() {
    let e = env();
    let m = all();
    // About consolidation: the day-long prune interval keeps prunes out.
    let p = policy();
    let mut max_seen = 0;
    let mut tip = String::new();
    for i in 0..60 {
        tip = e.work.commit("main", &format!("c{i}")).unwrap();
        e.work.push_all_to(&e.upstream).unwrap();
        let stats = pull(&spec(&e, &m)).unwrap();
        assert_eq!(stats[0].outcome, Outcome::Updated);
        let report = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
        max_seen = max_seen.max(report.packs_after);
    }
    let inspection = housekeeping::inspect(&e.hosted, p.grace).unwrap().unwrap();
    assert!(
        max_seen <= p.max_packs + 1,
        "up to {max_seen} packs with max_packs {}",
        p.max_packs
    );
    assert!(inspection.packs <= p.max_packs + 1, "{inspection:?}");
    let out = git(&e.hosted, &["rev-parse", "refs/heads/main"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tip);
    assert_fsck(&e.hosted);
}

/// Writes a blob no ref reaches, returns its id and loose object path.
fn unreachable_blob(repo: &Path, content: &str) -> (String, PathBuf) {
    let r = git2::Repository::open_bare(repo).unwrap();
    let oid = r.blob(content.as_bytes()).unwrap().to_string();
    let path = repo.join("objects").join(&oid[..2]).join(&oid[2..]);
    assert!(path.is_file());
    (oid, path)
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

/// Pruning drops unreachable objects older than the grace period and keeps
/// younger ones (what a run between its download and its ref writes still
/// needs), and every reachable object.
#[test]
fn prune_drops_old_unreachable_objects_and_keeps_young_ones() {
    let e = env();
    let m = all();
    let tip = e.work.commit("main", "one").unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
    pull(&spec(&e, &m)).unwrap();
    let (old, old_path) = unreachable_blob(&e.hosted, "left by a wildcard fetch long ago");
    age(&old_path, Duration::from_secs(7_200));
    let (young, _) = unreachable_blob(&e.hosted, "downloaded by a run still writing refs");
    let mut p = policy();
    p.prune_every = Duration::ZERO;
    // The first look starts the prune clock; the next one prunes.
    let first = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert!(!first.pruned, "{first:?}");
    let report = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert!(report.pruned, "{report:?}");
    assert!(!has_object(&e.hosted, &old), "old unreachable object kept");
    assert!(
        has_object(&e.hosted, &young),
        "young unreachable object pruned"
    );
    assert!(has_object(&e.hosted, &tip));
    assert_fsck(&e.hosted);

    // The next pass is not due yet: nothing is rewritten.
    p.prune_every = Duration::from_secs(3_600);
    let report = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert!(!report.pruned && !report.repacked, "{report:?}");
}

/// `content` as an unreachable blob that lives only in a pack of its own,
/// as objects of refs a wildcard fetch brought but no glob matched do; the
/// pack's files are `aged` (their mtime is what the grace is judged by).
fn unreachable_packed_blob(repo: &Path, content: &str, aged: Duration) -> String {
    let (oid, _) = unreachable_blob(repo, content);
    let mut child = git_command()
        .arg(format!("--git-dir={}", repo.display()))
        .args(["pack-objects", "-q"])
        .arg(repo.join("objects").join("pack").join("pack"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{oid}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let name = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(git(repo, &["prune-packed"]).status.success());
    let loose = repo.join("objects").join(&oid[..2]).join(&oid[2..]);
    assert!(!loose.exists(), "the blob is packed only");
    for ext in ["pack", "idx", "rev"] {
        let f = repo
            .join("objects")
            .join("pack")
            .join(format!("pack-{name}.{ext}"));
        if f.exists() {
            age(&f, aged);
        }
    }
    oid
}

/// The same holds for unreachable objects that sit in packs (what a
/// wildcard download leaves for refs no glob matched): old ones go, young
/// ones stay, and the repository stays whole.
#[test]
fn prune_drops_old_unreachable_packed_objects_and_keeps_young_ones() {
    let e = env();
    let m = all();
    let tip = e.work.commit("main", "one").unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
    pull(&spec(&e, &m)).unwrap();
    let old = unreachable_packed_blob(
        &e.hosted,
        "packed by a wildcard fetch long ago",
        Duration::from_secs(7_200),
    );
    let young = unreachable_packed_blob(
        &e.hosted,
        "packed by a run still writing refs",
        Duration::ZERO,
    );
    let mut p = policy();
    p.prune_every = Duration::ZERO;
    // The first look starts the prune clock; the next one prunes.
    housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    let report = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert!(report.pruned, "{report:?}");
    assert!(
        !has_object(&e.hosted, &old),
        "old unreachable packed object kept"
    );
    assert!(
        has_object(&e.hosted, &young),
        "young unreachable packed object pruned"
    );
    assert!(has_object(&e.hosted, &tip));
    assert_fsck(&e.hosted);
}

/// Temporary pack files and locks of dead runs (older than the grace) are
/// removed; young ones, which a live process may be writing, are kept.
#[test]
fn stale_temporary_and_lock_files_are_removed_and_young_ones_kept() {
    let e = env();
    let m = all();
    e.work.commit("main", "one").unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
    pull(&spec(&e, &m)).unwrap();
    let pack_dir = e.hosted.join("objects").join("pack");
    let stale = [
        pack_dir.join("tmp_pack_dead01"),
        pack_dir.join("pack_git2_dead02"),
        e.hosted.join("refs").join("heads").join("main.lock"),
        e.hosted.join("packed-refs.lock"),
    ];
    let young = [
        pack_dir.join("tmp_pack_live01"),
        e.hosted.join("refs").join("heads").join("other.lock"),
    ];
    for f in stale.iter().chain(&young) {
        std::fs::write(f, b"partial").unwrap();
    }
    for f in &stale {
        age(f, Duration::from_secs(7_200));
    }
    let p = policy();
    let inspection = housekeeping::inspect(&e.hosted, p.grace).unwrap().unwrap();
    assert_eq!(inspection.stale_files, stale.len());
    let report = housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert_eq!(report.removed_files, stale.len(), "{report:?}");
    for f in &stale {
        assert!(!f.exists(), "{} kept", f.display());
    }
    for f in &young {
        assert!(f.exists(), "{} removed", f.display());
    }
}

/// A raised cancel flag stops a pass (its git command is killed) and the
/// repository stays intact.
#[test]
fn a_cancelled_pass_stops_and_leaves_the_repository_intact() {
    let e = env();
    let m = all();
    many_branches(&e, 10);
    pull(&spec(&e, &m)).unwrap();
    let cancel = AtomicBool::new(true);
    let mut p = policy();
    p.prune_every = Duration::ZERO;
    // Starts the prune clock, so the next pass has a git command to run.
    housekeeping::housekeep(&e.hosted, &p, None).unwrap();
    assert_eq!(
        housekeeping::housekeep(&e.hosted, &p, Some(&cancel)),
        Err(housekeeping::HousekeepingError::Cancelled)
    );
    assert_eq!(list_refs(&e.hosted).unwrap().len(), 11);
    assert_fsck(&e.hosted);
}

/// No repository (never pulled, or purged): nothing to do, no error.
#[test]
fn housekeeping_an_absent_repository_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let report = housekeeping::housekeep(&tmp.path().join("none.git"), &policy(), None).unwrap();
    assert!(report.absent && !report.did_anything());
}

#[test]
fn the_git_cli_version_is_reported() {
    let v = housekeeping::git_version().unwrap();
    assert!(v.starts_with("git version "), "{v}");
}
