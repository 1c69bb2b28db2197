//! What a run's outcome means for its sync, decided once.
//!
//! [`verdict`] is pure: from the git work's [`RunOutcome`], the attempt and
//! the retry policy it picks exactly one [`Verdict`], and everything after
//! it (the write, the span fields, the metrics, the log) follows that one
//! value. Invariants:
//! - a transient failure on the last allowed attempt
//!   (`attempt >= worker.max_attempts`) fails the sync, with the attempt
//!   count appended to its error; earlier ones retry with backoff;
//! - a release (shutdown, lost lease) never uses up an attempt and never
//!   records an error: the sync goes back to `queued` as it was.

use depot_domain::retry::backoff;
use depot_domain::{Failure, FailureCode, Stats};
use std::time::Duration;

/// Whether a completed run moves the repository's recorded head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadUpdate {
    /// Leave it as recorded (a push does not move our default branch).
    Keep,
    /// Record this tip of the default branch; `None` when the branch is
    /// absent (or not at a commit) after the run.
    Set(Option<String>),
}

/// The result of the git work, before it is judged.
#[derive(Debug)]
pub(crate) enum RunOutcome {
    Completed {
        stats: Stats,
        head: HeadUpdate,
    },
    Failed {
        error: Failure,
        stats: Option<Stats>,
    },
    Retry {
        error: Failure,
    },
    /// Shutdown or lost lease, the git thread stopped: give the sync back
    /// without judging it.
    Released,
    /// Shutdown or lost lease, and the git thread did not stop in time (the
    /// transport stops network I/O on the cancel flag, so this is a thread
    /// stuck elsewhere, e.g. on hung storage): give the sync back, but not
    /// to be claimed before the thread's last possible write is older than
    /// the stale-lock age the next run clears (see
    /// [`RetryPolicy::abandoned_delay`]).
    Abandoned,
}

/// What becomes of the sync; an error is the text the sync records.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Complete {
        stats: Stats,
        head: HeadUpdate,
    },
    /// Back to `queued` with the error, due after `delay`; the attempt is
    /// spent.
    Retry {
        error: String,
        delay: Duration,
    },
    Fail {
        error: String,
        stats: Option<Stats>,
    },
    /// Back to `queued` without judging the run, due after `delay`.
    Release {
        delay: Duration,
    },
}

impl Verdict {
    /// The run's `result` (metric label) and `status` (span field).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Verdict::Complete { .. } => "completed",
            Verdict::Retry { .. } => "retry",
            Verdict::Fail { .. } => "failed",
            Verdict::Release { .. } => "released",
        }
    }

    /// The error the sync records, if any.
    pub(crate) fn error(&self) -> Option<&str> {
        match self {
            Verdict::Retry { error, .. } | Verdict::Fail { error, .. } => Some(error),
            Verdict::Complete { .. } | Verdict::Release { .. } => None,
        }
    }

    /// The failure code the recorded error starts with (`code`, `code: …`
    /// or `code (gave up …)`).
    pub(crate) fn code(&self) -> Option<FailureCode> {
        let error = self.error()?;
        let end = error.find([':', ' ']).unwrap_or(error.len());
        FailureCode::parse(&error[..end])
    }
}

/// The settings a verdict depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: i32,
    pub(crate) retry_base_ms: u64,
    pub(crate) retry_max_ms: u64,
    /// The worker's lease.
    pub(crate) lease: Duration,
}

impl RetryPolicy {
    pub(crate) fn of(settings: &depot_settings::Worker) -> Self {
        RetryPolicy {
            max_attempts: i32::try_from(settings.max_attempts).unwrap_or(i32::MAX),
            retry_base_ms: settings.retry_base_ms,
            retry_max_ms: settings.retry_max_ms,
            lease: Duration::from_secs(settings.lease_seconds),
        }
    }

    /// How long a sync whose git thread was abandoned waits before its next
    /// claim: a full lease. The thread dies with the process (which exits
    /// right after releasing at shutdown) or stops at its next callback
    /// (lease lost), within seconds; the next run removes `.lock` files
    /// older than half a lease (`RunSpec::stale_lock_age`), so none it meets
    /// can be the abandoned thread's and be young.
    fn abandoned_delay(&self) -> Duration {
        self.lease
    }
}

