//! Requests the dashboard makes of the router (core NATS request/reply on
//! [`crate::subjects::router_command`], queue group `router`). The router
//! answers only after the contact record is durably changed.

use serde::{Deserialize, Serialize};

use crate::envelope::Event;
use crate::handover::{TransferMode, TransferTarget};
use crate::ids::{ContactId, CounsellorId, PartnerId};
use crate::referral::OutreachOutcome;
use crate::screener::ScreenerAnswers;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RouterCommand {
    Accept {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    Decline {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    Resolve {
        contact_id: ContactId,
        counsellor: CounsellorId,
        /// A [`crate::dashboard::Disposition`] code.
        disposition: Option<String>,
        #[serde(default)]
        note: Option<String>,
    },
    /// 42 CFR §2.51: the counsellor holding the contact discloses to medical
    /// personnel (a hospital partner) without consent, for a bona fide
    /// medical emergency. `nature` is the nature of the emergency, recorded
    /// in the audit record (never logged).
    MedicalEmergency {
        contact_id: ContactId,
        counsellor: CounsellorId,
        partner: PartnerId,
        nature: String,
    },
    /// The counsellor holding an outreach contact records how it ended
    /// (issue 14). Only the holder may; the same outcome again is a retry.
    OutreachOutcome {
        contact_id: ContactId,
        counsellor: CounsellorId,
        outcome: OutreachOutcome,
    },
    /// "Help the next person": assign this counsellor the most urgent
    /// waiting contact they are eligible for (risk, then wait), if they are
    /// available and under capacity. Refused `queue-empty` when there is
    /// none; the conversation is pushed as on an accept.
    TakeNext { counsellor: CounsellorId },
    /// A C-SSRS screener run by the counsellor the contact is assigned to:
    /// sets the contact's assessed level ([`crate::screener`]).
    Assess {
        contact_id: ContactId,
        counsellor: CounsellorId,
        answers: ScreenerAnswers,
    },
    /// Hands a conversation on (ADR 0019): only its holder; `note` (at most
    /// [`crate::handover::MAX_HANDOVER_NOTE_CHARS`]) is for the receivers.
    /// A receiver takes a warm transfer with `Accept` and refuses it with
    /// `Decline`, like an offer.
    Transfer {
        contact_id: ContactId,
        counsellor: CounsellorId,
        target: TransferTarget,
        mode: TransferMode,
        #[serde(default)]
        note: Option<String>,
    },
    /// The sender takes a warm transfer back before anyone accepted it.
    CancelTransfer {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    /// Supervisors: hold every waiting contact (and every new one) for the
    /// supervisors (`on`), or release them all to the floor.
    Switchboard { counsellor: CounsellorId, on: bool },
    /// Supervisors: give a waiting, offered or assigned contact to `to`
    /// (offered to them alone; its holder, if any, is told).
    Reassign {
        contact_id: ContactId,
        counsellor: CounsellorId,
        to: CounsellorId,
    },
    /// "I'm reaching out" to a person who left before anyone answered: the
    /// first claim wins and the contact becomes the claimer's conversation.
    Claim {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    /// Tells the person's trusted contact `trusted` (a directory id), only
    /// when a consent covers it now (42 CFR Part 2), audited before the SMS;
    /// only the holder. Refused `no-consent` otherwise.
    InvolveTrustedContact {
        contact_id: ContactId,
        counsellor: CounsellorId,
        trusted: String,
    },
}

/// Longest description of the nature of a medical emergency, in characters.
impl RouterCommand {
    /// Bounded name (metric labels, spans).
    pub fn kind(&self) -> &'static str {
        match self {
            RouterCommand::Accept { .. } => "accept",
            RouterCommand::Decline { .. } => "decline",
            RouterCommand::Resolve { .. } => "resolve",
            RouterCommand::MedicalEmergency { .. } => "medical_emergency",
            RouterCommand::OutreachOutcome { .. } => "outreach_outcome",
            RouterCommand::TakeNext { .. } => "take_next",
            RouterCommand::Assess { .. } => "assess",
            RouterCommand::Transfer { .. } => "transfer",
            RouterCommand::CancelTransfer { .. } => "cancel_transfer",
            RouterCommand::Switchboard { .. } => "switchboard",
            RouterCommand::Reassign { .. } => "reassign",
            RouterCommand::Claim { .. } => "claim",
            RouterCommand::InvolveTrustedContact { .. } => "involve_trusted_contact",
        }
    }

    /// The contact it acts on (none for "take the next").
    pub fn contact(&self) -> Option<ContactId> {
        match self {
            RouterCommand::Accept { contact_id, .. }
            | RouterCommand::Decline { contact_id, .. }
            | RouterCommand::Resolve { contact_id, .. }
            | RouterCommand::MedicalEmergency { contact_id, .. }
            | RouterCommand::OutreachOutcome { contact_id, .. }
            | RouterCommand::Assess { contact_id, .. }
            | RouterCommand::Transfer { contact_id, .. }
            | RouterCommand::CancelTransfer { contact_id, .. }
            | RouterCommand::Reassign { contact_id, .. }
            | RouterCommand::Claim { contact_id, .. }
            | RouterCommand::InvolveTrustedContact { contact_id, .. } => Some(*contact_id),
            RouterCommand::TakeNext { .. } | RouterCommand::Switchboard { .. } => None,
        }
    }

    /// The counsellor (or supervisor) who asked.
    pub fn counsellor(&self) -> &CounsellorId {
        match self {
            RouterCommand::Accept { counsellor, .. }
            | RouterCommand::Decline { counsellor, .. }
            | RouterCommand::Resolve { counsellor, .. }
            | RouterCommand::MedicalEmergency { counsellor, .. }
            | RouterCommand::OutreachOutcome { counsellor, .. }
            | RouterCommand::TakeNext { counsellor }
            | RouterCommand::Assess { counsellor, .. }
            | RouterCommand::Transfer { counsellor, .. }
            | RouterCommand::CancelTransfer { counsellor, .. }
            | RouterCommand::Switchboard { counsellor, .. }
            | RouterCommand::Reassign { counsellor, .. }
            | RouterCommand::Claim { counsellor, .. }
            | RouterCommand::InvolveTrustedContact { counsellor, .. } => counsellor,
        }
    }
}

pub const MAX_EMERGENCY_NATURE_CHARS: usize = 500;

/// A description of the nature of a medical emergency is 1 to
/// [`MAX_EMERGENCY_NATURE_CHARS`] characters, not only blanks.
pub fn valid_emergency_nature(nature: &str) -> bool {
    !nature.trim().is_empty() && nature.chars().count() <= MAX_EMERGENCY_NATURE_CHARS
}

impl Event for RouterCommand {
    const TYPE: &'static str = "router.command";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RouterReply {
    Done,
    /// Refused with a reason a counsellor can read ("already taken").
    Refused {
        reason: String,
    },
}

impl Event for RouterReply {
    const TYPE: &'static str = "router.reply";
}

/// The line's status as the router sees it (core NATS,
/// [`crate::subjects::line_status`]): counts and a duration only, nothing
/// about any person. Published when it changes and at a steady interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineStatus {
    /// Contacts waiting for a counsellor (queued or offered), per risk level.
    pub waiting: Vec<(crate::RiskLevel, u32)>,
    /// Counsellors available now (status and fresh heartbeat).
    pub counsellors_available: u32,
    /// Free seats among them (capacity minus open conversations).
    pub free_seats: u32,
    /// Median wait until an accept over recent contacts, if known.
    #[serde(default)]
    pub typical_wait_secs: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
}

impl LineStatus {
    /// Everyone waiting, whatever their risk.
    pub fn waiting_total(&self) -> u32 {
        self.waiting.iter().map(|(_, n)| n).sum()
    }

    /// The same figures (the time aside): nothing worth publishing changed.
    pub fn same_figures(&self, other: &LineStatus) -> bool {
        self.waiting == other.waiting
            && self.counsellors_available == other.counsellors_available
            && self.free_seats == other.free_seats
            && self.typical_wait_secs == other.typical_wait_secs
    }
}

impl Event for LineStatus {
    const TYPE: &'static str = "line.status";
}
