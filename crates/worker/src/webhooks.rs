//! Webhook delivery: consume delivery jobs from their own queue
//! (`ns.webhook.deliveries`) with their own concurrency
//! (`webhooks.concurrency`), so a slow or dead receiver never delays a sync.
//!
//! Invariants:
//! - at least once: a delivery stays `pending` in Postgres until an attempt
//!   is recorded; a lost message or a worker killed mid-delivery is picked
//!   up again by the relay (`depot_store::webhooks::take_due`) once due and
//!   its lease has run out;
//! - in order: `depot_store::webhooks::claim` refuses a delivery while an
//!   earlier one of the same target and sync (or repository) is pending;
//!   when one is done, the next is published at once;
//! - the URL policy is applied at every attempt, and the request goes only
//!   to the address that passed it (pinned, no second lookup), follows no
//!   redirect, and reads at most `webhooks.max_response_bytes` of the answer;
//! - one target gets at most `webhooks.per_target_concurrency` of a
//!   worker's slots; a job over that is left to the relay's next pass.

use crate::Ctx;
use crate::consumer::{Jobs, Queue};
use depot_broker::{BasicAckOptions, BasicRejectOptions, Delivery};
use depot_contracts::sync_v1::JobKind;
use depot_secrets::Credential;
use depot_store::webhooks::{Claim, Claimed, Outcome};
use hmac::Mac;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The signature header Mesa's SDK verifies.
pub(crate) const SIGNATURE_HEADER: &str = "x-mesa-signature";

/// `t=<unix seconds>,sha256=<hex HMAC-SHA256 of "<t>." + body>`, the key
/// being the secret's UTF-8 bytes.
pub(crate) fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},sha256={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[allow(clippy::panic)] // HMAC accepts every key length
fn unreachable_hmac() -> ! {
    panic!("HMAC rejected a key")
}

/// Deliveries in flight per target, in this process.
#[derive(Default)]
struct InFlight(Mutex<HashMap<String, u16>>);

impl InFlight {
    fn try_take(self: &Arc<Self>, target: &str, cap: u16) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(target.to_string()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            set: self.clone(),
            target: target.to_string(),
        })
    }
}

struct Slot {
    set: Arc<InFlight>,
    target: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.target);
            }
        }
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    LazyLock::force(&METRICS);
    let kind = Arc::new(Deliveries {
        ctx: ctx.clone(),
        in_flight: Arc::new(InFlight::default()),
    });
    crate::consumer::run(ctx, kind, shutdown).await;
}

/// Delivery jobs for the shared consuming loop (crate::consumer).
struct Deliveries {
    ctx: Arc<Ctx>,
    in_flight: Arc<InFlight>,
}

impl Jobs for Deliveries {
    const WHAT: &'static str = "webhook deliveries";
    const QUEUE: Queue = Queue::Webhooks;

    fn tag(&self) -> String {
        format!("{}-webhooks", crate::worker_identity())
    }

    fn concurrency(&self) -> u16 {
        self.ctx.settings.webhooks.concurrency
    }

    fn handle(
        self: &Arc<Self>,
        delivery: Delivery,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move { handle(&this.ctx, &this.in_flight, delivery).await }
    }

    /// An attempt cut short stays pending under its lease and is sent again
    /// once the lease ran out (at least once); no need to wait long.
    async fn drain(&self, tasks: &mut JoinSet<()>) {
        let wait = Duration::from_millis(self.ctx.settings.webhooks.timeout_ms);
        let _ =
            tokio::time::timeout(wait, async { while tasks.join_next().await.is_some() {} }).await;
    }
}

