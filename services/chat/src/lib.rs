//! The patient web chat: a small page (and an embed script for partner
//! sites), and a resumable websocket per patient session whose messages
//! enter `INBOUND` like SMS (ADR 0016).
//!
//! ```text
//! page ──ws──► chat ──publish (ack, then ack to page)──► INBOUND inbound.chat.<session>
//!                │ ◄──ordered consumer from last_seen+1── OUTBOUND outbound.chat.<session>.*
//!                │ ◄──ordered consumer (history)───────── INBOUND inbound.chat.<session>
//!                ├ ◄──consumer chat-notes─── CONTACTS assigned / resolved → notes (OUTBOUND)
//!                ├ ──create / get / update / delete──► chat_sessions bucket (keyed token hashes, read marks)
//!                ├ ◄─request── dashboard chat.read.<session> (queue group chat) → mark kept → chat.seen.<session>
//!                ├ ◄─subscribe── router line.status (the wait estimate)
//!                └ ◄─watch── directory bucket (doors, allowed embedding origins)
//! ```
//!
//! The chat keeps no state of its own beyond open sockets: a session is its
//! bucket record, its history is the streams, so a restarted chat (or
//! another replica) resumes any page.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::streams::{self, buckets};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::{Secret, ServiceConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod feed;
pub mod http;
pub mod limits;
pub mod line;
pub mod notes;
pub mod reads;
pub mod socket;
pub mod tokens;

/// Service name, for logs and metric labels.
pub const NAME: &str = "chat";

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-chat", about = "No Wrong Door patient web chat")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where the chat (page, websocket, ops endpoints) listens.
    #[arg(long, env = "NWD_CHAT_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// The directory file (partners: doors and allowed embedding origins).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// Key of the stored token hashes (HMAC-SHA256, at least 32 bytes). No
    /// default; changing it ends every chat session (pages start new ones).
    #[arg(long, env = "NWD_CHAT_TOKEN_KEY")]
    pub token_key: Secret,
    /// The URL pages use to reach the chat, e.g. `https://chat.example.org`:
    /// the chat's own origin, always allowed to open the websocket. Unset:
    /// `http://` and the request's `Host`.
    #[arg(long, env = "NWD_CHAT_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// How long a session's token lasts after its last activity (a resume,
    /// a message), in seconds: each activity extends it (at most 24 hours).
    #[arg(long, env = "NWD_CHAT_SESSION_TTL_SECS", default_value_t = 14_400)]
    pub session_ttl_secs: u64,
    /// The most a session's token lasts from its start, however active, in
    /// seconds (at least the TTL, at most 24 hours).
    #[arg(long, env = "NWD_CHAT_SESSION_MAX_SECS", default_value_t = 86_400)]
    pub session_max_secs: u64,
    /// Messages a session may send per minute (burst of 10).
    #[arg(long, env = "NWD_CHAT_MESSAGES_PER_MINUTE", default_value = "30")]
    pub messages_per_minute: NonZeroU32,
    /// New sessions per client address per minute (burst of 3).
    #[arg(
        long,
        env = "NWD_CHAT_SESSIONS_PER_ADDRESS_PER_MINUTE",
        default_value = "6"
    )]
    pub sessions_per_address_per_minute: NonZeroU32,
    /// Proxies whose `X-Forwarded-For` names the client address, comma separated.
    #[arg(long, env = "NWD_CHAT_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// The neutral site quick exit replaces the page with.
    #[arg(
        long,
        env = "NWD_CHAT_QUICK_EXIT_URL",
        default_value = "https://www.google.com/search?q=weather"
    )]
    pub quick_exit_url: url::Url,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error("NWD_CHAT_TOKEN_KEY: {0}")]
    TokenKey(#[from] tokens::TokenError),
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Knobs, from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The chat's own origin; `None`: `http://` + `Host`.
    pub origin: Option<url::Origin>,
    pub trusted_proxies: Vec<IpAddr>,
    pub quick_exit_url: url::Url,
}

/// Everything a request or a socket needs.
pub struct App {
    pub directory: nwd_runtime::directory::Live,
    pub tokens: tokens::Tokens,
    pub limits: limits::Limits,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    /// The `chat_sessions` bucket, once the bus is set up.
    pub sessions: OnceLock<jetstream::kv::Store>,
    pub settings: Settings,
    /// The router's latest line status (the wait estimate).
    pub line_status: tokio::sync::watch::Sender<Option<nwd_proto::router::LineStatus>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn sessions(&self) -> Option<&jetstream::kv::Store> {
        self.sessions.get()
    }
}

fn settings(config: &Config) -> Result<Settings, Error> {
    if config.session_ttl_secs == 0
        || config.session_ttl_secs > bus::CHAT_SESSIONS_MAX_AGE.as_secs()
    {
        return Err(Error::Config(
            "session_ttl_secs must be positive and at most 24 hours",
        ));
    }
    if config.session_max_secs < config.session_ttl_secs
        || config.session_max_secs > bus::CHAT_SESSIONS_MAX_AGE.as_secs()
    {
        return Err(Error::Config(
            "session_max_secs must be at least session_ttl_secs and at most 24 hours",
        ));
    }
    if let Some(u) = &config.public_url
        && (!matches!(u.scheme(), "http" | "https") || u.host().is_none())
    {
        return Err(Error::Config("the public URL must be http(s) with a host"));
    }
    if !matches!(config.quick_exit_url.scheme(), "http" | "https") {
        return Err(Error::Config("the quick exit URL must be http(s)"));
    }
    Ok(Settings {
        origin: config.public_url.as_ref().map(url::Url::origin),
        trusted_proxies: config.trusted_proxies.clone(),
        quick_exit_url: config.quick_exit_url.clone(),
    })
}

