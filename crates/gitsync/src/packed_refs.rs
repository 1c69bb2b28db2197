//! Many ref creations in one write of `packed-refs`, as `git clone` does,
//! instead of one loose file (a lock file created, written and renamed)
//! per ref.
//!
//! Why: a first pull of a repository with thousands of refs spent most of
//! its worker CPU creating those files (10,001 refs: 65 % of the worker's
//! samples in `openat`, docs/benchmarks.md "Our own transport"), and
//! `pack-refs` then deleted them all again.
//!
//! Invariants:
//! - **Creations only.** A name that already exists, loose or packed, or
//!   that would collide as a directory with an existing name (or another
//!   new one) is not written here; it comes back as deferred and the caller
//!   decides and writes it through libgit2 one by one, as before.
//! - **git's lock protocol.** `packed-refs.lock` is created exclusively; if
//!   it exists (git or libgit2 packing refs right now), nothing is written
//!   and everything is deferred. The new file is complete (old entries
//!   carried over unchanged, new ones merged in, sorted, tags peeled)
//!   before it replaces the old one by rename, so a reader sees the old or
//!   the new file, never a partial one. On any error before the rename the
//!   lock is removed and everything is deferred.
//! - **A concurrent creator wins.** A loose ref shadows its packed entry
//!   (git and libgit2 read loose first). A name created loose by someone
//!   else between the check and the rename therefore keeps their value;
//!   such names are deferred too, so the caller decides against the value
//!   that is actually visible (exactly what a create-only write would have
//!   met).
//! - No reflog is written: the caller does not use this for a repository
//!   that keeps reflogs (`core.logAllRefUpdates`).
//! - Only files git itself writes in this format are rewritten: an existing
//!   `packed-refs` must carry the `peeled fully-peeled sorted` traits and
//!   SHA-1 entries, else everything is deferred.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::path::Path;

use git2::{ObjectType, Odb, Oid, Repository};

const HEADER: &str = "# pack-refs with: peeled fully-peeled sorted \n";
/// An existing file's header must name these traits (git's and libgit2's
/// own writers do) for its entries to be carried over as they are.
const REQUIRED_TRAITS: [&str; 3] = ["peeled", "fully-peeled", "sorted"];

/// What [`create`] did with each name it was given.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Now in `packed-refs` with the requested value (and no loose ref
    /// shadows it).
    pub created: Vec<String>,
    /// Not written here: the caller writes these one by one.
    pub deferred: Vec<String>,
}

/// Write `refs` (name, value) into `packed-refs` as creations. Every name
/// comes back in exactly one of the two lists.
pub(crate) fn create(repo: &Repository, odb: &Odb<'_>, refs: &[(String, Oid)]) -> Written {
    let git_dir = repo.path();
    let lock_path = git_dir.join("packed-refs.lock");
    let lock = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) => {
            if e.kind() != ErrorKind::AlreadyExists {
                tracing::debug!(error = %e, "packed-refs.lock not taken; writing refs one by one");
            }
            return defer_all(refs);
        }
    };
    match write_locked(git_dir, odb, refs, lock, &lock_path) {
        Ok(written) => written,
        Err(e) => {
            // Best effort: a lock left behind is removed as stale later.
            let _ = fs::remove_file(&lock_path);
            tracing::warn!(error = %e, "writing packed-refs failed; writing refs one by one");
            defer_all(refs)
        }
    }
}

fn defer_all(refs: &[(String, Oid)]) -> Written {
    Written {
        created: Vec::new(),
        deferred: refs.iter().map(|(n, _)| n.clone()).collect(),
    }
}

/// An existing entry: its lines exactly as read (the ref line and, if any,
/// its `^` peel line).
type Entries = BTreeMap<String, String>;

