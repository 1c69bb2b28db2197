//! One error type for the whole API. Every non-2xx response, including
//! actix's own (bad JSON, path, query, unknown route), is the envelope
//! `{"error": {"code", "message", "details"?, "trace_id"?}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};
use std::fmt;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Map<String, Value>>,
    /// Only for 500: the cause, logged but never sent.
    internal: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
            .with_detail("field", field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 500 with a generic message; `cause` goes to the log only.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        );
        e.internal = Some(cause.to_string());
        e
    }

    /// 500 because a dependency (database) is unavailable.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SERVICE_UNAVAILABLE",
            "a backing service is unavailable; retry later",
        );
        e.internal = Some(cause.to_string());
        e
    }

    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
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
            tracing::error!(code = self.code, trace_id, cause = %cause, "request failed");
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
