//! The ladder with a fake clock: every rule of the module doc, and
//! invariants over random interleavings.
#![allow(clippy::unwrap_used)]

use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::Presence;
use nwd_proto::directory::Consent;
use nwd_proto::ladder::{Rung, SkipReason, StepOutcome};
use nwd_proto::{Language, RiskLevel};
use time::Duration;

use crate::testing::*;
use crate::{fire, is_due, widen};

/// The rungs fired, without the acknowledgements (tested on their own).
fn rungs(steps: &[nwd_proto::ladder::StepRecord]) -> Vec<(Option<Rung>, &StepOutcome)> {
    steps
        .iter()
        .filter(|s| !matches!(s.outcome, StepOutcome::Acknowledged { .. }))
        .map(|s| (s.rung, &s.outcome))
        .collect()
}

fn due(rec: &ContactRecord) -> time::OffsetDateTime {
    rec.escalation.as_ref().unwrap().due.unwrap()
}

#[test]
fn the_coordinator_is_offered_first_when_on_shift_and_free() {
    let dir = directory();
    let f = floor(&dir, &["ana", "ben", "cy", "sam"], NOW);
    let mut rec = contact(RiskLevel::High, Language::Es, Some("maria"), None, NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        rungs(&steps),
        vec![(
            Some(Rung::Coordinator),
            &StepOutcome::Offered {
                to: vec![sid("ana")]
            }
        )]
    );
    assert_eq!(due(&rec), NOW + Duration::seconds(30), "high: 30 s");
    // Firing again at the same instant does nothing: the deadline moved.
    assert!(fire(&mut rec, &f).is_empty());
}

#[test]
fn nobody_answers_every_rung_in_order_then_the_backup_line_repeats() {
    let dir = directory();
    let mut now = NOW;
    // James: no coordinator, programme = hospital, brother without consent.
    let mut rec = contact(
        RiskLevel::Moderate,
        Language::En,
        Some("james"),
        Some("hospital"),
        now,
    );
    let mut trail = Vec::new();
    for _ in 0..6 {
        let f = floor(&dir, &["ana", "ben", "cy", "sam"], now);
        trail.extend(fire(&mut rec, &f));
        now = due(&rec);
    }
    let got = rungs(&trail);
    assert_eq!(
        got,
        vec![
            (
                Some(Rung::Coordinator),
                &StepOutcome::Skipped {
                    reason: SkipReason::NoCoordinator
                }
            ),
            (
                Some(Rung::DoorOnCall),
                &StepOutcome::Offered {
                    to: vec![sid("cy")]
                }
            ),
            (
                Some(Rung::AnyOnCall),
                &StepOutcome::Offered {
                    to: vec![sid("ana"), sid("ben")]
                }
            ),
            (
                Some(Rung::Supervisor),
                &StepOutcome::Offered {
                    to: vec![sid("sam")]
                }
            ),
            (
                Some(Rung::TrustedContact),
                &StepOutcome::TrustedContacts {
                    notified: vec![],
                    refused: vec!["james-brother".into()]
                }
            ),
            (
                Some(Rung::BackupLine),
                &StepOutcome::BackupAlerted { to: vec![] }
            ),
            (
                Some(Rung::BackupLine),
                &StepOutcome::BackupAlerted { to: vec![] }
            ),
            (
                Some(Rung::BackupLine),
                &StepOutcome::BackupAlerted { to: vec![] }
            ),
        ]
    );
    // Step numbers are 1, 2, 3 … with no gap or repeat (the acknowledgement
    // to the person, after the first timeout, is one of them).
    let numbers: Vec<u64> = trail.iter().map(|s| s.step).collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<_>>());
    let acks: Vec<_> = trail
        .iter()
        .filter(|s| matches!(s.outcome, StepOutcome::Acknowledged { .. }))
        .collect();
    assert_eq!(acks.len(), 1, "one acknowledgement per wait");
    assert_eq!(
        acks[0].at,
        NOW + Duration::seconds(60),
        "after the first timeout"
    );
    // Offers accumulated: everyone reached still holds the offer.
    assert!(matches!(&rec.state, ContactState::Offered { to, .. } if to.len() == 4));
}

#[test]
fn a_door_with_nobody_on_call_goes_to_another_partners_counsellor() {
    let dir = directory();
    // cy (the hospital's only counsellor) is not available.
    let f = floor(&dir, &["ben"], NOW);
    let mut rec = contact(RiskLevel::High, Language::En, None, Some("hospital"), NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        rungs(&steps),
        vec![
            (
                Some(Rung::Coordinator),
                &StepOutcome::Skipped {
                    reason: SkipReason::NoCoordinator
                }
            ),
            (
                Some(Rung::DoorOnCall),
                &StepOutcome::Skipped {
                    reason: SkipReason::NobodyEligible
                }
            ),
            (
                Some(Rung::AnyOnCall),
                &StepOutcome::Offered {
                    to: vec![sid("ben")]
                }
            ),
        ]
    );
}

#[test]
fn off_shift_staff_are_not_on_call() {
    let mut dir = directory();
    // cy works 09:00–17:00 Chicago; 10:00 UTC is 04:00 there.
    dir.staff[2].shifts = vec![shift(
        &["mon", "tue", "wed", "thu", "fri"],
        "09:00",
        "17:00",
    )];
    let f = floor(&dir, &["cy", "ben"], NOW);
    let mut rec = contact(RiskLevel::Low, Language::En, None, Some("hospital"), NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        *rungs(&steps).last().unwrap().1,
        StepOutcome::Offered {
            to: vec![sid("ben")]
        }
    );
}

