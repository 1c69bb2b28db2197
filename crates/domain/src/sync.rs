//! The sync record's vocabulary.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// upstream → hosted repository
    Pull,
    /// hosted repository → upstream
    Push,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Pull => "pull",
            Direction::Push => "push",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Queued => "queued",
            SyncStatus::InProgress => "in_progress",
            SyncStatus::Completed => "completed",
            SyncStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, SyncStatus::Completed | SyncStatus::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

macro_rules! str_enum {
    ($ty:ty, $($s:literal => $v:expr),+ $(,)?) => {
        impl FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($v),)+
                    other => Err(UnknownValue(other.to_string())),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(Direction, "pull" => Direction::Pull, "push" => Direction::Push);
str_enum!(SyncStatus,
    "queued" => SyncStatus::Queued,
    "in_progress" => SyncStatus::InProgress,
    "completed" => SyncStatus::Completed,
    "failed" => SyncStatus::Failed,
);
str_enum!(Scope, "read" => Scope::Read, "write" => Scope::Write, "admin" => Scope::Admin);

/// What happened to one matched ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Target ref created (`before` null) or fast-forwarded.
    Updated,
    /// Target already at `after`.
    Unchanged,
    /// Matched, but excluded by policy (symbolic ref, a name git forbids).
    Filtered,
    /// Not applied: not a fast-forward, a tag would move, or the target
    /// refused it.
    Rejected,
}

/// One entry of `stats.refs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefStat {
    /// Full ref name (`refs/heads/main`).
    pub name: String,
    /// The target's value before the run; `None` when absent.
    pub before: Option<String>,
    /// The value the target has (updated/unchanged) or would have had.
    pub after: String,
    pub outcome: Outcome,
    /// Why, on `rejected` and `filtered` entries only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RefStat {
    pub fn new(
        name: impl Into<String>,
        before: Option<String>,
        after: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        RefStat {
            name: name.into(),
            before,
            after: after.into(),
            outcome,
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub refs: Vec<RefStat>,
}

impl Stats {
    /// Stats as the API shows them: sorted by ref name.
    pub fn sorted(mut refs: Vec<RefStat>) -> Self {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        Stats { refs }
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.refs.iter().filter(|r| r.outcome == outcome).count()
    }
}

/// API key scopes; hierarchical: a higher scope may do all a lower one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// `head_change_id` of an empty repository or a missing default branch.
pub const VIRTUAL_ROOT_CHANGE_ID: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";

/// The API's `head_change_id`: the first 16 bytes of the default branch's tip
/// commit id in "reverse hex" (hex digit 0..f written as z..k), or the virtual
/// root when there is no tip. A malformed id also gives the virtual root
/// rather than a wrong-looking value.
pub fn head_change_id(tip: Option<&str>) -> String {
    let Some(tip) = tip else {
        return VIRTUAL_ROOT_CHANGE_ID.to_string();
    };
    let digits: Option<String> = tip.get(..32).and_then(|prefix| {
        prefix
            .chars()
            .map(|c| c.to_digit(16).map(|d| (b'z' - d as u8) as char))
            .collect::<Option<String>>()
    });
    digits.unwrap_or_else(|| VIRTUAL_ROOT_CHANGE_ID.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reverse_hex() {
        let tip = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            head_change_id(Some(tip)),
            "zyxwvutsrqponmlkzyxwvutsrqponmlk"
        );
        assert_eq!(head_change_id(None), VIRTUAL_ROOT_CHANGE_ID);
        assert_eq!(head_change_id(Some("xyz")), VIRTUAL_ROOT_CHANGE_ID);
        let upper = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
        assert_eq!(head_change_id(Some(upper)).len(), 32);
    }

    #[test]
    fn scopes_are_hierarchical() {
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        assert_eq!("write".parse::<Scope>().unwrap(), Scope::Write);
        assert!("owner".parse::<Scope>().is_err());
    }

    #[test]
    fn enums_round_trip_through_text_and_json() {
        for s in [
            SyncStatus::Queued,
            SyncStatus::InProgress,
            SyncStatus::Completed,
            SyncStatus::Failed,
        ] {
            assert_eq!(s.as_str().parse::<SyncStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(serde_json::to_value(Direction::Push).unwrap(), "push");
    }

    #[test]
    fn reason_only_when_present() {
        let s = RefStat::new("refs/heads/a", None, "abc", Outcome::Updated);
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("reason").is_none());
        assert!(v["before"].is_null());
        let r = s.with_reason("non_fast_forward");
        assert_eq!(
            serde_json::to_value(&r).unwrap()["reason"],
            "non_fast_forward"
        );
        let stats = Stats::sorted(vec![
            RefStat::new("refs/tags/v1", None, "1", Outcome::Updated),
            RefStat::new("refs/heads/z", None, "2", Outcome::Rejected),
        ]);
        assert_eq!(stats.refs[0].name, "refs/heads/z");
        assert_eq!(stats.count(Outcome::Rejected), 1);
    }
}

/// A branch name git accepts (`git check-ref-format --branch` rules, the
/// subset that matters for names typed into an API).
pub fn is_valid_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name != "@"
        && !name
            .split('/')
            .any(|c| c.starts_with('.') || c.ends_with(".lock"))
        && !name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
}

#[cfg(test)]
mod branch_name_tests {
    use super::is_valid_branch_name;

    #[test]
    fn branch_names() {
        for ok in ["main", "release/1.0", "feature-x", "v1.2.3"] {
            assert!(is_valid_branch_name(ok), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a~1", "x.lock", "a/.b", "/a", "a/", "@", "a@{1}", "a:b", "a*",
        ] {
            assert!(!is_valid_branch_name(bad), "{bad}");
        }
    }
}
