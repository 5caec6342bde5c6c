//! The dashboard websocket protocol, as typed messages. JSON text frames,
//! tagged by `type`. The router pushes [`ServerMsg`]s for a counsellor on
//! [`crate::subjects::dashboard_push`]; the dashboard forwards them to that
//! counsellor's sockets.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::Event;
use crate::events::DeliveryStatus;
use crate::ids::{ClientReplyId, ContactId, CounsellorId, OutboundId, PartnerId};
use crate::risk::{Language, Reason, RiskLevel};

/// A counsellor's availability, chosen on the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Available,
    Busy,
    Away,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Busy => "busy",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }
}

/// Presence record in the `presence` bucket, key = counsellor id. The
/// dashboard refreshes `heartbeat_at` while the counsellor's socket is open;
/// a stale heartbeat counts as offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub counsellor: CounsellorId,
    pub status: Presence,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
}

/// Browser → dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    SetPresence {
        status: Presence,
    },
    Accept {
        contact_id: ContactId,
    },
    Decline {
        contact_id: ContactId,
    },
    /// `client_id` is made by the browser so that a resend after a dropped
    /// socket is recognised rather than sent twice. The dashboard derives the
    /// reply's [`OutboundId`] from it with the contact and the counsellor
    /// (`wire::outbound::counsellor_reply`): the same `client_id` in another
    /// contact, or from another counsellor, is another reply. The same
    /// `client_id` with another body is refused (`reply-id-reused`).
    /// (`outbound_id` is its name in pages served before this change.)
    Reply {
        contact_id: ContactId,
        #[serde(alias = "outbound_id")]
        client_id: ClientReplyId,
        body: String,
    },
    /// Closes the conversation with a disposition (required by the page;
    /// `None` only from pages served before dispositions) and an optional
    /// short note (at most [`MAX_NOTE_CHARS`]).
    Resolve {
        contact_id: ContactId,
        disposition: Option<Disposition>,
        #[serde(default)]
        note: Option<String>,
    },
    /// "Help the next person": take the most urgent waiting contact this
    /// counsellor is eligible for.
    TakeNext,
    /// The C-SSRS screener's answers for a conversation of this counsellor.
    Assess {
        contact_id: ContactId,
        answers: crate::screener::ScreenerAnswers,
    },
    /// Disclose to medical personnel without consent for a medical
    /// emergency (42 CFR §2.51): `partner` is a hospital from `Hello`,
    /// `nature` the nature of the emergency (1 to 500 characters).
    MedicalEmergency {
        contact_id: ContactId,
        partner: PartnerId,
        nature: String,
    },
    /// Records how an outreach ended (the counsellor is the session's, never
    /// one the browser names; only the holder may).
    OutreachOutcome {
        contact_id: ContactId,
        outcome: crate::referral::OutreachOutcome,
    },
    Ping,
    /// The counsellor is writing in `contact_id` (sent at most every few
    /// seconds while they type): a person in the web chat sees "counsellor
    /// is typing…". Nothing is sent for other channels.
    Typing {
        contact_id: ContactId,
    },
    /// The counsellor has `contact_id`'s conversation on screen (page
    /// visible) down to the person's message `upto` (its
    /// [`MessageView::id`]): a person in the web chat sees their messages up
    /// to that one "Seen". Only from the counsellor holding the contact;
    /// nothing for other channels.
    Read {
        contact_id: ContactId,
        upto: String,
    },
    /// Hand the conversation on (ADR 0019).
    Transfer {
        contact_id: ContactId,
        target: crate::handover::TransferTarget,
        mode: crate::handover::TransferMode,
        #[serde(default)]
        note: Option<String>,
    },
    CancelTransfer {
        contact_id: ContactId,
    },
    /// Supervisors: hold every waiting contact for the supervisors, or release them.
    Switchboard {
        on: bool,
    },
    /// Supervisors: give a contact to `to`.
    Reassign {
        contact_id: ContactId,
        to: CounsellorId,
    },
    /// "I'm reaching out" to a person in the follow-up list.
    Claim {
        contact_id: ContactId,
    },
    /// Tell the person's trusted contact (only with a consent that covers it).
    InvolveTrustedContact {
        contact_id: ContactId,
        trusted: String,
    },
    /// A private note on a conversation the counsellor holds (or, for a
    /// supervisor, monitors); `client_id` makes a resend the same note.
    Note {
        contact_id: ContactId,
        client_id: ClientReplyId,
        text: String,
    },
    /// The person's profile for a conversation they hold or monitor.
    Profile {
        contact_id: ContactId,
    },
    /// Supervisors: follow a conversation silently (history, then every
    /// new line); audited.
    Monitor {
        contact_id: ContactId,
    },
    StopMonitoring {
        contact_id: ContactId,
    },
    /// After a reconnect: send what was pushed after `last_seq` (the
    /// highest [`SequencedMsg::seq`] the page saw), or a full resync when
    /// it is no longer kept.
    Resume {
        last_seq: u64,
    },
}

