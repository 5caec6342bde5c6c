//! Outreach contacts (issue 14, `docs/adr/0014-outreach.md`): a partner's
//! referral, opened by intake as [`OutreachOpened`], becomes a contact
//! record in the same queue and ladder as the contacts people open. Its
//! ladder starts due at `offer_at`, so nobody is offered it before (the
//! escalator's durable deadline fires it then, after any crash: ADR 0006).
//!
//! Every change of the record is told to the referrals service as an
//! [`OutreachUpdate`] once the record is written: `Queued` when the record
//! is created (or a referral joins a contact the person already has),
//! `Assigned` on accept, `Outcome` when the holder records one, `Resolved`
//! on resolve. Each update's id names the record's time of the change, so
//! a retry republishes under the same id.
//!
//! The line's first message to the person is a fixed introduction that
//! names only the line ([`nwd_proto::directory::Directory::outreach_intro`]),
//! sent once when a counsellor accepts, under a derived outbound id; never
//! the referring partner nor the reason (42 CFR Part 2).
//!
//! Logs and metrics carry ids and bounded labels only: never a name, a
//! number or a reason.

use nwd_proto::contact::{ContactRecord, ContactState, TransitionError};
use nwd_proto::events::{Author, ToPerson};
use nwd_proto::ladder::{Escalation, StepRecord};
use nwd_proto::referral::{OutreachChange, OutreachOpened, OutreachOutcome, OutreachUpdate};
use nwd_proto::router::RouterReply;
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::kv::{self, Cas};
use time::OffsetDateTime;

use super::{FollowUp, Router, StepError, kv_failure, refused};
use crate::NAME;

/// What the compare-and-swap on an `OutreachOpened` decided.
enum Opened {
    /// A new outreach record (with the steps fired in the same write when
    /// its time has come).
    Created(Box<ContactRecord>, Vec<StepRecord>),
    /// The referral joined the contact the person already had open.
    Joined(Box<ContactRecord>),
    /// Already done (a redelivery): republish the updates.
    Again(Box<ContactRecord>),
    /// The person's open contact already reaches out for another referral:
    /// this one gets its own contact.
    Separate,
}

impl Router {
    /// Applies an [`OutreachOpened`]: creates (or joins) the contact record,
    /// then publishes its `Queued` update (and `Assigned` when it joined a
    /// contact a counsellor holds). A redelivery republishes the same
    /// updates, deduplicated.
    pub async fn on_outreach(&self, ev: &OutreachOpened) -> Result<(), StepError> {
        let opened = self.open_outreach(ev.contact_id, ev).await?;
        let opened = match opened {
            Opened::Separate => {
                let own = wire::outreach_contact(&ev.referral_id);
                if own == ev.contact_id {
                    // Cannot happen (a record is only separate for another
                    // referral); never loop.
                    tracing::error!(contact = %own, "outreach record holds another referral");
                    return Ok(());
                }
                tracing::info!(contact = %own, joined = %ev.contact_id, "the person's open contact reaches out for another referral; a separate outreach contact");
                let ev = OutreachOpened {
                    contact_id: own,
                    ..ev.clone()
                };
                match self.open_outreach(own, &ev).await? {
                    Opened::Separate => return Ok(()),
                    other => other,
                }
            }
            other => other,
        };
        let (record, announce) = match opened {
            Opened::Created(record, steps) => {
                metrics::counter!("nwd_outreach_due_total", "service" => NAME, "partner" => ev.door.to_string(), "priority" => ev.priority.as_str()).increment(1);
                tracing::info!(contact = %record.id, referral_id = %ev.referral_id, scheduled = record.scheduled(), "outreach queued");
                let announce = !steps.is_empty();
                (record, announce)
            }
            Opened::Joined(record) => {
                tracing::info!(contact = %record.id, referral_id = %ev.referral_id, "referral joined the person's open contact");
                (record, false)
            }
            Opened::Again(record) => (record, false),
            Opened::Separate => return Ok(()),
        };
        // `Queued` is on the stream before anyone is offered the contact, so
        // an accept's `Assigned` can never come before it. If it fails, the
        // redelivery republishes it and the escalator announces the step.
        self.outreach_update(&record, OutreachChange::Queued, ev.received_at)
            .await?;
        if announce
            && let Err(e) = self
                .announcer
                .announce_with(&record, Some(Vec::new()))
                .await
        {
            tracing::warn!(contact = %record.id, error = %e, "cannot announce escalation step; the escalator will");
        }
        if let ContactState::Assigned { counsellor, since } = &record.state {
            // Joined a contact a counsellor already holds.
            self.outreach_update(
                &record,
                OutreachChange::Assigned {
                    counsellor: counsellor.clone(),
                },
                *since,
            )
            .await?;
        }
        Ok(())
    }

