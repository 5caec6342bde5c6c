//! The escalation ladder: the policy (in the directory, frozen into a
//! contact when it opens) and the escalation state kept in the contact
//! record. The logic that fires steps lives in `nwd-ladder`; this is the
//! contract both the router and the escalator read and write.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::CounsellorId;
use crate::risk::RiskLevel;

/// The consent purpose that covers notifying a trusted contact.
pub const TRUSTED_CONTACT_PURPOSE: &str = "crisis-support";

/// One rung of the ladder, tried in order after the imminent broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rung {
    /// The patient's personal coordinator, if on shift and free.
    Coordinator,
    /// On-call counsellors of the door institution (or the patient's programme).
    DoorOnCall,
    /// Any on-call counsellor of any partner: no wrong doors.
    AnyOnCall,
    /// The supervisor on call.
    Supervisor,
    /// The patient's trusted contact, only with a consent that covers it; a
    /// notification in parallel, never a replacement for a counsellor.
    TrustedContact,
    /// The external backup line; as the last rung it repeats until someone accepts.
    BackupLine,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Coordinator => "coordinator",
            Rung::DoorOnCall => "door-on-call",
            Rung::AnyOnCall => "any-on-call",
            Rung::Supervisor => "supervisor",
            Rung::TrustedContact => "trusted-contact",
            Rung::BackupLine => "backup-line",
        }
    }

    /// A rung that offers the contact to staff (rather than notifying someone).
    pub fn offers(self) -> bool {
        matches!(
            self,
            Rung::Coordinator | Rung::DoorOnCall | Rung::AnyOnCall | Rung::Supervisor
        )
    }

    /// A readable name for the dashboard.
    pub fn label(self) -> &'static str {
        match self {
            Rung::Coordinator => "Personal coordinator",
            Rung::DoorOnCall => "Door institution on call",
            Rung::AnyOnCall => "Any on-call counsellor",
            Rung::Supervisor => "Supervisor",
            Rung::TrustedContact => "Trusted contact",
            Rung::BackupLine => "Backup line",
        }
    }
}

/// Per-risk timeouts of one rung, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub imminent: u64,
    pub high: u64,
    pub moderate: u64,
    pub low: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            imminent: 15_000,
            high: 30_000,
            moderate: 60_000,
            low: 120_000,
        }
    }
}

impl Timeouts {
    pub fn for_risk(&self, risk: RiskLevel) -> Duration {
        Duration::from_millis(match risk {
            RiskLevel::Imminent => self.imminent,
            RiskLevel::High => self.high,
            RiskLevel::Moderate => self.moderate,
            RiskLevel::Low => self.low,
        })
    }
}

/// The escalation policy: the line's default, overridable per partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LadderPolicy {
    /// Offer imminent contacts to every available counsellor at once, alert
    /// the supervisor and send the safety message, before the rungs.
    pub imminent_broadcast: bool,
    /// The rungs in order; the last one repeats until someone accepts.
    pub rungs: Vec<Rung>,
    /// How long each rung waits for an accept, by risk.
    #[serde(rename = "timeouts_ms")]
    pub timeouts: Timeouts,
    /// How long a contact is offered only to counsellors who speak its
    /// language before anyone eligible may take it (milliseconds).
    pub language_wait_ms: u64,
}

impl Default for LadderPolicy {
    fn default() -> Self {
        Self {
            imminent_broadcast: true,
            rungs: vec![
                Rung::Coordinator,
                Rung::DoorOnCall,
                Rung::AnyOnCall,
                Rung::Supervisor,
                Rung::TrustedContact,
                Rung::BackupLine,
            ],
            timeouts: Timeouts::default(),
            language_wait_ms: 10_000,
        }
    }
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a ladder needs at least one rung")]
    Empty,
    #[error(
        "the last rung must offer to staff or be the backup line, so the ladder never runs out"
    )]
    BadLastRung,
    #[error("timeouts must be at least 100 ms")]
    TimeoutTooShort,
}

impl LadderPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let last = self.rungs.last().ok_or(PolicyError::Empty)?;
        if *last == Rung::TrustedContact {
            return Err(PolicyError::BadLastRung);
        }
        let t = &self.timeouts;
        if [t.imminent, t.high, t.moderate, t.low]
            .iter()
            .any(|&ms| ms < 100)
        {
            return Err(PolicyError::TimeoutTooShort);
        }
        Ok(())
    }
}

/// What one fired step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepOutcome {
    /// Offered to these staff (ring-all within the step).
    Offered { to: Vec<CounsellorId> },
    /// Imminent: offered to everyone available, supervisors alerted, safety message sent.
    Broadcast {
        to: Vec<CounsellorId>,
        alerted: Vec<CounsellorId>,
    },
    /// Trusted contacts: notified where a valid consent covers it, refused
    /// (and the refusal recorded in AUDIT) where none does. Ids, not names.
    TrustedContacts {
        notified: Vec<String>,
        refused: Vec<String>,
    },
    /// The backup line was alerted (and the step offered to anyone eligible).
    BackupAlerted { to: Vec<CounsellorId> },
    /// The waiting person was told, once per wait, that they are in the
    /// queue: how many are ahead of them and, when the line has recent
    /// figures, how long people have been waiting.
    Acknowledged {
        ahead: u32,
        typical_wait_secs: Option<u64>,
    },
    /// Nobody eligible (or no consent): skipped at once.
    Skipped { reason: SkipReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    NobodyEligible,
    NoCoordinator,
    NoTrustedContact,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NobodyEligible => "nobody_eligible",
            SkipReason::NoCoordinator => "no_coordinator",
            SkipReason::NoTrustedContact => "no_trusted_contact",
        }
    }
}