/// How a conversation ended, chosen when resolving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    DeEscalated,
    SafetyPlanMade,
    ReferredToTreatment,
    EmergencyServicesDispatched,
    TrustedContactInvolved,
    SupportGiven,
    NoResponse,
    Other,
}

impl Disposition {
    pub const ALL: [Disposition; 8] = [
        Disposition::DeEscalated,
        Disposition::SafetyPlanMade,
        Disposition::ReferredToTreatment,
        Disposition::EmergencyServicesDispatched,
        Disposition::TrustedContactInvolved,
        Disposition::SupportGiven,
        Disposition::NoResponse,
        Disposition::Other,
    ];

    /// The code in events and metric labels (bounded).
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::DeEscalated => "de-escalated",
            Disposition::SafetyPlanMade => "safety-plan-made",
            Disposition::ReferredToTreatment => "referred-to-treatment",
            Disposition::EmergencyServicesDispatched => "emergency-services-dispatched",
            Disposition::TrustedContactInvolved => "trusted-contact-involved",
            Disposition::SupportGiven => "support-given",
            Disposition::NoResponse => "no-response",
            Disposition::Other => "other",
        }
    }
}

/// Longest closing note, in characters.
pub const MAX_NOTE_CHARS: usize = 2_000;

/// One waiting contact in the queue every eligible counsellor sees: no
/// message text, no address, no name; what a counsellor needs to choose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub contact_id: ContactId,
    pub risk: RiskLevel,
    pub reasons: Vec<ReasonView>,
    pub lang: Language,
    /// "SMS ··67", "Chat".
    pub channel: String,
    /// The door institution's name, or the line's.
    pub door: String,
    /// The door partner's id (the dashboard shows a partner's staff only
    /// their own door's contacts).
    #[serde(default)]
    pub door_id: Option<PartnerId>,
    #[serde(with = "time::serde::rfc3339")]
    pub waiting_since: OffsetDateTime,
    #[serde(default)]
    pub escalation: Option<Box<EscalationView>>,
    /// How many counsellors it is offered to now.
    pub offered: u32,
    /// An outreach (the line reaches out to a referred person).
    #[serde(default)]
    pub outreach: bool,
    /// Its ladder has reached "any on call" (or the imminent broadcast):
    /// every counsellor may take it now, whatever their door.
    #[serde(default)]
    pub open_to_all: bool,
    /// Held by the switchboard: offered to supervisors only.
    #[serde(default)]
    pub held: bool,
}

/// A person who left before anyone answered, in the follow-up list (no
/// text, no address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpEntry {
    pub contact_id: ContactId,
    pub risk: RiskLevel,
    pub lang: Language,
    pub channel: String,
    pub door: String,
    #[serde(default)]
    pub door_id: Option<PartnerId>,
    pub left: crate::handover::Left,
}

/// One member of staff as supervisors see the floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaffView {
    pub id: CounsellorId,
    pub name: String,
    pub role: crate::directory::Role,
    pub presence: Presence,
    /// Conversations held now.
    pub load: u32,
    pub capacity: u32,
    pub on_call: bool,
}

/// A conversation in progress as supervisors see it (no text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub contact_id: ContactId,
    pub counsellor: CounsellorId,
    pub risk: RiskLevel,
    pub channel: String,
    pub door: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The counsellor's connection dropped (requeued after a grace).
    #[serde(default)]
    pub orphaned: bool,
    /// A transfer of it is under way.
    #[serde(default)]
    pub transferring: bool,
}

/// The floor for supervisors, from the router: core NATS on
/// [`crate::subjects::dashboard_floor`], on every change (coalesced) and at
/// a steady interval, like [`QueueSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorSnapshot {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub staff: Vec<StaffView>,
    pub conversations: Vec<ConversationSummary>,
    /// The switchboard, when a supervisor has used it.
    #[serde(default)]
    pub switchboard: Option<crate::handover::Switchboard>,
}

impl Event for FloorSnapshot {
    const TYPE: &'static str = "dashboard.floor";
}

/// A transfer as its receivers see it on their offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferView {
    pub from: CounsellorId,
    pub from_name: String,
    pub mode: crate::handover::TransferMode,
    #[serde(default)]
    pub note: Option<String>,
}