#[test]
fn trusted_contacts_only_with_a_valid_consent() {
    let mut dir = directory();
    let mut rec = contact(RiskLevel::Low, Language::Es, Some("maria"), None, NOW);
    rec.escalation.as_mut().unwrap().next_rung = 4; // the trusted-contact rung
    let f = floor(&dir, &[], NOW);
    let steps = fire(&mut rec.clone(), &f);
    assert_eq!(
        steps[0].outcome,
        StepOutcome::TrustedContacts {
            notified: vec!["maria-sister".into()],
            refused: vec![]
        }
    );
    // Revoked yesterday: refused (and recorded by the caller).
    let consent: &mut Consent = dir.patients[0].trusted_contacts[0]
        .consent
        .as_mut()
        .unwrap();
    consent.revoked_at = Some(NOW - Duration::days(1));
    let f = floor(&dir, &[], NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        steps[0].outcome,
        StepOutcome::TrustedContacts {
            notified: vec![],
            refused: vec!["maria-sister".into()]
        }
    );
    // Never the last word: the backup line follows at once.
    assert_eq!(steps[1].rung, Some(Rung::BackupLine));
}

#[test]
fn imminent_broadcasts_once_then_climbs_with_short_timeouts() {
    let dir = directory();
    let f = floor(&dir, &["ana", "ben", "cy", "sam"], NOW);
    let mut rec = contact(RiskLevel::Imminent, Language::En, Some("maria"), None, NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        steps[0].outcome,
        StepOutcome::Broadcast {
            to: vec![sid("ana"), sid("ben"), sid("cy"), sid("sam")],
            alerted: vec![sid("sam")],
        }
    );
    assert_eq!(due(&rec), NOW + Duration::seconds(15));
    let later = floor(&dir, &["ana", "ben", "cy", "sam"], due(&rec));
    let steps = fire(&mut rec, &later);
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s.outcome, StepOutcome::Broadcast { .. }))
    );
    assert_eq!(
        rec.escalation
            .as_ref()
            .unwrap()
            .trail
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::Broadcast { .. }))
            .count(),
        1
    );
}

#[test]
fn rising_to_imminent_while_waiting_broadcasts_at_once() {
    let dir = directory();
    let mut rec = contact(RiskLevel::Low, Language::En, None, None, NOW);
    fire(&mut rec, &floor(&dir, &["ben"], NOW));
    assert_eq!(due(&rec), NOW + Duration::seconds(120));
    let later = NOW + Duration::seconds(5);
    let msg = nwd_proto::events::MessageTriaged {
        message: nwd_proto::events::ContactMessage {
            contact_id: rec.id,
            message_id: nwd_proto::MessageId::new(),
            channel: rec.channel.clone(),
            door: None,
            patient: None,
            body: "x".into(),
            received_at: later,
            opens_contact: false,
            previous: None,
            quick_exit: false,
        },
        assessment: nwd_proto::Assessment {
            level: RiskLevel::Imminent,
            score: 0.9,
            reasons: vec![],
            lang: Language::En,
            rulebook_version: "t".into(),
        },
    };
    rec.apply_message(&msg);
    assert_eq!(due(&rec), later);
    let steps = fire(&mut rec, &floor(&dir, &["ben", "cy"], later));
    assert!(
        matches!(&steps[0].outcome, StepOutcome::Broadcast { to, .. } if to == &vec![sid("cy")])
    );
}

#[test]
fn spanish_speakers_first_then_anyone_after_the_language_wait() {
    let dir = directory();
    let f = floor(&dir, &["ana", "ben"], NOW);
    let mut rec = contact(RiskLevel::Moderate, Language::Es, None, Some("clinic"), NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        *rungs(&steps).last().unwrap().1,
        StepOutcome::Offered {
            to: vec![sid("ana")]
        }
    );
    assert!(
        widen(&rec, &f).is_empty(),
        "ben waits for the language window"
    );
    let after = floor(&dir, &["ana", "ben"], NOW + Duration::seconds(10));
    assert_eq!(widen(&rec, &after), vec![sid("ben")]);
    // Nobody speaks it: anyone at once.
    let f = floor(&dir, &["ben"], NOW);
    let mut rec = contact(RiskLevel::Moderate, Language::Es, None, Some("clinic"), NOW);
    assert_eq!(
        fire(&mut rec, &f).last().unwrap().outcome,
        StepOutcome::Offered {
            to: vec![sid("ben")]
        }
    );
}

#[test]
fn someone_becoming_available_is_offered_what_they_are_eligible_for() {
    let dir = directory();
    let mut rec = contact(RiskLevel::High, Language::En, None, Some("hospital"), NOW);
    let steps = fire(&mut rec, &floor(&dir, &["cy"], NOW));
    assert_eq!(rungs(&steps).last().unwrap().0, Some(Rung::DoorOnCall));
    // ben (clinic) is not on the door rung: not offered until AnyOnCall.
    let f = floor(&dir, &["cy", "ben"], NOW + Duration::seconds(1));
    assert!(widen(&rec, &f).is_empty());
    let later = due(&rec);
    fire(&mut rec, &floor(&dir, &["cy"], later));
    let f = floor(&dir, &["cy", "ben"], later + Duration::seconds(1));
    assert_eq!(widen(&rec, &f), vec![sid("ben")]);
}

