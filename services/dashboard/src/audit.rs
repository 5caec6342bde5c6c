//! Who was shown which contact: an AUDIT record ([`ContactViewed`]: who,
//! which view, when; never the text) when the dashboard shows a contact to
//! someone (an offer or conversation it forwards or loads, a monitoring, a
//! profile). Once per counsellor, contact and view while the counsellor is
//! connected here: a re-render or a reconnect's snapshot is not a flood.

use std::collections::HashSet;
use std::sync::Mutex;

use nwd_proto::events::{ContactViewKind, ContactViewed};
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use time::OffsetDateTime;

use crate::App;

/// Records written most (bounded: past it, the set starts again, and a
/// view is recorded once more rather than not at all).
pub const SEEN_MAX: usize = 100_000;

/// The views recorded in this process, until their counsellor leaves.
#[derive(Debug, Default)]
pub struct Seen {
    seen: Mutex<HashSet<(CounsellorId, ContactId, ContactViewKind)>>,
}

impl Seen {
    fn set(
        &self,
    ) -> std::sync::MutexGuard<'_, HashSet<(CounsellorId, ContactId, ContactViewKind)>> {
        // A poisoned lock only means a panic elsewhere; the set is whole.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True the first time `who` is shown `view` of `contact`.
    pub fn first(&self, who: &CounsellorId, contact: ContactId, view: ContactViewKind) -> bool {
        let mut set = self.set();
        if set.len() >= SEEN_MAX {
            set.clear();
        }
        set.insert((who.clone(), contact, view))
    }

    /// Forgets `who`'s views (their last socket closed): seen again, recorded again.
    pub fn forget(&self, who: &CounsellorId) {
        self.set().retain(|(w, _, _)| w != who);
    }
}

/// Records that `who` was shown `view` of `contact`, once (written in the
/// background: showing a contact never waits on the audit).
pub fn viewed(app: &App, who: &CounsellorId, contact: ContactId, view: ContactViewKind) {
    if !app.viewed.first(who, contact, view) {
        return;
    }
    let at = OffsetDateTime::now_utc();
    let record = ContactViewed {
        contact_id: contact,
        counsellor: who.clone(),
        view,
        at,
    };
    let js = app.js.clone();
    let msg_id = wire::msg_id::contact_viewed(&contact, who, view, at);
    app.tasks.spawn(async move {
        let written = nwd_runtime::bus::publish(
            &js,
            subjects::audit_viewed(&contact),
            &msg_id,
            &Envelope::new(record),
        )
        .await;
        let outcome = match written {
            Ok(_) => "written",
            Err(e) => {
                tracing::warn!(contact = %contact, error = %e, "cannot write the view's audit record");
                "failed"
            }
        };
        metrics::counter!(
            "nwd_dashboard_views_audited_total",
            "service" => crate::NAME, "view" => view.as_str(), "outcome" => outcome
        )
        .increment(1);
    });
}

/// The view a message shows, if it shows a contact.
pub fn shown(msg: &nwd_proto::dashboard::ServerMsg) -> Option<(ContactId, ContactViewKind)> {
    use nwd_proto::dashboard::ServerMsg;
    match msg {
        ServerMsg::Offer { contact } => Some((contact.contact_id, ContactViewKind::Offer)),
        ServerMsg::Conversation { contact } => {
            Some((contact.contact_id, ContactViewKind::Conversation))
        }
        ServerMsg::Monitoring { contact } => {
            Some((contact.contact_id, ContactViewKind::Monitoring))
        }
        ServerMsg::Profile { contact_id, .. } => Some((*contact_id, ContactViewKind::Profile)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_recorded_once_until_its_counsellor_leaves() {
        let seen = Seen::default();
        let (ana, ben) = (
            CounsellorId::parse("ana").unwrap(),
            CounsellorId::parse("ben").unwrap(),
        );
        let contact = ContactId::new();
        assert!(seen.first(&ana, contact, ContactViewKind::Offer));
        assert!(!seen.first(&ana, contact, ContactViewKind::Offer));
        assert!(seen.first(&ana, contact, ContactViewKind::Conversation));
        assert!(seen.first(&ben, contact, ContactViewKind::Offer));
        seen.forget(&ana);
        assert!(seen.first(&ana, contact, ContactViewKind::Offer));
        assert!(!seen.first(&ben, contact, ContactViewKind::Offer));
    }
}
