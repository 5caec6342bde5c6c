//! Publishing the side effects of fired ladder steps — the outbox half of
//! the escalation. A step is first written into the contact record (by a
//! compare-and-swap, which decides it exactly once); then whoever wrote it,
//! or anyone who later sees `announced < steps` after a crash, publishes its
//! effects here. Every effect carries an id derived from `<contact>:step:<n>`
//! (built in [`nwd_proto::wire`]), so publishing twice is deduplicated by
//! JetStream (`Nats-Msg-Id`) and by the notifier (one send per outbound id):
//! no step's SMS or audit record twice.
//!
//! Disclosures to trusted contacts: the consent is checked again at the
//! moment of sending, now, against the directory in force (a consent revoked
//! or expired since the step fired is not relied on); the AUDIT record is
//! stored (its ack awaited) before the SMS is published; every disclosure not
//! made is audited as refused, with why (see the `REFUSED_*` reasons). A
//! crash between the record and the SMS republishes both under the same ids:
//! the record is deduplicated and the SMS then goes out, once.

use std::sync::Arc;

use async_nats::jetstream;
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{DashboardPush, EscalationView, ServerMsg};
use nwd_proto::directory::{Consent, Directory, Patient, TrustedContact};
use nwd_proto::events::{
    Author, ContactEscalated, Disclosure, DisclosureRefused, LegalBasis, OutboundSms, Recipient,
};
use nwd_proto::ladder::{Rung, SkipReason, StepOutcome, StepRecord};
use nwd_proto::{Address, CounsellorId, Envelope, Event, OutboundId, subjects, wire};
use time::OffsetDateTime;

use crate::bus;
use crate::kv::{self, Cas, KvError};
use crate::transcript;

use nwd_proto::ladder::TRUSTED_CONTACT_PURPOSE;

/// `DisclosureRefused.reason`s of the trusted-contact rung.
/// No consent on record for this trusted contact.
pub const REFUSED_NO_CONSENT: &str = "no_consent";
/// The consent was revoked (at or before the moment of sending).
pub const REFUSED_REVOKED: &str = "revoked";
/// The consent expired (at or before the moment of sending).
pub const REFUSED_EXPIRED: &str = "expired";
/// The consent does not cover this purpose (or is not signed yet).
pub const REFUSED_PURPOSE: &str = "purpose";
/// The patient is no longer in the directory: no consent can be checked.
pub const REFUSED_PATIENT_NOT_IN_DIRECTORY: &str = "patient_not_in_directory";
/// The trusted contact is no longer in the patient's directory record.
pub const REFUSED_RECIPIENT_NOT_IN_DIRECTORY: &str = "recipient_not_in_directory";
/// `patient` / `recipient` of an audit record when they are not known.
const UNKNOWN: &str = "unknown";

/// Why `consent` does not cover notifying a trusted contact at `at`.
pub fn refusal_reason(consent: Option<&Consent>, at: OffsetDateTime) -> &'static str {
    match consent {
        None => REFUSED_NO_CONSENT,
        Some(c) if c.revoked_at.is_some_and(|r| r <= at) => REFUSED_REVOKED,
        Some(c) if c.expires_at.is_some_and(|x| x <= at) => REFUSED_EXPIRED,
        Some(_) => REFUSED_PURPOSE,
    }
}

