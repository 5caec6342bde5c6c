//! The shared plumbing against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::streams::{self, buckets};
use nwd_proto::{ContactId, Envelope, Event};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::ops::Readiness;
use nwd_testkit::{NatsServer, eventually};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Probe {
    n: u32,
}
impl Event for Probe {
    const TYPE: &'static str = "test.probe";
}

async fn setup() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().await;
    let args = NatsArgs::local(server.url());
    let client = bus::connect(&args, "test").await.unwrap();
    let js = bus::jetstream(client, &args);
    bus::ensure_all(&js, 1).await.unwrap();
    (server, js)
}

#[tokio::test]
async fn ensure_all_is_idempotent_and_uses_file_storage() {
    let (_server, js) = setup().await;
    bus::ensure_all(&js, 1).await.unwrap();
    let mut s = js.get_stream(streams::AUDIT).await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);
    assert!(info.config.deny_delete && info.config.deny_purge);
}

#[tokio::test]
async fn publish_dedupes_by_message_id() {
    let (_server, js) = setup().await;
    let id = ContactId::new();
    let env = Envelope::new(Probe { n: 1 });
    let subject = nwd_proto::subjects::contact_message(&id);
    let first = bus::publish(&js, subject.clone(), "probe-1", &env)
        .await
        .unwrap();
    let second = bus::publish(&js, subject, "probe-1", &env).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
}

struct Counting {
    seen: AtomicUsize,
    fail_first: AtomicUsize,
}

impl Handler for Counting {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        if Envelope::<Probe>::from_bytes(&msg.payload).is_err() {
            return Outcome::Reject("undecodable");
        }
        let failing = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Outcome::Retry(Duration::from_millis(10));
        }
        self.seen.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    }
}

