//! The counsellor dashboard: login, and one websocket per browser carrying
//! offers, conversations and replies (the [`nwd_proto::dashboard`] protocol).
//!
//! ```text
//! browser ──ws──► dashboard ──request──► router          (accept / decline / resolve)
//!                     │ ◄──core push─── router          (offers, withdrawals, messages)
//!                     │ ──publish────► OUTBOUND          (replies)
//!                     │ ◄──core sub─── OUTBOUND status   (delivery ticks)
//!                     └ ──cas────────► presence bucket   (status + heartbeat)
//! ```
//!
//! The dashboard keeps no state of its own beyond the open sockets: contacts
//! are read from the `contacts` bucket and transcripts from the streams, so a
//! reconnecting browser (or a restarted dashboard) gets the same picture.

use std::net::SocketAddr;
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

pub mod credentials;
pub mod feeds;
pub mod http;
pub mod hub;
pub mod presence;
pub mod session;
pub mod socket;

/// Service name, for logs and metric labels.
pub const NAME: &str = "dashboard";

/// Shortest accepted session key (HMAC-SHA256 key), in bytes.
pub const MIN_SESSION_KEY_BYTES: usize = 32;

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
    /// Key that signs session cookies (at least 32 bytes). No default.
    #[arg(long, env = "NWD_SESSION_KEY")]
    pub session_key: Secret,
    /// Mark the session cookie `Secure` (set behind HTTPS).
    #[arg(long, env = "NWD_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
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
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Timing knobs, from [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub heartbeat: Duration,
    pub command_timeout: Duration,
    pub idle_timeout: Duration,
    pub cookie_secure: bool,
}

/// The buckets the dashboard reads and writes, opened once the bus is set up.
#[derive(Debug, Clone)]
pub struct Stores {
    pub contacts: jetstream::kv::Store,
    pub presence: jetstream::kv::Store,
}

/// Everything a request or a socket needs.
pub struct App {
    /// The directory, kept current from the `directory` bucket (a staff
    /// member removed there loses access at once).
    pub directory: nwd_runtime::directory::Live,
    pub sessions: session::Sessions,
    pub credentials: credentials::Credentials,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Set once the streams and buckets exist.
    pub stores: OnceLock<Stores>,
    pub hub: hub::Hub,
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
        if config.heartbeat_ms == 0 || config.command_timeout_ms == 0 {
            return Err(Error::Config(
                "heartbeat_ms and command_timeout_ms must be positive",
            ));
        }
        if config.idle_timeout_ms <= config.heartbeat_ms {
            return Err(Error::Config("idle_timeout_ms must exceed heartbeat_ms"));
        }
        let sessions = session::Sessions::new(config.session_key.expose().as_bytes())
            .map_err(|_| Error::WeakSessionKey)?;
        let settings = Settings {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            command_timeout: Duration::from_millis(config.command_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            cookie_secure: config.cookie_secure,
        };
        let credentials = credentials::Credentials::new().await;
        let client = bus::connect(&config.nats, NAME).await?;
        let js = bus::jetstream(client.clone(), &config.nats);
        let readiness = Readiness::new(["bus", "subscriptions"]);
        readiness.watch_client(client.clone());
        let app = Arc::new(App {
            directory,
            sessions,
            credentials,
            client,
            js,
            stores: OnceLock::new(),
            hub: hub::Hub::default(),
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
        [buckets::CONTACTS, buckets::PRESENCE, buckets::DIRECTORY],
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
            // A flush only empties our buffer; a request's answer proves the
            // server has processed the subscriptions sent before it.
            round_trip(&app.client).await?;
            Ok::<_, async_nats::Error>((pushes, statuses))
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
    let (pushes, statuses) = pushes;
    app.tasks.spawn(feeds::forward_pushes(app.clone(), pushes));
    app.tasks
        .spawn(feeds::forward_statuses(app.clone(), statuses));
    app.tasks.spawn(presence::heartbeat(app.clone()));
    readiness.set("subscriptions", true);
    tracing::info!("dashboard ready");
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
