//! Partner referrals (issue 14, ADR 0013): `POST /v1/referrals` takes a
//! FHIR R4 ServiceRequest (or a Bundle holding one) signed with Standard
//! Webhooks; `GET /v1/referrals/{id}` and `GET /v1/referrals?_lastUpdated=gt…`
//! give the partner its referrals' status as FHIR Tasks.
//!
//! A POST is checked in a fixed order: size (413, from `Content-Length`
//! before anything is read, then while reading), content type (415),
//! signature and timestamp (401), FHIR (400 not JSON, 422 not a referral the
//! line can act on). The partner is the one whose secret verifies the
//! signature: the URL is the same for every partner. Then the referral is
//! claimed in the `referrals` bucket (create: only if absent), published to
//! INBOUND with `Nats-Msg-Id`, and answered 202 only after JetStream's ack.
//! A replay (same partner and `webhook-id`) with the same body republishes
//! (deduplicated by the stream) and gets the same 202; with another body it
//! is 409. NATS not answering is 503 with `Retry-After`: unlike Twilio's
//! webhooks there is no spool here, partners' senders retry a 5xx.
//!
//! Errors are problem+json, or a FHIR OperationOutcome when the request is
//! `application/fhir+json` or asks for it in `Accept`. Neither ever holds a
//! value from the body: only element paths and fixed words.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use nwd_fhir::{Check, read_referral};
use nwd_proto::directory::{Directory, Partner};
use nwd_proto::referral::{
    InboundReferral, MAX_REFERRAL_BYTES, ReferralRecord, ReferralSettings, TaskStatus,
};
use nwd_proto::streams::buckets;
use nwd_proto::{Envelope, ReferralId, subjects, wire};
use nwd_runtime::bus;
use nwd_runtime::directory::Live;
use nwd_runtime::problem::Problem;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::partner_signature::{SignatureError, Signed};

/// Path of the referral webhook and of the partner's referral list.
pub const REFERRALS_PATH: &str = "/v1/referrals";
/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The clock the signature tolerance and the due times are computed from.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// What the referral routes need.
#[derive(Clone)]
pub struct Referrals {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    bucket: OnceCell<kv::Store>,
    directory: Live,
    clock: Clock,
    publish_timeout: Duration,
}

impl std::fmt::Debug for Referrals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Referrals").finish_non_exhaustive()
    }
}

impl Referrals {
    /// `publish_timeout` bounds the claim and the publish together: past it
    /// the partner gets a 503 and retries.
    pub fn new(
        js: jetstream::Context,
        directory: Live,
        clock: Clock,
        publish_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                js,
                bucket: OnceCell::new(),
                directory,
                clock,
                publish_timeout,
            }),
        }
    }

    /// The `referrals` bucket, opened on first use (the operator may set the
    /// bus up after the gateway started).
    async fn bucket(&self) -> Result<&kv::Store, Refusal> {
        self.inner
            .bucket
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    self.inner.publish_timeout,
                    bus::bucket(&self.inner.js, buckets::REFERRALS),
                )
                .await
                .map_err(|_| Refusal::Unavailable)?
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot open the referrals bucket");
                    Refusal::Unavailable
                })
            })
            .await
    }

    fn now(&self) -> OffsetDateTime {
        (self.inner.clock)()
    }
}

/// The gateway's own check of a directory version: every referral secret
/// decodes (`whsec_` + base64) and belongs to one partner only, since the
/// partner of a request is the one whose secret verifies it.
pub fn check_directory(directory: &Directory) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for partner in &directory.partners {
        let Some(settings) = &partner.referrals else {
            continue;
        };
        if settings.secrets.is_empty() {
            return Err(format!(
                "partner {} takes referrals but has no secret",
                partner.id
            ));
        }
        for secret in &settings.secrets {
            if standardwebhooks::Webhook::new(secret).is_err() {
                return Err(format!(
                    "a referral secret of partner {} is not whsec_ + base64",
                    partner.id
                ));
            }
            if seen.contains(&secret.as_str()) {
                return Err(format!(
                    "partner {} shares a referral secret with another partner",
                    partner.id
                ));
            }
            seen.push(secret);
        }
    }
    Ok(())
}

/// The referral routes, merged into the gateway's router.
pub fn routes(state: Referrals) -> Router {
    Router::new()
        .route(REFERRALS_PATH, post(post_referral).get(list_referrals))
        .route(&format!("{REFERRALS_PATH}/{{id}}"), get(get_referral))
        .with_state(state)
}

