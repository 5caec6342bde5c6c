//! Presence records in the `presence` bucket (key = counsellor id), which the
//! router reads to decide who gets offers. The dashboard writes them: the
//! status a counsellor chose, and a heartbeat while one of their sockets is
//! open (a stale heartbeat counts as offline, so a crashed dashboard does
//! not leave anyone "available").
//!
//! Every write goes through `kv::cas` and decides from the hub at the moment
//! of writing, so a heartbeat that loses a race with the last socket closing
//! re-decides and leaves the record offline.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use nwd_proto::dashboard::{Presence, PresenceRecord};
use nwd_proto::{CounsellorId, wire};
use nwd_runtime::kv::{self, Cas, KvError};
use time::OffsetDateTime;

use crate::App;
use crate::hub::Hub;

/// A reconnecting browser takes back its earlier status if that status was
/// still being refreshed this recently (e.g. across a dashboard restart).
pub const ADOPT_WITHIN: time::Duration = time::Duration::seconds(60);

fn record(who: &CounsellorId, status: Presence) -> PresenceRecord {
    PresenceRecord {
        counsellor: who.clone(),
        status,
        heartbeat_at: OffsetDateTime::now_utc(),
    }
}

/// The status a newly connected counsellor starts with: their recorded one if
/// it is recent, else offline.
pub async fn initial(store: &Store, who: &CounsellorId) -> Presence {
    match kv::get::<PresenceRecord>(store, &wire::key::presence(who)).await {
        Ok(v) => v
            .value
            .filter(|r| OffsetDateTime::now_utc() - r.heartbeat_at < ADOPT_WITHIN)
            .map_or(Presence::Offline, |r| r.status),
        Err(e) => {
            tracing::warn!(counsellor = %who, error = %e, "cannot read presence");
            Presence::Offline
        }
    }
}

/// Writes the counsellor's current status from the hub (offline when they
/// have no socket here any more).
pub async fn sync(store: &Store, hub: &Hub, who: &CounsellorId) -> Result<Presence, KvError> {
    let (status, _) = kv::cas(
        store,
        &wire::key::presence(who),
        |_: Option<PresenceRecord>| {
            let status = hub.status(who).unwrap_or(Presence::Offline);
            Cas::Write(record(who, status), status)
        },
    )
    .await?;
    Ok(status)
}

/// Refreshes the heartbeat of a connected, not-offline counsellor; leaves the
/// record alone otherwise.
pub async fn refresh(store: &Store, hub: &Hub, who: &CounsellorId) -> Result<(), KvError> {
    kv::cas(
        store,
        &wire::key::presence(who),
        |_: Option<PresenceRecord>| match hub.status(who) {
            Some(status) if status != Presence::Offline => Cas::Write(record(who, status), ()),
            _ => Cas::Keep(()),
        },
    )
    .await?;
    Ok(())
}

/// Refreshes every present counsellor's heartbeat every `heartbeat` until shutdown.
pub async fn heartbeat(app: Arc<App>) {
    let Some(stores) = app.stores() else { return };
    let mut tick = tokio::time::interval(app.settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for who in app.hub.present() {
            let write = refresh(&stores.presence, &app.hub, &who);
            match tokio::time::timeout(app.settings.heartbeat.max(Duration::from_secs(1)), write)
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(counsellor = %who, error = %e, "presence heartbeat failed");
                }
                Err(_) => tracing::warn!(counsellor = %who, "presence heartbeat timed out"),
            }
        }
    }
}
