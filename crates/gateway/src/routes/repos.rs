//! `/v1/{org}/repos` and `/v1/{org}/{repo}`.

use super::{json_response, json_text_response};
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::json::{self, JsonObject, Object};
use crate::pagination::{self, PageQuery};
use crate::policy::check_upstream_url;
use crate::views;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use depot_domain::ids::new_id;
use depot_domain::{Scope, is_valid_branch_name};
use depot_secrets::Credential;
use depot_store::GenericClient;
use depot_store::repos::{NewRepo, Repo, RepoChanges, Upstream};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

const MAX_TAGS: usize = 64;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 1024;
const MAX_SECRET: usize = 4096;

/// Names that would collide with routes (`/v1/{org}/repos`,
/// `/v1/{org}/webhook-targets`).
const RESERVED_NAMES: &[&str] = &["repos", "webhook-targets", ".", ".."];

/// Could `name` be a repository's name at all?
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !RESERVED_NAMES.contains(&name)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            "name must be 1-100 characters of [A-Za-z0-9._-] (and not 'repos', 'webhook-targets', '.' or '..')",
        ))
    }
}

fn check_bookmark(name: &str) -> Result<(), ApiError> {
    if is_valid_branch_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "default_bookmark",
            "default_bookmark is not a valid branch name",
        ))
    }
}

/// Tags on create: an object of strings. On PATCH (`merge = Some(current)`)
/// a `null` value removes that tag.
fn parse_tags(value: &Value, merge: Option<&Value>) -> Result<Value, ApiError> {
    let Value::Object(given) = value else {
        return Err(ApiError::invalid(
            "tags",
            "tags must be an object of strings",
        ));
    };
    let mut tags: Map<String, Value> = merge
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    for (k, v) in given {
        let field = format!("tags.{k}");
        if k.is_empty() || k.len() > MAX_TAG_KEY || k.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                &field,
                format!(
                    "tag names must be 1-{MAX_TAG_KEY} characters, none of them control characters"
                ),
            ));
        }
        match v {
            // NUL cannot be stored in Postgres text or jsonb (found by
            // schemathesis as a 500); refuse it rather than alter the value.
            Value::String(s) if s.contains('\0') => {
                return Err(ApiError::invalid(
                    &field,
                    "tag values must not contain NUL characters",
                ));
            }
            Value::String(s) if s.len() <= MAX_TAG_VALUE => {
                tags.insert(k.clone(), v.clone());
            }
            Value::String(_) => {
                return Err(ApiError::invalid(
                    &field,
                    format!("tag values must be at most {MAX_TAG_VALUE} characters"),
                ));
            }
            Value::Null if merge.is_some() => {
                tags.remove(k);
            }
            _ => return Err(ApiError::invalid(&field, "tag values must be strings")),
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    Ok(Value::Object(tags))
}

/// A repository's body, on create and on PATCH alike.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoBody {
    #[serde(default, deserialize_with = "json::present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    default_bookmark: Option<String>,
    /// Kept as given: on PATCH a `null` tag value removes that tag, and
    /// [`parse_tags`] words each refusal for tags.
    #[serde(default, deserialize_with = "json::present")]
    tags: Option<Value>,
    #[serde(default, with = "serde_with::rust::double_option")]
    upstream: Option<Option<Object<UpstreamBody>>>,
}

/// `upstream` as given: the URL and the tri-state `auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamBody {
    url: String,
    #[serde(default, with = "serde_with::rust::double_option")]
    auth: Option<Option<Object<AuthBody>>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthKind {
    Token,
    UsernamePassword,
}

/// `upstream.auth`, every kind's fields in one object. Not an internally
/// tagged enum: serde buffers such content before it picks the variant,
/// and a type error inside then no longer names its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthBody {
    kind: AuthKind,
    #[serde(default, deserialize_with = "json::present")]
    token: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    token_username: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    password: Option<String>,
}

