//! Our own smart-HTTP subtransport for libgit2: libgit2 keeps the git
//! protocol and the pack logic, this module owns every byte of HTTP.
//!
//! Invariants:
//! - **One resolution, pinned.** The transport never resolves the upstream's
//!   host. It connects only to [`Net::addrs`], the addresses the caller's
//!   URL policy vetted; TLS still verifies the URL's host name (SNI and
//!   certificate), and a `CONNECT` proxy is asked for the pinned address,
//!   not the name (the policy applies to the target, not to the proxy).
//! - **Per-run state through a thread-local scope.** git2's registration is
//!   process-global, but libgit2 creates and drives a transport on the
//!   thread that called `fetch`/`push`/`download`. Each run enters a
//!   [`Scope`] (held by `net::Guard`) before its first network call and
//!   leaves it when the run ends; the factory takes the run's state from the
//!   calling thread's scope. A transport requested outside any scope fails
//!   (`transport_unscoped`): no connection is ever made without a run's
//!   pinned addresses and limits.
//! - **Bounded time.** Every request carries the run's remaining time as
//!   ureq's global timeout (connect, send, headers and body together) and
//!   the stall bound as its per-read and per-write timeout.
//! - **Cancellable.** While a run's scope lives, a watcher thread looks at
//!   the run's cancel flag every [`CANCEL_POLL`]; once it is raised the
//!   run's failure becomes `Cancelled` and the run's agent is shut down,
//!   which interrupts every read, write and connect blocked on its sockets
//!   (on libgit2's thread and on the `POST` sender thread alike), and
//!   every stream call after that fails at once.
//! - **Bounded bytes.** Advertisements (and push reports) beyond
//!   [`Net::max_advertisement_bytes`], and fetch responses beyond the run's
//!   pack cap, fail the run as soon as the cap is crossed; nothing here
//!   buffers a body beyond one chunk.
//! - **No redirects, credentials for the run's origin only**, at most once
//!   per request (see `http`).
//! - **A push's advertisement is trimmed** (see `advert`): once the run
//!   has said which refs it may push ([`Scope::intend_push`]), libgit2 is
//!   shown only the receive-pack advertisement's lines it needs, and the
//!   plan reads the remote's values of those refs from the same bytes.
//! - **Errors are stable codes.** A failure is recorded in the run's scope
//!   as a [`SyncError`] built from fixed strings, and libgit2 is handed an
//!   I/O error whose message is `depot-transport: <code>`; `net::Guard`
//!   reports the recorded error, `error::classify` maps the message.
//!
//! Why ureq 3: it is blocking (libgit2 calls us on its own thread, with no
//! async runtime to borrow), streams request and response bodies through
//! `Read`, takes a custom resolver (pinning without touching DNS), has
//! global, per-read and per-write timeouts, does HTTP `CONNECT` proxies
//! with `resolve_target`, probes pooled connections before reusing them,
//! and builds on native-tls, i.e. the OpenSSL libgit2 already links.
//! reqwest's blocking client would bring a hidden tokio runtime per client
//! and has no per-read stall bound.

mod advert;
mod http;
mod register;

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::SyncError;
use crate::{Credentials, RunSpec};
use depot_domain::{Failure, FailureCode};

pub(crate) use advert::PushIntent;
pub use register::install;

/// `User-Agent` of every request. Some hosts key protocol behaviour on the
/// `git/` prefix (as they see it from git itself).
pub const USER_AGENT: &str = concat!("git/2.0 (depot-sync/", env!("CARGO_PKG_VERSION"), ")");

/// Prefix of the I/O error messages libgit2 receives from the transport.
pub(crate) const ERROR_PREFIX: &str = "depot-transport: ";

/// A code from the transport as the run's error: transient or permanent as
/// the code says. The transport reports only codes of ours; should another
/// text ever arrive here it counts as a transient `internal_error`.
pub(crate) fn code_error(code: &str) -> SyncError {
    SyncError::of(Failure::parse(code).unwrap_or_else(|| FailureCode::InternalError.into()))
}

/// What a run's network traffic may do, besides the deadline and the pack
/// cap of [`RunSpec`].
#[derive(Debug, Clone)]
pub struct Net {
    /// The addresses the URL policy vetted for the URL's host; the only ones
    /// ever connected to (tried in order, at the URL's port). Empty: every
    /// request fails with `upstream_refused`.
    pub addrs: Vec<IpAddr>,
    /// A read or write that moves no byte for this long fails the run with
    /// `timeout`.
    pub stall_timeout: Duration,
    /// Cap on one ref advertisement (and on a push's status report).
    pub max_advertisement_bytes: u64,
    /// `http://host:port` of an HTTP `CONNECT` proxy, if any.
    pub proxy: Option<String>,
    /// PEM file of the CA certificates trusted for https upstreams instead
    /// of the system's.
    pub ca_file: Option<PathBuf>,
    /// Counters of this run's traffic, filled while it runs.
    pub transfer: Arc<Transfer>,
}

