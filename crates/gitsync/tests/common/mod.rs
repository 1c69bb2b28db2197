//! What every gitsync integration test sets up: an upstream served over
//! real smart HTTP on loopback, and a run's `RunSpec` with the defaults a
//! test does not care about. Each test binary uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_domain::RefMatcher;
use depot_gitsync::{Net, RunSpec};
use depot_testkit::fixture::{WorkRepo, init_bare};
use depot_testkit::{GitHttpServer, GitServerOptions};

/// Any fixed, valid sync id: tests run one sync at a time per repository.
pub const SYNC_ID: &str = "0192f0c4-7a7b-7cc2-9a0e-2b8e2d1f0a11";

/// A bare upstream `up.git` served by the test server, and a working
/// repository to commit into it from.
pub struct Served {
    pub tmp: tempfile::TempDir,
    pub server: GitHttpServer,
    pub work: WorkRepo,
    pub upstream: PathBuf,
}

/// Serve a new upstream, with Basic auth and a keep-alive other than the
/// server's default when given.
pub fn serve(auth: Option<(&str, &str)>, keep_alive: Option<Duration>) -> Served {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let upstream = root.join("up.git");
    init_bare(&upstream).unwrap();
    let opts = GitServerOptions {
        root,
        basic_auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        listen: None,
    };
    let server = match keep_alive {
        Some(k) => GitHttpServer::start_with_keep_alive(opts, k).unwrap(),
        None => GitHttpServer::start(opts).unwrap(),
    };
    let work = WorkRepo::new(&tmp.path().join("work")).unwrap();
    Served {
        tmp,
        server,
        work,
        upstream,
    }
}

/// Every test server listens on 127.0.0.1: the address a run is pinned to.
pub fn loopback() -> Net {
    Net::pinned(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// A run of `SYNC_ID`'s first attempt, with no credential, cancel flag or
/// limits, and a deadline far enough not to matter.
pub fn run_spec<'a>(
    hosted: &'a Path,
    url: &'a str,
    matcher: &'a RefMatcher,
    net: &'a Net,
) -> RunSpec<'a> {
    RunSpec {
        repo_path: hosted,
        url,
        credentials: None,
        matcher,
        sync_id: SYNC_ID,
        attempt: 1,
        deadline: Instant::now() + Duration::from_secs(300),
        cancel: None,
        max_pack_bytes: None,
        max_refs: None,
        default_branch: None,
        stale_lock_age: None,
        net,
    }
}
