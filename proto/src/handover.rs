//! Handing a contact on, and the floor's own controls (ADR 0019):
//! **transfers** (warm: the sender stays until the receiver accepts; cold:
//! the sender lets go at once), the supervisors' **switchboard** (hold every
//! waiting contact in a supervisor-only queue during a surge, then release
//! them), and **follow-ups** of people who left before anyone answered (a
//! claim, so two counsellors never reach out to the same person).
//!
//! The transitions are pure, on [`ContactRecord`]; the router applies them
//! by compare-and-swap like every other transition, and decides *who* a
//! target names (the directory and the floor are its).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::contact::{ContactRecord, ContactState, TransitionError};
use crate::ids::{CounsellorId, PartnerId};
use crate::ladder::Escalation;

/// Whom a transfer goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TransferTarget {
    /// One named counsellor or supervisor.
    Counsellor { id: CounsellorId },
    /// The supervisors on call who are available.
    Supervisor,
    /// Another institution's on-call counsellors who are available (a
    /// partner's own on-call staff: no wrong doors, the other way round).
    Partner { partner: PartnerId },
}

/// Warm: the conversation stays with the sender until a receiver accepts
/// (the person is never without a counsellor). Cold: the sender lets go at
/// once; the contact is offered to the receivers and, if nobody accepts in
/// time, climbs the ladder from the bottom like any waiting contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    Warm,
    Cold,
}

impl TransferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMode::Warm => "warm",
            TransferMode::Cold => "cold",
        }
    }
}

/// Longest handover note, in characters (what the receiver should know).
pub const MAX_HANDOVER_NOTE_CHARS: usize = 1_000;

/// A transfer under way, on the contact record. Cleared when a receiver
/// accepts, when every receiver declined (warm), or when the sender
/// cancels it (warm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub from: CounsellorId,
    pub target: TransferTarget,
    pub mode: TransferMode,
    /// Who it is offered to now.
    pub to: Vec<CounsellorId>,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The sender's handover note (for the receivers only).
    #[serde(default)]
    pub note: Option<String>,
}

/// What became of a warm transfer when a receiver declined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    /// Others still hold the offer.
    Pending,
    /// Nobody is left: the conversation stays with the sender, who is told.
    Back(CounsellorId),
}

/// What a reassignment ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reassigned {
    /// Who held the conversation (they are told it left them).
    pub holder: Option<CounsellorId>,
    /// Who held an offer of it (withdrawn).
    pub withdrawn: Vec<CounsellorId>,
}

/// A contact held by the switchboard: offered to supervisors only until it
/// is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub by: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The line-wide switchboard, kept in the `contacts` bucket under
/// [`crate::wire::key::switchboard`]: while `on`, every waiting contact and
/// every new one is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchboard {
    pub on: bool,
    pub by: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// How a person left before anyone answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftHow {
    /// The web chat's quick exit: they may be watched. Never reach out by
    /// another channel; a reply waits in the chat only.
    QuickExit,
    /// They wrote STOP (Twilio opt-out) while waiting: no more SMS.
    OptedOut,
}

impl LeftHow {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftHow::QuickExit => "quick_exit",
            LeftHow::OptedOut => "opted_out",
        }
    }
}

/// A person who left before anyone answered: out of the live queue (no
/// counsellor is rung for someone who is gone), in the follow-up list until
/// a counsellor claims it. A message from the person puts the contact back
/// in the queue like any message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub how: LeftHow,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// "I'm reaching out": the first claim wins.
    #[serde(default)]
    pub claimed: Option<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub by: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Transfers.
impl ContactRecord {
    /// Starts a transfer by `who`, the counsellor the contact is assigned
    /// to, to `to` (the router resolved the target to these). Warm keeps the
    /// contact assigned to `who`; cold offers it to `to` now and restarts
    /// its ladder from the bottom at `now`.
    pub fn start_transfer(
        &mut self,
        who: &CounsellorId,
        target: TransferTarget,
        mode: TransferMode,
        to: &[CounsellorId],
        note: Option<String>,
        now: OffsetDateTime,
    ) -> Result<(), TransitionError> {
        match &self.state {
            ContactState::Assigned { counsellor, .. } if counsellor == who => {}
            ContactState::Resolved { .. } => return Err(TransitionError::Resolved),
            _ => return Err(TransitionError::NotAssigned),
        }
        if self.transfer.is_some() {
            return Err(TransitionError::TransferPending);
        }
        let to: Vec<CounsellorId> = to.iter().filter(|c| *c != who).cloned().collect();
        if to.is_empty() {
            return Err(TransitionError::NobodyToTransferTo);
        }
        if mode == TransferMode::Cold {
            self.state = ContactState::Offered {
                to: to.clone(),
                since: now,
            };
            self.orphaned_at = None;
            self.restart_ladder(now);
        }
        self.transfer = Some(Transfer {
            from: who.clone(),
            target,
            mode,
            to,
            since: now,
            note,
        });
        Ok(())
    }

