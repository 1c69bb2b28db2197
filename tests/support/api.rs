//! Helpers for the API tests: a client that checks every response it gets
//! against the project's OpenAPI document (`proto-schemas/openapi.yaml`):
//! the operation must list the status, and the body must validate against
//! that status's schema. Error responses are also checked against the
//! envelope rules (`trace_id` on 5xx).

use crate::TestEnv;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The OpenAPI document, parsed once per test binary.
pub fn contract() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("proto-schemas")
            .join("openapi.yaml");
        let text = std::fs::read_to_string(&path).expect("read proto-schemas/openapi.yaml");
        serde_yaml_ng::from_str(&text).expect("parse proto-schemas/openapi.yaml")
    })
}

/// The operation of the document that serves `method path` (path with its
/// `/v1` prefix, query allowed): `(template, operation)`. Literal segments
/// win over parameters, as they do in the gateway's router.
pub fn operation(method: &str, path: &str) -> Option<(String, &'static Value)> {
    let doc = contract();
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix("/v1")?;
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let method = method.to_ascii_lowercase();
    let mut best: Option<(usize, String, &Value)> = None;
    for (template, item) in doc["paths"].as_object()? {
        let Some(op) = item.get(&method) else {
            continue;
        };
        let parts: Vec<&str> = template.split('/').skip(1).collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literals = 0;
        let fits = parts.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                !s.is_empty()
            } else {
                literals += 1;
                p == s
            }
        });
        if fits && best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
            best = Some((literals, template.clone(), op));
        }
    }
    best.map(|(_, t, op)| (t, op))
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> Result<&'a Value> {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').context("only local refs")?;
            doc.pointer(pointer)
                .with_context(|| format!("unresolved {r}"))
        }
        None => Ok(v),
    }
}

/// Validate one response against the document. `Ok(false)` when no
/// operation matches (unknown route): the caller checks the envelope then.
pub fn check_response(method: &str, path: &str, status: u16, body: &Value) -> Result<bool> {
    let doc = contract();
    if status >= 400 {
        check_envelope(status, body)?;
    }
    let Some((template, op)) = operation(method, path) else {
        return Ok(false);
    };
    let responses = &op["responses"];
    let Some(response) = responses.get(status.to_string()) else {
        bail!("{method} {template} answered {status}, which the document does not list: {body}");
    };
    let response = resolve(doc, response)?;
    let validator = validator(method, &template, status, response)?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        bail!(
            "{method} {template} {status}: body does not match the document:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
    }
    Ok(true)
}

/// The compiled schema of one response, built once per test process:
/// compiling it (all of `components` included) costs more than most
/// requests do, and a test checks the same few responses many times.
fn validator(
    method: &str,
    template: &str,
    status: u16,
    response: &Value,
) -> Result<Arc<jsonschema::Validator>> {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = format!("{method} {template} {status}");
    let built = BUILT.get_or_init(Mutex::default);
    if let Some(v) = built.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let schema = response
        .pointer("/content/application~1json/schema")
        .with_context(|| format!("{key}: no JSON schema"))?;
    let mut root = Map::new();
    root.insert("$ref".into(), Value::String("#/__schema".into()));
    root.insert("__schema".into(), schema.clone());
    root.insert("components".into(), contract()["components"].clone());
    let validator = Arc::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| anyhow!("schema of {key}: {e}"))?,
    );
    built
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, validator.clone());
    Ok(validator)
}

/// Every non-2xx body is the envelope; 5xx ones carry a trace id.
pub fn check_envelope(status: u16, body: &Value) -> Result<()> {
    let error = body
        .get("error")
        .and_then(Value::as_object)
        .with_context(|| format!("{status} without the error envelope: {body}"))?;
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        bail!("{status}: code is not SCREAMING_SNAKE: {body}");
    }
    if !error.get("message").is_some_and(Value::is_string) {
        bail!("{status}: no message: {body}");
    }
    if status >= 500 && !error.get("trace_id").is_some_and(Value::is_string) {
        bail!("{status} without trace_id: {body}");
    }
    Ok(())
}

/// A response as the tests see it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// `details.field` of an error reply.
    pub fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
    }
}

/// A request the contract-checking client sends.
#[derive(Debug, Clone, Default)]
pub struct Req<'a> {
    pub key: Option<&'a str>,
    /// Sent as is (not necessarily JSON).
    pub raw_body: Option<String>,
    pub headers: Vec<(&'a str, String)>,
}

impl TestEnv {
    /// Like [`TestEnv::call`], and the answer is checked against the OpenAPI
    /// document (panics on a mismatch, naming it).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let reply = self
            .request(
                method,
                path,
                Req {
                    key,
                    raw_body: body.map(Value::to_string),
                    headers: if body.is_some() {
                        vec![("content-type", "application/json".into())]
                    } else {
                        Vec::new()
                    },
                },
            )
            .await;
        (reply.status, reply.body)
    }

    /// Send any request; the reply is checked against the document.
    pub async fn request(&self, method: &str, path: &str, req: Req<'_>) -> Reply {
        let reply = self
            .request_unchecked(method, path, req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        if path.starts_with("/v1") || reply.status >= 400 {
            if reply.content_type.as_deref() != Some("application/json") {
                panic!(
                    "{method} {path}: content type {:?}, not application/json",
                    reply.content_type
                );
            }
            if let Err(e) = check_response(method, path, reply.status, &reply.body) {
                panic!("{method} {path}: {e:#}");
            }
        }
        reply
    }

    /// Send any request without checking the reply.
    pub async fn request_unchecked(&self, method: &str, path: &str, req: Req<'_>) -> Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut builder = self.http.request(method, self.url(path));
        if let Some(key) = req.key {
            builder = builder.bearer_auth(key);
        }
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = req.raw_body {
            builder = builder.body(body);
        }
        let res = builder.send().await?;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
        let text = res.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow!("non-JSON body ({e}): {text}"))?
        };
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }
}

/// Assert an error reply: status, code and (when given) `details.field`.
#[track_caller]
pub fn assert_error(
    (status, body): &(u16, Value),
    want_status: u16,
    want_code: &str,
    want_field: Option<&str>,
) {
    assert_eq!(*status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    if let Some(field) = want_field {
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
}
