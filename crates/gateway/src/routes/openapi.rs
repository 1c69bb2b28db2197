//! `GET /v1/openapi.json`: the project's OpenAPI document
//! (`proto-schemas/openapi.yaml`), embedded at build time and served as JSON.

use crate::error::ApiError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use std::sync::Arc;

/// The document as written.
pub const OPENAPI_YAML: &str = include_str!("../../../../proto-schemas/openapi.yaml");

/// The document converted to JSON once, at start.
#[derive(Clone)]
pub struct OpenApiDoc(Arc<String>);

impl OpenApiDoc {
    pub fn load() -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_yaml_ng::from_str(OPENAPI_YAML)
            .map_err(|e| anyhow::anyhow!("proto-schemas/openapi.yaml: {e}"))?;
        Ok(OpenApiDoc(Arc::new(value.to_string())))
    }
}

pub async fn get(doc: Option<web::Data<OpenApiDoc>>) -> Result<HttpResponse, ApiError> {
    let doc = doc.ok_or_else(|| ApiError::internal("OpenAPI document not loaded"))?;
    Ok(super::json_text_response(StatusCode::OK, doc.0.as_str()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn document_parses_and_names_every_operation() {
        let doc: serde_json::Value = serde_yaml_ng::from_str(OPENAPI_YAML).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids: Vec<String> = Vec::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                ids.push(op["operationId"].as_str().unwrap().to_string());
            }
        }
        ids.sort();
        assert_eq!(
            ids,
            [
                "createRepo",
                "createWebhookTarget",
                "deleteRepo",
                "deleteWebhookTarget",
                "getOpenApi",
                "getOrg",
                "getRepo",
                "getUpstreamSync",
                "getWebhookTarget",
                "listRepos",
                "listUpstreamSyncs",
                "listWebhookDeliveries",
                "listWebhookTargets",
                "redeliverWebhookDelivery",
                "syncUpstream",
                "updateRepo",
                "updateWebhookTarget",
                "whoami",
            ]
        );
        OpenApiDoc::load().unwrap();
    }
}
