//! The referrals service against a real nats-server: outreach updates move
//! the referral's Task by compare-and-swap and each version is published
//! once for the partner's callback. The tests play the gateway (the record)
//! and the router (the updates) through the contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::deadletter::DeadLetter;
use nwd_proto::referral::{
    OutreachChange, OutreachOutcome, OutreachUpdate, PartnerTaskUpdate, Priority, ReferralRecord,
    TaskStatus,
};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{ContactId, CounsellorId, Envelope, PartnerId, ReferralId, subjects, wire};
use nwd_referrals::{Config, run};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::kv;
use nwd_testkit::{NatsServer, eventually, wait_ready};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Service {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Service {
    async fn start(config: Config) -> Self {
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { run(config, listener, stop).await.unwrap() });
        wait_ready(addr).await;
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn config(server: &NatsServer) -> Config {
    Config {
        nats: NatsArgs::local(server.url_for("referrals")),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        directory: nwd_runtime::directory::demo_path(),
        unknown_retries: 3,
        unknown_retry_ms: 50,
    }
}

async fn setup() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let js = jetstream::new(server.client().await);
    (server, js)
}

fn partner() -> PartnerId {
    PartnerId::parse("county-hospital").unwrap()
}

/// The gateway's record of a new referral: `requested`, version 1.
fn requested(webhook_id: &str) -> ReferralRecord {
    let at = OffsetDateTime::now_utc();
    ReferralRecord {
        id: wire::referral_id(&partner(), webhook_id),
        partner: partner(),
        webhook_id: webhook_id.into(),
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
    }
}

async fn referrals(js: &jetstream::Context) -> jetstream::kv::Store {
    bus::bucket(js, buckets::REFERRALS).await.unwrap()
}

async fn create(js: &jetstream::Context, record: &ReferralRecord) {
    referrals(js)
        .await
        .create(
            wire::key::referral(&record.id),
            serde_json::to_vec(record).unwrap().into(),
        )
        .await
        .unwrap();
}

async fn read(js: &jetstream::Context, id: &ReferralId) -> Option<ReferralRecord> {
    kv::get::<ReferralRecord>(&referrals(js).await, &wire::key::referral(id))
        .await
        .unwrap()
        .value
}

fn contact() -> ContactId {
    ContactId::derived("outreach-contact")
}

fn counsellor() -> CounsellorId {
    CounsellorId::parse("ana").unwrap()
}

/// Publishes an update as the router does (its id from the change and time).
async fn publish(js: &jetstream::Context, referral: &ReferralId, change: OutreachChange) {
    let update = OutreachUpdate {
        contact_id: contact(),
        referral_id: *referral,
        change,
        at: OffsetDateTime::now_utc(),
    };
    publish_update(js, &update).await;
}

async fn publish_update(js: &jetstream::Context, update: &OutreachUpdate) {
    bus::publish(
        js,
        subjects::contact_outreach_update(&update.contact_id),
        &wire::msg_id::outreach_update(&update.contact_id, &update.change, update.at),
        &Envelope::new(update.clone()),
    )
    .await
    .unwrap();
}

/// Every Task update published for `referral`, in stream order.
async fn task_updates(js: &jetstream::Context, referral: &ReferralId) -> Vec<PartnerTaskUpdate> {
    let mut stream = js.get_stream(streams::OUTBOUND).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let subject = subjects::outbound_partner_task(referral);
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(raw) = stream.get_raw_message(seq).await
            && raw.subject.as_str() == subject
        {
            out.push(
                Envelope::<PartnerTaskUpdate>::from_bytes(&raw.payload)
                    .unwrap()
                    .data,
            );
        }
    }
    out
}

