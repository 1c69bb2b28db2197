//! upstream -> hosted: download the objects the hosted repository lacks,
//! then move each hosted ref once, with compare-and-swap on the value the
//! decision was based on.
//!
//! Invariants (docs/sync-semantics.md):
//! - a hosted ref is written at most once per run, and only after the
//!   objects of its new value are in the object store;
//! - only creates (create-only) and fast-forwards (CAS) are written: tags
//!   never move, nothing is deleted, a concurrent writer is never
//!   overwritten;
//! - one ref that cannot be applied never fails the others;
//! - many creations at once go into `packed-refs` in one write
//!   (`crate::packed_refs`), still create-only: a name that exists by then
//!   is decided one by one like any other.
//!
//! No quarantine refs: libgit2's `Remote::download` negotiates and indexes
//! the pack without `update_tips`, and the advertised id of each ref is the
//! value to apply (the server sent the objects it needs). Between the
//! download and a ref write, the new objects are unreachable; they are safe
//! because housekeeping (`crate::housekeeping`) runs only under the
//! repository's run lock and prunes only objects older than a grace period
//! longer than any run.

use depot_domain::{Outcome, RefKind, RefStat};
use std::collections::HashSet;

use git2::{ErrorCode, ObjectType, Odb, Oid, Repository};

use crate::RunSpec;
use crate::error::{SyncError, classify};
use crate::net::{Guard, check_url, is_valid_ref_name, list_remote, open_existing};
use depot_domain::FailureCode;

const REFLOG_MSG: &str = "depot-sync: pull";

/// Above this many refs to fetch, negotiate with two wildcard refspecs
/// instead of one refspec per ref: libgit2 matches refspecs against the
/// advertisement in quadratic time, and with thousands of refs the pause
/// before it sends its wants outlasts the server's keep-alive (the transfer
/// then fails with a broken pipe). The wildcard also downloads unmatched
/// refs' objects; they stay unreachable and housekeeping prunes them once
/// they are older than its grace period.
const WILDCARD_FETCH_ABOVE: usize = 256;

/// From this many ref creations on, a run writes them into `packed-refs`
/// at once instead of one loose file each (`crate::packed_refs`).
const PACKED_CREATE_FROM: usize = 64;

/// A run that wrote at least this many refs packs the hosted repository's
/// refs before it ends, so later runs (and clones) read one `packed-refs`
/// file instead of thousands of loose ones.
const PACK_REFS_AFTER_WRITES: usize = 64;

