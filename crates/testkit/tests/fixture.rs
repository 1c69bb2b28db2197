#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fixture helpers: determinism, plumbing commits, ref listing.

use depot_testkit::fixture::{self, WorkRepo};

fn history(dir: &std::path::Path) -> Vec<(String, String)> {
    let work = WorkRepo::new(dir).unwrap();
    work.commit("main", "one").unwrap();
    work.commit_on("side", None, "root").unwrap();
    work.commit("main", "two").unwrap();
    work.tag("v1", "main", true).unwrap();
    work.tag("light", "side", false).unwrap();
    fixture::list_refs(work.path()).unwrap()
}

#[test]
fn histories_are_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert_eq!(history(a.path()), history(b.path()));
}

#[test]
fn commit_on_leaves_other_branches_alone() {
    let dir = tempfile::tempdir().unwrap();
    let work = WorkRepo::new(dir.path()).unwrap();
    let base = work.commit("main", "base").unwrap();
    let a = work.commit_on("a", Some(&base), "same message").unwrap();
    let b = work.commit_on("b", Some(&base), "same message").unwrap();
    assert_ne!(a, b, "counter must make otherwise identical commits differ");
    assert_eq!(fixture::rev_parse(work.path(), "a^").unwrap(), base);
    assert_eq!(fixture::rev_parse(work.path(), "main").unwrap(), base);

    let root = work.commit_on("orphan", None, "root").unwrap();
    let out = fixture::git_command()
        .current_dir(work.path())
        .args(["rev-list", "--parents", "-n1", &root])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), root);
}

#[test]
fn commit_on_checked_out_branch_keeps_work_tree_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let work = WorkRepo::new(dir.path()).unwrap();
    // Unborn checked-out branch first, then a born one.
    let first = work.commit_on("main", None, "plumbing root").unwrap();
    let second = work
        .commit_on("main", Some(&first), "plumbing child")
        .unwrap();
    let third = work.commit("main", "porcelain").unwrap();
    assert_eq!(fixture::rev_parse(work.path(), "HEAD^").unwrap(), second);
    let out = fixture::git_command()
        .current_dir(work.path())
        .args(["ls-tree", "--name-only", &third])
        .output()
        .unwrap();
    let files = String::from_utf8(out.stdout).unwrap();
    assert_eq!(files.lines().count(), 3, "{files}");
}

#[test]
fn list_refs_reports_tag_objects_and_skips_symrefs() {
    let dir = tempfile::tempdir().unwrap();
    let work = WorkRepo::new(&dir.path().join("w")).unwrap();
    let c = work.commit("main", "c").unwrap();
    work.commit("dev", "d").unwrap();
    work.tag("ann", &c, true).unwrap();
    work.tag("lw", &c, false).unwrap();
    let bare = dir.path().join("b.git");
    fixture::init_bare(&bare).unwrap();
    work.push_all_to(&bare).unwrap();
    fixture::git_command()
        .current_dir(&bare)
        .args(["symbolic-ref", "refs/heads/alias", "refs/heads/main"])
        .status()
        .unwrap();

    let refs = fixture::list_refs(&bare).unwrap();
    let names: Vec<_> = refs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "refs/heads/dev",
            "refs/heads/main",
            "refs/tags/ann",
            "refs/tags/lw"
        ]
    );
    let ann = fixture::rev_parse(&bare, "refs/tags/ann").unwrap();
    assert_ne!(ann, c);
    assert!(refs.contains(&("refs/tags/ann".to_owned(), ann)));
    assert!(refs.contains(&("refs/tags/lw".to_owned(), c.clone())));
    assert_eq!(fixture::rev_parse(&bare, "ann^{commit}").unwrap(), c);
}