// ------------------------------------------------------------------ errors

/// Why a referral request was refused. One place maps each to its status,
/// its answer (problem+json or OperationOutcome) and its metric reason.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("body over the limit")]
    TooLarge,
    #[error("body could not be read")]
    Unreadable,
    #[error("unsupported media type")]
    MediaType,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("{0}")]
    Fhir(nwd_fhir::Rejection),
    #[error("the webhook-id was used for another body")]
    Conflict,
    #[error("no such referral")]
    NotFound,
    #[error("{0}")]
    BadQuery(&'static str),
    #[error("bus unavailable")]
    Unavailable,
}

impl Refusal {
    /// The bounded `reason` label of `nwd_referrals_rejected_total`.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Unreadable => "unreadable",
            Refusal::MediaType => "media_type",
            Refusal::Signature(SignatureError::Stale) => "stale",
            Refusal::Signature(_) => "signature",
            Refusal::Fhir(r) if r.too_large => "too_large",
            Refusal::Fhir(r) => match r.check {
                Check::Gateway if unreachable(r) => "unreachable",
                Check::Gateway => "not_actionable",
                other => other.as_str(),
            },
            Refusal::Conflict => "conflict",
            Refusal::NotFound => "not_found",
            Refusal::BadQuery(_) => "bad_query",
            Refusal::Unavailable => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Fhir(r) if r.too_large => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unreadable | Refusal::BadQuery(_) => StatusCode::BAD_REQUEST,
            Refusal::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Signature(_) => StatusCode::UNAUTHORIZED,
            Refusal::Fhir(r) if r.check == Check::Json => StatusCode::BAD_REQUEST,
            Refusal::Fhir(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `(problem type slug, title, detail)`. The detail names the field at
    /// fault and never holds a value from the request.
    fn words(&self) -> (&'static str, &'static str, String) {
        match self {
            Refusal::TooLarge => (
                "payload-too-large",
                "The request body is too large",
                format!("the limit is {MAX_REFERRAL_BYTES} bytes"),
            ),
            Refusal::Fhir(r) if r.too_large => (
                "payload-too-large",
                "The request body is too large",
                format!("the limit is {MAX_REFERRAL_BYTES} bytes"),
            ),
            Refusal::Unreadable => (
                "bad-request",
                "The request is malformed",
                "the request body could not be read".to_owned(),
            ),
            Refusal::MediaType => (
                "unsupported-media-type",
                "The content type is not FHIR JSON",
                "Content-Type must be application/fhir+json or application/json (charset utf-8)"
                    .to_owned(),
            ),
            Refusal::Signature(e) => (
                "bad-signature",
                "The signature is not accepted",
                e.to_string(),
            ),
            Refusal::Fhir(r) => {
                let (kind, title) = match r.check {
                    Check::Json => ("invalid-json", "The body is not a JSON object"),
                    Check::Gateway => (
                        "not-a-referral",
                        "Valid FHIR, but not a referral the line can act on",
                    ),
                    _ => ("invalid-fhir", "The body is not valid FHIR R4"),
                };
                (kind, title, fhir_detail(r))
            }
            Refusal::Conflict => (
                "webhook-id-conflict",
                "This webhook-id was already used for another body",
                "a webhook-id is an idempotency key: send a new referral with a new webhook-id"
                    .to_owned(),
            ),
            Refusal::NotFound => (
                "not-found",
                "No such referral",
                "no referral of yours has this id".to_owned(),
            ),
            Refusal::BadQuery(detail) => (
                "bad-request",
                "The request is malformed",
                (*detail).to_owned(),
            ),
            Refusal::Unavailable => (
                "unavailable",
                "Temporarily unable to store the referral; retry",
                "retry after the time in Retry-After".to_owned(),
            ),
        }
    }

    /// The OperationOutcome `issue.code` (FHIR `issue-type`).
    fn issue_code(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "too-long",
            Refusal::Fhir(r) if r.too_large => "too-long",
            Refusal::Unreadable | Refusal::BadQuery(_) => "invalid",
            Refusal::MediaType => "not-supported",
            Refusal::Signature(_) => "security",
            Refusal::Fhir(r) => match r.check {
                Check::Json | Check::Structure => "structure",
                Check::Binding => "code-invalid",
                Check::Invariant => "invariant",
                Check::Reference => "not-found",
                Check::Gateway => "business-rule",
            },
            Refusal::Conflict => "conflict",
            Refusal::NotFound => "not-found",
            Refusal::Unavailable => "transient",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Refusal::Fhir(r) => r.path.as_deref(),
            Refusal::Signature(_) => Some("webhook-signature"),
            Refusal::BadQuery(_) => Some("_lastUpdated"),
            _ => None,
        }
    }

