#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end checks of the smart-HTTP server using the real git CLI.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use depot_testkit::fixture::{self, WorkRepo};
use depot_testkit::{GitHttpServer, GitServerOptions};
use tempfile::TempDir;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

struct Setup {
    _dir: TempDir,
    scratch: PathBuf,
    bare: PathBuf,
    work: WorkRepo,
    main: String,
    server: GitHttpServer,
}

fn setup(auth: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bare = root.join("demo.git");
    fixture::init_bare(&bare).unwrap();
    let work = WorkRepo::new(&dir.path().join("work")).unwrap();
    work.commit("main", "first").unwrap();
    let main = work.commit("main", "second").unwrap();
    work.commit("feature/x", "feature").unwrap();
    work.tag("v1.0", &main, true).unwrap();
    work.push_all_to(&bare).unwrap();
    let server = GitHttpServer::start(GitServerOptions {
        root,
        basic_auth: auth.then(|| (USER.to_owned(), PASSWORD.to_owned())),
        listen: None,
    })
    .unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    Setup {
        _dir: dir,
        scratch,
        bare,
        work,
        main,
        server,
    }
}

fn url_with(server: &GitHttpServer, user: &str, password: &str) -> String {
    let base = server.repo_url("demo");
    base.replacen("http://", &format!("http://{user}:{password}@"), 1)
}

fn authed_url(s: &Setup) -> String {
    url_with(&s.server, USER, PASSWORD)
}

fn git(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = fixture::git_command();
    cmd.current_dir(cwd).args(args);
    cmd.output().unwrap()
}

fn git_ok(cwd: &Path, args: &[&str]) -> String {
    let out = git(cwd, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ls_remote_with_correct_credentials_lists_refs() {
    let s = setup(true);
    let listing = git_ok(&s.scratch, &["ls-remote", &authed_url(&s)]);
    assert!(
        listing.contains(&format!("{}\trefs/heads/main", s.main)),
        "{listing}"
    );
    assert!(listing.contains("\trefs/heads/feature/x"), "{listing}");
    let tag = fixture::rev_parse(&s.bare, "refs/tags/v1.0").unwrap();
    assert!(
        listing.contains(&format!("{tag}\trefs/tags/v1.0\n")),
        "{listing}"
    );
    assert!(s.server.request_count() >= 1);
}

#[test]
fn wrong_or_missing_credentials_get_401() {
    let s = setup(true);
    let before = s.server.request_count();
    let out = git(
        &s.scratch,
        &["ls-remote", &url_with(&s.server, USER, "wrong")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Authentication failed"),
        "{}",
        stderr(&out)
    );

    let out = git(&s.scratch, &["ls-remote", &s.server.repo_url("demo")]);
    assert!(!out.status.success());
    assert!(s.server.request_count() > before);

    // The challenge itself, without git in between.
    let resp = raw_get(
        s.server.addr(),
        "/demo.git/info/refs?service=git-upload-pack",
    );
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"git\""),
        "{resp}"
    );
}

#[test]
fn clone_then_push_new_branch() {
    let s = setup(true);
    let clone = s.scratch.join("clone");
    git_ok(
        &s.scratch,
        &["clone", "-q", &authed_url(&s), clone.to_str().unwrap()],
    );
    assert_eq!(fixture::rev_parse(&clone, "HEAD").unwrap(), s.main);
    assert_eq!(fixture::rev_parse(&clone, "v1.0^{commit}").unwrap(), s.main);

    let new = s.work.commit("topic", "topic work").unwrap();
    git_ok(
        s.work.path(),
        &["push", "-q", &authed_url(&s), "topic:refs/heads/topic"],
    );
    let refs = fixture::list_refs(&s.bare).unwrap();
    assert!(
        refs.contains(&("refs/heads/topic".to_owned(), new)),
        "{refs:?}"
    );
}

#[test]
fn large_chunked_push_lands() {
    let s = setup(true);
    // Incompressible and above git's 1 MiB http.postBuffer, so the client
    // streams the pack with chunked transfer encoding.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(s.work.path().join("big.bin"), data).unwrap();
    let id = s.work.commit("big", "big blob").unwrap();
    git_ok(s.work.path(), &["push", "-q", &authed_url(&s), "big"]);
    assert_eq!(fixture::rev_parse(&s.bare, "refs/heads/big").unwrap(), id);
}

#[test]
fn anonymous_server_accepts_push() {
    let s = setup(false);
    let new = s.work.commit_on("anon", Some("main"), "anon").unwrap();
    git_ok(
        s.work.path(),
        &["push", "-q", &s.server.repo_url("demo"), "anon"],
    );
    assert_eq!(fixture::rev_parse(&s.bare, "refs/heads/anon").unwrap(), new);
}

#[test]
fn hook_declines_protected_ref_while_others_land() {
    let s = setup(true);
    fixture::refuse_refs_hook(&s.bare, &["refs/heads/protected"]).unwrap();
    let out = git(
        s.work.path(),
        &[
            "push",
            &authed_url(&s),
            "main:refs/heads/protected",
            "main:refs/heads/allowed",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("hook declined"), "{err}");
    assert!(err.contains("protected by policy"), "{err}");
    let refs = fixture::list_refs(&s.bare).unwrap();
    assert!(refs.contains(&("refs/heads/allowed".to_owned(), s.main.clone())));
    assert!(!refs.iter().any(|(name, _)| name == "refs/heads/protected"));
}

#[test]
fn injected_fault_fails_requests_until_cleared() {
    let s = setup(true);
    s.server.set_fault(Some(503));
    let before = s.server.request_count();
    let out = git(&s.scratch, &["ls-remote", &authed_url(&s)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    assert!(s.server.request_count() > before);

    s.server.set_fault(None);
    git_ok(&s.scratch, &["ls-remote", &authed_url(&s)]);
}

#[test]
fn injected_delay_slows_every_request_without_serialising_them() {
    let s = setup(false);
    let delay = Duration::from_millis(1500);
    s.server.set_delay(Some(delay));
    let started = Instant::now();
    // More concurrent requests than the server has worker threads: they
    // all wait at once, so the batch takes about one delay, not several.
    let addr = s.server.addr();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || raw_get(addr, "/demo.git/info/refs?service=git-upload-pack"))
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().starts_with("HTTP/1.1 200"));
    }
    let took = started.elapsed();
    assert!(took >= delay, "{took:?}");
    assert!(took < delay * 3, "requests were serialised: {took:?}");

    s.server.set_delay(None);
    let started = Instant::now();
    git_ok(&s.scratch, &["ls-remote", &s.server.repo_url("demo")]);
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());
}

