//! Signed messages that are not plain short SMS — a long body, a WhatsApp
//! sender, an alphanumeric sender — reach a counsellor through every real
//! service, and a reply to a WhatsApp contact goes back on WhatsApp from the
//! line's WhatsApp address. (Twilio never retries a 4xx: refusing any of
//! these would lose the person's message for good.)

use std::time::Duration;

use nwd_e2e::{Counsellor, LINE_NUMBER, Line, STRANGER};
use nwd_proto::ContactId;
use nwd_proto::dashboard::{ClientMsg, ContactView, ServerMsg};
use nwd_proto::events::DeliveryStatus;

const T: Duration = Duration::from_secs(15);

fn offer_of(body: String) -> impl FnMut(&ServerMsg) -> Option<ContactView> {
    move |m| match m {
        ServerMsg::Offer { contact } if contact.messages.iter().any(|x| x.body == body) => {
            Some(contact.clone())
        }
        _ => None,
    }
}

async fn accept(c: &mut Counsellor, contact: ContactId) {
    c.send(&ClientMsg::Accept {
        contact_id: contact,
    })
    .await;
    c.expect(T, "conversation after accept", |m| match m {
        ServerMsg::Conversation { contact: v } if v.contact_id == contact => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_whatsapp_and_alphanumeric_messages_reach_a_counsellor_and_whatsapp_is_answered_on_whatsapp()
 {
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;

    // Over Twilio's 1,600-character SMS limit (a WhatsApp message may have 4,096).
    let long = format!(
        "I need to tell someone everything. {}",
        "I have been using again since my brother died and I can't stop. ".repeat(62)
    );
    assert!(long.chars().count() > 4000);
    let (form, sig) = line.signed_sms(
        "SM000000000000000000000000000001a1",
        STRANGER,
        LINE_NUMBER,
        &long,
    );
    assert_eq!(line.post_sms_webhook(&form, Some(&sig)).await.status(), 200);
    let offer = ana
        .expect(T, "offer with the long message", offer_of(long.clone()))
        .await;
    assert_eq!(offer.messages[0].body.chars().count(), long.chars().count());

    // WhatsApp: Twilio posts both addresses with the channel prefix.
    let wa_person = "whatsapp:+15005550145";
    let wa_line = format!("whatsapp:{LINE_NUMBER}");
    let wa_body = "hola, I'm writing on WhatsApp, can someone talk?".to_owned();
    let (form, sig) = line.signed_sms(
        "SM000000000000000000000000000001a2",
        wa_person,
        &wa_line,
        &wa_body,
    );
    assert_eq!(line.post_sms_webhook(&form, Some(&sig)).await.status(), 200);
    let wa_offer = ana
        .expect(T, "offer with the WhatsApp message", offer_of(wa_body))
        .await;
    assert_eq!(wa_offer.channel, "WhatsApp ··45");

    // A second WhatsApp message joins the same contact.
    let wa_second = "are you there?".to_owned();
    let (form, sig) = line.signed_sms(
        "SM000000000000000000000000000001a3",
        wa_person,
        &wa_line,
        &wa_second,
    );
    assert_eq!(line.post_sms_webhook(&form, Some(&sig)).await.status(), 200);

    // An alphanumeric sender: no reply can reach it, but a person may be behind it.
    let alpha_body = "test from NWDALERT: please call me".to_owned();
    let (form, sig) = line.signed_sms(
        "SM000000000000000000000000000001a4",
        "NWDALERT",
        LINE_NUMBER,
        &alpha_body,
    );
    assert_eq!(line.post_sms_webhook(&form, Some(&sig)).await.status(), 200);
    ana.expect(
        T,
        "offer with the alphanumeric sender's message",
        offer_of(alpha_body),
    )
    .await;

    accept(&mut ana, wa_offer.contact_id).await;
    ana.expect(
        T,
        "the second WhatsApp message in the conversation",
        |m| match m {
            ServerMsg::Message {
                contact_id,
                message,
                ..
            } if *contact_id == wa_offer.contact_id && message.body == wa_second => Some(()),
            ServerMsg::Conversation { contact }
                if contact.contact_id == wa_offer.contact_id
                    && contact.messages.iter().any(|x| x.body == wa_second) =>
            {
                Some(())
            }
            _ => None,
        },
    )
    .await;

    let reply = "I'm here with you. Are you safe right now?";
    // The dashboard names the reply by an id it derives, never the browser's.
    let outbound_id = ana.reply(wa_offer.contact_id, reply).await;
    let sent = nwd_testkit::eventually(T, "reply at the simulated Twilio", || async {
        line.sent_messages()
            .await
            .into_iter()
            .find(|m| m["body"] == reply)
    })
    .await;
    assert_eq!(sent["to"], wa_person, "back on WhatsApp");
    assert_eq!(
        sent["from"],
        wa_line.as_str(),
        "from the line's WhatsApp address"
    );
    ana.expect(T, "delivered status", |m| match m {
        ServerMsg::DeliveryStatus {
            outbound_id: o,
            status: DeliveryStatus::Delivered,
            ..
        } if *o == outbound_id => Some(()),
        _ => None,
    })
    .await;

    // The WhatsApp sender's thread is keyed by the pseudonym of the address.
    let threads = line
        .jetstream()
        .await
        .get_key_value(nwd_proto::streams::buckets::THREADS)
        .await
        .unwrap();
    let thread = nwd_runtime::kv::get::<nwd_proto::contact::ThreadRecord>(
        &threads,
        &line.thread_key(wa_person),
    )
    .await
    .unwrap()
    .value
    .unwrap();
    assert_eq!(thread.contact_id, wa_offer.contact_id);

    // Channel addresses are as private as numbers: no log line holds one, nor a body.
    let text = logs.contents();
    assert!(
        text.contains("SM000000000000000000000000000001a2"),
        "logs carry ids"
    );
    for secret in [
        "5550145",
        "NWDALERT",
        "brother died",
        "writing on WhatsApp",
        "safe right now",
    ] {
        let hit = text.lines().find(|l| l.contains(secret));
        assert!(
            hit.is_none(),
            "a log line contains {secret:?}: {}",
            hit.unwrap_or_default()
        );
    }
}
