//! A front for a [`GitHttpServer`](crate::GitHttpServer) that records how
//! clients frame their request bodies: the size of every HTTP/1.1 chunk
//! (`Transfer-Encoding: chunked`) or the `Content-Length` of a sized body,
//! per request target. The server behind it reassembles bodies, so only
//! the raw bytes show whether a client writes a pack in large pieces.
//!
//! Invariants: bytes pass through unchanged in both directions; a request
//! the front cannot parse is still forwarded (it just stops recording on
//! that connection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;

/// How one request's body was framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFraming {
    /// `METHOD path?query`.
    pub request: String,
    /// Sizes of the body's chunks in order (the closing empty chunk left
    /// out); a sized body is one entry.
    pub chunks: Vec<u64>,
}

type Log = Arc<Mutex<Vec<BodyFraming>>>;

pub struct FramingFront {
    addr: SocketAddr,
    log: Log,
    _runtime: tokio::runtime::Runtime,
}

impl FramingFront {
    pub fn start(backend: SocketAddr) -> Result<FramingFront> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("framing front runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding framing front")?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::default();
        let shared = Arc::clone(&log);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = relay(client, backend, log).await;
                });
            }
        });
        Ok(FramingFront {
            addr,
            log,
            _runtime: runtime,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request body seen so far, in arrival order.
    pub fn bodies(&self) -> Vec<BodyFraming> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn relay(client: tokio::net::TcpStream, backend: SocketAddr, log: Log) -> Result<()> {
    let upstream = tokio::net::TcpStream::connect(backend).await?;
    let (cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let down = tokio::spawn(async move { tokio::io::copy(&mut ur, &mut cw).await });
    let mut cr = BufReader::with_capacity(1 << 20, cr);
    let parsed = requests(&mut cr, &mut uw, &log).await;
    if parsed.is_err() {
        // Not HTTP as expected: pass the rest through untouched.
        tokio::io::copy(&mut cr, &mut uw).await?;
    }
    let _ = uw.shutdown().await;
    let _ = down.await;
    Ok(())
}

/// Forward requests one by one, recording their bodies' framing. Ends at
/// the client's end of stream.
async fn requests<R: AsyncRead + Unpin>(
    cr: &mut BufReader<R>,
    uw: &mut OwnedWriteHalf,
    log: &Log,
) -> Result<()> {
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            if cr.read_until(b'\n', &mut head).await? == 0 {
                if before == 0 {
                    return Ok(());
                }
                bail!("truncated head");
            }
            if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                break;
            }
        }
        uw.write_all(&head).await?;
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request = lines
            .next()
            .and_then(|l| l.rsplit_once(' ').map(|(r, _)| r.to_owned()))
            .unwrap_or_default();
        let mut chunked = false;
        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if name == "content-length" {
                length = value.parse::<u64>().ok();
            }
        }
        let mut chunks = Vec::new();
        if chunked {
            loop {
                let mut size_line = Vec::new();
                cr.read_until(b'\n', &mut size_line).await?;
                uw.write_all(&size_line).await?;
                let size_text = String::from_utf8_lossy(&size_line);
                let size = u64::from_str_radix(
                    size_text.trim().split(';').next().unwrap_or("").trim(),
                    16,
                )
                .context("chunk size")?;
                if size == 0 {
                    // Trailers (none expected) up to the empty line.
                    loop {
                        let mut line = Vec::new();
                        cr.read_until(b'\n', &mut line).await?;
                        uw.write_all(&line).await?;
                        if line == b"\r\n" || line.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                chunks.push(size);
                // The chunk's data and its CRLF.
                copy_exact(cr, uw, size + 2).await?;
            }
        } else if let Some(n) = length.filter(|n| *n > 0) {
            chunks.push(n);
            copy_exact(cr, uw, n).await?;
        }
        if (chunked || length.is_some_and(|n| n > 0))
            && let Ok(mut l) = log.lock()
        {
            l.push(BodyFraming { request, chunks });
        }
    }
}

async fn copy_exact<R: AsyncRead + Unpin>(
    cr: &mut BufReader<R>,
    uw: &mut OwnedWriteHalf,
    n: u64,
) -> Result<()> {
    let copied = tokio::io::copy(&mut (&mut *cr).take(n), uw).await?;
    if copied != n {
        bail!("body cut short");
    }
    Ok(())
}
