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

use std::collections::HashMap;
use std::sync::Mutex;

use nwd_proto::{ContactId, CounsellorId};
use tokio_util::sync::CancellationToken;

/// Who monitors which contact in this process.
#[derive(Debug, Default)]
pub struct Monitors {
    by_contact: Mutex<HashMap<ContactId, HashMap<CounsellorId, CancellationToken>>>,
}

impl Monitors {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ContactId, HashMap<CounsellorId, CancellationToken>>>
    {
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
    ) -> Option<CancellationToken> {
        let mut map = self.map();
        let watchers = map.entry(contact).or_default();
        if watchers.get(who).is_some_and(|t| !t.is_cancelled()) {
            return None;
        }
        let token = parent.child_token();
        watchers.insert(who.clone(), token.clone());
        Some(token)
    }

    /// Stops `who` monitoring `contact`; false if they were not.
    pub fn stop(&self, contact: &ContactId, who: &CounsellorId) -> bool {
        let mut map = self.map();
        let Some(watchers) = map.get_mut(contact) else {
            return false;
        };
        let stopped = watchers.remove(who).inspect(CancellationToken::cancel);
        if watchers.is_empty() {
            map.remove(contact);
        }
        stopped.is_some()
    }

    /// Stops every monitoring of `who` (their last socket closed).
    pub fn stop_all(&self, who: &CounsellorId) {
        let mut map = self.map();
        for watchers in map.values_mut() {
            if let Some(t) = watchers.remove(who) {
                t.cancel();
            }
        }
        map.retain(|_, w| !w.is_empty());
    }

    pub fn is_monitoring(&self, contact: &ContactId, who: &CounsellorId) -> bool {
        self.map()
            .get(contact)
            .and_then(|w| w.get(who))
            .is_some_and(|t| !t.is_cancelled())
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
        assert!(t.is_cancelled() && !m.is_monitoring(&contact, &sam));
        assert!(!m.stop(&contact, &sam));
        let again = m.start(contact, &sam, &root).unwrap();
        assert!(m.stop(&contact, &sam) && again.is_cancelled());
    }
}
