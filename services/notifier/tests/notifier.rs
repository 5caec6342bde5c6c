//! The notifier against a real nats-server and a fake Twilio REST API that
//! speaks Twilio's wire format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use nwd_notifier::{Config, Error, SendRecord, SendState, run};
use nwd_proto::events::{Author, DeliveryStatus, OutboundSms, OutboundStatus, SmsStatus};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{ContactId, Envelope, MessageSid, OutboundId, PhoneNumber, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::kv;
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually, wait_ready};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "AC9af211329b2fc82e5efe906062c73008";
const TOKEN: &str = "8ac58b9c260ff14edd67b2dfe5d54a92";
const CALLBACK_BASE: &str = "https://gateway.example.org";
const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------- fake Twilio

#[derive(Debug, Clone)]
struct Recorded {
    account: String,
    auth_ok: bool,
    form: HashMap<String, String>,
    idempotency: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Scripted {
    ServerError,
    TooMany,
    Unauthorized,
    Permanent(u32),
    /// Accept, but answer only after this long (longer than the client's timeout).
    Slow(Duration),
}

#[derive(Default)]
struct FakeState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Scripted>>,
    /// Messages "created" by idempotency token, as a provider that dedupes would.
    created: Mutex<HashMap<String, String>>,
}

#[derive(Clone)]
struct FakeTwilio {
    state: Arc<FakeState>,
    base: String,
}

impl FakeTwilio {
    async fn start() -> Self {
        let listener = nwd_testkit::listener().await;
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(messages),
            )
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }

    fn script(&self, steps: &[Scripted]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(steps.iter().copied());
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    fn created(&self) -> usize {
        self.state.created.lock().unwrap().len()
    }
}

async fn messages(
    State(state): State<Arc<FakeState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{TOKEN}"))
    );
    let auth_ok = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let idempotency = headers
        .get("i-twilio-idempotency-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests.lock().unwrap().push(Recorded {
        account: account.clone(),
        auth_ok,
        form: form.clone(),
        idempotency: idempotency.clone(),
    });
    if !auth_ok || account != ACCOUNT {
        return error(401, 20003);
    }
    let step = state.script.lock().unwrap().pop_front();
    match step {
        Some(Scripted::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
        }
        Some(Scripted::TooMany) => return error(429, 20429),
        Some(Scripted::Unauthorized) => return error(401, 20003),
        Some(Scripted::Permanent(code)) => return error(400, code),
        Some(Scripted::Slow(_)) | None => {}
    }
    // Like a provider honouring the idempotency token: the same token is the
    // same message.
    let sid = {
        let mut created = state.created.lock().unwrap();
        let n = created.len();
        created
            .entry(idempotency.unwrap_or_else(|| ulid::Ulid::new().to_string()))
            .or_insert_with(|| format!("SM{:032x}", 0xabc0_0000 + n))
            .clone()
    };
    if let Some(Scripted::Slow(d)) = step {
        tokio::time::sleep(d).await;
    }
    let mut body: serde_json::Value = serde_json::from_str(include_str!(
        "../../../fixtures/twilio/outbound_message_response.json"
    ))
    .unwrap();
    body["sid"] = sid.into();
    body["to"] = form.get("To").cloned().unwrap_or_default().into();
    body["from"] = form.get("From").cloned().unwrap_or_default().into();
    body["body"] = form.get("Body").cloned().unwrap_or_default().into();
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn error(status: u16, code: u32) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": "The 'To' number +15005550142 is not a valid phone number.",
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
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
        to: PhoneNumber::parse("+15005550142").unwrap(),
        from: PhoneNumber::parse("+15005550110").unwrap(),
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

    let requests = twilio.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert!(r.auth_ok, "basic auth with the account SID and token");
    assert_eq!(r.account, ACCOUNT);
    assert_eq!(r.form["To"], "+15005550142");
    assert_eq!(r.form["From"], "+15005550110");
    assert_eq!(r.form["Body"], out.body);
    assert_eq!(
        r.form["StatusCallback"],
        format!(
            "{CALLBACK_BASE}/v1/sms/twilio/status?outbound={}",
            out.outbound_id
        )
    );
    assert_eq!(r.idempotency, Some(out.outbound_id.to_string()));

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

    assert_eq!(twilio.requests().len(), 1, "never sent twice");
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_sent_once() {
    let (server, js, twilio) = setup().await;
    twilio.script(&[
        Scripted::ServerError,
        Scripted::TooMany,
        Scripted::ServerError,
    ]);
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let requests = twilio.requests();
    assert_eq!(requests.len(), 4, "three failures, then one success");
    assert!(
        requests
            .iter()
            .all(|r| r.idempotency == Some(out.outbound_id.to_string()))
    );
    assert_eq!(twilio.created(), 1);
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
}

#[tokio::test]
async fn a_misconfigured_account_is_retried_not_dropped() {
    let (server, js, twilio) = setup().await;
    twilio.script(&[Scripted::Unauthorized, Scripted::Unauthorized]);
    let notifier = Notifier::start(config(&server.url_for("notifier"), &twilio)).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    wait_status(&js, &out, DeliveryStatus::Queued).await;
    assert_eq!(twilio.requests().len(), 3);

    notifier.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_final_and_reported() {
    let (server, js, twilio) = setup().await;
    twilio.script(&[Scripted::Permanent(21211)]);
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
    assert_eq!(twilio.requests().len(), 1, "never retried");
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
    assert_eq!(twilio.requests().len(), 1);

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
    assert_eq!(twilio.requests().len(), 1);
    assert_eq!(statuses(&js, &out).await.len(), 1);

    notifier.stop().await;
}

#[tokio::test]
async fn a_lost_response_is_retried_with_the_same_idempotency_token() {
    let (server, js, twilio) = setup().await;
    // Twilio accepts the message but the answer comes after our timeout:
    // exactly the crash window between the HTTP call and recording the result.
    twilio.script(&[Scripted::Slow(Duration::from_millis(1_500))]);
    let mut cfg = config(&server.url_for("notifier"), &twilio);
    cfg.http_timeout_ms = 300;
    let notifier = Notifier::start(cfg).await;

    let out = outbound();
    publish_outbound(&js, &out, &format!("out:{}", out.outbound_id)).await;
    let queued = wait_status(&js, &out, DeliveryStatus::Queued).await;
    wait_idle(&js, streams::OUTBOUND, consumers::NOTIFIER_SEND).await;

    let requests = twilio.requests();
    assert!(requests.len() >= 2, "the timed-out request was retried");
    assert!(
        requests
            .iter()
            .all(|r| r.idempotency == Some(out.outbound_id.to_string()))
    );
    assert_eq!(twilio.created(), 1, "the provider created one message");
    assert_eq!(
        record(&js, &out).await.unwrap().state,
        SendState::Sent {
            sid: queued.provider_sid.unwrap(),
            status: DeliveryStatus::Queued
        }
    );

    notifier.stop().await;
}
