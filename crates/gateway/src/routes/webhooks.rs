//! `/v1/{org}/webhook-targets…`: Mesa's five `webhook_target` operations and
//! the delivery log (docs/api.md, "Webhooks").
//!
//! Invariants:
//! - every operation needs the `admin` scope, and a target of another org is
//!   404 like a missing one;
//! - the secret is made here, returned once in the 201 of create, and stored
//!   only sealed (crates/secrets, bound to the target's id);
//! - a target's URL passed the upstream URL policy when stored (and the
//!   worker checks it again at every delivery);
//! - request bodies are serde structs refusing unknown fields; every 400
//!   names the offending field (`serde_path_to_error`).

use super::{json_response, read_body};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json;
use crate::pagination::{self, PageQuery};
use crate::views;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use depot_domain::Scope;
use depot_domain::ids::{looks_like, new_id};
use depot_secrets::Credential;
use depot_store::webhooks::{Delivery, EVENTS, NewTarget, Target, TargetChanges};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

const MAX_NAME: usize = 200;
const MAX_URL: usize = 2048;
const MAX_REPO_IDS: usize = 100;

/// Mesa's event names this service does not emit: asking for one is a 400
/// that names the supported set, not an unknown value.
const MESA_ONLY_EVENTS: &[&str] = &[
    "push",
    "bookmark.created",
    "bookmark.deleted",
    "bookmark.merged",
    "bookmark.moved",
    "change.created",
    "change.evolved",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    events: Option<Vec<String>>,
    #[serde(default)]
    repo_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    events: Option<Vec<String>>,
    /// Absent: unchanged; `null`: every repository of the org.
    #[serde(default, deserialize_with = "nullable")]
    repo_ids: Option<Option<Vec<String>>>,
}

/// A present key, `null` included (`Some(None)`); absence is the
/// `#[serde(default)]`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A present key that must not be `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Deserialize a body, naming the failing field in `details.field`.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let body = Value::Object(json::parse_object(bytes)?);
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.inner().to_string();
        // serde names a missing or unknown key in its message only.
        let named = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(|key| match path.as_str() {
                    "" => key.to_string(),
                    p if p == key || p.ends_with(&format!(".{key}")) => p.to_string(),
                    p => format!("{p}.{key}"),
                })
        };
        if let Some(field) = named("unknown field `") {
            ApiError::invalid(&field, format!("unknown field {field:?}"))
        } else if let Some(field) = named("missing field `") {
            ApiError::invalid(&field, format!("{field} is required"))
        } else {
            let field = if path.is_empty() {
                "body".to_string()
            } else {
                path
            };
            ApiError::invalid(&field, format!("{field}: {inner}"))
        }
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            format!("name must be at most {MAX_NAME} characters, none of them control characters"),
        ));
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "events must name at least one event (omit it for all)",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !EVENTS.contains(&e.as_str()) {
            let why = if MESA_ONLY_EVENTS.contains(&e.as_str()) {
                "is not emitted by this service"
            } else {
                "is not an event"
            };
            return Err(ApiError::invalid(
                &format!("events[{i}]"),
                format!("{e:?} {why}; supported: {}", EVENTS.join(", ")),
            )
            .with_detail("supported", json!(EVENTS)));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

async fn check_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    if raw.len() > MAX_URL {
        return Err(ApiError::invalid(
            "url",
            format!("url must be at most {MAX_URL} characters"),
        ));
    }
    crate::policy::check_url(raw, &state.settings.upstream, "url").await
}

