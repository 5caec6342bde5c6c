//! Stateless signed session tokens, carried in the `nwd_session` cookie:
//! `v1.{counsellor}.{expiry_unix}.{base64url(HMAC-SHA256(key, "v1.{counsellor}.{expiry_unix}"))}`.
//! Nothing is stored, so a session survives a dashboard restart; it ends
//! when it expires (12 h) or the browser drops the cookie (logout).

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use nwd_proto::CounsellorId;
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

/// Name of the session cookie.
pub const COOKIE: &str = "nwd_session";
/// How long a login lasts.
pub const TTL: Duration = Duration::hours(12);

const VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// Issues and verifies session tokens with one key.
#[derive(Clone)]
pub struct Sessions {
    keyed: HmacSha256,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(***)")
    }
}

impl Sessions {
    /// Fails only for keys HMAC cannot take (none, for HMAC-SHA256).
    pub fn new(key: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self {
            keyed: HmacSha256::new_from_slice(key)?,
        })
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for `who`, valid for [`TTL`] from `now`.
    pub fn issue(&self, who: &CounsellorId, now: OffsetDateTime) -> String {
        self.issue_until(who, (now + TTL).unix_timestamp())
    }

    /// A token expiring at `expiry` (unix seconds).
    pub fn issue_until(&self, who: &CounsellorId, expiry: i64) -> String {
        let payload = format!("{VERSION}.{who}.{expiry}");
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The counsellor of a valid, unexpired token. The signature is checked
    /// in constant time before anything else in the token is trusted.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Option<CounsellorId> {
        let (payload, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(payload).verify_slice(&sig).ok()?;
        let mut parts = payload.split('.');
        let (version, who, expiry) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || parts.next().is_some() {
            return None;
        }
        let expiry: i64 = expiry.parse().ok()?;
        if now.unix_timestamp() >= expiry {
            return None;
        }
        CounsellorId::parse(who).ok()
    }
}

/// The session token in the request's cookies, if any.
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
pub fn set_cookie(token: &str, secure: bool) -> HeaderValue {
    let max_age = TTL.whole_seconds();
    let secure = if secure { "; Secure" } else { "" };
    header_value(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
}

/// `Set-Cookie` that removes the session.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    header_value(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"
    ))
}

fn header_value(s: &str) -> HeaderValue {
    // Tokens are ASCII (slug, digits, base64url), so this never falls back.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-24 03:00 UTC);

    fn ana() -> CounsellorId {
        CounsellorId::parse("ana").unwrap()
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let s = Sessions::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = s.issue(&ana(), NOW);
        assert!(t.starts_with("v1.ana."));
        assert_eq!(s.verify(&t, NOW), Some(ana()));
        assert_eq!(s.verify(&t, NOW + Duration::hours(11)), Some(ana()));
        assert_eq!(s.verify(&t, NOW + TTL), None);
    }

    #[test]
    fn tampering_or_another_key_is_rejected() {
        let s = Sessions::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = s.issue(&ana(), NOW);
        let other = Sessions::new(b"fedcba9876543210fedcba9876543210").unwrap();
        assert_eq!(other.verify(&t, NOW), None);
        let forged = t.replacen("v1.ana.", "v1.sam.", 1);
        assert_eq!(s.verify(&forged, NOW), None);
        let later = s.issue(&ana(), NOW + Duration::days(30));
        let (_, sig) = later.rsplit_once('.').unwrap();
        let (payload, _) = t.rsplit_once('.').unwrap();
        assert_eq!(s.verify(&format!("{payload}.{sig}"), NOW), None);
        for junk in ["", ".", "v1", "v1.ana.1.", "v1.ana.x.AAAA", "a.b.c.d.e"] {
            assert_eq!(s.verify(junk, NOW), None, "{junk}");
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
        let c = set_cookie("tok", true);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(
            !set_cookie("tok", false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }
}
