//! Intake against a real nats-server, run in-process through `run`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use nwd_intake::{Config, Error, message_id_for, run};
use nwd_proto::contact::ThreadRecord;
use nwd_proto::deadletter::OpsAlert;
use nwd_proto::events::{Channel, ContactMessage, ContactResolved, InboundSms};
use nwd_proto::referral::{InboundReferral, OutreachOpened, Priority, ReferredPatient};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::wire;
use nwd_proto::{Address, ContactId, CounsellorId, Envelope, MessageSid, Pseudonymiser, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::kv;
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually, wait_ready};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LINE: &str = "+15005550100";
const EASTSIDE: &str = "+15005550110";
const MARIA: &str = "+15005550142";
const STRANGER: &str = "+15005550177";
const WAIT: Duration = Duration::from_secs(15);

/// Test pseudonym keys (never used outside tests).
const PSEUDONYM_KEY: &str = "intake-test-pseudonym-key-0123456789abcdef";
const OTHER_PSEUDONYM_KEY: &str = "intake-test-other-pseudonym-key-0123456789";

fn phone(s: &str) -> Address {
    Address::parse(s)
}

fn pseudonyms() -> Pseudonymiser {
    Pseudonymiser::new(PSEUDONYM_KEY.as_bytes()).unwrap()
}

fn thread_key(sender: &Address) -> String {
    pseudonyms().thread_key(sender)
}

fn config(url: &str, directory: std::path::PathBuf) -> Config {
    Config {
        nats: NatsArgs::local(url),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        directory,
        pseudonym_key: Secret::new(PSEUDONYM_KEY),
    }
}

struct Intake {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Intake {
    async fn start(url: &str) -> Self {
        Self::start_with_key(url, PSEUDONYM_KEY).await
    }

    async fn start_with_key(url: &str, key: &str) -> Self {
        // testkit polls /readyz with reqwest, built without a default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = Config {
            pseudonym_key: Secret::new(key),
            ..config(url, nwd_runtime::directory::demo_path())
        };
        let task = tokio::spawn(run(config, listener, shutdown.clone()));
        wait_ready(addr).await;
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn setup() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().await;
    let args = NatsArgs::local(server.url());
    let client = bus::connect(&args, "test").await.unwrap();
    let js = bus::jetstream(client, &args);
    bus::ensure_all(&js, 1).await.unwrap();
    (server, js)
}

fn sms(from: &str, to: &str) -> InboundSms {
    InboundSms {
        message_sid: MessageSid::parse(&format!("SM{:032x}", ulid::Ulid::new().0)).unwrap(),
        account_sid: "AC9af211329b2fc82e5efe906062c73008".into(),
        from: phone(from),
        to: phone(to),
        body: "I need to talk to someone".into(),
        num_media: 0,
        received_at: OffsetDateTime::now_utc(),
        flags: Vec::new(),
    }
}

/// Publishes as the gateway does: `Nats-Msg-Id` = `nats_id`.
async fn publish_sms(js: &jetstream::Context, sms: &InboundSms, nats_id: &str) {
    bus::publish(
        js,
        subjects::inbound_sms(),
        nats_id,
        &Envelope::new(sms.clone()),
    )
    .await
    .unwrap();
}

/// Every ContactMessage stored in CONTACTS, in stream order.
async fn contact_messages(js: &jetstream::Context) -> Vec<ContactMessage> {
    let prefix = subjects::contact_messages_all();
    let prefix = prefix.trim_end_matches('*');
    let mut stream = js.get_stream(streams::CONTACTS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.as_str().starts_with(prefix)
        {
            out.push(
                Envelope::<ContactMessage>::from_bytes(&m.payload)
                    .unwrap()
                    .data,
            );
        }
    }
    out
}

/// Waits for the ContactMessage of this SMS.
async fn message_for(js: &jetstream::Context, sms: &InboundSms) -> ContactMessage {
    let id = message_id_for(&sms.message_sid, sms.received_at);
    eventually(WAIT, "the contact message", || async {
        contact_messages(js)
            .await
            .into_iter()
            .find(|m| m.message_id == id)
    })
    .await
}

/// Waits until a consumer has nothing pending and nothing unacked.
async fn wait_idle(js: &jetstream::Context, stream: &str, durable: &str) {
    let stream = js.get_stream(stream).await.unwrap();
    eventually(WAIT, "consumer idle", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(durable).await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn sms_opens_a_contact_through_the_right_door_and_threads_by_sender() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let first = sms(MARIA, EASTSIDE);
    publish_sms(&js, &first, first.message_sid.as_str()).await;
    let m1 = message_for(&js, &first).await;
    assert_eq!(
        m1.door.as_ref().map(|d| d.as_str()),
        Some("eastside-clinic")
    );
    assert_eq!(m1.patient.as_deref(), Some("maria"));
    assert!(m1.opens_contact);
    assert_eq!(
        m1.channel,
        Channel::Sms {
            patient: phone(MARIA),
            line: phone(EASTSIDE)
        }
    );
    assert_eq!(m1.body, first.body);
    assert_eq!(m1.received_at, first.received_at);

    // Same sender, the line's own number: same contact, no door.
    let second = sms(MARIA, LINE);
    publish_sms(&js, &second, second.message_sid.as_str()).await;
    let m2 = message_for(&js, &second).await;
    assert_eq!(m2.contact_id, m1.contact_id);
    assert!(!m2.opens_contact);
    assert_eq!(m2.door, None);

    // Another sender, unknown to the directory: a different contact, still taken.
    let other = sms(STRANGER, LINE);
    publish_sms(&js, &other, other.message_sid.as_str()).await;
    let m3 = message_for(&js, &other).await;
    assert_ne!(m3.contact_id, m1.contact_id);
    assert!(m3.opens_contact);
    assert_eq!(m3.patient, None);
    assert_eq!(m3.door, None);

    // Published on the contact's own subject with the message id as Nats-Msg-Id.
    let stream = js.get_stream(streams::CONTACTS).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subjects::contact_message(&m1.contact_id))
        .await
        .unwrap();
    let msg_id = last
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id, Some(format!("msg:{}", m2.message_id)));

