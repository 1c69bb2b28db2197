//! The transport's limits against real and hostile upstreams on loopback
//! (depot-testkit's git server and its hostile modes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_domain::{FailureCode, Outcome, RefGlobs, RefMatcher};
use depot_gitsync::{Credentials, Net, RunSpec, SyncError, USER_AGENT, ensure_repo, pull, push};
use depot_testkit::fixture::{WorkRepo, git_command, git_in_dir_with_input, list_refs};
use depot_testkit::{ConnectProxy, GitHttpServer, Hostile, TestCa, TlsFront};

struct Env {
    tmp: tempfile::TempDir,
    server: GitHttpServer,
    work: WorkRepo,
    upstream: PathBuf,
    hosted: PathBuf,
    matcher: RefMatcher,
}

fn start(auth: Option<(&str, &str)>, keep_alive: Option<Duration>) -> Env {
    let common::Served {
        tmp,
        server,
        work,
        upstream,
    } = common::serve(auth, keep_alive);
    let hosted = tmp.path().join("hosted.git");
    Env {
        tmp,
        server,
        work,
        upstream,
        hosted,
        matcher: RefGlobs::all().compile().unwrap(),
    }
}

fn env() -> Env {
    start(None, None)
}

use common::loopback;

fn spec<'a>(e: &'a Env, url: &'a str, net: &'a Net) -> RunSpec<'a> {
    common::run_spec(&e.hosted, url, &e.matcher, net)
}

fn seed(e: &Env) {
    e.work.commit("main", "one").unwrap();
    e.work.push_all_to(&e.upstream).unwrap();
}

/// A commit on main carrying `bytes` of incompressible data.
fn commit_big_file(work: &WorkRepo, bytes: usize) {
    let mut data = vec![0u8; bytes];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(work.path().join("big.bin"), &data).unwrap();
    let git = |args: &[&str]| {
        let st = git_command()
            .arg("-C")
            .arg(work.path())
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["add", "big.bin"]);
    git(&["commit", "-q", "-m", "big"]);
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Peak RSS growth of this process past `idle_kib`, in MiB.
fn peak_growth_mib(idle_kib: u64) -> u64 {
    status_kib("VmHWM:").saturating_sub(idle_kib) / 1024
}

fn url_by_name(e: &Env) -> String {
    format!("http://upstream.test:{}/up.git", e.server.addr().port())
}

#[test]
fn a_host_name_is_reached_only_at_its_pinned_address() {
    let e = env();
    seed(&e);
    // `upstream.test` resolves nowhere: only the pin can make this work.
    let url = url_by_name(&e);
    let net = loopback();
    let stats = pull(&spec(&e, &url, &net)).unwrap();
    assert_eq!(stats.len(), 1);
    assert!(e.server.connection_count() >= 1);
}

#[test]
fn a_rebinding_answer_never_reaches_loopback() {
    let e = env();
    seed(&e);
    // The policy's one lookup: the answer that passed is all the run has.
    // A second lookup would get 127.0.0.1, where the upstream listens.
    let answers = std::cell::Cell::new(0);
    let resolve = |_host: &str| -> Vec<IpAddr> {
        answers.set(answers.get() + 1);
        if answers.get() == 1 {
            vec!["93.184.215.14".parse().unwrap()]
        } else {
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        }
    };
    let vetted = resolve("upstream.test");
    assert!(depot_domain::policy::check_addresses(&vetted).is_ok());
    let net = Net {
        stall_timeout: Duration::from_secs(2),
        ..Net::pinned(vetted)
    };
    let url = url_by_name(&e);
    let mut s = spec(&e, &url, &net);
    s.deadline = Instant::now() + Duration::from_secs(3);
    let err = pull(&s).unwrap_err();
    assert!(
        matches!(&err, SyncError::Transient(c) if matches!(c.code, FailureCode::ConnectFailed | FailureCode::Timeout | FailureCode::NetworkError)),
        "{err:?}"
    );
    assert_eq!(answers.get(), 1, "the transport never resolves");
    assert_eq!(e.server.connection_count(), 0);
}

#[test]
fn no_address_no_connection() {
    let e = env();
    seed(&e);
    let url = e.server.repo_url("up");
    let net = Net::pinned(vec![]);
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(FailureCode::UpstreamRefused.into()))
    );
    assert_eq!(e.server.connection_count(), 0);
}

