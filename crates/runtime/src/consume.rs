//! The durable consumer loop every service uses.
//!
//! At-least-once: a message is acked only after its handler finished, so a
//! crash means redelivery and handlers must be idempotent. Messages are
//! spread over sequential *lanes* by a key (a contact, a sender), so one
//! contact's events stay in order while different contacts run in parallel.
//!
//! Nothing is dropped: a message the handler cannot handle (rejected,
//! undecodable, written by a newer schema, or one it panicked on) is parked
//! in the DEADLETTER stream first and terminated only once the server has
//! stored the dead letter (see [`crate::deadletter`]); the lane goes on with
//! the next message.

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::{FutureExt, StreamExt};
use nwd_proto::deadletter::DeadLetterReason;
use nwd_proto::envelope::Header;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::deadletter::{self, Consumer};
use crate::ops::Readiness;

/// What to do with a handled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already done earlier): acknowledge.
    Ack,
    /// A transient failure (bus, peer down): redeliver after a delay.
    Retry(Duration),
    /// A poison message that can never succeed (undecodable): park it in
    /// DEADLETTER, then terminate it, with a bounded reason (`"undecodable"`
    /// for a payload the handler cannot read). Never used for a transient
    /// failure: that would need an operator to replay it.
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

/// Deliveries before the server gives up on a message: never (-1). A
/// transient failure must not lose a contact; poison messages are
/// dead-lettered explicitly. (`bus::SENDS_TTL` depends on this.)
pub const MAX_DELIVER: i64 = -1;

/// How long a message waits before it is tried again when its dead letter
/// could not be stored (DEADLETTER full or unreachable): it is never
/// terminated without one.
pub const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

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

    fn dead_letters(&self) -> Consumer {
        Consumer {
            service: self.service,
            stream: self.stream,
            durable: self.durable,
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
            max_deliver: MAX_DELIVER,
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
    // Every dead-letter series exists from the start at 0, so the first
    // dead letter is an increase an alert rule can see.
    for reason in DeadLetterReason::ALL {
        metrics::counter!(
            "nwd_deadletter_total",
            "service" => spec.service,
            "consumer" => spec.durable,
            "reason" => reason.as_str()
        )
        .increment(0);
    }
    let mut lanes = JoinSet::new();
    let mut senders = Vec::with_capacity(spec.lanes.max(1));
    for _ in 0..spec.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<jetstream::Message>(64);
        senders.push(tx);
        lanes.spawn(lane(rx, spec.clone(), handler.clone(), js.clone()));
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
    js: jetstream::Context,
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
        let verdict = handle_one(&msg, &spec, handler.as_ref())
            .instrument(span.clone())
            .await;
        let (kind, label) = match verdict {
            Verdict::Ack => (AckKind::Ack, "ack"),
            Verdict::Retry(d) => (AckKind::Nak(Some(d)), "retry"),
            Verdict::Park(reason, detail) => {
                park(&js, &spec, &msg, reason, detail)
                    .instrument(span.clone())
                    .await
            }
        };
        let _enter = span.enter();
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
        metrics::counter!("nwd_events_handled_total", "service" => spec.service, "consumer" => spec.durable, "outcome" => label).increment(1);
        metrics::histogram!("nwd_event_handling_seconds", "service" => spec.service, "consumer" => spec.durable)
            .record(started.elapsed().as_secs_f64());
    }
}

/// What becomes of one delivered message.
enum Verdict {
    Ack,
    Retry(Duration),
    Park(DeadLetterReason, String),
}

/// Runs the handler on one message, unless it was written by a newer schema
/// than this reader (parked without asking the handler, which might
/// misread it). A panic in the handler is caught here: the message is
/// parked and terminated, and the lane lives on. A handler that panics on
/// every delivery cannot loop: only a lost terminate (or a dead letter that
/// could not be stored) brings the message back, and then its dead letter
/// is recognised as a duplicate (same stream sequence) and it is terminated.
async fn handle_one<H: Handler>(
    msg: &jetstream::Message,
    spec: &ConsumerSpec,
    handler: &H,
) -> Verdict {
    if let Ok(header) = Header::peek(&msg.payload)
        && header.is_newer()
    {
        let (reason, detail) = deadletter::newer_schema(header.schema);
        return Verdict::Park(reason, detail);
    }
    let work = with_progress(msg, spec.ack_wait, handler.handle(msg));
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Outcome::Ack) => Verdict::Ack,
        Ok(Outcome::Retry(d)) => Verdict::Retry(d),
        Ok(Outcome::Reject(reason)) => {
            let (reason, detail) = deadletter::classify_rejection(&msg.payload, reason);
            Verdict::Park(reason, detail)
        }
        // The panic's message may quote the data: it is not kept.
        Err(_) => Verdict::Park(
            DeadLetterReason::HandlerPanicked,
            "the handler panicked".to_owned(),
        ),
    }
}

/// Parks a message in DEADLETTER: terminate it once the dead letter is
/// stored, or try it again later if it could not be (never drop it).
async fn park(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    msg: &jetstream::Message,
    reason: DeadLetterReason,
    detail: String,
) -> (AckKind, &'static str) {
    match deadletter::park(js, spec.dead_letters(), msg, reason, detail).await {
        Ok(published) => {
            tracing::error!(
                reason = reason.as_str(),
                dead_letter = published.sequence,
                duplicate = published.duplicate,
                "message dead-lettered"
            );
            (AckKind::Term, "dead_lettered")
        }
        Err(e) => {
            tracing::error!(
                reason = reason.as_str(),
                error = %e,
                "cannot store the dead letter; the message will be tried again"
            );
            metrics::counter!(
                "nwd_deadletter_failures_total",
                "service" => spec.service,
                "consumer" => spec.durable
            )
            .increment(1);
            (AckKind::Nak(Some(DEAD_LETTER_RETRY)), "dead_letter_failed")
        }
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
