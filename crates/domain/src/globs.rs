//! Ref glob filters: normalisation (what the API stores and returns) and
//! matching (what the worker applies).
//!
//! Rules, as the public API states them:
//! - globs name refs without `refs/heads/` or `refs/tags/`;
//! - one string may hold several patterns separated by commas;
//! - `*` matches any run of characters including `/`; `?` and `[...]` as usual;
//! - an omitted `ref_globs` is everything (`*` for both); a key left out of a
//!   given `ref_globs` is `""`, which matches nothing.
//!
//! Choices of ours: blanks around commas are ignored and empty patterns
//! (`"main,"`) are skipped, since no ref name can be blank; brace alternation
//! (`{a,b}`) is not offered because the comma already separates patterns, so
//! a `{` that is not closed within one pattern is a compile error (400); a
//! closed group (`{main}`) can hold only one alternative and stands for it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Longest glob string accepted, in bytes.
pub const MAX_GLOB_BYTES: usize = 1024;
/// Most patterns one glob string may hold.
pub const MAX_PATTERNS: usize = 64;

/// The two glob strings as a request gave them; `None` = key absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefGlobsInput {
    pub branches: Option<String>,
    pub tags: Option<String>,
}

/// Normalised globs: both keys always present, as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefGlobs {
    pub branches: String,
    pub tags: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("ref_globs must name at least one of branches or tags")]
    Empty,
    #[error("{field} is longer than {MAX_GLOB_BYTES} bytes")]
    TooLong { field: &'static str },
    #[error("{field} holds more than {MAX_PATTERNS} patterns")]
    TooManyPatterns { field: &'static str },
    #[error("{field}: pattern {pattern:?} is not a valid glob: {reason}")]
    Invalid {
        field: &'static str,
        pattern: String,
        reason: String,
    },
}

impl GlobError {
    /// The request field the error is about, for the error envelope's details.
    pub fn field(&self) -> &'static str {
        match self {
            GlobError::Empty => "ref_globs",
            GlobError::TooLong { field }
            | GlobError::TooManyPatterns { field }
            | GlobError::Invalid { field, .. } => field,
        }
    }
}

impl RefGlobs {
    /// Everything: what an omitted `ref_globs` means.
    pub fn all() -> Self {
        RefGlobs {
            branches: "*".into(),
            tags: "*".into(),
        }
    }

    /// Normalise a request's `ref_globs` and check that it compiles.
    pub fn normalize(input: Option<RefGlobsInput>) -> Result<Self, GlobError> {
        let globs = match input {
            None => RefGlobs::all(),
            Some(RefGlobsInput {
                branches: None,
                tags: None,
            }) => return Err(GlobError::Empty),
            Some(RefGlobsInput { branches, tags }) => RefGlobs {
                branches: branches.unwrap_or_default(),
                tags: tags.unwrap_or_default(),
            },
        };
        globs.compile()?;
        Ok(globs)
    }

    pub fn compile(&self) -> Result<RefMatcher, GlobError> {
        Ok(RefMatcher {
            branches: compile_one("ref_globs.branches", &self.branches)?,
            tags: compile_one("ref_globs.tags", &self.tags)?,
        })
    }
}

fn compile_one(field: &'static str, globs: &str) -> Result<GlobSet, GlobError> {
    if globs.len() > MAX_GLOB_BYTES {
        return Err(GlobError::TooLong { field });
    }
    // No ref name holds a control character, and Postgres cannot store NUL.
    if let Some(c) = globs.chars().find(|c| c.is_control()) {
        return Err(GlobError::Invalid {
            field,
            pattern: globs.to_string(),
            reason: format!("control character {c:?}"),
        });
    }
    let mut builder = GlobSetBuilder::new();
    let mut count = 0;
    for pattern in globs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        count += 1;
        if count > MAX_PATTERNS {
            return Err(GlobError::TooManyPatterns { field });
        }
        let glob = GlobBuilder::new(pattern)
            // `*` crosses `/`, as the API promises (`release/*` and `*` both
            // match `release/1.0/hotfix`).
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| GlobError::Invalid {
                field,
                pattern: pattern.to_string(),
                reason: glob_reason(e.kind()),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| GlobError::Invalid {
        field,
        pattern: globs.to_string(),
        reason: e.to_string(),
    })
}

/// Why a pattern does not compile, in the API's terms. A brace is almost
/// always an attempt at `{a,b}` alternation, which the comma split has
/// already cut into `{a` and `b}`: globset's own text ("unclosed alternate
/// group") would send the caller looking for a missing brace.
fn glob_reason(kind: &globset::ErrorKind) -> String {
    use globset::ErrorKind::*;
    match kind {
        UnclosedAlternates | UnopenedAlternates | NestedAlternates => {
            "`{…}` alternation is not supported: separate patterns with commas \
             (\"a,b\" instead of \"{a,b}\"), and write a literal brace as [{] or [}]"
                .to_string()
        }
        other => other.to_string(),
    }
}