/// A pull from an upstream in `mode` fails with `timeout` within
/// `deadline` plus 2 s.
fn assert_times_out_by_the_deadline(mode: Hostile, deadline: Duration) {
    let e = env();
    e.server.set_hostile(Some(mode));
    let url = e.server.repo_url("up");
    let net = loopback();
    let mut s = spec(&e, &url, &net);
    let started = Instant::now();
    s.deadline = started + deadline;
    assert_eq!(
        pull(&s),
        Err(SyncError::Transient(FailureCode::Timeout.into()))
    );
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_dribbling_upstream_ends_within_the_deadline() {
    assert_times_out_by_the_deadline(Hostile::DribbledAdvertisement, Duration::from_secs(4));
}

#[test]
fn a_silent_upstream_ends_within_the_deadline() {
    assert_times_out_by_the_deadline(Hostile::NeverAnswer, Duration::from_secs(3));
}

#[test]
fn the_stall_bound_ends_a_silent_transfer_before_the_deadline() {
    let e = env();
    e.server.set_hostile(Some(Hostile::NeverAnswer));
    let url = e.server.repo_url("up");
    let net = Net {
        stall_timeout: Duration::from_secs(2),
        ..loopback()
    };
    let started = Instant::now();
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Transient(FailureCode::Timeout.into()))
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_endless_advertisement_fails_with_advertisement_too_large() {
    let e = env();
    e.server.set_hostile(Some(Hostile::EndlessAdvertisement));
    let url = e.server.repo_url("up");
    let net = Net {
        max_advertisement_bytes: 16 << 20,
        ..loopback()
    };
    let idle = status_kib("VmRSS:");
    let started = Instant::now();
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(
            FailureCode::AdvertisementTooLarge.into()
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let growth = peak_growth_mib(idle);
    assert!(growth < 128, "peak RSS grew by {growth} MiB");
}

#[test]
fn the_default_advertisement_cap_holds_100000_refs() {
    // A pkt-line per ref, with longish names and their peeled tag lines.
    let line = format!(
        "{:04x}{} refs/heads/team-name/feature-branch-name-00000\n",
        0,
        "0".repeat(40)
    );
    let hundred_thousand_refs = 2 * 100_000 * line.len() as u64;
    assert!(
        depot_gitsync::DEFAULT_MAX_ADVERTISEMENT_BYTES > 2 * hundred_thousand_refs,
        "{hundred_thousand_refs}"
    );
}

#[test]
fn an_oversized_pack_fails_with_pack_too_large_on_the_wire() {
    let e = env();
    seed(&e);
    commit_big_file(&e.work, 24 << 20);
    e.work.push_all_to(&e.upstream).unwrap();
    let url = e.server.repo_url("up");
    let net = loopback();
    let mut s = spec(&e, &url, &net);
    s.max_pack_bytes = Some(4 << 20);
    let idle = status_kib("VmRSS:");
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(FailureCode::PackTooLarge.into()))
    );
    // Stopped at the cap, not after the whole pack.
    assert!(
        net.transfer.bytes_in() < 8 << 20,
        "{}",
        net.transfer.bytes_in()
    );
    let growth = peak_growth_mib(idle);
    assert!(growth < 128, "peak RSS grew by {growth} MiB");
}

#[test]
fn a_push_streams_its_pack_in_large_writes() {
    let e = env();
    seed(&e);
    commit_big_file(&e.work, 8 << 20);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    let url = e.server.repo_url("up");
    let net = loopback();
    let stats = push(&spec(&e, &url, &net)).unwrap();
    assert!(stats.iter().all(|s| s.outcome == Outcome::Updated));
    let (out, writes) = (net.transfer.bytes_out(), net.transfer.body_writes());
    assert!(out > 8 << 20, "{out}");
    assert!(out / writes >= 64 * 1024, "{writes} writes for {out} bytes");
}