    /// A receiver accepts a warm transfer: the contact is theirs; returns
    /// the sender. (A cold transfer is accepted like any offer, by
    /// [`ContactRecord::accept`], which clears the transfer.)
    pub fn accept_transfer(
        &mut self,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<CounsellorId, TransitionError> {
        let Some(t) = self
            .transfer
            .as_ref()
            .filter(|t| t.mode == TransferMode::Warm)
        else {
            return Err(TransitionError::NotOffered);
        };
        if !t.to.contains(who) {
            return Err(TransitionError::NotOffered);
        }
        let from = t.from.clone();
        match &self.state {
            ContactState::Assigned { counsellor, .. } if *counsellor == from => {}
            ContactState::Resolved { .. } => return Err(TransitionError::Resolved),
            _ => return Err(TransitionError::NotOffered),
        }
        self.state = ContactState::Assigned {
            counsellor: who.clone(),
            since: now,
        };
        self.orphaned_at = None;
        self.transfer = None;
        Ok(from)
    }

    /// A receiver declines a warm transfer.
    pub fn decline_transfer(&mut self, who: &CounsellorId) -> Result<Declined, TransitionError> {
        let Some(t) = self
            .transfer
            .as_mut()
            .filter(|t| t.mode == TransferMode::Warm && t.to.contains(who))
        else {
            return Err(TransitionError::NotOffered);
        };
        t.to.retain(|c| c != who);
        if !t.to.is_empty() {
            return Ok(Declined::Pending);
        }
        let from = t.from.clone();
        self.transfer = None;
        Ok(Declined::Back(from))
    }

    /// The sender takes a warm transfer back before anyone accepted;
    /// returns who held the offer.
    pub fn cancel_transfer(
        &mut self,
        who: &CounsellorId,
    ) -> Result<Vec<CounsellorId>, TransitionError> {
        match self.transfer.take() {
            Some(t) if t.mode == TransferMode::Warm && t.from == *who => Ok(t.to),
            other => {
                self.transfer = other;
                Err(TransitionError::NotAssigned)
            }
        }
    }

    /// A supervisor `by` gives a waiting, offered or assigned contact to
    /// `to` alone, as a cold transfer they started: the holder (returned,
    /// if any) lets go, other offers end (returned), a hold or a follow-up
    /// ends, and the ladder restarts from the bottom. The same reassignment
    /// again while `to` holds the offer is a retry (nothing changes).
    pub fn reassign(
        &mut self,
        by: &CounsellorId,
        to: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<Reassigned, TransitionError> {
        let (holder, withdrawn) = match &self.state {
            ContactState::Resolved { .. } => return Err(TransitionError::Resolved),
            ContactState::Assigned { counsellor, .. } if counsellor == to => {
                return Err(TransitionError::Taken);
            }
            ContactState::Offered { to: offered, .. }
                if offered == std::slice::from_ref(to)
                    && self.transfer.as_ref().is_some_and(|t| t.from == *by) =>
            {
                return Ok(Reassigned::default());
            }
            ContactState::Assigned { counsellor, .. } => (Some(counsellor.clone()), Vec::new()),
            ContactState::Offered { to: offered, .. } => {
                (None, offered.iter().filter(|c| *c != to).cloned().collect())
            }
            ContactState::Waiting { .. } => (None, Vec::new()),
        };
        let since = self.waiting_since().unwrap_or(now);
        self.state = ContactState::Offered {
            to: vec![to.clone()],
            since,
        };
        self.orphaned_at = None;
        self.held = None;
        self.left = None;
        self.restart_ladder(now);
        self.transfer = Some(Transfer {
            from: by.clone(),
            target: TransferTarget::Counsellor { id: to.clone() },
            mode: TransferMode::Cold,
            to: vec![to.clone()],
            since: now,
            note: None,
        });
        Ok(Reassigned { holder, withdrawn })
    }

    /// Climbs the ladder from the bottom again at `now`, keeping the step
    /// numbering (step ids stay unique per contact).
    pub(crate) fn restart_ladder(&mut self, now: OffsetDateTime) {
        if let Some(e) = self.escalation.take() {
            let mut fresh = Escalation::start(e.policy, now);
            fresh.steps = e.steps;
            fresh.announced = e.announced;
            fresh.trail = e.trail;
            self.escalation = Some(fresh);
        }
    }
}

/// The switchboard.
impl ContactRecord {
    /// Holds a waiting or offered contact for the supervisors; returns who
    /// held an offer of it (their offers are withdrawn). `None` when the
    /// contact is not in the queue or already held.
    pub fn hold(&mut self, by: &CounsellorId, now: OffsetDateTime) -> Option<Vec<CounsellorId>> {
        if self.held.is_some() || self.left.is_some() {
            return None;
        }
        let offered = match &self.state {
            ContactState::Waiting { .. } => Vec::new(),
            ContactState::Offered { to, since } => {
                let (to, since) = (to.clone(), *since);
                self.state = ContactState::Waiting { since };
                to
            }
            _ => return None,
        };
        self.held = Some(Held {
            by: by.clone(),
            at: now,
        });
        Some(offered)
    }

    /// Releases a held contact back to the floor; `false` if it was not held.
    pub fn release(&mut self) -> bool {
        self.held.take().is_some()
    }
}

/// Follow-ups of people who left.
impl ContactRecord {
    /// The person left before anyone answered: the contact leaves the live
    /// queue (offers withdrawn: returns who held one). `None` when a
    /// counsellor already has the contact (they see the note instead) or it
    /// is closed or already marked.
    ///
    /// An opt-out does not take a contact at high or imminent risk out of
    /// the live queue: STOP ends SMS, not the danger. A counsellor still
    /// takes it (the screen says SMS will not reach them, so they call or
    /// escalate) and its ladder keeps running to the backup line.
    pub fn leave(&mut self, how: LeftHow, now: OffsetDateTime) -> Option<Vec<CounsellorId>> {
        if self.left.is_some() {
            return None;
        }
        if how == LeftHow::OptedOut && self.risk >= crate::risk::RiskLevel::High {
            return None;
        }
        let offered = match &self.state {
            ContactState::Waiting { .. } => Vec::new(),
            ContactState::Offered { to, since } => {
                let (to, since) = (to.clone(), *since);
                self.state = ContactState::Waiting { since };
                to
            }
            _ => return None,
        };
        if let Some(e) = self.escalation.as_mut() {
            e.due = None;
        }
        self.left = Some(Left {
            how,
            at: now,
            claimed: None,
        });
        Some(offered)
    }

    /// Whether the contact is in the follow-up list (left, not claimed).
    pub fn awaits_follow_up(&self) -> bool {
        self.left.as_ref().is_some_and(|l| l.claimed.is_none())
    }

    /// "I'm reaching out": the first claim wins and the contact becomes the
    /// claimer's conversation. The same claimer again is a retry.
    pub fn claim(
        &mut self,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<(), TransitionError> {
        let Some(left) = self.left.as_mut() else {
            return Err(TransitionError::NotLeft);
        };
        match &left.claimed {
            Some(c) if c.by == *who => return Ok(()),
            Some(_) => return Err(TransitionError::Taken),
            None => {}
        }
        if matches!(self.state, ContactState::Resolved { .. }) {
            return Err(TransitionError::Resolved);
        }
        left.claimed = Some(Claim {
            by: who.clone(),
            at: now,
        });
        self.state = ContactState::Assigned {
            counsellor: who.clone(),
            since: now,
        };
        Ok(())
    }

    /// The person wrote again: back in the live queue (called by
    /// [`ContactRecord::apply_message`]).
    pub(crate) fn returned(&mut self, now: OffsetDateTime) {
        if self.left.take().is_some()
            && self.assigned_to().is_none()
            && let Some(e) = self.escalation.as_mut()
        {
            e.due = Some(now);
        }
    }
}