fn secret(value: Option<String>, key: &str) -> Result<String, ApiError> {
    let field = format!("upstream.auth.{key}");
    let value = value.ok_or_else(|| ApiError::invalid(&field, format!("{field} is required")))?;
    if value.is_empty() || value.len() > MAX_SECRET {
        return Err(ApiError::invalid(
            &field,
            format!("{field} must be 1-{MAX_SECRET} characters"),
        ));
    }
    Ok(value)
}

/// A field of another kind than the one given is unknown for this kind.
fn not_for_kind(given: &[(&str, &Option<String>)]) -> Result<(), ApiError> {
    match given.iter().find(|(_, v)| v.is_some()) {
        Some((key, _)) => {
            let field = format!("upstream.auth.{key}");
            Err(ApiError::invalid(
                &field,
                format!("unknown field {field:?}"),
            ))
        }
        None => Ok(()),
    }
}

fn parse_auth(auth: AuthBody) -> Result<Credential, ApiError> {
    match auth.kind {
        AuthKind::Token => {
            not_for_kind(&[("username", &auth.username), ("password", &auth.password)])?;
            Ok(Credential::Token {
                token: secret(auth.token, "token")?,
                token_username: auth.token_username,
            })
        }
        AuthKind::UsernamePassword => {
            not_for_kind(&[
                ("token", &auth.token),
                ("token_username", &auth.token_username),
            ])?;
            Ok(Credential::UsernamePassword {
                username: secret(auth.username, "username")?,
                password: secret(auth.password, "password")?,
            })
        }
    }
}

/// `upstream` after parsing: the URL and the tri-state `auth`.
struct UpstreamInput {
    url: String,
    auth: Patch<Credential>,
}

/// A tri-state PATCH field: `None` omitted (keep), `Some(None)` null (clear).
type Patch<T> = Option<Option<T>>;

fn parse_upstream(body: UpstreamBody) -> Result<UpstreamInput, ApiError> {
    let auth = match body.auth {
        None => None,
        Some(None) => Some(None),
        Some(Some(Object(a))) => Some(Some(parse_auth(a)?)),
    };
    Ok(UpstreamInput {
        url: body.url,
        auth,
    })
}

/// Parse `upstream` and apply the URL policy (which may resolve the host:
/// done before any database transaction is opened).
async fn checked_upstream(state: &AppState, body: UpstreamBody) -> Result<UpstreamInput, ApiError> {
    let mut input = parse_upstream(body)?;
    input.url = check_upstream_url(&input.url, &state.settings.upstream).await?;
    Ok(input)
}

/// 400 `UPSTREAM_AUTH_REQUIRED`: a stored credential was given for one
/// origin and is never carried to another one by omission.
fn auth_required() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::UpstreamAuthRequired,
        "upstream.url names another origin (scheme, host or port) than the stored credential \
         was given for: send upstream.auth with the credential for the new origin, \
         or \"auth\": null for none",
    )
    .with_detail("field", "upstream.auth")
}

/// Seal the new credential, or keep (`Absent`) / clear (`Null`) the stored
/// one. `input.url` has passed the policy already.
///
/// A credential is bound to the origin of the URL it was given with
/// (sealed with it, crates/secrets): keeping it is allowed only while the
/// origin stays the same (another path on the same server is fine), so a
/// key with `write` scope cannot point a stored credential at a server it
/// controls and read it from the `Authorization` header.
fn build_upstream(
    state: &AppState,
    repo_id: &str,
    input: UpstreamInput,
    current: Option<&Upstream>,
) -> Result<Upstream, ApiError> {
    let url = input.url;
    // Every URL that passed the policy has one (http/https with a host).
    let origin = depot_domain::policy::origin(&url)
        .ok_or_else(|| ApiError::invalid("upstream.url", "upstream.url has no origin"))?;
    let (auth_kind, credential) = match input.auth {
        Some(Some(cred)) => {
            let sealed = state
                .credential_key
                .seal_credential(&cred, repo_id, &origin)
                .map_err(ApiError::internal)?;
            (Some(cred.kind().to_string()), Some(sealed))
        }
        Some(None) => (None, None),
        None => match current {
            Some(u) if u.credential.is_some() => {
                if depot_domain::policy::origin(&u.url).as_deref() != Some(origin.as_str()) {
                    return Err(auth_required());
                }
                (u.auth_kind.clone(), u.credential.clone())
            }
            _ => (None, None),
        },
    };
    Ok(Upstream {
        url,
        auth_kind,
        credential,
    })
}

