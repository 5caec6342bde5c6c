//! Phone simulator — **development and tests only**. A fake Twilio:
//!
//! - speaks Twilio's Messages REST API (`POST /2010-04-01/Accounts/{sid}/Messages.json`,
//!   basic auth, idempotency token, Twilio error bodies) and then posts signed
//!   status callbacks (`sent`, `delivered`) to the message's `StatusCallback`;
//! - plays patients: `POST /api/phones/{phone}/messages` builds the form
//!   Twilio posts for an inbound SMS, signs it and posts it to the gateway,
//!   retrying like Twilio on 5xx and connection errors;
//! - serves a phone page at `/` to text the line by hand.
//!
//! Twilio's magic test numbers fail as Twilio's test credentials do:
//! `+15005550001` → 21211 (invalid), `+15005550002` → 21612 (not reachable),
//! `+15005550003` → 21408 (region), `+15005550004` → 21610 (unsubscribed),
//! `+15005550009` → 21614 (not a mobile).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use bytes::Bytes;
use nwd_proto::Address;
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::problem::Problem;
use nwd_runtime::service::{Secret, ServiceConfig};
use nwd_twilio::rest::{self, codes};
use nwd_twilio::{ErrorResponse, InboundSmsForm, MessageResource, StatusCallbackForm, form};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const NAME: &str = "phone-sim";
const PHONE_PAGE: &str = include_str!("phone.html");

/// Twilio-like retry schedule for inbound webhooks (about a minute in all).
const INBOUND_RETRY_DELAYS_MS: [u64; 10] =
    [200, 500, 1000, 2000, 4000, 8000, 11000, 11000, 11000, 11000];
/// Retries of a status callback.
const CALLBACK_RETRY_DELAYS_MS: [u64; 4] = [200, 500, 1000, 2000];
/// Time between a message's `sent` and `delivered` callbacks.
const DELIVERY_DELAY: Duration = Duration::from_millis(150);
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
    /// Idempotency token → index in `outbound`.
    idempotency: HashMap<String, usize>,
    /// Patient phone → conversation, in order.
    conversations: BTreeMap<String, Vec<ConversationEntry>>,
    fail_next: Option<FailNext>,
}

#[derive(Debug, Clone, Copy)]
struct FailNext {
    remaining: u32,
    status: StatusCode,
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

    fn set_outbound_status(&self, sid: &str, status: &str) {
        let mut store = self.store();
        let mut to = None;
        if let Some(r) = store.outbound.iter_mut().find(|r| r.sid == sid) {
            r.status = status.to_owned();
            if let Some(res) = r.resource.as_mut() {
                res.status = status.to_owned();
            }
            to = Some(r.to.clone());
        }
        if let Some(to) = to {
            set_entry_state(&mut store, &to, sid, status);
        }
    }
}

fn set_entry_state(store: &mut Store, phone: &str, sid: &str, state: &str) {
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
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(create_message),
        )
        .route("/api/phones", get(list_phones))
        .route(
            "/api/phones/{phone}/messages",
            get(conversation).post(patient_sends),
        )
        .route("/api/messages", get(list_outbound))
        .route("/api/fail-next", post(fail_next))
        .with_state(sim)
}

// ------------------------------------------------------- Twilio REST API

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = ErrorResponse::new(code, status.as_u16(), message);
    let mut res = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
    }
    res
}

fn authorized(headers: &HeaderMap, account_sid: &str, token: &str) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    text.split_once(':')
        .is_some_and(|(user, pass)| user == account_sid && pass == token)
}

/// Error codes of Twilio's magic test numbers.
/// A phone number, or a channel address of one (`whatsapp:+1…`), as
/// Twilio's Messages API takes them.
fn is_number_address(s: &str) -> bool {
    Address::parse(s).phone().is_some()
}