async fn check_repo_ids(
    client: &impl depot_store::GenericClient,
    org_id: &str,
    ids: &[String],
) -> Result<Vec<String>, ApiError> {
    if ids.len() > MAX_REPO_IDS {
        return Err(ApiError::invalid(
            "repo_ids",
            format!("at most {MAX_REPO_IDS} repo_ids"),
        ));
    }
    let mut unique: Vec<String> = Vec::new();
    for id in ids {
        if !unique.contains(id) {
            unique.push(id.clone());
        }
    }
    let plausible: Vec<String> = unique
        .iter()
        .filter(|id| looks_like("repo", id))
        .cloned()
        .collect();
    let found = depot_store::webhooks::existing_repo_ids(client, org_id, &plausible).await?;
    if let Some((i, missing)) = ids.iter().enumerate().find(|(_, id)| !found.contains(id)) {
        return Err(ApiError::invalid(
            &format!("repo_ids[{i}]"),
            format!("no repository {missing:?} in this org"),
        ));
    }
    Ok(unique)
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("whsec_{hex}")
}

fn target_json(t: &Target) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "url": t.url,
        "events": t.events,
        "repo_ids": t.repo_ids,
        "created_at": views::time(t.created_at),
        "updated_at": views::time(t.updated_at),
    })
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": if d.status == "pending" { views::time(d.next_attempt_at) } else { Value::Null },
        "created_at": views::time(d.created_at),
    })
}

async fn load(
    client: &impl depot_store::GenericClient,
    org_id: &str,
    id: &str,
) -> Result<Target, ApiError> {
    if !looks_like("wht", id) {
        return Err(ApiError::not_found("webhook target"));
    }
    depot_store::webhooks::target(client, org_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook target"))
}

pub async fn create(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Admin)?;
    caller.release_db();
    let body: CreateBody =
        parse(&read_body(payload, state.settings.gateway.max_body_bytes).await?)?;
    if let Some(n) = &body.name {
        check_name(n)?;
    }
    let events = match &body.events {
        Some(e) => check_events(e)?,
        None => EVENTS.iter().map(|e| e.to_string()).collect(),
    };
    let url = check_url(&state, &body.url).await?;
    let client = caller.db(&state.pool).await?;
    let repo_ids = match &body.repo_ids {
        Some(ids) => Some(check_repo_ids(&client, &caller.key.org_id, ids).await?),
        None => None,
    };
    let id = new_id("wht");
    let secret = new_secret();
    let sealed = state
        .credential_key
        .seal_credential(
            &Credential::Token {
                token: secret.clone(),
                token_username: None,
            },
            &id,
            depot_store::webhooks::SECRET_ORIGIN,
        )
        .map_err(ApiError::internal)?;
    let target = depot_store::webhooks::insert_target(
        &client,
        &NewTarget {
            id: &id,
            org_id: &caller.key.org_id,
            name: body.name.as_deref(),
            url: &url,
            events: &events,
            repo_ids: repo_ids.as_deref(),
            secret: &sealed,
        },
    )
    .await?;
    tracing::info!(webhook_target_id = %target.id, "webhook target created");
    let mut out = target_json(&target);
    out["secret"] = json!(secret);
    Ok(json_response(StatusCode::CREATED, &out))
}

pub async fn list(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Admin)?;
    let (limit, after) = pagination::request(&query, "w", 0)?;
    let client = caller.db(&state.pool).await?;
    let mut targets =
        depot_store::webhooks::list_targets(&client, &caller.key.org_id, after, limit + 1).await?;
    let (has_more, next_cursor) = pagination::cut(&mut targets, limit, "w", |r| r.seq);
    let items: Vec<Value> = targets.iter().map(target_json).collect();
    Ok(HttpResponse::Ok().json(
        json!({ "next_cursor": next_cursor, "has_more": has_more, "webhook_targets": items }),
    ))
}

pub async fn get(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, id) = path.into_inner();
    caller.for_org(&org, Scope::Admin)?;
    let client = caller.db(&state.pool).await?;
    let target = load(&client, &caller.key.org_id, &id).await?;
    Ok(HttpResponse::Ok().json(target_json(&target)))
}

