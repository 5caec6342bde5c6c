//! The envelope every event travels in.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::EventId;

/// Version of the envelope and event schemas carried in each envelope.
///
/// Forward compatibility during a rolling upgrade: a reader accepts any
/// envelope of this version or older and ignores fields it does not know
/// (no event type uses `deny_unknown_fields`); an envelope of a newer
/// version is [`DecodeError::NewerSchema`], which the consumer loop parks in
/// the dead-letter stream to be replayed once this reader is upgraded.
pub const SCHEMA_VERSION: u16 = 1;

/// An event type: a payload with a stable type name.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name of the event type, e.g. `inbound.sms`.
    const TYPE: &'static str;
}

/// Id, type, time and schema version around an event payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub schema: u16,
    pub data: T,
}

/// Why bytes are not an envelope of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected event type {expected}, got {got}")]
    WrongType { expected: &'static str, got: String },
    /// Written by a newer version of the line than this reader: not
    /// poison, just early. Parked, never dropped.
    #[error("schema version {found} is newer than the {supported} this reader supports")]
    NewerSchema { found: u16, supported: u16 },
}

impl DecodeError {
    /// A bounded name for metric labels and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "malformed",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::NewerSchema { .. } => "newer_schema",
        }
    }

    /// A description safe to log or store: serde's own messages can quote
    /// the payload (a phone number, a message), so for malformed JSON only
    /// the category and position are kept.
    pub fn safe_detail(&self) -> String {
        match self {
            DecodeError::Json(j) => format!(
                "malformed envelope ({:?} at line {} column {})",
                j.classify(),
                j.line(),
                j.column()
            ),
            DecodeError::WrongType { expected, .. } => {
                format!("not an envelope of type {expected}")
            }
            other => other.to_string(),
        }
    }
}

/// The part of an envelope every reader understands whatever its type and
/// version: enough to tell a newer schema from garbage without reading `data`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Header {
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: u16,
}

impl Header {
    /// Reads the type and schema version of an envelope of any type.
    pub fn peek(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Written by a newer version than this reader supports.
    pub fn is_newer(&self) -> bool {
        self.schema > SCHEMA_VERSION
    }
}

impl<T: Event> Envelope<T> {
    /// Wraps `data` with a fresh id and the current time.
    pub fn new(data: T) -> Self {
        Self {
            id: EventId::new(),
            kind: T::TYPE.to_owned(),
            time: OffsetDateTime::now_utc(),
            schema: SCHEMA_VERSION,
            data,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data structs to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks the type name and schema version. Unknown fields
    /// are ignored; an older or equal schema is accepted; a newer one is
    /// [`DecodeError::NewerSchema`] even when its fields happen to parse
    /// (its meaning may have changed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        // The header first: a newer envelope whose data no longer parses as
        // T must still be reported as newer, not as malformed.
        if let Ok(header) = Header::peek(bytes)
            && header.is_newer()
        {
            return Err(DecodeError::NewerSchema {
                found: header.schema,
                supported: SCHEMA_VERSION,
            });
        }
        let env: Envelope<T> = serde_json::from_slice(bytes)?;
        if env.kind != T::TYPE {
            return Err(DecodeError::WrongType {
                expected: T::TYPE,
                got: env.kind,
            });
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Event for Ping {
        const TYPE: &'static str = "test.ping";
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pong {
        n: u32,
    }
    impl Event for Pong {
        const TYPE: &'static str = "test.pong";
    }

    #[test]
    fn round_trips_and_checks_type() {
        let env = Envelope::new(Ping { n: 7 });
        let bytes = env.to_bytes();
        let back = Envelope::<Ping>::from_bytes(&bytes).unwrap();
        assert_eq!(back, env);
        assert!(matches!(
            Envelope::<Pong>::from_bytes(&bytes),
            Err(DecodeError::WrongType { .. })
        ));
        assert!(Envelope::<Ping>::from_bytes(b"{").is_err());
    }

    fn raw(schema: u16, data: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"{}","type":"test.ping","time":"2026-01-01T00:00:00Z","schema":{schema},"data":{data},"added_later":[1,2]}}"#,
            EventId::new()
        )
        .into_bytes()
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let env = Envelope::<Ping>::from_bytes(&raw(1, r#"{"n":3,"colour":"blue"}"#)).unwrap();
        assert_eq!(env.data, Ping { n: 3 });
    }

    #[test]
    fn an_older_schema_is_accepted_and_a_newer_one_is_its_own_error() {
        assert!(Envelope::<Ping>::from_bytes(&raw(0, r#"{"n":3}"#)).is_ok());
        let e = Envelope::<Ping>::from_bytes(&raw(2, r#"{"n":3}"#)).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::NewerSchema {
                found: 2,
                supported: SCHEMA_VERSION
            }
        ));
        assert_eq!(e.kind(), "newer_schema");
        // Newer data that no longer parses as the old type is still "newer".
        let e = Envelope::<Ping>::from_bytes(&raw(2, r#"{"m":"x"}"#)).unwrap_err();
        assert_eq!(e.kind(), "newer_schema");
    }

    #[test]
    fn safe_detail_never_quotes_the_payload() {
        let e = Envelope::<Ping>::from_bytes(&raw(1, r#"{"n":"+15005550142"}"#)).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert!(!e.safe_detail().contains("5550142"), "{}", e.safe_detail());
    }
}
