//! The router's effects, each a compare-and-swap on the contact record with
//! a pure decision (`nwd-ladder`, [`crate::decide`]), followed by pushes to
//! the counsellors concerned. One job per file:
//! - this module: the [`Router`], its mirror of KV state (open contacts and
//!   presence, kept change by change) and the helpers every job shares;
//! - [`offers`]: triaged messages, offering, withdrawing, the queue sweep;
//! - [`orphans`]: conversations whose counsellor's connection dropped;
//! - [`commands`]: the dashboard's commands (accept, decline, resolve, …);
//! - [`handover`]: transfers, a supervisor's reassignment, the
//!   switchboard and follow-ups of people who left (ADR 0019);
//! - [`emergency`], [`outreach`] and [`screener`]: the §2.51 disclosure,
//!   outreach contacts and the C-SSRS screener.
//!
//! The contact record in KV is the truth. The in-memory cache of open
//! contacts and the presence map only feed decisions; every decision is
//! re-made inside the compare-and-swap on the record as read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv::Operation};
use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::{DashboardPush, PresenceRecord, ServerMsg};
use nwd_proto::directory::Directory;
use nwd_proto::router::RouterReply;
use nwd_proto::{ContactId, CounsellorId, Envelope, Event, subjects};
use nwd_runtime::bus;
use nwd_runtime::escalation::Announcer;
use nwd_runtime::kv::{self, KvError};
use nwd_runtime::transcript::{self, TranscriptError};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::NAME;
use crate::decide::{self, Floor};

pub mod commands;
/// The medical-emergency disclosure (42 CFR §2.51).
pub mod emergency;
/// Transfers, reassignment, the switchboard and follow-ups (ADR 0019).
pub mod handover;
pub mod offers;
pub mod orphans;
/// Outreach contacts (partner referrals).
pub mod outreach;
pub mod screener;

use nwd_ladder::Board;
use nwd_ladder::floor as ladder_floor;

/// Why a step did not complete (it is retried: by redelivery or the sweep).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error(transparent)]
    Transcript(#[from] TranscriptError),
}

/// Something to do after a command's reply was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUp {
    /// Push a message to a counsellor's screens (boxed: a `ServerMsg` is large).
    Push(CounsellorId, Box<ServerMsg>),
    /// Run the offer step for this contact.
    Offer(ContactId),
    /// Withdraw this counsellor's offer (they cannot take it).
    Expire(ContactId, CounsellorId),
    /// Capacity or availability changed: run the queue.
    WakeQueue,
}

impl FollowUp {
    pub fn push(who: CounsellorId, msg: ServerMsg) -> Self {
        FollowUp::Push(who, Box::new(msg))
    }
}

/// The router: shared by the consumer lanes, the command tasks, the presence
/// watch and the queue sweep.
pub struct Router {
    client: async_nats::Client,
    js: jetstream::Context,
    contacts: jetstream::kv::Store,
    directory: nwd_runtime::directory::Live,
    stale_after: time::Duration,
    /// Open contacts, presence and recent waits, kept up to date change by
    /// change (a decision does not pass over every contact).
    state: Mutex<Board>,
    /// Wakes the queue task (coalesced).
    wake: Notify,
    /// Wakes the queue feed: the queue changed (coalesced).
    queue_changed: Notify,
    /// Wakes the floor feed: a contact or someone's presence changed.
    floor_changed: Notify,
    /// The line's switchboard as last read from KV (ADR 0019).
    switchboard: Mutex<Option<nwd_proto::handover::Switchboard>>,
    /// Serialises each counsellor's accepts (one lock per counsellor), so
    /// that two accepts by one counsellor cannot take them over capacity
    /// while accepts by different counsellors run in parallel.
    accept_locks: Mutex<HashMap<CounsellorId, Arc<tokio::sync::Mutex<()>>>>,
    /// Publishes the effects of ladder steps this router fired.
    announcer: Announcer,
    /// How long a conversation whose counsellor dropped off waits for them
    /// before it goes back to the queue.
    orphan_grace: time::Duration,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

const PUBLISH_ATTEMPTS: u32 = 3;

impl Router {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        contacts: jetstream::kv::Store,
        directory: nwd_runtime::directory::Live,
        stale_after: Duration,
    ) -> Self {
        let announcer = Announcer {
            client: client.clone(),
            js: js.clone(),
            contacts: contacts.clone(),
            directory: directory.clone(),
            service: NAME,
        };
        Self {
            announcer,
            orphan_grace: time::Duration::minutes(1),
            client,
            js,
            contacts,
            directory,
            stale_after: time::Duration::try_from(stale_after)
                .unwrap_or(time::Duration::seconds(15)),
            state: Mutex::new(Board::default()),
            wake: Notify::new(),
            queue_changed: Notify::new(),
            floor_changed: Notify::new(),
            switchboard: Mutex::new(None),
            accept_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The directory as it is now (it may change at run time).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.get()
    }

    /// Sets the grace before a disconnected counsellor's conversations are requeued.
    pub fn with_orphan_grace(mut self, grace: Duration) -> Self {
        self.orphan_grace = time::Duration::try_from(grace).unwrap_or(self.orphan_grace);
        self
    }

    /// The board, for reading (the floor feed).
    pub(crate) fn state_view(&self) -> MutexGuard<'_, Board> {
        self.state()
    }

