//! Conversations whose counsellor's connection dropped: supervisors are
//! alerted at once; after the grace the contact goes back to the queue.

use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::ServerMsg;
use nwd_proto::{ContactId, CounsellorId, wire};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::transcript;

use super::{Router, StepError, ladder_floor};
use crate::NAME;

impl Router {
    /// A conversation whose counsellor's connection is gone: the supervisors
    /// are alerted once; after the grace it goes back to the queue and up the
    /// ladder from the bottom. If the counsellor is back, it stays with them.
    pub async fn orphan_step(&self, id: ContactId) -> Result<(), StepError> {
        enum Did {
            Orphaned(ContactRecord, CounsellorId),
            /// With the receivers of a warm transfer it ended.
            Requeued(ContactRecord, CounsellorId, Vec<CounsellorId>),
            Back,
        }
        let floor = self.floor();
        let now = floor.now;
        let grace = self.orphan_grace;
        let (outcome, revision) = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(None);
                };
                let Some(who) = rec.assigned_to().cloned() else {
                    return Cas::Keep(None);
                };
                if !floor.disconnected(&who) {
                    return if rec.unorphan() {
                        Cas::Write(rec, Some(Did::Back))
                    } else {
                        Cas::Keep(None)
                    };
                }
                match rec.orphaned_at {
                    None => {
                        rec.orphan(now);
                        Cas::Write(rec.clone(), Some(Did::Orphaned(rec, who)))
                    }
                    Some(at) if now - at >= grace => {
                        let receivers = rec
                            .transfer
                            .as_ref()
                            .map(|t| t.to.clone())
                            .unwrap_or_default();
                        rec.requeue(now);
                        nwd_ladder::fire(&mut rec, &floor);
                        Cas::Write(rec.clone(), Some(Did::Requeued(rec, who, receivers)))
                    }
                    Some(_) => Cas::Keep(None),
                }
            },
        )
        .await?;
        match outcome {
            Some(Did::Orphaned(rec, who)) => {
                self.remember(&rec, revision);
                tracing::warn!(contact = %id, counsellor = %who, "counsellor disconnected mid-conversation; supervisors alerted");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "alerted").increment(1);
                let messages = transcript::load(&self.js, &id).await.unwrap_or_default();
                let view = transcript::contact_view(&rec, &self.directory(), messages);
                let requeue_at = now + grace;
                for s in self
                    .directory()
                    .staff
                    .iter()
                    .filter(|s| s.role == nwd_proto::directory::Role::Supervisor)
                {
                    self.push(
                        &s.id,
                        ServerMsg::Alert {
                            reason: nwd_proto::dashboard::AlertReason::CounsellorDisconnected {
                                counsellor: who.clone(),
                                requeue_at,
                            },
                            contact: Box::new(view.clone()),
                        },
                    )
                    .await;
                }
            }
            Some(Did::Requeued(rec, who, receivers)) => {
                self.remember(&rec, revision);
                // A warm transfer ends with the sender's hold on it: the
                // contact climbs the ladder like any waiting contact.
                for c in receivers
                    .iter()
                    .filter(|c| !ladder_floor::offered_to(&rec).contains(c))
                {
                    self.push(
                        c,
                        ServerMsg::OfferWithdrawn {
                            contact_id: id,
                            reason: nwd_proto::dashboard::WithdrawReason::Expired,
                        },
                    )
                    .await;
                }
                tracing::warn!(contact = %id, counsellor = %who, "conversation back in the queue after the grace");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "requeued").increment(1);
                if let Err(e) = self.announcer.announce(&rec).await {
                    tracing::warn!(contact = %id, error = %e, "cannot announce escalation step; the escalator will");
                }
            }
            Some(Did::Back) => {
                tracing::info!(contact = %id, "counsellor back; conversation stays with them");
                metrics::counter!("nwd_conversations_orphaned_total", "service" => NAME, "outcome" => "returned").increment(1);
            }
            None => {}
        }
        Ok(())
    }
}
