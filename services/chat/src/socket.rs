//! One patient's websocket: hello (start or resume), then messages both
//! ways until the page goes, the person leaves quickly or the line stops.
//!
//! Ordering and acks: the person's messages are published one at a time,
//! in the order the page sent them, and each is acked to the page only
//! after JetStream stored it; ours are read from OUTBOUND in stream order
//! and told from just after the page's `last_seen` (the earlier ones say
//! whether a counsellor is with the person). While the person waits for a
//! counsellor the socket tells the line's wait estimate as it changes; the
//! counsellor's read mark comes in `Welcome` and then as it is raised.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt;
use nwd_proto::chat::{ClientFrame, ReadMark, Refusal, ServerFrame};
use nwd_proto::events::{ChatInput, InboundChat, MAX_CHAT_MESSAGE_CHARS, SafeNow};
use nwd_proto::{ChatSessionId, Envelope, PartnerId, subjects, wire};
use nwd_runtime::bus;
use time::OffsetDateTime;

use crate::tokens::Found;
use crate::{App, NAME, feed, line, reads};

/// How long a new socket may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings an open socket.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A socket silent this long (not even a pong) is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

pub fn refusal(reason: Refusal) {
    metrics::counter!("nwd_chat_refusals_total", "service" => NAME, "reason" => reason.as_str())
        .increment(1);
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

fn refused(reason: Refusal, seq: Option<u64>) -> ServerFrame {
    refusal(reason);
    ServerFrame::Refused {
        reason,
        seq,
        text: reason.words().to_owned(),
    }
}

/// Sessions open on this instance.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!("nwd_chat_sessions_open", "service" => NAME).increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("nwd_chat_sessions_open", "service" => NAME).decrement(1.0);
    }
}

