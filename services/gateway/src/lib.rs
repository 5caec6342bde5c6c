//! The HTTP edge: Twilio's inbound SMS webhook and delivery status callbacks.
//!
//! Every request is checked in a fixed order — size (413), content type
//! (400), `X-Twilio-Signature` (403), fields — then published to the
//! INBOUND stream with the MessageSid as `Nats-Msg-Id`, and answered only
//! after JetStream acknowledged it. If the hub does not acknowledge in time,
//! the verified request is fsynced to the edge spool and answered 200 all
//! the same; the spool forwards it, in order, when NATS answers again
//! ([`spool`], ADR 0011). Twilio does not retry a 5xx unless told to, so
//! the only 503 left is a full (or failing) spool. A retry of a stored
//! message is swallowed by the stream's duplicate window and answered 200.
//!
//! Twilio never retries a 4xx, so a refused message is gone for good. A
//! correctly signed inbound message is therefore a person's message: it is
//! stored and answered 200 whatever its fields look like (a 4,000-character
//! WhatsApp body, `From=whatsapp:+1…`, an alphanumeric sender, a short code,
//! a bad `NumMedia`). Oddities are flagged on the event ([`InboundFlag`]) and
//! counted in `nwd_gateway_inbound_oddities_total{kind}`. Only unsigned,
//! badly signed, unreadable (not a form, no usable MessageSid) and oversized
//! requests are refused, each logged with its MessageSid when it has one.

pub mod partner_signature;
pub mod referrals;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use nwd_proto::events::{DeliveryStatus, InboundFlag, InboundSms, MAX_SMS_BODY_CHARS, SmsStatus};
use nwd_proto::streams;
use nwd_proto::wire;
use nwd_proto::{Address, AddressKind, Envelope, Event, MessageSid, OutboundId, subjects};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::problem::Problem;
use nwd_runtime::service::{Secret, ServiceConfig};
use nwd_twilio::form;
use nwd_twilio::signature;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::spool::{Handoff, Hub, Spool, SpoolArgs};

/// Path of the inbound SMS webhook.
pub const SMS_PATH: &str = "/v1/sms/twilio";
/// Path of the delivery status callback.
pub const STATUS_PATH: &str = nwd_twilio::STATUS_CALLBACK_PATH;
/// The empty TwiML document: "received, no reply from Twilio itself".
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