#[test]
fn a_decline_by_the_last_holder_moves_on_at_once() {
    let dir = directory();
    let f = floor(&dir, &["cy", "ben"], NOW);
    let mut rec = contact(RiskLevel::Low, Language::En, None, Some("hospital"), NOW);
    fire(&mut rec, &f);
    let declined_at = NOW + Duration::seconds(3);
    rec.escalation.as_mut().unwrap().declined.push(sid("cy"));
    rec.withdraw(&sid("cy"), declined_at).unwrap();
    assert!(is_due(&rec, declined_at));
    let steps = fire(&mut rec, &floor(&dir, &["cy", "ben"], declined_at));
    assert_eq!(
        *rungs(&steps).last().unwrap().1,
        StepOutcome::Offered {
            to: vec![sid("ben")]
        }
    );
    // Accept stops the ladder.
    rec.accept(&sid("ben"), declined_at).unwrap();
    assert_eq!(rec.escalation.as_ref().unwrap().due, None);
    assert!(!is_due(&rec, declined_at + Duration::days(1)));
}

#[test]
fn stale_heartbeats_and_capacity_take_people_out() {
    let dir = directory();
    let mut f = floor(&dir, &["ben"], NOW);
    f.presence.insert(
        sid("cy"),
        presence("cy", Presence::Available, NOW - Duration::seconds(16)).1,
    );
    f.load.insert(sid("ben"), 1);
    let mut rec = contact(RiskLevel::Low, Language::En, None, Some("hospital"), NOW);
    let steps = fire(&mut rec, &f);
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s.outcome, StepOutcome::Offered { .. }))
    );
    // Every rung skipped: the last repeats after its timeout, never "done".
    assert_eq!(due(&rec), NOW + Duration::seconds(120));
}

#[test]
fn the_acknowledgement_says_how_many_are_ahead_and_the_typical_wait() {
    let dir = directory();
    let mut f = floor(&dir, &[], NOW);
    let mut rec = contact(RiskLevel::Moderate, Language::En, None, None, NOW);
    let older_high = (
        RiskLevel::High,
        NOW + Duration::seconds(5),
        nwd_proto::ContactId::new(),
    );
    let earlier_moderate = (
        RiskLevel::Moderate,
        NOW - Duration::seconds(30),
        nwd_proto::ContactId::new(),
    );
    let later_low = (
        RiskLevel::Low,
        NOW - Duration::seconds(90),
        nwd_proto::ContactId::new(),
    );
    f.queue.waiting = [
        older_high,
        earlier_moderate,
        later_low,
        (rec.risk, NOW, rec.id),
    ]
    .into_iter()
    .map(|(risk, at, id)| (std::cmp::Reverse(risk), at, id))
    .collect();
    f.queue.typical_wait = Some(Duration::seconds(240));
    // Nobody to offer it to: the person hears at once.
    let steps = fire(&mut rec, &f);
    assert_eq!(
        steps.last().unwrap().outcome,
        StepOutcome::Acknowledged {
            ahead: 2,
            typical_wait_secs: Some(240)
        }
    );
    // Once per wait.
    let later = floor(&dir, &[], due(&rec));
    assert!(
        fire(&mut rec, &later)
            .iter()
            .all(|s| !matches!(s.outcome, StepOutcome::Acknowledged { .. }))
    );
}

