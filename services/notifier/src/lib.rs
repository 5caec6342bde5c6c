//! Notifier: sends outbound SMS through the Twilio REST API, exactly once per
//! outbound id, and reports what became of them.
//!
//! Each `OutboundSms` has a send record in the `sends` bucket (key = outbound
//! id), changed only by compare-and-swap: `Sending{attempts}` before every
//! HTTP call, then `Sent{sid, status}` or `Failed{error_code, permanent}`. A
//! redelivered message whose record is final is never sent again. Twilio's
//! permanent errors (invalid number, STOP, …) are final and never retried;
//! everything else transient is retried with a growing delay, never dropped.
//!
//! Status callbacks (published by the gateway as `SmsStatus`) are turned into
//! `OutboundStatus` events for the contact of the outbound message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nwd_proto::envelope::DecodeError;
use nwd_proto::events::{DeliveryStatus, OutboundSms, OutboundStatus, SmsStatus};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{ContactId, Envelope, OutboundId, subjects};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::kv::{self, Cas, KvError};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::{Secret, ServiceConfig};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Service name for logs and metric labels.
pub const NAME: &str = "notifier";

/// The longest delay between two send attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Twilio error codes that are final: retrying can never succeed, and for
/// 21610 (the recipient replied STOP) texting again would be wrong.
/// 21211 invalid `To`, 21408 region not enabled, 21610 unsubscribed,
/// 21612 unreachable `To`/`From` pair, 21614 not a mobile number.
pub const PERMANENT_ERROR_CODES: [u32; 5] = [21211, 21408, 21610, 21612, 21614];

/// Header carrying our outbound id on every send request.
///
/// Why: the send record is written *after* the HTTP call returns. If the
/// notifier crashes (or the KV write fails, or the response times out) after
/// Twilio accepted the message but before `Sent` is recorded, the record
/// still says `Sending` and the message is redelivered and POSTed again. The
/// retry carries the same token (the outbound id never changes), so the
/// provider can recognise it as the same request and not send a second SMS.
/// Without provider-side deduplication this window would allow at most one
/// duplicate per crash; `Sending{attempts > 1}` in the record marks such
/// sends for audit.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";

/// Notifier settings.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-notifier", about = "Sends outbound SMS through Twilio")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_NOTIFIER_METRICS_ADDR",
        default_value = "127.0.0.1:9104"
    )]
    pub metrics_addr: SocketAddr,
    /// Base URL of the Twilio REST API.
    #[arg(
        long,
        env = "NWD_TWILIO_API_BASE",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_api_base: String,
    /// Twilio Account SID (basic-auth user and part of the API path).
    #[arg(long, env = "NWD_TWILIO_ACCOUNT_SID")]
    pub account_sid: String,
    /// Twilio auth token (basic-auth password).
    #[arg(long, env = "NWD_TWILIO_AUTH_TOKEN")]
    pub auth_token: Secret,
    /// Public base URL of the gateway, for the StatusCallback of each message.
    #[arg(
        long,
        env = "NWD_GATEWAY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub status_callback_base: String,
    /// Timeout of one Twilio request (milliseconds).
    #[arg(long, env = "NWD_NOTIFIER_HTTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_timeout_ms: u64,
    /// First retry delay (milliseconds); doubles per delivery up to 30 s.
    #[arg(long, env = "NWD_NOTIFIER_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

/// Why the notifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Where a send is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SendState {
    /// An HTTP call is (or was) under way; `attempts` counts them.
    Sending { attempts: u32 },
    /// Twilio accepted the message.
    Sent { sid: String, status: DeliveryStatus },
    /// Twilio refused it; a permanent failure is final.
    Failed {
        error_code: Option<u32>,
        permanent: bool,
    },
}

/// The send record of one outbound id (bucket `sends`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord {
    pub contact_id: ContactId,
    pub state: SendState,
    /// The latest status the provider reported (send response or callback).
    #[serde(default)]
    pub last_status: Option<DeliveryStatus>,
}

