//! The queue every counsellor sees, not only their offers: the router
//! publishes the whole of it ([`QueueSnapshot`], core NATS) on every change
//! and at a steady interval; this process keeps the newest and sends each
//! open socket the part its counsellor may see, on connect and whenever the
//! entries change.
//!
//! A change reaches every socket at once (2,000 on one instance in the
//! bench): the message is serialised once per audience, not once per
//! socket, and every socket of that audience gets the same shared text.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use nwd_proto::PartnerId;
use nwd_proto::dashboard::{FollowUpEntry, QueueEntry, QueueSnapshot, ServerMsg};
use nwd_proto::directory::{Role, Staff};
use tokio::sync::mpsc;

use crate::hub::{Frame, Hub};

/// Which waiting contacts a counsellor sees in the queue. Entries carry no
/// message text, name or number; what differs is which doors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Supervisors: the whole queue.
    Everyone,
    /// A counsellor of a partner institution (every staff member has a home
    /// partner): contacts at that partner's doors, at the line's own
    /// numbers (the shared pool), and any contact whose ladder has reached
    /// "any on call" — those they may take too (no wrong doors).
    Door(PartnerId),
    /// Someone the directory no longer knows (their socket is about to close).
    Nobody,
}

impl Audience {
    pub fn of(staff: Option<&Staff>) -> Self {
        match staff {
            None => Audience::Nobody,
            Some(s) if s.role == Role::Supervisor => Audience::Everyone,
            Some(s) => Audience::Door(s.partner.clone()),
        }
    }

    /// A follow-up: for the staff of the person's door (or the line's own
    /// numbers) and the supervisors.
    pub fn sees_follow_up(&self, f: &FollowUpEntry) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Door(partner) => f.door_id.as_ref().is_none_or(|d| d == partner),
            Audience::Nobody => false,
        }
    }

    pub fn sees(&self, entry: &QueueEntry) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Door(partner) => {
                entry.open_to_all || entry.door_id.as_ref().is_none_or(|d| d == partner)
            }
            Audience::Nobody => false,
        }
    }
}

/// A snapshot the router republishes on every change and at a steady
/// interval (the queue, the floor): `seq` rises within one router process,
/// `at` orders snapshots across restarts.
pub trait Republished {
    fn order(&self) -> (time::OffsetDateTime, u64);
}

impl Republished for QueueSnapshot {
    fn order(&self) -> (time::OffsetDateTime, u64) {
        (self.at, self.seq)
    }
}

impl Republished for nwd_proto::dashboard::FloorSnapshot {
    fn order(&self) -> (time::OffsetDateTime, u64) {
        (self.at, self.seq)
    }
}

/// Whether `new` replaces `kept`: only a newer one does (by `at`, then
/// `seq`), so a late or repeated message is ignored.
pub fn is_newer<T: Republished>(kept: Option<&T>, new: &T) -> bool {
    kept.is_none_or(|k| new.order() > k.order())
}

/// What became of a snapshot from the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Newer, with other entries: sent to this many sockets.
    Changed(usize),
    /// Newer, the same entries: kept, nothing sent.
    Unchanged,
    /// Not newer than the one kept (a late or repeated message): ignored.
    Stale,
}

impl Taken {
    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Taken::Changed(_) => "changed",
            Taken::Unchanged => "unchanged",
            Taken::Stale => "stale",
        }
    }
}

/// The newest snapshot and its message per audience, rendered on first use.
#[derive(Debug, Default)]
pub struct Queue {
    latest: Mutex<Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    snapshot: Option<QueueSnapshot>,
    rendered: HashMap<Audience, Utf8Bytes>,
}

impl Latest {
    fn frame(&mut self, audience: &Audience) -> Option<Utf8Bytes> {
        let snapshot = self.snapshot.as_ref()?;
        if let Some(text) = self.rendered.get(audience) {
            return Some(text.clone());
        }
        let msg = ServerMsg::Queue {
            at: snapshot.at,
            entries: snapshot
                .entries
                .iter()
                .filter(|e| audience.sees(e))
                .cloned()
                .collect(),
            follow_ups: snapshot
                .follow_ups
                .iter()
                .filter(|f| audience.sees_follow_up(f))
                .cloned()
                .collect(),
        };
        match serde_json::to_string(&msg) {
            Ok(json) => {
                let text = Utf8Bytes::from(json);
                self.rendered.insert(audience.clone(), text.clone());
                Some(text)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise the queue");
                None
            }
        }
    }
}

