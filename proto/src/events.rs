//! Events on the bus, grouped by stream.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::address::Address;
use crate::envelope::Event;
use crate::ids::{
    ChatSessionId, ContactId, CounsellorId, MessageId, MessageSid, OutboundId, PartnerId,
};
use crate::risk::Assessment;

/// Twilio's limit for one SMS body (concatenated segments), and so for our
/// own replies. A longer *inbound* body (WhatsApp allows 4,096) is taken and
/// flagged [`InboundFlag::LongBody`], never refused.
pub const MAX_SMS_BODY_CHARS: usize = 1600;

// ---------------------------------------------------------------- INBOUND

/// A message a person sent to one of the line's numbers (SMS, or another
/// channel Twilio carries such as WhatsApp), as Twilio posted it.
/// Published by the gateway with `Nats-Msg-Id` = the MessageSid.
///
/// A correctly signed request is a person's message and is always taken:
/// anything odd about it is recorded in `flags`, never a reason to refuse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundSms {
    pub message_sid: MessageSid,
    /// Empty when Twilio did not send one (flagged).
    pub account_sid: String,
    /// The person: a phone number or a channel address (`whatsapp:+1…`).
    pub from: Address,
    /// The line address the person wrote to: the door, and where replies come from.
    pub to: Address,
    pub body: String,
    pub num_media: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// What was unusual about the request, if anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<InboundFlag>,
}

/// Something unusual about an inbound message that was taken anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundFlag {
    /// Body longer than [`MAX_SMS_BODY_CHARS`].
    LongBody,
    /// No `Body` parameter (taken as empty).
    MissingBody,
    /// No `AccountSid` parameter.
    MissingAccountSid,
    /// No `From` parameter.
    MissingSender,
    /// `From` is a channel address (`whatsapp:`, `messenger:`, …).
    ChannelSender,
    /// `From` is an alphanumeric sender id: replies cannot reach it.
    AlphanumericSender,
    /// `From` is a short code.
    ShortCodeSender,
    /// `From` is none of the forms above.
    UnrecognisedSender,
    /// No `To` parameter: the door is unknown and replies have no line.
    MissingLine,
    /// `To` is neither a phone number nor a channel address.
    UnrecognisedLine,
    /// `NumMedia` is not a number (taken as 0).
    InvalidNumMedia,
    /// The message carries media that the line does not show.
    Media,
    /// A flag this reader does not know (written by a newer gateway).
    #[serde(other)]
    Unknown,
}

impl InboundFlag {
    /// Bounded value for the `kind` label of `nwd_gateway_inbound_oddities_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundFlag::LongBody => "long_body",
            InboundFlag::MissingBody => "missing_body",
            InboundFlag::MissingAccountSid => "missing_account_sid",
            InboundFlag::MissingSender => "missing_sender",
            InboundFlag::ChannelSender => "channel_sender",
            InboundFlag::AlphanumericSender => "alphanumeric_sender",
            InboundFlag::ShortCodeSender => "short_code_sender",
            InboundFlag::UnrecognisedSender => "unrecognised_sender",
            InboundFlag::MissingLine => "missing_line",
            InboundFlag::UnrecognisedLine => "unrecognised_line",
            InboundFlag::InvalidNumMedia => "invalid_num_media",
            InboundFlag::Media => "media",
            InboundFlag::Unknown => "unknown",
        }
    }
}

impl Event for InboundSms {
    const TYPE: &'static str = "inbound.sms";
}

/// Delivery status of an outbound message, as Twilio reports it in a status callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Accepted,
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Read,
    Canceled,
    #[serde(other)]
    Unknown,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .ok()
            .filter(|s| *s != DeliveryStatus::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Accepted => "accepted",
            DeliveryStatus::Scheduled => "scheduled",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Canceled => "canceled",
            DeliveryStatus::Unknown => "unknown",
        }
    }

    /// A final state: no later callback will change it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Delivered
                | DeliveryStatus::Undelivered
                | DeliveryStatus::Failed
                | DeliveryStatus::Read
                | DeliveryStatus::Canceled
        )
    }
}