impl SendRecord {
    /// Sent, or permanently failed: never send again.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            SendState::Sent { .. }
                | SendState::Failed {
                    permanent: true,
                    ..
                }
        )
    }

    fn attempts(&self) -> u32 {
        match self.state {
            SendState::Sending { attempts } => attempts,
            _ => 0,
        }
    }
}

/// Retry delay for the `delivered`-th delivery: base, 2×base, 4×base, … up to [`MAX_BACKOFF`].
pub fn backoff(base: Duration, delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    base.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

/// Runs the notifier until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.http_timeout_ms))
        .build()?;
    let twilio = Twilio {
        http,
        messages_url: format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.twilio_api_base.trim_end_matches('/'),
            config.account_sid
        ),
        account_sid: config.account_sid.clone(),
        auth_token: config.auth_token.clone(),
        callback_base: config.status_callback_base.trim_end_matches('/').to_owned(),
    };

    let readiness = Readiness::new([
        "bus".to_owned(),
        format!("consumer:{}", consumers::NOTIFIER_SEND),
        format!("consumer:{}", consumers::NOTIFIER_STATUS),
    ]);
    let client = bus::connect(&config.nats, NAME).await?;
    readiness.watch_client(client.clone());
    let js = bus::jetstream(client, &config.nats);
    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));

    let waited = async {
        let streams = [streams::OUTBOUND, streams::INBOUND];
        bus::wait_for(&js, &streams, &[buckets::SENDS], &shutdown).await?;
        bus::open_bucket_with_retry(&js, buckets::SENDS, &shutdown).await
    };
    let Ok(sends) = waited.await else {
        return Ok(ops::join_server(server).await?);
    };
    readiness.set("bus", true);

    let retry_base = Duration::from_millis(config.retry_base_ms);
    let mut tasks = JoinSet::new();
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::OUTBOUND,
            consumers::NOTIFIER_SEND,
            vec![subjects::outbound_sms_all()],
        ),
        Arc::new(SendHandler {
            js: js.clone(),
            sends: sends.clone(),
            twilio,
            retry_base,
        }),
        readiness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::INBOUND,
            consumers::NOTIFIER_STATUS,
            vec![subjects::inbound_sms_status()],
        ),
        Arc::new(StatusHandler {
            js: js.clone(),
            sends,
            retry_base,
        }),
        readiness.clone(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok(ops::join_server(server).await?)
}

/// A decode failure without the payload (it may hold personal data).
fn describe(e: &DecodeError) -> String {
    match e {
        DecodeError::Json(j) => format!(
            "malformed envelope ({:?} at line {} column {})",
            j.classify(),
            j.line(),
            j.column()
        ),
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------ Twilio

/// The fields we use of Twilio's message resource (201 response).
#[derive(Debug, Deserialize)]
struct MessageResource {
    sid: String,
    status: String,
}

/// Twilio's error body. Its `message` may quote the phone number, so only
/// `code` is ever used or logged.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<u32>,
}

/// What one send request came to.
#[derive(Debug)]
enum SendResult {
    Accepted {
        sid: String,
        status: DeliveryStatus,
    },
    /// A 4xx with a permanent Twilio error code.
    Permanent {
        http: u16,
        code: u32,
    },
    /// 5xx, 429, timeout, connection error, unreadable response.
    Transient {
        reason: String,
    },
    /// Any other 4xx (e.g. 401: our configuration is wrong). Retried, loudly.
    Refused {
        http: u16,
        code: Option<u32>,
    },
}

struct Twilio {
    http: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: Secret,
    callback_base: String,
}

impl Twilio {
    async fn send(&self, out: &OutboundSms) -> SendResult {
        let callback = format!(
            "{}/v1/sms/twilio/status?outbound={}",
            self.callback_base, out.outbound_id
        );
        let started = Instant::now();
        let result = self.request(out, &callback).await;
        metrics::histogram!("nwd_twilio_request_seconds", "service" => NAME)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn request(&self, out: &OutboundSms, callback: &str) -> SendResult {
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(IDEMPOTENCY_HEADER, out.outbound_id.to_string())
            .form(&[
                ("To", out.to.as_e164()),
                ("From", out.from.as_e164()),
                ("Body", out.body.as_str()),
                ("StatusCallback", callback),
            ])
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return SendResult::Transient {
                    reason: e.without_url().to_string(),
                };
            }
        };
        let http = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return SendResult::Transient {
                    reason: format!("reading the response: {}", e.without_url()),
                };
            }
        };
        classify(http.as_u16(), &body)
    }
}

