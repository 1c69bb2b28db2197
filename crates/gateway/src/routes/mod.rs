//! Route table and the cross-cutting request handling (envelope for every
//! error, `Accept` negotiation, body limits, one span per request).

pub mod openapi;
pub mod orgs;
pub mod repos;
pub mod syncs;
pub mod webhooks;

use crate::error::{ApiError, ErrorCode};
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use depot_settings::Settings;
use futures_util::StreamExt;
use tracing::Instrument;

pub fn configure(cfg: &mut web::ServiceConfig, settings: &Settings) {
    let _ = settings;
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::invalid("query", format!("invalid query string: {e}")).into()
    }))
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::invalid("path", format!("invalid path: {e}")).into()),
    )
    .configure(depot_probes::configure)
    .route("/metrics", web::get().to(crate::metrics::endpoint))
    .service(
        web::scope("/v1")
            .wrap(actix_web::middleware::from_fn(envelope))
            // One resource per path, the status poll first: actix tries
            // resources in order and matches each dynamic one with a regex:
            // with the poll last of eleven that was 9 % of the gateway's CPU
            // under polling load, 5 % with it first (docs/benchmarks.md). Only `/{org}/repos` and
            // `/{org}/{repo}` can match the same path: the first wins.
            .service(
                resource("/{org}/{repo}/upstream/syncs/{sync_id}").route(web::get().to(syncs::get)),
            )
            .service(
                resource("/{org}/{repo}/upstream/syncs")
                    .route(web::post().to(syncs::create))
                    .route(web::get().to(syncs::list)),
            )
            // Before `/{org}/{repo}`, which would match them too.
            .service(
                resource("/{org}/webhook-targets/{id}/deliveries/{delivery_id}/redeliver")
                    .route(web::post().to(webhooks::redeliver)),
            )
            .service(
                resource("/{org}/webhook-targets/{id}/deliveries")
                    .route(web::get().to(webhooks::deliveries)),
            )
            .service(
                resource("/{org}/webhook-targets/{id}")
                    .route(web::get().to(webhooks::get))
                    .route(web::patch().to(webhooks::update))
                    .route(web::delete().to(webhooks::delete)),
            )
            .service(
                resource("/{org}/webhook-targets")
                    .route(web::post().to(webhooks::create))
                    .route(web::get().to(webhooks::list)),
            )
            .service(
                resource("/{org}/repos")
                    .route(web::post().to(repos::create))
                    .route(web::get().to(repos::list)),
            )
            .service(
                resource("/{org}/{repo}")
                    .route(web::get().to(repos::get))
                    .route(web::patch().to(repos::update))
                    .route(web::delete().to(repos::delete)),
            )
            .route("/whoami", web::get().to(orgs::whoami))
            .route("/openapi.json", web::get().to(openapi::get))
            .service(resource("/{org}").route(web::get().to(orgs::get)))
            .default_service(web::to(not_found)),
    )
    .default_service(web::to(not_found));
}

/// A resource whose unknown methods are 404 like unknown paths (docs/api.md),
/// not actix's 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(not_found))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("route"))
}

/// Does the `Accept` header admit `application/json`? Absent = yes.
fn accepts_json(req: &HttpRequest) -> bool {
    let Some(accept) = req.headers().get(header::ACCEPT) else {
        return true;
    };
    let Ok(accept) = accept.to_str() else {
        return false;
    };
    accept.split(',').any(|part| {
        let mut params = part.split(';');
        let media = params
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let refused = params.any(|p| {
            let p = p.trim().replace(' ', "");
            p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
        });
        !refused && matches!(media.as_str(), "application/json" | "application/*" | "*/*")
    })
}

/// Middleware for `/v1`: 406 when JSON is not acceptable, a span per
/// request, and the envelope on any error response actix produced itself.
async fn envelope(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    if req.headers().contains_key(crate::conditional::PREFER) {
        compact_headers(req.headers_mut());
    }
    // The request span is made by the outermost middleware
    // (crate::metrics::observe); route and key_id are recorded on it here.
    let span = tracing::Span::current();
    async move {
        if !accepts_json(req.request()) {
            let err = ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                ErrorCode::NotAcceptable,
                "this API only produces application/json",
            );
            let (req, _) = req.into_parts();
            return Ok(
                ServiceResponse::new(req, actix_web::ResponseError::error_response(&err))
                    .map_into_right_body(),
            );
        }
        // The route goes on the span now, so the handler's own lines carry
        // it; the marker tells `observe` not to record it a second time (a
        // readable line would show it twice). The status is recorded by
        // `observe`, after the request line that states it.
        if let Some(pattern) = req.match_pattern() {
            tracing::Span::current().record("route", pattern.as_str());
            actix_web::HttpMessage::extensions_mut(&req).insert(crate::metrics::RouteOnSpan);
        }
        let res = next.call(req).await?;
        let status = res.status();
        let is_json = res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if status.is_client_error() || status.is_server_error() {
            if !is_json {
                // An error that did not come from ApiError (actix's own):
                // re-dress it in the envelope. Our API only answers with the
                // statuses it documents, so odd ones become 400.
                let (code, status) = match status {
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                        (ErrorCode::NotFound, StatusCode::NOT_FOUND)
                    }
                    s if s.is_server_error() => {
                        (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR)
                    }
                    _ => (ErrorCode::InvalidRequest, StatusCode::BAD_REQUEST),
                };
                let err = ApiError::new(
                    status,
                    code,
                    status.canonical_reason().unwrap_or("error").to_lowercase(),
                );
                let (req, _) = res.into_parts();
                return Ok(ServiceResponse::new(
                    req,
                    actix_web::ResponseError::error_response(&err),
                )
                .map_into_right_body());
            }
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), "request failed");
            }
        }
        Ok(res.map_body(|_, b| b.boxed()).map_into_left_body())
    }
    .instrument(span)
    .await
}

/// A request that may be held (`Prefer: wait`) keeps its headers for up to
/// 60 s, and actix gives every new request head room for 16 headers (about
/// 6 KiB, docs/benchmarks.md row 8b): move them into a map of their own
/// size. Only for such requests, so the status poll pays nothing.
fn compact_headers(headers: &mut header::HeaderMap) {
    if headers.capacity() <= headers.len() * 2 {
        return;
    }
    let all = std::mem::replace(headers, header::HeaderMap::new());
    let mut compact = header::HeaderMap::with_capacity(all.len_keys());
    for (name, value) in all {
        compact.append(name, value);
    }
    *headers = compact;
}

/// Read a request body, capped at `max` bytes (a larger one is a 400, per
/// the API's error rules, not the 413 actix would give).
pub async fn read_body(mut payload: web::Payload, max: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid("body", format!("could not read body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::invalid(
                "body",
                format!("body is larger than {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    json_text_response(status, body.to_string())
}

/// A response whose body is already serialized JSON.
pub fn json_text_response(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .body(body.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compacted_headers_keep_every_value_in_a_map_of_their_own_size() {
        let mut headers = header::HeaderMap::with_capacity(16);
        headers.append(header::ACCEPT, HeaderValue::from_static("a"));
        headers.append(header::ACCEPT, HeaderValue::from_static("b"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("x"));
        let before = headers.capacity();
        compact_headers(&mut headers);
        assert!(headers.capacity() < before, "{}", headers.capacity());
        let accept: Vec<_> = headers.get_all(header::ACCEPT).collect();
        assert_eq!(accept, ["a", "b"]);
        assert_eq!(headers.get(header::AUTHORIZATION).unwrap(), "x");
        assert_eq!(headers.len(), 3);
    }
}
