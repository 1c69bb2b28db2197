//! Hosted repository helpers that need no network.

use std::path::Path;
use std::time::{Duration, SystemTime};

use git2::{ErrorCode, Repository, RepositoryInitOptions};
use walkdir::WalkDir;

use crate::error::{SyncError, classify};
use crate::net::{is_valid_ref_name, open_existing};

pub(crate) fn ensure_repo(path: &Path) -> Result<(), SyncError> {
    if open_existing(path)?.is_some() {
        return Ok(());
    }
    let mut opts = RepositoryInitOptions::new();
    // `no_reinit(false)`: a concurrent creator winning the race is fine.
    opts.bare(true).mkpath(true).no_reinit(false);
    Repository::init_opts(path, &opts)
        .map(drop)
        .map_err(|e| classify(&e))
}

pub(crate) fn set_default_branch(path: &Path, branch: &str) -> Result<(), SyncError> {
    let Some(repo) = open_existing(path)? else {
        return Ok(());
    };
    point_head(&repo, branch)
}

/// `HEAD` -> `refs/heads/<branch>`, written only when it differs.
pub(crate) fn point_head(repo: &Repository, branch: &str) -> Result<(), SyncError> {
    let target = format!("refs/heads/{branch}");
    if !is_valid_ref_name(&target) {
        return Ok(());
    }
    let current = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_owned));
    if current.as_deref() == Some(target.as_str()) {
        return Ok(());
    }
    repo.set_head(&target).map_err(|e| classify(&e))
}

/// Where one attempt of one sync quarantined fetched values (runs of
/// earlier versions; pulls no longer write quarantine refs).
#[cfg(test)]
fn quarantine_prefix(sync_id: &str, attempt: u32) -> String {
    format!("refs/depot/incoming/{sync_id}/a{attempt}/")
}

/// Whether `name` lies in a quarantine of `sync_id` newer than `attempt`.
fn is_newer_attempt(name: &str, sync_id: &str, attempt: u32) -> bool {
    name.strip_prefix("refs/depot/incoming/")
        .and_then(|rest| rest.strip_prefix(sync_id))
        .and_then(|rest| rest.strip_prefix("/a"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n > attempt)
}

/// Delete the refs under `refs/depot/incoming/` left by runs that crashed
/// before cleaning up after themselves, except a newer attempt's of the
/// same sync (`attempt` of `sync_id` is the caller's): a run that went
/// stale (its lease handed on) must never clear the quarantine of the run
/// that replaced it. Only one run per repository holds a lease at a time,
/// so the others belong to no live run (a fenced-out zombie run that loses
/// its quarantine ref falls back to the advertised value, whose objects it
/// has fetched already).
pub(crate) fn clear_all_quarantines(repo: &Repository, sync_id: &str, attempt: u32) {
    let names: Vec<String> = match repo.references_glob("refs/depot/incoming/*") {
        Ok(iter) => iter
            .filter_map(Result::ok)
            .filter_map(|r| r.name().map(str::to_owned))
            .filter(|n| n.starts_with("refs/depot/incoming/"))
            .filter(|n| !is_newer_attempt(n, sync_id, attempt))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e.message(), "listing quarantine refs failed");
            return;
        }
    };
    if !names.is_empty() {
        tracing::info!(
            count = names.len(),
            "removing quarantine refs left by earlier runs"
        );
    }
    for name in names {
        let deleted = repo.find_reference(&name).and_then(|mut r| r.delete());
        if let Err(e) = deleted
            && e.code() != ErrorCode::NotFound
        {
            tracing::warn!(ref_name = %name, error = %e.message(), "deleting quarantine ref failed");
        }
    }
}

/// Remove `*.lock` files at least `older_than` old from a hosted repository
/// (its git directory, `objects/` aside). libgit2 writes a ref through
/// `<ref>.lock` and refuses to update a ref whose lock exists, so a run
/// killed mid-write (SIGKILL, OOM, a lost node) used to fail every later run
/// of the repository with `lock_contention` until someone removed the file.
///
/// Why an age and not "all of them": runs of one repository never overlap
/// (a claim needs no other run of it in progress), and the sync of a run
/// that died is claimed again only once its lease has run out; it renewed
/// the lease every third of it, so its locks are at least two thirds of a
/// lease old by then. The worker passes half a lease. A younger lock can
/// only belong to a run that lost its lease but is still writing (it stops
/// at its next heartbeat): removing that one could let its rename publish
/// our half-written lock, so it is left alone.
pub(crate) fn clear_stale_locks(git_dir: &Path, older_than: Duration) {
    let now = SystemTime::now();
    let mut removed = 0usize;
    let entries = WalkDir::new(git_dir)
        .follow_links(false)
        .into_iter()
        // Objects are written to temporary files, never through locks;
        // skipping them keeps the walk to refs and a few files.
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == "objects"))
        .filter_map(Result::ok);
    for entry in entries {
        let is_lock =
            entry.file_type().is_file() && entry.file_name().as_encoded_bytes().ends_with(b".lock");
        if !is_lock {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= older_than);
        if !stale {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %entry.path().display(),
                error = %e,
                "removing a stale lock file failed"
            ),
        }
    }
    if removed > 0 {
        tracing::warn!(
            count = removed,
            "removed stale lock files left by an interrupted run"
        );
    }
}

pub(crate) fn branch_tip(path: &Path, branch: &str) -> Result<Option<String>, SyncError> {
    let Some(repo) = open_existing(path)? else {
        return Ok(None);
    };
    let name = format!("refs/heads/{branch}");
    if !is_valid_ref_name(&name) {
        return Ok(None);
    }
    let reference = match repo.find_reference(&name) {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(classify(&e)),
    };
    // A branch at a non-commit (or a dangling symbolic one) has no tip commit.
    Ok(reference.peel_to_commit().ok().map(|c| c.id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_newer_attempt_of_the_same_sync_is_spared() {
        let q = |id, n| format!("{}heads/main", quarantine_prefix(id, n));
        assert!(is_newer_attempt(&q("s1", 3), "s1", 2));
        assert!(!is_newer_attempt(&q("s1", 2), "s1", 2));
        assert!(!is_newer_attempt(&q("s1", 1), "s1", 2));
        assert!(!is_newer_attempt(&q("s10", 3), "s1", 2));
        assert!(!is_newer_attempt(&q("s2", 9), "s1", 2));
        assert!(!is_newer_attempt("refs/depot/incoming/s1/heads/x", "s1", 2));
    }
}
