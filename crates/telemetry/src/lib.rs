//! Logs and traces for every Depot binary: `tracing` with an env filter,
//! readable (`pretty`) or JSON lines (`json`), and OpenTelemetry spans whose
//! W3C trace context travels from the gateway's request through the job
//! message into the worker's run.
//!
//! - Readable lines are coloured only when standard output is a terminal
//!   (and `NO_COLOR` is unset): a log file (`make run` writes
//!   `data/logs/*.log`) gets plain text that `grep status=401` finds.
//! - JSON lines carry `timestamp`, `level`, `target`, the event's fields
//!   (`message` among them) flattened, and the current span's fields under
//!   `span` (for a request: `method`, `route`, `request_id`, `trace_id`,
//!   `key_id`; its `request finished` line carries `status` and
//!   `latency_ms` itself, so a readable line names each once; for a run: `sync_id`, `repo_id`, `direction`, `attempt`,
//!   `trace_id`, outcome counts).
//! - When `telemetry.otlp_endpoint` is set, spans are exported over OTLP/HTTP
//!   (protobuf) to `<endpoint>/v1/traces` in batches; dropping the
//!   [`TelemetryGuard`] flushes what is pending.
//! - Spans get real trace ids even when nothing is exported, so trace context
//!   propagates and a 500 body can name its trace.
//! - JSON lines are formatted in one pass (module `json`): the stock
//!   formatter's layout, without its parse and re-serialize of a span's
//!   fields on every record and every line.
//! - Lines are written to stdout by a dedicated thread (module `writer`): a
//!   request thread only formats its line and appends it to a shared
//!   buffer, it never waits on the terminal or pipe and never wakes the
//!   thread per line; the thread writes a batch per system call, at most
//!   every 10 ms while busy and at once after a quiet spell. No line is
//!   dropped (when 1 MiB is waiting, callers wait); dropping the
//!   [`TelemetryGuard`] writes out what is pending.

mod json;
pub mod writer;

use depot_settings::{LogFormat, Telemetry};
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where the subscriber's lines go: the batching thread, or (only when it
/// could not be started) stdout directly.
#[derive(Clone)]
enum LogSink {
    Batched(writer::BatchWriter),
    Direct,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer =
        tracing_subscriber::fmt::writer::EitherWriter<&'a writer::BatchWriter, std::io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        use tracing_subscriber::fmt::writer::EitherWriter;
        match self {
            LogSink::Batched(w) => EitherWriter::A(w),
            LogSink::Direct => EitherWriter::B(std::io::stdout()),
        }
    }
}

/// Keeps the tracer provider and the log writer alive; flushes both when
/// dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    _log_writer: Option<writer::WriterGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Exports what the batch processor still holds (bounded by the
        // exporter's timeout, OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by default),
        // then stops it.
        let _ = self.provider.shutdown();
    }
}

/// The OTLP/HTTP traces URL for a configured endpoint: like
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL (`http://collector:4318`) gets
/// `/v1/traces` appended; a URL already ending in `/v1/traces` is kept.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

fn tracer_provider(settings: &Telemetry, service: &str) -> (SdkTracerProvider, Option<String>) {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = settings.otlp_endpoint.as_deref() else {
        return (builder.build(), None);
    };
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_headers(HashMap::new())
        .build();
    match exporter {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        // Telemetry must not stop the service: run without export, and say so
        // once the subscriber is up.
        Err(e) => (builder.build(), Some(e.to_string())),
    }
}

/// The OpenTelemetry layer. Without an exporter it only gives spans their
/// ids (propagation, trace ids in logs and 500 bodies), so it skips what
/// nobody would read: span events, source locations, thread names and
/// busy/idle timings. These cost a measurable share of a status poll
/// (docs/benchmarks.md, 1e). Context activation is off either way: nothing
/// here reads OpenTelemetry's implicit current context; trace context is
/// taken from the `tracing` span ([`inject_current`]).
pub fn otel_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
    exporting: bool,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_location(exporting)
        .with_threads(exporting)
        .with_tracked_inactivity(exporting)
        .with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
            exporting || meta.is_span()
        }))
}

/// The JSON lines layer (module `json`: the stock layout, written in one
/// pass), writing to `writer`.
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(json::JsonFields)
        .event_format(json::JsonLines)
        .with_writer(writer)
}

