//! Phone simulator — **development and tests only**. A fake Twilio:
//!
//! - speaks Twilio's Messages REST API ([`rest`]: create and list at
//!   `/2010-04-01/Accounts/{sid}/Messages.json`, basic auth, Twilio error
//!   bodies) and then posts signed status callbacks (`sent`, `delivered`) to
//!   the message's `StatusCallback`;
//! - plays patients: `POST /api/phones/{phone}/messages` builds the form
//!   Twilio posts for an inbound SMS, signs it and posts it to the gateway,
//!   retrying like Twilio on 5xx and connection errors;
//! - serves a phone page at `/` to text the line by hand;
//! - test controls: `POST /api/fail-next?count=&status=&code=` fails the next
//!   creates with a Twilio error, `POST /api/slow-next?count=&ms=` creates the
//!   next messages but answers only after `ms` (a lost answer);
//!   `GET /api/rest-calls` counts the REST requests.
//!
//! Twilio's magic test numbers fail as Twilio's test credentials do:
//! `+15005550001` → 21211 (invalid), `+15005550002` → 21612 (not reachable),
//! `+15005550003` → 21408 (region), `+15005550004` → 21610 (unsubscribed),
//! `+15005550009` → 21614 (not a mobile).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::problem::Problem;
use nwd_runtime::service::{Secret, ServiceConfig};
use nwd_twilio::{InboundSmsForm, MessageResource, form};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod rest;

const NAME: &str = "phone-sim";
const PHONE_PAGE: &str = include_str!("phone.html");

/// Twilio-like retry schedule for inbound webhooks (about a minute in all).
const INBOUND_RETRY_DELAYS_MS: [u64; 10] =
    [200, 500, 1000, 2000, 4000, 8000, 11000, 11000, 11000, 11000];
/// Retries of a status callback.
pub(crate) const CALLBACK_RETRY_DELAYS_MS: [u64; 4] = [200, 500, 1000, 2000];
/// Time between a message's `sent` and `delivered` callbacks.
pub(crate) const DELIVERY_DELAY: Duration = Duration::from_millis(150);
/// Bound on every outbound HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "nwd-phone-sim",
    about = "Fake Twilio for development and tests"
)]
pub struct Config {
    /// Where the simulator listens.
    #[arg(long, env = "NWD_PHONE_SIM_ADDR", default_value = "127.0.0.1:8070")]
    pub addr: SocketAddr,
    /// Base URL of the gateway: inbound webhooks go to `{gateway_url}/v1/sms/twilio`,
    /// which is also the URL they are signed over.
    #[arg(
        long,
        env = "NWD_PHONE_SIM_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway_url: String,
    /// The (fake) Twilio account.
    #[arg(
        long,
        env = "NWD_TWILIO_ACCOUNT_SID",
        default_value = "AC00000000000000000000000000000000"
    )]
    pub account_sid: String,
    /// The (fake) Twilio auth token: REST password and webhook signing key.
    #[arg(long, env = "NWD_TWILIO_AUTH_TOKEN")]
    pub auth_token: Secret,
    /// Patients' phones shown on the phone page.
    #[arg(
        long,
        env = "NWD_PHONE_SIM_PHONES",
        value_delimiter = ',',
        default_value = "+15005550142,+15005550143,+15005550144"
    )]
    pub phones: Vec<String>,
    /// The line's numbers a patient can text.
    #[arg(
        long,
        env = "NWD_PHONE_SIM_LINES",
        value_delimiter = ',',
        default_value = "+15005550100,+15005550110,+15005550120,+15005550130"
    )]
    pub lines: Vec<String>,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the simulator until `shutdown` is cancelled. Needs no NATS.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let sim = Sim::new(config, shutdown.child_token())?;
    let router = app(sim.clone()).merge(ops::routes(Readiness::default()));
    let served = ops::serve(listener, router, shutdown).await;
    sim.stop().await;
    served?;
    Ok(())
}

// ------------------------------------------------------------------ state

/// The simulator: config, an HTTP client, what it has seen.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

struct Inner {
    config: Config,
    http: reqwest::Client,
    store: Mutex<Store>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

#[derive(Default)]
struct Store {
    /// Every message created through the REST API, in order.
    outbound: Vec<OutboundRecord>,
    /// Patient phone → conversation, in order.
    conversations: BTreeMap<String, Vec<ConversationEntry>>,
    /// Requests to the REST API, answered or refused.
    calls: RestCalls,
    /// What the next creates run into, and how many of them.
    trouble: Option<(Trouble, u32)>,
}

/// How many requests the REST API got: `GET /api/rest-calls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestCalls {
    /// `POST …/Messages.json`, including refused ones.
    pub create: u32,
    /// `GET …/Messages.json`, every page.
    pub list: u32,
}

/// A test control's effect on the next `POST …/Messages.json`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trouble {
    /// Refused with this HTTP status and Twilio code (a default per status).
    Fail {
        status: StatusCode,
        code: Option<u32>,
    },
    /// Created, but answered this late.
    Slow(Duration),
}