    fn respond(&self, fhir: bool) -> Response {
        let status = self.status();
        let (kind, title, detail) = self.words();
        let retry = matches!(self, Refusal::Unavailable).then_some(1);
        if !fhir {
            let mut problem = Problem::new(status, kind, title).detail(detail);
            if let Some(seconds) = retry {
                problem = problem.retry_after(seconds);
            }
            return problem.into_response();
        }
        let mut issue = serde_json::json!({
            "severity": "error",
            "code": self.issue_code(),
            "details": {"text": title},
            "diagnostics": detail,
        });
        if let Some(field) = self.field() {
            issue["expression"] = serde_json::json!([field]);
        }
        let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [issue]});
        let mut response = fhir_response(status, &outcome);
        if let Some(seconds) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn unreachable(r: &nwd_fhir::Rejection) -> bool {
    r.path
        .as_deref()
        .is_some_and(|p| p.contains("telecom") || p.ends_with("subject.reference"))
}

fn fhir_detail(r: &nwd_fhir::Rejection) -> String {
    match &r.path {
        Some(path) => format!("{} check failed at {path}: {}", r.check, r.message),
        None => format!("{} check failed: {}", r.check, r.message),
    }
}

fn fhir_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The partner sends FHIR, or asks for it.
fn wants_fhir(headers: &HeaderMap) -> bool {
    let names_fhir = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(FHIR_JSON))
    };
    names_fhir(header::CONTENT_TYPE) || names_fhir(header::ACCEPT)
}

/// `application/fhir+json` or `application/json`, with no charset or UTF-8.
fn is_fhir_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    if mime != FHIR_JSON && mime != "application/json" {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        Some(_) => true,
        None => param.trim().is_empty(),
    })
}

// ----------------------------------------------------------------- metrics

const UNKNOWN_PARTNER: &str = "unknown";

fn count_rejected(partner: &str, refusal: &Refusal) {
    metrics::counter!(
        "nwd_referrals_rejected_total",
        "partner" => partner.to_owned(),
        "reason" => refusal.reason(),
    )
    .increment(1);
}

// ------------------------------------------------------------------- POST

/// What a POST came to.
struct Accepted {
    record: ReferralRecord,
    replay: bool,
}

async fn post_referral(State(state): State<Referrals>, headers: HeaderMap, body: Body) -> Response {
    let fhir = wants_fhir(&headers);
    let mut partner_label = UNKNOWN_PARTNER.to_owned();
    match accept(&state, &headers, body, &mut partner_label).await {
        Ok(Accepted { record, replay }) => {
            if !replay {
                metrics::counter!("nwd_referrals_accepted_total", "partner" => partner_label)
                    .increment(1);
            }
            tracing::info!(referral = %record.id, partner = %record.partner, replay, "referral accepted");
            let directory = state.inner.directory.get();
            task_response(StatusCode::ACCEPTED, &record, &directory)
        }
        Err(refusal) => {
            count_rejected(&partner_label, &refusal);
            tracing::warn!(partner = %partner_label, reason = refusal.reason(), "referral refused");
            refusal.respond(fhir)
        }
    }
}

