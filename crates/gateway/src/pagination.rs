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

/// A page request: its `limit`, and the position after `query.cursor`
/// (a cursor of list `kind`), or `start` without one.
pub fn request(query: &PageQuery, kind: &str, start: i64) -> Result<(i64, i64), ApiError> {
    let limit = limit(query.limit.as_deref())?;
    let position = match &query.cursor {
        Some(c) => decode(kind, c)?,
        None => start,
    };
    Ok((limit, position))
}

/// Cut `rows`, read as `limit + 1` to learn whether more exist, down to the
/// page: `has_more`, and the cursor after its last row when there is more.
pub fn cut<T>(
    rows: &mut Vec<T>,
    limit: i64,
    kind: &str,
    seq: impl Fn(&T) -> i64,
) -> (bool, Option<String>) {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = if has_more {
        rows.last().map(|r| encode(kind, seq(r)))
    } else {
        None
    };
    (has_more, next_cursor)
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
