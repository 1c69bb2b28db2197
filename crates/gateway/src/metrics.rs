//! Request observability: the outermost middleware gives every request one
//! span (`method`, `route` template, `status`, `latency_ms`, `request_id`,
//! `trace_id`), continues the caller's W3C trace (`traceparent` header),
//! echoes the request id in `x-request-id`, and counts the request for
//! `GET /metrics` (Prometheus text).
//!
//! Labels are bounded: the route is the template (`/v1/{org}/{repo}`), never
//! the path, and unknown routes share `route="unmatched"`; nothing a caller
//! sends (keys, bodies, query strings) becomes a label or a span attribute.
//!
//! Every metric is listed from the start: each route of [`ROUTES`] has its
//! duration histogram and its `status="500"` counter at 0 before the first
//! request, so the documented 5xx ratio reads 0 on a fresh gateway instead
//! of no data.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, http::Method};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// In a request's extensions: its route template is already on the request
/// span (recorded early by the `/v1` middleware).
pub struct RouteOnSpan;

/// The API's routes (method, template), as `routes::configure` declares
/// them; only used to create their series at 0.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/{org}/{repo}/upstream/syncs/{sync_id}"),
    ("POST", "/v1/{org}/{repo}/upstream/syncs"),
    ("GET", "/v1/{org}/{repo}/upstream/syncs"),
    ("POST", "/v1/{org}/repos"),
    ("GET", "/v1/{org}/repos"),
    ("GET", "/v1/{org}/{repo}"),
    ("PATCH", "/v1/{org}/{repo}"),
    ("DELETE", "/v1/{org}/{repo}"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/{org}"),
];

/// The gateway's series. One set per process, like its log subscriber.
pub struct GatewayMetrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Jobs the background publisher (crate::publisher) handled, by result.
    pub publisher_jobs: IntCounterVec,
    /// Jobs a POST handed to the publisher (`taken`) or left to the relay
    /// because its channel was full (`full`).
    pub publisher_offers: IntCounterVec,
    /// Requests held by `Prefer: wait` right now (crate::sync_watch).
    pub waiting_requests: prometheus::IntGauge,
}

static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(GatewayMetrics::new);

pub fn metrics() -> &'static GatewayMetrics {
    &METRICS
}

