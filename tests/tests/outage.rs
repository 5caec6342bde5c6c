//! NATS stopped for a minute while a hundred people text the line: every
//! signed webhook is answered 200 (the gateway spools it), and when NATS is
//! back every message is stored once and becomes one contact per person in
//! the queue; the counsellor on the floor is offered as many as she has
//! seats (ADR 0017), each once. Real services, real nats-server killed and
//! restarted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use nwd_e2e::{Counsellor, LINE_NUMBER, Line, SERVICES};
use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::ServerMsg;
use nwd_proto::events::{Channel, InboundSms};
use nwd_proto::{ContactId, streams, subjects};
use tokio::time::Instant;

const PATIENTS: usize = 100;
/// Ana's capacity in the demo directory.
const ANA_SEATS: usize = 3;
/// Far longer than every client timeout and reconnect backoff of the line.
const OUTAGE: Duration = Duration::from_secs(60);

fn phone(i: usize) -> String {
    format!("+1500555{:04}", 3000 + i)
}

fn message_sid(i: usize) -> String {
    format!("SM{i:032x}")
}

/// What `/readyz` of `service` answers (status and body); `None` when it
/// does not answer within 2 s.
async fn readyz(line: &Line, service: &str) -> Option<(u16, String)> {
    let res = line
        .http
        .get(line.url(service, "/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    Some((status, res.text().await.ok()?))
}

/// Reads Ana's socket for `window` (so her client answers the dashboard's
/// pings, as a browser does); nothing can be offered while NATS is down.
async fn stay_on_the_socket(ana: &mut Counsellor, window: Duration) {
    ana.expect_none(window, "an offer while NATS is down", |m| {
        matches!(m, ServerMsg::Offer { .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_a_minute_while_a_hundred_sms_arrive_loses_and_doubles_nothing() {
    let mut line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;

    let down_at = Instant::now();
    line.nats.kill();

    // A hundred people text the line; each signed webhook is answered 200.
    let forms: Vec<(String, String)> = (0..PATIENTS)
        .map(|i| line.signed_sms(&message_sid(i), &phone(i), LINE_NUMBER, "is anyone there"))
        .collect();
    let posting = futures::stream::iter(forms.iter().enumerate())
        .map(|(i, (form, signature))| {
            let line = &line;
            async move {
                let res = line.post_sms_webhook(form, Some(signature)).await;
                (i, res.status().as_u16())
            }
        })
        .buffer_unordered(20)
        .collect::<Vec<(usize, u16)>>();
    // Meanwhile Ana's browser stays on the socket (it answers the
    // dashboard's pings, as a browser does).
    let answers = tokio::select! {
        answers = posting => answers,
        () = stay_on_the_socket(&mut ana, OUTAGE) => panic!("the webhooks took the whole outage, or Ana's socket closed"),
    };
    let refused: Vec<_> = answers.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "every signed SMS is answered 200 while NATS is down; {} of {PATIENTS} refused, first (patient, status): {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    assert!(
        down_at.elapsed() < OUTAGE,
        "the webhooks took the whole outage: {:?}",
        down_at.elapsed()
    );

    // For the rest of the minute the gateway keeps answering /readyz:
    // degraded, but 200 while the spool has room. The other services say
    // they are not ready while NATS does not answer.
    let mut saw_degraded = false;
    let mut not_ready: HashSet<&str> = HashSet::new();
    while down_at.elapsed() < OUTAGE {
        let (status, body) = readyz(&line, "gateway")
            .await
            .expect("the gateway's /readyz answers during the outage");
        assert_eq!(status, 200, "gateway /readyz during the outage: {body}");
        saw_degraded |= body.contains("degraded");
        for service in ["intake", "triage", "router", "escalator", "notifier"] {
            if readyz(&line, service).await.is_some_and(|(s, _)| s == 503) {
                not_ready.insert(service);
            }
        }
        stay_on_the_socket(&mut ana, Duration::from_millis(500)).await;
    }
    assert!(saw_degraded, "the gateway's /readyz said it was degraded");
    assert_eq!(
        not_ready.len(),
        5,
        "every service behind the gateway reported not ready while NATS was down: {not_ready:?}"
    );

    line.nats.restart().await;
    let back_at = Instant::now();

    // Every contact reaches the queue. Ana has three seats: she holds offers
    // of the three served first (ADR 0017: priority offers), the rest wait
    // for a seat. Her browser stays on the socket meanwhile.
    let deadline = back_at + Duration::from_secs(40);
    let held_by_ana = |r: &ContactRecord| matches!(&r.state, ContactState::Offered { to, .. } if to.iter().any(|c| c.as_str() == "ana"));
    loop {
        let records = line.records().await;
        let held = records.iter().filter(|r| held_by_ana(r)).count();
        if records.len() == PATIENTS && held == ANA_SEATS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every contact in the queue and {ANA_SEATS} offered to ana within 40 s: {} contacts, {held} offered",
            records.len()
        );
        ana.expect_none(Duration::from_millis(500), "nothing", |_| false)
            .await;
    }
    // Quiet: the sweep has nothing more to change.
    ana.expect_none(Duration::from_secs(3), "nothing", |_| false)
        .await;
    // Each offer on her screen once; an offer made into a seat a contact
    // ahead needed (two contacts applied at once) is withdrawn, never
    // offered twice.
    let mut offers: HashMap<ContactId, usize> = HashMap::new();
    let mut withdrawn: HashSet<ContactId> = HashSet::new();
    for m in &ana.seen {
        match m {
            ServerMsg::Offer { contact } => *offers.entry(contact.contact_id).or_default() += 1,
            ServerMsg::OfferWithdrawn { contact_id, .. } => {
                withdrawn.insert(*contact_id);
            }
            _ => {}
        }
    }
    assert!(
        offers.values().all(|n| *n == 1),
        "no contact offered to ana twice: {offers:?}"
    );
    let on_screen: HashSet<ContactId> = offers
        .keys()
        .filter(|id| !withdrawn.contains(id))
        .copied()
        .collect();

    // INBOUND holds each message once, under its MessageSid.
    let stored: Vec<InboundSms> = line.stored(streams::INBOUND, subjects::inbound_sms()).await;
    assert_eq!(stored.len(), PATIENTS, "each webhook stored once");
    let sids: HashSet<String> = stored
        .iter()
        .map(|m| m.message_sid.as_str().to_owned())
        .collect();
    let sent: HashSet<String> = (0..PATIENTS).map(message_sid).collect();
    assert_eq!(sids, sent, "one inbound SMS per MessageSid");

    // One contact per person, the ones Ana was offered.
    let records = line.records().await;
    assert_eq!(records.len(), PATIENTS, "one contact per patient");
    let patients: HashSet<String> = records
        .iter()
        .map(|r| match &r.channel {
            Channel::Sms { patient, .. } => patient.as_str().to_owned(),
            Channel::Chat { session, .. } => session.to_string(),
        })
        .collect();
    let texted: HashSet<String> = (0..PATIENTS).map(phone).collect();
    assert_eq!(patients, texted, "a contact for each patient");
    assert!(
        records.iter().all(|r| r.message_count == 1),
        "no message doubled in a contact"
    );
    assert!(
        records.iter().all(|r| r.waiting_since().is_some()),
        "every contact is in the queue"
    );
    let held: HashSet<ContactId> = records
        .iter()
        .filter(|r| held_by_ana(r))
        .map(|r| r.id)
        .collect();
    assert_eq!(on_screen, held, "ana's screen shows the offers she holds");

    // Every service is ready again.
    for service in SERVICES {
        nwd_testkit::eventually(
            Duration::from_secs(20),
            &format!("{service} ready after NATS is back"),
            || async {
                readyz(&line, service)
                    .await
                    .is_some_and(|(s, body)| s == 200 && !body.contains("degraded"))
                    .then_some(())
            },
        )
        .await;
    }
    assert!(
        down_at.elapsed() < Duration::from_secs(110),
        "the test stays well under two minutes: {:?}",
        down_at.elapsed()
    );
}