impl Net {
    /// Defaults (the settings' defaults) around vetted addresses.
    pub fn pinned(addrs: Vec<IpAddr>) -> Net {
        Net {
            addrs,
            stall_timeout: Duration::from_secs(60),
            max_advertisement_bytes: DEFAULT_MAX_ADVERTISEMENT_BYTES,
            proxy: None,
            ca_file: None,
            transfer: Arc::default(),
        }
    }
}

/// How often a run's cancel flag is looked at while the run's transport
/// scope lives: the most a cancelled run's network I/O goes on.
pub const CANCEL_POLL: Duration = Duration::from_millis(100);

/// 40 MiB: a 100,000-ref advertisement is about 10 MB (twice that with a
/// peeled line per ref). libgit2 keeps every advertised ref parsed in
/// memory at about twice its wire size, so this cap is what bounds a
/// hostile advertisement's cost to the worker (about 85 MiB, within the
/// 128 MiB a run may grow the worker by; 64 MiB measured 136 MiB).
pub const DEFAULT_MAX_ADVERTISEMENT_BYTES: u64 = 40 << 20;

/// One run's traffic. Bytes are HTTP body bytes (what libgit2 reads and
/// writes); connections are TCP connections opened to the upstream (or to
/// the proxy, for a tunnel).
#[derive(Debug, Default)]
pub struct Transfer {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
    body_writes: AtomicU64,
    socket_writes: AtomicU64,
    socket_bytes_out: AtomicU64,
    push_refs_advertised: AtomicU64,
    push_refs_shown: AtomicU64,
}

impl Transfer {
    /// Response body bytes received.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Request body bytes sent.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    /// TCP connections opened.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// HTTP requests sent (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Chunks handed to the HTTP client for request bodies: with
    /// `bytes_out`, shows that bodies go out in large writes.
    pub fn body_writes(&self) -> u64 {
        self.body_writes.load(Ordering::Relaxed)
    }
    /// Writes handed to the connection (to the TLS layer for https), and
    /// the bytes they carried, request heads included: how large the writes
    /// on the wire are. (ureq frames a chunked body as 10 KiB HTTP chunks,
    /// fixed in ureq-proto; many of them go out in one write.)
    pub fn socket_writes(&self) -> (u64, u64) {
        (
            self.socket_writes.load(Ordering::Relaxed),
            self.socket_bytes_out.load(Ordering::Relaxed),
        )
    }
    /// Ref lines of the push advertisements received, and how many of
    /// them libgit2 was shown (see `advert`).
    pub fn push_advertisement_refs(&self) -> (u64, u64) {
        (
            self.push_refs_advertised.load(Ordering::Relaxed),
            self.push_refs_shown.load(Ordering::Relaxed),
        )
    }
}

/// The run's origin: requests to anything else are refused, and the
/// credential is only ever sent here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub(crate) fn of(url: &url::Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_owned(),
            port: url.port_or_known_default()?,
        })
    }
}

/// Everything the transport needs to know about the run it serves.
pub(crate) struct RunCtx {
    origin: Origin,
    deadline: Instant,
    max_advertisement: u64,
    max_pack: Option<u64>,
    /// (user, password) for HTTP Basic.
    credential: Option<(String, String)>,
    /// Set once the origin asked for authentication: later requests send the
    /// credential up front (git does the same), so a streamed body is not
    /// sent twice.
    send_credential: AtomicBool,
    agent: ureq::Agent,
    /// The run's cancel flag (see the module's invariants).
    cancel: Option<Arc<AtomicBool>>,
    transfer: Arc<Transfer>,
    failure: Mutex<Option<SyncError>>,
    /// The refs the run's push may update, once it said so: its
    /// receive-pack advertisements are trimmed to them.
    push_intent: Mutex<Option<Arc<PushIntent>>>,
}

impl RunCtx {
    fn new(spec: &RunSpec<'_>) -> Result<RunCtx, SyncError> {
        let url = url::Url::parse(spec.url).map_err(|_| SyncError::of(FailureCode::InvalidUrl))?;
        let origin = Origin::of(&url).ok_or_else(|| SyncError::of(FailureCode::InvalidUrl))?;
        let agent = http::agent(spec.net, &origin)?;
        Ok(RunCtx {
            origin,
            deadline: spec.deadline,
            max_advertisement: spec.net.max_advertisement_bytes,
            max_pack: spec.max_pack_bytes,
            credential: spec.credentials.map(basic_pair),
            send_credential: AtomicBool::new(false),
            agent,
            cancel: spec.cancel.cloned(),
            transfer: Arc::clone(&spec.net.transfer),
            failure: Mutex::new(None),
            push_intent: Mutex::new(None),
        })
    }

