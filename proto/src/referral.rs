//! Partner referrals and "no wrong doors": what the gateway takes from a
//! partner's FHIR R4 ServiceRequest, the outreach contact it becomes, and
//! the closed-loop status (a FHIR Task) the partner reads and is called
//! back with.
//!
//! The flow, one owner per step:
//! 1. gateway: `POST /v1/referrals` → claims the [`ReferralRecord`] in the
//!    `referrals` bucket (status `requested`), publishes [`InboundReferral`]
//!    (INBOUND), answers 202 after the ack. It serves `GET /v1/referrals…`
//!    from the bucket.
//! 2. intake: [`InboundReferral`] → an outreach contact: opens the person's
//!    thread (their replies join it) and publishes [`OutreachOpened`]
//!    (CONTACTS).
//! 3. router: [`OutreachOpened`] → a contact record in the same queue and
//!    ladder as inbound contacts, not offered before `offer_at`; every step
//!    of the outreach (opened, assigned, attempt, outcome, resolved) is
//!    published as [`OutreachUpdate`] (CONTACTS).
//! 4. referrals service: [`OutreachUpdate`] → the record's Task status by
//!    compare-and-swap, then a [`PartnerTaskUpdate`] (OUTBOUND) per version.
//! 5. notifier: [`PartnerTaskUpdate`] → the partner's callback URL, signed
//!    with Standard Webhooks, retried, parked when it keeps failing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::address::Address;
use crate::envelope::Event;
use crate::events::Channel;
use crate::ids::{ContactId, CounsellorId, PartnerId, ReferralId};
use crate::risk::{Language, RiskLevel};

/// Largest referral body the gateway reads (the FHIR test data's rule 1).
pub const MAX_REFERRAL_BYTES: usize = 1024 * 1024;

/// `ServiceRequest.priority` (required value set `request-priority`).
/// A missing priority means `routine`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Routine,
    Urgent,
    Asap,
    Stat,
}

impl Priority {
    /// The FHIR code, also the bounded value for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Routine => "routine",
            Priority::Urgent => "urgent",
            Priority::Asap => "asap",
            Priority::Stat => "stat",
        }
    }

    /// Parses a FHIR code exactly (codes are case-sensitive: `STAT` is not one).
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "routine" => Some(Priority::Routine),
            "urgent" => Some(Priority::Urgent),
            "asap" => Some(Priority::Asap),
            "stat" => Some(Priority::Stat),
            _ => None,
        }
    }

    /// The risk an outreach contact starts at, before anyone has spoken to
    /// the person: a `stat` referral (an emergency department after an
    /// overdose) is high; a person lowers it, never the line.
    pub fn initial_risk(self) -> RiskLevel {
        match self {
            Priority::Stat => RiskLevel::High,
            Priority::Asap | Priority::Urgent => RiskLevel::Moderate,
            Priority::Routine => RiskLevel::Low,
        }
    }
}

/// How long after it may first be offered an outreach is due, per priority
/// (minutes). Defaults: stat 15 min, asap 1 h, urgent 4 h, routine 24 h;
/// a partner's directory entry may change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DueTimes {
    pub stat_minutes: u32,
    pub asap_minutes: u32,
    pub urgent_minutes: u32,
    pub routine_minutes: u32,
}

impl Default for DueTimes {
    fn default() -> Self {
        Self {
            stat_minutes: 15,
            asap_minutes: 60,
            urgent_minutes: 240,
            routine_minutes: 24 * 60,
        }
    }
}

impl DueTimes {
    pub fn for_priority(&self, priority: Priority) -> time::Duration {
        let minutes = match priority {
            Priority::Stat => self.stat_minutes,
            Priority::Asap => self.asap_minutes,
            Priority::Urgent => self.urgent_minutes,
            Priority::Routine => self.routine_minutes,
        };
        time::Duration::minutes(i64::from(minutes))
    }

    /// When an outreach may first be offered and when it is due: a
    /// referral whose occurrence is in the future (a release date, a
    /// discharge) is offered then; otherwise at once. Due is that plus the
    /// priority's time.
    pub fn schedule(
        &self,
        priority: Priority,
        occurrence: Option<OffsetDateTime>,
        received_at: OffsetDateTime,
    ) -> (OffsetDateTime, OffsetDateTime) {
        let offer_at = occurrence.map_or(received_at, |o| o.max(received_at));
        (offer_at, offer_at + self.for_priority(priority))
    }
}

/// A partner's referral settings in the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralSettings {
    /// Standard Webhooks secrets (`whsec_<base64>`), newest first; several
    /// are active at once while a partner rotates. A request signed with
    /// any of them is accepted; callbacks are signed with the first.
    pub secrets: Vec<String>,
    /// Where status changes are posted as FHIR Tasks; `None`: the partner
    /// polls `GET /v1/referrals`.
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub due: DueTimes,
}