/// Which namespace a full ref name is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    /// `refs/heads/x` → (Branch, "x"); `refs/tags/x` → (Tag, "x"); else None.
    pub fn split(full: &str) -> Option<(RefKind, &str)> {
        if let Some(short) = full.strip_prefix("refs/heads/") {
            Some((RefKind::Branch, short))
        } else {
            full.strip_prefix("refs/tags/")
                .map(|short| (RefKind::Tag, short))
        }
    }
}

/// Compiled globs.
#[derive(Debug, Clone)]
pub struct RefMatcher {
    branches: GlobSet,
    tags: GlobSet,
}

impl RefMatcher {
    /// Does the full ref name (`refs/heads/main`, `refs/tags/v1`) match?
    /// Refs outside the two namespaces never do.
    pub fn matches(&self, full: &str) -> bool {
        match RefKind::split(full) {
            Some((RefKind::Branch, short)) => self.branches.is_match(short),
            Some((RefKind::Tag, short)) => self.tags.is_match(short),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn input(b: Option<&str>, t: Option<&str>) -> Option<RefGlobsInput> {
        Some(RefGlobsInput {
            branches: b.map(Into::into),
            tags: t.map(Into::into),
        })
    }

    #[test]
    fn omitted_means_everything() {
        let g = RefGlobs::normalize(None).unwrap();
        assert_eq!(g, RefGlobs::all());
        let m = g.compile().unwrap();
        assert!(m.matches("refs/heads/main"));
        assert!(m.matches("refs/heads/release/1.0/hotfix"));
        assert!(m.matches("refs/tags/v1.0"));
        assert!(!m.matches("refs/notes/commits"));
        assert!(!m.matches("HEAD"));
    }

    #[test]
    fn missing_key_matches_nothing() {
        let g = RefGlobs::normalize(input(Some("main"), None)).unwrap();
        assert_eq!(g.tags, "");
        let m = g.compile().unwrap();
        assert!(m.matches("refs/heads/main"));
        assert!(!m.matches("refs/heads/mainline"));
        assert!(!m.matches("refs/tags/main"));
        assert!(!m.matches("refs/tags/v1"));
    }

    #[test]
    fn empty_object_is_rejected() {
        assert_eq!(
            RefGlobs::normalize(input(None, None)),
            Err(GlobError::Empty)
        );
    }

    #[test]
    fn comma_lists_and_star_across_slash() {
        let g = RefGlobs::normalize(input(Some("main, release/*"), Some("v?.*"))).unwrap();
        let m = g.compile().unwrap();
        assert!(m.matches("refs/heads/main"));
        assert!(m.matches("refs/heads/release/1.0"));
        assert!(m.matches("refs/heads/release/1.0/hotfix"));
        assert!(!m.matches("refs/heads/feature/release/x"));
        assert!(m.matches("refs/tags/v1.0"));
        assert!(!m.matches("refs/tags/v10.0"));
        let m = RefGlobs::normalize(input(Some("feat-[ab]"), Some("")))
            .unwrap()
            .compile()
            .unwrap();
        assert!(m.matches("refs/heads/feat-a"));
        assert!(!m.matches("refs/heads/feat-c"));
    }

    #[test]
    fn bad_globs_name_their_field() {
        let e = RefGlobs::normalize(input(Some("main"), Some("v[1"))).unwrap_err();
        assert_eq!(e.field(), "ref_globs.tags");
        let long = "a".repeat(MAX_GLOB_BYTES + 1);
        let e = RefGlobs::normalize(input(Some(&long), None)).unwrap_err();
        assert_eq!(
            e,
            GlobError::TooLong {
                field: "ref_globs.branches"
            }
        );
        let e = RefGlobs::normalize(input(Some("main\0"), None)).unwrap_err();
        assert_eq!(e.field(), "ref_globs.branches");
        let many = vec!["x"; MAX_PATTERNS + 1].join(",");
        let e = RefGlobs::normalize(input(None, Some(&many))).unwrap_err();
        assert_eq!(
            e,
            GlobError::TooManyPatterns {
                field: "ref_globs.tags"
            }
        );
    }

    #[test]
    fn brace_alternation_is_refused_with_commas_as_the_way() {
        for globs in ["{a,b}", "release/{1,2}", "a}"] {
            let e = RefGlobs::normalize(input(Some(globs), None)).unwrap_err();
            assert_eq!(e.field(), "ref_globs.branches");
            let text = e.to_string();
            assert!(text.contains("alternation is not supported"), "{text}");
            assert!(text.contains("separate patterns with commas"), "{text}");
            assert!(!text.contains("maybe escape"), "{text}");
        }
        // The escape the message offers does work.
        let m = RefGlobs::normalize(input(Some("[{]x[}]"), None))
            .unwrap()
            .compile()
            .unwrap();
        assert!(m.matches("refs/heads/{x}"));
    }

    /// The comma split leaves a closed brace group only one alternative, so
    /// it stands for its content: accepted, never a literal brace.
    #[test]
    fn a_brace_group_without_a_comma_matches_its_content() {
        let m = RefGlobs::normalize(input(Some("{main},rel-{*}"), None))
            .unwrap()
            .compile()
            .unwrap();
        assert!(m.matches("refs/heads/main"));
        assert!(m.matches("refs/heads/rel-1"));
        assert!(!m.matches("refs/heads/{main}"));
    }
}
