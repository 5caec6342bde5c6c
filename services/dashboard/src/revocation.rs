//! Ending the open sockets of ended sessions, within seconds:
//! - a session deleted from the `sessions` bucket (logout, on any dashboard
//!   process, or an operator revoking it) closes its sockets as soon as the
//!   bucket's watch delivers the delete marker;
//! - an expired session, or one whose counsellor is no longer in the live
//!   directory, is found by a sweep every heartbeat (which also follows a
//!   changed role or home partner into the part of the queue they see).
//!
//! The watch starts with the bucket's history, so deletes that happened
//! while it was down (a NATS reconnect) still close their sockets.

use std::sync::Arc;

use async_nats::jetstream::kv::{Operation, Store};
use nwd_runtime::ops::Readiness;
use time::OffsetDateTime;

use crate::App;

/// Readiness condition of the sessions watch.
pub const READY: &str = "sessions";

fn count(why: &'static str, closed: usize) {
    if closed > 0 {
        metrics::counter!(
            "nwd_dashboard_sockets_closed_total",
            "service" => crate::NAME, "reason" => why
        )
        .increment(closed as u64);
    }
}

/// Follows the sessions bucket until shutdown, closing the sockets of every
/// deleted or purged session.
pub async fn watch(app: Arc<App>, store: Store, readiness: Readiness) {
    let hub_app = app.clone();
    let on_entry = move |entry: async_nats::jetstream::kv::Entry| {
        if entry.operation == Operation::Put {
            return;
        }
        let closed = hub_app.hub.close_session(&entry.key);
        if closed > 0 {
            tracing::info!(sockets = closed, "session ended; its sockets closed");
        }
        count("session-ended", closed);
    };
    nwd_runtime::kv::watch_bucket(store, READY, readiness, app.shutdown.clone(), on_entry).await;
}

/// Every heartbeat until shutdown: closes the sockets of expired sessions and
/// of counsellors no longer in the directory.
pub async fn sweep(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = OffsetDateTime::now_utc();
        let directory = app.directory.get();
        let expired = app.hub.close_ended(now, |_| true);
        count("session-expired", expired);
        let removed = app
            .hub
            .close_ended(now, |who| directory.staff(who).is_some());
        count("not-in-directory", removed);
        if expired + removed > 0 {
            tracing::info!(expired, removed, "ended sessions' sockets closed");
        }
        let moved = app
            .hub
            .refresh_audiences(|who| crate::queue::Audience::of(directory.staff(who)));
        for who in moved {
            tracing::info!(counsellor = %who, "queue audience changed with the directory");
            app.queue.resend(&app.hub, &who);
        }
    }
}
