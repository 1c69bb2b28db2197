//! RabbitMQ (lapin): the job topology, publishing with confirms, consuming.
//!
//! Topology, every name prefixed by `amqp.namespace` (`ns`):
//! - `ns.sync` direct exchange → `ns.sync.jobs` quorum queue (routing key
//!   `job`), with a delivery limit and `ns.sync.dlx` as dead-letter exchange;
//! - `ns.sync` → `ns.webhook.deliveries` quorum queue (routing key
//!   `webhook`): webhook delivery jobs, consumed apart from sync jobs so a
//!   slow receiver never holds up a sync (same limit and dead-lettering);
//! - `ns.sync.dlx` → `ns.sync.dead`: poison messages end here, never loop;
//! - `ns.sync.delay.<ms>`: one classic queue per retry delay, TTL `<ms>`,
//!   dead-lettering back into `ns.sync`; unused ones expire by themselves.
//!   One queue per delay avoids the head-of-line blocking of per-message TTLs.
//!
//! The job's `kind` (proto `JobKind`) picks the routing key: one publish
//! path for every kind of job.
//!
//! Messages only say "look at sync X now": Postgres holds the truth, so a
//! message may be lost, duplicated or late without harm beyond latency.
//!
//! Every broker await has a timeout: lapin can hang on a vanished broker.

use depot_contracts::Message as _;
mod supervisor;
pub use supervisor::{BrokerHandle, PublishError};

use depot_contracts::sync_v1::{JobKind, SyncJob};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

pub use lapin::Consumer;
pub use lapin::message::Delivery;
pub use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

pub const ROUTING_KEY: &str = "job";
/// Routing key of webhook delivery jobs.
pub const WEBHOOK_ROUTING_KEY: &str = "webhook";
const DEAD_ROUTING_KEY: &str = "dead";
/// How long an unused delay queue lives after its TTL (RabbitMQ deletes it).
const DELAY_QUEUE_IDLE_MS: u64 = 120_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker operation timed out: {0}")]
    Timeout(&'static str),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not accept the message: {0}")]
    NotAccepted(&'static str),
    #[error("undecodable job message: {0}")]
    Decode(String),
}

/// Exchange and queue names of one namespace.
#[derive(Debug, Clone)]
pub struct Topology {
    ns: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Topology {
            ns: namespace.to_string(),
        }
    }
    pub fn exchange(&self) -> String {
        format!("{}.sync", self.ns)
    }
    pub fn jobs_queue(&self) -> String {
        format!("{}.sync.jobs", self.ns)
    }
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhook.deliveries", self.ns)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.sync.dlx", self.ns)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.sync.dead", self.ns)
    }
    pub fn delay_queue(&self, delay_ms: u64) -> String {
        format!("{}.sync.delay.{delay_ms}", self.ns)
    }
}

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub url: String,
    pub namespace: String,
    /// Bound on each broker operation (connect, declare, publish + confirm).
    pub timeout: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub delivery_limit: u32,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
}

async fn timed<T, E>(
    what: &'static str,
    limit: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(BrokerError::from),
        Err(_) => Err(BrokerError::Timeout(what)),
    }
}

fn s(v: impl Into<ShortString>) -> ShortString {
    v.into()
}

impl BrokerOptions {
    /// Options as `amqp.*` configures them; `connection_name` shows in the
    /// RabbitMQ management UI.
    pub fn from_settings(amqp: &depot_settings::Amqp, connection_name: String) -> Self {
        BrokerOptions {
            url: amqp.url.expose().to_string(),
            namespace: amqp.namespace.clone(),
            timeout: Duration::from_millis(amqp.publish_timeout_ms),
            delivery_limit: amqp.delivery_limit,
            connection_name,
        }
    }
}

/// The frame size a connection asks for unless its URL names one
/// (`?frame_max=`). lapin keeps a send and a receive buffer of 32 frames
/// each, zero-filled (resident) from the start: at RabbitMQ's 128 KiB
/// default that is 8 MiB per process, a quarter of an idle worker's RSS
/// (measured with heaptrack, docs/benchmarks.md). Jobs and webhook
/// deliveries are a few KiB; a larger message is split into frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, with [`FRAME_MAX`] when it names no frame size; `None`
/// when it does not parse (the caller lets lapin say why).
fn small_frames(url: &str) -> Option<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url.parse().ok()?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Some(uri)
}

