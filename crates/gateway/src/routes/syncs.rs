//! `/v1/{org}/{repo}/upstream/syncs`: the "Sync upstream" operation
//! (`docs/api.md`, "Upstream syncs"; `proto-schemas/openapi.yaml`) and its
//! two read companions.

use super::json_response;
use super::repos::{is_valid_name, load_repo};
use crate::AppState;
use crate::auth::Caller;
use crate::conditional::{self, Representation, Watch};
use crate::enqueue::{self, Idempotency, Outcome};
use crate::error::{ApiError, ErrorCode};
use crate::json::{self, JsonObject, Object};
use crate::pagination::{self, PageQuery};
use crate::views;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use depot_domain::ids::looks_like;
use depot_domain::{Direction, RefGlobs, RefGlobsInput, Scope};
use depot_store::syncs::Lookup;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

struct SyncRequest {
    direction: Direction,
    globs: RefGlobs,
}

/// The body as given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    direction: String,
    #[serde(default, with = "serde_with::rust::double_option")]
    ref_globs: Option<Option<Object<GlobsBody>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobsBody {
    #[serde(default, deserialize_with = "json::present")]
    branches: Option<String>,
    #[serde(default, deserialize_with = "json::present")]
    tags: Option<String>,
}

fn parse_request(body: SyncBody) -> Result<SyncRequest, ApiError> {
    let direction = body
        .direction
        .parse::<Direction>()
        .map_err(|_| ApiError::invalid("direction", "direction must be 'pull' or 'push'"))?;
    let input = match body.ref_globs {
        None => None,
        Some(None) => {
            return Err(ApiError::invalid(
                "ref_globs",
                "ref_globs must be an object; omit it to sync everything",
            ));
        }
        Some(Some(Object(g))) => Some(RefGlobsInput {
            branches: g.branches,
            tags: g.tags,
        }),
    };
    let globs =
        RefGlobs::normalize(input).map_err(|e| ApiError::invalid(e.field(), e.to_string()))?;
    Ok(SyncRequest { direction, globs })
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

/// JSON text with object keys sorted at every level, whatever map order
/// serde_json was built with.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

pub async fn create(
    state: web::Data<AppState>,
    mut caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: JsonObject<SyncBody>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo_name) = path.into_inner();
    caller.for_repo(&org, &repo_name, Scope::Write)?;
    let (body, object) = body.read_with_object(&mut caller).await?;
    let request = parse_request(body)?;
    let idem_key = idempotency_key(&req)?;
    // The hash covers the target and the body as parsed: key order and
    // blanks do not matter.
    let request_hash = Sha256::digest(
        format!(
            "POST /v1/{org}/{repo_name}/upstream/syncs {}",
            canonical(&Value::Object(object))
        )
        .as_bytes(),
    )
    .to_vec();

    if !is_valid_name(&repo_name) {
        return Err(ApiError::not_found("repository"));
    }
    let idem = idem_key.as_deref().map(|key| Idempotency {
        key,
        request_hash: &request_hash,
        retention: state.settings.gateway.idempotency_retention(),
    });
    let enqueue_request = enqueue::Request {
        org_id: &caller.key.org_id,
        repo_name: &repo_name,
        direction: request.direction,
        globs: &request.globs,
    };
    let outcome = enqueue::enqueue(
        &state.pool,
        &state.publisher,
        &enqueue_request,
        idem.as_ref(),
        |outcome| match answer(outcome) {
            Ok(body) => Some((201, body)),
            // A 409 is a final answer too: replay it for the same key.
            Err(e) if e.status == StatusCode::CONFLICT => Some((409, e.body())),
            Err(_) => None,
        },
    )
    .await?;
    match outcome {
        Outcome::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(json_response(status, &body))
        }
        Outcome::KeyReused => Err(ApiError::conflict(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
        other => {
            let body = answer(&other)?;
            if let Outcome::Created(sync) = &other {
                state.sync_watch.changed_repo(&sync.repo_id);
            }
            Ok(json_response(StatusCode::CREATED, &body))
        }
    }
}

/// A page of the sync list (fields in alphabetical order, see crate::views).
#[derive(serde::Serialize)]
struct SyncPage<'a> {
    has_more: bool,
    next_cursor: Option<String>,
    syncs: Vec<views::SyncView<'a>>,
}