impl GatewayMetrics {
    #[allow(clippy::expect_used)] // fixed, valid metric definitions
    fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "depot_http_requests_total",
                "HTTP requests answered, by method, route template and status code.",
            ),
            &["method", "route", "status"],
        )
        .expect("metric definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "depot_http_request_duration_seconds",
                "Time from receiving a request to its response, by method and route template.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route"],
        )
        .expect("metric definition");
        let publisher_jobs = IntCounterVec::new(
            Opts::new(
                "depot_gateway_publisher_jobs_total",
                "Jobs the gateway's background publisher handled: ok (confirmed, outbox row marked), error (not confirmed), unavailable (no broker); the relay publishes all but ok.",
            ),
            &["result"],
        )
        .expect("metric definition");
        let publisher_offers = IntCounterVec::new(
            Opts::new(
                "depot_gateway_publisher_offers_total",
                "Accepted syncs handed to the background publisher (taken) or left to the relay because its channel was full (full).",
            ),
            &["result"],
        )
        .expect("metric definition");
        let waiting_requests = prometheus::IntGauge::new(
            "depot_gateway_waiting_requests",
            "GET requests held by Prefer: wait right now.",
        )
        .expect("metric definition");
        registry
            .register(Box::new(publisher_jobs.clone()))
            .expect("register");
        registry
            .register(Box::new(publisher_offers.clone()))
            .expect("register");
        registry
            .register(Box::new(waiting_requests.clone()))
            .expect("register");
        for result in ["ok", "error", "unavailable"] {
            publisher_jobs.with_label_values(&[result]);
        }
        for result in ["taken", "full"] {
            publisher_offers.with_label_values(&[result]);
        }
        registry
            .register(Box::new(http_requests.clone()))
            .expect("register");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("register");
        for (method, route) in ROUTES {
            http_requests.with_label_values(&[method, route, "500"]);
            http_duration.with_label_values(&[method, route]);
        }
        GatewayMetrics {
            registry,
            http_requests,
            http_duration,
            publisher_jobs,
            publisher_offers,
            waiting_requests,
        }
    }

    pub fn publisher_published(&self, result: &str, jobs: usize) {
        if jobs > 0 {
            self.publisher_jobs
                .with_label_values(&[result])
                .inc_by(jobs as u64);
        }
    }

    pub fn publisher_offered(&self, taken: bool) {
        self.publisher_offers
            .with_label_values(&[if taken { "taken" } else { "full" }])
            .inc();
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /metrics`.
pub async fn endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics().render())
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A caller's request id is kept when it is short and plain (it is echoed
/// and logged); otherwise, or when absent, one is made up.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// The W3C trace context headers of the request.
fn trace_carrier(req: &ServiceRequest) -> HashMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let v = req.headers().get(name)?.to_str().ok()?;
            (v.len() <= 512).then(|| (name.to_string(), v.to_string()))
        })
        .collect()
}

/// Outermost middleware: one span per request, metrics, `x-request-id`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let request_id = request_id(&req);
    let quiet = matches!(req.path(), "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!(
        "request",
        method,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    depot_telemetry::set_parent(&span, &trace_carrier(&req));
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let (status_code, route, route_on_span) = match &result {
        Ok(res) => (
            res.status(),
            res.request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into()),
            actix_web::HttpMessage::extensions(res.request()).contains::<RouteOnSpan>(),
        ),
        // actix turns the error into a response after us.
        Err(e) => (
            e.as_response_error().status_code(),
            "unmatched".to_string(),
            false,
        ),
    };
    let status = status_code.as_u16();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    // The route goes on the span before the line, status and latency after
    // it: the line carries them itself, and a readable log line shows the
    // span's fields too, so recording them first would print each twice.
    if !route_on_span {
        span.record("route", route.as_str());
    }
    let m = metrics();
    m.http_requests
        // `as_str` is the code's static text: no allocation per request.
        .with_label_values(&[method, route.as_str(), status_code.as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[method, route.as_str()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        if quiet && status < 400 {
            tracing::debug!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
    });
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    result.map(|mut res| {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            res.headers_mut().insert(REQUEST_ID, v);
        }
        res
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::{App, test, web};

    #[actix_web::test]
    async fn every_route_listed_for_initial_series_is_a_real_route_template() {
        let settings = depot_settings::Settings::load_from(None, Default::default()).unwrap();
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(observe))
                .configure(|cfg| crate::routes::configure(cfg, &settings)),
        )
        .await;
        for (method, route) in ROUTES {
            let path = route
                .replace("{org}", "o")
                .replace("{repo}", "r")
                .replace("{sync_id}", "s");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let req = test::TestRequest::default()
                .method(method.clone())
                .uri(&path)
                .to_request();
            // No app state: the handler fails, but the route is matched.
            let _ = test::try_call_service(&app, req).await;
            let text = metrics().render();
            let series = format!(
                r#"depot_http_request_duration_seconds_count{{method="{method}",route="{route}"}} "#
            );
            let count = text
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("{series} missing: {text}"));
            assert_ne!(count, "0", "{method} {path} did not match {route}");
        }
    }

    #[actix_web::test]
    async fn requests_are_counted_by_route_template_and_echo_their_id() {
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(observe))
                .route("/metrics", web::get().to(endpoint))
                .route(
                    "/v1/{org}/things",
                    web::get().to(|| async { HttpResponse::Ok().finish() }),
                ),
        )
        .await;
        let req = test::TestRequest::get()
            .uri("/v1/acme/things")
            .insert_header(("x-request-id", "abc-123"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers().get("x-request-id").unwrap(), "abc-123");
        // A hostile id is replaced, not echoed.
        let req = test::TestRequest::get()
            .uri("/v1/acme/things")
            .insert_header(("x-request-id", "a b\"<script>"))
            .to_request();
        let res = test::call_service(&app, req).await;
        let id = res.headers().get("x-request-id").unwrap().to_str().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        let req = test::TestRequest::get()
            .uri("/nowhere/secret-path")
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 404);

        let req = test::TestRequest::get().uri("/metrics").to_request();
        let body = test::call_and_read_body(&app, req).await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(
                r#"depot_http_requests_total{method="GET",route="/v1/{org}/things",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="unmatched",status="404"} 1"#),
            "{text}"
        );
        assert!(!text.contains("secret-path"), "{text}");
        assert!(!text.contains("acme"), "{text}");
        assert!(
            text.contains("depot_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
