//! Dead letters: parking a message its consumer cannot handle in stream
//! `DEADLETTER` (the consumer loop does it), and listing and replaying them
//! (the `nwd-deadletter` tool). See `runbooks/dead-letters.md`.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use nwd_proto::deadletter::{self, DeadLetter, DeadLetterReason, NATS_MSG_ID, OpsAlert};
use nwd_proto::envelope::{DecodeError, Envelope};
use nwd_proto::streams;
use nwd_proto::subjects;
use time::OffsetDateTime;

use crate::bus::{self, Published};

/// Which consumer gave up on a message.
#[derive(Debug, Clone, Copy)]
pub struct Consumer {
    pub service: &'static str,
    pub stream: &'static str,
    pub durable: &'static str,
}

/// Parks `msg` in DEADLETTER and returns once the server has stored it (the
/// caller terminates the original only then). The record's `Nats-Msg-Id`
/// comes from (stream, consumer, stream sequence), so a redelivery of the
/// same message is parked once; only a first parking counts in
/// `nwd_deadletter_total` and alerts supervisors (core NATS
/// [`subjects::ops_alert`], best effort: the metric and the record remain).
pub async fn park(
    js: &jetstream::Context,
    consumer: Consumer,
    msg: &jetstream::Message,
    reason: DeadLetterReason,
    detail: String,
) -> Result<Published, jetstream::context::PublishError> {
    let (sequence, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 0));
    let headers = msg
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    let record = Envelope::new(DeadLetter {
        consumer: consumer.durable.to_owned(),
        stream: consumer.stream.to_owned(),
        stream_sequence: sequence,
        delivered,
        subject: msg.subject.to_string(),
        headers,
        payload: msg.payload.to_vec(),
        reason,
        detail,
    });
    // Sequence 0 (no JetStream metadata) cannot happen for a consumed
    // message; if it did, a fresh id keeps distinct messages apart.
    let msg_id = if sequence > 0 {
        deadletter::dead_letter_id(consumer.stream, consumer.durable, sequence)
    } else {
        record.id.to_string()
    };
    let published =
        bus::publish(js, subjects::deadletter(consumer.durable), &msg_id, &record).await?;
    if !published.duplicate {
        metrics::counter!(
            "nwd_deadletter_total",
            "service" => consumer.service,
            "consumer" => consumer.durable,
            "reason" => reason.as_str()
        )
        .increment(1);
        let alert = Envelope::new(OpsAlert::DeadLetter {
            consumer: consumer.durable.to_owned(),
            reason,
            stream: consumer.stream.to_owned(),
            stream_sequence: sequence,
        });
        if let Err(e) = js
            .client()
            .publish(subjects::ops_alert(), alert.to_bytes().into())
            .await
        {
            tracing::warn!(error = %e, "cannot alert supervisors of a dead letter");
        }
    }
    Ok(published)
}

/// Why a message its handler rejected is parked, and a detail without
/// personal data: a newer envelope is parked as such whatever the handler
/// said; bytes that are no envelope at all are undecodable.
pub fn classify_rejection(
    payload: &[u8],
    handler_reason: &'static str,
) -> (DeadLetterReason, String) {
    match nwd_proto::envelope::Header::peek(payload) {
        Ok(header) if header.is_newer() => newer_schema(header.schema),
        Ok(_) if handler_reason == "undecodable" => (
            DeadLetterReason::Undecodable,
            "an envelope whose type or data this consumer cannot read".to_owned(),
        ),
        Ok(_) => (
            DeadLetterReason::Rejected,
            format!("rejected by its handler: {handler_reason}"),
        ),
        Err(e) => (
            DeadLetterReason::Undecodable,
            DecodeError::Json(e).safe_detail(),
        ),
    }
}

