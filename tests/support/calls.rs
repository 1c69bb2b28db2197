//! Typed calls for the API tests: one method per operation, so a test reads
//! as what it does (`env.post_sync(&key, "acme/r", Pull)`) instead of a
//! method, a path and positional options. Repositories are named
//! `"org/repo"`. Every reply is still checked against the OpenAPI document
//! ([`TestEnv::api`]); the methods return `(status, body)` for
//! [`crate::api::assert_error`].

use crate::TestEnv;
use serde_json::{Value, json};

/// A sync's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Pull,
    Push,
}

pub use Direction::{Pull, Push};

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Pull => "pull",
            Push => "push",
        }
    }
}

impl TestEnv {
    /// `POST /v1/{org}/repos`.
    pub async fn post_repo(&self, key: &str, org: &str, body: &Value) -> (u16, Value) {
        self.api("POST", &format!("/v1/{org}/repos"), Some(key), Some(body))
            .await
    }

    /// `POST /v1/{org}/repos` that must succeed; the created repository.
    pub async fn create_repo(&self, key: &str, org: &str, body: &Value) -> Value {
        let (status, repo) = self.post_repo(key, org, body).await;
        assert_eq!(status, 201, "{repo}");
        repo
    }

    /// `GET /v1/{org}/{repo}`.
    pub async fn get_repo(&self, key: &str, repo: &str) -> (u16, Value) {
        self.api("GET", &format!("/v1/{repo}"), Some(key), None)
            .await
    }

    /// `GET /v1/{org}/repos`.
    pub async fn list_repos(&self, key: &str, org: &str) -> (u16, Value) {
        self.api("GET", &format!("/v1/{org}/repos"), Some(key), None)
            .await
    }

    /// `DELETE /v1/{org}/{repo}`.
    pub async fn delete_repo(&self, key: &str, repo: &str) -> (u16, Value) {
        self.api("DELETE", &format!("/v1/{repo}"), Some(key), None)
            .await
    }

    /// `POST /v1/{org}/{repo}/upstream/syncs` of every ref.
    pub async fn post_sync(&self, key: &str, repo: &str, direction: Direction) -> (u16, Value) {
        self.post_sync_body(key, repo, &json!({"direction": direction.as_str()}))
            .await
    }

    /// `POST /v1/{org}/{repo}/upstream/syncs` with `ref_globs`.
    pub async fn post_sync_globs(
        &self,
        key: &str,
        repo: &str,
        direction: Direction,
        ref_globs: Value,
    ) -> (u16, Value) {
        let body = json!({"direction": direction.as_str(), "ref_globs": ref_globs});
        self.post_sync_body(key, repo, &body).await
    }

    /// `POST /v1/{org}/{repo}/upstream/syncs` with any body.
    pub async fn post_sync_body(&self, key: &str, repo: &str, body: &Value) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/v1/{repo}/upstream/syncs"),
            Some(key),
            Some(body),
        )
        .await
    }

    /// `GET /v1/{org}/{repo}/upstream/syncs/{id}`.
    pub async fn get_sync(&self, key: &str, repo: &str, id: &str) -> (u16, Value) {
        self.api(
            "GET",
            &format!("/v1/{repo}/upstream/syncs/{id}"),
            Some(key),
            None,
        )
        .await
    }

    /// `GET /v1/{org}/{repo}/upstream/syncs`.
    pub async fn list_syncs(&self, key: &str, repo: &str) -> (u16, Value) {
        self.api(
            "GET",
            &format!("/v1/{repo}/upstream/syncs"),
            Some(key),
            None,
        )
        .await
    }

    /// `GET /v1/whoami`.
    pub async fn whoami(&self, key: &str) -> (u16, Value) {
        self.api("GET", "/v1/whoami", Some(key), None).await
    }

    /// `PATCH /v1/{org}/{repo}`.
    pub async fn patch_repo(&self, key: &str, repo: &str, body: &Value) -> (u16, Value) {
        self.api("PATCH", &format!("/v1/{repo}"), Some(key), Some(body))
            .await
    }

    /// `GET /v1/{org}`.
    pub async fn get_org(&self, key: &str, org: &str) -> (u16, Value) {
        self.api("GET", &format!("/v1/{org}"), Some(key), None)
            .await
    }

    /// `POST /v1/{org}/webhook-targets`.
    pub async fn post_target(&self, key: &str, org: &str, body: &Value) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets");
        self.api("POST", &path, Some(key), Some(body)).await
    }

    /// `GET /v1/{org}/webhook-targets`.
    pub async fn list_targets(&self, key: &str, org: &str) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets");
        self.api("GET", &path, Some(key), None).await
    }

    /// `GET /v1/{org}/webhook-targets/{id}`.
    pub async fn get_target(&self, key: &str, org: &str, id: &str) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets/{id}");
        self.api("GET", &path, Some(key), None).await
    }

    /// `PATCH /v1/{org}/webhook-targets/{id}`.
    pub async fn patch_target(&self, key: &str, org: &str, id: &str, body: &Value) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets/{id}");
        self.api("PATCH", &path, Some(key), Some(body)).await
    }

    /// `DELETE /v1/{org}/webhook-targets/{id}`.
    pub async fn delete_target(&self, key: &str, org: &str, id: &str) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets/{id}");
        self.api("DELETE", &path, Some(key), None).await
    }

    /// `GET /v1/{org}/webhook-targets/{id}/deliveries?limit={limit}`.
    pub async fn list_deliveries(
        &self,
        key: &str,
        org: &str,
        target: &str,
        limit: u32,
    ) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets/{target}/deliveries?limit={limit}");
        self.api("GET", &path, Some(key), None).await
    }

    /// `POST /v1/{org}/webhook-targets/{id}/deliveries/{delivery}/redeliver`.
    pub async fn redeliver(
        &self,
        key: &str,
        org: &str,
        target: &str,
        delivery: &str,
    ) -> (u16, Value) {
        let path = format!("/v1/{org}/webhook-targets/{target}/deliveries/{delivery}/redeliver");
        self.api("POST", &path, Some(key), None).await
    }
}