fn write_locked(
    git_dir: &Path,
    odb: &Odb<'_>,
    refs: &[(String, Oid)],
    lock: File,
    lock_path: &Path,
) -> io::Result<Written> {
    let packed_path = git_dir.join("packed-refs");
    let mut entries = match fs::read_to_string(&packed_path) {
        Ok(text) => match parse(&text) {
            Some(entries) => entries,
            None => {
                drop(lock);
                fs::remove_file(lock_path)?;
                return Ok(defer_all(refs));
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Entries::new(),
        Err(e) => return Err(e),
    };
    let loose = loose_names(git_dir)?;
    let mut taken: BTreeSet<&str> = entries.keys().map(String::as_str).collect();
    taken.extend(loose.iter().map(String::as_str));
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for (name, _) in refs {
        if !wanted.insert(name.as_str()) {
            // Named twice: neither is written here.
            wanted.remove(name.as_str());
            taken.insert(name.as_str());
        }
    }
    let mut written = Written::default();
    let mut new_entries = Vec::new();
    for (name, oid) in refs {
        let fits = wanted.contains(name.as_str())
            && !taken.contains(name.as_str())
            && !collides(name, &taken)
            // A hostile upstream can advertise both `refs/heads/a` and
            // `refs/heads/a/b`: neither is written here.
            && !collides(name, &wanted);
        if fits {
            new_entries.push((name.clone(), entry_lines(odb, name, *oid)?));
        } else {
            written.deferred.push(name.clone());
        }
    }
    if new_entries.is_empty() {
        drop(lock);
        fs::remove_file(lock_path)?;
        return Ok(written);
    }
    for (name, lines) in &new_entries {
        entries.insert(name.clone(), lines.clone());
    }
    let mut out = BufWriter::new(lock);
    out.write_all(HEADER.as_bytes())?;
    for lines in entries.values() {
        out.write_all(lines.as_bytes())?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)?;
    fs::rename(lock_path, &packed_path)?;
    // A loose ref created meanwhile shadows the entry just written.
    for (name, _) in new_entries {
        if git_dir.join(&name).exists() {
            written.deferred.push(name);
        } else {
            written.created.push(name);
        }
    }
    Ok(written)
}

/// The entries of a `packed-refs` file git or libgit2 wrote, or `None` for
/// anything else (another header, another hash length, an unsorted file).
fn parse(text: &str) -> Option<Entries> {
    let mut lines = text.split_inclusive('\n');
    let mut entries = Entries::new();
    let mut last: Option<String> = None;
    if !text.is_empty() {
        let header = lines.next()?;
        let traits = header.strip_prefix("# pack-refs with:")?;
        let traits: BTreeSet<&str> = traits.split_whitespace().collect();
        if !REQUIRED_TRAITS.iter().all(|t| traits.contains(t)) {
            return None;
        }
    }
    for line in lines {
        if !line.ends_with('\n') {
            return None;
        }
        if let Some(peeled) = line.strip_prefix('^') {
            is_sha1(peeled.trim_end())?;
            let name = last.as_ref()?;
            entries.get_mut(name)?.push_str(line);
            continue;
        }
        let (hex, name) = line.trim_end().split_once(' ')?;
        is_sha1(hex)?;
        if name.is_empty() || last.as_deref().is_some_and(|prev| prev >= name) {
            return None;
        }
        entries.insert(name.to_owned(), line.to_owned());
        last = Some(name.to_owned());
    }
    Some(entries)
}

fn is_sha1(hex: &str) -> Option<()> {
    (hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())
}

/// Loose ref names under `refs/` (lock files excluded).
fn loose_names(git_dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in walkdir::WalkDir::new(git_dir.join("refs")).follow_links(false) {
        let entry = match entry {
            Ok(e) => e,
            Err(e)
                if e.io_error()
                    .is_some_and(|e| e.kind() == ErrorKind::NotFound) =>
            {
                continue;
            }
            Err(e) => return Err(io::Error::other(e)),
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(git_dir) else {
            continue;
        };
        let Some(name) = rel.to_str() else {
            // Not UTF-8: libgit2 could not name it either; keep it out of
            // the way by treating nothing as free next to it.
            return Err(io::Error::other("a loose ref name is not UTF-8"));
        };
        if !name.ends_with(".lock") {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// `name` and an existing ref cannot both exist: one is a directory
/// prefix of the other (`refs/heads/a` vs `refs/heads/a/b`).
fn collides(name: &str, taken: &BTreeSet<&str>) -> bool {
    let below = format!("{name}/");
    if taken
        .range(below.as_str()..)
        .next()
        .is_some_and(|n| n.starts_with(&below))
    {
        return true;
    }
    name.match_indices('/')
        .any(|(i, _)| taken.contains(&name[..i]))
}

/// The ref's line and, for a tag object, its fully peeled value.
fn entry_lines(odb: &Odb<'_>, name: &str, oid: Oid) -> io::Result<String> {
    let mut lines = format!("{oid} {name}\n");
    let mut target = oid;
    let mut peeled = false;
    // Bounded: a tag chain longer than this is not peeled (git stops too).
    for _ in 0..32 {
        let obj = odb.read(target).map_err(io::Error::other)?;
        if obj.kind() != ObjectType::Tag {
            break;
        }
        target = tag_target(obj.data()).ok_or_else(|| io::Error::other("unparsable tag"))?;
        peeled = true;
    }
    if peeled {
        lines.push_str(&format!("^{target}\n"));
    }
    Ok(lines)
}

/// The `object` line of a tag's raw text.
fn tag_target(data: &[u8]) -> Option<Oid> {
    let first = data.split(|b| *b == b'\n').next()?;
    let hex = first.strip_prefix(b"object ")?;
    Oid::from_str(std::str::from_utf8(hex).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_git_wrote_is_parsed_with_its_peel_lines() {
        let a = "1".repeat(40);
        let b = "2".repeat(40);
        let text = format!("{HEADER}{a} refs/heads/main\n{a} refs/tags/v1\n^{b}\n");
        let Some(entries) = parse(&text) else {
            panic!("not parsed: {text}");
        };
        assert_eq!(entries["refs/heads/main"], format!("{a} refs/heads/main\n"));
        assert_eq!(entries["refs/tags/v1"], format!("{a} refs/tags/v1\n^{b}\n"));
    }

    #[test]
    fn files_without_the_traits_or_out_of_order_are_refused() {
        let a = "1".repeat(40);
        assert!(parse(&format!("# pack-refs with: peeled \n{a} refs/heads/x\n")).is_none());
        assert!(parse(&format!("{HEADER}{a} refs/heads/b\n{a} refs/heads/a\n")).is_none());
        assert!(parse(&format!("{HEADER}{} refs/heads/a\n", "1".repeat(64))).is_none());
        assert!(parse(&format!("{HEADER}^{a}\n")).is_none());
        assert!(parse(&format!("{HEADER}{a} refs/heads/a")).is_none());
        assert_eq!(parse(""), Some(Entries::new()));
    }

    #[test]
    fn directory_collisions_are_found_both_ways() {
        let taken: BTreeSet<&str> = ["refs/heads/a/b", "refs/heads/c"].into_iter().collect();
        assert!(collides("refs/heads/a", &taken));
        assert!(collides("refs/heads/c/d", &taken));
        assert!(!collides("refs/heads/ab", &taken));
        assert!(!collides("refs/heads/a-b", &taken));
    }

    #[test]
    fn a_tag_target_is_read_from_its_object_line() {
        let hex = "3".repeat(40);
        let data = format!("object {hex}\ntype commit\ntag v1\n\nmsg\n");
        assert_eq!(tag_target(data.as_bytes()), Oid::from_str(&hex).ok());
        assert_eq!(tag_target(b"type commit\n"), None);
    }
}
