//! Handovers (ADR 0019): transfers (warm and cold), a supervisor's
//! reassignment, the switchboard and follow-ups of people who left.
//!
//! Each is a pure transition of the contact record (`nwd_proto::handover`)
//! applied by compare-and-swap; the router decides whom a target names
//! (the directory and the floor are its). Every handover is recorded in
//! AUDIT ([`HandoverRecorded`], never the note's text) before the command is
//! answered; a retry finds the record as written and republishes the audit
//! under the same id.
//!
//! Logs and metrics carry ids and kinds only.

use nwd_proto::contact::{ContactRecord, TransitionError};
use nwd_proto::dashboard::{ServerMsg, TransferStatus, WithdrawReason};
use nwd_proto::directory::Role;
use nwd_proto::events::{HandoverAction, HandoverRecorded, OptOut};
use nwd_proto::handover::{
    Declined, LeftHow, MAX_HANDOVER_NOTE_CHARS, Switchboard, TransferMode, TransferTarget,
};
use nwd_proto::router::RouterReply;
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::escalation::{
    Involved, REFUSED_PATIENT_NOT_IN_DIRECTORY, REFUSED_RECIPIENT_NOT_IN_DIRECTORY,
};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::transcript;
use time::OffsetDateTime;

use super::{FollowUp, Router, StepError, kv_failure, refused};
use crate::NAME;
use crate::decide::Floor;

/// Refusal codes (the dashboard shows them as they are).
pub const NOBODY_AVAILABLE: &str = "nobody-available";
pub const NOT_A_SUPERVISOR: &str = "not-a-supervisor";
pub const NOTE_TOO_LONG: &str = "note-too-long";
pub const TAKEN: &str = "taken";
pub const NO_CONSENT: &str = "no-consent";
pub const UNKNOWN_TRUSTED_CONTACT: &str = "unknown-trusted-contact";

const RETRY: &str = "the line could not record this just now; please try again";

fn count(action: &'static str, outcome: &'static str) {
    metrics::counter!("nwd_handovers_total", "service" => NAME, "action" => action, "outcome" => outcome)
        .increment(1);
}

/// Whether a message tells that the person left: the web chat's quick
/// exit, or STOP (Twilio opt-out).
pub(crate) fn left_how(message: &nwd_proto::events::ContactMessage) -> Option<LeftHow> {
    if message.quick_exit {
        Some(LeftHow::QuickExit)
    } else if nwd_proto::events::opt_out_keyword(&message.body) == Some(OptOut::Stop) {
        Some(LeftHow::OptedOut)
    } else {
        None
    }
}

impl Router {
    /// A staff member's display name (their id when unknown).
    fn name_of(&self, who: &CounsellorId) -> String {
        self.directory()
            .staff(who)
            .map_or_else(|| who.as_str().to_owned(), |s| s.name.clone())
    }

    fn is_supervisor(&self, who: &CounsellorId) -> bool {
        self.directory()
            .staff(who)
            .is_some_and(|s| s.role == Role::Supervisor)
    }

    /// Whom a transfer target names: on call, available, with a free seat,
    /// not the sender.
    fn receivers(
        &self,
        floor: &Floor,
        who: &CounsellorId,
        target: &TransferTarget,
    ) -> Vec<CounsellorId> {
        let free = |s: &&nwd_proto::directory::Staff| {
            s.id != *who && floor.on_call(s) && floor.is_available(&s.id) && floor.has_room(&s.id)
        };
        let staff = floor.directory.staff.iter();
        match target {
            TransferTarget::Counsellor { id } => staff
                .filter(|s| s.id == *id)
                .filter(free)
                .map(|s| s.id.clone())
                .collect(),
            TransferTarget::Supervisor => staff
                .filter(|s| s.role == Role::Supervisor)
                .filter(free)
                .map(|s| s.id.clone())
                .collect(),
            TransferTarget::Partner { partner } => staff
                .filter(|s| s.role == Role::Counsellor && s.partner == *partner)
                .filter(free)
                .map(|s| s.id.clone())
                .collect(),
        }
    }

    /// Records a handover in AUDIT (stored, its ack awaited).
    async fn audit_handover(
        &self,
        contact: Option<ContactId>,
        who: &CounsellorId,
        action: HandoverAction,
        at: OffsetDateTime,
    ) -> Result<(), StepError> {
        let (subject, msg_id) = match &contact {
            Some(id) => (
                subjects::audit_handover(id),
                wire::msg_id::handover(id, action.kind(), at),
            ),
            // Only the switchboard is line-wide.
            None => (
                subjects::audit_switchboard(),
                wire::msg_id::switchboard(
                    matches!(action, HandoverAction::Switchboard { on: true }),
                    at,
                ),
            ),
        };
        let event = Envelope::new(HandoverRecorded {
            contact_id: contact,
            counsellor: who.clone(),
            action,
            at,
        });
        self.publish(subject, &msg_id, &event).await
    }

