//! One error type for the whole API. Every non-2xx response, including
//! actix's own (bad JSON, path, query, unknown route), is the envelope
//! `{"error": {"code", "message", "details"?, "trace_id"?}}`, its `code`
//! one of the closed set [`ErrorCode`] (listed in `docs/api.md`, "Errors").

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};
use std::fmt;

/// Every `code` the envelope can carry. The wire strings are part of the
/// public contract (clients match on them): never change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request (a field, the query, the path, the body) is invalid.
    InvalidRequest,
    /// 400: a PATCH moves the upstream to another origin without `upstream.auth`.
    UpstreamAuthRequired,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404 (also an unknown route or method).
    NotFound,
    /// 406: `Accept` admits no JSON.
    NotAcceptable,
    /// 409
    RepoAlreadyExists,
    /// 409: sync POST on a repository without upstream.
    UpstreamNotConfigured,
    /// 409
    SyncAlreadyQueued,
    /// 409
    IdempotencyKeyReused,
    /// 500: Postgres unreachable.
    ServiceUnavailable,
    /// 500: anything unexpected.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UpstreamAuthRequired,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NotAcceptable,
        ErrorCode::RepoAlreadyExists,
        ErrorCode::UpstreamNotConfigured,
        ErrorCode::SyncAlreadyQueued,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::ServiceUnavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UpstreamAuthRequired => "UPSTREAM_AUTH_REQUIRED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::NotAcceptable => "NOT_ACCEPTABLE",
            ErrorCode::RepoAlreadyExists => "REPO_ALREADY_EXISTS",
            ErrorCode::UpstreamNotConfigured => "UPSTREAM_NOT_CONFIGURED",
            ErrorCode::SyncAlreadyQueued => "SYNC_ALREADY_QUEUED",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Map<String, Value>>,
    /// Only for 500: the cause, logged but never sent.
    internal: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            internal: None,
        }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details
            .get_or_insert_with(Map::new)
            .insert(key.to_string(), value.into());
        self
    }

    /// 400 about one request field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
            .with_detail("field", field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 500 with a generic message; `cause` goes to the log only.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        );
        e.internal = Some(cause.to_string());
        e
    }

    /// 500 because a dependency (database) is unavailable.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServiceUnavailable,
            "a backing service is unavailable; retry later",
        );
        e.internal = Some(cause.to_string());
        e
    }

    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code.as_str()));
        error.insert("message".into(), json!(self.message));
        if let Some(details) = &self.details {
            error.insert("details".into(), Value::Object(details.clone()));
        }
        if self.status.is_server_error() {
            let trace_id = depot_telemetry::current_trace_id().unwrap_or_else(random_trace_id);
            error.insert("trace_id".into(), json!(trace_id));
        }
        json!({ "error": error })
    }
}

fn random_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = self.body();
        if let Some(cause) = &self.internal {
            let trace_id = body["error"]["trace_id"].as_str().unwrap_or_default();
            tracing::error!(code = self.code.as_str(), trace_id, cause = %cause, "request failed");
        }
        HttpResponse::build(self.status).json(body)
    }
}

impl From<depot_store::StoreError> for ApiError {
    fn from(e: depot_store::StoreError) -> Self {
        if e.is_transient() {
            ApiError::unavailable(e)
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<depot_store::migrate::MigrateError> for ApiError {
    fn from(e: depot_store::migrate::MigrateError) -> Self {
        ApiError::internal(e)
    }
}

impl From<tokio_postgres_error::Error> for ApiError {
    fn from(e: tokio_postgres_error::Error) -> Self {
        depot_store::StoreError::from(e).into()
    }
}

impl From<depot_store::deadpool_error::PoolError> for ApiError {
    fn from(e: depot_store::deadpool_error::PoolError) -> Self {
        depot_store::StoreError::from(e).into()
    }
}

/// Re-exported names so this crate needs no direct database dependency.
mod tokio_postgres_error {
    pub use depot_store::PgError as Error;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of `docs/api.md`'s error table (`| status | `CODE` | …`).
    fn documented() -> Vec<String> {
        let doc = include_str!("../../../docs/api.md");
        let table = doc
            .split_once("| status | code | when | details |")
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        table
            .lines()
            // The rest of the heading's line, then the separator row.
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(2))
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect()
    }

    #[test]
    fn docs_api_md_lists_exactly_the_error_codes() {
        let mut documented = documented();
        let mut ours: Vec<String> = ErrorCode::ALL.iter().map(|c| c.to_string()).collect();
        documented.sort();
        ours.sort();
        assert_eq!(documented, ours);
    }
}