pub async fn update(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (org, id) = path.into_inner();
    caller.for_org(&org, Scope::Admin)?;
    caller.release_db();
    let body: PatchBody = parse(&read_body(payload, state.settings.gateway.max_body_bytes).await?)?;
    if let Some(Some(n)) = &body.name {
        check_name(n)?;
    }
    let events = body.events.as_deref().map(check_events).transpose()?;
    let url = match &body.url {
        Some(u) => Some(check_url(&state, u).await?),
        None => None,
    };
    let client = caller.db(&state.pool).await?;
    load(&client, &caller.key.org_id, &id).await?;
    let repo_ids = match &body.repo_ids {
        Some(Some(ids)) => Some(Some(
            check_repo_ids(&client, &caller.key.org_id, ids).await?,
        )),
        Some(None) => Some(None),
        None => None,
    };
    let changes = TargetChanges {
        name: body.name.as_ref().map(|n| n.as_deref()),
        url: url.as_deref(),
        events: events.as_deref(),
        repo_ids: repo_ids.as_ref().map(|r| r.as_deref()),
    };
    let target = depot_store::webhooks::update_target(&client, &caller.key.org_id, &id, &changes)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook target"))?;
    Ok(HttpResponse::Ok().json(target_json(&target)))
}

pub async fn delete(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, id) = path.into_inner();
    caller.for_org(&org, Scope::Admin)?;
    let client = caller.db(&state.pool).await?;
    if !looks_like("wht", &id)
        || !depot_store::webhooks::delete_target(&client, &caller.key.org_id, &id).await?
    {
        return Err(ApiError::not_found("webhook target"));
    }
    tracing::info!(webhook_target_id = %id, "webhook target deleted");
    Ok(HttpResponse::Ok().json(json!({ "success": true })))
}

pub async fn deliveries(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (org, id) = path.into_inner();
    caller.for_org(&org, Scope::Admin)?;
    let (limit, before) = pagination::request(&query, "d", i64::MAX)?;
    let client = caller.db(&state.pool).await?;
    let target = load(&client, &caller.key.org_id, &id).await?;
    let mut items =
        depot_store::webhooks::list_deliveries(&client, &target.id, before, limit + 1).await?;
    let (has_more, next_cursor) = pagination::cut(&mut items, limit, "d", |r| r.seq);
    let items: Vec<Value> = items.iter().map(delivery_json).collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "next_cursor": next_cursor, "has_more": has_more, "deliveries": items })))
}

pub async fn redeliver(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, id, delivery_id) = path.into_inner();
    caller.for_org(&org, Scope::Admin)?;
    let client = caller.db(&state.pool).await?;
    let target = load(&client, &caller.key.org_id, &id).await?;
    if !looks_like("whd", &delivery_id) {
        return Err(ApiError::not_found("delivery"));
    }
    let delivery = depot_store::webhooks::redeliver(&client, &target.id, &delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    tracing::info!(delivery_id = %delivery.id, of = %delivery_id, "webhook redelivery queued");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &delivery_json(&delivery),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(e: ApiError) -> String {
        e.details.unwrap()["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse::<CreateBody>(br#"{"url": "https://x", "colour": 1}"#).unwrap_err();
        assert_eq!(field(e), "colour");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let e = parse::<CreateBody>(br#"{"url": "https://x", "events": ["a", 2]}"#).unwrap_err();
        assert_eq!(field(e), "events[1]");
        let e = parse::<CreateBody>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(field(e), "url");
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let p: PatchBody = parse(br#"{"name": null}"#).unwrap();
        assert_eq!(p.name, Some(None));
        assert_eq!(p.repo_ids, None);
        let e = parse::<PatchBody>(br#"{"url": null}"#).unwrap_err();
        assert_eq!(field(e), "url");
    }

    #[test]
    fn events_outside_the_supported_set_are_refused() {
        let e = check_events(&["sync.completed".into(), "push".into()]).unwrap_err();
        assert_eq!(field(e), "events[1]");
        assert_eq!(
            check_events(&["repo.created".into(), "repo.created".into()]).unwrap(),
            vec!["repo.created".to_string()]
        );
    }
}
