//! Fixtures for the ladder's tests: a small directory, presence, contacts.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{Presence, PresenceRecord};
use nwd_proto::directory::{
    Consent, Directory, Line, Partner, PartnerKind, Patient, Role, Shift, Staff, TrustedContact,
};
use nwd_proto::events::{Channel, ContactMessage, MessageTriaged};
use nwd_proto::ladder::{Escalation, LadderPolicy};
use nwd_proto::{
    Assessment, ContactId, CounsellorId, Language, MessageId, PartnerId, PhoneNumber, RiskLevel,
};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::Floor;

/// Tuesday 2026-11-24 10:00 UTC.
pub const NOW: OffsetDateTime = datetime!(2026-11-24 10:00 UTC);
pub const STALE: time::Duration = time::Duration::seconds(15);

pub fn sid(s: &str) -> CounsellorId {
    CounsellorId::parse(s).unwrap()
}

pub fn pid(s: &str) -> PartnerId {
    PartnerId::parse(s).unwrap()
}

pub fn shift(days: &[&str], start: &str, end: &str) -> Shift {
    Shift {
        days: days.iter().map(|d| (*d).to_owned()).collect(),
        start: start.into(),
        end: end.into(),
    }
}

fn always() -> Vec<Shift> {
    vec![shift(
        &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "00:00",
        "24:00",
    )]
}

pub fn staff(id: &str, partner: &str, languages: &[Language], capacity: u32, role: Role) -> Staff {
    Staff {
        id: sid(id),
        name: id.into(),
        role,
        partner: pid(partner),
        languages: languages.to_vec(),
        skills: vec![],
        capacity,
        password_hash: String::new(),
        shifts: always(),
    }
}

/// Clinic (New York): ana (en, es; maria's coordinator), ben (en).
/// Hospital (Chicago): cy (en). Supervisor sam at the clinic.
/// Patients: maria (coordinator ana, sister with consent), james (brother, no consent).
pub fn directory() -> Directory {
    use Language::{En, Es};
    let partner = |id: &str, tz: &str| Partner {
        id: pid(id),
        name: id.into(),
        kind: PartnerKind::Clinic,
        timezone: tz.into(),
        sms_numbers: vec![],
        medical_emergency_number: None,
        ladder: None,
        referrals: None,
        chat_origins: vec![],
    };
    let consent = Consent {
        purpose: crate::TRUSTED_CONTACT_PURPOSE.into(),
        disclose: "that the patient contacted the line".into(),
        signed_at: datetime!(2026-01-01 0:00 UTC),
        expires_at: None,
        revoked_at: None,
    };
    let trusted = |id: &str, consent: Option<Consent>| TrustedContact {
        id: id.into(),
        name: id.into(),
        phone: PhoneNumber::parse("+15005550150").unwrap(),
        relationship: "sibling".into(),
        consent,
    };
    Directory {
        line: Line {
            name: "Line".into(),
            numbers: vec![],
            emergency_number: "911".into(),
            backup_line: PhoneNumber::parse("+15005550199").unwrap(),
            ladder: LadderPolicy::default(),
            safety_messages: Default::default(),
            outreach_intros: Default::default(),
            snippets: Vec::new(),
        },
        partners: vec![
            partner("clinic", "America/New_York"),
            partner("hospital", "America/Chicago"),
            // A prison's re-entry programme: refers people, has no staff.
            partner("prison", "America/Los_Angeles"),
        ],
        staff: vec![
            staff("ana", "clinic", &[En, Es], 2, Role::Counsellor),
            staff("ben", "clinic", &[En], 1, Role::Counsellor),
            staff("cy", "hospital", &[En], 3, Role::Counsellor),
            staff("sam", "clinic", &[En, Es], 5, Role::Supervisor),
        ],
        patients: vec![
            Patient {
                id: "maria".into(),
                name: "maria".into(),
                phone: PhoneNumber::parse("+15005550142").unwrap(),
                language: Es,
                programme: pid("clinic"),
                coordinator: Some(sid("ana")),
                trusted_contacts: vec![trusted("maria-sister", Some(consent))],
            },
            Patient {
                id: "james".into(),
                name: "james".into(),
                phone: PhoneNumber::parse("+15005550143").unwrap(),
                language: En,
                programme: pid("hospital"),
                coordinator: None,
                trusted_contacts: vec![trusted("james-brother", None)],
            },
        ],
        overrides: vec![],
    }
}

pub fn presence(who: &str, status: Presence, at: OffsetDateTime) -> (CounsellorId, PresenceRecord) {
    (
        sid(who),
        PresenceRecord {
            counsellor: sid(who),
            status,
            heartbeat_at: at,
        },
    )
}

/// A floor where the listed staff are available (fresh heartbeat at `now`).
pub fn floor(dir: &Directory, available: &[&str], now: OffsetDateTime) -> Floor {
    Floor::new(
        std::sync::Arc::new(dir.clone()),
        available
            .iter()
            .map(|w| presence(w, Presence::Available, now))
            .collect(),
        HashMap::new(),
        now,
        STALE,
        Default::default(),
    )
}

/// An open contact with a fresh ladder due at `at`.
pub fn contact(
    risk: RiskLevel,
    lang: Language,
    patient: Option<&str>,
    door: Option<&str>,
    at: OffsetDateTime,
) -> ContactRecord {
    let ev = MessageTriaged {
        message: ContactMessage {
            contact_id: ContactId::new(),
            message_id: MessageId::new(),
            channel: Channel::Sms {
                patient: nwd_proto::Address::parse("+15005550142"),
                line: nwd_proto::Address::parse("+15005550100"),
            },
            door: door.map(pid),
            patient: patient.map(str::to_owned),
            body: "x".into(),
            received_at: at,
            opens_contact: true,
            previous: None,
            quick_exit: false,
        },
        assessment: Assessment {
            level: risk,
            score: 0.5,
            reasons: vec![],
            lang,
            rulebook_version: "test".into(),
        },
    };
    let mut rec = ContactRecord::open(&ev);
    rec.escalation = Some(Escalation::start(LadderPolicy::default(), at));
    rec
}
