//! The envelope every event travels in.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::EventId;

/// Version of the envelope and event schemas carried in each envelope.
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
    #[error("unsupported schema version {0}")]
    Schema(u16),
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

    /// Decodes and checks the type name and schema version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let env: Envelope<T> = serde_json::from_slice(bytes)?;
        if env.kind != T::TYPE {
            return Err(DecodeError::WrongType {
                expected: T::TYPE,
                got: env.kind,
            });
        }
        if env.schema != SCHEMA_VERSION {
            return Err(DecodeError::Schema(env.schema));
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
}
