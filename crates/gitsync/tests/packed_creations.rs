//! A pull that creates many refs writes them into `packed-refs` at once
//! (crates/gitsync `packed_refs`); whatever that cannot take goes through
//! the one-by-one path with its usual decisions. Against a real upstream
//! over smart HTTP on loopback; the result is read back by the git CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use depot_domain::{Outcome, RefGlobs, RefMatcher, RefStat};
use depot_gitsync::pull;
use depot_testkit::fixture::{git_command, init_bare, refs_of};

/// Refs the upstream gets: comfortably above the batch's threshold.
const BRANCHES: usize = 120;
const TAGS: usize = 30;

struct Env {
    served: common::Served,
    hosted: PathBuf,
    url: String,
    net: depot_gitsync::Net,
    matcher: RefMatcher,
}

fn env() -> Env {
    let served = common::serve(None, None);
    let hosted = served.tmp.path().join("hosted.git");
    let url = served.server.repo_url("up");
    Env {
        served,
        hosted,
        url,
        net: common::loopback(),
        matcher: RefGlobs::all().compile().unwrap(),
    }
}

impl Env {
    fn pull(&self) -> BTreeMap<String, RefStat> {
        let spec = common::run_spec(&self.hosted, &self.url, &self.matcher, &self.net);
        pull(&spec)
            .unwrap()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect()
    }

    /// `count` branches `b/NNN` from `first` on, over a few commits, and
    /// `TAGS` tags (every other one annotated) when `tags` is set.
    fn add_upstream_refs(&self, first: usize, count: usize, tags: bool) {
        let base = self.served.work.commit("main", "base").unwrap();
        self.served.work.push_all_to(&self.served.upstream).unwrap();
        let up = git2::Repository::open_bare(&self.served.upstream).unwrap();
        let oid = git2::Oid::from_str(&base).unwrap();
        for i in first..first + count {
            up.reference(&format!("refs/heads/b/{i:03}"), oid, false, "test")
                .unwrap();
        }
        if tags {
            let target = up.find_object(oid, None).unwrap();
            let sig = git2::Signature::now("t", "t@example.com").unwrap();
            for i in 0..TAGS {
                let name = format!("t{i:02}");
                if i % 2 == 0 {
                    up.tag(&name, &target, &sig, "annotated", false).unwrap();
                } else {
                    up.tag_lightweight(&name, &target, false).unwrap();
                }
            }
        }
    }
}

/// Files under `refs/` (loose refs), relative to the git directory.
fn loose_refs(git_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![git_dir.join("refs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(git_dir).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// `git show-ref -d`: refs with the peeled value of each annotated tag,
/// which git reads from `packed-refs`' `^` lines when they are there.
fn show_ref_peeled(git_dir: &Path) -> String {
    let out = git_command()
        .arg("--git-dir")
        .arg(git_dir)
        .args(["show-ref", "-d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "show-ref failed in {}",
        git_dir.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Directory mtimes of `refs/heads` and `refs/tags`, set far in the past
/// first: a loose ref written there, even one `pack-refs` removed again
/// later, leaves them changed.
fn age_ref_dirs(git_dir: &Path) -> Vec<SystemTime> {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    ["heads", "tags"]
        .iter()
        .map(|d| {
            let dir = File::open(git_dir.join("refs").join(d)).unwrap();
            dir.set_modified(old).unwrap();
            dir.metadata().unwrap().modified().unwrap()
        })
        .collect()
}

fn ref_dir_mtimes(git_dir: &Path) -> Vec<SystemTime> {
    ["heads", "tags"]
        .iter()
        .map(|d| {
            std::fs::metadata(git_dir.join("refs").join(d))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_first_pull_of_many_refs_writes_them_into_packed_refs_without_loose_files() {
    let e = env();
    e.add_upstream_refs(0, BRANCHES, true);
    init_bare(&e.hosted).unwrap();
    let aged = age_ref_dirs(&e.hosted);
    let stats = e.pull();
    assert_eq!(
        ref_dir_mtimes(&e.hosted),
        aged,
        "no loose ref was ever written (not even one pack-refs removed later)"
    );
    assert_eq!(stats.len(), BRANCHES + 1 + TAGS);
    assert!(
        stats
            .values()
            .all(|s| s.outcome == Outcome::Updated && s.before.is_none()),
        "every ref is a creation"
    );
    assert_eq!(loose_refs(&e.hosted), Vec::<String>::new());
    assert_eq!(refs_of(&e.hosted), refs_of(&e.served.upstream));
    assert_eq!(
        show_ref_peeled(&e.hosted),
        show_ref_peeled(&e.served.upstream),
        "annotated tags carry their peeled values"
    );
}

#[test]
fn a_ref_that_already_exists_is_decided_on_its_own_beside_the_batch() {
    let e = env();
    e.add_upstream_refs(0, BRANCHES, false);
    // The hosted repository has one of the names already, at a commit the
    // upstream's is not a descendant of.
    let other = e.served.work.commit("elsewhere", "unrelated").unwrap();
    init_bare(&e.hosted).unwrap();
    depot_testkit::fixture::force_push(
        e.served.work.path(),
        &e.hosted,
        &["refs/heads/elsewhere:refs/heads/b/007"],
    )
    .unwrap();
    let stats = e.pull();
    let taken = &stats["refs/heads/b/007"];
    assert_eq!(taken.outcome, Outcome::Rejected);
    assert_eq!(taken.reason.as_deref(), Some("non_fast_forward"));
    assert_eq!(refs_of(&e.hosted)["refs/heads/b/007"], other);
    let updated = stats
        .values()
        .filter(|s| s.outcome == Outcome::Updated)
        .count();
    assert_eq!(updated, BRANCHES, "every other ref is created");
    assert_eq!(loose_refs(&e.hosted), vec!["refs/heads/b/007".to_owned()]);
}

#[test]
fn a_held_packed_refs_lock_sends_every_creation_through_loose_files() {
    let e = env();
    e.add_upstream_refs(0, BRANCHES, false);
    init_bare(&e.hosted).unwrap();
    let lock = e.hosted.join("packed-refs.lock");
    std::fs::write(&lock, b"someone else packing").unwrap();
    let stats = e.pull();
    assert!(stats.values().all(|s| s.outcome == Outcome::Updated));
    assert_eq!(loose_refs(&e.hosted).len(), BRANCHES + 1);
    assert_eq!(refs_of(&e.hosted), refs_of(&e.served.upstream));
    assert_eq!(
        std::fs::read(&lock).unwrap(),
        b"someone else packing",
        "another writer's lock is left alone"
    );
}

#[test]
fn entries_already_packed_by_git_are_kept_when_new_ones_are_added() {
    let e = env();
    e.add_upstream_refs(0, BRANCHES, true);
    e.pull();
    let packed = git_command()
        .arg("--git-dir")
        .arg(&e.hosted)
        .args(["pack-refs", "--all"])
        .status()
        .unwrap();
    assert!(packed.success());
    // More branches, and main moves on: a batch of creations plus one
    // fast-forward.
    e.add_upstream_refs(BRANCHES, BRANCHES, false);
    let stats = e.pull();
    let updated = stats
        .values()
        .filter(|s| s.outcome == Outcome::Updated)
        .count();
    assert_eq!(updated, BRANCHES + 1);
    assert!(
        stats["refs/heads/main"].before.is_some(),
        "main fast-forwarded"
    );
    assert_eq!(refs_of(&e.hosted), refs_of(&e.served.upstream));
    assert_eq!(
        show_ref_peeled(&e.hosted),
        show_ref_peeled(&e.served.upstream)
    );
}
