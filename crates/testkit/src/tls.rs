//! An https upstream on loopback: a private CA made per test, and a TLS
//! front that terminates https with a certificate of that CA and passes
//! the plain bytes to a [`GitHttpServer`](crate::GitHttpServer) (so every
//! hostile mode and counter of the server works over https too).
//!
//! Invariants:
//! - Nothing here is trusted by the system: a client verifies the front
//!   only with [`TestCa::pem_file`], and the CA's key never leaves memory.
//! - The server certificate names exactly the hosts given to
//!   [`TlsFront::start`] (DNS names and IP addresses), so a client that
//!   verifies the host name against it fails for any other name.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::X509;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// A certificate authority of one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem_file: PathBuf,
}

impl TestCa {
    /// A new CA; its certificate is written (PEM) to `dir/test-ca.pem`.
    pub fn new(dir: &Path) -> Result<TestCa> {
        let key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "depot-testkit CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).context("CA certificate")?;
        let pem_file = dir.join("test-ca.pem");
        std::fs::write(&pem_file, cert.pem()).context("writing CA certificate")?;
        Ok(TestCa {
            cert,
            key,
            pem_file,
        })
    }

    /// The CA certificate, PEM: what `upstream.ca_file` points at.
    pub fn pem_file(&self) -> &Path {
        &self.pem_file
    }

    /// A server certificate and key (PEM) for `hosts`, signed by this CA.
    fn issue(&self, hosts: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate().context("server key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("server params")?;
        for h in hosts {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into().context("server name")?),
            };
            params.subject_alt_names.push(san);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .context("server certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// https on loopback in front of a plain HTTP backend.
pub struct TlsFront {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    /// Listen on `127.0.0.1:0` with a certificate of `ca` for `hosts`;
    /// every connection is tunnelled to `backend` once its handshake
    /// succeeded.
    pub fn start(backend: SocketAddr, ca: &TestCa, hosts: &[&str]) -> Result<TlsFront> {
        let (cert_pem, key_pem) = ca.issue(hosts)?;
        let mut builder =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).context("TLS acceptor")?;
        let cert = X509::from_pem(cert_pem.as_bytes()).context("server certificate")?;
        let key = PKey::private_key_from_pem(key_pem.as_bytes()).context("server key")?;
        builder
            .set_certificate(&cert)
            .context("server certificate")?;
        builder.set_private_key(&key).context("server key")?;
        builder.check_private_key().context("key matches")?;
        let acceptor = Arc::new(builder.build());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("TLS front runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding TLS front")?;
        let addr = listener.local_addr()?;
        let handshakes = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&handshakes);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = Arc::clone(&acceptor);
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = terminate(client, backend, &acceptor, &count).await;
                });
            }
        });
        Ok(TlsFront {
            addr,
            handshakes,
            _runtime: runtime,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<host>:<port>/<name>.git`.
    pub fn repo_url(&self, host: &str, name: &str) -> String {
        format!("https://{host}:{}/{name}.git", self.addr.port())
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
}

async fn terminate(
    client: tokio::net::TcpStream,
    backend: SocketAddr,
    acceptor: &SslAcceptor,
    handshakes: &AtomicU64,
) -> Result<()> {
    let ssl = Ssl::new(acceptor.context())?;
    let mut tls = tokio_openssl::SslStream::new(ssl, client)?;
    Pin::new(&mut tls).accept().await?;
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut upstream = tokio::net::TcpStream::connect(backend).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut upstream).await?;
    Ok(())
}
