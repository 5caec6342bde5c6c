//! Connecting to NATS, creating streams and buckets, publishing events.
//!
//! Every stream uses file storage; durability against power loss comes from
//! the server's `sync_interval: always` (see `deploy/nats/nats.conf`).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions};
use clap::Args;
use nwd_proto::envelope::{Envelope, Event};
use nwd_proto::streams::{self, buckets};
use nwd_proto::subjects;
use tokio_util::sync::CancellationToken;

/// NATS settings every service takes.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(
        long = "nats-url",
        env = "NWD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// Replicas for streams and buckets (1 locally, 3 in a cluster).
    #[arg(
        long = "stream-replicas",
        env = "NWD_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: usize,
    /// How long to wait for a JetStream ack before giving up (milliseconds).
    #[arg(
        long = "ack-timeout-ms",
        env = "NWD_ACK_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub ack_timeout_ms: u64,
}

impl NatsArgs {
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            replicas: 1,
            ack_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot create stream {name}: {source}")]
    Stream {
        name: &'static str,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot create bucket {name}: {source}")]
    Bucket {
        name: &'static str,
        source: jetstream::context::CreateKeyValueError,
    },
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("stopped before the bus was set up")]
    Stopped,
}

/// Connects without waiting for the server: the client reconnects in the
/// background, so an edge service can start and answer 503 while NATS is down.
pub async fn connect(args: &NatsArgs, service: &str) -> Result<Client, BusError> {
    let client = ConnectOptions::new()
        .name(format!("nwd-{service}"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * (attempt as u64 + 1)).min(1000))
        })
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        })
        .connect(&args.url)
        .await?;
    Ok(client)
}

/// A JetStream context whose requests and acks time out after `ack_timeout_ms`.
pub fn jetstream(client: Client, args: &NatsArgs) -> jetstream::Context {
    let t = Duration::from_millis(args.ack_timeout_ms);
    jetstream::ContextBuilder::new()
        .timeout(t)
        .ack_timeout(t)
        .build(client)
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest a dashboard session can last: the `sessions` bucket drops
/// entries older than this even if nobody logs out.
pub const SESSIONS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Stream configurations, one place.
pub fn stream_configs(replicas: usize) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, max_age: Duration| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age,
        // Long enough to swallow a sender's retries (Twilio, partners) and
        // our own republish after a crash.
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    };
    vec![
        base(streams::INBOUND, subjects::INBOUND_ALL, 30 * DAY),
        base(streams::CONTACTS, subjects::CONTACTS_ALL, 400 * DAY),
        base(streams::OUTBOUND, subjects::OUTBOUND_ALL, 400 * DAY),
        stream::Config {
            // Disclosure records: kept, never deleted or purged.
            deny_delete: true,
            deny_purge: true,
            ..base(streams::AUDIT, subjects::AUDIT_ALL, Duration::ZERO)
        },
    ]
}

/// Bucket configurations, one place.
pub fn bucket_configs(replicas: usize) -> Vec<kv::Config> {
    let base = |bucket: &str, history: i64, max_age: Duration| kv::Config {
        bucket: bucket.to_owned(),
        history,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        base(buckets::CONTACTS, 5, Duration::ZERO),
        base(buckets::THREADS, 1, Duration::ZERO),
        base(buckets::PRESENCE, 1, Duration::ZERO),
        base(buckets::SENDS, 1, 30 * DAY),
        // A browser resends a reply only while its tab is open: a month is ample.
        base(buckets::REPLIES, 1, 30 * DAY),
        base(buckets::DIRECTORY, 10, Duration::ZERO),
        base(buckets::SESSIONS, 1, SESSIONS_MAX_AGE),
    ]
}

/// Creates or updates every stream and bucket. Idempotent; every service
/// calls it at start so that start order does not matter.
pub async fn ensure_all(js: &jetstream::Context, replicas: usize) -> Result<(), BusError> {
    for config in stream_configs(replicas) {
        let name = static_name(&config.name);
        js.create_or_update_stream(config)
            .await
            .map_err(|source| BusError::Stream { name, source })?;
    }
    for config in bucket_configs(replicas) {
        let name = static_name(&config.bucket);
        js.create_or_update_key_value(config)
            .await
            .map_err(|source| BusError::Bucket { name, source })?;
    }
    Ok(())
}

/// Retries [`ensure_all`] with backoff until it succeeds or `shutdown` fires.
pub async fn ensure_all_with_retry(
    js: &jetstream::Context,
    replicas: usize,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match ensure_all(js, replicas).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "bus setup failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(BusError::Stopped),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn static_name(name: &str) -> &'static str {
    [
        streams::INBOUND,
        streams::CONTACTS,
        streams::OUTBOUND,
        streams::AUDIT,
        buckets::CONTACTS,
        buckets::THREADS,
        buckets::PRESENCE,
        buckets::SENDS,
        buckets::REPLIES,
        buckets::SESSIONS,
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("unknown")
}

/// Publishes an event with `Nats-Msg-Id` = `msg_id` and waits for the
/// server's ack (the event is stored). Returns whether the server saw it as
/// a duplicate of an earlier publish with the same id.
pub async fn publish<T: Event>(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    envelope: &Envelope<T>,
) -> Result<Published, jetstream::context::PublishError> {
    let ack = send(js, subject, msg_id, envelope).await?.await?;
    Ok(Published {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Sends an event like [`publish`] without waiting for the server's ack:
/// the caller awaits the returned future (several sends in a row overlap
/// their round trips; one connection keeps their order).
pub async fn send<T: Event>(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    envelope: &Envelope<T>,
) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
    let publish = jetstream::message::PublishMessage::build()
        .message_id(msg_id)
        .payload(envelope.to_bytes().into());
    js.send_publish(subject, publish).await
}

/// The server's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    pub duplicate: bool,
}

/// Ensures every stream and bucket, then opens bucket `name`, retrying with
/// backoff until both work or `shutdown` fires ([`BusError::Stopped`]).
pub async fn setup_bucket_with_retry(
    js: &jetstream::Context,
    replicas: usize,
    name: &'static str,
    shutdown: &CancellationToken,
) -> Result<kv::Store, BusError> {
    ensure_all_with_retry(js, replicas, shutdown).await?;
    open_bucket_with_retry(js, name, shutdown).await
}

/// Opens bucket `name` (created by [`ensure_all`]), retrying with backoff
/// until it works or `shutdown` fires ([`BusError::Stopped`]).
pub async fn open_bucket_with_retry(
    js: &jetstream::Context,
    name: &'static str,
    shutdown: &CancellationToken,
) -> Result<kv::Store, BusError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match bucket(js, name).await {
            Ok(store) => return Ok(store),
            Err(e) => tracing::warn!(bucket = name, error = %e, "cannot open bucket; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(BusError::Stopped),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Opens a KV bucket created by [`ensure_all`].
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<kv::Store, jetstream::context::KeyValueError> {
    js.get_key_value(name).await
}
