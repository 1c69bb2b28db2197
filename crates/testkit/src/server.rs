//! Smart-HTTP git server: a small actix-web front end that runs
//! `git http-backend` as a CGI program for every request.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::dev::ServerHandle;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{StatusCode, Version};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdout;

use crate::hostile::{Hostile, SeenRequest};

/// nginx's default, typical of git hosting front ends (actix's own is 5 s).
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(75);
use crate::per_repo::{Entered, RepoGauges};

/// Largest request body accepted; pushes in tests are tens of MB at most.
const MAX_BODY: usize = 1 << 30;
/// CGI response headers larger than this mean http-backend misbehaved.
const MAX_CGI_HEADER: usize = 64 * 1024;

/// Environment passed through to http-backend (and the hooks it runs); the
/// rest of the caller's environment is dropped so a stray `GIT_DIR` or
/// `HTTP_*` variable cannot change behaviour.
const PASS_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "LD_LIBRARY_PATH", "GIT_EXEC_PATH"];

#[derive(Debug, Clone)]
pub struct GitServerOptions {
    /// `GIT_PROJECT_ROOT`; repositories are `<root>/<name>.git` (bare).
    pub root: PathBuf,
    /// When set, every request must carry these credentials, else 401.
    pub basic_auth: Option<(String, String)>,
    /// `None` = `127.0.0.1:0`.
    pub listen: Option<SocketAddr>,
}

struct State {
    root: PathBuf,
    basic_auth: Option<(String, String)>,
    /// 0 = no fault injected.
    fault: AtomicU32,
    /// Milliseconds every request waits before it is answered; 0 = none.
    delay_ms: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// See `hostile`.
    hostile: std::sync::Mutex<Option<Hostile>>,
    seen: std::sync::Mutex<Vec<SeenRequest>>,
    connections: Arc<AtomicU64>,
    /// Every `Authorization` header received, in arrival order.
    authorizations: Mutex<Vec<String>>,
    per_repo: Arc<RepoGauges>,
}

/// A running server; dropping it stops the server, aborts in-flight requests
/// and closes the listening socket before `drop` returns.
pub struct GitHttpServer {
    addr: SocketAddr,
    state: Arc<State>,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GitHttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHttpServer")
            .field("addr", &self.addr)
            .field("root", &self.state.root)
            .finish_non_exhaustive()
    }
}

impl GitHttpServer {
    /// Bind the socket and start serving on a dedicated thread with its own
    /// runtime. Returns once the socket is bound (connections made from then
    /// on queue until accepted), so no waiting is needed before use.
    pub fn start(opts: GitServerOptions) -> Result<GitHttpServer> {
        Self::start_with_keep_alive(opts, DEFAULT_KEEP_ALIVE)
    }

