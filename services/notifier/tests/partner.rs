//! Partner callbacks against a real nats-server and a real partner HTTP
//! server started here (axum on 127.0.0.1:0) that verifies every callback's
//! Standard Webhooks signature with the reference crate and records what
//! it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures::StreamExt;
use nwd_notifier::{Config, run};
use nwd_proto::deadletter::{DeadLetter, OpsAlert};
use nwd_proto::directory::Directory;
use nwd_proto::referral::{
    PartnerTaskUpdate, Priority, ReferralRecord, ReferralSettings, TaskStatus,
};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{Envelope, PartnerId, subjects, wire};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually, wait_ready};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLINIC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const HOSPITAL: &str = "county-hospital";
const CLINIC: &str = "eastside-clinic";

// ------------------------------------------------------------ the partner

#[derive(Debug, Clone)]
struct Received {
    webhook_id: String,
    timestamp: i64,
    verified: bool,
    content_type: String,
    version: String,
    status: String,
    answered: u16,
    at: Instant,
}

#[derive(Default)]
struct PartnerState {
    secret: String,
    received: Vec<Received>,
    /// Answers to give first, in order (status, Retry-After).
    script: VecDeque<(u16, Option<String>)>,
    /// Once the script is used up: 503 for everything while down, else 200.
    down: bool,
}

#[derive(Clone)]
struct Partner {
    state: Arc<Mutex<PartnerState>>,
    url: String,
    shutdown: CancellationToken,
}

async fn receive(
    State(state): State<Arc<Mutex<PartnerState>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let mut st = state.lock().unwrap();
    let verified = standardwebhooks::Webhook::new(&st.secret)
        .unwrap()
        .verify(&body, &headers)
        .is_ok();
    let task: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (status, retry_after) =
        st.script
            .pop_front()
            .unwrap_or(if st.down { (503, None) } else { (200, None) });
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    st.received.push(Received {
        webhook_id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
        verified,
        content_type: header("content-type"),
        version: task["meta"]["versionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status: task["status"].as_str().unwrap_or_default().to_owned(),
        answered: status,
        at: Instant::now(),
    });
    let mut res = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = retry_after {
        res.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    res
}

impl Partner {
    async fn start(secret: &str) -> Partner {
        let state = Arc::new(Mutex::new(PartnerState {
            secret: secret.to_owned(),
            ..Default::default()
        }));
        let listener = nwd_testkit::listener().await;
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/fhir/Task", axum::routing::post(receive))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap()
        });
        Partner {
            state,
            url: format!("http://{addr}/fhir/Task"),
            shutdown,
        }
    }

    fn script(&self, answers: &[(u16, Option<&str>)]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().map(|(s, r)| (*s, r.map(str::to_owned))));
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `n` callbacks came in.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(WAIT, "partner callbacks", || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// The versions the partner took (answered 2xx), in arrival order.
    fn taken(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.version)
            .collect()
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ------------------------------------------------------------ the line

struct Notifier {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), nwd_notifier::Error>>,
}

impl Notifier {
    async fn start(config: Config) -> Self {
        nwd_testkit::install_crypto();
        // The recorder before the first metric (tests read /metrics).
        nwd_runtime::telemetry::metrics_handle();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, listener, shutdown.clone()));
        wait_ready(addr).await;
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

fn config(server: &NatsServer) -> Config {
    Config {
        nats: NatsArgs::local(server.url_for("notifier")),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        // No SMS in these tests: nothing listens there.
        twilio_api_base: "http://127.0.0.1:9".into(),
        account_sid: "AC9af211329b2fc82e5efe906062c73008".into(),
        auth_token: Secret::new("token"),
        status_callback_base: "http://127.0.0.1:9/".into(),
        http_timeout_ms: 2_000,
        retry_base_ms: 20,
        send_lease_ms: 3_000,
        max_refusals: 5,
        replica_id: Some("notifier-test".into()),
        directory: nwd_runtime::directory::demo_path(),
        callback_retries: 4,
        callback_retry_base_ms: 40,
        callback_retry_cap_ms: 200,
        callback_max_refusals: 3,
        callback_timeout_ms: 2_000,
        callback_probe_ms: 60_000,
    }
}

/// The operator's bus, with a directory whose hospital (and clinic, if
/// given) take callbacks at the given URLs.
async fn setup(hospital: &str, clinic: Option<&str>) -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let js = jetstream::new(server.client().await);
    set_callbacks(&js, hospital, clinic).await;
    (server, js)
}

