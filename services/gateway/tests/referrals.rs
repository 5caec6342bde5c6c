//! `POST /v1/referrals` and `GET /v1/referrals…` against a real nats-server:
//! in-process through the real router (`oneshot`) with an injected clock,
//! and once over a real socket through `run`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use http_body_util::BodyExt;
use nwd_gateway::partner_signature;
use nwd_gateway::referrals::{self, Clock, Referrals};
use nwd_proto::directory::Directory;
use nwd_proto::referral::{
    InboundReferral, Priority, ReferralRecord, ReferralSettings, TaskStatus,
};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{Envelope, PartnerId, subjects, wire};
use nwd_runtime::directory::Live;
use nwd_testkit::NatsServer;
use serde::Deserialize;
use time::OffsetDateTime;
use tower::ServiceExt;

/// The demo hospital's first secret (deploy/local/demo/directory.toml).
const HOSPITAL_SECRET: &str = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=";
const HOSPITAL_ROTATED: &str = "whsec_5iH1uOvPAH93x3Z7Mbh+QP2gCV2DUFh18Mug9sjdjYI=";
/// The clinic's, added by these tests.
const CLINIC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_795_000_000; // 2026-11-18

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/fhir/tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn directory() -> Directory {
    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    let clinic = dir
        .partners
        .iter_mut()
        .find(|p| p.id.as_str() == "eastside-clinic")
        .unwrap();
    clinic.referrals = Some(ReferralSettings {
        secrets: vec![CLINIC_SECRET.into()],
        callback_url: None,
        due: Default::default(),
    });
    referrals::check_directory(&dir).unwrap();
    dir
}

fn hospital() -> PartnerId {
    PartnerId::parse("county-hospital").unwrap()
}

struct Edge {
    server: NatsServer,
    router: Router,
    now: Arc<AtomicI64>,
}

impl Edge {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        server.set_up_bus().await;
        Self::on(server).await
    }

    async fn on(server: NatsServer) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .ack_timeout(Duration::from_millis(500))
            .build(server.client_as("gateway").await);
        let now = Arc::new(AtomicI64::new(NOW));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || {
                OffsetDateTime::from_unix_timestamp(now.load(Ordering::SeqCst)).unwrap()
            })
        };
        let router = referrals::routes(Referrals::new(
            js,
            Live::new(directory()),
            clock,
            Duration::from_millis(1500),
        ));
        Self {
            server,
            router,
            now,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let res = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, body)
    }

    async fn post(
        &self,
        secret: &str,
        id: &str,
        body: &[u8],
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        self.send(post(secret, id, NOW, "application/fhir+json", body))
            .await
    }

    async fn get(&self, secret: &str, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let nonce = format!("nonce_{}", ulid_like());
        let ts = self.now.load(Ordering::SeqCst);
        let sig = partner_signature::sign(secret, &nonce, ts, b"").unwrap();
        let req = Request::get(uri)
            .header("webhook-id", nonce)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    async fn record(&self, id: &str) -> Option<ReferralRecord> {
        let js = jetstream::new(self.server.client().await);
        let kv = js.get_key_value(buckets::REFERRALS).await.unwrap();
        kv.get(id)
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    }

    async fn published(&self) -> Vec<(String, InboundReferral)> {
        let js = jetstream::new(self.server.client().await);
        let stream = js.get_stream(streams::INBOUND).await.unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subjects::inbound_referral(),
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
        let mut out = Vec::new();
        while let Some(Ok(m)) = batch.next().await {
            let msg_id = m
                .headers
                .as_ref()
                .unwrap()
                .get("Nats-Msg-Id")
                .unwrap()
                .to_string();
            let event = Envelope::<InboundReferral>::from_bytes(&m.payload)
                .unwrap()
                .data;
            out.push((msg_id, event));
        }
        out
    }
}

fn ulid_like() -> String {
    nwd_proto::ReferralId::new().to_string()
}

