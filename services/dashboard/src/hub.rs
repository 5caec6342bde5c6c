//! The open sockets of this dashboard process, by counsellor, and each
//! connected counsellor's chosen presence.
//!
//! A counsellor may have several tabs open; everything for them goes to all
//! of them. Delivery never waits on a slow browser: a socket whose queue is
//! full is closed, and the browser reconnects and gets a fresh snapshot.
//!
//! Every message for one counsellor is numbered (`"seq"`, shared by their
//! tabs, so the tabs stay consistent) and the last ones are kept in their
//! journal, also while no socket of theirs is open, so a page that
//! reconnects after a drop can `Resume` from the last number it saw. The
//! queue and the floor are snapshots, sent whole on connect: they are not
//! numbered, and a reconnecting page gets the newest. Numbers start at the
//! journal's creation time (milliseconds × 1024), so a number from another
//! dashboard process or before a restart is not mistaken for one of ours.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use nwd_proto::CounsellorId;
use nwd_proto::dashboard::{Presence, ServerMsg};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::queue::Audience;
use crate::session::Login;

/// What a socket's queue carries: a message for this counsellor, or one
/// already serialised once for every socket of an audience (the queue).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Boxed: a `ServerMsg` is large and most frames are shared JSON.
    Msg(Box<ServerMsg>),
    /// JSON text shared by many sockets (cloning it is a reference count).
    Json(Utf8Bytes),
}

/// Messages queued per socket before it counts as too slow and is closed.
/// Large enough for a burst: a counsellor who logs in while hundreds of
/// contacts wait is offered all of them at once by the next sweep, and a
/// small queue closed their socket, which took them offline, which withdrew
/// the offers, which came back on reconnect — a loop (found by nwd-bench:
/// 64 was overrun by 800 waiting contacts). At about 2 KB a message this
/// bounds a socket at about 8 MiB. Beyond that many waiting contacts the
/// loop returns; capping the offers one counsellor holds is the real fix
/// (see docs/adr/0007).
pub const SOCKET_QUEUE: usize = 4096;

/// Messages kept per counsellor for a `Resume`.
pub const JOURNAL_FRAMES: usize = 512;
/// Bytes kept per counsellor for a `Resume` (offers carry transcripts: a
/// few KB each; 2,000 counsellors on one instance stay within 512 MiB).
pub const JOURNAL_BYTES: usize = 256 * 1024;
/// How long a message is kept for a `Resume` (a laptop's short sleep, a
/// network drop); a page away longer gets a full resync.
pub const JOURNAL_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// One counsellor's numbered messages: the last number given and the
/// messages still kept (oldest first).
#[derive(Debug)]
struct Journal {
    last: u64,
    kept: VecDeque<(u64, std::time::Instant, Utf8Bytes)>,
    /// The length of the texts kept.
    bytes: usize,
}