/// A message created through `POST …/Messages.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboundRecord {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub messaging_service_sid: Option<String>,
    pub status_callback: Option<String>,
    pub idempotency_token: Option<String>,
    /// Twilio status: `queued`, then `sent`, then `delivered`.
    pub status: String,
    #[serde(skip)]
    resource: Option<MessageResource>,
}

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// The patient, texting one of the line's numbers.
    Patient,
    /// The line, through the Messages API.
    Line,
}

/// One message of a patient's conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationEntry {
    pub sid: String,
    pub sender: Sender,
    /// The line number on the other side.
    pub line: String,
    pub body: String,
    /// Patient messages: webhook state `pending`, `delivered` or `failed`.
    /// Line messages: Twilio status `queued`, `sent`, `delivered`.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Sim {
    pub fn new(config: Config, stop: CancellationToken) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider; install ring once
        // per process (an error means one is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                http,
                store: Mutex::default(),
                tasks: TaskTracker::new(),
                stop,
            }),
        })
    }

    /// Cancels background deliveries and waits for them to end.
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock would leave plain data behind; keep going.
        self.inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn inbound_webhook_url(&self) -> String {
        format!(
            "{}/v1/sms/twilio",
            self.config().gateway_url.trim_end_matches('/')
        )
    }

    /// Takes one create's worth of the trouble set by a test control.
    pub(crate) fn take_trouble(&self) -> Option<Trouble> {
        let mut store = self.store();
        let (trouble, remaining) = store.trouble.as_mut()?;
        let trouble = *trouble;
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            store.trouble = None;
        }
        Some(trouble)
    }

    pub(crate) fn set_outbound_status(&self, sid: &str, status: &str) {
        let mut store = self.store();
        let mut to = None;
        if let Some(r) = store.outbound.iter_mut().find(|r| r.sid == sid) {
            r.status = status.to_owned();
            if let Some(res) = r.resource.as_mut() {
                let now = Some(nwd_twilio::rest::rfc2822(OffsetDateTime::now_utc()));
                res.status = status.to_owned();
                if status == "sent" {
                    res.date_sent.clone_from(&now);
                }
                res.date_updated = now;
            }
            to = Some(r.to.clone());
        }
        if let Some(to) = to {
            set_entry_state(&mut store, &to, sid, status);
        }
    }
}

pub(crate) fn set_entry_state(store: &mut Store, phone: &str, sid: &str, state: &str) {
    if let Some(entry) = store
        .conversations
        .get_mut(phone)
        .and_then(|c| c.iter_mut().find(|e| e.sid == sid))
    {
        state.clone_into(&mut entry.state);
    }
}

/// The simulator's routes (without the ops routes).
pub fn app(sim: Sim) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PHONE_PAGE) }))
        .route(
            &nwd_twilio::rest::messages_path("{account_sid}"),
            post(rest::create_message).get(rest::list_messages),
        )
        .route("/api/phones", get(list_phones))
        .route(
            "/api/phones/{phone}/messages",
            get(conversation).post(patient_sends),
        )
        .route("/api/messages", get(list_outbound))
        .route("/api/rest-calls", get(rest_calls))
        .route("/api/fail-next", post(fail_next))
        .route("/api/slow-next", post(slow_next))
        .with_state(sim)
}

/// What became of a webhook post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Delivered,
    Failed,
    Stopped,
}

