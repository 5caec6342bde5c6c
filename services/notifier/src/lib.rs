//! Notifier: sends outbound SMS through the Twilio REST API, exactly once per
//! outbound id, and reports what became of them.
//!
//! Each `OutboundSms` has a send record in the `sends` bucket (key = outbound
//! id), changed only by compare-and-swap. `Sending` is a **lease**: before
//! calling Twilio a replica takes it (owner + expiry) and only the holder
//! sends; a live lease held by anyone else means "wait until it expires".
//! Twilio's Messages API has no idempotency key, so whoever takes over a
//! send that was tried before (the holder crashed, timed out, or got no
//! readable answer) first **reconciles**: it lists Twilio's messages to the
//! same number from the same line and, if ours is there, records `Sent` with
//! its SID instead of sending again. Then `Sent{sid, status}` or
//! `Failed{error_code, permanent}`; both are final. Twilio's permanent errors
//! (invalid number, STOP, …) are never retried; other 4xx answers are
//! retried a bounded number of times and then reported failed (with a
//! metric and an alert); 5xx, 429 and timeouts are retried with a growing
//! delay, never dropped. See docs/adr/0004-exactly-once-sms.md.
//!
//! Status callbacks (published by the gateway as `SmsStatus`) are turned into
//! `OutboundStatus` events for the contact of the outbound message.
//!
//! Partner callbacks ([`partner`]): each referral's Task version is posted to
//! the partner's callback URL, signed with Standard Webhooks, retried,
//! parked for supervisors when it keeps failing (ADR 0015).

pub mod partner;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nwd_proto::envelope::DecodeError;
use nwd_proto::events::{DeliveryStatus, OutboundSms, OutboundStatus, SmsStatus};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::wire;
use nwd_proto::{ContactId, Envelope, OutboundId, subjects};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::kv::{self, Cas, KvError};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::{Secret, ServiceConfig};
use nwd_twilio::rest::{self, MessageFilter, MessagePage, MessageResource};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Service name for logs and metric labels.
pub const NAME: &str = "notifier";

/// The longest delay between two send attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many pages of one Messages list a reconcile reads at most.
const MAX_LIST_PAGES: usize = 5;
/// Page size of a reconcile's list requests.
const LIST_PAGE_SIZE: u32 = 100;
/// How many days back a reconcile looks (the first attempt's day to today).
const MAX_RECONCILE_DAYS: usize = 3;

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
    /// How long a send lease lasts (milliseconds): while it is live no other
    /// replica sends that message. Must exceed the HTTP timeout, with room
    /// for clock skew between replicas.
    #[arg(long, env = "NWD_NOTIFIER_SEND_LEASE_MS", default_value_t = 20_000)]
    pub send_lease_ms: u64,
    /// 4xx answers without a permanent Twilio code tolerated per message;
    /// then it is reported failed to the counsellor.
    #[arg(long, env = "NWD_NOTIFIER_MAX_REFUSALS", default_value_t = 5)]
    pub max_refusals: u32,
    /// This replica's name in send leases (default: `notifier-<random>`).
    #[arg(long, env = "NWD_NOTIFIER_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The directory file (partners' callback URLs and secrets), followed
    /// live in the directory bucket.
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// Attempts of one partner callback before it is parked for supervisors.
    #[arg(long, env = "NWD_CALLBACK_RETRIES", default_value_t = 8)]
    pub callback_retries: u32,
    /// First partner-callback retry delay (milliseconds); doubles per
    /// attempt up to the cap, half of it jittered.
    #[arg(long, env = "NWD_CALLBACK_RETRY_BASE_MS", default_value_t = 2_000)]
    pub callback_retry_base_ms: u64,
    /// The longest partner-callback backoff (milliseconds); a partner's
    /// `Retry-After` is honoured beyond it, up to an hour.
    #[arg(long, env = "NWD_CALLBACK_RETRY_CAP_MS", default_value_t = 300_000)]
    pub callback_retry_cap_ms: u64,
    /// 4xx answers (other than 410 Gone and 429) tolerated per callback
    /// before it is parked.
    #[arg(long, env = "NWD_CALLBACK_MAX_REFUSALS", default_value_t = 3)]
    pub callback_max_refusals: u32,
    /// Timeout of one partner callback (milliseconds).
    #[arg(long, env = "NWD_CALLBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub callback_timeout_ms: u64,
    /// How often a partner with parked callbacks is probed with its oldest
    /// one (milliseconds); when it takes it, the rest are re-sent.
    #[arg(long, env = "NWD_CALLBACK_PROBE_MS", default_value_t = 60_000)]
    pub callback_probe_ms: u64,
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
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error(
        "NWD_NOTIFIER_SEND_LEASE_MS ({lease_ms}) must exceed NWD_NOTIFIER_HTTP_TIMEOUT_MS ({timeout_ms}): a lease must outlast the call it covers"
    )]
    LeaseTooShort { lease_ms: u64, timeout_ms: u64 },
}