    fn state(&self) -> MutexGuard<'_, Board> {
        // Nothing panics while holding the lock; recover the data if it ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The floor as the router knows it now.
    pub fn floor(&self) -> Floor {
        self.state().floor(
            self.directory(),
            OffsetDateTime::now_utc(),
            self.stale_after,
        )
    }

    /// The cached record as a first guess for a compare-and-swap (a right
    /// guess saves the read), or "absent" for a contact known to be new.
    fn guess(&self, id: &ContactId, new: bool) -> Option<kv::Versioned<ContactRecord>> {
        match self.state().versioned(id) {
            Some((record, revision)) => Some(kv::Versioned {
                value: Some(record.clone()),
                revision,
            }),
            None => new.then_some(kv::Versioned {
                value: None,
                revision: 0,
            }),
        }
    }

    /// Records what was read or written at `revision` (newer wins).
    fn remember(&self, record: &ContactRecord, revision: u64) {
        let mut state = self.state();
        let was_queued = state
            .get(&record.id)
            .is_some_and(|r| r.waiting_since().is_some());
        if state.put(record.clone(), revision) {
            self.floor_changed.notify_one();
            for (risk, n) in state.depth() {
                metrics::gauge!("nwd_queue_depth", "service" => NAME, "risk" => risk.as_str())
                    .set(n as f64);
            }
            if was_queued || record.waiting_since().is_some() {
                self.queue_changed.notify_one();
            }
        }
    }

    /// Waits until the queue changed (a contact joined, left, or changed in it).
    pub async fn queue_changed(&self) {
        self.queue_changed.notified().await;
    }

    /// Waits until the floor changed (a contact, someone's presence, the
    /// switchboard).
    pub async fn floor_changed(&self) {
        self.floor_changed.notified().await;
    }

    /// The switchboard as last read (none: never used).
    pub fn switchboard_state(&self) -> Option<nwd_proto::handover::Switchboard> {
        self.switchboard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the switchboard holds new contacts now, and by whom.
    pub(crate) fn holding(&self) -> Option<CounsellorId> {
        self.switchboard_state().filter(|s| s.on).map(|s| s.by)
    }

    /// Records the switchboard as read or written; a change wakes the queue.
    pub(crate) fn set_switchboard(&self, board: Option<nwd_proto::handover::Switchboard>) {
        let changed = {
            let mut cur = self.switchboard.lock().unwrap_or_else(|e| e.into_inner());
            let changed = cur.as_ref().map(|s| s.on) != board.as_ref().map(|s| s.on);
            *cur = board;
            changed
        };
        if changed {
            self.floor_changed.notify_one();
            self.queue_changed.notify_one();
            self.wake_queue();
        }
    }
    /// The queue as the dashboards show it, most urgent first (the ladder's
    /// serving order): no message text, no address.
    pub fn queue_entries(&self) -> Vec<nwd_proto::dashboard::QueueEntry> {
        let directory = self.directory();
        self.state()
            .queued()
            .filter_map(|r| transcript::queue_entry(r, &directory))
            .collect()
    }

    /// People who left before anyone answered and nobody has claimed yet,
    /// longest gone first.
    pub fn follow_up_entries(&self) -> Vec<nwd_proto::dashboard::FollowUpEntry> {
        let directory = self.directory();
        let mut entries: Vec<_> = self
            .state()
            .records()
            .filter_map(|r| transcript::follow_up_entry(r, &directory))
            .collect();
        entries.sort_by_key(|f| f.left.at);
        entries
    }

    /// A contact record changed (or was first seen at start): kept if open.
    pub fn contact_entry(&self, entry: &jetstream::kv::Entry) {
        if entry.key == nwd_proto::wire::key::switchboard() {
            let board = match entry.operation {
                Operation::Put => match serde_json::from_slice(&entry.value) {
                    Ok(b) => Some(b),
                    Err(_) => {
                        tracing::error!("corrupt switchboard record; ignored");
                        return;
                    }
                },
                Operation::Delete | Operation::Purge => None,
            };
            self.set_switchboard(board);
            return;
        }
        let Ok(id) = entry.key.parse::<ContactId>() else {
            return;
        };
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<ContactRecord>(&entry.value) {
                Ok(rec) => {
                    let (was_unheld, newly_offered) = {
                        let state = self.state();
                        let before = state.get(&id);
                        let held_before = before.map_or(&[][..], ladder_floor::offered_to);
                        (
                            before.is_some_and(|r| matches!(r.state, ContactState::Waiting { .. })),
                            ladder_floor::offered_to(&rec)
                                .iter()
                                .any(|c| !held_before.contains(c)),
                        )
                    };
                    self.remember(&rec, entry.revision);
                    // Offered to someone (by another replica or the
                    // escalator's step) who now holds more offers than
                    // seats: the sweep withdraws the less urgent (ADR 0017).
                    if newly_offered && self.over_seats(&rec) {
                        self.wake_queue();
                    }
                    // A contact newly waiting with nobody holding an offer
                    // (opened elsewhere, declined, withdrawn): let the sweep
                    // see whether someone can take it. Not for contacts held
                    // by offers (a new contact this router just offered: a
                    // sweep per new contact would pass over the whole queue
                    // for each).
                    if !was_unheld && matches!(rec.state, ContactState::Waiting { .. }) {
                        self.wake_queue();
                    }
                }
                Err(_) => tracing::error!(contact = %id, "corrupt contact record; skipped"),
            },
            Operation::Delete | Operation::Purge => {
                self.state().remove(&id);
                self.queue_changed.notify_one();
            }
        }
    }

