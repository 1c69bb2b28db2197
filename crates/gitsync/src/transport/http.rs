//! The HTTP half of the transport: one ureq agent per run (pinned resolver,
//! counting connector, timeouts, proxy, CA roots) and the stream libgit2
//! reads and writes for each smart-HTTP exchange.
//!
//! - `GET info/refs` runs on libgit2's thread at its first read.
//! - A `POST` streams: libgit2's first write starts the request on a helper
//!   thread whose body reader takes chunks of at least [`CHUNK`] bytes from
//!   a bounded channel; libgit2's first read ends the body and waits for the
//!   answer, whose body it then reads directly. In memory at any time: at
//!   most [`CHUNK`] plus [`IN_FLIGHT`] chunks, plus the replay record.
//! - Retried once, on a fresh connection, when the connection broke before
//!   any byte of the answer arrived and everything sent so far is still
//!   held: all of a `GET`, the first [`REPLAY_CAP`] bytes of a `POST`
//!   (always enough for the commands and negotiation, which is where a
//!   connection the server closed while we computed is found out). ureq
//!   probes a pooled connection before reusing it, so most stale
//!   connections never get a request at all; the retry covers the race.
//! - A `401` is answered once per request with the run's credential, and
//!   only for the run's origin (requests elsewhere are refused outright);
//!   from then on the run sends it up front.
//! - Redirects are never followed (`redirect_refused`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream};
use git2::{ErrorClass, ErrorCode};
use ureq::http::{Response, Uri};
use ureq::tls::{PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    ConnectionDetails, Connector, NativeTlsConnector, NextTimeout, TcpConnector, Transport,
    TransportAdapter,
};
use ureq::{Body, BodyReader, SendBody};

use super::advert::Trimmer;
use super::{Net, Origin, RunCtx, Transfer, USER_AGENT};
use crate::error::{SyncError, from_http_status};
use depot_domain::FailureCode;

/// Smallest request body write handed to the HTTP client (except the last).
pub(crate) const CHUNK: usize = 256 * 1024;
/// Chunks queued between libgit2's thread and the sender thread.
const IN_FLIGHT: usize = 2;
/// A `POST` body is kept for a retry while it is at most this long.
const REPLAY_CAP: usize = 1 << 20;
/// Connect timeout cap; the run's deadline and stall bound may be shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn agent(net: &Net, origin: &Origin) -> Result<ureq::Agent, SyncError> {
    let roots = match &net.ca_file {
        None => RootCerts::PlatformVerifier,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|_| SyncError::of(FailureCode::CaFileInvalid))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(SyncError::of(FailureCode::CaFileInvalid));
            }
            RootCerts::Specific(Arc::new(certs))
        }
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(roots)
        .build();
    let tunnel = Tunnel {
        proxy: net.proxy.as_deref().map(proxy).transpose()?,
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(USER_AGENT)
        .tls_config(tls)
        // Never from the environment (ureq's default): `upstream.proxy` is
        // the only proxy, and it is `Tunnel`'s.
        .proxy(None)
        .timeout_connect(Some(net.stall_timeout.min(CONNECT_TIMEOUT)))
        .timeout_per_read(Some(net.stall_timeout))
        .timeout_per_write(Some(net.stall_timeout))
        .output_buffer_size(CHUNK)
        // One idle connection: a retry after a broken one cannot pick
        // another stale one from the pool.
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .build();
    let resolver = PinnedResolver {
        host: origin.host.clone(),
        port: origin.port,
        addrs: net.addrs.clone(),
    };
    let connector = Counting {
        inner: ().chain(tunnel).chain(TcpConnector::default()).chain(NativeTlsConnector::default()),
        transfer: Arc::clone(&net.transfer),
    };
    Ok(ureq::Agent::with_parts(config, connector, resolver))
}

/// `http://[user:password@]host:port` only.
fn proxy(raw: &str) -> Result<ProxyAt, SyncError> {
    let invalid = || SyncError::of(FailureCode::ProxyInvalid);
    let url = url::Url::parse(raw).map_err(|_| invalid())?;
    if url.scheme() != "http" {
        return Err(invalid());
    }
    let host = url.host_str().ok_or_else(invalid)?.to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let uri: Uri = format!("http://{host}:{port}")
        .parse()
        .map_err(|_| invalid())?;
    let authorization = (!url.username().is_empty()).then(|| {
        let raw = format!("{}:{}", url.username(), url.password().unwrap_or(""));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    });
    Ok(ProxyAt { uri, authorization })
}

