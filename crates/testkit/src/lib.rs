//! Test support for Depot Sync: a real git smart-HTTP server on loopback
//! (`git http-backend` behind a small HTTP server) plus git fixture helpers.
//!
//! Everything shells out to the `git` found on `PATH`, isolated from user and
//! system configuration so results do not depend on the developer's machine.

pub mod fixture;
mod server;

pub use server::{GitHttpServer, GitServerOptions, basic_auth_header};