const NAME: &str = "gateway";
const STREAMS_READY: &str = "streams";

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-gateway", about = "HTTP edge for Twilio webhooks")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where the HTTP server listens.
    #[arg(long, env = "NWD_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The base URL Twilio posts to (as configured in Twilio's console);
    /// signatures are checked against it plus the request path and query.
    #[arg(
        long,
        env = "NWD_GATEWAY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    /// The Twilio auth token that signs webhooks.
    #[arg(long, env = "NWD_TWILIO_AUTH_TOKEN")]
    pub twilio_auth_token: Secret,
    /// Connection overrides configured after `#` in the webhook URL at
    /// Twilio (e.g. `rc=3&rp=all&ct=2000&rt=10000`). The fragment never
    /// reaches the gateway; a signature over the URL with it is accepted
    /// as well as one without.
    #[arg(long, env = "NWD_GATEWAY_TWILIO_URL_FRAGMENT")]
    pub twilio_url_fragment: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "NWD_GATEWAY_MAX_BODY_BYTES", default_value_t = 65536)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub spool: SpoolArgs,
    /// The directory file: partners' referral secrets and due times, kept
    /// current from the `directory` bucket.
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: std::path::PathBuf,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error("the directory's referral settings are not usable: {0}")]
    DirectoryCheck(String),
    #[error("cannot open the spool in {dir}: {source}")]
    Spool {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let directory =
        nwd_runtime::directory::Live::new(nwd_runtime::directory::load(&config.directory)?);
    let client = bus::connect(&config.nats, NAME).await?;
    let js = bus::jetstream(client.clone(), &config.nats);
    let spool = open_spool(&config.spool).await?;
    let hub = Hub::new(js.clone(), spool, publish_timeout(&config.nats));
    let readiness = Readiness::new([STREAMS_READY]);
    readiness.watch_client(client.clone());
    {
        // While the spool has room, a NATS outage degrades the gateway but
        // does not take it out of rotation: it still keeps every webhook.
        let hub = hub.clone();
        readiness.tolerate_nats_outage([STREAMS_READY], move || !hub.spool().is_full());
    }

    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    {
        // Forwards whatever an earlier run left spooled, then anything
        // spooled from now on.
        let (hub, stop) = (hub.clone(), stop.clone());
        tasks.spawn(async move { hub.forward(stop).await });
    }
    {
        let (js, readiness, stop) = (js.clone(), readiness.clone(), stop.clone());
        tasks.spawn(async move {
            if bus::wait_for(&js, &[streams::INBOUND], &[], &stop)
                .await
                .is_ok()
            {
                readiness.set(STREAMS_READY, true);
                tracing::info!("streams ready");
            }
        });
    }
    {
        // Partners' secrets change at run time (rotation): follow the
        // directory bucket once the operator has set the bus up. Its own
        // readiness: the SMS webhooks do not wait for the directory, and
        // until the bucket answers the file's partners are in force.
        let (js, directory, stop) = (js.clone(), directory.clone(), stop.clone());
        let readiness = Readiness::new([nwd_runtime::directory::READY]);
        tasks.spawn(async move {
            if bus::wait_for(&js, &[], &[streams::buckets::DIRECTORY], &stop)
                .await
                .is_err()
            {
                return;
            }
            match bus::bucket(&js, streams::buckets::DIRECTORY).await {
                Ok(store) => {
                    nwd_runtime::directory::follow(store, directory, readiness, NAME, stop).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the directory bucket; using the file");
                }
            }
        });
    }
    tasks.close();

    let referrals = referrals::Referrals::new(
        js.clone(),
        directory,
        referrals::system_clock(),
        publish_timeout(&config.nats),
    );
    let router = app(AppState::new(hub, &config))
        .merge(referrals::routes(referrals))
        .merge(ops::routes(readiness));
    let served = ops::serve(listener, router, shutdown).await;
    stop.cancel();
    tasks.wait().await;
    // Every webhook was acked by JetStream or fsynced to the spool before
    // it was answered, and `serve` drained requests in flight: nothing is
    // left to flush. What is still spooled is forwarded on the next start.
    drop(client);
    served?;
    Ok(())
}

/// Opens the spool directory (blocking file I/O, off the runtime's threads).
async fn open_spool(args: &SpoolArgs) -> Result<Spool, Error> {
    let (dir, max_bytes) = (args.dir.clone(), args.max_bytes);
    let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, max_bytes))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let spool = opened.map_err(|source| Error::Spool {
        dir: args.dir.clone(),
        source,
    })?;
    if !spool.is_empty() {
        tracing::warn!(
            depth = spool.depth(),
            "webhooks spooled by an earlier run; forwarding them first"
        );
    }
    Ok(spool)
}

/// How long a publish may take before the webhook goes to the spool. The
/// JetStream context already times out acks; this bound also covers a
/// publish stuck behind a reconnecting client.
fn publish_timeout(nats: &NatsArgs) -> Duration {
    Duration::from_millis(nats.ack_timeout_ms.saturating_mul(2)) + Duration::from_millis(250)
}

/// What the webhook handlers need.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    auth_token: Secret,
    public_url: String,
    url_fragment: Option<String>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("public_url", &self.inner.public_url)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(hub: Hub, config: &Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                auth_token: config.twilio_auth_token.clone(),
                public_url: config.public_url.trim_end_matches('/').to_owned(),
                url_fragment: config.twilio_url_fragment.clone(),
                max_body_bytes: config.max_body_bytes,
            }),
        }
    }

    /// A hub link for `config` over `js`, with the spool opened in
    /// `config.spool.dir` (for in-process tests of [`app`]).
    pub fn hub(js: jetstream::Context, config: &Config) -> std::io::Result<Hub> {
        let spool = Spool::open(&config.spool.dir, config.spool.max_bytes)?;
        Ok(Hub::new(js, spool, publish_timeout(&config.nats)))
    }
}

