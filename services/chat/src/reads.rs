//! Read marks: how far the counsellor holding a session's contact has read
//! the person's messages. The dashboard (which checked the counsellor holds
//! the contact, and turned the message shown into the page's sequence
//! number) asks on [`subjects::chat_read`]; one chat instance (queue group
//! [`subjects::CHAT_QUEUE_GROUP`]) raises the mark in the `chat_sessions`
//! bucket by compare-and-swap (never lowered), answers, and tells the
//! instance holding the session's socket ([`subjects::chat_seen`]). A page
//! that was away gets the kept mark in its `Welcome`: the mark survives a
//! reload, a lost signal and a restarted chat.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use nwd_proto::chat::{ReadAnswer, ReadMark, ReadRequest};
use nwd_proto::{ChatSessionId, Envelope, subjects, wire};
use nwd_runtime::kv::{Cas, KvError};
use nwd_runtime::ops::Readiness;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NAME;

/// Readiness condition: read requests are being taken.
pub const READY: &str = "read-requests";

/// The kept mark of `session` (0: nothing read yet).
pub async fn mark(store: &kv::Store, session: &ChatSessionId) -> Result<u64, KvError> {
    let found =
        nwd_runtime::kv::get::<ReadMark>(store, &wire::key::chat_read_mark(session)).await?;
    Ok(found.value.map_or(0, |m| m.upto))
}

/// Raises `session`'s mark to `upto` (a lower or equal one changes
/// nothing): the mark as kept.
pub async fn raise(store: &kv::Store, session: &ChatSessionId, upto: u64) -> Result<u64, KvError> {
    let key = wire::key::chat_read_mark(session);
    let (kept, _) = nwd_runtime::kv::cas(store, &key, |current: Option<ReadMark>| match current {
        Some(m) if m.upto >= upto => Cas::Keep(m.upto),
        _ => Cas::Write(ReadMark { upto }, upto),
    })
    .await?;
    Ok(kept)
}

/// Takes read requests until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    store: kv::Store,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut delay = Duration::from_millis(100);
    'subscribe: while !shutdown.is_cancelled() {
        match client
            .queue_subscribe(
                subjects::chat_read_all(),
                subjects::CHAT_QUEUE_GROUP.to_owned(),
            )
            .await
        {
            Ok(mut sub) => {
                readiness.set(READY, true);
                delay = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = sub.unsubscribe().await;
                            break 'subscribe;
                        }
                        next = sub.next() => next,
                    };
                    let Some(msg) = next else { break };
                    tracker.spawn(request(client.clone(), store.clone(), msg));
                }
                readiness.set(READY, false);
            }
            Err(e) => tracing::warn!(error = %e, "cannot take read requests; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    readiness.set(READY, false);
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

fn count(outcome: &'static str) {
    metrics::counter!("nwd_chat_read_requests_total", "service" => NAME, "outcome" => outcome)
        .increment(1);
}

/// One request: the mark kept, then told to the session's socket.
async fn request(client: async_nats::Client, store: kv::Store, msg: async_nats::Message) {
    let req = Envelope::<ReadRequest>::from_bytes(&msg.payload)
        .ok()
        .map(|env| env.data)
        // The subject names the session the dashboard was allowed to name.
        .filter(|r| msg.subject.as_str() == subjects::chat_read(&r.session) && r.upto > 0);
    let answer = match req {
        None => {
            count("malformed");
            ReadAnswer::Failed {
                reason: "malformed read request".to_owned(),
            }
        }
        Some(r) => match raise(&store, &r.session, r.upto).await {
            Ok(upto) => {
                count("kept");
                let seen = Envelope::new(ReadMark { upto }).to_bytes();
                if let Err(e) = client
                    .publish(subjects::chat_seen(&r.session), seen.into())
                    .await
                {
                    // The page gets the kept mark on its next welcome.
                    tracing::debug!(session = %r.session, error = %e, "read mark not signalled");
                }
                ReadAnswer::Kept { upto }
            }
            Err(e) => {
                count("unavailable");
                tracing::warn!(session = %r.session, error = %e, "cannot keep a read mark");
                ReadAnswer::Failed {
                    reason: "the read mark was not kept".to_owned(),
                }
            }
        },
    };
    if let Some(to) = msg.reply
        && let Err(e) = client
            .publish(to, Envelope::new(answer).to_bytes().into())
            .await
    {
        tracing::debug!(error = %e, "read answer not sent");
    }
}
