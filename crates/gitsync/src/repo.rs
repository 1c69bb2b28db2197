//! Hosted repository helpers that need no network.

use std::path::Path;

use git2::{ErrorCode, Repository, RepositoryInitOptions};

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

/// Delete every ref under `refs/depot/incoming/`: quarantines of earlier
/// runs that crashed before cleaning up after themselves. Only one run per
/// repository runs at a time, so none of them belongs to a live run (a
/// fenced-out zombie run that loses its quarantine ref falls back to the
/// advertised value, whose objects it has fetched already).
pub(crate) fn clear_all_quarantines(repo: &Repository) {
    let names: Vec<String> = match repo.references_glob("refs/depot/incoming/*") {
        Ok(iter) => iter
            .filter_map(Result::ok)
            .filter_map(|r| r.name().map(str::to_owned))
            .filter(|n| n.starts_with("refs/depot/incoming/"))
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