/// One connection with a confirm-mode channel for publishing. Cheap to share
/// behind an `Arc`; when it breaks, build a new one (see the supervisors in
/// the gateway and the worker) rather than relying on automatic recovery.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
    options: BrokerOptions,
}

impl Broker {
    /// Connect, declare the topology, and open the publishing channel.
    pub async fn connect(options: BrokerOptions) -> Result<Broker, BrokerError> {
        let props = ConnectionProperties::default()
            .with_connection_name(options.connection_name.clone().into());
        let connect = async {
            match small_frames(&options.url) {
                Some(uri) => Connection::connect_uri(uri, props).await,
                // Unparsable: lapin reports it as it always did.
                None => Connection::connect(&options.url, props).await,
            }
        };
        let connection = timed("connect", options.timeout, connect).await?;
        let topology = Topology::new(&options.namespace);
        let publisher = timed("open channel", options.timeout, connection.create_channel()).await?;
        let broker = Broker {
            connection,
            publisher,
            topology,
            options,
        };
        broker.declare().await?;
        timed(
            "confirm select",
            broker.options.timeout,
            broker
                .publisher
                .confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    async fn declare(&self) -> Result<(), BrokerError> {
        let t = &self.topology;
        let ch = &self.publisher;
        let limit = self.options.timeout;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        timed(
            "declare exchange",
            limit,
            ch.exchange_declare(
                s(t.exchange()),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        timed(
            "declare dead-letter exchange",
            limit,
            ch.exchange_declare(
                s(t.dead_exchange()),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut jobs = FieldTable::default();
        jobs.insert(
            s("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        jobs.insert(
            s("x-delivery-limit"),
            AMQPValue::LongInt(i32::try_from(self.options.delivery_limit).unwrap_or(i32::MAX)),
        );
        jobs.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(t.dead_exchange())),
        );
        jobs.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(DEAD_ROUTING_KEY)),
        );
        timed(
            "declare jobs queue",
            limit,
            ch.queue_declare(s(t.jobs_queue()), queue, jobs.clone()),
        )
        .await?;
        timed(
            "bind jobs queue",
            limit,
            ch.queue_bind(
                s(t.jobs_queue()),
                s(t.exchange()),
                s(ROUTING_KEY),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        timed(
            "declare webhook queue",
            limit,
            ch.queue_declare(s(t.webhook_queue()), queue, jobs),
        )
        .await?;
        timed(
            "bind webhook queue",
            limit,
            ch.queue_bind(
                s(t.webhook_queue()),
                s(t.exchange()),
                s(WEBHOOK_ROUTING_KEY),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut dead = FieldTable::default();
        dead.insert(
            s("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        timed(
            "declare dead queue",
            limit,
            ch.queue_declare(s(t.dead_queue()), queue, dead),
        )
        .await?;
        timed(
            "bind dead queue",
            limit,
            ch.queue_bind(
                s(t.dead_queue()),
                s(t.dead_exchange()),
                s(DEAD_ROUTING_KEY),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(())
    }

    async fn declare_delay_queue(&self, delay_ms: u64) -> Result<String, BrokerError> {
        let t = &self.topology;
        let name = t.delay_queue(delay_ms);
        let mut args = FieldTable::default();
        args.insert(s("x-message-ttl"), AMQPValue::LongLongInt(delay_ms as i64));
        args.insert(
            s("x-expires"),
            AMQPValue::LongLongInt((delay_ms + DELAY_QUEUE_IDLE_MS) as i64),
        );
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(t.exchange())),
        );
        args.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(ROUTING_KEY)),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        timed(
            "declare delay queue",
            self.options.timeout,
            self.publisher.queue_declare(s(name.as_str()), opts, args),
        )
        .await?;
        Ok(name)
    }

    /// Publish a job for immediate processing. Ok only when the broker
    /// confirmed it *and* routed it to a queue (mandatory; a returned message
    /// is a failure).
    pub async fn publish(&self, job: &SyncJob) -> Result<(), BrokerError> {
        self.publish_to(&self.topology.exchange(), routing_key(job), job)
            .await
    }

    /// Publish a job to come back after `delay` (rounded up to two
    /// significant digits, see [`delay_bucket_ms`], so that jittered delays
    /// share a few dozen queues instead of creating one each).
    pub async fn publish_delayed(&self, job: &SyncJob, delay: Duration) -> Result<(), BrokerError> {
        let ms = delay_bucket_ms(delay);
        let queue = self.declare_delay_queue(ms).await?;
        self.publish_to("", &queue, job).await
    }

    /// Publish arbitrary bytes as if they were a job (tests and tooling:
    /// a malformed message must end in the dead-letter queue).
    pub async fn publish_raw(&self, payload: &[u8]) -> Result<(), BrokerError> {
        self.publish_payload(
            &self.topology.exchange(),
            ROUTING_KEY,
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &SyncJob,
    ) -> Result<(), BrokerError> {
        self.publish_payload(
            exchange,
            routing_key,
            &job.encode_to_vec(),
            job_properties(job),
        )
        .await
    }

    /// Publish several jobs for immediate processing, sending them all
    /// before awaiting any confirm: one confirm round trip for the batch
    /// instead of one per job. One result per job, in order; a send that
    /// fails stops the batch (the channel is most likely gone), and the
    /// jobs after it report the same failure.
    pub async fn publish_batch(&self, jobs: &[SyncJob]) -> Vec<Result<(), BrokerError>> {
        let limit = self.options.timeout;
        let exchange = self.topology.exchange();
        let mut pending = Vec::with_capacity(jobs.len());
        let mut failed: Option<&'static str> = None;
        for job in jobs {
            if failed.is_some() {
                break;
            }
            let sent = timed(
                "publish",
                limit,
                self.publisher.basic_publish(
                    s(exchange.as_str()),
                    s(routing_key(job)),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &job.encode_to_vec(),
                    job_properties(job),
                ),
            )
            .await;
            match sent {
                Ok(confirm) => pending.push(confirm),
                Err(_) => failed = Some("batch send failed"),
            }
        }
        let confirms = futures_util::future::join_all(
            pending
                .into_iter()
                .map(|confirm| timed("publisher confirm", limit, confirm)),
        )
        .await;
        let mut results: Vec<Result<(), BrokerError>> = confirms
            .into_iter()
            .map(|c| c.and_then(confirmed))
            .collect();
        while results.len() < jobs.len() {
            results.push(Err(BrokerError::NotAccepted(
                failed.unwrap_or("batch send failed"),
            )));
        }
        results
    }

    async fn publish_payload(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let limit = self.options.timeout;
        let confirm = timed(
            "publish",
            limit,
            self.publisher
                .basic_publish(s(exchange), s(routing_key), opts, payload, props),
        )
        .await?;
        confirmed(timed("publisher confirm", limit, confirm).await?)
    }

    /// A consumer on the jobs queue with its own channel and `prefetch`
    /// unacknowledged deliveries at most.
    pub async fn consume(
        &self,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, Consumer), BrokerError> {
        self.consume_queue(&self.topology.jobs_queue(), prefetch, tag)
            .await
    }

    /// A consumer on the webhook deliveries queue (see [`Broker::consume`]).
    pub async fn consume_webhooks(
        &self,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, Consumer), BrokerError> {
        self.consume_queue(&self.topology.webhook_queue(), prefetch, tag)
            .await
    }

    async fn consume_queue(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let limit = self.options.timeout;
        let channel = timed("open channel", limit, self.connection.create_channel()).await?;
        timed(
            "qos",
            limit,
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            "consume",
            limit,
            channel.basic_consume(
                s(queue),
                s(tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((channel, consumer))
    }

    /// Messages waiting in a queue (passive declare on a throwaway channel, as
    /// a failed passive declare kills the channel it runs on).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let limit = self.options.timeout;
        let channel = timed("open channel", limit, self.connection.create_channel()).await?;
        let q = timed(
            "passive declare",
            limit,
            channel.queue_declare(
                s(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let _ = timed("close channel", limit, channel.close(200, s("done"))).await;
        Ok(q.message_count())
    }

    /// Delete every queue and exchange of this namespace (test cleanup).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let limit = self.options.timeout;
        let ch = timed("open channel", limit, self.connection.create_channel()).await?;
        for q in [
            self.topology.jobs_queue(),
            self.topology.webhook_queue(),
            self.topology.dead_queue(),
        ] {
            timed(
                "delete queue",
                limit,
                ch.queue_delete(s(q), QueueDeleteOptions::default()),
            )
            .await?;
        }
        for e in [self.topology.exchange(), self.topology.dead_exchange()] {
            timed(
                "delete exchange",
                limit,
                ch.exchange_delete(s(e), Default::default()),
            )
            .await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = timed(
            "close",
            self.options.timeout,
            self.connection.close(200, s("shutdown")),
        )
        .await;
    }
}

/// Ok only for a confirm that accepted *and* routed the message (mandatory;
/// a returned message is a failure).
fn confirmed(confirmation: Confirmation) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::NotAccepted("returned as unroutable")),
        Confirmation::Nack(_) => Err(BrokerError::NotAccepted("nacked")),
        Confirmation::NotRequested => Err(BrokerError::NotAccepted("no confirm")),
    }
}

/// Persistent, typed, with the job's trace context as headers.
fn job_properties(job: &SyncJob) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &job.trace_context {
        headers.insert(
            s(k.as_str()),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(s("application/x-protobuf"))
        .with_type(s("depot.sync.v1.SyncJob"))
        .with_message_id(s(message_id(job)))
        .with_headers(headers)
}

/// The message id consumers deduplicate by: the id of what the job is about.
fn message_id(job: &SyncJob) -> &str {
    match job.kind() {
        JobKind::Sync => job.sync_id.as_str(),
        JobKind::WebhookDelivery => job.delivery_id.as_str(),
    }
}

/// The delay queue a delay goes to: at least 10 ms, rounded up to two
/// significant digits (1234 ms -> 1300 ms; at most 10 % late), so that at
/// most 90 delay queues exist per power of ten.
pub fn delay_bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(10);
    let mut scale = 1u64;
    while ms / scale >= 100 {
        scale *= 10;
    }
    ms.div_ceil(scale).saturating_mul(scale)
}

/// Decode a delivery's job, with the trace context from its headers.
pub fn decode_job(delivery: &Delivery) -> Result<SyncJob, BrokerError> {
    let mut job = SyncJob::decode(delivery.data.as_slice())
        .map_err(|e| BrokerError::Decode(e.to_string()))?;
    match job.kind() {
        JobKind::Sync if job.sync_id.is_empty() => {
            return Err(BrokerError::Decode("empty sync_id".into()));
        }
        JobKind::WebhookDelivery if job.delivery_id.is_empty() => {
            return Err(BrokerError::Decode("empty delivery_id".into()));
        }
        _ => {}
    }
    if let Some(headers) = delivery.properties.headers() {
        for (k, v) in headers.inner() {
            if let AMQPValue::LongString(v) = v
                && (k.as_str() == "traceparent" || k.as_str() == "tracestate")
            {
                job.trace_context.insert(
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
        }
    }
    Ok(job)
}

/// A job for `sync_id` carrying the given trace context.
pub fn job(
    sync_id: &str,
    repo_id: &str,
    attempt: i32,
    trace_context: HashMap<String, String>,
) -> SyncJob {
    SyncJob {
        sync_id: sync_id.to_string(),
        repo_id: repo_id.to_string(),
        attempt_hint: u32::try_from(attempt).unwrap_or(0),
        trace_context,
        ..SyncJob::default()
    }
}

/// A job for webhook delivery `delivery_id`.
pub fn delivery_job(delivery_id: &str) -> SyncJob {
    let mut job = SyncJob {
        delivery_id: delivery_id.to_string(),
        ..SyncJob::default()
    };
    job.set_kind(JobKind::WebhookDelivery);
    job
}

/// Where a job goes: each kind has its own queue.
fn routing_key(job: &SyncJob) -> &'static str {
    match job.kind() {
        JobKind::Sync => ROUTING_KEY,
        JobKind::WebhookDelivery => WEBHOOK_ROUTING_KEY,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connection_asks_for_small_frames_unless_its_url_names_a_size() {
        let uri = small_frames("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        assert_eq!(uri.authority.host, "127.0.0.1");
        let uri = small_frames("amqp://127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131072));
        assert!(small_frames("not a url").is_none());
    }

    #[test]
    fn delay_buckets() {
        let b = |ms| delay_bucket_ms(Duration::from_millis(ms));
        assert_eq!(b(0), 10);
        assert_eq!(b(10), 10);
        assert_eq!(b(99), 99);
        assert_eq!(b(100), 100);
        assert_eq!(b(101), 110);
        assert_eq!(b(1234), 1300);
        assert_eq!(b(56_789), 57_000);
        assert_eq!(b(300_000), 300_000);
        for ms in [10u64, 77, 150, 999, 4321, 299_999] {
            let got = b(ms);
            assert!(got >= ms && got <= ms + ms / 10 + 1, "{ms} -> {got}");
        }
    }
}
