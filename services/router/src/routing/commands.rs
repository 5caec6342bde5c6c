//! The dashboard's commands: accept, decline, resolve and the rest, each
//! answered before its follow-ups run.

use nwd_proto::contact::{ContactRecord, ContactState, TransitionError};
use nwd_proto::dashboard::{ServerMsg, WithdrawReason};
use nwd_proto::events::{ContactAssigned, ContactResolved};
use nwd_proto::handover::TransferMode;
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::transcript;
use std::sync::Arc;
use time::OffsetDateTime;

use super::{FollowUp, Router, kv_failure, ladder_floor, refused};
use crate::NAME;
use crate::decide;

/// "Take the next" refusals (codes the dashboard shows as they are).
pub const QUEUE_EMPTY: &str = "queue-empty";
pub const AT_CAPACITY: &str = "at-capacity";
pub const NOT_AVAILABLE: &str = "not-available";

/// Contacts "take the next" tries when the one it chose is taken meanwhile.
const TAKE_ATTEMPTS: usize = 3;

/// How a counsellor comes to hold a contact.
#[derive(Debug, Clone, Copy)]
enum Taking {
    /// Accepting an offer they hold.
    Accept,
    /// "Take the next": offered to them or not.
    TakeNext,
}

impl Taking {
    fn as_str(self) -> &'static str {
        match self {
            Taking::Accept => "accept",
            Taking::TakeNext => "take-next",
        }
    }

    /// `nwd_offers_total` outcome.
    fn outcome(self) -> &'static str {
        match self {
            Taking::Accept => "accepted",
            Taking::TakeNext => "taken",
        }
    }
}

/// Why a contact was not assigned.
enum Unassigned {
    /// The record refused (taken, resolved, not offered).
    Refused(TransitionError),
    /// The store or the stream failed: the reply to give.
    Failed((RouterReply, Vec<FollowUp>)),
}

