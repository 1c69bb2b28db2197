//! Strict request bodies, by serde derive. Invariants every body type keeps:
//! - every 400 names the offending field in `details.field` (the path comes
//!   from `serde_path_to_error`, the message from [`field_error`]);
//! - unknown fields are refused (`#[serde(deny_unknown_fields)]`) where the
//!   schema says `additionalProperties: false`;
//! - an object-typed field accepts only a JSON object ([`Object`]): serde's
//!   derive would also take an array and fill the fields by position;
//! - a string field that may be omitted refuses `null` ([`present`]); a
//!   tri-state PATCH field tells `null` from omitted with
//!   `serde_with::rust::double_option` (`None` omitted, `Some(None)` null).
//!
//! The body is parsed into a JSON value first, then into its type: the
//! value is what the idempotency hash covers (routes/syncs.rs), and
//! duplicate keys keep the last one, as they always have.
//!
//! [`JsonObject`] is the extractor: it takes the payload, but reads it only
//! when the handler asks, after authorization, so a 401/403 comes before
//! any 400 about the body and no pool connection is held while a slow
//! client sends it.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de};
use serde_json::{Map, Value};
use std::fmt;
use std::future::{Ready, ready};
use std::marker::PhantomData;

/// A request body of type `T`, read on demand (see the module docs).
pub struct JsonObject<T> {
    payload: web::Payload,
    max_bytes: usize,
    _body: PhantomData<T>,
}

impl<T> FromRequest for JsonObject<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::internal("application state missing")));
        };
        let max_bytes = state.settings.gateway.max_body_bytes;
        // Taking the payload does no I/O; it cannot fail.
        let payload = web::Payload::from_request(req, payload)
            .into_inner()
            .map_err(|e| ApiError::invalid("body", format!("could not read body: {e}")));
        ready(payload.map(|payload| JsonObject {
            payload,
            max_bytes,
            _body: PhantomData,
        }))
    }
}

impl<T: DeserializeOwned> JsonObject<T> {
    /// Give `caller`'s connection back, then read and parse the body.
    pub async fn read(self, caller: &mut Caller) -> Result<T, ApiError> {
        Ok(self.read_with_object(caller).await?.0)
    }

    /// [`JsonObject::read`], also returning the object as parsed.
    pub async fn read_with_object(
        self,
        caller: &mut Caller,
    ) -> Result<(T, Map<String, Value>), ApiError> {
        // Not held while the body arrives: a slow client would hold a pool slot.
        caller.release_db();
        let bytes = crate::routes::read_body(self.payload, self.max_bytes).await?;
        let object = parse_object(&bytes)?;
        let body = from_object(&object)?;
        Ok((body, object))
    }
}

pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("body", "a JSON object body is required"));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("body", "body must be a JSON object")),
    }
}

/// Deserialize a parsed object into `T`; a failure names its field.
pub fn from_object<T: DeserializeOwned>(object: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(object).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        field_error(&path, &e.into_inner().to_string())
    })
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The first name in backquotes of a serde message (`missing field `x``).
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The 400 for one serde error at `path`, worded as the API always has
/// (docs/api.md): serde's messages are stable in form (`missing field`,
/// `unknown field`, `unknown variant`, `invalid type: X, expected Y`), and
/// each becomes the sentence a client reads.
fn field_error(path: &str, message: &str) -> ApiError {
    // Errors from a reader (not from a value) end in a position.
    let message = message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at]);
    if let Some(name) = message.strip_prefix("missing field ").and_then(quoted) {
        let field = join(path, name);
        return ApiError::invalid(&field, format!("{field} is required"));
    }
    if let Some(name) = message.strip_prefix("unknown field ").and_then(quoted) {
        // The path names the key already, unless the error came from
        // content serde had buffered (then it stops at the object).
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_string()
        } else {
            join(path, name)
        };
        return ApiError::invalid(&field, format!("unknown field {field:?}"));
    }
    let field = if path.is_empty() { "body" } else { path };
    if message.starts_with("unknown variant ") {
        let choices = message
            .split_once(", expected ")
            .map_or("", |(_, choices)| choices)
            .trim_start_matches("one of ")
            .replace('`', "'");
        return ApiError::invalid(field, format!("{field} must be {choices}"));
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        if path.is_empty() {
            return ApiError::invalid("body", "body must be a JSON object");
        }
        // An enum's tag: the client sent something other than a string.
        let expected = if expected == "variant identifier" {
            "a string"
        } else {
            expected
        };
        return if found == "null" {
            ApiError::invalid(field, format!("{field} must be {expected}, not null"))
        } else {
            ApiError::invalid(field, format!("{field} must be {expected}"))
        };
    }
    ApiError::invalid(field, format!("{field}: {message}"))
}

/// An object-typed field: a JSON object and nothing else (serde's derive
/// would fill a struct from an array by position too).
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // The map access is the caller's, so paths stay tracked.
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// For `#[serde(default, deserialize_with = "json::present")]`: the field
/// may be omitted (`None`) but, when given, must not be `null`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default, deserialize_with = "present")]
        a: Option<String>,
        #[serde(default, with = "serde_with::rust::double_option")]
        inner: Option<Option<Object<Inner>>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        url: String,
    }

    fn parse(raw: &str) -> Result<Outer, ApiError> {
        from_object(&parse_object(raw.as_bytes())?)
    }

    fn refused(raw: &str) -> (String, String) {
        let e = parse(raw).unwrap_err();
        (
            e.details.unwrap()["field"].as_str().unwrap().into(),
            e.message,
        )
    }

    #[test]
    fn every_refusal_names_its_field_in_the_usual_words() {
        for (raw, field, message) in [
            (r#"{"a": 1}"#, "a", "a must be a string"),
            (r#"{"a": null}"#, "a", "a must be a string, not null"),
            (r#"{"b": 1}"#, "b", r#"unknown field "b""#),
            (r#"{"inner": "x"}"#, "inner", "inner must be an object"),
            (r#"{"inner": ["u"]}"#, "inner", "inner must be an object"),
            (r#"{"inner": {}}"#, "inner.url", "inner.url is required"),
            (
                r#"{"inner": {"url": "u", "x": 1}}"#,
                "inner.x",
                r#"unknown field "inner.x""#,
            ),
            (
                r#"{"inner": {"url": null}}"#,
                "inner.url",
                "inner.url must be a string, not null",
            ),
            ("[1]", "body", "body must be a JSON object"),
            ("", "body", "a JSON object body is required"),
        ] {
            assert_eq!(refused(raw), (field.into(), message.into()), "{raw}");
        }
        assert!(refused("{").1.starts_with("body is not valid JSON"));
    }

    #[test]
    fn null_and_absent_differ_in_a_double_option() {
        assert_eq!(parse("{}").unwrap().inner, None);
        assert_eq!(parse(r#"{"inner": null}"#).unwrap().inner, Some(None));
        let given = parse(r#"{"inner": {"url": "u"}}"#).unwrap().inner;
        assert_eq!(given, Some(Some(Object(Inner { url: "u".into() }))));
        assert_eq!(parse("{}").unwrap().a, None);
    }

    #[test]
    fn an_unknown_variant_lists_the_choices() {
        let e = field_error(
            "kind",
            "unknown variant `ssh`, expected `token` or `password`",
        );
        assert_eq!(e.message, "kind must be 'token' or 'password'");
    }
}