/// What became of a transfer, for its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TransferStatus {
    /// Offered to these (names).
    Offered {
        to: Vec<String>,
    },
    /// Every receiver declined: the conversation is still yours.
    Declined,
    Cancelled,
    /// Taken by `by` (a name): the conversation has left you.
    Accepted {
        by: String,
    },
}

/// A trusted contact as the counsellor sees them: whether a consent covers
/// telling them now, and if not, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustedContactView {
    pub id: String,
    pub name: String,
    pub relationship: String,
    pub consent_covers: bool,
    /// Why not, in plain words ("no consent on file", "consent expired on …").
    #[serde(default)]
    pub why_not: Option<String>,
}

/// The person as the directory knows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientView {
    pub name: String,
    /// The programme (institution) treating them.
    pub programme: String,
    #[serde(default)]
    pub coordinator: Option<String>,
    pub trusted_contacts: Vec<TrustedContactView>,
}

/// An earlier contact of the same sender, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlierContact {
    pub contact_id: ContactId,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    pub risk: RiskLevel,
    pub channel: String,
    #[serde(default)]
    pub disposition: Option<String>,
    /// The level a screener gave, if one was run.
    #[serde(default)]
    pub screened: Option<RiskLevel>,
}

/// The person's profile beside a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileView {
    /// `None` for a person the directory does not know.
    #[serde(default)]
    pub patient: Option<PatientView>,
    /// Most recent first.
    pub earlier: Vec<EarlierContact>,
    /// They wrote STOP (Twilio opt-out): SMS will not reach them.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub opted_out_at: Option<OffsetDateTime>,
    /// The channel of this contact ("SMS ··67", "Chat · Eastside").
    pub channel: String,
}

/// A private note as shown in a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteView {
    pub id: String,
    pub by: CounsellorId,
    pub by_name: String,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A frame to the browser: a [`ServerMsg`] numbered per counsellor, so a
/// page that reconnects can [`ClientMsg::Resume`] from the last it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedMsg {
    pub seq: u64,
    #[serde(flatten)]
    pub msg: ServerMsg,
}

/// The whole queue, most urgent first (risk, then wait), as the router
/// knows it. Core NATS on [`crate::subjects::dashboard_queue`]: published
/// on every change (coalesced) and at a steady interval, so a dashboard
/// that starts or reconnects has it within seconds. `seq` rises with each
/// snapshot of one router process; `at` orders snapshots across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub entries: Vec<QueueEntry>,
    /// People who left before anyone answered, not yet claimed.
    #[serde(default)]
    pub follow_ups: Vec<FollowUpEntry>,
}

impl Event for QueueSnapshot {
    const TYPE: &'static str = "dashboard.queue";
}

/// A member of staff a counsellor can choose on screen (a transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffOption {
    pub id: CounsellorId,
    pub name: String,
    pub role: crate::directory::Role,
}

/// A partner a counsellor can choose on screen (ids and institution names only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerOption {
    pub id: PartnerId,
    pub name: String,
}

/// Who wrote a message in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Person,
    Counsellor,
    System,
}

/// One line of a conversation as a counsellor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id (person) or outbound id (counsellor, system).
    pub id: String,
    pub speaker: Speaker,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub status: Option<DeliveryStatus>,
}

/// A reason shown on screen: the rule id and its readable label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonView {
    pub rule: String,
    pub label: String,
    pub level: RiskLevel,
}

impl From<&Reason> for ReasonView {
    fn from(r: &Reason) -> Self {
        Self {
            rule: r.rule.clone(),
            label: r.label.clone(),
            level: r.level,
        }
    }
}

/// A contact as shown in an offer or a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactView {
    pub contact_id: ContactId,
    pub risk: RiskLevel,
    pub reasons: Vec<ReasonView>,
    pub lang: Language,
    /// "SMS ··67": never the number.
    pub channel: String,
    /// Name of the door institution, or the line itself.
    pub door: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub waiting_since: Option<OffsetDateTime>,
    /// Escalation progress while waiting.
    #[serde(default)]
    pub escalation: Option<Box<EscalationView>>,
    pub messages: Vec<MessageView>,
    /// Set when the line reaches out to a person a partner referred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outreach: Option<Box<OutreachView>>,
    /// The last screener run in this contact (its level is `risk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screener: Option<Box<crate::screener::ScreenerResult>>,
    /// On a transfer's offer: who hands it on, how, and their note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Box<TransferView>>,
    /// The person left before anyone answered (follow-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Box<crate::handover::Left>>,
    /// Held by the switchboard.
    #[serde(default)]
    pub held: bool,
    /// They wrote STOP: SMS will not reach them.
    #[serde(default)]
    pub opted_out: bool,
    /// Private notes, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<NoteView>,
}