/// One fired step, kept in the record (the escalation trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based step number within the contact; with the contact id, the
    /// dedupe id of every side effect of the step (`<contact>:step:<n>`).
    pub step: u64,
    /// `None` for the imminent broadcast.
    pub rung: Option<Rung>,
    pub outcome: StepOutcome,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The ladder state of an open contact. Changed only inside the contact
/// record's compare-and-swap: its revision is the fencing token, and
/// `step` names the next step, so a deadline fires at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Frozen when the contact opened.
    pub policy: LadderPolicy,
    /// Index of the next rung to fire (clamped to the last, which repeats).
    pub next_rung: usize,
    /// Steps fired so far.
    pub steps: u64,
    /// When the next step fires; `None` while the contact is with a counsellor.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due: Option<OffsetDateTime>,
    /// Whether the imminent broadcast has fired for this contact.
    pub broadcast: bool,
    /// Steps whose side effects (events, messages, audit records) are
    /// published; a crash between the write and the publish leaves
    /// `announced < steps`, and whoever sees it publishes again (deduplicated).
    pub announced: u64,
    /// Staff who declined this contact during this wait (not offered again).
    pub declined: Vec<CounsellorId>,
    /// Whether the waiting person has been sent the acknowledgement this wait.
    #[serde(default)]
    pub acknowledged: bool,
    /// The most recent steps, newest last (bounded).
    pub trail: Vec<StepRecord>,
}

/// How many steps the trail keeps.
pub const TRAIL_LEN: usize = 32;

impl Escalation {
    /// Whether the ladder has reached "any on call" or beyond, or broadcast
    /// an imminent contact: from then on any on-call counsellor may take it,
    /// whatever their door.
    pub fn open_to_all(&self) -> bool {
        self.broadcast
            || self.trail.iter().any(|s| {
                matches!(
                    s.rung,
                    Some(
                        Rung::AnyOnCall
                            | Rung::Supervisor
                            | Rung::TrustedContact
                            | Rung::BackupLine
                    )
                )
            })
    }

    /// A fresh ladder with its first step due at `now`.
    pub fn start(policy: LadderPolicy, now: OffsetDateTime) -> Self {
        Self {
            policy,
            next_rung: 0,
            steps: 0,
            due: Some(now),
            broadcast: false,
            announced: 0,
            declined: Vec::new(),
            acknowledged: false,
            trail: Vec::new(),
        }
    }

    /// The rung that fires next (the last repeats).
    pub fn next(&self) -> Option<Rung> {
        let last = self.policy.rungs.len().checked_sub(1)?;
        self.policy.rungs.get(self.next_rung.min(last)).copied()
    }

    /// The rungs fired so far (for widening offers to staff who become available).
    pub fn reached(&self) -> &[Rung] {
        let n = self.next_rung.min(self.policy.rungs.len());
        &self.policy.rungs[..n]
    }

    pub fn push_step(&mut self, record: StepRecord) {
        self.trail.push(record);
        if self.trail.len() > TRAIL_LEN {
            self.trail.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ladder_is_open_to_all_from_any_on_call_or_the_broadcast() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut e = Escalation::start(LadderPolicy::default(), now);
        assert!(!e.open_to_all());
        let step = |n, rung| StepRecord {
            step: n,
            rung,
            outcome: StepOutcome::Skipped {
                reason: SkipReason::NobodyEligible,
            },
            at: now,
        };
        e.trail.push(step(1, Some(Rung::Coordinator)));
        e.trail.push(step(2, Some(Rung::DoorOnCall)));
        assert!(!e.open_to_all(), "the door's own staff only");
        e.trail.push(step(3, Some(Rung::AnyOnCall)));
        assert!(e.open_to_all());
        let mut imminent = Escalation::start(LadderPolicy::default(), now);
        imminent.broadcast = true;
        assert!(imminent.open_to_all());
    }

    #[test]
    fn default_policy_is_valid_and_ends_with_the_backup_line() {
        let p = LadderPolicy::default();
        p.validate().unwrap();
        assert_eq!(p.rungs.last(), Some(&Rung::BackupLine));
        assert_eq!(
            p.timeouts.for_risk(RiskLevel::Imminent),
            Duration::from_secs(15)
        );
        assert_eq!(
            p.timeouts.for_risk(RiskLevel::Low),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn a_ladder_that_could_run_out_is_refused() {
        let empty = LadderPolicy {
            rungs: vec![],
            ..LadderPolicy::default()
        };
        assert_eq!(empty.validate(), Err(PolicyError::Empty));
        let tc = LadderPolicy {
            rungs: vec![Rung::Coordinator, Rung::TrustedContact],
            ..LadderPolicy::default()
        };
        assert_eq!(tc.validate(), Err(PolicyError::BadLastRung));
    }

    #[test]
    fn the_last_rung_repeats() {
        let mut e = Escalation::start(
            LadderPolicy::default(),
            time::macros::datetime!(2026-11-24 10:00 UTC),
        );
        assert_eq!(e.next(), Some(Rung::Coordinator));
        e.next_rung = 99;
        assert_eq!(e.next(), Some(Rung::BackupLine));
        assert_eq!(e.reached().len(), 6);
    }
}
