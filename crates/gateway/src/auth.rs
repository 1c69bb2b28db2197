//! `Authorization: Bearer <key>`: keys belong to one org and carry
//! hierarchical scopes (read < write < admin).

use crate::AppState;
use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use depot_domain::Scope;
use depot_store::keys::KeyRecord;
use depot_store::{Pool, PooledClient};
use std::future::Future;
use std::pin::Pin;

/// The authenticated caller of a request.
pub struct Caller {
    pub key: KeyRecord,
    /// The connection the key was checked on. Handlers take it with
    /// [`Caller::db`] so that a request holds one pool slot, not two: the
    /// status poll is the dominant load and a second checkout per request
    /// was a measurable share of its cost (docs/benchmarks.md).
    conn: Option<PooledClient>,
}

impl Caller {
    /// The request's database connection: the one authentication used, or
    /// a fresh one if it was released.
    pub async fn db(&mut self, pool: &Pool) -> Result<PooledClient, ApiError> {
        match self.conn.take() {
            Some(conn) => Ok(conn),
            None => Ok(pool.get().await?),
        }
    }

    /// Give the connection back before slow work that needs none (reading
    /// a request body from a slow client), so it cannot hold a pool slot.
    pub fn release_db(&mut self) {
        self.conn = None;
    }

    /// The path's org must be the key's own. Another org is "not found": an
    /// API key never learns whether another org or its repos exist.
    pub fn org(&self, slug: &str) -> Result<(), ApiError> {
        if self.key.org_slug == slug {
            Ok(())
        } else {
            Err(ApiError::not_found("organization"))
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this operation requires the {scope} scope"
            )))
        }
    }

    /// Both checks, org first (404 before 403).
    pub fn for_org(&self, slug: &str, scope: Scope) -> Result<(), ApiError> {
        self.org(slug)?;
        self.require(scope)
    }
}

fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <api key>'"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 256 {
        return Err(ApiError::unauthorized(
            "Authorization must be 'Bearer <api key>'",
        ));
    }
    Ok(token.to_string())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            let conn = state.pool.get().await?;
            let key = depot_store::keys::find(&conn, &token)
                .await?
                .filter(|k| k.is_active(chrono::Utc::now()))
                .ok_or_else(|| ApiError::unauthorized("invalid, revoked or expired API key"))?;
            tracing::Span::current().record("key_id", key.id.as_str());
            Ok(Caller {
                key,
                conn: Some(conn),
            })
        })
    }
}
