//! The patient web chat: its session record (KV `chat_sessions`) and the
//! websocket protocol between the chat page and the chat service.
//!
//! Flow (ADR 0016): the page opens `/ws`, sends [`ClientFrame::Hello`]
//! without a token to start a session (the server answers
//! [`ServerFrame::Session`] with a fresh token) or with the token it kept to
//! resume one. The server answers [`ServerFrame::Welcome`] with the person's
//! own stored messages and the highest sequence number it stored, then every
//! message of ours after the page's `last_seen`, each numbered by its
//! OUTBOUND stream sequence ([`ServerFrame::Message`]). The page numbers its
//! own messages 1, 2, … and keeps each until the server's
//! [`ServerFrame::Ack`], which comes only after the JetStream ack; on a
//! reconnect it resends what was not acked (the `Nats-Msg-Id` from session
//! and number stores a resend once). The page acks our messages
//! ([`ClientFrame::Ack`]) and resumes from the highest it saw: none lost,
//! none doubled, either way.
//!
//! While the person waits for a counsellor the server tells the line's
//! figures ([`ServerFrame::WaitEstimate`], from the router's
//! [`crate::router::LineStatus`]); the counsellor's read mark
//! ([`ReadMark`], kept in the session bucket) comes in `Welcome` and then as
//! [`ServerFrame::Seen`].

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::SafeNow;
use crate::ids::{ChatSessionId, PartnerId};

/// A chat session as the chat service stores it, under the keyed hash of
/// its token ([`crate::wire::key::chat_session`]). No message text, no
/// address: what the session is, where it came from and until when it lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSessionRecord {
    pub session: ChatSessionId,
    /// The embedding partner (the door), if any.
    pub door: Option<PartnerId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// After this the token is refused (the bucket also drops old entries).
    /// Activity moves it on (sliding), never past the cap from `created_at`.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// From the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on every socket: start (no token) or resume a session.
    Hello {
        #[serde(default)]
        token: Option<String>,
        /// The highest sequence number of ours the page has shown (0: none).
        #[serde(default)]
        last_seen: u64,
    },
    /// A message of the person, numbered by the page (1, 2, …).
    Message {
        seq: u64,
        text: String,
        /// The answer to "Are you safe right now?", on the first message.
        #[serde(default)]
        safe_now: Option<SafeNow>,
    },
    /// The page has shown our messages up to `seq`.
    Ack { seq: u64 },
    /// Quick exit: tell the line, end the session's token.
    QuickExit { seq: u64 },
    /// The answer to the post-chat question "Was this chat helpful?".
    Feedback { seq: u64, helpful: bool },
}

/// To the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A new session: the page keeps the token in memory (and in
    /// `sessionStorage` for a reload), never anywhere else.
    Session {
        token: String,
        session: ChatSessionId,
        expires_in_secs: u64,
    },
    /// The session is open: the person's stored messages, oldest first,
    /// every sequence number stored (the page resends its unacked messages
    /// whose number is not among them: a message refused while a later one
    /// was stored leaves a gap) and the highest (the page numbers on from it).
    Welcome {
        session: ChatSessionId,
        stored_seq: u64,
        #[serde(default)]
        stored: Vec<u64>,
        mine: Vec<OwnMessage>,
        /// The counsellor has read the person's messages up to this
        /// sequence number (0: none yet); later marks come as [`ServerFrame::Seen`].
        #[serde(default)]
        read_upto: u64,
    },
    /// The page's message `seq` is stored.
    Ack { seq: u64 },
    /// A message of ours, numbered by its OUTBOUND sequence.
    Message {
        seq: u64,
        from: Speaker,
        text: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// A note (a counsellor joined, the chat was closed), shown in the
        /// page's language.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<crate::events::ChatNote>,
    },
    /// The counsellor is typing (shown for a few seconds).
    Typing,
    /// The counsellor has read the person's messages up to `upto` (the
    /// page's sequence number); only ever raised.
    Seen { upto: u64 },
    /// While the person waits for a counsellor: how the line is doing now.
    /// `None`s when the line's figures are not known (the page then says
    /// the message is with the line and a counsellor will answer).
    WaitEstimate {
        /// People waiting for a counsellor now, this person included.
        #[serde(default)]
        waiting: Option<u32>,
        /// The typical recent wait until a counsellor answered, in seconds.
        #[serde(default)]
        typical_wait_secs: Option<u64>,
    },
    /// Something was not done, with words for the person.
    Refused {
        reason: Refusal,
        /// The sequence number of the refused message, if one was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        text: String,
    },
}

