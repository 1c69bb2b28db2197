//! The run's error type and the single place where libgit2 errors are mapped
//! onto it.
//!
//! Messages are short stable codes meant to be stored in `sync.error`. They
//! are built from fixed strings only: libgit2's own messages can quote the
//! URL (userinfo included) or a host, so they never reach `SyncError`; they
//! are only logged, with userinfo scrubbed.

use depot_domain::{Failure, FailureCode};
use git2::{ErrorClass, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Retry later: connect/timeout, upstream 5xx, 429, lock contention.
    #[error("{0}")]
    Transient(Failure),
    /// Fail now: authentication, not found, invalid URL, corrupt repository,
    /// pack too large.
    #[error("{0}")]
    Permanent(Failure),
    /// The run's cancel flag was raised.
    #[error("cancelled")]
    Cancelled,
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Transient(_))
    }

    /// The failure, transient or permanent as its code says
    /// ([`FailureCode::is_transient`]).
    pub(crate) fn of(failure: impl Into<Failure>) -> Self {
        let failure = failure.into();
        if failure.is_transient() {
            SyncError::Transient(failure)
        } else {
            SyncError::Permanent(failure)
        }
    }

    /// The failure, unless the run was cancelled.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            SyncError::Transient(f) | SyncError::Permanent(f) => Some(f),
            SyncError::Cancelled => None,
        }
    }
}

/// Map a libgit2 error to a `SyncError`. Pure, so the whole table is unit
/// tested with synthetic errors; callers that aborted an operation from a
/// callback decide that case themselves before getting here.
pub(crate) fn classify(err: &git2::Error) -> SyncError {
    let msg = err.message();
    tracing::debug!(
        code = ?err.code(),
        class = ?err.class(),
        message = %redact_userinfo(msg),
        "libgit2 error"
    );

    match err.code() {
        ErrorCode::Auth => return SyncError::of(FailureCode::AuthenticationFailed),
        ErrorCode::Certificate => return SyncError::of(FailureCode::CertificateInvalid),
        ErrorCode::Timeout => return SyncError::of(FailureCode::Timeout),
        ErrorCode::Locked => return SyncError::of(FailureCode::LockContention),
        // Only raised by libgit2's own pre-push check, i.e. the remote ref
        // moved between our listing and the push: the next attempt re-plans.
        ErrorCode::NotFastForward => return SyncError::of(FailureCode::ConcurrentUpdate),
        ErrorCode::Owner => return SyncError::of(FailureCode::RepositoryError),
        _ => {}
    }

    // Our transport's own failures carry their stable code.
    if let Some(code) = msg.strip_prefix(crate::transport::ERROR_PREFIX) {
        return crate::transport::code_error(code.trim());
    }

    let lower = msg.to_ascii_lowercase();
    if let Some(status) = http_status(&lower) {
        return from_http_status(status);
    }

    match err.class() {
        ErrorClass::Http => {
            if lower.contains("redirect") {
                SyncError::of(FailureCode::RedirectRefused)
            } else if lower.contains("authentication") || lower.contains("credentials") {
                SyncError::of(FailureCode::AuthenticationFailed)
            } else if lower.contains("content-type") {
                // Something answered, but not a git smart-HTTP server (or
                // not this path of one).
                SyncError::of(FailureCode::InvalidUpstreamResponse)
            } else if lower.contains("invalid url") {
                SyncError::of(FailureCode::InvalidUrl)
            } else {
                SyncError::of(FailureCode::UpstreamProtocolError)
            }
        }
        ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssl => {
            if lower.contains("timed out") {
                SyncError::of(FailureCode::Timeout)
            } else if lower.contains("cannot redirect") {
                SyncError::of(FailureCode::RedirectRefused)
            } else if lower.contains("unsupported url protocol")
                || lower.contains("invalid url")
                || lower.contains("malformed url")
            {
                SyncError::of(FailureCode::InvalidUrl)
            } else if lower.contains("failed to resolve address") {
                SyncError::of(FailureCode::ResolveFailed)
            } else if lower.contains("failed to connect") {
                SyncError::of(FailureCode::ConnectFailed)
            } else if lower.starts_with("remote error") {
                // An ERR packet: the server itself refused (access denied,
                // not exported, ...); asking again will not change that.
                SyncError::of(FailureCode::UpstreamRefused)
            } else if lower.contains("certificate") || lower.contains("x509") {
                SyncError::of(FailureCode::CertificateInvalid)
            } else if err.class() == ErrorClass::Ssl {
                SyncError::of(FailureCode::TlsError)
            } else {
                SyncError::of(FailureCode::NetworkError)
            }
        }
        // A pack that does not index is usually a truncated transfer.
        ErrorClass::Indexer | ErrorClass::Zlib => SyncError::of(FailureCode::InvalidPack),
        ErrorClass::Callback => SyncError::of(FailureCode::Aborted),
        ErrorClass::Repository
        | ErrorClass::Reference
        | ErrorClass::Odb
        | ErrorClass::Object
        | ErrorClass::Tag
        | ErrorClass::Tree
        | ErrorClass::Index
        | ErrorClass::Config
        | ErrorClass::Filesystem
        | ErrorClass::Sha1
        | ErrorClass::FetchHead => SyncError::of(FailureCode::RepositoryError),
        _ => SyncError::of(FailureCode::GitError),
    }
}