#[test]
fn a_push_goes_out_in_socket_writes_of_at_least_64_kib() {
    let e = env();
    seed(&e);
    commit_big_file(&e.work, 8 << 20);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    let url = e.server.repo_url("up");
    let net = loopback();
    push(&spec(&e, &url, &net)).unwrap();
    let (writes, bytes) = net.transfer.socket_writes();
    assert!(bytes > 8 << 20, "{bytes}");
    // Request heads and the small exchanges are a handful of writes.
    assert!(
        bytes / writes >= 64 * 1024,
        "{writes} writes for {bytes} bytes"
    );
}

#[test]
fn a_push_body_has_no_small_http_chunks() {
    let e = env();
    seed(&e);
    commit_big_file(&e.work, 8 << 20);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    let front = depot_testkit::FramingFront::start(e.server.addr()).unwrap();
    let url = format!("http://{}/up.git", front.addr());
    let net = loopback();
    let stats = push(&spec(&e, &url, &net)).unwrap();
    assert!(stats.iter().all(|s| s.outcome == Outcome::Updated));
    let bodies = front.bodies();
    let pack = bodies
        .iter()
        .find(|b| b.request == "POST /up.git/git-receive-pack")
        .unwrap_or_else(|| panic!("no receive-pack body: {bodies:?}"));
    let total: u64 = pack.chunks.iter().sum();
    assert!(total > 8 << 20, "{total}");
    // Every chunk but the body's last is full size: ureq frames a body as
    // 10 KiB chunks (fixed in ureq-proto), the end of each 128 KiB read as
    // a shorter one; never libgit2's own small writes.
    let (_last, rest) = pack.chunks.split_last().unwrap();
    let small: Vec<_> = rest.iter().filter(|c| **c < 8 * 1024).collect();
    assert!(
        small.is_empty(),
        "small chunks {small:?} of {}",
        pack.chunks.len()
    );
}

#[test]
fn a_push_of_thousands_of_refs_survives_a_short_keep_alive() {
    let e = start(None, Some(Duration::from_secs(5)));
    seed(&e);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    let tip = depot_testkit::fixture::rev_parse(&e.hosted, "refs/heads/main").unwrap();
    let mut input = String::new();
    for i in 0..3000 {
        input.push_str(&format!("create refs/heads/many/b{i:05} {tip}\n"));
    }
    update_refs(&e.hosted, &input);
    let url = e.server.repo_url("up");
    let net = loopback();
    let stats = push(&spec(&e, &url, &net)).unwrap();
    assert!(
        stats
            .iter()
            .filter(|s| s.outcome == Outcome::Updated)
            .count()
            >= 3000
    );
    let upstream_refs = list_refs(&e.upstream).unwrap();
    assert!(upstream_refs.len() >= 3001);
}

fn update_refs(repo: &Path, input: &str) {
    git_in_dir_with_input(repo, &["update-ref", "--stdin"], input.as_bytes()).unwrap();
}

#[test]
fn redirects_are_not_followed() {
    let e = env();
    seed(&e);
    e.server
        .set_hostile(Some(Hostile::Redirect("http://127.0.0.1:1".into())));
    let url = e.server.repo_url("up");
    let net = loopback();
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(FailureCode::RedirectRefused.into()))
    );
    assert_eq!(e.server.seen_requests().len(), 1);
}

#[test]
fn every_request_says_it_is_git() {
    let e = env();
    seed(&e);
    ensure_repo(&e.hosted).unwrap();
    let url = e.server.repo_url("up");
    let net = loopback();
    pull(&spec(&e, &url, &net)).unwrap();
    let seen = e.server.seen_requests();
    assert!(seen.len() >= 2);
    for r in seen {
        assert_eq!(r.user_agent.as_deref(), Some(USER_AGENT), "{r:?}");
        assert!(r.user_agent.unwrap().starts_with("git/"));
    }
}

#[test]
fn the_credential_answers_one_challenge_and_then_goes_up_front() {
    let e = start(Some(("alice", "s3cret")), None);
    seed(&e);
    let url = e.server.repo_url("up");
    let net = loopback();
    let creds = Credentials::UsernamePassword {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let mut s = spec(&e, &url, &net);
    s.credentials = Some(&creds);
    pull(&s).unwrap();
    let seen = e.server.seen_requests();
    // First request unauthenticated (challenged), all later ones carry it.
    assert!(!seen[0].authorization);
    assert!(seen[1..].iter().all(|r| r.authorization), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|r| !r.authorization).count(),
        1,
        "one challenge per run"
    );
}