pub(crate) async fn load_repo(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
) -> Result<Repo, ApiError> {
    // No repository has such a name; answering here also keeps bytes
    // Postgres refuses in text (NUL) away from the query.
    if !is_valid_name(name) {
        return Err(ApiError::not_found("repository"));
    }
    depot_store::repos::by_name(client, org_id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("repository"))
}

/// The repository's JSON text, its latest sync's stats read separately
/// when large (`depot_store::syncs::latest_for`).
async fn render(
    client: &impl GenericClient,
    repo: &Repo,
    org_slug: &str,
) -> Result<String, ApiError> {
    let latest = depot_store::syncs::latest_for(client, std::slice::from_ref(&repo.id)).await?;
    let latest = latest.first();
    let stats = match latest {
        Some(s) if s.stats_deferred => depot_store::syncs::stats_of(client, &s.id).await?,
        _ => None,
    };
    Ok(views::text(&views::RepoView::of(
        repo,
        org_slug,
        latest,
        stats.as_deref(),
    )))
}

pub async fn create(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<String>,
    body: JsonObject<RepoBody>,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Write)?;
    let body = body.read(&mut caller).await?;
    let name = match body.name {
        Some(n) => n,
        None => new_id("repo").replace('_', "-"),
    };
    check_name(&name)?;
    let bookmark = body.default_bookmark.unwrap_or_else(|| "main".into());
    check_bookmark(&bookmark)?;
    let tags = match &body.tags {
        None => json!({}),
        Some(v) => parse_tags(v, None)?,
    };
    let repo_id = new_id("repo");
    let upstream = match body.upstream {
        Some(Some(Object(u))) => Some(build_upstream(
            &state,
            &repo_id,
            checked_upstream(&state, u).await?,
            None,
        )?),
        _ => None,
    };
    let mut client = caller.db(&state.pool).await?;
    let tx = client.transaction().await?;
    let inserted = depot_store::repos::insert(
        &tx,
        &NewRepo {
            id: &repo_id,
            org_id: &caller.key.org_id,
            name: &name,
            default_bookmark: &bookmark,
            tags: &tags,
        },
    )
    .await?;
    if !inserted {
        return Err(ApiError::conflict(
            ErrorCode::RepoAlreadyExists,
            format!("a repository named {name:?} already exists"),
        )
        .with_detail("name", name));
    }
    if let Some(u) = &upstream {
        depot_store::repos::set_upstream(&tx, &repo_id, Some(u)).await?;
    }
    let repo = depot_store::repos::by_id(&tx, &repo_id)
        .await?
        .ok_or_else(|| ApiError::internal("created repo vanished"))?;
    tx.commit().await?;
    tracing::info!(repo_id = %repo.id, org_id = %repo.org_id, "repository created");
    Ok(json_response(
        StatusCode::CREATED,
        &views::repo(&repo, &caller.key.org_slug, None),
    ))
}

pub async fn list(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Read)?;
    let (limit, after) = pagination::request(&query, "r", 0)?;
    let client = caller.db(&state.pool).await?;
    let mut repos = depot_store::repos::list(&client, &caller.key.org_id, after, limit + 1).await?;
    let (has_more, next_cursor) = pagination::cut(&mut repos, limit, "r", |r| r.seq);
    let ids: Vec<String> = repos.iter().map(|r| r.id.clone()).collect();
    let latest = depot_store::syncs::latest_for(&client, &ids).await?;
    let head = format!(
        "{{\"has_more\":{has_more},\"next_cursor\":{},\"repos\":[",
        views::text(&next_cursor)
    );
    let page = RepoPage {
        client,
        repos,
        latest,
        org_slug: caller.key.org_slug.clone(),
        next: 0,
    };
    // Streamed one repository at a time: a page of 100 whose latest syncs
    // each list 20,000 refs would otherwise be hundreds of MiB at once.
    // Large stats are read only when their repository's turn comes.
    let body = futures_util::stream::once(async move { Ok(web::Bytes::from(head)) }).chain(
        futures_util::stream::unfold(Some(page), |page| async move {
            let mut page = page?;
            match page.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(web::Bytes::from(chunk)), Some(page))),
                Ok(None) => Some((Ok(web::Bytes::from_static(b"]}")), None)),
                Err(e) => {
                    // The status line is sent: all we can do is cut the body
                    // short, which the client sees as truncated JSON.
                    tracing::warn!(error = %e, "repository list cut short");
                    Some((Err(e), None))
                }
            }
        }),
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming::<_, depot_store::StoreError>(body))
}