    // The thread record is keyed by the phone key, never the number.
    let threads = bus::bucket(&js, buckets::THREADS).await.unwrap();
    let thread = kv::get::<ThreadRecord>(&threads, &thread_key(&phone(MARIA)))
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(thread.contact_id, m1.contact_id);
    assert_eq!(thread.opened_by, m1.message_id);
    let mut keys = threads.keys().await.unwrap();
    while let Some(k) = futures::StreamExt::next(&mut keys).await {
        assert!(!k.unwrap().contains("5550142"));
    }

    intake.stop().await;
}

#[tokio::test]
async fn the_same_sms_twice_after_the_dedupe_window_is_one_message() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let s = sms(MARIA, LINE);
    // Different Nats-Msg-Ids: INBOUND does not dedupe, as after the window.
    publish_sms(&js, &s, "first-post").await;
    publish_sms(&js, &s, "re-post").await;
    let m = message_for(&js, &s).await;
    wait_idle(&js, streams::INBOUND, consumers::INTAKE_SMS).await;

    let all = contact_messages(&js).await;
    assert_eq!(all.len(), 1, "exactly one contact message: {all:?}");
    assert!(all[0].opens_contact);
    assert_eq!(all[0], m);

    intake.stop().await;
}

#[tokio::test]
async fn resolution_closes_the_thread_and_the_next_sms_opens_a_new_contact() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let first = sms(MARIA, EASTSIDE);
    publish_sms(&js, &first, first.message_sid.as_str()).await;
    let m1 = message_for(&js, &first).await;

    let resolved = |contact_id: ContactId| ContactResolved {
        contact_id,
        channel: Channel::Sms {
            patient: phone(MARIA),
            line: phone(EASTSIDE),
        },
        counsellor: CounsellorId::parse("ana").unwrap(),
        disposition: None,
        note: None,
        at: OffsetDateTime::now_utc(),
    };
    let ev = Envelope::new(resolved(m1.contact_id));
    bus::publish(
        &js,
        subjects::contact_resolved(&m1.contact_id),
        "resolved-1",
        &ev,
    )
    .await
    .unwrap();
    let threads = bus::bucket(&js, buckets::THREADS).await.unwrap();
    let key = thread_key(&phone(MARIA));
    eventually(WAIT, "thread closed", || async {
        let t = kv::get::<ThreadRecord>(&threads, &key).await.ok()?.value?;
        t.closed_at.map(|_| ())
    })
    .await;

    let second = sms(MARIA, EASTSIDE);
    publish_sms(&js, &second, second.message_sid.as_str()).await;
    let m2 = message_for(&js, &second).await;
    assert_ne!(m2.contact_id, m1.contact_id);
    assert!(m2.opens_contact);
    // The new contact names the one it follows ("earlier contacts" on screen).
    assert_eq!(m2.previous, Some(m1.contact_id));
    assert_eq!(m1.previous, None);

    // A redelivered resolution of the old contact does not close the new one.
    let again = Envelope::new(resolved(m1.contact_id));
    bus::publish(
        &js,
        subjects::contact_resolved(&m1.contact_id),
        "resolved-1-again",
        &again,
    )
    .await
    .unwrap();
    wait_idle(&js, streams::CONTACTS, consumers::INTAKE_RESOLVED).await;
    let third = sms(MARIA, EASTSIDE);
    publish_sms(&js, &third, third.message_sid.as_str()).await;
    let m3 = message_for(&js, &third).await;
    assert_eq!(m3.contact_id, m2.contact_id);
    assert!(!m3.opens_contact);
    assert_eq!(m3.previous, None, "only the opening message names it");

    intake.stop().await;
}

