//! Conditional and waiting reads of syncs: a strong `ETag` on every sync GET
//! and sync list, `If-None-Match` answered with 304, and `Prefer: wait=N`
//! (RFC 7240) holding a matching request until the representation changes
//! or N seconds pass (docs/api.md "Conditional and waiting reads").
//!
//! Invariants:
//! - The tag is a hash of the exact body bytes sent: equal tags mean equal
//!   bodies (strong), and any change of what a client sees changes it.
//! - A held request holds no pool connection: each read takes one and gives
//!   it back before waiting; the wait itself is an [`Interest`] in the
//!   gateway's in-process fan-out of database notifications
//!   (crate::sync_watch).
//! - No change is missed: the interest is taken before the read it compares
//!   (for a list, whose repository id only the first read learns, one more
//!   read follows taking it).
//! - `Preference-Applied: wait=N` is sent exactly when the request was held.

use crate::AppState;
use crate::error::ApiError;
use crate::sync_watch::Interest;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

/// Longest `Prefer: wait` honoured; longer ones are shortened to it.
pub const MAX_WAIT_SECONDS: u64 = 60;

pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// What the request asked for.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    /// The entity tags of `If-None-Match` (opaque parts, quotes kept), or
    /// `["*"]`.
    if_none_match: Vec<String>,
    /// `Prefer: wait=N`, N in 1..=60 seconds.
    wait: Option<u64>,
}

impl Conditions {
    pub fn of(req: &HttpRequest) -> Conditions {
        let mut if_none_match = Vec::new();
        for value in req.headers().get_all(header::IF_NONE_MATCH) {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split(',') {
                let tag = tag.trim();
                // If-None-Match compares weakly (RFC 9110 13.1.2).
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                if !tag.is_empty() {
                    if_none_match.push(tag.to_string());
                }
            }
        }
        let wait = req
            .headers()
            .get_all(PREFER)
            .filter_map(|v| v.to_str().ok())
            .find_map(wait_preference)
            .filter(|n| *n > 0)
            .map(|n| n.min(MAX_WAIT_SECONDS));
        Conditions {
            if_none_match,
            wait,
        }
    }

    fn matches(&self, etag: &str) -> bool {
        self.if_none_match.iter().any(|t| t == "*" || t == etag)
    }

    /// Whether the request may be held (a wait only applies to a
    /// conditional request).
    pub fn may_wait(&self) -> bool {
        self.wait.is_some() && !self.if_none_match.is_empty()
    }
}

/// The `wait` preference of one `Prefer` header value (RFC 7240:
/// comma-separated preferences, each `token[=value]` with `;` parameters).
fn wait_preference(value: &str) -> Option<u64> {
    value.split(',').find_map(|pref| {
        let head = pref.split(';').next()?.trim();
        let (name, n) = head.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        n.trim().trim_matches('"').parse().ok()
    })
}

/// A body ready to send, with its tag.
pub struct Representation {
    body: String,
    etag: String,
}

impl Representation {
    pub fn json(body: String) -> Representation {
        let digest = Sha256::digest(body.as_bytes());
        let mut etag = String::with_capacity(34);
        etag.push('"');
        for b in &digest[..16] {
            let _ = write!(etag, "{b:02x}");
        }
        etag.push('"');
        Representation { body, etag }
    }

    fn respond(self, status: StatusCode, held: Option<u64>) -> HttpResponse {
        if status == StatusCode::NOT_MODIFIED {
            return not_modified(&self.etag, held);
        }
        let mut res = HttpResponse::build(status);
        if let Ok(tag) = HeaderValue::from_str(&self.etag) {
            res.insert_header((header::ETAG, tag));
        }
        if let Some(n) = held {
            res.insert_header((PREFERENCE_APPLIED, format!("wait={n}")));
        }
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .body(self.body)
    }
}

/// What a read keys its waiting on.
pub enum Watch<'a> {
    /// One sync, known before the read.
    Sync(&'a str),
    /// The list of the repository the read reports.
    RepoOfRead,
}