/// A Twilio status callback for one of our outbound messages.
/// Published by the gateway with `Nats-Msg-Id` = `status:<MessageSid>:<MessageStatus>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsStatus {
    pub message_sid: MessageSid,
    pub status: DeliveryStatus,
    pub error_code: Option<u32>,
    /// Our own id of the message, carried in the StatusCallback URL.
    pub outbound_id: Option<OutboundId>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl Event for SmsStatus {
    const TYPE: &'static str = "inbound.sms_status";
}

/// Longest chat message the chat service takes (characters). A message
/// this long goes to triage whole, never truncated.
pub const MAX_CHAT_MESSAGE_CHARS: usize = 4000;

/// Something a person did in a web-chat session, published by the chat
/// service on `nwd.v1.inbound.chat.<session>` only after it validated the
/// session token, with `Nats-Msg-Id` = `chat:<session>:<seq>`
/// ([`crate::wire::msg_id::inbound_chat`]): a message the browser resends
/// after a reconnect is stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundChat {
    pub session: ChatSessionId,
    /// The browser's sequence number of this input in the session (1, 2, …).
    pub seq: u64,
    /// The partner whose page embeds the chat (the door); `None` on the
    /// line's own chat page.
    pub door: Option<PartnerId>,
    pub input: ChatInput,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl Event for InboundChat {
    const TYPE: &'static str = "inbound.chat";
}

/// What the person did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatInput {
    /// A message, with the answer to the optional pre-chat question on the
    /// session's first message.
    Message {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        safe_now: Option<SafeNow>,
    },
    /// The person pressed quick exit: the page is gone, the contact goes on
    /// (the counsellor sees that the person left quickly).
    QuickExit,
    /// The answer to the post-chat question "Was this chat helpful?", kept
    /// in INBOUND for the line's quality figures (never a contact message).
    Feedback { helpful: bool },
}

/// The answer to the pre-chat question "Are you safe right now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SafeNow {
    Yes,
    No,
    NotSure,
}

impl SafeNow {
    /// The answer as triage and the counsellor read it, in front of the
    /// first message. "No" uses words the rulebook scores as a person in
    /// danger now.
    pub fn as_words(self) -> &'static str {
        match self {
            SafeNow::Yes => "[Before the chat: Are you safe right now? Yes]",
            SafeNow::No => "[Before the chat: Are you safe right now? No, I am not safe right now]",
            SafeNow::NotSure => "[Before the chat: Are you safe right now? Not sure]",
        }
    }
}

/// What the counsellor reads when a person pressed quick exit.
pub const QUICK_EXIT_NOTE: &str = "[The person left quickly (quick exit). The chat page is closed on their side; they may come back in a new chat.]";

// ---------------------------------------------------------------- CONTACTS

/// How we talk to the person of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// A message through Twilio (SMS, WhatsApp, …): the person's address,
    /// and the line address they wrote to (replies go out from that same
    /// line, on the person's channel, never from a counsellor's own number).
    Sms { patient: Address, line: Address },
    /// The line's web chat: the person's session, the partner whose page
    /// embeds it (the door), and the line address any SMS about the contact
    /// goes from (to a trusted contact, the backup line, a hospital).
    /// Messages to the person go to `nwd.v1.outbound.chat.<session>.<contact>`.
    Chat {
        session: ChatSessionId,
        door: Option<PartnerId>,
        line: Address,
    },
}

impl Channel {
    /// What a counsellor sees instead of the address ("WhatsApp ··67").
    pub fn label(&self) -> String {
        match self {
            Channel::Sms { patient, .. } => patient.label(),
            Channel::Chat { door, .. } => match door {
                Some(door) => format!("Chat · {door}"),
                None => "Chat".to_owned(),
            },
        }
    }