impl Queue {
    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        // A poisoned lock only means a panic elsewhere; the data is whole.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `snapshot` if it is newer (by `at`, then `seq`) than the one
    /// kept, and sends it to every socket of `hub` when its entries or its
    /// follow-ups differ (a person who left can change only the follow-ups).
    /// The lock is held while sending, so a socket greeted meanwhile
    /// ([`Queue::greet`]) never gets an older queue after a newer one.
    pub fn take(&self, snapshot: QueueSnapshot, hub: &Hub) -> Taken {
        let mut latest = self.latest();
        if !is_newer(latest.snapshot.as_ref(), &snapshot) {
            return Taken::Stale;
        }
        let unchanged = latest.snapshot.as_ref().is_some_and(|kept| {
            kept.entries == snapshot.entries && kept.follow_ups == snapshot.follow_ups
        });
        latest.snapshot = Some(snapshot);
        latest.rendered.clear();
        if unchanged {
            return Taken::Unchanged;
        }
        Taken::Changed(hub.fan_out(|audience| latest.frame(audience)))
    }

    /// Queues the newest queue `audience` sees for a socket that just
    /// opened (nothing before the first snapshot arrives).
    pub fn greet(&self, audience: &Audience, tx: &mpsc::Sender<Frame>) {
        let mut latest = self.latest();
        if let Some(text) = latest.frame(audience) {
            // A new socket's queue holds only its hello: there is room.
            let _ = tx.try_send(Frame::Json(text));
        }
    }

    /// Sends the kept queue to the sockets of `who` (their audience changed).
    pub fn resend(&self, hub: &Hub, who: &nwd_proto::CounsellorId) -> usize {
        let mut latest = self.latest();
        hub.send_rendered(who, |audience| latest.frame(audience))
    }

