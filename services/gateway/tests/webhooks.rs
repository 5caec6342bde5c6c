//! The gateway over real HTTP against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use nwd_gateway::{Config, EMPTY_TWIML, SMS_PATH, STATUS_PATH};
use nwd_proto::events::{DeliveryStatus, InboundFlag, InboundSms, SmsStatus};
use nwd_proto::streams;
use nwd_proto::{Envelope, OutboundId};
use nwd_runtime::bus::NatsArgs;
use nwd_runtime::service::Secret;
use nwd_testkit::NatsServer;
use nwd_twilio::{InboundSmsForm, StatusCallbackForm, new_message_sid, signature};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "8ac58b9c260ff14edd67b2dfe5d54a92";

/// A spool directory beside the test server's store, deleted with it.
fn spool_args(server: &NatsServer) -> nwd_gateway::spool::SpoolArgs {
    nwd_gateway::spool::SpoolArgs {
        dir: server.store_dir().with_file_name("gateway-spool"),
        max_bytes: 1 << 20,
    }
}
const ACCOUNT: &str = "AC9af211329b2fc82e5efe906062c73008";
const PATIENT: &str = "+15005550142";
const LINE: &str = "+15005550100";

struct Gateway {
    addr: SocketAddr,
    public_url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// reqwest is built without a default TLS provider; tests install ring.
fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Gateway {
    async fn start(server: &NatsServer) -> Self {
        init();
        server.set_up_bus().await;
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        // Twilio posts to a public URL that is not the socket address.
        let public_url = "https://gateway.example.org/".to_owned();
        let config = Config {
            nats: NatsArgs {
                ack_timeout_ms: 500,
                ..NatsArgs::local(server.url_for("gateway"))
            },
            addr,
            public_url: public_url.clone(),
            twilio_auth_token: Secret::new(TOKEN),
            twilio_url_fragment: None,
            directory: nwd_runtime::directory::demo_path(),
            max_body_bytes: 65536,
            spool: spool_args(server),
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            nwd_gateway::run(config, listener, stop).await.unwrap();
        });
        nwd_testkit::wait_ready(addr).await;
        Self {
            addr,
            public_url: public_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    /// Posts a form signed over the public URL of `path_and_query`.
    async fn post_signed(
        &self,
        path_and_query: &str,
        params: &[(String, String)],
    ) -> reqwest::Response {
        let sig = signature::compute(
            TOKEN,
            &format!("{}{path_and_query}", self.public_url),
            params,
        );
        self.post(path_and_query, params, Some(&sig)).await
    }

    async fn post(
        &self,
        path_and_query: &str,
        params: &[(String, String)],
        sig: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("http://{}{path_and_query}", self.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(nwd_twilio::form::encode(params));
        if let Some(sig) = sig {
            req = req.header(nwd_twilio::SIGNATURE_HEADER, sig);
        }
        req.send().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn inbound(body: &str) -> InboundSmsForm {
    InboundSmsForm::new(new_message_sid(), ACCOUNT, PATIENT, LINE, body)
}

async fn inbound_messages(server: &NatsServer) -> Vec<jetstream::Message> {
    stream_messages(server, &nwd_proto::subjects::inbound_sms()).await
}

/// Every message stored on INBOUND under `subject`.
async fn stream_messages(server: &NatsServer, subject: &str) -> Vec<jetstream::Message> {
    use futures::StreamExt;
    let js = jetstream::new(server.client().await);
    let stream = js.get_stream(streams::INBOUND).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(300))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m);
    }
    out
}

async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["type"].is_string(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn valid_sms_is_stored_once_and_answered_with_twiml() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let form = inbound("Hi, I need to talk to someone. ¿Hay alguien? 🙂");

    let res = gw.post_signed(SMS_PATH, &form.params()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/xml");
    assert_eq!(res.text().await.unwrap(), EMPTY_TWIML);

    let msgs = inbound_messages(&server).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    let msg_id = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .unwrap();
    assert_eq!(msg_id.as_str(), form.message_sid);
    let env = Envelope::<InboundSms>::from_bytes(&m.payload).unwrap();
    assert_eq!(env.data.message_sid.as_str(), form.message_sid);
    assert_eq!(env.data.account_sid, ACCOUNT);
    assert_eq!(env.data.from.as_str(), PATIENT);
    assert_eq!(env.data.to.as_str(), LINE);
    assert!(env.data.flags.is_empty());
    assert_eq!(env.data.body, form.body);
    assert_eq!(env.data.num_media, 0);

    // Twilio retries: answered 200, nothing new stored.
    let res = gw.post_signed(SMS_PATH, &form.params()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), EMPTY_TWIML);
    assert_eq!(inbound_messages(&server).await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let params = inbound("hello").params();

    let res = gw.post(SMS_PATH, &params, None).await;
    assert_problem(res, 403).await;

    let res = gw.post(SMS_PATH, &params, Some("")).await;
    assert_problem(res, 403).await;

    let wrong = signature::compute(
        "not-the-token",
        &format!("{}{SMS_PATH}", gw.public_url),
        &params,
    );
    let res = gw.post(SMS_PATH, &params, Some(&wrong)).await;
    assert_problem(res, 403).await;

    // Signed over another URL (the socket address instead of the public URL).
    let other = signature::compute(TOKEN, &format!("http://{}{SMS_PATH}", gw.addr), &params);
    let res = gw.post(SMS_PATH, &params, Some(&other)).await;
    assert_problem(res, 403).await;

    // Signed over the right URL, but a parameter changed afterwards.
    let sig = signature::compute(TOKEN, &format!("{}{SMS_PATH}", gw.public_url), &params);
    let mut tampered = params.clone();
    for (k, v) in &mut tampered {
        if k == "Body" {
            *v = "changed".into();
        }
    }
    let res = gw.post(SMS_PATH, &tampered, Some(&sig)).await;
    assert_problem(res, 403).await;

    // The same checks guard the status callback.
    let status = StatusCallbackForm::new(new_message_sid(), "sent", ACCOUNT, LINE, PATIENT);
    let res = gw.post(STATUS_PATH, &status.params(), None).await;
    assert_problem(res, 403).await;

    assert!(inbound_messages(&server).await.is_empty());
    gw.stop().await;
}

/// The params of an inbound message with `name` replaced by `value` (or removed).
fn inbound_with(body: &str, name: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = inbound(body)
        .params()
        .into_iter()
        .filter(|(k, _)| k != name)
        .collect();
    if let Some(v) = value {
        params.push((name.to_owned(), v.to_owned()));
    }
    params
}

/// The stored inbound message of `sid`.
async fn stored(server: &NatsServer, sid: &str) -> InboundSms {
    inbound_messages(server)
        .await
        .iter()
        .map(|m| Envelope::<InboundSms>::from_bytes(&m.payload).unwrap().data)
        .find(|sms| sms.message_sid.as_str() == sid)
        .unwrap_or_else(|| panic!("{sid} is not in INBOUND"))
}

fn sid_of(params: &[(String, String)]) -> String {
    nwd_twilio::form::get(params, "MessageSid")
        .unwrap()
        .to_owned()
}

/// Twilio never retries a 4xx: a signed message that the gateway refused
/// would be lost. Every one of these is a person's message.
#[tokio::test]
async fn signed_messages_are_stored_and_flagged_whatever_their_fields() {
    nwd_runtime::telemetry::metrics_handle();
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let long = "I can't stop thinking about it. ".repeat(125);
    assert!(long.chars().count() >= 4000);

    let cases = vec![
        (
            "a 4,000-character body",
            inbound_with("", "Body", Some(&long)),
            InboundFlag::LongBody,
        ),
        (
            "a WhatsApp sender",
            inbound_with("hola", "From", Some("whatsapp:+15005550142")),
            InboundFlag::ChannelSender,
        ),
        (
            "an alphanumeric sender",
            inbound_with("hi", "From", Some("NWDALERT")),
            InboundFlag::AlphanumericSender,
        ),
        (
            "a short code",
            inbound_with("hi", "From", Some("55555")),
            InboundFlag::ShortCodeSender,
        ),
        (
            "NumMedia not a number",
            inbound_with("hi", "NumMedia", Some("abc")),
            InboundFlag::InvalidNumMedia,
        ),
        (
            "a From that is no known form",
            inbound_with("hi", "From", Some("4155550123")),
            InboundFlag::UnrecognisedSender,
        ),
        (
            "no From",
            inbound_with("hi", "From", None),
            InboundFlag::MissingSender,
        ),
        (
            "no To",
            inbound_with("hi", "To", None),
            InboundFlag::MissingLine,
        ),
        (
            "no Body",
            inbound_with("hi", "Body", None),
            InboundFlag::MissingBody,
        ),
        (
            "no AccountSid",
            inbound_with("hi", "AccountSid", None),
            InboundFlag::MissingAccountSid,
        ),
        (
            "media",
            inbound_with("", "NumMedia", Some("2")),
            InboundFlag::Media,
        ),
    ];
    for (case, params, flag) in &cases {
        let res = gw.post_signed(SMS_PATH, params).await;
        assert_eq!(res.status(), 200, "{case}");
        assert_eq!(res.text().await.unwrap(), EMPTY_TWIML, "{case}");
        let sms = stored(&server, &sid_of(params)).await;
        assert_eq!(sms.flags, [*flag], "{case}");
    }
    let wa = stored(&server, &sid_of(&cases[1].1)).await;
    assert_eq!(wa.from.as_str(), "whatsapp:+15005550142");
    assert_eq!(wa.body, "hola");
    let long_one = stored(&server, &sid_of(&cases[0].1)).await;
    assert_eq!(long_one.body, long, "the whole body, not cut");
    assert_eq!(inbound_messages(&server).await.len(), cases.len());

    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in [
        "long_body",
        "channel_sender",
        "alphanumeric_sender",
        "short_code_sender",
        "invalid_num_media",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("nwd_gateway_inbound_oddities_total")
                    && l.contains(&format!("kind=\"{kind}\""))),
            "{kind} not counted:\n{text}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn only_unreadable_requests_are_bad_requests() {
    let logs = nwd_testkit::capture_logs();
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;

    // Without a usable MessageSid a message cannot be stored exactly once.
    for (case, params) in [
        (
            "bad MessageSid",
            inbound_with("hi", "MessageSid", Some("SM123")),
        ),
        ("missing MessageSid", inbound_with("hi", "MessageSid", None)),
    ] {
        let res = gw.post_signed(SMS_PATH, &params).await;
        let body = assert_problem(res, 400).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("MessageSid"), "{case}: {detail}");
    }

    // Not a form, even when correctly signed over the same params.
    let form = inbound("hello from the wrong content type");
    let params = form.params();
    let sig = signature::compute(TOKEN, &format!("{}{SMS_PATH}", gw.public_url), &params);
    let res = gw
        .http
        .post(format!("http://{}{SMS_PATH}", gw.addr))
        .header("content-type", "application/json")
        .header(nwd_twilio::SIGNATURE_HEADER, sig)
        .body(nwd_twilio::form::encode(&params))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
    assert!(inbound_messages(&server).await.is_empty());

    // Each refusal is logged with the MessageSid it claimed, never the body or number.
    let logged = logs.contents();
    let refusal = logged
        .lines()
        .find(|l| l.contains("webhook refused") && l.contains(&form.message_sid))
        .unwrap_or_else(|| panic!("no refusal logged with the MessageSid:\n{logged}"));
    assert!(!refusal.contains("5550142"));
    assert!(!logged.contains("wrong content type"), "no body in logs");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    for (method, path, status) in [
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::GET, SMS_PATH, 405),
        (reqwest::Method::PUT, STATUS_PATH, 405),
    ] {
        let url = format!("http://{}{path}", gw.addr);
        let res = gw.http.request(method, url).send().await.unwrap();
        assert_problem(res, status).await;
    }
    // The ops routes still answer.
    let res = gw
        .http
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413_problem() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let body = vec![b'a'; 65536 + 1];
    let res = gw
        .http
        .post(format!("http://{}{SMS_PATH}", gw.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;

    gw.stop().await;
}

#[tokio::test]
async fn status_callback_is_stored_with_our_outbound_id() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let outbound = OutboundId::new();
    let sid = new_message_sid();
    let path = format!("{STATUS_PATH}?outbound={outbound}");

    let form =
        StatusCallbackForm::new(&sid, "undelivered", ACCOUNT, LINE, PATIENT).error_code(30003);
    let res = gw.post_signed(&path, &form.params()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), EMPTY_TWIML);
    // The same status again is a duplicate; a new status is new.
    let res = gw.post_signed(&path, &form.params()).await;
    assert_eq!(res.status(), 200);

    let msgs = stream_messages(&server, &nwd_proto::subjects::inbound_sms_status()).await;
    assert_eq!(msgs.len(), 1);
    let msg_id = msgs[0]
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .unwrap();
    assert_eq!(msg_id.as_str(), format!("status:{sid}:undelivered"));
    let env = Envelope::<SmsStatus>::from_bytes(&msgs[0].payload).unwrap();
    assert_eq!(env.data.message_sid.as_str(), sid);
    assert_eq!(env.data.status, DeliveryStatus::Undelivered);
    assert_eq!(env.data.error_code, Some(30003));
    assert_eq!(env.data.outbound_id, Some(outbound));

    // Without the query parameter, the status is stored without an id.
    let form = StatusCallbackForm::new(&sid, "delivered", ACCOUNT, LINE, PATIENT);
    let res = gw.post_signed(STATUS_PATH, &form.params()).await;
    assert_eq!(res.status(), 200);
    let msgs = stream_messages(&server, &nwd_proto::subjects::inbound_sms_status()).await;
    assert_eq!(msgs.len(), 2);
    let env = Envelope::<SmsStatus>::from_bytes(&msgs[1].payload).unwrap();
    assert_eq!(env.data.outbound_id, None);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_status_callbacks_are_bad_requests() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let sid = new_message_sid();
    let good = StatusCallbackForm::new(&sid, "sent", ACCOUNT, LINE, PATIENT).params();
    let replace = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> =
            good.iter().filter(|(k, _)| k != name).cloned().collect();
        if let Some(v) = value {
            p.push((name.to_owned(), v.to_owned()));
        }
        p
    };
    for params in [
        replace("MessageSid", None),
        replace("MessageSid", Some("nope")),
        replace("MessageStatus", None),
        replace("MessageStatus", Some("exploded")),
        replace("ErrorCode", Some("3000x")),
    ] {
        let res = gw.post_signed(STATUS_PATH, &params).await;
        assert_problem(res, 400).await;
    }
    let res = gw
        .post_signed(&format!("{STATUS_PATH}?outbound=not-an-id"), &good)
        .await;
    assert_problem(res, 400).await;
    let msgs = stream_messages(&server, &nwd_proto::subjects::inbound_sms_status()).await;
    assert!(msgs.is_empty());
    gw.stop().await;
}