#[tokio::test]
async fn undecodable_messages_are_terminated_and_block_nothing() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    for subject in [
        subjects::inbound_sms(),
        subjects::contact_resolved(&ContactId::new()),
    ] {
        js.publish(subject, "not an envelope".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The right envelope shape but the wrong event type is poison too.
    let wrong = Envelope::new(resolved_for_type_check());
    bus::publish(&js, subjects::inbound_sms(), "wrong-type", &wrong)
        .await
        .unwrap();

    let s = sms(MARIA, LINE);
    publish_sms(&js, &s, s.message_sid.as_str()).await;
    let m = message_for(&js, &s).await;
    assert!(m.opens_contact);
    wait_idle(&js, streams::INBOUND, consumers::INTAKE_SMS).await;
    wait_idle(&js, streams::CONTACTS, consumers::INTAKE_RESOLVED).await;
    assert_eq!(contact_messages(&js).await.len(), 1);

    intake.stop().await;
}

fn resolved_for_type_check() -> ContactResolved {
    ContactResolved {
        contact_id: ContactId::new(),
        channel: Channel::Sms {
            patient: phone(MARIA),
            line: phone(LINE),
        },
        counsellor: CounsellorId::parse("ana").unwrap(),
        disposition: None,
        note: None,
        at: OffsetDateTime::now_utc(),
    }
}

#[tokio::test]
async fn a_restart_mid_stream_loses_nothing() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let senders = ["+15005550161", "+15005550162", "+15005550163", MARIA];
    let mut sent = Vec::new();
    for i in 0..20 {
        let s = sms(senders[i % senders.len()], LINE);
        publish_sms(&js, &s, s.message_sid.as_str()).await;
        sent.push(s);
    }
    eventually(WAIT, "some messages handled", || async {
        (!contact_messages(&js).await.is_empty()).then_some(())
    })
    .await;
    intake.stop().await;

    // More arrive while intake is down.
    for i in 20..40 {
        let s = sms(senders[i % senders.len()], LINE);
        publish_sms(&js, &s, s.message_sid.as_str()).await;
        sent.push(s);
    }
    let intake = Intake::start(&server.url_for("intake")).await;
    let expected: HashSet<_> = sent
        .iter()
        .map(|s| message_id_for(&s.message_sid, s.received_at))
        .collect();
    let all = eventually(WAIT, "all 40 messages", || async {
        let all = contact_messages(&js).await;
        (all.len() >= 40).then_some(all)
    })
    .await;
    wait_idle(&js, streams::INBOUND, consumers::INTAKE_SMS).await;
    let all_again = contact_messages(&js).await;
    assert_eq!(all_again.len(), 40, "no duplicates");
    let got: HashSet<_> = all.iter().map(|m| m.message_id).collect();
    assert_eq!(got, expected);

    // One contact per sender, opened exactly once.
    let mut contacts: HashMap<String, HashSet<ContactId>> = HashMap::new();
    for m in &all {
        let Channel::Sms { patient, .. } = &m.channel else {
            panic!("only SMS were sent")
        };
        contacts
            .entry(patient.as_str().to_owned())
            .or_default()
            .insert(m.contact_id);
    }
    assert_eq!(contacts.len(), senders.len());
    assert!(contacts.values().all(|c| c.len() == 1));
    assert_eq!(
        all.iter().filter(|m| m.opens_contact).count(),
        senders.len()
    );

    intake.stop().await;
}

