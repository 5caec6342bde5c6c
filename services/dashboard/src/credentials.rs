//! Password checks against the directory's argon2id hashes.
//!
//! An unknown user is checked against a dummy hash with the same cost, so
//! the answer (and roughly its timing) is the same as for a wrong password.
//! Checks run on the blocking pool, a few at a time, so a burst of logins
//! cannot starve the websockets of CPU.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use nwd_proto::CounsellorId;
use nwd_proto::directory::Directory;
use tokio::sync::Semaphore;

/// Concurrent argon2 checks.
const CONCURRENT_CHECKS: usize = 2;

/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

pub struct Credentials {
    dummy_hash: Arc<str>,
    permits: Semaphore,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

impl Credentials {
    pub async fn new() -> Self {
        let dummy = tokio::task::spawn_blocking(|| {
            let salt = SaltString::from_b64("bm8td3JvbmctZG9vci1kdW1teQ").ok()?;
            Argon2::default()
                .hash_password(b"not a password of anyone", &salt)
                .ok()
                .map(|h| h.to_string())
        })
        .await
        .ok()
        .flatten()
        // Never expected; an unparsable dummy still fails every unknown user.
        .unwrap_or_default();
        Self {
            dummy_hash: dummy.into(),
            permits: Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    /// The staff id whose password this is; `None` for an unknown user or
    /// a wrong password alike.
    pub async fn check(
        &self,
        directory: &Directory,
        username: &str,
        password: &str,
    ) -> Option<CounsellorId> {
        // An over-long password is treated like an unknown user: same work, same answer.
        let staff = CounsellorId::parse(username.trim())
            .ok()
            .and_then(|id| directory.staff(&id))
            .filter(|_| password.len() <= MAX_PASSWORD_BYTES);
        let hash: Arc<str> = staff
            .map(|s| Arc::from(s.password_hash.as_str()))
            .unwrap_or_else(|| self.dummy_hash.clone());
        let password: Vec<u8> = password.bytes().take(MAX_PASSWORD_BYTES).collect();
        let _permit = self.permits.acquire().await.ok()?;
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .and_then(|h| Argon2::default().verify_password(&password, &h))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        match staff {
            Some(s) if matches => Some(s.id.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn demo_logins_check_and_wrong_ones_do_not() {
        let dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
        let c = Credentials::new().await;
        assert_eq!(
            c.check(&dir, "ana", "ana-demo").await,
            Some(CounsellorId::parse("ana").unwrap())
        );
        assert_eq!(c.check(&dir, "ana", "ben-demo").await, None);
        assert_eq!(c.check(&dir, "nobody", "ana-demo").await, None);
        assert_eq!(c.check(&dir, "Not A Slug!", "x").await, None);
        let long = format!("ana-demo{}", " ".repeat(MAX_PASSWORD_BYTES));
        assert_eq!(c.check(&dir, "ana", &long).await, None);
        assert_eq!(
            c.check(&dir, "sam", "sam-demo").await,
            Some(CounsellorId::parse("sam").unwrap())
        );
    }
}
