//! Requests in flight per repository, counted from a request's arrival
//! until the last byte of its response body is sent (or the client goes
//! away): with one run per repository at a time, a count above one means
//! two runs of that repository overlapped.
//!
//! Also the server's optional pacing of response bodies, a slow link that
//! keeps a fetch transferring (libgit2 calling its progress callbacks)
//! rather than waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

#[derive(Default)]
pub(crate) struct RepoGauges {
    /// Repository name -> (in flight now, most at once so far).
    counts: Mutex<HashMap<String, (u64, u64)>>,
    /// Response bytes per second; 0 = unpaced.
    pace: AtomicU64,
}

/// One request being served; counted out on drop.
pub(crate) struct Entered {
    gauges: Arc<RepoGauges>,
    repo: String,
}

impl RepoGauges {
    pub(crate) fn enter(self: &Arc<Self>, path: &str) -> Entered {
        let repo = repo_of(path);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(repo.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
        Entered {
            gauges: Arc::clone(self),
            repo,
        }
    }

    pub(crate) fn max_in_flight(&self, repo: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(repo).map_or(0, |c| c.1)
    }

    pub(crate) fn set_pace(&self, bytes_per_second: Option<u64>) {
        self.pace
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// How much to read before pausing, and the pause that chunk costs.
    pub(crate) fn chunk(&self) -> Option<(usize, Duration)> {
        let bps = self.pace.load(Ordering::SeqCst);
        if bps == 0 {
            return None;
        }
        // Ten chunks a second: the client sees a steady trickle.
        let len = usize::try_from(bps / 10)
            .unwrap_or(usize::MAX)
            .clamp(1, 64 * 1024);
        Some((len, Duration::from_secs_f64(len as f64 / bps as f64)))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut counts = self
            .gauges
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = counts.get_mut(&self.repo) {
            c.0 = c.0.saturating_sub(1);
        }
    }
}

/// `/<name>.git/...` -> `<name>`; anything else counts under its first
/// path segment.
fn repo_of(path: &str) -> String {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    first.strip_suffix(".git").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_repository_until_dropped() {
        let g = Arc::new(RepoGauges::default());
        let a1 = g.enter("/a.git/info/refs");
        let a2 = g.enter("/a.git/git-upload-pack");
        let b = g.enter("/b.git/info/refs");
        drop((a1, a2, b));
        let _a3 = g.enter("/a.git/info/refs");
        assert_eq!(g.max_in_flight("a"), 2);
        assert_eq!(g.max_in_flight("b"), 1);
        assert_eq!(g.max_in_flight("c"), 0);
    }
}
