//! The phone simulator over real HTTP, with test servers standing in for
//! the gateway and for a StatusCallback receiver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use nwd_phone_sim::{Config, ConversationView, OutboundRecord, PhonesView, Sender};
use nwd_runtime::service::Secret;
use nwd_testkit::eventually;
use nwd_twilio::{ErrorResponse, MessageResource, form, signature};
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const TOKEN: &str = "phone-sim-test-token";
const PATIENT: &str = "+15005550142";
const LINE: &str = "+15005550100";

/// A request a test server received.
#[derive(Debug, Clone)]
struct Received {
    uri: Uri,
    signature: Option<String>,
    content_type: Option<String>,
    params: Vec<(String, String)>,
}

/// An HTTP server that records every POST and answers with queued statuses
/// (200 once the queue is empty).
#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<StatusCode>>>,
}

impl Recorder {
    async fn start(answers: &[StatusCode]) -> (Self, SocketAddr) {
        let recorder = Recorder::default();
        recorder
            .answers
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(post(record))
            .with_state(recorder.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (recorder, addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(
    State(r): State<Recorder>,
    uri: Uri,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    r.received.lock().unwrap().push(Received {
        uri,
        signature: header("x-twilio-signature"),
        content_type: header("content-type"),
        params: form::decode(&body),
    });
    r.answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(StatusCode::OK)
}

struct Sim {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    async fn start(gateway_url: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let config = Config {
            addr,
            gateway_url: gateway_url.to_owned(),
            account_sid: ACCOUNT.to_owned(),
            auth_token: Secret::new(TOKEN),
            phones: vec![PATIENT.to_owned(), "+15005550143".to_owned()],
            lines: vec![LINE.to_owned(), "+15005550110".to_owned()],
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task =
            tokio::spawn(async move { nwd_phone_sim::run(config, listener, stop).await.unwrap() });
        nwd_testkit::wait_ready(addr).await;
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    fn messages_url(&self, account: &str) -> String {
        format!("{}/2010-04-01/Accounts/{account}/Messages.json", self.base)
    }

    async fn create(&self, params: &[(&str, &str)], token: Option<&str>) -> reqwest::Response {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut req = self
            .http
            .post(self.messages_url(ACCOUNT))
            .basic_auth(ACCOUNT, Some(TOKEN))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form::encode(&params));
        if let Some(t) = token {
            req = req.header(nwd_twilio::IDEMPOTENCY_HEADER, t);
        }
        req.send().await.unwrap()
    }

    async fn outbound(&self) -> Vec<OutboundRecord> {
        self.http
            .get(format!("{}/api/messages", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn conversation(&self, phone: &str) -> ConversationView {
        self.http
            .get(format!("{}/api/phones/{phone}/messages", self.base))
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

fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/twilio")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn rest_api_requires_basic_auth_and_the_right_account() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let body = form::encode(&[
        ("To".into(), PATIENT.into()),
        ("From".into(), LINE.into()),
        ("Body".into(), "hi".into()),
    ]);
    for auth in [None, Some((ACCOUNT, "wrong")), Some(("ACnope", TOKEN))] {
        let mut req = sim.http.post(sim.messages_url(ACCOUNT)).body(body.clone());
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        let err: ErrorResponse = res.json().await.unwrap();
        assert_eq!((err.code, err.status), (20003, 401));
    }
    let res = sim
        .http
        .post(sim.messages_url("AC11111111111111111111111111111111"))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let err: ErrorResponse = res.json().await.unwrap();
    assert_eq!(err.code, 20404);
    assert!(sim.outbound().await.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn bad_to_is_a_21211_error_in_twilio_shape() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let res = sim
        .create(
            &[("To", "+1206555014x"), ("From", LINE), ("Body", "hi")],
            None,
        )
        .await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(keys(&body), keys(&fixture("error_response.json")));
    assert_eq!(body["code"], 21211);
    assert_eq!(body["status"], 400);
    // Twilio's magic numbers give their permanent errors.
    let res = sim
        .create(
            &[("To", "+15005550004"), ("From", LINE), ("Body", "hi")],
            None,
        )
        .await;
    let err: ErrorResponse = res.json().await.unwrap();
    assert_eq!(err.code, 21610);
    assert!(nwd_twilio::is_permanent(err.code));
    // Missing From and Body.
    let res = sim.create(&[("To", PATIENT), ("Body", "hi")], None).await;
    assert_eq!(res.json::<ErrorResponse>().await.unwrap().code, 21603);
    let res = sim.create(&[("To", PATIENT), ("From", LINE)], None).await;
    assert_eq!(res.json::<ErrorResponse>().await.unwrap().code, 21602);
    assert!(sim.outbound().await.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn created_message_has_the_fixture_shape_and_reaches_the_phone() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let res = sim
        .create(
            &[
                ("To", PATIENT),
                ("From", LINE),
                ("Body", "A counsellor will text you soon."),
            ],
            None,
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        keys(&body),
        keys(&fixture("outbound_message_response.json"))
    );
    let msg: MessageResource = serde_json::from_value(body).unwrap();
    assert_eq!(msg.status, "queued");
    assert_eq!(msg.direction, "outbound-api");
    assert!(nwd_proto::MessageSid::parse(&msg.sid).is_ok());
    assert!(msg.sid.starts_with("SM"));
    let created = msg.date_created.as_deref().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc2822)
            .is_ok()
    );
    assert!(created.ends_with("+0000"));
    assert_eq!(
        msg.uri,
        format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{}.json", msg.sid)
    );

    let outbound = sim.outbound().await;
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0].sid, msg.sid);
    assert_eq!(outbound[0].body, "A counsellor will text you soon.");
    // The patient's phone shows the line's message, delivered in the end.
    eventually(Duration::from_secs(5), "line message delivered", || async {
        let conv = sim.conversation(PATIENT).await;
        let m = conv.messages.first()?;
        (m.sender == Sender::Line && m.state == "delivered" && m.sid == msg.sid).then_some(())
    })
    .await;
    sim.stop().await;
}

#[tokio::test]
async fn a_repeated_create_is_a_second_message_as_at_twilio() {
    // Twilio's REST API has no idempotency key: the token header is ignored.
    let sim = Sim::start("http://127.0.0.1:9").await;
    let params = [("To", PATIENT), ("From", LINE), ("Body", "once")];
    let a: MessageResource = sim
        .create(&params, Some("out-1"))
        .await
        .json()
        .await
        .unwrap();
    let res = sim.create(&params, Some("out-1")).await;
    assert_eq!(res.status(), 201);
    let b: MessageResource = res.json().await.unwrap();
    assert_ne!(a.sid, b.sid);
    let outbound = sim.outbound().await;
    assert_eq!(outbound.len(), 2);
    assert_eq!(outbound[0].idempotency_token.as_deref(), Some("out-1"));
    sim.stop().await;
}

#[tokio::test]
async fn the_messages_list_filters_by_to_from_and_date_sent_and_pages() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let other = "+15005550143";
    let mut sids = Vec::new();
    for (to, body) in [
        (PATIENT, "one"),
        (other, "elsewhere"),
        (PATIENT, "two"),
        (PATIENT, "three"),
    ] {
        let m: MessageResource = sim
            .create(&[("To", to), ("From", LINE), ("Body", body)], None)
            .await
            .json()
            .await
            .unwrap();
        sids.push(m.sid);
    }
    let list = |query: Vec<(&'static str, String)>| {
        let sim = &sim;
        async move {
            let res = sim
                .http
                .get(sim.messages_url(ACCOUNT))
                .basic_auth(ACCOUNT, Some(TOKEN))
                .query(&query)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<serde_json::Value>().await.unwrap())
        }
    };
    let filter = |date_sent, page_size| {
        nwd_twilio::MessageFilter {
            to: Some(PATIENT.to_owned()),
            from: Some(LINE.to_owned()),
            date_sent,
            page_size,
        }
        .query()
    };

    // Newest first, only To+From matches, in Twilio's paging shape.
    let (status, body) = list(filter(None, Some(2))).await;
    assert_eq!(status, 200);
    for key in [
        "messages",
        "end",
        "first_page_uri",
        "next_page_uri",
        "page",
        "page_size",
        "previous_page_uri",
        "start",
        "uri",
    ] {
        assert!(body.get(key).is_some(), "{key}");
    }
    let page: nwd_twilio::MessagePage = serde_json::from_value(body).unwrap();
    let got: Vec<&str> = page.messages.iter().map(|m| m.sid.as_str()).collect();
    assert_eq!(got, [sids[3].as_str(), sids[2].as_str()]);
    assert_eq!(
        (page.page, page.page_size, page.start, page.end),
        (0, 2, 0, 1)
    );
    assert_eq!(page.previous_page_uri, None);
    // The next page, by its URI on the same host.
    let next = page.next_page_uri.unwrap();
    assert!(next.starts_with(&format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json?")));
    let page: nwd_twilio::MessagePage = sim
        .http
        .get(format!("{}{next}", sim.base))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = page.messages.iter().map(|m| m.sid.as_str()).collect();
    assert_eq!(got, [sids[0].as_str()]);
    assert_eq!(page.next_page_uri, None);

    // DateSent matches messages sent that (GMT) day, once they are sent.
    let today = time::OffsetDateTime::now_utc().date();
    eventually(Duration::from_secs(5), "messages sent", || async {
        let (_, body) = list(filter(Some(today), None)).await;
        let page: nwd_twilio::MessagePage = serde_json::from_value(body).unwrap();
        (page.messages.len() == 3).then_some(())
    })
    .await;
    let (_, body) = list(filter(today.previous_day(), None)).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 0);

    // A bad filter is Twilio's 400; so is a wrong token 401.
    let (status, body) = list(vec![("DateSent", "yesterday".to_owned())]).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 20001);
    let res = sim
        .http
        .get(sim.messages_url(ACCOUNT))
        .basic_auth(ACCOUNT, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    sim.stop().await;
}

#[tokio::test]
async fn slow_next_creates_the_message_but_answers_late() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let res = sim
        .http
        .post(format!("{}/api/slow-next?ms=3000", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let params: Vec<(String, String)> = [("To", PATIENT), ("From", LINE), ("Body", "late")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let answer = sim
        .http
        .post(sim.messages_url(ACCOUNT))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form::encode(&params))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(answer.unwrap_err().is_timeout());
    // The caller never learnt the SID, but the message exists.
    let outbound = sim.outbound().await;
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0].body, "late");
    sim.stop().await;
}

#[tokio::test]
async fn status_callbacks_are_signed_and_retried() {
    // The receiver fails the first callback once: it must be retried.
    let (receiver, addr) = Recorder::start(&[StatusCode::SERVICE_UNAVAILABLE]).await;
    let sim = Sim::start("http://127.0.0.1:9").await;
    let callback =
        format!("http://{addr}/v1/sms/twilio/status?outbound=01JAAAAAAAAAAAAAAAAAAAAAAA");
    let msg: MessageResource = sim
        .create(
            &[
                ("To", PATIENT),
                ("From", LINE),
                ("Body", "hi"),
                ("StatusCallback", &callback),
            ],
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let got = eventually(
        Duration::from_secs(10),
        "sent and delivered callbacks",
        || async {
            let r = receiver.received();
            (r.len() == 3).then_some(r)
        },
    )
    .await;
    let statuses: Vec<&str> = got
        .iter()
        .map(|r| form::get(&r.params, "MessageStatus").unwrap())
        .collect();
    assert_eq!(statuses, ["sent", "sent", "delivered"]);
    for r in &got {
        assert_eq!(
            r.uri.to_string(),
            "/v1/sms/twilio/status?outbound=01JAAAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert!(signature::validate(
            TOKEN,
            &callback,
            &r.params,
            r.signature.as_deref()
        ));
        assert!(!signature::validate(
            "other",
            &callback,
            &r.params,
            r.signature.as_deref()
        ));
        assert_eq!(form::get(&r.params, "MessageSid"), Some(msg.sid.as_str()));
        assert_eq!(form::get(&r.params, "AccountSid"), Some(ACCOUNT));
        assert_eq!(form::get(&r.params, "To"), Some(PATIENT));
        assert_eq!(form::get(&r.params, "From"), Some(LINE));
    }
    let outbound = sim.outbound().await;
    assert_eq!(outbound[0].status, "delivered");
    assert_eq!(
        outbound[0].status_callback.as_deref(),
        Some(callback.as_str())
    );
    sim.stop().await;
}

#[tokio::test]
async fn fail_next_fails_the_next_calls() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let res = sim
        .http
        .post(format!("{}/api/fail-next?count=2&status=503", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let params = [("To", PATIENT), ("From", LINE), ("Body", "retry me")];
    for _ in 0..2 {
        let res = sim.create(&params, Some("t")).await;
        assert_eq!(res.status(), 503);
        let err: ErrorResponse = res.json().await.unwrap();
        assert_eq!(err.status, 503);
    }
    assert_eq!(sim.create(&params, Some("t")).await.status(), 201);
    assert_eq!(sim.outbound().await.len(), 1);
    // A 4xx with a chosen Twilio code.
    sim.http
        .post(format!("{}/api/fail-next?status=400&code=21999", sim.base))
        .send()
        .await
        .unwrap();
    let res = sim.create(&params, None).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<ErrorResponse>().await.unwrap().code, 21999);
    let res = sim
        .http
        .post(format!("{}/api/fail-next?count=1&status=200", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    sim.stop().await;
}

#[tokio::test]
async fn patient_message_is_posted_signed_to_the_gateway_and_retried() {
    // The stand-in gateway is down for the first attempt.
    let (gateway, addr) = Recorder::start(&[StatusCode::SERVICE_UNAVAILABLE]).await;
    let gateway_url = format!("http://{addr}/");
    let sim = Sim::start(&gateway_url).await;

    let res = sim
        .http
        .post(format!("{}/api/phones/{PATIENT}/messages", sim.base))
        .json(&serde_json::json!({ "to": LINE, "body": "I need help, ¿me oyes? 🙂 & more" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: serde_json::Value = res.json().await.unwrap();
    let sid = accepted["message_sid"].as_str().unwrap().to_owned();
    assert!(nwd_proto::MessageSid::parse(&sid).is_ok());

    let got = eventually(Duration::from_secs(10), "the retried webhook", || async {
        let r = gateway.received();
        (r.len() == 2).then_some(r)
    })
    .await;
    let signed_url = format!("http://{addr}/v1/sms/twilio");
    for r in &got {
        assert_eq!(r.uri.path(), "/v1/sms/twilio");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert!(signature::validate(
            TOKEN,
            &signed_url,
            &r.params,
            r.signature.as_deref()
        ));
        let p = |name| form::get(&r.params, name);
        assert_eq!(p("MessageSid"), Some(sid.as_str()));
        assert_eq!(p("SmsSid"), Some(sid.as_str()));
        assert_eq!(p("From"), Some(PATIENT));
        assert_eq!(p("To"), Some(LINE));
        assert_eq!(p("Body"), Some("I need help, ¿me oyes? 🙂 & more"));
        assert_eq!(p("AccountSid"), Some(ACCOUNT));
        assert_eq!(p("NumMedia"), Some("0"));
        assert_eq!(p("ApiVersion"), Some("2010-04-01"));
        for name in [
            "ToCountry",
            "ToState",
            "ToCity",
            "ToZip",
            "FromCountry",
            "FromState",
            "FromCity",
            "FromZip",
            "SmsMessageSid",
            "SmsStatus",
            "NumSegments",
        ] {
            assert!(p(name).is_some(), "{name} missing");
        }
    }
    assert_eq!(got[0].params, got[1].params, "a retry posts the same form");

    eventually(
        Duration::from_secs(5),
        "message marked delivered",
        || async {
            let conv = sim.conversation(PATIENT).await;
            let m = conv.messages.iter().find(|m| m.sid == sid)?;
            (m.sender == Sender::Patient && m.state == "delivered" && m.line == LINE).then_some(())
        },
    )
    .await;
    sim.stop().await;
}

#[tokio::test]
async fn refused_patient_message_is_marked_failed_without_retry() {
    let (gateway, addr) = Recorder::start(&[StatusCode::FORBIDDEN]).await;
    let sim = Sim::start(&format!("http://{addr}")).await;
    let res = sim
        .http
        .post(format!("{}/api/phones/{PATIENT}/messages", sim.base))
        .json(&serde_json::json!({ "to": LINE, "body": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    eventually(Duration::from_secs(5), "message marked failed", || async {
        let conv = sim.conversation(PATIENT).await;
        (conv.messages.first()?.state == "failed").then_some(())
    })
    .await;
    assert_eq!(gateway.received().len(), 1);

    // Bad input is a problem+json 400.
    for (phone, body) in [
        (
            "not-a-phone",
            serde_json::json!({ "to": LINE, "body": "x" }),
        ),
        (PATIENT, serde_json::json!({ "to": "12", "body": "x" })),
        (PATIENT, serde_json::json!({ "body": "x" })),
    ] {
        let res = sim
            .http
            .post(format!("{}/api/phones/{phone}/messages", sim.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    sim.stop().await;
}

#[tokio::test]
async fn serves_the_phone_page_and_lists_phones() {
    let sim = Sim::start("http://127.0.0.1:9").await;
    let page = sim.http.get(&sim.base).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("Phone simulator — development only"));
    let phones: PhonesView = sim
        .http
        .get(format!("{}/api/phones", sim.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(phones.phones, [PATIENT, "+15005550143"]);
    assert_eq!(phones.lines, [LINE, "+15005550110"]);
    let conv = sim.conversation("+15005550143").await;
    assert!(conv.messages.is_empty());
    sim.stop().await;
}
