//! The escalation ladder end to end with one-second timeouts: every real
//! service (router and escalator included) against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nwd_e2e::{BACKUP_LINE, Counsellor, JAMES, LINE_NUMBER, Line, MARIA, offer_with};
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{ClientMsg, ServerMsg};
use nwd_proto::events::{ContactEscalated, Disclosure, DisclosureRefused, Recipient};
use nwd_proto::ladder::{Rung, StepOutcome};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{ContactId, subjects};
use nwd_runtime::kv;

const T: Duration = Duration::from_secs(15);
const MARIA_SISTER: &str = "+15005550152";
const JAMES_PARTNER: &str = "+15005550153";

async fn steps(line: &Line, id: &ContactId) -> Vec<ContactEscalated> {
    line.stored(streams::CONTACTS, subjects::contact_escalated(id))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answers_every_rung_in_order_then_the_backup_line_repeats_with_an_audit_trail() {
    let line = Line::start_fast().await;
    line.patient_sends(JAMES, LINE_NUMBER, "hi can someone talk")
        .await;
    let id = line.first_contact().await;
    // Two backup alerts: the last rung repeats every second.
    nwd_testkit::eventually(T, "the backup line alerted twice", || async {
        (line.sms_to(BACKUP_LINE).await.len() >= 2).then_some(())
    })
    .await;
    let trail = steps(&line, &id).await;
    let rungs: Vec<Option<Rung>> = trail
        .iter()
        .filter(|e| !matches!(e.step.outcome, StepOutcome::Acknowledged { .. }))
        .map(|e| e.step.rung)
        .collect();
    assert_eq!(
        &rungs[..6],
        &[
            Some(Rung::Coordinator),
            Some(Rung::DoorOnCall),
            Some(Rung::AnyOnCall),
            Some(Rung::Supervisor),
            Some(Rung::TrustedContact),
            Some(Rung::BackupLine),
        ]
    );
    assert!(rungs[6..].iter().all(|r| *r == Some(Rung::BackupLine)));
    let numbers: Vec<u64> = trail.iter().map(|e| e.step.step).collect();
    assert_eq!(
        numbers,
        (1..=trail.len() as u64).collect::<Vec<_>>(),
        "each step once, in order"
    );
    // The partner has no consent: refused, recorded, never texted.
    let refused: Vec<DisclosureRefused> = line
        .stored(streams::AUDIT, subjects::audit_disclosure_refused(&id))
        .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].recipient,
        Recipient::TrustedContact("james-partner".into())
    );
    assert_eq!(refused[0].reason, "no_consent");
    assert!(line.sms_to(JAMES_PARTNER).await.is_empty());
    let disclosed: Vec<Disclosure> = line
        .stored(streams::AUDIT, subjects::audit_disclosure(&id))
        .await;
    assert!(disclosed.is_empty());
    // The backup line learns a reference and a risk, never who.
    for body in line.sms_to(BACKUP_LINE).await {
        assert!(body.contains(&id.to_string()));
        assert!(!body.contains("James") && !body.contains("5550143"));
    }
    // The person was told once that they are waiting, with the emergency number.
    let acks: Vec<String> = line.sms_to(JAMES).await;
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(
        acks[0].contains("You are next in line") && acks[0].contains("call 911"),
        "{}",
        acks[0]
    );
    // Still waiting with a next deadline.
    let rec = line.record(&id).await;
    assert!(rec.escalation.unwrap().due.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_answers_first_and_an_accept_stops_the_ladder() {
    let line = Line::start_fast().await;
    let mut ben = Counsellor::available(&line, "ben").await;
    let mut ana = Counsellor::available(&line, "ana").await; // María's coordinator
    let body = "necesito hablar con alguien";
    line.patient_sends(MARIA, LINE_NUMBER, body).await;
    let offer = ana
        .expect(T, "offer to the coordinator", offer_with(body))
        .await;
    ben.expect_none(
        Duration::from_millis(300),
        "ben is not the coordinator",
        |m| matches!(m, ServerMsg::Offer { .. }),
    )
    .await;
    ana.send(&ClientMsg::Accept {
        contact_id: offer.contact_id,
    })
    .await;
    ana.expect(T, "conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. }).then_some(())
    })
    .await;
    // Several timeouts later: no further step, nobody else offered, no SMS to anyone else.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let trail = steps(&line, &offer.contact_id).await;
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert!(line.sms_to(MARIA_SISTER).await.is_empty());
    assert!(line.sms_to(BACKUP_LINE).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trusted_contact_is_told_only_what_the_consent_allows_and_it_is_audited() {
    let line = Line::start_fast().await;
    line.patient_sends(MARIA, LINE_NUMBER, "hola").await;
    let id = line.first_contact().await;
    nwd_testkit::eventually(T, "the sister notified", || async {
        line.sms_to(MARIA_SISTER).await.into_iter().next()
    })
    .await;
    let to_sister = line.sms_to(MARIA_SISTER).await;
    assert_eq!(to_sister.len(), 1, "once");
    assert!(!to_sister[0].contains("hola"), "never the message");
    let disclosed: Vec<Disclosure> = nwd_testkit::eventually(T, "a disclosure record", || async {
        let d: Vec<Disclosure> = line
            .stored(streams::AUDIT, subjects::audit_disclosure(&id))
            .await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(disclosed.len(), 1);
    assert_eq!(
        disclosed[0].recipient,
        Recipient::TrustedContact("maria-sister".into())
    );
    assert_eq!(disclosed[0].purpose, "crisis-support");
    assert!(matches!(
        disclosed[0].basis,
        nwd_proto::events::LegalBasis::Consent { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imminent_is_broadcast_the_first_accept_wins_and_the_safety_message_goes_once() {
    let line = Line::start_fast().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let mut ben = Counsellor::available(&line, "ben").await;
    let mut sam = Counsellor::connect(&line, "sam").await; // supervisor, not available
    let body = "he's not breathing, he used and his lips are blue";
    line.patient_sends(JAMES, LINE_NUMBER, body).await;
    let a = ana.expect(T, "broadcast to ana", offer_with(body)).await;
    let b = ben.expect(T, "broadcast to ben", offer_with(body)).await;
    assert_eq!(a.contact_id, b.contact_id);
    sam.expect(T, "supervisor alerted", |m| {
        matches!(m, ServerMsg::Alert { .. }).then_some(())
    })
    .await;
    // Both accept at the same moment.
    let id = a.contact_id;
    let accept = ClientMsg::Accept { contact_id: id };
    tokio::join!(ana.send(&accept), ben.send(&accept));
    let rec = nwd_testkit::eventually(T, "assigned", || async {
        let r = line.record(&id).await;
        r.assigned_to().cloned()
    })
    .await;
    let loser = if rec.as_str() == "ana" {
        &mut ben
    } else {
        &mut ana
    };
    loser
        .expect(T, "the loser's offer withdrawn", |m| {
            matches!(m, ServerMsg::OfferWithdrawn { contact_id, .. } if *contact_id == id)
                .then_some(())
        })
        .await;
    // The safety message reached the person, once, and not again on later messages.
    line.patient_sends(JAMES, LINE_NUMBER, "please hurry").await;
    nwd_testkit::eventually(T, "safety message", || async {
        line.sms_to(JAMES)
            .await
            .into_iter()
            .find(|b| b.contains("911"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let safety = line
        .sms_to(JAMES)
        .await
        .into_iter()
        .filter(|b| b.contains("joining you now"))
        .count();
    assert_eq!(safety, 1);
    let trail = steps(&line, &id).await;
    assert!(matches!(
        trail[0].step.outcome,
        StepOutcome::Broadcast { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalator_crashed_between_scheduling_and_firing_fires_the_step_once_after_restart() {
    let mut line = Line::start_fast().await;
    line.patient_sends(JAMES, LINE_NUMBER, "anyone there").await;
    let id = line.first_contact().await;
    // The router fired the first pass (through to the backup line); the next
    // step is due in a second. Kill the escalator before it fires.
    nwd_testkit::eventually(T, "first backup alert", || async {
        (line.sms_to(BACKUP_LINE).await.len() == 1).then_some(())
    })
    .await;
    line.crash("escalator").await;
    let before = line.record(&id).await.escalation.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        line.record(&id).await.escalation.unwrap().steps,
        before.steps,
        "nothing fires while it is down"
    );
    let restarted_at = time::OffsetDateTime::now_utc();
    line.restart("escalator").await;
    // The overdue step fires once, promptly (within a second of recovery).
    nwd_testkit::eventually(Duration::from_secs(3), "overdue step fired", || async {
        (line.record(&id).await.escalation.unwrap().steps > before.steps).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = line.record(&id).await.escalation.unwrap();
    let recovered: Vec<_> = after
        .trail
        .iter()
        .filter(|s| s.step > before.steps)
        .filter(|s| s.at < restarted_at + time::Duration::milliseconds(900))
        .collect();
    assert_eq!(
        recovered.len(),
        1,
        "one overdue step, not one per missed second: {recovered:?}"
    );
    nwd_testkit::eventually(T, "second backup alert", || async {
        (line.sms_to(BACKUP_LINE).await.len() >= 2).then_some(())
    })
    .await;
    let trail = steps(&line, &id).await;
    let numbers: Vec<u64> = trail.iter().map(|e| e.step.step).collect();
    let mut dedup = numbers.clone();
    dedup.dedup();
    assert_eq!(numbers, dedup, "no step published twice");
}

/// The router fires a contact's first pass inside the write that opens it
/// and leaves the later steps to the escalator. Killed right after that
/// write, and started again after the next deadline: every step once, every
/// backup alert once, and the restarted router fires nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_crashed_after_opening_a_contact_repeats_no_step_after_restart() {
    let mut line = Line::start_fast().await;
    line.patient_sends(JAMES, LINE_NUMBER, "is anyone awake")
        .await;
    let id = line.first_contact().await;
    line.crash("router").await;
    let opened = line.record(&id).await.escalation.unwrap();
    // The next deadlines pass while the router is down: the escalator fires them.
    nwd_testkit::eventually(T, "a later step while the router is down", || async {
        (line.record(&id).await.escalation.unwrap().steps > opened.steps).then_some(())
    })
    .await;
    line.restart("router").await;
    let mut ben = Counsellor::available(&line, "ben").await;
    // Someone comes: the contact is offered and the ladder stops on accept.
    let offer = ben
        .expect(T, "offer after the restart", offer_with("is anyone awake"))
        .await;
    ben.send(&ClientMsg::Accept {
        contact_id: offer.contact_id,
    })
    .await;
    ben.expect(T, "conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. }).then_some(())
    })
    .await;
    // Every step the record holds is announced (its event stored) before the trail is read.
    let (esc, trail) = nwd_testkit::eventually(T, "every step announced", || async {
        let esc = line.record(&id).await.escalation.unwrap();
        let trail = steps(&line, &id).await;
        (esc.announced == esc.steps && trail.len() as u64 >= esc.steps).then_some((esc, trail))
    })
    .await;
    let numbers: Vec<u64> = trail.iter().map(|e| e.step.step).collect();
    assert_eq!(
        numbers,
        (1..=esc.steps).collect::<Vec<_>>(),
        "every step published once, in order"
    );
    let backup_steps = trail
        .iter()
        .filter(|e| e.step.rung == Some(Rung::BackupLine))
        .count();
    assert!(backup_steps >= 2, "{trail:?}");
    // Sending is asynchronous: wait for the alerts, then make sure no extra one follows.
    nwd_testkit::eventually(T, "one backup alert per backup step", || async {
        (line.sms_to(BACKUP_LINE).await.len() >= backup_steps).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(line.sms_to(BACKUP_LINE).await.len(), backup_steps);
    assert_eq!(line.sms_to(JAMES).await.len(), 1, "one acknowledgement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellor_who_drops_mid_conversation_alerts_the_supervisor_then_the_contact_is_requeued()
 {
    let line = Line::start_fast().await;
    let mut sam = Counsellor::connect(&line, "sam").await; // supervisor, watching
    let mut ana = Counsellor::available(&line, "ana").await;
    let body = "can we keep talking";
    line.patient_sends(JAMES, LINE_NUMBER, body).await;
    let offer = ana.expect(T, "offer to ana", offer_with(body)).await;
    let id = offer.contact_id;
    ana.send(&ClientMsg::Accept { contact_id: id }).await;
    ana.expect(T, "conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. }).then_some(())
    })
    .await;
    let mut ben = Counsellor::available(&line, "ben").await;
    // Ana's connection drops.
    let dropped_at = std::time::Instant::now();
    ana.close().await;
    sam.expect(T, "supervisor alerted", |m| match m {
        ServerMsg::Alert {
            reason: nwd_proto::dashboard::AlertReason::CounsellorDisconnected { counsellor, .. },
            contact,
        } if contact.contact_id == id && counsellor.as_str() == "ana" => Some(()),
        _ => None,
    })
    .await;
    assert!(
        dropped_at.elapsed() < Duration::from_secs(10),
        "out of rotation within 10 s"
    );
    // After the grace it is back in the queue, and offered to ben.
    let again = ben
        .expect(T, "requeued offer to ben", offer_with(body))
        .await;
    assert_eq!(again.contact_id, id);
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(1500),
        "not before the grace"
    );
    let rec = line.record(&id).await;
    assert!(rec.orphaned_at.is_none());
    assert!(
        rec.escalation.unwrap().due.is_some(),
        "climbing the ladder again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_between_scheduling_and_firing_the_step_fires_once_after_restart() {
    let mut line = Line::start_fast().await;
    line.patient_sends(JAMES, LINE_NUMBER, "hello?").await;
    let id = line.first_contact().await;
    nwd_testkit::eventually(T, "first backup alert", || async {
        (line.sms_to(BACKUP_LINE).await.len() == 1).then_some(())
    })
    .await;
    let before = line.record(&id).await.escalation.unwrap();
    line.nats.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    line.nats.restart().await;
    // The step that fell due while NATS was down fires once, and the ladder goes on.
    let after = nwd_testkit::eventually(T, "overdue step fired after the restart", || async {
        let js = line.jetstream().await;
        let store = js.get_key_value(buckets::CONTACTS).await.ok()?;
        let e = kv::get::<ContactRecord>(&store, &id.to_string())
            .await
            .ok()?
            .value?
            .escalation?;
        (e.steps >= before.steps + 2 && e.announced == e.steps).then_some(e)
    })
    .await;
    let numbers: Vec<u64> = after.trail.iter().map(|s| s.step).collect();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u64).collect::<Vec<_>>()
    );
    let backups: Vec<_> = after
        .trail
        .iter()
        .filter(|s| matches!(s.outcome, StepOutcome::BackupAlerted { .. }))
        .map(|s| s.at)
        .collect();
    for w in backups.windows(2) {
        assert!(
            w[1] - w[0] >= time::Duration::milliseconds(900),
            "a deadline fired twice"
        );
    }
    nwd_testkit::eventually(T, "backup SMS for every backup step", || async {
        (line.sms_to(BACKUP_LINE).await.len() == backups.len()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_changes_at_run_time_without_a_restart() {
    const COUNTY_DOOR: &str = "+15005550120";
    let line = Line::start_fast().await;
    let mut chloe = Counsellor::available(&line, "chloe").await; // county hospital
    let mut ben = Counsellor::available(&line, "ben").await; // eastside clinic
    line.patient_sends("+15005550210", COUNTY_DOOR, "first door message")
        .await;
    chloe
        .expect(
            T,
            "the door's on-call counsellor",
            offer_with("first door message"),
        )
        .await;

    // Chloe goes on leave: a one-off override, stored in the directory bucket.
    let js = line.jetstream().await;
    let store = js.get_key_value(buckets::DIRECTORY).await.unwrap();
    let mut dir = nwd_runtime::directory::load(&nwd_e2e::fast_directory()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    dir.overrides.push(nwd_proto::directory::OnCallOverride {
        staff: nwd_proto::CounsellorId::parse("chloe").unwrap(),
        from: now - time::Duration::minutes(1),
        until: now + time::Duration::hours(1),
        on_call: false,
    });
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    // A broken version is ignored: the last good one stays in force.
    store
        .put(nwd_runtime::directory::KEY, "{not json".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    line.patient_sends("+15005550211", COUNTY_DOOR, "second door message")
        .await;
    ben.expect(
        T,
        "no wrong door: another partner's counsellor",
        offer_with("second door message"),
    )
    .await;
    chloe
        .expect_none(Duration::from_millis(500), "chloe is on leave", |m| {
            matches!(m, ServerMsg::Offer { contact } if contact.messages.iter().any(|x| x.body == "second door message"))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_consent_skips_the_trusted_contact_and_the_refusal_is_audited() {
    let line = Line::start_fast().await;
    // María revokes her consent; the change goes live through the directory bucket.
    let js = line.jetstream().await;
    let store = js.get_key_value(buckets::DIRECTORY).await.unwrap();
    let mut dir = nwd_runtime::directory::load(&nwd_e2e::fast_directory()).unwrap();
    let maria = dir.patients.iter_mut().find(|p| p.id == "maria").unwrap();
    let consent = maria.trusted_contacts[0].consent.as_mut().unwrap();
    consent.revoked_at = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(5));
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    line.patient_sends(MARIA, LINE_NUMBER, "hola, hay alguien")
        .await;
    let id = line.first_contact().await;
    let refused: Vec<DisclosureRefused> =
        nwd_testkit::eventually(T, "the refusal audited", || async {
            let r: Vec<DisclosureRefused> = line
                .stored(streams::AUDIT, subjects::audit_disclosure_refused(&id))
                .await;
            (!r.is_empty()).then_some(r)
        })
        .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].recipient,
        Recipient::TrustedContact("maria-sister".into())
    );
    assert_eq!(refused[0].reason, "revoked");
    // The ladder went on to the backup line; the sister was never texted.
    nwd_testkit::eventually(T, "backup line alerted", || async {
        (!line.sms_to(BACKUP_LINE).await.is_empty()).then_some(())
    })
    .await;
    assert!(line.sms_to(MARIA_SISTER).await.is_empty());
    let disclosed: Vec<Disclosure> = line
        .stored(streams::AUDIT, subjects::audit_disclosure(&id))
        .await;
    assert!(disclosed.is_empty());
}

// ------------------------------------------------------------------ disclosures, as announced
//
// The announcer (the outbox of fired steps) against a real nats-server, with
// the directory as the test makes it: what a trusted-contact step publishes,
// in which order, and what it refuses.

mod disclosures {
    use nwd_proto::directory::Directory;
    use nwd_proto::events::{
        Author, Channel, ContactMessage, Disclosure, DisclosureRefused, MessageTriaged,
        OutboundSms, Recipient,
    };
    use nwd_proto::ladder::{Escalation, LadderPolicy, Rung, SkipReason, StepOutcome, StepRecord};
    use nwd_proto::streams::{self, buckets};
    use nwd_proto::{
        Assessment, ContactId, Envelope, Language, MessageId, PhoneNumber, RiskLevel, subjects,
        wire,
    };
    use nwd_runtime::bus::{self, NatsArgs};
    use nwd_runtime::escalation::{self, Announcer};
    use nwd_runtime::transcript;
    use nwd_testkit::NatsServer;
    use time::{Duration, OffsetDateTime};

    use super::MARIA_SISTER;

    struct Outbox {
        _nats: NatsServer,
        /// The test's own view, as the operator.
        js: async_nats::jetstream::Context,
        contacts: async_nats::jetstream::kv::Store,
        /// The announcer's connection, as the escalator (an audit writer).
        escalator: (async_nats::Client, async_nats::jetstream::Context),
    }

    impl Outbox {
        async fn start() -> Self {
            let nats = NatsServer::start().await;
            nats.set_up_bus().await;
            let args = NatsArgs::local(nats.url());
            let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
            let contacts = js.get_key_value(buckets::CONTACTS).await.unwrap();
            let esc_args = NatsArgs::local(nats.url_for("escalator"));
            let esc_client = bus::connect(&esc_args, "escalator").await.unwrap();
            let esc_js = bus::jetstream(esc_client.clone(), &esc_args);
            Self {
                _nats: nats,
                js,
                contacts,
                escalator: (esc_client, esc_js),
            }
        }

        fn announcer(&self, dir: Directory) -> Announcer {
            Announcer {
                client: self.escalator.0.clone(),
                js: self.escalator.1.clone(),
                contacts: self.contacts.clone(),
                directory: nwd_runtime::directory::Live::new(dir),
                service: "test",
            }
        }

        async fn stored(
            &self,
            stream: &'static str,
            subject: String,
        ) -> Vec<async_nats::jetstream::Message> {
            transcript::read_subjects(&self.js, stream, vec![subject])
                .await
                .unwrap()
        }

        async fn disclosures(&self, id: &ContactId) -> Vec<Disclosure> {
            decode(
                self.stored(streams::AUDIT, subjects::audit_disclosure(id))
                    .await,
            )
        }

        async fn refusals(&self, id: &ContactId) -> Vec<DisclosureRefused> {
            decode(
                self.stored(streams::AUDIT, subjects::audit_disclosure_refused(id))
                    .await,
            )
        }

        async fn sms(&self, id: &ContactId) -> Vec<OutboundSms> {
            decode(
                self.stored(streams::OUTBOUND, subjects::outbound_sms(id))
                    .await,
            )
        }
    }

    fn decode<E: nwd_proto::Event>(messages: Vec<async_nats::jetstream::Message>) -> Vec<E> {
        messages
            .iter()
            .map(|m| Envelope::<E>::from_bytes(&m.payload).unwrap().data)
            .collect()
    }

    fn demo() -> Directory {
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap()
    }

    /// María's contact with one fired, unannounced step `outcome` at `at`.
    fn maria_step(
        rung: Rung,
        outcome: StepOutcome,
        at: OffsetDateTime,
    ) -> nwd_proto::contact::ContactRecord {
        let ev = MessageTriaged {
            message: ContactMessage {
                contact_id: ContactId::new(),
                message_id: MessageId::new(),
                channel: Channel::Sms {
                    patient: PhoneNumber::parse(nwd_e2e::MARIA).unwrap().into(),
                    line: PhoneNumber::parse(nwd_e2e::LINE_NUMBER).unwrap().into(),
                },
                door: None,
                patient: Some("maria".into()),
                body: "hola".into(),
                received_at: at - Duration::minutes(5),
                opens_contact: true,
                previous: None,
                quick_exit: false,
            },
            assessment: Assessment {
                level: RiskLevel::High,
                score: 0.8,
                reasons: Vec::new(),
                lang: Language::Es,
                rulebook_version: "test".into(),
            },
        };
        let mut rec = nwd_proto::contact::ContactRecord::open(&ev);
        let mut e = Escalation::start(LadderPolicy::default(), at);
        e.steps = 5;
        e.push_step(StepRecord {
            step: 5,
            rung: Some(rung),
            outcome,
            at,
        });
        rec.escalation = Some(e);
        rec
    }

    fn notify_sister() -> StepOutcome {
        StepOutcome::TrustedContacts {
            notified: vec!["maria-sister".into()],
            refused: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_disclosure_is_stored_in_audit_before_its_sms_is_published() {
        let o = Outbox::start().await;
        let rec = maria_step(
            Rung::TrustedContact,
            notify_sister(),
            OffsetDateTime::now_utc(),
        );
        let announcer = o.announcer(demo());
        announcer.announce(&rec).await.unwrap();

        let audit = o
            .stored(streams::AUDIT, subjects::audit_disclosure(&rec.id))
            .await;
        let sms: Vec<_> = o
            .stored(streams::OUTBOUND, subjects::outbound_sms(&rec.id))
            .await;
        assert_eq!(audit.len(), 1);
        assert_eq!(sms.len(), 1);
        let audited_at = audit[0].info().unwrap().published;
        let sent_at = sms[0].info().unwrap().published;
        assert!(
            audited_at < sent_at,
            "the AUDIT record ({audited_at}) is stored before the SMS ({sent_at})"
        );
        let sent: Vec<OutboundSms> = decode(sms);
        assert_eq!(sent[0].to.as_str(), MARIA_SISTER);
        assert_eq!(sent[0].author, Author::System);
        assert_eq!(
            sent[0].outbound_id,
            wire::outbound::trusted_contact(&rec.id, 5, "maria-sister")
        );
        let d = &o.disclosures(&rec.id).await[0];
        assert_eq!(
            d.recipient,
            Recipient::TrustedContact("maria-sister".into())
        );

        // Announced again (a redelivery, another replica): nothing twice.
        announcer.announce(&rec).await.unwrap();
        assert_eq!(o.disclosures(&rec.id).await.len(), 1);
        assert_eq!(o.sms(&rec.id).await.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_the_audit_record_and_the_sms_sends_the_sms_once_on_retry() {
        let o = Outbox::start().await;
        let rec = maria_step(
            Rung::TrustedContact,
            notify_sister(),
            OffsetDateTime::now_utc(),
        );
        // The record made it to AUDIT; the process died before the SMS.
        let consent = demo().patients[0].trusted_contacts[0]
            .consent
            .clone()
            .unwrap();
        bus::publish(
            &o.escalator.1,
            subjects::audit_disclosure(&rec.id),
            &wire::msg_id::step_disclosure(&rec.id, 5, "maria-sister"),
            &Envelope::new(Disclosure {
                contact_id: rec.id,
                patient: "maria".into(),
                recipient: Recipient::TrustedContact("maria-sister".into()),
                what: consent.disclose.clone(),
                purpose: consent.purpose.clone(),
                basis: nwd_proto::events::LegalBasis::Consent {
                    purpose: consent.purpose.clone(),
                    disclose: consent.disclose.clone(),
                    signed_at: consent.signed_at,
                    expires_at: consent.expires_at,
                },
                by: "test:crashed".into(),
                at: OffsetDateTime::now_utc(),
            }),
        )
        .await
        .unwrap();
        assert!(o.sms(&rec.id).await.is_empty());

        o.announcer(demo()).announce(&rec).await.unwrap();
        let disclosed = o.disclosures(&rec.id).await;
        assert_eq!(disclosed.len(), 1, "the record is not doubled");
        assert_eq!(disclosed[0].by, "test:crashed", "the first record stands");
        let sent = o.sms(&rec.id).await;
        assert_eq!(sent.len(), 1, "the SMS is not skipped");
        assert_eq!(sent[0].to.as_str(), MARIA_SISTER);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consent_revoked_after_the_step_fired_is_refused_when_sending_and_audited() {
        let o = Outbox::start().await;
        let now = OffsetDateTime::now_utc();
        // The step fired ten seconds ago, when the consent was valid...
        let rec = maria_step(
            Rung::TrustedContact,
            notify_sister(),
            now - Duration::seconds(10),
        );
        // ...and María revoked it five seconds ago, before it was announced.
        let mut dir = demo();
        let maria = dir.patients.iter_mut().find(|p| p.id == "maria").unwrap();
        maria.trusted_contacts[0]
            .consent
            .as_mut()
            .unwrap()
            .revoked_at = Some(now - Duration::seconds(5));
        o.announcer(dir).announce(&rec).await.unwrap();

        assert!(o.sms(&rec.id).await.is_empty(), "the sister is not texted");
        assert!(o.disclosures(&rec.id).await.is_empty());
        let refused = o.refusals(&rec.id).await;
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0].recipient,
            Recipient::TrustedContact("maria-sister".into())
        );
        assert_eq!(refused[0].reason, escalation::REFUSED_REVOKED);
        assert_eq!(refused[0].patient, "maria");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consent_expired_after_the_step_fired_is_refused_when_sending_and_audited() {
        let o = Outbox::start().await;
        let now = OffsetDateTime::now_utc();
        let rec = maria_step(
            Rung::TrustedContact,
            notify_sister(),
            now - Duration::seconds(10),
        );
        let mut dir = demo();
        let maria = dir.patients.iter_mut().find(|p| p.id == "maria").unwrap();
        maria.trusted_contacts[0]
            .consent
            .as_mut()
            .unwrap()
            .expires_at = Some(now - Duration::seconds(5));
        o.announcer(dir).announce(&rec).await.unwrap();

        assert!(o.sms(&rec.id).await.is_empty());
        let refused = o.refusals(&rec.id).await;
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].reason, escalation::REFUSED_EXPIRED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patient_missing_from_the_directory_is_an_audited_refusal() {
        let o = Outbox::start().await;
        let mut dir = demo();
        dir.patients.retain(|p| p.id != "maria");
        let announcer = o.announcer(dir);

        // Gone between the step and its announcement.
        let rec = maria_step(
            Rung::TrustedContact,
            notify_sister(),
            OffsetDateTime::now_utc(),
        );
        announcer.announce(&rec).await.unwrap();
        assert!(o.sms(&rec.id).await.is_empty());
        let refused = o.refusals(&rec.id).await;
        assert_eq!(refused.len(), 1);
        assert_eq!(
            refused[0].reason,
            escalation::REFUSED_PATIENT_NOT_IN_DIRECTORY
        );
        assert_eq!(refused[0].patient, "maria");
        assert_eq!(
            refused[0].recipient,
            Recipient::TrustedContact("maria-sister".into())
        );

        // Gone already when the step fired: the ladder skipped the rung.
        let skipped = maria_step(
            Rung::TrustedContact,
            StepOutcome::Skipped {
                reason: SkipReason::NoTrustedContact,
            },
            OffsetDateTime::now_utc(),
        );
        announcer.announce(&skipped).await.unwrap();
        let refused = o.refusals(&skipped.id).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            refused[0].reason,
            escalation::REFUSED_PATIENT_NOT_IN_DIRECTORY
        );
        assert_eq!(refused[0].patient, "maria");
        assert!(o.sms(&skipped.id).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patient_without_trusted_contacts_is_skipped_without_a_refusal() {
        let o = Outbox::start().await;
        let mut dir = demo();
        let maria = dir.patients.iter_mut().find(|p| p.id == "maria").unwrap();
        maria.trusted_contacts.clear();
        let rec = maria_step(
            Rung::TrustedContact,
            StepOutcome::Skipped {
                reason: SkipReason::NoTrustedContact,
            },
            OffsetDateTime::now_utc(),
        );
        o.announcer(dir).announce(&rec).await.unwrap();
        assert!(o.refusals(&rec.id).await.is_empty(), "nothing was withheld");
        assert!(o.sms(&rec.id).await.is_empty());
    }
}
