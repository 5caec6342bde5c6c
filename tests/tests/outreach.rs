//! Outreach end to end (issue 14), through every real service: a partner's
//! referral, as the gateway publishes it, becomes an outreach contact that
//! a counsellor is offered; on accept the line introduces itself from its
//! own number, naming neither the referrer nor the reason; the person's
//! reply joins the same contact; the counsellor records the outcome and
//! resolves; the referrals service is told each step, in order. A referral
//! due later is offered to nobody before its time; an SMS to a number that
//! nobody has is served all the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nwd_e2e::{Counsellor, LINE_NUMBER, Line, STRANGER};
use nwd_proto::dashboard::{ClientMsg, ContactView, ServerMsg};
use nwd_proto::referral::{
    InboundReferral, OutreachChange, OutreachOutcome, OutreachUpdate, Priority, ReferredPatient,
};
use nwd_proto::streams;
use nwd_proto::{Address, ContactId, Envelope, PartnerId, subjects, wire};
use time::OffsetDateTime;

const T: Duration = Duration::from_secs(15);
/// The person a prison refers on their release day (not in the directory).
const RELEASED: &str = "+15005550166";
const REASON: &str = "released today after three years; history of opioid use";

fn riverside() -> PartnerId {
    PartnerId::parse("riverside-reentry").unwrap()
}

fn referral(webhook_id: &str, offer_at: OffsetDateTime) -> InboundReferral {
    let now = OffsetDateTime::now_utc();
    InboundReferral {
        referral_id: wire::referral_id(&riverside(), webhook_id),
        partner: riverside(),
        priority: Priority::Urgent,
        occurrence: (offer_at > now).then_some(offer_at),
        offer_at,
        due_at: offer_at + time::Duration::hours(4),
        patient: ReferredPatient {
            phone: Address::parse(RELEASED),
            name: Some("Jordan Avery".into()),
            language: None,
        },
        reason: Some(REASON.into()),
        received_at: now,
    }
}

/// Publishes the referral as the gateway does, as the gateway's own NATS
/// user (the contract: INBOUND, `Nats-Msg-Id` from the referral).
async fn post(line: &Line, r: &InboundReferral) {
    let js = async_nats::jetstream::new(line.nats.client_as("gateway").await);
    nwd_runtime::bus::publish(
        &js,
        subjects::inbound_referral(),
        &wire::msg_id::inbound_referral(&r.referral_id),
        &Envelope::new(r.clone()),
    )
    .await
    .unwrap();
}

