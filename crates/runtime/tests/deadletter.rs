//! Dead letters against a real nats-server: what a consumer cannot handle is
//! parked in DEADLETTER (never dropped), supervisors are alerted, the
//! consumer goes on, and the replay tool puts a parked message back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use nwd_proto::deadletter::{DeadLetter, DeadLetterReason, OpsAlert};
use nwd_proto::streams;
use nwd_proto::subjects;
use nwd_proto::{ContactId, Envelope, Event, EventId};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::deadletter;
use nwd_runtime::ops::Readiness;
use nwd_testkit::{NatsServer, eventually};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    n: u32,
    body: String,
}
impl Event for Note {
    const TYPE: &'static str = "test.note";
}

/// The number that makes the handler panic while `broken`.
const BOOM: u32 = 13;

/// Records the notes it handled; panics on [`BOOM`] while `broken`.
struct Notes {
    handled: Mutex<Vec<u32>>,
    broken: AtomicBool,
    panics: AtomicUsize,
}

impl Notes {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            handled: Mutex::new(Vec::new()),
            broken: AtomicBool::new(true),
            panics: AtomicUsize::new(0),
        })
    }

    fn handled(&self) -> Vec<u32> {
        self.handled.lock().unwrap().clone()
    }
}

impl Handler for Notes {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let Ok(env) = Envelope::<Note>::from_bytes(&msg.payload) else {
            return Outcome::Reject("undecodable");
        };
        if env.data.n == BOOM && self.broken.load(Ordering::SeqCst) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in the handler");
        }
        self.handled.lock().unwrap().push(env.data.n);
        Outcome::Ack
    }
}

const CONSUMER: &str = "test-notes";

struct Line {
    server: NatsServer,
    js: jetstream::Context,
    notes: Arc<Notes>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Line {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let args = NatsArgs::local(server.url());
        let client = bus::connect(&args, "test").await.unwrap();
        let js = bus::jetstream(client, &args);
        bus::ensure_all(&js, 1).await.unwrap();
        let notes = Notes::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(consume::run(
            js.clone(),
            ConsumerSpec::new(
                "test",
                streams::CONTACTS,
                CONSUMER,
                vec![subjects::contact_messages_all()],
            ),
            notes.clone(),
            Readiness::new(Vec::<String>::new()),
            shutdown.clone(),
        ));
        Self {
            server,
            js,
            notes,
            shutdown,
            task,
        }
    }

    async fn publish_raw(&self, subject: &str, msg_id: Option<&str>, payload: Vec<u8>) {
        let mut m = jetstream::message::PublishMessage::build().payload(payload.into());
        if let Some(id) = msg_id {
            m = m.message_id(id);
        }
        let ack = self
            .js
            .send_publish(subject.to_owned(), m)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }

    async fn publish(&self, subject: &str, n: u32) {
        let env = Envelope::new(Note {
            n,
            body: format!("note {n}"),
        });
        bus::publish(&self.js, subject.to_owned(), &format!("note-{n}"), &env)
            .await
            .unwrap();
    }

    async fn wait_handled(&self, n: u32) {
        eventually(Duration::from_secs(10), "the note handled", || async {
            self.notes.handled().contains(&n).then_some(())
        })
        .await;
    }