fn classify(http: u16, body: &[u8]) -> SendResult {
    match http {
        200..=299 => match serde_json::from_slice::<MessageResource>(body) {
            Ok(m) => SendResult::Accepted {
                sid: m.sid,
                status: DeliveryStatus::parse(&m.status).unwrap_or(DeliveryStatus::Queued),
            },
            Err(e) => SendResult::Transient {
                reason: format!("unreadable {http} response ({:?})", e.classify()),
            },
        },
        429 | 500..=599 => SendResult::Transient {
            reason: format!("http {http}"),
        },
        400..=499 => {
            let code = serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .and_then(|b| b.code);
            match code {
                Some(code) if PERMANENT_ERROR_CODES.contains(&code) => {
                    SendResult::Permanent { http, code }
                }
                code => SendResult::Refused { http, code },
            }
        }
        _ => SendResult::Transient {
            reason: format!("unexpected http {http}"),
        },
    }
}

// ------------------------------------------------------------------ handlers

#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

async fn publish_status(
    js: &jetstream::Context,
    status: OutboundStatus,
) -> Result<(), jetstream::context::PublishError> {
    let msg_id = format!("status:{}:{}", status.outbound_id, status.status.as_str());
    bus::publish(
        js,
        subjects::outbound_status(&status.contact_id),
        &msg_id,
        &Envelope::new(status),
    )
    .await?;
    Ok(())
}

/// The status event of a final send record.
fn final_status(outbound_id: OutboundId, record: &SendRecord) -> Option<OutboundStatus> {
    let (status, provider_sid, error_code) = match &record.state {
        SendState::Sent { sid, status } => (*status, Some(sid.clone()), None),
        SendState::Failed {
            error_code,
            permanent: true,
        } => (DeliveryStatus::Failed, None, *error_code),
        _ => return None,
    };
    Some(OutboundStatus {
        outbound_id,
        contact_id: record.contact_id,
        status,
        provider_sid,
        error_code,
        at: OffsetDateTime::now_utc(),
    })
}

fn count(outcome: &'static str) {
    metrics::counter!("nwd_sms_sent_total", "service" => NAME, "outcome" => outcome).increment(1);
}

enum Start {
    /// Already sent or permanently failed: do not send again.
    Done(SendRecord),
    /// Send; this is attempt `n`.
    Send(u32),
}

/// Consumer `notifier-send`: OUTBOUND `nwd.v1.outbound.sms.*` → Twilio.
struct SendHandler {
    js: jetstream::Context,
    sends: jetstream::kv::Store,
    twilio: Twilio,
    retry_base: Duration,
}

