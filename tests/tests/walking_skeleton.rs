//! One SMS from the Twilio webhook to a counsellor's websocket and back,
//! through every real service and a real nats-server.

use std::time::Duration;

use nwd_e2e::{Counsellor, EASTSIDE_DOOR, JAMES, LINE_NUMBER, Line, MARIA, STRANGER, offer_with};
use nwd_proto::dashboard::{ClientMsg, ContactView, Presence, ServerMsg, Speaker};
use nwd_proto::events::DeliveryStatus;
use nwd_proto::streams;
use nwd_proto::{ClientReplyId, ContactId, RiskLevel};

const T: Duration = Duration::from_secs(10);

async fn accept(c: &mut Counsellor, contact: ContactId) -> ContactView {
    c.send(&ClientMsg::Accept {
        contact_id: contact,
    })
    .await;
    c.expect(T, "conversation after accept", |m| match m {
        ServerMsg::Conversation { contact: v } if v.contact_id == contact => Some(v.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_reaches_a_counsellor_and_the_reply_reaches_the_phone() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;

    // A patient texts a partner's door.
    let first = "I relapsed after detox and I feel hopeless";
    line.patient_sends(MARIA, EASTSIDE_DOOR, first).await;
    let offer = ana
        .expect(T, "offer with the message", offer_with(first))
        .await;
    assert!(
        offer.risk >= RiskLevel::Moderate,
        "relapse after detox is at least moderate: {:?}",
        offer.risk
    );
    assert!(!offer.reasons.is_empty(), "the offer says why");
    assert!(offer.reasons.iter().all(|r| !r.label.is_empty()));
    assert_eq!(offer.door, "Eastside Recovery Clinic");
    assert!(
        !offer.channel.contains("5550142"),
        "the number is hidden from the counsellor"
    );

    let conv = accept(&mut ana, offer.contact_id).await;
    assert_eq!(conv.messages.len(), 1);
    assert_eq!(conv.messages[0].speaker, Speaker::Person);

    // Further messages from the same phone go to the same conversation.
    let second = "are you there?";
    line.patient_sends(MARIA, EASTSIDE_DOOR, second).await;
    ana.expect(T, "second message in the same conversation", |m| match m {
        ServerMsg::Message {
            contact_id,
            message,
            ..
        } if *contact_id == offer.contact_id && message.body == second => Some(()),
        _ => None,
    })
    .await;

    // The counsellor replies; the reply reaches the phone from the number the patient texted.
    let reply = "I'm here. You did the right thing writing. Are you safe right now?";
    // The dashboard names the reply by an id it derives, never the browser's.
    let outbound_id = ana.reply(offer.contact_id, reply).await;
    let sent = nwd_testkit::eventually(T, "reply at the simulated Twilio", || async {
        line.sent_messages()
            .await
            .into_iter()
            .find(|m| m["body"] == reply)
    })
    .await;
    assert_eq!(sent["to"], MARIA);
    assert_eq!(sent["from"], EASTSIDE_DOOR);

    // The delivery status comes back to the counsellor.
    ana.expect(T, "delivered status", |m| match m {
        ServerMsg::DeliveryStatus {
            outbound_id: o,
            status: DeliveryStatus::Delivered,
            ..
        } if *o == outbound_id => Some(()),
        _ => None,
    })
    .await;

    // The phone shows the reply too.
    let phone: serde_json::Value = line
        .http
        .get(line.url(
            "phone-sim",
            &format!("/api/phones/{}/messages", nwd_e2e::urlencode(MARIA)),
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        phone.to_string().contains(reply),
        "the phone page shows the reply"
    );

    // Resolve; the next message opens a new contact, offered again.
    ana.send(&ClientMsg::Resolve {
        contact_id: offer.contact_id,
        disposition: Some(nwd_proto::dashboard::Disposition::SafetyPlanMade),
        note: Some("Plan agreed; will call the clinic tomorrow.".into()),
    })
    .await;
    ana.expect(T, "resolved", |m| {
        matches!(m, ServerMsg::Resolved { contact_id } if *contact_id == offer.contact_id)
            .then_some(())
    })
    .await;
    // Intake closes the phone's thread when it hears of the resolution (its
    // own consumer, a moment later). A message before that still belongs to
    // the resolved contact and re-opens it — nothing is lost either way —
    // but this test wants the next message after the close.
    let threads = line
        .jetstream()
        .await
        .get_key_value(nwd_proto::streams::buckets::THREADS)
        .await
        .unwrap();
    let key = line.thread_key(MARIA);
    nwd_testkit::eventually(T, "thread closed", || async {
        nwd_runtime::kv::get::<nwd_proto::contact::ThreadRecord>(&threads, &key)
            .await
            .unwrap()
            .value
            .and_then(|t| t.closed_at)
    })
    .await;
    let third = "thanks, one more question about my methadone dose time";
    line.patient_sends(MARIA, EASTSIDE_DOOR, third).await;
    let next = ana
        .expect(T, "a new offer after resolution", offer_with(third))
        .await;
    assert_ne!(next.contact_id, offer.contact_id);
    assert_eq!(
        line.sent_messages()
            .await
            .iter()
            .filter(|m| m["body"] == reply)
            .count(),
        1,
        "sent exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_webhook_creates_nothing_new() {
    let line = Line::start().await;
    let mut ben = Counsellor::available(&line, "ben").await;
    let body = "can someone call me back about my appointment";
    let (form, sig) = line.signed_sms(
        "SM00000000000000000000000000000d01",
        JAMES,
        LINE_NUMBER,
        body,
    );
    let a = line.post_sms_webhook(&form, Some(&sig)).await;
    let b = line.post_sms_webhook(&form, Some(&sig)).await;
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert!(b.text().await.unwrap().contains("<Response"));
    ben.expect(T, "one offer", offer_with(body)).await;
    ben.expect_none(Duration::from_secs(2), "a second offer", |m| {
        matches!(m, ServerMsg::Offer { .. })
    })
    .await;
    assert_eq!(line.count(streams::INBOUND, "").await, 1);
    assert_eq!(
        line.count(
            streams::CONTACTS,
            &nwd_proto::subjects::contact_messages_all()
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_gets_403_and_stores_nothing() {
    let line = Line::start().await;
    let (form, _) = line.signed_sms(
        "SM00000000000000000000000000000ba1",
        JAMES,
        LINE_NUMBER,
        "hello",
    );
    let res = line
        .post_sms_webhook(&form, Some("bm90IGEgc2lnbmF0dXJlIGF0IGFsbA=="))
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = line.post_sms_webhook(&form, None).await;
    assert_eq!(res.status(), 403);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(line.count(streams::INBOUND, "").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_the_webhook_is_spooled_and_answered_200_then_delivered() {
    let mut line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let body = "please help i cant stop using";
    let (form, sig) = line.signed_sms(
        "SM00000000000000000000000000000a71",
        STRANGER,
        LINE_NUMBER,
        body,
    );

    // Twilio does not retry a 5xx unless told to: the gateway keeps the
    // signed webhook in its spool and answers 200 as usual.
    line.nats.kill();
    let res = line.post_sms_webhook(&form, Some(&sig)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/xml");

    line.nats.restart().await;
    // A retry of the same webhook (Twilio with `#rc=`) is answered 200 too.
    let res = line.post_sms_webhook(&form, Some(&sig)).await;
    assert_eq!(res.status(), 200);
    // Every service reconnected on its own: the contact still reaches a counsellor.
    // (The dashboard socket outlived the NATS restart; presence is refreshed by heartbeat.)
    ana.send(&ClientMsg::SetPresence {
        status: Presence::Available,
    })
    .await;
    ana.expect(
        Duration::from_secs(30),
        "offer after the NATS restart",
        offer_with(body),
    )
    .await;
    assert_eq!(
        line.count(streams::INBOUND, &nwd_proto::subjects::inbound_sms())
            .await,
        1,
        "spooled, forwarded and retried: stored once"
    );
    line.stop("gateway").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_restarted_mid_conversation_lose_nothing() {
    let mut line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let first = "hi, I need to talk";
    line.patient_sends(JAMES, LINE_NUMBER, first).await;
    let offer = ana.expect(T, "offer", offer_with(first)).await;
    accept(&mut ana, offer.contact_id).await;

    // Crash each pipeline service in turn while the patient keeps writing.
    let mut bodies = Vec::new();
    for (i, svc) in ["intake", "triage", "router", "notifier"]
        .into_iter()
        .enumerate()
    {
        line.crash(svc).await;
        let body = format!("message {i} while {svc} is down");
        line.patient_sends(JAMES, LINE_NUMBER, &body).await;
        bodies.push(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
        line.restart(svc).await;
    }
    for body in &bodies {
        let b = body.clone();
        ana.expect(Duration::from_secs(20), body, move |m| match m {
            ServerMsg::Message { message, .. } if message.body == b => Some(()),
            _ => None,
        })
        .await;
    }

    // A reply sent while the notifier is down is delivered once it is back, exactly once.
    line.crash("notifier").await;
    let reply = "still here with you";
    ana.send(&ClientMsg::Reply {
        contact_id: offer.contact_id,
        client_id: ClientReplyId::new(),
        body: reply.into(),
    })
    .await;
    ana.expect(T, "reply echoed", |m| match m {
        ServerMsg::Message { message, .. } if message.body == reply => Some(()),
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        line.sent_messages()
            .await
            .iter()
            .all(|m| m["body"] != reply),
        "not sent while the notifier is down"
    );
    line.restart("notifier").await;
    nwd_testkit::eventually(T, "reply sent after restart", || async {
        line.sent_messages()
            .await
            .iter()
            .any(|m| m["body"] == reply)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        line.sent_messages()
            .await
            .iter()
            .filter(|m| m["body"] == reply)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_browser_id_reused_in_two_conversations_reaches_both_phones_and_a_changed_body_is_refused()
 {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let mut contacts = Vec::new();
    for (phone, body) in [
        (MARIA, "first person here"),
        (STRANGER, "second person here"),
    ] {
        line.patient_sends(phone, EASTSIDE_DOOR, body).await;
        let offer = ana.expect(T, "the offer", offer_with(body)).await;
        accept(&mut ana, offer.contact_id).await;
        contacts.push(offer.contact_id);
    }
    // A browser (buggy, or replaying) uses one id for two replies.
    let x = ClientReplyId::new();
    for (contact, reply) in contacts.iter().zip(["for the first", "for the second"]) {
        ana.send(&ClientMsg::Reply {
            contact_id: *contact,
            client_id: x,
            body: reply.into(),
        })
        .await;
        ana.expect(T, "the reply accepted", |m| match m {
            ServerMsg::ReplyOutcome {
                contact_id,
                resent: false,
                ..
            } if contact_id == contact => Some(()),
            _ => None,
        })
        .await;
    }
    // Both reach their phones: neither was taken for the other's resend.
    for (phone, reply) in [(MARIA, "for the first"), (STRANGER, "for the second")] {
        nwd_testkit::eventually(T, "the reply at the simulated Twilio", || async {
            line.sent_messages()
                .await
                .into_iter()
                .find(|m| m["to"] == phone && m["body"] == reply)
        })
        .await;
    }
    // The same id with another body in the first conversation: refused, not sent.
    ana.send(&ClientMsg::Reply {
        contact_id: contacts[0],
        client_id: x,
        body: "something else".into(),
    })
    .await;
    ana.expect(T, "the refusal", |m| match m {
        ServerMsg::Error { code, .. } if code == "reply-id-reused" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(
        line.count(
            streams::OUTBOUND,
            &nwd_proto::subjects::outbound_sms(&contacts[0])
        )
        .await,
        1,
        "nothing more was queued for the first person"
    );
}