#[derive(Debug)]
struct ProxyAt {
    uri: Uri,
    authorization: Option<String>,
}

/// HTTP `CONNECT` through `upstream.proxy` to the pinned address (never
/// the name: the policy is applied to the target, and a proxy resolving
/// the name itself would reopen the rebinding window). ureq's own proxy
/// support cannot do that: with `resolve_target` it sends the port twice
/// (`CONNECT 1.2.3.4:443:443`, ureq 3.5.2). TLS, when the URL is https,
/// runs inside the tunnel with the URL's host name, as without a proxy.
#[derive(Debug)]
struct Tunnel {
    proxy: Option<ProxyAt>,
}

/// Longest `CONNECT` answer head read.
const MAX_PROXY_HEAD: usize = 8192;

impl Connector<()> for Tunnel {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(proxy) = &self.proxy else {
            return Ok(None);
        };
        let target = *details.addrs.first().ok_or(ureq::Error::HostNotFound)?;
        let proxy_addrs =
            DefaultResolver::default().resolve(&proxy.uri, details.config, details.timeout)?;
        let hop = ConnectionDetails {
            uri: &proxy.uri,
            addrs: proxy_addrs,
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: details.register_shutdown.clone(),
        };
        let tcp = Connector::<()>::connect(&TcpConnector::default(), &hop, None)?
            .ok_or(ureq::Error::ConnectionFailed)?;
        let mut w = TransportAdapter::new(tcp.boxed(), details.current_time.clone());
        w.set_timeout(details.timeout);
        let mut head =
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT}\r\n");
        if let Some(auth) = &proxy.authorization {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        w.flush()?;
        // Byte by byte: what follows the head belongs to the tunnel.
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > MAX_PROXY_HEAD || w.read(&mut byte)? == 0 {
                return Err(ureq::Error::ConnectProxyFailed("no answer".into()));
            }
            answer.push(byte[0]);
        }
        let status = answer
            .split(|b| *b == b' ')
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok());
        if status != Some("200") {
            return Err(ureq::Error::ConnectProxyFailed("refused".into()));
        }
        Ok(Some(w.into_inner()))
    }
}

/// Answers the run's origin with the vetted addresses and nothing else.
#[derive(Debug)]
struct PinnedResolver {
    host: String,
    port: u16,
    addrs: Vec<IpAddr>,
}

impl Resolver for PinnedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
            .unwrap_or(0);
        if !host.eq_ignore_ascii_case(&self.host) || port != self.port {
            return Err(ureq::Error::HostNotFound);
        }
        let mut out = self.empty();
        for a in self.addrs.iter().take(16) {
            out.push(SocketAddr::new(*a, self.port));
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// The connector chain, counting the connections it opens (through a
/// proxy: one per tunnel).
#[derive(Debug)]
struct Counting<C> {
    inner: C,
    transfer: Arc<Transfer>,
}

impl<C: Connector<()>> Connector<()> for Counting<C> {
    type Out = CountedTransport<C::Out>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let out = self.inner.connect(details, chained)?;
        Ok(out.map(|inner| {
            self.transfer.connections.fetch_add(1, Ordering::Relaxed);
            CountedTransport {
                inner,
                transfer: Arc::clone(&self.transfer),
            }
        }))
    }
}

/// A connection counting its writes (see [`Transfer::socket_writes`]).
#[derive(Debug)]
struct CountedTransport<T> {
    inner: T,
    transfer: Arc<Transfer>,
}