/// How far the counsellor has read a session's messages, in the
/// `chat_sessions` bucket ([`crate::wire::key::chat_read_mark`]): raised by
/// compare-and-swap, never lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    pub upto: u64,
}

impl crate::envelope::Event for ReadMark {
    const TYPE: &'static str = "chat.read_mark";
}

/// Dashboard → chat ([`crate::subjects::chat_read`]): the counsellor
/// holding the session's contact has read the person's messages up to
/// `upto`. The chat answers [`ReadAnswer`] once the mark is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub session: ChatSessionId,
    pub upto: u64,
}

impl crate::envelope::Event for ReadRequest {
    const TYPE: &'static str = "chat.read";
}

/// Chat → dashboard: the session's read mark as kept (at least the
/// request's), or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReadAnswer {
    Kept { upto: u64 },
    Failed { reason: String },
}

impl crate::envelope::Event for ReadAnswer {
    const TYPE: &'static str = "chat.read_answer";
}

/// One of the person's own messages, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnMessage {
    pub seq: u64,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Who wrote a message of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Counsellor,
    /// The line itself (safety message, wait estimate, notes).
    Line,
}

/// Why the chat service refused something. Bounded: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The token is past its expiry.
    Expired,
    /// No session has this token (forged, or expired and forgotten).
    UnknownToken,
    /// The page is not on an allowed origin.
    Origin,
    /// A message longer than [`crate::events::MAX_CHAT_MESSAGE_CHARS`].
    TooLong,
    /// Too many messages this minute in this session.
    TooFast,
    /// Too many new sessions this minute from this address.
    TooManySessions,
    /// A frame the server does not understand, or out of order.
    BadFrame,
    /// The line's store did not take the message in time: send it again.
    Unavailable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Origin => "origin",
            Refusal::TooLong => "too_long",
            Refusal::TooFast => "too_fast",
            Refusal::TooManySessions => "too_many_sessions",
            Refusal::BadFrame => "bad_frame",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// Plain words for the person (the page shows its own translation).
    pub fn words(self) -> &'static str {
        match self {
            Refusal::Expired | Refusal::UnknownToken => {
                "This chat has ended on this device. You can start a new chat now; the line is still here for you."
            }
            Refusal::Origin => "This chat cannot open on this page.",
            Refusal::TooLong => {
                "This message is too long to send (at most 4,000 characters). Please split it into shorter messages."
            }
            Refusal::TooFast => {
                "You are sending messages very quickly. Please wait a moment; your message was not sent yet and you can send it again."
            }
            Refusal::TooManySessions => {
                "Too many chats were started from this connection just now. Please wait a minute and try again."
            }
            Refusal::BadFrame => "Something went wrong with this page. Please reload it.",
            Refusal::Unavailable => {
                "Your message is not sent yet; it will be sent again automatically."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let hello: ClientFrame = serde_json::from_str(r#"{"type":"hello"}"#).unwrap();
        assert_eq!(
            hello,
            ClientFrame::Hello {
                token: None,
                last_seen: 0
            }
        );
        let m: ClientFrame =
            serde_json::from_str(r#"{"type":"message","seq":1,"text":"hi","safe_now":"no"}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientFrame::Message {
                seq: 1,
                text: "hi".into(),
                safe_now: Some(SafeNow::No)
            }
        );
        let r = ServerFrame::Refused {
            reason: Refusal::TooLong,
            seq: Some(3),
            text: Refusal::TooLong.words().into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""type":"refused""#), "{json}");
        assert!(json.contains(r#""reason":"too_long""#), "{json}");
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), r);
    }

    #[test]
    fn a_welcome_from_before_read_marks_reads_as_nothing_read_yet() {
        let session = ChatSessionId::new();
        let old = format!(
            r#"{{"type":"welcome","session":"{session}","stored_seq":2,"stored":[1,2],"mine":[]}}"#
        );
        match serde_json::from_str::<ServerFrame>(&old).unwrap() {
            ServerFrame::Welcome { read_upto, .. } => assert_eq!(read_upto, 0),
            other => panic!("{other:?}"),
        }
        let seen = serde_json::to_string(&ServerFrame::Seen { upto: 3 }).unwrap();
        assert_eq!(seen, r#"{"type":"seen","upto":3}"#);
        let unknown = serde_json::to_string(&ServerFrame::WaitEstimate {
            waiting: None,
            typical_wait_secs: None,
        })
        .unwrap();
        assert_eq!(
            unknown,
            r#"{"type":"wait_estimate","waiting":null,"typical_wait_secs":null}"#
        );
    }
}
