//! Code generated from `proto-schemas/`: the messages other programs rely on.

/// `depot.sync.v1`: the job message published for every sync.
pub mod sync_v1 {
    include!(concat!(env!("OUT_DIR"), "/depot.sync.v1.rs"));
}

pub use prost::Message;
