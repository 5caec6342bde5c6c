//! Server-side login sessions in the `sessions` bucket.
//!
//! The `nwd_session` cookie carries only a random session id (256 bits,
//! base64url). The bucket key is `base64url(HMAC-SHA256(session key, id))`,
//! so the bucket never holds a usable cookie, and whoever can write the
//! bucket still cannot mint a session without the key. The value says whose
//! session it is and when it ends.
//!
//! A session ends when it expires (the record's `expires_at`, and the
//! bucket's max age as a backstop), when its counsellor logs out (the entry
//! is deleted at once), or when the counsellor leaves the directory. Open
//! sockets of an ended session are closed: see [`crate::revocation`].

use async_nats::jetstream::kv::{self, Store};
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use nwd_proto::CounsellorId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

/// Name of the session cookie.
pub const COOKIE: &str = "nwd_session";
/// How long a login lasts unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::hours(12);

/// Random bytes in a session id.
const ID_BYTES: usize = 32;
/// Length of a session id in base64url without padding.
const ID_CHARS: usize = 43;

type HmacSha256 = Hmac<Sha256>;

/// What the bucket holds for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub counsellor: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// An authenticated session: its bucket key (how sockets are told apart for
/// revocation) and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub key: String,
    pub counsellor: CounsellorId,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read the session: {0}")]
    Read(#[from] kv::EntryError),
    #[error("cannot create the session: {0}")]
    Create(#[from] kv::CreateError),
    #[error("cannot delete the session: {0}")]
    Delete(#[from] kv::DeleteError),
}

/// Opens, finds and ends sessions with one key and one lifetime.
#[derive(Clone)]
pub struct Sessions {
    keyed: HmacSha256,
    ttl: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Fails only for keys HMAC cannot take (none, for HMAC-SHA256).
    pub fn new(key: &[u8], ttl: Duration) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self {
            keyed: HmacSha256::new_from_slice(key)?,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bucket key of a session id, or `None` for anything that is not
    /// shaped like one (so junk cookies never reach the bucket).
    pub fn key_of(&self, id: &str) -> Option<String> {
        let well_formed = id.len() == ID_CHARS
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return None;
        }
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Opens a session for `who`; returns the cookie's session id and the login.
    pub async fn open(
        &self,
        store: &Store,
        who: &CounsellorId,
        now: OffsetDateTime,
    ) -> Result<(String, Login), SessionError> {
        let mut bytes = [0u8; ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = URL_SAFE_NO_PAD.encode(bytes);
        // `id` is well formed by construction.
        let key = self.key_of(&id).unwrap_or_default();
        let record = Record {
            counsellor: who.clone(),
            created_at: now,
            expires_at: now + self.ttl,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        // `create`: a session id is never reused, not even by a collision.
        store.create(&key, value.into()).await?;
        Ok((
            id,
            Login {
                key,
                counsellor: record.counsellor,
                expires_at: record.expires_at,
            },
        ))
    }

    /// The live session of a cookie's session id: `None` if unknown,
    /// deleted, unreadable or expired.
    pub async fn find(
        &self,
        store: &Store,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Login>, SessionError> {
        let Some(key) = self.key_of(id) else {
            return Ok(None);
        };
        self.find_key(store, key, now).await
    }

    /// The live session stored under bucket key `key`.
    pub async fn find_key(
        &self,
        store: &Store,
        key: String,
        now: OffsetDateTime,
    ) -> Result<Option<Login>, SessionError> {
        let Some(bytes) = store.get(&key).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
            tracing::warn!("unreadable session record; treating it as ended");
            return Ok(None);
        };
        if now >= record.expires_at {
            return Ok(None);
        }
        Ok(Some(Login {
            key,
            counsellor: record.counsellor,
            expires_at: record.expires_at,
        }))
    }

    /// Ends the session of a cookie's session id at once (a no-op for an
    /// unknown one). Returns the bucket key it had.
    pub async fn end(&self, store: &Store, id: &str) -> Result<Option<String>, SessionError> {
        let Some(key) = self.key_of(id) else {
            return Ok(None);
        };
        // A delete leaves a marker that every dashboard's watch sees.
        store.delete(&key).await?;
        Ok(Some(key))
    }
}

/// The session id in the request's cookies, if any.
pub fn from_headers(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a fresh login.
pub fn set_cookie(id: &str, ttl: Duration, secure: bool) -> HeaderValue {
    let max_age = ttl.whole_seconds();
    let secure = if secure { "; Secure" } else { "" };
    header_value(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    header_value(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
}

fn header_value(s: &str) -> HeaderValue {
    // Session ids are base64url, so this never falls back.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(key: &[u8]) -> Sessions {
        Sessions::new(key, DEFAULT_TTL).unwrap()
    }

    #[test]
    fn only_well_formed_ids_have_a_key_and_the_key_depends_on_the_secret() {
        let s = sessions(b"0123456789abcdef0123456789abcdef");
        let id = URL_SAFE_NO_PAD.encode([7u8; ID_BYTES]);
        let key = s.key_of(&id).unwrap();
        assert_ne!(key, id, "the bucket never holds the cookie's id");
        assert_eq!(s.key_of(&id), Some(key.clone()));
        let other = sessions(b"fedcba9876543210fedcba9876543210");
        assert_ne!(other.key_of(&id), Some(key));
        for junk in [
            "",
            "v1.ana.1.AAAA",
            &id[1..],
            &format!("{id}A"),
            &format!("{}!", &id[1..]),
        ] {
            assert_eq!(s.key_of(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others_and_flags_are_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; nwd_session=tok; b=2"),
        );
        assert_eq!(from_headers(&h), Some("tok"));
        let c = set_cookie("tok", DEFAULT_TTL, true);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(c.contains("Max-Age=43200"));
        assert!(
            !set_cookie("tok", DEFAULT_TTL, false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert!(clear_cookie(true).to_str().unwrap().contains("Secure"));
    }
}
