//! `Authorization: Bearer <credential>`, where the credential is an API key
//! (`depot_…`: one org, hierarchical scopes read < write < admin) or an
//! access token signed with one of the org's private keys
//! (crate::token; `admin: true` or per-repo `read-repo`/`write-repo`).
//!
//! Invariants:
//! - A credential is accepted only when its key is registered, unrevoked
//!   and (API keys) unexpired; a cached verdict is at most
//!   `auth.revocation_bound_ms` behind a revocation (crate::credential_cache).
//! - A hit in the cache costs no database read and no pool checkout:
//!   handlers take a connection with [`Caller::db`] when they need one.
//! - Every refusal is a 401 naming the failed check, never echoing the
//!   credential.

use crate::AppState;
use crate::error::ApiError;
use crate::token::{self, Grant};
use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use depot_domain::Scope;
use depot_store::keys::KeyRecord;
use depot_store::{Pool, PooledClient};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// API keys are 46 characters; anything much longer is not one.
const MAX_API_KEY_LEN: usize = 256;
/// A token granting 250 repositories with long names, and 100 authors,
/// stays well below this.
const MAX_TOKEN_LEN: usize = 32 * 1024;

/// The authenticated caller of a request.
pub struct Caller {
    /// The key and its org. For an access token: the private key's id, and
    /// the token's scopes (all three for `admin: true`, none for `access`).
    pub key: Arc<KeyRecord>,
    /// An access token's per-repo grant; `None` for API keys and admin
    /// tokens, whose scopes cover the whole org.
    pub access: Option<HashMap<String, Scope>>,
    conn: Option<PooledClient>,
}

impl Caller {
    /// The request's database connection: the one authentication used on a
    /// cache miss, or a fresh one.
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

    /// The path's org must be the key's own. Another org is "not found": a
    /// caller never learns whether another org or its repos exist.
    pub fn org(&self, slug: &str) -> Result<(), ApiError> {
        if self.key.org_slug == slug {
            Ok(())
        } else {
            Err(ApiError::not_found("organization"))
        }
    }