/// An outreach contact as the counsellor sees it: who referred the person
/// and why. For the counsellor only; never sent to the person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutreachView {
    /// The referring institution's name.
    pub referred_by: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The person's name as the partner gave it.
    #[serde(default)]
    pub patient_name: Option<String>,
    pub priority: crate::referral::Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub offer_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// Nobody had accepted it by its due time.
    pub late: bool,
    #[serde(default)]
    pub outcome: Option<crate::referral::OutreachOutcome>,
    /// The person had already written to the line (no introduction sent).
    #[serde(default)]
    pub joined: bool,
}

/// Why supervisors are alerted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertReason {
    /// An imminent contact was broadcast to everyone on call.
    Imminent,
    /// A counsellor's connection dropped during a conversation; it goes
    /// back to the queue at `requeue_at` unless they return.
    CounsellorDisconnected {
        counsellor: CounsellorId,
        #[serde(with = "time::serde::rfc3339")]
        requeue_at: OffsetDateTime,
    },
}

/// Escalation progress of a waiting contact, for the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationView {
    /// Steps fired so far.
    pub steps: u64,
    /// Readable name of the last rung fired ("Imminent broadcast" for the broadcast).
    pub level: Option<String>,
    /// Readable name of the rung that fires next.
    pub next: Option<String>,
    /// When it fires.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due: Option<OffsetDateTime>,
}

impl EscalationView {
    pub fn of(e: &crate::ladder::Escalation) -> Self {
        Self {
            steps: e.steps,
            level: e.trail.last().map(|s| {
                s.rung
                    .map_or("Imminent broadcast", crate::ladder::Rung::label)
                    .to_owned()
            }),
            next: e.next().map(|r| r.label().to_owned()),
            due: e.due,
        }
    }
}

/// Why an offer disappeared from a screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawReason {
    Taken,
    Declined,
    Expired,
    Resolved,
}

/// Dashboard → browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Hello {
        counsellor: CounsellorId,
        name: String,
        supervisor: bool,
        presence: Presence,
        /// Medical personnel for a medical-emergency disclosure: the
        /// directory's hospital partners.
        #[serde(default)]
        hospitals: Vec<PartnerOption>,
        /// How many conversations they may hold at once.
        #[serde(default)]
        capacity: u32,
        /// When their current on-call shift ends, if on a shift now.
        #[serde(default, with = "time::serde::rfc3339::option")]
        shift_ends_at: Option<OffsetDateTime>,
        /// Canned safety-planning snippets in the languages they speak.
        #[serde(default)]
        snippets: Vec<crate::directory::Snippet>,
        /// Staff a conversation can be transferred to (ids, names, roles).
        #[serde(default)]
        colleagues: Vec<StaffOption>,
        /// Institutions whose on-call staff can take a transfer.
        #[serde(default)]
        partners: Vec<PartnerOption>,
    },
    /// The waiting contacts this counsellor may see (all of them for the
    /// line's staff and supervisors; a partner's staff see their door's),
    /// most urgent first. Sent on connect and on every change.
    Queue {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        entries: Vec<QueueEntry>,
        /// People who left before anyone answered, not yet claimed.
        #[serde(default)]
        follow_ups: Vec<FollowUpEntry>,
    },
    /// Supervisors: everyone on shift, conversations in progress, the switchboard.
    Floor {
        floor: Box<FloorSnapshot>,
    },
    /// To a transfer's sender: what became of it.
    TransferUpdate {
        contact_id: ContactId,
        status: TransferStatus,
    },
    /// The conversation has left this counsellor (a transfer accepted, a
    /// reassignment): close its tab; `to` names who has it now.
    HandedOver {
        contact_id: ContactId,
        to: String,
    },
    Profile {
        contact_id: ContactId,
        profile: Box<ProfileView>,
    },
    /// A private note was added (every tab of the holder, and monitors).
    Noted {
        contact_id: ContactId,
        note: NoteView,
    },
    /// Supervisors: a conversation they monitor, with its history; new
    /// lines follow as `Message`.
    Monitoring {
        contact: Box<ContactView>,
    },
    /// The page's `Resume` could not be served from what is kept: what
    /// follows (Hello, offers, conversations, queue) replaces its state.
    Resync,
    /// A screener was recorded in a conversation: the contact's level is
    /// now `result.level` (every tab of the counsellor).
    Assessed {
        contact_id: ContactId,
        result: Box<crate::screener::ScreenerResult>,
    },
    Presence {
        status: Presence,
    },
    /// A contact offered to this counsellor (the same contact may be offered to others).
    Offer {
        contact: ContactView,
    },
    OfferWithdrawn {
        contact_id: ContactId,
        reason: WithdrawReason,
    },
    /// A conversation now with this counsellor (on accept, and on reconnect).
    Conversation {
        contact: ContactView,
    },
    /// A new line in an offered or assigned contact.
    Message {
        contact_id: ContactId,
        risk: RiskLevel,
        reasons: Vec<ReasonView>,
        message: MessageView,
    },
    DeliveryStatus {
        contact_id: ContactId,
        outbound_id: OutboundId,
        status: DeliveryStatus,
    },
    /// To the socket that sent a [`ClientMsg::Reply`]: what became of it.
    /// `message.id` is the reply's outbound id (which later
    /// [`ServerMsg::DeliveryStatus`] pushes name); `message.status` its
    /// delivery status as known now. `resent` says the reply had already
    /// been accepted: nothing new was sent, and the status is the original's.
    ReplyOutcome {
        contact_id: ContactId,
        client_id: ClientReplyId,
        message: MessageView,
        resent: bool,
    },
    Resolved {
        contact_id: ContactId,
    },
    /// A medical-emergency disclosure was recorded and the hospital notified:
    /// the counsellor calls them now.
    MedicalEmergencyRecorded {
        contact_id: ContactId,
        partner: PartnerId,
    },
    /// An outreach outcome was recorded (every tab of the counsellor).
    OutreachOutcomeRecorded {
        contact_id: ContactId,
        outcome: crate::referral::OutreachOutcome,
    },
    /// Supervisors: something needs their attention.
    Alert {
        reason: AlertReason,
        contact: Box<ContactView>,
    },
    /// Supervisors: something about the line itself, not one contact (a
    /// message a service could not process). Never personal data.
    OpsAlert {
        alert: crate::deadletter::OpsAlert,
    },
    /// Where a waiting contact is on its escalation ladder.
    Escalation {
        contact_id: ContactId,
        progress: Box<EscalationView>,
    },
    Error {
        code: String,
        message: String,
    },
    Pong,
}