#[test]
fn wait_samples_keep_the_recent_median() {
    let mut w = crate::WaitSamples::default();
    assert_eq!(w.median(), None);
    for s in [10, 500, 20, 30, 40] {
        w.record(Duration::seconds(s));
    }
    assert_eq!(w.median(), Some(Duration::seconds(30)));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Act {
        Tick(u16),
        Accept(usize),
        Decline(usize),
        Disconnect(usize),
        Message(u8),
        Restart,
        Fire,
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            (1u16..200).prop_map(Act::Tick),
            (0usize..4).prop_map(Act::Accept),
            (0usize..4).prop_map(Act::Decline),
            (0usize..4).prop_map(Act::Disconnect),
            (0u8..4).prop_map(Act::Message),
            Just(Act::Restart),
            Just(Act::Fire),
        ]
    }

    const STAFF: [&str; 4] = ["ana", "ben", "cy", "sam"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn ladder_invariants_hold_under_any_interleaving(
            acts in proptest::collection::vec(act(), 1..60),
            patient in prop_oneof![Just(Some("maria")), Just(Some("james")), Just(None)],
            // An outreach scheduled this many seconds ahead, or an inbound contact.
            outreach_in in prop_oneof![Just(None), (1i64..600).prop_map(Some)],
        ) {
            let dir = directory();
            let mut now = NOW;
            let mut online: Vec<&str> = STAFF.to_vec();
            let mut rec = match outreach_in {
                Some(s) => super::outreach(now + Duration::seconds(s)),
                None => contact(RiskLevel::Low, Language::En, patient, Some("clinic"), now),
            };
            let offer_at = rec.outreach.as_ref().map(|o| o.offer_at);
            let mut seen_steps = std::collections::HashSet::new();
            let mut max_risk = rec.risk;
            for a in acts {
                match a {
                    Act::Tick(s) => now += Duration::seconds(i64::from(s)),
                    Act::Accept(i) => { let _ = rec.accept(&sid(STAFF[i]), now); }
                    Act::Decline(i) => {
                        if rec.withdraw(&sid(STAFF[i]), now).is_ok() {
                            rec.escalation.as_mut().unwrap().declined.push(sid(STAFF[i]));
                        }
                    }
                    Act::Disconnect(i) => {
                        online.retain(|w| *w != STAFF[i]);
                        let _ = rec.withdraw(&sid(STAFF[i]), now);
                    }
                    Act::Message(r) => {
                        let level = RiskLevel::ALL[usize::from(r)];
                        let ev = nwd_proto::events::MessageTriaged {
                            message: nwd_proto::events::ContactMessage {
                                contact_id: rec.id,
                                message_id: nwd_proto::MessageId::new(),
                                channel: rec.channel.clone(),
                                door: None, patient: None, body: "x".into(),
                                received_at: now, opens_contact: false, previous: None, quick_exit: false,
                            },
                            assessment: nwd_proto::Assessment {
                                level, score: 0.5, reasons: vec![], lang: Language::En,
                                rulebook_version: "t".into(),
                            },
                        };
                        rec.apply_message(&ev);
                    }
                    Act::Restart => {
                        // What a restarted replica reads back from KV.
                        let json = serde_json::to_vec(&rec).unwrap();
                        rec = serde_json::from_slice(&json).unwrap();
                    }
                    Act::Fire => {}
                }
                let f = floor(&dir, &online, now);
                let fired = fire(&mut rec, &f);
                if let Some(at) = offer_at
                    && rec.message_count == 0
                {
                    // An outreach nobody has written to fires nothing before
                    // its time, and never a queue notice.
                    prop_assert!(fired.is_empty() || now >= at, "fired before offer_at");
                    prop_assert!(rec.scheduled() == (rec.escalation.as_ref().unwrap().steps == 0
                        && rec.waiting_since().is_some()));
                    for s in &fired {
                        let notice = matches!(s.outcome, StepOutcome::Acknowledged { .. });
                        prop_assert!(!notice, "a queue notice to someone who did not write");
                    }
                }
                for s in &fired {
                    // No step runs twice.
                    prop_assert!(seen_steps.insert(s.step), "step {} fired twice", s.step);
                    // No disclosure without a consent that covers it.
                    if let StepOutcome::TrustedContacts { notified, .. } = &s.outcome {
                        for t in notified {
                            prop_assert_eq!(t, "maria-sister");
                        }
                    }
                }
                // Risk never drops without a counsellor.
                prop_assert!(rec.risk >= max_risk);
                max_risk = rec.risk;
                // Every contact in the queue has a next deadline; an assigned one none.
                let e = rec.escalation.as_ref().unwrap();
                match &rec.state {
                    ContactState::Waiting { .. } | ContactState::Offered { .. } => {
                        prop_assert!(e.due.is_some(), "a waiting contact without a deadline");
                        prop_assert!(e.due.unwrap() > now, "a deadline in the past not fired");
                    }
                    ContactState::Assigned { .. } => prop_assert!(e.due.is_none()),
                    ContactState::Resolved { .. } => {}
                }
                // Nobody declined holds an offer.
                if let ContactState::Offered { to, .. } = &rec.state {
                    for d in &e.declined {
                        prop_assert!(!to.contains(d));
                    }
                }
            }
        }
    }
}

mod board {
    use super::*;
    use crate::Board;
    use crate::floor::{load, queue, queue_depth};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Change {
        Offer(usize, usize),
        Accept(usize, usize),
        Withdraw(usize, usize),
        Requeue(usize),
        Resolve(usize),
        Delete(usize),
        /// A stale read of the contact arrives late (an older revision).
        Stale(usize),
    }

    fn change() -> impl Strategy<Value = Change> {
        let c = 0usize..6;
        let s = 0usize..3;
        prop_oneof![
            (c.clone(), s.clone()).prop_map(|(c, s)| Change::Offer(c, s)),
            (c.clone(), s.clone()).prop_map(|(c, s)| Change::Accept(c, s)),
            (c.clone(), s).prop_map(|(c, s)| Change::Withdraw(c, s)),
            c.clone().prop_map(Change::Requeue),
            c.clone().prop_map(Change::Resolve),
            c.clone().prop_map(Change::Delete),
            c.prop_map(Change::Stale),
        ]
    }