pub(crate) fn pull(spec: &RunSpec<'_>) -> Result<Vec<RefStat>, SyncError> {
    check_url(spec.url)?;
    check_sync_id(spec.sync_id)?;
    let guard = Guard::new(spec);
    guard.check()?;
    crate::repo::ensure_repo(spec.repo_path)?;
    if let Some(age) = spec.stale_lock_age {
        crate::repo::clear_stale_locks(spec.repo_path, age);
    }
    let repo = open_existing(spec.repo_path)?
        .ok_or_else(|| SyncError::of(FailureCode::RepositoryError))?;
    if let Some(branch) = spec.default_branch {
        crate::repo::point_head(&repo, branch)?;
    }
    // Runs of earlier versions fetched through `refs/depot/incoming/`; a
    // crashed one may have left some behind (a newer attempt's are spared).
    guard.check()?;
    crate::repo::clear_all_quarantines(&repo, spec.sync_id, spec.attempt);

    // Both option sets outlive `remote`: libgit2 keeps pointers to their
    // callbacks in the connected transport.
    let mut list_opts = guard.fetch_options();
    let mut fetch_opts = guard.fetch_options();
    let mut remote = repo.remote_anonymous(spec.url).map_err(|e| classify(&e))?;
    let advertised = list_remote(&mut remote, &mut list_opts, &guard)?;

    let mut stats = Vec::new();
    let mut wanted: Vec<(String, RefKind, Oid)> = Vec::new();
    for (name, adv) in advertised {
        if !spec.matcher.matches(&name) {
            continue;
        }
        let Some((kind, _)) = RefKind::split(&name) else {
            continue;
        };
        if adv.symbolic {
            let before = hex(read_local(&repo, &name)?.oid());
            stats.push(
                RefStat::new(name, before, adv.oid.to_string(), Outcome::Filtered)
                    .with_reason("symbolic_ref"),
            );
        } else if !is_valid_ref_name(&name) {
            // Cannot be looked up locally either: libgit2 refuses the name.
            stats.push(
                RefStat::new(name, None, adv.oid.to_string(), Outcome::Filtered)
                    .with_reason("invalid_ref_name"),
            );
        } else {
            wanted.push((name, kind, adv.oid));
        }
    }

    crate::check_ref_count(spec, stats.len() + wanted.len())?;

    // Objects the hosted repository already has need no transfer: a re-sync
    // with nothing new fetches nothing, and a branch created upstream at an
    // existing commit costs no pack.
    let odb = repo.odb().map_err(|e| classify(&e))?;
    let to_fetch: Vec<&str> = wanted
        .iter()
        .filter(|(_, _, oid)| !odb.exists(*oid))
        .map(|(name, _, _)| name.as_str())
        .collect();
    if !to_fetch.is_empty() {
        // The refspecs only select what to want: `download` never writes a
        // ref (no `update_tips`, no FETCH_HEAD). libgit2 refuses a pattern
        // without a destination, hence the (unused) identity mapping.
        let refspecs: Vec<String> = if to_fetch.len() > WILDCARD_FETCH_ABOVE {
            vec![
                "refs/heads/*:refs/heads/*".into(),
                "refs/tags/*:refs/tags/*".into(),
            ]
        } else {
            to_fetch.iter().map(|name| (*name).to_owned()).collect()
        };
        guard.check()?;
        remote
            .download(&refspecs, Some(&mut fetch_opts))
            .map_err(|e| guard.error_from(&e))?;
        // Closes the connection now rather than when `remote` drops after
        // the (possibly long) ref writes.
        if let Err(e) = remote.disconnect() {
            tracing::debug!(error = %e.message(), "disconnecting from the upstream failed");
        }
    }
    drop(remote);

    for (_, _, advertised_oid) in &wanted {
        if !odb.exists(*advertised_oid) {
            return Err(SyncError::of(FailureCode::FetchIncomplete));
        }
    }
    // Each hosted ref is read once here; `apply` decides on that value.
    let mut decided = Vec::with_capacity(wanted.len());
    for (name, kind, oid) in wanted {
        guard.check()?;
        let local = read_local(&repo, &name)?;
        decided.push((name, kind, oid, local));
    }
    let created = create_packed(&repo, &odb, &decided);
    let mut written = 0usize;
    for (name, kind, advertised_oid, local) in decided {
        if created.contains(&name) {
            stats.push(RefStat::new(
                name,
                None,
                advertised_oid.to_string(),
                Outcome::Updated,
            ));
            continue;
        }
        guard.check()?;
        let stat = apply(&repo, &odb, &name, kind, advertised_oid, local)?;
        if stat.outcome == Outcome::Updated {
            written += 1;
        }
        stats.push(stat);
    }
    drop(odb);
    drop(repo);
    if written >= PACK_REFS_AFTER_WRITES {
        // Best effort: the refs are written either way; housekeeping packs
        // them later if this fails (e.g. no git CLI).
        if let Err(e) = crate::housekeeping::pack_refs(spec.repo_path, spec.cancel.map(|c| &**c)) {
            tracing::warn!(error = %e, "packing refs after the pull failed");
        }
    }
    Ok(stats)
}

/// The names of the creations among `decided` written at once into
/// `packed-refs` (`crate::packed_refs`) with their advertised value, when
/// there are enough of them to be worth it. Everything else is decided and
/// written one by one by `apply`, which reads the hosted ref again for
/// anything the batch deferred.
fn create_packed(
    repo: &Repository,
    odb: &Odb<'_>,
    decided: &[(String, RefKind, Oid, Local)],
) -> HashSet<String> {
    let creations: Vec<(String, Oid)> = decided
        .iter()
        .filter(|(_, kind, oid, local)| {
            matches!(local, Local::Absent) && (*kind == RefKind::Tag || is_commit(odb, *oid))
        })
        .map(|(name, _, oid, _)| (name.clone(), *oid))
        .collect();
    if creations.len() < PACKED_CREATE_FROM || writes_reflogs(repo) {
        return HashSet::new();
    }
    crate::packed_refs::create(repo, odb, &creations)
        .created
        .into_iter()
        .collect()
}

/// Whether ref writes in this repository are logged (`core.logAllRefUpdates`
/// `true` or `always`; unset means off in a bare repository). A packed
/// creation writes no reflog, so such a repository gets every ref through
/// libgit2, which logs it.
fn writes_reflogs(repo: &Repository) -> bool {
    let setting = repo
        .config()
        .ok()
        .and_then(|c| c.get_string("core.logAllRefUpdates").ok());
    match setting.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => !repo.is_bare(),
        Some("false" | "no" | "off" | "0") => false,
        Some(_) => true,
    }
}

