//! Connecting to NATS, creating streams and buckets, publishing events.
//!
//! Every stream uses file storage; durability against power loss comes from
//! the server's `sync_interval: always` (see `deploy/nats/nats.conf`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{Client, ConnectOptions};
use clap::Args;
use nwd_proto::envelope::{Envelope, Event};
use nwd_proto::streams::{self, buckets};
use nwd_proto::subjects;
use tokio_util::sync::CancellationToken;

use crate::service::Secret;

/// NATS settings every service takes.
///
/// Each service connects as its own NATS user (default: the service's name)
/// with a password from a file or the environment; `up.sh` generates them
/// into `.data/nats/`. Credentials in the URL (`nats://user:pw@host:port`)
/// work too. See `docs/security.md`.
#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL; `tls://` requires TLS.
    #[arg(
        long = "nats-url",
        env = "NWD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS user (default: the user in the URL, else the service's name).
    #[arg(long = "nats-user", env = "NWD_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (prefer `--nats-password-file`).
    #[arg(long = "nats-password", env = "NWD_NATS_PASSWORD")]
    pub password: Option<Secret>,
    /// File holding the NATS password (trailing newline ignored).
    #[arg(long = "nats-password-file", env = "NWD_NATS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the server's TLS certificate; set
    /// it (or use a `tls://` URL) to require TLS.
    #[arg(long = "nats-tls-ca", env = "NWD_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
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
    /// The JetStream file store the line may use, in bytes: the server's
    /// `max_file_store`. Every stream and bucket gets a fixed share of it
    /// (`bus::SHARES`, 74% in all).
    #[arg(
        long = "jetstream-store-bytes",
        env = "NWD_JETSTREAM_STORE_BYTES",
        default_value_t = DEFAULT_STORE_BYTES
    )]
    pub store_bytes: u64,
}

impl NatsArgs {
    /// Settings for `url` (credentials, if any, in the URL).
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password: None,
            password_file: None,
            tls_ca: None,
            replicas: 1,
            ack_timeout_ms: 2000,
            store_bytes: DEFAULT_STORE_BYTES,
        }
    }

    /// The user this connects as: `--nats-user`, else the URL's, else `service`.
    pub fn user_for(&self, service: &str) -> String {
        if let Some(user) = &self.user {
            return user.clone();
        }
        url_credentials(&self.url)
            .map(|(user, _)| user.to_owned())
            .unwrap_or_else(|| service.to_owned())
    }

    fn password(&self) -> Result<Option<Secret>, BusError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| BusError::PasswordFile {
                path: path.clone(),
                source,
            })?;
            return Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))));
        }
        Ok(self.password.clone())
    }
}

/// The URL with its password replaced by `***`.
fn redacted_url(url: &str) -> String {
    match url_credentials(url) {
        Some((user, _)) => {
            let rest = url.rsplit_once('@').map_or("", |(_, rest)| rest);
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            format!("{scheme}://{user}:***@{rest}")
        }
        None => url.to_owned(),
    }
}

/// `(user, password)` from `scheme://user:password@host:port`.
fn url_credentials(url: &str) -> Option<(&str, &str)> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    Some(userinfo.split_once(':').unwrap_or((userinfo, "")))
}

impl fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsArgs")
            .field("url", &redacted_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("tls_ca", &self.tls_ca)
            .field("replicas", &self.replicas)
            .field("ack_timeout_ms", &self.ack_timeout_ms)
            .finish()
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
    #[error("cannot read the NATS password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Connects without waiting for the server: the client reconnects in the
/// background, so an edge service can start and answer 503 while NATS is down.
///
/// Connects as [`NatsArgs::user_for`]`(service)`; replies come to the inbox
/// prefix `_INBOX_<user>`, the only inbox that user may subscribe to.
pub async fn connect(args: &NatsArgs, service: &str) -> Result<Client, BusError> {
    let user = args.user_for(service);
    let mut options = ConnectOptions::new()
        .name(format!("nwd-{service}"))
        .custom_inbox_prefix(inbox_prefix(&user))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100 * (attempt as u64 + 1)).min(1000))
        })
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    // async-nats does not read credentials from the URL: pass them on.
    let password = args
        .password()?
        .or_else(|| url_credentials(&args.url).map(|(_, password)| Secret::new(password)));
    if let Some(password) = password {
        options = options.user_and_password(user, password.expose().to_owned());
    }
    if let Some(ca) = &args.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if args.url.starts_with("tls://") {
        options = options.require_tls(true);
    }
    Ok(options.connect(&args.url).await?)
}

