//! Why a sync run failed, as a closed set of codes: the text a sync's
//! `error` and `last_attempt_error` start with (`code` or `code: detail`,
//! docs/sync-semantics.md, "Errors").
//!
//! Invariants:
//! - the wire strings ([`FailureCode::as_str`]) are part of the public
//!   contract and never change; [`FailureCode::parse`] reads every one back;
//! - whether a code is worth retrying is decided here, once
//!   ([`FailureCode::is_transient`]);
//! - a detail is built from fixed text or our own errors only, never from
//!   an upstream's or libgit2's words (they can quote a URL's user info).

use std::fmt;

/// Every code a run's failure can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The upstream refused the credentials (401/403).
    AuthenticationFailed,
    /// The upstream's TLS certificate was rejected.
    CertificateInvalid,
    /// A connect or read timed out, or the run's time cap passed.
    Timeout,
    /// A hosted-repository lock was held.
    LockContention,
    /// (push) An upstream ref moved between planning and pushing.
    ConcurrentUpdate,
    /// The hosted repository is unreadable or corrupt.
    RepositoryError,
    /// The upstream redirected; redirects are not followed.
    RedirectRefused,
    /// Not a git smart-HTTP server.
    InvalidUpstreamResponse,
    /// The stored URL is not an http(s) URL without user info.
    InvalidUrl,
    /// The upstream broke the protocol.
    UpstreamProtocolError,
    /// libgit2 could not resolve the host.
    ResolveFailed,
    /// No connection to the upstream.
    ConnectFailed,
    /// The server refused the request, or the URL policy refuses the URL.
    UpstreamRefused,
    /// TLS trouble other than the certificate.
    TlsError,
    /// Other network trouble.
    NetworkError,
    /// A pack that does not index: usually a truncated transfer.
    InvalidPack,
    /// An operation aborted from a callback.
    Aborted,
    /// Another libgit2 error.
    GitError,
    /// 404/410: no repository at that URL.
    UpstreamNotFound,
    /// 5xx or 429 (detail: `http <code>`).
    UpstreamUnavailable,
    /// Another unexpected HTTP status (detail: `http <code>`).
    UpstreamError,
    /// The run matched more refs than `upstream.max_refs`.
    TooManyRefs,
    /// An unexpected failure inside the git work.
    InternalError,
    /// A fetch did not deliver every ref it was asked for.
    FetchIncomplete,
    /// The sync id cannot name a git ref.
    InvalidSyncId,
    /// The ref advertisement exceeded `upstream.max_advertisement_bytes`.
    AdvertisementTooLarge,
    /// The fetch exceeded `upstream.max_pack_bytes`.
    PackTooLarge,
    /// A libgit2 request outside any run's scope.
    TransportUnscoped,
    /// The transport could not be set up for the run.
    TransportUnavailable,
    /// `upstream.proxy` is unusable.
    ProxyInvalid,
    /// The proxy refused the tunnel (detail: what it answered).
    ProxyError,
    /// No tunnel through the proxy.
    ProxyFailed,
    /// `upstream.ca_file` is unreadable or holds no certificate.
    CaFileInvalid,
    /// The upstream host does not resolve (checked when a run starts).
    UpstreamUnresolvable,
    /// The upstream was removed before the run.
    UpstreamNotConfigured,
    /// The sync's ref globs do not compile.
    InvalidRefGlobs,
    /// The stored credential cannot be opened.
    CredentialUnreadable,
    /// An unexpected failure of the worker itself.
    Internal,
    /// The lease sweeper took back a run whose worker stopped reporting progress.
    WorkerLost,
}

