//! What the gateway's per-request tracing costs on one thread, in ns per
//! request, for each way of configuring it (a measuring tool for
//! docs/benchmarks.md, not a test):
//!
//!     cargo run --release -p depot-telemetry --example request_cost [requests]
//!
//! Each request does what `crates/gateway/src/metrics.rs` `observe` does
//! with tracing: a `request` span with its fields, `set_parent` (trace id),
//! three records during the request, entered and left twice (a future
//! polled twice), one `request finished` line, two records after it. Lines
//! go through the production writer (module `writer`) into `io::sink()`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use opentelemetry::trace::TracerProvider as _;
use std::collections::HashMap;
use std::time::Instant;
use tracing_subscriber::layer::SubscriberExt;

fn request(i: u64) {
    let request_id = format!("{:032x}", i);
    let span = tracing::info_span!(
        "request",
        method = "GET",
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    depot_telemetry::set_parent(&span, &HashMap::new());
    span.in_scope(|| span.record("route", "/v1/{org}/{repo}/upstream/syncs/{sync_id}"));
    span.in_scope(|| span.record("key_id", "key_0123456789abcdef"));
    span.in_scope(|| tracing::info!(status = 200u16, latency_ms = 0.731, "request finished"));
    span.record("status", 200u16);
    span.record("latency_ms", 0.731);
}

fn measure(name: &str, n: u64, subscriber: impl tracing::Subscriber + Send + Sync + 'static) {
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..n / 10 {
            request(i);
        }
        let t = Instant::now();
        for i in 0..n {
            request(i);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{name:<44} {ns:>8.0} ns/request");
    });
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let writer =
        || depot_telemetry::writer::batch_writer(std::io::sink(), Default::default()).unwrap();
    let filter = |f: &str| tracing_subscriber::EnvFilter::new(f);

    measure(
        "filter=warn (span and line disabled)",
        n,
        tracing_subscriber::registry()
            .with(filter("warn"))
            .with(depot_telemetry::otel_layer(provider.tracer("b"), false)),
    );
    measure(
        "otel ids only, no log layer",
        n,
        tracing_subscriber::registry()
            .with(filter("info"))
            .with(depot_telemetry::otel_layer(provider.tracer("b"), false)),
    );
    let (w, _g1) = writer();
    measure(
        "stock JSON format + otel ids",
        n,
        tracing_subscriber::registry()
            .with(filter("info"))
            .with(depot_telemetry::otel_layer(provider.tracer("b"), false))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(w),
            ),
    );
    let (w, _g2) = writer();
    measure(
        "depot JSON lines + otel ids (production)",
        n,
        tracing_subscriber::registry()
            .with(filter("info"))
            .with(depot_telemetry::otel_layer(provider.tracer("b"), false))
            .with(depot_telemetry::json_layer(w)),
    );
    let (w, _g3) = writer();
    measure(
        "depot JSON lines, no otel layer",
        n,
        tracing_subscriber::registry()
            .with(filter("info"))
            .with(depot_telemetry::json_layer(w)),
    );
}
