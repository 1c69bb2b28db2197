//! Housekeeping of a hosted repository's git directory: pack consolidation,
//! packed refs, pruning of unreachable objects, removal of leftovers of dead
//! runs.
//!
//! Invariants:
//! - the caller holds the repository's run lock (a claimed sync, or the
//!   housekeeping lease that claims respect): no live run writes the
//!   repository meanwhile;
//! - nothing younger than `Policy::grace` is removed: not an unreachable
//!   object (a run that lost its lease may still be between its download
//!   and its ref writes, see `crate::pull`), not a temporary pack file, not
//!   a lock. The worker's settings keep the grace longer than any run;
//! - every step is one that git itself makes safe against a crash half-way
//!   (new pack first, old ones removed after; `packed-refs` through its
//!   lock), so a killed housekeeping leaves at most temporary files that a
//!   later pass removes.
//!
//! libgit2 can neither repack incrementally nor pack refs, so this runs the
//! `git` CLI (housekeeping only; syncs never need it), hermetically: no
//! system or global configuration, no hooks, the repository named
//! explicitly.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Thresholds; a step runs only once its threshold is crossed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// More packs than this: geometric repack (`git repack -d
    /// --geometric=2`), which rolls small packs (and loose objects) into
    /// bigger ones so the pack count stays logarithmic in the object count.
    pub max_packs: usize,
    /// More loose refs than this: `git pack-refs --all`.
    pub max_loose_refs: usize,
    /// More loose objects than this (estimated from one fan-out directory,
    /// as `git gc --auto` does): geometric repack, which packs them.
    pub max_loose_objects: usize,
    /// Unreachable objects, temporary files and locks at least this old are
    /// removed; younger ones are kept.
    pub grace: Duration,
    /// Pruning rewrites every pack, so it runs at most this often per
    /// repository (the first look at a repository starts the clock).
    pub prune_every: Duration,
    /// Cap on one housekeeping pass; a git command still running then is
    /// killed (its temporary files are removed by a later pass).
    pub time_limit: Duration,
}

/// What a repository's git directory looks like, cheaply measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub packs: usize,
    pub loose_refs: usize,
    /// Estimate (objects in one of the 256 fan-out directories × 256).
    pub loose_objects: usize,
    /// Temporary pack/object files and lock files older than the grace.
    pub stale_files: usize,
    /// When the last prune ran (the mtime of its marker file).
    pub last_prune: Option<SystemTime>,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The repository does not exist (never pulled, or purged).
    pub absent: bool,
    pub packs_before: usize,
    pub packs_after: usize,
    pub packed_refs: bool,
    pub repacked: bool,
    pub pruned: bool,
    pub removed_files: usize,
}

