//! upstream -> hosted: fetch into a quarantine namespace, then move each
//! hosted ref with compare-and-swap.

use depot_domain::{Outcome, RefKind, RefStat};
use git2::{ErrorCode, ObjectType, Odb, Oid, Repository};

use crate::RunSpec;
use crate::error::{CONCURRENT_UPDATE, REPOSITORY_ERROR, SyncError, classify};
use crate::net::{Guard, check_url, init_timeouts, is_valid_ref_name, list_remote, open_existing};

const REFLOG_MSG: &str = "depot-sync: pull";

/// Above this many refs to fetch, fetch with two wildcard refspecs instead of
/// one refspec per ref: libgit2 matches refspecs against the advertisement
/// in quadratic time, and with thousands of refs the pause before it sends
/// its wants outlasts the server's keep-alive (the transfer then fails with
/// a broken pipe). The wildcard also fetches unmatched refs' objects; the
/// quarantine is cleared afterwards either way.
const WILDCARD_FETCH_ABOVE: usize = 256;

pub(crate) fn pull(spec: &RunSpec<'_>) -> Result<Vec<RefStat>, SyncError> {
    check_url(spec.url)?;
    check_sync_id(spec.sync_id)?;
    let guard = Guard::new(spec);
    guard.check()?;
    crate::repo::ensure_repo(spec.repo_path)?;
    if let Some(age) = spec.stale_lock_age {
        crate::repo::clear_stale_locks(spec.repo_path, age);
    }
    let repo =
        open_existing(spec.repo_path)?.ok_or_else(|| SyncError::permanent(REPOSITORY_ERROR))?;
    if let Some(branch) = spec.default_branch {
        crate::repo::point_head(&repo, branch)?;
    }
    // Crashed earlier runs (of this sync or another one) may have left
    // quarantine refs behind.
    guard.check()?;
    crate::repo::clear_all_quarantines(&repo, spec.sync_id, spec.attempt);
    let quarantine = Quarantine::new(&repo, spec.sync_id, spec.attempt);
    init_timeouts();

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
        let refspecs: Vec<String> = if to_fetch.len() > WILDCARD_FETCH_ABOVE {
            ["heads", "tags"]
                .iter()
                .map(|ns| {
                    format!(
                        "+refs/{ns}/*:{}",
                        quarantine.name_for(&format!("refs/{ns}/*"))
                    )
                })
                .collect()
        } else {
            to_fetch
                .iter()
                .map(|name| format!("+{name}:{}", quarantine.name_for(name)))
                .collect()
        };
        guard.check()?;
        remote
            .fetch(&refspecs, Some(&mut fetch_opts), Some("depot-sync: fetch"))
            .map_err(|e| guard.error_from(&e))?;
    }
    drop(remote);

    for (name, kind, advertised_oid) in wanted {
        guard.check()?;
        let upstream = repo
            .find_reference(&quarantine.name_for(&name))
            .ok()
            .and_then(|r| r.target())
            .unwrap_or(advertised_oid);
        if !odb.exists(upstream) {
            return Err(SyncError::transient("fetch_incomplete"));
        }
        stats.push(apply(&repo, &odb, &name, kind, upstream)?);
    }
    Ok(stats)
}

/// The quarantine id becomes a ref path component: keep it boring.
fn check_sync_id(id: &str) -> Result<(), SyncError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SyncError::permanent("invalid_sync_id"))
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
) -> Result<RefStat, SyncError> {
    let after = upstream.to_string();
    let stat = |before: Option<Oid>, outcome: Outcome| {
        RefStat::new(name, hex(before), after.clone(), outcome)
    };

    if kind == RefKind::Branch && !is_commit(odb, upstream) {
        let before = read_local(repo, name)?.oid();
        return Ok(stat(before, Outcome::Filtered).with_reason("not_a_commit"));
    }

    // Two rounds: a failed create-only write means someone created the ref
    // meanwhile, and the decision is made again against their value.
    let mut last_seen = None;
    for _ in 0..2 {
        let local = read_local(repo, name)?;
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
                Ok(stat(Some(local), Outcome::Rejected).with_reason(CONCURRENT_UPDATE))
            }
            Err(e) => Err(classify(&e)),
        };
    }
    Ok(stat(last_seen, Outcome::Rejected).with_reason(CONCURRENT_UPDATE))
}

/// `refs/depot/incoming/<sync_id>/a<attempt>/...`: where fetched values wait, so that
/// their objects are reachable (safe from gc) while hosted refs are decided.
/// Emptied on creation and on drop, i.e. also when the run fails.
struct Quarantine<'r> {
    repo: &'r Repository,
    prefix: String,
}

impl<'r> Quarantine<'r> {
    fn new(repo: &'r Repository, sync_id: &str, attempt: u32) -> Self {
        Quarantine {
            repo,
            prefix: crate::repo::quarantine_prefix(sync_id, attempt),
        }
    }

    fn name_for(&self, full: &str) -> String {
        format!(
            "{}{}",
            self.prefix,
            full.strip_prefix("refs/").unwrap_or(full)
        )
    }

    fn clear(&self) {
        let names: Vec<String> = match self.repo.references_glob(&format!("{}*", self.prefix)) {
            Ok(iter) => iter
                .filter_map(Result::ok)
                .filter_map(|r| r.name().map(str::to_owned))
                .filter(|n| n.starts_with(&self.prefix))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e.message(), "listing quarantine refs failed");
                return;
            }
        };
        for name in names {
            let deleted = self.repo.find_reference(&name).and_then(|mut r| r.delete());
            if let Err(e) = deleted
                && e.code() != ErrorCode::NotFound
            {
                tracing::warn!(ref_name = %name, error = %e.message(), "deleting quarantine ref failed");
            }
        }
    }
}

impl Drop for Quarantine<'_> {
    fn drop(&mut self) {
        self.clear();
    }
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
                Err(SyncError::Permanent("invalid_sync_id".into())),
                "{bad}"
            );
        }
    }
}
