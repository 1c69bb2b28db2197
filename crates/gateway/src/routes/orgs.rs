use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views;
use actix_web::{HttpResponse, web};
use depot_domain::Scope;
use serde_json::json;

pub async fn whoami(caller: Caller) -> HttpResponse {
    let k = &caller.key;
    HttpResponse::Ok().json(json!({
        "org": { "id": k.org_id, "slug": k.org_slug, "name": k.org_name },
        "key_id": k.id,
        "scopes": k.scopes,
    }))
}

pub async fn get(
    state: web::Data<AppState>,
    mut caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.for_org(&path, Scope::Read)?;
    let client = caller.db(&state.pool).await?;
    let org = depot_store::orgs::by_slug(&client, &path)
        .await?
        .ok_or_else(|| ApiError::not_found("organization"))?;
    let num_repos = depot_store::orgs::count_repos(&client, &org.id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "created_at": views::time(org.created_at),
        "num_repos": num_repos,
    })))
}
