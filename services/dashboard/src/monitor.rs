//! Silent monitoring: a supervisor follows a conversation without the
//! person or the holder knowing. `Monitoring` brings its history and notes;
//! then every new line follows as it is stored.
//!
//! Each monitoring runs ordered consumers on the contact's own subjects
//! (CONTACTS: the person's messages, notes, resolution; OUTBOUND: our
//! replies and their delivery statuses), like the transcript reader. The
//! streams are where every line is stored whichever dashboard or router
//! instance handled it, so a supervisor sees replies sent through another
//! dashboard process too; the pushes this process forwards would miss
//! those. The consumers start before the history is read and lines already
//! in the history are skipped, so nothing falls between the two.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use nwd_proto::dashboard::{ContactView, ReasonView, ServerMsg};
use nwd_proto::events::{ContactNoted, MessageTriaged, OutboundChat, OutboundSms, OutboundStatus};
use nwd_proto::{ContactId, CounsellorId, Envelope, streams, subjects};
use nwd_runtime::transcript;
use tokio_util::sync::CancellationToken;

use crate::App;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot follow stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        source: async_nats::Error,
    },
}

type Lines = futures::stream::BoxStream<'static, Result<jetstream::Message, async_nats::Error>>;

/// New lines of one contact from now on (ordered consumers on its own
/// subjects in CONTACTS and OUTBOUND, merged).
pub async fn live_lines(
    js: &jetstream::Context,
    contact: &ContactId,
) -> Result<Lines, FollowError> {
    let contacts = ordered(
        js,
        streams::CONTACTS,
        vec![
            subjects::contact_triaged(contact),
            subjects::contact_noted(contact),
            subjects::contact_resolved(contact),
        ],
    )
    .await?;
    let outbound = ordered(
        js,
        streams::OUTBOUND,
        vec![
            subjects::outbound_for_contact(contact),
            subjects::outbound_chat_for_contact(contact),
        ],
    )
    .await?;
    Ok(futures::stream::select(contacts, outbound).boxed())
}

async fn ordered(
    js: &jetstream::Context,
    stream: &'static str,
    filters: Vec<String>,
) -> Result<Lines, FollowError> {
    let err = |source: async_nats::Error| FollowError::Stream { stream, source };
    let handle = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
    let consumer = handle
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    let messages = consumer.messages().await.map_err(|e| err(e.into()))?;
    Ok(messages.map(|m| m.map_err(async_nats::Error::from)).boxed())
}

/// The ids already on screen in `view` (lines and notes): the live lines
/// that the history had are skipped.
pub fn shown_ids(view: &ContactView) -> HashSet<String> {
    view.messages
        .iter()
        .map(|m| m.id.clone())
        .chain(view.notes.iter().map(|n| n.id.clone()))
        .collect()
}

/// What a stored line of `contact` shows a monitoring supervisor, if
/// anything (`None` also for a line already shown). `Resolved` ends it.
pub fn line_for_monitor(
    contact: &ContactView,
    payload: &[u8],
    shown: &mut HashSet<String>,
    directory: &nwd_proto::directory::Directory,
) -> Option<ServerMsg> {
    let id = contact.contact_id;
    if let Ok(env) = Envelope::<MessageTriaged>::from_bytes(payload) {
        let line = transcript::person_view(&env.data);
        let mut reasons = contact.reasons.clone();
        reasons.extend(env.data.assessment.reasons.iter().map(ReasonView::from));
        return shown.insert(line.id.clone()).then(|| ServerMsg::Message {
            contact_id: id,
            risk: contact.risk.max(env.data.assessment.level),
            reasons,
            message: line,
        });
    }
    if let Ok(env) = Envelope::<ContactNoted>::from_bytes(payload) {
        let note = transcript::note_view(&env.data, directory);
        return shown.insert(note.id.clone()).then_some(ServerMsg::Noted {
            contact_id: id,
            note,
        });
    }
    if let Ok(env) = Envelope::<nwd_proto::events::ContactResolved>::from_bytes(payload) {
        return Some(ServerMsg::Resolved {
            contact_id: env.data.contact_id,
        });
    }
    let ours = if let Ok(env) = Envelope::<OutboundSms>::from_bytes(payload) {
        Some(env.data)
    } else if let Ok(env) = Envelope::<OutboundChat>::from_bytes(payload) {
        Some(env.data.as_sms())
    } else {
        None
    };
    if let Some(sms) = ours {
        let line = transcript::outbound_view(&sms);
        return shown.insert(line.id.clone()).then(|| ServerMsg::Message {
            contact_id: id,
            risk: contact.risk,
            reasons: contact.reasons.clone(),
            message: line,
        });
    }
    if let Ok(env) = Envelope::<OutboundStatus>::from_bytes(payload) {
        return Some(ServerMsg::DeliveryStatus {
            contact_id: id,
            outbound_id: env.data.outbound_id,
            status: env.data.status,
        });
    }
    None
}

