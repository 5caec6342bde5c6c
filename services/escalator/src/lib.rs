//! The escalator: fires the escalation ladder of every waiting contact.
//!
//! The deadline of a contact's next step lives in its record in the
//! `contacts` bucket (ADR 0006). Every replica watches the bucket (history
//! first, so a restart rebuilds everything), keeps the open records and an
//! in-memory deadline index, and a sweeper wakes at the next deadline (or
//! at least every `max_tick`). Firing is a compare-and-swap on the record
//! with the pure `nwd_ladder::fire`: of two replicas firing the same
//! deadline one wins and the other, re-reading, finds nothing due. The
//! winner publishes the step's effects (`nwd_runtime::escalation`); a
//! record left with unannounced steps by a crash is announced by whoever
//! sees it, under the same dedupe ids.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv::Operation};
use nwd_ladder::Board;
use nwd_ladder::Floor;
use nwd_proto::contact::{ContactRecord, offered};
use nwd_proto::dashboard::PresenceRecord;
use nwd_proto::streams::{self, buckets};
use nwd_proto::{ContactId, CounsellorId, wire};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::escalation::{self, Announcer};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::ServiceConfig;
use nwd_timers::DeadlineIndex;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Service name in logs and metric labels.
pub const NAME: &str = "escalator";

const READY_CONTACTS: &str = "contacts-watch";
const READY_PRESENCE: &str = "presence-watch";

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-escalator", about = "No Wrong Door escalator")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_ESCALATOR_METRICS_ADDR",
        default_value = "127.0.0.1:9107"
    )]
    pub metrics_addr: SocketAddr,
    /// The directory file (staff, schedules, patients, ladder policy).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// A counsellor whose last heartbeat is older than this counts as offline.
    #[arg(long, env = "NWD_PRESENCE_STALE_MS", default_value_t = 9_000)]
    pub presence_stale_ms: u64,
    /// The sweeper looks at the deadline index at least this often, whatever
    /// woke it (the sweeper of last resort).
    #[arg(long, env = "NWD_ESCALATOR_MAX_TICK_MS", default_value_t = 250)]
    pub max_tick_ms: u64,
    /// How long a step written by someone else (the router) may stay
    /// unannounced before this service publishes its effects itself.
    #[arg(long, env = "NWD_ESCALATOR_ANNOUNCE_GRACE_MS", default_value_t = 2_000)]
    pub announce_grace_ms: u64,
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

/// Shared by the watches and the sweeper.
pub struct Escalator {
    contacts: jetstream::kv::Store,
    directory: nwd_runtime::directory::Live,
    stale_after: time::Duration,
    /// Open contacts, presence and recent waits, kept change by change.
    state: Mutex<Board>,
    /// Next deadline of every waiting contact (its own lock: the sweeper sleeps on it).
    index: Mutex<DeadlineIndex>,
    wake: Notify,
    announcer: Announcer,
    announce_grace: time::Duration,
}

impl std::fmt::Debug for Escalator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escalator").finish_non_exhaustive()
    }
}

impl Escalator {
    fn state(&self) -> MutexGuard<'_, Board> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> MutexGuard<'_, DeadlineIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn floor(&self, now: OffsetDateTime) -> Floor {
        self.state()
            .floor(self.directory.get(), now, self.stale_after)
    }

