//! JSON log lines without re-parsing: the same lines as
//! `tracing_subscriber`'s JSON format (`flatten_event`, current span, no
//! span list), written in one pass.
//!
//! Why: the stock formatter keeps a span's fields as a JSON text and, for
//! every field recorded after the span was created, parses that text into a
//! map and serializes it again; every line written inside a span parses it
//! once more to embed it. A gateway request records four fields after its
//! span is created and writes one line: five JSON parses per request, a
//! measurable share of a status poll (docs/benchmarks.md, row 1e).
//!
//! Invariants:
//! - A span's [`FormattedFields`] hold the *inside* of a JSON object
//!   (`"a":1,"b":"x"`, no braces); a field recorded later is appended.
//!   Recording a field the span already holds takes the slow path (parse,
//!   replace, serialize), so the text never holds a key twice.
//! - A line is `{"timestamp":…,"level":…,<event fields>,"target":…,
//!   "span":{<span fields>,"name":…}}` and a newline, the stock layout;
//!   span fields keep the order they were recorded in (the stock format
//!   sorts them; no reader of JSON depends on either).
//! - Keys and values are escaped and numbers written by `serde_json`, as
//!   the stock format does: any text a caller sends stays one JSON string.
//! - Events bridged from the `log` crate carry their own level and target
//!   (normalized metadata), as with the stock format.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Span fields as an open JSON object (see the module's invariants).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

/// The event formatter: one JSON object per line.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// `serde_json` writes to `io::Write`; the formatters get a `fmt::Write`.
/// It hands over whole UTF-8 pieces, so each write is valid text. Used
/// for numbers and for the rare value that is neither text nor a number.
struct Adaptor<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> std::io::Write for Adaptor<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.write_str(s).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json<W: fmt::Write + ?Sized, T: serde::Serialize + ?Sized>(w: &mut W, v: &T) -> fmt::Result {
    serde_json::to_writer(Adaptor(w), v).map_err(|_| fmt::Error)
}

/// A JSON string, escaped as `serde_json` escapes it (`"`, `\`, the
/// short forms of `\n` and its kin, `\u00XX` for other control
/// characters). Written here rather than through [`json`] because text is
/// most of every line and the `io::Write` detour checks each piece's UTF-8
/// again (measured: crates/telemetry/examples/request_cost.rs).
fn string<W: fmt::Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    escaped(w, s)?;
    w.write_char('"')
}

/// The inside of [`string`].
fn escaped<W: fmt::Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte matched above is ASCII: `i` is a character boundary.
        w.write_str(&s[start..i])?;
        if short.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(short)?;
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

/// `format_args!` text as a JSON string, escaped on the way.
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escaped(self.0, s)
    }
}

/// Writes `"name":value` pairs, a comma before each but the first.
struct Pairs<'a, W: fmt::Write + ?Sized> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write + ?Sized> Pairs<'a, W> {
    fn new(out: &'a mut W, first: bool) -> Self {
        Pairs {
            out,
            first,
            result: Ok(()),
        }
    }

    /// `"name":` then the value `value` writes.
    fn pair(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.out.write_char(',')?;
            }
            string(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }

    fn text(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.pair(field, |w| {
            w.write_char('"')?;
            fmt::write(&mut Escaping(w), value)?;
            w.write_char('"')
        });
    }
}

impl<W: fmt::Write + ?Sized> Visit for Pairs<'_, W> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, |w| json(w, &value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, |w| json(w, &value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, |w| json(w, &value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // `serde_json` writes a non-finite number as `null`, as the stock
        // format does.
        self.pair(field, |w| json(w, &value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, |w| string(w, value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format_args!("{value:?}"));
    }
}

/// Whether `fields` (an open object) already holds the key `name`. A false
/// positive only costs the slow path: inside a JSON string every `"` is
/// escaped, so an unescaped `"name":` is a key.
fn holds_key(fields: &str, name: &str) -> bool {
    let mut at = 0;
    while let Some(i) = fields[at..].find(name) {
        let start = at + i;
        let end = start + name.len();
        if fields[..start].ends_with('"') && fields[end..].starts_with("\":") {
            return true;
        }
        at = end;
    }
    false
}

/// Whether a record sets a key `fields` already holds.
struct Repeats<'a> {
    fields: &'a str,
    found: bool,
}

