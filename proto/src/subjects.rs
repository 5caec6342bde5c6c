//! Every subject, built in one place. Form: `nwd.v1.<area>.<event>[.<id>]`.
//! Never write a subject as a string literal in a service.

use crate::ids::{ChatSessionId, ContactId, CounsellorId, ReferralId};

const ROOT: &str = "nwd.v1";

/// Filter for the whole INBOUND stream.
pub const INBOUND_ALL: &str = "nwd.v1.inbound.>";
/// Filter for the whole CONTACTS stream.
pub const CONTACTS_ALL: &str = "nwd.v1.contact.>";
/// Filter for the whole OUTBOUND stream.
pub const OUTBOUND_ALL: &str = "nwd.v1.outbound.>";
/// Filter for the whole AUDIT stream.
pub const AUDIT_ALL: &str = "nwd.v1.audit.>";
/// Filter for the whole DEADLETTER stream.
pub const DEADLETTER_ALL: &str = "nwd.v1.deadletter.>";

pub fn inbound_sms() -> String {
    format!("{ROOT}.inbound.sms")
}

pub fn inbound_sms_status() -> String {
    format!("{ROOT}.inbound.sms_status")
}

/// What a person did in web-chat session `session` (INBOUND): a message or
/// a quick exit. Published by the chat service.
pub fn inbound_chat(session: &ChatSessionId) -> String {
    format!("{ROOT}.inbound.chat.{session}")
}

/// Every chat session's inputs (INBOUND), for intake's consumer.
pub fn inbound_chat_all() -> String {
    format!("{ROOT}.inbound.chat.*")
}

/// A message of ours to the person of chat contact `contact` in session
/// `session` (OUTBOUND).
pub fn outbound_chat(session: &ChatSessionId, contact: &ContactId) -> String {
    format!("{ROOT}.outbound.chat.{session}.{contact}")
}

/// Everything we wrote to one chat session, whatever its contacts: what
/// the chat service delivers and replays to the session's page.
pub fn outbound_chat_session(session: &ChatSessionId) -> String {
    format!("{ROOT}.outbound.chat.{session}.*")
}

/// Our chat messages to one contact, whatever its session: with
/// [`outbound_for_contact`], the contact's side of the transcript.
pub fn outbound_chat_for_contact(contact: &ContactId) -> String {
    format!("{ROOT}.outbound.chat.*.{contact}")
}

/// Core NATS (not stored): the counsellor of a chat contact is typing;
/// dashboard → the chat service holding session `session`'s socket.
pub fn chat_typing(session: &ChatSessionId) -> String {
    format!("{ROOT}.chat.typing.{session}")
}

/// Core NATS (not stored): the counsellor holding a chat contact has read
/// the person's messages up to one; dashboard → chat (request/reply, queue
/// group [`CHAT_QUEUE_GROUP`]: one chat instance keeps the mark and answers).
pub fn chat_read(session: &ChatSessionId) -> String {
    format!("{ROOT}.chat.read.{session}")
}

/// Every session's read requests (the chat service's subscription).
pub fn chat_read_all() -> String {
    format!("{ROOT}.chat.read.*")
}

/// Core NATS (not stored): a session's read mark was raised and kept;
/// chat → the chat instance holding the session's socket.
pub fn chat_seen(session: &ChatSessionId) -> String {
    format!("{ROOT}.chat.seen.{session}")
}

/// Core NATS (not stored): the line's status (waiting counts, counsellors
/// free, recent typical wait; no personal data), from the router on change
/// and at a steady interval; the chat's honest wait estimate.
pub fn line_status() -> String {
    format!("{ROOT}.line.status")
}

/// A partner referral taken by the gateway (INBOUND).
pub fn inbound_referral() -> String {
    format!("{ROOT}.inbound.referral")
}

/// An outreach contact opened for a referral (CONTACTS).
pub fn contact_outreach(id: &ContactId) -> String {
    format!("{ROOT}.contact.outreach.{id}")
}

pub fn contact_outreach_all() -> String {
    format!("{ROOT}.contact.outreach.*")
}

/// What happened to an outreach contact (CONTACTS), for the referral's status.
pub fn contact_outreach_update(id: &ContactId) -> String {
    format!("{ROOT}.contact.outreach_update.{id}")
}

pub fn contact_outreach_update_all() -> String {
    format!("{ROOT}.contact.outreach_update.*")
}

/// A referral's new status for the partner's callback (OUTBOUND).
pub fn outbound_partner_task(id: &ReferralId) -> String {
    format!("{ROOT}.outbound.partner_task.{id}")
}

pub fn outbound_partner_task_all() -> String {
    format!("{ROOT}.outbound.partner_task.*")
}

pub fn contact_message(id: &ContactId) -> String {
    format!("{ROOT}.contact.message.{id}")
}

pub fn contact_messages_all() -> String {
    format!("{ROOT}.contact.message.*")
}

pub fn contact_triaged(id: &ContactId) -> String {
    format!("{ROOT}.contact.triaged.{id}")
}

pub fn contact_triaged_all() -> String {
    format!("{ROOT}.contact.triaged.*")
}

pub fn contact_assigned(id: &ContactId) -> String {
    format!("{ROOT}.contact.assigned.{id}")
}

pub fn contact_assigned_all() -> String {
    format!("{ROOT}.contact.assigned.*")
}

pub fn contact_resolved(id: &ContactId) -> String {
    format!("{ROOT}.contact.resolved.{id}")
}

pub fn contact_resolved_all() -> String {
    format!("{ROOT}.contact.resolved.*")
}