#[tokio::test]
async fn consumer_retries_transient_failures_and_rejects_poison() {
    let (_server, js) = setup().await;
    let handler = Arc::new(Counting {
        seen: AtomicUsize::new(0),
        fail_first: AtomicUsize::new(3),
    });
    let readiness = Readiness::new(Vec::<String>::new());
    let shutdown = CancellationToken::new();
    let spec = ConsumerSpec::new(
        "test",
        streams::CONTACTS,
        "test-consumer",
        vec![nwd_proto::subjects::contact_messages_all()],
    );
    let task = tokio::spawn(consume::run(
        js.clone(),
        spec,
        handler.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    for n in 0..5 {
        let subject = nwd_proto::subjects::contact_message(&ContactId::new());
        bus::publish(&js, subject, &format!("p{n}"), &Envelope::new(Probe { n }))
            .await
            .unwrap();
    }
    js.publish(
        nwd_proto::subjects::contact_message(&ContactId::new()),
        "garbage".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "all good messages handled",
        || async { (handler.seen.load(Ordering::SeqCst) == 5).then_some(()) },
    )
    .await;
    assert!(readiness.is_ready());
    // Nothing left pending: the poison message was terminated, not redelivered forever.
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(Duration::from_secs(5), "no pending acks", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("test-consumer").await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn cas_serialises_concurrent_writers() {
    let (_server, js) = setup().await;
    let store = bus::bucket(&js, buckets::CONTACTS).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            kv::cas::<u32, (), _>(&store, "counter", |v| Cas::Write(v.unwrap_or(0) + 1, ()))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = kv::get::<u32>(&store, "counter").await.unwrap();
    assert_eq!(v.value, Some(20), "every increment applied exactly once");
}

#[tokio::test]
async fn cas_from_a_wrong_guess_re_reads_and_never_keeps_on_a_guess() {
    let (_server, js) = setup().await;
    let store = bus::bucket(&js, buckets::CONTACTS).await.unwrap();
    let absent = || kv::Versioned::<u32> {
        value: None,
        revision: 0,
    };
    // A right guess (the key is new) writes.
    let (_, rev1) = kv::cas_from(&store, "n", Some(absent()), |v: Option<u32>| {
        Cas::Write(v.unwrap_or(0) + 1, ())
    })
    .await
    .unwrap();
    // A guess of "absent" for a key that exists: the create fails, it re-reads.
    kv::cas_from(&store, "n", Some(absent()), |v: Option<u32>| {
        Cas::Write(v.unwrap_or(0) + 1, ())
    })
    .await
    .unwrap();
    // A stale guess (an old revision and value): the update fails, it re-reads.
    let stale = kv::Versioned {
        value: Some(1),
        revision: rev1,
    };
    let (_, rev3) = kv::cas_from(&store, "n", Some(stale.clone()), |v: Option<u32>| {
        Cas::Write(v.unwrap_or(0) + 1, ())
    })
    .await
    .unwrap();
    assert_eq!(kv::get::<u32>(&store, "n").await.unwrap().value, Some(3));
    // "Nothing to do" decided on a stale guess is re-decided on the record as read.
    let (seen, rev) = kv::cas_from(&store, "n", Some(stale), |v: Option<u32>| {
        Cas::<u32, Option<u32>>::Keep(v)
    })
    .await
    .unwrap();
    assert_eq!((seen, rev), (Some(3), rev3));
}

/// Counts deliveries and takes `delay` per message.
struct Slow {
    delay: Duration,
    deliveries: AtomicUsize,
}

impl Handler for Slow {
    async fn handle(&self, _msg: &jetstream::Message) -> Outcome {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        Outcome::Ack
    }
}

fn short_spec(durable: &'static str) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(
        "test",
        streams::CONTACTS,
        durable,
        vec![nwd_proto::subjects::contact_messages_all()],
    );
    spec.ack_wait = Duration::from_millis(600);
    spec
}

#[tokio::test]
async fn a_slow_handler_keeps_its_message_with_progress_acks() {
    let (_server, js) = setup().await;
    let handler = Arc::new(Slow {
        delay: Duration::from_millis(2500),
        deliveries: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let readiness = Readiness::new(Vec::<String>::new());
    let task = tokio::spawn(consume::run(
        js.clone(),
        short_spec("slow"),
        handler.clone(),
        readiness,
        shutdown.clone(),
    ));
    let subject = nwd_proto::subjects::contact_message(&ContactId::new());
    bus::publish(&js, subject, "slow-1", &Envelope::new(Probe { n: 1 }))
        .await
        .unwrap();
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(Duration::from_secs(10), "message acked", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("slow").await.ok()?;
            (info.ack_floor.stream_sequence == 1).then_some(())
        }
    })
    .await;
    // Four ack waits passed while it ran: without progress acks the server
    // would have redelivered it.
    assert_eq!(handler.deliveries.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_message_held_by_a_crashed_consumer_is_redelivered_after_ack_wait() {
    let (server, js) = setup().await;
    let spec = short_spec("crashy");
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    stream
        .get_or_create_consumer::<jetstream::consumer::pull::Config>("crashy", {
            let mut c = jetstream::consumer::pull::Config {
                durable_name: Some("crashy".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_deliver: -1,
                ..Default::default()
            };
            c.filter_subjects = spec.filter_subjects.clone();
            c
        })
        .await
        .unwrap();
    // A first instance takes the message and dies without acking it.
    {
        let args = NatsArgs::local(server.url());
        let client = bus::connect(&args, "doomed").await.unwrap();
        let doomed = bus::jetstream(client.clone(), &args);
        let subject = nwd_proto::subjects::contact_message(&ContactId::new());
        bus::publish(&js, subject, "held-1", &Envelope::new(Probe { n: 1 }))
            .await
            .unwrap();
        let consumer: jetstream::consumer::PullConsumer = doomed
            .get_stream(streams::CONTACTS)
            .await
            .unwrap()
            .get_consumer("crashy")
            .await
            .unwrap();
        use futures::StreamExt;
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        let held = batch.next().await.unwrap().unwrap();
        assert_eq!(held.info().unwrap().delivered, 1);
        drop(batch);
        drop(client);
    }
    let handler = Arc::new(Slow {
        delay: Duration::ZERO,
        deliveries: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let started = std::time::Instant::now();
    let task = tokio::spawn(consume::run(
        js.clone(),
        spec,
        handler.clone(),
        Readiness::new(Vec::<String>::new()),
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(10), "redelivered", || async {
        (handler.deliveries.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // Redelivery waits for ack_wait, never for the old 30 s default.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn the_default_ack_wait_is_short() {
    assert!(consume::DEFAULT_ACK_WAIT <= Duration::from_secs(5));
}
