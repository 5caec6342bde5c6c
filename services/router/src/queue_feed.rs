//! The queue feed: the whole queue as a [`QueueSnapshot`] on
//! [`subjects::dashboard_queue`] (core NATS, not stored) for every
//! dashboard, after each change of the queue (coalesced: at most one per
//! [`MIN_GAP`]) and every [`EVERY`], so a dashboard that starts or
//! reconnects has it within seconds. Built from the router's board with
//! `transcript::queue_entry`, most urgent first: ids, levels, triage
//! reasons, door, channel label and waits; never message text, a number or
//! a name.
//!
//! The same task publishes the floor for supervisors as a [`FloorSnapshot`]
//! on [`subjects::dashboard_floor`]: the staff with presence, load,
//! capacity and whether they are on call, the conversations in progress
//! (holder, level, channel label, door, since, orphaned, transferring) and
//! the switchboard; after each change of a contact, a presence or the
//! switchboard (coalesced the same way) and every [`EVERY`].

use std::sync::Arc;
use std::time::Duration;

use nwd_proto::contact::ContactState;
use nwd_proto::dashboard::{
    ConversationSummary, FloorSnapshot, Presence, QueueSnapshot, StaffView,
};
use nwd_proto::{Envelope, subjects};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{NAME, Router};

/// A snapshot at least this often, changed or not.
pub const EVERY: Duration = Duration::from_secs(5);
/// The least time between two snapshots (about four a second at most).
pub const MIN_GAP: Duration = Duration::from_millis(250);

/// Publishes snapshots until `shutdown`.
pub async fn run(router: Arc<Router>, client: async_nats::Client, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut queue_seq, mut floor_seq): (u64, u64) = (0, 0);
    loop {
        // A change of one wakes its snapshot; a change of the other meanwhile
        // is served after the gap (its wake-up is kept).
        let (queue, floor) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => (true, true),
            _ = router.queue_changed() => (true, false),
            _ = router.floor_changed() => (false, true),
        };
        if queue {
            queue_seq += 1;
            let snapshot = QueueSnapshot {
                seq: queue_seq,
                at: OffsetDateTime::now_utc(),
                entries: router.queue_entries(),
                follow_ups: router.follow_up_entries(),
            };
            publish(&client, subjects::dashboard_queue(), snapshot, "queue").await;
        }
        if floor {
            floor_seq += 1;
            let snapshot = router.floor_snapshot(floor_seq);
            publish(&client, subjects::dashboard_floor(), snapshot, "floor").await;
        }
        // Changes during the gap are served by one snapshot after it.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}

async fn publish<T: nwd_proto::Event>(
    client: &async_nats::Client,
    subject: String,
    snapshot: T,
    kind: &'static str,
) {
    if let Err(e) = client
        .publish(subject, Envelope::new(snapshot).to_bytes().into())
        .await
    {
        tracing::warn!(error = %e, kind, "cannot publish a snapshot");
    } else {
        metrics::counter!("nwd_queue_snapshots_total", "service" => NAME, "kind" => kind)
            .increment(1);
    }
}

impl Router {
    /// The floor as supervisors see it (no message text, no number).
    pub fn floor_snapshot(&self, seq: u64) -> FloorSnapshot {
        let floor = self.floor();
        let directory = floor.directory.clone();
        let staff = {
            let state = self.state_view();
            directory
                .staff
                .iter()
                .map(|s| StaffView {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    role: s.role,
                    presence: state
                        .presence(&s.id)
                        .filter(|p| !floor.disconnected(&p.counsellor))
                        .map_or(Presence::Offline, |p| p.status),
                    load: floor.load_of(&s.id),
                    capacity: s.capacity,
                    on_call: floor.on_call(s),
                })
                .collect()
        };
        let mut conversations: Vec<ConversationSummary> = self
            .state_view()
            .records()
            .filter_map(|r| match &r.state {
                ContactState::Assigned { counsellor, since } => Some(ConversationSummary {
                    contact_id: r.id,
                    counsellor: counsellor.clone(),
                    risk: r.risk,
                    channel: r.channel.label(),
                    door: directory.door_name(r.door.as_ref()),
                    since: *since,
                    orphaned: r.orphaned_at.is_some(),
                    transferring: r.transfer.is_some(),
                }),
                _ => None,
            })
            .collect();
        conversations.sort_by_key(|c| (c.since, c.contact_id));
        FloorSnapshot {
            seq,
            at: floor.now,
            staff,
            conversations,
            switchboard: self.switchboard_state(),
        }
    }
}
