//! Everything that talks to the upstream: callbacks (credentials, deadline,
//! cancellation, pack cap), option sets, and listing the remote's refs.
//! The HTTP itself is `transport`'s: a [`Guard`] holds the run's transport
//! scope, so every libgit2 network call made while it lives goes through
//! the run's pinned addresses and limits.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::Instant;

use depot_domain::RefKind;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, FetchPrune, Oid, RemoteCallbacks, RemoteRedirect, Repository,
};

use crate::error::{SyncError, classify};
use crate::transport::Scope;
use crate::{Credentials, RunSpec};
use depot_domain::FailureCode;

/// Refuse anything but plain http(s) URLs without userinfo: the syntax half
/// of the URL policy (`depot_domain::policy::check_syntax`, the same rules
/// the gateway applied when the URL was stored), again here so that libgit2
/// stays away from `file://`, `ssh`, `ext::` and URL-embedded credentials
/// whatever the caller did.
pub(crate) fn check_url(raw: &str) -> Result<(), SyncError> {
    const SCHEMES: [&str; 2] = ["http", "https"];
    let schemes = SCHEMES.map(String::from);
    depot_domain::policy::check_syntax(raw, &schemes)
        .map(drop)
        .map_err(|_| SyncError::of(FailureCode::InvalidUrl))
}

/// Why a callback stopped libgit2; libgit2 itself only reports "user
/// cancelled", so the reason is kept here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    Cancelled,
    Timeout,
    PackTooLarge,
    ConcurrentUpdate,
}

impl From<Abort> for SyncError {
    fn from(a: Abort) -> Self {
        match a {
            Abort::Cancelled => SyncError::Cancelled,
            Abort::Timeout => SyncError::of(FailureCode::Timeout),
            Abort::PackTooLarge => SyncError::of(FailureCode::PackTooLarge),
            Abort::ConcurrentUpdate => SyncError::of(FailureCode::ConcurrentUpdate),
        }
    }
}

/// Per-run state shared by all callbacks of the run.
pub(crate) struct Guard<'a> {
    deadline: Instant,
    cancel: Option<&'a std::sync::atomic::AtomicBool>,
    credentials: Option<&'a Credentials>,
    max_pack_bytes: Option<u64>,
    aborted: Cell<Option<Abort>>,
    /// The run's transport state on this thread; an error if it could not
    /// be set up (reported by the first `check`).
    scope: Result<Scope, SyncError>,
}

impl<'a> Guard<'a> {
    pub(crate) fn new(spec: &RunSpec<'a>) -> Self {
        Guard {
            deadline: spec.deadline,
            cancel: spec.cancel.map(|c| &**c),
            credentials: spec.credentials,
            max_pack_bytes: spec.max_pack_bytes,
            aborted: Cell::new(None),
            scope: Scope::enter(spec),
        }
    }