#[tokio::test]
async fn survives_a_nats_restart() {
    let (mut server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let before = sms(MARIA, LINE);
    publish_sms(&js, &before, before.message_sid.as_str()).await;
    let m1 = message_for(&js, &before).await;

    server.restart().await;

    let after = sms(MARIA, LINE);
    eventually(WAIT, "publish after restart", || async {
        bus::publish(
            &js,
            subjects::inbound_sms(),
            after.message_sid.as_str(),
            &Envelope::new(after.clone()),
        )
        .await
        .ok()
    })
    .await;
    let m2 = message_for(&js, &after).await;
    assert_eq!(m2.contact_id, m1.contact_id, "the thread survived");
    assert!(!m2.opens_contact);

    intake.stop().await;
}

#[tokio::test]
async fn a_bad_directory_stops_the_service_with_a_clear_error() {
    let listener = nwd_testkit::listener().await;
    let err = run(
        config("nats://127.0.0.1:1", "/nonexistent/directory.toml".into()),
        listener,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Directory(_)));
    assert!(err.to_string().contains("/nonexistent/directory.toml"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.toml");
    std::fs::write(&path, "[line]\nname = 'x'\n").unwrap();
    let err = run(
        config("nats://127.0.0.1:1", path.clone()),
        nwd_testkit::listener().await,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not valid"), "{err}");
}

#[tokio::test]
async fn whatsapp_senders_thread_like_phones_and_keep_their_channel() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url()).await;
    let wa_maria = "whatsapp:+15005550142";
    let wa_door = "whatsapp:+15005550110";

    let first = sms(wa_maria, wa_door);
    publish_sms(&js, &first, first.message_sid.as_str()).await;
    let m1 = message_for(&js, &first).await;
    assert!(m1.opens_contact);
    assert_eq!(
        m1.channel,
        Channel::Sms {
            patient: phone(wa_maria),
            line: phone(wa_door),
        }
    );
    assert_eq!(m1.channel.label(), "WhatsApp ··42");
    // The number behind the WhatsApp address is the door and the person.
    assert_eq!(
        m1.door.as_ref().map(|d| d.as_str()),
        Some("eastside-clinic")
    );
    assert_eq!(m1.patient.as_deref(), Some("maria"));

    let second = sms(wa_maria, wa_door);
    publish_sms(&js, &second, second.message_sid.as_str()).await;
    let m2 = message_for(&js, &second).await;
    assert_eq!(
        m2.contact_id, m1.contact_id,
        "one contact per WhatsApp sender"
    );
    assert!(!m2.opens_contact);

    // Her SMS is another channel: its own thread, so replies go back where she wrote.
    let by_sms = sms(MARIA, EASTSIDE);
    publish_sms(&js, &by_sms, by_sms.message_sid.as_str()).await;
    let m3 = message_for(&js, &by_sms).await;
    assert_ne!(m3.contact_id, m1.contact_id);

    // An alphanumeric sender and a short code are taken and threaded too.
    for sender in ["NWDALERT", "55555"] {
        let a = sms(sender, LINE);
        let b = sms(sender, LINE);
        publish_sms(&js, &a, a.message_sid.as_str()).await;
        publish_sms(&js, &b, b.message_sid.as_str()).await;
        let (ma, mb) = (message_for(&js, &a).await, message_for(&js, &b).await);
        assert_eq!(ma.contact_id, mb.contact_id, "{sender}");
        assert_eq!(ma.patient, None);
    }

    let threads = bus::bucket(&js, buckets::THREADS).await.unwrap();
    let thread = kv::get::<ThreadRecord>(&threads, &thread_key(&phone(wa_maria)))
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(thread.contact_id, m1.contact_id);
    intake.stop().await;
}

#[tokio::test]
async fn thread_keys_are_keyed_pseudonyms() {
    use sha2::Digest;
    let (server, js) = setup().await;
    let intake = Intake::start_with_key(&server.url(), OTHER_PSEUDONYM_KEY).await;

    let s = sms(MARIA, LINE);
    publish_sms(&js, &s, s.message_sid.as_str()).await;
    let m = message_for(&js, &s).await;

    let threads = bus::bucket(&js, buckets::THREADS).await.unwrap();
    let mut keys = Vec::new();
    let mut listed = threads.keys().await.unwrap();
    while let Some(k) = futures::StreamExt::next(&mut listed).await {
        keys.push(k.unwrap());
    }
    let other = Pseudonymiser::new(OTHER_PSEUDONYM_KEY.as_bytes()).unwrap();
    let expected = other.thread_key(&phone(MARIA));
    assert_eq!(
        keys,
        std::slice::from_ref(&expected),
        "the configured key names the thread"
    );
    assert_ne!(
        expected,
        thread_key(&phone(MARIA)),
        "another key, another name"
    );
    // Not the old unkeyed form, which anyone could recompute from a number.
    let unkeyed: String = sha2::Sha256::digest(MARIA.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(expected, format!("sms.{unkeyed}"));
    let t = kv::get::<ThreadRecord>(&threads, &expected)
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(t.contact_id, m.contact_id);
    intake.stop().await;
}

#[tokio::test]
async fn a_short_or_missing_pseudonym_key_stops_the_service() {
    let err = run(
        Config {
            pseudonym_key: Secret::new("short"),
            ..config("nats://127.0.0.1:1", nwd_runtime::directory::demo_path())
        },
        nwd_testkit::listener().await,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::PseudonymKey(_)));
    assert!(!err.to_string().contains("short"), "the key is not echoed");
    use clap::Parser;
    let missing = Config::try_parse_from(["nwd-intake", "--directory", "x.toml"]);
    if std::env::var_os("NWD_PSEUDONYM_KEY").is_none() {
        assert!(missing.is_err(), "no default key");
    }
    let parsed = Config::try_parse_from(["nwd-intake", "--pseudonym-key", PSEUDONYM_KEY]).unwrap();
    assert!(
        !format!("{parsed:?}").contains(PSEUDONYM_KEY),
        "printed config redacts it"
    );
}

#[tokio::test]
async fn an_sms_from_a_newer_gateway_and_garbage_are_dead_lettered_and_the_next_sms_is_threaded() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url()).await;
    // What a newer gateway writes during a rolling upgrade: schema 2.
    let mut newer = serde_json::to_value(Envelope::new(sms(MARIA, LINE))).unwrap();
    newer["schema"] = 2.into();
    for payload in [serde_json::to_vec(&newer).unwrap(), b"{not json".to_vec()] {
        js.publish(subjects::inbound_sms(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let next = sms(MARIA, LINE);
    publish_sms(&js, &next, next.message_sid.as_str()).await;
    message_for(&js, &next).await;
    wait_idle(&js, streams::INBOUND, consumers::INTAKE_SMS).await;

    let dead = nwd_runtime::deadletter::list(&js).await.unwrap();
    let reasons: Vec<_> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons, ["newer_schema", "undecodable"], "{dead:?}");
    assert!(dead.iter().all(|d| d.consumer == consumers::INTAKE_SMS
        && d.subject == subjects::inbound_sms()
        && !d.detail.contains("5550142")));
    // Only the readable SMS became a contact message.
    assert_eq!(contact_messages(&js).await.len(), 1);
    intake.stop().await;
}

// ---------------------------------------------------------------- referrals

const RIVERSIDE: &str = "+15005550130";
const RELEASED: &str = "+15005550166";

fn riverside() -> nwd_proto::PartnerId {
    nwd_proto::PartnerId::parse("riverside-reentry").unwrap()
}

fn referral(phone_number: &str, webhook_id: &str) -> InboundReferral {
    let now = OffsetDateTime::now_utc();
    InboundReferral {
        referral_id: wire::referral_id(&riverside(), webhook_id),
        partner: riverside(),
        priority: Priority::Urgent,
        occurrence: None,
        offer_at: now,
        due_at: now + time::Duration::hours(4),
        patient: ReferredPatient {
            phone: phone(phone_number),
            name: Some("Jo Doe".into()),
            language: None,
        },
        reason: Some("released today after 3 years".into()),
        received_at: now,
    }
}

/// Publishes as the gateway does (`Nats-Msg-Id` = `nats_id`).
async fn publish_referral(js: &jetstream::Context, r: &InboundReferral, nats_id: &str) {
    bus::publish(
        js,
        subjects::inbound_referral(),
        nats_id,
        &Envelope::new(r.clone()),
    )
    .await
    .unwrap();
}

/// Every OutreachOpened in CONTACTS with its Nats-Msg-Id, in stream order.
async fn outreaches(js: &jetstream::Context) -> Vec<(OutreachOpened, Option<String>)> {
    let prefix = subjects::contact_outreach_all();
    let prefix = prefix.trim_end_matches('*');
    let mut stream = js.get_stream(streams::CONTACTS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.as_str().starts_with(prefix)
        {
            let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
            out.push((
                Envelope::<OutreachOpened>::from_bytes(&m.payload)
                    .unwrap()
                    .data,
                id,
            ));
        }
    }
    out
}

async fn outreach_for(js: &jetstream::Context, r: &InboundReferral) -> OutreachOpened {
    eventually(WAIT, "the outreach", || async {
        outreaches(js)
            .await
            .into_iter()
            .map(|(o, _)| o)
            .find(|o| o.referral_id == r.referral_id)
    })
    .await
}

#[tokio::test]
async fn a_referral_opens_an_outreach_on_the_lines_own_number_and_the_persons_reply_joins_it() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    let r = referral(RELEASED, "wh-1");
    publish_referral(&js, &r, &wire::msg_id::inbound_referral(&r.referral_id)).await;
    let opened = outreach_for(&js, &r).await;
    assert_eq!(opened.contact_id, wire::outreach_contact(&r.referral_id));
    assert_eq!(
        opened.channel,
        Channel::Sms {
            patient: phone(RELEASED),
            // The line's own number, never the partner's door.
            line: phone(LINE),
        }
    );
    assert_ne!(phone(RIVERSIDE), phone(LINE));
    assert_eq!(opened.door, riverside());
    assert_eq!(opened.patient, None, "not in the directory");
    assert_eq!(opened.patient_name.as_deref(), Some("Jo Doe"));
    assert_eq!(opened.lang, nwd_proto::Language::En, "no language: English");
    assert_eq!(opened.reason, r.reason);
    assert_eq!((opened.offer_at, opened.due_at), (r.offer_at, r.due_at));

    // The person replies (to the line's number): the same contact.
    let reply = sms(RELEASED, LINE);
    publish_sms(&js, &reply, reply.message_sid.as_str()).await;
    let m = message_for(&js, &reply).await;
    assert_eq!(m.contact_id, opened.contact_id);
    assert!(!m.opens_contact);

    // A redelivered referral (another Nats-Msg-Id: past the window) opens
    // no second contact and publishes under the same id.
    publish_referral(&js, &r, "re-post").await;
    wait_idle(&js, streams::INBOUND, consumers::INTAKE_REFERRAL).await;
    let all = outreaches(&js).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0].1.as_deref(),
        Some(wire::msg_id::outreach_opened(&r.referral_id).as_str())
    );
    intake.stop().await;
}

