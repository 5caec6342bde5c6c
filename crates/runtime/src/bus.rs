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
/// work too. See `docs/security-nats.md`.
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

const DAY: Duration = Duration::from_secs(24 * 3600);

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
        base(buckets::DIRECTORY, 10, Duration::ZERO),
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
    [
        streams::INBOUND,
        streams::CONTACTS,
        streams::OUTBOUND,
        streams::AUDIT,
        buckets::CONTACTS,
        buckets::THREADS,
        buckets::PRESENCE,
        buckets::SENDS,
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
