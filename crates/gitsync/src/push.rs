//! hosted -> upstream: plan against the remote's advertised refs, push the
//! creations and fast-forwards without `+`, read each ref's fate from the
//! report-status callbacks.
//!
//! The matched refs are handed to the transport before it connects
//! ([`PushIntent`]): libgit2 is shown a trimmed advertisement (the refs it
//! updates plus a bounded set of hide tips, `transport::advert`), and the
//! plan reads the remote's values of the matched refs from the transport,
//! taken from the same bytes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use depot_domain::{FailureCode, Outcome, RefKind, RefStat};
use git2::{
    Direction, ErrorClass, ErrorCode, Oid, PushOptions, ReferenceType, Remote, RemoteRedirect,
    Repository,
};

use crate::RunSpec;
use crate::error::{SyncError, classify};
use crate::net::{Abort, Guard, check_url, is_valid_ref_name, open_existing};
use crate::pull::is_commit;
use crate::transport::PushIntent;

/// Longest remote refusal message kept in a reason.
const MAX_REMOTE_MESSAGE: usize = 200;

enum Source {
    /// Can be synced, with this value.
    Value(Oid),
    /// Matched but excluded: (value, reason).
    Filtered(Oid, &'static str),
}

struct Planned {
    name: String,
    before: Option<Oid>,
    after: Oid,
}

pub(crate) fn push(spec: &RunSpec<'_>) -> Result<Vec<RefStat>, SyncError> {
    check_url(spec.url)?;
    let guard = Guard::new(spec);
    guard.check()?;
    let Some(repo) = open_existing(spec.repo_path)? else {
        return Ok(Vec::new());
    };
    let locals = local_refs(&repo, spec)?;
    if locals.is_empty() {
        return Ok(Vec::new());
    }
    crate::check_ref_count(spec, locals.len())?;

    // One connection for the plan and the push: the receive-pack
    // advertisement it opens with is what the plan reads (through the
    // intent) and what libgit2 pushes against (a separate listing cost a
    // second advertisement of every ref). Dropping `conn` disconnects.
    let intent = Arc::new(PushIntent::new(
        spec.repo_path.to_owned(),
        locals
            .iter()
            .map(|(name, (_, source))| {
                let value = match source {
                    Source::Value(v) => Some(*v),
                    Source::Filtered(..) => None,
                };
                (name.clone(), value)
            })
            .collect(),
    ));
    guard.intend_push(Arc::clone(&intent));
    guard.check()?;
    let mut remote = repo.remote_anonymous(spec.url).map_err(|e| classify(&e))?;
    let mut conn = remote
        .connect_auth(Direction::Push, Some(guard.callbacks()), None)
        .map_err(|e| guard.error_from(&e))?;
    // A connection without a whole advertisement read by the transport
    // cannot happen (libgit2 needs the same flush); no plan without it.
    let advertised = intent
        .take_advertised()
        .ok_or_else(|| SyncError::of(FailureCode::InternalError))?;
    let remote_value = |name: &str| advertised.get(name).copied();

    let odb = repo.odb().map_err(|e| classify(&e))?;
    let mut stats = Vec::new();
    let mut to_push: Vec<Planned> = Vec::new();
    for (name, (kind, source)) in locals {
        let before = remote_value(&name);
        let local = match source {
            Source::Filtered(value, reason) => {
                stats.push(
                    RefStat::new(
                        name,
                        before.map(|o| o.to_string()),
                        value.to_string(),
                        Outcome::Filtered,
                    )
                    .with_reason(reason),
                );
                continue;
            }
            Source::Value(v) => v,
        };
        let stat = |outcome: Outcome| {
            RefStat::new(
                name.clone(),
                before.map(|o| o.to_string()),
                local.to_string(),
                outcome,
            )
        };
        match before {
            None => {}
            Some(remote) if remote == local => {
                stats.push(stat(Outcome::Unchanged));
                continue;
            }
            Some(_) if kind == RefKind::Tag => {
                stats.push(stat(Outcome::Rejected).with_reason("tag_exists"));
                continue;
            }
            Some(remote) => {
                let fast_forward = is_commit(&odb, remote)
                    && repo
                        .graph_descendant_of(local, remote)
                        .map_err(|e| classify(&e))?;
                if !fast_forward {
                    stats.push(stat(Outcome::Rejected).with_reason("non_fast_forward"));
                    continue;
                }
            }
        }
        to_push.push(Planned {
            name,
            before,
            after: local,
        });
    }
    if to_push.is_empty() {
        return Ok(stats);
    }

    guard.check()?;
    let reports = send(conn.remote(), &guard, &to_push)?;
    for p in to_push {
        let stat = RefStat::new(
            p.name.as_str(),
            p.before.map(|o| o.to_string()),
            p.after.to_string(),
            Outcome::Updated,
        );
        stats.push(match reports.get(&p.name) {
            Some(None) => stat,
            Some(Some(msg)) => reject(stat, msg),
            None => reject(stat, "no status reported"),
        });
    }
    Ok(stats)
}

fn reject(mut stat: RefStat, msg: &str) -> RefStat {
    stat.outcome = Outcome::Rejected;
    stat.with_reason(format!("remote_rejected: {}", clean_message(msg)))
}

/// The remote's words go into the stored stats: single line, printable,
/// bounded.
fn clean_message(msg: &str) -> String {
    let cleaned: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REMOTE_MESSAGE)
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "rejected".to_string()
    } else {
        trimmed.to_string()
    }
}

