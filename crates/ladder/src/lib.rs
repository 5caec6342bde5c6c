//! The escalation ladder as pure functions of a contact record, the staff
//! on the floor and the time. No I/O: the router and the escalator call
//! these inside the contact record's compare-and-swap, and publish the
//! side effects of the steps they wrote (each with the step's dedupe id).
//!
//! Rules (from `architecture.md`, choices in `docs/adr/0006` and `0007`):
//! - Imminent risk first broadcasts to everyone on call who can take it,
//!   alerts the supervisors and sends the safety message, once per contact.
//! - Then the rungs in order. A rung with nobody eligible is skipped at
//!   once; the trusted-contact rung notifies in parallel and goes on at
//!   once; an offering rung waits its timeout (by risk) for an accept.
//! - Offers accumulate: reaching a rung widens the circle, it does not take
//!   the contact away from those already offered. A decline takes one person
//!   out; when nobody holds an offer any more the next step is due at once.
//! - The last rung repeats after its timeout until someone accepts: the
//!   ladder never runs out. Who is on call is resolved when a step fires.
//! - Priority offers (ADR 0017): a counsellor with k free seats holds offers
//!   of at most k contacts, the most urgent they are eligible for (risk,
//!   then wait); a less urgent one waits until one ahead is taken or a seat
//!   frees, and an offer pushed out of the window by a more urgent arrival
//!   is withdrawn ([`plan`]). The imminent broadcast is exempt: it goes to
//!   everyone on call at once and speaks for their seats first.
//! - The switchboard (ADR 0019): a held contact is offered at every
//!   offering rung to the supervisors on call only; its clock keeps running
//!   and the imminent broadcast is not held back.
//! - A person who left before anyone answered (quick exit, STOP) is in no
//!   queue: no step fires and nobody is offered them until they write again.

pub mod floor;
pub mod oncall;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::directory::Patient;
use nwd_proto::ladder::{Escalation, Rung, SkipReason, StepOutcome, StepRecord};
use nwd_proto::{CounsellorId, RiskLevel};
use time::OffsetDateTime;

pub use floor::{Board, Floor, QueueStats, WaitSamples};

pub use nwd_proto::ladder::TRUSTED_CONTACT_PURPOSE;

/// Whether the contact's next step is due at `now`.
/// Never for a person who left (ADR 0019): nobody is rung for them.
pub fn is_due(rec: &ContactRecord, now: OffsetDateTime) -> bool {
    rec.waiting_since().is_some()
        && rec.left.is_none()
        && rec
            .escalation
            .as_ref()
            .and_then(|e| e.due)
            .is_some_and(|due| due <= now)
}

fn timeout(e: &Escalation, risk: RiskLevel) -> time::Duration {
    time::Duration::try_from(e.policy.timeouts.for_risk(risk)).unwrap_or(time::Duration::MINUTE)
}

/// The patient record of a contact, if known.
pub fn patient<'a>(floor: &'a Floor, rec: &ContactRecord) -> Option<&'a Patient> {
    let id = rec.patient.as_ref()?;
    floor.directory.patients.iter().find(|p| &p.id == id)
}

/// Trusted contacts of the patient, split into those a valid consent
/// covers and those it does not (ids).
pub fn trusted_contacts(floor: &Floor, rec: &ContactRecord) -> (Vec<String>, Vec<String>) {
    let mut covered = Vec::new();
    let mut refused = Vec::new();
    for t in patient(floor, rec).map_or(&[][..], |p| &p.trusted_contacts[..]) {
        let ok = t
            .consent
            .as_ref()
            .is_some_and(|c| c.covers(TRUSTED_CONTACT_PURPOSE, floor.now));
        if ok {
            covered.push(t.id.clone());
        } else {
            refused.push(t.id.clone());
        }
    }
    (covered, refused)
}