/// The rest of a repository page being streamed.
struct RepoPage {
    client: depot_store::PooledClient,
    repos: Vec<Repo>,
    latest: Vec<depot_store::syncs::SyncRecord>,
    org_slug: String,
    next: usize,
}

impl RepoPage {
    /// The next repository's JSON text (comma first after the first), or
    /// `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<String>, depot_store::StoreError> {
        let Some(repo) = self.repos.get(self.next) else {
            return Ok(None);
        };
        let latest = self.latest.iter().find(|s| s.repo_id == repo.id);
        let stats = match latest {
            Some(s) if s.stats_deferred => {
                depot_store::syncs::stats_of(&self.client, &s.id).await?
            }
            _ => None,
        };
        let mut chunk = String::new();
        if self.next > 0 {
            chunk.push(',');
        }
        chunk.push_str(&views::text(&views::RepoView::of(
            repo,
            &self.org_slug,
            latest,
            stats.as_deref(),
        )));
        self.next += 1;
        Ok(Some(chunk))
    }
}

pub async fn get(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, name) = path.into_inner();
    caller.for_repo(&org, &name, Scope::Read)?;
    let client = caller.db(&state.pool).await?;
    let repo = load_repo(&client, &caller.key.org_id, &name).await?;
    let body = render(&client, &repo, &caller.key.org_slug).await?;
    Ok(json_text_response(StatusCode::OK, body))
}

pub async fn update(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
    body: JsonObject<RepoBody>,
) -> Result<HttpResponse, ApiError> {
    let (org, name) = path.into_inner();
    caller.for_repo(&org, &name, Scope::Write)?;
    let body = body.read(&mut caller).await?;
    let new_name = body.name;
    if let Some(n) = &new_name {
        check_name(n)?;
        if *n != name {
            caller.may_rename_to(n)?;
        }
    }
    let bookmark = body.default_bookmark;
    if let Some(b) = &bookmark {
        check_bookmark(b)?;
    }
    let upstream_input = match body.upstream {
        None => None,
        Some(None) => Some(None),
        Some(Some(Object(u))) => Some(Some(checked_upstream(&state, u).await?)),
    };
    let mut client = caller.db(&state.pool).await?;
    let tx = client.transaction().await?;
    let repo = depot_store::repos::by_name_for_update(&tx, &caller.key.org_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("repository"))?;
    let tags = match &body.tags {
        None => None,
        Some(v) => Some(parse_tags(v, Some(&repo.tags))?),
    };
    match upstream_input {
        None => {}
        Some(None) => depot_store::repos::set_upstream(&tx, &repo.id, None).await?,
        Some(Some(input)) => {
            let upstream = build_upstream(&state, &repo.id, input, repo.upstream.as_ref())?;
            depot_store::repos::set_upstream(&tx, &repo.id, Some(&upstream)).await?;
        }
    }
    let changes = RepoChanges {
        name: new_name.as_deref(),
        default_bookmark: bookmark.as_deref(),
        tags: tags.as_ref(),
    };
    if !depot_store::repos::update(&tx, &repo.id, &changes).await? {
        let n = new_name.unwrap_or_default();
        return Err(ApiError::conflict(
            ErrorCode::RepoAlreadyExists,
            format!("a repository named {n:?} already exists"),
        )
        .with_detail("name", n));
    }
    let repo = depot_store::repos::by_id(&tx, &repo.id)
        .await?
        .ok_or_else(|| ApiError::internal("updated repo vanished"))?;
    let body = render(&tx, &repo, &caller.key.org_slug).await?;
    tx.commit().await?;
    Ok(json_text_response(StatusCode::OK, body))
}