    /// Bounded value for metric labels (`sms`, `whatsapp`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Sms { patient, .. } => patient.channel_kind(),
            Channel::Chat { .. } => "chat",
        }
    }

    /// Where a reply to the person goes, and the line address it goes from:
    /// the person's own channel (`whatsapp:<line>` to `whatsapp:+1…`). A
    /// chat session has no address: `chat:<session>` (send with
    /// [`Channel::to_person`], which routes it to the chat service).
    pub fn reply_route(&self) -> (Address, Address) {
        match self {
            Channel::Sms { patient, line } => (patient.clone(), line.on_channel_of(patient)),
            Channel::Chat { session, line, .. } => {
                (Address::parse(&format!("chat:{session}")), line.clone())
            }
        }
    }

    /// The message `body` of ours to the person of contact `contact_id`, on
    /// their channel: an SMS for the notifier, or a chat message for the
    /// chat service. The only place a reply's route depends on the channel.
    pub fn to_person(
        &self,
        contact_id: ContactId,
        outbound_id: OutboundId,
        body: String,
        author: Author,
        created_at: OffsetDateTime,
    ) -> ToPerson {
        match self {
            Channel::Sms { .. } => {
                let (to, from) = self.reply_route();
                ToPerson::Sms(OutboundSms {
                    outbound_id,
                    contact_id,
                    to,
                    from,
                    body,
                    author,
                    created_at,
                })
            }
            Channel::Chat { session, .. } => ToPerson::Chat(OutboundChat {
                outbound_id,
                contact_id,
                session: *session,
                body,
                author,
                created_at,
                note: None,
            }),
        }
    }

    /// The chat session of a chat contact.
    pub fn chat_session(&self) -> Option<ChatSessionId> {
        match self {
            Channel::Chat { session, .. } => Some(*session),
            Channel::Sms { .. } => None,
        }
    }

    /// The line address a message to `to` goes from: a plain SMS from the
    /// line's number to a trusted contact or partner, the person's channel
    /// for the person.
    pub fn line_towards(&self, to: &Address) -> Address {
        match self {
            Channel::Sms { line, .. } | Channel::Chat { line, .. } => line.on_channel_of(to),
        }
    }
}

/// One message of a person threaded into a contact by intake.
/// Subject `nwd.v1.contact.message.<contact_id>`, `Nats-Msg-Id` = `msg:<message_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactMessage {
    pub contact_id: ContactId,
    pub message_id: MessageId,
    pub channel: Channel,
    /// The partner institution whose number or endpoint the contact came
    /// through; `None` when the line number belongs to no partner (the line's
    /// own number). A contact is never refused for coming through a "wrong" door.
    pub door: Option<PartnerId>,
    /// Directory id of the person when the number is known.
    pub patient: Option<String>,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// True for the message that opened the contact.
    pub opens_contact: bool,
    /// The sender's previous contact, on the message that opens a new one
    /// (intake knows it from the sender's closed thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ContactId>,
    /// The person left the web chat by its quick exit (the body is
    /// [`QUICK_EXIT_NOTE`]): a waiting contact goes to the follow-ups.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quick_exit: bool,
}

/// A Twilio opt-out or opt-in keyword (Advanced Opt-Out defaults): the
/// whole message, trimmed, in any case. The message is still the person's
/// message, taken and routed like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOut {
    Stop,
    Start,
}

/// Twilio's default keywords: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END,
/// QUIT (opt out); START, YES, UNSTOP (opt back in).
pub fn opt_out_keyword(body: &str) -> Option<OptOut> {
    let word = body
        .trim()
        .trim_end_matches(['.', '!'])
        .to_ascii_uppercase();
    match word.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" => Some(OptOut::Stop),
        "START" | "YES" | "UNSTOP" => Some(OptOut::Start),
        _ => None,
    }
}

impl Event for ContactMessage {
    const TYPE: &'static str = "contact.message";
}

/// A contact message with its risk assessment.
/// Subject `nwd.v1.contact.triaged.<contact_id>`, `Nats-Msg-Id` = `triaged:<message_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageTriaged {
    pub message: ContactMessage,
    pub assessment: Assessment,
}

impl Event for MessageTriaged {
    const TYPE: &'static str = "contact.triaged";
}

/// A counsellor accepted a contact. Subject `nwd.v1.contact.assigned.<contact_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactAssigned {
    pub contact_id: ContactId,
    pub counsellor: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The contact's channel, so the chat service can tell a person in the
    /// web chat that a counsellor joined (absent in older events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
}

impl Event for ContactAssigned {
    const TYPE: &'static str = "contact.assigned";
}

