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

/// One of our messages to a session, as read from OUTBOUND.
#[derive(Debug, Clone, PartialEq)]
pub struct Ours {
    /// Its OUTBOUND sequence number (the page's `last_seen`).
    pub seq: u64,
    /// How it reaches the page (`None`: not one of our chat messages).
    pub frame: Option<ServerFrame>,
    /// Nothing stored before it is left to read: what follows is new.
    pub caught_up: bool,
}

/// Every message of ours to `session`, from the first, as they come (the
/// socket tells the page only those after its `last_seen`; the earlier
/// ones tell whether a counsellor is with the person). Also whether none
/// was stored when the feed started.
pub async fn ours(
    js: &jetstream::Context,
    session: &ChatSessionId,
) -> Result<(bool, impl Stream<Item = Result<Ours, FeedError>> + use<>), FeedError> {
    let stream = streams::OUTBOUND;
    let consumer = ordered(
        js,
        stream,
        subjects::outbound_chat_session(session),
        DeliverPolicy::All,
        "o",
    )
    .await?;
    let empty = consumer.cached_info().num_pending == 0;
    let messages = consumer.messages().await.map_err(|e| FeedError::Read {
        stream,
        source: e.into(),
    })?;
    let ours = messages.filter_map(move |next| async move {
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(FeedError::Read {
                    stream,
                    source: e.into(),
                }));
            }
        };
        let info = msg.info().ok()?;
        let (seq, caught_up) = (info.stream_sequence, info.pending == 0);
        let frame = Envelope::<OutboundChat>::from_bytes(&msg.payload)
            .ok()
            .map(|env| frame(seq, &env.data));
        Some(Ok(Ours {
            seq,
            frame,
            caught_up,
        }))
    });
    Ok((empty, ours))
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