pub async fn delete(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, name) = path.into_inner();
    caller.for_repo(&org, &name, Scope::Write)?;
    let client = caller.db(&state.pool).await?;
    let repo = load_repo(&client, &caller.key.org_id, &name).await?;
    if !depot_store::repos::delete_and_schedule_purge(&client, &repo.id, &caller.key.org_id).await?
    {
        return Err(ApiError::not_found("repository"));
    }
    tracing::info!(repo_id = %repo.id, "repository deleted");
    Ok(HttpResponse::Ok().json(json!({ "success": true })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Parse a body as `POST /v1/{org}/repos` does, up to the credential.
    fn upstream_of(raw: &str) -> Result<UpstreamInput, ApiError> {
        let body: RepoBody = json::from_object(&json::parse_object(raw.as_bytes())?)?;
        match body.upstream {
            Some(Some(Object(u))) => parse_upstream(u),
            other => panic!("no upstream in {raw}: {other:?}"),
        }
    }

    #[test]
    fn every_auth_refusal_names_its_field() {
        for (auth, field, message) in [
            (
                r#"{"kind": "ssh"}"#,
                "upstream.auth.kind",
                "upstream.auth.kind must be 'token' or 'username_password'",
            ),
            (
                r#"{"token": "t"}"#,
                "upstream.auth.kind",
                "upstream.auth.kind is required",
            ),
            (
                r#"{"kind": "token"}"#,
                "upstream.auth.token",
                "upstream.auth.token is required",
            ),
            (
                r#"{"kind": "token", "token": 5}"#,
                "upstream.auth.token",
                "upstream.auth.token must be a string",
            ),
            (
                r#"{"kind": "token", "token": "t", "password": "p"}"#,
                "upstream.auth.password",
                r#"unknown field "upstream.auth.password""#,
            ),
            (
                r#"{"kind": "username_password", "username": "u", "token_username": "x"}"#,
                "upstream.auth.token_username",
                r#"unknown field "upstream.auth.token_username""#,
            ),
            (
                r#"{"kind": "token", "token": ""}"#,
                "upstream.auth.token",
                "upstream.auth.token must be 1-4096 characters",
            ),
            (
                r#"["token", "t"]"#,
                "upstream.auth",
                "upstream.auth must be an object",
            ),
        ] {
            let raw = format!(r#"{{"upstream": {{"url": "https://h/r", "auth": {auth}}}}}"#);
            let Err(e) = upstream_of(&raw) else {
                panic!("{raw} was accepted");
            };
            assert_eq!(
                (
                    e.details.unwrap()["field"].as_str().unwrap(),
                    e.message.as_str()
                ),
                (field, message),
                "{raw}"
            );
        }
    }

    #[test]
    fn auth_is_tri_state_and_each_kind_yields_its_credential() {
        let url = r#""url": "https://h/r""#;
        assert!(
            upstream_of(&format!("{{\"upstream\": {{{url}}}}}"))
                .unwrap()
                .auth
                .is_none()
        );
        let cleared = upstream_of(&format!("{{\"upstream\": {{{url}, \"auth\": null}}}}"));
        assert!(matches!(cleared.unwrap().auth, Some(None)));
        let token = upstream_of(&format!(
            r#"{{"upstream": {{{url}, "auth": {{"kind": "token", "token": "t", "token_username": "x"}}}}}}"#
        ));
        assert!(matches!(
            token.unwrap().auth,
            Some(Some(Credential::Token { token, token_username: Some(user) }))
                if token == "t" && user == "x"
        ));
        let basic = upstream_of(&format!(
            r#"{{"upstream": {{{url}, "auth": {{"kind": "username_password", "username": "u", "password": "p"}}}}}}"#
        ));
        assert!(matches!(
            basic.unwrap().auth,
            Some(Some(Credential::UsernamePassword { username, password }))
                if username == "u" && password == "p"
        ));
    }
}
