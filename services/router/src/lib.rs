//! The router: matches contacts to counsellors.
//!
//! Inputs: triaged messages and outreach contacts opened for partner
//! referrals (consumer `router` on CONTACTS), counsellor
//! presence (the `presence` bucket, written by the dashboard) and commands
//! from the dashboard (core NATS request/reply). State: the contact record
//! in the `contacts` bucket, changed only by compare-and-swap. Outputs:
//! pushes to counsellors' dashboards, and `ContactAssigned` /
//! `ContactResolved` on CONTACTS, `OutreachUpdate`s of outreach contacts
//! (`routing::outreach`), screeners, handovers and the switchboard in AUDIT
//! (`routing::screener`, `routing::handover`), the queue snapshot every
//! dashboard shows and the floor snapshot supervisors see ([`queue_feed`]).
//!
//! Handovers (ADR 0019): warm and cold transfers, a supervisor's
//! reassignment, the switchboard (held contacts offered to supervisors
//! only; its state in the `contacts` bucket under `line.switchboard`),
//! follow-ups of people who left (claimed once) and involving a trusted
//! contact under a consent that covers it now.
//!
//! Priority offers (ADR 0017): a counsellor with k free seats is offered the
//! k most urgent contacts they are eligible for (risk, then wait; same
//! language first), first accept wins; the imminent broadcast rings everyone
//! at once. "Take the next" assigns the top of the queue a counsellor is
//! eligible for. The escalation ladder (`nwd-ladder`) fires its first step
//! here and the escalator fires the rest. `routing` holds the effects, one
//! job per file.

pub mod decide;
pub mod line_status;
pub mod queue_feed;
pub mod routing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use nwd_proto::envelope::Envelope;
use nwd_proto::envelope::Header;
use nwd_proto::events::MessageTriaged;
use nwd_proto::referral::OutreachOpened;
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{Event, subjects};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::kv;
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::ServiceConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use routing::Router;

/// Service name in logs and metric labels.
pub const NAME: &str = "router";

const READY_CONTACTS: &str = "contacts-loaded";
const READY_PRESENCE: &str = "presence-watch";
const READY_COMMANDS: &str = "commands";

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-router", about = "No Wrong Door router")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_ROUTER_METRICS_ADDR",
        default_value = "127.0.0.1:9103"
    )]
    pub metrics_addr: SocketAddr,
    /// The directory file (staff, languages, capacity).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// A counsellor whose last heartbeat is older than this counts as offline.
    #[arg(long, env = "NWD_PRESENCE_STALE_MS", default_value_t = 9_000)]
    pub presence_stale_ms: u64,
    /// How long a conversation whose counsellor's connection dropped waits
    /// for them (supervisors are alerted at once) before it goes back to the queue.
    #[arg(long, env = "NWD_ROUTER_ORPHAN_GRACE_MS", default_value_t = 60_000)]
    pub orphan_grace_ms: u64,
    /// How often the queue is swept (offers, stale offers, anything missed).
    #[arg(long, env = "NWD_ROUTER_SWEEP_MS", default_value_t = 1_000)]
    pub sweep_ms: u64,
    /// The line's status (for the chat's wait estimate) is published when
    /// it changes and at least this often.
    #[arg(long, env = "NWD_ROUTER_LINE_STATUS_MS", default_value_t = 10_000)]
    pub line_status_ms: u64,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error("directory schedules: {0}")]
    Schedule(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the router until `shutdown`, then drains and returns `Ok(())`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let directory = nwd_runtime::directory::Live::checked(
        nwd_runtime::directory::load(&config.directory)?,
        nwd_ladder::oncall::check,
    )
    .map_err(Error::Schedule)?;
    let readiness = Readiness::new([
        READY_CONTACTS.to_owned(),
        nwd_runtime::directory::READY.to_owned(),
        READY_PRESENCE.to_owned(),
        READY_COMMANDS.to_owned(),
        format!("consumer:{}", consumers::ROUTER),
    ]);
    let client = bus::connect(&config.nats, NAME).await?;
    readiness.watch_client(client.clone());
    let js = bus::jetstream(client.clone(), &config.nats);
    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));

    let started = start(&config, client, js, directory, &readiness, &shutdown).await;
    let mut tasks = match started {
        Ok(Some(tasks)) => tasks,
        Ok(None) => JoinSet::new(),
        Err(e) => {
            shutdown.cancel();
            let _ = server.await;
            return Err(e);
        }
    };
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "ops server task failed"),
    }
    Ok(())
}