fn post(secret: &str, id: &str, ts: i64, content_type: &str, body: &[u8]) -> Request<Body> {
    let sig = partner_signature::sign(secret, id, ts, body).unwrap_or_else(|| "v1,AAAA".into());
    Request::post(referrals::REFERRALS_PATH)
        .header("content-type", content_type)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn a_signed_referral_is_claimed_published_and_answered_202_with_its_task() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-ed-overdose-stat.json");
    let (status, headers, answer) = edge.post(HOSPITAL_SECRET, "msg_ed_1", &body).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let id = wire::referral_id(&hospital(), "msg_ed_1");
    assert_eq!(headers["location"], format!("/v1/referrals/{id}"));
    assert_eq!(headers["content-type"], "application/fhir+json");
    let task = json(&answer);
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(task["status"], "requested");
    assert_eq!(task["priority"], "stat");
    assert_eq!(task["requester"]["display"], "County General Hospital ED");
    assert!(
        !String::from_utf8_lossy(&answer).contains("+1555010"),
        "no patient data in the Task"
    );

    let record = edge.record(&id.to_string()).await.unwrap();
    assert_eq!(record.status, TaskStatus::Requested);
    assert_eq!(record.version, 1);
    assert_eq!(record.partner, hospital());
    assert_eq!(record.webhook_id, "msg_ed_1");
    assert_eq!(record.body_digest.len(), 64);
    assert_eq!(record.priority, Priority::Stat);
    assert_eq!(record.received_at.unix_timestamp(), NOW);
    assert_eq!(
        (record.due_at - record.offer_at).whole_minutes(),
        15,
        "stat is due in 15 min"
    );

    let published = edge.published().await;
    assert_eq!(published.len(), 1);
    let (msg_id, event) = &published[0];
    assert_eq!(msg_id, &wire::msg_id::inbound_referral(&id));
    assert_eq!(event.referral_id, id);
    assert_eq!(event.partner, hospital());
    assert!(event.patient.phone.as_str().starts_with("+1555010"));
    assert!(event.reason.is_some());
    assert_eq!(event.offer_at, record.offer_at);
}

#[tokio::test]
async fn a_replay_creates_nothing_and_another_body_under_the_same_id_is_409() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-police-diversion-asap.json");
    let first = edge.post(HOSPITAL_SECRET, "msg_replay", &body).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    // The partner retries later (a fresh timestamp and signature).
    edge.now.fetch_add(90, Ordering::SeqCst);
    let again = edge
        .send(post(
            HOSPITAL_SECRET,
            "msg_replay",
            NOW + 90,
            "application/json",
            &body,
        ))
        .await;
    assert_eq!(again.0, StatusCode::ACCEPTED);
    assert_eq!(again.1["location"], first.1["location"]);
    assert_eq!(
        json(&again.2)["authoredOn"],
        json(&first.2)["authoredOn"],
        "the original record"
    );
    assert_eq!(
        edge.published().await.len(),
        1,
        "deduplicated by Nats-Msg-Id"
    );

    let other = fixture("valid-sr-mobile-only.json");
    let (status, headers, answer) = edge
        .send(post(
            HOSPITAL_SECRET,
            "msg_replay",
            NOW + 90,
            "application/json",
            &other,
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        json(&answer)["type"]
            .as_str()
            .unwrap()
            .ends_with("webhook-id-conflict")
    );
    let id = wire::referral_id(&hospital(), "msg_replay");
    let record = edge.record(&id.to_string()).await.unwrap();
    assert_eq!(
        record.received_at.unix_timestamp(),
        NOW,
        "the first claim stands"
    );
    assert_eq!(edge.published().await.len(), 1);
}

#[tokio::test]
async fn the_same_webhook_id_from_two_partners_is_two_referrals() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-referral-service.json");
    assert_eq!(
        edge.post(HOSPITAL_SECRET, "msg_same", &body).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        edge.post(CLINIC_SECRET, "msg_same", &body).await.0,
        StatusCode::ACCEPTED
    );
    let partners: Vec<String> = edge
        .published()
        .await
        .into_iter()
        .map(|(_, e)| e.partner.to_string())
        .collect();
    assert_eq!(partners, ["county-hospital", "eastside-clinic"]);
}

