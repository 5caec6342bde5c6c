//! The queue feed: the whole queue as a [`QueueSnapshot`] on
//! [`subjects::dashboard_queue`] (core NATS, not stored) for every
//! dashboard, after each change of the queue (coalesced: at most one per
//! [`MIN_GAP`]) and every [`EVERY`], so a dashboard that starts or
//! reconnects has it within seconds. Built from the router's board with
//! `transcript::queue_entry`, most urgent first: ids, levels, triage
//! reasons, door, channel label and waits; never message text, a number or
//! a name.

use std::sync::Arc;
use std::time::Duration;

use nwd_proto::dashboard::QueueSnapshot;
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
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = router.queue_changed() => {}
        }
        seq += 1;
        let snapshot = QueueSnapshot {
            seq,
            at: OffsetDateTime::now_utc(),
            entries: router.queue_entries(),
            follow_ups: router.follow_up_entries(),
        };
        let entries = snapshot.entries.len();
        if let Err(e) = client
            .publish(
                subjects::dashboard_queue(),
                Envelope::new(snapshot).to_bytes().into(),
            )
            .await
        {
            tracing::warn!(error = %e, entries, "cannot publish the queue snapshot");
        } else {
            metrics::counter!("nwd_queue_snapshots_total", "service" => NAME).increment(1);
        }
        // Changes during the gap are served by one snapshot after it.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
    }
}