impl<T: Transport> Transport for CountedTransport<T> {
    fn buffers(&mut self) -> &mut dyn ureq::unversioned::transport::Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.transfer.socket_writes.fetch_add(1, Ordering::Relaxed);
        self.transfer
            .socket_bytes_out
            .fetch_add(amount as u64, Ordering::Relaxed);
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

pub(super) struct Subtransport {
    ctx: Arc<RunCtx>,
}

impl Subtransport {
    pub(super) fn new(ctx: Arc<RunCtx>) -> Subtransport {
        Subtransport { ctx }
    }
}

/// What one exchange is.
#[derive(Clone, Copy)]
struct Exchange {
    path: &'static str,
    post: Option<&'static str>,
    accept: &'static str,
    pack: bool,
}

fn exchange(action: Service) -> Exchange {
    match action {
        Service::UploadPackLs => Exchange {
            path: "/info/refs?service=git-upload-pack",
            post: None,
            accept: "application/x-git-upload-pack-advertisement",
            pack: false,
        },
        Service::ReceivePackLs => Exchange {
            path: "/info/refs?service=git-receive-pack",
            post: None,
            accept: "application/x-git-receive-pack-advertisement",
            pack: false,
        },
        Service::UploadPack => Exchange {
            path: "/git-upload-pack",
            post: Some("application/x-git-upload-pack-request"),
            accept: "application/x-git-upload-pack-result",
            pack: true,
        },
        Service::ReceivePack => Exchange {
            path: "/git-receive-pack",
            post: Some("application/x-git-receive-pack-request"),
            accept: "application/x-git-receive-pack-result",
            pack: false,
        },
    }
}

impl SmartSubtransport for Subtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let ex = exchange(action);
        let full = format!("{}{}", url.trim_end_matches('/'), ex.path);
        let same_origin = url::Url::parse(&full)
            .ok()
            .and_then(|u| Origin::of(&u))
            .is_some_and(|o| o == self.ctx.origin);
        if !same_origin {
            let e = self.ctx.fail(SyncError::of(FailureCode::UpstreamRefused));
            return Err(git2::Error::new(
                ErrorCode::GenericError,
                ErrorClass::Net,
                e.to_string(),
            ));
        }
        let trim = match action {
            Service::ReceivePackLs => self
                .ctx
                .push_intent()
                .map(|i| Trimmer::new(i, Arc::clone(&self.ctx.transfer))),
            _ => None,
        };
        Ok(Box::new(Stream {
            ctx: Arc::clone(&self.ctx),
            url: full,
            ex,
            state: State::Idle,
            trim,
            raw: Vec::new(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct Stream {
    ctx: Arc<RunCtx>,
    url: String,
    ex: Exchange,
    state: State,
    /// A push's advertisement goes through this on its way to libgit2.
    trim: Option<Trimmer>,
    /// The trimmer's read buffer.
    raw: Vec<u8>,
}

/// Raw advertisement bytes read at once when trimming.
const TRIM_READ: usize = 64 * 1024;

enum State {
    Idle,
    Sending(Upload),
    Receiving {
        reader: BodyReader<'static>,
        received: u64,
    },
    Failed,
}

struct Upload {
    chunks: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    answer: Receiver<Result<Response<Body>, SyncError>>,
    thread: Option<JoinHandle<()>>,
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.ctx.check_cancel()?;
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Idle => {
                    let resp = if self.ex.post.is_some() {
                        let upload = self.start_upload()?;
                        self.finish_upload(upload)?
                    } else {
                        self.get()?
                    };
                    self.state = State::Receiving {
                        reader: resp.into_body().into_reader(),
                        received: 0,
                    };
                }
                State::Sending(upload) => {
                    let resp = self.finish_upload(upload)?;
                    self.state = State::Receiving {
                        reader: resp.into_body().into_reader(),
                        received: 0,
                    };
                }
                State::Receiving {
                    mut reader,
                    mut received,
                } => {
                    let Some(mut trim) = self.trim.take() else {
                        let n = self.read_body(&mut reader, &mut received, out)?;
                        self.state = State::Receiving { reader, received };
                        return Ok(n);
                    };
                    let mut raw = std::mem::take(&mut self.raw);
                    raw.resize(TRIM_READ, 0);
                    let n = loop {
                        let n = trim.take(out);
                        if n > 0 || out.is_empty() {
                            break n;
                        }
                        let got = self.read_body(&mut reader, &mut received, &mut raw)?;
                        if got == 0 {
                            trim.end();
                            break trim.take(out);
                        }
                        trim.feed(&raw[..got]);
                    };
                    self.trim = Some(trim);
                    self.raw = raw;
                    self.state = State::Receiving { reader, received };
                    return Ok(n);
                }
                State::Failed => {
                    return Err(self.ctx.fail(SyncError::of(FailureCode::NetworkError)));
                }
            }
        }
    }
}

/// Most bytes read past libgit2's end of an answer to get its connection
/// back into the pool (usually just the chunked terminator).
const MAX_DRAIN: u64 = 64 * 1024;

impl Drop for Stream {
    fn drop(&mut self) {
        // libgit2 stops reading at its own end marker (a flush packet),
        // before the HTTP body's end; ureq pools a connection only once its
        // body was read to the end. Finishing that read here keeps the
        // connection for the run's next request (no new TCP and TLS
        // handshake per request). Bounded by bytes and by the request's
        // own timeouts; errors only mean the connection is not reused.
        if let State::Receiving { reader, .. } = &mut self.state {
            let _ = io::copy(&mut reader.take(MAX_DRAIN), &mut io::sink());
        }
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.ctx.check_cancel()?;
        let mut upload = match std::mem::replace(&mut self.state, State::Failed) {
            State::Idle if self.ex.post.is_some() => self.start_upload()?,
            State::Sending(u) => u,
            _ => {
                return Err(self
                    .ctx
                    .fail(SyncError::of(FailureCode::UpstreamProtocolError)));
            }
        };
        upload.buf.extend_from_slice(data);
        if upload.buf.len() >= CHUNK {
            let chunk = std::mem::replace(&mut upload.buf, Vec::with_capacity(CHUNK));
            let sent = upload
                .chunks
                .as_ref()
                .is_some_and(|tx| tx.send(chunk).is_ok());
            if !sent {
                // The request ended early: its outcome says why.
                return Err(self.upload_failed(upload));
            }
        }
        self.state = State::Sending(upload);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// One read of the answer's body, counted and held to its cap.
    fn read_body(
        &self,
        reader: &mut BodyReader<'static>,
        received: &mut u64,
        out: &mut [u8],
    ) -> io::Result<usize> {
        if self.ctx.remaining().is_none() {
            return Err(self.ctx.fail(SyncError::of(FailureCode::Timeout)));
        }
        let n = reader.read(out).map_err(|e| self.ctx.fail(io_error(&e)))?;
        *received += n as u64;
        self.ctx
            .transfer
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        let (cap, code) = if self.ex.pack {
            (
                self.ctx.max_pack.unwrap_or(u64::MAX),
                FailureCode::PackTooLarge,
            )
        } else {
            (
                self.ctx.max_advertisement,
                FailureCode::AdvertisementTooLarge,
            )
        };
        if *received > cap {
            return Err(self.ctx.fail(SyncError::of(code)));
        }
        Ok(n)
    }

    fn credential_header(&self) -> Option<String> {
        self.ctx.credential.as_ref().map(|(user, pass)| {
            let raw = format!("{user}:{pass}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        })
    }

    fn get(&self) -> io::Result<Response<Body>> {
        let mut credentialed = self.ctx.send_credential.load(Ordering::Relaxed);
        let mut retried = false;
        loop {
            let Some(remaining) = self.ctx.remaining() else {
                return Err(self.ctx.fail(SyncError::of(FailureCode::Timeout)));
            };
            let mut req = self
                .ctx
                .agent
                .get(&self.url)
                .header("Accept", self.ex.accept)
                .header("Pragma", "no-cache");
            if credentialed && let Some(h) = self.credential_header() {
                req = req.header("Authorization", h);
            }
            let req = req.config().timeout_global(Some(remaining)).build();
            self.ctx.transfer.requests.fetch_add(1, Ordering::Relaxed);
            match req.call() {
                Ok(resp)
                    if resp.status().as_u16() == 401
                        && !credentialed
                        && self.ctx.credential.is_some() =>
                {
                    credentialed = true;
                    self.ctx.send_credential.store(true, Ordering::Relaxed);
                }
                Ok(resp) => {
                    return check_response(resp, self.ex.accept).map_err(|e| self.ctx.fail(e));
                }
                Err(e) if !retried && is_broken_connection(&e) => {
                    tracing::debug!("connection broke before the answer; retrying once");
                    retried = true;
                }
                Err(e) => return Err(self.ctx.fail(ureq_error(&e))),
            }
        }
    }

    fn start_upload(&self) -> io::Result<Upload> {
        let (chunks, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (answer_tx, answer) = sync_channel(1);
        let ctx = Arc::clone(&self.ctx);
        let url = self.url.clone();
        let ex = self.ex;
        let credential = self.credential_header();
        let thread = std::thread::Builder::new()
            .name("git-http-post".into())
            .spawn(move || {
                let answer = post(&ctx, &url, ex, credential, rx);
                let _ = answer_tx.send(answer);
            })
            .map_err(|_| self.ctx.fail(SyncError::of(FailureCode::InternalError)))?;
        Ok(Upload {
            chunks: Some(chunks),
            buf: Vec::with_capacity(CHUNK),
            answer,
            thread: Some(thread),
        })
    }

    fn finish_upload(&self, mut upload: Upload) -> io::Result<Response<Body>> {
        let rest = std::mem::take(&mut upload.buf);
        if let Some(tx) = upload.chunks.take() {
            // A refused send means the request already ended; its answer
            // below says how. The empty chunk marks the body's end.
            if !rest.is_empty() {
                let _ = tx.send(rest);
            }
            let _ = tx.send(Vec::new());
        }
        let answer = upload.answer.recv();
        if let Some(t) = upload.thread.take() {
            let _ = t.join();
        }
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.ctx.fail(e)),
            Err(_) => Err(self.ctx.fail(SyncError::of(FailureCode::InternalError))),
        }
    }

    fn upload_failed(&self, mut upload: Upload) -> io::Error {
        upload.chunks = None;
        match upload.answer.recv() {
            Ok(Err(e)) => self.ctx.fail(e),
            _ => self.ctx.fail(SyncError::of(FailureCode::NetworkError)),
        }
    }
}

/// The sender thread: one `POST`, retried once as described above.
fn post(
    ctx: &RunCtx,
    url: &str,
    ex: Exchange,
    credential: Option<String>,
    rx: Receiver<Vec<u8>>,
) -> Result<Response<Body>, SyncError> {
    let mut body = ReplayBody {
        rx,
        ctx,
        current: Vec::new(),
        pos: 0,
        record: Some(Vec::new()),
        recorded: 0,
        replay: None,
        ended: false,
    };
    let mut credentialed = ctx.send_credential.load(Ordering::Relaxed);
    let mut retried = false;
    loop {
        let remaining = ctx
            .remaining()
            .ok_or_else(|| SyncError::of(FailureCode::Timeout))?;
        let mut req = ctx
            .agent
            .post(url)
            .header("Content-Type", ex.post.unwrap_or_default())
            .header("Accept", ex.accept);
        if credentialed && let Some(h) = &credential {
            req = req.header("Authorization", h);
        }
        let req = req.config().timeout_global(Some(remaining)).build();
        ctx.transfer.requests.fetch_add(1, Ordering::Relaxed);
        match req.send(SendBody::from_reader(&mut body)) {
            Ok(resp)
                if resp.status().as_u16() == 401
                    && !credentialed
                    && credential.is_some()
                    && body.rewind() =>
            {
                credentialed = true;
                ctx.send_credential.store(true, Ordering::Relaxed);
            }
            Ok(resp) => return check_response(resp, ex.accept),
            Err(e) if !retried && is_broken_connection(&e) && body.rewind() => {
                tracing::debug!("connection broke before the answer; retrying once");
                retried = true;
            }
            Err(e) => return Err(ureq_error(&e)),
        }
    }
}

/// The request body as libgit2 writes it, kept for one replay while short.
struct ReplayBody<'a> {
    rx: Receiver<Vec<u8>>,
    ctx: &'a RunCtx,
    current: Vec<u8>,
    pos: usize,
    /// Every chunk received so far, while they add up to at most
    /// [`REPLAY_CAP`]; `None` once they do not.
    record: Option<Vec<Vec<u8>>>,
    recorded: usize,
    /// Replaying `record`: (chunk, offset).
    replay: Option<(usize, usize)>,
    /// libgit2 finished the body (sent the empty end chunk). A sender
    /// gone without it abandoned the body (the run failed mid-write): the
    /// request must fail, not go out truncated.
    ended: bool,
}

impl ReplayBody<'_> {
    /// Start over from the first byte; false if that is no longer held.
    fn rewind(&mut self) -> bool {
        if self.record.is_none() {
            return false;
        }
        self.replay = Some((0, 0));
        self.current.clear();
        self.pos = 0;
        true
    }
}

impl Read for ReplayBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let (Some((chunk, offset)), Some(record)) = (self.replay, &self.record) {
            if let Some(c) = record.get(chunk) {
                let n = (c.len() - offset).min(out.len());
                out[..n].copy_from_slice(&c[offset..offset + n]);
                self.replay = if offset + n == c.len() {
                    Some((chunk + 1, 0))
                } else {
                    Some((chunk, offset + n))
                };
                self.ctx
                    .transfer
                    .bytes_out
                    .fetch_add(n as u64, Ordering::Relaxed);
                return Ok(n);
            }
            self.replay = None;
        }
        // Fill `out` whole, across libgit2's chunks: the HTTP client frames
        // each read as one chunk on the wire, so a short read in the middle
        // of the body would go out as a small write.
        let mut filled = 0;
        while filled < out.len() {
            if self.pos == self.current.len() && !self.next_chunk()? {
                break;
            }
            let n = (self.current.len() - self.pos).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&self.current[self.pos..self.pos + n]);
            self.pos += n;
            filled += n;
        }
        self.ctx
            .transfer
            .bytes_out
            .fetch_add(filled as u64, Ordering::Relaxed);
        Ok(filled)
    }
}

