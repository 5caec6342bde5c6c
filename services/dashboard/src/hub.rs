//! The open sockets of this dashboard process, by counsellor, and each
//! connected counsellor's chosen presence.
//!
//! A counsellor may have several tabs open; everything for them goes to all
//! of them. Delivery never waits on a slow browser: a socket whose queue is
//! full is closed, and the browser reconnects and gets a fresh snapshot.

use std::collections::HashMap;
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
}

impl Hub {
    fn desks(&self) -> std::sync::MutexGuard<'_, HashMap<CounsellorId, Desk>> {
        // A poisoned lock only means a panic elsewhere; the map itself is consistent.
        self.desks.lock().unwrap_or_else(|e| e.into_inner())
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
    pub fn send(&self, who: &CounsellorId, msg: &ServerMsg) -> usize {
        let mut desks = self.desks();
        let Some(desk) = desks.get_mut(who) else {
            return 0;
        };
        deliver(who, desk, &Frame::Msg(Box::new(msg.clone())))
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
        assert_eq!(
            a1.rx.try_recv().unwrap(),
            Frame::Msg(Box::new(ServerMsg::Pong))
        );
        assert_eq!(
            a2.rx.try_recv().unwrap(),
            Frame::Msg(Box::new(ServerMsg::Pong))
        );
        assert!(b.rx.try_recv().is_err());
        assert_eq!(hub.send(&c("nobody"), &ServerMsg::Pong), 0);
        assert!(!hub.unregister(&c("ana"), a1.id));
        assert!(hub.unregister(&c("ana"), a2.id));
        assert_eq!(hub.status(&c("ana")), None);
        assert_eq!(hub.present(), vec![c("ben")]);
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