impl SendHandler {
    async fn process(&self, out: &OutboundSms, delivered: i64) -> Result<Outcome, HandleError> {
        let key = out.outbound_id.to_string();
        let retry = Outcome::Retry(backoff(self.retry_base, delivered));
        let (start, _) = kv::cas(
            &self.sends,
            &key,
            |current: Option<SendRecord>| match current {
                Some(r) if r.is_final() => Cas::Keep(Start::Done(r)),
                Some(r) => {
                    let attempts = r.attempts() + 1;
                    Cas::Write(
                        SendRecord {
                            state: SendState::Sending { attempts },
                            ..r
                        },
                        Start::Send(attempts),
                    )
                }
                None => Cas::Write(
                    SendRecord {
                        contact_id: out.contact_id,
                        state: SendState::Sending { attempts: 1 },
                        last_status: None,
                    },
                    Start::Send(1),
                ),
            },
        )
        .await?;
        let attempt = match start {
            Start::Done(record) => {
                // Re-publish the final status in case a crash came between
                // recording it and publishing it; the Nats-Msg-Id dedupes.
                if let Some(status) = final_status(out.outbound_id, &record) {
                    publish_status(&self.js, status).await?;
                }
                tracing::info!(outbound_id = %out.outbound_id, "already sent; not sending again");
                count("duplicate");
                return Ok(Outcome::Ack);
            }
            Start::Send(n) => n,
        };

        match self.twilio.send(out).await {
            SendResult::Accepted { sid, status } => {
                let (record, _) =
                    kv::cas(
                        &self.sends,
                        &key,
                        |current: Option<SendRecord>| match current {
                            Some(r) if r.is_final() => Cas::Keep(r),
                            current => {
                                let r = SendRecord {
                                    contact_id: out.contact_id,
                                    state: SendState::Sent {
                                        sid: sid.clone(),
                                        status,
                                    },
                                    last_status: current
                                        .and_then(|c| c.last_status)
                                        .or(Some(status)),
                                };
                                Cas::Write(r.clone(), r)
                            }
                        },
                    )
                    .await?;
                if let Some(ev) = final_status(out.outbound_id, &record) {
                    publish_status(&self.js, ev).await?;
                }
                tracing::info!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, provider_sid = %sid, attempt, "sms sent");
                count("sent");
                Ok(Outcome::Ack)
            }
            SendResult::Permanent { http, code } => {
                let (record, _) =
                    kv::cas(
                        &self.sends,
                        &key,
                        |current: Option<SendRecord>| match current {
                            Some(r) if r.is_final() => Cas::Keep(r),
                            current => {
                                let r = SendRecord {
                                    contact_id: out.contact_id,
                                    state: SendState::Failed {
                                        error_code: Some(code),
                                        permanent: true,
                                    },
                                    last_status: current
                                        .and_then(|c| c.last_status)
                                        .or(Some(DeliveryStatus::Failed)),
                                };
                                Cas::Write(r.clone(), r)
                            }
                        },
                    )
                    .await?;
                if let Some(ev) = final_status(out.outbound_id, &record) {
                    publish_status(&self.js, ev).await?;
                }
                tracing::warn!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, http, error_code = code, "sms refused permanently; not retrying");
                count("failed_permanent");
                Ok(Outcome::Ack)
            }
            SendResult::Transient { reason } => {
                tracing::warn!(outbound_id = %out.outbound_id, attempt, %reason, "sms send failed; retrying");
                count("retry");
                Ok(retry)
            }
            SendResult::Refused { http, code } => {
                tracing::error!(outbound_id = %out.outbound_id, attempt, http, error_code = ?code, "twilio refused the request (check the account configuration); retrying");
                count("retry");
                Ok(retry)
            }
        }
    }
}

impl Handler for SendHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<OutboundSms>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable outbound SMS");
                return Outcome::Reject("undecodable");
            }
        };
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        match self.process(&env.data, delivered).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(outbound_id = %env.data.outbound_id, error = %e, "send bookkeeping failed; retrying");
                count("retry");
                Outcome::Retry(backoff(self.retry_base, delivered))
            }
        }
    }
}

/// Consumer `notifier-status`: INBOUND `nwd.v1.inbound.sms_status` → OUTBOUND status.
struct StatusHandler {
    js: jetstream::Context,
    sends: jetstream::kv::Store,
    retry_base: Duration,
}

/// What a status callback does to a send record.
enum Update {
    Unknown,
    /// Older than what we know (a non-final status after a final one).
    Stale,
    Publish(ContactId),
}