/// The person a referral is about, as far as the line needs them.
/// Personal data: never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferredPatient {
    /// The phone (`telecom` system phone or sms) the line will text: a
    /// mobile one first.
    pub phone: Address,
    /// `Patient.name` as text, for the counsellor.
    #[serde(default)]
    pub name: Option<String>,
    /// `Patient.communication` (preferred first), when it is one the line speaks.
    #[serde(default)]
    pub language: Option<Language>,
}

/// A partner referral taken by the gateway. Subject
/// `nwd.v1.inbound.referral`, `Nats-Msg-Id` = [`crate::wire::msg_id::inbound_referral`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundReferral {
    pub referral_id: ReferralId,
    pub partner: PartnerId,
    pub priority: Priority,
    /// `ServiceRequest.occurrence[x]` (the start of a period).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub occurrence: Option<OffsetDateTime>,
    /// From the partner's due times and the occurrence ([`DueTimes::schedule`]).
    #[serde(with = "time::serde::rfc3339")]
    pub offer_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    pub patient: ReferredPatient,
    /// The reason for the referral in words (`reasonCode` text or display,
    /// notes), for the counsellor only: never sent to the person, never logged.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl Event for InboundReferral {
    const TYPE: &'static str = "inbound.referral";
}

/// `Task.status` (FHIR R4 `task-status`), as the Gravity SDOH Clinical
/// Care referral pattern uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    Requested,
    Received,
    Accepted,
    Rejected,
    InProgress,
    OnHold,
    Failed,
    Completed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Requested => "requested",
            TaskStatus::Received => "received",
            TaskStatus::Accepted => "accepted",
            TaskStatus::Rejected => "rejected",
            TaskStatus::InProgress => "in-progress",
            TaskStatus::OnHold => "on-hold",
            TaskStatus::Failed => "failed",
            TaskStatus::Completed => "completed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// No later status follows.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Rejected
                | TaskStatus::Failed
                | TaskStatus::Completed
                | TaskStatus::Cancelled
        )
    }
}

/// How an outreach ended, as the counsellor recorded it. It becomes the
/// Task's `businessStatus` (and its final status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutreachOutcome {
    /// The person was reached.
    Reached,
    /// The person was reached and declined help.
    Declined,
    /// No answer after the attempts the line makes.
    NoAnswer,
    /// The number does not reach the person.
    WrongNumber,
    /// Reached and passed on to another service.
    ReferredOn,
}

impl OutreachOutcome {
    /// Bounded value for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            OutreachOutcome::Reached => "reached",
            OutreachOutcome::Declined => "declined",
            OutreachOutcome::NoAnswer => "no_answer",
            OutreachOutcome::WrongNumber => "wrong_number",
            OutreachOutcome::ReferredOn => "referred_on",
        }
    }
}

/// The closed-loop state of one referral: KV bucket `referrals`, key =
/// [`crate::wire::key::referral`]. Created by the gateway (status
/// `requested`, version 1); every later change is made by the referrals
/// service by compare-and-swap and bumps `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferralRecord {
    pub id: ReferralId,
    pub partner: PartnerId,
    /// The partner's `webhook-id` (its idempotency key).
    pub webhook_id: String,
    /// SHA-256 of the body as received (hex): a replay with another body is 409.
    pub body_digest: String,
    /// What the Task's `focus` points at: the ServiceRequest's reference as
    /// the partner sent it (a Bundle entry's fullUrl, `ServiceRequest/<id>`),
    /// `None` when it had neither (then the placer identifier names it).
    #[serde(default)]
    pub focus: Option<String>,
    /// The ServiceRequest's first identifier (the partner's own referral
    /// number), echoed as the Task's placer identifier.
    #[serde(default)]
    pub placer_identifier: Option<Identifier>,
    pub priority: Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub offer_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    pub status: TaskStatus,
    #[serde(default)]
    pub outcome: Option<OutreachOutcome>,
    /// Why the status is rejected, failed or on-hold, in words (never patient data).
    #[serde(default)]
    pub status_reason: Option<String>,
    /// The outreach contact, once intake opened it.
    #[serde(default)]
    pub contact_id: Option<ContactId>,
    /// 1 when created; +1 on every status change. Callbacks carry it.
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_modified: OffsetDateTime,
}

/// A FHIR `Identifier` reduced to what the Task echoes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(default)]
    pub system: Option<String>,
    pub value: String,
}

/// Code system of the Task's `businessStatus` (the outreach outcome).
pub const OUTCOME_SYSTEM: &str = "https://nowrongdoor.example.org/fhir/CodeSystem/outreach-outcome";