    const STAFF: [&str; 3] = ["ana", "ben", "cy"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever happens to the contacts, the board's load, queue order
        /// and depth equal what a pass over every open contact computes.
        #[test]
        fn the_board_equals_a_recount_after_any_changes(
            risks in proptest::collection::vec(0usize..4, 6),
            changes in proptest::collection::vec(change(), 0..80),
        ) {
            let mut truth: Vec<Option<(ContactRecord, u64)>> = risks
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let at = NOW + Duration::seconds(i as i64 % 3);
                    // The last is an outreach scheduled for later: in no queue
                    // until its ladder starts.
                    let rec = if i == 5 {
                        super::outreach(NOW + Duration::hours(1))
                    } else {
                        contact(RiskLevel::ALL[*r], Language::En, None, None, at)
                    };
                    Some((rec, 1))
                })
                .collect();
            let mut board = Board::default();
            for (rec, rev) in truth.iter().flatten() {
                board.put(rec.clone(), *rev);
            }
            let mut now = NOW;
            for ch in changes {
                now += Duration::seconds(1);
                let i = match &ch {
                    Change::Offer(i, _) | Change::Accept(i, _) | Change::Withdraw(i, _)
                    | Change::Requeue(i) | Change::Resolve(i) | Change::Delete(i)
                    | Change::Stale(i) => *i,
                };
                let Some((rec, rev)) = truth[i].clone() else { continue };
                let mut next = rec.clone();
                match ch {
                    Change::Offer(_, s) => { let _ = next.offer(&[sid(STAFF[s])]); }
                    Change::Accept(_, s) => { let _ = next.accept(&sid(STAFF[s]), now); }
                    Change::Withdraw(_, s) => { let _ = next.withdraw(&sid(STAFF[s]), now); }
                    Change::Requeue(_) => { next.requeue(now); }
                    Change::Resolve(_) => {
                        if let Some(who) = next.assigned_to().cloned() {
                            let _ = next.resolve(&who, now);
                        }
                    }
                    Change::Delete(_) => {
                        board.remove(&rec.id);
                        truth[i] = None;
                        continue;
                    }
                    Change::Stale(_) => {
                        // An older revision never replaces a newer one.
                        let mut old = rec.clone();
                        let _ = old.offer(&[sid("stale")]);
                        prop_assert!(rev == 1 || !board.put(old, rev - 1));
                        if rev == 1 { board.put(rec.clone(), rev); }
                        continue;
                    }
                }
                prop_assert!(board.put(next.clone(), rev + 1));
                truth[i] = next.is_open().then_some((next, rev + 1));
                let open: Vec<&ContactRecord> = truth.iter().flatten().map(|(r, _)| r).collect();
                prop_assert_eq!(&board.floor(std::sync::Arc::new(directory()), now, STALE).load, &load(open.iter().copied()));
                let ids: Vec<nwd_proto::ContactId> = queue(open.iter().copied()).iter().map(|r| r.id).collect();
                prop_assert_eq!(board.queue(), ids);
                prop_assert_eq!(board.depth(), queue_depth(open.iter().copied()));
                let floor = board.floor(std::sync::Arc::new(directory()), now, STALE);
                for (pos, r) in queue(open.iter().copied()).into_iter().enumerate() {
                    prop_assert_eq!(floor.queue.ahead_of(r) as usize, pos);
                }
                // The offers each counsellor holds (priority windows).
                let mut held: std::collections::HashMap<nwd_proto::CounsellorId, Vec<nwd_proto::ContactId>> =
                    std::collections::HashMap::new();
                for r in queue(open.iter().copied()) {
                    for who in crate::floor::offered_to(r) {
                        held.entry(who.clone()).or_default().push(r.id);
                    }
                }
                let board_held: std::collections::HashMap<nwd_proto::CounsellorId, Vec<nwd_proto::ContactId>> = floor
                    .held
                    .iter()
                    .map(|(who, keys)| (who.clone(), keys.iter().map(|k| k.2).collect()))
                    .collect();
                prop_assert_eq!(board_held, held);
            }
        }
    }

    #[test]
    fn a_contact_answered_from_the_queue_adds_its_wait() {
        let mut board = Board::default();
        let mut rec = contact(RiskLevel::High, Language::En, None, None, NOW);
        board.put(rec.clone(), 1);
        rec.offer(&[sid("ana")]).unwrap();
        board.put(rec.clone(), 2);
        rec.accept(&sid("ana"), NOW + Duration::seconds(40))
            .unwrap();
        board.put(rec.clone(), 3);
        let floor = board.floor(std::sync::Arc::new(directory()), NOW, STALE);
        assert_eq!(floor.queue.typical_wait, Some(Duration::seconds(40)));
        assert_eq!(floor.load.get(&sid("ana")), Some(&1));
        assert_eq!(board.waiting(), 0);
    }
}

/// An outreach (a partner's referral): scheduled for `offer_at`, through a
/// door (a prison) that has nobody on call.
fn outreach(offer_at: time::OffsetDateTime) -> ContactRecord {
    use nwd_proto::referral::{OutreachOpened, Priority};
    let ev = OutreachOpened {
        contact_id: nwd_proto::ContactId::new(),
        referral_id: nwd_proto::ReferralId::new(),
        channel: nwd_proto::events::Channel::Sms {
            patient: nwd_proto::Address::parse("+15005550160"),
            line: nwd_proto::Address::parse("+15005550100"),
        },
        door: pid("prison"),
        patient: None,
        patient_name: None,
        lang: Language::En,
        priority: Priority::Urgent,
        offer_at,
        due_at: offer_at + Duration::hours(4),
        reason: None,
        received_at: NOW,
    };
    let mut rec = ContactRecord::open_outreach(&ev);
    rec.escalation = Some(nwd_proto::ladder::Escalation::start(
        nwd_proto::ladder::LadderPolicy::default(),
        offer_at,
    ));
    rec
}