/// Who asks for a notice to a trusted contact; it gives the notice's ids
/// (so a redelivery or a retry is deduplicated) and the audit's `by`.
#[derive(Debug, Clone, Copy)]
enum Notice<'a> {
    /// A fired ladder step.
    Step(&'a StepRecord),
    /// The counsellor holding the contact since `since` ("involve trusted
    /// contact", ADR 0019).
    Counsellor(&'a CounsellorId, OffsetDateTime),
}

impl Notice<'_> {
    fn by(&self, service: &str, rec: &ContactRecord) -> String {
        match self {
            Notice::Step(step) => {
                format!(
                    "{service}:{}",
                    wire::msg_id::escalation_step(&rec.id, step.step)
                )
            }
            Notice::Counsellor(who, _) => format!("counsellor:{who}"),
        }
    }

    fn disclosure_id(&self, rec: &ContactRecord, recipient: &str) -> String {
        match self {
            Notice::Step(step) => wire::msg_id::step_disclosure(&rec.id, step.step, recipient),
            Notice::Counsellor(_, since) => {
                wire::msg_id::involve_disclosure(&rec.id, *since, recipient)
            }
        }
    }

    fn refused_id(&self, rec: &ContactRecord, recipient: &str) -> String {
        match self {
            Notice::Step(step) => {
                wire::msg_id::step_disclosure_refused(&rec.id, step.step, recipient)
            }
            Notice::Counsellor(_, since) => {
                wire::msg_id::involve_disclosure_refused(&rec.id, *since, recipient)
            }
        }
    }

    fn outbound_id(&self, rec: &ContactRecord, recipient: &str) -> OutboundId {
        match self {
            Notice::Step(step) => wire::outbound::trusted_contact(&rec.id, step.step, recipient),
            Notice::Counsellor(_, since) => {
                wire::outbound::involved_trusted_contact(&rec.id, *since, recipient)
            }
        }
    }
}

/// What became of a counsellor's request to involve a trusted contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Involved {
    /// Recorded in AUDIT, then texted.
    Told,
    /// Not told, and the refusal recorded in AUDIT with this reason (one of
    /// the `REFUSED_*`).
    Refused(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// Publishes step effects for one service (router or escalator).
pub struct Announcer {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub contacts: jetstream::kv::Store,
    pub directory: crate::directory::Live,
    /// Recorded as `by` in audit records.
    pub service: &'static str,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Steps of a record whose effects are not published yet.
pub fn unannounced(rec: &ContactRecord) -> Vec<StepRecord> {
    rec.escalation.as_ref().map_or_else(Vec::new, |e| {
        e.trail
            .iter()
            .filter(|s| s.step > e.announced)
            .cloned()
            .collect()
    })
}

fn patient<'d>(dir: &'d Directory, rec: &ContactRecord) -> Option<&'d Patient> {
    let id = rec.patient.as_ref()?;
    dir.patients.iter().find(|p| &p.id == id)
}

impl Announcer {
    fn dir(&self) -> Arc<Directory> {
        self.directory.get()
    }

    async fn push(&self, who: &CounsellorId, msg: ServerMsg) {
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
        event: T,
    ) -> Result<(), AnnounceError> {
        bus::publish(&self.js, subject, msg_id, &Envelope::new(event)).await?;
        Ok(())
    }

    async fn sms(
        &self,
        rec: &ContactRecord,
        outbound_id: OutboundId,
        to: impl Into<Address>,
        body: String,
    ) -> Result<(), AnnounceError> {
        let to = to.into();
        // The person on their own channel; anyone else by SMS from the line.
        let from = rec.channel.line_towards(&to);
        let sms = OutboundSms {
            outbound_id,
            contact_id: rec.id,
            to,
            from,
            body,
            author: Author::System,
            created_at: OffsetDateTime::now_utc(),
        };
        self.publish(
            subjects::outbound_sms(&rec.id),
            &wire::msg_id::outbound_sms(&outbound_id),
            sms,
        )
        .await
    }

    /// A message of the line to the person of `rec`, on their channel (an
    /// SMS, or the web chat).
    async fn to_person(
        &self,
        rec: &ContactRecord,
        outbound_id: OutboundId,
        body: String,
    ) -> Result<(), AnnounceError> {
        let msg = rec.channel.to_person(
            rec.id,
            outbound_id,
            body,
            Author::System,
            OffsetDateTime::now_utc(),
        );
        bus::publish_to_person(&self.js, &msg).await?;
        Ok(())
    }

    /// Publishes the effects of every unannounced step of `rec`, then marks
    /// them announced. Pushes to dashboards are best-effort (screens rebuild
    /// from KV on reconnect); stored effects must succeed or this fails and
    /// is retried by whoever sees the record next.
    pub async fn announce(&self, rec: &ContactRecord) -> Result<(), AnnounceError> {
        self.announce_with(rec, None).await
    }

