//! Opaque cursors and page limits for list endpoints.

use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// A cursor names the position after the last item returned; `kind` keeps
/// a repo cursor from being used on a sync list.
pub fn encode(kind: &str, seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{seq}"))
}

pub fn decode(kind: &str, cursor: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::invalid("cursor", "cursor is not valid");
    if cursor.len() > 64 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (k, seq) = text.split_once(':').ok_or_else(bad)?;
    if k != kind {
        return Err(bad());
    }
    // Only the exact spelling `encode` makes ("7", not "+7" or "007"): one
    // position, one cursor.
    seq.parse::<i64>()
        .ok()
        .filter(|s| *s >= 0 && s.to_string() == seq)
        .ok_or_else(bad)
}

pub fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        assert_eq!(decode("s", &encode("s", 42)).unwrap(), 42);
        assert!(decode("r", &encode("s", 42)).is_err());
        let plus = URL_SAFE_NO_PAD.encode("s:+7");
        let zeros = URL_SAFE_NO_PAD.encode("s:007");
        for bad in ["", "!!!", "czo", "czotMQ", &"a".repeat(100), &plus, &zeros] {
            assert!(decode("s", bad).is_err(), "{bad}");
        }
        assert_eq!(limit(None).unwrap(), 50);
        assert_eq!(limit(Some("100")).unwrap(), 100);
        for bad in ["0", "101", "-1", "x", "1.5"] {
            assert!(limit(Some(bad)).is_err());
        }
    }
}
