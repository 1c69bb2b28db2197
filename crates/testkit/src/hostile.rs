//! Hostile upstreams, for the limits of a git HTTP client: modes of
//! [`GitHttpServer`](crate::GitHttpServer) that break the protocol's
//! unwritten promises on purpose (switched with `set_hostile`), and a
//! minimal HTTP `CONNECT` proxy that records what it was asked for.
//!
//! Every mode answers only the requests it names; the rest are served by
//! `git http-backend` as usual, so a mode can hit a client mid-protocol.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hostile {
    /// `GET info/refs` answers a valid advertisement that never ends.
    EndlessAdvertisement,
    /// `GET info/refs` answers a valid advertisement, one byte a second.
    DribbledAdvertisement,
    /// Every request is accepted and never answered.
    NeverAnswer,
    /// Every request is answered `302 Found` to `<location><path>`.
    Redirect(String),
}

/// What the server saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub user_agent: Option<String>,
    pub authorization: bool,
}

pub(crate) fn seen(req: &HttpRequest) -> SeenRequest {
    SeenRequest {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        authorization: req.headers().contains_key(header::AUTHORIZATION),
    }
}

fn is_advertisement(req: &HttpRequest) -> Option<&'static str> {
    if !req.path().ends_with("/info/refs") {
        return None;
    }
    match req.query_string() {
        "service=git-upload-pack" => Some("git-upload-pack"),
        "service=git-receive-pack" => Some("git-receive-pack"),
        _ => None,
    }
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

/// The advertisement's opening: service line, flush, first ref with
/// capabilities.
fn head(service: &str) -> String {
    format!(
        "{}0000{}",
        pkt(&format!("# service={service}\n")),
        pkt(&format!(
            "{} refs/heads/main\0report-status side-band-64k ofs-delta\n",
            "1".repeat(40)
        ))
    )
}

/// The answer for `req` under `mode`, or `None` to serve it normally.
pub(crate) async fn respond(mode: &Hostile, req: &HttpRequest) -> Option<HttpResponse> {
    match mode {
        Hostile::NeverAnswer => {
            std::future::pending::<()>().await;
            None
        }
        Hostile::Redirect(location) => Some(
            HttpResponse::build(StatusCode::FOUND)
                .insert_header((
                    header::LOCATION,
                    format!(
                        "{location}{}",
                        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
                    ),
                ))
                .finish(),
        ),
        Hostile::EndlessAdvertisement => {
            let service = is_advertisement(req)?;
            let first = Bytes::from(head(service));
            let stream = futures_util::stream::unfold(0u64, move |n| {
                let first = first.clone();
                async move {
                    let chunk = if n == 0 {
                        first
                    } else {
                        let mut s = String::with_capacity(64 * 1024 + 128);
                        let mut i = n * 1000;
                        while s.len() < 64 * 1024 {
                            s.push_str(&pkt(&format!("{} refs/heads/b{i}\n", "2".repeat(40))));
                            i += 1;
                        }
                        Bytes::from(s)
                    };
                    Some((Ok::<_, std::io::Error>(chunk), n + 1))
                }
            });
            Some(
                HttpResponse::Ok()
                    .content_type(format!("application/x-{service}-advertisement"))
                    .streaming(stream),
            )
        }
        Hostile::DribbledAdvertisement => {
            let service = is_advertisement(req)?;
            let body = format!("{}0000", head(service)).into_bytes();
            let stream = futures_util::stream::unfold(0usize, move |i| {
                let byte = body.get(i).copied();
                async move {
                    let byte = byte?;
                    if i > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from(vec![byte])), i + 1))
                }
            });
            Some(
                HttpResponse::Ok()
                    .content_type(format!("application/x-{service}-advertisement"))
                    .streaming(stream),
            )
        }
    }
}

/// A plain HTTP `CONNECT` proxy on loopback. Records each request's target
/// (`host:port`) and tunnels to it.
pub struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl ConnectProxy {
    pub fn start() -> Result<ConnectProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("proxy runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding proxy")?;
        let addr = listener.local_addr()?;
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&targets);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let _ = tunnel(client, seen).await;
                });
            }
        });
        Ok(ConnectProxy {
            addr,
            targets,
            _runtime: runtime,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `CONNECT` target asked for so far.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn tunnel(client: tokio::net::TcpStream, seen: Arc<Mutex<Vec<String>>>) -> Result<()> {
    let mut client = BufReader::new(client);
    let mut line = String::new();
    client.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    loop {
        let mut header = String::new();
        if client.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    if method != "CONNECT" {
        client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    if let Ok(mut s) = seen.lock() {
        s.push(target.to_owned());
    }
    let mut upstream = match tokio::net::TcpStream::connect(target).await {
        Ok(u) => u,
        Err(_) => {
            client
                .get_mut()
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    let buffered = client.buffer().to_vec();
    upstream.write_all(&buffered).await?;
    let mut client = client.into_inner();
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A front for a [`GitHttpServer`](crate::GitHttpServer) that keeps each
/// client connection open after its first answer but drops it, unanswered,
/// the moment a second request arrives on it: the race of a server closing
/// an idle keep-alive connection just as the client reuses it, on every
/// reuse. Bytes pass through unchanged otherwise.
pub struct DroppingFront {
    addr: SocketAddr,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl DroppingFront {
    pub fn start(backend: SocketAddr) -> Result<DroppingFront> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("front runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding front")?;
        let addr = listener.local_addr()?;
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::clone(&dropped);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = one_exchange(client, backend, count).await;
                });
            }
        });
        Ok(DroppingFront {
            addr,
            dropped,
            _runtime: runtime,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests dropped unanswered so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn one_exchange(
    client: tokio::net::TcpStream,
    backend: SocketAddr,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let upstream = tokio::net::TcpStream::connect(backend).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_answer = Arc::clone(&answered);
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen_answer.store(true, std::sync::atomic::Ordering::SeqCst);
            cw.write_all(&buf[..n]).await?;
        }
        anyhow::Ok(())
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = cr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if answered.load(std::sync::atomic::Ordering::SeqCst) {
            // A new request on a connection that already had its answer.
            dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            down.abort();
            return Ok(());
        }
        uw.write_all(&buf[..n]).await?;
    }
    let _ = down.await;
    Ok(())
}