    /// [`Self::announce`] with the contact's messages when the caller has
    /// them (a brand-new contact's only message), saving a stream read on
    /// the hot path.
    pub async fn announce_with(
        &self,
        rec: &ContactRecord,
        messages: Option<Vec<nwd_proto::dashboard::MessageView>>,
    ) -> Result<(), AnnounceError> {
        let steps = unannounced(rec);
        if steps.is_empty() {
            return Ok(());
        }
        let needs_view = steps.iter().any(|s| {
            matches!(
                s.outcome,
                StepOutcome::Offered { .. }
                    | StepOutcome::Broadcast { .. }
                    | StepOutcome::BackupAlerted { .. }
            )
        });
        let view = if needs_view {
            let messages = match messages {
                Some(m) => m,
                None => transcript::load(&self.js, &rec.id)
                    .await
                    .unwrap_or_default(),
            };
            Some(transcript::contact_view(rec, &self.dir(), messages))
        } else {
            None
        };
        // Screens first: an offer is a core NATS push that waits for nothing,
        // so it must not queue behind the stored effects (each an fsync) of
        // the steps skipped before it.
        for step in &steps {
            self.offer_pushes(step, view.as_ref()).await;
        }
        // The step events are sent in a row and their acks awaited together
        // (the SMS and audit records before them are awaited one by one: an
        // audit record is stored before the disclosure it records is sent).
        let mut step_events = Vec::with_capacity(steps.len());
        for step in &steps {
            step_events.push(self.effects(rec, step).await?);
        }
        for ack in step_events {
            ack.await?;
        }
        let last = steps.iter().map(|s| s.step).max().unwrap_or(0);
        kv::cas(
            &self.contacts,
            &wire::key::contact(&rec.id),
            |cur: Option<ContactRecord>| {
                let Some(mut cur) = cur else {
                    return Cas::Keep(());
                };
                match cur.escalation.as_mut() {
                    Some(e) if e.announced < last => {
                        e.announced = last;
                        Cas::Write(cur, ())
                    }
                    _ => Cas::Keep(()),
                }
            },
        )
        .await?;
        Ok(())
    }

    /// A step's offers and alerts on the screens (best effort: screens
    /// rebuild from KV on reconnect).
    async fn offer_pushes(
        &self,
        step: &StepRecord,
        view: Option<&nwd_proto::dashboard::ContactView>,
    ) {
        let (to, alerted): (&[CounsellorId], &[CounsellorId]) = match &step.outcome {
            StepOutcome::Offered { to } | StepOutcome::BackupAlerted { to } => (to, &[]),
            StepOutcome::Broadcast { to, alerted } => (to, alerted),
            _ => return,
        };
        for who in to {
            metrics::counter!("nwd_offers_total", "service" => self.service, "outcome" => "offered").increment(1);
            if let Some(v) = view {
                self.push(who, ServerMsg::Offer { contact: v.clone() })
                    .await;
            }
        }
        for who in alerted {
            if let Some(v) = view {
                self.push(
                    who,
                    ServerMsg::Alert {
                        reason: nwd_proto::dashboard::AlertReason::Imminent,
                        contact: Box::new(v.clone()),
                    },
                )
                .await;
            }
        }
    }

