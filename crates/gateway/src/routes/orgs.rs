use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views;
use actix_web::{HttpResponse, web};
use depot_domain::Scope;
use serde_json::json;

/// For an access token: the private key's id, the token's scopes, and for
/// a per-repo token its grant as `access` (repo name to `read-repo` or
/// `write-repo`).
pub async fn whoami(caller: Caller) -> HttpResponse {
    let k = &caller.key;
    let mut body = json!({
        "org": { "id": k.org_id, "slug": k.org_slug, "name": k.org_name },
        "key_id": k.id,
        "scopes": k.scopes,
    });
    if let Some(access) = &caller.access {
        let access: serde_json::Map<String, serde_json::Value> = access
            .iter()
            .map(|(repo, scope)| {
                let level = if *scope >= Scope::Write {
                    "write-repo"
                } else {
                    "read-repo"
                };
                (repo.clone(), level.into())
            })
            .collect();
        body["access"] = access.into();
    }
    HttpResponse::Ok().json(body)
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