// NATS down: the webhook is spooled and answered 200, see tests/spool.rs.

#[tokio::test]
async fn metrics_count_outcomes_and_logs_hold_no_personal_data() {
    let logs = nwd_testkit::capture_logs();
    nwd_runtime::telemetry::metrics_handle();
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let form = InboundSmsForm::new(
        new_message_sid(),
        ACCOUNT,
        "+15005550199",
        LINE,
        "secret words here",
    );
    assert_eq!(gw.post_signed(SMS_PATH, &form.params()).await.status(), 200);
    assert_eq!(gw.post_signed(SMS_PATH, &form.params()).await.status(), 200);
    assert_eq!(gw.post(SMS_PATH, &form.params(), None).await.status(), 403);

    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["accepted", "duplicate", "bad_signature"] {
        assert!(
            text.lines().any(|l| l.starts_with("nwd_webhooks_total")
                && l.contains("service=\"gateway\"")
                && l.contains("route=\"sms\"")
                && l.contains(&format!("outcome=\"{outcome}\""))),
            "{outcome} missing from metrics"
        );
    }
    assert!(text.contains("nwd_webhook_seconds"));

    let logged = logs.contents();
    assert!(
        logged.contains(&form.message_sid),
        "the span carries the MessageSid"
    );
    assert!(!logged.contains("5550199"), "no phone number in logs");
    assert!(!logged.contains("secret words"), "no body in logs");
    gw.stop().await;
}