    /// Waits until the consumer holds nothing: every message acked or terminated.
    async fn wait_settled(&self) {
        let stream = self.js.get_stream(streams::CONTACTS).await.unwrap();
        eventually(Duration::from_secs(10), "nothing pending", || {
            let stream = stream.clone();
            async move {
                let info = stream.consumer_info(CONSUMER).await.ok()?;
                (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
            }
        })
        .await;
    }

    async fn dead_letters(&self) -> Vec<Envelope<DeadLetter>> {
        let mut stream = self.js.get_stream(streams::DEADLETTER).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                out.push(Envelope::<DeadLetter>::from_bytes(&raw.payload).unwrap());
            }
        }
        out
    }

    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_nwd-deadletter"))
            .arg("--nats-url")
            .arg(self.server.url())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nwd-deadletter {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// An envelope as a newer version of the line would write it: schema 2, a
/// field this reader does not know.
fn newer_envelope(n: u32) -> Vec<u8> {
    format!(
        r#"{{"id":"{}","type":"test.note","time":"2026-12-07T05:00:00Z","schema":2,"data":{{"n":{n},"body":"from the future","mood":"new"}}}}"#,
        EventId::new()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_newer_schema_and_garbage_are_dead_lettered_alerted_and_the_next_message_is_handled() {
    let line = Line::start().await;
    let mut alerts = line
        .js
        .client()
        .subscribe(subjects::ops_alert())
        .await
        .unwrap();
    line.js.client().flush().await.unwrap();

    let contact = ContactId::new();
    let subject = subjects::contact_message(&contact);
    line.publish_raw(&subject, Some("newer-1"), newer_envelope(1))
        .await;
    line.publish_raw(&subject, None, b"\x00garbage{".to_vec())
        .await;
    // The next good message, with fields this reader does not know (in the
    // envelope and in its data): handled normally.
    let extra = format!(
        r#"{{"id":"{}","type":"test.note","time":"2026-12-07T05:00:00Z","schema":1,"trace":"x","data":{{"n":3,"body":"hi","colour":"blue"}}}}"#,
        EventId::new()
    );
    line.publish_raw(&subject, Some("note-3"), extra.into_bytes())
        .await;
    line.wait_handled(3).await;
    line.wait_settled().await;
    // The newer envelope was parked, not handed to a handler that might misread it.
    assert_eq!(line.notes.handled(), vec![3]);

    let dead = line.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let newer = &dead[0].data;
    assert_eq!(newer.reason, DeadLetterReason::NewerSchema);
    assert_eq!(newer.consumer, CONSUMER);
    assert_eq!(newer.stream, streams::CONTACTS);
    assert_eq!(newer.subject, subject);
    assert_eq!(newer.stream_sequence, 1);
    let kept = String::from_utf8(newer.payload.clone()).unwrap();
    assert!(kept.contains(r#""schema":2"#) && kept.contains(r#""mood":"new""#));
    assert_eq!(newer.msg_id(), Some("newer-1"));
    assert!(newer.detail.contains("schema 2"), "{}", newer.detail);
    let garbage = &dead[1].data;
    assert_eq!(garbage.reason, DeadLetterReason::Undecodable);
    assert_eq!(garbage.payload, b"\x00garbage{");
    assert_eq!(garbage.stream_sequence, 2);
    assert!(!garbage.detail.contains("garbage"), "{}", garbage.detail);

    // Supervisors were told, once each, without the payload.
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), alerts.next())
            .await
            .expect("an alert")
            .unwrap();
        assert!(!String::from_utf8_lossy(&msg.payload).contains("future"));
        let OpsAlert::DeadLetter {
            consumer, reason, ..
        } = Envelope::<OpsAlert>::from_bytes(&msg.payload).unwrap().data
        else {
            panic!("a dead-letter alert");
        };
        assert_eq!(consumer, CONSUMER);
        reasons.push(reason);
    }
    assert_eq!(
        reasons,
        vec![DeadLetterReason::NewerSchema, DeadLetterReason::Undecodable]
    );
    line.stop().await;
}

#[tokio::test]
async fn a_handler_panic_dead_letters_the_message_and_consumption_goes_on() {
    let line = Line::start().await;
    // Same subject, so the same lane: the lane that met the panic goes on.
    let subject = subjects::contact_message(&ContactId::new());
    line.publish(&subject, BOOM).await;
    line.publish(&subject, 14).await;
    line.wait_handled(14).await;
    line.wait_settled().await;
    let dead = line.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].data.reason, DeadLetterReason::HandlerPanicked);
    assert_eq!(dead[0].data.msg_id(), Some("note-13"));
    // Parked once and terminated: not redelivered into the panic again.
    assert_eq!(line.notes.panics.load(Ordering::SeqCst), 1);

    // Later messages on other lanes are handled too.
    for n in 20..30 {
        line.publish(&subjects::contact_message(&ContactId::new()), n)
            .await;
    }
    for n in 20..30 {
        line.wait_handled(n).await;
    }
    line.stop().await;
}

