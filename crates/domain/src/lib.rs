//! Depot's types and rules, with no I/O: what a sync is, how its ref globs are
//! normalised and matched, which outcomes a ref can have, and the small
//! encodings the public API promises (ids, `head_change_id`, scopes).

pub mod failure;
pub mod globs;
pub mod ids;
pub mod policy;
pub mod retry;
pub mod sync;

pub use failure::{Failure, FailureCode};
pub use globs::{GlobError, RefGlobs, RefGlobsInput, RefKind, RefMatcher};
pub use sync::{
    Direction, Outcome, RefStat, Scope, Stats, SyncStatus, VIRTUAL_ROOT_CHANGE_ID, head_change_id,
    is_valid_branch_name,
};