#[test]
fn a_refused_credential_is_not_retried() {
    let e = start(Some(("alice", "s3cret")), None);
    seed(&e);
    let url = e.server.repo_url("up");
    let net = loopback();
    let creds = Credentials::UsernamePassword {
        username: "alice".into(),
        password: "wrong".into(),
    };
    let mut s = spec(&e, &url, &net);
    s.credentials = Some(&creds);
    assert_eq!(
        pull(&s),
        Err(SyncError::Permanent(
            FailureCode::AuthenticationFailed.into()
        ))
    );
    // The challenge, then one answer: never a loop.
    assert_eq!(e.server.seen_requests().len(), 2);
}

#[test]
fn a_proxy_is_asked_for_the_pinned_address_not_the_name() {
    let e = env();
    seed(&e);
    let proxy = ConnectProxy::start().unwrap();
    let url = url_by_name(&e);
    let net = Net {
        proxy: Some(proxy.url()),
        ..loopback()
    };
    pull(&spec(&e, &url, &net)).unwrap();
    let targets = proxy.targets();
    assert!(!targets.is_empty());
    let pinned = format!("127.0.0.1:{}", e.server.addr().port());
    assert!(targets.iter().all(|t| *t == pinned), "{targets:?}");
}

#[test]
fn an_unreadable_ca_file_fails_the_run_before_any_connection() {
    let e = env();
    seed(&e);
    let url = e.server.repo_url("up");
    let bogus = e.tmp.path().join("not-a-ca.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let net = Net {
        ca_file: Some(bogus),
        ..loopback()
    };
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(FailureCode::CaFileInvalid.into()))
    );
    assert_eq!(e.server.connection_count(), 0);
}

#[test]
fn the_run_counts_its_traffic() {
    let e = env();
    seed(&e);
    let url = e.server.repo_url("up");
    let net = loopback();
    pull(&spec(&e, &url, &net)).unwrap();
    let t = &net.transfer;
    assert!(t.bytes_in() > 0);
    assert!(t.bytes_out() > 0, "the fetch sent its wants");
    assert!(t.connections() >= 1);
    assert!(t.connections() <= t.requests());
    assert_eq!(t.connections(), e.server.connection_count());
}

#[test]
fn a_reused_connection_dropped_before_its_answer_is_retried_once_fresh() {
    let e = env();
    seed(&e);
    let front = depot_testkit::DroppingFront::start(e.server.addr()).unwrap();
    let url = format!("http://{}/up.git", front.addr());
    let net = loopback();
    // Listing, negotiation and pack each reuse the previous connection,
    // which the front drops: every one must be resent on a fresh one.
    let stats = pull(&spec(&e, &url, &net)).unwrap();
    assert_eq!(stats.len(), 1);
    assert!(front.dropped() >= 1);
    assert_eq!(
        net.transfer.requests(),
        e.server.request_count() + front.dropped()
    );

    // A push's body is replayed too.
    e.work.commit("main", "two").unwrap();
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    let net = loopback();
    let stats = push(&spec(&e, &url, &net)).unwrap();
    assert!(
        stats.iter().any(|s| s.outcome == Outcome::Updated),
        "{stats:?}"
    );
}

/// An https front (certificate of a per-test CA for `upstream.test`) before
/// the env's server.
fn https_front(e: &Env) -> (TestCa, TlsFront, String) {
    let ca = TestCa::new(e.tmp.path()).unwrap();
    let front = TlsFront::start(e.server.addr(), &ca, &["upstream.test"]).unwrap();
    let url = front.repo_url("upstream.test", "up");
    (ca, front, url)
}

#[test]
fn the_ca_file_makes_an_https_pull_succeed() {
    let e = env();
    seed(&e);
    let (ca, front, url) = https_front(&e);
    let net = Net {
        ca_file: Some(ca.pem_file().to_owned()),
        ..loopback()
    };
    let stats = pull(&spec(&e, &url, &net)).unwrap();
    assert_eq!(stats.len(), 1);
    assert!(front.handshakes() >= 1);
    assert_eq!(
        list_refs(&e.hosted).unwrap(),
        list_refs(&e.upstream).unwrap()
    );
}