async fn set_callbacks(js: &jetstream::Context, hospital: &str, clinic: Option<&str>) {
    let mut dir: Directory =
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    for p in &mut dir.partners {
        let (secret, url) = match p.id.as_str() {
            HOSPITAL => (SECRET, Some(hospital)),
            CLINIC => (CLINIC_SECRET, clinic),
            _ => continue,
        };
        p.referrals = Some(ReferralSettings {
            secrets: vec![
                secret.to_owned(),
                "whsec_b2xkc2VjcmV0b2xkc2VjcmV0".to_owned(),
            ],
            callback_url: url.map(str::to_owned),
            due: Default::default(),
        });
    }
    let store = bus::bucket(js, buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
}

fn record(partner: &str, webhook_id: &str, version: u32, status: TaskStatus) -> ReferralRecord {
    let partner = PartnerId::parse(partner).unwrap();
    let at = OffsetDateTime::now_utc();
    ReferralRecord {
        id: wire::referral_id(&partner, webhook_id),
        partner,
        webhook_id: webhook_id.into(),
        body_digest: "00".into(),
        focus: Some("ServiceRequest/ed-4417".into()),
        placer_identifier: None,
        priority: Priority::Urgent,
        offer_at: at,
        due_at: at,
        status,
        outcome: None,
        status_reason: None,
        contact_id: None,
        version,
        received_at: at,
        last_modified: at,
    }
}

/// Publishes a Task version as the referrals service does.
async fn publish_task(js: &jetstream::Context, rec: &ReferralRecord) {
    publish_task_as(js, rec, &wire::msg_id::partner_task(&rec.id, rec.version)).await;
}

async fn publish_task_as(js: &jetstream::Context, rec: &ReferralRecord, msg_id: &str) {
    let event = PartnerTaskUpdate {
        referral_id: rec.id,
        partner: rec.partner.clone(),
        version: rec.version,
        task: rec.task("No Wrong Door", "County General Hospital ED"),
        at: rec.last_modified,
    };
    bus::publish(
        js,
        subjects::outbound_partner_task(&rec.id),
        msg_id,
        &Envelope::new(event),
    )
    .await
    .unwrap();
}

async fn wait_idle(js: &jetstream::Context) {
    let stream = js.get_stream(streams::OUTBOUND).await.unwrap();
    eventually(WAIT, "notifier-partner idle", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info(consumers::NOTIFIER_PARTNER)
                .await
                .ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

async fn dead_letters(js: &jetstream::Context) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    for listed in nwd_runtime::deadletter::list(js).await.unwrap() {
        if listed.consumer == consumers::NOTIFIER_PARTNER {
            // Replayed (deleted) since the listing: gone.
            if let Ok(dl) = nwd_runtime::deadletter::get(js, listed.sequence).await {
                out.push(dl.data);
            }
        }
    }
    out
}

/// The next parked-callback alert on the ops subject.
async fn parked_alert(alerts: &mut async_nats::Subscriber) -> OpsAlert {
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = alerts.next().await {
            if let Ok(env) = Envelope::<OpsAlert>::from_bytes(&msg.payload)
                && matches!(env.data, OpsAlert::PartnerCallbackParked { .. })
            {
                return env.data;
            }
        }
        panic!("the alert subscription ended");
    })
    .await
    .expect("a parked-callback alert")
}

