//! The C-SSRS screener (issue 16, [`nwd_proto::screener`]): the counsellor
//! holding a contact records the screener's answers, and its level becomes
//! the contact's: the only way a level goes down. Later messages raise it
//! again from there (triage only ever raises).
//!
//! A compare-and-swap on the contact record: only its assignee may assess,
//! and answers that break the screener's skip logic are refused with the
//! reason. The record keeps the result (who, when, before, after), AUDIT
//! keeps a [`ScreenerRecorded`] (answers as yes/no only), and every tab of
//! the counsellor is told (`ServerMsg::Assessed`). The reply is `Done` only
//! once the audit record is stored; a retry of the same answers finds the
//! record's result and republishes it under the same id.
//!
//! Logs and metrics carry ids and levels only.

use nwd_proto::contact::{ContactRecord, TransitionError};
use nwd_proto::dashboard::ServerMsg;
use nwd_proto::events::ScreenerRecorded;
use nwd_proto::router::RouterReply;
use nwd_proto::screener::{ScreenerAnswers, ScreenerResult};
use nwd_proto::{ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::kv::{self, Cas};
use time::OffsetDateTime;

use super::{FollowUp, Router, kv_failure, refused};
use crate::NAME;

impl Router {
    /// Handles [`nwd_proto::router::RouterCommand::Assess`].
    pub(crate) async fn assess(
        &self,
        id: ContactId,
        who: CounsellorId,
        answers: ScreenerAnswers,
    ) -> (RouterReply, Vec<FollowUp>) {
        let now = OffsetDateTime::now_utc();
        let result = kv::cas_from(
            &self.contacts,
            &wire::key::contact(&id),
            self.guess(&id, false),
            |cur: Option<ContactRecord>| {
                let Some(mut rec) = cur else {
                    return Cas::Keep(Err(TransitionError::NotAssigned));
                };
                if let Some(done) = rec.screener.as_ref().filter(|r| {
                    r.by == who
                        && r.answers == answers
                        && r.level == rec.risk
                        && rec.assigned_to() == Some(&who)
                }) {
                    // The same answers again: a retry; republish (deduplicated).
                    return Cas::Keep(Ok((rec.clone(), done.clone())));
                }
                match rec.assess(&who, answers, now) {
                    Ok(result) => Cas::Write(rec.clone(), Ok((rec, result))),
                    Err(e) => Cas::Keep(Err(e)),
                }
            },
        )
        .await;
        let (record, screener) = match result {
            Ok((Ok(done), revision)) => {
                self.remember(&done.0, revision);
                done
            }
            Ok((Err(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "screener refused");
                metrics::counter!("nwd_screeners_total", "service" => NAME, "outcome" => "refused")
                    .increment(1);
                return (refused(&e.to_string()), Vec::new());
            }
            Err(e) => return kv_failure(id, &e),
        };
        if let Err(e) = self.audit_screener(&record, &screener).await {
            tracing::error!(contact = %id, error = %e, "cannot record the screener in AUDIT");
            return (
                refused("the line could not record this just now; please try again"),
                Vec::new(),
            );
        }
        let outcome = match screener.level.cmp(&screener.before) {
            std::cmp::Ordering::Less => "lowered",
            std::cmp::Ordering::Equal => "same",
            std::cmp::Ordering::Greater => "raised",
        };
        tracing::info!(contact = %id, counsellor = %who, before = %screener.before, after = %screener.level, "screener recorded");
        metrics::counter!("nwd_screeners_total", "service" => NAME, "outcome" => outcome)
            .increment(1);
        (
            RouterReply::Done,
            vec![FollowUp::push(
                who,
                ServerMsg::Assessed {
                    contact_id: id,
                    result: Box::new(screener),
                },
            )],
        )
    }

    async fn audit_screener(
        &self,
        record: &ContactRecord,
        screener: &ScreenerResult,
    ) -> Result<(), super::StepError> {
        let event = Envelope::new(ScreenerRecorded {
            contact_id: record.id,
            counsellor: screener.by.clone(),
            before: screener.before,
            after: screener.level,
            answers: screener.answers,
            at: screener.at,
        });
        self.publish(
            subjects::audit_screener(&record.id),
            &wire::msg_id::screener(&record.id, screener.at),
            &event,
        )
        .await
    }
}
