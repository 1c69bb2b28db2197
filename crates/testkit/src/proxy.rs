//! A TCP proxy between a process under test and a service it talks to
//! (Postgres, RabbitMQ, an upstream), which a test cuts and restores: a
//! network partition of one process on loopback, without touching the
//! shared service itself.
//!
//! Invariants: while cut, no byte passes in either direction. Every
//! connection open at the moment of the cut is closed on both sides (the
//! process sees its sockets fail, the service sees the client go), and a
//! connection made while cut is accepted and closed at once. Restoring lets
//! new connections through; the closed ones stay closed, as after a real
//! partition. Dropping the proxy closes everything before `drop` returns.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the proxy waits for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    /// Bumped at every cut: connections opened before it end.
    epoch: watch::Sender<u64>,
    accepted: AtomicU64,
}

/// A running proxy on `127.0.0.1:<port>` forwarding to one target.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("cut", &self.is_cut())
            .finish()
    }
}

impl TcpProxy {
    /// Listen on an ephemeral loopback port and forward every connection to
    /// `target`, on a dedicated thread with its own runtime (so sync and
    /// async tests alike can use it). Connections made once this returns
    /// queue until accepted.
    pub fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener =
            std::net::TcpListener::bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))
                .context("binding the proxy")?;
        listener
            .set_nonblocking(true)
            .context("making the proxy socket non-blocking")?;
        let addr = listener.local_addr().context("reading the proxy address")?;
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            epoch,
            accepted: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the proxy runtime")?;
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("depot-testkit proxy on {addr}: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, task_shared) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here ends every connection task, so
                // their sockets close before `drop` returns.
                drop(runtime);
            })
            .context("spawning the proxy thread")?;
        Ok(TcpProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Partition: close every open connection and refuse new ones until
    /// [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Let new connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, including those closed because the
    /// proxy was cut.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: pause, do not spin.
                eprintln!("depot-testkit proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Subscribe before checking `cut`, so a cut between the two still
        // reaches this connection.
        let epoch = shared.epoch.subscribe();
        if shared.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(forward(client, shared.target, epoch));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut epoch: watch::Receiver<u64>) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut server = tokio::select! {
        s = connect => match s {
            Ok(Ok(s)) => s,
            // The target is down: the client sees its connection close.
            _ => return,
        },
        _ = epoch.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        // The cut first: bytes that arrive together with it do not pass.
        biased;
        _ = epoch.changed() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
    // Cut, or one side closed: both sockets drop here.
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(s: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn a_cut_closes_open_connections_and_refuses_new_ones_until_restored() {
        let proxy = TcpProxy::start(echo_server()).unwrap();
        let mut open = std::net::TcpStream::connect(proxy.addr()).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut open).unwrap(), b"ping");

        proxy.cut();
        assert!(
            roundtrip(&mut open).is_err(),
            "open connection survived the cut"
        );
        let mut new = std::net::TcpStream::connect(proxy.addr()).unwrap();
        new.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            roundtrip(&mut new).is_err(),
            "new connection passed while cut"
        );

        proxy.restore();
        let mut again = std::net::TcpStream::connect(proxy.addr()).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(roundtrip(&mut again).unwrap(), b"ping");
        assert_eq!(proxy.accepted(), 3);
    }
}
