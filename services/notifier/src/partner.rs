//! Partner callbacks: each [`PartnerTaskUpdate`] (a referral's Task at one
//! version) is POSTed to the partner's `callback_url` from the live
//! directory, as `application/fhir+json`, signed with Standard Webhooks
//! (the reference `standardwebhooks` crate, the partner's first secret).
//! ADR 0015; runbooks/partner-callbacks.md.
//!
//! - `webhook-id` is the event's id (`task:<referral>:<version>`), the same
//!   on every attempt; `webhook-timestamp` and `webhook-signature` are
//!   made fresh for every attempt.
//! - 2xx: delivered. 429/502/503/504 honour `Retry-After` (seconds or an
//!   HTTP date); connection errors, timeouts and other 5xx retry with
//!   bounded, jittered exponential backoff; other 4xx retry a few times
//!   (a rotated secret, a misconfigured endpoint: fixable) and are then
//!   parked; 410 Gone parks at once (the partner turned the endpoint off).
//! - A retry is a delayed redelivery (`Nak` with the delay), never a sleep
//!   holding the message: one partner being down never blocks another's
//!   callbacks, nor the consumer's lanes.
//! - One referral's versions go out in order: a version waits while an
//!   older one of the same referral is still being retried here, and a
//!   version at or below the highest one delivered (a mark in the `sends`
//!   bucket) is never posted again.
//! - Parked = a dead letter of consumer `notifier-partner` in DEADLETTER
//!   (seen and re-sent with `nwd-deadletter list/replay`), with an ops
//!   alert and `nwd_partner_callbacks_parked{partner}`. When the partner
//!   answers 2xx again (any callback, or the probe of its oldest parked
//!   one), its parked callbacks are re-sent in the order they were parked
//!   and the gauge returns to 0. While a partner is known down (a callback
//!   parked unreachable or gone, no 2xx since), its new callbacks are
//!   parked at once behind the others rather than retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use nwd_proto::deadletter::{DeadLetterReason, OpsAlert};
use nwd_proto::directory::Directory;
use nwd_proto::referral::PartnerTaskUpdate;
use nwd_proto::streams::{self, consumers};
use nwd_proto::{Envelope, PartnerId, ReferralId, subjects, wire};
use nwd_runtime::consume::{Handler, Outcome};
use nwd_runtime::deadletter::{self, Consumer};
use nwd_runtime::directory::Live;
use nwd_runtime::kv::{self, Cas};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::NAME;

/// The longest `Retry-After` honoured: a partner asking for more is retried then.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long a version waits before it looks again whether the older
/// version of its referral ahead of it is done.
const ORDER_WAIT: Duration = Duration::from_millis(250);

/// How long a callback waits for the directory bucket to be read.
const DIRECTORY_WAIT: Duration = Duration::from_millis(200);

/// How long a callback waits when its mark or its dead letter could not be
/// written (the bus is down).
const BUS_RETRY: Duration = Duration::from_secs(2);