/// A [`ServerMsg`] for one counsellor, pushed over core NATS by the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardPush {
    pub counsellor: CounsellorId,
    pub msg: ServerMsg,
}

impl Event for DashboardPush {
    const TYPE: &'static str = "dashboard.push";
}

/// The dashboard's record of one counsellor reply, in the `replies` bucket
/// (key = the reply's derived outbound id, `wire::key::reply`). It keeps a
/// hash of the body, never the body: enough to tell a resend from another
/// message under the same browser id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRecord {
    pub contact_id: ContactId,
    pub counsellor: CounsellorId,
    pub client_id: ClientReplyId,
    /// SHA-256 of the body, lowercase hex.
    pub body_sha256: String,
    /// The reply's time as first accepted (a resend republishes it unchanged).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Set once the reply is on the OUTBOUND stream.
    #[serde(default)]
    pub published: bool,
}

impl ReplyRecord {
    /// SHA-256 of a reply body, lowercase hex.
    pub fn hash(body: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_tagged_json() {
        let m: ClientMsg =
            serde_json::from_str(r#"{"type":"set_presence","status":"available"}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::SetPresence {
                status: Presence::Available
            }
        );
        let id = ContactId::new();
        let json = serde_json::to_string(&ClientMsg::Accept { contact_id: id }).unwrap();
        assert_eq!(json, format!(r#"{{"type":"accept","contact_id":"{id}"}}"#));
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn a_reply_names_the_browsers_id_client_id_and_still_reads_outbound_id() {
        let contact = ContactId::new();
        let client = ClientReplyId::new();
        let msg = ClientMsg::Reply {
            contact_id: contact,
            client_id: client,
            body: "hi".into(),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"type":"reply","contact_id":"{contact}","client_id":"{client}","body":"hi"}}"#
            )
        );
        let old = format!(
            r#"{{"type":"reply","contact_id":"{contact}","outbound_id":"{client}","body":"hi"}}"#
        );
        assert_eq!(serde_json::from_str::<ClientMsg>(&old).unwrap(), msg);
    }

    #[test]
    fn reply_records_keep_a_hash_of_the_body_not_the_body() {
        let h = ReplyRecord::hash("I'm here");
        assert_eq!(h.len(), 64);
        assert_eq!(h, ReplyRecord::hash("I'm here"));
        assert_ne!(h, ReplyRecord::hash("I'm here."));
    }
}