/// Sets up the bus and starts every task; `None` when stopped first.
async fn start(
    config: &Config,
    client: async_nats::Client,
    js: jetstream::Context,
    directory: nwd_runtime::directory::Live,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<Option<JoinSet<()>>, Error> {
    let (streams, buckets) = (
        [streams::CONTACTS, streams::OUTBOUND, streams::AUDIT],
        [buckets::CONTACTS, buckets::PRESENCE, buckets::DIRECTORY],
    );
    match bus::wait_for(&js, &streams, &buckets, shutdown).await {
        Ok(()) => {}
        Err(BusError::Stopped) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let open = |name| bus::open_bucket_with_retry(&js, name, shutdown);
    let (contacts, presence, directory_bucket) = match async {
        Ok::<_, BusError>((
            open(buckets::CONTACTS).await?,
            open(buckets::PRESENCE).await?,
            open(buckets::DIRECTORY).await?,
        ))
    }
    .await
    {
        Ok(stores) => stores,
        Err(BusError::Stopped) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(nwd_runtime::directory::follow(
        directory_bucket,
        directory.clone(),
        readiness.clone(),
        NAME,
        shutdown.clone(),
    ));
    let router = Arc::new(
        Router::new(
            client.clone(),
            js.clone(),
            contacts.clone(),
            directory,
            Duration::from_millis(config.presence_stale_ms),
        )
        .with_orphan_grace(Duration::from_millis(config.orphan_grace_ms)),
    );
    // Every replica keeps every open contact from a watch of the bucket, so
    // contacts opened or changed by another replica are swept here too.
    tasks.spawn(kv::watch_bucket(
        contacts,
        READY_CONTACTS,
        readiness.clone(),
        shutdown.clone(),
        {
            let router = router.clone();
            move |entry| router.contact_entry(&entry)
        },
    ));
    tasks.spawn(kv::watch_bucket(
        presence,
        READY_PRESENCE,
        readiness.clone(),
        shutdown.clone(),
        {
            let router = router.clone();
            move |entry| router.presence_entry(&entry)
        },
    ));
    tasks.spawn(line_status::publish(
        router.clone(),
        client.clone(),
        Duration::from_millis(config.line_status_ms.max(100)),
        shutdown.clone(),
    ));
    tasks.spawn(queue_feed::run(
        router.clone(),
        client.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(serve_commands(
        router.clone(),
        client,
        readiness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(run_queue(
        router.clone(),
        Duration::from_millis(config.sweep_ms.max(10)),
        shutdown.clone(),
    ));
    let spec = ConsumerSpec::new(
        NAME,
        streams::CONTACTS,
        consumers::ROUTER,
        vec![
            subjects::contact_triaged_all(),
            subjects::contact_outreach_all(),
        ],
    );
    tasks.spawn(consume::run(
        js,
        spec,
        Arc::new(Triaged { router }),
        readiness.clone(),
        shutdown.clone(),
    ));
    Ok(Some(tasks))
}

/// Consumer of triaged messages (lane = subject = contact, so one contact's
/// messages are applied in order).
struct Triaged {
    router: Arc<Router>,
}

impl Handler for Triaged {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        if Header::peek(&msg.payload).is_ok_and(|h| h.kind == OutreachOpened::TYPE) {
            return self.outreach(msg).await;
        }
        let Ok(env) = Envelope::<MessageTriaged>::from_bytes(&msg.payload) else {
            return Outcome::Reject("undecodable");
        };
        match self.router.on_triaged(&env.data).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(contact = %env.data.message.contact_id, error = %e, "cannot apply message; retrying");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }

    /// One lane per contact (the subject's last token), so a contact's
    /// outreach and its messages are applied in order.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        let subject = msg.subject.as_str();
        consume::hash(subject.rsplit('.').next().unwrap_or(subject))
    }
}

impl Triaged {
    async fn outreach(&self, msg: &jetstream::Message) -> Outcome {
        let Ok(env) = Envelope::<OutreachOpened>::from_bytes(&msg.payload) else {
            return Outcome::Reject("undecodable");
        };
        match self.router.on_outreach(&env.data).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(contact = %env.data.contact_id, referral_id = %env.data.referral_id, error = %e, "cannot open outreach; retrying");
                Outcome::Retry(Duration::from_millis(500))
            }
        }
    }
}

/// The least time between two sweeps.
const MIN_SWEEP_GAP: Duration = Duration::from_millis(20);

/// Runs the queue when woken (capacity or availability changed) and every
/// `every` (stale heartbeats, anything missed).
async fn run_queue(router: Arc<Router>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = router.woken() => {}
        }
        router.sweep().await;
        // Wake-ups that came during the sweep are served by one more sweep
        // after a short pause, not one each: a sweep passes over the queue.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_SWEEP_GAP) => {}
        }
    }
}