/// Sends `who` every new line of `contact` until `stop` (StopMonitoring,
/// their last socket closed, shutdown) or the contact is resolved. Nothing
/// goes to the person or the holder.
pub async fn follow(
    app: Arc<App>,
    who: CounsellorId,
    view: ContactView,
    mut lines: Lines,
    mut shown: HashSet<String>,
    started: Started,
) {
    let stop = started.stop.clone();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            n = lines.next() => n,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(contact = %view.contact_id, error = %e, "monitoring lost its stream");
                app.hub.send(
                    &who,
                    &ServerMsg::Error {
                        code: "monitoring-ended".into(),
                        message: "Monitoring stopped; start it again".into(),
                    },
                );
                break;
            }
            None => break,
        };
        let directory = app.directory.get();
        // A supervisor no longer (the directory changed): it ends here.
        if !directory
            .staff(&who)
            .is_some_and(|s| s.role == nwd_proto::directory::Role::Supervisor)
        {
            break;
        }
        let Some(line) = line_for_monitor(&view, &msg.payload, &mut shown, &directory) else {
            continue;
        };
        let resolved = matches!(line, ServerMsg::Resolved { .. });
        app.hub.send(&who, &line);
        if resolved {
            break;
        }
    }
    app.monitors.ended(&view.contact_id, &who, started.run);
}

/// Who monitors which contact in this process.
#[derive(Debug, Default)]
pub struct Monitors {
    by_contact: Mutex<HashMap<ContactId, HashMap<CounsellorId, Watch>>>,
    runs: std::sync::atomic::AtomicU64,
}

/// One supervisor's monitoring of one contact.
#[derive(Debug)]
struct Watch {
    run: u64,
    stop: CancellationToken,
}

/// A monitoring just started: `run` names it, `stop` ends it.
#[derive(Debug, Clone)]
pub struct Started {
    pub run: u64,
    pub stop: CancellationToken,
}

impl Monitors {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ContactId, HashMap<CounsellorId, Watch>>> {
        // A poisoned lock only means a panic elsewhere; the map is whole.
        self.by_contact.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `who` monitors `contact`; the token ends it. `None` when
    /// they monitor it already.
    pub fn start(
        &self,
        contact: ContactId,
        who: &CounsellorId,
        parent: &CancellationToken,
    ) -> Option<Started> {
        let mut map = self.map();
        let watchers = map.entry(contact).or_default();
        if watchers.get(who).is_some_and(|w| !w.stop.is_cancelled()) {
            return None;
        }
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = parent.child_token();
        watchers.insert(
            who.clone(),
            Watch {
                run,
                stop: stop.clone(),
            },
        );
        Some(Started { run, stop })
    }

    /// Stops `who` monitoring `contact`; false if they were not.
    pub fn stop(&self, contact: &ContactId, who: &CounsellorId) -> bool {
        let mut map = self.map();
        let Some(watchers) = map.get_mut(contact) else {
            return false;
        };
        let stopped = watchers.remove(who).inspect(|w| w.stop.cancel());
        if watchers.is_empty() {
            map.remove(contact);
        }
        stopped.is_some()
    }

    /// Stops every monitoring of `who` (their last socket closed).
    pub fn stop_all(&self, who: &CounsellorId) {
        let mut map = self.map();
        for watchers in map.values_mut() {
            if let Some(w) = watchers.remove(who) {
                w.stop.cancel();
            }
        }
        map.retain(|_, w| !w.is_empty());
    }

    /// Forgets `who`'s monitoring of `contact` if it is still run `run`
    /// (a newer one is left alone).
    pub fn ended(&self, contact: &ContactId, who: &CounsellorId, run: u64) {
        let mut map = self.map();
        if let Some(watchers) = map.get_mut(contact) {
            if watchers.get(who).is_some_and(|w| w.run == run) {
                watchers.remove(who);
            }
            if watchers.is_empty() {
                map.remove(contact);
            }
        }
    }

    pub fn is_monitoring(&self, contact: &ContactId, who: &CounsellorId) -> bool {
        self.map()
            .get(contact)
            .and_then(|w| w.get(who))
            .is_some_and(|w| !w.stop.is_cancelled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitoring_starts_once_and_stops_with_its_supervisor() {
        let m = Monitors::default();
        let root = CancellationToken::new();
        let (sam, contact) = (CounsellorId::parse("sam").unwrap(), ContactId::new());
        let t = m.start(contact, &sam, &root).unwrap();
        assert!(m.start(contact, &sam, &root).is_none(), "once");
        assert!(m.is_monitoring(&contact, &sam));
        m.stop_all(&sam);
        assert!(t.stop.is_cancelled() && !m.is_monitoring(&contact, &sam));
        assert!(!m.stop(&contact, &sam));
        let again = m.start(contact, &sam, &root).unwrap();
        // The end of an older run leaves the newer one alone.
        m.ended(&contact, &sam, t.run);
        assert!(m.is_monitoring(&contact, &sam));
        assert!(m.stop(&contact, &sam) && again.stop.is_cancelled());
    }
}
