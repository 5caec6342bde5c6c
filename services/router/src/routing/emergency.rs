//! The medical-emergency disclosure (42 CFR §2.51): the counsellor holding a
//! contact discloses to *medical personnel* — a hospital partner of the
//! directory — without the patient's consent, for a bona fide medical
//! emergency. The line records what §2.51 requires (who received it and
//! their facility, who disclosed, when, the nature of the emergency) in
//! AUDIT, and texts the hospital that a line counsellor will call.
//!
//! The decision is a compare-and-swap on the contact record: only its
//! assignee may disclose, and the record keeps when the disclosure was made,
//! so a retried request republishes the same audit record and SMS under the
//! same ids (`wire::msg_id::emergency_disclosure`) and nothing is
//! recorded or sent twice. The reply is `Done` only once both are on their
//! streams. A partner that is not a hospital is refused, and the refusal is
//! itself audited (`not_medical_personnel`).
//!
//! Logs and metrics carry ids only: never the nature, a name or a number.

use nwd_proto::contact::{ContactRecord, Emergency, TransitionError};
use nwd_proto::directory::{Partner, PartnerKind};
use nwd_proto::events::{
    Author, Disclosure, DisclosureRefused, LegalBasis, OutboundSms, Recipient,
};
use nwd_proto::router::{MAX_EMERGENCY_NATURE_CHARS, RouterReply, valid_emergency_nature};
use nwd_proto::{ContactId, CounsellorId, Envelope, PartnerId, subjects, wire};
use nwd_runtime::kv::{self, Cas};
use time::OffsetDateTime;

use super::{FollowUp, Router, StepError, kv_failure, refused};
use crate::NAME;

/// `Disclosure.purpose` of a medical-emergency disclosure.
pub const PURPOSE: &str = "medical-emergency";
/// `Disclosure.what`: what the counsellor discloses, in words.
pub const WHAT: &str = "identity, location of contact and risk summary for a medical emergency";
/// `DisclosureRefused.reason` when the recipient is not medical personnel.
pub const NOT_MEDICAL_PERSONNEL: &str = "not_medical_personnel";
/// `patient` of an audit record when the person is not in the directory.
const UNKNOWN_PATIENT: &str = "unknown";

const TRY_AGAIN: &str = "the line could not record this just now; please try again";

/// Only hospitals count as medical personnel (ADR 0007, "Medical emergency").
pub fn is_medical_personnel(partner: &Partner) -> bool {
    partner.kind == PartnerKind::Hospital
}

/// What the compare-and-swap decided.
enum Decided {
    Disclose {
        record: Box<ContactRecord>,
        emergency: Emergency,
    },
    /// Held by the requester, but the partner is not medical personnel.
    NotMedical {
        patient: String,
    },
    Refused(TransitionError),
}

impl Router {
    /// Handles [`nwd_proto::router::RouterCommand::MedicalEmergency`].
    pub(crate) async fn medical_emergency(
        &self,
        id: ContactId,
        who: CounsellorId,
        partner_id: PartnerId,
        nature: String,
    ) -> (RouterReply, Vec<FollowUp>) {
        if !valid_emergency_nature(&nature) {
            tracing::info!(contact = %id, counsellor = %who, "medical emergency refused: no nature given");
            return (
                refused(&format!(
                    "describe the nature of the emergency (1 to {MAX_EMERGENCY_NATURE_CHARS} characters)"
                )),
                Vec::new(),
            );
        }
        let directory = self.directory();
        let Some(partner) = directory.partner(&partner_id) else {
            tracing::info!(contact = %id, counsellor = %who, partner = %partner_id, "medical emergency refused: unknown partner");
            return (refused("unknown partner"), Vec::new());
        };
        let medical = is_medical_personnel(partner);
        let hospital_number = partner.medical_emergency_number.clone();
        if medical && hospital_number.is_none() {
            tracing::warn!(contact = %id, counsellor = %who, partner = %partner_id, "medical emergency refused: the hospital has no emergency number");
            return (
                refused(
                    "the directory has no medical-emergency number for this hospital; call them directly",
                ),
                Vec::new(),
            );
        }
        let now = OffsetDateTime::now_utc();
        let result = kv::cas(
            &self.contacts,
            &wire::key::contact(&id),
            |cur: Option<ContactRecord>| {
                let Some(rec) = cur else {
                    return Cas::Keep(Decided::Refused(TransitionError::NotAssigned));
                };
                let mut next = rec.clone();
                match next.medical_emergency(&who, &partner_id, &nature, now) {
                    Err(e) => Cas::Keep(Decided::Refused(e)),
                    // Held by the requester: the refusal is worth recording.
                    Ok(_) if !medical => Cas::Keep(Decided::NotMedical {
                        patient: rec.patient.unwrap_or_else(|| UNKNOWN_PATIENT.to_owned()),
                    }),
                    Ok(emergency @ Emergency::New(_)) => Cas::Write(
                        next.clone(),
                        Decided::Disclose {
                            record: Box::new(next),
                            emergency,
                        },
                    ),
                    Ok(emergency @ Emergency::Retry(_)) => Cas::Keep(Decided::Disclose {
                        record: Box::new(next),
                        emergency,
                    }),
                }
            },
        )
        .await;
        let (record, emergency) = match result {
            Ok((Decided::Disclose { record, emergency }, revision)) => {
                if matches!(emergency, Emergency::New(_)) {
                    self.remember(&record, revision);
                }
                (record, emergency)
            }
            Ok((Decided::Refused(e), _)) => {
                tracing::info!(contact = %id, counsellor = %who, refusal = %e, "medical emergency refused");
                return (refused(&e.to_string()), Vec::new());
            }
            Ok((Decided::NotMedical { patient }, _)) => {
                return self.not_medical(id, who, partner, patient, now).await;
            }
            Err(e) => return kv_failure(id, &e),
        };
        let at = emergency.at();
        let retry = matches!(emergency, Emergency::Retry(_));
        let Some(to) = hospital_number else {
            // Checked above; kept total without a panic.
            return (refused(TRY_AGAIN), Vec::new());
        };
        match self.disclose(&record, &who, partner, to, &nature, at).await {
            Ok(()) => {
                tracing::info!(contact = %id, counsellor = %who, partner = %partner_id, retry, "medical emergency disclosed; hospital notified");
                if !retry {
                    metrics::counter!("nwd_disclosures_total", "service" => NAME, "outcome" => "disclosed").increment(1);
                }
                (RouterReply::Done, Vec::new())
            }
            Err(e) => {
                // The record keeps the disclosure's time: the counsellor's
                // retry republishes under the same ids.
                tracing::error!(contact = %id, counsellor = %who, partner = %partner_id, error = %e, "cannot publish the medical-emergency disclosure");
                (refused(TRY_AGAIN), Vec::new())
            }
        }
    }