/// When callbacks are tried again and when they are parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one callback before it is parked.
    pub attempts: u32,
    /// Backoff of the first retry; doubles per attempt.
    pub base: Duration,
    /// The longest backoff (before jitter and `Retry-After`).
    pub cap: Duration,
    /// 4xx answers (other than 410 and 429) tolerated before parking.
    pub max_refusals: u32,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` after `attempt` failed (1-based):
    /// `base·2^(attempt-1)` capped at `cap`, "equal jitter" (half fixed,
    /// half random: `jitter` in [0, 1)), and never less than the partner's
    /// `Retry-After` (itself bounded by [`MAX_RETRY_AFTER`]).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let backoff = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let jittered = backoff / 2 + backoff.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// `Retry-After` as a delay from `now`: delta-seconds or an HTTP date (a
/// date in the past is "now"); `None` when it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Delivered,
    /// 410: the partner turned the endpoint off.
    Gone,
    /// Worth trying again, after at least `retry_after` if the partner said.
    Transient {
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    /// Another 4xx (or a redirect, which is not followed).
    Refused,
}

impl Answer {
    /// The answer of an HTTP status (and its `Retry-After`, if any).
    pub fn of_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            200..=299 => Answer::Delivered,
            410 => Answer::Gone,
            429 => Answer::Transient {
                reason: "too_many_requests",
                retry_after,
            },
            502..=504 => Answer::Transient {
                reason: "unavailable",
                retry_after,
            },
            // Retry-After is only honoured where RFC 9110 gives it that sense.
            500..=599 => Answer::Transient {
                reason: "server_error",
                retry_after: None,
            },
            _ => Answer::Refused,
        }
    }

    /// Bounded label of a failure.
    fn reason(self) -> &'static str {
        match self {
            Answer::Delivered => "delivered",
            Answer::Gone => "gone",
            Answer::Transient { reason, .. } => reason,
            Answer::Refused => "refused",
        }
    }
}

/// The signed POST of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCallback {
    pub webhook_id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Vec<u8>,
}

/// Signs `body` for attempt at `timestamp` (Unix seconds) with `secret`
/// (`whsec_<base64>`).
pub fn sign(
    secret: &str,
    webhook_id: &str,
    timestamp: i64,
    body: Vec<u8>,
) -> Result<SignedCallback, standardwebhooks::WebhookError> {
    let signature = standardwebhooks::Webhook::new(secret)?.sign(webhook_id, timestamp, &body)?;
    Ok(SignedCallback {
        webhook_id: webhook_id.to_owned(),
        timestamp,
        signature,
        body,
    })
}

/// The highest version of a referral's Task its partner has taken (bucket
/// `sends`, key [`wire::key::partner_callback`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackMark {
    pub version: u32,
}

/// Where a partner's callbacks go and how they are signed.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    secret: Option<String>,
}

fn endpoint(dir: &Directory, partner: &PartnerId) -> Option<Endpoint> {
    let settings = dir
        .partners
        .iter()
        .find(|p| p.id == *partner)?
        .referrals
        .as_ref()?;
    Some(Endpoint {
        url: settings.callback_url.clone()?,
        secret: settings.secrets.first().cloned(),
    })
}

/// A version being retried, and when its next attempt is due.
#[derive(Debug, Clone, Copy)]
struct Retrying {
    version: u32,
    next: Instant,
}

/// How long after its due attempt a retrying version still holds back the
/// newer ones: past that its message is taken as gone (another replica has
/// it, or the stream lost it), so a newer version is not held forever.
const HOLD_GRACE: Duration = Duration::from_secs(30);

/// Why a callback parked behind others of a partner known to be down.
const PARTNER_DOWN: &str = "partner_down";

/// The detail of a parked callback's dead letter, before its reason.
const PARKED_PREFIX: &str = "partner callback parked: ";

/// A parked callback: its sequence in DEADLETTER, the event, and why.
struct Parked {
    sequence: u64,
    event: PartnerTaskUpdate,
    reason: String,
}

/// Attempts of one callback in this process.
#[derive(Debug, Default, Clone, Copy)]
struct Tries {
    attempts: u32,
    refusals: u32,
}

/// Posts partner callbacks; shared by the consumer and the probe.
pub struct Callbacks {
    pub(crate) js: jetstream::Context,
    pub(crate) sends: jetstream::kv::Store,
    pub(crate) http: reqwest::Client,
    pub(crate) directory: Live,
    pub(crate) policy: RetryPolicy,
    /// Until the directory bucket is read, the file's directory may lack a
    /// partner's callback URL: callbacks wait rather than go nowhere.
    readiness: nwd_runtime::ops::Readiness,
    tries: Mutex<HashMap<String, Tries>>,
    /// Per referral, the oldest version being retried here and when its
    /// next attempt is due.
    retrying: Mutex<HashMap<ReferralId, Retrying>>,
    /// Parked callbacks per partner (from DEADLETTER).
    parked: Mutex<HashMap<PartnerId, usize>>,
    /// Partners whose parked callbacks are being re-sent now.
    resending: Mutex<HashSet<PartnerId>>,
    /// Partners known to be down (a callback parked unreachable or gone,
    /// and no 2xx since): their new callbacks are parked at once, behind
    /// the others, instead of each retrying against a dead endpoint.
    down: Mutex<HashSet<PartnerId>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const PARKED_BY: Consumer = Consumer {
    service: NAME,
    stream: streams::OUTBOUND,
    durable: consumers::NOTIFIER_PARTNER,
};

/// What became of one attempt, for the consumer.
enum Sent {
    Answered(Answer),
    /// The directory has no callback URL for the partner: nothing to send.
    NoEndpoint,
    /// A callback URL but no usable secret: it cannot be signed.
    Unsigned,
}

impl Callbacks {
    pub fn new(
        js: jetstream::Context,
        sends: jetstream::kv::Store,
        http: reqwest::Client,
        directory: Live,
        policy: RetryPolicy,
        readiness: nwd_runtime::ops::Readiness,
    ) -> Self {
        Self {
            js,
            sends,
            http,
            directory,
            policy,
            readiness,
            tries: Mutex::default(),
            retrying: Mutex::default(),
            parked: Mutex::default(),
            resending: Mutex::default(),
            down: Mutex::default(),
        }
    }

    /// One signed POST of `event`, with a fresh timestamp and signature.
    async fn post(&self, event: &PartnerTaskUpdate) -> Sent {
        let Some(endpoint) = endpoint(&self.directory.get(), &event.partner) else {
            return Sent::NoEndpoint;
        };
        let Some(secret) = endpoint.secret else {
            return Sent::Unsigned;
        };
        let webhook_id = wire::msg_id::partner_task(&event.referral_id, event.version);
        let Ok(body) = serde_json::to_vec(&event.task) else {
            return Sent::Unsigned;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Ok(signed) = sign(&secret, &webhook_id, now, body) else {
            tracing::error!(partner = %event.partner, "the partner's callback secret is not a valid whsec_ secret");
            return Sent::Unsigned;
        };
        let sent = self
            .http
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &signed.webhook_id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                signed.timestamp.to_string(),
            )
            .header(
                standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
                &signed.signature,
            )
            .body(signed.body)
            .send()
            .await;
        match sent {
            Ok(res) => {
                let after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()));
                Sent::Answered(Answer::of_status(res.status().as_u16(), after))
            }
            Err(e) => Sent::Answered(Answer::Transient {
                reason: if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                },
                retry_after: None,
            }),
        }
    }

    /// The highest version already taken by the partner (0: none).
    async fn delivered(&self, referral: &ReferralId) -> Result<u32, kv::KvError> {
        let mark =
            kv::get::<CallbackMark>(&self.sends, &wire::key::partner_callback(referral)).await?;
        Ok(mark.value.map_or(0, |m| m.version))
    }

    async fn mark_delivered(&self, referral: &ReferralId, version: u32) -> Result<(), kv::KvError> {
        kv::cas(
            &self.sends,
            &wire::key::partner_callback(referral),
            |cur: Option<CallbackMark>| match cur {
                Some(m) if m.version >= version => Cas::Keep(()),
                _ => Cas::Write(CallbackMark { version }, ()),
            },
        )
        .await
        .map(|_| ())
    }

    fn done_here(&self, event: &PartnerTaskUpdate) {
        lock(&self.tries).remove(&wire::msg_id::partner_task(
            &event.referral_id,
            event.version,
        ));
        let mut retrying = lock(&self.retrying);
        if retrying.get(&event.referral_id).map(|r| r.version) == Some(event.version) {
            retrying.remove(&event.referral_id);
        }
    }

    /// Handles one delivery of a callback event.
    async fn handle_event(
        self: &Arc<Self>,
        msg: &jetstream::Message,
        event: PartnerTaskUpdate,
    ) -> Outcome {
        let partner = event.partner.to_string();
        if self
            .readiness
            .missing()
            .iter()
            .any(|c| c == nwd_runtime::directory::READY)
        {
            return Outcome::Retry(DIRECTORY_WAIT);
        }
        match self.delivered(&event.referral_id).await {
            Ok(v) if v >= event.version => {
                // Taken already (a redelivery, a replayed parked callback
                // overtaken by a newer version): never posted twice.
                self.done_here(&event);
                count(&partner, "superseded");
                return Outcome::Ack;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(referral = %event.referral_id, error = %e, "cannot read the callback mark; retrying");
                return Outcome::Retry(BUS_RETRY);
            }
        }
        {
            let mut retrying = lock(&self.retrying);
            let now = Instant::now();
            match retrying.get(&event.referral_id) {
                // An older version of this referral goes first: wait until
                // its next attempt is over.
                Some(older) if older.version < event.version && now < older.next + HOLD_GRACE => {
                    let wait = older.next.saturating_duration_since(now) + ORDER_WAIT;
                    return Outcome::Retry(wait);
                }
                // Its own retry, one older than the one held (it goes first
                // now), or a hold past its grace.
                _ => {}
            }
            retrying.insert(
                event.referral_id,
                Retrying {
                    version: event.version,
                    next: now,
                },
            );
        }
        if lock(&self.down).contains(&event.partner)
            && !lock(&self.resending).contains(&event.partner)
            && endpoint(&self.directory.get(), &event.partner).is_some()
        {
            return self.park(msg, &event, PARTNER_DOWN).await;
        }
        let answer = match self.post(&event).await {
            Sent::NoEndpoint => {
                self.done_here(&event);
                count(&partner, "no_callback");
                return Outcome::Ack;
            }
            Sent::Unsigned => return self.park(msg, &event, "unsigned").await,
            Sent::Answered(answer) => answer,
        };
        if answer == Answer::Delivered {
            if let Err(e) = self.mark_delivered(&event.referral_id, event.version).await {
                // The partner has it; without the mark a redelivery posts it
                // again under the same webhook-id, which the partner dedupes.
                tracing::warn!(referral = %event.referral_id, error = %e, "cannot record the delivered callback");
            }
            self.done_here(&event);
            lock(&self.down).remove(&event.partner);
            count(&partner, "delivered");
            tracing::info!(partner = %event.partner, referral = %event.referral_id, version = event.version, "partner callback delivered");
            self.partner_answered(&event.partner);
            return Outcome::Ack;
        }
        metrics::counter!(
            "nwd_partner_callback_failures_total",
            "partner" => partner.clone(),
            "reason" => answer.reason()
        )
        .increment(1);
        let id = wire::msg_id::partner_task(&event.referral_id, event.version);
        let tries = {
            let mut tries = lock(&self.tries);
            let t = tries.entry(id).or_default();
            t.attempts += 1;
            if answer == Answer::Refused {
                t.refusals += 1;
            }
            *t
        };
        let retry_after = match answer {
            Answer::Gone => return self.park(msg, &event, "gone").await,
            Answer::Refused if tries.refusals >= self.policy.max_refusals => {
                return self.park(msg, &event, "refused").await;
            }
            _ if tries.attempts >= self.policy.attempts => {
                return self.park(msg, &event, "unreachable").await;
            }
            Answer::Transient { retry_after, .. } => retry_after,
            _ => None,
        };
        let delay = self
            .policy
            .delay(tries.attempts, retry_after, rand::random::<f64>());
        if let Some(r) = lock(&self.retrying).get_mut(&event.referral_id)
            && r.version == event.version
        {
            r.next = Instant::now() + delay;
        }
        tracing::warn!(
            partner = %event.partner,
            referral = %event.referral_id,
            version = event.version,
            attempt = tries.attempts,
            reason = answer.reason(),
            delay_ms = delay.as_millis() as u64,
            "partner callback failed; retrying"
        );
        Outcome::Retry(delay)
    }

    /// Parks a callback in DEADLETTER (acked once stored) and alerts.
    async fn park(
        self: &Arc<Self>,
        msg: &jetstream::Message,
        event: &PartnerTaskUpdate,
        reason: &'static str,
    ) -> Outcome {
        let detail = format!("{PARKED_PREFIX}{reason}");
        match deadletter::park(&self.js, PARKED_BY, msg, DeadLetterReason::Rejected, detail).await {
            Ok(published) => {
                self.done_here(event);
                let partner = event.partner.to_string();
                if reason == PARTNER_DOWN {
                    tracing::warn!(
                        partner = %event.partner,
                        referral = %event.referral_id,
                        version = event.version,
                        dead_letter = published.sequence,
                        "partner down: callback queued as parked"
                    );
                } else {
                    tracing::error!(
                        partner = %event.partner,
                        referral = %event.referral_id,
                        version = event.version,
                        reason,
                        dead_letter = published.sequence,
                        "partner callback parked for supervisors"
                    );
                }
                if matches!(reason, "unreachable" | "gone") {
                    lock(&self.down).insert(event.partner.clone());
                }
                if !published.duplicate {
                    count(&partner, "parked");
                    // One more, counted here: a recount reads every dead
                    // letter, too slow to repeat per park in a long outage.
                    let parked = {
                        let mut counts = lock(&self.parked);
                        let n = counts.entry(event.partner.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    metrics::gauge!("nwd_partner_callbacks_parked", "partner" => partner.clone())
                        .set(parked as f64);
                }
                // Supervisors were told when the partner went down.
                if !published.duplicate && reason != PARTNER_DOWN {
                    let alert = Envelope::new(OpsAlert::PartnerCallbackParked {
                        partner: event.partner.clone(),
                        referral_id: event.referral_id,
                        version: event.version,
                        reason: reason.to_owned(),
                    });
                    if let Err(e) = self
                        .js
                        .client()
                        .publish(subjects::ops_alert(), alert.to_bytes().into())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot alert supervisors of a parked callback");
                    }
                }
                Outcome::Ack
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot park the partner callback; it will be tried again");
                Outcome::Retry(BUS_RETRY)
            }
        }
    }

    /// After a 2xx from `partner`: its parked callbacks are re-sent.
    fn partner_answered(self: &Arc<Self>, partner: &PartnerId) {
        let has_parked = lock(&self.parked).get(partner).is_some_and(|n| *n > 0);
        if has_parked && lock(&self.resending).insert(partner.clone()) {
            let me = self.clone();
            let partner = partner.clone();
            tokio::spawn(async move {
                me.resend_parked(&partner).await;
                lock(&me.resending).remove(&partner);
            });
        }
    }

    /// Every parked callback, oldest first.
    async fn parked_callbacks(&self) -> Result<Vec<Parked>, deadletter::DeadLetterError> {
        let mut out = Vec::new();
        for listed in deadletter::list(&self.js).await? {
            if listed.consumer != consumers::NOTIFIER_PARTNER {
                continue;
            }
            let dl = match deadletter::get(&self.js, listed.sequence).await {
                Ok(dl) => dl,
                // Re-sent (deleted) since the listing.
                Err(deadletter::DeadLetterError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if let Ok(env) = Envelope::<PartnerTaskUpdate>::from_bytes(&dl.data.payload) {
                out.push(Parked {
                    sequence: listed.sequence,
                    event: env.data,
                    reason: listed
                        .detail
                        .strip_prefix(PARKED_PREFIX)
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Recounts parked callbacks per partner into the gauge (every partner
    /// with a callback URL has a series, 0 when nothing is parked).
    pub async fn refresh_parked(&self) {
        let parked = match self.parked_callbacks().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count parked partner callbacks");
                return;
            }
        };
        let mut counts: HashMap<PartnerId, usize> = HashMap::new();
        for p in self.directory.get().partners.iter() {
            if p.referrals
                .as_ref()
                .is_some_and(|r| r.callback_url.is_some())
            {
                counts.insert(p.id.clone(), 0);
            }
        }
        for p in &parked {
            *counts.entry(p.event.partner.clone()).or_default() += 1;
        }
        for (partner, n) in &counts {
            let partner = partner.to_string();
            metrics::gauge!("nwd_partner_callbacks_parked", "partner" => partner.clone())
                .set(*n as f64);
            // The series an alert rule takes `increase()` of exist from the
            // start at 0, so the first failure is an increase it sees.
            for reason in ["gone", "refused", "unavailable", "connection"] {
                metrics::counter!(
                    "nwd_partner_callback_failures_total",
                    "partner" => partner.clone(),
                    "reason" => reason
                )
                .increment(0);
            }
            metrics::counter!(
                "nwd_partner_callbacks_total",
                "partner" => partner.clone(),
                "outcome" => "parked"
            )
            .increment(0);
        }
        *lock(&self.parked) = counts;
    }

    /// Re-sends `partner`'s parked callbacks in the order they were parked
    /// (`nwd-deadletter replay`: back into OUTBOUND, then deleted).
    async fn resend_parked(&self, partner: &PartnerId) {
        match self.parked_callbacks().await {
            Ok(parked) => {
                for Parked { sequence, .. } in
                    parked.into_iter().filter(|p| p.event.partner == *partner)
                {
                    if let Err(e) = deadletter::replay(&self.js, sequence).await {
                        tracing::warn!(%partner, sequence, error = %e, "cannot re-send a parked callback");
                        break;
                    }
                    tracing::info!(%partner, sequence, "parked partner callback re-sent");
                }
            }
            Err(e) => tracing::warn!(%partner, error = %e, "cannot read parked callbacks"),
        }
        self.refresh_parked().await;
    }

    /// Tries the oldest parked callback of every partner that has some,
    /// once: if the partner takes it, the rest are re-sent. So a partner
    /// that comes back is caught up without waiting for a new referral.
    async fn probe(self: &Arc<Self>) {
        let parked = match self.parked_callbacks().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read parked callbacks to probe");
                return;
            }
        };
        let mut probed = HashSet::new();
        for Parked {
            sequence,
            event,
            reason,
        } in parked
        {
            let partner = event.partner.clone();
            // Refused or unsigned ones wait for a supervisor (a fixed
            // directory, then a replay): they say nothing about whether
            // the partner is up.
            if probed.contains(&partner)
                || lock(&self.resending).contains(&partner)
                || matches!(reason.as_str(), "refused" | "unsigned")
            {
                continue;
            }
            let stale = match self.delivered(&event.referral_id).await {
                Ok(v) => v >= event.version,
                Err(_) => continue,
            };
            if stale {
                // The partner has a newer version: never post an older one.
                self.delete_parked(sequence).await;
                continue;
            }
            probed.insert(partner.clone());
            if let Sent::Answered(Answer::Delivered) = self.post(&event).await {
                if let Err(e) = self.mark_delivered(&event.referral_id, event.version).await {
                    tracing::warn!(referral = %event.referral_id, error = %e, "cannot record the delivered callback");
                }
                lock(&self.down).remove(&partner);
                count(&partner.to_string(), "delivered");
                self.delete_parked(sequence).await;
                tracing::info!(%partner, "partner answers again; re-sending its parked callbacks");
                if lock(&self.resending).insert(partner.clone()) {
                    self.resend_parked(&partner).await;
                    lock(&self.resending).remove(&partner);
                }
            }
        }
        self.refresh_parked().await;
    }

    /// Deletes a parked callback that needs no re-sending. If that fails, a
    /// later replay finds it superseded by the mark: not posted again.
    async fn delete_parked(&self, sequence: u64) {
        if let Ok(stream) = self.js.get_stream(streams::DEADLETTER).await
            && let Err(e) = stream.delete_message(sequence).await
        {
            tracing::warn!(sequence, error = %e, "cannot delete a parked callback");
        }
    }
}

fn count(partner: &str, outcome: &'static str) {
    metrics::counter!(
        "nwd_partner_callbacks_total",
        "partner" => partner.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// The `notifier-partner` consumer's handler.
pub struct PartnerHandler(pub Arc<Callbacks>);

impl Handler for PartnerHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        match Envelope::<PartnerTaskUpdate>::from_bytes(&msg.payload) {
            Ok(env) => self.0.handle_event(msg, env.data).await,
            Err(_) => Outcome::Reject("undecodable"),
        }
    }
}

/// Counts parked callbacks at start, then probes partners with parked
/// callbacks every `every` until `shutdown`.
pub async fn probe_parked(callbacks: Arc<Callbacks>, every: Duration, shutdown: CancellationToken) {
    callbacks.refresh_parked().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let any = lock(&callbacks.parked).values().any(|n| *n > 0);
        if any {
            callbacks.probe().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 6,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(60),
        max_refusals: 3,
    };

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        assert_eq!(POLICY.delay(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(POLICY.delay(1, None, 0.999_999).as_millis(), 999);
        assert_eq!(POLICY.delay(2, None, 0.0), Duration::from_secs(1));
        assert_eq!(POLICY.delay(3, None, 0.0), Duration::from_secs(2));
        // Capped at 60 s before jitter: 30..60 s, however many attempts.
        assert_eq!(POLICY.delay(12, None, 0.0), Duration::from_secs(30));
        assert_eq!(POLICY.delay(200, None, 1.0), Duration::from_secs(60));
        for attempt in 1..40 {
            for jitter in [0.0, 0.3, 0.7, 1.0] {
                let d = POLICY.delay(attempt, None, jitter);
                assert!(d <= POLICY.cap, "{attempt} {jitter} {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        assert_eq!(
            POLICY.delay(1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        // A shorter Retry-After does not shorten the backoff.
        assert_eq!(
            POLICY.delay(4, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            POLICY.delay(1, Some(Duration::from_secs(86_400)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_against_a_fixed_clock() {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 10:00:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        let ra = Some(Duration::from_secs(3));
        assert_eq!(Answer::of_status(200, None), Answer::Delivered);
        assert_eq!(Answer::of_status(204, None), Answer::Delivered);
        assert_eq!(Answer::of_status(410, ra), Answer::Gone);
        for s in [429, 502, 503, 504] {
            assert!(
                matches!(Answer::of_status(s, ra), Answer::Transient { retry_after, .. } if retry_after == ra),
                "{s}"
            );
        }
        assert_eq!(
            Answer::of_status(500, ra),
            Answer::Transient {
                reason: "server_error",
                retry_after: None
            }
        );
        for s in [301, 400, 401, 403, 404, 413, 422] {
            assert_eq!(Answer::of_status(s, None), Answer::Refused, "{s}");
        }
    }

    #[test]
    fn a_signature_verifies_with_the_reference_crate_and_changes_with_the_timestamp() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let a = sign(secret, "task:x:2", 1_700_000_000, b"{\"a\":1}".to_vec()).unwrap();
        let b = sign(secret, "task:x:2", 1_700_000_001, b"{\"a\":1}".to_vec()).unwrap();
        assert_ne!(a.signature, b.signature);
        assert_eq!(a.webhook_id, b.webhook_id);
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        assert_eq!(
            wh.sign("task:x:2", 1_700_000_000, b"{\"a\":1}").unwrap(),
            a.signature
        );
        assert!(sign("not base64 !", "id", 1, b"{}".to_vec()).is_err());
    }
}