/// One `Remote::push` of all planned refs; returns each ref's report
/// (`None` = accepted, `Some(msg)` = refused by the remote).
fn send(
    remote: &mut Remote<'_>,
    guard: &Guard<'_>,
    planned: &[Planned],
) -> Result<BTreeMap<String, Option<String>>, SyncError> {
    let reports: RefCell<BTreeMap<String, Option<String>>> = RefCell::new(BTreeMap::new());
    let expected: HashMap<&str, Oid> = planned
        .iter()
        .map(|p| (p.name.as_str(), p.before.unwrap_or_else(Oid::zero)))
        .collect();
    let refspecs: Vec<String> = planned.iter().map(|p| format!("{0}:{0}", p.name)).collect();
    {
        let mut callbacks = guard.callbacks();
        callbacks.push_update_reference(|name, status| {
            reports
                .borrow_mut()
                .insert(name.to_owned(), status.map(str::to_owned));
            Ok(())
        });
        // The plan read the values the transport recorded from the
        // advertisement libgit2 was shown, so the updates match it; this
        // check is what holds the two together (should the trimming ever
        // hide a pushed ref's line, or libgit2 re-read the remote's refs):
        // if a ref we push has another old id than planned, `before` (and
        // maybe the decision) is stale: stop before anything is sent; the
        // retry plans again.
        callbacks.push_negotiation(|updates| {
            if guard.trip() {
                return Err(git2::Error::new(
                    ErrorCode::User,
                    ErrorClass::Callback,
                    "aborted",
                ));
            }
            let as_planned = updates.iter().all(|u| {
                u.dst_refname()
                    .and_then(|n| expected.get(n))
                    .is_some_and(|want| *want == u.src())
            });
            if as_planned {
                Ok(())
            } else {
                guard.abort(Abort::ConcurrentUpdate);
                Err(git2::Error::new(
                    ErrorCode::User,
                    ErrorClass::Callback,
                    "concurrent_update",
                ))
            }
        });
        let mut opts = PushOptions::new();
        // Threads for the pack builder's delta search, one per CPU: the
        // search is most of a large push's CPU (docs/benchmarks.md).
        opts.remote_callbacks(callbacks)
            .follow_redirects(RemoteRedirect::None)
            .packbuilder_parallelism(0);
        remote
            .push(&refspecs, Some(&mut opts))
            .map_err(|e| guard.error_from(&e))?;
    }
    Ok(reports.into_inner())
}

/// Matched hosted refs under refs/heads/ and refs/tags/ (refs/depot/* and
/// everything else is outside both namespaces, hence never matched).
fn local_refs(
    repo: &Repository,
    spec: &RunSpec<'_>,
) -> Result<BTreeMap<String, (RefKind, Source)>, SyncError> {
    let odb = repo.odb().map_err(|e| classify(&e))?;
    let mut out = BTreeMap::new();
    for r in repo.references().map_err(|e| classify(&e))? {
        let r = r.map_err(|e| classify(&e))?;
        let Some(name) = r.name() else {
            continue;
        };
        let Some((kind, _)) = RefKind::split(name) else {
            continue;
        };
        if !spec.matcher.matches(name) {
            continue;
        }
        let source = if r.kind() == Some(ReferenceType::Symbolic) {
            // A dangling link has no value to report or sync.
            let Some(value) = r.resolve().ok().and_then(|t| t.target()) else {
                continue;
            };
            Source::Filtered(value, "symbolic_ref")
        } else {
            let Some(value) = r.target() else {
                continue;
            };
            if !is_valid_ref_name(name) {
                Source::Filtered(value, "invalid_ref_name")
            } else if kind == RefKind::Branch && !is_commit(&odb, value) {
                Source::Filtered(value, "not_a_commit")
            } else {
                Source::Value(value)
            }
        };
        out.insert(name.to_owned(), (kind, source));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_messages_are_cleaned() {
        assert_eq!(
            clean_message("pre-receive hook declined"),
            "pre-receive hook declined"
        );
        assert_eq!(clean_message(" a\nb\r\x1b[31m "), "a b  [31m");
        assert_eq!(clean_message(""), "rejected");
        assert_eq!(clean_message(&"x".repeat(500)).len(), MAX_REMOTE_MESSAGE);
    }
}