/// The webhook routes (without the ops routes), for `run` and for tests.
/// Unknown paths and wrong methods are answered with problem+json too.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(SMS_PATH, post(inbound_sms))
        .route(STATUS_PATH, post(status_callback))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "There is nothing at this path",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "This path does not take this method",
    )
    .into_response()
}

/// The URL Twilio signed: public URL + path + `?` + raw query if present.
pub fn signed_url(public_url: &str, uri: &Uri) -> String {
    let base = public_url.trim_end_matches('/');
    match uri.query() {
        Some(q) => format!("{base}{}?{q}", uri.path()),
        None => format!("{base}{}", uri.path()),
    }
}

// ------------------------------------------------------------------ errors

/// Why a webhook was not accepted. One place maps each to its problem+json
/// answer and its bounded metric outcome.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("body could not be read")]
    Unreadable,
    #[error("content type is not application/x-www-form-urlencoded")]
    ContentType,
    #[error("signature missing or invalid")]
    BadSignature,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("bus unavailable")]
    Unavailable,
}

impl Rejection {
    fn outcome(&self) -> &'static str {
        match self {
            Rejection::TooLarge(_) => "too_large",
            Rejection::Unreadable | Rejection::ContentType | Rejection::Invalid(_) => "bad_request",
            Rejection::BadSignature => "bad_signature",
            Rejection::Unavailable => "unavailable",
        }
    }

    fn problem(&self) -> Problem {
        match self {
            Rejection::TooLarge(limit) => Problem::payload_too_large(*limit),
            Rejection::Unreadable => Problem::bad_request("the request body could not be read"),
            Rejection::ContentType => {
                Problem::bad_request("the content type must be application/x-www-form-urlencoded")
            }
            Rejection::BadSignature => Problem::new(
                StatusCode::FORBIDDEN,
                "bad-signature",
                "The X-Twilio-Signature header is missing or invalid",
            ),
            Rejection::Invalid(detail) => Problem::bad_request(*detail),
            Rejection::Unavailable => Problem::unavailable(),
        }
    }
}

/// What became of an accepted webhook.
#[derive(Debug, Clone, Copy)]
enum Accepted {
    Stored,
    Duplicate,
    Spooled,
}

impl From<Handoff> for Accepted {
    fn from(h: Handoff) -> Self {
        match h {
            Handoff::Stored => Accepted::Stored,
            Handoff::Duplicate => Accepted::Duplicate,
            Handoff::Spooled => Accepted::Spooled,
        }
    }
}

// ---------------------------------------------------------------- handlers

#[derive(Debug, Clone, Copy)]
enum Route {
    Sms,
    Status,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Sms => "sms",
            Route::Status => "status",
        }
    }
}

async fn inbound_sms(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    instrumented(Route::Sms, handle_sms(state, uri, headers, body)).await
}

async fn status_callback(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    instrumented(Route::Status, handle_status(state, uri, headers, body)).await
}