async fn handle(ctx: &Ctx, in_flight: &Arc<InFlight>, delivery: Delivery) {
    let job = match depot_broker::decode_job(&delivery) {
        Ok(job) if job.kind() == JobKind::WebhookDelivery => job,
        Ok(_) | Err(_) => {
            tracing::error!("not a webhook delivery job; dead-lettering it");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    if let Err(e) = deliver(ctx, in_flight, &job.delivery_id).await {
        // Nothing recorded: the delivery stays pending and the relay's pass
        // publishes it again; this message is done either way.
        tracing::warn!(delivery_id = %job.delivery_id, error = %e, "webhook delivery not recorded");
    }
    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
}

async fn deliver(
    ctx: &Ctx,
    in_flight: &Arc<InFlight>,
    delivery_id: &str,
) -> Result<(), depot_store::StoreError> {
    let settings = &ctx.settings.webhooks;
    let client = ctx.pool.get().await?;
    let Some(target_id) = depot_store::webhooks::target_of(&client, delivery_id).await? else {
        return Ok(());
    };
    let Some(_slot) = in_flight.try_take(&target_id, settings.per_target_concurrency) else {
        tracing::debug!(delivery_id, target_id, "target busy; left to the relay");
        return Ok(());
    };
    // The lease outlives the attempt's timeout, so a live attempt is never
    // taken over; a killed worker's delivery is free again shortly after.
    let lease = Duration::from_millis(settings.timeout_ms) + Duration::from_secs(5);
    let claimed = match depot_store::webhooks::claim(&client, delivery_id, lease).await? {
        Claim::Claimed(c) => c,
        Claim::NotNow => return Ok(()),
    };
    drop(client);
    let attempt = attempt(ctx, &claimed).await;
    let outcome = match &attempt {
        Ok(code) if (200..300).contains(code) => Outcome::Succeeded,
        _ if claimed.attempt >= i32::try_from(settings.max_attempts).unwrap_or(i32::MAX) => {
            Outcome::Failed
        }
        _ => Outcome::Retry(depot_domain::retry::backoff(
            settings.retry_base_ms,
            settings.retry_max_ms,
            u32::try_from(claimed.attempt).unwrap_or(1),
            rand::random::<f64>(),
        )),
    };
    let (code, error) = match &attempt {
        Ok(code) if (200..300).contains(code) => (Some(*code), None),
        Ok(code) => (
            Some(*code),
            Some(format!("http_status: receiver answered {code}")),
        ),
        Err(e) => (None, Some(e.clone())),
    };
    record_metrics(&claimed, outcome);
    tracing::info!(
        delivery_id,
        event_id = %claimed.event.id,
        event_type = %claimed.event.kind,
        attempt = claimed.attempt,
        status_code = code,
        error = error.as_deref(),
        outcome = ?outcome,
        "webhook delivery attempt"
    );
    let client = ctx.pool.get().await?;
    let next = depot_store::webhooks::finish(
        &client,
        delivery_id,
        claimed.attempt,
        outcome,
        code,
        error.as_deref(),
    )
    .await?;
    if let Some(next) = next
        && let Some(broker) = ctx.broker.get()
    {
        match broker.publish(&depot_broker::delivery_job(&next)).await {
            Ok(()) => depot_store::webhooks::touch_published(&client, &next).await?,
            // The relay's pass publishes it.
            Err(e) => {
                tracing::warn!(delivery_id = %next, error = %e, "cannot publish next delivery")
            }
        }
    }
    Ok(())
}

/// One attempt: the status code the receiver answered, or why there was
/// none (refused by the policy, unreachable, timed out). The policy comes
/// first: a refused URL is never connected to, whatever else is wrong.
async fn attempt(ctx: &Ctx, claimed: &Claimed) -> Result<i32, String> {
    let settings = &ctx.settings.webhooks;
    let url = claimed.url.clone();
    let policy = ctx.settings.upstream.clone();
    let vetted = tokio::task::spawn_blocking(move || {
        crate::upstream::vet(&url, &policy, &crate::upstream::SystemResolver)
    })
    .await
    .map_err(|e| format!("url_check_failed: {e}"))?
    .map_err(|e| e.to_string().replacen("upstream_", "url_", 1))?;
    let parsed = url::Url::parse(&claimed.url).map_err(|e| format!("url_refused: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let Some(ip) = vetted.first() else {
        return Err("url_unresolvable".into());
    };
    let secret = match ctx.credential_key.open_credential(
        &claimed.sealed_secret,
        &claimed.target_id,
        depot_store::webhooks::SECRET_ORIGIN,
    ) {
        Ok(Credential::Token { token, .. }) => token,
        Ok(_) => return Err("secret_unreadable: not a webhook secret".into()),
        Err(e) => return Err(format!("secret_unreadable: {e}")),
    };
    let body = depot_store::webhooks::envelope(&claimed.event, &settings.repo_url_base)
        .map_err(|e| format!("event_unreadable: {e}"))?
        .to_string();
    let timeout = Duration::from_millis(settings.timeout_ms);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        // The address that passed the policy, never a second lookup.
        .resolve(&host, SocketAddr::new(*ip, port))
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let now = chrono::Utc::now().timestamp();
    let sent = async {
        let mut response = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "depot-webhooks")
            .header(SIGNATURE_HEADER, signature(&secret, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("unreachable: {}", without_url(&e)))?;
        let status = i32::from(response.status().as_u16());
        // Read (and drop) a bounded part of the answer, so a receiver
        // cannot make us hold a connection open by streaming forever.
        let mut read = 0usize;
        while read < settings.max_response_bytes {
            match response.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        Ok(status)
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: no answer within {} ms",
            settings.timeout_ms
        )),
    }
}

/// reqwest's error text names the URL, which may carry a token in its
/// path: keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirect"
    } else {
        "request failed"
    };
    kind.to_string()
}