/// Answer a GET from `read` (one database read, its connection returned
/// when it resolves; it also reports the repository's id): 200 with the tag,
/// 304 when `If-None-Match` names it, and with `Prefer: wait` a 304 held
/// until the representation changes, the wait runs out or the gateway
/// stops (crate::sync_watch::SyncWatch::stop).
pub async fn respond<F, Fut>(
    state: &AppState,
    req: &HttpRequest,
    watch: Watch<'_>,
    mut read: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Representation, String), ApiError>>,
{
    let conditions = Conditions::of(req);
    // A stopping gateway holds nothing: the answer is the one without wait.
    let wait = conditions
        .wait
        .filter(|_| conditions.may_wait() && !state.sync_watch.is_stopping());
    let deadline = wait.map(|n| tokio::time::Instant::now() + Duration::from_secs(n));
    let mut interest: Option<Interest> = match (wait, &watch) {
        (Some(_), Watch::Sync(id)) => Some(state.sync_watch.sync(id)),
        _ => None,
    };
    let mut held = false;
    loop {
        // Boxed: the read's state (a query in flight) is not kept inline in
        // this future, whose size every held request pays while it waits.
        let (rep, repo_id) = Box::pin(read()).await?;
        let applied = held.then_some(wait).flatten();
        if !conditions.matches(&rep.etag) {
            return Ok(rep.respond(StatusCode::OK, applied));
        }
        let (Some(deadline), Some(n)) = (deadline, wait) else {
            return Ok(rep.respond(StatusCode::NOT_MODIFIED, None));
        };
        held = true;
        let Some(waiting) = interest.as_mut() else {
            // Read again now that changes are being watched.
            interest = Some(state.sync_watch.repo(&repo_id));
            continue;
        };
        // A 304 needs only the tag: the body and the id are not kept for
        // the wait (10,000 held requests pay for whatever is).
        let etag = rep.etag;
        drop((rep.body, repo_id));
        let _gauge = Held::new();
        tokio::select! {
            _ = waiting.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(not_modified(&etag, Some(n)));
            }
            _ = state.sync_watch.stopped() => {
                // The client's next request would find the listener
                // closed: close this connection rather than keep it alive
                // into the shutdown.
                let mut res = not_modified(&etag, Some(n));
                res.head_mut().set_connection_type(ConnectionType::Close);
                return Ok(res);
            }
        }
    }
}

fn not_modified(etag: &str, held: Option<u64>) -> HttpResponse {
    let mut res = HttpResponse::build(StatusCode::NOT_MODIFIED);
    if let Ok(tag) = HeaderValue::from_str(etag) {
        res.insert_header((header::ETAG, tag));
    }
    if let Some(n) = held {
        res.insert_header((PREFERENCE_APPLIED, format!("wait={n}")));
    }
    res.finish()
}

/// Counts a held request in `depot_gateway_waiting_requests`.
struct Held;

impl Held {
    fn new() -> Held {
        crate::metrics::metrics().waiting_requests.inc();
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        crate::metrics::metrics().waiting_requests.dec();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn wait_is_read_among_other_preferences_and_capped() {
        assert_eq!(wait_preference("respond-async, wait=10"), Some(10));
        assert_eq!(wait_preference("WAIT = 5 ;x=y"), Some(5));
        assert_eq!(wait_preference("return=minimal"), None);
        let req = TestRequest::default()
            .insert_header(("prefer", "wait=600"))
            .insert_header(("if-none-match", "\"a\""))
            .to_http_request();
        let c = Conditions::of(&req);
        assert_eq!(c.wait, Some(MAX_WAIT_SECONDS));
        assert!(c.may_wait());
    }

    #[test]
    fn a_wait_without_if_none_match_is_not_applied() {
        let req = TestRequest::default()
            .insert_header(("prefer", "wait=5"))
            .to_http_request();
        assert!(!Conditions::of(&req).may_wait());
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let req = TestRequest::default()
            .insert_header(("if-none-match", "\"x\", W/\"abc\""))
            .to_http_request();
        let c = Conditions::of(&req);
        assert!(c.matches("\"abc\""));
        assert!(!c.matches("\"abd\""));
        let star = TestRequest::default()
            .insert_header(("if-none-match", "*"))
            .to_http_request();
        assert!(Conditions::of(&star).matches("\"anything\""));
    }

    #[test]
    fn the_tag_is_strong_and_follows_the_body() {
        let a = Representation::json("{\"a\":1}".into());
        let b = Representation::json("{\"a\":2}".into());
        assert!(a.etag.starts_with('"') && a.etag.len() == 34);
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag, Representation::json("{\"a\":1}".into()).etag);
    }
}