fn task_id(rec: &ReferralRecord) -> String {
    wire::msg_id::partner_task(&rec.id, rec.version)
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn callbacks_arrive_signed_and_in_version_order() {
    let partner = Partner::start(SECRET).await;
    let (server, js) = setup(&partner.url, None).await;
    let notifier = Notifier::start(config(&server)).await;
    let versions = [
        record(HOSPITAL, "msg_a", 2, TaskStatus::Accepted),
        record(HOSPITAL, "msg_a", 3, TaskStatus::InProgress),
        record(HOSPITAL, "msg_a", 4, TaskStatus::Completed),
    ];
    for rec in &versions {
        publish_task(&js, rec).await;
    }
    let got = partner.wait_for(3).await;
    wait_idle(&js).await;
    assert_eq!(got.len(), 3);
    for (r, rec) in got.iter().zip(&versions) {
        assert!(r.verified, "signature of {}", r.webhook_id);
        assert_eq!(r.webhook_id, task_id(rec));
        assert_eq!(r.content_type, "application/fhir+json");
        assert!((r.timestamp - OffsetDateTime::now_utc().unix_timestamp()).abs() < 60);
    }
    let statuses: Vec<&str> = got.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["accepted", "in-progress", "completed"]);
    assert_eq!(partner.taken(), ["2", "3", "4"]);
    assert_eq!(
        notifier
            .metric(
                "nwd_partner_callbacks_total{partner=\"county-hospital\",outcome=\"delivered\"}"
            )
            .await,
        Some(3.0)
    );
    notifier.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_with_the_same_webhook_id_and_a_fresh_timestamp_and_signature() {
    let partner = Partner::start(SECRET).await;
    partner.script(&[(503, Some("1"))]);
    let (server, js) = setup(&partner.url, None).await;
    let notifier = Notifier::start(config(&server)).await;
    let v2 = record(HOSPITAL, "msg_b", 2, TaskStatus::Accepted);
    let v3 = record(HOSPITAL, "msg_b", 3, TaskStatus::InProgress);
    publish_task(&js, &v2).await;
    publish_task(&js, &v3).await;
    let got = partner.wait_for(3).await;
    wait_idle(&js).await;
    let got_ids: Vec<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    // Version 3 waited for version 2's retry: the partner saw 2, 2, 3.
    assert_eq!(got_ids, [task_id(&v2), task_id(&v2), task_id(&v3)]);
    assert!(got.iter().all(|r| r.verified));
    assert_eq!(got[0].answered, 503);
    assert!(got[1].at - got[0].at >= Duration::from_millis(950));
    assert!(got[1].timestamp > got[0].timestamp, "a fresh timestamp");
    // Delivered once: one 2xx per version.
    assert_eq!(partner.taken(), ["2", "3"]);
    assert_eq!(
        notifier
            .metric("nwd_partner_callback_failures_total{partner=\"county-hospital\",reason=\"unavailable\"}")
            .await,
        Some(1.0)
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_partner_down_past_the_retries_is_parked_alerted_and_caught_up_when_back() {
    let hospital = Partner::start(SECRET).await;
    let clinic = Partner::start(CLINIC_SECRET).await;
    hospital.set_down(true);
    let (server, js) = setup(&hospital.url, Some(&clinic.url)).await;
    let mut alerts = server
        .client()
        .await
        .subscribe(subjects::ops_alert())
        .await
        .unwrap();
    let mut cfg = config(&server);
    cfg.callback_probe_ms = 300;
    let notifier = Notifier::start(cfg).await;
    let down = record(HOSPITAL, "msg_c", 2, TaskStatus::Accepted);
    publish_task(&js, &down).await;
    // Another partner's callback is not held up by the one that is down.
    let other = record(CLINIC, "msg_d", 2, TaskStatus::Accepted);
    publish_task(&js, &other).await;
    let got = clinic.wait_for(1).await;
    assert!(got[0].verified);

    let alert = parked_alert(&mut alerts).await;
    assert_eq!(
        alert,
        OpsAlert::PartnerCallbackParked {
            partner: PartnerId::parse(HOSPITAL).unwrap(),
            referral_id: down.id,
            version: 2,
            reason: "unreachable".into(),
        }
    );
    // Four attempts (the configured retries; the exact count is
    // `connection_errors_are_retried_then_parked`'s), then perhaps a probe
    // of the parked callback (every 300 ms here): every one signed, one id.
    let tried = hospital.received();
    assert!(tried.len() >= 4);
    assert!(
        tried
            .iter()
            .all(|r| r.verified && r.webhook_id == task_id(&down))
    );
    let parked = dead_letters(&js).await;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].detail.contains("unreachable"));
    let gauge = "nwd_partner_callbacks_parked{partner=\"county-hospital\"}";
    eventually(WAIT, "the parked gauge", || async {
        (notifier.metric(gauge).await == Some(1.0)).then_some(())
    })
    .await;

    // Back: the probe delivers the parked callback, once, and the gauge clears.
    hospital.set_down(false);
    eventually(WAIT, "the parked callback delivered", || async {
        (hospital.taken() == ["2"]).then_some(())
    })
    .await;
    eventually(WAIT, "the gauge back to 0", || async {
        (notifier.metric(gauge).await == Some(0.0)).then_some(())
    })
    .await;
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    assert_eq!(hospital.taken(), ["2"]);
    notifier.stop().await;
}

#[tokio::test]
async fn while_a_partner_is_down_its_new_callbacks_queue_behind_and_all_arrive_in_order() {
    let hospital = Partner::start(SECRET).await;
    hospital.set_down(true);
    let (server, js) = setup(&hospital.url, None).await;
    let mut cfg = config(&server);
    cfg.callback_probe_ms = 300;
    let notifier = Notifier::start(cfg).await;
    let a2 = record(HOSPITAL, "msg_e", 2, TaskStatus::Accepted);
    publish_task(&js, &a2).await;
    eventually(WAIT, "a parked", || async {
        (dead_letters(&js).await.len() == 1).then_some(())
    })
    .await;
    // Four attempts, then parked (a probe of the parked a2 may already
    // have followed: it runs every 300 ms while the partner is down).
    assert!(hospital.received().len() >= 4, "retried, then parked");
    // The partner is known down: new callbacks are parked at once, in
    // order, without retrying against it (and without a new alert each).
    let b2 = record(HOSPITAL, "msg_f", 2, TaskStatus::Accepted);
    let a3 = record(HOSPITAL, "msg_e", 3, TaskStatus::InProgress);
    publish_task(&js, &b2).await;
    publish_task(&js, &a3).await;
    eventually(WAIT, "b and a3 parked", || async {
        (dead_letters(&js).await.len() == 3).then_some(())
    })
    .await;
    // While down, only the probe knocks, and only with the oldest (a2):
    // the new callbacks are never tried against a partner known down.
    let tried: Vec<String> = hospital
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    assert!(
        tried.iter().all(|id| *id == task_id(&a2)),
        "no attempt of a new callback while down: {tried:?}"
    );
    let reasons: Vec<String> = dead_letters(&js)
        .await
        .into_iter()
        .map(|d| d.detail)
        .collect();
    assert!(reasons[1].ends_with("partner_down") && reasons[2].ends_with("partner_down"));

    // Back: the probe takes the oldest, then the rest follow in order.
    hospital.set_down(false);
    eventually(WAIT, "the parked ones cleared", || async {
        dead_letters(&js).await.is_empty().then_some(())
    })
    .await;
    wait_idle(&js).await;
    let taken: Vec<String> = hospital
        .received()
        .into_iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.webhook_id)
        .collect();
    assert_eq!(taken, [task_id(&a2), task_id(&b2), task_id(&a3)]);
    // Up again: a new callback goes straight through.
    let c2 = record(HOSPITAL, "msg_n", 2, TaskStatus::Accepted);
    publish_task(&js, &c2).await;
    eventually(WAIT, "c delivered", || async {
        hospital
            .received()
            .iter()
            .any(|r| r.webhook_id == task_id(&c2) && r.answered == 200)
            .then_some(())
    })
    .await;
    notifier.stop().await;
}