fn magic_number_error(to: &str) -> Option<(u32, &'static str)> {
    match to {
        "+15005550001" => Some((
            codes::INVALID_TO,
            "The 'To' number is not a valid phone number.",
        )),
        "+15005550002" => Some((
            codes::NOT_REACHABLE,
            "The 'To' phone number is not currently reachable via SMS.",
        )),
        "+15005550003" => Some((
            codes::REGION_NOT_ENABLED,
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
        )),
        "+15005550004" => Some((
            codes::UNSUBSCRIBED,
            "Attempt to send to unsubscribed recipient.",
        )),
        "+15005550009" => Some((codes::NOT_MOBILE, "The 'To' number is not a mobile number.")),
        _ => None,
    }
}

async fn create_message(
    State(sim): State<Sim>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = sim.config();
    if !authorized(&headers, &config.account_sid, config.auth_token.expose()) {
        return twilio_error(
            StatusCode::UNAUTHORIZED,
            codes::AUTHENTICATION_FAILED,
            "Authentication Error - invalid username",
        );
    }
    if account_sid != config.account_sid {
        return twilio_error(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "The requested resource was not found",
        );
    }
    if let Some(status) = take_failure(&sim) {
        let code = match status.as_u16() {
            429 => codes::TOO_MANY_REQUESTS,
            503 => codes::SERVICE_UNAVAILABLE,
            _ => codes::INTERNAL_ERROR,
        };
        return twilio_error(status, code, "Simulated failure (phone-sim fail-next)");
    }
    let token = headers
        .get(nwd_twilio::IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    if let Some(token) = &token {
        let store = sim.store();
        if let Some(existing) = store
            .idempotency
            .get(token)
            .and_then(|i| store.outbound.get(*i))
            .and_then(|r| r.resource.clone())
        {
            return (StatusCode::CREATED, axum::Json(existing)).into_response();
        }
    }

    let params = form::decode(&body);
    let field = |name: &str| form::get(&params, name).filter(|v| !v.is_empty());
    let Some(to) = field("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            codes::TO_REQUIRED,
            "A 'To' phone number is required.",
        );
    };
    if !is_number_address(to) {
        let message = format!("The 'To' number {to} is not a valid phone number.");
        return twilio_error(StatusCode::BAD_REQUEST, codes::INVALID_TO, &message);
    }
    if let Some((code, message)) = magic_number_error(to) {
        return twilio_error(StatusCode::BAD_REQUEST, code, message);
    }
    let messaging_service_sid = field("MessagingServiceSid").map(str::to_owned);
    let from = match (field("From"), &messaging_service_sid) {
        (Some(from), _) => {
            if !is_number_address(from) {
                let message = format!("The 'From' number {from} is not a valid phone number.");
                return twilio_error(StatusCode::BAD_REQUEST, codes::INVALID_FROM, &message);
            }
            from.to_owned()
        }
        // A Messaging Service picks a number from its pool: the first line.
        (None, Some(_)) => config.lines.first().cloned().unwrap_or_default(),
        (None, None) => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                codes::FROM_REQUIRED,
                "A 'From' phone number is required.",
            );
        }
    };
    let Some(body) = form::get(&params, "Body").filter(|b| !b.trim().is_empty()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            codes::BODY_REQUIRED,
            "Message body is required.",
        );
    };
    if body.chars().count() > nwd_proto::events::MAX_SMS_BODY_CHARS {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let status_callback = field("StatusCallback").map(str::to_owned);

    let now = OffsetDateTime::now_utc();
    let sid = nwd_twilio::new_message_sid();
    let date = rest::rfc2822(now);
    let resource = MessageResource {
        account_sid: config.account_sid.clone(),
        api_version: nwd_twilio::API_VERSION.to_owned(),
        body: body.to_owned(),
        date_created: Some(date.clone()),
        date_sent: None,
        date_updated: Some(date),
        direction: "outbound-api".to_owned(),
        error_code: None,
        error_message: None,
        from: Some(from.clone()),
        messaging_service_sid: messaging_service_sid.clone(),
        num_media: "0".to_owned(),
        num_segments: rest::num_segments(body).to_string(),
        price: None,
        price_unit: Some("USD".to_owned()),
        sid: sid.clone(),
        status: "queued".to_owned(),
        subresource_uris: Some(BTreeMap::from([(
            "media".to_owned(),
            rest::message_uri(&config.account_sid, &sid).replace(".json", "/Media.json"),
        )])),
        to: to.to_owned(),
        uri: rest::message_uri(&config.account_sid, &sid),
    };
    let record = OutboundRecord {
        sid: sid.clone(),
        to: to.to_owned(),
        from: from.clone(),
        body: body.to_owned(),
        messaging_service_sid,
        status_callback: status_callback.clone(),
        idempotency_token: token.clone(),
        status: "queued".to_owned(),
        resource: Some(resource.clone()),
    };
    {
        let mut store = sim.store();
        // Re-check under the lock: two concurrent calls with one token make one message.
        if let Some(existing) = token
            .as_ref()
            .and_then(|t| store.idempotency.get(t))
            .and_then(|i| store.outbound.get(*i))
            .and_then(|r| r.resource.clone())
        {
            return (StatusCode::CREATED, axum::Json(existing)).into_response();
        }
        let index = store.outbound.len();
        store.outbound.push(record.clone());
        if let Some(t) = token {
            store.idempotency.insert(t, index);
        }
        store
            .conversations
            .entry(to.to_owned())
            .or_default()
            .push(ConversationEntry {
                sid: sid.clone(),
                sender: Sender::Line,
                line: from,
                body: body.to_owned(),
                state: "queued".to_owned(),
                at: now,
            });
    }
    tracing::info!(message_sid = %sid, "message queued");
    let bg = sim.clone();
    sim.inner
        .tasks
        .spawn(async move { deliver(bg, record).await });
    (StatusCode::CREATED, axum::Json(resource)).into_response()
}

