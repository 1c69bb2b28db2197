//! Operations test support: extra gateways (scale-out, misconfigured
//! dependencies), the worker's admin port, JSON log lines, and a loopback
//! OTLP/HTTP sink that records what the processes export.

use super::{Proc, TestEnv, eventually, listening_port};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A gateway besides `env.gateway`, with its own log file and base URL.
pub struct ExtraGateway {
    pub proc: Proc,
    pub base_url: String,
}

impl TestEnv {
    /// Start another gateway on the same database and broker namespace;
    /// `extra_env` overrides the environment's settings for it alone.
    pub async fn start_extra_gateway(
        &self,
        label: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<ExtraGateway> {
        let log = self.dir.path().join(format!("{label}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = self.command("depot-gateway")?;
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawn depot-gateway")?;
        let proc = Proc {
            name: label.to_string(),
            child: Some(child),
            log: log.clone(),
        };
        let port = eventually(
            Duration::from_secs(20),
            "the extra gateway to listen",
            || {
                let log = log.clone();
                async move { Ok(listening_port(&std::fs::read_to_string(&log)?)) }
            },
        )
        .await?;
        Ok(ExtraGateway {
            proc,
            base_url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The base URL of worker `n`'s admin port (from its `metrics listening`
    /// log line).
    pub async fn worker_admin_url(&self, n: usize) -> Result<String> {
        let worker = self.workers.get(n).context("no such worker")?;
        admin_url(worker).await
    }

    /// Start a worker besides `env.workers` (not stopped by `cleanup`: drop
    /// it); `extra_env` overrides the environment's settings for it alone.
    pub fn start_extra_worker(&self, label: &str, extra_env: &[(&str, &str)]) -> Result<Proc> {
        let log = self.dir.path().join(format!("{label}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = self.command("depot-worker")?;
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawn depot-worker")?;
        Ok(Proc {
            name: label.to_string(),
            child: Some(child),
            log,
        })
    }

    /// Wait until every worker logged that it consumes jobs.
    pub async fn wait_for_workers_consuming(&self) -> Result<()> {
        for w in &self.workers {
            let log = w.log.clone();
            eventually(Duration::from_secs(30), "a worker to consume", || {
                let log = log.clone();
                async move {
                    Ok(json_lines(&std::fs::read_to_string(&log)?)
                        .iter()
                        .any(|v| v["message"] == "consuming sync jobs")
                        .then_some(()))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// GET a URL; status and body text.
    pub async fn get_text(&self, url: &str) -> Result<(u16, String)> {
        let res = self.http.get(url).send().await?;
        Ok((res.status().as_u16(), res.text().await?))
    }
}

/// The base URL of a worker's admin port, from its `metrics listening` log
/// line.
pub async fn admin_url(worker: &Proc) -> Result<String> {
    let log = worker.log.clone();
    let port = eventually(Duration::from_secs(20), "the worker's admin port", || {
        let log = log.clone();
        async move {
            Ok(json_lines(&std::fs::read_to_string(&log)?)
                .into_iter()
                .find(|v| v["message"] == "metrics listening")
                .and_then(|v| v["port"].as_u64()))
        }
    })
    .await?;
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Every JSON object line of a log text (other lines are skipped).
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// The value of a Prometheus sample `series` (name with its labels exactly
/// as exposed, e.g. `depot_outbox_backlog` or `x_total{a="b"}`).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Sum of every sample of metric `name` whose labels include all of
/// `labels` (`key="value"` strings).
pub fn sum_samples(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|lab| rest.contains(lab)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// (path, body) of every request an [`OtlpSink`] received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A loopback HTTP server that answers 200 to every POST and keeps the
/// bodies: an OTLP/HTTP collector stand-in.
pub struct OtlpSink {
    pub endpoint: String,
    bodies: Received,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    pub async fn start() -> Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let bodies: Received = Arc::default();
        let store = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(stream, store).await;
                });
            }
        });
        Ok(OtlpSink {
            endpoint,
            bodies,
            task,
        })
    }

    /// (path, body) of every request received so far.
    pub fn requests(&self) -> Vec<(String, Vec<u8>)> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Did any request body contain `needle`?
    pub fn received(&self, needle: &[u8]) -> bool {
        self.requests()
            .iter()
            .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, store: Received) -> Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                reader.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            if length > 64 << 20 {
                bail!("body too large");
            }
            body.resize(length, 0);
            reader.read_exact(&mut body).await?;
        }
        if let Ok(mut b) = store.lock() {
            b.push((path, body));
        }
        reader
            .get_mut()
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
    }
}