    /// A contact record changed (or was first seen on start).
    fn contact_entry(&self, entry: &jetstream::kv::Entry) -> Option<ContactRecord> {
        let Ok(id) = entry.key.parse::<ContactId>() else {
            return None;
        };
        let record = match entry.operation {
            Operation::Put => match serde_json::from_slice::<ContactRecord>(&entry.value) {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::error!(contact = %id, "undecodable contact record; ignored");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        let key = id.to_string();
        let mut index = self.index();
        match record.as_ref().and_then(|r| {
            r.escalation
                .as_ref()
                .and_then(|e| e.due.map(|d| (d, e.steps)))
                .filter(|_| r.waiting_since().is_some())
        }) {
            Some((due, steps)) => {
                let earlier = index.next_due().is_none_or(|n| due < n);
                index.set(&key, due, steps);
                if earlier {
                    self.wake.notify_one();
                }
            }
            None => index.cancel(&key),
        }
        let pending = index.len();
        drop(index);
        let mut state = self.state();
        match &record {
            Some(r) => {
                state.put(r.clone(), entry.revision);
            }
            None => state.remove(&id),
        }
        let waiting = state.waiting();
        drop(state);
        metrics::gauge!("nwd_escalator_waiting_contacts", "service" => NAME).set(waiting as f64);
        metrics::gauge!("nwd_escalator_pending_deadlines", "service" => NAME).set(pending as f64);
        record
    }

    fn presence_entry(&self, entry: &jetstream::kv::Entry) {
        let Ok(who) = CounsellorId::parse(&entry.key) else {
            return;
        };
        let record = match entry.operation {
            Operation::Put => serde_json::from_slice::<PresenceRecord>(&entry.value).ok(),
            Operation::Delete | Operation::Purge => None,
        };
        self.state().set_presence(who, record);
    }

    /// Fires one contact's due steps (compare-and-swap) against the floor
    /// as of this batch, then announces them.
    pub async fn fire(&self, id: ContactId, floor: &Floor) {
        let now = floor.now;
        let result = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                let due = rec.escalation.as_ref().and_then(|e| e.due);
                let timed_out = offered(&rec).len();
                let steps = nwd_ladder::fire(&mut rec, floor);
                if steps.is_empty() {
                    return Cas::Keep(None);
                }
                Cas::Write(rec.clone(), Some((rec, due, timed_out)))
            },
        )
        .await;
        match result {
            Ok((Some((rec, due, timed_out)), _)) => {
                if let Some(due) = due {
                    metrics::histogram!("nwd_escalation_lateness_seconds", "service" => NAME)
                        .record((now - due).as_seconds_f64().max(0.0));
                }
                if timed_out > 0 {
                    metrics::counter!("nwd_offers_timed_out_total", "service" => NAME, "risk" => rec.risk.as_str())
                        .increment(timed_out as u64);
                }
                self.announce(&rec).await;
            }
            Ok((None, _)) => {}
            Err(e) => {
                tracing::warn!(contact = %id, error = %e, "cannot fire step; retrying in 1 s");
                let mut index = self.index();
                let key = id.to_string();
                let token = index.get(&key).map_or(0, |(_, t)| t);
                index.set(&key, now + time::Duration::SECOND, token);
            }
        }
    }

    async fn announce(&self, rec: &ContactRecord) {
        if let Err(e) = self.announcer.announce(rec).await {
            tracing::warn!(contact = %rec.id, error = %e, "cannot announce step; retried on the next change or sweep");
        }
    }

    /// Announces steps someone else wrote and did not announce within the grace.
    async fn announce_stragglers(&self, now: OffsetDateTime) {
        let stragglers: Vec<ContactRecord> = {
            let state = self.state();
            state
                .records()
                .filter(|r| {
                    escalation::unannounced(r)
                        .iter()
                        .any(|s| now - s.at >= self.announce_grace)
                })
                .cloned()
                .collect()
        };
        for rec in stragglers {
            // Re-read: the watch may lag behind the announcement.
            if let Ok(read) =
                kv::get::<ContactRecord>(&self.contacts, &wire::key::contact(&rec.id)).await
                && let Some(cur) = read.value
                && !escalation::unannounced(&cur).is_empty()
            {
                tracing::info!(contact = %cur.id, "announcing steps left unannounced");
                self.announce(&cur).await;
            }
        }
    }
}

