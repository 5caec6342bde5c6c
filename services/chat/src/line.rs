//! The honest wait estimate: the router's latest line status (core NATS,
//! [`subjects::line_status`]: counts and a typical wait, nothing about any
//! person), and whether a session's person is waiting for a counsellor.
//!
//! A waiting session is told how many people wait and how long people
//! waited recently ([`ServerFrame::WaitEstimate`]); figures older than
//! [`STALE_AFTER`] (the router is gone, or this chat lost the bus) are not
//! told as if they were true: the estimate then says nothing is known.

use std::time::Duration;

use futures::StreamExt;
use nwd_proto::chat::{ServerFrame, Speaker};
use nwd_proto::events::ChatNote;
use nwd_proto::router::LineStatus;
use nwd_proto::{Envelope, subjects};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Figures older than this are not told (the router publishes every 10 s
/// even when nothing changes).
pub const STALE_AFTER: time::Duration = time::Duration::seconds(45);

/// The estimate a waiting person is given, from the latest status at `now`.
pub fn estimate(status: Option<&LineStatus>, now: OffsetDateTime) -> ServerFrame {
    match status.filter(|s| now - s.at <= STALE_AFTER) {
        Some(s) => ServerFrame::WaitEstimate {
            waiting: Some(s.waiting_total()),
            typical_wait_secs: s.typical_wait_secs,
        },
        None => ServerFrame::WaitEstimate {
            waiting: None,
            typical_wait_secs: None,
        },
    }
}

/// Keeps the latest line status in `latest` until `shutdown`.
pub async fn follow(
    client: async_nats::Client,
    latest: watch::Sender<Option<LineStatus>>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match client.subscribe(subjects::line_status()).await {
            Ok(mut sub) => {
                delay = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        next = sub.next() => next,
                    };
                    let Some(msg) = next else { break };
                    match Envelope::<LineStatus>::from_bytes(&msg.payload) {
                        Ok(env) => {
                            latest.send_if_modified(|known| {
                                let newer = known.as_ref().is_none_or(|k| k.at <= env.data.at);
                                if newer {
                                    *known = Some(env.data);
                                }
                                newer
                            });
                        }
                        Err(e) => tracing::debug!(error = %e, "undecodable line status"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the line status; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Whether a session's person waits for a counsellor, from what its socket
/// has seen: their stored messages and our messages (counsellor replies,
/// the notes "joined" and "closed"), each at its stored time. Waiting: a
/// message stored, and no counsellor with them since (none joined, or the
/// last conversation was closed before their latest message).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Waiting {
    last_own: Option<OffsetDateTime>,
    last_joined: Option<OffsetDateTime>,
    last_closed: Option<OffsetDateTime>,
}

impl Waiting {
    /// A message of the person's stored at `at`.
    pub fn own(&mut self, at: OffsetDateTime) {
        self.last_own = self.last_own.max(Some(at));
    }

    /// One of our messages, as the page gets it.
    pub fn ours(&mut self, frame: &ServerFrame) {
        let ServerFrame::Message { from, note, at, .. } = frame else {
            return;
        };
        match (from, note) {
            (_, Some(ChatNote::Closed)) => self.last_closed = self.last_closed.max(Some(*at)),
            (_, Some(ChatNote::Joined)) | (Speaker::Counsellor, _) => {
                self.last_joined = self.last_joined.max(Some(*at));
            }
            _ => {}
        }
    }

    pub fn is_waiting(&self) -> bool {
        let Some(own) = self.last_own else {
            return false;
        };
        match (self.last_joined, self.last_closed) {
            (None, None) => true,
            (Some(j), Some(c)) if c >= j => own > c,
            (Some(_), _) => false,
            (None, Some(c)) => own > c,
        }
    }
}

#[cfg(test)]
mod tests {
    use nwd_proto::RiskLevel;

    use super::*;

    fn line(note: Option<ChatNote>, from: Speaker, at: OffsetDateTime) -> ServerFrame {
        ServerFrame::Message {
            seq: 1,
            from,
            text: String::new(),
            at,
            note,
        }
    }

    #[test]
    fn a_person_waits_from_their_message_until_a_counsellor_joins_and_again_after_a_close() {
        let t0 = OffsetDateTime::now_utc();
        let s = time::Duration::seconds;
        let mut w = Waiting::default();
        assert!(!w.is_waiting(), "nothing written yet");
        w.ours(&line(None, Speaker::Line, t0)); // a safety message is no counsellor
        w.own(t0 + s(1));
        assert!(w.is_waiting());
        w.ours(&line(Some(ChatNote::Joined), Speaker::Line, t0 + s(2)));
        assert!(!w.is_waiting());
        w.own(t0 + s(3));
        assert!(!w.is_waiting(), "talking with the counsellor");
        w.ours(&line(Some(ChatNote::Closed), Speaker::Line, t0 + s(4)));
        assert!(!w.is_waiting(), "closed, nothing written since");
        w.own(t0 + s(5));
        assert!(w.is_waiting(), "a new message after the close waits again");
        w.ours(&line(None, Speaker::Counsellor, t0 + s(6)));
        assert!(!w.is_waiting(), "a counsellor's reply");
        // Our history may come after the person's messages: order by time.
        let mut late = Waiting::default();
        late.own(t0 + s(3));
        late.ours(&line(Some(ChatNote::Joined), Speaker::Line, t0 + s(2)));
        assert!(!late.is_waiting());
    }

    #[test]
    fn stale_or_missing_figures_are_told_as_unknown() {
        let now = OffsetDateTime::now_utc();
        let status = LineStatus {
            waiting: vec![(RiskLevel::Low, 2), (RiskLevel::High, 1)],
            counsellors_available: 1,
            free_seats: 0,
            typical_wait_secs: Some(240),
            at: now - time::Duration::seconds(5),
        };
        assert_eq!(
            estimate(Some(&status), now),
            ServerFrame::WaitEstimate {
                waiting: Some(3),
                typical_wait_secs: Some(240)
            }
        );
        let unknown = ServerFrame::WaitEstimate {
            waiting: None,
            typical_wait_secs: None,
        };
        assert_eq!(estimate(None, now), unknown);
        assert_eq!(
            estimate(
                Some(&status),
                now + STALE_AFTER + time::Duration::seconds(6)
            ),
            unknown
        );
    }
}