    /// A step's stored effects (SMS, audit records, the step event) and the
    /// progress shown to those watching the contact.
    /// Returns the pending ack of the step's event.
    async fn effects(
        &self,
        rec: &ContactRecord,
        step: &StepRecord,
    ) -> Result<jetstream::context::PublishAckFuture, AnnounceError> {
        let id = rec.id;
        let key = wire::msg_id::escalation_step(&id, step.step);
        let rung = step.rung.map_or("broadcast", |r| r.as_str());
        match &step.outcome {
            StepOutcome::Offered { .. } | StepOutcome::BackupAlerted { .. } => {}
            StepOutcome::Broadcast { .. } => {
                // The safety message: once per contact (the id does not name the step).
                self.to_person(
                    rec,
                    wire::outbound::safety_message(&id),
                    self.dir().safety_message(rec.lang),
                )
                .await?;
            }
            StepOutcome::TrustedContacts { notified, refused } => {
                self.trusted_contacts(rec, step, notified, refused).await?;
            }
            StepOutcome::Acknowledged {
                ahead,
                typical_wait_secs,
            } => {
                let body = acknowledgement(&self.dir(), rec.lang, *ahead, *typical_wait_secs);
                self.to_person(rec, wire::outbound::acknowledgement(&id, step.step), body)
                    .await?;
            }
            StepOutcome::Skipped {
                reason: SkipReason::NoTrustedContact,
            } if step.rung == Some(Rung::TrustedContact) => {
                self.patient_gone(rec, step).await?;
            }
            StepOutcome::Skipped { .. } => {}
        }
        if let StepOutcome::BackupAlerted { .. } = &step.outcome {
            let waited = rec
                .waiting_since()
                .map_or(0, |s| (step.at - s).whole_minutes().max(0));
            let body = format!(
                "{}: a person has waited {waited} min (risk {}) and no counsellor has answered. Reference {id}. Please call the line.",
                self.dir().line.name,
                rec.risk
            );
            self.sms(
                rec,
                wire::outbound::backup_alert(&id, step.step),
                self.dir().line.backup_line.clone(),
                body,
            )
            .await?;
            // A person in the web chat has no number the backup line could
            // call: the chat shows them the backup line's number instead
            // (once per contact). An SMS sender is called back.
            if rec.channel.chat_session().is_some() {
                let body = backup_line_note(&self.dir(), rec.lang);
                self.to_person(rec, wire::outbound::backup_line_note(&id), body)
                    .await?;
            }
        }
        let next_due = rec.escalation.as_ref().and_then(|e| e.due);
        let event = bus::send(
            &self.js,
            subjects::contact_escalated(&id),
            &key,
            &Envelope::new(ContactEscalated {
                contact_id: id,
                risk: rec.risk,
                step: step.clone(),
                next_due,
            }),
        )
        .await?;
        if let Some(e) = rec.escalation.as_ref() {
            let progress = Box::new(EscalationView::of(e));
            let mut watchers: Vec<CounsellorId> = nwd_proto::contact::offered(rec).to_vec();
            for s in &self.dir().staff {
                if s.role == nwd_proto::directory::Role::Supervisor && !watchers.contains(&s.id) {
                    watchers.push(s.id.clone());
                }
            }
            for who in &watchers {
                self.push(
                    who,
                    ServerMsg::Escalation {
                        contact_id: id,
                        progress: progress.clone(),
                    },
                )
                .await;
            }
        }
        metrics::counter!("nwd_escalation_steps_total", "service" => self.service, "rung" => rung, "outcome" => outcome_label(&step.outcome)).increment(1);
        tracing::info!(contact = %id, step = step.step, rung, outcome = outcome_label(&step.outcome), "escalation step announced");
        Ok(event)
    }

    /// The trusted-contact rung's disclosures. The ladder chose whom to
    /// notify when the step fired; the consent is checked again here, now,
    /// against the directory in force, and each notice is recorded before
    /// it is sent.
    async fn trusted_contacts(
        &self,
        rec: &ContactRecord,
        step: &StepRecord,
        notified: &[String],
        refused: &[String],
    ) -> Result<(), AnnounceError> {
        let dir = self.dir();
        let now = OffsetDateTime::now_utc();
        let Some(p) = patient(&dir, rec) else {
            // Removed from the directory since the step fired: no consent
            // can be checked, so nobody is told, and that is recorded.
            let who = rec.patient.as_deref().unwrap_or(UNKNOWN);
            for t in notified.iter().chain(refused) {
                self.refusal(
                    rec,
                    Notice::Step(step),
                    who,
                    t,
                    REFUSED_PATIENT_NOT_IN_DIRECTORY,
                    now,
                )
                .await?;
            }
            return Ok(());
        };
        for t in &p.trusted_contacts {
            let chosen = notified.contains(&t.id);
            if !chosen && !refused.contains(&t.id) {
                continue;
            }
            match t
                .consent
                .as_ref()
                .filter(|c| c.covers(TRUSTED_CONTACT_PURPOSE, now))
            {
                Some(c) if chosen => self.disclose(rec, Notice::Step(step), p, t, c, now).await?,
                _ => {
                    // Refused by the ladder at the step's time, or since.
                    let at = if chosen { now } else { step.at };
                    let reason = refusal_reason(t.consent.as_ref(), at);
                    self.refusal(rec, Notice::Step(step), &p.id, &t.id, reason, now)
                        .await?;
                }
            }
        }
        for gone in notified
            .iter()
            .chain(refused)
            .filter(|id| !p.trusted_contacts.iter().any(|t| &t.id == *id))
        {
            self.refusal(
                rec,
                Notice::Step(step),
                &p.id,
                gone,
                REFUSED_RECIPIENT_NOT_IN_DIRECTORY,
                now,
            )
            .await?;
        }
        Ok(())
    }

