//! The floor for supervisors: everyone on shift with status and load,
//! conversations in progress, the switchboard. The router publishes the
//! whole of it ([`FloorSnapshot`], core NATS) on every change and at a
//! steady interval; this process keeps the newest (the queue's rule,
//! [`crate::queue::is_newer`]) and sends it to supervisors only, on connect
//! and whenever it changes. Counsellors never get it: it names everyone's
//! load and every conversation.

use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use nwd_proto::dashboard::{FloorSnapshot, ServerMsg};
use tokio::sync::mpsc;

use crate::hub::{Frame, Hub};
use crate::queue::{Audience, Taken, is_newer};

/// The newest floor and its message, rendered once for every supervisor.
#[derive(Debug, Default)]
pub struct Floor {
    latest: Mutex<Option<(FloorSnapshot, Utf8Bytes)>>,
}

/// Supervisors are the audience that sees the whole queue.
fn for_supervisors(audience: &Audience) -> bool {
    *audience == Audience::Everyone
}

impl Floor {
    fn latest(&self) -> std::sync::MutexGuard<'_, Option<(FloorSnapshot, Utf8Bytes)>> {
        // A poisoned lock only means a panic elsewhere; the data is whole.
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `snapshot` if newer and sends it to every supervisor's sockets
    /// when it differs from the kept one. The lock is held while sending,
    /// so a supervisor greeted meanwhile never gets an older floor after a newer one.
    pub fn take(&self, snapshot: FloorSnapshot, hub: &Hub) -> Taken {
        let mut latest = self.latest();
        if !is_newer(latest.as_ref().map(|(s, _)| s), &snapshot) {
            return Taken::Stale;
        }
        let unchanged = latest.as_ref().is_some_and(|(kept, _)| {
            kept.staff == snapshot.staff
                && kept.conversations == snapshot.conversations
                && kept.switchboard == snapshot.switchboard
        });
        let msg = ServerMsg::Floor {
            floor: Box::new(snapshot.clone()),
        };
        let text = match serde_json::to_string(&msg) {
            Ok(json) => Utf8Bytes::from(json),
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise the floor");
                return Taken::Stale;
            }
        };
        *latest = Some((snapshot, text.clone()));
        if unchanged {
            return Taken::Unchanged;
        }
        Taken::Changed(hub.fan_out(|audience| for_supervisors(audience).then(|| text.clone())))
    }

    /// Queues the newest floor for a supervisor's socket that just opened.
    pub fn greet(&self, audience: &Audience, tx: &mpsc::Sender<Frame>) {
        if !for_supervisors(audience) {
            return;
        }
        if let Some((_, text)) = self.latest().as_ref() {
            let _ = tx.try_send(Frame::Json(text.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Login;
    use nwd_proto::CounsellorId;
    use nwd_proto::dashboard::Presence;
    use time::OffsetDateTime;

    fn snap(seq: u64, at: OffsetDateTime, switchboard_on: bool) -> FloorSnapshot {
        FloorSnapshot {
            seq,
            at,
            staff: Vec::new(),
            conversations: Vec::new(),
            switchboard: Some(nwd_proto::handover::Switchboard {
                on: switchboard_on,
                by: CounsellorId::parse("sam").unwrap(),
                at,
            }),
        }
    }

    #[test]
    fn only_supervisors_get_the_floor_and_only_a_newer_changed_one() {
        let hub = Hub::default();
        let root = tokio_util::sync::CancellationToken::new();
        let login = |who: &str| Login {
            key: format!("session-of-{who}"),
            counsellor: CounsellorId::parse(who).unwrap(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        let clinic = Audience::Door(nwd_proto::PartnerId::parse("clinic").unwrap());
        let mut ana = hub.register(&login("ana"), Presence::Available, clinic.clone(), &root);
        let mut sam = hub.register(
            &login("sam"),
            Presence::Available,
            Audience::Everyone,
            &root,
        );
        let floor = Floor::default();
        let at = OffsetDateTime::now_utc();
        assert_eq!(floor.take(snap(2, at, true), &hub), Taken::Changed(1));
        assert!(
            matches!(sam.rx.try_recv().unwrap(), Frame::Json(t) if t.as_str().contains(r#""type":"floor""#))
        );
        assert!(ana.rx.try_recv().is_err(), "a counsellor never gets it");
        assert_eq!(floor.take(snap(1, at, false), &hub), Taken::Stale);
        assert_eq!(floor.take(snap(3, at, true), &hub), Taken::Unchanged);
        assert_eq!(floor.take(snap(4, at, false), &hub), Taken::Changed(1));

        let (tx, mut rx) = mpsc::channel(4);
        floor.greet(&clinic, &tx);
        assert!(rx.try_recv().is_err());
        floor.greet(&Audience::Everyone, &tx);
        let Frame::Json(text) = rx.try_recv().unwrap() else {
            panic!("a floor frame")
        };
        let ServerMsg::Floor { floor } = serde_json::from_str(text.as_str()).unwrap() else {
            panic!("a floor")
        };
        assert_eq!(floor.seq, 4);
    }
}