fn outreach_offer(id: ContactId) -> impl FnMut(&ServerMsg) -> Option<ContactView> {
    move |m| match m {
        ServerMsg::Offer { contact } if contact.contact_id == id => Some(contact.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_is_reached_out_to_from_the_lines_number_and_each_step_is_told_in_order() {
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    // Ana works for a clinic; the prison that refers has nobody on call:
    // no wrong door, anyone on call serves it.
    let mut ana = Counsellor::available(&line, "ana").await;
    let r = referral("release-list-0001", OffsetDateTime::now_utc());
    let id = wire::outreach_contact(&r.referral_id);
    post(&line, &r).await;

    let offer = ana
        .expect(T, "the outreach offer", outreach_offer(id))
        .await;
    let view = offer.outreach.clone().expect("shown as an outreach");
    assert_eq!(view.referred_by, "Riverside Re-entry Programme");
    assert_eq!(view.reason.as_deref(), Some(REASON));
    assert_eq!(view.patient_name.as_deref(), Some("Jordan Avery"));
    assert_eq!(view.due_at, r.due_at);
    assert!(offer.messages.is_empty(), "the person has not written");
    // Nothing has reached the person before a counsellor takes it.
    assert!(line.sms_to(RELEASED).await.is_empty());

    ana.send(&ClientMsg::Accept { contact_id: id }).await;
    ana.expect(T, "the conversation", |m| match m {
        ServerMsg::Conversation { contact } if contact.contact_id == id => Some(()),
        _ => None,
    })
    .await;

    // The introduction reaches the phone from the line's own number and
    // names only the line.
    let intro = nwd_testkit::eventually(T, "the introduction at the phone", || async {
        line.sent_messages()
            .await
            .into_iter()
            .find(|m| m["to"] == RELEASED)
    })
    .await;
    assert_eq!(intro["from"], LINE_NUMBER);
    let body = intro["body"].as_str().unwrap();
    assert!(body.contains("No Wrong Door"), "{body}");
    for secret in [
        "Riverside",
        "Re-entry",
        "prison",
        "release",
        "opioid",
        "Jordan",
        "referr",
    ] {
        assert!(
            !body.to_lowercase().contains(&secret.to_lowercase()),
            "{secret} disclosed in {body}"
        );
    }

    // The person answers the line's number: the same contact, on Ana's screen.
    line.patient_sends(RELEASED, LINE_NUMBER, "who is this?")
        .await;
    ana.expect(T, "the person's reply", |m| match m {
        ServerMsg::Message {
            contact_id,
            message,
            ..
        } if *contact_id == id && message.body == "who is this?" => Some(()),
        _ => None,
    })
    .await;
    // Ana's own words after the introduction.
    ana.reply(id, "Hi, I'm Ana. How are you doing today?").await;
    nwd_testkit::eventually(T, "Ana's reply at the phone", || async {
        line.sms_to(RELEASED)
            .await
            .iter()
            .any(|b| b.starts_with("Hi, I'm Ana"))
            .then_some(())
    })
    .await;

    ana.send(&ClientMsg::OutreachOutcome {
        contact_id: id,
        outcome: OutreachOutcome::Reached,
    })
    .await;
    ana.expect(T, "the outcome recorded", |m| {
        (*m == ServerMsg::OutreachOutcomeRecorded {
            contact_id: id,
            outcome: OutreachOutcome::Reached,
        })
        .then_some(())
    })
    .await;
    ana.send(&ClientMsg::Resolve {
        contact_id: id,
        disposition: Some(nwd_proto::dashboard::Disposition::SupportGiven),
        note: None,
    })
    .await;
    ana.expect(T, "resolved", |m| {
        (*m == ServerMsg::Resolved { contact_id: id }).then_some(())
    })
    .await;

    let updates = nwd_testkit::eventually(T, "four outreach updates", || async {
        let u: Vec<OutreachUpdate> = line
            .stored(streams::CONTACTS, subjects::contact_outreach_update(&id))
            .await;
        (u.len() >= 4).then_some(u)
    })
    .await;
    let ana_id = nwd_proto::CounsellorId::parse("ana").unwrap();
    assert_eq!(
        updates.iter().map(|u| u.change.clone()).collect::<Vec<_>>(),
        vec![
            OutreachChange::Queued,
            OutreachChange::Assigned {
                counsellor: ana_id.clone()
            },
            OutreachChange::Outcome {
                counsellor: ana_id.clone(),
                outcome: OutreachOutcome::Reached
            },
            OutreachChange::Resolved { counsellor: ana_id },
        ]
    );
    assert!(updates.iter().all(|u| u.referral_id == r.referral_id));
    assert!(updates.windows(2).all(|w| w[0].at <= w[1].at));
    // One contact for the person, one introduction.
    let mine: Vec<_> = line
        .records()
        .await
        .into_iter()
        .filter(|rec| rec.id == id)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].message_count, 1);
    let intros = line
        .sent_messages()
        .await
        .into_iter()
        .filter(|m| m["to"] == RELEASED && m["body"] == body)
        .count();
    assert_eq!(intros, 1);
    // Nothing of the person or the referral in any log line.
    let text = logs.contents();
    for secret in ["5550166", "Jordan", "opioid", "who is this"] {
        assert!(!text.contains(secret), "{secret} in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_due_later_is_offered_to_nobody_before_its_time_and_then_is() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let offer_at = OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let r = referral("release-list-0002", offer_at);
    let id = wire::outreach_contact(&r.referral_id);
    post(&line, &r).await;

    nwd_testkit::eventually(T, "the scheduled record", || async {
        line.records().await.into_iter().find(|rec| rec.id == id)
    })
    .await;
    ana.expect_none(
        Duration::from_millis(2_500),
        "an early offer",
        |m| matches!(m, ServerMsg::Offer { contact } if contact.contact_id == id),
    )
    .await;
    assert!(
        OffsetDateTime::now_utc() < offer_at,
        "the check ran before its time"
    );
    // The escalator's durable deadline offers it at its time.
    let offer = ana
        .expect(T, "the offer at its time", outreach_offer(id))
        .await;
    assert!(OffsetDateTime::now_utc() >= offer_at);
    assert!(offer.outreach.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_to_a_number_nobody_has_is_still_served() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    // Neither the line's number nor any partner's door (a stale poster).
    line.patient_sends(STRANGER, "+15005550188", "is anyone there?")
        .await;
    let offer = ana
        .expect(T, "the offer", nwd_e2e::offer_with("is anyone there?"))
        .await;
    assert_eq!(offer.door, "No Wrong Door", "the shared pool");
    assert!(offer.outreach.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_outreach_surfaces_after_the_escalator_and_router_crashed_before_its_time() {
    let mut line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let offer_at = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let r = referral("release-list-0003", offer_at);
    let id = wire::outreach_contact(&r.referral_id);
    post(&line, &r).await;
    nwd_testkit::eventually(T, "the scheduled record", || async {
        line.records().await.into_iter().find(|rec| rec.id == id)
    })
    .await;
    // Both services that could fire it die before its time, and come back
    // only after it: the deadline is in the record, not in anyone's memory.
    line.crash("escalator").await;
    line.crash("router").await;
    let wait = offer_at - OffsetDateTime::now_utc() + time::Duration::milliseconds(500);
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    assert!(
        line.record(&id).await.scheduled(),
        "nobody fired it while they were down"
    );
    line.restart("router").await;
    line.restart("escalator").await;
    let offer = ana
        .expect(T, "the offer after the restarts", outreach_offer(id))
        .await;
    assert!(offer.outreach.is_some());
    assert!(OffsetDateTime::now_utc() >= offer_at);
}