/// Who may be calling Twilio for a message, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `<replica id>/<nonce>`: unique per taking, so a restarted replica
    /// never mistakes its predecessor's lease for its own.
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

impl Lease {
    fn is_live(&self, now: OffsetDateTime) -> bool {
        self.expires > now
    }
}

/// Where a send is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SendState {
    /// Being sent. `attempts` counts the leases taken (each may have reached
    /// Twilio), `refusals` the 4xx answers without a permanent code.
    Sending {
        attempts: u32,
        #[serde(default)]
        refusals: u32,
        /// When the first attempt began: a reconcile matches only messages
        /// Twilio created since. A record from before leases reads as "now",
        /// which can only cause a resend, never a false "sent".
        #[serde(default = "OffsetDateTime::now_utc", with = "time::serde::rfc3339")]
        since: OffsetDateTime,
        /// `None`: nobody is calling Twilio now (released, or a record from
        /// before leases).
        #[serde(default)]
        lease: Option<Lease>,
    },
    /// Twilio accepted the message.
    Sent { sid: String, status: DeliveryStatus },
    /// Twilio refused it, for good: a permanent code (`permanent`), or too
    /// many other 4xx answers.
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
    /// Sent, or failed for good: never send again.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            SendState::Sent { .. } | SendState::Failed { .. }
        )
    }

    /// The lease held by `owner`, if the record still shows it.
    fn is_held_by(&self, owner: &str) -> bool {
        matches!(&self.state, SendState::Sending { lease: Some(l), .. } if l.owner == owner)
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
    if config.send_lease_ms <= config.http_timeout_ms {
        return Err(Error::LeaseTooShort {
            lease_ms: config.send_lease_ms,
            timeout_ms: config.http_timeout_ms,
        });
    }
    // reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.http_timeout_ms))
        .build()?;
    let twilio = Twilio {
        http,
        api_base: config.twilio_api_base.trim_end_matches('/').to_owned(),
        messages_url: rest::messages_url(&config.twilio_api_base, &config.account_sid),
        account_sid: config.account_sid.clone(),
        auth_token: config.auth_token.clone(),
        callback_base: config.status_callback_base.clone(),
    };
    let replica = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{NAME}-{}", OutboundId::new()));
    tracing::info!(%replica, lease_ms = config.send_lease_ms, "send leases");

    let directory =
        nwd_runtime::directory::Live::new(nwd_runtime::directory::load(&config.directory)?);
    // Partner endpoints are the partners' own: redirects are not followed.
    let callback_http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.callback_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let readiness = Readiness::new([
        "bus".to_owned(),
        nwd_runtime::directory::READY.to_owned(),
        format!("consumer:{}", consumers::NOTIFIER_SEND),
        format!("consumer:{}", consumers::NOTIFIER_STATUS),
        format!("consumer:{}", consumers::NOTIFIER_PARTNER),
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
        let streams = [streams::OUTBOUND, streams::INBOUND, streams::DEADLETTER];
        bus::wait_for(
            &js,
            &streams,
            &[buckets::SENDS, buckets::DIRECTORY],
            &shutdown,
        )
        .await?;
        Ok::<_, BusError>((
            bus::open_bucket_with_retry(&js, buckets::SENDS, &shutdown).await?,
            bus::open_bucket_with_retry(&js, buckets::DIRECTORY, &shutdown).await?,
        ))
    };
    let Ok((sends, directory_bucket)) = waited.await else {
        return Ok(ops::join_server(server).await?);
    };
    readiness.set("bus", true);

    let retry_base = Duration::from_millis(config.retry_base_ms);
    let mut tasks = JoinSet::new();
    tasks.spawn(nwd_runtime::directory::follow(
        directory_bucket,
        directory.clone(),
        readiness.clone(),
        NAME,
        shutdown.clone(),
    ));
    let callbacks = Arc::new(partner::Callbacks::new(
        js.clone(),
        sends.clone(),
        callback_http,
        directory,
        partner::RetryPolicy {
            attempts: config.callback_retries.max(1),
            base: Duration::from_millis(config.callback_retry_base_ms.max(1)),
            cap: Duration::from_millis(config.callback_retry_cap_ms.max(1)),
            max_refusals: config.callback_max_refusals.max(1),
        },
        readiness.clone(),
    ));
    let mut partner_spec = ConsumerSpec::new(
        NAME,
        streams::OUTBOUND,
        consumers::NOTIFIER_PARTNER,
        vec![subjects::outbound_partner_task_all()],
    );
    // One lane per referral (its subject); a callback being retried waits
    // as a delayed redelivery, not in a lane, but still counts as pending:
    // room for a down partner's retries (bounded: parked after the last)
    // without holding up every other partner (ADR 0015).
    partner_spec.max_ack_pending = 10_000;
    tasks.spawn(consume::run(
        js.clone(),
        partner_spec,
        Arc::new(partner::PartnerHandler(callbacks.clone())),
        readiness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(partner::probe_parked(
        callbacks,
        Duration::from_millis(config.callback_probe_ms.max(10)),
        shutdown.clone(),
    ));
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
            replica,
            lease: Duration::from_millis(config.send_lease_ms),
            max_refusals: config.max_refusals.max(1),
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
    /// 5xx, 429, timeout, connection error, unreadable response: the
    /// message may or may not exist at Twilio.
    Transient {
        reason: String,
    },
    /// Any other 4xx (e.g. 401: our configuration is wrong). Retried a
    /// bounded number of times.
    Refused {
        http: u16,
        code: Option<u32>,
    },
}

/// The Twilio REST API, as `nwd_twilio` describes it.
struct Twilio {
    http: reqwest::Client,
    /// `https://api.twilio.com`: list pages name their successors by path.
    api_base: String,
    messages_url: String,
    account_sid: String,
    auth_token: Secret,
    callback_base: String,
}

/// The `To` and `From` of a message as Twilio shows them.
fn addresses(out: &OutboundSms) -> (&str, &str) {
    (out.to.as_str(), out.from.as_str())
}

impl Twilio {
    async fn send(&self, out: &OutboundSms) -> SendResult {
        let callback =
            nwd_twilio::status_callback_url(&self.callback_base, &out.outbound_id.to_string());
        let started = Instant::now();
        let result = self.request(out, &callback).await;
        metrics::histogram!("nwd_twilio_request_seconds", "service" => NAME, "request" => "create")
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn request(&self, out: &OutboundSms, callback: &str) -> SendResult {
        let (to, from) = addresses(out);
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&[
                ("To", to),
                ("From", from),
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

    /// Looks for `out` among the messages Twilio has from our line to the
    /// recipient, created since `since` (the first attempt): messages sent
    /// on each day from then to today (`DateSent`), and the newest ones,
    /// which include any still queued (not yet "sent" on any day).
    async fn find(
        &self,
        out: &OutboundSms,
        since: OffsetDateTime,
    ) -> Result<Option<MessageResource>, String> {
        let started = Instant::now();
        let (to, from) = addresses(out);
        let filter = |date_sent| MessageFilter {
            to: Some(to.to_owned()),
            from: Some(from.to_owned()),
            date_sent,
            page_size: Some(LIST_PAGE_SIZE),
        };
        let today = OffsetDateTime::now_utc().date();
        let mut days = vec![None];
        let mut day = since.date();
        while day <= today && days.len() <= MAX_RECONCILE_DAYS {
            days.push(Some(day));
            let Some(next) = day.next_day() else { break };
            day = next;
        }
        let mut found: Option<MessageResource> = None;
        for date_sent in days {
            let mut url = self.messages_url.clone();
            let mut query = filter(date_sent).query();
            for _ in 0..MAX_LIST_PAGES {
                let page = self.list_page(&url, &query).await?;
                for m in page.messages {
                    if is_ours(&m, out, since)
                        && found
                            .as_ref()
                            .is_none_or(|f| m.created_at() < f.created_at())
                    {
                        found = Some(m);
                    }
                }
                // The first list (newest, undated) reads one page only.
                match page.next_page_uri {
                    Some(next) if date_sent.is_some() => {
                        url = format!("{}{next}", self.api_base);
                        query.clear();
                    }
                    _ => break,
                }
            }
            if found.is_some() {
                break;
            }
        }
        metrics::histogram!("nwd_twilio_request_seconds", "service" => NAME, "request" => "list")
            .record(started.elapsed().as_secs_f64());
        Ok(found)
    }

    async fn list_page(
        &self,
        url: &str,
        query: &[(&'static str, String)],
    ) -> Result<MessagePage, String> {
        let response = self
            .http
            .get(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .query(query)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let http = response.status();
        if !http.is_success() {
            return Err(format!("list answered http {}", http.as_u16()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the list: {}", e.without_url()))?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("unreadable list page ({:?})", e.classify()))
    }
}

/// Whether a listed message is the one we tried to send: from our line to
/// the recipient through the API, with our body, created no earlier than
/// our first attempt (Twilio's dates have whole seconds). Twilio does not
/// show a message's `StatusCallback`, so our outbound id cannot be matched;
/// the time bound keeps an earlier identical text from passing for ours.
fn is_ours(m: &MessageResource, out: &OutboundSms, since: OffsetDateTime) -> bool {
    let (to, from) = addresses(out);
    let since = since.replace_nanosecond(0).unwrap_or(since);
    m.is_outbound()
        && m.to == to
        && m.from.as_deref() == Some(from)
        && m.body == out.body
        && m.created_at().is_some_and(|at| at >= since)
}

fn classify(http: u16, body: &[u8]) -> SendResult {
    match http {
        200..=299 => match serde_json::from_slice::<MessageResource>(body) {
            Ok(m) if !m.sid.is_empty() => SendResult::Accepted {
                status: DeliveryStatus::parse(&m.status).unwrap_or(DeliveryStatus::Queued),
                sid: m.sid,
            },
            Ok(_) => SendResult::Transient {
                reason: format!("{http} response without a sid"),
            },
            Err(e) => SendResult::Transient {
                reason: format!("unreadable {http} response ({:?})", e.classify()),
            },
        },
        429 | 500..=599 => SendResult::Transient {
            reason: format!("http {http}"),
        },
        400..=499 => {
            // The message may quote the phone number: only the code is used.
            let code = serde_json::from_slice::<nwd_twilio::ErrorResponse>(body)
                .ok()
                .map(|b| b.code);
            match code {
                Some(code) if nwd_twilio::is_permanent(code) => {
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
    let msg_id = wire::msg_id::outbound_status(&status.outbound_id, status.status);
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
        SendState::Failed { error_code, .. } => (DeliveryStatus::Failed, None, *error_code),
        SendState::Sending { .. } => return None,
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

/// A message given up on: `reason` is `permanent` (Twilio's permanent
/// code) or `refused` (too many other 4xx answers).
fn count_failed(reason: &'static str) {
    metrics::counter!("nwd_notifier_send_failed_total", "reason" => reason).increment(1);
}

/// What taking the lease came to.
enum Start {
    /// Already sent or failed for good: do not send again.
    Done(SendRecord),
    /// Another replica holds a live lease: look again after this long.
    Busy(Duration),
    /// Ours. `tried`: an earlier attempt may have reached Twilio, so
    /// reconcile before sending; `since`: when the first attempt began.
    Take { tried: bool, since: OffsetDateTime },
}

/// What a lease holder learnt, to record.
enum Learnt {
    /// Twilio has the message (a send's answer, or found by a reconcile).
    Sent { sid: String, status: DeliveryStatus },
    /// Twilio refused it for good.
    Permanent { code: u32 },
    /// Twilio refused it with no permanent code.
    Refused { code: Option<u32> },
    /// Nothing certain: let the lease go so the next attempt can start.
    Unsure,
}

/// What recording an outcome came to.
enum Recorded {
    /// The record is final (by this outcome or an earlier one).
    Final(SendRecord),
    /// Not final: retry.
    Again,
}

/// Consumer `notifier-send`: OUTBOUND `nwd.v1.outbound.sms.*` → Twilio.
struct SendHandler {
    js: jetstream::Context,
    sends: jetstream::kv::Store,
    twilio: Twilio,
    retry_base: Duration,
    /// This replica's name in leases.
    replica: String,
    /// How long a lease lasts.
    lease: Duration,
    /// 4xx answers without a permanent code before giving up.
    max_refusals: u32,
}

impl SendHandler {
    fn new_lease(&self, owner: &str) -> Lease {
        Lease {
            owner: owner.to_owned(),
            expires: OffsetDateTime::now_utc() + self.lease,
        }
    }

    /// Takes the lease of `out` for `owner`, unless the send is final or
    /// another holder's lease is live.
    async fn take(&self, out: &OutboundSms, owner: &str) -> Result<Start, KvError> {
        let key = wire::key::send(&out.outbound_id);
        let (start, _) = kv::cas(&self.sends, &key, |current: Option<SendRecord>| {
            let now = OffsetDateTime::now_utc();
            match current {
                Some(r) if r.is_final() => Cas::Keep(Start::Done(r)),
                Some(SendRecord {
                    state: SendState::Sending { lease: Some(l), .. },
                    ..
                }) if l.is_live(now) => {
                    let left = (l.expires - now).try_into().unwrap_or(Duration::ZERO);
                    Cas::Keep(Start::Busy(left))
                }
                Some(r) => {
                    let (attempts, refusals, since) = match r.state {
                        SendState::Sending {
                            attempts,
                            refusals,
                            since,
                            ..
                        } => (attempts, refusals, since),
                        _ => (0, 0, now),
                    };
                    Cas::Write(
                        SendRecord {
                            state: SendState::Sending {
                                attempts: attempts + 1,
                                refusals,
                                since,
                                lease: Some(self.new_lease(owner)),
                            },
                            ..r
                        },
                        Start::Take {
                            tried: attempts > 0,
                            since,
                        },
                    )
                }
                None => Cas::Write(
                    SendRecord {
                        contact_id: out.contact_id,
                        state: SendState::Sending {
                            attempts: 1,
                            refusals: 0,
                            since: now,
                            lease: Some(self.new_lease(owner)),
                        },
                        last_status: None,
                    },
                    Start::Take {
                        tried: false,
                        since: now,
                    },
                ),
            }
        })
        .await?;
        Ok(start)
    }

    /// Extends `owner`'s lease by a full term before the call it covers;
    /// `false` if the lease is no longer `owner`'s.
    async fn renew(&self, out: &OutboundSms, owner: &str) -> Result<bool, KvError> {
        let key = wire::key::send(&out.outbound_id);
        let (renewed, _) = kv::cas(
            &self.sends,
            &key,
            |current: Option<SendRecord>| match current {
                Some(mut r) if r.is_held_by(owner) => {
                    if let SendState::Sending { lease, .. } = &mut r.state {
                        *lease = Some(self.new_lease(owner));
                    }
                    Cas::Write(r, true)
                }
                _ => Cas::Keep(false),
            },
        )
        .await?;
        Ok(renewed)
    }

    /// Records what `owner` learnt. `Sent` is recorded whoever holds the
    /// lease (it is the truth); the rest only while the lease is `owner`'s.
    async fn record(
        &self,
        out: &OutboundSms,
        owner: &str,
        learnt: &Learnt,
    ) -> Result<Recorded, KvError> {
        let key = wire::key::send(&out.outbound_id);
        let max_refusals = self.max_refusals;
        let (recorded, _) = kv::cas(&self.sends, &key, |current: Option<SendRecord>| {
            let final_record = |state, status| {
                let r = SendRecord {
                    contact_id: out.contact_id,
                    state,
                    last_status: current
                        .as_ref()
                        .and_then(|c| c.last_status)
                        .or(Some(status)),
                };
                Cas::Write(r.clone(), Recorded::Final(r))
            };
            match (&current, learnt) {
                (Some(r), _) if r.is_final() => Cas::Keep(Recorded::Final(r.clone())),
                (_, Learnt::Sent { sid, status }) => final_record(
                    SendState::Sent {
                        sid: sid.clone(),
                        status: *status,
                    },
                    *status,
                ),
                (Some(r), _) if !r.is_held_by(owner) => Cas::Keep(Recorded::Again),
                (_, Learnt::Permanent { code }) => final_record(
                    SendState::Failed {
                        error_code: Some(*code),
                        permanent: true,
                    },
                    DeliveryStatus::Failed,
                ),
                (Some(r), Learnt::Refused { code }) => {
                    let (attempts, refusals, since) = match r.state {
                        SendState::Sending {
                            attempts,
                            refusals,
                            since,
                            ..
                        } => (attempts, refusals + 1, since),
                        _ => (0, 1, OffsetDateTime::now_utc()),
                    };
                    if refusals >= max_refusals {
                        final_record(
                            SendState::Failed {
                                error_code: *code,
                                permanent: false,
                            },
                            DeliveryStatus::Failed,
                        )
                    } else {
                        Cas::Write(
                            SendRecord {
                                state: SendState::Sending {
                                    attempts,
                                    refusals,
                                    since,
                                    lease: None,
                                },
                                ..r.clone()
                            },
                            Recorded::Again,
                        )
                    }
                }
                (Some(r), _) => {
                    let mut released = r.clone();
                    if let SendState::Sending { lease, .. } = &mut released.state {
                        *lease = None;
                    }
                    Cas::Write(released, Recorded::Again)
                }
                (None, _) => Cas::Keep(Recorded::Again),
            }
        })
        .await?;
        Ok(recorded)
    }

    /// Publishes the status of a record that became final.
    async fn finish(&self, out: &OutboundSms, record: &SendRecord) -> Result<(), HandleError> {
        if let Some(ev) = final_status(out.outbound_id, record) {
            publish_status(&self.js, ev).await?;
        }
        Ok(())
    }

    async fn process(&self, out: &OutboundSms, delivered: i64) -> Result<Outcome, HandleError> {
        let retry = Outcome::Retry(backoff(self.retry_base, delivered));
        // Unique per taking: a lease is never confused with an earlier one.
        let owner = format!("{}/{}", self.replica, OutboundId::new());
        let (tried, since) = match self.take(out, &owner).await? {
            Start::Done(record) => {
                // Re-publish the final status in case a crash came between
                // recording it and publishing it; the Nats-Msg-Id dedupes.
                self.finish(out, &record).await?;
                tracing::info!(outbound_id = %out.outbound_id, "already sent; not sending again");
                count("duplicate");
                return Ok(Outcome::Ack);
            }
            Start::Busy(left) => {
                tracing::info!(outbound_id = %out.outbound_id, wait_ms = left.as_millis(), "another replica holds the send lease; waiting");
                count("lease_busy");
                return Ok(Outcome::Retry(
                    (left + Duration::from_millis(50)).min(self.lease),
                ));
            }
            Start::Take { tried, since } => (tried, since),
        };

        if tried {
            // An earlier attempt may have reached Twilio: look before sending.
            match self.twilio.find(out, since).await {
                Ok(Some(found)) => {
                    let learnt = Learnt::Sent {
                        status: DeliveryStatus::parse(&found.status)
                            .unwrap_or(DeliveryStatus::Queued),
                        sid: found.sid,
                    };
                    if let Recorded::Final(record) = self.record(out, &owner, &learnt).await? {
                        self.finish(out, &record).await?;
                    }
                    tracing::info!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, "an earlier attempt reached Twilio; recorded as sent, not sending again");
                    count("reconciled");
                    return Ok(Outcome::Ack);
                }
                Ok(None) => {
                    tracing::info!(outbound_id = %out.outbound_id, "no earlier attempt reached Twilio; sending");
                }
                Err(reason) => {
                    self.record(out, &owner, &Learnt::Unsure).await?;
                    tracing::warn!(outbound_id = %out.outbound_id, %reason, "cannot list Twilio's messages to reconcile; retrying");
                    count("retry");
                    return Ok(retry);
                }
            }
            // The reconcile took time: the POST gets a full lease.
            if !self.renew(out, &owner).await? {
                tracing::info!(outbound_id = %out.outbound_id, "send lease lost while reconciling; retrying");
                count("retry");
                return Ok(retry);
            }
        }

        let learnt = match self.twilio.send(out).await {
            SendResult::Accepted { sid, status } => {
                tracing::info!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, provider_sid = %sid, "sms sent");
                count("sent");
                Learnt::Sent { sid, status }
            }
            SendResult::Permanent { http, code } => {
                tracing::warn!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, http, error_code = code, "sms refused permanently; not retrying");
                count("failed_permanent");
                Learnt::Permanent { code }
            }
            SendResult::Transient { reason } => {
                tracing::warn!(outbound_id = %out.outbound_id, %reason, "sms send failed; retrying");
                count("retry");
                Learnt::Unsure
            }
            SendResult::Refused { http, code } => {
                tracing::error!(outbound_id = %out.outbound_id, http, error_code = ?code, "twilio refused the request without a permanent code (check the account configuration)");
                Learnt::Refused { code }
            }
        };
        match self.record(out, &owner, &learnt).await? {
            Recorded::Final(record) => {
                self.finish(out, &record).await?;
                match (&learnt, &record.state) {
                    (
                        Learnt::Permanent { .. },
                        SendState::Failed {
                            permanent: true, ..
                        },
                    ) => {
                        count_failed("permanent");
                    }
                    (Learnt::Refused { .. }, SendState::Failed { .. }) => {
                        tracing::error!(outbound_id = %out.outbound_id, contact_id = %out.contact_id, max_refusals = self.max_refusals, "sms refused too many times; reported failed");
                        count("failed_refused");
                        count_failed("refused");
                    }
                    _ => {}
                }
                Ok(Outcome::Ack)
            }
            // Not final, or the lease was lost meanwhile (its new holder
            // decides): look again later.
            Recorded::Again => {
                if matches!(learnt, Learnt::Refused { .. }) {
                    count("retry");
                }
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
        let key = wire::key::send(&outbound_id);
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
        let refused = SendRecord {
            state: SendState::Failed {
                error_code: Some(30001),
                permanent: false,
            },
            ..r.clone()
        };
        assert!(refused.is_final(), "a message given up on is not retried");
        let sending = SendRecord {
            state: SendState::Sending {
                attempts: 2,
                refusals: 1,
                since: time::macros::datetime!(2026-12-07 05:00:00 UTC),
                lease: Some(Lease {
                    owner: "notifier-a/01J".into(),
                    expires: time::macros::datetime!(2026-12-07 05:00:30 UTC),
                }),
            },
            ..r
        };
        let json = serde_json::to_string(&sending).unwrap();
        assert_eq!(serde_json::from_str::<SendRecord>(&json).unwrap(), sending);
        assert!(sending.is_held_by("notifier-a/01J"));
        assert!(!sending.is_held_by("notifier-b/01K"));
        assert!(!sending.is_final());
    }

    #[test]
    fn a_record_from_before_leases_is_a_released_lease_since_now() {
        let before = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let json = format!(
            r#"{{"contact_id":"{}","state":{{"kind":"sending","attempts":1}}}}"#,
            ContactId::new()
        );
        let r: SendRecord = serde_json::from_str(&json).unwrap();
        let SendState::Sending {
            attempts,
            refusals,
            since,
            lease,
        } = r.state
        else {
            panic!("{r:?}");
        };
        assert_eq!((attempts, refusals, lease), (1, 0, None));
        assert!(since >= before, "only messages from now on can match");
    }

    #[test]
    fn only_our_message_since_the_first_attempt_is_ours() {
        let out = OutboundSms {
            outbound_id: OutboundId::new(),
            contact_id: ContactId::new(),
            to: nwd_proto::Address::parse("+15005550142"),
            from: nwd_proto::Address::parse("+15005550110"),
            body: "I'm here with you.".into(),
            author: nwd_proto::events::Author::System,
            created_at: OffsetDateTime::now_utc(),
        };
        let since = time::macros::datetime!(2026-12-07 05:00:00.700 UTC);
        let ours = MessageResource {
            sid: "SM1".into(),
            direction: "outbound-api".into(),
            to: "+15005550142".into(),
            from: Some("+15005550110".into()),
            body: "I'm here with you.".into(),
            // Same second as the first attempt: Twilio drops the fraction.
            date_created: Some("Mon, 07 Dec 2026 05:00:00 +0000".into()),
            ..MessageResource::default()
        };
        assert!(is_ours(&ours, &out, since));
        let earlier = MessageResource {
            date_created: Some("Mon, 07 Dec 2026 04:59:59 +0000".into()),
            ..ours.clone()
        };
        assert!(!is_ours(&earlier, &out, since), "an earlier identical text");
        let other_body = MessageResource {
            body: "Another text".into(),
            ..ours.clone()
        };
        assert!(!is_ours(&other_body, &out, since));
        let inbound = MessageResource {
            direction: "inbound".into(),
            ..ours.clone()
        };
        assert!(!is_ours(&inbound, &out, since));
        let undated = MessageResource {
            date_created: None,
            ..ours
        };
        assert!(!is_ours(&undated, &out, since));
    }
}
