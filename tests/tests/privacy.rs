//! Logs never hold a message body or a phone number.

use std::time::Duration;

use nwd_e2e::{Counsellor, EASTSIDE_DOOR, Line, MARIA};
use nwd_proto::ClientReplyId;
use nwd_proto::dashboard::{ClientMsg, Presence, ServerMsg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_contains_a_body_or_a_phone_number() {
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    let mut ana = Counsellor::connect(&line, "ana").await;
    ana.send(&ClientMsg::SetPresence {
        status: Presence::Available,
    })
    .await;
    ana.expect(Duration::from_secs(10), "presence", |m| {
        matches!(m, ServerMsg::Presence { .. }).then_some(())
    })
    .await;

    let body = "zebra-canary I took all my pills and I want to die";
    line.patient_sends(MARIA, EASTSIDE_DOOR, body).await;
    let contact = ana
        .expect(Duration::from_secs(10), "offer", |m| match m {
            ServerMsg::Offer { contact } => Some(contact.contact_id),
            _ => None,
        })
        .await;
    ana.send(&ClientMsg::Accept {
        contact_id: contact,
    })
    .await;
    ana.expect(Duration::from_secs(10), "conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. }).then_some(())
    })
    .await;
    let reply = "okapi-canary please stay with me";
    ana.send(&ClientMsg::Reply {
        contact_id: contact,
        client_id: ClientReplyId::new(),
        body: reply.into(),
    })
    .await;
    nwd_testkit::eventually(Duration::from_secs(10), "reply sent", || async {
        line.sent_messages()
            .await
            .iter()
            .any(|m| m["body"] == reply)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = logs.contents();
    assert!(
        text.lines().count() > 20,
        "the services did log (so this test can fail): {} lines",
        text.lines().count()
    );
    assert!(text.contains(&contact.to_string()), "logs carry ids");
    for secret in [
        "zebra-canary",
        "okapi-canary",
        "took all my pills",
        "5550142",
        "5550110",
        "María",
        "Maria",
        "Ana García",
    ] {
        let hit = text.lines().find(|l| l.contains(secret));
        assert!(
            hit.is_none(),
            "a log line contains {secret:?}: {}",
            hit.unwrap_or_default()
        );
    }
}