impl Router {
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
            RouterCommand::TakeNext { counsellor } => self.take_next(counsellor).await,
            RouterCommand::Assess {
                contact_id,
                counsellor,
                answers,
            } => self.assess(contact_id, counsellor, answers).await,
            RouterCommand::Transfer {
                contact_id,
                counsellor,
                target,
                mode,
                note,
            } => {
                self.transfer(contact_id, counsellor, target, mode, note)
                    .await
            }
            RouterCommand::CancelTransfer {
                contact_id,
                counsellor,
            } => self.cancel_transfer(contact_id, counsellor).await,
            RouterCommand::Switchboard { counsellor, on } => self.switchboard(counsellor, on).await,
            RouterCommand::Reassign {
                contact_id,
                counsellor,
                to,
            } => self.reassign(contact_id, counsellor, to).await,
            RouterCommand::Claim {
                contact_id,
                counsellor,
            } => self.claim(contact_id, counsellor).await,
            RouterCommand::InvolveTrustedContact {
                contact_id,
                counsellor,
                trusted,
            } => {
                self.involve_trusted_contact(contact_id, counsellor, trusted)
                    .await
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
                FollowUp::Push(who, msg) => self.push(&who, *msg).await,
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
        let lock = self.accept_lock(&who);
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
        match self.assign(id, &who, Taking::Accept).await {
            Ok((_, follow)) => (RouterReply::Done, follow),
            Err(Unassigned::Refused(e)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "accept refused");
                (
                    refused(&e.to_string()),
                    vec![FollowUp::push(
                        who,
                        ServerMsg::OfferWithdrawn {
                            contact_id: id,
                            reason: decide::withdraw_reason(&e),
                        },
                    )],
                )
            }
            Err(Unassigned::Failed(reply)) => reply,
        }
    }

    /// The per-counsellor lock that serialises their accepts and takes, so
    /// that two of them at once cannot take them over capacity.
    pub(crate) fn accept_lock(&self, who: &CounsellorId) -> Arc<tokio::sync::Mutex<()>> {
        self.accept_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(who.clone())
            .or_default()
            .clone()
    }

    /// Gives `who` the contact (an accept of their offer, or a take) in one
    /// compare-and-swap, then tells the line: `ContactAssigned`, an
    /// outreach's introduction, `OfferWithdrawn { Taken }` to the other
    /// holders of the offer (follow-ups) and a queue run. Returns the record
    /// as written. The caller holds `who`'s accept lock and checked capacity.
    async fn assign(
        &self,
        id: ContactId,
        who: &CounsellorId,
        how: Taking,
    ) -> Result<(ContactRecord, Vec<FollowUp>), Unassigned> {
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
                // A receiver accepting a warm transfer (ADR 0019).
                let warm = matches!(how, Taking::Accept)
                    && rec
                        .transfer
                        .as_ref()
                        .is_some_and(|t| t.mode == TransferMode::Warm && t.to.contains(who));
                let taken = match how {
                    Taking::Accept if warm => rec.accept_transfer(who, now).map(Some),
                    Taking::Accept => rec.accept(who, now).map(|()| None),
                    Taking::TakeNext => rec.take(who, now).map(|()| None),
                };
                match taken {
                    Err(e) => Cas::Keep(Err(e)),
                    Ok(_) if rec.state == before.state => {
                        Cas::Keep(Ok((rec, Vec::new(), None, None)))
                    }
                    Ok(from) => {
                        let held: &[CounsellorId] = match (&from, &before.transfer) {
                            (Some(_), Some(t)) => &t.to,
                            _ => ladder_floor::offered_to(&before),
                        };
                        let others: Vec<CounsellorId> =
                            held.iter().filter(|c| *c != who).cloned().collect();
                        Cas::Write(rec.clone(), Ok((rec, others, before.waiting_since(), from)))
                    }
                }
            },
        )
        .await;
        let (record, others, waited_since, handed_from) = match result {
            Ok((Ok(r), revision)) => {
                self.remember(&r.0, revision);
                r
            }
            Ok((Err(e), _)) => return Err(Unassigned::Refused(e)),
            Err(e) => return Err(Unassigned::Failed(kv_failure(id, &e))),
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
                &wire::msg_id::contact_assigned(&id, who),
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
            return Err(Unassigned::Failed((
                refused("the line could not send its introduction just now; please accept again"),
                vec![FollowUp::WakeQueue],
            )));
        }
        if let Some(since) = waited_since {
            tracing::info!(contact = %id, counsellor = %who, how = how.as_str(), "assigned");
            metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => how.outcome())
                .increment(1);
            metrics::histogram!("nwd_time_to_answer_seconds", "service" => NAME, "risk" => record.risk.as_str())
                .record((at - since).as_seconds_f64().max(0.0));
        }
        let mut follow: Vec<FollowUp> = others
            .into_iter()
            .map(|c| {
                metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "withdrawn")
                    .increment(1);
                FollowUp::push(
                    c,
                    ServerMsg::OfferWithdrawn {
                        contact_id: id,
                        reason: WithdrawReason::Taken,
                    },
                )
            })
            .collect();
        if let Some(from) = handed_from {
            tracing::info!(contact = %id, counsellor = %who, "warm transfer accepted");
            let messages = transcript::load(&self.js, &id).await.unwrap_or_else(|e| {
                tracing::warn!(contact = %id, error = %e, "cannot read the transcript for the receiver");
                Vec::new()
            });
            let contact = transcript::contact_view(&record, &self.directory(), messages);
            follow.insert(
                0,
                FollowUp::push(who.clone(), ServerMsg::Conversation { contact }),
            );
            follow.extend(self.handed_over(id, from, who));
        }
        // They may now be at capacity: their other offers go to others.
        follow.push(FollowUp::WakeQueue);
        Ok((record, follow))
    }

    /// "Help the next person" (ADR 0017): gives an available counsellor
    /// under capacity the most urgent contact in the queue they are eligible
    /// for, and pushes them the conversation as an accept does.
    async fn take_next(&self, who: CounsellorId) -> (RouterReply, Vec<FollowUp>) {
        let lock = self.accept_lock(&who);
        let _serial = lock.lock().await;
        let floor = self.floor();
        let refuse = |outcome: &'static str| {
            tracing::info!(counsellor = %who, outcome, "take-next refused");
            metrics::counter!("nwd_router_take_next_total", "service" => NAME, "outcome" => outcome)
                .increment(1);
            (refused(outcome), Vec::new())
        };
        if !floor.is_available(&who) {
            return refuse(NOT_AVAILABLE);
        }
        if !floor.has_room(&who) {
            return refuse(AT_CAPACITY);
        }
        // Between the choice and the write another counsellor may take it:
        // then the next one down.
        let mut passed: Vec<ContactId> = Vec::new();
        for _ in 0..TAKE_ATTEMPTS {
            let next = self
                .state()
                .queued()
                .filter(|r| !passed.contains(&r.id))
                .find(|r| {
                    ladder_floor::offered_to(r).contains(&who)
                        || nwd_ladder::eligible(r, &floor).contains(&who)
                })
                .map(|r| r.id);
            let Some(id) = next else {
                return refuse(QUEUE_EMPTY);
            };
            match self.assign(id, &who, Taking::TakeNext).await {
                Ok((record, mut follow)) => {
                    metrics::counter!("nwd_router_take_next_total", "service" => NAME, "outcome" => "taken")
                        .increment(1);
                    let messages = transcript::load(&self.js, &id).await.unwrap_or_else(|e| {
                        // The dashboard rebuilds it from the streams on reconnect.
                        tracing::warn!(contact = %id, error = %e, "cannot read the transcript for the taker");
                        Vec::new()
                    });
                    let contact = transcript::contact_view(&record, &self.directory(), messages);
                    follow.insert(0, FollowUp::push(who, ServerMsg::Conversation { contact }));
                    return (RouterReply::Done, follow);
                }
                Err(Unassigned::Refused(e)) => {
                    tracing::info!(contact = %id, counsellor = %who, refusal = %e, "take-next: taken meanwhile; trying the next");
                    passed.push(id);
                }
                Err(Unassigned::Failed(reply)) => return reply,
            }
        }
        refuse(QUEUE_EMPTY)
    }
    async fn decline(&self, id: ContactId, who: CounsellorId) -> (RouterReply, Vec<FollowUp>) {
        if let Some(done) = self.decline_transfer(id, &who).await {
            return done;
        }
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
            FollowUp::push(
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
                // now: the escalator fires it. Their seat is free for the
                // next contact: run the queue.
                (
                    RouterReply::Done,
                    vec![withdrawn(WithdrawReason::Declined), FollowUp::WakeQueue],
                )
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
                    return Cas::Keep(Ok((rec, Vec::new())));
                }
                // A warm transfer still offered ends with the conversation.
                let receivers = rec
                    .transfer
                    .as_ref()
                    .map(|t| t.to.clone())
                    .unwrap_or_default();
                match rec.resolve(&who, now) {
                    Ok(()) => {
                        rec.disposition = disposition.clone();
                        Cas::Write(rec.clone(), Ok((rec, receivers)))
                    }
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let (record, receivers) = match result {
            Ok((Ok(done), revision)) => {
                self.remember(&done.0, revision);
                done
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
        let mut follow = vec![
            FollowUp::push(who, ServerMsg::Resolved { contact_id: id }),
            FollowUp::WakeQueue,
        ];
        follow.extend(receivers.into_iter().map(|c| {
            FollowUp::push(
                c,
                ServerMsg::OfferWithdrawn {
                    contact_id: id,
                    reason: WithdrawReason::Resolved,
                },
            )
        }));
        (RouterReply::Done, follow)
    }
}

/// What a decline did.
enum Declined {
    Withdrawn(Box<ContactRecord>),
    /// The decliner holds the contact: declining is not how to give it back.
    AlreadyTheirs,
    Refused(TransitionError),
}
