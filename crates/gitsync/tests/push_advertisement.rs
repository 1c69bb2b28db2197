//! Pushes against upstreams with thousands of refs, where the transport
//! shows libgit2 only part of the receive-pack advertisement: the pack
//! still holds exactly the objects the upstream lacks, and every ref ends
//! where it should.
//!
//! Object counts are read off the upstream: `git receive-pack` unpacks a
//! pack of fewer than 100 objects (`transfer.unpackLimit`) into loose
//! objects, and the fixtures' history is one fast-import pack, so the loose
//! objects after a push are exactly the objects it sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use depot_domain::{Outcome, RefGlobs, RefStat};
use depot_gitsync::push;
use depot_testkit::fixture::{git_command, git_in_dir_with_input, init_bare, refs_of, rev_parse};

/// History of the fixtures: commits on main, then branches and tags at
/// commits spread over it.
const COMMITS: usize = 400;
const BRANCHES: usize = 2_500;
const TAGS: usize = 500;

struct Env {
    _served: common::Served,
    hosted: PathBuf,
    url: String,
    net: depot_gitsync::Net,
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = git_command()
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fast_import(repo: &Path, stream: &str) {
    git_in_dir_with_input(repo, &["fast-import", "--quiet"], stream.as_bytes()).unwrap();
}

/// About 2 KB of incompressible-ish text, different for every `seed`: a
/// pack of the whole history is hundreds of KB.
fn content(seed: usize) -> String {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(2048);
    while out.len() < 2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}\n"));
    }
    out
}

/// One commit on `branch` (after `from`, if given) changing one of eight
/// files; its time is `seq` seconds after a fixed epoch.
fn commit(stream: &mut String, branch: &str, mark: usize, seq: usize, from: Option<&str>) {
    let data = content(seq);
    let msg = format!("commit {seq}");
    stream.push_str(&format!(
        "commit {branch}\nmark :{mark}\ncommitter Depot Fixture <fixture@depot.test> {} +0000\ndata {}\n{msg}\n",
        1_700_000_000 + seq,
        msg.len()
    ));
    if let Some(from) = from {
        stream.push_str(&format!("from {from}\n"));
    }
    stream.push_str(&format!(
        "M 644 inline f{}.txt\ndata {}\n{data}\n",
        seq % 8,
        data.len()
    ));
}

/// The mark of the commit branch `k` (or tag `k`, with another stride)
/// points at: none of the last 50 commits, so only main reaches them (a
/// push missing main as a hide tip would send them, more than 100 objects).
fn spread(k: usize, stride: usize) -> usize {
    (k * stride) % (COMMITS - 50) + 1
}

/// Upstream and hosted both hold the same history and refs (the hosted
/// one a mirror of the upstream).
fn env() -> Env {
    let served = common::serve(None, None);
    let mut stream = String::new();
    for i in 1..=COMMITS {
        commit(&mut stream, "refs/heads/main", i, i, None);
    }
    for k in 0..BRANCHES {
        stream.push_str(&format!(
            "reset refs/heads/b{k}\nfrom :{}\n\n",
            spread(k, 11)
        ));
    }
    for k in 0..TAGS {
        stream.push_str(&format!(
            "reset refs/tags/t{k}\nfrom :{}\n\n",
            spread(k, 13)
        ));
    }
    fast_import(&served.upstream, &stream);
    let hosted = served.tmp.path().join("hosted.git");
    git(
        served.tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            served.upstream.to_str().unwrap(),
            hosted.to_str().unwrap(),
        ],
    );
    let url = served.server.repo_url("up");
    Env {
        _served: served,
        hosted,
        url,
        net: common::loopback(),
    }
}

impl Env {
    fn upstream(&self) -> &Path {
        &self._served.upstream
    }

    fn push(&self) -> Vec<RefStat> {
        let m = RefGlobs::all().compile().unwrap();
        push(&common::run_spec(&self.hosted, &self.url, &m, &self.net)).unwrap()
    }

    /// `n` new commits on the hosted `branch`, starting at `from`; returns
    /// the new tip.
    fn commits_on(&self, branch: &str, from: &str, n: usize, seed: usize) -> String {
        let mut stream = String::new();
        for i in 0..n {
            let parent = (i == 0).then_some(from);
            commit(&mut stream, branch, i + 1, seed + i, parent);
        }
        fast_import(&self.hosted, &stream);
        rev_parse(&self.hosted, branch).unwrap()
    }

    /// Loose objects in the upstream: what the pushes since `env()` sent.
    fn objects_received(&self) -> usize {
        let mut n = 0;
        for dir in std::fs::read_dir(self.upstream().join("objects")).unwrap() {
            let dir = dir.unwrap();
            let name = dir.file_name();
            let name = name.to_string_lossy();
            if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                n += std::fs::read_dir(dir.path()).unwrap().count();
            }
        }
        n
    }

    fn refs_shown(&self) -> (u64, u64) {
        self.net.transfer.push_advertisement_refs()
    }
}

fn stat<'a>(stats: &'a [RefStat], name: &str) -> &'a RefStat {
    stats
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stat for {name}"))
}

/// One entry per ref; all but `changed` unchanged.
fn assert_rest_unchanged(stats: &[RefStat], changed: &[&str]) {
    assert_eq!(stats.len(), 1 + BRANCHES + TAGS);
    for s in stats {
        if !changed.contains(&s.name.as_str()) {
            assert_eq!(s.outcome, Outcome::Unchanged, "{}", s.name);
        }
    }
}

