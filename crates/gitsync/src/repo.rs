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
