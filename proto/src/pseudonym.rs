//! Keyed pseudonyms of addresses, for KV keys and consumer lanes.
//!
//! A plain hash of a phone number is no pseudonym: there are few enough
//! numbers to hash them all. The pseudonym is HMAC-SHA256 keyed with a
//! secret from configuration (`NWD_PSEUDONYM_KEY`), so without the key it
//! cannot be reversed or even recomputed. Changing the key changes every
//! pseudonym: open threads are then not found, and each sender's next
//! message opens a new contact (nothing is lost).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::address::Address;
use crate::events::InboundSms;

/// The key is shorter than [`Pseudonymiser::MIN_KEY_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the pseudonym key must be at least {} bytes (e.g. 64 hex characters from a random source)",
    Pseudonymiser::MIN_KEY_BYTES
)]
pub struct PseudonymKeyError;

/// Computes keyed pseudonyms. `Debug` never shows the key.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
}

/// Domain separation: the same key used elsewhere yields other values.
const CONTEXT: &[u8] = b"nwd.pseudonym.v1\0";

impl Pseudonymiser {
    /// Shortest accepted key.
    pub const MIN_KEY_BYTES: usize = 32;

    pub fn new(key: &[u8]) -> Result<Self, PseudonymKeyError> {
        if key.len() < Self::MIN_KEY_BYTES {
            return Err(PseudonymKeyError);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| PseudonymKeyError)?;
        mac.update(CONTEXT);
        Ok(Self { mac })
    }

    /// The pseudonym of `address`: 32 hex characters (128 bits of HMAC-SHA256).
    pub fn key(&self, address: &Address) -> String {
        let mut mac = self.mac.clone();
        mac.update(address.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// KV key of a sender's thread in the `threads` bucket: `sms.<pseudonym>`.
    pub fn thread_key(&self, sender: &Address) -> String {
        crate::wire::key::sms_thread(&self.key(sender))
    }

    /// KV key of a web-chat session's thread: `chat.<pseudonym of the
    /// session id>`. A chat session is one contact until it is resolved.
    pub fn chat_thread_key(&self, session: &crate::ids::ChatSessionId) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"chat:");
        mac.update(session.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        crate::wire::key::chat_thread(&hex)
    }

    /// The thread key of an inbound message. A message without a sender
    /// (never seen from Twilio, but a signed one is still taken) is its own
    /// thread, so that strangers are never joined into one contact.
    pub fn inbound_thread_key(&self, sms: &InboundSms) -> String {
        if sms.from.is_empty() {
            crate::wire::key::sms_thread(&format!("nosender.{}", sms.message_sid))
        } else {
            self.thread_key(&sms.from)
        }
    }
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymiser(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    const KEY: &[u8] = b"test-pseudonym-key-0123456789abcdef";

    #[test]
    fn short_keys_are_refused() {
        assert!(Pseudonymiser::new(b"").is_err());
        assert!(Pseudonymiser::new(&[7; 31]).is_err());
        assert!(Pseudonymiser::new(&[7; 32]).is_ok());
    }

    #[test]
    fn pseudonyms_are_keyed_stable_and_hide_the_number() {
        let p = Pseudonymiser::new(KEY).unwrap();
        let maria = Address::parse("+15005550142");
        let k = p.key(&maria);
        assert_eq!(k.len(), 32);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, p.key(&Address::parse("+15005550142")), "stable");
        assert!(!k.contains("5550142"));
        // The old, unkeyed form: truncated SHA-256 of the number.
        let unkeyed: String = sha2::Sha256::digest(b"+15005550142")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(k, unkeyed);
        let other = Pseudonymiser::new(b"another-key-of-at-least-32-bytes!!").unwrap();
        assert_ne!(k, other.key(&maria), "another key, another pseudonym");
        assert_ne!(k, p.key(&Address::parse("whatsapp:+15005550142")));
        assert_eq!(p.thread_key(&maria), format!("sms.{k}"));
        assert!(!format!("{p:?}").contains("test-pseudonym"));
    }
}
