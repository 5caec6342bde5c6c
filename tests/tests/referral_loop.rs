//! The closed loop of a partner referral with every service running: the
//! referrals service moves the Task from the outreach updates and the
//! notifier calls the partner back, signed, in order. The test plays the
//! gateway (the referral's record) and the router (the outreach updates)
//! through the contract, and runs the partner's callback endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use nwd_e2e::Line;
use nwd_proto::directory::Directory;
use nwd_proto::referral::{
    OutreachChange, OutreachOutcome, OutreachUpdate, Priority, ReferralRecord, ReferralSettings,
    TaskStatus,
};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{ContactId, CounsellorId, Envelope, PartnerId, subjects, wire};
use nwd_runtime::bus;
use nwd_testkit::eventually;
use time::OffsetDateTime;

const T: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outreach_updates_reach_the_partner_as_signed_task_callbacks_in_order() {
    nwd_runtime::telemetry::metrics_handle();
    let mut line = Line::start().await;
    let js = jetstream::new(line.nats.client().await);
    let (url, calls) = nwd_e2e::partner_callbacks(SECRET).await;

    // The operator gives the hospital a callback URL, live.
    let hospital = PartnerId::parse("county-hospital").unwrap();
    let mut dir: Directory =
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    for p in &mut dir.partners {
        if p.id == hospital {
            p.referrals = Some(ReferralSettings {
                secrets: vec![SECRET.into()],
                callback_url: Some(url.clone()),
                due: Default::default(),
            });
        }
    }
    let store = bus::bucket(&js, buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    for service in ["notifier", "referrals"] {
        eventually(T, "the directory applied", || async {
            line.directory_applied(service).await.then_some(())
        })
        .await;
    }

    // The gateway's record of a new referral.
    let at = OffsetDateTime::now_utc();
    let record = ReferralRecord {
        id: wire::referral_id(&hospital, "msg_e2e_1"),
        partner: hospital.clone(),
        webhook_id: "msg_e2e_1".into(),
        body_digest: "00".into(),
        focus: Some("ServiceRequest/ed-4417".into()),
        placer_identifier: None,
        priority: Priority::Stat,
        offer_at: at,
        due_at: at + time::Duration::minutes(15),
        status: TaskStatus::Requested,
        outcome: None,
        status_reason: None,
        contact_id: None,
        version: 1,
        received_at: at,
        last_modified: at,
    };
    bus::bucket(&js, buckets::REFERRALS)
        .await
        .unwrap()
        .create(
            wire::key::referral(&record.id),
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap();

    // The router's outreach updates. The referrals service and the
    // notifier die (kill -9) after the first and come back while the rest
    // wait in CONTACTS: nothing is lost, doubled or reordered.
    let contact = ContactId::new();
    let ana = CounsellorId::parse("ana").unwrap();
    for (i, change) in [
        OutreachChange::Queued,
        OutreachChange::Assigned {
            counsellor: ana.clone(),
        },
        OutreachChange::Outcome {
            counsellor: ana.clone(),
            outcome: OutreachOutcome::Reached,
        },
        OutreachChange::Resolved { counsellor: ana },
    ]
    .into_iter()
    .enumerate()
    {
        if i == 1 {
            let first = wire::msg_id::partner_task(&record.id, 2);
            eventually(T, "the first callback", || async {
                calls
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|c| c.0 == first)
                    .then_some(())
            })
            .await;
            line.crash("referrals").await;
            line.crash("notifier").await;
        }
        let update = OutreachUpdate {
            contact_id: contact,
            referral_id: record.id,
            change,
            at: OffsetDateTime::now_utc(),
        };
        bus::publish(
            &js,
            subjects::contact_outreach_update(&contact),
            &wire::msg_id::outreach_update(&contact, &update.change, update.at),
            &Envelope::new(update),
        )
        .await
        .unwrap();
    }

    line.restart("referrals").await;
    line.restart("notifier").await;
    let got = eventually(T, "three callbacks", || async {
        let got = calls.lock().unwrap().clone();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let expected: Vec<(String, String, bool)> =
        [(2, "accepted"), (3, "in-progress"), (4, "completed")]
            .into_iter()
            .map(|(v, s)| {
                (
                    wire::msg_id::partner_task(&record.id, v),
                    s.to_owned(),
                    true,
                )
            })
            .collect();
    assert_eq!(got, expected);
    // Resolved after the outcome changed nothing: once both consumers are
    // idle, still no fourth callback.
    wait_idle(&js).await;
    assert_eq!(calls.lock().unwrap().len(), 3);

    // A crash between the write of version 2 and its publish: the record
    // is at version 2 and nothing was published. The update comes again
    // (twice, as a redelivery would): the partner gets version 2 once.
    let mut crashed = record.clone();
    crashed.id = wire::referral_id(&hospital, "msg_e2e_2");
    crashed.webhook_id = "msg_e2e_2".into();
    crashed.status = TaskStatus::Accepted;
    crashed.contact_id = Some(contact);
    crashed.version = 2;
    bus::bucket(&js, buckets::REFERRALS)
        .await
        .unwrap()
        .create(
            wire::key::referral(&crashed.id),
            serde_json::to_vec(&crashed).unwrap().into(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let update = OutreachUpdate {
            contact_id: contact,
            referral_id: crashed.id,
            change: OutreachChange::Queued,
            at: OffsetDateTime::now_utc(),
        };
        bus::publish(
            &js,
            subjects::contact_outreach_update(&contact),
            &wire::msg_id::outreach_update(&contact, &update.change, update.at),
            &Envelope::new(update),
        )
        .await
        .unwrap();
    }
    let id = wire::msg_id::partner_task(&crashed.id, 2);
    eventually(T, "the crashed version's callback", || async {
        calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.0 == id)
            .then_some(())
    })
    .await;
    wait_idle(&js).await;
    let got = calls.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3], (id, "accepted".to_owned(), true));
}

async fn wait_idle(js: &jetstream::Context) {
    for (stream, durable) in [
        (streams::CONTACTS, consumers::REFERRALS_STATUS),
        (streams::OUTBOUND, consumers::NOTIFIER_PARTNER),
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        eventually(T, "consumer idle", || {
            let stream = stream.clone();
            async move {
                let info = stream.consumer_info(durable).await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }
}
