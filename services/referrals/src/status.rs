//! How an outreach update moves a referral's Task (the Gravity SDOH
//! Clinical Care referral pattern; see docs/partners.md).
//!
//! `requested` (the gateway) → `accepted` (the outreach is queued) →
//! `in-progress` (a counsellor took it) → a final status from the outcome.
//! Pure: the decision of a compare-and-swap, re-run on every lost race.
//! Transitions never go backwards and a final status is final, so a late
//! or redelivered update changes nothing.

use nwd_proto::referral::{
    OutreachChange, OutreachOutcome, OutreachUpdate, ReferralRecord, TaskStatus,
};

/// Why a referral that was closed without a recorded outcome is `failed`.
pub const NO_OUTCOME_REASON: &str = "closed without a recorded outcome";

/// The final status, and the reason given with it, of an outreach outcome.
pub fn final_status(outcome: OutreachOutcome) -> (TaskStatus, Option<&'static str>) {
    match outcome {
        OutreachOutcome::Reached | OutreachOutcome::ReferredOn => (TaskStatus::Completed, None),
        // The line did its part, but the help was not delivered: `failed`
        // (attempted, not completed) makes the partner follow up; `rejected`
        // is the line refusing the referral, `cancelled` the requester's.
        OutreachOutcome::Declined => (
            TaskStatus::Failed,
            Some("the person was reached and declined help"),
        ),
        OutreachOutcome::NoAnswer => (
            TaskStatus::Failed,
            Some("unable to contact: no answer after the line's attempts"),
        ),
        OutreachOutcome::WrongNumber => (
            TaskStatus::Failed,
            Some("unable to contact: the number does not reach the person"),
        ),
    }
}

/// Rank of a status on the way to a final one: a change may only go up.
fn rank(status: TaskStatus) -> u8 {
    match status {
        TaskStatus::Requested => 0,
        TaskStatus::Received => 1,
        TaskStatus::Accepted => 2,
        TaskStatus::InProgress | TaskStatus::OnHold => 3,
        TaskStatus::Rejected
        | TaskStatus::Failed
        | TaskStatus::Completed
        | TaskStatus::Cancelled => 4,
    }
}