    /// As [`GitHttpServer::start`], closing idle keep-alive connections
    /// after `keep_alive` (a server that drops connections a client still
    /// holds in its pool).
    pub fn start_with_keep_alive(
        opts: GitServerOptions,
        keep_alive: Duration,
    ) -> Result<GitHttpServer> {
        let root = std::path::absolute(&opts.root)
            .with_context(|| format!("resolving {}", opts.root.display()))?;
        let listen = opts
            .listen
            .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)));
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("binding git http server to {listen}"))?;
        let addr = listener.local_addr().context("reading bound address")?;

        let state = Arc::new(State {
            root,
            basic_auth: opts.basic_auth,
            fault: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            hostile: std::sync::Mutex::new(None),
            seen: std::sync::Mutex::new(Vec::new()),
            connections: Arc::new(AtomicU64::new(0)),
            authorizations: Mutex::new(Vec::new()),
            per_repo: Arc::default(),
        });
        let connections = Arc::clone(&state.connections);
        let data = web::Data::from(Arc::clone(&state));

        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("git-http-{}", addr.port()))
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .default_service(web::to(handle))
                    })
                    .workers(2)
                    .on_connect(move |_, _| {
                        connections.fetch_add(1, Ordering::SeqCst);
                    })
                    .keep_alive(keep_alive)
                    // Signals belong to the embedding test or binary.
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener);
                    let server = match server {
                        Ok(s) => s.run(),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(server.handle()));
                    if let Err(e) = server.await {
                        eprintln!("depot-testkit git server on {addr}: {e}");
                    }
                });
            })
            .context("spawning git http server thread")?;

        let handle = match rx.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e).context("starting git http server");
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("git http server thread exited during startup");
            }
        };
        Ok(GitHttpServer {
            addr,
            state,
            handle,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://IP:PORT/<name>.git`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base_url())
    }

    pub fn root(&self) -> &Path {
        &self.state.root
    }

    /// Fault injection: while `Some(code)`, every request is answered with that
    /// HTTP status and a short body, without running git. `Some(0)` means `None`;
    /// codes outside 100..=999 become 500.
    pub fn set_fault(&self, status: Option<u16>) {
        self.state
            .fault
            .store(status.map_or(0, u32::from), Ordering::SeqCst);
    }

    /// Delay injection: while `Some(d)`, every request arriving from now on
    /// waits `d` (asynchronously: other requests are served meanwhile)
    /// before it is answered, faulted or authenticated. A slow upstream for
    /// tests that need a run to be in flight for a while.
    pub fn set_delay(&self, delay: Option<Duration>) {
        let ms = delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The most requests the handler held at once so far (a request
    /// counts from its arrival until its response starts, delay included):
    /// with a delay set, how many clients were talking to it concurrently.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Switch a hostile mode on (`Some`) or off for requests arriving from
    /// now on.
    pub fn set_hostile(&self, mode: Option<Hostile>) {
        if let Ok(mut h) = self.state.hostile.lock() {
            *h = mode;
        }
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn seen_requests(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Every `Authorization` header received so far (lossily decoded), in
    /// arrival order, whatever the server answered: what a credential
    /// leak to this server would show.
    pub fn authorization_headers(&self) -> Vec<String> {
        self.state
            .authorizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The most requests for repository `name` (`<name>.git`) the server
    /// held at once so far, each counted until its response body is sent
    /// or the client went away: above one, two runs of it overlapped.
    pub fn max_in_flight_for(&self, name: &str) -> u64 {
        self.state.per_repo.max_in_flight(name)
    }

    /// Pacing: while `Some(rate)`, response bodies started from now on are
    /// sent at about `rate` bytes a second (a slow link: the client keeps
    /// receiving, so its progress callbacks keep running).
    pub fn set_pace(&self, bytes_per_second: Option<u64>) {
        self.state.per_repo.set_pace(bytes_per_second);
    }

    /// HTTP requests served so far, including faulted and 401 ones.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        // `stop` sends the command eagerly; the returned future only reports
        // completion, which joining the thread below observes anyway.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

/// Counts a request out on every return path.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    state.requests.fetch_add(1, Ordering::SeqCst);
    for value in req.headers().get_all(header::AUTHORIZATION) {
        state
            .authorizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _leaving = InFlight(&state.in_flight);
    let entered = state.per_repo.enter(req.path());
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(crate::hostile::seen(&req));
    }
    let hostile = state.hostile.lock().ok().and_then(|h| h.clone());
    if let Some(mode) = hostile
        && let Some(resp) = crate::hostile::respond(&mode, &req).await
    {
        return resp;
    }

    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay != 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let fault = state.fault.load(Ordering::SeqCst);
    if fault != 0 {
        let status = u16::try_from(fault)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return plain(status, "injected fault\n");
    }

    let user = match &state.basic_auth {
        None => None,
        Some((user, password)) => match check_basic_auth(&req, user, password) {
            true => Some(user.clone()),
            false => {
                return HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, r#"Basic realm="git""#))
                    .content_type("text/plain; charset=utf-8")
                    .body("authentication required\n");
            }
        },
    };

    let body = match read_body(payload).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };

    match run_backend(&req, &state, user.as_deref(), body, entered).await {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!(
                "depot-testkit git server: {} {}: {e:#}",
                req.method(),
                req.path()
            );
            plain(StatusCode::BAD_GATEWAY, "git http-backend failed\n")
        }
    }
}

async fn read_body(mut payload: web::Payload) -> std::result::Result<Bytes, HttpResponse> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            eprintln!("depot-testkit git server: reading request body: {e}");
            plain(StatusCode::BAD_REQUEST, "bad request body\n")
        })?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `Authorization` header value a client sends for `user:password`.
pub fn basic_auth_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn check_basic_auth(req: &HttpRequest, user: &str, password: &str) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (got_user, got_password) = (&decoded[..colon], &decoded[colon + 1..]);
    // Evaluate both so timing does not reveal which half mismatched.
    let user_ok = ct_eq(got_user, user.as_bytes());
    let password_ok = ct_eq(got_password, password.as_bytes());
    user_ok & password_ok
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CGI `PATH_INFO` is the percent-decoded path.
fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    Some(out)
}