impl Journal {
    fn new() -> Self {
        let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Self {
            last: u64::try_from(ms).unwrap_or(0).saturating_mul(1024),
            kept: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Numbers `json` (a serialised [`ServerMsg`]) and keeps it.
    fn record(&mut self, json: &str) -> Utf8Bytes {
        self.last += 1;
        let text = Utf8Bytes::from(numbered(json, self.last));
        let now = std::time::Instant::now();
        self.bytes += text.len();
        self.kept.push_back((self.last, now, text.clone()));
        while self.kept.len() > JOURNAL_FRAMES
            || self.bytes > JOURNAL_BYTES
            || self
                .kept
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at) > JOURNAL_AGE)
        {
            match self.kept.pop_front() {
                Some((_, _, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
        text
    }

    /// The messages numbered after `after` up to `upto`, if all are kept.
    fn since(&self, after: u64, upto: u64) -> Option<Vec<Utf8Bytes>> {
        if after > self.last {
            return None;
        }
        if after >= upto {
            return Some(Vec::new());
        }
        let first = self.kept.front().map_or(self.last + 1, |(seq, _, _)| *seq);
        if first > after + 1 {
            return None;
        }
        Some(
            self.kept
                .iter()
                .filter(|(seq, _, _)| *seq > after && *seq <= upto)
                .map(|(_, _, text)| text.clone())
                .collect(),
        )
    }
}

/// `json` (an object) with `"seq":n` added last: the page reads `type` as
/// before, and a reader that matches the start of the text still can.
pub fn numbered(json: &str, seq: u64) -> String {
    match json.strip_suffix('}') {
        Some(body) if body.len() > 1 => format!(r#"{body},"seq":{seq}}}"#),
        Some(_) => format!(r#"{{"seq":{seq}}}"#),
        None => json.to_owned(),
    }
}

struct Conn {
    id: u64,
    /// The bucket key of the session the socket was opened with.
    session: String,
    expires_at: OffsetDateTime,
    tx: mpsc::Sender<Frame>,
    close: CancellationToken,
}

struct Desk {
    status: Presence,
    /// Which queue entries this counsellor sees (from the directory when a
    /// socket opened; the revocation sweep follows directory changes).
    audience: Audience,
    conns: Vec<Conn>,
}

/// Registry of open sockets.
#[derive(Default)]
pub struct Hub {
    desks: Mutex<HashMap<CounsellorId, Desk>>,
    /// Locked after `desks` when both are needed.
    journals: Mutex<HashMap<CounsellorId, Journal>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// One registered socket: its queue and the token that closes it.
#[derive(Debug)]
pub struct Registration {
    pub id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub rx: mpsc::Receiver<Frame>,
    pub close: CancellationToken,
    /// The counsellor's presence in effect (their other sockets' if any, else `initial`).
    pub status: Presence,
    /// The number of the counsellor's last message before this socket
    /// opened: every later one reaches it live.
    pub joined_at: u64,
}

impl Hub {
    fn desks(&self) -> std::sync::MutexGuard<'_, HashMap<CounsellorId, Desk>> {
        // A poisoned lock only means a panic elsewhere; the map itself is consistent.
        self.desks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn journals(&self) -> std::sync::MutexGuard<'_, HashMap<CounsellorId, Journal>> {
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages of `who` numbered after `after` up to `upto`, in
    /// order, if every one is still kept (`None`: a resync is needed).
    pub fn missed(&self, who: &CounsellorId, after: u64, upto: u64) -> Option<Vec<Utf8Bytes>> {
        self.journals().get(who)?.since(after, upto)
    }

    /// Forgets the journals of counsellors with no socket here whose last
    /// message is older than [`JOURNAL_AGE`]; returns how many.
    pub fn prune_journals(&self) -> usize {
        let desks = self.desks();
        let mut journals = self.journals();
        let before = journals.len();
        let now = std::time::Instant::now();
        journals.retain(|who, j| {
            desks.contains_key(who)
                || j.kept
                    .back()
                    .is_some_and(|(_, at, _)| now.duration_since(*at) <= JOURNAL_AGE)
        });
        before - journals.len()
    }

    /// Registers a socket of `login`'s counsellor. `initial` is the presence
    /// to take if the counsellor has no other socket here; `parent` closes
    /// the socket too; `audience` is the part of the queue the counsellor sees.
    pub fn register(
        &self,
        login: &Login,
        initial: Presence,
        audience: Audience,
        parent: &CancellationToken,
    ) -> Registration {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let close = parent.child_token();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut desks = self.desks();
        let desk = desks
            .entry(login.counsellor.clone())
            .or_insert_with(|| Desk {
                status: initial,
                audience: audience.clone(),
                conns: Vec::new(),
            });
        desk.audience = audience;
        let joined_at = self
            .journals()
            .entry(login.counsellor.clone())
            .or_insert_with(Journal::new)
            .last;
        desk.conns.push(Conn {
            id,
            session: login.key.clone(),
            expires_at: login.expires_at,
            tx: tx.clone(),
            close: close.clone(),
        });
        Registration {
            id,
            tx,
            rx,
            close,
            status: desk.status,
            joined_at,
        }
    }

    /// Removes a socket. Returns true when it was the counsellor's last one.
    pub fn unregister(&self, who: &CounsellorId, id: u64) -> bool {
        let mut desks = self.desks();
        let Some(desk) = desks.get_mut(who) else {
            return false;
        };
        desk.conns.retain(|c| c.id != id);
        if desk.conns.is_empty() {
            desks.remove(who);
            true
        } else {
            false
        }
    }

    /// The counsellor's presence, if they have a socket here.
    pub fn status(&self, who: &CounsellorId) -> Option<Presence> {
        self.desks().get(who).map(|d| d.status)
    }

    /// Sets the presence of a connected counsellor; false if not connected.
    pub fn set_status(&self, who: &CounsellorId, status: Presence) -> bool {
        match self.desks().get_mut(who) {
            Some(d) => {
                d.status = status;
                true
            }
            None => false,
        }
    }

    /// Connected counsellors whose presence is not offline.
    pub fn present(&self) -> Vec<CounsellorId> {
        self.desks()
            .iter()
            .filter(|(_, d)| d.status != Presence::Offline)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Closes every socket opened with session `key` (logged out or
    /// revoked); returns how many. Each socket unregisters itself as it ends.
    pub fn close_session(&self, key: &str) -> usize {
        self.close_where(|_, conn| conn.session == key)
    }

    /// Closes every socket whose session has expired by `now` or whose
    /// counsellor `still_staff` no longer knows; returns how many.
    pub fn close_ended(
        &self,
        now: OffsetDateTime,
        still_staff: impl Fn(&CounsellorId) -> bool,
    ) -> usize {
        self.close_where(|who, conn| now >= conn.expires_at || !still_staff(who))
    }

    fn close_where(&self, ended: impl Fn(&CounsellorId, &Conn) -> bool) -> usize {
        let desks = self.desks();
        let mut closed = 0;
        for (who, desk) in desks.iter() {
            for conn in &desk.conns {
                if !conn.close.is_cancelled() && ended(who, conn) {
                    conn.close.cancel();
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Open sockets in total.
    pub fn socket_count(&self) -> usize {
        self.desks().values().map(|d| d.conns.len()).sum()
    }

    /// Queues `msg` for every socket of `who`; returns how many took it.
    /// A socket with a full queue is closed (it reconnects and re-syncs).
    /// The message is numbered and kept in the counsellor's journal (also
    /// with no socket open: a page that comes back resumes from it).
    pub fn send(&self, who: &CounsellorId, msg: &ServerMsg) -> usize {
        let json = match serde_json::to_string(msg) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise a message");
                return 0;
            }
        };
        let mut desks = self.desks();
        let text = match self.journals().get_mut(who) {
            Some(journal) => journal.record(&json),
            // Never connected here: nobody to resume.
            None => return 0,
        };
        let Some(desk) = desks.get_mut(who) else {
            return 0;
        };
        deliver(who, desk, &Frame::Json(text))
    }

    /// Sets each connected counsellor's audience to what `audience_of` says
    /// now (the directory changed: a role or a home partner); returns those
    /// whose audience changed.
    pub fn refresh_audiences(
        &self,
        audience_of: impl Fn(&CounsellorId) -> Audience,
    ) -> Vec<CounsellorId> {
        let mut desks = self.desks();
        let mut changed = Vec::new();
        for (who, desk) in desks.iter_mut() {
            let now = audience_of(who);
            if now != desk.audience {
                desk.audience = now;
                changed.push(who.clone());
            }
        }
        changed
    }

    /// Like [`Hub::fan_out`], for the sockets of one counsellor.
    pub fn send_rendered(
        &self,
        who: &CounsellorId,
        frame_for: impl FnOnce(&Audience) -> Option<Utf8Bytes>,
    ) -> usize {
        let mut desks = self.desks();
        let Some(desk) = desks.get_mut(who) else {
            return 0;
        };
        match frame_for(&desk.audience) {
            Some(text) => deliver(who, desk, &Frame::Json(text)),
            None => 0,
        }
    }

    /// Queues for every socket the frame `frame_for` gives its counsellor's
    /// audience (`None`: nothing for them); returns how many sockets took
    /// one. The caller renders each audience's frame once and shares it.
    pub fn fan_out(&self, mut frame_for: impl FnMut(&Audience) -> Option<Utf8Bytes>) -> usize {
        let mut desks = self.desks();
        desks
            .iter_mut()
            .map(|(who, desk)| match frame_for(&desk.audience) {
                Some(text) => deliver(who, desk, &Frame::Json(text)),
                None => 0,
            })
            .sum()
    }
}

/// Queues `frame` for every socket of one desk; closes those too slow.
fn deliver(who: &CounsellorId, desk: &mut Desk, frame: &Frame) -> usize {
    let mut delivered = 0;
    desk.conns.retain(|c| match c.tx.try_send(frame.clone()) {
        Ok(()) => {
            delivered += 1;
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(counsellor = %who, socket = c.id, "socket too slow; closing it");
            metrics::counter!("nwd_dashboard_slow_sockets_total", "service" => crate::NAME)
                .increment(1);
            c.close.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CounsellorId {
        CounsellorId::parse(s).unwrap()
    }

    fn login(who: &str) -> Login {
        Login {
            key: format!("session-of-{who}"),
            ..login_until(who, OffsetDateTime::now_utc() + time::Duration::hours(1))
        }
    }

    fn login_until(who: &str, expires_at: OffsetDateTime) -> Login {
        Login {
            key: format!("session-of-{who}-{}", expires_at.unix_timestamp()),
            counsellor: c(who),
            expires_at,
        }
    }

    #[test]
    fn messages_reach_every_socket_of_one_counsellor_only() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let mut a1 = hub.register(&login("ana"), Presence::Offline, Audience::Everyone, &root);
        let mut a2 = hub.register(
            &login("ana"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        assert_eq!(a2.status, Presence::Offline, "the desk's status wins");
        let mut b = hub.register(&login("ben"), Presence::Busy, Audience::Everyone, &root);
        assert_eq!(hub.send(&c("ana"), &ServerMsg::Pong), 2);
        let (Frame::Json(t1), Frame::Json(t2)) =
            (a1.rx.try_recv().unwrap(), a2.rx.try_recv().unwrap())
        else {
            panic!("numbered text")
        };
        assert_eq!(t1, t2, "one number for both tabs");
        let seq: nwd_proto::dashboard::SequencedMsg = serde_json::from_str(t1.as_str()).unwrap();
        assert_eq!(seq.seq, a1.joined_at + 1);
        assert_eq!(seq.msg, ServerMsg::Pong);
        assert!(b.rx.try_recv().is_err());
        assert_eq!(hub.send(&c("nobody"), &ServerMsg::Pong), 0);
        assert!(!hub.unregister(&c("ana"), a1.id));
        assert!(hub.unregister(&c("ana"), a2.id));
        assert_eq!(hub.status(&c("ana")), None);
        assert_eq!(hub.present(), vec![c("ben")]);
    }

    #[test]
    fn numbers_go_last_and_the_type_stays_first() {
        assert_eq!(
            numbered(r#"{"type":"pong"}"#, 7),
            r#"{"type":"pong","seq":7}"#
        );
        assert_eq!(numbered("{}", 7), r#"{"seq":7}"#);
    }

    #[test]
    fn a_journal_gives_what_was_missed_or_nothing_when_it_no_longer_has_it() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let a = hub.register(
            &login("ana"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let start = a.joined_at;
        assert!(hub.unregister(&c("ana"), a.id));
        // Sent while no socket is open: kept.
        for _ in 0..3 {
            assert_eq!(hub.send(&c("ana"), &ServerMsg::Pong), 0);
        }
        let b = hub.register(
            &login("ana"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        assert_eq!(b.joined_at, start + 3);
        let missed = hub.missed(&c("ana"), start + 1, b.joined_at).unwrap();
        let seqs: Vec<u64> = missed
            .iter()
            .map(|t| {
                serde_json::from_str::<nwd_proto::dashboard::SequencedMsg>(t.as_str())
                    .unwrap()
                    .seq
            })
            .collect();
        assert_eq!(seqs, vec![start + 2, start + 3]);
        assert_eq!(
            hub.missed(&c("ana"), b.joined_at, b.joined_at),
            Some(Vec::new())
        );
        // A number this journal never gave (another process): resync.
        assert_eq!(hub.missed(&c("ana"), b.joined_at + 10, b.joined_at), None);
        // Beyond what is kept: resync.
        for _ in 0..JOURNAL_FRAMES + 1 {
            hub.send(&c("ana"), &ServerMsg::Pong);
        }
        assert_eq!(hub.missed(&c("ana"), start, start + 5), None);
        assert_eq!(hub.missed(&c("nobody"), 0, 0), None);
        // Large messages: bounded by bytes too.
        let big = ServerMsg::Error {
            code: "x".into(),
            message: "x".repeat(JOURNAL_BYTES / 4),
        };
        for _ in 0..8 {
            hub.send(&c("ana"), &big);
        }
        let journals = hub.journals();
        let kept = &journals[&c("ana")];
        assert!(kept.bytes <= JOURNAL_BYTES && kept.kept.len() < 8);
        assert_eq!(
            kept.bytes,
            kept.kept.iter().map(|(_, _, t)| t.len()).sum::<usize>()
        );
        drop(journals);
        assert_eq!(hub.prune_journals(), 0, "ana is connected");
    }

    #[test]
    fn a_socket_that_falls_behind_is_closed() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let slow = hub.register(
            &login("ana"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        for _ in 0..SOCKET_QUEUE {
            assert_eq!(hub.send(&c("ana"), &ServerMsg::Pong), 1);
        }
        assert_eq!(hub.send(&c("ana"), &ServerMsg::Pong), 0);
        assert!(slow.close.is_cancelled());
        assert_eq!(hub.socket_count(), 0);
    }

    #[test]
    fn a_fan_out_sends_each_counsellor_their_audiences_text() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let clinic = Audience::Door(nwd_proto::PartnerId::parse("clinic").unwrap());
        let mut a1 = hub.register(&login("ana"), Presence::Available, clinic.clone(), &root);
        let mut a2 = hub.register(&login("ana"), Presence::Available, clinic.clone(), &root);
        let mut b = hub.register(&login("ben"), Presence::Available, clinic.clone(), &root);
        let mut s = hub.register(
            &login("sam"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let _gone = hub.register(&login("cy"), Presence::Available, Audience::Nobody, &root);
        let mut rendered = Vec::new();
        let sent = hub.fan_out(|audience| {
            rendered.push(audience.clone());
            match audience {
                Audience::Nobody => None,
                Audience::Everyone => Some(Utf8Bytes::from_static("all")),
                Audience::Door(_) => Some(Utf8Bytes::from_static("clinic")),
            }
        });
        assert_eq!(sent, 4);
        for rx in [&mut a1.rx, &mut a2.rx, &mut b.rx] {
            assert_eq!(
                rx.try_recv().unwrap(),
                Frame::Json(Utf8Bytes::from_static("clinic"))
            );
        }
        assert_eq!(
            s.rx.try_recv().unwrap(),
            Frame::Json(Utf8Bytes::from_static("all"))
        );
        // Asked once per counsellor (the queue caches per audience).
        assert_eq!(rendered.len(), 4);
    }

    #[test]
    fn ended_sessions_close_only_their_own_sockets() {
        let hub = Hub::default();
        let root = CancellationToken::new();
        let now = OffsetDateTime::now_utc();
        let a1 = hub.register(
            &login("ana"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let a2 = hub.register(
            &login_until("ana", now + time::Duration::hours(2)),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let b = hub.register(
            &login("ben"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let s = hub.register(
            &login_until("sam", now - time::Duration::seconds(1)),
            Presence::Available,
            Audience::Everyone,
            &root,
        );

        assert_eq!(hub.close_session(&login("ana").key), 1);
        assert!(a1.close.is_cancelled() && !a2.close.is_cancelled());
        assert_eq!(hub.close_session(&login("ana").key), 0, "closed once");

        assert_eq!(hub.close_ended(now, |who| who != &c("ben")), 2);
        assert!(b.close.is_cancelled() && s.close.is_cancelled());
        assert!(!a2.close.is_cancelled());
        assert_eq!(hub.close_ended(now + time::Duration::hours(3), |_| true), 1);
        assert!(a2.close.is_cancelled());
    }
}