fn task_response(status: StatusCode, record: &ReferralRecord, directory: &Directory) -> Response {
    let partner_name = directory
        .partners
        .iter()
        .find(|p| p.id == record.partner)
        .map_or(record.partner.as_str(), |p| p.name.as_str());
    let task = record.task(&directory.line.name, partner_name);
    let mut response = fhir_response(status, &task);
    if let Ok(location) = HeaderValue::from_str(&format!("{REFERRALS_PATH}/{}", record.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

async fn accept(
    state: &Referrals,
    headers: &HeaderMap,
    body: Body,
    partner_label: &mut String,
) -> Result<Accepted, Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REFERRAL_BYTES as u64) {
        return Err(Refusal::TooLarge);
    }
    if !is_fhir_json(headers) {
        return Err(Refusal::MediaType);
    }
    let body = read_limited(body).await?;
    let received_at = state.now();
    let directory = state.inner.directory.get();
    let (partner, settings, webhook_id) = authenticate(&directory, headers, &body, received_at)?;
    *partner_label = partner.id.to_string();
    metrics::counter!("nwd_referrals_received_total", "partner" => partner_label.clone())
        .increment(1);
    let referral = read_referral(&body).map_err(Refusal::Fhir)?;

    let id = wire::referral_id(&partner.id, &webhook_id);
    let (offer_at, due_at) =
        settings
            .due
            .schedule(referral.priority, referral.occurrence, received_at);
    let record = ReferralRecord {
        id,
        partner: partner.id.clone(),
        webhook_id,
        body_digest: digest(&body),
        focus: referral.focus.clone(),
        placer_identifier: referral.identifier.clone(),
        priority: referral.priority,
        offer_at,
        due_at,
        status: TaskStatus::Requested,
        outcome: None,
        status_reason: None,
        contact_id: None,
        version: 1,
        received_at,
        last_modified: received_at,
    };
    let timeout = state.inner.publish_timeout;
    let (record, replay) = tokio::time::timeout(timeout, claim(state, record))
        .await
        .map_err(|_| Refusal::Unavailable)??;
    // A replay of a referral the line has already moved on (intake opened
    // its outreach, the Task changed) has nothing left to publish.
    if replay && (record.version > 1 || record.status != TaskStatus::Requested) {
        return Ok(Accepted { record, replay });
    }
    // Otherwise a replay publishes the original's event again (same times,
    // same Nats-Msg-Id): the stream drops it inside its duplicate window,
    // and intake's own dedupe after it. This is also how a claim whose
    // publish failed gets published on the partner's retry.
    let event = InboundReferral {
        referral_id: record.id,
        partner: record.partner.clone(),
        priority: record.priority,
        occurrence: referral.occurrence,
        offer_at: record.offer_at,
        due_at: record.due_at,
        patient: referral.patient,
        reason: referral.reason,
        received_at: record.received_at,
    };
    let msg_id = wire::msg_id::inbound_referral(&record.id);
    let published = tokio::time::timeout(
        timeout,
        bus::publish(
            &state.inner.js,
            subjects::inbound_referral(),
            &msg_id,
            &Envelope::new(event),
        ),
    )
    .await;
    match published {
        Ok(Ok(_)) => Ok(Accepted { record, replay }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, referral = %record.id, "referral claimed but not published; the partner retries");
            Err(Refusal::Unavailable)
        }
        Err(_) => Err(Refusal::Unavailable),
    }
}

async fn read_limited(body: Body) -> Result<Bytes, Refusal> {
    match Limited::new(body, MAX_REFERRAL_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Refusal::TooLarge),
        Err(_) => Err(Refusal::Unreadable),
    }
}

fn digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The partner whose secret signed the request (the same URL serves every
/// partner), with its settings and the request's `webhook-id`.
fn authenticate<'d>(
    directory: &'d Directory,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(&'d Partner, &'d ReferralSettings, String), Refusal> {
    let signed = Signed::read(headers, now.unix_timestamp()).map_err(Refusal::Signature)?;
    directory
        .partners
        .iter()
        .find_map(|partner| {
            let settings = partner.referrals.as_ref()?;
            signed
                .matches_any(&settings.secrets, body)
                .then_some((partner, settings))
        })
        .map(|(partner, settings)| (partner, settings, signed.id.to_owned()))
        .ok_or(Refusal::Signature(SignatureError::NoMatch))
}