#[test]
fn an_outreach_is_offered_to_nobody_before_its_time() {
    let dir = directory();
    let release = NOW + Duration::hours(6);
    let mut rec = outreach(release);
    let f = floor(&dir, &["ana", "ben", "cy"], NOW);
    assert!(!is_due(&rec, NOW));
    assert!(fire(&mut rec, &f).is_empty());
    assert!(
        widen(&rec, &f).is_empty(),
        "no rung reached: nobody to widen to"
    );
    assert_eq!(crate::floor::queue_key(&rec), None, "in no queue yet");
    assert!(crate::floor::queue([&rec]).is_empty());
    assert_eq!(
        crate::floor::queue_depth([&rec])
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        0
    );
    let at_release = floor(&dir, &["ana", "ben", "cy"], release);
    assert!(is_due(&rec, release));
    assert!(!fire(&mut rec, &at_release).is_empty());
    assert!(
        crate::floor::queue_key(&rec).is_some(),
        "queued once its ladder started"
    );
}

#[test]
fn an_outreach_through_a_door_with_nobody_on_call_goes_to_any_on_call_counsellor() {
    let dir = directory();
    let mut rec = outreach(NOW);
    let f = floor(&dir, &["ben", "cy"], NOW);
    let steps = fire(&mut rec, &f);
    assert_eq!(
        rungs(&steps),
        vec![
            (
                Some(Rung::Coordinator),
                &StepOutcome::Skipped {
                    reason: SkipReason::NoCoordinator
                }
            ),
            (
                Some(Rung::DoorOnCall),
                &StepOutcome::Skipped {
                    reason: SkipReason::NobodyEligible
                }
            ),
            (
                Some(Rung::AnyOnCall),
                &StepOutcome::Offered {
                    to: vec![sid("ben"), sid("cy")]
                }
            ),
        ]
    );
    // The person has not written: the line's first words are never a queue notice.
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s.outcome, StepOutcome::Acknowledged { .. }))
    );
    let nobody = floor(&dir, &[], NOW);
    let mut alone = outreach(NOW);
    let steps = fire(&mut alone, &nobody);
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s.outcome, StepOutcome::Acknowledged { .. }))
    );
}

/// Priority offers (ADR 0017): a counsellor's free seats go to the most
/// urgent contacts they are eligible for; the imminent broadcast stays.
mod priority {
    use std::sync::Arc;

    use nwd_proto::ContactId;
    use nwd_proto::directory::Directory;
    use proptest::prelude::*;

    use super::*;
    use crate::{Board, Floor, Planned, broadcasting, eligible};

    /// A line at one instant: the board as the router keeps it.
    struct Line {
        board: Board,
        dir: Arc<Directory>,
        now: time::OffsetDateTime,
        rev: u64,
    }

    impl Line {
        fn new(available: &[&str]) -> Self {
            let mut line = Self {
                board: Board::default(),
                dir: Arc::new(directory()),
                now: NOW,
                rev: 0,
            };
            for who in available {
                line.available(who);
            }
            line
        }

        fn available(&mut self, who: &str) {
            let (id, p) = presence(who, Presence::Available, self.now);
            self.board.set_presence(id, Some(p));
        }

        fn floor(&self) -> Floor {
            self.board.floor(self.dir.clone(), self.now, STALE)
        }

        fn put(&mut self, rec: ContactRecord) {
            self.rev += 1;
            self.board.put(rec, self.rev);
        }

        fn get(&self, id: ContactId) -> ContactRecord {
            self.board.get(&id).unwrap().clone()
        }

        /// A contact opens at the clinic's door and its first step fires.
        fn arrive(&mut self, risk: RiskLevel) -> (ContactId, Vec<nwd_proto::ladder::StepRecord>) {
            self.now += Duration::seconds(1);
            let mut rec = contact(risk, Language::En, None, Some("clinic"), self.now);
            let steps = fire(&mut rec, &self.floor());
            let id = rec.id;
            self.put(rec);
            (id, steps)
        }

        /// One pass of the queue, applied as the router applies it.
        fn sweep(&mut self) -> Vec<Planned> {
            let plan = self.board.plan(&self.floor());
            for p in &plan {
                let mut rec = self.get(p.contact);
                for who in &p.withdraw {
                    rec.withdraw(who, self.now).unwrap();
                }
                if !p.offer.is_empty() {
                    rec.offer(&p.offer).unwrap();
                }
                self.put(rec);
            }
            self.check();
            plan
        }

        fn accept(&mut self, id: ContactId, who: &str) {
            let mut rec = self.get(id);
            rec.accept(&sid(who), self.now).unwrap();
            self.put(rec);
        }

        fn offered(&self, id: ContactId) -> Vec<&str> {
            let mut to: Vec<&str> = crate::floor::offered_to(self.board.get(&id).unwrap())
                .iter()
                .map(|c| c.as_str())
                .collect();
            to.sort_unstable();
            to
        }

