//! Triaged messages, offers and their withdrawal, and the queue sweep.

use futures::StreamExt;
use nwd_proto::contact::{Applied, ContactRecord, ContactState};
use nwd_proto::dashboard::{MessageView, ReasonView, ServerMsg, WithdrawReason};
use nwd_proto::events::MessageTriaged;
use nwd_proto::ladder::{Escalation, StepRecord};
use nwd_proto::{ContactId, CounsellorId, wire};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::transcript;
use time::OffsetDateTime;

use super::{Router, StepError, step_targets};
use crate::NAME;
use crate::decide::Floor;

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
    /// Offers withdrawn in the same write: the person left, or the
    /// switchboard holds the contact (ADR 0019).
    withdrawn: Vec<CounsellorId>,
}

/// Contacts a sweep decides at once.
const SWEEP_CONCURRENCY: usize = 8;

impl Router {
    /// Applies a triaged message to its contact and tells whoever needs to
    /// know. A new (or reopened) contact is offered in the same write.
    pub async fn on_triaged(&self, ev: &MessageTriaged) -> Result<(), StepError> {
        let id = ev.message.contact_id;
        let floor = self.floor();
        let holding = self.holding();
        let left = super::handover::left_how(&ev.message);
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
                                withdrawn: Vec::new(),
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
                let at = ev.message.received_at;
                let mut withdrawn = Vec::new();
                // The person left before anyone answered: out of the live
                // queue, into the follow-ups; nobody is rung for them.
                if let Some(how) = left
                    && let Some(w) = record.leave(how, at)
                {
                    withdrawn.extend(w);
                }
                // The switchboard is on: held for the supervisors at once.
                if let Some(by) = &holding
                    && let Some(w) = record.hold(by, at)
                {
                    withdrawn.extend(w);
                }
                let steps = nwd_ladder::fire(&mut record, &floor);
                Cas::Write(
                    record.clone(),
                    Triaged {
                        record,
                        steps,
                        withdrawn,
                    },
                )
            },
        )
        .await?;
        let Triaged {
            record,
            steps,
            withdrawn,
        } = outcome;
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
        for who in &withdrawn {
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
        if let Some(l) = record.left.as_ref().filter(|_| left.is_some()) {
            tracing::info!(contact = %id, how = l.how.as_str(), "the person left: a follow-up");
            metrics::counter!("nwd_follow_ups_total", "service" => NAME, "how" => l.how.as_str())
                .increment(1);
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
        // Someone offered this one has no seat left for an offer they hold
        // of a less urgent contact: the sweep withdraws it (ADR 0017).
        if newly_offered
            .iter()
            .any(|c| floor.held_count(c) >= floor.free_seats(c) as usize)
        {
            self.wake_queue();
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
        if let Some(made) = self.decide_offer(id, floor, None).await? {
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
        planned: Option<&[CounsellorId]>,
    ) -> Result<Option<Offers>, StepError> {
        // Whom to offer: those a sweep's plan gave it to (and still
        // eligible), or, alone, whose seats it is within.
        let whom = |rec: &ContactRecord| match planned {
            Some(planned) => nwd_ladder::eligible(rec, floor)
                .into_iter()
                .filter(|c| planned.contains(c))
                .collect(),
            None => nwd_ladder::widen(rec, floor),
        };
        // Decide on the cached record first: no stream read and no KV round
        // trip when nobody new can be offered (the common case in a sweep).
        // (On the record in place, under the lock: no copy of it.)
        let worth_a_write = self
            .state()
            .get(&id)
            .is_some_and(|cached| !whom(cached).is_empty());
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
                let new: Vec<CounsellorId> = whom(&rec);
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
    /// contact, or whose seats more urgent contacts now need, all in one
    /// write (after a wave of accepts one contact may have many such holders).
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
            tracing::info!(contact = %id, counsellor = %who, "offer withdrawn: no seat for it");
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

    /// One pass of the queue (ADR 0017): plans each counsellor's free seats
    /// over the queue in serving order, withdraws the offers of those who can
    /// no longer take them or whose seats more urgent contacts need, then
    /// offers in queue order (risk, then wait). Also catches anything missed
    /// (after a restart, a failed push).
    pub async fn sweep(&self) {
        // The switchboard first: held contacts are offered to supervisors only.
        self.apply_switchboard().await;
        let floor = self.floor();
        let plan = self.state().plan(&floor);
        let stale: Vec<(ContactId, Vec<CounsellorId>)> = plan
            .iter()
            .filter(|p| !p.withdraw.is_empty())
            .map(|p| (p.contact, p.withdraw.clone()))
            .collect();
        let queue: Vec<(ContactId, Vec<CounsellorId>)> = plan
            .into_iter()
            .filter(|p| !p.offer.is_empty())
            .map(|p| (p.contact, p.offer))
            .collect();
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
                .map(|(id, planned)| async move {
                    (id, self.decide_offer(id, floor, Some(&planned)).await)
                })
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
}
