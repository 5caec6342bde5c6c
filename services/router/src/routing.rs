//! The router's effects: applying triaged messages, offering, accepting,
//! declining, resolving and withdrawing — each a compare-and-swap on the
//! contact record with a pure decision (see [`crate::decide`]), followed by
//! pushes to the counsellors concerned.
//!
//! The contact record in KV is the truth. The in-memory cache of open
//! contacts and the presence map only feed decisions; every decision is
//! re-made inside the compare-and-swap on the record as read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, kv::Operation};
use futures::StreamExt;
use nwd_proto::contact::{Applied, ContactRecord, ContactState, TransitionError};
use nwd_proto::dashboard::{
    DashboardPush, MessageView, PresenceRecord, ReasonView, ServerMsg, WithdrawReason,
};
use nwd_proto::directory::Directory;
use nwd_proto::events::{ContactAssigned, ContactResolved, MessageTriaged};
use nwd_proto::ladder::{Escalation, StepRecord};
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::{ContactId, CounsellorId, Envelope, Event, subjects, wire};
use nwd_runtime::bus;
use nwd_runtime::escalation::Announcer;
use nwd_runtime::kv::{self, Cas, KvError};
use nwd_runtime::transcript::{self, TranscriptError};
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::NAME;
use crate::decide::{self, Floor};

/// The medical-emergency disclosure (42 CFR §2.51). A child of this module
/// (not declared in `lib.rs`) so it can use the router's private parts.
#[path = "emergency.rs"]
pub mod emergency;
/// Outreach contacts (partner referrals). A child like [`emergency`].
#[path = "outreach.rs"]
pub mod outreach;
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
    Push(CounsellorId, ServerMsg),
    /// Run the offer step for this contact.
    Offer(ContactId),
    /// Withdraw this counsellor's offer (they cannot take it).
    Expire(ContactId, CounsellorId),
    /// Capacity or availability changed: run the queue.
    WakeQueue,
}

/// Offers written into a contact's record, to be pushed.
struct Offers {
    record: ContactRecord,
    to: Vec<CounsellorId>,
    messages: Vec<MessageView>,
}