        /// The invariants after a pass: nobody holds more non-broadcast
        /// offers than their seats allow, a second pass changes nothing,
        /// and a contact offered to nobody has every eligible counsellor's
        /// seats spoken for by more urgent contacts.
        fn check(&self) {
            let floor = self.floor();
            assert_eq!(
                self.board.plan(&floor),
                vec![],
                "a second pass changes nothing"
            );
            for rec in self.board.queued() {
                for who in crate::floor::offered_to(rec) {
                    assert!(
                        broadcasting(rec) || floor.in_window(who, rec),
                        "{who} holds an offer beyond their seats"
                    );
                }
                if crate::floor::offered_to(rec).is_empty() {
                    for who in eligible(rec, &floor) {
                        assert!(
                            floor.held_ahead(&who, rec) >= floor.free_seats(&who) as usize,
                            "{who} has a free seat and is not offered {}",
                            rec.id
                        );
                    }
                }
            }
        }
    }

    /// ana (2 seats) holding one conversation: one free seat.
    fn one_conversation(line: &mut Line, who: &str) {
        let (id, _) = line.arrive(RiskLevel::Low);
        let mut rec = line.get(id);
        if !matches!(rec.state, ContactState::Offered { .. }) {
            rec.offer(&[sid(who)]).unwrap();
        }
        rec.accept(&sid(who), line.now).unwrap();
        line.put(rec);
    }

    #[test]
    fn one_free_seat_is_offered_only_the_most_urgent_and_then_the_next() {
        let mut line = Line::new(&[]);
        let (low, _) = line.arrive(RiskLevel::Low);
        let (moderate, _) = line.arrive(RiskLevel::Moderate);
        let (high, _) = line.arrive(RiskLevel::High);
        line.available("ben");
        line.sweep();
        assert_eq!(line.offered(high), vec!["ben"]);
        assert!(line.offered(moderate).is_empty(), "ben has one seat");
        assert!(line.offered(low).is_empty());

        // ana comes with one seat free: the high is the top of hers too.
        line.available("ana");
        one_conversation(&mut line, "ana");
        line.sweep();
        assert_eq!(line.offered(high), vec!["ana", "ben"]);
        assert!(line.offered(moderate).is_empty());

        // ben takes it: ana's seat goes to the moderate, still not the low.
        line.accept(high, "ben");
        line.sweep();
        assert_eq!(line.offered(moderate), vec!["ana"]);
        assert!(line.offered(low).is_empty());
    }

    #[test]
    fn a_lower_offer_is_withdrawn_when_a_more_urgent_contact_needs_the_seat() {
        let mut line = Line::new(&["ben"]);
        let (low, _) = line.arrive(RiskLevel::Low);
        assert_eq!(line.offered(low), vec!["ben"]);
        let (high, _) = line.arrive(RiskLevel::High);
        assert_eq!(line.offered(high), vec!["ben"], "offered as it opens");
        let plan = line.sweep();
        assert_eq!(
            plan,
            vec![Planned {
                contact: low,
                offer: vec![],
                withdraw: vec![sid("ben")],
            }]
        );
        assert!(line.offered(low).is_empty());
        // ben declines the high: his seat goes back to the low.
        let mut rec = line.get(high);
        rec.escalation.as_mut().unwrap().declined.push(sid("ben"));
        rec.withdraw(&sid("ben"), line.now).unwrap();
        line.put(rec);
        line.sweep();
        assert_eq!(line.offered(low), vec!["ben"]);
    }

    #[test]
    fn with_seats_for_everyone_every_contact_is_offered() {
        let mut line = Line::new(&["ana", "ben"]);
        let (low, _) = line.arrive(RiskLevel::Low);
        let (high, _) = line.arrive(RiskLevel::High);
        line.sweep();
        assert_eq!(line.offered(high), vec!["ana", "ben"]);
        assert_eq!(line.offered(low), vec!["ana"], "ana's second seat");
    }

