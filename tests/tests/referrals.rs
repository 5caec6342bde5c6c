//! A partner referral end to end through every real service (issue 14):
//! the hospital posts a signed FHIR ServiceRequest to the gateway → 202
//! with a Location → the outreach is offered to a counsellor → on accept
//! the line's introduction reaches the phone, naming neither the hospital
//! nor the reason → the person replies into the same contact → outcome,
//! resolve → the hospital's callback endpoint receives the Task's versions,
//! signed with Standard Webhooks, in order, and its GET shows the same
//! Task. A replay creates nothing; another partner cannot read it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nwd_e2e::{Counsellor, LINE_NUMBER, Line};
use nwd_proto::dashboard::{ClientMsg, ServerMsg};
use nwd_proto::directory::Directory;
use nwd_proto::referral::{OutreachOutcome, ReferralSettings};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{PartnerId, subjects, wire};
use nwd_testkit::eventually;

const T: Duration = Duration::from_secs(20);
/// The demo hospital's first secret (deploy/local/demo/directory.toml).
const HOSPITAL_SECRET: &str = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=";
/// A secret this test gives the re-entry programme.
const REENTRY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The fixture's patient (contained Patient `#p1`).
const PATIENT: &str = "+15550100142";
const FIXTURE: &str =
    include_str!("../../crates/fhir/tests/fixtures/valid-sr-ed-overdose-stat.json");

/// Standard Webhooks headers for `body` signed with `secret` now.
fn signed(secret: &str, webhook_id: &str, body: &[u8]) -> reqwest::header::HeaderMap {
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(webhook_id, ts, body)
        .unwrap();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("webhook-id", webhook_id.parse().unwrap());
    h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
    h.insert("webhook-signature", signature.parse().unwrap());
    h
}

async fn post_referral(line: &Line, secret: &str, webhook_id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/v1/referrals", line.addr("gateway")))
        .headers(signed(secret, webhook_id, FIXTURE.as_bytes()))
        .header("content-type", "application/fhir+json")
        .body(FIXTURE)
        .send()
        .await
        .unwrap()
}

async fn get_as(line: &Line, secret: &str, path: &str) -> reqwest::Response {
    let nonce = format!("get_{}", nwd_proto::ContactId::new());
    reqwest::Client::new()
        .get(format!("http://{}{path}", line.addr("gateway")))
        .headers(signed(secret, &nonce, b""))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_referral_is_reached_out_to_and_the_hospital_hears_each_step() {
    // The services run in this process: their counters need the recorder
    // installed before they start.
    nwd_runtime::telemetry::metrics_handle();
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    let (callback, calls) = nwd_e2e::partner_callbacks(HOSPITAL_SECRET).await;

    // The operator points the hospital's callbacks at its endpoint and lets
    // the re-entry programme post referrals too, live.
    let hospital = PartnerId::parse("county-hospital").unwrap();
    let reentry = PartnerId::parse("riverside-reentry").unwrap();
    let mut dir: Directory =
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    for p in &mut dir.partners {
        if p.id == hospital {
            p.referrals.as_mut().unwrap().callback_url = Some(callback.clone());
        } else if p.id == reentry {
            p.referrals = Some(ReferralSettings {
                secrets: vec![REENTRY_SECRET.into()],
                callback_url: None,
                due: Default::default(),
            });
        }
    }
    let js = line.jetstream().await;
    let store = nwd_runtime::bus::bucket(&js, buckets::DIRECTORY)
        .await
        .unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    for service in ["gateway", "notifier", "referrals"] {
        eventually(
            T,
            &format!("the directory applied by {service}"),
            || async { line.directory_applied(service).await.then_some(()) },
        )
        .await;
    }

    let mut ana = Counsellor::available(&line, "ana").await;
    let res = post_referral(&line, HOSPITAL_SECRET, "msg_ed_4417").await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let referral = wire::referral_id(&hospital, "msg_ed_4417");
    assert_eq!(location, format!("/v1/referrals/{referral}"));
    // The hospital's retry of the same delivery: the same answer, nothing new.
    let again = post_referral(&line, HOSPITAL_SECRET, "msg_ed_4417").await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["location"].to_str().unwrap(), location);

    let contact = wire::outreach_contact(&referral);
    let offer = ana
        .expect(T, "the outreach offer", |m| match m {
            ServerMsg::Offer { contact: c } if c.contact_id == contact => Some(c.clone()),
            _ => None,
        })
        .await;
    let view = offer.outreach.expect("shown as an outreach");
    assert_eq!(view.referred_by, "County General Hospital ED");
    assert!(
        view.reason.is_some(),
        "the reason is shown to the counsellor"
    );

    ana.send(&ClientMsg::Accept {
        contact_id: contact,
    })
    .await;
    let intro = eventually(T, "the introduction at the phone", || async {
        line.sent_messages()
            .await
            .into_iter()
            .find(|m| m["to"] == PATIENT)
    })
    .await;
    assert_eq!(intro["from"], LINE_NUMBER);
    let body = intro["body"].as_str().unwrap().to_lowercase();
    for secret in [
        "county", "hospital", "overdose", "opioid", "marcus", "referr",
    ] {
        assert!(!body.contains(secret), "{secret} disclosed in {body}");
    }

    line.patient_sends(PATIENT, LINE_NUMBER, "ok, who is this?")
        .await;
    ana.expect(T, "the person's reply in the same contact", |m| match m {
        ServerMsg::Message {
            contact_id,
            message,
            ..
        } if *contact_id == contact && message.body == "ok, who is this?" => Some(()),
        _ => None,
    })
    .await;
    ana.send(&ClientMsg::OutreachOutcome {
        contact_id: contact,
        outcome: OutreachOutcome::Reached,
    })
    .await;
    ana.expect(T, "the outcome recorded", |m| {
        matches!(m, ServerMsg::OutreachOutcomeRecorded { contact_id, .. } if *contact_id == contact)
            .then_some(())
    })
    .await;
    ana.send(&ClientMsg::Resolve {
        contact_id: contact,
        disposition: Some(nwd_proto::dashboard::Disposition::SupportGiven),
        note: None,
    })
    .await;

    // The hospital hears accepted, in-progress and completed, each version
    // once, in order, signed.
    let got = eventually(T, "three callbacks", || async {
        let got = calls.lock().unwrap().clone();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let expected: Vec<(String, String, bool)> =
        [(2, "accepted"), (3, "in-progress"), (4, "completed")]
            .into_iter()
            .map(|(v, s)| (wire::msg_id::partner_task(&referral, v), s.into(), true))
            .collect();
    assert_eq!(got, expected);

    // The hospital's GET shows the same Task; the re-entry programme,
    // correctly signed with its own secret, gets 404 for it.
    let task: serde_json::Value = get_as(&line, HOSPITAL_SECRET, &location)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["businessStatus"]["coding"][0]["code"], "reached");
    assert_eq!(get_as(&line, REENTRY_SECRET, &location).await.status(), 404);

    // One referral stored, one contact, one introduction.
    assert_eq!(
        line.count(streams::INBOUND, &subjects::inbound_referral())
            .await,
        1
    );
    let records: Vec<_> = line
        .records()
        .await
        .into_iter()
        .filter(|r| r.id == contact)
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(
        line.sent_messages()
            .await
            .iter()
            .filter(|m| m["to"] == PATIENT && m["body"] == intro["body"])
            .count(),
        1
    );
    // Nothing of the person or the referral in any log line.
    let text = logs.contents();
    for secret in ["0100142", "Marcus", "Delgado", "overdose", "who is this"] {
        assert!(!text.contains(secret), "{secret} in the logs");
    }
}