/// Where `user`'s request replies arrive (its subscribe permission).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// A JetStream context whose requests and acks time out after `ack_timeout_ms`.
pub fn jetstream(client: Client, args: &NatsArgs) -> jetstream::Context {
    let t = Duration::from_millis(args.ack_timeout_ms);
    jetstream::ContextBuilder::new()
        .timeout(t)
        .ack_timeout(t)
        .build(client)
}

const DAY_SECS: u64 = 24 * 3600;
const GIB: u64 = 1 << 30;

/// The JetStream file store the server gives this line by default: its
/// `max_file_store` in `deploy/nats/nats.conf` (10 GB, which NATS reads as
/// 10 GiB).
pub const DEFAULT_STORE_BYTES: u64 = 10 * GIB;

/// How long each stream keeps its events.
pub const INBOUND_MAX_AGE: Duration = Duration::from_secs(30 * DAY_SECS);
pub const CONTACTS_MAX_AGE: Duration = Duration::from_secs(400 * DAY_SECS);
pub const OUTBOUND_MAX_AGE: Duration = Duration::from_secs(400 * DAY_SECS);
/// Long enough to notice, diagnose and replay after any upgrade; every dead
/// letter also raised an alert when it was parked.
pub const DEADLETTER_MAX_AGE: Duration = Duration::from_secs(90 * DAY_SECS);

/// How long a send record outlives its last write. It must outlive every
/// way the same outbound id can reach the notifier again, or that delivery
/// finds no record and sends the SMS a second time. The arithmetic, with the
/// notifier's consumer (`consume::ConsumerSpec` defaults): `max_deliver` is
/// -1, so an unacked message is redelivered every `ack_wait` (5 s) or after
/// its nak backoff (≤ 30 s) for as long as it is stored, however long that
/// is; a consumer re-created from scratch (`DeliverPolicy::All`) re-reads
/// everything stored. Both end when OUTBOUND drops the message: its
/// `max_age`, 400 days. A message dead-lettered just before that can be
/// replayed from DEADLETTER for another 90 days with the same outbound id.
/// So 400 + 90 = 490 days after it was published, and the record was written
/// after the publish: 500 days leaves 10 days of margin. Checked by the
/// test of [`outbound_redelivery_horizon`].
pub const SENDS_TTL: Duration = Duration::from_secs(500 * DAY_SECS);

/// Where the streams and buckets live and how much of the store each may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub replicas: usize,
    /// The JetStream file store the line may use (the server's `max_file_store`).
    pub store_bytes: u64,
}

impl From<usize> for Layout {
    /// `replicas` replicas over the default store.
    fn from(replicas: usize) -> Self {
        Self {
            replicas,
            store_bytes: DEFAULT_STORE_BYTES,
        }
    }
}

impl From<&NatsArgs> for Layout {
    fn from(args: &NatsArgs) -> Self {
        Self {
            replicas: args.replicas,
            store_bytes: args.store_bytes,
        }
    }
}

/// Each stream's and bucket's share of the store, in thousandths. They add up
/// to 740‰: the other 26% is headroom for what the store holds besides
/// messages (consumer state, indexes, tombstones of deleted keys, partly
/// filled blocks) and for streams other deployments add (an edge spool), so
/// that no stream reaching its own limit can ever fill the server's store;
/// a full store refuses every write, and every webhook would get a 503.
///
/// Discard policy, per stream: when INBOUND, CONTACTS or OUTBOUND reach their
/// limit the *oldest* events go (a person's new message beats a month-old
/// copy of one already handled). AUDIT and DEADLETTER refuse new writes
/// instead (`discard: new`, AUDIT with no age limit): a disclosure record or
/// a dead letter is never deleted to make room, so a full AUDIT stops
/// disclosures (the escalator audits before it discloses) and a full
/// DEADLETTER makes consumers retry their poison messages instead of
/// parking them — which is why `deploy/prometheus/rules/storage.yml` alerts
/// on them at 60% and 80%, well before. KV buckets always refuse new writes
/// when full (JetStream's KV requires `discard: new`).
pub const SHARES: [(&str, u64); 14] = [
    (streams::INBOUND, 100),
    (streams::CONTACTS, 175),
    (streams::OUTBOUND, 100),
    (streams::AUDIT, 100),
    (streams::DEADLETTER, 25),
    (buckets::CONTACTS, 100),
    (buckets::THREADS, 25),
    (buckets::PRESENCE, 5),
    (buckets::SENDS, 75),
    (buckets::REPLIES, 10),
    (buckets::DIRECTORY, 5),
    (buckets::SESSIONS, 5),
    (buckets::REFERRALS, 10),
    (buckets::CHAT_SESSIONS, 5),
];