/// Reason and detail of an envelope with schema version `found`.
pub fn newer_schema(found: u16) -> (DeadLetterReason, String) {
    (
        DeadLetterReason::NewerSchema,
        format!(
            "parked: schema {found} is newer than the {} this consumer reads",
            nwd_proto::envelope::SCHEMA_VERSION
        ),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot open the DEADLETTER stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    #[error("cannot read the stream's state: {0}")]
    Info(#[from] jetstream::context::RequestError),
    #[error("no dead letter {0}")]
    NotFound(u64),
    #[error("cannot read dead letter {0}: {1}")]
    Read(u64, jetstream::stream::RawMessageError),
    #[error("dead letter {0} is not a dead-letter record: {1}")]
    Decode(u64, DecodeError),
    #[error("cannot republish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("republished, but cannot delete dead letter {0}: {1}")]
    Delete(u64, jetstream::stream::DeleteMessageError),
}

/// A dead letter without its payload and headers, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its sequence in DEADLETTER: what `replay` takes.
    pub sequence: u64,
    pub at: OffsetDateTime,
    pub consumer: String,
    pub reason: DeadLetterReason,
    pub detail: String,
    pub subject: String,
    pub stream: String,
    pub stream_sequence: u64,
}

/// Every dead letter still in DEADLETTER, oldest first.
pub async fn list(js: &jetstream::Context) -> Result<Vec<Listed>, DeadLetterError> {
    let mut stream = js.get_stream(streams::DEADLETTER).await?;
    let state = stream.info().await?.state.clone();
    let mut listed = Vec::new();
    if state.messages == 0 {
        return Ok(listed);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        match read(&stream, sequence).await {
            Ok(env) => listed.push(Listed {
                sequence,
                at: env.time,
                consumer: env.data.consumer,
                reason: env.data.reason,
                detail: env.data.detail,
                subject: env.data.subject,
                stream: env.data.stream,
                stream_sequence: env.data.stream_sequence,
            }),
            // Replayed (deleted) records leave gaps.
            Err(DeadLetterError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(listed)
}

/// Dead letter `sequence` in full, payload included (personal data: for an
/// operator entitled to read it, never for logs).
pub async fn get(
    js: &jetstream::Context,
    sequence: u64,
) -> Result<Envelope<DeadLetter>, DeadLetterError> {
    let stream = js.get_stream(streams::DEADLETTER).await?;
    read(&stream, sequence).await
}

async fn read(
    stream: &jetstream::stream::Stream,
    sequence: u64,
) -> Result<Envelope<DeadLetter>, DeadLetterError> {
    let raw = stream
        .get_raw_message(sequence)
        .await
        .map_err(|e| match e.kind() {
            LastRawMessageErrorKind::NoMessageFound => DeadLetterError::NotFound(sequence),
            _ => DeadLetterError::Read(sequence, e),
        })?;
    Envelope::<DeadLetter>::from_bytes(&raw.payload)
        .map_err(|e| DeadLetterError::Decode(sequence, e))
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub subject: String,
    /// Where the message is now in its stream.
    pub stream_sequence: u64,
    /// The `Nats-Msg-Id` it was republished with.
    pub msg_id: String,
}

/// Republishes dead letter `sequence` (its payload and headers, to its
/// original subject) and then deletes the record. It keeps its original
/// `Nats-Msg-Id`, unless the original is still inside the stream's
/// duplicate window (JetStream would swallow the replay as a duplicate of
/// the very message that was parked): then the id is the original's with
/// `:replay:<sequence>`. Running it again after a crash between the publish
/// and the delete republishes nothing new.
pub async fn replay(js: &jetstream::Context, sequence: u64) -> Result<Replayed, DeadLetterError> {
    let stream = js.get_stream(streams::DEADLETTER).await?;
    let dl = read(&stream, sequence).await?.data;
    let original = dl.msg_id().map(str::to_owned);
    let mut headers = HeaderMap::new();
    for (name, value) in dl
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(NATS_MSG_ID))
    {
        headers.append(name.as_str(), value.as_str());
    }
    let payload = Bytes::from(dl.payload.clone());
    let publish = |msg_id: String| {
        let message = jetstream::message::PublishMessage::build()
            .headers(headers.clone())
            .message_id(&msg_id)
            .payload(payload.clone());
        let subject = dl.subject.clone();
        async move {
            let ack = js.send_publish(subject, message).await?.await?;
            Ok::<_, jetstream::context::PublishError>((ack, msg_id))
        }
    };
    let fallback = deadletter::replay_id(original.as_deref(), sequence);
    let (ack, msg_id) = match original {
        Some(id) => {
            let (ack, id) = publish(id).await?;
            // A duplicate of the parked message itself: inside the window.
            // A duplicate of another sequence: an earlier replay stored it.
            if ack.duplicate && ack.sequence == dl.stream_sequence {
                publish(fallback).await?
            } else {
                (ack, id)
            }
        }
        None => publish(fallback).await?,
    };
    stream
        .delete_message(sequence)
        .await
        .map_err(|e| DeadLetterError::Delete(sequence, e))?;
    tracing::info!(
        sequence,
        consumer = %dl.consumer,
        subject = %dl.subject,
        stream_sequence = ack.sequence,
        "dead letter replayed"
    );
    Ok(Replayed {
        subject: dl.subject,
        stream_sequence: ack.sequence,
        msg_id,
    })
}