/// Posts a signed form to `url`, retrying on 5xx and connection errors
/// after each of `delays`; a 4xx is final.
pub(crate) async fn post_signed(
    sim: &Sim,
    url: &str,
    params: &[(String, String)],
    delays: &[u64],
) -> Delivery {
    let signature = nwd_twilio::signature::compute(sim.config().auth_token.expose(), url, params);
    let body = form::encode(params);
    let mut attempt = 0;
    loop {
        let request = sim
            .inner
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(nwd_twilio::SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send();
        let result = tokio::select! {
            () = sim.inner.stop.cancelled() => return Delivery::Stopped,
            r = request => r,
        };
        match result {
            Ok(res) if res.status().is_success() => return Delivery::Delivered,
            Ok(res) if res.status().is_client_error() => {
                tracing::warn!(status = res.status().as_u16(), "webhook refused");
                return Delivery::Failed;
            }
            Ok(res) => tracing::info!(
                status = res.status().as_u16(),
                attempt,
                "webhook failed; retrying"
            ),
            Err(e) => tracing::info!(error = %e, attempt, "webhook failed; retrying"),
        }
        let Some(delay) = delays.get(attempt) else {
            return Delivery::Failed;
        };
        attempt += 1;
        tokio::select! {
            () = sim.inner.stop.cancelled() => return Delivery::Stopped,
            () = tokio::time::sleep(Duration::from_millis(*delay)) => {}
        }
    }
}

// ------------------------------------------------------ playing patients

#[derive(Debug, Deserialize)]
struct SendRequest {
    to: String,
    body: String,
}

/// `202 {"message_sid": "SM…"}`
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAccepted {
    pub message_sid: String,
}

async fn patient_sends(State(sim): State<Sim>, Path(phone): Path<String>, body: Bytes) -> Response {
    if !rest::is_number_address(&phone) {
        return Problem::bad_request(
            "the phone must be an E.164 number or a channel address of one (whatsapp:+1…)",
        )
        .into_response();
    }
    let request: SendRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return Problem::bad_request("expected JSON {\"to\": \"+1…\", \"body\": \"…\"}")
                .into_response();
        }
    };
    if !rest::is_number_address(&request.to) {
        return Problem::bad_request("`to` must be an E.164 number or a channel address of one")
            .into_response();
    }
    let sid = nwd_twilio::new_message_sid();
    let form = InboundSmsForm::new(
        &sid,
        &sim.config().account_sid,
        &phone,
        &request.to,
        &request.body,
    );
    sim.store()
        .conversations
        .entry(phone.clone())
        .or_default()
        .push(ConversationEntry {
            sid: sid.clone(),
            sender: Sender::Patient,
            line: request.to.clone(),
            body: request.body,
            state: "pending".to_owned(),
            at: OffsetDateTime::now_utc(),
        });
    tracing::info!(message_sid = %sid, "patient message posting to the gateway");
    let bg = sim.clone();
    let message_sid = sid.clone();
    sim.inner.tasks.spawn(async move {
        let url = bg.inbound_webhook_url();
        let outcome = post_signed(&bg, &url, &form.params(), &INBOUND_RETRY_DELAYS_MS).await;
        tracing::info!(message_sid = %message_sid, ?outcome, "inbound webhook");
        let state = match outcome {
            Delivery::Delivered => "delivered",
            Delivery::Failed => "failed",
            Delivery::Stopped => return,
        };
        set_entry_state(&mut bg.store(), &phone, &message_sid, state);
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(SendAccepted { message_sid: sid }),
    )
        .into_response()
}

// ------------------------------------------------------------ inspection

/// `GET /api/phones`
#[derive(Debug, Serialize, Deserialize)]
pub struct PhonesView {
    pub phones: Vec<String>,
    pub lines: Vec<String>,
}

async fn list_phones(State(sim): State<Sim>) -> axum::Json<PhonesView> {
    axum::Json(PhonesView {
        phones: sim.config().phones.clone(),
        lines: sim.config().lines.clone(),
    })
}

/// `GET /api/phones/{phone}/messages`
#[derive(Debug, Serialize, Deserialize)]
pub struct ConversationView {
    pub phone: String,
    pub messages: Vec<ConversationEntry>,
}

async fn conversation(
    State(sim): State<Sim>,
    Path(phone): Path<String>,
) -> axum::Json<ConversationView> {
    let messages = sim
        .store()
        .conversations
        .get(&phone)
        .cloned()
        .unwrap_or_default();
    axum::Json(ConversationView { phone, messages })
}

async fn rest_calls(State(sim): State<Sim>) -> axum::Json<RestCalls> {
    axum::Json(sim.store().calls)
}

async fn list_outbound(State(sim): State<Sim>) -> axum::Json<Vec<OutboundRecord>> {
    axum::Json(sim.store().outbound.clone())
}

#[derive(Debug, Deserialize)]
struct FailNextQuery {
    count: Option<u32>,
    status: Option<u16>,
    /// The Twilio error code in the body (default: one fitting the status).
    code: Option<u32>,
}

async fn fail_next(
    State(sim): State<Sim>,
    query: Result<Query<FailNextQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return Problem::bad_request("count must be a number and status an HTTP status")
            .into_response();
    };
    let count = q.count.unwrap_or(1);
    let status = match StatusCode::from_u16(q.status.unwrap_or(500)) {
        Ok(s) if s.is_client_error() || s.is_server_error() => s,
        _ => return Problem::bad_request("status must be 400-599").into_response(),
    };
    sim.store().trouble = (count > 0).then_some((
        Trouble::Fail {
            status,
            code: q.code,
        },
        count,
    ));
    axum::Json(serde_json::json!({ "count": count, "status": status.as_u16(), "code": q.code }))
        .into_response()
}

#[derive(Debug, Deserialize)]
struct SlowNextQuery {
    count: Option<u32>,
    ms: u64,
}

/// `POST /api/slow-next?count=1&ms=2000`: the next creates succeed, but
/// their answers come `ms` late (the caller's timeout, a crash mid-call).
async fn slow_next(
    State(sim): State<Sim>,
    query: Result<Query<SlowNextQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return Problem::bad_request("ms and count must be numbers").into_response();
    };
    let count = q.count.unwrap_or(1);
    sim.store().trouble =
        (count > 0).then_some((Trouble::Slow(Duration::from_millis(q.ms)), count));
    axum::Json(serde_json::json!({ "count": count, "ms": q.ms })).into_response()
}
