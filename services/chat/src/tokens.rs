//! Session tokens: 256 random bits, given to the page once and stored by
//! the line only as a keyed hash (HMAC-SHA256 with `NWD_CHAT_TOKEN_KEY`) in
//! the `chat_sessions` bucket. Reading the bucket does not give a token
//! that opens a session; a token not in the bucket (forged, or expired and
//! forgotten) opens nothing.

use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use nwd_proto::ChatSessionId;
use nwd_proto::PartnerId;
use nwd_proto::chat::ChatSessionRecord;
use nwd_proto::wire;
use nwd_runtime::kv::{Cas, KvError};
use rand::RngCore;
use sha2::Sha256;
use time::OffsetDateTime;

/// Shortest accepted token key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the chat token key must be at least {MIN_KEY_BYTES} bytes")]
    WeakKey,
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("cannot store the session: {0}")]
    Create(#[from] kv::CreateError),
    #[error("cannot delete the session: {0}")]
    Delete(#[from] kv::DeleteError),
}

/// What activity does to a session's expiry.
#[derive(Debug, PartialEq)]
enum Extension {
    /// Expired or ended: stays so.
    Gone,
    /// Not worth a write (moves less than a step, or at the cap).
    Same(ChatSessionRecord),
    To(ChatSessionRecord),
}

/// What a token opens.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Open(ChatSessionRecord),
    Expired,
    Unknown,
}

/// Issues and checks tokens. `Debug` never shows the key.
///
/// Expiry slides: a session lasts `ttl` after its last activity (a resume,
/// a stored message), never more than `max` after it started; once past
/// its expiry a token stays refused (nothing extends an expired session).
#[derive(Clone)]
pub struct Tokens {
    mac: Hmac<Sha256>,
    ttl: time::Duration,
    max: time::Duration,
}

/// The least a sliding extension moves the expiry: fewer bucket writes
/// than one per message.
const EXTEND_STEP: time::Duration = time::Duration::minutes(1);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(***)")
    }
}

impl Tokens {
    /// `ttl`: how long a session lasts after its last activity; `max`: the
    /// most it lasts from its start.
    pub fn new(key: &[u8], ttl: time::Duration, max: time::Duration) -> Result<Self, TokenError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(TokenError::WeakKey);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| TokenError::WeakKey)?;
        mac.update(b"nwd.chat.token.v1\0");
        Ok(Self {
            mac,
            ttl: ttl.min(max),
            max,
        })
    }

    pub fn ttl(&self) -> time::Duration {
        self.ttl
    }

    /// The bucket key of `token`. Any string is hashed: a forged token
    /// simply names no session.
    pub fn key(&self, token: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        wire::key::chat_session(&hex)
    }

    /// A new session for `door`: its token (only ever given to the page)
    /// and its record, stored under the token's keyed hash.
    pub async fn open(
        &self,
        store: &kv::Store,
        door: Option<PartnerId>,
        now: OffsetDateTime,
    ) -> Result<(String, ChatSessionRecord), TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let record = ChatSessionRecord {
            session: ChatSessionId::new(),
            door,
            created_at: now,
            expires_at: now + self.ttl,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        store.create(self.key(&token), value.into()).await?;
        Ok((token, record))
    }

    /// What `token` opens at `now`.
    pub async fn find(
        &self,
        store: &kv::Store,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<Found, TokenError> {
        let found = nwd_runtime::kv::get::<ChatSessionRecord>(store, &self.key(token)).await?;
        Ok(match found.value {
            None => Found::Unknown,
            Some(r) if r.expires_at <= now => Found::Expired,
            Some(r) => Found::Open(r),
        })
    }

    /// Activity in `token`'s session at `now`: its expiry moves to `ttl`
    /// from now (at most `max` from its start). An expired or ended session
    /// stays so. The record as kept, `None` if it opens nothing.
    pub async fn extend(
        &self,
        store: &kv::Store,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ChatSessionRecord>, TokenError> {
        let (kept, _) = nwd_runtime::kv::cas(store, &self.key(token), |current| {
            match self.extended(current, now) {
                Extension::Gone => Cas::Keep(None),
                Extension::Same(r) => Cas::Keep(Some(r)),
                Extension::To(r) => Cas::Write(r.clone(), Some(r)),
            }
        })
        .await?;
        Ok(kept)
    }

    /// What activity at `now` does to a session record (pure).
    fn extended(&self, current: Option<ChatSessionRecord>, now: OffsetDateTime) -> Extension {
        let Some(mut r) = current.filter(|r| r.expires_at > now) else {
            return Extension::Gone;
        };
        let until = (now + self.ttl).min(r.created_at + self.max);
        if until - r.expires_at < EXTEND_STEP.min(self.ttl / 10) {
            return Extension::Same(r);
        }
        r.expires_at = until;
        Extension::To(r)
    }

    /// Ends `token`'s session (quick exit, expiry): the token opens nothing
    /// afterwards.
    pub async fn end(&self, store: &kv::Store, token: &str) -> Result<(), TokenError> {
        store.delete(self.key(token)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: time::Duration = time::Duration::DAY;

    #[test]
    fn a_short_key_is_refused_and_keys_never_contain_the_token() {
        assert!(Tokens::new(b"short", time::Duration::HOUR, DAY).is_err());
        let t = Tokens::new(&[7u8; 32], time::Duration::HOUR, DAY).unwrap();
        let k = t.key("abc");
        assert!(!k.contains("abc"));
        assert_eq!(k, t.key("abc"), "stable");
        assert_ne!(k, t.key("abd"));
        let other = Tokens::new(&[8u8; 32], time::Duration::HOUR, DAY).unwrap();
        assert_ne!(k, other.key("abc"), "keyed");
        assert!(!format!("{t:?}").contains('7'));
    }

    #[test]
    fn activity_slides_the_expiry_up_to_the_cap_and_an_expired_session_stays_expired() {
        let hours = time::Duration::hours;
        let t = Tokens::new(&[7u8; 32], hours(4), hours(12)).unwrap();
        let start = OffsetDateTime::now_utc();
        let record = ChatSessionRecord {
            session: ChatSessionId::new(),
            door: None,
            created_at: start,
            expires_at: start + hours(4),
        };
        // Three hours in: four more hours from now.
        let Extension::To(r) = t.extended(Some(record.clone()), start + hours(3)) else {
            panic!("extended")
        };
        assert_eq!(r.expires_at, start + hours(7));
        // Seconds later: not worth a write.
        assert!(matches!(
            t.extended(
                Some(r.clone()),
                start + hours(3) + time::Duration::seconds(5)
            ),
            Extension::Same(_)
        ));
        // Never past the cap, however active.
        let Extension::To(r) = t.extended(Some(r), start + hours(6)) else {
            panic!("extended again")
        };
        assert_eq!(r.expires_at, start + hours(10));
        let Extension::To(capped) = t.extended(Some(r), start + hours(9)) else {
            panic!("extended to the cap")
        };
        assert_eq!(capped.expires_at, start + hours(12));
        assert!(matches!(
            t.extended(Some(capped.clone()), start + hours(11)),
            Extension::Same(_)
        ));
        // Expired (or ended) stays so.
        assert_eq!(t.extended(Some(capped), start + hours(12)), Extension::Gone);
        assert_eq!(t.extended(Some(record), start + hours(5)), Extension::Gone);
        assert_eq!(t.extended(None, start), Extension::Gone);
        // The sliding window is never longer than the cap.
        let short = Tokens::new(&[7u8; 32], hours(30), hours(12)).unwrap();
        assert_eq!(short.ttl(), hours(12));
    }
}
