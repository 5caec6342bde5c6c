//! The line's status, for the patient chat's honest wait estimate: how many
//! people wait (per risk level), how many counsellors are available and
//! with how many free seats, and the typical recent wait until an accept.
//! Counts and a duration only, nothing about any person.
//!
//! Published on core NATS ([`subjects::line_status`]) when the figures
//! change (looked at every [`LOOK_EVERY`], so a burst of changes is one
//! publication) and at a steady interval even when nothing changed, so a
//! chat instance that just started learns the figures quickly. Every router
//! replica keeps the same board (from the buckets' watches) and publishes
//! the same figures; the chat keeps the latest.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use nwd_ladder::Floor;
use nwd_proto::router::LineStatus;
use nwd_proto::{Envelope, RiskLevel, subjects};
use tokio_util::sync::CancellationToken;

use crate::{NAME, Router};

/// How often the figures are looked at (the most a change waits to be told).
pub const LOOK_EVERY: Duration = Duration::from_millis(500);

/// The line's status on `floor`.
pub fn status(floor: &Floor) -> LineStatus {
    let mut waiting = RiskLevel::ALL.map(|r| (r, 0u32));
    for (Reverse(risk), _, _) in &floor.queue.waiting {
        if let Some(slot) = waiting.iter_mut().find(|(r, _)| r == risk) {
            slot.1 += 1;
        }
    }
    let (mut counsellors_available, mut free_seats) = (0u32, 0u32);
    for staff in &floor.directory.staff {
        if floor.is_available(&staff.id) {
            counsellors_available += 1;
            free_seats += staff.capacity.saturating_sub(floor.load_of(&staff.id));
        }
    }
    LineStatus {
        waiting: waiting.to_vec(),
        counsellors_available,
        free_seats,
        typical_wait_secs: floor
            .queue
            .typical_wait
            .map(|d| u64::try_from(d.whole_seconds()).unwrap_or(0)),
        at: floor.now,
    }
}

/// Whether `now` must be published after `last` (none yet, figures
/// changed, or the steady interval `every` passed since `last_sent`).
fn due(last: Option<&LineStatus>, now: &LineStatus, since_sent: Duration, every: Duration) -> bool {
    last.is_none_or(|l| !l.same_figures(now)) || since_sent >= every
}

/// Publishes the line's status until `shutdown`: on change, and every `every`.
pub async fn publish(
    router: Arc<Router>,
    client: async_nats::Client,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut look = tokio::time::interval(LOOK_EVERY.min(every));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<LineStatus> = None;
    let mut sent_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = look.tick() => {}
        }
        let now = status(&router.floor());
        if !due(last.as_ref(), &now, sent_at.elapsed(), every) {
            continue;
        }
        let payload = Envelope::new(now.clone()).to_bytes();
        match client
            .publish(subjects::line_status(), payload.into())
            .await
        {
            Ok(()) => {
                metrics::counter!("nwd_router_line_status_published_total", "service" => NAME)
                    .increment(1);
                last = Some(now);
                sent_at = tokio::time::Instant::now();
            }
            Err(e) => tracing::debug!(error = %e, "line status not published"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use nwd_ladder::QueueStats;
    use nwd_proto::ContactId;
    use nwd_proto::dashboard::{Presence, PresenceRecord};
    use time::OffsetDateTime;

    use super::*;

    fn demo() -> nwd_proto::directory::Directory {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/demo/directory.toml");
        nwd_runtime::directory::load(&path).unwrap()
    }

    #[test]
    fn the_status_counts_waiting_by_risk_available_counsellors_and_free_seats() {
        let dir = demo();
        let now = OffsetDateTime::now_utc();
        let (a, b, c) = (&dir.staff[0], &dir.staff[1], &dir.staff[2]);
        let fresh = |who: &nwd_proto::CounsellorId, status| {
            (
                who.clone(),
                PresenceRecord {
                    counsellor: who.clone(),
                    status,
                    heartbeat_at: now,
                },
            )
        };
        let presence: HashMap<_, _> = [
            fresh(&a.id, Presence::Available),
            fresh(&b.id, Presence::Available),
            fresh(&c.id, Presence::Away),
        ]
        .into_iter()
        .collect();
        let load: HashMap<_, _> = [(a.id.clone(), a.capacity), (c.id.clone(), 1)]
            .into_iter()
            .collect();
        let waiting = [RiskLevel::High, RiskLevel::Low, RiskLevel::Low]
            .into_iter()
            .map(|r| (Reverse(r), now, ContactId::new()))
            .collect();
        let floor = Floor::new(
            Arc::new(dir.clone()),
            presence,
            load,
            now,
            time::Duration::seconds(15),
            QueueStats {
                waiting,
                typical_wait: Some(time::Duration::seconds(250)),
            },
        );
        let s = status(&floor);
        assert_eq!(s.waiting_total(), 3);
        assert!(s.waiting.contains(&(RiskLevel::High, 1)));
        assert!(s.waiting.contains(&(RiskLevel::Low, 2)));
        assert!(s.waiting.contains(&(RiskLevel::Imminent, 0)));
        assert_eq!(s.counsellors_available, 2, "away is not available");
        assert_eq!(s.free_seats, b.capacity, "a is full");
        assert_eq!(s.typical_wait_secs, Some(250));
        assert_eq!(s.at, now);
    }

    #[test]
    fn a_change_is_told_at_once_and_the_same_figures_only_at_the_interval() {
        let every = Duration::from_secs(10);
        let base = LineStatus {
            waiting: vec![(RiskLevel::Low, 1)],
            counsellors_available: 1,
            free_seats: 0,
            typical_wait_secs: None,
            at: OffsetDateTime::now_utc(),
        };
        let later = LineStatus {
            at: base.at + time::Duration::seconds(1),
            ..base.clone()
        };
        assert!(due(None, &base, Duration::ZERO, every), "first");
        assert!(!due(Some(&base), &later, Duration::from_secs(1), every));
        assert!(due(Some(&base), &later, every, every), "steady interval");
        let changed = LineStatus {
            waiting: vec![(RiskLevel::Low, 2)],
            ..later.clone()
        };
        assert!(due(Some(&base), &changed, Duration::ZERO, every));
        let faster = LineStatus {
            typical_wait_secs: Some(60),
            ..later
        };
        assert!(due(Some(&base), &faster, Duration::ZERO, every));
    }
}