/// One span, one counter increment and one latency sample per request.
async fn instrumented(
    route: Route,
    handle: impl Future<Output = Result<Accepted, Rejection>>,
) -> Response {
    let span = tracing::info_span!(
        "webhook",
        route = route.label(),
        message_sid = tracing::field::Empty
    );
    async move {
        let started = Instant::now();
        let result = handle.await;
        let outcome = match &result {
            Ok(Accepted::Stored) => "accepted",
            Ok(Accepted::Duplicate) => "duplicate",
            Ok(Accepted::Spooled) => "spooled",
            Err(rejection) => rejection.outcome(),
        };
        metrics::counter!(
            "nwd_webhooks_total",
            "service" => NAME,
            "route" => route.label(),
            "outcome" => outcome,
        )
        .increment(1);
        metrics::histogram!("nwd_webhook_seconds", "service" => NAME, "route" => route.label())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                tracing::info!(outcome, "webhook accepted");
                twiml()
            }
            Err(rejection) => {
                // Inside the span: the MessageSid is logged when the form had one.
                tracing::warn!(outcome, reason = %rejection, "webhook refused");
                rejection.problem().into_response()
            }
        }
    }
    .instrument(span)
    .await
}

fn twiml() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        EMPTY_TWIML,
    )
        .into_response()
}

async fn handle_sms(
    state: AppState,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, Rejection> {
    let params = verified_form(&state, &uri, &headers, body).await?;
    let sms = parse_inbound(&params, OffsetDateTime::now_utc())?;
    for flag in &sms.flags {
        metrics::counter!("nwd_gateway_inbound_oddities_total", "kind" => flag.as_str())
            .increment(1);
    }
    if !sms.flags.is_empty() {
        let kinds: Vec<&str> = sms.flags.iter().map(|f| f.as_str()).collect();
        tracing::info!(flags = ?kinds, "inbound message taken with oddities");
    }
    let msg_id = wire::msg_id::inbound_sms(&sms.message_sid);
    publish(&state, subjects::inbound_sms(), &msg_id, sms).await
}

async fn handle_status(
    state: AppState,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Accepted, Rejection> {
    let params = verified_form(&state, &uri, &headers, body).await?;
    let outbound_id = parse_outbound_query(&uri)?;
    let status = parse_status(&params, outbound_id, OffsetDateTime::now_utc())?;
    let msg_id = wire::msg_id::sms_status(&status.message_sid, status.status);
    publish(&state, subjects::inbound_sms_status(), &msg_id, status).await
}

/// Size, content type and signature checks; returns the decoded form.
async fn verified_form(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, Rejection> {
    let limit = state.inner.max_body_bytes;
    let bytes = read_limited(headers, body, limit).await?;
    let params = form::decode(&bytes);
    // Before any check, so that a refusal is logged with the MessageSid the
    // request claimed (an id, never personal data).
    if let Some(sid) = form::get(&params, "MessageSid").and_then(|s| MessageSid::parse(s).ok()) {
        tracing::Span::current().record("message_sid", sid.as_str());
    }
    if !is_form(headers) {
        return Err(Rejection::ContentType);
    }
    let url = signed_url(&state.inner.public_url, uri);
    let given = headers
        .get(nwd_twilio::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let fragment = state.inner.url_fragment.as_deref();
    if signature::validate_with_fragment(
        state.inner.auth_token.expose(),
        &url,
        fragment,
        &params,
        given,
    ) {
        Ok(params)
    } else {
        Err(Rejection::BadSignature)
    }
}

async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Rejection::TooLarge(limit)),
        Err(_) => Err(Rejection::Unreadable),
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads a signed inbound message form. Only a missing or malformed
/// MessageSid refuses it (without one it cannot be stored exactly once);
/// every other oddity is taken and flagged.
fn parse_inbound(
    params: &[(String, String)],
    received_at: OffsetDateTime,
) -> Result<InboundSms, Rejection> {
    let message_sid = parse_sid(params)?;
    let mut flags = Vec::new();
    let account_sid = match form::get(params, "AccountSid").filter(|s| !s.is_empty()) {
        Some(v) => v.to_owned(),
        None => {
            flags.push(InboundFlag::MissingAccountSid);
            String::new()
        }
    };
    let from = match form::get(params, "From").filter(|s| !s.is_empty()) {
        None => {
            flags.push(InboundFlag::MissingSender);
            Address::parse("")
        }
        Some(v) => {
            let from = Address::parse(v);
            match from.kind() {
                AddressKind::Phone => {}
                AddressKind::Channel => flags.push(InboundFlag::ChannelSender),
                AddressKind::Alphanumeric => flags.push(InboundFlag::AlphanumericSender),
                AddressKind::ShortCode => flags.push(InboundFlag::ShortCodeSender),
                AddressKind::Unrecognised => flags.push(InboundFlag::UnrecognisedSender),
            }
            from
        }
    };
    let to = match form::get(params, "To").filter(|s| !s.is_empty()) {
        None => {
            flags.push(InboundFlag::MissingLine);
            Address::parse("")
        }
        Some(v) => {
            let to = Address::parse(v);
            if !matches!(to.kind(), AddressKind::Phone | AddressKind::Channel) {
                flags.push(InboundFlag::UnrecognisedLine);
            }
            to
        }
    };
    let body = match form::get(params, "Body") {
        Some(v) => v.to_owned(),
        None => {
            flags.push(InboundFlag::MissingBody);
            String::new()
        }
    };
    if body.chars().count() > MAX_SMS_BODY_CHARS {
        flags.push(InboundFlag::LongBody);
    }
    let num_media = match form::get(params, "NumMedia").map(str::trim) {
        None | Some("") => 0,
        Some(v) => v.parse::<u32>().unwrap_or_else(|_| {
            flags.push(InboundFlag::InvalidNumMedia);
            0
        }),
    };
    if num_media > 0 {
        flags.push(InboundFlag::Media);
    }
    Ok(InboundSms {
        message_sid,
        account_sid,
        from,
        to,
        body,
        num_media,
        received_at,
        flags,
    })
}

fn parse_sid(params: &[(String, String)]) -> Result<MessageSid, Rejection> {
    let raw = form::get(params, "MessageSid")
        .ok_or(Rejection::Invalid("the MessageSid parameter is missing"))?;
    MessageSid::parse(raw)
        .map_err(|_| Rejection::Invalid("the MessageSid parameter is not a valid SID"))
}

/// The `outbound` query parameter: our id of the message, put in the
/// StatusCallback URL by the notifier.
fn parse_outbound_query(uri: &Uri) -> Result<Option<OutboundId>, Rejection> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "outbound") {
        None => Ok(None),
        Some((_, v)) => v
            .parse::<OutboundId>()
            .map(Some)
            .map_err(|_| Rejection::Invalid("the outbound query parameter is not a valid id")),
    }
}

fn parse_status(
    params: &[(String, String)],
    outbound_id: Option<OutboundId>,
    received_at: OffsetDateTime,
) -> Result<SmsStatus, Rejection> {
    let message_sid = parse_sid(params)?;
    let status = match form::get(params, "MessageStatus") {
        None => return Err(Rejection::Invalid("the MessageStatus parameter is missing")),
        Some(v) => DeliveryStatus::parse(v).ok_or(Rejection::Invalid(
            "the MessageStatus parameter is not a known status",
        ))?,
    };
    let error_code = match form::get(params, "ErrorCode") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| Rejection::Invalid("the ErrorCode parameter is not a number"))?,
        ),
    };
    Ok(SmsStatus {
        message_sid,
        status,
        error_code,
        outbound_id,
        received_at,
    })
}

