//! The notifier against a real nats-server and the phone simulator as
//! Twilio: a real HTTP server speaking Twilio's REST wire format (create and
//! list), with controls to fail or slow down its next answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream;
use nwd_notifier::{Config, Error, Lease, SendRecord, SendState, run};
use nwd_phone_sim::{OutboundRecord, RestCalls};
use nwd_proto::events::{Author, DeliveryStatus, OutboundSms, OutboundStatus, SmsStatus};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{Address, ContactId, Envelope, MessageSid, OutboundId, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::kv;
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually, wait_ready};
use nwd_twilio::MessageResource;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "AC9af211329b2fc82e5efe906062c73008";
const TOKEN: &str = "8ac58b9c260ff14edd67b2dfe5d54a92";
/// Nothing listens there: phone-sim's status callbacks are refused at once.
const CALLBACK_BASE: &str = "http://127.0.0.1:9";
const PATIENT: &str = "+15005550142";
const LINE: &str = "+15005550110";
const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------- fake Twilio

/// The phone simulator, in process, as Twilio.
struct FakeTwilio {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeTwilio {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let config = nwd_phone_sim::Config {
            addr,
            gateway_url: CALLBACK_BASE.to_owned(),
            account_sid: ACCOUNT.to_owned(),
            auth_token: Secret::new(TOKEN),
            phones: vec![PATIENT.to_owned()],
            lines: vec![LINE.to_owned()],
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task =
            tokio::spawn(async move { nwd_phone_sim::run(config, listener, stop).await.unwrap() });
        wait_ready(addr).await;
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    async fn control(&self, path_and_query: &str) {
        let res = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path_and_query}");
    }

    /// The next `count` creates are refused with `status` (and `code`).
    async fn fail_next(&self, count: u32, status: u16, code: Option<u32>) {
        let code = code.map(|c| format!("&code={c}")).unwrap_or_default();
        self.control(&format!(
            "/api/fail-next?count={count}&status={status}{code}"
        ))
        .await;
    }

    /// The next `count` creates succeed but answer `ms` late.
    async fn slow_next(&self, count: u32, ms: u64) {
        self.control(&format!("/api/slow-next?count={count}&ms={ms}"))
            .await;
    }