/// A counsellor resolved a contact. Subject `nwd.v1.contact.resolved.<contact_id>`.
/// Intake closes the thread, so the person's next message opens a new contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactResolved {
    pub contact_id: ContactId,
    /// So intake can close the sender's thread.
    pub channel: Channel,
    pub counsellor: CounsellorId,
    /// A [`crate::dashboard::Disposition`] code (free text in events
    /// written before dispositions were a fixed list).
    pub disposition: Option<String>,
    /// The counsellor's short closing note (for the line's records only;
    /// never logged, never sent to the person). At most
    /// [`crate::dashboard::MAX_NOTE_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A counsellor's private note on a contact, on
/// [`crate::subjects::contact_noted`], `Nats-Msg-Id`
/// [`crate::wire::msg_id::contact_noted`]. For the line's staff only: shown
/// in the conversation's history, never sent to the person, never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactNoted {
    pub contact_id: ContactId,
    /// Derived from the contact, the counsellor and the browser's id (a
    /// resend is the same note).
    pub note_id: String,
    pub counsellor: CounsellorId,
    /// At most [`crate::dashboard::MAX_NOTE_CHARS`] characters.
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for ContactNoted {
    const TYPE: &'static str = "contact.noted";
}

impl Event for ContactResolved {
    const TYPE: &'static str = "contact.resolved";
}

/// A step of a contact's escalation ladder fired.
/// Subject `nwd.v1.contact.escalated.<contact_id>`, `Nats-Msg-Id` = `<contact_id>:step:<n>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactEscalated {
    pub contact_id: ContactId,
    pub risk: crate::risk::RiskLevel,
    pub step: crate::ladder::StepRecord,
    /// When the next step fires, if the contact is still waiting.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_due: Option<OffsetDateTime>,
}

impl Event for ContactEscalated {
    const TYPE: &'static str = "contact.escalated";
}

// ---------------------------------------------------------------- AUDIT

/// Which view of a contact a member of staff was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactViewKind {
    Offer,
    Conversation,
    Monitoring,
    Profile,
}

impl ContactViewKind {
    /// Bounded code (ids, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ContactViewKind::Offer => "offer",
            ContactViewKind::Conversation => "conversation",
            ContactViewKind::Monitoring => "monitoring",
            ContactViewKind::Profile => "profile",
        }
    }
}

/// A member of staff was shown a contact (AUDIT, written by the
/// dashboard): who, which view, when; never its text. Once per counsellor,
/// contact and view while they are connected, not per re-render.
/// Subject `nwd.v1.audit.viewed.<contact_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactViewed {
    pub contact_id: ContactId,
    pub counsellor: CounsellorId,
    pub view: ContactViewKind,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for ContactViewed {
    const TYPE: &'static str = "audit.viewed";
}

/// The legal basis of a disclosure (42 CFR Part 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum LegalBasis {
    /// §2.31 written consent: its fields as they were when relied on.
    Consent {
        purpose: String,
        disclose: String,
        #[serde(with = "time::serde::rfc3339")]
        signed_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339::option")]
        expires_at: Option<OffsetDateTime>,
    },
    /// §2.51 medical emergency: only to medical personnel; records who
    /// received it, their affiliation, who disclosed, when, and the nature of
    /// the emergency.
    MedicalEmergency {
        recipient_affiliation: String,
        nature_of_emergency: String,
    },
}

/// Who received (or would have received) a disclosure. Ids, never names or numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Recipient {
    TrustedContact(String),
    Partner(crate::ids::PartnerId),
    MedicalPersonnel(String),
}

/// An immutable disclosure record. Subject `nwd.v1.audit.disclosure.<contact_id>`,
/// `Nats-Msg-Id` = `<contact_id>:step:<n>:disclosure:<recipient>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disclosure {
    pub contact_id: ContactId,
    /// The patient (directory id) the information is about.
    pub patient: String,
    pub recipient: Recipient,
    /// What was disclosed, in words (never the message text).
    pub what: String,
    pub purpose: String,
    pub basis: LegalBasis,
    /// The service and step that disclosed.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for Disclosure {
    const TYPE: &'static str = "audit.disclosure";
}