impl Layout {
    /// The byte limit of stream or bucket `name`.
    pub fn max_bytes(&self, name: &str) -> i64 {
        let per_mille = SHARES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, s)| *s);
        i64::try_from(self.store_bytes / 1000 * per_mille).unwrap_or(i64::MAX)
    }
}

/// The longest a dashboard session can last: the `sessions` bucket drops
/// entries older than this even if nobody logs out.
pub const SESSIONS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The longest a patient chat session's token can last: the
/// `chat_sessions` bucket drops entries older than this.
pub const CHAT_SESSIONS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Stream configurations, one place.
pub fn stream_configs(layout: &Layout) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, max_age: Duration| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: layout.replicas,
        max_age,
        max_bytes: layout.max_bytes(name),
        discard: stream::DiscardPolicy::Old,
        // Long enough to swallow a sender's retries (Twilio, partners) and
        // our own republish after a crash.
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    };
    vec![
        base(streams::INBOUND, subjects::INBOUND_ALL, INBOUND_MAX_AGE),
        base(streams::CONTACTS, subjects::CONTACTS_ALL, CONTACTS_MAX_AGE),
        base(streams::OUTBOUND, subjects::OUTBOUND_ALL, OUTBOUND_MAX_AGE),
        stream::Config {
            // Disclosure records: kept, never deleted or purged, never
            // discarded to make room (see SHARES).
            deny_delete: true,
            deny_purge: true,
            discard: stream::DiscardPolicy::New,
            ..base(streams::AUDIT, subjects::AUDIT_ALL, Duration::ZERO)
        },
        stream::Config {
            // Deletable: the replay tool deletes a record once replayed.
            discard: stream::DiscardPolicy::New,
            ..base(
                streams::DEADLETTER,
                subjects::DEADLETTER_ALL,
                DEADLETTER_MAX_AGE,
            )
        },
    ]
}

/// Bucket configurations, one place.
pub fn bucket_configs(layout: &Layout) -> Vec<kv::Config> {
    let base = |bucket: &str, history: i64, max_age: Duration| kv::Config {
        bucket: bucket.to_owned(),
        history,
        max_age,
        max_bytes: layout.max_bytes(bucket),
        storage: stream::StorageType::File,
        num_replicas: layout.replicas,
        ..Default::default()
    };
    vec![
        base(buckets::CONTACTS, 5, Duration::ZERO),
        base(buckets::THREADS, 1, Duration::ZERO),
        base(buckets::PRESENCE, 1, Duration::ZERO),
        base(buckets::SENDS, 1, SENDS_TTL),
        // A browser resends a reply only while its tab is open: a month is ample.
        base(buckets::REPLIES, 1, Duration::from_secs(30 * DAY_SECS)),
        base(buckets::DIRECTORY, 10, Duration::ZERO),
        base(buckets::SESSIONS, 1, SESSIONS_MAX_AGE),
        // A referral's status is read by its partner for as long as the
        // partner may ask; history 5 to see a record's recent changes.
        base(buckets::REFERRALS, 5, Duration::ZERO),
        // A chat token lasts at most this long, even if never used again.
        base(buckets::CHAT_SESSIONS, 1, CHAT_SESSIONS_MAX_AGE),
    ]
}

/// The latest a message of `stream` can reach a consumer again, counted from
/// its publish; `None` if unbounded. However the consumer redelivers
/// (`max_deliver`, `ack_wait`, nak delays), a consumer re-created from
/// scratch re-reads everything still stored, so the bound is how long the
/// stream keeps it (`max_age`; a byte limit only drops it sooner). A dead
/// letter replayed from DEADLETTER, up to its `max_age` later, comes back
/// as a new message with the same ids.
pub fn redelivery_horizon(
    stream: &stream::Config,
    deadletter: &stream::Config,
) -> Option<Duration> {
    if stream.max_age.is_zero() || deadletter.max_age.is_zero() {
        return None;
    }
    Some(stream.max_age + deadletter.max_age)
}