    /// A counsellor holding the contact asks to tell trusted contact
    /// `trusted` (ADR 0019): the same rules as the ladder's rung — the
    /// consent is checked now against the directory in force, the AUDIT
    /// record is stored before the SMS, and a refusal is audited too. Once
    /// per trusted contact per conversation (`since`: when they took it).
    pub async fn involve_trusted_contact(
        &self,
        rec: &ContactRecord,
        who: &CounsellorId,
        since: OffsetDateTime,
        trusted: &str,
    ) -> Result<Involved, AnnounceError> {
        let dir = self.dir();
        let now = OffsetDateTime::now_utc();
        let notice = Notice::Counsellor(who, since);
        let patient_id = rec.patient.as_deref().unwrap_or(UNKNOWN);
        let Some(p) = patient(&dir, rec) else {
            self.refusal(
                rec,
                notice,
                patient_id,
                trusted,
                REFUSED_PATIENT_NOT_IN_DIRECTORY,
                now,
            )
            .await?;
            return Ok(Involved::Refused(REFUSED_PATIENT_NOT_IN_DIRECTORY));
        };
        let Some(t) = p.trusted_contacts.iter().find(|t| t.id == trusted) else {
            self.refusal(
                rec,
                notice,
                &p.id,
                trusted,
                REFUSED_RECIPIENT_NOT_IN_DIRECTORY,
                now,
            )
            .await?;
            return Ok(Involved::Refused(REFUSED_RECIPIENT_NOT_IN_DIRECTORY));
        };
        match t
            .consent
            .as_ref()
            .filter(|c| c.covers(TRUSTED_CONTACT_PURPOSE, now))
        {
            Some(c) => {
                self.disclose(rec, notice, p, t, c, now).await?;
                Ok(Involved::Told)
            }
            None => {
                let reason = refusal_reason(t.consent.as_ref(), now);
                self.refusal(rec, notice, &p.id, &t.id, reason, now).await?;
                Ok(Involved::Refused(reason))
            }
        }
    }

    /// One notice to a trusted contact: the AUDIT record first (stored, its
    /// ack awaited), then the SMS.
    async fn disclose(
        &self,
        rec: &ContactRecord,
        notice: Notice<'_>,
        p: &Patient,
        t: &TrustedContact,
        c: &Consent,
        now: OffsetDateTime,
    ) -> Result<(), AnnounceError> {
        self.publish(
            subjects::audit_disclosure(&rec.id),
            &notice.disclosure_id(rec, &t.id),
            Disclosure {
                contact_id: rec.id,
                patient: p.id.clone(),
                recipient: Recipient::TrustedContact(t.id.clone()),
                what: c.disclose.clone(),
                purpose: c.purpose.clone(),
                basis: LegalBasis::Consent {
                    purpose: c.purpose.clone(),
                    disclose: c.disclose.clone(),
                    signed_at: c.signed_at,
                    expires_at: c.expires_at,
                },
                by: notice.by(self.service, rec),
                at: now,
            },
        )
        .await?;
        let dir = self.dir();
        let first_name = p.name.split_whitespace().next().unwrap_or("Someone");
        // Exactly what the consent allows: that they contacted the line.
        let body = format!(
            "{}: {first_name} contacted us and may need your support. Please check in with them. In an emergency call {}.",
            dir.line.name, dir.line.emergency_number
        );
        self.sms(rec, notice.outbound_id(rec, &t.id), t.phone.clone(), body)
            .await?;
        metrics::counter!("nwd_disclosures_total", "service" => self.service, "outcome" => "disclosed").increment(1);
        Ok(())
    }