    fn pending(&self) -> Option<Abort> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(Abort::Cancelled)
        } else if Instant::now() >= self.deadline {
            Some(Abort::Timeout)
        } else {
            None
        }
    }

    /// Between steps: stop if cancelled or past the deadline.
    pub(crate) fn check(&self) -> Result<(), SyncError> {
        if let Err(e) = &self.scope {
            return Err(e.clone());
        }
        match self.pending() {
            Some(a) => Err(a.into()),
            None => Ok(()),
        }
    }

    /// Inside callbacks: record why we stop, return true to stop.
    pub(crate) fn trip(&self) -> bool {
        if self.aborted.get().is_some() {
            return true;
        }
        match self.pending() {
            Some(a) => {
                self.aborted.set(Some(a));
                true
            }
            None => false,
        }
    }

    /// Trim this run's push advertisements to `intent`'s refs (see
    /// `transport::advert`).
    pub(crate) fn intend_push(&self, intent: std::sync::Arc<crate::transport::PushIntent>) {
        if let Ok(scope) = &self.scope {
            scope.intend_push(intent);
        }
    }

    pub(crate) fn abort(&self, why: Abort) {
        if self.aborted.get().is_none() {
            self.aborted.set(Some(why));
        }
    }

    /// The error to report for a failed libgit2 network call: our own abort
    /// reason if a callback stopped it; else the transport's recorded
    /// failure (its limits know better than libgit2's echo of them);
    /// cancellation or the deadline if they hit meanwhile (whatever libgit2
    /// then said is a consequence); else the classified libgit2 error.
    pub(crate) fn error_from(&self, err: &git2::Error) -> SyncError {
        if let Some(a) = self.aborted.get() {
            return a.into();
        }
        if let Some(e) = self.scope.as_ref().ok().and_then(Scope::failure) {
            return e;
        }
        if let Some(a) = self.pending() {
            return a.into();
        }
        classify(err)
    }

    /// Callbacks for one connection. The credential answer is one-shot per
    /// set of callbacks: libgit2 asks again after every 401, so a second
    /// question means the answer was refused.
    pub(crate) fn callbacks<'g>(&'g self) -> RemoteCallbacks<'g> {
        let mut cbs = RemoteCallbacks::new();
        let mut answered = false;
        cbs.credentials(move |_url, _username_from_url, allowed| {
            if self.trip() {
                return Err(callback_error("aborted"));
            }
            let creds = match self.credentials {
                Some(c) if !answered => c,
                _ => return Err(auth_error()),
            };
            answered = true;
            if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                return Err(auth_error());
            }
            let (user, pass) = match creds {
                Credentials::Token { token, username } => (
                    username.as_deref().unwrap_or(DEFAULT_TOKEN_USERNAME),
                    token.as_str(),
                ),
                Credentials::UsernamePassword { username, password } => {
                    (username.as_str(), password.as_str())
                }
            };
            // Only fails on NUL bytes; its message says nothing about them.
            Cred::userpass_plaintext(user, pass).map_err(|_| auth_error())
        });
        cbs.certificate_check(move |_cert, _host| {
            if self.trip() {
                Err(callback_error("aborted"))
            } else {
                Ok(CertificateCheckStatus::CertificatePassthrough)
            }
        });
        cbs.sideband_progress(move |_| !self.trip());
        let max = self.max_pack_bytes;
        cbs.transfer_progress(move |p| {
            if self.trip() {
                return false;
            }
            if max.is_some_and(|m| p.received_bytes() as u64 > m) {
                self.abort(Abort::PackTooLarge);
                return false;
            }
            true
        });
        cbs
    }

    pub(crate) fn fetch_options<'g>(&'g self) -> FetchOptions<'g> {
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(self.callbacks())
            .follow_redirects(RemoteRedirect::None)
            .download_tags(AutotagOption::None)
            .prune(FetchPrune::Off)
            .update_fetchhead(false);
        opts
    }
}

/// GitHub's convention for tokens; GitLab and most others accept any name.
pub(crate) const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";

fn auth_error() -> git2::Error {
    git2::Error::new(
        ErrorCode::Auth,
        ErrorClass::Callback,
        FailureCode::AuthenticationFailed.as_str(),
    )
}

fn callback_error(msg: &str) -> git2::Error {
    git2::Error::new(ErrorCode::User, ErrorClass::Callback, msg)
}

/// One advertised ref under refs/heads/ or refs/tags/.
#[derive(Debug, Clone)]
pub(crate) struct Advertised {
    pub oid: Oid,
    pub symbolic: bool,
}

