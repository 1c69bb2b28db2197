//! The one unsafe call of the workspace: registering our subtransport with
//! libgit2 for `http://` and `https://`.
//!
//! Invariant: [`install`] runs its registration exactly once per process
//! (a `Once`), before the first transport is created: the worker calls it
//! at start, and every run calls it again on entering its transport scope
//! (a no-op after the first time), so no upstream ever meets libgit2's
//! built-in HTTP transport.
#![allow(unsafe_code)]

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::transport::{Transport, register};
use git2::{Error, ErrorClass, ErrorCode};

use super::http::Subtransport;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Route libgit2's http and https through this crate's transport. Idempotent.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["http", "https"] {
            // SAFETY: `git2::transport::register` is unsafe because
            // libgit2's table of custom transports is unsynchronised with
            // transport creation. The `Once` runs this before any run's
            // scope exists, and every network operation of this process
            // enters a scope first (which calls `install`, i.e. waits for
            // the `Once`), so no transport is being created concurrently.
            let registered = unsafe { register(scheme, factory) };
            if let Err(e) = registered {
                // Only possible if another registration for the scheme
                // happened first, which nothing in this process does.
                tracing::error!(scheme, error = %e.message(), "registering the git transport failed");
                return;
            }
        }
        INSTALLED.store(true, Ordering::SeqCst);
    });
}

/// Whether our transport serves http(s) in this process.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, Error> {
    let Some(ctx) = super::current() else {
        return Err(Error::new(
            ErrorCode::GenericError,
            ErrorClass::Net,
            format!("{}transport_unscoped", super::ERROR_PREFIX),
        ));
    };
    // `rpc = true`: smart HTTP is stateless, one request per exchange.
    Transport::smart(remote, true, Subtransport::new(ctx))
}