#[tokio::test]
async fn a_known_person_is_named_by_their_directory_id_and_language_and_joins_their_open_contact() {
    let (server, js) = setup().await;
    let intake = Intake::start(&server.url_for("intake")).await;

    // María (Spanish in the directory) is already talking to the line.
    let first = sms(MARIA, EASTSIDE);
    publish_sms(&js, &first, first.message_sid.as_str()).await;
    let m = message_for(&js, &first).await;

    let r = referral(MARIA, "wh-2");
    publish_referral(&js, &r, &wire::msg_id::inbound_referral(&r.referral_id)).await;
    let opened = outreach_for(&js, &r).await;
    assert_eq!(opened.contact_id, m.contact_id, "joins her open contact");
    assert_eq!(opened.patient.as_deref(), Some("maria"));
    assert_eq!(
        opened.lang,
        nwd_proto::Language::Es,
        "the directory's language"
    );

    // The referral's own language wins over the directory's.
    let mut r2 = referral(STRANGER, "wh-3");
    r2.patient.language = Some(nwd_proto::Language::Es);
    publish_referral(&js, &r2, &wire::msg_id::inbound_referral(&r2.referral_id)).await;
    assert_eq!(outreach_for(&js, &r2).await.lang, nwd_proto::Language::Es);
    intake.stop().await;
}