#[test]
fn an_https_upstream_of_an_unknown_ca_fails_with_certificate_invalid() {
    let e = env();
    seed(&e);
    let (_ca, front, url) = https_front(&e);
    let net = loopback();
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(FailureCode::CertificateInvalid.into()))
    );
    assert_eq!(front.handshakes(), 0);
    assert_eq!(e.server.request_count(), 0);
}

#[test]
fn an_https_certificate_for_another_name_fails_with_certificate_invalid() {
    let e = env();
    seed(&e);
    let (ca, front, _) = https_front(&e);
    // Same address, same CA, but the URL names a host the certificate
    // does not: the host name is verified although the address is pinned.
    let url = front.repo_url("other.test", "up");
    let net = Net {
        ca_file: Some(ca.pem_file().to_owned()),
        ..loopback()
    };
    assert_eq!(
        pull(&spec(&e, &url, &net)),
        Err(SyncError::Permanent(FailureCode::CertificateInvalid.into()))
    );
    assert_eq!(e.server.request_count(), 0);
}

#[test]
fn https_through_a_proxy_tunnels_to_the_pinned_address() {
    let e = env();
    seed(&e);
    let (ca, front, url) = https_front(&e);
    let proxy = ConnectProxy::start().unwrap();
    let net = Net {
        ca_file: Some(ca.pem_file().to_owned()),
        proxy: Some(proxy.url()),
        ..loopback()
    };
    let stats = pull(&spec(&e, &url, &net)).unwrap();
    assert_eq!(stats.len(), 1);
    let targets = proxy.targets();
    assert!(!targets.is_empty());
    // The policy's address of the target, never its name nor the proxy's.
    let pinned = format!("127.0.0.1:{}", front.addr().port());
    assert!(targets.iter().all(|t| *t == pinned), "{targets:?}");
    // TLS ran end to end through the tunnel (the proxy saw no plain HTTP).
    assert!(front.handshakes() >= 1);
}

/// A run against an upstream in `mode`, with a deadline and stall bound far
/// away, whose cancel flag is raised once the upstream has the request in
/// hand: it ends with `Cancelled` within a second of that.
fn assert_cancel_stops_io(
    mode: Hostile,
    direction: fn(&RunSpec<'_>) -> Result<Vec<depot_domain::RefStat>, SyncError>,
) {
    let e = env();
    seed(&e);
    ensure_repo(&e.hosted).unwrap();
    e.work.push_all_to(&e.hosted).unwrap();
    e.server.set_hostile(Some(mode.clone()));
    let url = e.server.repo_url("up");
    let net = loopback();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut s = spec(&e, &url, &net);
    s.deadline = Instant::now() + Duration::from_secs(120);
    s.cancel = Some(&cancel);
    let raised = std::thread::scope(|scope| {
        let (flag, server, transfer) = (&cancel, &e.server, &net.transfer);
        let raiser = scope.spawn(move || {
            // In flight: the upstream has the request, and for a body that
            // trickles, its first bytes have arrived.
            let in_flight = || {
                !server.seen_requests().is_empty()
                    && (mode != Hostile::DribbledAdvertisement || transfer.bytes_in() > 0)
            };
            let until = Instant::now() + Duration::from_secs(10);
            while !in_flight() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(in_flight(), "the run never got on the wire");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Instant::now()
        });
        assert_eq!(direction(&s), Err(SyncError::Cancelled));
        let ended = Instant::now();
        let raised = raiser.join().unwrap();
        ended.saturating_duration_since(raised)
    });
    assert!(raised < Duration::from_secs(1), "{raised:?} after the flag");
}

#[test]
fn a_cancelled_pull_stops_waiting_for_an_answer() {
    assert_cancel_stops_io(Hostile::NeverAnswer, pull);
}

#[test]
fn a_cancelled_pull_stops_reading_a_dribbled_body() {
    assert_cancel_stops_io(Hostile::DribbledAdvertisement, pull);
}

#[test]
fn a_cancelled_push_stops_waiting_for_an_answer() {
    assert_cancel_stops_io(Hostile::NeverAnswer, push);
}