#[derive(Debug, Deserialize)]
struct Case {
    file: String,
    accept: bool,
    field: Option<String>,
    rejected_by: Option<String>,
}

#[tokio::test]
async fn every_manifest_document_gets_its_answer_over_http() {
    let edge = Edge::start().await;
    let cases: Vec<Case> = serde_json::from_slice(&fixture("manifest.json")).unwrap();
    let mut wrong = Vec::new();
    for (n, case) in cases
        .iter()
        .filter(|c| !c.file.starts_with("hl7-"))
        .enumerate()
    {
        let body = fixture(&case.file);
        let id = format!("msg_case_{n}");
        // Half as problem+json, half as OperationOutcome.
        let fhir = n % 2 == 0;
        let content_type = if fhir {
            "application/fhir+json"
        } else {
            "application/json; charset=utf-8"
        };
        let (status, headers, answer) = edge
            .send(post(HOSPITAL_SECRET, &id, NOW, content_type, &body))
            .await;
        let want = match (case.accept, case.rejected_by.as_deref()) {
            (true, _) => 202,
            (false, Some("json")) => 400,
            (false, _) if case.file.contains("oversize") => 413,
            (false, _) => 422,
        };
        if status.as_u16() != want {
            wrong.push(format!("{}: {status}, want {want}", case.file));
            continue;
        }
        if case.accept {
            continue;
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(
            !text.contains("+1555010"),
            "{}: patient data in the answer",
            case.file
        );
        if fhir {
            assert_eq!(
                headers["content-type"], "application/fhir+json",
                "{}",
                case.file
            );
            let outcome = json(&answer);
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            let issue = &outcome["issue"][0];
            assert_eq!(issue["severity"], "error");
            if let Some(field) = &case.field {
                assert_eq!(issue["expression"][0], field.as_str(), "{}", case.file);
            }
        } else {
            assert_eq!(
                headers["content-type"], "application/problem+json",
                "{}",
                case.file
            );
            let problem = json(&answer);
            assert_eq!(problem["status"], want);
            if let Some(field) = &case.field {
                let detail = problem["detail"].as_str().unwrap();
                assert!(
                    detail.contains(&format!("at {field}:")),
                    "{}: {detail}",
                    case.file
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_media_types_and_sizes_are_refused_in_order() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-mobile-only.json");
    let problem_type = |answer: &[u8]| json(answer)["type"].as_str().unwrap().to_owned();

    // Unsigned.
    let unsigned = Request::post(referrals::REFERRALS_PATH)
        .header("content-type", "application/fhir+json")
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, headers, answer) = edge.send(unsigned).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "application/fhir+json");
    assert_eq!(json(&answer)["issue"][0]["code"], "security");

    // Signed with a secret no partner has.
    let stranger = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, _, _) = edge
        .send(post(stranger, "msg_x", NOW, "application/json", &body))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The hospital's second (rotated-in) secret is as good as the first.
    let (status, _, _) = edge
        .send(post(
            HOSPITAL_ROTATED,
            "msg_rotated",
            NOW,
            "application/json",
            &body,
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Signed 301 s ago, or 301 s ahead: stale, either way.
    for ts in [NOW - 301, NOW + 301] {
        let (status, _, answer) = edge
            .send(post(
                HOSPITAL_SECRET,
                "msg_stale",
                ts,
                "application/json",
                &body,
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            json(&answer)["detail"]
                .as_str()
                .unwrap()
                .contains("5 minutes")
        );
    }
    // Exactly 300 s off is still in.
    let (status, _, _) = edge
        .send(post(
            HOSPITAL_SECRET,
            "msg_edge",
            NOW - 300,
            "application/json",
            &body,
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Another media type: 415, whatever the signature.
    for content_type in [
        "text/plain",
        "application/xml",
        "application/json; charset=latin1",
    ] {
        let (status, _, answer) = edge
            .send(post(HOSPITAL_SECRET, "msg_type", NOW, content_type, &body))
            .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert!(problem_type(&answer).ends_with("unsupported-media-type"));
    }

    // Over the limit: 413 from Content-Length before any check of the
    // signature, and while reading a body that lies about its length.
    let big = fixture("invalid-sr-oversize-2mb.json");
    let declared = Request::post(referrals::REFERRALS_PATH)
        .header("content-type", "text/plain")
        .header("content-length", big.len().to_string())
        .body(Body::from(big.clone()))
        .unwrap();
    let (status, _, _) = edge.send(declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = futures::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let streamed = Request::post(referrals::REFERRALS_PATH)
        .header("content-type", "application/fhir+json")
        .body(Body::from_stream(chunks))
        .unwrap();
    let (status, _, answer) = edge.send(streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&answer)["issue"][0]["code"], "too-long");

    assert_eq!(
        edge.published().await.len(),
        2,
        "only the two accepted ones"
    );
}

#[tokio::test]
async fn a_referral_due_in_the_future_is_offered_then() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-prison-release-urgent.json");
    let (status, _, _) = edge.post(HOSPITAL_SECRET, "msg_release", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, event) = edge.published().await.pop().unwrap();
    let release = time::macros::datetime!(2036-01-15 09:00 -05:00);
    assert_eq!(event.offer_at, release);
    assert_eq!(
        event.due_at,
        release + time::Duration::hours(4),
        "urgent: 4 h"
    );
    assert_eq!(event.occurrence, Some(release));
}

#[tokio::test]
async fn nats_not_answering_is_503_with_retry_after_and_a_retry_then_succeeds() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-mobile-only.json");
    edge.server.pause();
    let (status, headers, answer) = edge
        .send(post(
            HOSPITAL_SECRET,
            "msg_down",
            NOW,
            "application/json",
            &body,
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["content-type"], "application/problem+json");
    edge.server.resume();
    nwd_testkit::eventually(Duration::from_secs(15), "the retry is accepted", || async {
        let (status, _, _) = edge
            .send(post(
                HOSPITAL_SECRET,
                "msg_down",
                NOW,
                "application/json",
                &body,
            ))
            .await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert_eq!(edge.published().await.len(), 1);
}

#[tokio::test]
async fn a_partner_reads_its_own_referrals_and_nobody_elses() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-ed-overdose-stat.json");
    let (_, headers, _) = edge.post(HOSPITAL_SECRET, "msg_mine", &body).await;
    let location = headers["location"].to_str().unwrap().to_owned();

    let (status, headers, answer) = edge.get(HOSPITAL_SECRET, &location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/fhir+json");
    let task = json(&answer);
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(
        format!("/v1/referrals/{}", task["id"].as_str().unwrap()),
        location
    );

    // Another partner's id and an unknown id get the same 404.
    let (theirs, _, theirs_body) = edge.get(CLINIC_SECRET, &location).await;
    let unknown = format!("/v1/referrals/{}", nwd_proto::ReferralId::new());
    let (none, _, none_body) = edge.get(HOSPITAL_SECRET, &unknown).await;
    let (junk, _, _) = edge.get(HOSPITAL_SECRET, "/v1/referrals/not-an-id").await;
    assert_eq!(theirs, StatusCode::NOT_FOUND);
    assert_eq!(none, StatusCode::NOT_FOUND);
    assert_eq!(junk, StatusCode::NOT_FOUND);
    assert_eq!(theirs_body, none_body);

    // Unsigned: 401.
    let unsigned = Request::get(&location).body(Body::empty()).unwrap();
    assert_eq!(edge.send(unsigned).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_polling_partner_lists_what_changed_since_a_time() {
    let edge = Edge::start().await;
    let body = fixture("valid-sr-ed-overdose-stat.json");
    edge.post(HOSPITAL_SECRET, "msg_a", &body).await;
    edge.now.fetch_add(60, Ordering::SeqCst);
    edge.send(post(
        HOSPITAL_SECRET,
        "msg_b",
        NOW + 60,
        "application/json",
        &body,
    ))
    .await;
    edge.send(post(
        CLINIC_SECRET,
        "msg_c",
        NOW + 60,
        "application/json",
        &body,
    ))
    .await;

    let (status, headers, answer) = edge.get(HOSPITAL_SECRET, "/v1/referrals").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/fhir+json");
    let bundle = json(&answer);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 2, "the hospital's two, not the clinic's");

    let since = OffsetDateTime::from_unix_timestamp(NOW + 30)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (_, _, answer) = edge
        .get(
            HOSPITAL_SECRET,
            &format!("/v1/referrals?_lastUpdated=gt{since}"),
        )
        .await;
    let bundle = json(&answer);
    assert_eq!(bundle["total"], 1);
    let b = wire::referral_id(&hospital(), "msg_b").to_string();
    assert_eq!(bundle["entry"][0]["resource"]["id"], b.as_str());
    assert_eq!(bundle["entry"][0]["fullUrl"], format!("/v1/referrals/{b}"));

    let (_, _, answer) = edge
        .get(
            HOSPITAL_SECRET,
            "/v1/referrals?_lastUpdated=gt2099-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(json(&answer)["total"], 0);

    let (status, _, answer) = edge
        .get(HOSPITAL_SECRET, "/v1/referrals?_lastUpdated=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&answer)["issue"][0]["expression"][0], "_lastUpdated");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    /// Random, truncated and mutated bodies, correctly signed, through the
    /// real router: always a 4xx (or a 202 for a mutation that is still a
    /// referral), never a 5xx or a panic.
    #[tokio::test]
    async fn signed_garbage_gets_a_4xx_never_a_5xx() {
        let edge = Edge::start().await;
        let valid: Vec<Vec<u8>> = std::fs::read_dir(fixtures())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("valid-")
            })
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let strategy = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048).prop_map(|b| (b, None)),
            (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                .prop_map(|(f, cut)| (Vec::new(), Some((f, cut, Vec::new())))),
            (
                any::<prop::sample::Index>(),
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            )
                .prop_map(|(f, edits)| (Vec::new(), Some((f, f, edits)))),
        ];
        let mut runner = TestRunner::new(Config {
            cases: 96,
            ..Config::default()
        });
        let mut bodies = Vec::new();
        for _ in 0..96 {
            let (random, derived) = strategy.new_tree(&mut runner).unwrap().current();
            let body = match derived {
                None => random,
                Some((f, cut, edits)) if edits.is_empty() => {
                    let b = &valid[f.index(valid.len())];
                    b[..cut.index(b.len())].to_vec()
                }
                Some((f, _, edits)) => {
                    let mut b = valid[f.index(valid.len())].clone();
                    for (at, byte) in edits {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                    b
                }
            };
            bodies.push(body);
        }
        for (n, body) in bodies.iter().enumerate() {
            let (status, _, _) = edge
                .send(post(
                    HOSPITAL_SECRET,
                    &format!("msg_fuzz_{n}"),
                    NOW,
                    "application/fhir+json",
                    body,
                ))
                .await;
            assert!(
                status.is_client_error() || status == StatusCode::ACCEPTED,
                "case {n}: {status}"
            );
            if status == StatusCode::UNAUTHORIZED {
                // Only a body that is not UTF-8 cannot be signed by the
                // reference crate; the partner could not have sent it.
                assert!(std::str::from_utf8(body).is_err(), "case {n}");
            }
        }
    }
}

/// The gateway through `run` on a real socket, with the demo directory and
/// the system clock.
struct Running {
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(server: &NatsServer) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        server.set_up_bus().await;
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let config = nwd_gateway::Config {
            nats: nwd_runtime::bus::NatsArgs::local(server.url_for("gateway")),
            addr,
            public_url: format!("http://{addr}"),
            twilio_auth_token: nwd_runtime::service::Secret::new(
                "8ac58b9c260ff14edd67b2dfe5d54a92",
            ),
            twilio_url_fragment: None,
            directory: nwd_runtime::directory::demo_path(),
            max_body_bytes: 65536,
            spool: nwd_gateway::spool::SpoolArgs {
                dir: server.store_dir().with_file_name("gateway-spool"),
                max_bytes: 1 << 20,
            },
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let task =
            tokio::spawn(async move { nwd_gateway::run(config, listener, stop).await.unwrap() });
        nwd_testkit::wait_ready(addr).await;
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// Posts the referral signed with `secret` now; returns the status.
    async fn post(&self, secret: &str, id: &str, body: &[u8]) -> u16 {
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let sig = partner_signature::sign(secret, id, ts, body).unwrap();
        reqwest::Client::new()
            .post(format!("http://{}/v1/referrals", self.addr))
            .header("content-type", "application/fhir+json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// A partner rotates its secret in the live directory: the running gateway
/// takes the new one without a restart (it reads the `directory` bucket as
/// its own NATS user).
#[tokio::test]
async fn a_secret_rotated_in_the_live_directory_is_taken_without_a_restart() {
    let server = NatsServer::start().await;
    let gateway = Running::start(&server).await;
    let body = fixture("valid-sr-mobile-only.json");
    let fresh = "whsec_c2VjcmV0LXJvdGF0ZWQtaW4tdGhlLWxpdmUtZGlyZWN0b3J5";
    assert_eq!(
        gateway.post(HOSPITAL_SECRET, "msg_before", &body).await,
        202
    );
    assert_eq!(gateway.post(fresh, "msg_fresh_0", &body).await, 401);

    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    let hospital = dir
        .partners
        .iter_mut()
        .find(|p| p.id.as_str() == "county-hospital")
        .unwrap();
    hospital.referrals.as_mut().unwrap().secrets = vec![fresh.to_owned()];
    let operator = jetstream::new(server.client().await);
    let bucket = operator.get_key_value(buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&bucket, &dir)
        .await
        .unwrap();

    let mut n = 0;
    nwd_testkit::eventually(Duration::from_secs(10), "the new secret is taken", || {
        n += 1;
        let id = format!("msg_fresh_{n}");
        let (gateway, body) = (&gateway, &body);
        async move { (gateway.post(fresh, &id, body).await == 202).then_some(()) }
    })
    .await;
    assert_eq!(
        gateway.post(HOSPITAL_SECRET, "msg_after", &body).await,
        401,
        "the retired secret no longer verifies"
    );
    gateway.stop().await;
}

/// The real server through `run`, with the demo directory and the system
/// clock, and the demo script that signs with openssl and posts with curl.
#[tokio::test]
async fn the_demo_script_posts_a_referral_the_running_gateway_accepts() {
    let server = NatsServer::start().await;
    let gateway = Running::start(&server).await;
    let addr = gateway.addr;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/post-referral.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(fixtures().join("valid-bundle-collection.json"))
        .env("NWD_GATEWAY_URL", format!("http://{addr}"))
        .env("NWD_REFERRAL_WEBHOOK_ID", "msg_demo_script")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP/1.1 202"), "{stdout}");
    let id = wire::referral_id(&hospital(), "msg_demo_script");
    assert!(
        stdout.lines().any(|l| l
            .trim_end()
            .eq_ignore_ascii_case(&format!("location: /v1/referrals/{id}"))),
        "{stdout}"
    );

    // And the partner reads it back over HTTP, signed the same way.
    let http = reqwest::Client::new();
    let ts = OffsetDateTime::now_utc().unix_timestamp();
    let sig = partner_signature::sign(HOSPITAL_SECRET, "nonce_1", ts, b"").unwrap();
    let res = http
        .get(format!("http://{addr}/v1/referrals/{id}"))
        .header("webhook-id", "nonce_1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let fhir_task: serde_json::Value = res.json().await.unwrap();
    assert_eq!(fhir_task["status"], "requested");
    assert_eq!(
        fhir_task["focus"]["reference"],
        "https://fhir.eastside-clinic.example.org/fhir/ServiceRequest/sr-88120"
    );

    gateway.stop().await;
}

/// Received, accepted and rejected counts by partner and a bounded reason;
/// an unverified request counts under `unknown`. (nextest runs each test in
/// its own process, so the counts are this test's.)
#[tokio::test]
async fn referrals_are_counted_by_partner_and_reason_without_patient_data() {
    let metrics = nwd_runtime::telemetry::metrics_handle().unwrap();
    let edge = Edge::start().await;
    let body = fixture("valid-sr-ed-overdose-stat.json");
    assert_eq!(
        edge.post(HOSPITAL_SECRET, "msg_m1", &body).await.0,
        StatusCode::ACCEPTED
    );
    // A replay is received again but accepted once.
    assert_eq!(
        edge.post(HOSPITAL_SECRET, "msg_m1", &body).await.0,
        StatusCode::ACCEPTED
    );
    let stranger = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        edge.post(stranger, "msg_m2", &body).await.0,
        StatusCode::UNAUTHORIZED
    );
    let bad = fixture("invalid-sr-priority-wrong-case.json");
    assert_eq!(
        edge.post(CLINIC_SECRET, "msg_m3", &bad).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let unreachable = fixture("invalid-sr-patient-no-phone.json");
    assert_eq!(
        edge.post(CLINIC_SECRET, "msg_m4", &unreachable).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let text = metrics.render();
    let value = |line_start: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value(r#"nwd_referrals_received_total{partner="county-hospital"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"nwd_referrals_accepted_total{partner="county-hospital"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"nwd_referrals_received_total{partner="eastside-clinic"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"nwd_referrals_rejected_total{partner="unknown",reason="signature"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"nwd_referrals_rejected_total{partner="eastside-clinic",reason="binding"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"nwd_referrals_rejected_total{partner="eastside-clinic",reason="unreachable"}"#),
        Some(1.0)
    );
    assert!(!text.contains("+1555010"));
}

/// A claim whose publish failed (the gateway lost NATS in between) is
/// published by the partner's retry; a replay of a referral the line has
/// already moved on publishes nothing and answers with the Task as it is.
#[tokio::test]
async fn a_retry_publishes_a_claim_left_unpublished_but_not_one_already_moved_on() {
    use sha2::Digest;
    let edge = Edge::start().await;
    let body = fixture("valid-sr-ed-overdose-stat.json");
    let digest: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let at = OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap();
    let record = |webhook_id: &str, status, version| ReferralRecord {
        id: wire::referral_id(&hospital(), webhook_id),
        partner: hospital(),
        webhook_id: webhook_id.to_owned(),
        body_digest: digest.clone(),
        focus: None,
        placer_identifier: None,
        priority: Priority::Stat,
        offer_at: at,
        due_at: at + time::Duration::minutes(15),
        status,
        outcome: None,
        status_reason: None,
        contact_id: None,
        version,
        received_at: at,
        last_modified: at,
    };
    let js = jetstream::new(edge.server.client().await);
    let kv = js.get_key_value(buckets::REFERRALS).await.unwrap();
    for r in [
        record("msg_unpublished", TaskStatus::Requested, 1),
        record("msg_moved_on", TaskStatus::Accepted, 2),
    ] {
        kv.create(r.id.to_string(), serde_json::to_vec(&r).unwrap().into())
            .await
            .unwrap();
    }

    let (status, _, answer) = edge.post(HOSPITAL_SECRET, "msg_moved_on", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&answer)["status"], "accepted", "the Task as it is now");
    assert!(
        edge.published().await.is_empty(),
        "nothing to publish again"
    );

    let (status, _, _) = edge.post(HOSPITAL_SECRET, "msg_unpublished", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let published = edge.published().await;
    assert_eq!(published.len(), 1);
    let id = wire::referral_id(&hospital(), "msg_unpublished");
    assert_eq!(published[0].1.referral_id, id);
    assert_eq!(published[0].1.received_at, at, "the original claim's times");
}