/// Judge a run. `random` is a uniform sample in `[0, 1)` for the backoff's
/// jitter, passed in to keep this pure.
pub(crate) fn verdict(
    outcome: RunOutcome,
    attempt: i32,
    policy: &RetryPolicy,
    random: f64,
) -> Verdict {
    match outcome {
        RunOutcome::Completed { stats, head } => Verdict::Complete { stats, head },
        RunOutcome::Failed { error, stats } => Verdict::Fail {
            error: error.to_string(),
            stats,
        },
        RunOutcome::Retry { error } if attempt >= policy.max_attempts => Verdict::Fail {
            error: format!("{error} (gave up after {attempt} attempts)"),
            stats: None,
        },
        RunOutcome::Retry { error } => Verdict::Retry {
            error: error.to_string(),
            delay: backoff(
                policy.retry_base_ms,
                policy.retry_max_ms,
                u32::try_from(attempt).unwrap_or(1),
                random,
            ),
        },
        RunOutcome::Released => Verdict::Release {
            delay: Duration::ZERO,
        },
        RunOutcome::Abandoned => Verdict::Release {
            delay: policy.abandoned_delay(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_domain::FailureCode;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        retry_base_ms: 1000,
        retry_max_ms: 60_000,
        lease: Duration::from_secs(30),
    };

    fn retry(attempt: i32) -> Verdict {
        verdict(
            RunOutcome::Retry {
                error: FailureCode::Timeout.into(),
            },
            attempt,
            &POLICY,
            0.0,
        )
    }

    #[test]
    fn a_completed_run_completes_with_its_stats_and_head() {
        let v = verdict(
            RunOutcome::Completed {
                stats: Stats::default(),
                head: HeadUpdate::Set(Some("abc".into())),
            },
            3,
            &POLICY,
            0.5,
        );
        assert_eq!(
            v,
            Verdict::Complete {
                stats: Stats::default(),
                head: HeadUpdate::Set(Some("abc".into()))
            }
        );
        assert_eq!(v.label(), "completed");
        assert_eq!(v.error(), None);
    }

    #[test]
    fn a_transient_failure_before_the_last_attempt_retries_with_backoff() {
        assert_eq!(
            retry(1),
            Verdict::Retry {
                error: "timeout".into(),
                delay: Duration::from_millis(500)
            }
        );
        assert_eq!(
            retry(2),
            Verdict::Retry {
                error: "timeout".into(),
                delay: Duration::from_millis(1000)
            }
        );
        assert_eq!(retry(2).label(), "retry");
    }

    #[test]
    fn a_transient_failure_on_the_last_attempt_fails_saying_so() {
        let v = retry(3);
        assert_eq!(
            v,
            Verdict::Fail {
                error: "timeout (gave up after 3 attempts)".into(),
                stats: None
            }
        );
        assert_eq!(v.label(), "failed");
        assert_eq!(retry(4).label(), "failed");
    }

    #[test]
    fn a_permanent_failure_fails_on_any_attempt() {
        let v = verdict(
            RunOutcome::Failed {
                error: FailureCode::AuthenticationFailed.into(),
                stats: None,
            },
            1,
            &POLICY,
            0.0,
        );
        assert_eq!(v.error(), Some("authentication_failed"));
        assert_eq!(v.label(), "failed");
    }

    #[test]
    fn the_failure_code_is_read_back_from_every_recorded_form() {
        assert_eq!(retry(3).code(), Some(FailureCode::Timeout));
        let detailed = verdict(
            RunOutcome::Failed {
                error: FailureCode::UpstreamRefused.with("no"),
                stats: None,
            },
            1,
            &POLICY,
            0.0,
        );
        assert_eq!(detailed.code(), Some(FailureCode::UpstreamRefused));
        let released = verdict(RunOutcome::Released, 1, &POLICY, 0.0);
        assert_eq!(released.code(), None);
    }

    #[test]
    fn a_released_run_is_due_at_once_and_an_abandoned_one_after_a_lease() {
        assert_eq!(
            verdict(RunOutcome::Released, 3, &POLICY, 0.0),
            Verdict::Release {
                delay: Duration::ZERO
            }
        );
        let abandoned = verdict(RunOutcome::Abandoned, 3, &POLICY, 0.0);
        assert_eq!(
            abandoned,
            Verdict::Release {
                delay: Duration::from_secs(30)
            }
        );
        assert_eq!(abandoned.label(), "released");
        assert_eq!(abandoned.error(), None);
    }
}