#[tokio::test]
async fn gone_stops_at_once_with_an_alert() {
    let partner = Partner::start(SECRET).await;
    partner.script(&[(410, None)]);
    let (server, js) = setup(&partner.url, None).await;
    let mut alerts = server
        .client()
        .await
        .subscribe(subjects::ops_alert())
        .await
        .unwrap();
    let notifier = Notifier::start(config(&server)).await;
    let rec = record(HOSPITAL, "msg_g", 2, TaskStatus::Accepted);
    publish_task(&js, &rec).await;
    let alert = parked_alert(&mut alerts).await;
    assert!(
        matches!(alert, OpsAlert::PartnerCallbackParked { ref reason, .. } if reason == "gone")
    );
    wait_idle(&js).await;
    assert_eq!(partner.received().len(), 1, "no retry after 410");
    assert_eq!(dead_letters(&js).await.len(), 1);
    notifier.stop().await;
}

#[tokio::test]
async fn other_client_errors_are_retried_a_few_times_then_parked() {
    let partner = Partner::start(SECRET).await;
    partner.script(&[(401, None), (400, None), (422, None), (200, None)]);
    let (server, js) = setup(&partner.url, None).await;
    let notifier = Notifier::start(config(&server)).await;
    let rec = record(HOSPITAL, "msg_h", 2, TaskStatus::Accepted);
    publish_task(&js, &rec).await;
    eventually(WAIT, "parked", || async {
        (dead_letters(&js).await.len() == 1).then_some(())
    })
    .await;
    wait_idle(&js).await;
    assert_eq!(partner.received().len(), 3, "three refusals, then parked");
    assert!(dead_letters(&js).await[0].detail.contains("refused"));
    notifier.stop().await;
}

