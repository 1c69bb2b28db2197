//! `/v1/{org}/repos` and `/v1/{org}/{repo}`.

use super::{json_response, json_text_response, read_body};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::{self, Field};
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
use serde_json::{Map, Value, json};

const MAX_TAGS: usize = 64;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 1024;
const MAX_SECRET: usize = 4096;

/// Names that would collide with routes (`/v1/{org}/repos`).
const RESERVED_NAMES: &[&str] = &["repos", ".", ".."];

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
            "name must be 1-100 characters of [A-Za-z0-9._-] (and not 'repos', '.' or '..')",
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

fn secret(map: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    let value = json::required_string(map, key, "upstream.auth")?;
    if value.is_empty() || value.len() > MAX_SECRET {
        return Err(ApiError::invalid(
            &format!("upstream.auth.{key}"),
            format!("upstream.auth.{key} must be 1-{MAX_SECRET} characters"),
        ));
    }
    Ok(value)
}

fn parse_auth(map: &Map<String, Value>) -> Result<Credential, ApiError> {
    let kind = json::required_string(map, "kind", "upstream.auth")?;
    match kind.as_str() {
        "token" => {
            json::only_keys(map, &["kind", "token", "token_username"], "upstream.auth")?;
            let token_username = json::opt_string(map, "token_username", "upstream.auth")?;
            Ok(Credential::Token {
                token: secret(map, "token")?,
                token_username,
            })
        }
        "username_password" => {
            json::only_keys(map, &["kind", "username", "password"], "upstream.auth")?;
            Ok(Credential::UsernamePassword {
                username: secret(map, "username")?,
                password: secret(map, "password")?,
            })
        }
        _ => Err(ApiError::invalid(
            "upstream.auth.kind",
            "upstream.auth.kind must be 'token' or 'username_password'",
        )),
    }
}

/// `upstream` as given: the URL and the tri-state `auth`.
struct UpstreamInput {
    url: String,
    auth: Field<Credential>,
}

fn parse_upstream(map: &Map<String, Value>) -> Result<UpstreamInput, ApiError> {
    json::only_keys(map, &["url", "auth"], "upstream")?;
    let url = json::required_string(map, "url", "upstream")?;
    let auth = match json::object(map, "auth", "upstream")? {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Present(a) => Field::Present(parse_auth(a)?),
    };
    Ok(UpstreamInput { url, auth })
}

/// Parse `upstream` and apply the URL policy (which may resolve the host:
/// done before any database transaction is opened).
async fn checked_upstream(
    state: &AppState,
    map: &Map<String, Value>,
) -> Result<UpstreamInput, ApiError> {
    let mut input = parse_upstream(map)?;
    input.url = check_upstream_url(&input.url, &state.settings.upstream).await?;
    Ok(input)
}

/// 400 `UPSTREAM_AUTH_REQUIRED`: a stored credential was given for one
/// origin and is never carried to another one by omission.
fn auth_required() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "UPSTREAM_AUTH_REQUIRED",
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
        Field::Present(cred) => {
            let sealed = state
                .credential_key
                .seal_credential(&cred, repo_id, &origin)
                .map_err(ApiError::internal)?;
            (Some(cred.kind().to_string()), Some(sealed))
        }
        Field::Null => (None, None),
        Field::Absent => match current {
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
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Write)?;
    // Not held while the body arrives: a slow client would hold a pool slot.
    caller.release_db();
    let body =
        json::parse_object(&read_body(payload, state.settings.gateway.max_body_bytes).await?)?;
    json::only_keys(&body, &["name", "default_bookmark", "tags", "upstream"], "")?;
    let name = match json::opt_string(&body, "name", "")? {
        Some(n) => n,
        None => new_id("repo").replace('_', "-"),
    };
    check_name(&name)?;
    let bookmark =
        json::opt_string(&body, "default_bookmark", "")?.unwrap_or_else(|| "main".into());
    check_bookmark(&bookmark)?;
    let tags = match body.get("tags") {
        None => json!({}),
        Some(v) => parse_tags(v, None)?,
    };
    let repo_id = new_id("repo");
    let upstream = match json::object(&body, "upstream", "")? {
        Field::Present(u) => Some(build_upstream(
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
            "REPO_ALREADY_EXISTS",
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
    let limit = pagination::limit(query.limit.as_deref())?;
    let after = match &query.cursor {
        Some(c) => pagination::decode("r", c)?,
        None => 0,
    };
    let client = caller.db(&state.pool).await?;
    let mut repos = depot_store::repos::list(&client, &caller.key.org_id, after, limit + 1).await?;
    let has_more = repos.len() as i64 > limit;
    repos.truncate(limit as usize);
    let ids: Vec<String> = repos.iter().map(|r| r.id.clone()).collect();
    let latest = depot_store::syncs::latest_for(&client, &ids).await?;
    let next_cursor = if has_more {
        repos.last().map(|r| pagination::encode("r", r.seq))
    } else {
        None
    };
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
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (org, name) = path.into_inner();
    caller.for_repo(&org, &name, Scope::Write)?;
    // Not held while the body arrives: a slow client would hold a pool slot.
    caller.release_db();
    let body =
        json::parse_object(&read_body(payload, state.settings.gateway.max_body_bytes).await?)?;
    json::only_keys(&body, &["name", "default_bookmark", "tags", "upstream"], "")?;
    let new_name = json::opt_string(&body, "name", "")?;
    if let Some(n) = &new_name {
        check_name(n)?;
    }
    let bookmark = json::opt_string(&body, "default_bookmark", "")?;
    if let Some(b) = &bookmark {
        check_bookmark(b)?;
    }
    let upstream_input = match json::object(&body, "upstream", "")? {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Present(u) => Field::Present(checked_upstream(&state, u).await?),
    };
    let mut client = caller.db(&state.pool).await?;
    let tx = client.transaction().await?;
    let repo = depot_store::repos::by_name_for_update(&tx, &caller.key.org_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("repository"))?;
    let tags = match body.get("tags") {
        None => None,
        Some(v) => Some(parse_tags(v, Some(&repo.tags))?),
    };
    match upstream_input {
        Field::Absent => {}
        Field::Null => depot_store::repos::set_upstream(&tx, &repo.id, None).await?,
        Field::Present(input) => {
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
            "REPO_ALREADY_EXISTS",
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
