//! Dead letters: events a consumer could not handle, kept with everything
//! needed to replay them, in stream `DEADLETTER` on
//! [`crate::subjects::deadletter`]. Nothing a consumer cannot read is ever
//! dropped: it is parked here, counted, and supervisors are told.

use serde::{Deserialize, Serialize};

use crate::envelope::Event;

/// Why a message was dead-lettered. A small fixed set: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Written by a newer version of the line (a rolling upgrade): parked,
    /// to be replayed once the reader is upgraded.
    NewerSchema,
    /// Not an envelope this consumer can read (malformed JSON, wrong type,
    /// fields that do not parse).
    Undecodable,
    /// The handler refused it as a message that can never succeed.
    Rejected,
    /// The handler panicked on it.
    HandlerPanicked,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::NewerSchema,
        DeadLetterReason::Undecodable,
        DeadLetterReason::Rejected,
        DeadLetterReason::HandlerPanicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::NewerSchema => "newer_schema",
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::HandlerPanicked => "handler_panicked",
        }
    }

    /// What a supervisor or operator reads.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::NewerSchema => "parked: newer schema",
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::Rejected => "rejected by its handler",
            DeadLetterReason::HandlerPanicked => "handler panicked",
        }
    }
}

/// One message a consumer could not handle, exactly as it was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The durable consumer that gave up on it.
    pub consumer: String,
    /// The stream it was read from, and its sequence there.
    pub stream: String,
    pub stream_sequence: u64,
    /// How many times it had been delivered.
    pub delivered: i64,
    /// Where it was published (subjects carry ids only).
    pub subject: String,
    /// Its headers (one pair per value, in order), `Nats-Msg-Id` included.
    pub headers: Vec<(String, String)>,
    /// Its payload, byte for byte (base64 in JSON). Holds personal data:
    /// never logged; read only by the replay tool.
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    pub reason: DeadLetterReason,
    /// A short description without personal data (an error category and
    /// position, a schema version, the handler's bounded reason).
    pub detail: String,
}

impl Event for DeadLetter {
    const TYPE: &'static str = "deadletter.record";
}

impl DeadLetter {
    /// The original `Nats-Msg-Id`, if it had one.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(NATS_MSG_ID))
            .map(|(_, v)| v.as_str())
    }
}

/// The header JetStream deduplicates on.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The `Nats-Msg-Id` of the dead letter of one delivery: a redelivered poison
/// message (the term was lost, the process crashed after the dead-letter
/// publish) is dead-lettered once.
pub fn dead_letter_id(stream: &str, consumer: &str, stream_sequence: u64) -> String {
    format!("dl:{stream}:{consumer}:{stream_sequence}")
}

/// The `Nats-Msg-Id` of the replay of dead letter `dead_letter_sequence`
/// when its original id is still inside the stream's duplicate window
/// (JetStream would discard the replay as a duplicate of the original).
/// Running the replay twice publishes it once.
pub fn replay_id(original: Option<&str>, dead_letter_sequence: u64) -> String {
    match original {
        Some(id) => format!("{id}:replay:{dead_letter_sequence}"),
        None => format!("replay:{dead_letter_sequence}"),
    }
}

/// Something supervisors must know that concerns the line, not one contact
/// (core NATS on [`crate::subjects::ops_alert`]; the dashboard shows it to
/// supervisors). Never personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpsAlert {
    /// A message could not be processed and was dead-lettered.
    DeadLetter {
        consumer: String,
        reason: DeadLetterReason,
        stream: String,
        stream_sequence: u64,
    },
    /// An SMS came in on a number that is neither one of the line's nor any
    /// partner's door: it was taken into the shared pool; the directory
    /// needs fixing. Never the number itself.
    UnknownLineNumber { service: String },
    /// A partner's status callback was parked for supervisors (its retries
    /// ran out, the partner turned the endpoint off with 410 Gone, or it
    /// cannot be signed); it is a dead letter of consumer `notifier-partner`.
    PartnerCallbackParked {
        partner: crate::ids::PartnerId,
        referral_id: crate::ids::ReferralId,
        version: u32,
        /// Bounded: `unreachable`, `refused`, `gone`, `unsigned`.
        reason: String,
    },
}

impl Event for OpsAlert {
    const TYPE: &'static str = "ops.alert";
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    #[test]
    fn a_dead_letter_round_trips_any_bytes() {
        let dl = DeadLetter {
            consumer: "intake-sms".into(),
            stream: "INBOUND".into(),
            stream_sequence: 7,
            delivered: 1,
            subject: "nwd.v1.inbound.sms".into(),
            headers: vec![("Nats-Msg-Id".into(), "SM1".into())],
            payload: vec![0, 159, 146, 150, b'{'],
            reason: DeadLetterReason::Undecodable,
            detail: "malformed envelope (Syntax at line 1 column 1)".into(),
        };
        let env = Envelope::new(dl.clone());
        let back = Envelope::<DeadLetter>::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(back.data, dl);
        assert_eq!(back.data.msg_id(), Some("SM1"));
        assert!(String::from_utf8_lossy(&env.to_bytes()).contains(r#""reason":"undecodable""#));
    }

    #[test]
    fn ids_are_stable_per_delivery_and_per_replay() {
        assert_eq!(
            dead_letter_id("INBOUND", "intake-sms", 9),
            dead_letter_id("INBOUND", "intake-sms", 9)
        );
        assert_ne!(
            dead_letter_id("INBOUND", "intake-sms", 9),
            dead_letter_id("INBOUND", "intake-sms", 10)
        );
        assert_eq!(replay_id(Some("SM1"), 4), "SM1:replay:4");
        assert_eq!(replay_id(None, 4), "replay:4");
    }
}