#[tokio::test]
async fn connection_errors_are_retried_then_parked() {
    // Nothing listens on port 9.
    let (server, js) = setup("http://127.0.0.1:9/fhir/Task", None).await;
    let notifier = Notifier::start(config(&server)).await;
    let rec = record(HOSPITAL, "msg_i", 2, TaskStatus::Accepted);
    publish_task(&js, &rec).await;
    eventually(WAIT, "parked", || async {
        (dead_letters(&js).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        notifier
            .metric("nwd_partner_callback_failures_total{partner=\"county-hospital\",reason=\"connection\"}")
            .await,
        Some(4.0)
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_redelivered_or_older_version_is_never_posted_again() {
    let partner = Partner::start(SECRET).await;
    let (server, js) = setup(&partner.url, None).await;
    let notifier = Notifier::start(config(&server)).await;
    let v2 = record(HOSPITAL, "msg_j", 2, TaskStatus::Accepted);
    let v3 = record(HOSPITAL, "msg_j", 3, TaskStatus::InProgress);
    publish_task(&js, &v2).await;
    publish_task(&js, &v3).await;
    partner.wait_for(2).await;
    // The same versions again under other stream ids (a republish after the
    // dedupe window, a replayed dead letter): nothing is posted.
    publish_task_as(&js, &v2, "again-2").await;
    publish_task_as(&js, &v3, "again-3").await;
    wait_idle(&js).await;
    assert_eq!(partner.taken(), ["2", "3"]);
    assert_eq!(
        notifier
            .metric(
                "nwd_partner_callbacks_total{partner=\"county-hospital\",outcome=\"superseded\"}"
            )
            .await,
        Some(2.0)
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_partner_without_a_callback_url_gets_nothing_and_nothing_is_parked() {
    let partner = Partner::start(SECRET).await;
    let (server, js) = setup(&partner.url, None).await;
    let notifier = Notifier::start(config(&server)).await;
    // The clinic takes referrals but polls: no callback URL.
    let rec = record(CLINIC, "msg_k", 2, TaskStatus::Accepted);
    publish_task(&js, &rec).await;
    wait_idle(&js).await;
    assert!(partner.received().is_empty());
    assert!(dead_letters(&js).await.is_empty());
    assert_eq!(
        notifier
            .metric(
                "nwd_partner_callbacks_total{partner=\"eastside-clinic\",outcome=\"no_callback\"}"
            )
            .await,
        Some(1.0)
    );
    notifier.stop().await;
}

#[tokio::test]
async fn a_callback_that_cannot_be_signed_is_parked_not_sent() {
    let partner = Partner::start(SECRET).await;
    let (server, js) = setup(&partner.url, None).await;
    // The hospital's secret is not a whsec_ secret (a bad directory edit).
    let mut dir: Directory =
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    for p in &mut dir.partners {
        if p.id.as_str() == HOSPITAL {
            p.referrals = Some(ReferralSettings {
                secrets: vec!["whsec_not base64!".into()],
                callback_url: Some(partner.url.clone()),
                due: Default::default(),
            });
        }
    }
    let store = bus::bucket(&js, buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    let mut alerts = server
        .client()
        .await
        .subscribe(subjects::ops_alert())
        .await
        .unwrap();
    let notifier = Notifier::start(config(&server)).await;
    let rec = record(HOSPITAL, "msg_l", 2, TaskStatus::Accepted);
    publish_task(&js, &rec).await;
    let alert = parked_alert(&mut alerts).await;
    assert!(
        matches!(alert, OpsAlert::PartnerCallbackParked { ref reason, .. } if reason == "unsigned")
    );
    wait_idle(&js).await;
    assert!(partner.received().is_empty(), "nothing unsigned is sent");
    assert_eq!(dead_letters(&js).await.len(), 1);
    notifier.stop().await;
}

#[tokio::test]
async fn callbacks_waiting_at_start_wait_for_the_live_directory() {
    // The file's directory has no callback URLs; the bucket's has. Events
    // waiting when the notifier starts must not be taken as "no callback".
    let partner = Partner::start(SECRET).await;
    let (server, js) = setup(&partner.url, None).await;
    let recs: Vec<ReferralRecord> = (0..5)
        .map(|i| record(HOSPITAL, &format!("msg_m{i}"), 2, TaskStatus::Accepted))
        .collect();
    for rec in &recs {
        publish_task(&js, rec).await;
    }
    let notifier = Notifier::start(config(&server)).await;
    partner.wait_for(recs.len()).await;
    wait_idle(&js).await;
    assert_eq!(partner.taken().len(), recs.len());
    notifier.stop().await;
}