/// The answer an outcome of [`enqueue::enqueue`] gets: the 201 body, or the
/// error.
fn answer(outcome: &Outcome) -> Result<Value, ApiError> {
    match outcome {
        Outcome::Created(sync) => Ok(views::sync(sync)),
        Outcome::AlreadyQueued(existing) => Err(ApiError::conflict(
            ErrorCode::SyncAlreadyQueued,
            "an identical sync is already queued; it will see the latest state when it runs",
        )
        .with_detail("sync_id", existing.clone())),
        Outcome::UpstreamNotConfigured => Err(ApiError::conflict(
            ErrorCode::UpstreamNotConfigured,
            "the repository has no upstream",
        )),
        Outcome::RepoGone => Err(ApiError::not_found("repository")),
        Outcome::Replay { .. } | Outcome::KeyReused => Err(ApiError::conflict(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
    }
}

pub async fn get(
    state: web::Data<AppState>,
    mut caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo_name, sync_id) = path.into_inner();
    caller.for_repo(&org, &repo_name, Scope::Read)?;
    if !is_valid_name(&repo_name) {
        return Err(ApiError::not_found("repository"));
    }
    // Each read takes its own connection (conditional::respond holds none
    // while waiting).
    caller.release_db();
    // An id that is not one of ours still needs the repo checked first: a
    // missing repo is reported before a missing sync.
    let sync_id = if looks_like("sync", &sync_id) {
        sync_id.as_str()
    } else {
        ""
    };
    let (pool, org_id) = (&state.pool, caller.key.org_id.as_str());
    let read = || async {
        let client = pool.get().await?;
        match depot_store::syncs::in_repo(&client, org_id, &repo_name, sync_id).await? {
            Lookup::NoRepo => Err(ApiError::not_found("repository")),
            Lookup::NoSync => Err(ApiError::not_found("sync")),
            Lookup::Found(sync) => {
                Ok((Representation::json(views::sync_text(&sync)), sync.repo_id))
            }
        }
    };
    conditional::respond(&state, &req, Watch::Sync(sync_id), read).await
}

pub async fn list(
    state: web::Data<AppState>,
    mut caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo_name) = path.into_inner();
    caller.for_repo(&org, &repo_name, Scope::Read)?;
    let (limit, before) = pagination::request(&query, "s", i64::MAX)?;
    caller.release_db();
    let (pool, org_id) = (&state.pool, caller.key.org_id.as_str());
    let read = || async {
        let client = pool.get().await?;
        let repo = load_repo(&client, org_id, &repo_name).await?;
        let mut syncs = depot_store::syncs::list(&client, &repo.id, before, limit + 1).await?;
        drop(client);
        let (has_more, next_cursor) = pagination::cut(&mut syncs, limit, "s", |r| r.seq);
        let page = SyncPage {
            has_more,
            next_cursor,
            syncs: syncs.iter().map(|s| views::SyncView::of(s, None)).collect(),
        };
        Ok((Representation::json(views::text(&page)), repo.id))
    };
    conditional::respond(&state, &req, Watch::RepoOfRead, read).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn future_size<A, B, C, D, Fut>(_: impl Fn(A, B, C, D) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every request held by `Prefer: wait` keeps its handler's future
    /// (boxed by actix) for up to 60 s: 10,000 of them must fit the
    /// gateway's memory bound (docs/benchmarks.md, row 8b).
    #[test]
    fn a_held_get_keeps_a_small_handler_future() {
        let size = future_size(get);
        eprintln!("GET sync handler future: {size} bytes");
        assert!(size <= 2048, "{size} bytes");
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [2, {"q": 1, "p": 2}]}, "a": "s"}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"s","b":{"x":[2,{"p":2,"q":1}],"y":1}}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":"s","b":{"x":[2,{"p":2,"q":1}],"y":1}}"#
        );
    }

    #[test]
    fn requests_are_parsed_strictly() {
        let parse = |s: &str| {
            json::parse_object(s.as_bytes())
                .and_then(|o| json::from_object::<SyncBody>(&o))
                .and_then(parse_request)
        };
        let r = parse(r#"{"direction":"push"}"#).unwrap();
        assert_eq!(r.direction, Direction::Push);
        assert_eq!(r.globs, RefGlobs::all());
        let r = parse(r#"{"direction":"pull","ref_globs":{"tags":"v*"}}"#).unwrap();
        assert_eq!(r.globs.branches, "");
        for (raw, field) in [
            (r#"{}"#, "direction"),
            (r#"{"direction":"sideways"}"#, "direction"),
            (r#"{"direction":1}"#, "direction"),
            (r#"{"direction":"pull","x":1}"#, "x"),
            (r#"{"direction":"pull","ref_globs":null}"#, "ref_globs"),
            (r#"{"direction":"pull","ref_globs":{}}"#, "ref_globs"),
            (
                r#"{"direction":"pull","ref_globs":{"branches":"[a"}}"#,
                "ref_globs.branches",
            ),
            (
                r#"{"direction":"pull","ref_globs":{"tags":5}}"#,
                "ref_globs.tags",
            ),
            (
                r#"{"direction":"pull","ref_globs":{"heads":"*"}}"#,
                "ref_globs.heads",
            ),
        ] {
            let Err(e) = parse(raw) else {
                panic!("{raw} was accepted");
            };
            assert_eq!(e.details.unwrap()["field"], field, "{raw}");
        }
    }
}