    /// A trusted-contact rung skipped because the contact's patient is not
    /// in the directory (any more): recorded as a refusal, since the line
    /// could not check whom the patient consented to tell.
    async fn patient_gone(
        &self,
        rec: &ContactRecord,
        step: &StepRecord,
    ) -> Result<(), AnnounceError> {
        let Some(id) = rec.patient.as_deref() else {
            return Ok(());
        };
        if patient(&self.dir(), rec).is_some() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        self.refusal(
            rec,
            Notice::Step(step),
            id,
            UNKNOWN,
            REFUSED_PATIENT_NOT_IN_DIRECTORY,
            now,
        )
        .await
    }

    async fn refusal(
        &self,
        rec: &ContactRecord,
        notice: Notice<'_>,
        patient: &str,
        recipient: &str,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<(), AnnounceError> {
        metrics::counter!("nwd_disclosures_total", "service" => self.service, "outcome" => "refused").increment(1);
        self.publish(
            subjects::audit_disclosure_refused(&rec.id),
            &notice.refused_id(rec, recipient),
            DisclosureRefused {
                contact_id: rec.id,
                patient: patient.to_owned(),
                recipient: Recipient::TrustedContact(recipient.to_owned()),
                reason: reason.to_owned(),
                by: notice.by(self.service, rec),
                at,
            },
        )
        .await
    }
}

/// The acknowledgement a waiting person gets once per wait: honest about
/// the queue (how many are ahead; the recent typical wait only when the line
/// has figures), and the emergency number.
/// What a person in the web chat reads when the ladder reaches the backup
/// line: its number, never "nobody is available".
pub fn backup_line_note(dir: &Directory, lang: nwd_proto::Language) -> String {
    let line = &dir.line.name;
    let backup = dir.line.backup_line.as_e164();
    let emergency = &dir.line.emergency_number;
    match lang {
        nwd_proto::Language::Es => format!(
            "{line}: tu mensaje sigue con nosotros y un consejero te responderá aquí. Si prefieres hablar por teléfono ahora, llama a nuestra línea de apoyo: {backup}. Si estás en peligro ahora, llama al {emergency}."
        ),
        nwd_proto::Language::En => format!(
            "{line}: your message is still with us and a counsellor will answer here. If you would rather talk on the phone now, call our partner line: {backup}. If you are in danger now, call {emergency}."
        ),
    }
}

pub fn acknowledgement(
    dir: &Directory,
    lang: nwd_proto::Language,
    ahead: u32,
    typical_wait_secs: Option<u64>,
) -> String {
    let line = &dir.line.name;
    let emergency = &dir.line.emergency_number;
    let minutes = typical_wait_secs.map(|s| s.div_ceil(60).max(1));
    match lang {
        nwd_proto::Language::Es => {
            let queue = match ahead {
                0 => "Eres la próxima persona en ser atendida.".to_owned(),
                1 => "Hay 1 persona antes que tú.".to_owned(),
                n => format!("Hay {n} personas antes que tú."),
            };
            let wait = minutes.map_or_else(
                || " No podemos decirte exactamente cuánto tardará.".to_owned(),
                |m| format!(" Últimamente la espera ha sido de unos {m} min."),
            );
            format!(
                "{line}: recibimos tu mensaje y un consejero te responderá en cuanto pueda. {queue}{wait} Si estás en peligro ahora, llama al {emergency}."
            )
        }
        nwd_proto::Language::En => {
            let queue = match ahead {
                0 => "You are next in line.".to_owned(),
                1 => "There is 1 person ahead of you.".to_owned(),
                n => format!("There are {n} people ahead of you."),
            };
            let wait = minutes.map_or_else(
                || " We can't say exactly how long it will take.".to_owned(),
                |m| format!(" Lately people have waited about {m} min."),
            );
            format!(
                "{line}: we have your message and a counsellor will answer as soon as one is free. {queue}{wait} If you are in danger now, call {emergency}."
            )
        }
    }
}

/// A bounded metric label for a step outcome.
pub fn outcome_label(o: &StepOutcome) -> &'static str {
    match o {
        StepOutcome::Offered { .. } => "offered",
        StepOutcome::Broadcast { .. } => "broadcast",
        StepOutcome::TrustedContacts { .. } => "trusted_contacts",
        StepOutcome::BackupAlerted { .. } => "backup_alerted",
        StepOutcome::Acknowledged { .. } => "acknowledged",
        StepOutcome::Skipped { .. } => "skipped",
    }
}