/// Fires the due steps of a contact: mutates its state (offers) and its
/// escalation (next rung, step count, next deadline, trail) and returns the
/// steps fired, whose side effects the caller publishes. Returns nothing if
/// no step is due, so a second replica firing the same deadline on the
/// record as re-read changes nothing.
pub fn fire(rec: &mut ContactRecord, floor: &Floor) -> Vec<StepRecord> {
    let now = floor.now;
    if !is_due(rec, now) {
        return Vec::new();
    }
    // Work on a copy; the record keeps its escalation meanwhile, because
    // eligibility reads the declined list and the language wait from it.
    let Some(mut e) = rec.escalation.clone() else {
        return Vec::new();
    };
    let mut fired = Vec::new();
    let mut step = |e: &mut Escalation, rung: Option<Rung>, outcome: StepOutcome| {
        e.steps += 1;
        let r = StepRecord {
            step: e.steps,
            rung,
            outcome,
            at: now,
        };
        e.push_step(r.clone());
        fired.push(r);
    };

    // Imminent: broadcast once, before (and besides) the rungs.
    if rec.risk == RiskLevel::Imminent && e.policy.imminent_broadcast && !e.broadcast {
        let candidates = floor.broadcast_candidates(rec);
        let to: Vec<CounsellorId> = {
            let offered = floor::offered_to(rec);
            candidates
                .into_iter()
                .filter(|s| !offered.contains(&s.id))
                .map(|s| s.id.clone())
                .collect()
        };
        offer(rec, &to);
        e.broadcast = true;
        let alerted = floor.supervisors_on_call();
        step(&mut e, None, StepOutcome::Broadcast { to, alerted });
        e.due = Some(now + timeout(&e, rec.risk));
        rec.escalation = Some(e);
        return fired;
    }

    let fired_before = e.steps > 0;
    climb(rec, floor, &mut e, &mut step);
    // The waiting person hears from the line once per wait: at once if the
    // first pass found nobody to offer, else when the first timeout passes.
    // Not a person who has not written (an outreach the line makes): a
    // queue notice would be the line's first words to them.
    if !e.acknowledged
        && rec.message_count > 0
        && (fired_before || floor::offered_to(rec).is_empty())
    {
        e.acknowledged = true;
        let outcome = StepOutcome::Acknowledged {
            ahead: floor.queue.ahead_of(rec),
            typical_wait_secs: floor
                .queue
                .typical_wait
                .map(|d| d.whole_seconds().max(0) as u64),
        };
        step(&mut e, None, outcome);
    }
    rec.escalation = Some(e);
    fired
}

/// One pass up the rungs from the next one: stops at the first rung that
/// offers to someone (or the backup line); if every rung is skipped, the
/// last one repeats after its timeout.
fn climb(
    rec: &mut ContactRecord,
    floor: &Floor,
    e: &mut Escalation,
    step: &mut impl FnMut(&mut Escalation, Option<Rung>, StepOutcome),
) {
    let now = floor.now;
    for _ in 0..e.policy.rungs.len().max(1) {
        let Some(rung) = e.next() else { break };
        e.next_rung = e.next_rung.saturating_add(1);
        match rung {
            Rung::TrustedContact => {
                let (notified, refused) = trusted_contacts(floor, rec);
                let outcome = if notified.is_empty() && refused.is_empty() {
                    StepOutcome::Skipped {
                        reason: SkipReason::NoTrustedContact,
                    }
                } else {
                    StepOutcome::TrustedContacts { notified, refused }
                };
                step(e, Some(rung), outcome);
            }
            Rung::BackupLine => {
                // Alert the backup line, and offer to anyone eligible under the
                // rungs reached so far who has become free since.
                let to = widen_with(rec, floor, e);
                offer(rec, &to);
                step(e, Some(rung), StepOutcome::BackupAlerted { to });
                e.due = Some(now + timeout(e, rec.risk));
                return;
            }
            offering => {
                let eligible = floor.choose(rec, floor.rung_candidates(offering, rec));
                if eligible.is_empty() {
                    let reason = if offering == Rung::Coordinator
                        && patient(floor, rec)
                            .and_then(|p| p.coordinator.as_ref())
                            .is_none()
                    {
                        SkipReason::NoCoordinator
                    } else {
                        SkipReason::NobodyEligible
                    };
                    step(e, Some(rung), StepOutcome::Skipped { reason });
                    continue;
                }
                // Eligible people whose free seats are spoken for by more
                // urgent contacts are not offered this one yet; the rung
                // still waits its timeout (it is not skipped), and the
                // sweep offers it as soon as a seat is its turn.
                let to = in_windows(rec, floor, eligible);
                offer(rec, &to);
                step(e, Some(rung), StepOutcome::Offered { to });
                e.due = Some(now + timeout(e, rec.risk));
                return;
            }
        }
    }
    e.due = Some(now + timeout(e, rec.risk));
}

fn offer(rec: &mut ContactRecord, to: &[CounsellorId]) {
    if !to.is_empty() {
        // Only waiting/offered contacts reach here (`is_due`), where offering cannot fail.
        let _ = rec.offer(to);
    }
}

/// Staff who may be offered this contact now under the rungs it has already
/// reached (and the broadcast, if it fired) but hold no offer yet: those
/// who became available, got room, or came on call since the step fired,
/// and have a free seat not spoken for by a more urgent offer.
pub fn widen(rec: &ContactRecord, floor: &Floor) -> Vec<CounsellorId> {
    if rec.left.is_some() {
        return Vec::new();
    }
    match (&rec.state, &rec.escalation) {
        (ContactState::Waiting { .. } | ContactState::Offered { .. }, Some(e)) => {
            widen_with(rec, floor, e)
        }
        _ => Vec::new(),
    }
}

