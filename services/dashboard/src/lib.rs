//! The counsellor dashboard: login, and one websocket per browser carrying
//! offers, conversations and replies (the [`nwd_proto::dashboard`] protocol).
//!
//! ```text
//! browser ──ws──► dashboard ──request──► router          (accept / decline / resolve)
//!                     │ ◄──core push─── router          (offers, withdrawals, messages)
//!                     │ ◄──core sub──── router          (the queue, to every socket)
//!                     │ ◄──core sub──── router          (the floor, to supervisors)
//!                     │ ──publish────► OUTBOUND          (replies)
//!                     │ ──publish────► CONTACTS / AUDIT  (private notes / who viewed what)
//!                     │ ──cas────────► replies bucket    (a reply's body hash: resends)
//!                     │ ◄──core sub─── OUTBOUND status   (delivery ticks)
//!                     ├ ──cas────────► presence bucket   (status + heartbeat)
//!                     └ ◄─watch──────► sessions bucket   (logins; logout deletes)
//! ```
//!
//! The dashboard keeps no state of its own beyond the open sockets: contacts
//! are read from the `contacts` bucket, transcripts from the streams,
//! logins from the `sessions` bucket and the browser resends it has accepted
//! from the `replies` bucket, so a reconnecting browser (or a restarted
//! dashboard) gets the same picture. Every router command names the
//! counsellor of the socket's authenticated session, never one the browser
//! sends.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::streams::{self, buckets};
use nwd_proto::subjects;
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::{Secret, ServiceConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod audit;
pub mod credentials;
pub mod feeds;
pub mod floor;
pub mod http;
pub mod hub;
pub mod monitor;
pub mod notes;
pub mod presence;
pub mod profile;
pub mod queue;
pub mod reply;
pub mod revocation;
pub mod session;
pub mod socket;
pub mod throttle;

/// Service name, for logs and metric labels.
pub const NAME: &str = "dashboard";

/// Shortest accepted session key (HMAC-SHA256 key), in bytes.
pub const MIN_SESSION_KEY_BYTES: usize = 32;

/// When the session cookie is marked `Secure`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// When the public URL is https.
    Auto,
    Always,
    Never,
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-dashboard", about = "No Wrong Door counsellor dashboard")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where the dashboard (page, websocket, ops endpoints) listens.
    #[arg(long, env = "NWD_DASHBOARD_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// The directory file (staff and their password hashes).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// Key under which session ids are stored (HMAC-SHA256, at least 32
    /// bytes). No default; changing it ends every session.
    #[arg(long, env = "NWD_SESSION_KEY")]
    pub session_key: Secret,
    /// The URL browsers use to reach the dashboard, e.g.
    /// `https://dashboard.example.org`. The websocket opens only from this
    /// origin (scheme, host and port); unset, from `http://` and the
    /// request's `Host`.
    #[arg(long, env = "NWD_DASHBOARD_PUBLIC_URL")]
    pub public_url: Option<url::Url>,
    /// Mark the session cookie `Secure`: `auto` when the public URL is https.
    #[arg(long, env = "NWD_DASHBOARD_COOKIE_SECURE", value_enum, default_value_t = CookieSecure::Auto)]
    pub cookie_secure: CookieSecure,
    /// How long a login lasts, in seconds (at most 12 hours).
    #[arg(long, env = "NWD_DASHBOARD_SESSION_TTL_SECS", default_value_t = 43_200)]
    pub session_ttl_secs: u64,
    /// Login attempts allowed per username per minute (burst of 3).
    #[arg(
        long,
        env = "NWD_DASHBOARD_LOGIN_PER_USERNAME_PER_MINUTE",
        default_value = "5"
    )]
    pub login_per_username_per_minute: NonZeroU32,
    /// Login attempts allowed per client address per minute (burst of 10).
    #[arg(
        long,
        env = "NWD_DASHBOARD_LOGIN_PER_ADDRESS_PER_MINUTE",
        default_value = "30"
    )]
    pub login_per_address_per_minute: NonZeroU32,
    /// Proxies whose `X-Forwarded-For` names the client address, comma
    /// separated. Empty (the default): the socket's peer is the client.
    #[arg(long, env = "NWD_DASHBOARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// How often an open dashboard refreshes the counsellor's presence heartbeat
    /// (and pings the browser), in milliseconds.
    #[arg(long, env = "NWD_DASHBOARD_HEARTBEAT_MS", default_value_t = 3000)]
    pub heartbeat_ms: u64,
    /// How long to wait for the router to answer a command, in milliseconds.
    #[arg(long, env = "NWD_DASHBOARD_COMMAND_TIMEOUT_MS", default_value_t = 3000)]
    pub command_timeout_ms: u64,
    /// A socket silent this long (no frame, not even a pong) is closed, so a
    /// vanished laptop does not stay "available". Milliseconds.
    #[arg(long, env = "NWD_DASHBOARD_IDLE_TIMEOUT_MS", default_value_t = 9000)]
    pub idle_timeout_ms: u64,
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
    #[error("the session key must be at least {MIN_SESSION_KEY_BYTES} bytes")]
    WeakSessionKey,
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("the public URL must be http or https with a host, not {0}")]
    PublicUrl(url::Url),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Knobs, from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat: Duration,
    pub command_timeout: Duration,
    pub idle_timeout: Duration,
    pub cookie_secure: bool,
    /// The only origin the websocket opens from; `None`: `http://` + `Host`.
    pub origin: Option<url::Origin>,
    pub trusted_proxies: Vec<IpAddr>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, Error> {
        if config.heartbeat_ms == 0 || config.command_timeout_ms == 0 {
            return Err(Error::Config(
                "heartbeat_ms and command_timeout_ms must be positive",
            ));
        }
        if config.idle_timeout_ms <= config.heartbeat_ms {
            return Err(Error::Config("idle_timeout_ms must exceed heartbeat_ms"));
        }
        if config.session_ttl_secs == 0 || config.session_ttl_secs > bus::SESSIONS_MAX_AGE.as_secs()
        {
            return Err(Error::Config(
                "session_ttl_secs must be positive and at most 12 hours",
            ));
        }
        let https = match &config.public_url {
            Some(u) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => {
                return Err(Error::PublicUrl(u.clone()));
            }
            Some(u) => u.scheme() == "https",
            None => false,
        };
        Ok(Self {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            command_timeout: Duration::from_millis(config.command_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            cookie_secure: match config.cookie_secure {
                CookieSecure::Auto => https,
                CookieSecure::Always => true,
                CookieSecure::Never => false,
            },
            origin: config.public_url.as_ref().map(url::Url::origin),
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }
}

/// The buckets the dashboard reads and writes, opened once the bus is set up.
#[derive(Debug, Clone)]
pub struct Stores {
    pub contacts: jetstream::kv::Store,
    pub presence: jetstream::kv::Store,
    /// Replies accepted from browsers (dedupe of resends).
    pub replies: jetstream::kv::Store,
    pub sessions: jetstream::kv::Store,
}

/// Everything a request or a socket needs.
pub struct App {
    /// The directory, kept current from the `directory` bucket (a staff
    /// member removed there loses access at once).
    pub directory: nwd_runtime::directory::Live,
    pub sessions: session::Sessions,
    /// Login rate limits and back-off, checked before any password hash.
    pub throttle: throttle::Throttle,
    pub credentials: credentials::Credentials,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Set once the streams and buckets exist.
    pub stores: OnceLock<Stores>,
    pub hub: hub::Hub,
    /// The newest queue snapshot from the router.
    pub queue: queue::Queue,
    /// The newest floor snapshot from the router (supervisors only).
    pub floor: floor::Floor,
    /// The views recorded in AUDIT (once per counsellor, contact and view).
    pub viewed: audit::Seen,
    /// Supervisors' silent monitorings in this process.
    pub monitors: monitor::Monitors,
    pub settings: Settings,
    /// Cancelled on shutdown; every socket's own token is a child of it.
    pub shutdown: CancellationToken,
    /// Socket and feed tasks, waited for on shutdown.
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
    /// The buckets, or `None` while the bus is not set up yet.
    pub fn stores(&self) -> Option<&Stores> {
        self.stores.get()
    }
}

impl App {
    /// Checks the config, loads the directory, connects to NATS (without
    /// waiting for it) and starts setting up the bus in the background:
    /// `readiness` turns ready once streams, buckets and subscriptions are in place.
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<(Arc<App>, Readiness), Error> {
        let directory =
            nwd_runtime::directory::Live::new(nwd_runtime::directory::load(&config.directory)?);
        if config.session_key.expose().len() < MIN_SESSION_KEY_BYTES {
            return Err(Error::WeakSessionKey);
        }
        let settings = Settings::from_config(config)?;
        let ttl =
            time::Duration::seconds(i64::try_from(config.session_ttl_secs).unwrap_or(i64::MAX));
        let sessions = session::Sessions::new(config.session_key.expose().as_bytes(), ttl)
            .map_err(|_| Error::WeakSessionKey)?;
        let throttle = throttle::Throttle::new(throttle::Rates {
            per_username_per_minute: config.login_per_username_per_minute,
            per_address_per_minute: config.login_per_address_per_minute,
        });
        let credentials = credentials::Credentials::new().await;
        let client = bus::connect(&config.nats, NAME).await?;
        let js = bus::jetstream(client.clone(), &config.nats);
        let readiness = Readiness::new(["bus", "subscriptions"]);
        readiness.watch_client(client.clone());
        let app = Arc::new(App {
            directory,
            sessions,
            throttle,
            credentials,
            client,
            js,
            stores: OnceLock::new(),
            hub: hub::Hub::default(),
            queue: queue::Queue::default(),
            floor: floor::Floor::default(),
            viewed: audit::Seen::default(),
            monitors: monitor::Monitors::default(),
            settings,
            shutdown,
            tasks: TaskTracker::new(),
        });
        app.tasks.spawn(set_up(app.clone(), readiness.clone()));
        Ok((app, readiness))
    }

    /// Waits (bounded) for socket and feed tasks after shutdown, and flushes NATS.
    pub async fn drain(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("dashboard tasks did not finish within 10 s");
        }
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "could not flush the NATS connection");
        }
    }
}