#[test]
fn gzip_encoded_fetch_request_is_understood() {
    let s = setup(true);
    // Enough wanted refs that the git CLI gzips its upload-pack request
    // (it does so above 1 KiB); protocol v0 and v2 both.
    for i in 0..40 {
        s.work
            .commit_on(&format!("many/{i}"), Some("main"), &format!("branch {i}"))
            .unwrap();
    }
    s.work.push_all_to(&s.bare).unwrap();
    for version in ["0", "2"] {
        let clone = s.scratch.join(format!("mirror-v{version}"));
        git_ok(
            &s.scratch,
            &[
                "-c",
                &format!("protocol.version={version}"),
                "clone",
                "-q",
                "--mirror",
                &authed_url(&s),
                clone.to_str().unwrap(),
            ],
        );
        assert_eq!(
            fixture::list_refs(&clone).unwrap(),
            fixture::list_refs(&s.bare).unwrap()
        );
    }
}

#[test]
fn server_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GitHttpServer>();
}

#[tokio::test]
async fn works_inside_tokio_runtime_and_stops_on_drop() {
    let s = setup(false);
    let addr = s.server.addr();
    assert_eq!(s.server.base_url(), format!("http://{addr}"));
    assert_eq!(s.server.repo_url("x"), format!("http://{addr}/x.git"));
    assert!(s.server.root().ends_with("root"));
    let resp = raw_get(addr, "/demo.git/info/refs?service=git-upload-pack");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("application/x-git-upload-pack-advertisement"),
        "{resp}"
    );

    // HTTP/1.0 clients cannot take chunked bodies.
    let resp = raw_get_http10(addr, "/demo.git/info/refs?service=git-upload-pack");
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("chunked"), "{resp}");
    assert!(resp.ends_with("0000"), "{resp}");

    let Setup { server, _dir, .. } = s;
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after drop"
    );
}

/// Minimal HTTP/1.1 GET so tests can look at raw status lines and headers.
fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn raw_get_http10(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}