/// A disclosure *not* made for lack of a valid consent, recorded so the
/// trail shows the line considered and refused it.
/// Subject `nwd.v1.audit.disclosure_refused.<contact_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisclosureRefused {
    pub contact_id: ContactId,
    pub patient: String,
    pub recipient: Recipient,
    /// `no_consent`, `revoked`, `expired`, `purpose` (the consent does not cover it).
    pub reason: String,
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for DisclosureRefused {
    const TYPE: &'static str = "audit.disclosure_refused";
}

/// A C-SSRS screener a counsellor ran in a contact, as AUDIT keeps it: who,
/// when, the level before and after, and the answers (yes/no only; no
/// text). Subject `nwd.v1.audit.screener.<contact_id>`, `Nats-Msg-Id`
/// `wire::msg_id::screener`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreenerRecorded {
    pub contact_id: ContactId,
    pub counsellor: CounsellorId,
    pub before: crate::risk::RiskLevel,
    pub after: crate::risk::RiskLevel,
    pub answers: crate::screener::ScreenerAnswers,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for ScreenerRecorded {
    const TYPE: &'static str = "audit.screener";
}

/// What a handover did (never the handover note's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HandoverAction {
    /// A transfer started, offered to `to`.
    Transfer {
        target: crate::handover::TransferTarget,
        mode: crate::handover::TransferMode,
        to: Vec<CounsellorId>,
        /// Whether the sender left a note (its text is not audited here).
        #[serde(default)]
        with_note: bool,
    },
    /// The sender took a warm transfer back.
    CancelTransfer,
    /// A supervisor gave the contact to `to` (cold); `from` held it.
    Reassign {
        from: Option<CounsellorId>,
        to: CounsellorId,
    },
    /// "I'm reaching out" to a person who left.
    Claim,
    /// The switchboard turned on (hold) or off (release).
    Switchboard { on: bool },
}

impl HandoverAction {
    /// Bounded name (metric labels, message ids).
    pub fn kind(&self) -> &'static str {
        match self {
            HandoverAction::Transfer { .. } => "transfer",
            HandoverAction::CancelTransfer => "cancel_transfer",
            HandoverAction::Reassign { .. } => "reassign",
            HandoverAction::Claim => "claim",
            HandoverAction::Switchboard { .. } => "switchboard",
        }
    }
}

/// A handover recorded before it takes effect (AUDIT, ADR 0019): subject
/// `nwd.v1.audit.handover.<contact_id>` (or `nwd.v1.audit.switchboard`,
/// without a contact), `Nats-Msg-Id` `wire::msg_id::handover` /
/// `wire::msg_id::switchboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoverRecorded {
    #[serde(default)]
    pub contact_id: Option<ContactId>,
    /// Who did it.
    pub counsellor: CounsellorId,
    pub action: HandoverAction,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for HandoverRecorded {
    const TYPE: &'static str = "audit.handover";
}

// ---------------------------------------------------------------- OUTBOUND

/// Who wrote an outbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Author {
    Counsellor(CounsellorId),
    /// An automatic message of the line (acknowledgement, safety message).
    System,
}

/// An SMS to send. Subject `nwd.v1.outbound.sms.<contact_id>`,
/// `Nats-Msg-Id` = `out:<outbound_id>`; the notifier sends each `outbound_id` at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundSms {
    pub outbound_id: OutboundId,
    pub contact_id: ContactId,
    /// A phone number or channel address (`whatsapp:+1…`).
    pub to: Address,
    /// Always one of the line's numbers, on `to`'s channel.
    pub from: Address,
    pub body: String,
    pub author: Author,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Event for OutboundSms {
    const TYPE: &'static str = "outbound.sms";
}

/// A message of ours to a person in the web chat. Subject
/// `nwd.v1.outbound.chat.<session>.<contact_id>`, `Nats-Msg-Id` =
/// `out:<outbound_id>` (as an SMS: the ids are the same derived ones). The
/// chat service delivers it to the session's socket, numbered by its OUTBOUND
/// sequence, and replays it to a resuming page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundChat {
    pub outbound_id: OutboundId,
    pub contact_id: ContactId,
    pub session: ChatSessionId,
    pub body: String,
    pub author: Author,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A note about the contact rather than a message (the page shows it
    /// in the person's language; `body` is the English words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<ChatNote>,
}

