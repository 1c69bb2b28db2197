//! Test support for Depot Sync: a real git smart-HTTP server on loopback
//! (`git http-backend` behind a small HTTP server) plus git fixture helpers,
//! and a TCP proxy that tests cut to partition a process from a service.
//!
//! Everything shells out to the `git` found on `PATH`, isolated from user and
//! system configuration so results do not depend on the developer's machine.

pub mod fixture;
pub mod hostile;
mod per_repo;
pub mod proxy;
mod receiver;
mod server;

pub use hostile::{ConnectProxy, DroppingFront, Hostile, SeenRequest};
pub use proxy::TcpProxy;
pub use receiver::{Received, WebhookReceiver};
pub use server::{GitHttpServer, GitServerOptions, basic_auth_header};
