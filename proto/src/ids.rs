//! Identifier newtypes. Parse at the edge, trust inside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("not a valid ULID")]
    NotUlid,
    #[error("identifier must be 1-64 characters of [a-z0-9-]")]
    BadSlug,
    #[error("not a valid Twilio SID")]
    BadSid,
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(ulid::Ulid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(ulid::Ulid::new())
            }
            /// The underlying ULID.
            pub fn ulid(&self) -> ulid::Ulid {
                self.0
            }
            /// Builds an id from a ULID, e.g. one derived deterministically.
            /// A deterministic id derived from a name (e.g. `<contact>:safety`),
            /// so a side effect repeated after a crash carries the same id.
            pub fn derived(name: &str) -> Self {
                use sha2::Digest;
                let h = sha2::Sha256::digest(name.as_bytes());
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[..16]);
                // Keep the timestamp bits in range; the id only needs to be stable.
                b[0] &= 0x7f;
                Self(ulid::Ulid::from_bytes(b))
            }

            pub fn from_ulid(u: ulid::Ulid) -> Self {
                Self(u)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ulid::Ulid::from_string(s).map(Self).map_err(|_| IdError::NotUlid)
            }
        }
    };
}

ulid_id!(
    /// One contact: a conversation with one person, from first message to resolution.
    ContactId
);
ulid_id!(
    /// One partner referral. Derived from the partner and the referral's
    /// `webhook-id` ([`crate::wire::referral_id`]), so a replay maps to the
    /// same referral without any state.
    ReferralId
);
ulid_id!(
    /// One message from a person, whatever the channel.
    MessageId
);
ulid_id!(
    /// One outbound message of ours (SMS reply, safety message, notification).
    /// It is the dedupe key of the send: the same id is never sent twice.
    OutboundId
);
ulid_id!(
    /// The id of one envelope on the bus.
    EventId
);
ulid_id!(
    /// The browser's id of one reply a counsellor wrote: it only makes that
    /// browser's resends of the reply recognisable. It is never a dedupe key
    /// on its own; the reply's [`OutboundId`] is derived from it together with
    /// the contact and the counsellor (`wire::outbound::counsellor_reply`).
    ClientReplyId
);

ulid_id!(
    /// One patient web-chat session: from the page's first connection until
    /// its token expires or the person leaves quickly. Not a secret (it
    /// names subjects like a contact id does); the session *token* is.
    ChatSessionId
);

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a directory slug: 1-64 characters of `[a-z0-9-]`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if ok { Ok(Self(s.to_owned())) } else { Err(IdError::BadSlug) }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

slug_id!(
    /// A counsellor or supervisor in the directory (a slug such as `ana-garcia`).
    /// Safe to log: it is an opaque staff id, not a name.
    CounsellorId
);
slug_id!(
    /// A partner institution in the directory (a slug such as `eastside-clinic`).
    PartnerId
);

/// Twilio's message SID (`SM…`/`MM…` + 32 hex). The dedupe key of an inbound SMS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageSid(String);

impl MessageSid {
    /// Accepts two uppercase letters followed by 32 hexadecimal characters.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        let ok = b.len() == 34
            && b[..2].iter().all(u8::is_ascii_uppercase)
            && b[2..].iter().all(u8::is_ascii_hexdigit);
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadSid)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MessageSid {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MessageSid> for String {
    fn from(id: MessageSid) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_validated() {
        assert!(CounsellorId::parse("ana-garcia").is_ok());
        assert!(CounsellorId::parse("").is_err());
        assert!(CounsellorId::parse("Ana").is_err());
        assert!(CounsellorId::parse("a.b").is_err());
        assert!(CounsellorId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn sids_are_validated() {
        assert!(MessageSid::parse("SM0123456789abcdef0123456789abcdef").is_ok());
        assert!(MessageSid::parse("SM0123").is_err());
        assert!(MessageSid::parse("sm0123456789abcdef0123456789abcdef").is_err());
        assert!(MessageSid::parse("SM0123456789abcdef0123456789abcdeg").is_err());
    }

    #[test]
    fn ulid_ids_round_trip() {
        let id = ContactId::new();
        let parsed: ContactId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ContactId>(&json).unwrap(), id);
        assert!("nope".parse::<ContactId>().is_err());
    }
}
