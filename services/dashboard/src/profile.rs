//! The person's profile beside a conversation: who the directory says they
//! are (programme, coordinator, trusted contacts and whether a consent
//! covers telling them now), their earlier contacts in brief, and whether
//! they opted out of SMS. Built from the live directory and the `contacts`
//! bucket; shown only to the holder, a counsellor it is offered to, or a
//! supervisor monitoring it.

use nwd_proto::ContactId;
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{EarlierContact, PatientView, ProfileView, TrustedContactView};
use nwd_proto::directory::{Consent, Directory, TrustedContact};
use nwd_proto::ladder::TRUSTED_CONTACT_PURPOSE;
use nwd_runtime::kv;
use time::OffsetDateTime;

/// How many earlier contacts a profile shows.
pub const EARLIER_SHOWN: usize = 5;

/// The profile of `rec`'s sender: `earlier` are their previous contacts,
/// most recent first (at most [`EARLIER_SHOWN`] are kept).
pub fn build(
    rec: &ContactRecord,
    dir: &Directory,
    earlier: &[ContactRecord],
    now: OffsetDateTime,
) -> ProfileView {
    let patient = rec
        .patient
        .as_ref()
        .and_then(|id| dir.patients.iter().find(|p| &p.id == id))
        .map(|p| PatientView {
            name: p.name.clone(),
            programme: dir.door_name(Some(&p.programme)),
            coordinator: p
                .coordinator
                .as_ref()
                .and_then(|c| dir.staff(c))
                .map(|s| s.name.clone()),
            trusted_contacts: p
                .trusted_contacts
                .iter()
                .map(|t| trusted_view(t, now))
                .collect(),
        });
    ProfileView {
        patient,
        earlier: earlier
            .iter()
            .take(EARLIER_SHOWN)
            .map(|e| EarlierContact {
                contact_id: e.id,
                opened_at: e.opened_at,
                risk: e.risk,
                channel: e.channel.label(),
                disposition: e.disposition.clone(),
                screened: e.screener.as_ref().map(|s| s.level),
            })
            .collect(),
        opted_out_at: rec.opted_out_at,
        channel: rec.channel.label(),
    }
}

fn trusted_view(t: &TrustedContact, now: OffsetDateTime) -> TrustedContactView {
    let why_not = why_not(t.consent.as_ref(), now);
    TrustedContactView {
        id: t.id.clone(),
        name: t.name.clone(),
        relationship: t.relationship.clone(),
        consent_covers: why_not.is_none(),
        why_not,
    }
}

/// Why a consent does not cover telling a trusted contact now, in plain
/// words; `None` when it does.
pub fn why_not(consent: Option<&Consent>, now: OffsetDateTime) -> Option<String> {
    let Some(c) = consent else {
        return Some("no consent on file".to_owned());
    };
    if c.covers(TRUSTED_CONTACT_PURPOSE, now) {
        return None;
    }
    let day = |t: OffsetDateTime| t.date().to_string();
    Some(match (c.revoked_at, c.expires_at) {
        (Some(r), _) if r <= now => format!("consent revoked on {}", day(r)),
        (_, Some(e)) if e <= now => format!("consent expired on {}", day(e)),
        _ if c.signed_at > now => format!("consent takes effect on {}", day(c.signed_at)),
        _ => "the consent on file does not cover crisis support".to_owned(),
    })
}