impl Report {
    pub fn did_anything(&self) -> bool {
        self.packed_refs || self.repacked || self.pruned || self.removed_files > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HousekeepingError {
    #[error("git CLI unavailable: {0}")]
    GitMissing(String),
    #[error("`git {command}` failed: {detail}")]
    GitFailed { command: String, detail: String },
    #[error("housekeeping cancelled")]
    Cancelled,
    #[error("housekeeping took longer than its time limit")]
    TimedOut,
    #[error("reading the repository failed: {0}")]
    Io(String),
}

/// Name of the marker whose mtime records the last prune.
const PRUNE_MARKER: &str = "depot-last-prune";

/// The git CLI's version line, or why it cannot be run. The worker calls
/// this at start to report a missing git clearly.
pub fn git_version() -> Result<String, HousekeepingError> {
    let out = git()
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .map_err(|e| HousekeepingError::GitMissing(format!("cannot run `git`: {e}")))?;
    if !out.status.success() {
        return Err(HousekeepingError::GitMissing(format!(
            "`git --version` exited with {}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Measure without changing anything; `None` when there is no repository.
pub fn inspect(git_dir: &Path, grace: Duration) -> Result<Option<Inspection>, HousekeepingError> {
    if !git_dir.join("objects").is_dir() {
        return Ok(None);
    }
    let pack_dir = git_dir.join("objects").join("pack");
    let mut packs = 0;
    if let Ok(entries) = std::fs::read_dir(&pack_dir) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("pack-") && name.ends_with(".pack") && !is_cruft(&pack_dir, &name) {
                packs += 1;
            }
        }
    }
    let loose_refs = walkdir::WalkDir::new(git_dir.join("refs"))
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file() && !e.file_name().as_encoded_bytes().ends_with(b".lock")
        })
        .count();
    // Like `git gc --auto`: objects are spread evenly over the fan-out
    // directories, so one of them tells the total.
    let loose_objects = std::fs::read_dir(git_dir.join("objects").join("17"))
        .map(|d| d.filter_map(Result::ok).count() * 256)
        .unwrap_or(0);
    let stale_files = stale_files(git_dir, grace).len();
    let last_prune = std::fs::metadata(git_dir.join(PRUNE_MARKER))
        .and_then(|m| m.modified())
        .ok();
    Ok(Some(Inspection {
        packs,
        loose_refs,
        loose_objects,
        stale_files,
        last_prune,
    }))
}

/// A cruft pack (unreachable objects kept for their grace) is not part of
/// the geometric progression and not counted.
fn is_cruft(pack_dir: &Path, pack_name: &str) -> bool {
    let stem = pack_name.trim_end_matches(".pack");
    pack_dir.join(format!("{stem}.mtimes")).exists()
}

/// One pass: whatever steps the policy's thresholds call for. `cancel` is
/// polled while a git command runs; raising it kills the command.
pub fn housekeep(
    git_dir: &Path,
    policy: &Policy,
    cancel: Option<&AtomicBool>,
) -> Result<Report, HousekeepingError> {
    let Some(before) = inspect(git_dir, policy.grace)? else {
        return Ok(Report {
            absent: true,
            ..Report::default()
        });
    };
    let deadline = Instant::now() + policy.time_limit;
    let mut report = Report {
        packs_before: before.packs,
        packs_after: before.packs,
        ..Report::default()
    };
    report.removed_files = remove_stale_files(git_dir, policy.grace);
    if before.loose_refs > policy.max_loose_refs {
        run_git(git_dir, &["pack-refs", "--all"], cancel, deadline)?;
        report.packed_refs = true;
    }
    // The first look only starts the clock: a repository just created by
    // its first pull has nothing old to prune, and a full repack right
    // after a huge first pull would double its cost.
    let prune_due = match before.last_prune {
        None => {
            touch(&git_dir.join(PRUNE_MARKER))?;
            false
        }
        Some(t) => SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age >= policy.prune_every),
    };
    if prune_due {
        // As `git gc` does: reachable objects into one pack, unreachable
        // packed ones younger than the grace into a cruft pack (which keeps
        // their mtimes), older ones dropped; then unreachable loose objects
        // older than the grace, which the repack leaves loose.
        let expire = format!("{}.seconds.ago", policy.grace.as_secs());
        let cruft_expiration = format!("--cruft-expiration={expire}");
        run_git(
            git_dir,
            &["repack", "-d", "-q", "--cruft", &cruft_expiration],
            cancel,
            deadline,
        )?;
        run_git(
            git_dir,
            &["prune", &format!("--expire={expire}")],
            cancel,
            deadline,
        )?;
        touch(&git_dir.join(PRUNE_MARKER))?;
        report.pruned = true;
    } else if before.packs > policy.max_packs || before.loose_objects > policy.max_loose_objects {
        run_git(
            git_dir,
            &["repack", "-d", "-q", "--geometric=2"],
            cancel,
            deadline,
        )?;
        report.repacked = true;
    }
    if report.packed_refs || report.pruned || report.repacked {
        report.packs_after = inspect(git_dir, policy.grace)?.map_or(0, |i| i.packs);
    }
    Ok(report)
}

/// `git pack-refs --all` now, whatever the threshold: a pull that wrote many
/// refs calls this before it ends (under its run lock).
pub(crate) fn pack_refs(
    git_dir: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<(), HousekeepingError> {
    run_git(
        git_dir,
        &["pack-refs", "--all"],
        cancel,
        Instant::now() + Duration::from_secs(300),
    )
}

fn touch(path: &Path) -> Result<(), HousekeepingError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| HousekeepingError::Io(e.to_string()))?;
    file.set_modified(SystemTime::now())
        .map_err(|e| HousekeepingError::Io(e.to_string()))
}

/// Temporary files git and libgit2 write while receiving or repacking
/// (`tmp_pack_*`, `tmp_idx_*`, `.tmp-*`, libgit2's `pack_git2_*`, loose
/// `tmp_obj_*`) and `*.lock` files anywhere, all older than `grace`: a run
/// or housekeeping that was killed left them.
fn stale_files(git_dir: &Path, grace: Duration) -> Vec<std::path::PathBuf> {
    let now = SystemTime::now();
    walkdir::WalkDir::new(git_dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let name = e.file_name().to_string_lossy();
            let in_objects = e
                .path()
                .strip_prefix(git_dir)
                .is_ok_and(|p| p.starts_with("objects"));
            name.ends_with(".lock")
                || (in_objects
                    && (name.starts_with("tmp_")
                        || name.starts_with(".tmp-")
                        || name.starts_with("pack_git2_")))
        })
        .filter(|e| {
            e.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|e| e.into_path())
        .collect()
}

fn remove_stale_files(git_dir: &Path, grace: Duration) -> usize {
    let mut removed = 0;
    for path in stale_files(git_dir, grace) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "removing a stale file failed")
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            count = removed,
            "removed temporary and lock files left by dead runs"
        );
    }
    removed
}

/// `git` with no configuration but the repository's own and ours.
fn git() -> Command {
    let mut cmd = Command::new("git");
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(var);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// How often a running git command is checked for cancellation.
const POLL: Duration = Duration::from_millis(20);
/// Most of git's stderr kept for the error.
const STDERR_KEPT: usize = 2048;

fn run_git(
    git_dir: &Path,
    args: &[&str],
    cancel: Option<&AtomicBool>,
    deadline: Instant,
) -> Result<(), HousekeepingError> {
    let command = args.join(" ");
    let mut cmd = git();
    cmd.arg("-c")
        // The volume may belong to another uid than the worker's (git
        // refuses such a repository otherwise).
        .arg(format!("safe.directory={}", git_dir.display()))
        .args(["-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0"])
        .arg(format!("--git-dir={}", git_dir.display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| HousekeepingError::GitMissing(format!("cannot run `git`: {e}")))?;
    // Drained on its own thread so a chatty command never blocks on a full
    // pipe while we poll.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(HousekeepingError::Io(e.to_string())),
        }
        let stop = if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some(HousekeepingError::Cancelled)
        } else if Instant::now() >= deadline {
            Some(HousekeepingError::TimedOut)
        } else {
            None
        };
        if let Some(why) = stop {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        std::thread::sleep(POLL);
    };
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    tracing::debug!(
        command = %command,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "git housekeeping command finished"
    );
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&stderr[..stderr.len().min(STDERR_KEPT)])
        .trim()
        .replace('\n', " ");
    Err(HousekeepingError::GitFailed {
        command,
        detail: if text.is_empty() {
            status.to_string()
        } else {
            text
        },
    })
}