/// The sync id names the run in logs and paths: keep it boring.
fn check_sync_id(id: &str) -> Result<(), SyncError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SyncError::of(FailureCode::InvalidSyncId))
    }
}

/// What the hosted repository has under a name.
enum Local {
    Absent,
    Direct(Oid),
    /// A symbolic ref; the value it resolves to, if any.
    Symbolic(Option<Oid>),
}

impl Local {
    fn oid(&self) -> Option<Oid> {
        match self {
            Local::Absent => None,
            Local::Direct(o) => Some(*o),
            Local::Symbolic(o) => *o,
        }
    }
}

fn read_local(repo: &Repository, name: &str) -> Result<Local, SyncError> {
    match repo.find_reference(name) {
        Ok(r) => Ok(match r.target() {
            Some(oid) => Local::Direct(oid),
            None => Local::Symbolic(r.resolve().ok().and_then(|r| r.target())),
        }),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(Local::Absent),
        Err(e) => Err(classify(&e)),
    }
}

fn hex(oid: Option<Oid>) -> Option<String> {
    oid.map(|o| o.to_string())
}

pub(crate) fn is_commit(odb: &Odb<'_>, oid: Oid) -> bool {
    odb.read_header(oid)
        .is_ok_and(|(_, kind)| kind == ObjectType::Commit)
}

/// Decide and apply one ref. Only ever creates (create-only) or
/// fast-forwards (CAS on the value the decision was based on), so a
/// concurrent writer is never overwritten.
fn apply(
    repo: &Repository,
    odb: &Odb<'_>,
    name: &str,
    kind: RefKind,
    upstream: Oid,
    read: Local,
) -> Result<RefStat, SyncError> {
    let after = upstream.to_string();
    let stat = |before: Option<Oid>, outcome: Outcome| {
        RefStat::new(name, hex(before), after.clone(), outcome)
    };

    if kind == RefKind::Branch && !is_commit(odb, upstream) {
        return Ok(stat(read.oid(), Outcome::Filtered).with_reason("not_a_commit"));
    }

    // Two rounds: a failed create-only write means someone created the ref
    // meanwhile, and the decision is made again against their value. The
    // first round decides on the value the caller read; a name the packed
    // batch deferred as shadowed is read again then, in the second.
    let mut last_seen = None;
    let mut read = Some(read);
    for _ in 0..2 {
        let local = match read.take() {
            Some(local) => local,
            None => read_local(repo, name)?,
        };
        last_seen = local.oid();
        let local = match local {
            Local::Absent => match repo.reference(name, upstream, false, REFLOG_MSG) {
                Ok(_) => return Ok(stat(None, Outcome::Updated)),
                Err(e) if e.code() == ErrorCode::Exists => continue,
                Err(e) => return Err(classify(&e)),
            },
            // Writing through or over it would move another ref, or replace
            // the link; neither is ours to do.
            Local::Symbolic(resolved) => {
                return Ok(stat(resolved, Outcome::Rejected).with_reason("symbolic_ref"));
            }
            Local::Direct(local) => local,
        };
        if local == upstream {
            return Ok(stat(Some(local), Outcome::Unchanged));
        }
        if kind == RefKind::Tag {
            return Ok(stat(Some(local), Outcome::Rejected).with_reason("tag_exists"));
        }
        let fast_forward = is_commit(odb, local)
            && repo
                .graph_descendant_of(upstream, local)
                .map_err(|e| classify(&e))?;
        if !fast_forward {
            return Ok(stat(Some(local), Outcome::Rejected).with_reason("non_fast_forward"));
        }
        return match repo.reference_matching(name, upstream, true, local, REFLOG_MSG) {
            Ok(_) => Ok(stat(Some(local), Outcome::Updated)),
            Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::NotFound) => {
                Ok(stat(Some(local), Outcome::Rejected)
                    .with_reason(FailureCode::ConcurrentUpdate.as_str()))
            }
            Err(e) => Err(classify(&e)),
        };
    }
    Ok(stat(last_seen, Outcome::Rejected).with_reason(FailureCode::ConcurrentUpdate.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_ids() {
        assert!(check_sync_id("0192f0c4-7a7b-7cc2-9a0e-2b8e2d1f0a11").is_ok());
        assert!(check_sync_id("abc_DEF-1").is_ok());
        for bad in ["", "a/b", "..", "a.lock", "a b", "x*", &"a".repeat(129)] {
            assert_eq!(
                check_sync_id(bad),
                Err(SyncError::Permanent(FailureCode::InvalidSyncId.into())),
                "{bad}"
            );
        }
    }
}