struct DeliveryMetrics {
    deliveries: IntCounterVec,
    lag: HistogramVec,
    oldest_pending: prometheus::Gauge,
}

/// The age of the oldest pending delivery, read at scrape time (the whole
/// deployment's: aggregate with `max`).
pub(crate) async fn refresh_gauges(ctx: &Ctx) {
    let read = async {
        let client = ctx.pool.get().await.ok()?;
        depot_store::webhooks::oldest_pending_age(&client)
            .await
            .ok()
    };
    if let Ok(Some(age)) = tokio::time::timeout(Duration::from_secs(2), read).await {
        METRICS.oldest_pending.set(age.unwrap_or(0.0));
    }
}

const OUTCOMES: &[&str] = &["succeeded", "retried", "failed"];

static METRICS: LazyLock<DeliveryMetrics> = LazyLock::new(DeliveryMetrics::new);

impl DeliveryMetrics {
    #[allow(clippy::expect_used)] // fixed, valid metric definitions
    fn new() -> Self {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "depot_webhook_delivery_attempts_total",
                "Webhook delivery attempts by outcome (succeeded; retried: failed, tried again later; failed: attempts spent)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "depot_webhook_delivery_lag_seconds",
                "Time from an event to its successful delivery",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
                86400.0,
            ]),
            &["event_type"],
        )
        .expect("metric");
        let oldest_pending = prometheus::Gauge::new(
            "depot_webhook_oldest_pending_seconds",
            "Age of the oldest pending webhook delivery (0: none)",
        )
        .expect("metric");
        let registry = crate::metrics::registry();
        registry
            .register(Box::new(oldest_pending.clone()))
            .expect("register");
        registry
            .register(Box::new(deliveries.clone()))
            .expect("register");
        registry.register(Box::new(lag.clone())).expect("register");
        for o in OUTCOMES {
            deliveries.with_label_values(&[o]);
        }
        for e in depot_store::webhooks::EVENTS {
            lag.with_label_values(&[e]);
        }
        DeliveryMetrics {
            deliveries,
            lag,
            oldest_pending,
        }
    }
}

fn record_metrics(claimed: &Claimed, outcome: Outcome) {
    let m = &*METRICS;
    let label = match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Retry(_) => "retried",
        Outcome::Failed => "failed",
    };
    m.deliveries.with_label_values(&[label]).inc();
    if outcome == Outcome::Succeeded
        && depot_store::webhooks::EVENTS.contains(&claimed.event.kind.as_str())
    {
        let lag = (chrono::Utc::now() - claimed.event.occurred_at)
            .to_std()
            .unwrap_or_default();
        m.lag
            .with_label_values(&[claimed.event.kind.as_str()])
            .observe(lag.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_mesas_format() {
        // Reference value: Python's hmac.new(b"s3cret", b"1700000000.{}", sha256).
        assert_eq!(
            signature("s3cret", 1_700_000_000, b"{}"),
            "t=1700000000,sha256=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }
}