async fn wait_idle(js: &jetstream::Context) {
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(WAIT, "referrals-status idle", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info(consumers::REFERRALS_STATUS)
                .await
                .ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

async fn wait_version(js: &jetstream::Context, id: &ReferralId, version: u32) -> ReferralRecord {
    eventually(WAIT, "the record's version", || async {
        read(js, id).await.filter(|r| r.version >= version)
    })
    .await
}

#[tokio::test]
async fn outreach_updates_move_the_task_and_each_version_is_published_once() {
    let (server, js) = setup().await;
    let record = requested("msg_loop_1");
    create(&js, &record).await;
    let service = Service::start(config(&server)).await;

    publish(&js, &record.id, OutreachChange::Queued).await;
    let accepted = wait_version(&js, &record.id, 2).await;
    assert_eq!(accepted.status, TaskStatus::Accepted);
    assert_eq!(accepted.contact_id, Some(contact()));
    publish(
        &js,
        &record.id,
        OutreachChange::Assigned {
            counsellor: counsellor(),
        },
    )
    .await;
    wait_version(&js, &record.id, 3).await;
    publish(
        &js,
        &record.id,
        OutreachChange::Outcome {
            counsellor: counsellor(),
            outcome: OutreachOutcome::NoAnswer,
        },
    )
    .await;
    let failed = wait_version(&js, &record.id, 4).await;
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.outcome, Some(OutreachOutcome::NoAnswer));
    assert!(failed.status_reason.is_some());
    assert!(failed.last_modified >= record.last_modified);

    // Late and repeated updates after the final status change nothing.
    publish(
        &js,
        &record.id,
        OutreachChange::Resolved {
            counsellor: counsellor(),
        },
    )
    .await;
    publish(
        &js,
        &record.id,
        OutreachChange::Assigned {
            counsellor: counsellor(),
        },
    )
    .await;
    publish(&js, &record.id, OutreachChange::Queued).await;
    wait_idle(&js).await;
    assert_eq!(read(&js, &record.id).await.unwrap(), failed);

    let updates = task_updates(&js, &record.id).await;
    let seen: Vec<(u32, String)> = updates
        .iter()
        .map(|u| (u.version, u.task["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (2, "accepted".to_owned()),
            (3, "in-progress".to_owned()),
            (4, "failed".to_owned()),
        ]
    );
    let last = updates.last().unwrap();
    assert_eq!(last.partner, partner());
    assert_eq!(last.referral_id, record.id);
    assert_eq!(last.task["meta"]["versionId"], "4");
    assert_eq!(
        last.task["requester"]["display"],
        "County General Hospital ED"
    );
    assert_eq!(last.task["owner"]["display"], "No Wrong Door");
    assert_eq!(
        last.task["businessStatus"]["coding"][0]["code"],
        "unable-to-contact"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_write_and_the_publish_still_publishes_the_version_once() {
    let (server, js) = setup().await;
    // What a delivery that wrote version 2 and crashed before publishing leaves.
    let mut written = requested("msg_loop_2");
    written.status = TaskStatus::Accepted;
    written.contact_id = Some(contact());
    written.version = 2;
    create(&js, &written).await;
    let service = Service::start(config(&server)).await;
    let update = OutreachUpdate {
        contact_id: contact(),
        referral_id: written.id,
        change: OutreachChange::Queued,
        at: OffsetDateTime::now_utc(),
    };
    publish_update(&js, &update).await;
    wait_idle(&js).await;
    let updates = task_updates(&js, &written.id).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].version, 2);
    assert_eq!(updates[0].task["status"], "accepted");
    // The redelivery once more (a new stream message, as after a crash of
    // the second attempt): the version is not published twice.
    let mut again = update.clone();
    again.at += time::Duration::milliseconds(1);
    publish_update(&js, &again).await;
    wait_idle(&js).await;
    assert_eq!(task_updates(&js, &written.id).await.len(), 1);
    assert_eq!(read(&js, &written.id).await.unwrap(), written);
    service.stop().await;
}

#[tokio::test]
async fn a_record_racing_in_after_its_update_is_still_moved() {
    let (server, js) = setup().await;
    let mut cfg = config(&server);
    cfg.unknown_retries = 100;
    let service = Service::start(cfg).await;
    let record = requested("msg_loop_3");
    publish(&js, &record.id, OutreachChange::Queued).await;
    // The update was seen at least once without its record.
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(WAIT, "a first delivery", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info(consumers::REFERRALS_STATUS)
                .await
                .ok()?;
            (info.num_redelivered > 0 || info.delivered.stream_sequence > 0).then_some(())
        }
    })
    .await;
    create(&js, &record).await;
    let moved = wait_version(&js, &record.id, 2).await;
    assert_eq!(moved.status, TaskStatus::Accepted);
    service.stop().await;
}

#[tokio::test]
async fn an_update_for_an_unknown_referral_is_dead_lettered_after_a_few_tries() {
    let (server, js) = setup().await;
    let service = Service::start(config(&server)).await;
    let unknown = wire::referral_id(&partner(), "never-posted");
    publish(&js, &unknown, OutreachChange::Queued).await;
    let dead_letters = js.get_stream(streams::DEADLETTER).await.unwrap();
    let letter: DeadLetter = eventually(WAIT, "a dead letter", || {
        let mut dl = dead_letters.clone();
        async move {
            let state = dl.info().await.ok()?.state.clone();
            if state.messages == 0 {
                return None;
            }
            let raw = dl.get_raw_message(state.last_sequence).await.ok()?;
            Some(
                Envelope::<DeadLetter>::from_bytes(&raw.payload)
                    .unwrap()
                    .data,
            )
        }
    })
    .await;
    assert_eq!(letter.consumer, consumers::REFERRALS_STATUS);
    assert!(letter.delivered > 3, "tried {} times", letter.delivered);
    assert!(
        letter.detail.contains("unknown_referral"),
        "{}",
        letter.detail
    );
    assert!(read(&js, &unknown).await.is_none());
    assert!(task_updates(&js, &unknown).await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn an_undecodable_update_is_dead_lettered_at_once() {
    let (server, js) = setup().await;
    let service = Service::start(config(&server)).await;
    js.publish(
        subjects::contact_outreach_update(&contact()),
        "{not json".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dead_letters = js.get_stream(streams::DEADLETTER).await.unwrap();
    eventually(WAIT, "a dead letter", || {
        let mut dl = dead_letters.clone();
        async move { (dl.info().await.ok()?.state.messages == 1).then_some(()) }
    })
    .await;
    service.stop().await;
    drop(server);
}

#[tokio::test]
async fn an_update_for_an_unreadable_record_is_dead_lettered_and_the_record_kept() {
    let (server, js) = setup().await;
    let service = Service::start(config(&server)).await;
    let record = requested("msg_loop_corrupt");
    referrals(&js)
        .await
        .create(wire::key::referral(&record.id), "{not a record".into())
        .await
        .unwrap();
    publish(&js, &record.id, OutreachChange::Queued).await;
    let dead_letters = js.get_stream(streams::DEADLETTER).await.unwrap();
    let letter: DeadLetter = eventually(WAIT, "a dead letter", || {
        let mut dl = dead_letters.clone();
        async move {
            let state = dl.info().await.ok()?.state.clone();
            if state.messages == 0 {
                return None;
            }
            let raw = dl.get_raw_message(state.last_sequence).await.ok()?;
            Some(
                Envelope::<DeadLetter>::from_bytes(&raw.payload)
                    .unwrap()
                    .data,
            )
        }
    })
    .await;
    assert!(
        letter.detail.contains("corrupt_record"),
        "{}",
        letter.detail
    );
    let entry = referrals(&js)
        .await
        .get(wire::key::referral(&record.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&entry[..], b"{not a record");
    assert!(task_updates(&js, &record.id).await.is_empty());
    service.stop().await;
}
