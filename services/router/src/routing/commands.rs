//! The dashboard's commands: accept, decline, resolve and the rest, each
//! answered before its follow-ups run.

use nwd_proto::contact::{ContactRecord, ContactState, TransitionError};
use nwd_proto::dashboard::{ServerMsg, WithdrawReason};
use nwd_proto::events::{ContactAssigned, ContactResolved};
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::kv::{self, Cas};
use time::OffsetDateTime;

use super::{FollowUp, Router, kv_failure, ladder_floor, refused};
use crate::NAME;
use crate::decide::{self};

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
}

/// What a decline did.
enum Declined {
    Withdrawn(Box<ContactRecord>),
    /// The decliner holds the contact: declining is not how to give it back.
    AlreadyTheirs,
    Refused(TransitionError),
}