/// A note to a person in the web chat about their contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatNote {
    /// A counsellor accepted the contact.
    Joined,
    /// The counsellor closed the conversation.
    Closed,
}

impl ChatNote {
    /// Bounded name (outbound ids, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ChatNote::Joined => "joined",
            ChatNote::Closed => "closed",
        }
    }

    /// The English words (the page translates by the note).
    pub fn words(self) -> &'static str {
        match self {
            ChatNote::Joined => "A counsellor has joined the chat.",
            ChatNote::Closed => {
                "The counsellor has closed this conversation. If you write again, a counsellor will answer."
            }
        }
    }
}

impl Event for OutboundChat {
    const TYPE: &'static str = "outbound.chat";
}

/// A message of ours to the person of a contact, on the contact's channel
/// ([`Channel::to_person`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ToPerson {
    Sms(OutboundSms),
    Chat(OutboundChat),
}

impl ToPerson {
    /// The OUTBOUND subject it is published on.
    pub fn subject(&self) -> String {
        match self {
            ToPerson::Sms(m) => crate::subjects::outbound_sms(&m.contact_id),
            ToPerson::Chat(m) => crate::subjects::outbound_chat(&m.session, &m.contact_id),
        }
    }

    /// Its `Nats-Msg-Id`: `out:<outbound_id>` on either channel.
    pub fn msg_id(&self) -> String {
        crate::wire::msg_id::outbound_sms(&self.outbound_id())
    }

    pub fn outbound_id(&self) -> OutboundId {
        match self {
            ToPerson::Sms(m) => m.outbound_id,
            ToPerson::Chat(m) => m.outbound_id,
        }
    }

    /// The enveloped event.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            ToPerson::Sms(m) => crate::Envelope::new(m.clone()).to_bytes(),
            ToPerson::Chat(m) => crate::Envelope::new(m.clone()).to_bytes(),
        }
    }

    /// The same message as an SMS record (a chat message with the
    /// `chat:<session>` address), for views that show either alike.
    pub fn as_sms(&self) -> OutboundSms {
        match self {
            ToPerson::Sms(m) => m.clone(),
            ToPerson::Chat(m) => m.as_sms(),
        }
    }
}

impl OutboundChat {
    /// This chat message as an SMS-shaped record (`to` = `chat:<session>`,
    /// no `from`), for transcript views.
    pub fn as_sms(&self) -> OutboundSms {
        OutboundSms {
            outbound_id: self.outbound_id,
            contact_id: self.contact_id,
            to: Address::parse(&format!("chat:{}", self.session)),
            from: Address::parse(""),
            body: self.body.clone(),
            author: self.author.clone(),
            created_at: self.created_at,
        }
    }
}

