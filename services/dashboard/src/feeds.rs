//! What arrives from the bus for open sockets: the router's pushes (one core
//! subscription per process) and delivery statuses of our replies.

use std::sync::Arc;

use async_nats::Subscriber;
use futures::StreamExt;
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{DashboardPush, QueueSnapshot, ServerMsg};
use nwd_proto::deadletter::OpsAlert;
use nwd_proto::directory::Role;
use nwd_proto::events::OutboundStatus;
use nwd_proto::{Envelope, wire};
use nwd_runtime::kv;

use crate::App;

fn count(feed: &'static str, outcome: &'static str) {
    metrics::counter!(
        "nwd_dashboard_feed_messages_total",
        "service" => crate::NAME, "feed" => feed, "outcome" => outcome
    )
    .increment(1);
}

/// Forwards each [`DashboardPush`] to the open sockets of its counsellor.
pub async fn forward_pushes(app: Arc<App>, mut sub: Subscriber) {
    loop {
        let msg = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        match Envelope::<DashboardPush>::from_bytes(&msg.payload) {
            Ok(env) => {
                let mut push = env.data;
                with_notes(&app, &mut push.msg).await;
                let n = app.hub.send(&push.counsellor, &push.msg);
                if n > 0
                    && let Some((contact, view)) = crate::audit::shown(&push.msg)
                {
                    crate::audit::viewed(&app, &push.counsellor, contact, view);
                }
                tracing::debug!(counsellor = %push.counsellor, sockets = n, "push forwarded");
                count("push", if n > 0 { "delivered" } else { "no-socket" });
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable dashboard push");
                count("push", "undecodable");
            }
        }
    }
    let _ = sub.unsubscribe().await;
}

/// Adds the contact's private notes to a conversation or offer the router
/// pushed (the router's view leaves them out). Only a contact someone has
/// held can have notes: an offer of a contact nobody answered yet is sent
/// as it came, without reading the stream.
async fn with_notes(app: &App, msg: &mut ServerMsg) {
    let contact = match msg {
        ServerMsg::Conversation { contact } => contact,
        ServerMsg::Offer { contact }
            if contact.transfer.is_some()
                || contact
                    .messages
                    .iter()
                    .any(|m| m.speaker == nwd_proto::dashboard::Speaker::Counsellor) =>
        {
            contact
        }
        _ => return,
    };
    match nwd_runtime::transcript::load_notes(&app.js, &contact.contact_id).await {
        Ok(notes) => {
            let directory = app.directory.get();
            contact.notes = notes
                .iter()
                .map(|n| nwd_runtime::transcript::note_view(n, &directory))
                .collect();
        }
        Err(e) => {
            tracing::warn!(contact = %contact.contact_id, error = %e, "cannot read the notes");
            count("push", "notes-unavailable");
        }
    }
}

/// Forwards each [`OutboundStatus`] to the sockets of the counsellor the
/// contact is assigned to.
pub async fn forward_statuses(app: Arc<App>, mut sub: Subscriber) {
    let Some(stores) = app.stores() else { return };
    loop {
        let msg = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Ok(env) = Envelope::<OutboundStatus>::from_bytes(&msg.payload) else {
            count("status", "undecodable");
            continue;
        };
        let st = env.data;
        let rec = match kv::get::<ContactRecord>(
            &stores.contacts,
            &wire::key::contact(&st.contact_id),
        )
        .await
        {
            Ok(v) => v.value,
            Err(e) => {
                tracing::warn!(contact = %st.contact_id, error = %e, "cannot read contact for a status");
                count("status", "kv-error");
                continue;
            }
        };
        let Some(counsellor) = rec.as_ref().and_then(|r| r.assigned_to()) else {
            count("status", "not-assigned");
            continue;
        };
        let n = app.hub.send(
            counsellor,
            &ServerMsg::DeliveryStatus {
                contact_id: st.contact_id,
                outbound_id: st.outbound_id,
                status: st.status,
            },
        );
        count("status", if n > 0 { "delivered" } else { "no-socket" });
    }
    let _ = sub.unsubscribe().await;
}

/// Forwards each [`OpsAlert`] (core NATS, from any service) to every
/// supervisor's open sockets.
pub async fn forward_ops_alerts(app: Arc<App>, mut sub: Subscriber) {
    loop {
        let msg = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Ok(env) = Envelope::<OpsAlert>::from_bytes(&msg.payload) else {
            count("ops-alert", "undecodable");
            continue;
        };
        let alert = ServerMsg::OpsAlert { alert: env.data };
        let directory = app.directory.get();
        let n: usize = directory
            .staff
            .iter()
            .filter(|s| s.role == Role::Supervisor)
            .map(|s| app.hub.send(&s.id, &alert))
            .sum();
        count("ops-alert", if n > 0 { "delivered" } else { "no-socket" });
    }
    let _ = sub.unsubscribe().await;
}

/// Keeps the newest [`QueueSnapshot`] and sends it to every open socket
/// when it changes ([`crate::queue`]).
pub async fn forward_queue(app: Arc<App>, mut sub: Subscriber) {
    loop {
        let msg = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Ok(env) = Envelope::<QueueSnapshot>::from_bytes(&msg.payload) else {
            count("queue", "undecodable");
            continue;
        };
        let started = std::time::Instant::now();
        let taken = app.queue.take(env.data, &app.hub);
        if let crate::queue::Taken::Changed(sockets) = taken {
            metrics::histogram!("nwd_dashboard_queue_fanout_seconds", "service" => crate::NAME)
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(sockets, "queue sent");
        }
        count("queue", taken.as_str());
    }
    let _ = sub.unsubscribe().await;
}

/// Keeps the newest [`nwd_proto::dashboard::FloorSnapshot`] and sends it to
/// every supervisor's sockets when it changes ([`crate::floor`]).
pub async fn forward_floor(app: Arc<App>, mut sub: Subscriber) {
    loop {
        let msg = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { break };
        let Ok(env) = Envelope::<nwd_proto::dashboard::FloorSnapshot>::from_bytes(&msg.payload)
        else {
            count("floor", "undecodable");
            continue;
        };
        let taken = app.floor.take(env.data, &app.hub);
        count("floor", taken.as_str());
    }
    let _ = sub.unsubscribe().await;
}