/// The sender's earlier contacts, following `previous` from `rec` (most
/// recent first, at most [`EARLIER_SHOWN`]); a record that is gone or
/// unreadable ends the chain.
pub async fn earlier(
    contacts: &async_nats::jetstream::kv::Store,
    rec: &ContactRecord,
) -> Vec<ContactRecord> {
    let mut out: Vec<ContactRecord> = Vec::new();
    let mut next: Option<ContactId> = rec.previous;
    while let Some(id) = next {
        if out.len() >= EARLIER_SHOWN || id == rec.id || out.iter().any(|r| r.id == id) {
            break;
        }
        match kv::get::<ContactRecord>(contacts, &nwd_proto::wire::key::contact(&id)).await {
            Ok(v) => match v.value {
                Some(r) => {
                    next = r.previous;
                    out.push(r);
                }
                None => break,
            },
            Err(e) => {
                tracing::warn!(contact = %id, error = %e, "cannot read an earlier contact");
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-07 12:00 UTC);

    fn consent() -> Consent {
        Consent {
            purpose: TRUSTED_CONTACT_PURPOSE.into(),
            disclose: "that they contacted the line".into(),
            signed_at: datetime!(2026-01-01 0:00 UTC),
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn why_not_says_in_plain_words_why_a_consent_does_not_cover() {
        assert_eq!(why_not(Some(&consent()), NOW), None);
        assert_eq!(why_not(None, NOW).unwrap(), "no consent on file");
        let expired = Consent {
            expires_at: Some(datetime!(2026-06-30 0:00 UTC)),
            ..consent()
        };
        assert_eq!(
            why_not(Some(&expired), NOW).unwrap(),
            "consent expired on 2026-06-30"
        );
        let revoked = Consent {
            revoked_at: Some(datetime!(2026-03-02 9:00 UTC)),
            ..expired.clone()
        };
        assert_eq!(
            why_not(Some(&revoked), NOW).unwrap(),
            "consent revoked on 2026-03-02"
        );
        let other = Consent {
            purpose: "research".into(),
            ..consent()
        };
        assert!(
            why_not(Some(&other), NOW)
                .unwrap()
                .contains("does not cover")
        );
        let future = Consent {
            signed_at: datetime!(2027-01-01 0:00 UTC),
            ..consent()
        };
        assert!(why_not(Some(&future), NOW).unwrap().contains("2027-01-01"));
    }

    #[test]
    fn the_profile_names_the_patient_and_briefs_earlier_contacts() {
        let dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
        let maria = dir.patients.iter().find(|p| p.id == "maria").unwrap();
        let ev = crate::profile::tests_support::triaged(maria.phone.clone());
        let mut rec = ContactRecord::open(&ev);
        rec.patient = Some("maria".into());
        rec.opted_out_at = Some(NOW);
        let mut before = ContactRecord::open(&ev);
        before.disposition = Some("safety-plan-made".into());
        let older: Vec<ContactRecord> = (0..7).map(|_| ContactRecord::open(&ev)).collect();
        let mut earlier = vec![before.clone()];
        earlier.extend(older);

        let p = build(&rec, &dir, &earlier, NOW);
        let patient = p.patient.unwrap();
        assert_eq!(patient.name, "María López");
        assert_eq!(patient.coordinator.as_deref(), Some("Ana García"));
        assert_eq!(patient.programme, dir.door_name(Some(&maria.programme)));
        assert_eq!(patient.trusted_contacts.len(), maria.trusted_contacts.len());
        for (shown, t) in patient.trusted_contacts.iter().zip(&maria.trusted_contacts) {
            assert_eq!(shown.id, t.id);
            assert_eq!(
                shown.consent_covers,
                why_not(t.consent.as_ref(), NOW).is_none()
            );
            assert_eq!(shown.why_not, why_not(t.consent.as_ref(), NOW));
        }
        assert_eq!(p.earlier.len(), EARLIER_SHOWN);
        assert_eq!(p.earlier[0].contact_id, before.id);
        assert_eq!(
            p.earlier[0].disposition.as_deref(),
            Some("safety-plan-made")
        );
        assert_eq!(p.opted_out_at, Some(NOW));
        assert!(
            !p.channel.contains(maria.phone.as_e164()),
            "never the number"
        );

        // Someone the directory does not know: no patient, still the rest.
        rec.patient = None;
        assert!(build(&rec, &dir, &[], NOW).patient.is_none());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use nwd_proto::events::{Channel, ContactMessage, MessageTriaged};
    use nwd_proto::{Assessment, ContactId, Language, MessageId, RiskLevel};

    pub fn triaged(phone: nwd_proto::PhoneNumber) -> MessageTriaged {
        MessageTriaged {
            message: ContactMessage {
                contact_id: ContactId::new(),
                message_id: MessageId::new(),
                channel: Channel::Sms {
                    patient: nwd_proto::Address::parse(phone.as_e164()),
                    line: nwd_proto::Address::parse("+15005550110"),
                },
                door: None,
                patient: Some("maria".into()),
                body: "hello".into(),
                received_at: time::OffsetDateTime::now_utc(),
                opens_contact: true,
                previous: None,
                quick_exit: false,
            },
            assessment: Assessment {
                level: RiskLevel::High,
                score: 0.8,
                reasons: Vec::new(),
                lang: Language::Es,
                rulebook_version: "test".into(),
            },
        }
    }
}