#[tokio::test]
async fn the_replay_tool_lists_without_payloads_and_puts_a_parked_message_back() {
    let line = Line::start().await;
    let subject = subjects::contact_message(&ContactId::new());
    line.publish(&subject, BOOM).await;
    line.wait_settled().await;
    eventually(Duration::from_secs(10), "the dead letter", || async {
        (line.dead_letters().await.len() == 1).then_some(())
    })
    .await;
    assert!(line.notes.handled().is_empty());

    let listed = line.tool(&["list"]);
    assert!(listed.contains(CONSUMER), "{listed}");
    assert!(listed.contains("handler_panicked"), "{listed}");
    assert!(listed.contains(&subject), "{listed}");
    assert!(
        !listed.contains("note 13"),
        "no payload in the list: {listed}"
    );
    let seq = deadletter::list(&line.js).await.unwrap()[0].sequence;
    // `show` is for reading the message itself (a person may be waiting).
    let shown = line.tool(&["show", &seq.to_string()]);
    assert!(shown.contains("note 13"), "{shown}");
    assert!(shown.contains("Nats-Msg-Id: note-13"), "{shown}");

    // The fix is deployed; the operator replays.
    line.notes.broken.store(false, Ordering::SeqCst);
    let replayed = line.tool(&["replay", &seq.to_string()]);
    // The original id is still inside the duplicate window: a replay id.
    assert!(replayed.contains("note-13:replay:"), "{replayed}");
    line.wait_handled(BOOM).await;
    line.wait_settled().await;
    assert_eq!(line.notes.handled(), vec![BOOM]);
    assert!(
        line.dead_letters().await.is_empty(),
        "the record is deleted"
    );
    assert!(line.tool(&["list"]).contains("0 dead letter(s)"));
    line.stop().await;
}

#[tokio::test]
async fn a_replay_run_twice_publishes_once() {
    let line = Line::start().await;
    let subject = subjects::contact_message(&ContactId::new());
    line.publish(&subject, BOOM).await;
    eventually(Duration::from_secs(10), "the dead letter", || async {
        (line.dead_letters().await.len() == 1).then_some(())
    })
    .await;
    line.wait_settled().await;
    let seq = deadletter::list(&line.js).await.unwrap()[0].sequence;
    // As if a first run had published and crashed before deleting: publish
    // the replay by hand with the id the tool would use, then run the tool.
    let dl = line.dead_letters().await.remove(0).data;
    line.notes.broken.store(false, Ordering::SeqCst);
    let first = bus::publish(
        &line.js,
        subject.clone(),
        &nwd_proto::deadletter::replay_id(Some("note-13"), seq),
        &Envelope::<Note>::from_bytes(&dl.payload).unwrap(),
    )
    .await
    .unwrap();
    let replayed = deadletter::replay(&line.js, seq).await.unwrap();
    assert_eq!(replayed.stream_sequence, first.sequence, "not stored twice");
    line.wait_handled(BOOM).await;
    line.wait_settled().await;
    assert_eq!(line.notes.handled(), vec![BOOM]);
    line.stop().await;
}

#[tokio::test]
async fn a_message_whose_dead_letter_cannot_be_stored_is_retried_never_dropped() {
    let line = Line::start().await;
    // DEADLETTER gone (as good as full or unreachable for the publish).
    line.js.delete_stream(streams::DEADLETTER).await.unwrap();
    let subject = subjects::contact_message(&ContactId::new());
    line.publish_raw(&subject, Some("garbage-1"), b"not json".to_vec())
        .await;
    line.publish(&subject, 5).await;
    // The lane goes on; the garbage is not terminated but comes back.
    line.wait_handled(5).await;
    let stream = line.js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(Duration::from_secs(15), "a redelivery", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(CONSUMER).await.ok()?;
            (info.num_redelivered > 0).then_some(())
        }
    })
    .await;
    // DEADLETTER back: the next attempt parks it.
    bus::ensure_all(&line.js, 1).await.unwrap();
    eventually(Duration::from_secs(15), "the dead letter", || async {
        let dead = line.dead_letters().await;
        (dead.len() == 1).then_some(())
    })
    .await;
    line.wait_settled().await;
    let dead = line.dead_letters().await;
    assert_eq!(dead[0].data.msg_id(), Some("garbage-1"));
    assert!(dead[0].data.delivered >= 2, "{:?}", dead[0].data.delivered);
    line.stop().await;
}