/// The record after `update`, or `None` when the update changes nothing
/// (already applied, late, or after a final status). Every change bumps
/// `version` and sets `last_modified` to the update's time (never earlier
/// than the record's).
pub fn advance(record: &ReferralRecord, update: &OutreachUpdate) -> Option<ReferralRecord> {
    if record.status.is_final() || update.referral_id != record.id {
        return None;
    }
    let mut next = record.clone();
    match &update.change {
        OutreachChange::Queued => next.status = TaskStatus::Accepted,
        OutreachChange::Assigned { .. } => next.status = TaskStatus::InProgress,
        OutreachChange::Outcome { outcome, .. } => {
            let (status, reason) = final_status(*outcome);
            next.status = status;
            next.outcome = Some(*outcome);
            next.status_reason = reason.map(str::to_owned);
        }
        // Resolved after an outcome: the outcome already made it final.
        // Without one, nobody recorded that the person was reached: `failed`
        // with a reason, so the partner follows up rather than assumes.
        OutreachChange::Resolved { .. } => {
            next.status = TaskStatus::Failed;
            next.status_reason = Some(NO_OUTCOME_REASON.to_owned());
        }
    }
    let contact_missing = record.contact_id.is_none();
    if contact_missing {
        next.contact_id = Some(update.contact_id);
    }
    let moved = rank(next.status) > rank(record.status);
    if !moved && !contact_missing {
        return None;
    }
    if !moved {
        // Only the contact id is new (a `Queued` after the record was
        // already accepted by another path): record it, status unchanged.
        next.status = record.status;
        next.outcome = record.outcome;
        next.status_reason = record.status_reason.clone();
    }
    next.version = record.version.saturating_add(1);
    next.last_modified = update.at.max(record.last_modified);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nwd_proto::referral::Priority;
    use nwd_proto::{ContactId, CounsellorId, PartnerId, wire};
    use time::macros::datetime;

    fn record() -> ReferralRecord {
        let partner = PartnerId::parse("county-hospital").unwrap();
        let at = datetime!(2026-12-07 10:00 UTC);
        ReferralRecord {
            id: wire::referral_id(&partner, "msg_1"),
            partner,
            webhook_id: "msg_1".into(),
            body_digest: "00".into(),
            focus: None,
            placer_identifier: None,
            priority: Priority::Stat,
            offer_at: at,
            due_at: at,
            status: TaskStatus::Requested,
            outcome: None,
            status_reason: None,
            contact_id: None,
            version: 1,
            received_at: at,
            last_modified: at,
        }
    }

    fn update(rec: &ReferralRecord, change: OutreachChange, minute: u8) -> OutreachUpdate {
        OutreachUpdate {
            contact_id: ContactId::derived("contact"),
            referral_id: rec.id,
            change,
            at: datetime!(2026-12-07 10:00 UTC) + time::Duration::minutes(minute.into()),
        }
    }

    fn counsellor() -> CounsellorId {
        CounsellorId::parse("c-ana").unwrap()
    }

    #[test]
    fn the_happy_path_accepts_starts_and_completes() {
        let r1 = record();
        let r2 = advance(&r1, &update(&r1, OutreachChange::Queued, 1)).unwrap();
        assert_eq!(r2.status, TaskStatus::Accepted);
        assert_eq!(r2.contact_id, Some(ContactId::derived("contact")));
        assert_eq!(
            (r2.version, r2.last_modified),
            (2, datetime!(2026-12-07 10:01 UTC))
        );
        let r3 = advance(
            &r2,
            &update(
                &r2,
                OutreachChange::Assigned {
                    counsellor: counsellor(),
                },
                2,
            ),
        )
        .unwrap();
        assert_eq!((r3.status, r3.version), (TaskStatus::InProgress, 3));
        let outcome = OutreachChange::Outcome {
            counsellor: counsellor(),
            outcome: OutreachOutcome::Reached,
        };
        let r4 = advance(&r3, &update(&r3, outcome, 3)).unwrap();
        assert_eq!((r4.status, r4.version), (TaskStatus::Completed, 4));
        assert_eq!(r4.outcome, Some(OutreachOutcome::Reached));
        assert_eq!(r4.status_reason, None);
        // Resolved after the outcome changes nothing.
        assert!(
            advance(
                &r4,
                &update(
                    &r4,
                    OutreachChange::Resolved {
                        counsellor: counsellor()
                    },
                    4
                )
            )
            .is_none()
        );
    }

    #[test]
    fn every_outcome_has_its_final_status_and_reason() {
        let cases = [
            (OutreachOutcome::Reached, TaskStatus::Completed, false),
            (OutreachOutcome::ReferredOn, TaskStatus::Completed, false),
            (OutreachOutcome::Declined, TaskStatus::Failed, true),
            (OutreachOutcome::NoAnswer, TaskStatus::Failed, true),
            (OutreachOutcome::WrongNumber, TaskStatus::Failed, true),
        ];
        for (outcome, status, has_reason) in cases {
            let rec = record();
            let change = OutreachChange::Outcome {
                counsellor: counsellor(),
                outcome,
            };
            let next = advance(&rec, &update(&rec, change, 5)).unwrap();
            assert_eq!(next.status, status, "{outcome:?}");
            assert!(next.status.is_final());
            assert_eq!(next.outcome, Some(outcome));
            assert_eq!(next.status_reason.is_some(), has_reason, "{outcome:?}");
            assert_eq!(next.version, 2);
        }
    }

    #[test]
    fn nothing_goes_backwards_and_repeats_change_nothing() {
        let r1 = record();
        let assigned = OutreachChange::Assigned {
            counsellor: counsellor(),
        };
        let r2 = advance(&r1, &update(&r1, assigned.clone(), 2)).unwrap();
        assert_eq!(r2.status, TaskStatus::InProgress);
        // A late Queued after Assigned, and the same Assigned again: nothing.
        assert!(advance(&r2, &update(&r2, OutreachChange::Queued, 1)).is_none());
        assert!(advance(&r2, &update(&r2, assigned.clone(), 2)).is_none());
        let outcome = OutreachChange::Outcome {
            counsellor: counsellor(),
            outcome: OutreachOutcome::NoAnswer,
        };
        let r3 = advance(&r2, &update(&r2, outcome, 3)).unwrap();
        // After a final status: no Assigned, no other outcome, no Resolved.
        assert!(advance(&r3, &update(&r3, assigned, 4)).is_none());
        let other = OutreachChange::Outcome {
            counsellor: counsellor(),
            outcome: OutreachOutcome::Reached,
        };
        assert!(advance(&r3, &update(&r3, other, 4)).is_none());
        assert!(
            advance(
                &r3,
                &update(
                    &r3,
                    OutreachChange::Resolved {
                        counsellor: counsellor()
                    },
                    5
                )
            )
            .is_none()
        );
    }

    #[test]
    fn resolved_without_an_outcome_fails_with_a_reason() {
        let rec = record();
        let next = advance(
            &rec,
            &update(
                &rec,
                OutreachChange::Resolved {
                    counsellor: counsellor(),
                },
                1,
            ),
        )
        .unwrap();
        assert_eq!(next.status, TaskStatus::Failed);
        assert_eq!(next.outcome, None);
        assert_eq!(next.status_reason.as_deref(), Some(NO_OUTCOME_REASON));
    }

    #[test]
    fn an_update_for_another_referral_or_from_the_past_is_safe() {
        let rec = record();
        let mut other = update(&rec, OutreachChange::Queued, 1);
        other.referral_id = wire::referral_id(&rec.partner, "msg_2");
        assert!(advance(&rec, &other).is_none());
        // A clock behind the record's never moves last_modified back.
        let mut late = rec.clone();
        late.last_modified = datetime!(2026-12-07 11:00 UTC);
        let next = advance(&late, &update(&late, OutreachChange::Queued, 1)).unwrap();
        assert_eq!(next.last_modified, datetime!(2026-12-07 11:00 UTC));
    }
}