    /// The `(at, seq)` of the snapshot kept.
    pub fn kept(&self) -> Option<(time::OffsetDateTime, u64)> {
        self.latest().snapshot.as_ref().map(|s| (s.at, s.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nwd_proto::{ContactId, Language, RiskLevel};
    use time::OffsetDateTime;

    fn entry(door: Option<&str>) -> QueueEntry {
        QueueEntry {
            contact_id: ContactId::new(),
            risk: RiskLevel::High,
            reasons: Vec::new(),
            lang: Language::En,
            channel: "SMS ··42".into(),
            door: door.unwrap_or("the line").into(),
            door_id: door.map(|d| PartnerId::parse(d).unwrap()),
            waiting_since: OffsetDateTime::now_utc(),
            escalation: None,
            offered: 1,
            outreach: false,
            open_to_all: false,
            held: false,
        }
    }

    #[test]
    fn a_partners_counsellor_sees_their_doors_and_the_lines_own() {
        let clinic = Audience::Door(PartnerId::parse("clinic").unwrap());
        assert!(clinic.sees(&entry(Some("clinic"))));
        assert!(clinic.sees(&entry(None)));
        assert!(!clinic.sees(&entry(Some("hospital"))));
        // Once its ladder reached "any on call", anyone may take it: shown.
        let widened = QueueEntry {
            open_to_all: true,
            ..entry(Some("hospital"))
        };
        assert!(clinic.sees(&widened));
        assert!(Audience::Everyone.sees(&entry(Some("hospital"))));
        assert!(!Audience::Nobody.sees(&entry(None)));
    }

    #[test]
    fn a_change_is_serialised_once_per_audience_and_shared() {
        use crate::session::Login;
        use nwd_proto::dashboard::Presence;
        let hub = Hub::default();
        let root = tokio_util::sync::CancellationToken::new();
        let login = |who: &str| Login {
            key: format!("session-of-{who}"),
            counsellor: nwd_proto::CounsellorId::parse(who).unwrap(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        let clinic = Audience::Door(PartnerId::parse("clinic").unwrap());
        let mut socks: Vec<_> = ["ana", "ben", "cy"]
            .iter()
            .map(|w| hub.register(&login(w), Presence::Available, clinic.clone(), &root))
            .collect();
        let mut sam = hub.register(
            &login("sam"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let queue = Queue::default();
        let entries = vec![entry(None), entry(Some("clinic")), entry(Some("hospital"))];
        let taken = queue.take(
            QueueSnapshot {
                seq: 1,
                at: OffsetDateTime::now_utc(),
                entries,
                follow_ups: Vec::new(),
            },
            &hub,
        );
        assert_eq!(taken, Taken::Changed(4));
        assert_eq!(queue.latest().rendered.len(), 2, "two audiences, two texts");
        let texts: Vec<_> = socks
            .iter_mut()
            .map(|s| match s.rx.try_recv().unwrap() {
                Frame::Json(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        // The same bytes, not copies.
        assert!(
            texts
                .iter()
                .all(|t| t.as_str().as_ptr() == texts[0].as_str().as_ptr())
        );
        let mine: ServerMsg = serde_json::from_str(texts[0].as_str()).unwrap();
        assert!(matches!(mine, ServerMsg::Queue { entries, .. } if entries.len() == 2));
        let Frame::Json(all) = sam.rx.try_recv().unwrap() else {
            panic!("a queue frame")
        };
        let all: ServerMsg = serde_json::from_str(all.as_str()).unwrap();
        assert!(matches!(all, ServerMsg::Queue { entries, .. } if entries.len() == 3));
    }

    #[test]
    fn only_a_newer_snapshot_replaces_the_kept_one() {
        let queue = Queue::default();
        let hub = Hub::default();
        let at = OffsetDateTime::now_utc();
        let snap = |seq, at, entries: Vec<QueueEntry>| QueueSnapshot {
            seq,
            at,
            entries,
            follow_ups: Vec::new(),
        };
        let one = vec![entry(None)];
        assert_eq!(
            queue.take(snap(5, at, one.clone()), &hub),
            Taken::Changed(0)
        );
        assert_eq!(queue.take(snap(4, at, vec![]), &hub), Taken::Stale);
        assert_eq!(queue.take(snap(5, at, vec![]), &hub), Taken::Stale);
        let earlier = at - time::Duration::seconds(1);
        assert_eq!(queue.take(snap(9, earlier, vec![]), &hub), Taken::Stale);
        assert_eq!(queue.take(snap(6, at, one), &hub), Taken::Unchanged);
        assert_eq!(queue.kept(), Some((at, 6)));
        // A restarted router counts again from 0, later.
        let later = at + time::Duration::seconds(1);
        assert_eq!(queue.take(snap(0, later, vec![]), &hub), Taken::Changed(0));
    }

    #[test]
    fn a_new_follow_up_alone_is_a_change() {
        let queue = Queue::default();
        let hub = Hub::default();
        let at = OffsetDateTime::now_utc();
        let snap = |seq, follow_ups| QueueSnapshot {
            seq,
            at,
            entries: Vec::new(),
            follow_ups,
        };
        assert_eq!(queue.take(snap(1, Vec::new()), &hub), Taken::Changed(0));
        let left = FollowUpEntry {
            contact_id: ContactId::new(),
            risk: RiskLevel::High,
            lang: Language::En,
            channel: "Chat".into(),
            door: "the line".into(),
            door_id: None,
            left: nwd_proto::handover::Left {
                how: nwd_proto::handover::LeftHow::QuickExit,
                at,
                claimed: None,
            },
        };
        assert_eq!(
            queue.take(snap(2, vec![left.clone()]), &hub),
            Taken::Changed(0)
        );
        assert_eq!(queue.take(snap(3, vec![left]), &hub), Taken::Unchanged);
        assert_eq!(queue.take(snap(4, Vec::new()), &hub), Taken::Changed(0));
    }
}