#[test]
fn incremental_push_to_thousands_of_refs_sends_only_the_new_objects() {
    let e = env();
    let old = rev_parse(&e.hosted, "refs/heads/main").unwrap();
    let new = e.commits_on("refs/heads/main", "refs/heads/main^0", 10, 10_000);

    let stats = e.push();
    let main = stat(&stats, "refs/heads/main");
    assert_eq!(main.outcome, Outcome::Updated);
    assert_eq!(main.before.as_deref(), Some(old.as_str()));
    assert_eq!(main.after, new);
    assert_rest_unchanged(&stats, &["refs/heads/main"]);
    assert_eq!(refs_of(e.upstream()), refs_of(&e.hosted));
    // 10 commits, their 10 trees and 10 blobs: nothing else.
    assert_eq!(e.objects_received(), 30);
    let bytes = e.net.transfer.bytes_out();
    assert!(bytes < 48 * 1024, "push body of {bytes} bytes");
    let (advertised, shown) = e.refs_shown();
    assert_eq!(advertised, (1 + BRANCHES + TAGS) as u64);
    // The capabilities line, main and at most 32 fallback tips.
    assert!(shown <= 34, "libgit2 was shown {shown} refs");
}

#[test]
fn refs_created_at_commits_the_upstream_has_send_no_objects() {
    let e = env();
    let at_tag = rev_parse(&e.hosted, "refs/tags/t37").unwrap();
    let at_branch = rev_parse(&e.hosted, "refs/heads/b1234").unwrap();
    git(&e.hosted, &["update-ref", "refs/heads/new-at-tag", &at_tag]);
    git(
        &e.hosted,
        &["update-ref", "refs/tags/new-at-branch", &at_branch],
    );

    let stats = e.push();
    for (name, at) in [
        ("refs/heads/new-at-tag", &at_tag),
        ("refs/tags/new-at-branch", &at_branch),
    ] {
        let s = stat(&stats, name);
        assert_eq!(s.outcome, Outcome::Updated, "{name}");
        assert_eq!(s.before, None, "{name}");
        assert_eq!(&s.after, at, "{name}");
    }
    assert_eq!(refs_of(e.upstream()), refs_of(&e.hosted));
    assert_eq!(e.objects_received(), 0);
    let bytes = e.net.transfer.bytes_out();
    // Two commands and an empty pack.
    assert!(bytes < 1024, "push body of {bytes} bytes");
}

#[test]
fn a_new_branch_on_an_unchanged_one_sends_only_its_own_commits() {
    let e = env();
    // main sorts after the 2,500 b* branches: not among the fallback tips,
    // found by the walk from the new branch.
    let feature = e.commits_on("refs/heads/feature", "refs/heads/main^0", 3, 20_000);

    let stats = e.push();
    let s = stat(&stats, "refs/heads/feature");
    assert_eq!(s.outcome, Outcome::Updated);
    assert_eq!(s.after, feature);
    assert_eq!(refs_of(e.upstream()), refs_of(&e.hosted));
    assert_eq!(e.objects_received(), 9);
}

#[test]
fn updates_carry_the_right_old_ids_and_refs_gone_here_stay_upstream() {
    let e = env();
    let old_main = rev_parse(&e.hosted, "refs/heads/main").unwrap();
    let old_b1 = rev_parse(&e.hosted, "refs/heads/b1").unwrap();
    let old_t3 = rev_parse(&e.hosted, "refs/tags/t3").unwrap();
    let new_main = e.commits_on("refs/heads/main", "refs/heads/main^0", 2, 30_000);
    let new_b1 = e.commits_on("refs/heads/b1", "refs/heads/b1^0", 1, 31_000);
    // A moved tag (refused, before still right) and a branch deleted here
    // (deletions are never pushed).
    git(&e.hosted, &["update-ref", "refs/tags/t3", &new_main]);
    git(&e.hosted, &["update-ref", "-d", "refs/heads/b2"]);
    let old_b2 = rev_parse(e.upstream(), "refs/heads/b2").unwrap();

    let stats = e.push();
    for (name, before, after) in [
        ("refs/heads/main", &old_main, &new_main),
        ("refs/heads/b1", &old_b1, &new_b1),
    ] {
        let s = stat(&stats, name);
        assert_eq!(s.outcome, Outcome::Updated, "{name}");
        assert_eq!(s.before.as_ref(), Some(before), "{name}");
        assert_eq!(&s.after, after, "{name}");
        assert_eq!(&rev_parse(e.upstream(), name).unwrap(), after, "{name}");
    }
    let t3 = stat(&stats, "refs/tags/t3");
    assert_eq!(t3.outcome, Outcome::Rejected);
    assert_eq!(t3.reason.as_deref(), Some("tag_exists"));
    assert_eq!(t3.before.as_ref(), Some(&old_t3));
    assert_eq!(rev_parse(e.upstream(), "refs/tags/t3").unwrap(), old_t3);
    assert!(stats.iter().all(|s| s.name != "refs/heads/b2"));
    assert_eq!(rev_parse(e.upstream(), "refs/heads/b2").unwrap(), old_b2);
    assert_eq!(e.objects_received(), 9);
}

#[test]
fn push_to_an_empty_upstream_creates_every_ref() {
    let e = env();
    let empty = e.upstream().with_file_name("empty.git");
    init_bare(&empty).unwrap();
    let url = e._served.server.repo_url("empty");
    let m = RefGlobs::all().compile().unwrap();

    let stats = push(&common::run_spec(&e.hosted, &url, &m, &e.net)).unwrap();
    assert_eq!(stats.len(), 1 + BRANCHES + TAGS);
    assert!(
        stats
            .iter()
            .all(|s| s.outcome == Outcome::Updated && s.before.is_none())
    );
    assert_eq!(refs_of(&empty), refs_of(&e.hosted));
}