/// [`redelivery_horizon`] of OUTBOUND: what [`SENDS_TTL`] must cover.
pub fn outbound_redelivery_horizon(layout: &Layout) -> Option<Duration> {
    let configs = stream_configs(layout);
    let find = |name: &str| configs.iter().find(|c| c.name == name);
    redelivery_horizon(find(streams::OUTBOUND)?, find(streams::DEADLETTER)?)
}

/// Creates or updates every stream and bucket. Idempotent; every service
/// calls it at start so that start order does not matter. A stream or
/// bucket created by an older version is updated in place (limits, discard
/// policy, age), keeping its messages.
pub async fn ensure_all(
    js: &jetstream::Context,
    layout: impl Into<Layout>,
) -> Result<(), BusError> {
    let layout = layout.into();
    for config in stream_configs(&layout) {
        let name = static_name(&config.name);
        js.create_or_update_stream(config)
            .await
            .map_err(|source| BusError::Stream { name, source })?;
    }
    for config in bucket_configs(&layout) {
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
    layout: impl Into<Layout>,
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let layout = layout.into();
    let mut delay = Duration::from_millis(100);
    loop {
        match ensure_all(js, layout).await {
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

/// Waits until every stream in `streams` and every bucket in `buckets`
/// exists, retrying with backoff until then or until `shutdown` fires
/// ([`BusError::Stopped`]). Services do not create streams or buckets (their
/// users may not): the operator's `nwd-bus setup` does, before they start
/// or while they wait.
pub async fn wait_for(
    js: &jetstream::Context,
    streams: &[&str],
    buckets: &[&str],
    shutdown: &CancellationToken,
) -> Result<(), BusError> {
    let names = streams
        .iter()
        .map(|s| (*s).to_owned())
        .chain(buckets.iter().map(|b| format!("KV_{b}")));
    for name in names {
        let mut delay = Duration::from_millis(100);
        loop {
            match js.get_stream(&name).await {
                Ok(_) => break,
                Err(e) => tracing::warn!(
                    stream = %name,
                    error = %e,
                    "waiting for the stream (created by the operator's `nwd-bus setup`)"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(BusError::Stopped),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
    Ok(())
}

fn static_name(name: &str) -> &'static str {
    streams::ALL
        .into_iter()
        .chain(buckets::ALL)
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

/// Publishes a message of ours to a person ([`nwd_proto::events::ToPerson`]:
/// an SMS for the notifier or a chat message for the chat service) under
/// its subject and `Nats-Msg-Id`, and waits for the server's ack.
pub async fn publish_to_person(
    js: &jetstream::Context,
    msg: &nwd_proto::events::ToPerson,
) -> Result<Published, jetstream::context::PublishError> {
    use nwd_proto::events::ToPerson;
    match msg {
        ToPerson::Sms(m) => {
            publish(js, msg.subject(), &msg.msg_id(), &Envelope::new(m.clone())).await
        }
        ToPerson::Chat(m) => {
            publish(js, msg.subject(), &msg.msg_id(), &Envelope::new(m.clone())).await
        }
    }
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
    layout: impl Into<Layout>,
    name: &'static str,
    shutdown: &CancellationToken,
) -> Result<kv::Store, BusError> {
    ensure_all_with_retry(js, layout, shutdown).await?;
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

/// How often [`export_storage`] samples the streams' sizes.
pub const STORAGE_SAMPLE_PERIOD: Duration = Duration::from_secs(15);

/// What one stream or bucket holds and may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUsage {
    /// Stream name (`KV_<bucket>` for a bucket).
    pub stream: String,
    pub bytes: u64,
    pub messages: u64,
    /// `max_bytes` as the server has it (-1: no limit).
    pub limit_bytes: i64,
}

/// Reads every stream's and bucket's size and limit from the server, sets
/// the gauges `nwd_stream_bytes{stream}`, `nwd_stream_messages{stream}`,
/// `nwd_stream_limit_bytes{stream}` (only where a limit is set),
/// `nwd_jetstream_store_bytes` (everything the account stores) and
/// `nwd_jetstream_store_limit_bytes` (the configured store), and returns the
/// figures. The limit is read back from the server, not from our config, so
/// a stream an older version left without a limit shows as such.
pub async fn sample_storage(js: &jetstream::Context, layout: &Layout) -> Vec<StreamUsage> {
    let names = streams::ALL
        .iter()
        .map(|s| (*s).to_owned())
        .chain(buckets::ALL.iter().map(|b| buckets::stream_of(b)));
    let mut usage = Vec::new();
    for name in names {
        let info = match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.cloned().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let info = match info {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(stream = %name, %error, "cannot read stream size");
                metrics::counter!("nwd_storage_sample_errors_total").increment(1);
                continue;
            }
        };
        metrics::gauge!("nwd_stream_bytes", "stream" => name.clone()).set(info.state.bytes as f64);
        metrics::gauge!("nwd_stream_messages", "stream" => name.clone())
            .set(info.state.messages as f64);
        if info.config.max_bytes > 0 {
            metrics::gauge!("nwd_stream_limit_bytes", "stream" => name.clone())
                .set(info.config.max_bytes as f64);
        }
        usage.push(StreamUsage {
            stream: name,
            bytes: info.state.bytes,
            messages: info.state.messages,
            limit_bytes: info.config.max_bytes,
        });
    }
    match js.query_account().await {
        Ok(account) => {
            metrics::gauge!("nwd_jetstream_store_bytes").set(account.storage as f64);
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the account's storage");
            metrics::counter!("nwd_storage_sample_errors_total").increment(1);
        }
    }
    metrics::gauge!("nwd_jetstream_store_limit_bytes").set(layout.store_bytes as f64);
    usage
}

/// Samples [`sample_storage`] every [`STORAGE_SAMPLE_PERIOD`] until
/// `shutdown`. One service runs it (the intake: see its `run`).
pub async fn export_storage(js: jetstream::Context, layout: Layout, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(STORAGE_SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sample_storage(&js, &layout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * DAY_SECS)
    }

    #[test]
    fn a_send_record_outlives_every_redelivery_of_its_outbound_message() {
        // The notifier's consumer redelivers until acked: no bound by count,
        // so the bound is how long OUTBOUND (then DEADLETTER) keeps it.
        assert_eq!(consume::MAX_DELIVER, -1);
        let layout = Layout::from(1);
        let horizon = outbound_redelivery_horizon(&layout).unwrap();
        assert_eq!(horizon, days(400) + days(90));
        assert!(SENDS_TTL >= horizon, "{SENDS_TTL:?} < {horizon:?}");
        let sends = bucket_configs(&layout)
            .into_iter()
            .find(|b| b.bucket == buckets::SENDS)
            .unwrap();
        assert_eq!(sends.max_age, SENDS_TTL);
        // Without an age limit nothing bounds it: no TTL would be safe.
        let forever = stream::Config::default();
        assert_eq!(redelivery_horizon(&forever, &forever), None);
    }

    #[test]
    fn limits_fit_the_store_with_headroom_and_audit_never_discards() {
        let layout = Layout::from(1);
        let streams_ = stream_configs(&layout);
        let buckets_ = bucket_configs(&layout);
        let total: i64 = streams_.iter().map(|c| c.max_bytes).sum::<i64>()
            + buckets_.iter().map(|c| c.max_bytes).sum::<i64>();
        assert!(streams_.iter().all(|c| c.max_bytes > 0));
        assert!(buckets_.iter().all(|c| c.max_bytes > 0));
        // At least a quarter of the server's store is left for everything else.
        assert!(
            total <= (DEFAULT_STORE_BYTES as i64) * 3 / 4,
            "{total} of {DEFAULT_STORE_BYTES}"
        );
        let audit = streams_.iter().find(|c| c.name == streams::AUDIT).unwrap();
        assert_eq!(audit.discard, stream::DiscardPolicy::New);
        assert!(audit.max_age.is_zero());
        let dl = streams_
            .iter()
            .find(|c| c.name == streams::DEADLETTER)
            .unwrap();
        assert_eq!(dl.discard, stream::DiscardPolicy::New);
        // Every stream and bucket has a share.
        for name in streams::ALL.iter().chain(buckets::ALL.iter()) {
            assert!(layout.max_bytes(name) > 0, "{name}");
        }
    }

    #[test]
    fn limits_scale_with_the_configured_store() {
        let small = Layout {
            replicas: 1,
            store_bytes: GIB,
        };
        assert_eq!(small.max_bytes(streams::INBOUND), (GIB / 1000 * 100) as i64);
    }
}
