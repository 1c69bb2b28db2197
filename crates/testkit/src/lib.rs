//! Test support for Depot Sync: a real git smart-HTTP server on loopback
//! (`git http-backend` behind a small HTTP server) plus git fixture helpers,
//! a TCP proxy that tests cut to partition a process from a service, and an
//! https front with a per-test CA.
//!
//! Everything shells out to the `git` found on `PATH`, isolated from user and
//! system configuration so results do not depend on the developer's machine.

pub mod fixture;
pub mod framing;
pub mod hostile;
mod per_repo;
pub mod proxy;
mod receiver;
mod server;
pub mod tls;

pub use framing::{BodyFraming, FramingFront};
pub use hostile::{ConnectProxy, DroppingFront, Hostile, SeenRequest};
pub use proxy::TcpProxy;
pub use receiver::{Received, WebhookReceiver};
pub use server::{GitHttpServer, GitServerOptions, basic_auth_header};
pub use tls::{TestCa, TlsFront};