/// What became of an outbound message. Subject `nwd.v1.outbound.status.<contact_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundStatus {
    pub outbound_id: OutboundId,
    pub contact_id: ContactId,
    pub status: DeliveryStatus,
    /// The provider's id (Twilio `SM…`), once known.
    pub provider_sid: Option<String>,
    /// Provider error code (e.g. Twilio 21211, 21610) when it failed.
    pub error_code: Option<u32>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Event for OutboundStatus {
    const TYPE: &'static str = "outbound.status";
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chat_contact_is_answered_in_its_chat_session_and_sms_elsewhere_from_the_line() {
        let session = ChatSessionId::new();
        let contact = ContactId::new();
        let line = Address::parse("+15005550110");
        let chat = Channel::Chat {
            session,
            door: Some(PartnerId::parse("eastside-clinic").unwrap()),
            line: line.clone(),
        };
        assert_eq!(chat.label(), "Chat · eastside-clinic");
        assert_eq!(chat.kind(), "chat");
        assert_eq!(chat.chat_session(), Some(session));
        let out = OutboundId::new();
        let msg = chat.to_person(
            contact,
            out,
            "hello".into(),
            Author::System,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(
            msg.subject(),
            crate::subjects::outbound_chat(&session, &contact)
        );
        assert_eq!(msg.msg_id(), crate::wire::msg_id::outbound_sms(&out));
        assert!(matches!(&msg, ToPerson::Chat(c) if c.session == session && c.body == "hello"));
        // A trusted contact or the backup line still gets an SMS from the line.
        let backup = Address::parse("+15005550199");
        assert_eq!(chat.line_towards(&backup), line);
        let no_door = Channel::Chat {
            session,
            door: None,
            line,
        };
        assert_eq!(no_door.label(), "Chat");
        let json = serde_json::to_string(&chat).unwrap();
        assert_eq!(serde_json::from_str::<Channel>(&json).unwrap(), chat);

        let sms = Channel::Sms {
            patient: Address::parse("+15005550142"),
            line: Address::parse("+15005550100"),
        };
        let msg = sms.to_person(
            contact,
            out,
            "hi".into(),
            Author::System,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(msg.subject(), crate::subjects::outbound_sms(&contact));
        assert!(matches!(msg, ToPerson::Sms(s) if s.to.as_str() == "+15005550142"));
        assert_eq!(sms.chat_session(), None);
    }

    use super::*;

    #[test]
    fn delivery_status_parses_twilio_values() {
        assert_eq!(
            DeliveryStatus::parse("delivered"),
            Some(DeliveryStatus::Delivered)
        );
        assert_eq!(
            DeliveryStatus::parse("undelivered"),
            Some(DeliveryStatus::Undelivered)
        );
        assert_eq!(DeliveryStatus::parse("bogus"), None);
        assert!(DeliveryStatus::Failed.is_final());
        assert!(!DeliveryStatus::Sent.is_final());
    }

    #[test]
    fn channel_label_hides_the_number() {
        let ch = Channel::Sms {
            patient: Address::parse("+15005550142"),
            line: Address::parse("+15005550100"),
        };
        assert_eq!(ch.label(), "SMS ··42");
        assert_eq!(ch.kind(), "sms");
        let json = serde_json::to_string(&ch).unwrap();
        assert_eq!(serde_json::from_str::<Channel>(&json).unwrap(), ch);
        let wa = Channel::Sms {
            patient: Address::parse("whatsapp:+15005550167"),
            line: Address::parse("+15005550100"),
        };
        assert_eq!(wa.label(), "WhatsApp ··67");
        assert_eq!(wa.kind(), "whatsapp");
    }

    #[test]
    fn channel_of_a_plain_number_reads_as_before() {
        // Written by a version whose addresses were all E.164 numbers.
        let old = r#"{"kind":"sms","patient":"+15005550142","line":"+15005550100"}"#;
        let ch: Channel = serde_json::from_str(old).unwrap();
        assert_eq!(ch.kind(), "sms");
        assert_eq!(serde_json::to_string(&ch).unwrap(), old);
    }

    #[test]
    fn replies_go_out_on_the_persons_channel() {
        let wa = Channel::Sms {
            patient: Address::parse("whatsapp:+15005550167"),
            line: Address::parse("whatsapp:+15005550100"),
        };
        let (to, from) = wa.reply_route();
        assert_eq!(to.as_str(), "whatsapp:+15005550167");
        assert_eq!(from.as_str(), "whatsapp:+15005550100");
        let trusted = Address::parse("+15005550150");
        assert_eq!(wa.line_towards(&trusted).as_str(), "+15005550100");
    }

    #[test]
    fn inbound_without_flags_reads_and_unknown_flags_are_kept_as_unknown() {
        let json = r#"{"message_sid":"SM0123456789abcdef0123456789abcdef","account_sid":"AC1",
            "from":"+15005550142","to":"+15005550100","body":"hi","num_media":0,
            "received_at":"2026-11-24T10:00:00Z"}"#;
        let sms: InboundSms = serde_json::from_str(json).unwrap();
        assert!(sms.flags.is_empty());
        assert!(!serde_json::to_string(&sms).unwrap().contains("flags"));
        let newer = json.replace(
            "\"num_media\":0",
            "\"num_media\":0,\"flags\":[\"long_body\",\"from_the_future\"]",
        );
        let sms: InboundSms = serde_json::from_str(&newer).unwrap();
        assert_eq!(sms.flags, [InboundFlag::LongBody, InboundFlag::Unknown]);
    }
}