pub fn contact_escalated(id: &ContactId) -> String {
    format!("{ROOT}.contact.escalated.{id}")
}

pub fn contact_escalated_all() -> String {
    format!("{ROOT}.contact.escalated.*")
}

/// A counsellor's private note on a contact (CONTACTS): for the line's
/// staff only, never sent to the person.
pub fn contact_noted(id: &ContactId) -> String {
    format!("{ROOT}.contact.noted.{id}")
}

pub fn contact_noted_all() -> String {
    format!("{ROOT}.contact.noted.*")
}

pub fn audit_disclosure(id: &ContactId) -> String {
    format!("{ROOT}.audit.disclosure.{id}")
}

pub fn audit_disclosure_refused(id: &ContactId) -> String {
    format!("{ROOT}.audit.disclosure_refused.{id}")
}

/// Who was shown a contact (AUDIT, dashboard): [`crate::events::ContactViewed`].
pub fn audit_viewed(id: &ContactId) -> String {
    format!("{ROOT}.audit.viewed.{id}")
}

/// A C-SSRS screener recorded in a contact (AUDIT, router):
/// [`crate::events::ScreenerRecorded`].
pub fn audit_screener(id: &ContactId) -> String {
    format!("{ROOT}.audit.screener.{id}")
}

/// A handover of a contact (AUDIT, router): a transfer started or
/// cancelled, a reassignment, a follow-up claimed
/// ([`crate::events::HandoverRecorded`]).
pub fn audit_handover(id: &ContactId) -> String {
    format!("{ROOT}.audit.handover.{id}")
}

/// The switchboard turned on or off (AUDIT, router):
/// [`crate::events::HandoverRecorded`] without a contact.
pub fn audit_switchboard() -> String {
    format!("{ROOT}.audit.switchboard")
}

pub fn outbound_sms(contact: &ContactId) -> String {
    format!("{ROOT}.outbound.sms.{contact}")
}

pub fn outbound_sms_all() -> String {
    format!("{ROOT}.outbound.sms.*")
}

/// Everything written to or about one contact in OUTBOUND (replies, statuses).
pub fn outbound_for_contact(contact: &ContactId) -> String {
    format!("{ROOT}.outbound.*.{contact}")
}

pub fn outbound_status(contact: &ContactId) -> String {
    format!("{ROOT}.outbound.status.{contact}")
}

pub fn outbound_status_all() -> String {
    format!("{ROOT}.outbound.status.*")
}

/// Core NATS (not stored): router → dashboard pushes for one counsellor.
pub fn dashboard_push(counsellor: &CounsellorId) -> String {
    format!("{ROOT}.dashboard.push.{counsellor}")
}

pub fn dashboard_push_all() -> String {
    format!("{ROOT}.dashboard.push.*")
}

/// Core NATS (not stored): router → every dashboard, the whole queue
/// ([`crate::dashboard::QueueSnapshot`]).
pub fn dashboard_queue() -> String {
    format!("{ROOT}.dashboard.queue")
}

/// Core NATS (not stored): router → every dashboard, the floor for the
/// supervisors ([`crate::dashboard::FloorSnapshot`]).
pub fn dashboard_floor() -> String {
    format!("{ROOT}.dashboard.floor")
}

/// Dead letters of one durable consumer (stream DEADLETTER).
pub fn deadletter(consumer: &str) -> String {
    format!("{ROOT}.deadletter.{consumer}")
}

/// Core NATS (not stored): alerts about the line itself (a dead letter…),
/// shown to supervisors by the dashboard. Never personal data.
pub fn ops_alert() -> String {
    format!("{ROOT}.ops.alert")
}

/// Core NATS request/reply: dashboard → router commands.
pub fn router_command() -> String {
    format!("{ROOT}.router.command")
}

/// Queue group of router replicas answering commands.
pub const ROUTER_QUEUE_GROUP: &str = "router";

/// Queue group of the chat instances answering read requests.
pub const CHAT_QUEUE_GROUP: &str = "chat";

/// The last token of a subject (the id for per-entity subjects).
pub fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_fall_under_their_stream_filters() {
        let id = ContactId::new();
        assert!(contact_message(&id).starts_with("nwd.v1.contact."));
        assert!(outbound_sms(&id).starts_with("nwd.v1.outbound."));
        assert!(inbound_sms().starts_with("nwd.v1.inbound."));
        assert!(inbound_referral().starts_with("nwd.v1.inbound."));
        assert!(contact_outreach(&id).starts_with("nwd.v1.contact."));
        assert!(contact_outreach_update(&id).starts_with("nwd.v1.contact."));
        let referral = ReferralId::new();
        assert!(outbound_partner_task(&referral).starts_with("nwd.v1.outbound."));
        assert_eq!(
            last_token(&outbound_partner_task(&referral)),
            referral.to_string()
        );
        let session = ChatSessionId::new();
        assert!(inbound_chat(&session).starts_with("nwd.v1.inbound."));
        assert_eq!(last_token(&inbound_chat(&session)), session.to_string());
        assert!(outbound_chat(&session, &id).starts_with("nwd.v1.outbound.chat."));
        assert_eq!(last_token(&outbound_chat(&session, &id)), id.to_string());
        // A chat message is on neither per-contact SMS filter nor another
        // session's: `outbound.*.<contact>` has one token fewer.
        assert_eq!(
            outbound_for_contact(&id).split('.').count() + 1,
            outbound_chat(&session, &id).split('.').count()
        );
        assert!(deadletter("intake-sms").starts_with("nwd.v1.deadletter."));
        assert_eq!(last_token(&contact_triaged(&id)), id.to_string());
    }
}