/// [`widen`] before the priority windows: everyone eligible under the rungs
/// reached so far (and the broadcast) who holds no offer yet. "Take the
/// next" uses this eligibility, and so does [`plan`].
pub fn eligible(rec: &ContactRecord, floor: &Floor) -> Vec<CounsellorId> {
    if rec.left.is_some() {
        return Vec::new();
    }
    match (&rec.state, &rec.escalation) {
        (ContactState::Waiting { .. } | ContactState::Offered { .. }, Some(e)) => {
            eligible_with(rec, floor, e)
        }
        _ => Vec::new(),
    }
}

/// Whether the contact is in the imminent broadcast (offered to everyone
/// on call at once, outside the priority windows).
pub fn broadcasting(rec: &ContactRecord) -> bool {
    rec.escalation.as_ref().is_some_and(|e| e.broadcast)
}

/// Keeps those whose window admits the contact (everyone, for the broadcast).
fn in_windows(rec: &ContactRecord, floor: &Floor, ids: Vec<CounsellorId>) -> Vec<CounsellorId> {
    if broadcasting(rec) {
        return ids;
    }
    ids.into_iter()
        .filter(|c| floor.in_window(c, rec))
        .collect()
}

fn widen_with(rec: &ContactRecord, floor: &Floor, e: &Escalation) -> Vec<CounsellorId> {
    in_windows(rec, floor, eligible_with(rec, floor, e))
}

fn eligible_with(rec: &ContactRecord, floor: &Floor, e: &Escalation) -> Vec<CounsellorId> {
    let candidates = if e.broadcast {
        floor.broadcast_candidates(rec)
    } else {
        let mut rungs: Vec<Rung> = e.reached().iter().copied().filter(|r| r.offers()).collect();
        // Past the offering rungs (trusted contact, backup line) anyone on
        // call may take it: no wrong doors.
        if e.reached().iter().any(|r| !r.offers()) {
            rungs.push(Rung::AnyOnCall);
        }
        let mut seen = std::collections::HashSet::new();
        rungs
            .into_iter()
            .flat_map(|rung| floor.rung_candidates(rung, rec))
            .filter(|s| seen.insert(&s.id))
            .collect()
    };
    floor.choose(rec, candidates)
}

/// What a pass over the queue should change for one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub contact: nwd_proto::ContactId,
    /// Eligible staff whose window now reaches it: offer it to them.
    pub offer: Vec<CounsellorId>,
    /// Holders who can no longer take it (gone, away, stale, at capacity),
    /// or whose free seats are now spoken for by more urgent contacts.
    pub withdraw: Vec<CounsellorId>,
}

/// The priority offers over the whole queue (ADR 0017). Walks the waiting
/// contacts in serving order (`queue` must be in that order, as
/// [`Board::queued`] gives it), giving each counsellor as many contacts as
/// they have free seats, the most urgent they are eligible for first:
/// - a holder keeps their offer while it is within their seats, and loses
///   it when more urgent contacts (or they themselves) took those seats;
/// - someone eligible who holds no offer gets one when a seat is left;
/// - the imminent broadcast holds for everyone on call who can take it,
///   whatever their seats, and uses them up first.
///
/// Returns only the contacts where something changes.
pub fn plan<'r>(floor: &Floor, queue: impl IntoIterator<Item = &'r ContactRecord>) -> Vec<Planned> {
    let mut seats: std::collections::HashMap<CounsellorId, u32> = std::collections::HashMap::new();
    let mut seat = |who: &CounsellorId, force: bool| -> bool {
        let left = seats.entry(who.clone()).or_insert_with(|| {
            if floor.is_available(who) {
                floor.free_seats(who)
            } else {
                0
            }
        });
        if *left > 0 {
            *left -= 1;
            true
        } else {
            force
        }
    };
    let mut planned = Vec::new();
    for rec in queue {
        let broadcast = broadcasting(rec);
        let mut withdraw = Vec::new();
        for who in floor::offered_to(rec) {
            let can_take = floor.is_available(who) && floor.has_room(who);
            // The broadcast holds whatever the seats (but not for someone
            // who cannot take anything).
            if !seat(who, broadcast && can_take) {
                withdraw.push(who.clone());
            }
        }
        let offer: Vec<CounsellorId> = eligible(rec, floor)
            .into_iter()
            .filter(|who| seat(who, broadcast))
            .collect();
        if !offer.is_empty() || !withdraw.is_empty() {
            planned.push(Planned {
                contact: rec.id,
                offer,
                withdraw,
            });
        }
    }
    planned
}