impl Visit for Repeats<'_> {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        self.found = self.found || holds_key(self.fields, field.name());
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut pairs = Pairs::new(&mut writer, true);
        fields.record(&mut pairs);
        pairs.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut repeats = Repeats {
            fields: &current.fields,
            found: false,
        };
        fields.record(&mut repeats);
        if !repeats.found {
            let first = current.fields.is_empty();
            let mut pairs = Pairs::new(&mut current.fields, first);
            fields.record(&mut pairs);
            return pairs.result;
        }
        // A field recorded twice: rebuild the object with the new value in
        // its place (rare; spans here record each field once).
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{}}}", current.fields)).map_err(|_| fmt::Error)?;
        let mut added = String::new();
        let mut pairs = Pairs::new(&mut added, true);
        fields.record(&mut pairs);
        pairs.result?;
        let added: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{added}}}")).map_err(|_| fmt::Error)?;
        map.extend(added);
        let text = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        current.fields.clear();
        current
            .fields
            .push_str(text.get(1..text.len() - 1).unwrap_or_default());
        Ok(())
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut pairs = Pairs::new(&mut writer, false);
        event.record(&mut pairs);
        pairs.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let ext = span.extensions();
            if let Some(fields) = ext.get::<FormattedFields<JsonFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_str(&fields.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.metadata().name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn layer<S>(buf: &Buf, ours: bool) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let buf = buf.clone();
        let base = tracing_subscriber::fmt::layer().with_writer(move || buf.clone());
        if ours {
            Box::new(base.fmt_fields(JsonFields).event_format(JsonLines))
        } else {
            Box::new(
                base.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
        }
    }

    /// What the gateway's request middleware does, with awkward text.
    fn request_like() {
        let span = tracing::info_span!(
            "request",
            method = "GET",
            route = tracing::field::Empty,
            status = tracing::field::Empty,
            request_id = %"r\"1\n\u{1b}[31m\\ \u{7f}\u{0}\u{8}\u{c}\t\r é",
            key_id = tracing::field::Empty,
        );
        span.record("route", "/v1/{org}/{repo}");
        span.record("key_id", "key_\u{e9}");
        span.in_scope(|| {
            tracing::info!(
                status = 200u16,
                latency_ms = 1.25,
                ok = true,
                n = -3i64,
                "request finished"
            );
            let e = std::io::Error::other("boom \"quoted\"");
            let e: &(dyn std::error::Error + 'static) = &e;
            tracing::warn!(error = e, debug = ?Some("x"), "second");
        });
        span.record("status", 200u16);
        tracing::info!(outside = "a span", "third");
    }

    fn lines(ours: bool) -> Vec<Value> {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(layer(&buf, ours));
        tracing::subscriber::with_default(subscriber, request_like);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Every line parses and holds what the stock JSON format's line holds,
    /// the timestamp aside (taken at another moment).
    #[test]
    fn lines_match_the_stock_json_format() {
        let strip = |mut v: Vec<Value>| {
            for line in &mut v {
                let ts = line.as_object_mut().unwrap().remove("timestamp").unwrap();
                assert!(ts.as_str().unwrap().ends_with('Z'), "{ts}");
            }
            v
        };
        let (ours, stock) = (strip(lines(true)), strip(lines(false)));
        assert_eq!(ours.len(), 3);
        assert_eq!(ours, stock);
        assert_eq!(
            ours[0]["span"]["request_id"],
            json!("r\"1\n\u{1b}[31m\\ \u{7f}\u{0}\u{8}\u{c}\t\r é")
        );
        assert_eq!(ours[0]["span"]["route"], json!("/v1/{org}/{repo}"));
        assert_eq!(ours[0]["latency_ms"], json!(1.25));
        assert_eq!(ours[1]["error"], json!("boom \"quoted\""));
        assert!(ours[2].get("span").is_none());
    }

    #[test]
    fn a_field_recorded_twice_holds_its_last_value_once() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(layer(&buf, true));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("s", a = 1u8, b = tracing::field::Empty);
            span.record("b", "x");
            span.record("a", 2u8);
            span.in_scope(|| tracing::info!("line"));
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("\"a\":").count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["span"], json!({"a": 2, "b": "x", "name": "s"}));
    }

    #[test]
    fn strings_are_escaped_byte_for_byte_as_serde_json_escapes_them() {
        let mut text: String = (0u8..0x80).map(char::from).collect();
        text.push_str("é\u{2028}\u{1F600}");
        let mut ours = String::new();
        string(&mut ours, &text).unwrap();
        assert_eq!(ours, serde_json::to_string(&text).unwrap());
    }

    #[test]
    fn holds_key_finds_keys_not_text_inside_values() {
        assert!(holds_key(r#""a":1,"route":"x""#, "route"));
        assert!(!holds_key(r#""a":"route","b":1"#, "route"));
        assert!(!holds_key(r#""xroute":1"#, "route"));
        assert!(!holds_key(r#""a":"say \"route\": no""#, "route"));
    }
}
