use crate::{GenericClient, Result};
use chrono::{DateTime, Utc};
use depot_domain::ids::new_id;

#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &tokio_postgres::Row) -> Org {
    Org {
        id: row.get("id"),
        slug: row.get("slug"),
        name: row.get("name"),
        created_at: row.get("created_at"),
    }
}

/// Create an org; `None` when the slug is taken.
pub async fn create(client: &impl GenericClient, slug: &str, name: &str) -> Result<Option<Org>> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO orgs (id, slug, name) VALUES ($1, $2, $3)
             ON CONFLICT (slug) DO NOTHING
             RETURNING id, slug, name, created_at",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&new_id("org"), &slug, &name])
        .await?;
    Ok(row.as_ref().map(from_row))
}

pub async fn by_slug(client: &impl GenericClient, slug: &str) -> Result<Option<Org>> {
    let stmt = client
        .prepare_cached("SELECT id, slug, name, created_at FROM orgs WHERE slug = $1")
        .await?;
    Ok(client
        .query_opt(&stmt, &[&slug])
        .await?
        .as_ref()
        .map(from_row))
}

pub async fn count_repos(client: &impl GenericClient, org_id: &str) -> Result<i64> {
    let stmt = client
        .prepare_cached("SELECT count(*) FROM repos WHERE org_id = $1")
        .await?;
    Ok(client.query_one(&stmt, &[&org_id]).await?.get(0))
}