impl ReplayBody<'_> {
    /// Wait for libgit2's next chunk; false once the body has ended.
    fn next_chunk(&mut self) -> io::Result<bool> {
        loop {
            if self.ended {
                return Ok(false);
            }
            // Waiting on our own side (libgit2 may be building the pack):
            // bounded by the deadline, not by the wire's stall bound, and
            // sliced to see the cancel flag.
            let Some(remaining) = self.ctx.remaining() else {
                return Err(io::ErrorKind::TimedOut.into());
            };
            if self.ctx.cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            match self.rx.recv_timeout(remaining.min(super::CANCEL_POLL)) {
                Ok(chunk) if chunk.is_empty() => self.ended = true,
                Ok(chunk) => {
                    self.ctx
                        .transfer
                        .body_writes
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(record) = &mut self.record {
                        if self.recorded + chunk.len() <= REPLAY_CAP {
                            self.recorded += chunk.len();
                            record.push(chunk.clone());
                        } else {
                            self.record = None;
                        }
                    }
                    self.current = chunk;
                    self.pos = 0;
                    return Ok(true);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("request body abandoned"));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

fn check_response(resp: Response<Body>, accept: &str) -> Result<Response<Body>, SyncError> {
    let status = resp.status().as_u16();
    if (300..400).contains(&status) {
        return Err(SyncError::of(FailureCode::RedirectRefused));
    }
    if !(200..300).contains(&status) {
        return Err(from_http_status(status));
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with(&accept.to_ascii_lowercase())
    {
        return Err(SyncError::of(FailureCode::InvalidUpstreamResponse));
    }
    Ok(resp)
}

/// A connection that died before any byte of the answer: worth one retry.
fn is_broken_connection(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn io_error(e: &io::Error) -> SyncError {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return ureq_error(inner);
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => SyncError::of(FailureCode::Timeout),
        io::ErrorKind::ConnectionRefused => SyncError::of(FailureCode::ConnectFailed),
        _ => SyncError::of(FailureCode::NetworkError),
    }
}

fn ureq_error(e: &ureq::Error) -> SyncError {
    use ureq::Error as E;
    match e {
        E::Timeout(_) | E::BodyStalled => SyncError::of(FailureCode::Timeout),
        E::Io(io) => io_error(io),
        E::HostNotFound => SyncError::of(FailureCode::UpstreamRefused),
        E::ConnectionFailed => SyncError::of(FailureCode::ConnectFailed),
        E::TooManyRedirects | E::RedirectFailed => SyncError::of(FailureCode::RedirectRefused),
        E::NativeTls(t) => {
            let msg = t.to_string().to_ascii_lowercase();
            if msg.contains("certificate") || msg.contains("verify") {
                SyncError::of(FailureCode::CertificateInvalid)
            } else {
                SyncError::of(FailureCode::TlsError)
            }
        }
        E::Tls(_) | E::TlsRequired => SyncError::of(FailureCode::TlsError),
        E::ConnectProxyFailed(_) => SyncError::of(FailureCode::ProxyFailed),
        E::InvalidProxyUrl => SyncError::of(FailureCode::ProxyInvalid),
        E::LargeResponseHeader(_, _) => SyncError::of(FailureCode::InvalidUpstreamResponse),
        E::BadUri(_) => SyncError::of(FailureCode::InvalidUrl),
        E::Protocol(_) => SyncError::of(FailureCode::UpstreamProtocolError),
        _ => SyncError::of(FailureCode::NetworkError),
    }
}
