//! The triage service against a real nats-server.
//!
//! Test code: helpers fail loudly, so the panic lints are relaxed here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use nwd_proto::events::{Channel, ContactMessage, MessageTriaged};
use nwd_proto::streams::{self, consumers};
use nwd_proto::{Address, ContactId, Envelope, MessageId, RiskLevel, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::consume::Outcome;
use nwd_testkit::{NatsServer, eventually, listener, wait_ready};
use nwd_triage::{Config, Engine, Error, TriageHandler};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Running {
    js: jetstream::Context,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
    metrics_addr: std::net::SocketAddr,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn start(server: &NatsServer) -> Running {
    server.set_up_bus().await;
    let listener = listener().await;
    let metrics_addr = listener.local_addr().unwrap();
    let config = Config {
        nats: NatsArgs::local(server.url_for("triage")),
        metrics_addr,
        rulebook: None,
        model: None,
        no_model: false,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(nwd_triage::run(config, listener, shutdown.clone()));
    wait_ready(metrics_addr).await;
    let args = NatsArgs::local(server.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    Running {
        js,
        shutdown,
        task,
        metrics_addr,
    }
}

fn contact_message(body: &str) -> ContactMessage {
    ContactMessage {
        contact_id: ContactId::new(),
        message_id: MessageId::new(),
        channel: Channel::Sms {
            patient: Address::parse("+15005550142"),
            line: Address::parse("+15005550100"),
        },
        door: None,
        patient: None,
        body: body.to_owned(),
        received_at: time::OffsetDateTime::now_utc(),
        opens_contact: true,
        previous: None,
        quick_exit: false,
    }
}

async fn publish(js: &jetstream::Context, msg: &ContactMessage, msg_id: &str) {
    bus::publish(
        js,
        subjects::contact_message(&msg.contact_id),
        msg_id,
        &Envelope::new(msg.clone()),
    )
    .await
    .unwrap();
}

/// How many triaged events the stream holds for a contact.
async fn triaged_count(js: &jetstream::Context, contact: &ContactId) -> usize {
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    let subject = subjects::contact_triaged(contact);
    let mut info = stream.info_with_subjects(&subject).await.unwrap();
    let mut count = 0;
    while let Some((s, n)) = info.try_next().await.unwrap() {
        if s == subject {
            count += n;
        }
    }
    count
}

/// The last triaged event of a contact, with its Nats-Msg-Id, once there is one.
async fn triaged(js: &jetstream::Context, contact: &ContactId) -> (MessageTriaged, String) {
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    let subject = subjects::contact_triaged(contact);
    let raw = eventually(WAIT, "a triaged event", || {
        let stream = stream.clone();
        let subject = subject.clone();
        async move { stream.get_last_raw_message_by_subject(&subject).await.ok() }
    })
    .await;
    let env = Envelope::<MessageTriaged>::from_bytes(&raw.payload).unwrap();
    let msg_id = raw
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    (env.data, msg_id)
}

/// Waits until the triage consumer has nothing pending or unacked and has
/// seen at least `delivered` messages.
async fn consumer_drained(js: &jetstream::Context, delivered: u64) {
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(WAIT, "the triage consumer to drain", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(consumers::TRIAGE).await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= delivered)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_contact_message_becomes_a_triaged_event() {
    let server = NatsServer::start().await;
    let svc = start(&server).await;
    let msg = contact_message("my brother took a bunch of pills and he won't wake up");
    publish(&svc.js, &msg, &format!("msg:{}", msg.message_id)).await;

    let (event, msg_id) = triaged(&svc.js, &msg.contact_id).await;
    assert_eq!(msg_id, format!("triaged:{}", msg.message_id));
    assert_eq!(event.message, msg);
    let a = &event.assessment;
    assert_eq!(a.level, RiskLevel::Imminent);
    assert_eq!(a.rulebook_version, Engine::builtin().unwrap().version());
    let rules: Vec<&str> = a.reasons.iter().map(|r| r.rule.as_str()).collect();
    assert!(rules.contains(&"overdose.unresponsive"), "{rules:?}");
    assert!(rules.contains(&"overdose.in_progress"), "{rules:?}");
    let unresponsive = a
        .reasons
        .iter()
        .find(|r| r.rule == "overdose.unresponsive")
        .unwrap();
    let span: String = msg
        .body
        .chars()
        .skip(unresponsive.start)
        .take(unresponsive.end - unresponsive.start)
        .collect();
    assert_eq!(span, "he won't wake up");
    svc.stop().await;
}

#[tokio::test]
async fn low_and_spanish_messages_are_triaged_too() {
    let server = NatsServer::start().await;
    let svc = start(&server).await;
    let low = contact_message("what are your hours?");
    let es = contact_message("me quiero morir, ya no aguanto");
    publish(&svc.js, &low, "a").await;
    publish(&svc.js, &es, "b").await;
    let (event, _) = triaged(&svc.js, &low.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::Low);
    let (event, _) = triaged(&svc.js, &es.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::Moderate);
    assert_eq!(event.assessment.lang, nwd_proto::Language::Es);
    svc.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_yields_one_triaged_event() {
    let server = NatsServer::start().await;
    let svc = start(&server).await;
    let msg = contact_message("I'm going to kill myself tonight");
    // The same message handled twice (as after a crash before the ack):
    // two deliveries, one triaged event thanks to Nats-Msg-Id.
    publish(&svc.js, &msg, "first-delivery").await;
    publish(&svc.js, &msg, "second-delivery").await;
    consumer_drained(&svc.js, 2).await;
    let (event, _) = triaged(&svc.js, &msg.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::Imminent);
    assert_eq!(triaged_count(&svc.js, &msg.contact_id).await, 1);
    svc.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_is_rejected_and_does_not_block_the_contact() {
    let server = NatsServer::start().await;
    let svc = start(&server).await;
    let msg = contact_message("I keep thinking about using again");
    let subject = subjects::contact_message(&msg.contact_id);
    svc.js
        .publish(subject, "not an envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&svc.js, &msg, "good").await;
    let (event, _) = triaged(&svc.js, &msg.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::Moderate);
    // Terminated, not redelivered forever.
    consumer_drained(&svc.js, 2).await;
    svc.stop().await;
}

/// Runs the service with these files against a bus nobody listens on: a
/// bad file must stop it before it connects.
async fn error_before_connecting(rulebook: Option<PathBuf>, model: Option<PathBuf>) -> Error {
    let listener = listener().await;
    let config = Config {
        nats: NatsArgs::local("nats://127.0.0.1:1"),
        metrics_addr: listener.local_addr().unwrap(),
        rulebook,
        model,
        no_model: false,
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        nwd_triage::run(config, listener, CancellationToken::new()),
    )
    .await
    .expect("returns at once")
    .unwrap_err()
}

#[tokio::test]
async fn a_bad_rulebook_stops_the_service_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rulebook.toml");
    std::fs::write(
        &path,
        "version = \"bad\"\n\n[[rule]]\nid = \"x.bad\"\nlabel = \"Bad\"\nlevel = \"urgent\"\npatterns = ['x']\n",
    )
    .unwrap();
    let err = error_before_connecting(Some(path.clone()), None).await;
    assert!(matches!(err, Error::Rulebook(_)));
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(":6:") && text.contains("x.bad"), "{text}");

    let err = error_before_connecting(Some(dir.path().join("absent.toml")), None).await;
    assert!(err.to_string().contains("absent.toml"));
}

#[tokio::test]
async fn a_bad_model_stops_the_service_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.toml");
    std::fs::write(
        &path,
        "version = \"m\"\n[heads.moderate]\nbias = -1.0\nthreshold = 0.5\n[heads.high]\nbias = -1.0\nthreshold = 0.5\n[heads.imminent]\nbias = -1.0\nthreshold = 0.5\n[weights]\n\"w:rope\" = [0.5, 2.0, -0.1]\n",
    )
    .unwrap();
    let err = error_before_connecting(None, Some(path.clone())).await;
    assert!(matches!(err, Error::Rulebook(_)));
    let text = err.to_string();
    assert!(text.contains(&format!("{}:12:", path.display())), "{text}");
    assert!(
        text.contains("w:rope") && text.contains("not negative"),
        "{text}"
    );

    let err = error_before_connecting(None, Some(dir.path().join("absent-model.toml"))).await;
    assert!(err.to_string().contains("absent-model.toml"));
}

#[tokio::test]
async fn a_custom_rulebook_file_is_used() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rulebook.toml");
    std::fs::write(
        &path,
        "version = \"custom-7\"\n[[rule]]\nid = \"t.word\"\nlabel = \"Word\"\nlevel = \"high\"\npatterns = ['banana']\n",
    )
    .unwrap();
    server.set_up_bus().await;
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let config = Config {
        nats: NatsArgs::local(server.url_for("triage")),
        metrics_addr: addr,
        rulebook: Some(path),
        model: None,
        no_model: false,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(nwd_triage::run(config, listener, shutdown.clone()));
    wait_ready(addr).await;
    let args = NatsArgs::local(server.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    let msg = contact_message("BANANA");
    publish(&js, &msg, "m").await;
    let (event, _) = triaged(&js, &msg.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::High);
    assert_eq!(event.assessment.rulebook_version, "custom-7");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_publish_is_retried_and_poison_is_rejected() {
    // JetStream up, but no CONTACTS stream: the publish has nowhere to go.
    let server = NatsServer::start().await;
    let args = NatsArgs {
        ack_timeout_ms: 500,
        ..NatsArgs::local(server.url())
    };
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    let handler = TriageHandler::new(Arc::new(Engine::builtin().unwrap()), js);
    let msg = contact_message("hello");
    let payload = Envelope::new(msg).to_bytes();
    assert_eq!(
        handler.triage(&payload).await,
        Outcome::Retry(nwd_triage::RETRY_DELAY)
    );
    assert_eq!(handler.triage(b"{").await, Outcome::Reject("undecodable"));
    let wrong_type = Envelope::new(nwd_proto::events::ContactAssigned {
        contact_id: ContactId::new(),
        counsellor: nwd_proto::CounsellorId::parse("ana").unwrap(),
        at: time::OffsetDateTime::now_utc(),
        channel: None,
    })
    .to_bytes();
    assert_eq!(
        handler.triage(&wrong_type).await,
        Outcome::Reject("undecodable")
    );
}

#[tokio::test]
async fn triage_keeps_going_across_a_nats_restart() {
    let mut server = NatsServer::start().await;
    let svc = start(&server).await;
    let before = contact_message("checking in");
    publish(&svc.js, &before, "before").await;
    triaged(&svc.js, &before.contact_id).await;
    server.restart().await;
    let after = contact_message("she's not breathing");
    let args = NatsArgs::local(server.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    eventually(WAIT, "publish after restart", || {
        let js = js.clone();
        let after = after.clone();
        async move {
            bus::publish(
                &js,
                subjects::contact_message(&after.contact_id),
                "after",
                &Envelope::new(after),
            )
            .await
            .ok()
        }
    })
    .await;
    let (event, _) = triaged(&js, &after.contact_id).await;
    assert_eq!(event.assessment.level, RiskLevel::Imminent);
    svc.stop().await;
}

#[tokio::test]
async fn logs_and_metrics_hold_levels_and_ids_never_the_text() {
    let logs = nwd_testkit::capture_logs();
    nwd_runtime::telemetry::metrics_handle();
    let server = NatsServer::start().await;
    let svc = start(&server).await;
    let body = "zebracorn secret text: I want to die";
    let msg = contact_message(body);
    publish(&svc.js, &msg, "m").await;
    triaged(&svc.js, &msg.contact_id).await;
    let contents = eventually(WAIT, "the triage log line", || {
        let contents = logs.contents();
        async move { contents.contains("message triaged").then_some(contents) }
    })
    .await;
    assert!(contents.contains(&msg.message_id.to_string()));
    assert!(contents.contains("ideation.suicidal"));
    assert!(!contents.contains("zebracorn"), "the body leaked into logs");
    assert!(
        !contents.contains("5500142"),
        "a phone number leaked into logs"
    );

    let url = format!("http://{}/metrics", svc.metrics_addr);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(
            r#"nwd_triage_assessments_total{service="triage",level="moderate",lang="en"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("nwd_triage_seconds"), "{text}");
    svc.stop().await;
}