/// Connect in fetch direction and return the advertised branch and tag refs
/// (peeled `^{}` entries, HEAD and other namespaces dropped), leaving `remote`
/// connected so a following `fetch` on it reuses this advertisement.
///
/// The connection is made through `download` with `FetchOptions` rather
/// than `Remote::connect_auth`: the latter has no redirect setting, so
/// libgit2 would follow an off-site redirect of the very first request
/// (its default), which the upstream policy forbids. The probe refspec names
/// a ref no server advertises, so nothing is negotiated or downloaded.
pub(crate) fn list_remote(
    remote: &mut git2::Remote<'_>,
    opts: &mut FetchOptions<'_>,
    guard: &Guard<'_>,
) -> Result<BTreeMap<String, Advertised>, SyncError> {
    guard.check()?;
    remote
        .download(&[PROBE_REFSPEC], Some(opts))
        .map_err(|e| guard.error_from(&e))?;
    let heads = remote.list().map_err(|e| guard.error_from(&e))?;
    Ok(advertised_refs(heads))
}

/// Branches and tags of an advertisement by name (peeled `^{}` entries and
/// other namespaces left out).
pub(crate) fn advertised_refs(heads: &[git2::RemoteHead<'_>]) -> BTreeMap<String, Advertised> {
    let mut out = BTreeMap::new();
    for head in heads {
        // git2 unwraps these as UTF-8; a hostile server can advertise other
        // bytes. Such a name cannot be reported (JSON) nor matched: skip it.
        let Ok((name, symbolic)) = catch_unwind(AssertUnwindSafe(|| {
            (head.name().to_owned(), head.symref_target().is_some())
        })) else {
            tracing::warn!("skipping an advertised ref whose name is not UTF-8");
            continue;
        };
        if name.ends_with("^{}") || RefKind::split(&name).is_none() {
            continue;
        }
        out.entry(name).or_insert(Advertised {
            oid: head.oid(),
            symbolic,
        });
    }
    out
}

const PROBE_REFSPEC: &str = "refs/depot/probe/list-only";

/// `Reference::is_valid_name` panics on NUL; such a name is not valid anyway.
pub(crate) fn is_valid_ref_name(name: &str) -> bool {
    !name.contains('\0') && git2::Reference::is_valid_name(name)
}

/// Open the hosted repository exactly at `path`, no discovery upwards.
pub(crate) fn open_existing(path: &std::path::Path) -> Result<Option<Repository>, SyncError> {
    match Repository::open_bare(path) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(classify(&e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://example.com/a/b.git").is_ok());
        assert!(check_url("http://127.0.0.1:8080/r.git").is_ok());
        for bad in [
            "file:///etc",
            "ssh://git@example.com/x",
            "ext::sh -c touch% /tmp/pwned",
            "https://user:pw@example.com/x",
            "https://token@example.com/x",
            "/local/path",
            "not a url",
        ] {
            assert_eq!(
                check_url(bad),
                Err(SyncError::Permanent(FailureCode::InvalidUrl.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn ref_names() {
        assert!(is_valid_ref_name("refs/heads/main"));
        assert!(!is_valid_ref_name("refs/heads/a..b"));
        assert!(!is_valid_ref_name("refs/heads/x\0y"));
        assert!(!is_valid_ref_name("refs/heads/x.lock"));
    }

    #[test]
    fn guard_reports_cancel_before_deadline() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let matcher = depot_domain::RefGlobs::all().compile().unwrap();
        let path = std::path::Path::new("/nonexistent");
        let spec = RunSpec {
            repo_path: path,
            url: "https://example.com/x.git",
            credentials: None,
            matcher: &matcher,
            sync_id: "s",
            attempt: 1,
            deadline: Instant::now() - std::time::Duration::from_secs(1),
            cancel: Some(&flag),
            max_pack_bytes: None,
            max_refs: None,
            default_branch: None,
            stale_lock_age: None,
            net: &crate::Net::pinned(vec![]),
        };
        let g = Guard::new(&spec);
        assert_eq!(
            g.check(),
            Err(SyncError::Transient(FailureCode::Timeout.into()))
        );
        flag.store(true, Ordering::Relaxed);
        assert_eq!(g.check(), Err(SyncError::Cancelled));
        assert!(g.trip());
        let e = git2::Error::from_str("whatever");
        assert_eq!(g.error_from(&e), SyncError::Cancelled);
    }
}
