//! Git work of a sync run: pull (upstream -> hosted) and push (hosted ->
//! upstream) over git smart HTTP with libgit2, fast-forward only, tags never
//! move, per-ref outcomes as the public API reports them.
//!
//! Everything here is blocking; the worker runs it in `spawn_blocking`.
//! Nothing the network or a repository can influence makes it panic: the
//! entry points also catch panics raised inside git2's FFI callbacks (it
//! unwraps non-UTF-8 strings there) and report them as an error.
//!
//! `housekeeping` keeps hosted repositories' object stores in shape (it runs
//! the `git` CLI, which libgit2 cannot replace there).
//!
//! Process-wide side effect: libgit2's `http`/`https` transports are
//! replaced by this crate's ([`install_transport`], run at worker start and
//! again, as a no-op, by every run; see `transport`).

mod error;
pub mod housekeeping;
mod net;
mod packed_refs;
mod pull;
mod push;
mod repo;
mod transport;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use depot_domain::{FailureCode, RefMatcher, RefStat};

pub use error::SyncError;
pub use transport::{
    DEFAULT_MAX_ADVERTISEMENT_BYTES, Net, Transfer, USER_AGENT, install as install_transport,
};

/// How to authenticate to the upstream; handed to libgit2 only through its
/// credential callback.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `username` defaults to "x-access-token" (GitHub's convention; GitLab
    /// accepts any name with a token).
    Token {
        token: String,
        username: Option<String>,
    },
    UsernamePassword {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token { .. } => f.write_str("Credentials::Token(<redacted>)"),
            Credentials::UsernamePassword { .. } => {
                f.write_str("Credentials::UsernamePassword(<redacted>)")
            }
        }
    }
}

/// One run's inputs.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec<'a> {
    /// Hosted bare repository; `pull` creates it when missing.
    pub repo_path: &'a Path,
    /// Upstream URL, http(s) only, without userinfo; the caller has checked
    /// the upstream policy.
    pub url: &'a str,
    pub credentials: Option<&'a Credentials>,
    pub matcher: &'a RefMatcher,
    /// The sync this run belongs to; ASCII letters, digits, `-` and `_`
    /// only.
    pub sync_id: &'a str,
    /// The run's attempt (its fencing token): quarantines are per attempt,
    /// `refs/depot/incoming/<sync_id>/a<attempt>/`, and a run never clears
    /// a newer attempt's, so a stale run cannot pull a newer run's fetched
    /// values from under it.
    pub attempt: u32,
    /// Wall-clock cap; network work stops once it has passed
    /// (`Transient("timeout")`).
    pub deadline: Instant,
    /// Raised on shutdown or a lost lease: stop as soon as possible
    /// (`SyncError::Cancelled`). Shared (an `Arc`) because the transport
    /// watches it from its own thread, so a run blocked on the network
    /// stops within [`CANCEL_POLL`](crate::transport::CANCEL_POLL).
    pub cancel: Option<&'a Arc<AtomicBool>>,
    /// A fetch receiving more than this fails with `Permanent("pack_too_large")`.
    pub max_pack_bytes: Option<u64>,
    /// A run matching more refs than this fails with
    /// `Permanent("too_many_refs")` before it transfers anything.
    pub max_refs: Option<usize>,
    /// The repository's default branch (short name). A pull points the
    /// hosted repository's `HEAD` at `refs/heads/<it>` (even while unborn),
    /// so clones of the hosted repository check it out.
    pub default_branch: Option<&'a str>,
    /// A pull first removes `*.lock` files at least this old from the
    /// hosted repository: left by a run killed mid-write, they would fail
    /// every later run with `lock_contention`. The worker passes half its
    /// lease (see `repo::clear_stale_locks`); `None` leaves them.
    pub stale_lock_age: Option<Duration>,
    /// Pinned addresses, stall bound, advertisement cap, proxy, CA roots,
    /// and the run's traffic counters.
    pub net: &'a Net,
}

/// upstream -> hosted. One entry per matched upstream ref, unsorted.
pub fn pull(spec: &RunSpec<'_>) -> Result<Vec<RefStat>, SyncError> {
    no_panic(|| pull::pull(spec))
}

/// hosted -> upstream. One entry per matched hosted ref, unsorted. A missing
/// hosted repository has no refs: `Ok(vec![])`.
pub fn push(spec: &RunSpec<'_>) -> Result<Vec<RefStat>, SyncError> {
    no_panic(|| push::push(spec))
}

/// Create the hosted bare repository if it does not exist.
pub fn ensure_repo(path: &Path) -> Result<(), SyncError> {
    no_panic(|| repo::ensure_repo(path))
}

/// Point the hosted repository's `HEAD` at `refs/heads/<branch>` (a no-op
/// when it already does, or when the repository is absent or the name
/// invalid).
pub fn set_default_branch(path: &Path, branch: &str) -> Result<(), SyncError> {
    no_panic(|| repo::set_default_branch(path, branch))
}

/// Commit id of `refs/heads/<branch>`; `None` if the repository or the
/// branch is absent (or the branch is not at a commit).
pub fn branch_tip(path: &Path, branch: &str) -> Result<Option<String>, SyncError> {
    no_panic(|| repo::branch_tip(path, branch))
}

/// The refs-per-run limit, checked once the matched refs are known.
pub(crate) fn check_ref_count(spec: &RunSpec<'_>, matched: usize) -> Result<(), SyncError> {
    match spec.max_refs {
        Some(max) if matched > max => Err(SyncError::of(FailureCode::TooManyRefs)),
        _ => Ok(()),
    }
}

fn no_panic<T>(f: impl FnOnce() -> Result<T, SyncError>) -> Result<T, SyncError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("panic in git operation");
        // Permanent although `internal_error` is transient elsewhere (a
        // transport hiccup): a panic would most likely happen again.
        Err(SyncError::Permanent(FailureCode::InternalError.into()))
    })
}