    /// Every message created, in order.
    async fn outbound(&self) -> Vec<OutboundRecord> {
        let url = format!("{}/api/messages", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many creates (POST) and list pages (GET) it was asked for.
    async fn calls(&self) -> RestCalls {
        let url = format!("{}/api/rest-calls", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a message through the REST API, as another sender would.
    async fn create(&self, to: &str, from: &str, body: &str) -> MessageResource {
        self.http
            .post(nwd_twilio::rest::messages_url(&self.base, ACCOUNT))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&[("To", to), ("From", from), ("Body", body)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

// ------------------------------------------------------------- harness

fn config(nats_url: &str, twilio: &FakeTwilio) -> Config {
    Config {
        nats: NatsArgs::local(nats_url),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        twilio_api_base: twilio.base.clone(),
        account_sid: ACCOUNT.into(),
        auth_token: Secret::new(TOKEN),
        status_callback_base: format!("{CALLBACK_BASE}/"),
        http_timeout_ms: 2_000,
        retry_base_ms: 20,
        send_lease_ms: 3_000,
        max_refusals: 5,
        replica_id: Some("notifier-test".into()),
        directory: nwd_runtime::directory::demo_path(),
        callback_retries: 8,
        callback_retry_base_ms: 20,
        callback_retry_cap_ms: 1_000,
        callback_max_refusals: 3,
        callback_timeout_ms: 2_000,
        callback_probe_ms: 60_000,
    }
}

struct Notifier {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Notifier {
    async fn start(config: Config) -> Self {
        // testkit polls /readyz with reqwest, built without a default TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, listener, shutdown.clone()));
        wait_ready(addr).await;
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// Dies on the spot, as with `kill -9`: nothing after this line of its
    /// work happens (no record, no ack).
    async fn crash(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

async fn setup() -> (NatsServer, jetstream::Context, FakeTwilio) {
    let server = NatsServer::start().await;
    let args = NatsArgs::local(server.url());
    let client = bus::connect(&args, "test").await.unwrap();
    let js = bus::jetstream(client, &args);
    bus::ensure_all(&js, 1).await.unwrap();
    (server, js, FakeTwilio::start().await)
}

fn outbound() -> OutboundSms {
    OutboundSms {
        outbound_id: OutboundId::new(),
        contact_id: ContactId::new(),
        to: Address::parse(PATIENT),
        from: Address::parse(LINE),
        body: "Hi, this is Ana from the line. I'm here with you.".into(),
        author: Author::System,
        created_at: OffsetDateTime::now_utc(),
    }
}

async fn publish_outbound(js: &jetstream::Context, out: &OutboundSms, nats_id: &str) {
    bus::publish(
        js,
        subjects::outbound_sms(&out.contact_id),
        nats_id,
        &Envelope::new(out.clone()),
    )
    .await
    .unwrap();
}

/// Every OutboundStatus stored in OUTBOUND for one outbound id.
async fn statuses(js: &jetstream::Context, out: &OutboundSms) -> Vec<OutboundStatus> {
    let subject = subjects::outbound_status(&out.contact_id);
    let mut stream = js.get_stream(streams::OUTBOUND).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut found = Vec::new();
    if state.messages == 0 {
        return found;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.as_str() == subject
        {
            let ev = Envelope::<OutboundStatus>::from_bytes(&m.payload)
                .unwrap()
                .data;
            if ev.outbound_id == out.outbound_id {
                found.push(ev);
            }
        }
    }
    found
}

async fn wait_status(
    js: &jetstream::Context,
    out: &OutboundSms,
    status: DeliveryStatus,
) -> OutboundStatus {
    eventually(WAIT, status.as_str(), || async {
        statuses(js, out)
            .await
            .into_iter()
            .find(|s| s.status == status)
    })
    .await
}

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

async fn record(js: &jetstream::Context, out: &OutboundSms) -> Option<SendRecord> {
    let sends = bus::bucket(js, buckets::SENDS).await.unwrap();
    kv::get::<SendRecord>(&sends, &out.outbound_id.to_string())
        .await
        .unwrap()
        .value
}

// ------------------------------------------------------------- tests

#[tokio::test]
async fn one_outbound_sms_is_one_post_and_a_queued_status() {
    let (server, js, twilio) = setup().await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let status = wait_status(&js, &out, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    // One create (the simulator checks basic auth and the account), no
    // list: nothing to reconcile on a first attempt.
    assert_eq!(twilio.calls().await, RestCalls { create: 1, list: 0 });
    let created = twilio.outbound().await;
    assert_eq!(created.len(), 1);
    let r = &created[0];
    assert_eq!(r.to, PATIENT);
    assert_eq!(r.from, LINE);
    assert_eq!(r.body, out.body);
    assert_eq!(
        r.status_callback.as_deref(),
        Some(
            format!(
                "{CALLBACK_BASE}/v1/sms/twilio/status?outbound={}",
                out.outbound_id
            )
            .as_str()
        )
    );
    assert_eq!(status.provider_sid.as_deref(), Some(r.sid.as_str()));

    assert_eq!(status.contact_id, out.contact_id);
    let sid = status.provider_sid.clone().unwrap();
    assert!(sid.starts_with("SM"));
    assert_eq!(status.error_code, None);
    let rec = record(&js, &out).await.unwrap();
    assert_eq!(
        rec.state,
        SendState::Sent {
            sid,
            status: DeliveryStatus::Queued
        }
    );

    // Published with the deterministic Nats-Msg-Id.
    let stream = js.get_stream(streams::OUTBOUND).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subjects::outbound_status(&out.contact_id))
        .await
        .unwrap();
    assert_eq!(
        last.headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        Some(format!("status:{}:queued", out.outbound_id))
    );

    notifier.stop().await;
}

#[tokio::test]
async fn the_same_outbound_sms_twice_is_sent_once() {
    let (server, js, twilio) = setup().await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, "first").await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    // Same outbound id, different Nats-Msg-Id: the stream does not dedupe it.
    publish_outbound(&js, &out, "second").await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    assert_eq!(twilio.calls().await.create, 1, "never sent twice");
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
    twilio.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_sent_once() {
    let (server, js, twilio) = setup().await;
    twilio.fail_next(3, 503, None).await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let calls = twilio.calls().await;
    assert_eq!(calls.create, 4, "three failures, then one success");
    // A 503 does not prove the message was not created: each retry looked first.
    assert!(calls.list >= 3, "{calls:?}");
    assert_eq!(twilio.outbound().await.len(), 1);
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
}

#[tokio::test]
async fn a_misconfigured_account_is_retried_not_dropped() {
    let (server, js, twilio) = setup().await;
    twilio.fail_next(2, 401, Some(20003)).await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    assert_eq!(twilio.calls().await.create, 3);

    notifier.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_final_and_reported() {
    let (server, js, twilio) = setup().await;
    twilio.fail_next(1, 400, Some(21211)).await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let failed = wait_status(&js, &out, DeliveryStatus::Failed).await;
    assert_eq!(failed.error_code, Some(21211));
    assert_eq!(failed.provider_sid, None);
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    // Even republished, it is never sent again.
    publish_outbound(&js, &out, "again").await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;
    assert_eq!(twilio.calls().await.create, 1, "never retried");
    assert_eq!(statuses(&js, &out).await.len(), 1);
    assert_eq!(
        record(&js, &out).await.unwrap().state,
        SendState::Failed {
            error_code: Some(21211),
            permanent: true
        }
    );

    notifier.stop().await;
}

#[tokio::test]
async fn status_callbacks_become_outbound_statuses() {
    let (server, js, twilio) = setup().await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let queued = wait_status(&js, &out, DeliveryStatus::Queued).await;
    let sid = MessageSid::parse(queued.provider_sid.as_deref().unwrap()).unwrap();

    let callback = |status, error_code| SmsStatus {
        message_sid: sid.clone(),
        status,
        error_code,
        outbound_id: Some(out.outbound_id),
        received_at: OffsetDateTime::now_utc(),
    };
    let publish = |st: SmsStatus| {
        let js = js.clone();
        async move {
            let id = format!(
                "{}:{}:{:?}",
                st.message_sid,
                st.status.as_str(),
                st.outbound_id
            );
            bus::publish(&js, subjects::inbound_sms_status(), &id, &Envelope::new(st))
                .await
                .unwrap();
        }
    };
    publish(callback(DeliveryStatus::Delivered, None)).await;
    let delivered = wait_status(&js, &out, DeliveryStatus::Delivered).await;
    assert_eq!(delivered.contact_id, out.contact_id);
    assert_eq!(delivered.provider_sid.as_deref(), Some(sid.as_str()));
    assert_eq!(
        record(&js, &out).await.unwrap().last_status,
        Some(DeliveryStatus::Delivered)
    );

    // A late "sent" after "delivered" is stale; an unknown outbound id, a
    // callback without one, and garbage are all acknowledged and dropped.
    publish(callback(DeliveryStatus::Sent, None)).await;
    publish(SmsStatus {
        outbound_id: Some(OutboundId::new()),
        ..callback(DeliveryStatus::Delivered, None)
    })
    .await;
    let mut no_id = callback(DeliveryStatus::Failed, Some(30003));
    no_id.outbound_id = None;
    publish(no_id).await;
    js.publish(subjects::inbound_sms_status(), "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_idle(&js, streams::INBOUND, consumers::NOTIFIER_STATUS).await;
    let all = statuses(&js, &out).await;
    assert_eq!(
        all.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![DeliveryStatus::Queued, DeliveryStatus::Delivered]
    );
    assert_eq!(twilio.calls().await.create, 1);

    notifier.stop().await;
}

#[tokio::test]
async fn a_restart_between_publish_and_send_sends_exactly_once() {
    let (server, js, twilio) = setup().await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;
    notifier.stop().await;

    // Published while the notifier is down.
    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;
    notifier.stop().await;

    // Restarted again and the same message redelivered: still one send.
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;
    publish_outbound(&js, &out, "redelivered").await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;
    assert_eq!(twilio.calls().await.create, 1);
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
}

#[tokio::test]
async fn a_lost_answer_is_reconciled_not_sent_again() {
    let (server, js, twilio) = setup().await;
    // Twilio creates the message but answers after our timeout: we never
    // learn the SID. Twilio's API has no idempotency key, so a blind retry
    // would be a second SMS.
    twilio.slow_next(1, 1_500).await;
    let mut cfg = config(&server.url_for("notifier"), &twilio);
    cfg.http_timeout_ms = 300;
    cfg.send_lease_ms = 1_000;
    let notifier = Notifier::start(cfg).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let sent = eventually(WAIT, "sent recorded", || async {
        match record(&js, &out).await?.state {
            SendState::Sent { sid, .. } => Some(sid),
            _ => None,
        }
    })
    .await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let created = twilio.outbound().await;
    assert_eq!(created.len(), 1, "one SMS");
    assert_eq!(sent, created[0].sid, "recorded with the original SID");
    let calls = twilio.calls().await;
    assert_eq!(calls.create, 1);
    assert!(calls.list >= 1, "found through the Messages list");
    let status = statuses(&js, &out).await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].provider_sid.as_deref(), Some(sent.as_str()));

    notifier.stop().await;
    twilio.stop().await;
}

// ------------------------------------------------------------- leases

/// Waits until the record of `out` is `Sent`, and returns its SID.
async fn wait_sent(js: &jetstream::Context, out: &OutboundSms) -> String {
    eventually(WAIT, "sent recorded", || async {
        match record(js, out).await?.state {
            SendState::Sent { sid, .. } => Some(sid),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn two_replicas_send_every_sms_exactly_once() {
    let (server, js, twilio) = setup().await;
    // Slow answers keep sends in flight long enough for the other replica
    // to get the same outbound id meanwhile.
    twilio.slow_next(40, 300).await;
    let replica = |name: &str| Config {
        replica_id: Some(name.to_owned()),
        ..config(&server.url(), &twilio)
    };
    let a = Notifier::start(replica("notifier-a")).await;
    let b = Notifier::start(replica("notifier-b")).await;

    // Ten messages, each published twice (a resend by the router, a second
    // publish after a crash): copies land on both replicas at once.
    let outs: Vec<OutboundSms> = (0..10)
        .map(|n| OutboundSms {
            body: format!("Message {n} from the line."),
            ..outbound()
        })
        .collect();
    for out in &outs {
        publish_outbound(&js, out, &format!("first:{}", out.outbound_id)).await;
        publish_outbound(&js, out, &format!("again:{}", out.outbound_id)).await;
    }
    for out in &outs {
        wait_sent(&js, out).await;
    }
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let created = twilio.outbound().await;
    for out in &outs {
        let copies = created.iter().filter(|m| m.body == out.body).count();
        assert_eq!(copies, 1, "{} sent {copies} times", out.body);
    }
    assert_eq!(twilio.calls().await.create, 10, "ten POSTs in all");

    a.stop().await;
    b.stop().await;
    twilio.stop().await;
}

#[tokio::test]
async fn a_crash_between_sending_and_sent_is_reconciled_not_sent_again() {
    let (server, js, twilio) = setup().await;
    // Twilio takes the message, and the replica dies before it hears back.
    twilio.slow_next(1, 10_000).await;
    let short = |name: &str| Config {
        replica_id: Some(name.to_owned()),
        // Long enough that the first replica is still waiting for its
        // answer when it dies, even on a loaded machine.
        http_timeout_ms: 4_000,
        send_lease_ms: 5_000,
        ..config(&server.url(), &twilio)
    };
    let first = Notifier::start(short("notifier-a")).await;
    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    eventually(WAIT, "twilio has the message", || async {
        (twilio.outbound().await.len() == 1).then_some(())
    })
    .await;
    first.crash().await;
    let left = record(&js, &out).await.unwrap();
    assert!(
        matches!(&left.state, SendState::Sending { lease: Some(l), .. } if l.owner.starts_with("notifier-a/")),
        "{left:?}"
    );

    // Another replica gets the redelivery once the dead one's lease expired.
    let second = Notifier::start(short("notifier-b")).await;
    let sid = wait_sent(&js, &out).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let created = twilio.outbound().await;
    assert_eq!(created.len(), 1, "not sent again");
    assert_eq!(sid, created[0].sid, "recorded with the original SID");
    let calls = twilio.calls().await;
    assert_eq!(calls.create, 1);
    assert!(calls.list >= 1, "reconciled through the Messages list");
    let published = statuses(&js, &out).await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].provider_sid.as_deref(), Some(sid.as_str()));

    second.stop().await;
    twilio.stop().await;
}

#[tokio::test]
async fn a_takeover_that_finds_nothing_at_twilio_sends_once() {
    let (server, js, twilio) = setup().await;
    let out = outbound();
    // The same words went to the same person earlier, from another send:
    // that message is not ours.
    let earlier = twilio.create(PATIENT, LINE, &out.body).await;
    let earlier_at = earlier.created_at().unwrap();
    // What a replica that died after taking the lease, before its POST
    // reached Twilio, leaves behind: its first attempt began a second after
    // the earlier message, and its lease has expired.
    let sends = bus::bucket(&js, buckets::SENDS).await.unwrap();
    let left = SendRecord {
        contact_id: out.contact_id,
        state: SendState::Sending {
            attempts: 1,
            refusals: 0,
            since: earlier_at + Duration::from_secs(1),
            lease: Some(Lease {
                owner: "notifier-gone/01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
                expires: OffsetDateTime::now_utc() - Duration::from_secs(1),
            }),
        },
        last_status: None,
    };
    sends
        .create(
            out.outbound_id.to_string(),
            serde_json::to_vec(&left).unwrap().into(),
        )
        .await
        .unwrap();

    let notifier = Notifier::start(config(&server.url(), &twilio)).await;
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let sid = wait_sent(&js, &out).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let calls = twilio.calls().await;
    assert!(calls.list >= 1, "looked before sending");
    assert_eq!(calls.create, 2, "the earlier message, and ours once");
    let created = twilio.outbound().await;
    assert_eq!(created.len(), 2);
    assert_ne!(
        sid, earlier.sid,
        "the earlier message is not taken for ours"
    );
    assert_eq!(sid, created[1].sid);
    wait_status(&js, &out, DeliveryStatus::Queued).await;

    notifier.stop().await;
    twilio.stop().await;
}

#[tokio::test]
async fn an_unknown_4xx_is_retried_a_bounded_number_of_times_then_reported_failed() {
    let (server, js, twilio) = setup().await;
    // A 400 whose code we do not know: not permanent, but not worth
    // holding a consumer slot for ever.
    twilio.fail_next(3, 400, Some(21999)).await;
    let notifier = Notifier::start(Config {
        max_refusals: 3,
        ..config(&server.url(), &twilio)
    })
    .await;

    let refused = outbound();
    publish_outbound(&js, &refused, &format!("out:{}", refused.outbound_id)).await;
    let failed = wait_status(&js, &refused, DeliveryStatus::Failed).await;
    assert_eq!(failed.contact_id, refused.contact_id);
    assert_eq!(failed.error_code, Some(21999));
    assert_eq!(failed.provider_sid, None);
    assert_eq!(
        record(&js, &refused).await.unwrap().state,
        SendState::Failed {
            error_code: Some(21999),
            permanent: false
        }
    );

    // The consumer moved on: the next message is sent.
    let next = outbound();
    publish_outbound(&js, &next, &format!("out:{}", next.outbound_id)).await;
    wait_status(&js, &next, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;
    assert_eq!(
        twilio.calls().await.create,
        4,
        "three refusals, then the next message"
    );
    assert_eq!(statuses(&js, &refused).await.len(), 1);

    notifier.stop().await;
    twilio.stop().await;
}

#[tokio::test]
async fn a_lease_that_cannot_outlast_its_call_is_refused_at_start() {
    let twilio = FakeTwilio::start().await;
    let config = Config {
        http_timeout_ms: 10_000,
        send_lease_ms: 10_000,
        ..config("nats://127.0.0.1:1", &twilio)
    };
    let listener = nwd_testkit::listener().await;
    let refused = run(config, listener, CancellationToken::new()).await;
    assert!(
        matches!(
            refused,
            Err(Error::LeaseTooShort {
                lease_ms: 10_000,
                timeout_ms: 10_000
            })
        ),
        "{refused:?}"
    );
    twilio.stop().await;
}