    /// An org-level operation's scope. A token limited to named repos has
    /// none of them.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.access.is_some() {
            return Err(ApiError::forbidden(
                "this access token grants named repositories only; org-level operations need an admin token",
            ));
        }
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

    /// An operation on repo `repo` of org `slug`. A token limited to named
    /// repos sees any other repo as missing (404), and a `read-repo` grant
    /// cannot write (403).
    pub fn for_repo(&self, slug: &str, repo: &str, scope: Scope) -> Result<(), ApiError> {
        self.org(slug)?;
        let Some(access) = &self.access else {
            return self.require(scope);
        };
        match access.get(repo) {
            None => Err(ApiError::not_found("repository")),
            Some(granted) if *granted >= scope => Ok(()),
            Some(_) => Err(ApiError::forbidden(
                "this access token grants read-repo on this repository; the operation needs write-repo",
            )),
        }
    }

    /// Renaming a repo (already allowed to write) to `new_name`. A grant
    /// names repos by name, so a token limited to named repos could
    /// otherwise move a repo out of its own grant, or under a name another
    /// token is granted: it may rename only to a name it holds write-repo
    /// on. Other callers may rename to any name.
    pub fn may_rename_to(&self, new_name: &str) -> Result<(), ApiError> {
        match &self.access {
            Some(access) if access.get(new_name).is_none_or(|g| *g < Scope::Write) => {
                Err(ApiError::forbidden(
                    "this access token may rename a repository only to a name it grants write-repo on",
                ))
            }
            _ => Ok(()),
        }
    }
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let refuse =
        || ApiError::unauthorized("Authorization must be 'Bearer <api key or access token>'");
    let (scheme, credential) = value.split_once(' ').ok_or_else(refuse)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(refuse());
    }
    let limit = if token::looks_like_token(credential) {
        MAX_TOKEN_LEN
    } else {
        MAX_API_KEY_LEN
    };
    if credential.len() > limit {
        return Err(refuse());
    }
    Ok(credential)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Everything that needs no I/O is done here, before the future
        // (which must own its data): hash or verify the credential, and
        // answer from the cache when it can.
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let outcome = bearer(req).and_then(|credential| {
            let state = state
                .as_ref()
                .ok_or_else(|| ApiError::internal("application state missing"))?;
            if token::looks_like_token(credential) {
                let verified = token::verify(credential, chrono::Utc::now().timestamp())
                    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
                Ok(match state.credentials.private_key(&verified.public_key) {
                    Some(key) => Lookup::Done(token_caller(&key, verified)?),
                    None => Lookup::PrivateKey(verified),
                })
            } else {
                let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
                Ok(match state.credentials.api_key(&digest) {
                    Some(key) => Lookup::Done(api_key_caller(key, None)?),
                    None => Lookup::ApiKey(credential.to_string()),
                })
            }
        });
        Box::pin(async move {
            let caller = match outcome? {
                Lookup::Done(caller) => caller,
                Lookup::ApiKey(credential) => {
                    let state =
                        state.ok_or_else(|| ApiError::internal("application state missing"))?;
                    let ticket = state.credentials.api_key_ticket();
                    let conn = state.pool.get().await?;
                    let key = depot_store::keys::find(&conn, &credential)
                        .await?
                        .filter(|k| k.is_active(chrono::Utc::now()))
                        .ok_or_else(|| {
                            ApiError::unauthorized("invalid, revoked or expired API key")
                        })?;
                    let key = Arc::new(key);
                    let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
                    state.credentials.put_api_key(digest, key.clone(), ticket);
                    api_key_caller(key, Some(conn))?
                }
                Lookup::PrivateKey(verified) => {
                    let state =
                        state.ok_or_else(|| ApiError::internal("application state missing"))?;
                    let ticket = state.credentials.private_key_ticket();
                    let conn = state.pool.get().await?;
                    let key =
                        depot_store::keys::find_private_key(&conn, &verified.public_key).await?;
                    let key = match key {
                        Some(k) if k.revoked_at.is_none() => Arc::new(k),
                        _ => return Err(unregistered()),
                    };
                    state
                        .credentials
                        .put_private_key(verified.public_key, key.clone(), ticket);
                    let mut caller = token_caller(&key, verified)?;
                    caller.conn = Some(conn);
                    caller
                }
            };
            tracing::Span::current().record("key_id", caller.key.id.as_str());
            Ok(caller)
        })
    }
}

enum Lookup {
    Done(Caller),
    ApiKey(String),
    PrivateKey(token::VerifiedToken),
}

fn unregistered() -> ApiError {
    ApiError::unauthorized(
        "access token jwk is not a registered, unrevoked private key of the org named by iss",
    )
}

fn api_key_caller(key: Arc<KeyRecord>, conn: Option<PooledClient>) -> Result<Caller, ApiError> {
    // A cached key may have expired since it was read.
    if !key.is_active(chrono::Utc::now()) {
        return Err(ApiError::unauthorized(
            "invalid, revoked or expired API key",
        ));
    }
    Ok(Caller {
        key,
        access: None,
        conn,
    })
}

fn token_caller(
    key: &depot_store::keys::PrivateKeyRecord,
    verified: token::VerifiedToken,
) -> Result<Caller, ApiError> {
    if key.org_slug != verified.iss || key.revoked_at.is_some() {
        return Err(unregistered());
    }
    let (scopes, access) = match verified.grant {
        Grant::Admin => (vec![Scope::Read, Scope::Write, Scope::Admin], None),
        Grant::Repos(repos) => (Vec::new(), Some(repos)),
    };
    Ok(Caller {
        key: Arc::new(KeyRecord {
            id: key.id.clone(),
            org_id: key.org_id.clone(),
            org_slug: key.org_slug.clone(),
            org_name: key.org_name.clone(),
            scopes,
            expires_at: chrono::DateTime::from_timestamp(verified.exp, 0),
            revoked_at: None,
        }),
        access,
        conn: None,
    })
}