    #[test]
    fn a_new_contact_behind_full_seats_waits_its_rung_instead_of_skipping_it() {
        let mut line = Line::new(&["ben"]);
        let (high, _) = line.arrive(RiskLevel::High);
        assert_eq!(line.offered(high), vec!["ben"]);
        let (moderate, steps) = line.arrive(RiskLevel::Moderate);
        assert_eq!(
            rungs(&steps).last().copied(),
            Some((Some(Rung::DoorOnCall), &StepOutcome::Offered { to: vec![] })),
            "ben is eligible but his seat is the high's"
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s.outcome, StepOutcome::Acknowledged { .. })),
            "the person hears they are in the queue"
        );
        assert!(line.offered(moderate).is_empty());
        assert_eq!(
            line.get(moderate).escalation.unwrap().due,
            Some(line.now + Duration::seconds(60)),
            "the door rung waits its timeout"
        );
    }

    #[test]
    fn the_imminent_broadcast_goes_to_everyone_and_takes_their_seats_first() {
        let mut line = Line::new(&["ana", "ben"]);
        let (moderate, _) = line.arrive(RiskLevel::Moderate);
        let (low, _) = line.arrive(RiskLevel::Low);
        assert_eq!(line.offered(moderate), vec!["ana", "ben"]);
        let (imminent, steps) = line.arrive(RiskLevel::Imminent);
        assert!(matches!(
            &steps[0].outcome,
            StepOutcome::Broadcast { to, .. } if to.len() == 2
        ));
        assert_eq!(line.offered(imminent), vec!["ana", "ben"]);
        line.sweep();
        assert_eq!(line.offered(imminent), vec!["ana", "ben"]);
        assert_eq!(
            line.offered(moderate),
            vec!["ana"],
            "ben's one seat is the imminent's"
        );
        assert!(
            line.offered(low).is_empty(),
            "ana's two seats are spoken for"
        );
        // A second imminent is broadcast too, though every seat is spoken for.
        let (second, _) = line.arrive(RiskLevel::Imminent);
        assert_eq!(line.offered(second), vec!["ana", "ben"]);
        line.sweep();
        assert_eq!(line.offered(second), vec!["ana", "ben"]);
        assert!(line.offered(moderate).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Act {
        Arrive(usize),
        Available(usize),
        Accept(usize, usize),
        Sweep,
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            (0usize..4).prop_map(Act::Arrive),
            (0usize..3).prop_map(Act::Available),
            (0usize..12, 0usize..3).prop_map(|(c, s)| Act::Accept(c, s)),
            Just(Act::Sweep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever arrives and whoever accepts, after a pass no seat is
        /// free while an eligible contact is offered to nobody, nobody holds
        /// offers beyond their seats (but the broadcast), and a second pass
        /// changes nothing ([`Line::check`]).
        #[test]
        fn after_any_pass_no_free_seat_is_left_without_the_most_urgent_offer(
            acts in proptest::collection::vec(act(), 1..40),
        ) {
            const STAFF: [&str; 3] = ["ana", "ben", "cy"];
            let mut line = Line::new(&[]);
            let mut ids: Vec<ContactId> = Vec::new();
            for a in acts {
                match a {
                    Act::Arrive(r) => ids.push(line.arrive(RiskLevel::ALL[r]).0),
                    Act::Available(s) => line.available(STAFF[s]),
                    Act::Accept(c, s) => {
                        let Some(id) = ids.get(c).copied() else { continue };
                        let who = sid(STAFF[s]);
                        let rec = line.get(id);
                        if crate::floor::offered_to(&rec).contains(&who)
                            && line.floor().has_room(&who)
                        {
                            line.accept(id, STAFF[s]);
                        }
                    }
                    Act::Sweep => { line.sweep(); }
                }
            }
            line.sweep();
        }
    }
}

/// The switchboard and follow-ups (ADR 0019).
mod handovers {
    use super::*;
    use crate::{Board, eligible, plan};
    use nwd_proto::handover::LeftHow;

    #[test]
    fn a_held_contact_is_offered_only_to_supervisors_and_its_clock_keeps_running() {
        let dir = directory();
        let f = floor(&dir, &["ana", "ben", "cy", "sam"], NOW);
        let mut rec = contact(RiskLevel::High, Language::En, None, Some("clinic"), NOW);
        rec.hold(&sid("sam"), NOW).unwrap();
        // Coordinator and door rungs would offer ana and ben: held, sam only.
        let steps = fire(&mut rec, &f);
        assert_eq!(
            rungs(&steps),
            vec![(
                Some(Rung::Coordinator),
                &StepOutcome::Offered {
                    to: vec![sid("sam")]
                }
            )]
        );
        assert_eq!(due(&rec), NOW + Duration::seconds(30), "the clock runs");
        assert_eq!(eligible(&rec, &f), Vec::<nwd_proto::CounsellorId>::new());
        // Released: the next rung offers the floor again.
        assert!(rec.release());
        let f = floor(&dir, &["ana", "ben", "cy", "sam"], due(&rec));
        let steps = fire(&mut rec, &f);
        let StepOutcome::Offered { to } = &steps[0].outcome else {
            panic!("expected an offer, got {steps:?}");
        };
        assert!(
            to.contains(&sid("ana")) && to.contains(&sid("ben")),
            "{to:?}"
        );
    }

    #[test]
    fn the_imminent_broadcast_is_not_held_back() {
        let dir = directory();
        let f = floor(&dir, &["ana", "ben", "sam"], NOW);
        let mut rec = contact(RiskLevel::Imminent, Language::En, None, Some("clinic"), NOW);
        rec.hold(&sid("sam"), NOW).unwrap();
        let steps = fire(&mut rec, &f);
        let StepOutcome::Broadcast { to, .. } = &steps[0].outcome else {
            panic!("expected the broadcast, got {steps:?}");
        };
        for who in ["ana", "ben", "sam"] {
            assert!(to.contains(&sid(who)), "{who} is in the broadcast");
        }
    }

    #[test]
    fn a_contact_whose_person_left_gets_no_step_no_offer_and_no_place_in_the_queue() {
        let dir = directory();
        let f = floor(&dir, &["ana", "ben", "cy", "sam"], NOW);
        let mut rec = contact(RiskLevel::High, Language::En, None, Some("clinic"), NOW);
        rec.leave(LeftHow::QuickExit, NOW).unwrap();
        // Even with a deadline set, nothing fires.
        rec.escalation.as_mut().unwrap().due = Some(NOW);
        assert!(!is_due(&rec, NOW));
        assert!(fire(&mut rec, &f).is_empty());
        assert!(widen(&rec, &f).is_empty());
        assert!(eligible(&rec, &f).is_empty());
        assert!(crate::floor::queue_key(&rec).is_none());
        assert!(crate::floor::queue([&rec]).is_empty());
        let mut board = Board::default();
        board.put(rec.clone(), 1);
        assert_eq!(board.waiting(), 0);
        assert!(plan(&f, board.queued()).is_empty());
        assert!(board.get(&rec.id).is_some(), "still open: a follow-up");
    }
}
