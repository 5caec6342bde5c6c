//! Dedupe ids (`Nats-Msg-Id`), deterministic outbound ids and KV keys, built
//! in one place next to the subjects. Never write one with `format!` in a
//! service.
//!
//! These strings are stored: in each stream's duplicate window, as KV keys,
//! as the outbound ids of messages already sent (the notifier's `sends`
//! records and Twilio's status callbacks name them). Changing one is a wire
//! change: a step republished after an upgrade would get a new id and be
//! sent twice. The tests below pin today's exact strings.
//!
//! Namespaces of derived outbound ids: the line's own messages are derived
//! from names that start with the contact id (`<contact>:safety`,
//! `<contact>:step:<n>:…`, `<contact>:emergency:…`); a counsellor's reply
//! from a name that starts with `reply:`. A contact id is a ULID (uppercase
//! Crockford base32), so no reply name equals a system name and no browser
//! can make its reply take the id of a safety message.

use time::OffsetDateTime;

use crate::events::DeliveryStatus;
use crate::ids::PartnerId;
use crate::ids::{
    ChatSessionId, ClientReplyId, ContactId, CounsellorId, MessageId, MessageSid, OutboundId,
    ReferralId,
};
use crate::referral::OutreachChange;

/// The referral a partner's `webhook-id` names: the same partner and id
/// always give the same referral, so a replay finds the original.
pub fn referral_id(partner: &PartnerId, webhook_id: &str) -> ReferralId {
    ReferralId::derived(&format!("referral:{partner}:{webhook_id}"))
}

/// The outreach contact of a referral: derived from the referral, so a
/// redelivered referral opens no second contact.
pub fn outreach_contact(referral: &ReferralId) -> ContactId {
    ContactId::derived(&format!("outreach:{referral}"))
}

/// The id that opens the person's thread for a referral (the thread
/// record's `opened_by`; no message of the person has it).
pub fn outreach_thread_opener(referral: &ReferralId) -> MessageId {
    MessageId::derived(&format!("outreach:{referral}"))
}

/// The id of a received message: time-ordered by `received_at` (ms), its
/// random bits from `name` (a Twilio SID, or a chat session and sequence
/// number), so a redelivered or resent message gets the same id.
pub fn received_message_id(name: &str, received_at: OffsetDateTime) -> MessageId {
    const MAX_MS: i128 = (1 << 48) - 1;
    let ms = (received_at.unix_timestamp_nanos() / 1_000_000).clamp(0, MAX_MS);
    // `ms` is clamped to 48 bits, so the conversion cannot fail.
    let ms = u64::try_from(ms).unwrap_or(0);
    MessageId::from_ulid(ulid::Ulid::from_parts(ms, name_bits(name)))
}