/// Result of applying a triaged message.
struct Triaged {
    record: ContactRecord,
    /// Steps of the ladder fired in the same write (the first, on open).
    steps: Vec<StepRecord>,
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

/// Contacts a sweep decides at once.
const SWEEP_CONCURRENCY: usize = 8;

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
        if state.put(record.clone(), revision) {
            for (risk, n) in state.depth() {
                metrics::gauge!("nwd_queue_depth", "service" => NAME, "risk" => risk.as_str())
                    .set(n as f64);
            }
        }
    }

    /// A contact record changed (or was first seen at start): kept if open.
    pub fn contact_entry(&self, entry: &jetstream::kv::Entry) {
        let Ok(id) = entry.key.parse::<ContactId>() else {
            return;
        };
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<ContactRecord>(&entry.value) {
                Ok(rec) => {
                    let was_unheld = self
                        .state()
                        .get(&id)
                        .is_some_and(|r| matches!(r.state, ContactState::Waiting { .. }));
                    self.remember(&rec, entry.revision);
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
            }
        }
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

    // ------------------------------------------------------------ messages

    /// Applies a triaged message to its contact and tells whoever needs to
    /// know. A new (or reopened) contact is offered in the same write.
    pub async fn on_triaged(&self, ev: &MessageTriaged) -> Result<(), StepError> {
        let id = ev.message.contact_id;
        let floor = self.floor();
        let (outcome, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, ev.message.opens_contact),
            |cur: Option<ContactRecord>| {
                let mut record = match cur {
                    None => ContactRecord::open(ev),
                    Some(mut rec) => {
                        if rec.apply_message(ev) == Applied::Duplicate {
                            // A redelivery: an earlier attempt wrote the
                            // message but may have crashed before pushing it
                            // to the screen. Push again (the dashboard keys
                            // messages by id); fire nothing.
                            return Cas::Keep(Triaged {
                                record: rec,
                                steps: Vec::new(),
                            });
                        }
                        rec
                    }
                };
                if record.escalation.is_none() && record.waiting_since().is_some() {
                    // The policy is frozen into the contact when it opens.
                    let policy = self.directory().policy_for(record.door.as_ref());
                    record.escalation = Some(Escalation::start(policy, ev.message.received_at));
                }
                // The first step (or an imminent broadcast) fires in the same
                // write, so a new contact is offered without waiting for the
                // escalator; later steps are the escalator's.
                let steps = nwd_ladder::fire(&mut record, &floor);
                Cas::Write(record.clone(), Triaged { record, steps })
            },
        )
        .await?;
        let Triaged { record, steps } = outcome;
        self.remember(&record, revision);
        let view = transcript::person_view(ev);
        let line = ServerMsg::Message {
            contact_id: id,
            risk: record.risk,
            reasons: record.reasons.iter().map(ReasonView::from).collect(),
            message: view.clone(),
        };
        let newly_offered: Vec<&CounsellorId> = steps
            .iter()
            .flat_map(|s| step_targets(&s.outcome))
            .collect();
        match &record.state {
            ContactState::Assigned { counsellor, .. } => self.push(counsellor, line).await,
            ContactState::Offered { to, .. } => {
                for who in to.iter().filter(|c| !newly_offered.contains(c)) {
                    self.push(who, line.clone()).await;
                }
            }
            ContactState::Waiting { .. } | ContactState::Resolved { .. } => {}
        }
        if !steps.is_empty()
            && let Err(e) = self
                .announcer
                .announce_with(
                    &record,
                    // A brand-new contact has one message, the one in hand:
                    // no stream read on the hot path.
                    (record.message_count == 1).then(|| vec![view.clone()]),
                )
                .await
        {
            // The record says the step fired; the escalator republishes its
            // effects when it sees `announced < steps`.
            tracing::warn!(contact = %id, error = %e, "cannot announce escalation step; the escalator will");
        }
        if matches!(record.state, ContactState::Waiting { .. }) {
            tracing::info!(contact = %id, risk = %record.risk, "waiting: nobody available");
        }
        Ok(())
    }

    async fn push_offers(
        &self,
        record: &ContactRecord,
        to: &[CounsellorId],
        messages: Vec<MessageView>,
    ) {
        let view = transcript::contact_view(record, &self.directory(), messages);
        for who in to {
            tracing::info!(contact = %record.id, counsellor = %who, risk = %record.risk, "offered");
            metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "offered")
                .increment(1);
            self.push(
                who,
                ServerMsg::Offer {
                    contact: view.clone(),
                },
            )
            .await;
        }
    }

    // ------------------------------------------------------------ offers

    /// The offer step: offers a waiting or offered contact to every eligible
    /// counsellor it is not offered to yet (ring-all; first accept wins).
    pub async fn offer(&self, id: ContactId) -> Result<(), StepError> {
        self.offer_on(id, &self.floor()).await
    }

    /// [`Self::offer`] against a given view of the floor (a sweep builds one
    /// for all the contacts it looks at).
    async fn offer_on(&self, id: ContactId, floor: &Floor) -> Result<(), StepError> {
        if let Some(made) = self.decide_offer(id, floor).await? {
            self.push_offers(&made.record, &made.to, made.messages)
                .await;
        }
        Ok(())
    }

    /// The offer step up to the write: whom to offer, written into the
    /// record. The caller pushes the offers (a sweep decides several
    /// contacts at once and pushes in queue order).
    async fn decide_offer(
        &self,
        id: ContactId,
        floor: &Floor,
    ) -> Result<Option<Offers>, StepError> {
        // Decide on the cached record first: no stream read and no KV round
        // trip when nobody new can be offered (the common case in a sweep).
        // (On the record in place, under the lock: no copy of it.)
        let worth_a_write = self
            .state()
            .get(&id)
            .is_some_and(|cached| !nwd_ladder::widen(cached, floor).is_empty());
        if !worth_a_write {
            return Ok(None);
        }
        let messages = transcript::load(&self.js, &id).await?;
        let (outcome, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                let new = nwd_ladder::widen(&rec, floor);
                if new.is_empty() || rec.offer(&new).is_err() {
                    return Cas::Keep(Some((rec, Vec::new())));
                }
                Cas::Write(rec.clone(), Some((rec, new)))
            },
        )
        .await?;
        let Some((record, to)) = outcome else {
            return Ok(None);
        };
        self.remember(&record, revision);
        Ok((!to.is_empty()).then_some(Offers {
            record,
            to,
            messages,
        }))
    }

    /// Withdraws the offers of counsellors who can no longer take the
    /// contact, all in one write (after a wave of accepts one contact may
    /// have many such holders).
    pub async fn expire(&self, id: ContactId, holders: &[CounsellorId]) -> Result<(), StepError> {
        let now = OffsetDateTime::now_utc();
        let (outcome, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                let withdrawn: Vec<CounsellorId> = holders
                    .iter()
                    .filter(|who| rec.withdraw(who, now).is_ok())
                    .cloned()
                    .collect();
                if withdrawn.is_empty() {
                    Cas::Keep(None)
                } else {
                    Cas::Write(rec.clone(), Some((rec, withdrawn)))
                }
            },
        )
        .await?;
        let Some((record, withdrawn)) = outcome else {
            return Ok(());
        };
        self.remember(&record, revision);
        for who in &withdrawn {
            tracing::info!(contact = %id, counsellor = %who, "offer withdrawn: counsellor cannot take it");
            metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "withdrawn")
                .increment(1);
            self.push(
                who,
                ServerMsg::OfferWithdrawn {
                    contact_id: id,
                    reason: WithdrawReason::Expired,
                },
            )
            .await;
        }
        Ok(())
    }

    /// One pass of the queue: withdraws offers held by counsellors who can
    /// no longer take them, then offers the queue in order (risk, then wait).
    /// Also catches anything missed (after a restart, a failed push).
    pub async fn sweep(&self) {
        let floor = self.floor();
        let (stale, queue) = {
            let state = self.state();
            let stale: Vec<(ContactId, Vec<CounsellorId>)> = state
                .records()
                .map(|r| (r.id, floor.stale_offers(r)))
                .filter(|(_, holders)| !holders.is_empty())
                .collect();
            (stale, state.queue())
        };
        // Contacts are independent (each write is its own compare-and-swap),
        // so a few at a time: the waits on the store overlap. They start in
        // queue order, so the most urgent are decided first.
        futures::stream::iter(stale)
            .for_each_concurrent(SWEEP_CONCURRENCY, |(id, holders)| async move {
                if let Err(e) = self.expire(id, &holders).await {
                    tracing::warn!(contact = %id, error = %e, "cannot withdraw offers; the next sweep retries");
                }
            })
            .await;
        // Decided a few at a time, pushed in queue order (`buffered` keeps it).
        let floor = &floor;
        let mut decided = std::pin::pin!(
            futures::stream::iter(queue)
                .map(|id| async move { (id, self.decide_offer(id, floor).await) })
                .buffered(SWEEP_CONCURRENCY)
        );
        while let Some((id, result)) = decided.next().await {
            match result {
                Ok(Some(made)) => {
                    self.push_offers(&made.record, &made.to, made.messages)
                        .await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(contact = %id, error = %e, "offer step failed; the next sweep retries");
                }
            }
        }
        // Conversations whose counsellor dropped off, or came back.
        let watch: Vec<ContactId> = {
            let state = self.state();
            state
                .records()
                .filter(|r| match r.assigned_to() {
                    Some(who) => floor.disconnected(who) || r.orphaned_at.is_some(),
                    None => false,
                })
                .map(|r| r.id)
                .collect()
        };
        for id in watch {
            if let Err(e) = self.orphan_step(id).await {
                tracing::warn!(contact = %id, error = %e, "orphan step failed; the next sweep retries");
            }
        }
        self.outreach_sweep(floor.now).await;
    }

    /// A conversation whose counsellor's connection is gone: the supervisors
    /// are alerted once; after the grace it goes back to the queue and up the
    /// ladder from the bottom. If the counsellor is back, it stays with them.
    pub async fn orphan_step(&self, id: ContactId) -> Result<(), StepError> {
        enum Did {
            Orphaned(ContactRecord, CounsellorId),
            Requeued(ContactRecord, CounsellorId),
            Back,
        }
        let floor = self.floor();
        let now = floor.now;
        let grace = self.orphan_grace;
        let (outcome, revision) = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                let Some(who) = rec.assigned_to().cloned() else {
                    return Cas::Keep(None);
                };
                if !floor.disconnected(&who) {
                    return if rec.unorphan() {
                        Cas::Write(rec, Some(Did::Back))
                    } else {
                        Cas::Keep(None)
                    };
                }
                match rec.orphaned_at {
                    None => {
                        rec.orphan(now);
                        Cas::Write(rec.clone(), Some(Did::Orphaned(rec, who)))
                    }
                    Some(at) if now - at >= grace => {
                        rec.requeue(now);
                        nwd_ladder::fire(&mut rec, &floor);
                        Cas::Write(rec.clone(), Some(Did::Requeued(rec, who)))
                    }
                    Some(_) => Cas::Keep(None),
                }
            },
        )
        .await?;
        match outcome {
            Some(Did::Orphaned(rec, who)) => {
                self.remember(&rec, revision);
                tracing::warn!(contact = %id, counsellor = %who, "counsellor disconnected mid-conversation; supervisors alerted");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "alerted").increment(1);
                let messages = transcript::load(&self.js, &id).await.unwrap_or_default();
                let view = transcript::contact_view(&rec, &self.directory(), messages);
                let requeue_at = now + grace;
                for s in self
                    .directory()
                    .staff
                    .iter()
                    .filter(|s| s.role == nwd_proto::directory::Role::Supervisor)
                {
                    self.push(
                        &s.id,
                        ServerMsg::Alert {
                            reason: nwd_proto::dashboard::AlertReason::CounsellorDisconnected {
                                counsellor: who.clone(),
                                requeue_at,
                            },
                            contact: Box::new(view.clone()),
                        },
                    )
                    .await;
                }
            }
            Some(Did::Requeued(rec, who)) => {
                self.remember(&rec, revision);
                tracing::warn!(contact = %id, counsellor = %who, "conversation back in the queue after the grace");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "requeued").increment(1);
                if let Err(e) = self.announcer.announce(&rec).await {
                    tracing::warn!(contact = %id, error = %e, "cannot announce escalation step; the escalator will");
                }
            }
            Some(Did::Back) => {
                tracing::info!(contact = %id, "counsellor back; conversation stays with them");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "returned").increment(1);
            }
            None => {}
        }
        Ok(())
    }

    // ------------------------------------------------------------ commands

    /// Handles one command; the reply is sent before the follow-ups run.
    pub async fn command(&self, cmd: RouterCommand) -> (RouterReply, Vec<FollowUp>) {
        match cmd {
            RouterCommand::Accept {
                contact_id,
                counsellor,
            } => self.accept(contact_id, counsellor).await,
            RouterCommand::Decline {
                contact_id,
                counsellor,
            } => self.decline(contact_id, counsellor).await,
            RouterCommand::Resolve {
                contact_id,
                counsellor,
                disposition,
                note,
            } => {
                self.resolve(contact_id, counsellor, disposition, note)
                    .await
            }
            RouterCommand::TakeNext { .. } | RouterCommand::Assess { .. } => {
                // Built next (issue 16): refused until then, never half done.
                (refused("not-available-yet"), Vec::new())
            }
            RouterCommand::MedicalEmergency {
                contact_id,
                counsellor,
                partner,
                nature,
            } => {
                self.medical_emergency(contact_id, counsellor, partner, nature)
                    .await
            }
            RouterCommand::OutreachOutcome {
                contact_id,
                counsellor,
                outcome,
            } => self.outreach_outcome(contact_id, counsellor, outcome).await,
        }
    }

    /// Runs the follow-ups of a command.
    pub async fn follow_up(&self, follow_ups: Vec<FollowUp>) {
        for f in follow_ups {
            match f {
                FollowUp::Push(who, msg) => self.push(&who, msg).await,
                FollowUp::Offer(id) => {
                    if let Err(e) = self.offer(id).await {
                        tracing::warn!(contact = %id, error = %e, "offer step failed; the sweep retries");
                    }
                }
                FollowUp::Expire(id, who) => {
                    if let Err(e) = self.expire(id, std::slice::from_ref(&who)).await {
                        tracing::warn!(contact = %id, counsellor = %who, error = %e, "cannot withdraw offer; the sweep retries");
                    }
                }
                FollowUp::WakeQueue => self.wake_queue(),
            }
        }
    }

    async fn accept(&self, id: ContactId, who: CounsellorId) -> (RouterReply, Vec<FollowUp>) {
        let lock = self
            .accept_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(who.clone())
            .or_default()
            .clone();
        let _serial = lock.lock().await;
        let already_theirs = self
            .state()
            .get(&id)
            .is_some_and(|r| r.assigned_to() == Some(&who));
        if !already_theirs && !self.floor().has_room(&who) {
            tracing::info!(contact = %id, counsellor = %who, "accept refused: at capacity");
            return (
                refused("you already have as many conversations as you can take"),
                vec![FollowUp::Expire(id, who)],
            );
        }
        let now = OffsetDateTime::now_utc();
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotOffered));
                };
                let before = rec.clone();
                match rec.accept(&who, now) {
                    Err(e) => Cas::Keep(Err(e)),
                    Ok(()) if rec.state == before.state => Cas::Keep(Ok((rec, Vec::new(), None))),
                    Ok(()) => {
                        let others: Vec<CounsellorId> = ladder_floor::offered_to(&before)
                            .iter()
                            .filter(|c| **c != who)
                            .cloned()
                            .collect();
                        Cas::Write(rec.clone(), Ok((rec, others, before.waiting_since())))
                    }
                }
            },
        )
        .await;
        let (record, others, waited_since) = match result {
            Ok((Ok(r), revision)) => {
                self.remember(&r.0, revision);
                r
            }
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "accept refused");
                return (
                    refused(&e.to_string()),
                    vec![FollowUp::Push(
                        who,
                        ServerMsg::OfferWithdrawn {
                            contact_id: id,
                            reason: decide::withdraw_reason(&e),
                        },
                    )],
                );
            }
            Err(e) => return kv_failure(id, &e),
        };
        let at = match &record.state {
            ContactState::Assigned { since, .. } => *since,
            _ => now,
        };
        let event = Envelope::new(ContactAssigned {
            contact_id: id,
            counsellor: who.clone(),
            at,
            channel: Some(record.channel.clone()),
        });
        // The record is the truth; the event tells the rest of the line. On
        // failure the assignment still holds (a retried accept republishes).
        if let Err(e) = self
            .publish(
                subjects::contact_assigned(&id),
                &wire::msg_id::contact_assigned(&id, &who),
                &event,
            )
            .await
        {
            tracing::error!(contact = %id, error = %e, "cannot publish ContactAssigned");
        }
        // An outreach: its update and the line's introduction, before the
        // counsellor can write (the dashboard refuses replies while it is
        // owed). On failure the sweep sends it; the accept says try again.
        if let Err(e) = self.after_outreach_accept(&record).await {
            tracing::error!(contact = %id, error = %e, "cannot publish the outreach accept; the sweep retries");
            return (
                refused("the line could not send its introduction just now; please accept again"),
                vec![FollowUp::WakeQueue],
            );
        }
        if let Some(since) = waited_since {
            tracing::info!(contact = %id, counsellor = %who, "accepted");
            metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "accepted")
                .increment(1);
            metrics::histogram!("nwd_time_to_answer_seconds", "service" => NAME, "risk" => record.risk.as_str())
                .record((at - since).as_seconds_f64().max(0.0));
        }
        let mut follow: Vec<FollowUp> = others
            .into_iter()
            .map(|c| {
                metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "withdrawn")
                    .increment(1);
                FollowUp::Push(
                    c,
                    ServerMsg::OfferWithdrawn {
                        contact_id: id,
                        reason: WithdrawReason::Taken,
                    },
                )
            })
            .collect();
        // They may now be at capacity: their other offers go to others.
        follow.push(FollowUp::WakeQueue);
        (RouterReply::Done, follow)
    }

    async fn decline(&self, id: ContactId, who: CounsellorId) -> (RouterReply, Vec<FollowUp>) {
        let now = OffsetDateTime::now_utc();
        let result = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Declined::Refused(TransitionError::NotOffered));
                };
                if rec.assigned_to() == Some(&who) {
                    return Cas::Keep(Declined::AlreadyTheirs);
                }
                match rec.withdraw(&who, now) {
                    Ok(()) => {
                        // Remembered in the record, so no replica offers it back to them.
                        if let Some(e) = rec.escalation.as_mut()
                            && !e.declined.contains(&who)
                        {
                            e.declined.push(who.clone());
                        }
                        Cas::Write(rec.clone(), Declined::Withdrawn(Box::new(rec)))
                    }
                    Err(e) => Cas::Keep(Declined::Refused(e)),
                }
            },
        )
        .await;
        let withdrawn = |reason| {
            FollowUp::Push(
                who.clone(),
                ServerMsg::OfferWithdrawn {
                    contact_id: id,
                    reason,
                },
            )
        };
        match result {
            Ok((Declined::Withdrawn(record), revision)) => {
                self.remember(&record, revision);
                tracing::info!(contact = %id, counsellor = %who, "declined");
                metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "declined")
                    .increment(1);
                // When nobody holds an offer any more the next step is due
                // now: the escalator fires it.
                (RouterReply::Done, vec![withdrawn(WithdrawReason::Declined)])
            }
            // Nothing to decline (the offer was already withdrawn): done.
            Ok((Declined::Refused(TransitionError::NotOffered), _)) => {
                (RouterReply::Done, vec![withdrawn(WithdrawReason::Declined)])
            }
            Ok((Declined::AlreadyTheirs, _)) => (
                refused("you have already accepted this contact"),
                Vec::new(),
            ),
            Ok((Declined::Refused(e), _)) => (
                refused(&e.to_string()),
                vec![withdrawn(decide::withdraw_reason(&e))],
            ),
            Err(e) => kv_failure(id, &e),
        }
    }

    async fn resolve(
        &self,
        id: ContactId,
        who: CounsellorId,
        disposition: Option<String>,
        note: Option<String>,
    ) -> (RouterReply, Vec<FollowUp>) {
        let now = OffsetDateTime::now_utc();
        let result = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotAssigned));
                };
                if matches!(&rec.state, ContactState::Resolved { by, .. } if *by == who) {
                    // Resolved by them already: a retry; republish (deduplicated).
                    return Cas::Keep(Ok(rec));
                }
                match rec.resolve(&who, now) {
                    Ok(()) => Cas::Write(rec.clone(), Ok(rec)),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let record = match result {
            Ok((Ok(record), revision)) => {
                self.remember(&record, revision);
                record
            }
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "resolve refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        let at = match &record.state {
            ContactState::Resolved { at, .. } => *at,
            _ => now,
        };
        let event = Envelope::new(ContactResolved {
            contact_id: id,
            channel: record.channel.clone(),
            counsellor: who.clone(),
            disposition,
            note,
            at,
        });
        // Intake closes the sender's thread on this event: it must be on the
        // stream before we say done. A retry takes the path above and
        // republishes under the same id.
        let msg_id = wire::msg_id::contact_resolved(&id, at);
        if let Err(e) = self
            .publish(subjects::contact_resolved(&id), &msg_id, &event)
            .await
        {
            tracing::error!(contact = %id, error = %e, "cannot publish ContactResolved");
            return (
                refused("the line could not record this just now; please try again"),
                Vec::new(),
            );
        }
        if let Err(e) = self
            .outreach_update(
                &record,
                nwd_proto::referral::OutreachChange::Resolved {
                    counsellor: who.clone(),
                },
                at,
            )
            .await
        {
            tracing::error!(contact = %id, error = %e, "cannot publish the outreach resolution");
            return (
                refused("the line could not record this just now; please try again"),
                Vec::new(),
            );
        }
        tracing::info!(contact = %id, counsellor = %who, "resolved");
        (
            RouterReply::Done,
            vec![
                FollowUp::Push(who, ServerMsg::Resolved { contact_id: id }),
                FollowUp::WakeQueue,
            ],
        )
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

/// What a decline did.
enum Declined {
    Withdrawn(Box<ContactRecord>),
    /// The decliner holds the contact: declining is not how to give it back.
    AlreadyTheirs,
    Refused(TransitionError),
}

fn refused(reason: &str) -> RouterReply {
    RouterReply::Refused {
        reason: reason.to_owned(),
    }
}

fn kv_failure(id: ContactId, e: &KvError) -> (RouterReply, Vec<FollowUp>) {
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