/// Publishes and waits for the ack, bounded in time, or spools; only a
/// full or failing spool is a 503.
async fn publish<T: Event>(
    state: &AppState,
    subject: String,
    msg_id: &str,
    event: T,
) -> Result<Accepted, Rejection> {
    let payload = Envelope::new(event).to_bytes().into();
    match state.inner.hub.hand_off(subject, msg_id, payload).await {
        Ok(handoff) => Ok(handoff.into()),
        Err(refusal) => {
            tracing::warn!(reason = %refusal, "webhook neither stored nor spooled");
            Err(Rejection::Unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn signed_url_joins_public_url_path_and_query() {
        let uri: Uri = "/v1/sms/twilio?a=1&b=%20".parse().unwrap();
        assert_eq!(
            signed_url("https://gw.example.org/", &uri),
            "https://gw.example.org/v1/sms/twilio?a=1&b=%20"
        );
        let uri: Uri = "/v1/sms/twilio".parse().unwrap();
        assert_eq!(
            signed_url("https://gw.example.org", &uri),
            "https://gw.example.org/v1/sms/twilio"
        );
    }

    #[test]
    fn content_type_accepts_parameters_and_case() {
        let mut h = HeaderMap::new();
        assert!(!is_form(&h));
        h.insert(
            header::CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&h));
    }

    #[test]
    fn inbound_is_taken_with_flags_and_only_a_bad_sid_refuses() {
        let now = OffsetDateTime::now_utc();
        let good = p(&[
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("AccountSid", "AC1"),
            ("From", "+15005550142"),
            ("To", "+15005550100"),
            ("Body", ""),
        ]);
        let sms = parse_inbound(&good, now).unwrap();
        assert_eq!(sms.num_media, 0);
        assert_eq!(sms.body, "");
        assert!(sms.flags.is_empty());
        let with = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
            let mut p: Vec<(String, String)> =
                good.iter().filter(|(k, _)| k != name).cloned().collect();
            if let Some(v) = value {
                p.push((name.to_owned(), v.to_owned()));
            }
            p
        };
        let cases = [
            (with("AccountSid", None), InboundFlag::MissingAccountSid),
            (with("From", None), InboundFlag::MissingSender),
            (with("From", Some("")), InboundFlag::MissingSender),
            (
                with("From", Some("whatsapp:+15005550142")),
                InboundFlag::ChannelSender,
            ),
            (
                with("From", Some("NWDALERT")),
                InboundFlag::AlphanumericSender,
            ),
            (with("From", Some("55555")), InboundFlag::ShortCodeSender),
            (
                with("From", Some("4155550123")),
                InboundFlag::UnrecognisedSender,
            ),
            (with("To", None), InboundFlag::MissingLine),
            (with("To", Some("line")), InboundFlag::UnrecognisedLine),
            (with("Body", None), InboundFlag::MissingBody),
            (with("Body", Some(&"ñ".repeat(1601))), InboundFlag::LongBody),
            (with("NumMedia", Some("two")), InboundFlag::InvalidNumMedia),
            (with("NumMedia", Some("2")), InboundFlag::Media),
        ];
        for (params, flag) in cases {
            let sms = parse_inbound(&params, now).unwrap();
            assert_eq!(sms.flags, [flag]);
        }
        assert!(
            parse_inbound(&with("Body", Some(&"é".repeat(1600))), now)
                .unwrap()
                .flags
                .is_empty(),
            "1600 chars of 2 bytes each is not long"
        );
        for sid in [None, Some("SM123")] {
            match parse_inbound(&with("MessageSid", sid), now) {
                Err(Rejection::Invalid(detail)) => assert!(detail.contains("MessageSid")),
                other => panic!("{sid:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn status_validation() {
        let now = OffsetDateTime::now_utc();
        let base = p(&[
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]);
        let s = parse_status(&base, None, now).unwrap();
        assert_eq!(s.status, DeliveryStatus::Undelivered);
        assert_eq!(s.error_code, Some(30003));
        let mut bad = base.clone();
        bad[1].1 = "bogus".into();
        assert!(parse_status(&bad, None, now).is_err());
        let mut bad = base.clone();
        bad[2].1 = "x".into();
        assert!(parse_status(&bad, None, now).is_err());
        let uri: Uri = "/v1/sms/twilio/status?outbound=nope".parse().unwrap();
        assert!(parse_outbound_query(&uri).is_err());
        let id = OutboundId::new();
        let uri: Uri = format!("/v1/sms/twilio/status?outbound={id}")
            .parse()
            .unwrap();
        assert_eq!(parse_outbound_query(&uri).unwrap(), Some(id));
    }
}