    /// Record why the transport failed (the first reason wins) and build
    /// the error libgit2 gets.
    pub(crate) fn fail(&self, err: SyncError) -> std::io::Error {
        // Whatever broke after the flag was raised is its consequence.
        let err = if self.cancelled() {
            SyncError::Cancelled
        } else {
            err
        };
        let code = err.to_string();
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(err);
        }
        std::io::Error::other(format!("{ERROR_PREFIX}{code}"))
    }

    pub(crate) fn failure(&self) -> Option<SyncError> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn push_intent(&self) -> Option<Arc<PushIntent>> {
        self.push_intent.lock().ok().and_then(|p| p.clone())
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Fail with `Cancelled` if the run's cancel flag is raised.
    pub(crate) fn check_cancel(&self) -> std::io::Result<()> {
        if self.cancelled() {
            Err(self.fail(SyncError::Cancelled))
        } else {
            Ok(())
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

fn basic_pair(c: &Credentials) -> (String, String) {
    match c {
        Credentials::Token { token, username } => (
            username
                .clone()
                .unwrap_or_else(|| crate::net::DEFAULT_TOKEN_USERNAME.to_owned()),
            token.clone(),
        ),
        Credentials::UsernamePassword { username, password } => {
            (username.clone(), password.clone())
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<RunCtx>>> = const { RefCell::new(None) };
}

/// The run's transport state, installed on this thread while it lives.
pub(crate) struct Scope {
    ctx: Arc<RunCtx>,
    previous: Option<Arc<RunCtx>>,
    /// Dropped to end the cancel watcher.
    watching: Option<Sender<()>>,
    watcher: Option<JoinHandle<()>>,
}

impl Scope {
    pub(crate) fn enter(spec: &RunSpec<'_>) -> Result<Scope, SyncError> {
        register::install();
        if !register::installed() {
            // libgit2's own transport would serve the run: refuse instead.
            return Err(SyncError::of(FailureCode::TransportUnavailable));
        }
        let ctx = Arc::new(RunCtx::new(spec)?);
        let (watching, watcher) = match ctx.cancel.is_some() {
            true => {
                let (tx, rx) = channel();
                let watched = Arc::clone(&ctx);
                let thread = std::thread::Builder::new()
                    .name("git-run-cancel".into())
                    .spawn(move || watch_cancel(&watched, &rx))
                    .map_err(|_| SyncError::of(FailureCode::InternalError))?;
                (Some(tx), Some(thread))
            }
            false => (None, None),
        };
        let previous = CURRENT.with(|c| c.replace(Some(Arc::clone(&ctx))));
        Ok(Scope {
            ctx,
            previous,
            watching,
            watcher,
        })
    }

    pub(crate) fn failure(&self) -> Option<SyncError> {
        self.ctx.failure()
    }

    /// From now on, receive-pack advertisements of this run are trimmed to
    /// what a push of `intent`'s refs needs, and `intent` learns the
    /// remote's values of them.
    pub(crate) fn intend_push(&self, intent: Arc<PushIntent>) {
        if let Ok(mut slot) = self.ctx.push_intent.lock() {
            *slot = Some(intent);
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        // The watcher wakes at once on the closed channel.
        self.watching = None;
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

/// Until the scope ends: once the run is cancelled, record it and shut the
/// run's agent down (interrupting its blocked I/O).
fn watch_cancel(ctx: &RunCtx, scope_alive: &std::sync::mpsc::Receiver<()>) {
    loop {
        match scope_alive.recv_timeout(CANCEL_POLL) {
            Err(RecvTimeoutError::Timeout) if ctx.cancelled() => {
                let _ = ctx.fail(SyncError::Cancelled);
                ctx.agent.clone().shutdown();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The factory's view: the calling thread's run, if any.
fn current() -> Option<Arc<RunCtx>> {
    CURRENT.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_has_the_git_prefix() {
        assert!(USER_AGENT.starts_with("git/2.0 (depot-sync/"));
        assert!(USER_AGENT.ends_with(')'));
    }

    #[test]
    fn codes_keep_their_class() {
        assert_eq!(
            code_error("advertisement_too_large"),
            SyncError::Permanent(FailureCode::AdvertisementTooLarge.into())
        );
        assert_eq!(
            code_error("timeout"),
            SyncError::Transient(FailureCode::Timeout.into())
        );
        assert_eq!(
            code_error("upstream_error: http 418"),
            SyncError::Permanent(FailureCode::UpstreamError.with("http 418"))
        );
    }
}