#[tokio::test]
async fn a_referral_the_line_cannot_text_from_its_own_number_is_dead_lettered_not_lost() {
    let (server, js) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.toml");
    let demo = std::fs::read_to_string(nwd_runtime::directory::demo_path()).unwrap();
    std::fs::write(
        &path,
        demo.replace("numbers = [\"+15005550100\"]", "numbers = []"),
    )
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = nwd_testkit::listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        config(&server.url_for("intake"), path),
        listener,
        shutdown.clone(),
    ));
    wait_ready(addr).await;

    let r = referral(RELEASED, "wh-4");
    publish_referral(&js, &r, &wire::msg_id::inbound_referral(&r.referral_id)).await;
    let dead = eventually(WAIT, "the dead letter", || async {
        let d = nwd_runtime::deadletter::list(&js).await.ok()?;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].consumer, consumers::INTAKE_REFERRAL);
    assert!(!dead[0].detail.contains("5550166"));
    assert!(outreaches(&js).await.is_empty());
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_sms_to_a_number_nobody_has_is_served_from_the_shared_pool_and_alerted() {
    nwd_runtime::telemetry::metrics_handle();
    let (server, js) = setup().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = nwd_testkit::listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        config(
            &server.url_for("intake"),
            nwd_runtime::directory::demo_path(),
        ),
        listener,
        shutdown.clone(),
    ));
    wait_ready(addr).await;
    let operator = server.client_as("operator").await;
    let mut alerts = operator.subscribe(subjects::ops_alert()).await.unwrap();
    operator.flush().await.unwrap();

    const NOBODYS: &str = "+15005550188";
    let s = sms(STRANGER, NOBODYS);
    publish_sms(&js, &s, s.message_sid.as_str()).await;
    let m = message_for(&js, &s).await;
    assert!(m.opens_contact, "taken all the same");
    assert_eq!(m.door, None, "the shared pool");

    let alert = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut alerts))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&alert.payload).to_string();
    assert!(!text.contains("5550188"), "never the number: {text}");
    let alert = Envelope::<OpsAlert>::from_bytes(&alert.payload)
        .unwrap()
        .data;
    assert_eq!(
        alert,
        OpsAlert::UnknownLineNumber {
            service: "intake".into()
        }
    );

    // The line's own number and a door raise nothing.
    for (from, to) in [(MARIA, LINE), (RELEASED, EASTSIDE)] {
        let s = sms(from, to);
        publish_sms(&js, &s, s.message_sid.as_str()).await;
        message_for(&js, &s).await;
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"nwd_intake_unknown_line_total{service="intake"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"door="unknown""#) && metrics.contains(r#"door="eastside-clinic""#),
        "{metrics}"
    );
    assert!(!metrics.contains("5550188"));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