    /// The audit record first (no disclosure without its record), then the
    /// SMS to the hospital: the person's situation in general words and a
    /// reference, never the person's messages, name or number.
    async fn disclose(
        &self,
        record: &ContactRecord,
        who: &CounsellorId,
        partner: &Partner,
        to: nwd_proto::PhoneNumber,
        nature: &str,
        at: OffsetDateTime,
    ) -> Result<(), StepError> {
        let id = record.id;
        let disclosure = Disclosure {
            contact_id: id,
            patient: record
                .patient
                .clone()
                .unwrap_or_else(|| UNKNOWN_PATIENT.to_owned()),
            recipient: Recipient::Partner(partner.id.clone()),
            what: WHAT.to_owned(),
            purpose: PURPOSE.to_owned(),
            basis: LegalBasis::MedicalEmergency {
                recipient_affiliation: partner.name.clone(),
                nature_of_emergency: nature.trim().to_owned(),
            },
            by: who.to_string(),
            at,
        };
        self.publish(
            subjects::audit_disclosure(&id),
            &wire::msg_id::emergency_disclosure(&id, &partner.id, at),
            &Envelope::new(disclosure),
        )
        .await?;
        let to = nwd_proto::Address::from(to);
        // A plain SMS from the line's number, whatever channel the person used.
        let from = record.channel.line_towards(&to);
        let line_name = self.directory().line.name.clone();
        let outbound_id = wire::outbound::emergency_notice(&id, &partner.id, at);
        let sms = OutboundSms {
            outbound_id,
            contact_id: id,
            to,
            from,
            body: format!(
                "{line_name}: a person in a medical emergency needs help. A {line_name} counsellor will call you now. Reference {id}."
            ),
            author: Author::System,
            created_at: at,
        };
        self.publish(
            subjects::outbound_sms(&id),
            &wire::msg_id::outbound_sms(&outbound_id),
            &Envelope::new(sms),
        )
        .await
    }

    /// Refuses a disclosure to a partner that is not medical personnel, and
    /// records the refusal so the trail shows it was considered.
    async fn not_medical(
        &self,
        id: ContactId,
        who: CounsellorId,
        partner: &Partner,
        patient: String,
        now: OffsetDateTime,
    ) -> (RouterReply, Vec<FollowUp>) {
        let refusal = DisclosureRefused {
            contact_id: id,
            patient,
            recipient: Recipient::Partner(partner.id.clone()),
            reason: NOT_MEDICAL_PERSONNEL.to_owned(),
            by: who.to_string(),
            at: now,
        };
        if let Err(e) = self
            .publish(
                subjects::audit_disclosure_refused(&id),
                &wire::msg_id::emergency_refused(&id, &partner.id, now),
                &Envelope::new(refusal),
            )
            .await
        {
            tracing::error!(contact = %id, counsellor = %who, partner = %partner.id, error = %e, "cannot record a refused medical-emergency disclosure");
            return (refused(TRY_AGAIN), Vec::new());
        }
        tracing::info!(contact = %id, counsellor = %who, partner = %partner.id, "medical emergency refused: not medical personnel");
        metrics::counter!("nwd_disclosures_total", "service" => NAME, "outcome" => "refused")
            .increment(1);
        (
            refused(&format!(
                "{} is not medical personnel: a medical-emergency disclosure can only go to a hospital",
                partner.name
            )),
            Vec::new(),
        )
    }
}
