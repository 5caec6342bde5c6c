//! The durable consumer loop every service uses.
//!
//! At-least-once: a message is acked only after its handler finished, so a
//! crash means redelivery and handlers must be idempotent. Messages are
//! spread over sequential *lanes* by a key (a contact, a sender), so one
//! contact's events stay in order while different contacts run in parallel.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ops::Readiness;

/// What to do with a handled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already done earlier): acknowledge.
    Ack,
    /// A transient failure (bus, peer down): redeliver after a delay.
    Retry(Duration),
    /// A poison message that can never succeed (undecodable): terminate it,
    /// with a bounded reason for the metric label. Never used for a
    /// transient failure: that would lose a contact.
    Reject(&'static str),
}

/// Handles messages of one consumer.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: &jetstream::Message) -> impl Future<Output = Outcome> + Send;

    /// Messages with the same key are handled in order, one at a time.
    /// Default: the subject (per-contact subjects keep a contact in order).
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        hash(msg.subject.as_str())
    }
}

/// Hashes anything into a lane key.
pub fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// How long the server waits for an ack before redelivering. This is also
/// how long a message delivered to a consumer that then crashed waits before
/// another instance gets it, so it is short: a person at risk must not wait
/// 30 s behind a dead process. Handlers that run longer keep their message
/// with progress acks (see [`lane`]).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(5);

/// Which stream, which durable consumer, which subjects.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub service: &'static str,
    pub stream: &'static str,
    pub durable: &'static str,
    pub filter_subjects: Vec<String>,
    /// Parallel lanes (sequential within a lane).
    pub lanes: usize,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

impl ConsumerSpec {
    pub fn new(
        service: &'static str,
        stream: &'static str,
        durable: &'static str,
        filter_subjects: Vec<String>,
    ) -> Self {
        Self {
            service,
            stream,
            durable,
            filter_subjects,
            lanes: 16,
            ack_wait: DEFAULT_ACK_WAIT,
            max_ack_pending: 1024,
        }
    }

    fn readiness_key(&self) -> String {
        format!("consumer:{}", self.durable)
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.to_owned()),
            filter_subjects: self.filter_subjects.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Never give up on a message by count: a transient failure must
            // not lose a contact. Poison messages are terminated explicitly.
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }
}

/// Runs the consumer until `shutdown`: binds (or rebinds after a failure)
/// the durable consumer, dispatches messages to lanes, and on shutdown stops
/// pulling and lets in-flight messages finish (bounded).
pub async fn run<H: Handler>(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: Arc<H>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let ready_key = spec.readiness_key();
    readiness.set(&ready_key, false);
    let mut lanes = JoinSet::new();
    let mut senders = Vec::with_capacity(spec.lanes.max(1));
    for _ in 0..spec.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<jetstream::Message>(64);
        senders.push(tx);
        lanes.spawn(lane(rx, spec.clone(), handler.clone()));
    }

    let mut backoff = Duration::from_millis(100);
    'bind: while !shutdown.is_cancelled() {
        let messages = match bind(&js, &spec).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = spec.durable, error = %e, "cannot bind consumer; retrying");
                readiness.set(&ready_key, false);
                tokio::select! {
                    _ = shutdown.cancelled() => break 'bind,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        readiness.set(&ready_key, true);
        tracing::info!(consumer = spec.durable, "consumer bound");
        let mut messages = std::pin::pin!(messages.take_until(shutdown.clone().cancelled_owned()));
        while let Some(next) = messages.next().await {
            match next {
                Ok(msg) => {
                    let lane = (handler.lane_key(&msg) % senders.len() as u64) as usize;
                    if senders[lane].send(msg).await.is_err() {
                        break 'bind;
                    }
                }
                Err(e) => {
                    tracing::warn!(consumer = spec.durable, error = %e, "consumer stream error");
                    metrics::counter!("nwd_consumer_errors_total", "service" => spec.service, "consumer" => spec.durable).increment(1);
                }
            }
        }
        if !shutdown.is_cancelled() {
            readiness.set(&ready_key, false);
            tracing::warn!(consumer = spec.durable, "consumer stream ended; rebinding");
        }
    }
    readiness.set(&ready_key, false);
    drop(senders);
    let drain = async { while lanes.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!(
            consumer = spec.durable,
            "in-flight messages did not finish in 10 s; they will be redelivered"
        );
    }
}

async fn bind(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<pull::Stream, async_nats::Error> {
    let stream = js.get_stream(spec.stream).await?;
    let consumer: jetstream::consumer::Consumer<pull::Config> =
        stream.create_consumer(spec.config()).await?;
    Ok(consumer.messages().await?)
}

async fn lane<H: Handler>(
    mut rx: mpsc::Receiver<jetstream::Message>,
    spec: ConsumerSpec,
    handler: Arc<H>,
) {
    while let Some(msg) = rx.recv().await {
        let (seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 0));
        // Subjects carry ids only (never personal data), so they may be logged.
        let span = tracing::info_span!(
            "event",
            service = spec.service,
            consumer = spec.durable,
            subject = %msg.subject,
            seq,
            delivered,
        );
        let started = Instant::now();
        metrics::counter!("nwd_events_received_total", "service" => spec.service, "consumer" => spec.durable).increment(1);
        let outcome = with_progress(&msg, spec.ack_wait, handler.handle(&msg))
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        let (kind, label) = match outcome {
            Outcome::Ack => (AckKind::Ack, "ack"),
            Outcome::Retry(d) => (AckKind::Nak(Some(d)), "retry"),
            Outcome::Reject(reason) => {
                tracing::error!(reason, "rejecting poison message");
                (AckKind::Term, "reject")
            }
        };
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
        metrics::counter!("nwd_events_handled_total", "service" => spec.service, "consumer" => spec.durable, "outcome" => label).increment(1);
        metrics::histogram!("nwd_event_handling_seconds", "service" => spec.service, "consumer" => spec.durable)
            .record(started.elapsed().as_secs_f64());
    }
}

/// Runs a handler, telling the server every third of `ack_wait` that the
/// message is still being worked on, so a slow handler (a retrying send) is
/// not redelivered to another instance while it runs.
async fn with_progress<F: Future<Output = Outcome>>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: F,
) -> Outcome {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut work = std::pin::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            outcome = &mut work => return outcome,
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}
