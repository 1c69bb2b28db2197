//! Strict request-body reading. Bodies are parsed into a JSON value and then
//! read field by field, so every 400 names the offending field in
//! `details.field` (serde's derive errors do not, reliably), unknown fields
//! are refused where the schema says `additionalProperties: false`, and an
//! explicit `null` can be told apart from an omitted key (tri-state PATCH).

use crate::error::ApiError;
use serde_json::{Map, Value};

/// A field's presence: omitted, explicitly `null`, or a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Absent,
    Null,
    Present(T),
}

impl<T> Field<T> {
    pub fn into_option(self) -> Option<T> {
        match self {
            Field::Present(v) => Some(v),
            _ => None,
        }
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

/// Refuse keys outside `allowed`; `path` prefixes the field name in errors.
pub fn only_keys(map: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), ApiError> {
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let field = join(path, key);
        return Err(ApiError::invalid(
            &field,
            format!("unknown field {field:?}"),
        ));
    }
    Ok(())
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn string(map: &Map<String, Value>, key: &str, path: &str) -> Result<Field<String>, ApiError> {
    match map.get(key) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(Value::String(s)) => Ok(Field::Present(s.clone())),
        Some(_) => {
            let field = join(path, key);
            Err(ApiError::invalid(
                &field,
                format!("{field} must be a string"),
            ))
        }
    }
}

/// A string that may be omitted but not `null`.
pub fn opt_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ApiError> {
    match string(map, key, path)? {
        Field::Null => {
            let field = join(path, key);
            Err(ApiError::invalid(
                &field,
                format!("{field} must be a string, not null"),
            ))
        }
        other => Ok(other.into_option()),
    }
}

pub fn required_string(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<String, ApiError> {
    opt_string(map, key, path)?.ok_or_else(|| {
        let field = join(path, key);
        ApiError::invalid(&field, format!("{field} is required"))
    })
}

pub fn object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Field<&'a Map<String, Value>>, ApiError> {
    match map.get(key) {
        None => Ok(Field::Absent),
        Some(Value::Null) => Ok(Field::Null),
        Some(Value::Object(o)) => Ok(Field::Present(o)),
        Some(_) => {
            let field = join(path, key);
            Err(ApiError::invalid(
                &field,
                format!("{field} must be an object"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fields_are_named() {
        let m = parse_object(br#"{"a": 1, "b": null, "c": "x"}"#).unwrap();
        let e = string(&m, "a", "outer").unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "outer.a");
        assert_eq!(string(&m, "b", "").unwrap(), Field::Null);
        assert_eq!(string(&m, "z", "").unwrap(), Field::Absent);
        assert!(opt_string(&m, "b", "").is_err());
        assert_eq!(required_string(&m, "c", "").unwrap(), "x");
        let e = only_keys(&m, &["a", "b"], "").unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "c");
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{").is_err());
        assert!(parse_object(b"").is_err());
    }
}