/// Creates the record if absent. Present with the same body: a replay (the
/// stored record is returned); with another body: 409.
async fn claim(
    state: &Referrals,
    record: ReferralRecord,
) -> Result<(ReferralRecord, bool), Refusal> {
    let bucket = state.bucket().await?;
    let key = wire::key::referral(&record.id);
    let json = serde_json::to_vec(&record).map_err(|_| Refusal::Unavailable)?;
    match bucket.create(&key, json.into()).await {
        Ok(_) => Ok((record, false)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let stored = bucket
                .get(&key)
                .await
                .map_err(|_| Refusal::Unavailable)?
                .ok_or(Refusal::Unavailable)?;
            let stored: ReferralRecord =
                serde_json::from_slice(&stored).map_err(|_| Refusal::Unavailable)?;
            if stored.body_digest == record.body_digest {
                Ok((stored, true))
            } else {
                Err(Refusal::Conflict)
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim the referral");
            Err(Refusal::Unavailable)
        }
    }
}

// -------------------------------------------------------------------- GET

/// A GET is signed like a POST, over an empty body; its `webhook-id` is a
/// fresh nonce of the partner's.
fn authenticate_read<'d>(
    directory: &'d Directory,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Result<&'d Partner, Refusal> {
    authenticate(directory, headers, b"", now).map(|(partner, _, _)| partner)
}

async fn get_referral(
    State(state): State<Referrals>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let directory = state.inner.directory.get();
    let found = async {
        let partner = authenticate_read(&directory, &headers, state.now())?;
        let id: ReferralId = id.parse().map_err(|_| Refusal::NotFound)?;
        let bucket = state.bucket().await?;
        let stored = bucket
            .get(wire::key::referral(&id))
            .await
            .map_err(|_| Refusal::Unavailable)?
            .ok_or(Refusal::NotFound)?;
        let record: ReferralRecord =
            serde_json::from_slice(&stored).map_err(|_| Refusal::Unavailable)?;
        // Another partner's referral is as unknown as one that never was.
        if record.partner != partner.id {
            return Err(Refusal::NotFound);
        }
        Ok(record)
    }
    .await;
    match found {
        Ok(record) => task_response(StatusCode::OK, &record, &directory),
        Err(refusal) => refusal.respond(true),
    }
}

/// `_lastUpdated=gt<instant>`: the partner's Tasks changed after the instant.
fn since(query: Option<&str>) -> Result<Option<OffsetDateTime>, Refusal> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut since = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name != "_lastUpdated" {
            continue;
        }
        // A `+` offset left unencoded arrives as a space.
        let value = value.replace(' ', "+");
        let instant = value.strip_prefix("gt").ok_or(Refusal::BadQuery(
            "_lastUpdated takes gt followed by an instant (2026-11-16T13:02:40Z)",
        ))?;
        let instant =
            OffsetDateTime::parse(instant, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    Refusal::BadQuery(
                        "_lastUpdated takes gt followed by an instant with a timezone (2026-11-16T13:02:40Z)",
                    )
                })?;
        since = Some(instant);
    }
    Ok(since)
}

async fn list_referrals(
    State(state): State<Referrals>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let directory = state.inner.directory.get();
    let listed = async {
        let partner = authenticate_read(&directory, &headers, state.now())?;
        let since = since(query.as_deref())?;
        let bucket = state.bucket().await?;
        let records = scan(bucket, partner, since).await?;
        Ok::<_, Refusal>((partner, records))
    }
    .await;
    let (partner, mut records) = match listed {
        Ok(found) => found,
        Err(refusal) => return refusal.respond(true),
    };
    records.sort_by_key(|r| r.last_modified);
    let entries: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "fullUrl": format!("{REFERRALS_PATH}/{}", r.id),
                "resource": r.task(&directory.line.name, &partner.name),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": state.now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "total": entries.len(),
    });
    if !entries.is_empty() {
        bundle["entry"] = serde_json::Value::Array(entries);
    }
    fhir_response(StatusCode::OK, &bundle)
}