impl StatusHandler {
    async fn process(&self, st: &SmsStatus, outbound_id: OutboundId) -> Result<(), HandleError> {
        let key = outbound_id.to_string();
        let (update, _) = kv::cas(&self.sends, &key, |current: Option<SendRecord>| {
            let Some(r) = current else {
                return Cas::Keep(Update::Unknown);
            };
            let stale = r
                .last_status
                .is_some_and(|last| last.is_final() && !st.status.is_final());
            if stale {
                Cas::Keep(Update::Stale)
            } else if r.last_status == Some(st.status) {
                Cas::Keep(Update::Publish(r.contact_id))
            } else {
                let contact = r.contact_id;
                Cas::Write(
                    SendRecord {
                        last_status: Some(st.status),
                        ..r
                    },
                    Update::Publish(contact),
                )
            }
        })
        .await?;
        match update {
            Update::Unknown => {
                tracing::warn!(%outbound_id, message_sid = %st.message_sid, "status for an unknown outbound id; ignored");
            }
            Update::Stale => {
                tracing::info!(%outbound_id, status = st.status.as_str(), "stale status callback; ignored");
            }
            Update::Publish(contact_id) => {
                publish_status(
                    &self.js,
                    OutboundStatus {
                        outbound_id,
                        contact_id,
                        status: st.status,
                        provider_sid: Some(st.message_sid.to_string()),
                        error_code: st.error_code,
                        at: st.received_at,
                    },
                )
                .await?;
                tracing::info!(%outbound_id, %contact_id, status = st.status.as_str(), error_code = ?st.error_code, "delivery status");
            }
        }
        Ok(())
    }
}

impl Handler for StatusHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<SmsStatus>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable SMS status");
                return Outcome::Reject("undecodable");
            }
        };
        let st = env.data;
        let Some(outbound_id) = st.outbound_id else {
            tracing::warn!(message_sid = %st.message_sid, "status callback without an outbound id; ignored");
            return Outcome::Ack;
        };
        match self.process(&st, outbound_id).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(%outbound_id, error = %e, "status handling failed; retrying");
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                Outcome::Retry(backoff(self.retry_base, delivered))
            }
        }
    }

    /// One lane per outbound message, so its callbacks are handled in order
    /// while different messages run in parallel.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        match Envelope::<SmsStatus>::from_bytes(&msg.payload) {
            Ok(env) => consume::hash(env.data.message_sid.as_str()),
            Err(_) => consume::hash(msg.subject.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 0), Duration::from_secs(1));
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 6), Duration::from_secs(30));
        assert_eq!(backoff(base, i64::MAX), MAX_BACKOFF);
    }

    #[test]
    fn classifies_twilio_answers() {
        let ok = include_bytes!("../../../fixtures/twilio/outbound_message_response.json");
        assert!(matches!(
            classify(201, ok),
            SendResult::Accepted { ref sid, status: DeliveryStatus::Queued }
                if sid == "SMfd42887165ec69e08a524da35e2762d6"
        ));
        let err = include_bytes!("../../../fixtures/twilio/error_response.json");
        assert!(matches!(
            classify(400, err),
            SendResult::Permanent {
                http: 400,
                code: 21211
            }
        ));
        assert!(matches!(
            classify(401, br#"{"code":20003,"status":401}"#),
            SendResult::Refused {
                http: 401,
                code: Some(20003)
            }
        ));
        assert!(matches!(
            classify(400, b"not json"),
            SendResult::Refused {
                http: 400,
                code: None
            }
        ));
        assert!(matches!(classify(429, b""), SendResult::Transient { .. }));
        assert!(matches!(classify(503, b""), SendResult::Transient { .. }));
        assert!(matches!(classify(201, b"{}"), SendResult::Transient { .. }));
        assert!(matches!(classify(302, b""), SendResult::Transient { .. }));
    }

    #[test]
    fn send_record_round_trips() {
        let r = SendRecord {
            contact_id: ContactId::new(),
            state: SendState::Sent {
                sid: "SM1".into(),
                status: DeliveryStatus::Queued,
            },
            last_status: Some(DeliveryStatus::Delivered),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SendRecord>(&json).unwrap(), r);
        assert!(r.is_final());
        let failing = SendRecord {
            state: SendState::Failed {
                error_code: Some(30001),
                permanent: false,
            },
            ..r
        };
        assert!(!failing.is_final());
    }
}