async fn run_backend(
    req: &HttpRequest,
    state: &State,
    user: Option<&str>,
    body: Bytes,
    entered: Entered,
) -> Result<HttpResponse> {
    let root = state.root.as_path();
    let Some(path_info) = percent_decode(req.path()) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "bad path\n"));
    };

    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend").env_clear();
    for var in PASS_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    for (name, value) in std::env::vars_os() {
        // Keep GIT_TRACE* so server-side git can be traced when debugging.
        if name.as_bytes().starts_with(b"GIT_TRACE") {
            cmd.env(name, value);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_HTTP_MAX_REQUEST_BUFFER", "1g")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", req.method().as_str())
        .env("PATH_INFO", OsStr::from_bytes(&path_info))
        .env("QUERY_STRING", req.query_string())
        // http-backend refuses receive-pack without REMOTE_USER unless the
        // repo sets http.receivepack; always setting it keeps pushes working
        // against repos not made by `fixture::init_bare`.
        .env("REMOTE_USER", user.unwrap_or("anonymous"))
        .env("CONTENT_LENGTH", body.len().to_string());
    if user.is_some() {
        cmd.env("AUTH_TYPE", "Basic");
    }
    if let Some(peer) = req.peer_addr() {
        cmd.env("REMOTE_ADDR", peer.ip().to_string());
    }
    for (name, value) in req.headers() {
        if *name == header::AUTHORIZATION || *name == header::CONTENT_LENGTH {
            continue;
        }
        if *name == header::CONTENT_TYPE {
            cmd.env("CONTENT_TYPE", OsStr::from_bytes(value.as_bytes()));
            continue;
        }
        // Standard CGI mapping; this carries Git-Protocol (protocol v2) and
        // Content-Encoding (http-backend inflates gzip bodies itself).
        let var = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        cmd.env(var, OsStr::from_bytes(value.as_bytes()));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = cmd.spawn().context("spawning git http-backend")?;
    let mut stdin = child.stdin.take().context("child stdin missing")?;
    let stdout = child.stdout.take().context("child stdout missing")?;
    let stderr = child.stderr.take().context("child stderr missing")?;

    // Feed stdin concurrently with reading stdout so neither pipe can fill up
    // and deadlock the exchange.
    actix_web::rt::spawn(async move {
        // A broken pipe just means http-backend stopped reading early; it
        // reports the actual problem itself.
        match stdin.write_all(&body).await {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("depot-testkit git server: writing to http-backend: {e}");
            }
            _ => {}
        }
    });
    actix_web::rt::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("git http-backend: {line}");
        }
    });
    actix_web::rt::spawn(async move {
        let _ = child.wait().await;
    });

    let mut stdout = BufReader::new(stdout);
    let (status, headers) = read_cgi_headers(&mut stdout).await?;

    let mut resp = HttpResponse::build(status);
    let mut content_length = None;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            content_length = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        resp.append_header((name, value));
    }
    if content_length.is_none() && req.version() < Version::HTTP_11 {
        // Streaming without a length means chunked encoding, which HTTP/1.0
        // clients cannot parse; give them the whole body instead.
        let mut body = Vec::new();
        stdout
            .read_to_end(&mut body)
            .await
            .context("reading http-backend output")?;
        return Ok(resp.body(body));
    }
    let stream = body_stream(stdout, Arc::clone(&state.per_repo), entered);
    Ok(match content_length {
        Some(len) => resp.body(SizedStream::new(len, stream)),
        None => resp.streaming(stream),
    })
}

async fn read_cgi_headers(
    stdout: &mut BufReader<ChildStdout>,
) -> Result<(StatusCode, Vec<(HeaderName, HeaderValue)>)> {
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    let mut total = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = stdout
            .read_until(b'\n', &mut line)
            .await
            .context("reading http-backend output")?;
        if n == 0 {
            anyhow::bail!("http-backend exited before finishing its headers");
        }
        total += n;
        if total > MAX_CGI_HEADER {
            anyhow::bail!("http-backend headers exceed {MAX_CGI_HEADER} bytes");
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return Ok((status, headers));
        }
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            anyhow::bail!(
                "malformed http-backend header: {:?}",
                String::from_utf8_lossy(text)
            );
        };
        let name = &text[..colon];
        let value = text[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            let code = value
                .split(|&b| b == b' ')
                .next()
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok());
            status = code
                .with_context(|| format!("bad CGI status {:?}", String::from_utf8_lossy(value)))?;
            continue;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => eprintln!(
                "depot-testkit git server: dropping invalid http-backend header {:?}",
                String::from_utf8_lossy(text)
            ),
        }
    }
}

/// `entered` lives as long as the stream: the request counts as in flight
/// until its body is sent or dropped.
fn body_stream(
    stdout: BufReader<ChildStdout>,
    per_repo: Arc<RepoGauges>,
    entered: Entered,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + 'static {
    let pace = per_repo.chunk();
    futures_util::stream::unfold(Some((stdout, entered)), move |state| async move {
        let (mut reader, entered) = state?;
        let mut buf = BytesMut::with_capacity(pace.map_or(64 * 1024, |(len, _)| len));
        let read = match pace {
            Some((len, pause)) => {
                tokio::time::sleep(pause).await;
                (&mut reader).take(len as u64).read_buf(&mut buf).await
            }
            None => reader.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some((reader, entered)))),
            // Yield the error once, then end the stream.
            Err(e) => Some((Err(e), None)),
        }
    })
}