/// Every record of `partner` changed after `since`: a scan of the bucket
/// (ADR 0013 notes where this stops scaling).
async fn scan(
    bucket: &kv::Store,
    partner: &Partner,
    since: Option<OffsetDateTime>,
) -> Result<Vec<ReferralRecord>, Refusal> {
    let mut keys = bucket.keys().await.map_err(|_| Refusal::Unavailable)?;
    let mut records = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|_| Refusal::Unavailable)?;
        let Some(value) = bucket.get(&key).await.map_err(|_| Refusal::Unavailable)? else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<ReferralRecord>(&value) else {
            continue;
        };
        if record.partner == partner.id && since.is_none_or(|t| record.last_modified > t) {
            records.push(record);
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, value.parse().unwrap());
        h
    }

    #[test]
    fn content_types_fhir_or_plain_json_with_utf8_only() {
        assert!(is_fhir_json(&with_type("application/fhir+json")));
        assert!(is_fhir_json(&with_type("Application/JSON; charset=UTF-8")));
        assert!(is_fhir_json(&with_type(
            "application/fhir+json;charset=\"utf-8\""
        )));
        assert!(is_fhir_json(&with_type(
            "application/fhir+json; fhirVersion=4.0"
        )));
        assert!(!is_fhir_json(&with_type(
            "application/json; charset=latin1"
        )));
        assert!(!is_fhir_json(&with_type("text/plain")));
        assert!(!is_fhir_json(&with_type("application/xml")));
        assert!(!is_fhir_json(&HeaderMap::new()));
        assert!(wants_fhir(&with_type("application/fhir+json")));
        assert!(!wants_fhir(&with_type("application/json")));
    }

    #[test]
    fn a_directory_whose_partners_share_a_secret_is_refused() {
        let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
        check_directory(&dir).unwrap();
        let hospital = dir
            .partners
            .iter()
            .find_map(|p| p.referrals.clone())
            .unwrap();
        let clinic = dir
            .partners
            .iter_mut()
            .find(|p| p.referrals.is_none())
            .unwrap();
        clinic.referrals = Some(ReferralSettings {
            secrets: vec![hospital.secrets[1].clone()],
            ..hospital.clone()
        });
        assert!(check_directory(&dir).unwrap_err().contains("shares"));
        for (secrets, words) in [
            (vec!["whsec_@@not base64@@".to_owned()], "not whsec_"),
            (vec![], "no secret"),
        ] {
            let clinic = dir
                .partners
                .iter_mut()
                .find(|p| p.id.as_str() == "eastside-clinic")
                .unwrap();
            clinic.referrals = Some(ReferralSettings {
                secrets,
                ..hospital.clone()
            });
            assert!(check_directory(&dir).unwrap_err().contains(words));
        }
    }

    #[test]
    fn last_updated_takes_gt_and_an_instant() {
        assert_eq!(since(None).unwrap(), None);
        assert_eq!(since(Some("_count=5")).unwrap(), None);
        assert_eq!(
            since(Some("_lastUpdated=gt2026-11-16T13:02:40Z")).unwrap(),
            Some(time::macros::datetime!(2026-11-16 13:02:40 UTC))
        );
        assert_eq!(
            since(Some("_lastUpdated=gt2026-11-16T13:02:40+01:00")).unwrap(),
            Some(time::macros::datetime!(2026-11-16 13:02:40 +01:00))
        );
        for bad in [
            "_lastUpdated=2026-11-16T13:02:40Z",
            "_lastUpdated=lt2026-11-16T13:02:40Z",
            "_lastUpdated=gt2026-11-16",
            "_lastUpdated=gtyesterday",
        ] {
            assert!(
                matches!(since(Some(bad)), Err(Refusal::BadQuery(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_refusal_has_a_bounded_reason_and_a_4xx_or_503() {
        let fhir = |check, path: Option<&str>| {
            Refusal::Fhir(nwd_fhir::Rejection {
                check,
                path: path.map(str::to_owned),
                message: "m".into(),
                too_large: false,
            })
        };
        let cases = [
            (Refusal::TooLarge, 413, "too_large"),
            (Refusal::MediaType, 415, "media_type"),
            (Refusal::Signature(SignatureError::Stale), 401, "stale"),
            (
                Refusal::Signature(SignatureError::NoMatch),
                401,
                "signature",
            ),
            (fhir(Check::Json, None), 400, "json"),
            (fhir(Check::Structure, Some("status")), 422, "structure"),
            (fhir(Check::Binding, Some("priority")), 422, "binding"),
            (
                fhir(Check::Invariant, Some("contained[1]")),
                422,
                "invariant",
            ),
            (
                fhir(
                    Check::Reference,
                    Some("entry[1].resource.subject.reference"),
                ),
                422,
                "reference",
            ),
            (
                fhir(Check::Gateway, Some("contained[0].telecom")),
                422,
                "unreachable",
            ),
            (
                fhir(Check::Gateway, Some("contained[0].telecom[1].value")),
                422,
                "unreachable",
            ),
            (
                fhir(Check::Gateway, Some("subject.reference")),
                422,
                "unreachable",
            ),
            (fhir(Check::Gateway, Some("status")), 422, "not_actionable"),
            (Refusal::Conflict, 409, "conflict"),
            (Refusal::NotFound, 404, "not_found"),
            (Refusal::Unavailable, 503, "unavailable"),
        ];
        for (refusal, status, reason) in cases {
            assert_eq!(refusal.status().as_u16(), status, "{refusal:?}");
            assert_eq!(refusal.reason(), reason, "{refusal:?}");
        }
    }
}