    /// Whether someone holding an offer of this contact holds more offers
    /// than they have free seats.
    fn over_seats(&self, rec: &ContactRecord) -> bool {
        let floor = self.floor();
        ladder_floor::offered_to(rec)
            .iter()
            .any(|c| floor.held_count(c) > floor.free_seats(c) as usize)
    }

    /// Wakes the queue task.
    pub fn wake_queue(&self) {
        self.wake.notify_one();
    }

    /// Waits until the queue is woken.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// A presence entry changed (put, delete or purge).
    pub fn presence_entry(&self, entry: &jetstream::kv::Entry) {
        let Ok(who) = CounsellorId::parse(&entry.key) else {
            tracing::warn!("presence key is not a counsellor id; ignored");
            return;
        };
        let record = match entry.operation {
            Operation::Put => match serde_json::from_slice::<PresenceRecord>(&entry.value) {
                Ok(r) => Some(r),
                Err(_) => {
                    tracing::warn!(counsellor = %who, "undecodable presence record; ignored");
                    return;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        self.set_presence(who, record);
    }

    /// Updates a counsellor's presence; wakes the queue when their
    /// availability changed (not on every heartbeat).
    pub fn set_presence(&self, who: CounsellorId, record: Option<PresenceRecord>) {
        let now = OffsetDateTime::now_utc();
        let available = |p: Option<&PresenceRecord>| {
            p.is_some_and(|p| decide::is_available(p, now, self.stale_after))
        };
        let changed = {
            let mut state = self.state();
            let after = available(record.as_ref());
            let before = state.set_presence(who.clone(), record);
            available(before.as_ref()) != after
        };
        self.floor_changed.notify_one();
        if changed {
            tracing::info!(counsellor = %who, "availability changed");
            self.wake_queue();
        }
    }

    /// Pushes a message to one counsellor's dashboards (core NATS, not
    /// stored: the dashboard rebuilds from KV and streams on reconnect).
    pub async fn push(&self, who: &CounsellorId, msg: ServerMsg) {
        let env = Envelope::new(DashboardPush {
            counsellor: who.clone(),
            msg,
        });
        if let Err(e) = self
            .client
            .publish(subjects::dashboard_push(who), env.to_bytes().into())
            .await
        {
            tracing::warn!(counsellor = %who, error = %e, "push failed");
        }
    }

    async fn publish<T: Event>(
        &self,
        subject: String,
        msg_id: &str,
        event: &Envelope<T>,
    ) -> Result<(), StepError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match bus::publish(&self.js, subject.clone(), msg_id, event).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= PUBLISH_ATTEMPTS => return Err(e.into()),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

pub(crate) fn refused(reason: &str) -> RouterReply {
    RouterReply::Refused {
        reason: reason.to_owned(),
    }
}

pub(crate) fn kv_failure(id: ContactId, e: &KvError) -> (RouterReply, Vec<FollowUp>) {
    tracing::warn!(contact = %id, error = %e, "command failed on the contact record");
    (
        refused("the line could not record this just now; please try again"),
        Vec::new(),
    )
}

/// Staff a step offered the contact to.
fn step_targets(o: &nwd_proto::ladder::StepOutcome) -> &[CounsellorId] {
    use nwd_proto::ladder::StepOutcome;
    match o {
        StepOutcome::Offered { to }
        | StepOutcome::Broadcast { to, .. }
        | StepOutcome::BackupAlerted { to } => to,
        StepOutcome::TrustedContacts { .. }
        | StepOutcome::Acknowledged { .. }
        | StepOutcome::Skipped { .. } => &[],
    }
}