/// Runs the escalator until `shutdown`, then returns `Ok(())`.
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
        READY_PRESENCE.to_owned(),
        nwd_runtime::directory::READY.to_owned(),
    ]);
    let client = bus::connect(&config.nats, NAME).await?;
    readiness.watch_client(client.clone());
    let js = bus::jetstream(client.clone(), &config.nats);
    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));
    let mut tasks = JoinSet::new();
    let buckets = async {
        let (streams, buckets) = (
            [streams::CONTACTS, streams::OUTBOUND, streams::AUDIT],
            [buckets::CONTACTS, buckets::PRESENCE, buckets::DIRECTORY],
        );
        bus::wait_for(&js, &streams, &buckets, &shutdown).await?;
        let open = |name| bus::open_bucket_with_retry(&js, name, &shutdown);
        Ok::<_, BusError>((
            open(buckets::CONTACTS).await?,
            open(buckets::PRESENCE).await?,
            open(buckets::DIRECTORY).await?,
        ))
    }
    .await;
    match buckets {
        Ok((contacts, presence, directory_bucket)) => {
            tasks.spawn(nwd_runtime::directory::follow(
                directory_bucket,
                directory.clone(),
                readiness.clone(),
                NAME,
                shutdown.clone(),
            ));
            let escalator = Arc::new(Escalator {
                announcer: Announcer {
                    client: client.clone(),
                    js: js.clone(),
                    contacts: contacts.clone(),
                    directory: directory.clone(),
                    service: NAME,
                },
                contacts: contacts.clone(),
                directory,
                stale_after: time::Duration::milliseconds(config.presence_stale_ms as i64),
                state: Mutex::new(Board::default()),
                index: Mutex::new(DeadlineIndex::new()),
                wake: Notify::new(),
                announce_grace: time::Duration::milliseconds(config.announce_grace_ms as i64),
            });
            tasks.spawn(kv::watch_bucket(
                contacts,
                READY_CONTACTS,
                readiness.clone(),
                shutdown.clone(),
                {
                    let e = escalator.clone();
                    move |entry| {
                        e.contact_entry(&entry);
                    }
                },
            ));
            tasks.spawn(kv::watch_bucket(
                presence,
                READY_PRESENCE,
                readiness.clone(),
                shutdown.clone(),
                {
                    let e = escalator.clone();
                    move |entry| e.presence_entry(&entry)
                },
            ));
            tasks.spawn(sweep(
                escalator,
                readiness.clone(),
                Duration::from_millis(config.max_tick_ms.max(10)),
                shutdown.clone(),
            ));
        }
        Err(BusError::Stopped) => {}
        Err(e) => {
            shutdown.cancel();
            let _ = server.await;
            return Err(e.into());
        }
    }
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "ops server task failed"),
    }
    Ok(())
}

/// Fires due deadlines as they come; at least every `max_tick` it also
/// looks for steps left unannounced.
async fn sweep(
    escalator: Arc<Escalator>,
    readiness: Readiness,
    max_tick: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = nwd_timers::sleep_until_due(&escalator.index, &escalator.wake, max_tick) => {}
        }
        // Until the watch has caught up the index is incomplete; firing what
        // is there is still right (each fire re-reads the record).
        let now = OffsetDateTime::now_utc();
        let due = escalator.index().pop_due(now, 512);
        if !due.is_empty() {
            tracing::debug!(n = due.len(), "deadlines due");
        }
        let mut firing = JoinSet::new();
        // One view of the floor per batch (building it is linear in the open contacts).
        let floor = (!due.is_empty()).then(|| Arc::new(escalator.floor(now)));
        for d in due {
            let (Ok(id), Some(floor)) = (d.key.parse::<ContactId>(), floor.clone()) else {
                continue;
            };
            let e = escalator.clone();
            firing.spawn(async move { e.fire(id, &floor).await });
        }
        while firing.join_next().await.is_some() {}
        if readiness.is_ready() {
            escalator.announce_stragglers(now).await;
        }
    }
}