impl OutreachOutcome {
    /// The `businessStatus` code and display.
    pub fn business_status(self) -> (&'static str, &'static str) {
        match self {
            OutreachOutcome::Reached => ("reached", "Reached"),
            OutreachOutcome::Declined => ("declined", "Person declined"),
            OutreachOutcome::NoAnswer => ("unable-to-contact", "Unable to contact"),
            OutreachOutcome::WrongNumber => ("wrong-number", "Unable to contact: wrong number"),
            OutreachOutcome::ReferredOn => ("referred-on", "Referred on"),
        }
    }
}

impl ReferralRecord {
    /// The referral's status as a FHIR R4 Task (Gravity SDOH Clinical Care
    /// referral pattern): `focus` the ServiceRequest, `status` and
    /// `businessStatus`, the due time as `restriction.period.end`. No patient
    /// data: the Task names the request, not the person. `line` is the
    /// line's name (the Task's owner) and `partner_name` the referrer's.
    pub fn task(&self, line: &str, partner_name: &str) -> serde_json::Value {
        use serde_json::{Value, json};
        let rfc = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut identifiers = Vec::new();
        if let Some(placer) = &self.placer_identifier {
            let mut id = json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "PLAC", "display": "Placer Identifier"}]},
                "value": placer.value,
                "assigner": {"display": partner_name},
            });
            if let Some(system) = &placer.system {
                id["system"] = Value::String(system.clone());
            }
            identifiers.push(id);
        }
        identifiers.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                "code": "FILL", "display": "Filler Identifier"}]},
            "system": "https://nowrongdoor.example.org/ids/referral-task",
            "value": self.id.to_string(),
            "assigner": {"display": line},
        }));
        let mut focus = json!({"display": "Referral to the crisis support line"});
        if let Some(reference) = &self.focus {
            focus["reference"] = Value::String(reference.clone());
        } else if let Some(placer) = &self.placer_identifier {
            focus["identifier"] = json!({"system": placer.system, "value": placer.value});
        }
        let mut task = json!({
            "resourceType": "Task",
            "id": self.id.to_string(),
            "meta": {"versionId": self.version.to_string(), "lastUpdated": rfc(self.last_modified)},
            "identifier": identifiers,
            "status": self.status.as_str(),
            "intent": "order",
            "priority": self.priority.as_str(),
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code",
                "code": "fulfill", "display": "Fulfill the focal request"}]},
            "focus": focus,
            "authoredOn": rfc(self.received_at),
            "lastModified": rfc(self.last_modified),
            "requester": {"display": partner_name},
            "owner": {"display": line},
            "restriction": {"period": {"start": rfc(self.offer_at), "end": rfc(self.due_at)}},
        });
        if let Some(outcome) = self.outcome {
            let (code, display) = outcome.business_status();
            task["businessStatus"] = json!({
                "coding": [{"system": OUTCOME_SYSTEM, "code": code, "display": display}],
                "text": display,
            });
        }
        if let Some(reason) = &self.status_reason {
            task["statusReason"] = json!({"text": reason});
        }
        task
    }
}

/// An outreach contact opened by intake for a referral. Subject
/// `nwd.v1.contact.outreach.<contact_id>`, `Nats-Msg-Id` =
/// [`crate::wire::msg_id::outreach_opened`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutreachOpened {
    pub contact_id: ContactId,
    pub referral_id: ReferralId,
    /// The person's address and the line address the line texts them from
    /// (one of the line's own numbers, never a partner's door).
    pub channel: Channel,
    /// The referring partner: the contact's door.
    pub door: PartnerId,
    /// Directory id of the person when their number is known.
    pub patient: Option<String>,
    /// The person's name as the partner gave it, for the counsellor.
    #[serde(default)]
    pub patient_name: Option<String>,
    pub lang: Language,
    pub priority: Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub offer_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// For the counsellor only.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl Event for OutreachOpened {
    const TYPE: &'static str = "contact.outreach";
}

/// What happened to an outreach contact, published by the router after the
/// contact record changed. Subject `nwd.v1.contact.outreach_update.<contact_id>`,
/// `Nats-Msg-Id` = [`crate::wire::msg_id::outreach_update`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutreachUpdate {
    pub contact_id: ContactId,
    pub referral_id: ReferralId,
    pub change: OutreachChange,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for OutreachUpdate {
    const TYPE: &'static str = "contact.outreach_update";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum OutreachChange {
    /// In the queue (the line accepted the referral).
    Queued,
    /// A counsellor took it.
    Assigned { counsellor: CounsellorId },
    /// The counsellor recorded how it ended.
    Outcome {
        counsellor: CounsellorId,
        outcome: OutreachOutcome,
    },
    /// The contact was resolved (after an outcome, or without one).
    Resolved { counsellor: CounsellorId },
}