impl FailureCode {
    pub const ALL: [FailureCode; 39] = [
        FailureCode::AuthenticationFailed,
        FailureCode::CertificateInvalid,
        FailureCode::Timeout,
        FailureCode::LockContention,
        FailureCode::ConcurrentUpdate,
        FailureCode::RepositoryError,
        FailureCode::RedirectRefused,
        FailureCode::InvalidUpstreamResponse,
        FailureCode::InvalidUrl,
        FailureCode::UpstreamProtocolError,
        FailureCode::ResolveFailed,
        FailureCode::ConnectFailed,
        FailureCode::UpstreamRefused,
        FailureCode::TlsError,
        FailureCode::NetworkError,
        FailureCode::InvalidPack,
        FailureCode::Aborted,
        FailureCode::GitError,
        FailureCode::UpstreamNotFound,
        FailureCode::UpstreamUnavailable,
        FailureCode::UpstreamError,
        FailureCode::TooManyRefs,
        FailureCode::InternalError,
        FailureCode::FetchIncomplete,
        FailureCode::InvalidSyncId,
        FailureCode::AdvertisementTooLarge,
        FailureCode::PackTooLarge,
        FailureCode::TransportUnscoped,
        FailureCode::TransportUnavailable,
        FailureCode::ProxyInvalid,
        FailureCode::ProxyError,
        FailureCode::ProxyFailed,
        FailureCode::CaFileInvalid,
        FailureCode::UpstreamUnresolvable,
        FailureCode::UpstreamNotConfigured,
        FailureCode::InvalidRefGlobs,
        FailureCode::CredentialUnreadable,
        FailureCode::Internal,
        FailureCode::WorkerLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::AuthenticationFailed => "authentication_failed",
            FailureCode::CertificateInvalid => "certificate_invalid",
            FailureCode::Timeout => "timeout",
            FailureCode::LockContention => "lock_contention",
            FailureCode::ConcurrentUpdate => "concurrent_update",
            FailureCode::RepositoryError => "repository_error",
            FailureCode::RedirectRefused => "redirect_refused",
            FailureCode::InvalidUpstreamResponse => "invalid_upstream_response",
            FailureCode::InvalidUrl => "invalid_url",
            FailureCode::UpstreamProtocolError => "upstream_protocol_error",
            FailureCode::ResolveFailed => "resolve_failed",
            FailureCode::ConnectFailed => "connect_failed",
            FailureCode::UpstreamRefused => "upstream_refused",
            FailureCode::TlsError => "tls_error",
            FailureCode::NetworkError => "network_error",
            FailureCode::InvalidPack => "invalid_pack",
            FailureCode::Aborted => "aborted",
            FailureCode::GitError => "git_error",
            FailureCode::UpstreamNotFound => "upstream_not_found",
            FailureCode::UpstreamUnavailable => "upstream_unavailable",
            FailureCode::UpstreamError => "upstream_error",
            FailureCode::TooManyRefs => "too_many_refs",
            FailureCode::InternalError => "internal_error",
            FailureCode::FetchIncomplete => "fetch_incomplete",
            FailureCode::InvalidSyncId => "invalid_sync_id",
            FailureCode::AdvertisementTooLarge => "advertisement_too_large",
            FailureCode::PackTooLarge => "pack_too_large",
            FailureCode::TransportUnscoped => "transport_unscoped",
            FailureCode::TransportUnavailable => "transport_unavailable",
            FailureCode::ProxyInvalid => "proxy_invalid",
            FailureCode::ProxyError => "proxy_error",
            FailureCode::ProxyFailed => "proxy_failed",
            FailureCode::CaFileInvalid => "ca_file_invalid",
            FailureCode::UpstreamUnresolvable => "upstream_unresolvable",
            FailureCode::UpstreamNotConfigured => "upstream_not_configured",
            FailureCode::InvalidRefGlobs => "invalid_ref_globs",
            FailureCode::CredentialUnreadable => "credential_unreadable",
            FailureCode::Internal => "internal",
            FailureCode::WorkerLost => "worker_lost",
        }
    }

    /// Worth another attempt: the same request may well succeed later.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureCode::Timeout
                | FailureCode::LockContention
                | FailureCode::ConcurrentUpdate
                | FailureCode::UpstreamProtocolError
                | FailureCode::ResolveFailed
                | FailureCode::ConnectFailed
                | FailureCode::TlsError
                | FailureCode::NetworkError
                | FailureCode::InvalidPack
                | FailureCode::Aborted
                | FailureCode::GitError
                | FailureCode::UpstreamUnavailable
                | FailureCode::InternalError
                | FailureCode::FetchIncomplete
                | FailureCode::ProxyFailed
                | FailureCode::UpstreamUnresolvable
                | FailureCode::Internal
                | FailureCode::WorkerLost
        )
    }

    /// The code a wire string names, if any.
    pub fn parse(code: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// This code with a detail (`code: detail`).
    pub fn with(self, detail: impl Into<String>) -> Failure {
        Failure {
            code: self,
            detail: Some(detail.into()),
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's failure: a code and, for some, a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub detail: Option<String>,
}

impl Failure {
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }

    /// Read back `code` or `code: detail`; `None` when the code is unknown.
    pub fn parse(text: &str) -> Option<Failure> {
        let (code, detail) = match text.split_once(": ") {
            Some((code, detail)) => (code, Some(detail.to_owned())),
            None => (text, None),
        };
        Some(Failure {
            code: FailureCode::parse(code)?,
            detail,
        })
    }
}

impl From<FailureCode> for Failure {
    fn from(code: FailureCode) -> Self {
        Failure { code, detail: None }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.code),
            None => f.write_str(self.code.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_wire_string() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(FailureCode::parse("no_such_code"), None);
    }

    #[test]
    fn a_failure_is_written_as_code_or_code_colon_detail() {
        assert_eq!(Failure::from(FailureCode::Timeout).to_string(), "timeout");
        let f = FailureCode::UpstreamUnavailable.with("http 503");
        assert_eq!(f.to_string(), "upstream_unavailable: http 503");
        assert_eq!(Failure::parse("upstream_unavailable: http 503"), Some(f));
    }

    #[test]
    fn docs_sync_semantics_md_lists_every_code() {
        let doc = include_str!("../../../docs/sync-semantics.md");
        let errors = doc
            .split_once("## Errors")
            .and_then(|(_, rest)| rest.split_once("### Between attempts"))
            .map(|(section, _)| section)
            .unwrap_or_default();
        for code in FailureCode::ALL {
            assert!(
                errors.contains(&format!("`{code}")),
                "{code} is missing from docs/sync-semantics.md"
            );
        }
    }

    #[test]
    fn transience_follows_the_documented_kinds() {
        assert!(FailureCode::UpstreamUnavailable.is_transient());
        assert!(FailureCode::UpstreamUnresolvable.is_transient());
        assert!(FailureCode::WorkerLost.is_transient());
        assert!(!FailureCode::AuthenticationFailed.is_transient());
        assert!(!FailureCode::UpstreamRefused.is_transient());
        assert!(!FailureCode::UpstreamError.is_transient());
    }
}