/// Runs the dashboard until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (app, readiness) = App::start(&config, shutdown.clone()).await?;
    let router = http::routes(app.clone()).merge(ops::routes(readiness));
    let served = ops::serve(listener, router, shutdown).await;
    // Also when serving failed on its own: stop and drain everything else.
    app.drain().await;
    served?;
    Ok(())
}

/// Waits for streams and buckets, opens the buckets, subscribes to the router's
/// pushes and to delivery statuses, starts the heartbeat: then the dashboard is ready.
async fn set_up(app: Arc<App>, readiness: Readiness) {
    let shutdown = app.shutdown.clone();
    let (streams, buckets) = (
        [streams::CONTACTS, streams::OUTBOUND],
        [
            buckets::CONTACTS,
            buckets::PRESENCE,
            buckets::DIRECTORY,
            buckets::SESSIONS,
            buckets::REPLIES,
        ],
    );
    if bus::wait_for(&app.js, &streams, &buckets, &shutdown)
        .await
        .is_err()
    {
        return;
    }
    let mut delay = Duration::from_millis(100);
    let stores = loop {
        let opened = async {
            Ok::<_, jetstream::context::KeyValueError>(Stores {
                contacts: bus::bucket(&app.js, buckets::CONTACTS).await?,
                presence: bus::bucket(&app.js, buckets::PRESENCE).await?,
                replies: bus::bucket(&app.js, buckets::REPLIES).await?,
                sessions: bus::bucket(&app.js, buckets::SESSIONS).await?,
            })
        };
        match opened.await {
            Ok(s) => break s,
            Err(e) => tracing::warn!(error = %e, "cannot open buckets; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    };
    app.tasks.spawn(revocation::watch(
        app.clone(),
        stores.sessions.clone(),
        readiness.clone(),
    ));
    app.tasks.spawn(revocation::sweep(app.clone()));
    app.tasks.spawn(throttle_pruning(app.clone()));
    let _ = app.stores.set(stores);
    readiness.set("bus", true);
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
        Err(e) => tracing::warn!(error = %e, "cannot open the directory bucket; using the file"),
    }

    let pushes = loop {
        let subscribed = async {
            let pushes = app.client.subscribe(subjects::dashboard_push_all()).await?;
            let statuses = app
                .client
                .subscribe(subjects::outbound_status_all())
                .await?;
            let alerts = app.client.subscribe(subjects::ops_alert()).await?;
            let queue = app.client.subscribe(subjects::dashboard_queue()).await?;
            let floor = app.client.subscribe(subjects::dashboard_floor()).await?;
            // A flush only empties our buffer; a request's answer proves the
            // server has processed the subscriptions sent before it.
            round_trip(&app.client).await?;
            Ok::<_, async_nats::Error>((pushes, statuses, alerts, queue, floor))
        };
        match subscribed.await {
            Ok(s) => break s,
            Err(e) => tracing::warn!(error = %e, "cannot subscribe; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    };
    let (pushes, statuses, alerts, queue, floor) = pushes;
    app.tasks.spawn(feeds::forward_queue(app.clone(), queue));
    app.tasks.spawn(feeds::forward_floor(app.clone(), floor));
    app.tasks.spawn(feeds::forward_pushes(app.clone(), pushes));
    app.tasks
        .spawn(feeds::forward_ops_alerts(app.clone(), alerts));
    app.tasks
        .spawn(feeds::forward_statuses(app.clone(), statuses));
    app.tasks.spawn(presence::heartbeat(app.clone()));
    readiness.set("subscriptions", true);
    tracing::info!("dashboard ready");
}

/// Prunes the login throttle's keyed state and the journals of counsellors
/// long gone every minute, so both stay bounded.
async fn throttle_pruning(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        app.throttle.prune(std::time::Instant::now());
        app.hub.prune_journals();
        metrics::gauge!("nwd_dashboard_login_throttle_keys", "service" => NAME)
            .set(app.throttle.keys() as f64);
    }
}

/// Waits until the server has processed everything this client sent so far:
/// a request nobody answers comes back "no responders" after the server has
/// handled the commands queued before it.
pub async fn round_trip(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    use async_nats::RequestErrorKind;
    match client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<Settings, Error> {
        let mut argv = vec!["nwd-dashboard", "--session-key", "k"];
        argv.extend_from_slice(args);
        Settings::from_config(&Config::try_parse_from(argv).unwrap())
    }

    #[test]
    fn the_cookie_is_secure_when_the_public_url_is_https_unless_forced() {
        assert!(!settings(&[]).unwrap().cookie_secure);
        let https = ["--public-url", "https://dash.example.org"];
        assert!(settings(&https).unwrap().cookie_secure);
        assert!(
            !settings(&[&https[..], &["--cookie-secure", "never"]].concat())
                .unwrap()
                .cookie_secure
        );
        assert!(
            settings(&["--cookie-secure", "always"])
                .unwrap()
                .cookie_secure
        );
        assert!(
            settings(&["--public-url", "http://127.0.0.1:8090"])
                .unwrap()
                .origin
                .is_some()
        );
    }

    #[test]
    fn nonsense_is_refused_at_start() {
        assert!(matches!(
            settings(&["--public-url", "ftp://dash.example.org"]),
            Err(Error::PublicUrl(_))
        ));
        assert!(matches!(
            settings(&["--session-ttl-secs", "43201"]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            settings(&["--session-ttl-secs", "0"]),
            Err(Error::Config(_))
        ));
        assert!(
            Config::try_parse_from([
                "x",
                "--session-key",
                "k",
                "--trusted-proxies",
                "10.0.0.1,nope"
            ])
            .is_err()
        );
        let proxies = settings(&["--trusted-proxies", "10.0.0.1,::1"]).unwrap();
        assert_eq!(proxies.trusted_proxies.len(), 2);
    }
}