/// Answers dashboard commands (queue group: one replica answers each).
async fn serve_commands(
    router: Arc<Router>,
    client: async_nats::Client,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut delay = Duration::from_millis(100);
    'subscribe: while !shutdown.is_cancelled() {
        match client
            .queue_subscribe(
                subjects::router_command(),
                subjects::ROUTER_QUEUE_GROUP.to_owned(),
            )
            .await
        {
            Ok(mut sub) => {
                readiness.set(READY_COMMANDS, true);
                delay = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = sub.unsubscribe().await;
                            break 'subscribe;
                        }
                        next = sub.next() => next,
                    };
                    let Some(msg) = next else { break };
                    tracker.spawn(command(router.clone(), client.clone(), msg));
                }
                readiness.set(READY_COMMANDS, false);
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to commands; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    readiness.set(READY_COMMANDS, false);
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("commands in flight did not finish in 10 s");
    }
}

async fn command(router: Arc<Router>, client: async_nats::Client, msg: async_nats::Message) {
    let Ok(env) = Envelope::<RouterCommand>::from_bytes(&msg.payload) else {
        tracing::warn!("malformed router command");
        metrics::counter!("nwd_router_commands_total", "service" => NAME, "command" => "malformed", "outcome" => "refused").increment(1);
        reply(
            &client,
            &msg,
            RouterReply::Refused {
                reason: "malformed command".to_owned(),
            },
        )
        .await;
        return;
    };
    let kind = env.data.kind();
    let contact = env.data.contact().map(tracing::field::display);
    let span = tracing::info_span!("command", kind, contact, counsellor = %env.data.counsellor());
    async {
        let (answer, follow_ups) = router.command(env.data).await;
        let outcome = match answer {
            RouterReply::Done => "done",
            RouterReply::Refused { .. } => "refused",
        };
        metrics::counter!("nwd_router_commands_total", "service" => NAME, "command" => kind, "outcome" => outcome).increment(1);
        reply(&client, &msg, answer).await;
        router.follow_up(follow_ups).await;
    }
    .instrument(span)
    .await;
}

async fn reply(client: &async_nats::Client, msg: &async_nats::Message, answer: RouterReply) {
    let Some(to) = msg.reply.clone() else {
        return;
    };
    if let Err(e) = client
        .publish(to, Envelope::new(answer).to_bytes().into())
        .await
    {
        tracing::warn!(error = %e, "cannot send command reply");
    }
}