/// Runs the chat until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let settings = settings(&config)?;
    let directory =
        nwd_runtime::directory::Live::new(nwd_runtime::directory::load(&config.directory)?);
    let secs = |s: u64| time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
    let tokens = tokens::Tokens::new(
        config.token_key.expose().as_bytes(),
        secs(config.session_ttl_secs),
        secs(config.session_max_secs),
    )?;
    let limits = limits::Limits::new(
        config.messages_per_minute,
        config.sessions_per_address_per_minute,
    );
    let client = bus::connect(&config.nats, NAME).await?;
    let js = bus::jetstream(client.clone(), &config.nats);
    let readiness = Readiness::new([
        "bus".to_owned(),
        nwd_runtime::directory::READY.to_owned(),
        format!("consumer:{}", streams::consumers::CHAT_NOTES),
        reads::READY.to_owned(),
    ]);
    readiness.watch_client(client.clone());
    let app = Arc::new(App {
        directory,
        tokens,
        limits,
        js,
        client,
        sessions: OnceLock::new(),
        settings,
        line_status: tokio::sync::watch::Sender::new(None),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
    });
    app.tasks.spawn(line::follow(
        app.client.clone(),
        app.line_status.clone(),
        shutdown.clone(),
    ));
    app.tasks.spawn(set_up(app.clone(), readiness.clone()));
    let router = http::routes(app.clone()).merge(ops::routes(readiness));
    let served = ops::serve(listener, router, shutdown).await;
    app.shutdown.cancel();
    app.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), app.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("chat sockets did not finish within 10 s");
    }
    if let Err(e) = app.client.flush().await {
        tracing::warn!(error = %e, "could not flush the NATS connection");
    }
    served?;
    Ok(())
}

/// Waits for the streams and buckets, opens the session bucket and follows
/// the directory: then the chat is ready.
async fn set_up(app: Arc<App>, readiness: Readiness) {
    let shutdown = app.shutdown.clone();
    let (streams, buckets) = (
        [streams::INBOUND, streams::OUTBOUND, streams::CONTACTS],
        [buckets::CHAT_SESSIONS, buckets::DIRECTORY],
    );
    if bus::wait_for(&app.js, &streams, &buckets, &shutdown)
        .await
        .is_err()
    {
        return;
    }
    let Ok(sessions) =
        bus::open_bucket_with_retry(&app.js, buckets::CHAT_SESSIONS, &shutdown).await
    else {
        return;
    };
    let _ = app.sessions.set(sessions.clone());
    readiness.set("bus", true);
    app.tasks.spawn(reads::serve(
        app.client.clone(),
        sessions,
        readiness.clone(),
        shutdown.clone(),
    ));
    match bus::bucket(&app.js, buckets::DIRECTORY).await {
        Ok(store) => {
            app.tasks.spawn(nwd_runtime::directory::follow(
                store,
                app.directory.clone(),
                readiness.clone(),
                NAME,
                shutdown.clone(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the directory bucket; using the file");
            readiness.set(nwd_runtime::directory::READY, true);
        }
    }
    app.tasks.spawn(prune_limits(app.clone()));
    app.tasks.spawn(nwd_runtime::consume::run(
        app.js.clone(),
        nwd_runtime::consume::ConsumerSpec::new(
            NAME,
            streams::CONTACTS,
            streams::consumers::CHAT_NOTES,
            vec![
                nwd_proto::subjects::contact_assigned_all(),
                nwd_proto::subjects::contact_resolved_all(),
            ],
        ),
        notes::handler(app.js.clone()),
        readiness.clone(),
        shutdown.clone(),
    ));
    tracing::info!("chat ready");
}

/// Keeps the rate limiters' keyed state bounded.
async fn prune_limits(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => app.limits.prune(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parsed(args: &[&str]) -> Result<Settings, Error> {
        let mut argv = vec!["nwd-chat", "--token-key", "k"];
        argv.extend_from_slice(args);
        settings(&Config::try_parse_from(argv).unwrap())
    }

    #[test]
    fn nonsense_is_refused_at_start() {
        assert!(parsed(&[]).is_ok());
        assert!(matches!(
            parsed(&["--session-ttl-secs", "0"]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parsed(&["--session-ttl-secs", "86401"]),
            Err(Error::Config(_))
        ));
        assert!(parsed(&["--session-ttl-secs", "600", "--session-max-secs", "3600"]).is_ok());
        assert!(matches!(
            parsed(&["--session-ttl-secs", "7200", "--session-max-secs", "3600"]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parsed(&["--session-max-secs", "86401"]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parsed(&["--public-url", "ftp://chat.example.org"]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            parsed(&["--quick-exit-url", "javascript:alert(1)"]),
            Err(Error::Config(_))
        ));
        assert_eq!(
            parsed(&["--public-url", "https://chat.example.org"])
                .unwrap()
                .origin
                .unwrap()
                .ascii_serialization(),
            "https://chat.example.org"
        );
    }
}
