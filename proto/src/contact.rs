//! The contact record: one state record per contact, kept in the `contacts`
//! KV bucket and changed only by compare-and-swap. The transitions here are
//! pure; the router applies them, writes with the expected revision, and on a
//! lost race re-reads and re-decides.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::{Channel, MessageTriaged};
use crate::handover::{Held, Left, Transfer};
use crate::ids::{ContactId, CounsellorId, MessageId, PartnerId, ReferralId};
use crate::ladder::Escalation;
use crate::referral::{OutreachOpened, OutreachOutcome, Priority};
use crate::risk::{Language, Reason, RiskLevel};
use crate::screener::{ScreenerAnswers, ScreenerError, ScreenerResult};

/// How many recent message ids a record remembers to make redelivery harmless.
const SEEN_WINDOW: usize = 64;

/// Where a contact is. Every state has a next action: waiting and offered
/// contacts are in the router's queue; assigned ones are with a counsellor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContactState {
    /// In the queue, offered to nobody (nobody available yet).
    Waiting {
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// Offered to these counsellors; the first to accept wins.
    Offered {
        to: Vec<CounsellorId>,
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// With one counsellor.
    Assigned {
        counsellor: CounsellorId,
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// Closed by a counsellor.
    Resolved {
        by: CounsellorId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl ContactState {
    pub fn name(&self) -> &'static str {
        match self {
            ContactState::Waiting { .. } => "waiting",
            ContactState::Offered { .. } => "offered",
            ContactState::Assigned { .. } => "assigned",
            ContactState::Resolved { .. } => "resolved",
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the contact is already with another counsellor")]
    Taken,
    #[error("the contact was not offered to this counsellor")]
    NotOffered,
    #[error("the contact is not assigned to this counsellor")]
    NotAssigned,
    #[error("the contact is already resolved")]
    Resolved,
    #[error("the contact is not an outreach")]
    NotOutreach,
    #[error(transparent)]
    Screener(#[from] ScreenerError),
    #[error("a transfer of this contact is already under way")]
    TransferPending,
    #[error("nobody the transfer names can take the contact now")]
    NobodyToTransferTo,
    #[error("the person has not left: there is nothing to follow up")]
    NotLeft,
}

/// The state record of one contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactRecord {
    pub id: ContactId,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    pub channel: Channel,
    pub door: Option<PartnerId>,
    pub patient: Option<String>,
    pub lang: Language,
    /// The highest risk seen so far; never lowered automatically.
    pub risk: RiskLevel,
    /// Distinct reasons seen so far (one per rule id, first span kept).
    pub reasons: Vec<Reason>,
    pub state: ContactState,
    pub message_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub last_message_at: OffsetDateTime,
    /// Ids of recently applied messages, so a redelivered event changes nothing.
    pub seen: Vec<MessageId>,
    /// The escalation ladder (set by the router when the contact opens).
    #[serde(default)]
    pub escalation: Option<Escalation>,
    /// When the assigned counsellor's connection was found gone; the
    /// supervisors were alerted then, and after a grace the contact goes
    /// back to the queue.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub orphaned_at: Option<OffsetDateTime>,
    /// Medical-emergency disclosures (42 CFR §2.51) made in the last
    /// [`EMERGENCY_RETRY_WINDOW`], so that a retried request republishes the
    /// same audit record and SMS (same ids) instead of making a second one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emergencies: Vec<EmergencyMark>,
    /// Set when the contact is the line reaching out to a person a partner
    /// referred (issue 14): the line speaks first. `None` for a contact the
    /// person opened (and in records written before outreach existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outreach: Option<Outreach>,
    /// The last C-SSRS screener a counsellor ran in this contact: its level
    /// replaced the contact's `risk` (the only way a level goes down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screener: Option<ScreenerResult>,
    /// A transfer under way ([`crate::handover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// Held by the supervisors' switchboard: offered to supervisors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// The person left before anyone answered: in the follow-up list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Left>,
    /// The sender's previous contact (for "earlier contacts" on screen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ContactId>,
    /// When the sender wrote STOP (Twilio opt-out) and not START since:
    /// SMS to them are refused by the carrier.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub opted_out_at: Option<OffsetDateTime>,
    /// The disposition chosen when the contact was last resolved (a
    /// [`crate::dashboard::Disposition`] code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
}

/// What a contact record knows of the referral it reaches out for. The
/// reason, the referring partner and the person's name are for the
/// counsellor only: never sent to the person, never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outreach {
    pub referral_id: ReferralId,
    /// The referring partner (also the contact's door).
    pub partner: PartnerId,
    pub priority: Priority,
    /// Not offered to anyone before this time (a release date, a discharge).
    #[serde(with = "time::serde::rfc3339")]
    pub offer_at: OffsetDateTime,
    /// Late when nobody has accepted it by then.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub patient_name: Option<String>,
    /// Times the line has texted the person (the introduction counts).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub outcome: Option<RecordedOutcome>,
    /// Whether the line's introduction has been published (sent once, by
    /// its derived outbound id, whoever publishes it).
    #[serde(default)]
    pub introduced: bool,
    /// When the contact was found not assigned by `due_at` (counted once).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub late_at: Option<OffsetDateTime>,
    /// The referral joined a contact the person had already opened: they
    /// know the line, so it sends no introduction.
    #[serde(default)]
    pub joined: bool,
}

/// An outcome as the counsellor recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutcome {
    pub outcome: OutreachOutcome,
    pub by: CounsellorId,
    /// Names the `OutreachUpdate` of this outcome, so a retry republishes
    /// under the same id.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Outreach {
    pub fn of(ev: &OutreachOpened) -> Self {
        Self {
            referral_id: ev.referral_id,
            partner: ev.door.clone(),
            priority: ev.priority,
            offer_at: ev.offer_at,
            due_at: ev.due_at,
            reason: ev.reason.clone(),
            patient_name: ev.patient_name.clone(),
            attempts: 0,
            outcome: None,
            introduced: false,
            late_at: None,
            joined: false,
        }
    }
}

/// How long an identical medical-emergency request (same counsellor,
/// hospital and nature) counts as a retry of the disclosure already made.
/// Well inside the streams' one-hour duplicate window, so a republish under
/// the same `Nats-Msg-Id` is always deduplicated.
pub const EMERGENCY_RETRY_WINDOW: time::Duration = time::Duration::minutes(10);

/// One medical-emergency disclosure decided on a contact. The nature of the
/// emergency itself is only in the audit record; the record keeps a digest
/// to recognise a retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyMark {
    pub partner: PartnerId,
    pub by: CounsellorId,
    pub nature_digest: String,
    /// When the disclosure was made: names its audit record and SMS.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a medical-emergency request is, given the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emergency {
    /// A new disclosure made at this time (write the record).
    New(OffsetDateTime),
    /// A retry of the disclosure made at this time (nothing to write;
    /// republish its effects under the same ids).
    Retry(OffsetDateTime),
}

impl Emergency {
    pub fn at(self) -> OffsetDateTime {
        match self {
            Emergency::New(at) | Emergency::Retry(at) => at,
        }
    }
}

/// A short digest of a text, to recognise it again without keeping it.
pub fn text_digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.trim().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Already applied earlier (redelivery); nothing changed.
    Duplicate,
    /// Applied to an open contact.
    Added,
    /// The contact had been resolved; the message re-opened it into the queue.
    Reopened,
}

impl ContactRecord {
    /// Opens a record from the first triaged message of a contact.
    pub fn open(ev: &MessageTriaged) -> Self {
        let m = &ev.message;
        let mut rec = Self {
            id: m.contact_id,
            opened_at: m.received_at,
            channel: m.channel.clone(),
            door: m.door.clone(),
            patient: m.patient.clone(),
            lang: ev.assessment.lang,
            risk: RiskLevel::Low,
            reasons: Vec::new(),
            state: ContactState::Waiting {
                since: m.received_at,
            },
            message_count: 0,
            last_message_at: m.received_at,
            seen: Vec::new(),
            escalation: None,
            orphaned_at: None,
            emergencies: Vec::new(),
            outreach: None,
            screener: None,
            transfer: None,
            held: None,
            left: None,
            previous: m.previous,
            opted_out_at: None,
            disposition: None,
        };
        rec.apply_message(ev);
        rec
    }

    /// Opens an outreach record: waiting from `offer_at` (the router starts
    /// its ladder due then, so nobody is offered it before), at the risk
    /// the referral's priority implies, with no message yet.
    pub fn open_outreach(ev: &OutreachOpened) -> Self {
        Self {
            id: ev.contact_id,
            opened_at: ev.received_at,
            channel: ev.channel.clone(),
            door: Some(ev.door.clone()),
            patient: ev.patient.clone(),
            lang: ev.lang,
            risk: ev.priority.initial_risk(),
            reasons: Vec::new(),
            state: ContactState::Waiting { since: ev.offer_at },
            message_count: 0,
            last_message_at: ev.received_at,
            seen: Vec::new(),
            escalation: None,
            orphaned_at: None,
            emergencies: Vec::new(),
            outreach: Some(Outreach::of(ev)),
            screener: None,
            transfer: None,
            held: None,
            left: None,
            previous: None,
            opted_out_at: None,
            disposition: None,
        }
    }

    /// Attaches a referral to a contact the person already has open (they
    /// wrote to the line first): the counsellor sees the referral; the line
    /// sends no introduction. `false` when the record already reaches out
    /// for a referral (another one, or this one: a redelivery).
    pub fn join_outreach(&mut self, ev: &OutreachOpened) -> bool {
        if self.outreach.is_some() || !self.is_open() {
            return false;
        }
        self.risk = self.risk.ratchet(ev.priority.initial_risk());
        self.outreach = Some(Outreach {
            joined: true,
            introduced: true,
            ..Outreach::of(ev)
        });
        true
    }

    /// Whether the line still owes the person its introduction: an
    /// outreach contact with a counsellor, not introduced yet.
    pub fn owes_introduction(&self) -> bool {
        self.assigned_to().is_some() && self.outreach.as_ref().is_some_and(|o| !o.introduced)
    }

    /// Records an outreach outcome; only the holding counsellor may. The
    /// same outcome again by them is a retry (`Ok(false)`: nothing written).
    pub fn record_outcome(
        &mut self,
        who: &CounsellorId,
        outcome: OutreachOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, TransitionError> {
        if self.assigned_to() != Some(who) {
            return Err(match self.state {
                ContactState::Resolved { .. } => TransitionError::Resolved,
                _ => TransitionError::NotAssigned,
            });
        }
        let Some(o) = self.outreach.as_mut() else {
            return Err(TransitionError::NotOutreach);
        };
        if o.outcome
            .as_ref()
            .is_some_and(|r| r.outcome == outcome && &r.by == who)
        {
            return Ok(false);
        }
        o.outcome = Some(RecordedOutcome {
            outcome,
            by: who.clone(),
            at: now,
        });
        Ok(true)
    }

    /// Applies a triaged message: ratchets risk up, merges reasons, counts the
    /// message. A message for a resolved contact puts it back in the queue: a
    /// person who writes again is never left without an answer.
    pub fn apply_message(&mut self, ev: &MessageTriaged) -> Applied {
        let m = &ev.message;
        if self.seen.contains(&m.message_id) {
            return Applied::Duplicate;
        }
        self.seen.push(m.message_id);
        if self.seen.len() > SEEN_WINDOW {
            self.seen.remove(0);
        }
        self.risk = self.risk.ratchet(ev.assessment.level);
        self.lang = ev.assessment.lang;
        for r in &ev.assessment.reasons {
            if !self.reasons.iter().any(|x| x.rule == r.rule) {
                self.reasons.push(r.clone());
            }
        }
        self.message_count += 1;
        if m.received_at > self.last_message_at {
            self.last_message_at = m.received_at;
        }
        match crate::events::opt_out_keyword(&m.body) {
            Some(crate::events::OptOut::Stop) => {
                self.opted_out_at.get_or_insert(m.received_at);
            }
            Some(crate::events::OptOut::Start) => self.opted_out_at = None,
            None => {}
        }
        self.returned(m.received_at);
        if matches!(self.state, ContactState::Resolved { .. }) {
            self.state = ContactState::Waiting {
                since: m.received_at,
            };
            // A new wait climbs the ladder from the bottom again, under the
            // policy frozen when the contact first opened.
            if let Some(e) = self.escalation.take() {
                self.escalation = Some(Escalation::start(e.policy, m.received_at));
            }
            return Applied::Reopened;
        }
        // A person who writes while their outreach waits for its time (a
        // release date) is served now, like anyone who writes.
        if self.outreach.is_some()
            && self.waiting_since().is_some()
            && let Some(e) = self.escalation.as_mut()
            && e.due.is_some_and(|d| d > m.received_at)
        {
            e.due = Some(m.received_at);
        }
        // Risk rising to imminent while in the queue broadcasts at once.
        if self.risk == RiskLevel::Imminent
            && self.waiting_since().is_some()
            && let Some(e) = self.escalation.as_mut()
            && e.policy.imminent_broadcast
            && !e.broadcast
        {
            e.due = Some(e.due.map_or(m.received_at, |d| d.min(m.received_at)));
        }
        Applied::Added
    }

    /// When the contact started waiting (for queue order), if it is waiting or offered.
    pub fn waiting_since(&self) -> Option<OffsetDateTime> {
        match &self.state {
            ContactState::Waiting { since } | ContactState::Offered { since, .. } => Some(*since),
            _ => None,
        }
    }

    /// An outreach waiting for its time: its ladder has not fired a step
    /// yet (the first fires at `offer_at`, or when the person writes). It
    /// is offered to nobody and counts in no queue until then.
    pub fn scheduled(&self) -> bool {
        self.outreach.is_some()
            && self.waiting_since().is_some()
            && self.escalation.as_ref().is_none_or(|e| e.steps == 0)
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, ContactState::Resolved { .. })
    }

    pub fn assigned_to(&self) -> Option<&CounsellorId> {
        match &self.state {
            ContactState::Assigned { counsellor, .. } => Some(counsellor),
            _ => None,
        }
    }

    /// Offers a waiting contact to more counsellors (ring-all: offers add up).
    pub fn offer(&mut self, to: &[CounsellorId]) -> Result<(), TransitionError> {
        match &mut self.state {
            ContactState::Waiting { since } => {
                let since = *since;
                self.state = ContactState::Offered {
                    to: to.to_vec(),
                    since,
                };
                Ok(())
            }
            ContactState::Offered { to: offered, .. } => {
                for c in to {
                    if !offered.contains(c) {
                        offered.push(c.clone());
                    }
                }
                Ok(())
            }
            ContactState::Assigned { .. } => Err(TransitionError::Taken),
            ContactState::Resolved { .. } => Err(TransitionError::Resolved),
        }
    }

    /// The first accept wins. Accepting twice is harmless for the winner.
    pub fn accept(
        &mut self,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<(), TransitionError> {
        match &self.state {
            ContactState::Offered { to, .. } if to.contains(who) => {
                self.assign(who, now);
                Ok(())
            }
            ContactState::Offered { .. } | ContactState::Waiting { .. } => {
                Err(TransitionError::NotOffered)
            }
            ContactState::Assigned { counsellor, .. } if counsellor == who => Ok(()),
            ContactState::Assigned { .. } => Err(TransitionError::Taken),
            ContactState::Resolved { .. } => Err(TransitionError::Resolved),
        }
    }

    /// "Take the next": assigns a waiting or offered contact to `who`,
    /// whether it was offered to them or not (the router checked they may
    /// take it); the others' offers end with it. Taking twice is harmless
    /// for the taker.
    pub fn take(&mut self, who: &CounsellorId, now: OffsetDateTime) -> Result<(), TransitionError> {
        match &self.state {
            // A person who left is followed up by a claim, not taken.
            ContactState::Waiting { .. } | ContactState::Offered { .. } if self.left.is_some() => {
                Err(TransitionError::NotOffered)
            }
            ContactState::Waiting { .. } | ContactState::Offered { .. } => {
                self.assign(who, now);
                Ok(())
            }
            ContactState::Assigned { counsellor, .. } if counsellor == who => Ok(()),
            ContactState::Assigned { .. } => Err(TransitionError::Taken),
            ContactState::Resolved { .. } => Err(TransitionError::Resolved),
        }
    }

    fn assign(&mut self, who: &CounsellorId, now: OffsetDateTime) {
        self.state = ContactState::Assigned {
            counsellor: who.clone(),
            since: now,
        };
        self.orphaned_at = None;
        // A cold transfer or a held contact ends when someone takes it.
        self.transfer = None;
        self.held = None;
        // Being taken stops the ladder.
        if let Some(e) = self.escalation.as_mut() {
            e.due = None;
        }
    }

    /// Removes a counsellor from the offer (decline, disconnect). When nobody
    /// is left the contact goes back to waiting, keeping its place in the
    /// queue, and the ladder moves on at once (`now`).
    pub fn withdraw(
        &mut self,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<(), TransitionError> {
        match &mut self.state {
            ContactState::Offered { to, since } => {
                if !to.contains(who) {
                    return Err(TransitionError::NotOffered);
                }
                to.retain(|c| c != who);
                if to.is_empty() {
                    let since = *since;
                    self.state = ContactState::Waiting { since };
                    if let Some(e) = self.escalation.as_mut() {
                        e.due = Some(e.due.map_or(now, |d| d.min(now)));
                    }
                }
                Ok(())
            }
            ContactState::Waiting { .. } => Err(TransitionError::NotOffered),
            ContactState::Assigned { .. } => Err(TransitionError::Taken),
            ContactState::Resolved { .. } => Err(TransitionError::Resolved),
        }
    }

    /// Marks an assigned contact whose counsellor dropped off; `false` if
    /// it was already marked (the supervisors were alerted once).
    pub fn orphan(&mut self, now: OffsetDateTime) -> bool {
        if self.assigned_to().is_none() || self.orphaned_at.is_some() {
            return false;
        }
        self.orphaned_at = Some(now);
        true
    }

    /// The counsellor is back: the contact stays with them.
    pub fn unorphan(&mut self) -> bool {
        self.orphaned_at.take().is_some()
    }

    /// Puts an orphaned contact back in the queue, climbing the ladder from
    /// the bottom again at once. Returns the counsellor it was with.
    pub fn requeue(&mut self, now: OffsetDateTime) -> Option<CounsellorId> {
        let ContactState::Assigned { counsellor, .. } = &self.state else {
            return None;
        };
        let was = counsellor.clone();
        self.state = ContactState::Waiting { since: now };
        self.orphaned_at = None;
        self.transfer = None;
        if let Some(e) = self.escalation.take() {
            let mut fresh = Escalation::start(e.policy, now);
            // Keep the step numbering going: step ids stay unique per contact.
            fresh.steps = e.steps;
            fresh.announced = e.announced;
            fresh.trail = e.trail;
            self.escalation = Some(fresh);
        }
        Some(was)
    }

    /// Only the assigned counsellor resolves a contact.
    pub fn resolve(
        &mut self,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<(), TransitionError> {
        match &self.state {
            ContactState::Assigned { counsellor, .. } if counsellor == who => {
                self.state = ContactState::Resolved {
                    by: who.clone(),
                    at: now,
                };
                self.transfer = None;
                self.held = None;
                if let Some(e) = self.escalation.as_mut() {
                    e.due = None;
                }
                Ok(())
            }
            ContactState::Resolved { .. } => Err(TransitionError::Resolved),
            _ => Err(TransitionError::NotAssigned),
        }
    }
}

/// The screener.
impl ContactRecord {
    /// Records a C-SSRS screener run by `who`, the counsellor the contact
    /// is assigned to: its level becomes the contact's level, lower or
    /// higher than before. Returns the result kept.
    pub fn assess(
        &mut self,
        who: &CounsellorId,
        answers: ScreenerAnswers,
        now: OffsetDateTime,
    ) -> Result<ScreenerResult, TransitionError> {
        match &self.state {
            ContactState::Assigned { counsellor, .. } if counsellor == who => {}
            ContactState::Resolved { .. } => return Err(TransitionError::Resolved),
            _ => return Err(TransitionError::NotAssigned),
        }
        answers.validate()?;
        let result = ScreenerResult {
            answers,
            level: answers.level(),
            before: self.risk,
            by: who.clone(),
            at: now,
        };
        self.risk = result.level;
        self.screener = Some(result.clone());
        Ok(result)
    }
}

/// Medical-emergency disclosures.
impl ContactRecord {
    /// Decides a medical-emergency disclosure (42 CFR §2.51) by `who` to
    /// `partner`: only the counsellor the contact is assigned to may make
    /// one. The same request again within [`EMERGENCY_RETRY_WINDOW`] is a
    /// retry of the first. Two different disclosures to one partner never
    /// share a second (the second names their records).
    pub fn medical_emergency(
        &mut self,
        who: &CounsellorId,
        partner: &PartnerId,
        nature: &str,
        now: OffsetDateTime,
    ) -> Result<Emergency, TransitionError> {
        match &self.state {
            ContactState::Assigned { counsellor, .. } if counsellor == who => {}
            ContactState::Resolved { .. } => return Err(TransitionError::Resolved),
            _ => return Err(TransitionError::NotAssigned),
        }
        let digest = text_digest(nature);
        let recent = |m: &EmergencyMark| now - m.at < EMERGENCY_RETRY_WINDOW;
        if let Some(m) = self.emergencies.iter().find(|m| {
            recent(m) && m.partner == *partner && m.by == *who && m.nature_digest == digest
        }) {
            return Ok(Emergency::Retry(m.at));
        }
        self.emergencies.retain(|m| recent(m));
        let mut at = now;
        if let Some(last) = self
            .emergencies
            .iter()
            .filter(|m| m.partner == *partner)
            .map(|m| m.at.unix_timestamp())
            .max()
            && last >= at.unix_timestamp()
            && let Ok(next) = OffsetDateTime::from_unix_timestamp(last + 1)
        {
            at = next;
        }
        self.emergencies.push(EmergencyMark {
            partner: partner.clone(),
            by: who.clone(),
            nature_digest: digest,
            at,
        });
        Ok(Emergency::New(at))
    }
}

/// Who a contact is currently offered to (empty unless offered).
pub fn offered(rec: &ContactRecord) -> &[CounsellorId] {
    match &rec.state {
        ContactState::Offered { to, .. } => to,
        _ => &[],
    }
}

/// Intake's thread record: which contact is open for one sender.
/// Bucket `threads`, key [`crate::pseudonym::Pseudonymiser::thread_key`]
/// (`sms.<keyed pseudonym of the sender>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub contact_id: ContactId,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// The message that opened the contact (so a redelivery of it still
    /// reports `opens_contact`).
    pub opened_by: MessageId,
    /// Set when the contact is resolved: the sender's next message opens a new contact.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
    /// The contact this thread replaced (the sender's previous one, closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ContactId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::events::ContactMessage;
    use crate::risk::Assessment;
    use time::macros::datetime;

    fn triaged(contact: ContactId, level: RiskLevel, rule: &str) -> MessageTriaged {
        MessageTriaged {
            message: ContactMessage {
                contact_id: contact,
                message_id: MessageId::new(),
                channel: Channel::Sms {
                    patient: Address::parse("+15005550142"),
                    line: Address::parse("+15005550100"),
                },
                door: None,
                patient: None,
                body: "x".into(),
                received_at: datetime!(2026-11-24 10:00 UTC),
                opens_contact: true,
                previous: None,
                quick_exit: false,
            },
            assessment: Assessment {
                level,
                score: 0.5,
                reasons: vec![Reason {
                    rule: rule.into(),
                    label: rule.into(),
                    level,
                    start: 0,
                    end: 1,
                }],
                lang: Language::En,
                rulebook_version: "test".into(),
            },
        }
    }

    fn c(s: &str) -> CounsellorId {
        CounsellorId::parse(s).unwrap()
    }

    const NOW: OffsetDateTime = datetime!(2026-11-24 10:01 UTC);

    #[test]
    fn risk_only_ratchets_up_and_redelivery_changes_nothing() {
        let id = ContactId::new();
        let first = triaged(id, RiskLevel::High, "a");
        let mut rec = ContactRecord::open(&first);
        assert_eq!(rec.risk, RiskLevel::High);
        assert_eq!(rec.apply_message(&first), Applied::Duplicate);
        assert_eq!(rec.message_count, 1);
        assert_eq!(
            rec.apply_message(&triaged(id, RiskLevel::Low, "b")),
            Applied::Added
        );
        assert_eq!(rec.risk, RiskLevel::High);
        assert_eq!(rec.reasons.len(), 2);
        rec.apply_message(&triaged(id, RiskLevel::Imminent, "a"));
        assert_eq!(rec.risk, RiskLevel::Imminent);
        assert_eq!(rec.reasons.len(), 2, "reasons are merged by rule id");
    }

    #[test]
    fn first_accept_wins() {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Low, "a"));
        rec.offer(&[c("ana"), c("ben")]).unwrap();
        rec.accept(&c("ben"), NOW).unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ben")));
        assert_eq!(rec.accept(&c("ana"), NOW), Err(TransitionError::Taken));
        assert_eq!(
            rec.accept(&c("ben"), NOW),
            Ok(()),
            "idempotent for the winner"
        );
        assert_eq!(rec.offer(&[c("cy")]), Err(TransitionError::Taken));
    }

    #[test]
    fn take_assigns_a_waiting_or_offered_contact_once() {
        let waiting = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::High, "a"));
        let mut rec = waiting.clone();
        rec.take(&c("cy"), NOW).unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("cy")));
        assert_eq!(rec.take(&c("cy"), NOW), Ok(()), "idempotent for the taker");
        assert_eq!(rec.take(&c("ana"), NOW), Err(TransitionError::Taken));

        let mut offered = waiting.clone();
        offered.escalation = Some(crate::ladder::Escalation::start(
            crate::ladder::LadderPolicy::default(),
            NOW,
        ));
        offered.offer(&[c("ana"), c("ben")]).unwrap();
        offered.take(&c("cy"), NOW).unwrap();
        assert_eq!(offered.assigned_to(), Some(&c("cy")), "not offered to cy");
        assert_eq!(offered.escalation.unwrap().due, None, "the ladder stops");
        assert_eq!(rec.accept(&c("ana"), NOW), Err(TransitionError::Taken));

        let mut resolved = waiting;
        resolved.take(&c("ana"), NOW).unwrap();
        resolved.resolve(&c("ana"), NOW).unwrap();
        assert_eq!(
            resolved.take(&c("ben"), NOW),
            Err(TransitionError::Resolved)
        );
    }

    #[test]
    fn cannot_accept_what_was_not_offered() {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Low, "a"));
        assert_eq!(rec.accept(&c("ana"), NOW), Err(TransitionError::NotOffered));
        rec.offer(&[c("ana")]).unwrap();
        assert_eq!(rec.accept(&c("ben"), NOW), Err(TransitionError::NotOffered));
    }

    #[test]
    fn declining_everyone_puts_it_back_in_the_queue_keeping_its_place() {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Low, "a"));
        let since = rec.waiting_since().unwrap();
        rec.offer(&[c("ana"), c("ben")]).unwrap();
        rec.withdraw(&c("ana"), NOW).unwrap();
        assert!(matches!(rec.state, ContactState::Offered { .. }));
        rec.withdraw(&c("ben"), NOW).unwrap();
        assert_eq!(rec.state, ContactState::Waiting { since });
        assert_eq!(
            rec.withdraw(&c("ben"), NOW),
            Err(TransitionError::NotOffered)
        );
    }

    #[test]
    fn only_the_assigned_counsellor_resolves_and_a_new_message_reopens() {
        let id = ContactId::new();
        let mut rec = ContactRecord::open(&triaged(id, RiskLevel::Low, "a"));
        rec.offer(&[c("ana")]).unwrap();
        assert_eq!(
            rec.resolve(&c("ana"), NOW),
            Err(TransitionError::NotAssigned)
        );
        rec.accept(&c("ana"), NOW).unwrap();
        assert_eq!(
            rec.resolve(&c("ben"), NOW),
            Err(TransitionError::NotAssigned)
        );
        rec.resolve(&c("ana"), NOW).unwrap();
        assert!(!rec.is_open());
        assert_eq!(rec.resolve(&c("ana"), NOW), Err(TransitionError::Resolved));
        assert_eq!(
            rec.apply_message(&triaged(id, RiskLevel::Moderate, "b")),
            Applied::Reopened
        );
        assert!(matches!(rec.state, ContactState::Waiting { .. }));
    }

    #[test]
    fn a_medical_emergency_is_the_assignees_and_a_retry_is_the_same_disclosure() {
        let id = ContactId::new();
        let mut rec = ContactRecord::open(&triaged(id, RiskLevel::High, "a"));
        let hospital = PartnerId::parse("county-hospital").unwrap();
        let nature = "took a whole bottle of pills, drowsy";
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, nature, NOW),
            Err(TransitionError::NotAssigned)
        );
        rec.offer(&[c("ana")]).unwrap();
        rec.accept(&c("ana"), NOW).unwrap();
        assert_eq!(
            rec.medical_emergency(&c("ben"), &hospital, nature, NOW),
            Err(TransitionError::NotAssigned)
        );
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, nature, NOW),
            Ok(Emergency::New(NOW))
        );
        let later = NOW + time::Duration::seconds(30);
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, &format!(" {nature} "), later),
            Ok(Emergency::Retry(NOW)),
            "the same request again is a retry"
        );
        assert_eq!(rec.emergencies.len(), 1);
        assert!(!serde_json::to_string(&rec).unwrap().contains("pills"));
        // Another nature in the same second gets the next second (its own ids).
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, "not breathing", NOW),
            Ok(Emergency::New(NOW + time::Duration::seconds(1)))
        );
        // Past the window the same request is a new disclosure; old marks go.
        let much_later = NOW + EMERGENCY_RETRY_WINDOW + time::Duration::seconds(2);
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, nature, much_later),
            Ok(Emergency::New(much_later))
        );
        assert_eq!(rec.emergencies.len(), 1);
        let back: ContactRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        rec.resolve(&c("ana"), much_later).unwrap();
        assert_eq!(
            rec.medical_emergency(&c("ana"), &hospital, nature, much_later),
            Err(TransitionError::Resolved)
        );
    }

    fn outreach(contact: ContactId, offer_at: OffsetDateTime) -> OutreachOpened {
        OutreachOpened {
            contact_id: contact,
            referral_id: crate::ids::ReferralId::new(),
            channel: Channel::Sms {
                patient: Address::parse("+15005550142"),
                line: Address::parse("+15005550100"),
            },
            door: PartnerId::parse("riverside-reentry").unwrap(),
            patient: None,
            patient_name: Some("Jo".into()),
            lang: Language::En,
            priority: Priority::Stat,
            offer_at,
            due_at: offer_at + time::Duration::minutes(15),
            reason: Some("released today".into()),
            received_at: datetime!(2026-11-24 10:00 UTC),
        }
    }

    #[test]
    fn an_outreach_waits_for_its_time_out_of_the_queue_until_its_ladder_starts() {
        let id = ContactId::new();
        let offer_at = datetime!(2026-11-25 09:00 UTC);
        let mut rec = ContactRecord::open_outreach(&outreach(id, offer_at));
        assert_eq!(rec.risk, RiskLevel::High, "stat starts high");
        assert_eq!(rec.message_count, 0);
        assert_eq!(rec.door.as_ref().unwrap().as_str(), "riverside-reentry");
        assert_eq!(rec.waiting_since(), Some(offer_at));
        rec.escalation = Some(Escalation::start(
            crate::ladder::LadderPolicy::default(),
            offer_at,
        ));
        assert!(rec.scheduled());
        // The person writes before the release date: served now.
        let mut first = triaged(id, RiskLevel::Low, "a");
        first.message.opens_contact = false;
        assert_eq!(rec.apply_message(&first), Applied::Added);
        assert_eq!(
            rec.escalation.as_ref().unwrap().due,
            Some(first.message.received_at)
        );
        rec.escalation.as_mut().unwrap().steps = 1;
        assert!(!rec.scheduled(), "in the queue once a step fired");
        // Old records (no outreach field) still read.
        let mut json = serde_json::to_value(ContactRecord::open(&first)).unwrap();
        json.as_object_mut().unwrap().remove("outreach");
        let old: ContactRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.outreach, None);
        assert!(!old.scheduled());
    }

    #[test]
    fn only_the_holder_records_an_outcome_and_a_retry_changes_nothing() {
        let id = ContactId::new();
        let mut rec = ContactRecord::open_outreach(&outreach(id, NOW));
        let reached = OutreachOutcome::Reached;
        assert_eq!(
            rec.record_outcome(&c("ana"), reached, NOW),
            Err(TransitionError::NotAssigned)
        );
        rec.offer(&[c("ana"), c("ben")]).unwrap();
        rec.accept(&c("ana"), NOW).unwrap();
        assert!(rec.owes_introduction());
        assert_eq!(
            rec.record_outcome(&c("ben"), reached, NOW),
            Err(TransitionError::NotAssigned)
        );
        assert_eq!(rec.record_outcome(&c("ana"), reached, NOW), Ok(true));
        let later = NOW + time::Duration::minutes(1);
        assert_eq!(rec.record_outcome(&c("ana"), reached, later), Ok(false));
        assert_eq!(
            rec.outreach.as_ref().unwrap().outcome.as_ref().unwrap().at,
            NOW
        );
        assert_eq!(
            rec.record_outcome(&c("ana"), OutreachOutcome::ReferredOn, later),
            Ok(true),
            "the holder may correct it"
        );
        rec.resolve(&c("ana"), later).unwrap();
        assert_eq!(
            rec.record_outcome(&c("ana"), reached, later),
            Err(TransitionError::Resolved)
        );
        // A contact the person opened is no outreach.
        let mut inbound = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Low, "a"));
        inbound.offer(&[c("ana")]).unwrap();
        inbound.accept(&c("ana"), NOW).unwrap();
        assert_eq!(
            inbound.record_outcome(&c("ana"), reached, NOW),
            Err(TransitionError::NotOutreach)
        );
    }

    #[test]
    fn a_referral_joins_an_open_contact_once_and_is_not_introduced() {
        let id = ContactId::new();
        let mut rec = ContactRecord::open(&triaged(id, RiskLevel::Low, "a"));
        let ev = outreach(id, NOW);
        assert!(rec.join_outreach(&ev));
        assert_eq!(rec.risk, RiskLevel::High);
        let o = rec.outreach.clone().unwrap();
        assert!(o.joined && o.introduced);
        assert!(
            !rec.join_outreach(&outreach(id, NOW)),
            "one referral per record"
        );
        rec.offer(&[c("ana")]).unwrap();
        rec.accept(&c("ana"), NOW).unwrap();
        assert!(!rec.owes_introduction());
    }

    /// A contact assigned to `who` (one message at `level`).
    fn assigned(who: &str, level: RiskLevel) -> ContactRecord {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), level, "a"));
        rec.offer(&[c(who)]).unwrap();
        rec.accept(&c(who), NOW).unwrap();
        rec
    }

    fn message(rec: &ContactRecord, body: &str, at: OffsetDateTime) -> MessageTriaged {
        let mut m = triaged(rec.id, RiskLevel::Low, "b");
        m.message.body = body.into();
        m.message.received_at = at;
        m.message.opens_contact = false;
        m
    }

    #[test]
    fn a_screener_by_the_holder_sets_the_level_and_later_messages_raise_it_again() {
        use crate::screener::{ScreenerAnswers, ScreenerError};
        let mut rec = assigned("ana", RiskLevel::High);
        let passive = ScreenerAnswers {
            wish_dead: true,
            thoughts: false,
            method: None,
            intent: None,
            plan: None,
            behaviour: false,
            behaviour_recent: None,
        };
        assert_eq!(
            rec.assess(&c("ben"), passive, NOW),
            Err(TransitionError::NotAssigned)
        );
        let mut bad = passive;
        bad.plan = Some(true);
        assert_eq!(
            rec.assess(&c("ana"), bad, NOW),
            Err(TransitionError::Screener(ScreenerError::SkipAfterThoughts))
        );
        assert_eq!(
            rec.risk,
            RiskLevel::High,
            "a refused screener changes nothing"
        );
        let result = rec.assess(&c("ana"), passive, NOW).unwrap();
        assert_eq!(
            (result.before, result.level),
            (RiskLevel::High, RiskLevel::Low)
        );
        assert_eq!(rec.risk, RiskLevel::Low);
        assert_eq!(rec.screener.as_ref().map(|s| &s.by), Some(&c("ana")));
        let mut later = triaged(rec.id, RiskLevel::High, "c");
        later.message.opens_contact = false;
        rec.apply_message(&later);
        assert_eq!(
            rec.risk,
            RiskLevel::High,
            "triage raises from the screened level"
        );
    }

    #[test]
    fn a_warm_transfer_keeps_the_sender_until_a_receiver_accepts() {
        use crate::handover::{Declined, TransferMode, TransferTarget};
        let mut rec = assigned("ana", RiskLevel::High);
        let target = TransferTarget::Supervisor;
        assert_eq!(
            rec.start_transfer(
                &c("ben"),
                target.clone(),
                TransferMode::Warm,
                &[c("sam")],
                None,
                NOW
            ),
            Err(TransitionError::NotAssigned)
        );
        assert_eq!(
            rec.start_transfer(
                &c("ana"),
                target.clone(),
                TransferMode::Warm,
                &[c("ana")],
                None,
                NOW
            ),
            Err(TransitionError::NobodyToTransferTo)
        );
        rec.start_transfer(
            &c("ana"),
            target.clone(),
            TransferMode::Warm,
            &[c("sam"), c("sue")],
            Some("Relapsed after detox; safety plan started".into()),
            NOW,
        )
        .unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ana")), "still with the sender");
        assert_eq!(
            rec.start_transfer(
                &c("ana"),
                target,
                TransferMode::Warm,
                &[c("sue")],
                None,
                NOW
            ),
            Err(TransitionError::TransferPending)
        );
        assert_eq!(rec.decline_transfer(&c("sam")), Ok(Declined::Pending));
        assert_eq!(
            rec.accept_transfer(&c("sam"), NOW),
            Err(TransitionError::NotOffered)
        );
        assert_eq!(rec.accept_transfer(&c("sue"), NOW), Ok(c("ana")));
        assert_eq!(rec.assigned_to(), Some(&c("sue")));
        assert!(rec.transfer.is_none());
    }

    #[test]
    fn a_warm_transfer_everyone_declines_or_the_sender_cancels_stays_with_the_sender() {
        use crate::handover::{Declined, TransferMode, TransferTarget};
        let mut rec = assigned("ana", RiskLevel::High);
        let to = TransferTarget::Counsellor { id: c("ben") };
        rec.start_transfer(
            &c("ana"),
            to.clone(),
            TransferMode::Warm,
            &[c("ben")],
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            rec.decline_transfer(&c("ben")),
            Ok(Declined::Back(c("ana")))
        );
        assert_eq!(rec.assigned_to(), Some(&c("ana")));
        assert!(rec.transfer.is_none());
        rec.start_transfer(&c("ana"), to, TransferMode::Warm, &[c("ben")], None, NOW)
            .unwrap();
        assert_eq!(
            rec.cancel_transfer(&c("ben")),
            Err(TransitionError::NotAssigned)
        );
        assert_eq!(rec.cancel_transfer(&c("ana")), Ok(vec![c("ben")]));
        assert!(rec.transfer.is_none());
        assert_eq!(rec.assigned_to(), Some(&c("ana")));
    }

    #[test]
    fn a_cold_transfer_lets_go_at_once_and_is_accepted_like_an_offer() {
        use crate::handover::{TransferMode, TransferTarget};
        let mut rec = assigned("ana", RiskLevel::High);
        rec.escalation = Some(Escalation::start(
            crate::ladder::LadderPolicy::default(),
            NOW,
        ));
        let later = NOW + time::Duration::minutes(5);
        let partner = TransferTarget::Partner {
            partner: PartnerId::parse("county-hospital").unwrap(),
        };
        rec.start_transfer(
            &c("ana"),
            partner,
            TransferMode::Cold,
            &[c("chloe")],
            None,
            later,
        )
        .unwrap();
        assert_eq!(offered(&rec), [c("chloe")]);
        assert_eq!(rec.assigned_to(), None);
        assert_eq!(
            rec.escalation.as_ref().and_then(|e| e.due),
            Some(later),
            "the ladder starts again at once if nobody accepts"
        );
        rec.accept(&c("chloe"), later).unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("chloe")));
        assert!(rec.transfer.is_none());
    }

    #[test]
    fn a_reassignment_offers_the_contact_to_one_counsellor_as_a_cold_transfer() {
        use crate::handover::{Reassigned, TransferMode};
        let later = NOW + time::Duration::minutes(5);
        // Assigned: the holder lets go.
        let mut rec = assigned("ana", RiskLevel::High);
        rec.escalation = Some(Escalation::start(
            crate::ladder::LadderPolicy::default(),
            NOW,
        ));
        let done = rec.reassign(&c("sam"), &c("ben"), later).unwrap();
        assert_eq!(done.holder, Some(c("ana")));
        assert_eq!(offered(&rec), [c("ben")]);
        let t = rec.transfer.as_ref().unwrap();
        assert_eq!((t.from.clone(), t.mode), (c("sam"), TransferMode::Cold));
        assert_eq!(rec.escalation.as_ref().and_then(|e| e.due), Some(later));
        // The same again: a retry; to the one who has it: refused.
        assert_eq!(
            rec.reassign(&c("sam"), &c("ben"), later),
            Ok(Reassigned::default())
        );
        rec.accept(&c("ben"), later).unwrap();
        assert_eq!(
            rec.reassign(&c("sam"), &c("ben"), later),
            Err(TransitionError::Taken)
        );
        // Offered and held: the other offers end, and the hold.
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Moderate, "a"));
        rec.offer(&[c("ana"), c("ben")]).unwrap();
        rec.held = Some(crate::handover::Held {
            by: c("sam"),
            at: NOW,
        });
        let done = rec.reassign(&c("sam"), &c("ben"), later).unwrap();
        assert_eq!(done.withdrawn, [c("ana")]);
        assert_eq!(offered(&rec), [c("ben")]);
        assert!(rec.held.is_none());
        // Resolved: refused.
        let mut rec = assigned("ana", RiskLevel::High);
        rec.resolve(&c("ana"), NOW).unwrap();
        assert_eq!(
            rec.reassign(&c("sam"), &c("ben"), later),
            Err(TransitionError::Resolved)
        );
    }

    #[test]
    fn the_switchboard_holds_waiting_contacts_and_releases_them() {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Moderate, "a"));
        rec.offer(&[c("ana"), c("ben")]).unwrap();
        assert_eq!(rec.hold(&c("sam"), NOW), Some(vec![c("ana"), c("ben")]));
        assert!(
            matches!(rec.state, ContactState::Waiting { .. }),
            "offers withdrawn"
        );
        assert_eq!(rec.hold(&c("sam"), NOW), None, "held once");
        assert!(rec.release());
        assert!(!rec.release());
        // A supervisor who accepts a held contact's offer takes it.
        rec.hold(&c("sam"), NOW);
        rec.offer(&[c("sam")]).unwrap();
        rec.accept(&c("sam"), NOW).unwrap();
        assert!(rec.held.is_none());
        assert_eq!(
            rec.hold(&c("sam"), NOW),
            None,
            "an assigned contact is not held"
        );
    }

    #[test]
    fn a_person_who_left_is_claimed_once_and_back_in_the_queue_if_they_write() {
        use crate::handover::LeftHow;
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::High, "a"));
        rec.escalation = Some(Escalation::start(
            crate::ladder::LadderPolicy::default(),
            NOW,
        ));
        assert_eq!(rec.claim(&c("ana"), NOW), Err(TransitionError::NotLeft));
        rec.offer(&[c("ana")]).unwrap();
        assert_eq!(rec.leave(LeftHow::QuickExit, NOW), Some(vec![c("ana")]));
        assert!(rec.awaits_follow_up());
        assert_eq!(
            rec.escalation.as_ref().and_then(|e| e.due),
            None,
            "nobody is rung"
        );
        assert_eq!(rec.leave(LeftHow::QuickExit, NOW), None);
        // They write again before anyone claimed it: back in the queue now.
        let back = NOW + time::Duration::minutes(1);
        rec.apply_message(&message(&rec, "are you there", back));
        assert!(rec.left.is_none());
        assert_eq!(rec.escalation.as_ref().and_then(|e| e.due), Some(back));
        // Left again, then claimed: the first claim wins.
        rec.leave(LeftHow::QuickExit, back);
        rec.claim(&c("ana"), back).unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ana")));
        assert_eq!(rec.claim(&c("ben"), back), Err(TransitionError::Taken));
        assert_eq!(rec.claim(&c("ana"), back), Ok(()), "a retry");
        assert!(!rec.awaits_follow_up());
    }

    #[test]
    fn an_opt_out_leaves_the_live_queue_only_below_high_risk() {
        use crate::handover::LeftHow;
        let mut moderate =
            ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Moderate, "a"));
        assert!(moderate.leave(LeftHow::OptedOut, NOW).is_some());
        for level in [RiskLevel::High, RiskLevel::Imminent] {
            let mut rec = ContactRecord::open(&triaged(ContactId::new(), level, "a"));
            rec.offer(&[c("ana")]).unwrap();
            assert_eq!(rec.leave(LeftHow::OptedOut, NOW), None, "{level:?}");
            assert!(rec.left.is_none());
            assert_eq!(offered(&rec), [c("ana")], "still offered");
            // A quick exit still leaves: there is no chat to answer in.
            assert!(rec.leave(LeftHow::QuickExit, NOW).is_some());
        }
    }

    #[test]
    fn stop_and_start_keywords_set_and_clear_the_opt_out() {
        let mut rec = ContactRecord::open(&triaged(ContactId::new(), RiskLevel::Low, "a"));
        rec.apply_message(&message(&rec, " stop ", NOW));
        assert_eq!(rec.opted_out_at, Some(NOW));
        rec.apply_message(&message(&rec, "please stop texting me", NOW));
        assert_eq!(
            rec.opted_out_at,
            Some(NOW),
            "only the whole message is a keyword"
        );
        rec.apply_message(&message(&rec, "START", NOW));
        assert_eq!(rec.opted_out_at, None);
        rec.apply_message(&message(&rec, "Unsubscribe.", NOW));
        assert!(rec.opted_out_at.is_some());
    }

    #[test]
    fn a_contact_remembers_the_senders_previous_one() {
        let before = ContactId::new();
        let mut first = triaged(ContactId::new(), RiskLevel::Low, "a");
        first.message.previous = Some(before);
        assert_eq!(ContactRecord::open(&first).previous, Some(before));
    }
}
