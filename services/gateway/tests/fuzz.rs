//! Fuzz-style: random and truncated bodies, signed and unsigned, to both
//! endpoints through the router (in process) with a real nats-server
//! behind it. Never a 5xx, never a panic; unsigned never passes; and a
//! signed inbound form with a MessageSid is always taken (200).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use nwd_gateway::{AppState, Config, SMS_PATH, STATUS_PATH, app};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::service::Secret;
use nwd_testkit::NatsServer;
use nwd_twilio::{InboundSmsForm, StatusCallbackForm, form, new_message_sid, signature};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

/// A spool directory beside the test server's store, deleted with it.
fn spool_args(server: &NatsServer) -> nwd_gateway::spool::SpoolArgs {
    nwd_gateway::spool::SpoolArgs {
        dir: server.store_dir().with_file_name("gateway-spool"),
        max_bytes: 1 << 20,
    }
}
const PUBLIC_URL: &str = "https://gateway.example.org";

async fn setup() -> (NatsServer, Router, jetstream::Context) {
    let server = NatsServer::start().await;
    let config = Config {
        nats: NatsArgs {
            ack_timeout_ms: 500,
            ..NatsArgs::local(server.url_for("gateway"))
        },
        addr: "127.0.0.1:0".parse().unwrap(),
        public_url: PUBLIC_URL.to_owned(),
        twilio_auth_token: Secret::new(TOKEN),
        twilio_url_fragment: None,
        directory: nwd_runtime::directory::demo_path(),
        max_body_bytes: 65536,
        spool: spool_args(&server),
    };
    server.set_up_bus().await;
    let client = bus::connect(&config.nats, "gateway-fuzz").await.unwrap();
    let js = bus::jetstream(client, &config.nats);
    let router = app(AppState::new(
        AppState::hub(js.clone(), &config).unwrap(),
        &config,
    ));
    (server, router, js)
}

fn request(path: &str, body: Vec<u8>, content_type: &str, sign: bool) -> Request<Body> {
    let mut req = Request::post(path).header("content-type", content_type);
    if sign {
        let params = form::decode(&body);
        let sig = signature::compute(TOKEN, &format!("{PUBLIC_URL}{path}"), &params);
        req = req.header(nwd_twilio::SIGNATURE_HEADER, sig);
    }
    req.body(Body::from(body)).unwrap()
}

fn valid_body(path: &str) -> String {
    if path == SMS_PATH {
        InboundSmsForm::new(
            new_message_sid(),
            "AC1",
            "+15005550142",
            "+15005550100",
            "hola ¿qué tal? 🙂 a&b=c",
        )
        .encode()
    } else {
        StatusCallbackForm::new(
            new_message_sid(),
            "delivered",
            "AC1",
            "+15005550100",
            "+15005550142",
        )
        .error_code(30003)
        .encode()
    }
}

#[test]
fn random_and_truncated_bodies_never_give_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_server, router, _js) = rt.block_on(setup());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop_oneof![Just(SMS_PATH), Just(STATUS_PATH)],
        prop_oneof![
            // Random bytes.
            proptest::collection::vec(any::<u8>(), 0..1024).prop_map(Some),
            // A valid body, truncated below.
            Just(None),
        ],
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop_oneof![
            Just("application/x-www-form-urlencoded"),
            Just("application/x-www-form-urlencoded; charset=utf-8"),
            Just("application/json"),
            Just("text/plain"),
        ],
    );
    runner
        .run(&strategy, |(path, random, cut, sign, content_type)| {
            let (body, is_random) = match random {
                Some(bytes) => (bytes, true),
                None => {
                    let full = valid_body(path).into_bytes();
                    let at = cut.index(full.len() + 1);
                    (full[..at].to_vec(), false)
                }
            };
            let sent = body.clone();
            let res = rt
                .block_on(
                    router
                        .clone()
                        .oneshot(request(path, body, content_type, sign)),
                )
                .unwrap();
            let status = res.status();
            if status.is_server_error() {
                return Err(TestCaseError::fail(format!("{path}: {status}")));
            }
            if is_random && !sign {
                prop_assert!(status.is_client_error(), "{path}: {status}");
            }
            if !sign {
                prop_assert!(
                    status.is_client_error(),
                    "unsigned must never pass: {status}"
                );
            }
            if sign
                && path == SMS_PATH
                && content_type.starts_with("application/x-www-form-urlencoded")
                && has_sid(&sent)
            {
                prop_assert_eq!(
                    status.as_u16(),
                    200,
                    "a signed form with a MessageSid is a person's message"
                );
            }
            Ok(())
        })
        .unwrap();
}

/// Whether a form body carries a well-formed MessageSid (first value wins).
fn has_sid(body: &[u8]) -> bool {
    let params = form::decode(body);
    form::get(&params, "MessageSid").is_some_and(|sid| nwd_proto::MessageSid::parse(sid).is_ok())
}

/// Any value in any field of a signed inbound form: stored and answered 200.
#[test]
fn signed_forms_with_a_message_sid_are_always_taken() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_server, router, _js) = rt.block_on(setup());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 120,
        ..ProptestConfig::default()
    });
    let field = || proptest::option::of(".{0,40}");
    let strategy = (
        field(),
        field(),
        proptest::option::of(".{0,4100}"),
        field(),
        field(),
    );
    runner
        .run(&strategy, |(from, to, body, num_media, account)| {
            let mut params = vec![("MessageSid".to_owned(), new_message_sid())];
            for (name, value) in [
                ("From", from),
                ("To", to),
                ("Body", body),
                ("NumMedia", num_media),
                ("AccountSid", account),
            ] {
                if let Some(v) = value {
                    params.push((name.to_owned(), v));
                }
            }
            let body = form::encode(&params).into_bytes();
            let res = rt
                .block_on(router.clone().oneshot(request(
                    SMS_PATH,
                    body,
                    "application/x-www-form-urlencoded",
                    true,
                )))
                .unwrap();
            prop_assert_eq!(res.status().as_u16(), 200);
            Ok(())
        })
        .unwrap();
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_server, router, _js) = rt.block_on(setup());
    for path in [SMS_PATH, STATUS_PATH] {
        // No Content-Length: the limit is enforced while reading.
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..17)
            .map(|_| Ok(bytes::Bytes::from(vec![b'a'; 4096])))
            .collect();
        let req = Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
        let res = rt.block_on(router.clone().oneshot(req)).unwrap();
        assert_eq!(res.status(), 413);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
}
