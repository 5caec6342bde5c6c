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
use nwd_runtime::kv::KvError;
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

/// What a token opens.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Open(ChatSessionRecord),
    Expired,
    Unknown,
}

/// Issues and checks tokens. `Debug` never shows the key.
#[derive(Clone)]
pub struct Tokens {
    mac: Hmac<Sha256>,
    ttl: time::Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(***)")
    }
}

impl Tokens {
    pub fn new(key: &[u8], ttl: time::Duration) -> Result<Self, TokenError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(TokenError::WeakKey);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| TokenError::WeakKey)?;
        mac.update(b"nwd.chat.token.v1\0");
        Ok(Self { mac, ttl })
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

    #[test]
    fn a_short_key_is_refused_and_keys_never_contain_the_token() {
        assert!(Tokens::new(b"short", time::Duration::HOUR).is_err());
        let t = Tokens::new(&[7u8; 32], time::Duration::HOUR).unwrap();
        let k = t.key("abc");
        assert!(!k.contains("abc"));
        assert_eq!(k, t.key("abc"), "stable");
        assert_ne!(k, t.key("abd"));
        let other = Tokens::new(&[8u8; 32], time::Duration::HOUR).unwrap();
        assert_ne!(k, other.key("abc"), "keyed");
        assert!(!format!("{t:?}").contains('7'));
    }
}