fn take_failure(sim: &Sim) -> Option<StatusCode> {
    let mut store = sim.store();
    let fail = store.fail_next.as_mut()?;
    let status = fail.status;
    fail.remaining = fail.remaining.saturating_sub(1);
    if fail.remaining == 0 {
        store.fail_next = None;
    }
    Some(status)
}

/// Marks the message sent then delivered, posting a signed status callback
/// for each when the message has a `StatusCallback`.
async fn deliver(sim: Sim, record: OutboundRecord) {
    for status in ["sent", "delivered"] {
        tokio::select! {
            () = sim.inner.stop.cancelled() => return,
            () = tokio::time::sleep(DELIVERY_DELAY) => {}
        }
        sim.set_outbound_status(&record.sid, status);
        let Some(url) = &record.status_callback else {
            continue;
        };
        let form = StatusCallbackForm::new(
            &record.sid,
            status,
            &sim.config().account_sid,
            &record.from,
            &record.to,
        );
        let outcome = post_signed(&sim, url, &form.params(), &CALLBACK_RETRY_DELAYS_MS).await;
        tracing::info!(message_sid = %record.sid, status, ?outcome, "status callback");
    }
}

/// What became of a webhook post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Delivered,
    Failed,
    Stopped,
}

/// Posts a signed form to `url`, retrying on 5xx and connection errors
/// after each of `delays`; a 4xx is final.
async fn post_signed(
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
    if !is_number_address(&phone) {
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
    if !is_number_address(&request.to) {
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

async fn list_outbound(State(sim): State<Sim>) -> axum::Json<Vec<OutboundRecord>> {
    axum::Json(sim.store().outbound.clone())
}

#[derive(Debug, Deserialize)]
struct FailNextQuery {
    count: Option<u32>,
    status: Option<u16>,
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
    sim.store().fail_next = (count > 0).then_some(FailNext {
        remaining: count,
        status,
    });
    axum::Json(serde_json::json!({ "count": count, "status": status.as_u16() })).into_response()
}