/// The 80 random bits of a received message's id named `name`.
fn name_bits(name: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The message id of web-chat input `seq` of `session` (intake's).
pub fn chat_message_id(
    session: &ChatSessionId,
    seq: u64,
    received_at: OffsetDateTime,
) -> MessageId {
    received_message_id(&msg_id::inbound_chat(session, seq), received_at)
}

/// Page sequence numbers a chat session can reach: more than a day of
/// messages at the highest rate a session may send.
pub const MAX_CHAT_SEQ: u64 = 50_000;

/// The page's sequence number of `session`'s message `id` (the inverse of
/// [`chat_message_id`]), trying 1 to [`MAX_CHAT_SEQ`]; `None` when `id` is
/// no message of that session.
pub fn chat_message_seq(session: &ChatSessionId, id: &MessageId) -> Option<u64> {
    let bits = id.ulid().random();
    (1..=MAX_CHAT_SEQ).find(|seq| name_bits(&msg_id::inbound_chat(session, *seq)) == bits)
}

/// `Nats-Msg-Id`s: the idempotency key of each publish.
pub mod msg_id {
    use super::*;

    /// An inbound SMS (INBOUND): Twilio's MessageSid, so Twilio's retries dedupe.
    pub fn inbound_sms(sid: &MessageSid) -> String {
        sid.as_str().to_owned()
    }

    /// A delivery-status callback (INBOUND): one per message and status.
    pub fn sms_status(sid: &MessageSid, status: DeliveryStatus) -> String {
        format!("status:{sid}:{}", status.as_str())
    }

    /// A web-chat input (INBOUND): the session and the browser's sequence
    /// number, so a resend after a reconnect is stored once.
    pub fn inbound_chat(session: &ChatSessionId, seq: u64) -> String {
        format!("chat:{session}:{seq}")
    }

    /// A partner referral (INBOUND).
    pub fn inbound_referral(referral: &ReferralId) -> String {
        format!("referral:{referral}")
    }

    /// The outreach contact of a referral (CONTACTS): one per referral.
    pub fn outreach_opened(referral: &ReferralId) -> String {
        format!("outreach:{referral}")
    }

    /// A change of an outreach contact (CONTACTS): `at` is the record's time
    /// of the change, so a retried command republishes under the same id.
    pub fn outreach_update(
        contact: &ContactId,
        change: &OutreachChange,
        at: OffsetDateTime,
    ) -> String {
        format!(
            "outreach:{contact}:{}:{}",
            change.name(),
            at.unix_timestamp_nanos()
        )
    }

    /// A referral's status at one version (OUTBOUND), also the callback's
    /// `webhook-id`, the same on every attempt.
    pub fn partner_task(referral: &ReferralId, version: u32) -> String {
        format!("task:{referral}:{version}")
    }

    /// A person's message threaded into a contact (CONTACTS).
    pub fn contact_message(message: &MessageId) -> String {
        format!("msg:{message}")
    }

    /// A person's message with its risk assessment (CONTACTS).
    pub fn message_triaged(message: &MessageId) -> String {
        format!("triaged:{message}")
    }

    /// A contact accepted by a counsellor (CONTACTS).
    pub fn contact_assigned(contact: &ContactId, counsellor: &CounsellorId) -> String {
        format!("assigned:{contact}:{counsellor}")
    }

    /// A private note: one per (contact, counsellor, browser id).
    pub fn contact_noted(
        contact: &ContactId,
        counsellor: &CounsellorId,
        client: &ClientReplyId,
    ) -> String {
        format!("noted:{contact}:{counsellor}:{client}")
    }

    /// A contact resolved at `at` (CONTACTS): a retried resolve republishes
    /// under the same id because the record keeps `at`.
    pub fn contact_resolved(contact: &ContactId, at: OffsetDateTime) -> String {
        format!("resolved:{contact}:{}", at.unix_timestamp_nanos())
    }

    /// An SMS to send (OUTBOUND): the notifier also sends each outbound id once.
    pub fn outbound_sms(outbound: &OutboundId) -> String {
        format!("out:{outbound}")
    }

    /// What became of an outbound SMS (OUTBOUND): one per message and status.
    pub fn outbound_status(outbound: &OutboundId, status: DeliveryStatus) -> String {
        format!("status:{outbound}:{}", status.as_str())
    }

    /// Escalation step `step` of a contact (CONTACTS, `ContactEscalated`),
    /// and the stem of the ids of the step's audit records.
    pub fn escalation_step(contact: &ContactId, step: u64) -> String {
        format!("{contact}:step:{step}")
    }

    /// The disclosure record (AUDIT) of a step's notice to a trusted contact.
    pub fn step_disclosure(contact: &ContactId, step: u64, recipient: &str) -> String {
        format!("{}:disclosure:{recipient}", escalation_step(contact, step))
    }

    /// A counsellor's notice to a trusted contact ("involve trusted
    /// contact") in the conversation they hold since `since`: once per
    /// trusted contact per conversation, so a retried request is the same.
    pub fn involve_trusted_contact(
        contact: &ContactId,
        since: OffsetDateTime,
        recipient: &str,
    ) -> String {
        format!(
            "{contact}:involve:{}:{recipient}",
            since.unix_timestamp_nanos()
        )
    }

    /// The disclosure record (AUDIT) of a counsellor's notice to a trusted contact.
    pub fn involve_disclosure(
        contact: &ContactId,
        since: OffsetDateTime,
        recipient: &str,
    ) -> String {
        format!(
            "{}:disclosure",
            involve_trusted_contact(contact, since, recipient)
        )
    }

    /// The refusal record (AUDIT) of a counsellor's notice to a trusted contact.
    pub fn involve_disclosure_refused(
        contact: &ContactId,
        since: OffsetDateTime,
        recipient: &str,
    ) -> String {
        format!(
            "{}:refused",
            involve_trusted_contact(contact, since, recipient)
        )
    }

    /// The refusal record (AUDIT) of a step's disclosure to a trusted contact.
    pub fn step_disclosure_refused(contact: &ContactId, step: u64, recipient: &str) -> String {
        format!("{}:refused:{recipient}", escalation_step(contact, step))
    }

    /// Who was shown which view of a contact (AUDIT) at `at`: a retried
    /// publish is the same record.
    pub fn contact_viewed(
        contact: &ContactId,
        counsellor: &CounsellorId,
        view: crate::events::ContactViewKind,
        at: OffsetDateTime,
    ) -> String {
        format!(
            "viewed:{contact}:{counsellor}:{}:{}",
            view.as_str(),
            at.unix_timestamp_nanos()
        )
    }

    /// A screener recorded in a contact (AUDIT) at `at`: a retried request
    /// finds the record's result, so the same id.
    pub fn screener(contact: &ContactId, at: OffsetDateTime) -> String {
        format!("{contact}:screener:{}", at.unix_timestamp_nanos())
    }

    /// A handover (AUDIT) of a contact: `what` is the action's kind, `at`
    /// the time the record carries, so a retried command has the same id.
    pub fn handover(contact: &ContactId, what: &str, at: OffsetDateTime) -> String {
        format!("{contact}:handover:{what}:{}", at.unix_timestamp_nanos())
    }

    /// The switchboard turned on or off at `at` (AUDIT).
    pub fn switchboard(on: bool, at: OffsetDateTime) -> String {
        format!("switchboard:{on}:{}", at.unix_timestamp_nanos())
    }

    /// A medical-emergency disclosure (AUDIT) made at `at` (whole seconds):
    /// a retried request carries the record's time, so the same id.
    pub fn emergency_disclosure(
        contact: &ContactId,
        partner: &PartnerId,
        at: OffsetDateTime,
    ) -> String {
        format!("{contact}:emergency:{partner}:{}", at.unix_timestamp())
    }

    /// A refused medical-emergency disclosure (AUDIT) considered at `at`.
    pub fn emergency_refused(
        contact: &ContactId,
        partner: &PartnerId,
        at: OffsetDateTime,
    ) -> String {
        format!("{}:refused", emergency_disclosure(contact, partner, at))
    }
}

/// Deterministic outbound ids: a side effect repeated after a crash carries
/// the same id, so it is stored and sent once.
pub mod outbound {
    use super::*;

    fn system(contact: &ContactId, name: &str) -> OutboundId {
        OutboundId::derived(&format!("{contact}:{name}"))
    }

    /// The safety message of an imminent contact: once per contact.
    pub fn safety_message(contact: &ContactId) -> OutboundId {
        system(contact, "safety")
    }

    /// The acknowledgement sent by escalation step `step`.
    pub fn acknowledgement(contact: &ContactId, step: u64) -> OutboundId {
        system(contact, &format!("step:{step}:ack"))
    }

    /// The line's introduction to a person it reaches out to: once per contact.
    pub fn outreach_intro(contact: &ContactId) -> OutboundId {
        system(contact, "outreach:intro")
    }

    /// The backup line's alert sent by escalation step `step`.
    pub fn backup_alert(contact: &ContactId, step: u64) -> OutboundId {
        system(contact, &format!("step:{step}:backup"))
    }

    /// The backup line's number shown to a person in the web chat when the
    /// ladder reaches it: once per contact.
    pub fn backup_line_note(contact: &ContactId) -> OutboundId {
        system(contact, "backup:person")
    }

    /// A note to a person in the web chat about their contact (`joined`,
    /// `closed`), once per contact and event time.
    pub fn chat_note(contact: &ContactId, note: &str, at: OffsetDateTime) -> OutboundId {
        system(
            contact,
            &format!("chat:{note}:{}", at.unix_timestamp_nanos()),
        )
    }

    /// The notice to trusted contact `recipient` sent by escalation step `step`.
    pub fn trusted_contact(contact: &ContactId, step: u64, recipient: &str) -> OutboundId {
        system(contact, &format!("step:{step}:trusted:{recipient}"))
    }

    /// The SMS of a counsellor's notice to a trusted contact in the
    /// conversation they hold since `since` (once per conversation).
    pub fn involved_trusted_contact(
        contact: &ContactId,
        since: OffsetDateTime,
        recipient: &str,
    ) -> OutboundId {
        system(
            contact,
            &format!(
                "involve:{}:trusted:{recipient}",
                since.unix_timestamp_nanos()
            ),
        )
    }

    /// The SMS telling a hospital of a medical-emergency disclosure made at `at`.
    pub fn emergency_notice(
        contact: &ContactId,
        partner: &PartnerId,
        at: OffsetDateTime,
    ) -> OutboundId {
        OutboundId::derived(&format!(
            "{}:sms",
            super::msg_id::emergency_disclosure(contact, partner, at)
        ))
    }

    /// A counsellor's reply: derived from the contact, the counsellor of the
    /// authenticated session and the browser's id, so the browser's id only
    /// dedupes that counsellor's resends in that contact. In the `reply:`
    /// namespace, apart from every system message.
    pub fn counsellor_reply(
        contact: &ContactId,
        counsellor: &CounsellorId,
        client: &ClientReplyId,
    ) -> OutboundId {
        OutboundId::derived(&format!("reply:{contact}:{counsellor}:{client}"))
    }
}

/// KV keys.
pub mod key {
    use super::*;

    /// `contacts` bucket: the contact's state record.
    pub fn contact(contact: &ContactId) -> String {
        contact.to_string()
    }

    /// The line's switchboard record ([`crate::handover::Switchboard`]) in
    /// the `contacts` bucket: not a contact id, so a watch of contacts
    /// tells it apart.
    pub fn switchboard() -> String {
        "line.switchboard".to_owned()
    }

    /// `presence` bucket: a counsellor's presence.
    pub fn presence(counsellor: &CounsellorId) -> String {
        counsellor.as_str().to_owned()
    }

    /// `sends` bucket: the notifier's send record of one outbound id.
    pub fn send(outbound: &OutboundId) -> String {
        outbound.to_string()
    }

    /// `replies` bucket: the dashboard's record of one counsellor reply.
    pub fn reply(outbound: &OutboundId) -> String {
        outbound.to_string()
    }

    /// `threads` bucket: the open thread of an SMS sender, by the sender's
    /// pseudonym (never the number itself).
    pub fn sms_thread(pseudonym: &str) -> String {
        format!("sms.{pseudonym}")
    }

    /// `threads` bucket: the open thread of a web-chat session, by a
    /// pseudonym of the session id.
    pub fn chat_thread(pseudonym: &str) -> String {
        format!("chat.{pseudonym}")
    }

    /// `chat_sessions` bucket: a session, by the keyed hash of its token
    /// (hex), never the token.
    pub fn chat_session(token_hash_hex: &str) -> String {
        format!("t.{token_hash_hex}")
    }

    /// `chat_sessions` bucket: how far the counsellor has read a session's
    /// messages ([`crate::chat::ReadMark`]), by session id (the read request
    /// names no token).
    pub fn chat_read_mark(session: &ChatSessionId) -> String {
        format!("r.{session}")
    }

    /// `referrals` bucket: the closed-loop record of one referral.
    pub fn referral(referral: &ReferralId) -> String {
        referral.to_string()
    }

    /// `sends` bucket (notifier-owned): the highest version of a referral's
    /// Task its partner's callback has taken, so a redelivered or older
    /// version is never posted again.
    pub fn partner_callback(referral: &ReferralId) -> String {
        format!("callback.{referral}")
    }

    /// `directory` bucket: the directory in force.
    pub const DIRECTORY_CURRENT: &str = "current";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> ContactId {
        "01JD5W3QK3N7Y8Z9ABCDEFGHJK".parse().unwrap()
    }

    fn ana() -> CounsellorId {
        CounsellorId::parse("ana").unwrap()
    }

    const OUT: &str = "01JD5W3QK3N7Y8Z9ABCDEFGHJM";

    #[test]
    fn dedupe_ids_are_todays_strings() {
        let c = contact();
        let out: OutboundId = OUT.parse().unwrap();
        let msg: MessageId = "01JD5W3QK3N7Y8Z9ABCDEFGHJN".parse().unwrap();
        let sid = MessageSid::parse("SM0123456789abcdef0123456789abcdef").unwrap();
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let hospital = PartnerId::parse("county-hospital").unwrap();
        assert_eq!(
            msg_id::inbound_sms(&sid),
            "SM0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            msg_id::sms_status(&sid, DeliveryStatus::Delivered),
            "status:SM0123456789abcdef0123456789abcdef:delivered"
        );
        assert_eq!(
            msg_id::contact_message(&msg),
            "msg:01JD5W3QK3N7Y8Z9ABCDEFGHJN"
        );
        assert_eq!(
            msg_id::message_triaged(&msg),
            "triaged:01JD5W3QK3N7Y8Z9ABCDEFGHJN"
        );
        assert_eq!(
            msg_id::contact_assigned(&c, &ana()),
            "assigned:01JD5W3QK3N7Y8Z9ABCDEFGHJK:ana"
        );
        assert_eq!(
            msg_id::contact_resolved(&c, at),
            "resolved:01JD5W3QK3N7Y8Z9ABCDEFGHJK:1700000000123456789"
        );
        assert_eq!(msg_id::outbound_sms(&out), format!("out:{OUT}"));
        assert_eq!(
            msg_id::outbound_status(&out, DeliveryStatus::Sent),
            format!("status:{OUT}:sent")
        );
        assert_eq!(
            msg_id::escalation_step(&c, 3),
            "01JD5W3QK3N7Y8Z9ABCDEFGHJK:step:3"
        );
        assert_eq!(
            msg_id::step_disclosure(&c, 3, "maria-sister"),
            "01JD5W3QK3N7Y8Z9ABCDEFGHJK:step:3:disclosure:maria-sister"
        );
        assert_eq!(
            msg_id::step_disclosure_refused(&c, 3, "james-partner"),
            "01JD5W3QK3N7Y8Z9ABCDEFGHJK:step:3:refused:james-partner"
        );
        assert_eq!(
            msg_id::emergency_disclosure(&c, &hospital, at),
            "01JD5W3QK3N7Y8Z9ABCDEFGHJK:emergency:county-hospital:1700000000"
        );
        assert_eq!(
            msg_id::emergency_refused(&c, &hospital, at),
            "01JD5W3QK3N7Y8Z9ABCDEFGHJK:emergency:county-hospital:1700000000:refused"
        );
    }

    #[test]
    fn an_outreach_contact_is_derived_from_its_referral() {
        let referral: ReferralId = "01JD5W3QK3N7Y8Z9ABCDEFGHJP".parse().unwrap();
        let other: ReferralId = "01JD5W3QK3N7Y8Z9ABCDEFGHJQ".parse().unwrap();
        assert_eq!(
            outreach_contact(&referral),
            ContactId::derived("outreach:01JD5W3QK3N7Y8Z9ABCDEFGHJP")
        );
        assert_ne!(outreach_contact(&referral), outreach_contact(&other));
        assert_eq!(
            outreach_thread_opener(&referral),
            MessageId::derived("outreach:01JD5W3QK3N7Y8Z9ABCDEFGHJP")
        );
    }

    #[test]
    fn system_outbound_ids_are_derived_from_todays_names() {
        let c = contact();
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let hospital = PartnerId::parse("county-hospital").unwrap();
        let derived =
            |name: &str| OutboundId::derived(&format!("01JD5W3QK3N7Y8Z9ABCDEFGHJK:{name}"));
        assert_eq!(outbound::safety_message(&c), derived("safety"));
        assert_eq!(outbound::acknowledgement(&c, 2), derived("step:2:ack"));
        assert_eq!(outbound::backup_alert(&c, 7), derived("step:7:backup"));
        assert_eq!(outbound::outreach_intro(&c), derived("outreach:intro"));
        assert_eq!(
            outbound::trusted_contact(&c, 5, "maria-sister"),
            derived("step:5:trusted:maria-sister")
        );
        assert_eq!(
            outbound::emergency_notice(&c, &hospital, at),
            derived("emergency:county-hospital:1700000000:sms")
        );
        // And the derivation itself is stable (ids already in `sends` records).
        assert_eq!(
            outbound::safety_message(&c),
            OutboundId::derived("01JD5W3QK3N7Y8Z9ABCDEFGHJK:safety")
        );
        assert_eq!(
            OutboundId::derived("01JD5W3QK3N7Y8Z9ABCDEFGHJK:safety").to_string(),
            outbound::safety_message(&c).to_string()
        );
    }

    #[test]
    fn a_reply_id_depends_on_contact_counsellor_and_browser_id_and_never_is_a_system_id() {
        let c = contact();
        let other = ContactId::new();
        let ben = CounsellorId::parse("ben").unwrap();
        let x = ClientReplyId::new();
        let id = outbound::counsellor_reply(&c, &ana(), &x);
        assert_eq!(id, outbound::counsellor_reply(&c, &ana(), &x), "stable");
        assert_ne!(id, outbound::counsellor_reply(&other, &ana(), &x));
        assert_ne!(id, outbound::counsellor_reply(&c, &ben, &x));
        assert_ne!(
            id,
            outbound::counsellor_reply(&c, &ana(), &ClientReplyId::new())
        );
        assert_ne!(
            id.to_string(),
            x.to_string(),
            "never the browser's id itself"
        );
        // A browser that sends a system message's id gets another id.
        for system in [
            outbound::safety_message(&c),
            outbound::acknowledgement(&c, 1),
            outbound::trusted_contact(&c, 5, "maria-sister"),
        ] {
            let spoof = ClientReplyId::from_ulid(system.ulid());
            assert_ne!(outbound::counsellor_reply(&c, &ana(), &spoof), system);
        }
    }

    proptest::proptest! {
        /// Whatever id a browser sends, its reply never takes the id of one
        /// of the line's own messages for that contact.
        #[test]
        fn no_browser_id_yields_a_system_id(client in proptest::prelude::any::<u128>(), step in 1u64..64) {
            let c = contact();
            let reply = outbound::counsellor_reply(&c, &ana(), &ClientReplyId::from_ulid(ulid::Ulid(client)));
            proptest::prop_assert_ne!(reply, outbound::safety_message(&c));
            proptest::prop_assert_ne!(reply, outbound::outreach_intro(&c));
            proptest::prop_assert_ne!(reply, outbound::acknowledgement(&c, step));
            proptest::prop_assert_ne!(reply, outbound::backup_alert(&c, step));
            proptest::prop_assert_ne!(reply, outbound::trusted_contact(&c, step, "maria-sister"));
        }
    }

    #[test]
    fn kv_keys_are_todays_strings() {
        let c = contact();
        let out: OutboundId = OUT.parse().unwrap();
        assert_eq!(key::contact(&c), "01JD5W3QK3N7Y8Z9ABCDEFGHJK");
        assert_eq!(key::presence(&ana()), "ana");
        assert_eq!(key::send(&out), OUT);
        assert_eq!(key::reply(&out), OUT);
        assert_eq!(key::sms_thread("00ff"), "sms.00ff");
        assert_eq!(key::DIRECTORY_CURRENT, "current");
    }

    #[test]
    fn referral_ids_are_todays_strings() {
        let clinic = PartnerId::parse("eastside-clinic").unwrap();
        let referral = referral_id(&clinic, "msg_2Lh9TqWb");
        // The same partner and webhook-id always name the same referral;
        // another partner's identical id is another referral.
        assert_eq!(referral, referral_id(&clinic, "msg_2Lh9TqWb"));
        let other = PartnerId::parse("county-hospital").unwrap();
        assert_ne!(referral, referral_id(&other, "msg_2Lh9TqWb"));
        assert_eq!(
            referral,
            ReferralId::derived("referral:eastside-clinic:msg_2Lh9TqWb")
        );
        let r = referral.to_string();
        assert_eq!(msg_id::inbound_referral(&referral), format!("referral:{r}"));
        assert_eq!(msg_id::outreach_opened(&referral), format!("outreach:{r}"));
        assert_eq!(msg_id::partner_task(&referral, 3), format!("task:{r}:3"));
        let c = contact();
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(
            msg_id::outreach_update(&c, &OutreachChange::Queued, at),
            "outreach:01JD5W3QK3N7Y8Z9ABCDEFGHJK:queued:1700000000123456789"
        );
        assert_eq!(key::referral(&referral), r);
        assert_eq!(key::partner_callback(&referral), format!("callback.{r}"));
    }
}

#[cfg(test)]
mod chat_message_ids {
    use super::*;

    #[test]
    fn a_chat_message_id_gives_back_its_sequence_number_and_only_in_its_session() {
        let session = ChatSessionId::new();
        let at = OffsetDateTime::now_utc();
        for seq in [1, 2, 17, 400] {
            let id = chat_message_id(&session, seq, at);
            assert_eq!(chat_message_seq(&session, &id), Some(seq));
            assert_eq!(chat_message_seq(&ChatSessionId::new(), &id), None);
        }
        assert_eq!(chat_message_seq(&session, &MessageId::new()), None);
        assert_eq!(
            received_message_id("chat:x:1", at),
            received_message_id("chat:x:1", at),
            "stable"
        );
    }
}