impl OutreachChange {
    /// Bounded name, for ids and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            OutreachChange::Queued => "queued",
            OutreachChange::Assigned { .. } => "assigned",
            OutreachChange::Outcome { .. } => "outcome",
            OutreachChange::Resolved { .. } => "resolved",
        }
    }
}

/// A referral's new status, to post to the partner's callback URL.
/// Subject `nwd.v1.outbound.partner_task.<referral_id>`, `Nats-Msg-Id` =
/// [`crate::wire::msg_id::partner_task`]; the callback's `webhook-id` is the
/// same string on every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerTaskUpdate {
    pub referral_id: ReferralId,
    pub partner: PartnerId,
    pub version: u32,
    /// The FHIR R4 Task as it is at this version (no patient data beyond
    /// the references the partner sent).
    pub task: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for PartnerTaskUpdate {
    const TYPE: &'static str = "outbound.partner_task";
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn priorities_are_fhir_codes_and_case_sensitive() {
        for p in [
            Priority::Routine,
            Priority::Urgent,
            Priority::Asap,
            Priority::Stat,
        ] {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        assert_eq!(Priority::parse("STAT"), None);
        assert_eq!(Priority::default(), Priority::Routine);
    }

    #[test]
    fn due_times_default_and_future_occurrence() {
        let due = DueTimes::default();
        let now = datetime!(2026-12-07 10:00 UTC);
        assert_eq!(
            due.schedule(Priority::Stat, None, now),
            (now, datetime!(2026-12-07 10:15 UTC))
        );
        assert_eq!(
            due.schedule(Priority::Routine, None, now).1,
            datetime!(2026-12-08 10:00 UTC)
        );
        let release = datetime!(2036-01-15 14:00 UTC);
        assert_eq!(
            due.schedule(Priority::Urgent, Some(release), now),
            (release, datetime!(2036-01-15 18:00 UTC))
        );
        // An occurrence in the past is due as if none was given.
        let past = datetime!(2026-12-01 10:00 UTC);
        assert_eq!(due.schedule(Priority::Asap, Some(past), now).0, now);
    }

    #[test]
    fn a_task_names_the_request_and_never_the_person() {
        let at = datetime!(2026-12-07 10:00 UTC);
        let mut record = ReferralRecord {
            id: crate::wire::referral_id(&PartnerId::parse("county-hospital").unwrap(), "msg_1"),
            partner: PartnerId::parse("county-hospital").unwrap(),
            webhook_id: "msg_1".into(),
            body_digest: "00".into(),
            focus: Some("ServiceRequest/ed-4417".into()),
            placer_identifier: Some(Identifier {
                system: Some("https://hospital.example.org/ids/referral".into()),
                value: "ED-4417".into(),
            }),
            priority: Priority::Stat,
            offer_at: at,
            due_at: at + time::Duration::minutes(15),
            status: TaskStatus::Requested,
            outcome: None,
            status_reason: None,
            contact_id: None,
            version: 1,
            received_at: at,
            last_modified: at,
        };
        let task = record.task("No Wrong Door", "County Hospital");
        assert_eq!(task["resourceType"], "Task");
        assert_eq!(task["status"], "requested");
        assert_eq!(task["focus"]["reference"], "ServiceRequest/ed-4417");
        assert_eq!(task["identifier"][0]["value"], "ED-4417");
        assert_eq!(task["identifier"][1]["value"], record.id.to_string());
        assert_eq!(task["restriction"]["period"]["end"], "2026-12-07T10:15:00Z");
        assert_eq!(task["meta"]["versionId"], "1");
        assert!(task.get("businessStatus").is_none());
        assert!(task.get("for").is_none());
        record.status = TaskStatus::Failed;
        record.outcome = Some(OutreachOutcome::NoAnswer);
        record.status_reason = Some("no answer after 3 attempts".into());
        record.version = 4;
        let task = record.task("No Wrong Door", "County Hospital");
        assert_eq!(task["status"], "failed");
        assert_eq!(
            task["businessStatus"]["coding"][0]["code"],
            "unable-to-contact"
        );
        assert_eq!(task["statusReason"]["text"], "no answer after 3 attempts");
    }

    #[test]
    fn task_status_codes() {
        let json = serde_json::to_string(&TaskStatus::InProgress).unwrap();
        assert_eq!(json, "\"in-progress\"");
        assert_eq!(TaskStatus::OnHold.as_str(), "on-hold");
        assert!(TaskStatus::Completed.is_final());
        assert!(!TaskStatus::Accepted.is_final());
    }
}
