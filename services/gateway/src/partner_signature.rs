//! Standard Webhooks verification of a partner's requests (ADR 0013).
//!
//! The HMAC is the reference crate's (`standardwebhooks::Webhook::sign`);
//! what is ours is the clock (injected, so tests and the shared vectors
//! can fix "now"; the crate's own `verify` reads the system clock), several
//! secrets at once (rotation), and a strict reading of the signature
//! header: an entry that is not `version,signature` refuses the request,
//! as the reference Python library does.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

pub use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

/// How far the signed timestamp may be from now, either way (inclusive).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Longest `webhook-id` taken (it is stored and names the referral).
pub const MAX_WEBHOOK_ID_LEN: usize = 256;

/// Why a request's signature is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the webhook-id, webhook-timestamp or webhook-signature header is missing or empty")]
    Missing,
    #[error("the webhook-id, webhook-timestamp or webhook-signature header is malformed")]
    Malformed,
    #[error("the webhook-timestamp is more than 5 minutes from now")]
    Stale,
    #[error("no signature matches a secret")]
    NoMatch,
}

/// The Standard Webhooks headers of one request, read but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    /// The `v1` entries' signatures (base64), in order.
    v1: Vec<&'a str>,
}

impl<'a> Signed<'a> {
    /// Reads the three headers, and checks the timestamp against `now`
    /// (unix seconds).
    pub fn read(headers: &'a HeaderMap, now: i64) -> Result<Self, SignatureError> {
        let header = |name: &str| -> Result<&'a str, SignatureError> {
            let value = headers.get(name).ok_or(SignatureError::Missing)?;
            let value = value.to_str().map_err(|_| SignatureError::Malformed)?;
            if value.is_empty() {
                Err(SignatureError::Missing)
            } else {
                Ok(value)
            }
        };
        let id = header(HEADER_WEBHOOK_ID)?;
        let timestamp = header(HEADER_WEBHOOK_TIMESTAMP)?;
        let signature = header(HEADER_WEBHOOK_SIGNATURE)?;
        if id.len() > MAX_WEBHOOK_ID_LEN
            || id.contains('.')
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SignatureError::Malformed);
        }
        let timestamp = timestamp
            .parse::<i64>()
            .map_err(|_| SignatureError::Malformed)?;
        let mut v1 = Vec::new();
        for entry in signature.split(' ') {
            let (version, value) = entry.split_once(',').ok_or(SignatureError::Malformed)?;
            if version.is_empty() || value.is_empty() || value.contains(',') {
                return Err(SignatureError::Malformed);
            }
            if version == "v1" {
                v1.push(value);
            }
        }
        if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        Ok(Self { id, timestamp, v1 })
    }

    /// Whether one of the `v1` signatures is `secret`'s over `body`. A
    /// secret that does not decode (or a body that is not UTF-8, which the
    /// reference crate refuses to sign) matches nothing.
    pub fn matches(&self, secret: &str, body: &[u8]) -> bool {
        let Ok(webhook) = standardwebhooks::Webhook::new(secret) else {
            return false;
        };
        let Ok(expected) = webhook.sign(self.id, self.timestamp, body) else {
            return false;
        };
        let Some((_, expected)) = expected.split_once(',') else {
            return false;
        };
        // Every entry is compared (no early exit on the first match).
        self.v1.iter().fold(false, |found, given| {
            found | bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
        })
    }

    /// Whether any of `secrets` signed `body` (several are active while a
    /// partner rotates).
    pub fn matches_any<'s>(
        &self,
        secrets: impl IntoIterator<Item = &'s String>,
        body: &[u8],
    ) -> bool {
        secrets.into_iter().any(|secret| self.matches(secret, body))
    }
}

/// Verifies `body` against `secrets` at `now` (unix seconds).
pub fn verify(
    secrets: &[String],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let signed = Signed::read(headers, now)?;
    if signed.matches_any(secrets, body) {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The three headers for `body` signed with `secret` (for partners' test
/// tools, the demo script's test and the bench).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    standardwebhooks::Webhook::new(secret)
        .ok()?
        .sign(id, timestamp, body)
        .ok()
}