    /// The contact's offer as its receivers see it (with its transcript).
    async fn offer_pushes(&self, record: &ContactRecord, to: &[CounsellorId]) -> Vec<FollowUp> {
        let messages = transcript::load(&self.js, &record.id).await.unwrap_or_else(|e| {
            // The dashboard rebuilds it from the streams on accept.
            tracing::warn!(contact = %record.id, error = %e, "cannot read the transcript for an offer");
            Vec::new()
        });
        let contact = transcript::contact_view(record, &self.directory(), messages);
        to.iter()
            .map(|c| {
                FollowUp::push(
                    c.clone(),
                    ServerMsg::Offer {
                        contact: contact.clone(),
                    },
                )
            })
            .collect()
    }

    // ---------------------------------------------------------- transfers

    /// Handles [`nwd_proto::router::RouterCommand::Transfer`].
    pub(crate) async fn transfer(
        &self,
        id: ContactId,
        who: CounsellorId,
        target: TransferTarget,
        mode: TransferMode,
        note: Option<String>,
    ) -> (RouterReply, Vec<FollowUp>) {
        let note = note.filter(|n| !n.trim().is_empty());
        if note
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_HANDOVER_NOTE_CHARS)
        {
            count("transfer", "refused");
            return (refused(NOTE_TOO_LONG), Vec::new());
        }
        let floor = self.floor();
        let to = self.receivers(&floor, &who, &target);
        let now = OffsetDateTime::now_utc();
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotAssigned));
                };
                // The same transfer again (a retry): as written.
                if rec.transfer.as_ref().is_some_and(|t| {
                    t.from == who && t.target == target && t.mode == mode && t.note == note
                }) && (mode == TransferMode::Warm || rec.assigned_to().is_none())
                {
                    return Cas::Keep(Ok(rec));
                }
                match rec.start_transfer(&who, target.clone(), mode, &to, note.clone(), now) {
                    Ok(()) => Cas::Write(rec.clone(), Ok(rec)),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let record = match result {
            Ok((Ok(rec), revision)) => {
                self.remember(&rec, revision);
                rec
            }
            Ok((Err(TransitionError::NobodyToTransferTo), _)) => {
                tracing::info!(contact = %id, counsellor = %who, mode = mode.as_str(), "transfer refused: nobody available");
                count("transfer", "refused");
                return (refused(NOBODY_AVAILABLE), Vec::new());
            }
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "transfer refused");
                count("transfer", "refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        let Some(t) = record.transfer.clone() else {
            return (refused(RETRY), Vec::new());
        };
        let action = HandoverAction::Transfer {
            target: t.target.clone(),
            mode: t.mode,
            to: t.to.clone(),
            with_note: t.note.is_some(),
        };
        if let Err(e) = self.audit_handover(Some(id), &who, action, t.since).await {
            tracing::error!(contact = %id, error = %e, "cannot record the transfer in AUDIT");
            return (refused(RETRY), Vec::new());
        }
        tracing::info!(contact = %id, counsellor = %who, mode = t.mode.as_str(), receivers = t.to.len(), "transfer started");
        count("transfer", t.mode.as_str());
        let names: Vec<String> = t.to.iter().map(|c| self.name_of(c)).collect();
        let mut follow = self.offer_pushes(&record, &t.to).await;
        match t.mode {
            TransferMode::Warm => follow.push(FollowUp::push(
                who,
                ServerMsg::TransferUpdate {
                    contact_id: id,
                    status: TransferStatus::Offered { to: names },
                },
            )),
            TransferMode::Cold => {
                follow.push(FollowUp::push(
                    who,
                    ServerMsg::HandedOver {
                        contact_id: id,
                        to: names.join(", "),
                    },
                ));
                // The sender's seat is free.
                follow.push(FollowUp::WakeQueue);
            }
        }
        (RouterReply::Done, follow)
    }

    /// Handles [`nwd_proto::router::RouterCommand::CancelTransfer`].
    pub(crate) async fn cancel_transfer(
        &self,
        id: ContactId,
        who: CounsellorId,
    ) -> (RouterReply, Vec<FollowUp>) {
        let now = OffsetDateTime::now_utc();
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotAssigned));
                };
                match rec.cancel_transfer(&who) {
                    Ok(to) => Cas::Write(rec.clone(), Ok((rec, to))),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let to = match result {
            Ok((Ok((rec, to)), revision)) => {
                self.remember(&rec, revision);
                to
            }
            // Nothing under way (taken, declined, cancelled already): the
            // sender's screen shows the record as it is.
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "cancel transfer refused");
                count("cancel_transfer", "refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        if let Err(e) = self
            .audit_handover(Some(id), &who, HandoverAction::CancelTransfer, now)
            .await
        {
            // The transfer is cancelled (the record is the truth); the
            // audit of the cancellation alone is missing: say so loudly.
            tracing::error!(contact = %id, error = %e, "cannot record the cancelled transfer in AUDIT");
        }
        count("cancel_transfer", "done");
        let mut follow: Vec<FollowUp> = to
            .into_iter()
            .map(|c| {
                FollowUp::push(
                    c,
                    ServerMsg::OfferWithdrawn {
                        contact_id: id,
                        reason: WithdrawReason::Expired,
                    },
                )
            })
            .collect();
        follow.push(FollowUp::push(
            who,
            ServerMsg::TransferUpdate {
                contact_id: id,
                status: TransferStatus::Cancelled,
            },
        ));
        (RouterReply::Done, follow)
    }

    /// A receiver declines a warm transfer: `None` when the contact holds
    /// no warm transfer offered to them (an ordinary decline).
    pub(crate) async fn decline_transfer(
        &self,
        id: ContactId,
        who: &CounsellorId,
    ) -> Option<(RouterReply, Vec<FollowUp>)> {
        let offered_to_them = |r: &ContactRecord| {
            r.transfer
                .as_ref()
                .is_some_and(|t| t.mode == TransferMode::Warm && t.to.contains(who))
        };
        if !self.state().get(&id).is_some_and(offered_to_them) {
            return None;
        }
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotOffered));
                };
                match rec.decline_transfer(who) {
                    Ok(d) => Cas::Write(rec.clone(), Ok((rec, d))),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let mut follow = vec![FollowUp::push(
            who.clone(),
            ServerMsg::OfferWithdrawn {
                contact_id: id,
                reason: WithdrawReason::Declined,
            },
        )];
        match result {
            Ok((Ok((rec, declined)), revision)) => {
                self.remember(&rec, revision);
                tracing::info!(contact = %id, counsellor = %who, "transfer declined");
                count("transfer", "declined");
                if let Declined::Back(from) = declined {
                    follow.push(FollowUp::push(
                        from,
                        ServerMsg::TransferUpdate {
                            contact_id: id,
                            status: TransferStatus::Declined,
                        },
                    ));
                }
                Some((RouterReply::Done, follow))
            }
            // Gone meanwhile (taken, cancelled): nothing to decline.
            Ok((Err(_), _)) => Some((RouterReply::Done, follow)),
            Err(e) => Some(kv_failure(id, &e)),
        }
    }

    /// What the sender and receiver are told when a warm transfer is
    /// accepted (after the record says so).
    pub(crate) fn handed_over(
        &self,
        id: ContactId,
        from: CounsellorId,
        to: &CounsellorId,
    ) -> Vec<FollowUp> {
        let name = self.name_of(to);
        count("transfer", "accepted");
        vec![
            FollowUp::push(
                from.clone(),
                ServerMsg::HandedOver {
                    contact_id: id,
                    to: name.clone(),
                },
            ),
            FollowUp::push(
                from,
                ServerMsg::TransferUpdate {
                    contact_id: id,
                    status: TransferStatus::Accepted { by: name },
                },
            ),
        ]
    }

    // --------------------------------------------------------- supervisors

    /// Handles [`nwd_proto::router::RouterCommand::Reassign`].
    pub(crate) async fn reassign(
        &self,
        id: ContactId,
        who: CounsellorId,
        to: CounsellorId,
    ) -> (RouterReply, Vec<FollowUp>) {
        if !self.is_supervisor(&who) {
            count("reassign", "refused");
            return (refused(NOT_A_SUPERVISOR), Vec::new());
        }
        if self.directory().staff(&to).is_none() {
            count("reassign", "refused");
            return (refused(NOBODY_AVAILABLE), Vec::new());
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
                match rec.reassign(&who, &to, now) {
                    // The same reassignment again (a retry): as written.
                    Ok(done) if rec == before => Cas::Keep(Ok((rec, done))),
                    Ok(done) => Cas::Write(rec.clone(), Ok((rec, done))),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let (record, done) = match result {
            Ok((Ok(r), revision)) => {
                self.remember(&r.0, revision);
                r
            }
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "reassign refused");
                count("reassign", "refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        let at = record.transfer.as_ref().map_or(now, |t| t.since);
        let action = HandoverAction::Reassign {
            from: done.holder.clone(),
            to: to.clone(),
        };
        if let Err(e) = self.audit_handover(Some(id), &who, action, at).await {
            tracing::error!(contact = %id, error = %e, "cannot record the reassignment in AUDIT");
            return (refused(RETRY), Vec::new());
        }
        tracing::info!(contact = %id, counsellor = %who, "reassigned");
        count("reassign", "done");
        let mut follow = self.offer_pushes(&record, std::slice::from_ref(&to)).await;
        let name = self.name_of(&to);
        if let Some(holder) = done.holder {
            follow.push(FollowUp::push(
                holder,
                ServerMsg::HandedOver {
                    contact_id: id,
                    to: name,
                },
            ));
        }
        follow.extend(done.withdrawn.into_iter().map(|c| {
            FollowUp::push(
                c,
                ServerMsg::OfferWithdrawn {
                    contact_id: id,
                    reason: WithdrawReason::Taken,
                },
            )
        }));
        follow.push(FollowUp::WakeQueue);
        (RouterReply::Done, follow)
    }

    /// Handles [`nwd_proto::router::RouterCommand::Switchboard`]: writes
    /// the line's switchboard, audits it, then holds or releases the queue.
    pub(crate) async fn switchboard(
        &self,
        who: CounsellorId,
        on: bool,
    ) -> (RouterReply, Vec<FollowUp>) {
        if !self.is_supervisor(&who) {
            count("switchboard", "refused");
            return (refused(NOT_A_SUPERVISOR), Vec::new());
        }
        let now = OffsetDateTime::now_utc();
        let result = kv::cas(
            &self.contacts,
            &wire::key::switchboard(),
            |cur: Option<Switchboard>| match cur {
                // Already so: a retry (the audit is republished under its id).
                Some(s) if s.on == on => Cas::Keep(s),
                _ => {
                    let s = Switchboard {
                        on,
                        by: who.clone(),
                        at: now,
                    };
                    Cas::Write(s.clone(), s)
                }
            },
        )
        .await;
        let board = match result {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the switchboard");
                return (refused(RETRY), Vec::new());
            }
        };
        self.set_switchboard(Some(board.clone()));
        if let Err(e) = self
            .audit_handover(
                None,
                &board.by,
                HandoverAction::Switchboard { on },
                board.at,
            )
            .await
        {
            tracing::error!(error = %e, "cannot record the switchboard in AUDIT");
            return (refused(RETRY), vec![FollowUp::WakeQueue]);
        }
        tracing::info!(counsellor = %who, on, "switchboard");
        count("switchboard", if on { "on" } else { "off" });
        self.apply_switchboard().await;
        (RouterReply::Done, vec![FollowUp::WakeQueue])
    }

    /// Holds every queued contact not held yet (switchboard on) or releases
    /// every held one (off). Run by the command and by each sweep, so a
    /// crash half way, or another replica's switch, converges.
    pub(crate) async fn apply_switchboard(&self) {
        let Some(board) = self.switchboard_state() else {
            return;
        };
        let ids: Vec<ContactId> = {
            let state = self.state();
            if board.on {
                state
                    .queued()
                    .filter(|r| r.held.is_none())
                    .map(|r| r.id)
                    .collect()
            } else {
                state
                    .records()
                    .filter(|r| r.held.is_some())
                    .map(|r| r.id)
                    .collect()
            }
        };
        for id in ids {
            if let Err(e) = self.hold_or_release(id, &board).await {
                tracing::warn!(contact = %id, error = %e, "switchboard step failed; the next sweep retries");
            }
        }
    }

    async fn hold_or_release(&self, id: ContactId, board: &Switchboard) -> Result<(), StepError> {
        let now = OffsetDateTime::now_utc();
        let (outcome, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                if board.on {
                    match rec.hold(&board.by, now) {
                        Some(withdrawn) => Cas::Write(rec.clone(), Some((rec, withdrawn))),
                        None => Cas::Keep(None),
                    }
                } else if rec.release() {
                    Cas::Write(rec.clone(), Some((rec, Vec::new())))
                } else {
                    Cas::Keep(None)
                }
            },
        )
        .await?;
        let Some((record, withdrawn)) = outcome else {
            return Ok(());
        };
        self.remember(&record, revision);
        for who in withdrawn {
            metrics::counter!("nwd_offers_total", "service" => NAME, "outcome" => "withdrawn")
                .increment(1);
            self.push(
                &who,
                ServerMsg::OfferWithdrawn {
                    contact_id: id,
                    reason: WithdrawReason::Expired,
                },
            )
            .await;
        }
        Ok(())
    }

    // ---------------------------------------------------------- follow-ups

    /// Handles [`nwd_proto::router::RouterCommand::Claim`]: "I'm reaching
    /// out"; the first claim wins.
    pub(crate) async fn claim(
        &self,
        id: ContactId,
        who: CounsellorId,
    ) -> (RouterReply, Vec<FollowUp>) {
        // A claim takes a seat, like an accept: serialised with their
        // accepts and takes, and never over capacity.
        let lock = self.accept_lock(&who);
        let _serial = lock.lock().await;
        let already_theirs = self
            .state()
            .get(&id)
            .is_some_and(|r| r.assigned_to() == Some(&who));
        if !already_theirs && !self.floor().has_room(&who) {
            count("claim", "refused");
            return (refused(super::commands::AT_CAPACITY), Vec::new());
        }
        let now = OffsetDateTime::now_utc();
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotLeft));
                };
                let before = rec.clone();
                match rec.claim(&who, now) {
                    Ok(()) if rec == before => Cas::Keep(Ok(rec)),
                    Ok(()) => Cas::Write(rec.clone(), Ok(rec)),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let record = match result {
            Ok((Ok(rec), revision)) => {
                self.remember(&rec, revision);
                rec
            }
            Ok((Err(TransitionError::Taken), _)) => {
                count("claim", "taken");
                return (refused(TAKEN), Vec::new());
            }
            Ok((Err(e), _)) => {
                count("claim", "refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        let at = record
            .left
            .as_ref()
            .and_then(|l| l.claimed.as_ref())
            .map_or(now, |c| c.at);
        if let Err(e) = self
            .audit_handover(Some(id), &who, HandoverAction::Claim, at)
            .await
        {
            tracing::error!(contact = %id, error = %e, "cannot record the claim in AUDIT");
            return (refused(RETRY), Vec::new());
        }
        tracing::info!(contact = %id, counsellor = %who, "follow-up claimed");
        count("claim", "done");
        let messages = transcript::load(&self.js, &id).await.unwrap_or_else(|e| {
            tracing::warn!(contact = %id, error = %e, "cannot read the transcript for the claimer");
            Vec::new()
        });
        let contact = transcript::contact_view(&record, &self.directory(), messages);
        (
            RouterReply::Done,
            vec![
                FollowUp::push(who, ServerMsg::Conversation { contact }),
                FollowUp::WakeQueue,
            ],
        )
    }
}

/// Involving a trusted contact: a disclosure, not a handover.
impl Router {
    /// Handles [`nwd_proto::router::RouterCommand::InvolveTrustedContact`]:
    /// only the holder; the ladder's own notice (consent checked now,
    /// audited before the SMS, refusals audited), once per trusted contact
    /// per conversation.
    pub(crate) async fn involve_trusted_contact(
        &self,
        id: ContactId,
        who: CounsellorId,
        trusted: String,
    ) -> (RouterReply, Vec<FollowUp>) {
        let record = match kv::get::<ContactRecord>(&self.contacts, &wire::key::contact(&id)).await
        {
            Ok(v) => v.value,
            Err(e) => return kv_failure(id, &e),
        };
        let since = match record.as_ref().map(|r| &r.state) {
            Some(nwd_proto::contact::ContactState::Assigned { counsellor, since })
                if *counsellor == who =>
            {
                *since
            }
            _ => {
                count("involve_trusted_contact", "refused");
                return (
                    refused(&TransitionError::NotAssigned.to_string()),
                    Vec::new(),
                );
            }
        };
        let Some(record) = record else {
            return (refused(RETRY), Vec::new());
        };
        match self
            .announcer
            .involve_trusted_contact(&record, &who, since, &trusted)
            .await
        {
            Ok(Involved::Told) => {
                tracing::info!(contact = %id, counsellor = %who, "trusted contact involved");
                count("involve_trusted_contact", "told");
                (RouterReply::Done, Vec::new())
            }
            Ok(Involved::Refused(reason)) => {
                tracing::info!(contact = %id, counsellor = %who, reason, "trusted contact not involved");
                count("involve_trusted_contact", "refused");
                let code = match reason {
                    REFUSED_PATIENT_NOT_IN_DIRECTORY | REFUSED_RECIPIENT_NOT_IN_DIRECTORY => {
                        UNKNOWN_TRUSTED_CONTACT
                    }
                    _ => NO_CONSENT,
                };
                (refused(code), Vec::new())
            }
            Err(e) => {
                tracing::error!(contact = %id, error = %e, "cannot involve the trusted contact");
                (refused(RETRY), Vec::new())
            }
        }
    }
}
