//! The gateway over real HTTP against a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use nwd_gateway::{Config, EMPTY_TWIML, SMS_PATH, STATUS_PATH};
use nwd_proto::events::{DeliveryStatus, InboundSms, SmsStatus};
use nwd_proto::streams;
use nwd_proto::{Envelope, OutboundId};
use nwd_runtime::bus::NatsArgs;
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually};
use nwd_twilio::{InboundSmsForm, StatusCallbackForm, new_message_sid, signature};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "8ac58b9c260ff14edd67b2dfe5d54a92";
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
            max_body_bytes: 65536,
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
    assert_eq!(env.data.from.as_e164(), PATIENT);
    assert_eq!(env.data.to.as_e164(), LINE);
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

#[tokio::test]
async fn invalid_forms_are_bad_requests() {
    let server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;

    let with = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = inbound("hello")
            .params()
            .into_iter()
            .filter(|(k, _)| k != name)
            .collect();
        if let Some(v) = value {
            params.push((name.to_owned(), v.to_owned()));
        }
        params
    };
    let cases = [
        ("missing From", with("From", None), "From"),
        ("From not E.164", with("From", Some("4155550123")), "From"),
        ("missing To", with("To", None), "To"),
        ("missing Body", with("Body", None), "Body"),
        (
            "Body of 1601 chars",
            with("Body", Some(&"ñ".repeat(1601))),
            "Body",
        ),
        (
            "bad MessageSid",
            with("MessageSid", Some("SM123")),
            "MessageSid",
        ),
        ("missing MessageSid", with("MessageSid", None), "MessageSid"),
        ("missing AccountSid", with("AccountSid", None), "AccountSid"),
        (
            "NumMedia not a number",
            with("NumMedia", Some("two")),
            "NumMedia",
        ),
    ];
    for (case, params, field) in cases {
        let res = gw.post_signed(SMS_PATH, &params).await;
        let body = assert_problem(res, 400).await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{case}: {detail}");
    }

    // 1600 characters is the limit, not over it.
    let res = gw
        .post_signed(SMS_PATH, &with("Body", Some(&"ñ".repeat(1600))))
        .await;
    assert_eq!(res.status(), 200);

    // Wrong content type, even when correctly signed over the same params.
    let params = inbound("hello").params();
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

    assert_eq!(
        inbound_messages(&server).await.len(),
        1,
        "only the 1600-char message"
    );
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

#[tokio::test]
async fn nats_down_is_503_with_retry_after_then_recovers() {
    let mut server = NatsServer::start().await;
    let gw = Gateway::start(&server).await;
    let form = inbound("are you there?");

    server.kill();
    let res = gw.post_signed(SMS_PATH, &form.params()).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503).await;
    let status = StatusCallbackForm::new(new_message_sid(), "sent", ACCOUNT, LINE, PATIENT);
    let res = gw.post_signed(STATUS_PATH, &status.params()).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503).await;

    server.restart().await;
    eventually(
        Duration::from_secs(20),
        "the retried webhook is stored",
        || async {
            let res = gw.post_signed(SMS_PATH, &form.params()).await;
            (res.status() == 200).then_some(())
        },
    )
    .await;
    let msgs = inbound_messages(&server).await;
    assert_eq!(msgs.len(), 1);
    let env = Envelope::<InboundSms>::from_bytes(&msgs[0].payload).unwrap();
    assert_eq!(env.data.message_sid.as_str(), form.message_sid);
    gw.stop().await;
}

#[tokio::test]
async fn starts_and_answers_503_while_nats_is_down() {
    init();
    let mut server = NatsServer::start().await;
    server.set_up_bus().await;
    let url = server.url_for("gateway");
    server.kill();

    let listener = nwd_testkit::listener().await;
    let addr = listener.local_addr().unwrap();
    let config = Config {
        nats: NatsArgs {
            ack_timeout_ms: 500,
            ..NatsArgs::local(url)
        },
        addr,
        public_url: "http://127.0.0.1:8080".to_owned(),
        twilio_auth_token: Secret::new(TOKEN),
        max_body_bytes: 65536,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(nwd_gateway::run(config, listener, shutdown.clone()));
    let http = reqwest::Client::new();

    let ready = eventually(Duration::from_secs(10), "readyz answers", || async {
        http.get(format!("http://{addr}/readyz")).send().await.ok()
    })
    .await;
    assert_eq!(ready.status(), 503);

    let form = inbound("hello");
    let params = form.params();
    let sig = signature::compute(TOKEN, &format!("http://127.0.0.1:8080{SMS_PATH}"), &params);
    let res = http
        .post(format!("http://{addr}{SMS_PATH}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(nwd_twilio::SIGNATURE_HEADER, &sig)
        .body(form.encode())
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503).await;

    server.restart().await;
    nwd_testkit::wait_ready(addr).await;
    let res = http
        .post(format!("http://{addr}{SMS_PATH}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(nwd_twilio::SIGNATURE_HEADER, &sig)
        .body(form.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

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