/// Reads the next client frame; `None` when the socket is gone.
async fn next_frame(socket: &mut WebSocket) -> Option<Result<ClientFrame, ()>> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).map_err(|_| ())),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Serves one socket. `door` is the partner named by the page (already
/// checked against the directory); `address` the client's, for the
/// new-session limit.
pub async fn serve(app: Arc<App>, mut socket: WebSocket, door: Option<PartnerId>, address: IpAddr) {
    let Some(store) = app.sessions() else {
        let _ = socket
            .send(text(&refused(Refusal::Unavailable, None)))
            .await;
        return;
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut socket)).await {
        Ok(Some(Ok(ClientFrame::Hello { token, last_seen }))) => (token, last_seen),
        Ok(Some(_)) => {
            let _ = socket.send(text(&refused(Refusal::BadFrame, None))).await;
            return;
        }
        _ => return,
    };
    let now = OffsetDateTime::now_utc();
    let (token, last_seen) = hello;
    let (token, record) = match token {
        None => {
            if !app.limits.new_session(address) {
                let _ = socket
                    .send(text(&refused(Refusal::TooManySessions, None)))
                    .await;
                return;
            }
            match app.tokens.open(store, door, now).await {
                Ok((token, record)) => {
                    let ttl = u64::try_from(app.tokens.ttl().whole_seconds()).unwrap_or(0);
                    let frame = ServerFrame::Session {
                        token: token.clone(),
                        session: record.session,
                        expires_in_secs: ttl,
                    };
                    if socket.send(text(&frame)).await.is_err() {
                        return;
                    }
                    metrics::counter!("nwd_chat_sessions_started_total", "service" => NAME)
                        .increment(1);
                    tracing::info!(session = %record.session, "chat session started");
                    (token, record)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a chat session");
                    let _ = socket
                        .send(text(&refused(Refusal::Unavailable, None)))
                        .await;
                    return;
                }
            }
        }
        Some(token) => match app.tokens.find(store, &token, now).await {
            Ok(Found::Open(record)) => {
                metrics::counter!("nwd_chat_resumes_total", "service" => NAME).increment(1);
                tracing::info!(session = %record.session, last_seen, "chat session resumed");
                // A resume is activity: the token's expiry slides on.
                if let Err(e) = app.tokens.extend(store, &token, now).await {
                    tracing::warn!(session = %record.session, error = %e, "cannot extend a chat session");
                }
                (token, record)
            }
            Ok(Found::Expired) => {
                let _ = app.tokens.end(store, &token).await;
                let _ = socket.send(text(&refused(Refusal::Expired, None))).await;
                return;
            }
            Ok(Found::Unknown) => {
                let _ = socket
                    .send(text(&refused(Refusal::UnknownToken, None)))
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a chat session");
                let _ = socket
                    .send(text(&refused(Refusal::Unavailable, None)))
                    .await;
                return;
            }
        },
    };
    let session = record.session;
    let (mine, stored) = match feed::own_messages(&app.js, &session).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(session = %session, error = %e, "cannot read the session's messages");
            let _ = socket
                .send(text(&refused(Refusal::Unavailable, None)))
                .await;
            return;
        }
    };
    // Read marks: follow the signal first, then read the kept mark, so
    // that no mark falls between the two.
    let mut seen = match app.client.subscribe(subjects::chat_seen(&session)).await {
        Ok(sub) => Some(sub),
        Err(e) => {
            tracing::debug!(session = %session, error = %e, "no read signals; marks on resume");
            None
        }
    };
    let read_upto = match reads::mark(store, &session).await {
        Ok(upto) => upto,
        Err(e) => {
            tracing::warn!(session = %session, error = %e, "cannot read the session's read mark");
            0
        }
    };
    let mut waiting = line::Waiting::default();
    for m in &mine {
        waiting.own(m.at);
    }
    let welcome = ServerFrame::Welcome {
        session,
        stored_seq: stored.last().copied().unwrap_or(0),
        stored: stored.iter().copied().collect(),
        mine,
        read_upto,
    };
    if socket.send(text(&welcome)).await.is_err() {
        return;
    }
    let (caught_up, ours) = match feed::ours(&app.js, &session).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = %session, error = %e, "cannot follow the session's replies");
            let _ = socket
                .send(text(&refused(Refusal::Unavailable, None)))
                .await;
            return;
        }
    };
    // "Counsellor is typing…" (core NATS, best effort: none if this fails).
    let mut typing = match app.client.subscribe(subjects::chat_typing(&session)).await {
        Ok(sub) => Some(sub),
        Err(e) => {
            tracing::debug!(session = %session, error = %e, "no typing signals");
            None
        }
    };
    let _open = OpenGauge::new();
    let mut conversation = Conversation {
        app: app.clone(),
        session,
        door: record.door.clone(),
        token,
        stored,
        waiting,
        caught_up,
        told: None,
        read_told: read_upto,
    };
    let mut line_status = app.line_status.subscribe();
    if let Some(estimate) = conversation.wait_estimate()
        && socket.send(text(&estimate)).await.is_err()
    {
        return;
    }
    let mut ours = std::pin::pin!(ours);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    tracing::debug!(session = %session, "idle chat socket closed");
                    return;
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
                // Figures that went stale (no router) are told as unknown.
                if let Some(estimate) = conversation.wait_estimate()
                    && socket.send(text(&estimate)).await.is_err()
                {
                    return;
                }
            }
            Some(_) = async {
                match typing.as_mut() {
                    Some(sub) => sub.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if socket.send(text(&ServerFrame::Typing)).await.is_err() {
                    return;
                }
            }
            Some(mark) = async {
                match seen.as_mut() {
                    Some(sub) => sub.next().await,
                    None => std::future::pending().await,
                }
            } => {
                let Ok(mark) = Envelope::<ReadMark>::from_bytes(&mark.payload) else {
                    continue;
                };
                if let Some(frame) = conversation.read(mark.data.upto)
                    && socket.send(text(&frame)).await.is_err()
                {
                    return;
                }
            }
            Ok(()) = line_status.changed() => {
                if let Some(estimate) = conversation.wait_estimate()
                    && socket.send(text(&estimate)).await.is_err()
                {
                    return;
                }
            }
            next = ours.next() => {
                match next {
                    Some(Ok(o)) => {
                        if let Some(frame) = o.frame {
                            conversation.waiting.ours(&frame);
                            if o.seq > last_seen {
                                metrics::counter!("nwd_chat_messages_total", "service" => NAME, "direction" => "out").increment(1);
                                if socket.send(text(&frame)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        conversation.caught_up |= o.caught_up;
                        if let Some(estimate) = conversation.wait_estimate()
                            && socket.send(text(&estimate)).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(session = %session, error = %e, "reply feed failed; the page will resume");
                        return;
                    }
                    None => return,
                }
            }
            incoming = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                let frame = match incoming {
                    Some(Ok(Message::Text(t))) => serde_json::from_str::<ClientFrame>(&t).map_err(|_| ()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                let (mut replies, done) = match frame {
                    Ok(frame) => conversation.handle(frame).await,
                    Err(()) => (vec![refused(Refusal::BadFrame, None)], false),
                };
                replies.extend(conversation.wait_estimate());
                for reply in &replies {
                    if socket.send(text(reply)).await.is_err() {
                        return;
                    }
                }
                if done {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    }
}

/// A session's state on this socket.
struct Conversation {
    app: Arc<App>,
    session: ChatSessionId,
    door: Option<PartnerId>,
    token: String,
    /// The page's sequence numbers stored so far (a resend of one is only
    /// acked again; numbers may have gaps, refused ones resent later).
    stored: std::collections::BTreeSet<u64>,
    /// Whether the person waits for a counsellor.
    waiting: line::Waiting,
    /// Our stored messages are all read (until then a counsellor who
    /// joined may not be known yet).
    caught_up: bool,
    /// The wait estimate last told (`None`: not waiting, or none told).
    told: Option<ServerFrame>,
    /// The read mark last told.
    read_told: u64,
}

impl Conversation {
    /// The wait estimate to tell now, if the person waits and it is news.
    fn wait_estimate(&mut self) -> Option<ServerFrame> {
        if !(self.caught_up && self.waiting.is_waiting()) {
            self.told = None;
            return None;
        }
        let estimate = line::estimate(
            self.app.line_status.borrow().as_ref(),
            OffsetDateTime::now_utc(),
        );
        if self.told.as_ref() == Some(&estimate) {
            return None;
        }
        self.told = Some(estimate.clone());
        metrics::counter!("nwd_chat_wait_estimates_total", "service" => NAME).increment(1);
        Some(estimate)
    }

    /// A kept read mark: the frame to tell, if it is higher than told.
    fn read(&mut self, upto: u64) -> Option<ServerFrame> {
        if upto <= self.read_told {
            return None;
        }
        self.read_told = upto;
        metrics::counter!("nwd_chat_read_marks_total", "service" => NAME).increment(1);
        Some(ServerFrame::Seen { upto })
    }

    /// Handles one frame: the frames to send back, and whether the socket ends.
    async fn handle(&mut self, frame: ClientFrame) -> (Vec<ServerFrame>, bool) {
        match frame {
            ClientFrame::Hello { .. } => (vec![refused(Refusal::BadFrame, None)], false),
            ClientFrame::Ack { .. } => (Vec::new(), false),
            ClientFrame::Message {
                seq,
                text,
                safe_now,
            } => (vec![self.message(seq, text, safe_now).await], false),
            ClientFrame::Feedback { seq, helpful } => {
                (vec![self.feedback(seq, helpful).await], false)
            }
            ClientFrame::QuickExit { seq } => {
                self.quick_exit(seq).await;
                (Vec::new(), true)
            }
        }
    }

    async fn message(&mut self, seq: u64, text: String, safe_now: Option<SafeNow>) -> ServerFrame {
        if seq == 0 {
            return refused(Refusal::BadFrame, Some(seq));
        }
        if self.stored.contains(&seq) {
            // Already stored (a resend): say so again, store nothing.
            return ServerFrame::Ack { seq };
        }
        if text.chars().count() > MAX_CHAT_MESSAGE_CHARS {
            return refused(Refusal::TooLong, Some(seq));
        }
        if text.trim().is_empty() {
            return refused(Refusal::BadFrame, Some(seq));
        }
        if !self.app.limits.message(&self.session) {
            return refused(Refusal::TooFast, Some(seq));
        }
        let input = ChatInput::Message { text, safe_now };
        match self.publish(seq, input).await {
            Ok(at) => {
                self.stored.insert(seq);
                self.waiting.own(at);
                metrics::counter!("nwd_chat_messages_total", "service" => NAME, "direction" => "in")
                    .increment(1);
                // A message is activity: the token's expiry slides on.
                if let Some(store) = self.app.sessions()
                    && let Err(e) = self.app.tokens.extend(store, &self.token, at).await
                {
                    tracing::warn!(session = %self.session, error = %e, "cannot extend a chat session");
                }
                ServerFrame::Ack { seq }
            }
            Err(e) => {
                tracing::warn!(session = %self.session, seq, error = %e, "cannot store a chat message");
                refused(Refusal::Unavailable, Some(seq))
            }
        }
    }

    /// The post-chat answer: stored like a message (acked after the
    /// JetStream ack, resent by the page until then), counted by answer.
    async fn feedback(&mut self, seq: u64, helpful: bool) -> ServerFrame {
        if seq == 0 {
            return refused(Refusal::BadFrame, Some(seq));
        }
        if self.stored.contains(&seq) {
            return ServerFrame::Ack { seq };
        }
        match self.publish(seq, ChatInput::Feedback { helpful }).await {
            Ok(_) => {
                self.stored.insert(seq);
                let answer = if helpful { "yes" } else { "no" };
                metrics::counter!("nwd_chat_feedback_total", "service" => NAME, "helpful" => answer)
                    .increment(1);
                ServerFrame::Ack { seq }
            }
            Err(e) => {
                tracing::warn!(session = %self.session, seq, error = %e, "cannot store the post-chat answer");
                refused(Refusal::Unavailable, Some(seq))
            }
        }
    }

    /// Stores one input of the page: when it was received.
    async fn publish(
        &self,
        seq: u64,
        input: ChatInput,
    ) -> Result<OffsetDateTime, async_nats::jetstream::context::PublishError> {
        let received_at = OffsetDateTime::now_utc();
        let event = InboundChat {
            session: self.session,
            seq,
            door: self.door.clone(),
            input,
            received_at,
        };
        bus::publish(
            &self.app.js,
            subjects::inbound_chat(&self.session),
            &wire::msg_id::inbound_chat(&self.session, seq),
            &Envelope::new(event),
        )
        .await
        .map(|_| received_at)
    }

    /// Tells the line the person left quickly (the contact goes on) and
    /// ends the token: a later visit starts a new session.
    async fn quick_exit(&mut self, seq: u64) {
        metrics::counter!("nwd_chat_quick_exits_total", "service" => NAME).increment(1);
        let last = self.stored.last().copied().unwrap_or(0);
        let seq = seq.max(last + 1);
        if let Err(e) = self.publish(seq, ChatInput::QuickExit).await {
            tracing::warn!(session = %self.session, error = %e, "cannot tell the line of a quick exit");
        }
        if let Some(store) = self.app.sessions()
            && let Err(e) = self.app.tokens.end(store, &self.token).await
        {
            tracing::warn!(session = %self.session, error = %e, "cannot end the session's token");
        }
        tracing::info!(session = %self.session, "quick exit");
    }
}