/// `unexpected http status code: 503` -> 503. libgit2 reports every non-2xx
/// answer it does not handle itself (401 is handled via the credential
/// callback) in this one format.
fn http_status(lower_msg: &str) -> Option<u16> {
    let rest = lower_msg
        .split_once("http status code:")
        .or_else(|| lower_msg.split_once("proxy returned unexpected status:"))?
        .1
        .trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..1000).contains(s))
}

pub(crate) fn from_http_status(status: u16) -> SyncError {
    match status {
        401 | 403 => SyncError::of(FailureCode::AuthenticationFailed),
        404 | 410 => SyncError::of(FailureCode::UpstreamNotFound),
        408 => SyncError::of(FailureCode::Timeout),
        429 | 500..=599 => {
            SyncError::of(FailureCode::UpstreamUnavailable.with(format!("http {status}")))
        }
        _ => SyncError::of(FailureCode::UpstreamError.with(format!("http {status}"))),
    }
}

/// Replace `scheme://user:pass@` by `scheme://***@` anywhere in a message,
/// for logging libgit2's messages without leaking what a URL carried.
pub(crate) fn redact_userinfo(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '\'' || c == '"'
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: ErrorCode, class: ErrorClass, msg: &str) -> git2::Error {
        git2::Error::new(code, class, msg)
    }

    fn generic(class: ErrorClass, msg: &str) -> SyncError {
        classify(&err(ErrorCode::GenericError, class, msg))
    }

    #[test]
    fn codes_take_precedence() {
        assert_eq!(
            classify(&err(
                ErrorCode::Auth,
                ErrorClass::Http,
                "too many 401s for https://u:p@h/x"
            )),
            SyncError::Permanent(FailureCode::AuthenticationFailed.into())
        );
        assert_eq!(
            classify(&err(
                ErrorCode::Timeout,
                ErrorClass::Net,
                "could not read from socket: timed out"
            )),
            SyncError::Transient(FailureCode::Timeout.into())
        );
        assert_eq!(
            classify(&err(
                ErrorCode::Locked,
                ErrorClass::Os,
                "failed to lock file 'x.lock' for writing"
            )),
            SyncError::Transient(FailureCode::LockContention.into())
        );
        assert_eq!(
            classify(&err(
                ErrorCode::Certificate,
                ErrorClass::Ssl,
                "the SSL certificate is invalid"
            )),
            SyncError::Permanent(FailureCode::CertificateInvalid.into())
        );
        assert_eq!(
            classify(&err(
                ErrorCode::NotFastForward,
                ErrorClass::Reference,
                "cannot push"
            )),
            SyncError::Transient(FailureCode::ConcurrentUpdate.into())
        );
    }

    #[test]
    fn http_statuses() {
        let http = |n: u16| {
            generic(
                ErrorClass::Http,
                &format!("unexpected http status code: {n}"),
            )
        };
        assert_eq!(
            http(401),
            SyncError::Permanent(FailureCode::AuthenticationFailed.into())
        );
        assert_eq!(
            http(403),
            SyncError::Permanent(FailureCode::AuthenticationFailed.into())
        );
        assert_eq!(
            http(404),
            SyncError::Permanent(FailureCode::UpstreamNotFound.into())
        );
        assert_eq!(
            http(503),
            SyncError::Transient(FailureCode::UpstreamUnavailable.with("http 503"))
        );
        assert_eq!(
            http(500),
            SyncError::Transient(FailureCode::UpstreamUnavailable.with("http 500"))
        );
        assert_eq!(
            http(429),
            SyncError::Transient(FailureCode::UpstreamUnavailable.with("http 429"))
        );
        assert_eq!(http(408), SyncError::Transient(FailureCode::Timeout.into()));
        assert_eq!(
            http(418),
            SyncError::Permanent(FailureCode::UpstreamError.with("http 418"))
        );
        assert_eq!(
            generic(ErrorClass::Http, "proxy returned unexpected status: 502"),
            SyncError::Transient(FailureCode::UpstreamUnavailable.with("http 502"))
        );
    }

    #[test]
    fn network_messages() {
        assert_eq!(
            generic(
                ErrorClass::Os,
                "failed to connect to 10.0.0.1: Connection refused"
            ),
            SyncError::Transient(FailureCode::ConnectFailed.into())
        );
        assert_eq!(
            generic(
                ErrorClass::Net,
                "failed to connect to example.com: Operation timed out"
            ),
            SyncError::Transient(FailureCode::Timeout.into())
        );
        assert_eq!(
            generic(
                ErrorClass::Net,
                "failed to resolve address for nope.invalid: Name or service not known"
            ),
            SyncError::Transient(FailureCode::ResolveFailed.into())
        );
        assert_eq!(
            generic(ErrorClass::Net, "unsupported URL protocol"),
            SyncError::Permanent(FailureCode::InvalidUrl.into())
        );
        assert_eq!(
            generic(
                ErrorClass::Net,
                "cannot redirect from 'https://a/x' to 'https://b/x'"
            ),
            SyncError::Permanent(FailureCode::RedirectRefused.into())
        );
        assert_eq!(
            generic(ErrorClass::Http, "unexpected redirect"),
            SyncError::Permanent(FailureCode::RedirectRefused.into())
        );
        assert_eq!(
            generic(ErrorClass::Http, "invalid content-type: 'text/html'"),
            SyncError::Permanent(FailureCode::InvalidUpstreamResponse.into())
        );
        assert_eq!(
            generic(ErrorClass::Net, "remote error: access denied"),
            SyncError::Permanent(FailureCode::UpstreamRefused.into())
        );
        assert_eq!(
            generic(ErrorClass::Net, "early EOF"),
            SyncError::Transient(FailureCode::NetworkError.into())
        );
        assert_eq!(
            generic(ErrorClass::Ssl, "SSL error: received early EOF"),
            SyncError::Transient(FailureCode::TlsError.into())
        );
    }

    #[test]
    fn transport_codes() {
        assert_eq!(
            generic(ErrorClass::Net, "depot-transport: advertisement_too_large"),
            SyncError::Permanent(FailureCode::AdvertisementTooLarge.into())
        );
        assert_eq!(
            generic(ErrorClass::Net, "depot-transport: timeout"),
            SyncError::Transient(FailureCode::Timeout.into())
        );
    }

    #[test]
    fn local_repository_errors() {
        assert_eq!(
            generic(ErrorClass::Odb, "object not found"),
            SyncError::Permanent(FailureCode::RepositoryError.into())
        );
        assert_eq!(
            generic(ErrorClass::Indexer, "unexpected end of pack"),
            SyncError::Transient(FailureCode::InvalidPack.into())
        );
        assert!(
            classify(&err(
                ErrorCode::Owner,
                ErrorClass::Config,
                "not owned by current user"
            ))
            .to_string()
                == "repository_error"
        );
    }

    #[test]
    fn messages_never_carry_libgit2_text() {
        let e = generic(
            ErrorClass::Net,
            "failed to connect to user:hunter2@example.com",
        );
        assert!(!e.to_string().contains("hunter2"));
        let e = generic(
            ErrorClass::Http,
            "invalid URL: 'https://user:hunter2@example.com/x'",
        );
        assert_eq!(e, SyncError::Permanent(FailureCode::InvalidUrl.into()));
    }

    #[test]
    fn transient_flag() {
        assert!(SyncError::Transient(FailureCode::Timeout.into()).is_transient());
        assert!(!SyncError::Permanent(FailureCode::Timeout.into()).is_transient());
        assert!(!SyncError::Cancelled.is_transient());
        assert_eq!(SyncError::Cancelled.to_string(), "cancelled");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_userinfo("could not fetch 'https://bob:s3cret@example.com/a.git': oops"),
            "could not fetch 'https://***@example.com/a.git': oops"
        );
        assert_eq!(
            redact_userinfo("http://example.com/x"),
            "http://example.com/x"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(
            redact_userinfo("a https://t@h b http://u:p@h2"),
            "a https://***@h b http://***@h2"
        );
    }
}