/// Colour escapes only for a person watching a terminal: in a file or a
/// pipe they are noise that breaks `grep`. `NO_COLOR` (no-color.org) turns
/// them off on a terminal too.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Install the global subscriber. `RUST_LOG`, when set, overrides
/// `telemetry.filter`. Calling it twice (tests) keeps the first subscriber.
pub fn init(settings: &Telemetry, default_service: &str) -> TelemetryGuard {
    let service = if settings.service_name.is_empty() {
        default_service.to_string()
    } else {
        settings.service_name.clone()
    };
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
    ]));
    let (provider, export_error) = tracer_provider(settings, &service);
    let tracer = provider.tracer(service.clone());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer(tracer, settings.otlp_endpoint.is_some()));
    let (writer, log_guard) = match writer::batch_writer(std::io::stdout(), Default::default()) {
        Ok((w, guard)) => (LogSink::Batched(w), Some(guard)),
        Err(e) => {
            // No thread for it (resources exhausted at start): lines are
            // written by their callers, which is slower but loses nothing.
            eprintln!("log writer thread unavailable, writing lines directly: {e}");
            (LogSink::Direct, None)
        }
    };
    let installed = match settings.format {
        LogFormat::Json => registry.with(json_layer(writer)).try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(colour(std::io::stdout().is_terminal()))
                    .with_writer(writer),
            )
            .try_init(),
    };
    // Only the subscriber actually installed keeps its writer thread.
    let log_guard = log_guard.filter(|_| installed.is_ok());
    match (&settings.otlp_endpoint, export_error) {
        (Some(_), Some(e)) => {
            tracing::error!(error = %e, "OTLP exporter unavailable; spans are not exported")
        }
        // The endpoint is configuration, not a secret, but it may carry
        // user info: log only that export is on.
        (Some(_), None) => tracing::info!(service = %service, "exporting spans over OTLP/HTTP"),
        (None, _) => {}
    }
    TelemetryGuard {
        provider,
        _log_writer: log_guard,
    }
}

/// The current span's W3C trace context (`traceparent`, `tracestate`).
pub fn inject_current() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
}

/// Make `span` a child of the remote context in `carrier`, when it holds a
/// valid one, and record the span's trace id in its `trace_id` field (when
/// the span declares one). Call it right after creating the span, before it
/// is entered: the parent of a started span cannot change.
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    record_trace_id(span);
}

/// Record `span`'s trace id in its `trace_id` field, so log lines written
/// inside it name the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        // Formatted straight into the line's fields: no String per request.
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

/// The trace id of `span`, when it is being recorded.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id of the current span, when one is being recorded.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs `f` under the layer `init` installs, configured as with and
    /// as without an exporter: ids and propagation must not depend on it.
    fn with_otel(f: impl Fn()) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        for exporting in [false, true] {
            let provider = SdkTracerProvider::builder().build();
            let subscriber =
                tracing_subscriber::registry().with(otel_layer(provider.tracer("test"), exporting));
            tracing::subscriber::with_default(subscriber, &f);
        }
    }

    #[test]
    fn a_child_of_a_remote_traceparent_keeps_its_trace_id() {
        with_otel(|| {
            let carrier = HashMap::from([(
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            )]);
            let span = tracing::info_span!("sync_run", trace_id = tracing::field::Empty);
            set_parent(&span, &carrier);
            let _entered = span.enter();
            assert_eq!(
                current_trace_id().as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            // What the worker would send on: same trace, a new parent span.
            let out = inject_current();
            let tp = &out["traceparent"];
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
        });
    }

    #[test]
    fn without_a_parent_a_span_starts_its_own_trace() {
        with_otel(|| {
            let span = tracing::info_span!("request");
            set_parent(&span, &HashMap::new());
            let id = trace_id_of(&span).unwrap();
            assert_eq!(id.len(), 32);
            assert_ne!(id, "00000000000000000000000000000000");
            let _entered = span.enter();
            let child = tracing::info_span!("inner");
            assert_eq!(trace_id_of(&child).unwrap(), id);
        });
    }

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example/v1/traces"),
            "https://c.example/v1/traces"
        );
    }
}
