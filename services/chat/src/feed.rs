//! What a session's page is shown, read back from the streams: the
//! person's own stored messages (INBOUND) and ours (OUTBOUND), each through
//! a named ordered *push* consumer whose single filter is a chat subject,
//! delivered to the chat's own inbox. The `chat` NATS user may create no
//! other consumer and may pull from none (`CONSUMER.MSG.NEXT` is not
//! granted): it cannot take or read another service's messages, such as
//! intake's SMS.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use futures::{Stream, StreamExt};
use nwd_proto::chat::{OwnMessage, ServerFrame, Speaker};
use nwd_proto::events::{Author, ChatInput, InboundChat, OutboundChat};
use nwd_proto::{ChatSessionId, Envelope, streams, subjects};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read stream {stream}: {source}")]
    Read {
        stream: &'static str,
        source: async_nats::Error,
    },
    #[error("timed out reading stream {0}")]
    Timeout(&'static str),
}

fn consumer_name(kind: &str) -> String {
    format!("chat-{kind}-{}", ulid::Ulid::new())
}

async fn ordered(
    js: &jetstream::Context,
    stream: &'static str,
    filter: String,
    deliver_policy: DeliverPolicy,
    kind: &str,
) -> Result<jetstream::consumer::Consumer<push::OrderedConfig>, FeedError> {
    let err = |source: async_nats::Error| FeedError::Read { stream, source };
    let handle = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
    handle
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            name: Some(consumer_name(kind)),
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))
}

/// The person's stored messages in `session`, oldest first, and every
/// sequence number stored (of any input).
pub async fn own_messages(
    js: &jetstream::Context,
    session: &ChatSessionId,
) -> Result<(Vec<OwnMessage>, BTreeSet<u64>), FeedError> {
    let stream = streams::INBOUND;
    let consumer = ordered(
        js,
        stream,
        subjects::inbound_chat(session),
        DeliverPolicy::All,
        "h",
    )
    .await?;
    let mut mine = Vec::new();
    let mut stored = BTreeSet::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok((mine, stored));
    }
    let err = |source: async_nats::Error| FeedError::Read { stream, source };
    let mut messages = consumer.messages().await.map_err(|e| err(e.into()))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| FeedError::Timeout(stream))?;
        let Some(next) = next else { break };
        let msg = next.map_err(|e| err(e.into()))?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(env) = Envelope::<InboundChat>::from_bytes(&msg.payload) {
            let ev = env.data;
            stored.insert(ev.seq);
            if let ChatInput::Message { text, .. } = ev.input {
                mine.push(OwnMessage {
                    seq: ev.seq,
                    text,
                    at: ev.received_at,
                });
            }
        }
        if pending == 0 {
            break;
        }
    }
    mine.sort_by_key(|m| m.seq);
    mine.dedup_by_key(|m| m.seq);
    Ok((mine, stored))
}

/// Our messages to `session` after OUTBOUND sequence `last_seen`, as they
/// come, each as a [`ServerFrame::Message`] numbered by its sequence.
pub async fn ours(
    js: &jetstream::Context,
    session: &ChatSessionId,
    last_seen: u64,
) -> Result<impl Stream<Item = Result<ServerFrame, FeedError>> + use<>, FeedError> {
    let stream = streams::OUTBOUND;
    let policy = if last_seen == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: last_seen.saturating_add(1),
        }
    };
    let consumer = ordered(
        js,
        stream,
        subjects::outbound_chat_session(session),
        policy,
        "o",
    )
    .await?;
    let messages = consumer.messages().await.map_err(|e| FeedError::Read {
        stream,
        source: e.into(),
    })?;
    Ok(messages.filter_map(move |next| async move {
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(FeedError::Read {
                    stream,
                    source: e.into(),
                }));
            }
        };
        let seq = msg.info().map(|i| i.stream_sequence).ok()?;
        let env = Envelope::<OutboundChat>::from_bytes(&msg.payload).ok()?;
        Some(Ok(frame(seq, &env.data)))
    }))
}

/// How one of our messages reaches the page.
pub fn frame(seq: u64, m: &OutboundChat) -> ServerFrame {
    ServerFrame::Message {
        seq,
        from: match m.author {
            Author::Counsellor(_) => Speaker::Counsellor,
            Author::System => Speaker::Line,
        },
        text: m.body.clone(),
        at: m.created_at,
        note: m.note,
    }
}