    async fn open_outreach(
        &self,
        key: ContactId,
        ev: &OutreachOpened,
    ) -> Result<Opened, StepError> {
        let floor = self.floor();
        let (opened, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&key),
            self.guess(&key, false),
            |cur: Option<ContactRecord>| match cur {
                None => {
                    let mut record = ContactRecord::open_outreach(&OutreachOpened {
                        contact_id: key,
                        ..ev.clone()
                    });
                    // The policy is frozen when the contact opens; its first
                    // step is due when the outreach may first be offered.
                    let policy = self.directory().policy_for(record.door.as_ref());
                    record.escalation = Some(Escalation::start(policy, ev.offer_at));
                    let steps = nwd_ladder::fire(&mut record, &floor);
                    Cas::Write(record.clone(), Opened::Created(Box::new(record), steps))
                }
                Some(rec)
                    if rec
                        .outreach
                        .as_ref()
                        .is_some_and(|o| o.referral_id == ev.referral_id) =>
                {
                    Cas::Keep(Opened::Again(Box::new(rec)))
                }
                Some(mut rec) => {
                    if rec.join_outreach(ev) {
                        Cas::Write(rec.clone(), Opened::Joined(Box::new(rec)))
                    } else {
                        Cas::Keep(Opened::Separate)
                    }
                }
            },
        )
        .await?;
        match &opened {
            Opened::Created(r, _) | Opened::Joined(r) | Opened::Again(r) => {
                self.remember(r, revision);
            }
            Opened::Separate => {}
        }
        Ok(opened)
    }

    /// Publishes one change of an outreach contact (deduplicated by the
    /// change and its time). Nothing for a contact that is not an outreach.
    pub(crate) async fn outreach_update(
        &self,
        record: &ContactRecord,
        change: OutreachChange,
        at: OffsetDateTime,
    ) -> Result<(), StepError> {
        let Some(o) = &record.outreach else {
            return Ok(());
        };
        let msg_id = wire::msg_id::outreach_update(&record.id, &change, at);
        let name = change.name();
        let update = Envelope::new(OutreachUpdate {
            contact_id: record.id,
            referral_id: o.referral_id,
            change,
            at,
        });
        self.publish(
            subjects::contact_outreach_update(&record.id),
            &msg_id,
            &update,
        )
        .await?;
        metrics::counter!("nwd_outreach_updates_total", "service" => NAME, "change" => name)
            .increment(1);
        Ok(())
    }

    /// After an accept: the `Assigned` update, then the line's introduction
    /// if it is owed. Run on every accept, a retry included (both are
    /// deduplicated), and by the sweep for any record still owing it.
    pub(crate) async fn after_outreach_accept(
        &self,
        record: &ContactRecord,
    ) -> Result<(), StepError> {
        let ContactState::Assigned { counsellor, since } = &record.state else {
            return Ok(());
        };
        if record.outreach.is_none() {
            return Ok(());
        }
        self.outreach_update(
            record,
            OutreachChange::Assigned {
                counsellor: counsellor.clone(),
            },
            *since,
        )
        .await?;
        if record.owes_introduction() {
            self.introduce(record).await?;
        }
        Ok(())
    }

    /// Sends the line's introduction (once: its outbound id is derived
    /// from the contact), then marks the record introduced.
    async fn introduce(&self, record: &ContactRecord) -> Result<(), StepError> {
        let id = record.id;
        // Only the line's name: the text takes nothing of the referral.
        let body = self.directory().outreach_intro(record.lang);
        let outbound_id = wire::outbound::outreach_intro(&id);
        // To the person on their channel, from the line's own address.
        match record.channel.to_person(
            id,
            outbound_id,
            body,
            Author::System,
            OffsetDateTime::now_utc(),
        ) {
            ToPerson::Sms(m) => {
                self.publish(
                    subjects::outbound_sms(&id),
                    &wire::msg_id::outbound_sms(&outbound_id),
                    &Envelope::new(m),
                )
                .await?;
            }
            ToPerson::Chat(m) => {
                self.publish(
                    subjects::outbound_chat(&m.session, &id),
                    &wire::msg_id::outbound_sms(&outbound_id),
                    &Envelope::new(m),
                )
                .await?;
            }
        }
        let (written, revision) = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                match rec.outreach.as_mut() {
                    Some(o) if !o.introduced => {
                        o.introduced = true;
                        o.attempts = o.attempts.saturating_add(1);
                        Cas::Write(rec.clone(), Some(rec))
                    }
                    _ => Cas::Keep(None),
                }
            },
        )
        .await?;
        if let Some(rec) = written {
            self.remember(&rec, revision);
            tracing::info!(contact = %id, "outreach introduction sent");
            metrics::counter!("nwd_outreach_intros_total", "service" => NAME).increment(1);
        }
        Ok(())
    }

    /// Handles [`nwd_proto::router::RouterCommand::OutreachOutcome`]: only
    /// the counsellor holding the contact records an outcome; the same
    /// outcome again republishes the same update.
    pub(crate) async fn outreach_outcome(
        &self,
        id: ContactId,
        who: CounsellorId,
        outcome: OutreachOutcome,
    ) -> (RouterReply, Vec<FollowUp>) {
        let now = OffsetDateTime::now_utc();
        let result = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotAssigned));
                };
                match rec.record_outcome(&who, outcome, now) {
                    Ok(true) => Cas::Write(rec.clone(), Ok(rec)),
                    Ok(false) => Cas::Keep(Ok(rec)),
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
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "outreach outcome refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        let Some(recorded) = record.outreach.as_ref().and_then(|o| o.outcome.clone()) else {
            return (refused("the contact is not an outreach"), Vec::new());
        };
        let change = OutreachChange::Outcome {
            counsellor: recorded.by.clone(),
            outcome: recorded.outcome,
        };
        if let Err(e) = self.outreach_update(&record, change, recorded.at).await {
            tracing::error!(contact = %id, error = %e, "cannot publish the outreach outcome");
            return (
                refused("the line could not record this just now; please try again"),
                Vec::new(),
            );
        }
        tracing::info!(contact = %id, counsellor = %who, outcome = outcome.as_str(), "outreach outcome recorded");
        metrics::counter!("nwd_outreach_outcomes_total", "service" => NAME, "outcome" => outcome.as_str()).increment(1);
        (RouterReply::Done, Vec::new())
    }

    /// Outreach contacts not assigned by their due time: counted late once
    /// (the ladder escalates them as any contact meanwhile). Also sends any
    /// introduction still owed (a crash between an accept and its intro).
    pub(crate) async fn outreach_sweep(&self, now: OffsetDateTime) {
        let (late, owed): (Vec<ContactId>, Vec<ContactRecord>) = {
            let state = self.state();
            let late = state
                .records()
                .filter(|r| {
                    r.waiting_since().is_some()
                        && r.outreach
                            .as_ref()
                            .is_some_and(|o| o.late_at.is_none() && o.due_at <= now)
                })
                .map(|r| r.id)
                .collect();
            let owed = state
                .records()
                .filter(|r| r.owes_introduction())
                .cloned()
                .collect();
            (late, owed)
        };
        for id in late {
            if let Err(e) = self.mark_late(id, now).await {
                tracing::warn!(contact = %id, error = %e, "cannot mark outreach late; the next sweep retries");
            }
        }
        for rec in owed {
            if let Err(e) = self.after_outreach_accept(&rec).await {
                tracing::warn!(contact = %rec.id, error = %e, "cannot send the outreach introduction; the next sweep retries");
            }
        }
    }

    async fn mark_late(&self, id: ContactId, now: OffsetDateTime) -> Result<(), StepError> {
        let (written, revision) = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                if rec.waiting_since().is_none() {
                    return Cas::Keep(None);
                }
                match rec.outreach.as_mut() {
                    Some(o) if o.late_at.is_none() && o.due_at <= now => {
                        o.late_at = Some(now);
                        Cas::Write(rec.clone(), Some(rec))
                    }
                    _ => Cas::Keep(None),
                }
            },
        )
        .await?;
        if let Some(rec) = written {
            self.remember(&rec, revision);
            if let Some(o) = &rec.outreach {
                tracing::warn!(contact = %id, referral_id = %o.referral_id, "outreach late: nobody has taken it by its due time");
                metrics::counter!("nwd_outreach_late_total", "service" => NAME, "partner" => o.partner.to_string(), "priority" => o.priority.as_str()).increment(1);
            }
        }
        Ok(())
    }
}
