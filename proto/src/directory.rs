//! The directory: the line, partner institutions and their doors, staff,
//! patients with their coordinator, trusted contacts and consents. Loaded
//! from `deploy/local/demo/directory.toml` (or `NWD_DIRECTORY`) at start.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{CounsellorId, PartnerId};
use crate::ladder::{LadderPolicy, PolicyError};
use crate::phone::PhoneNumber;
use crate::risk::Language;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub line: Line,
    #[serde(default)]
    pub partners: Vec<Partner>,
    #[serde(default)]
    pub staff: Vec<Staff>,
    #[serde(default)]
    pub patients: Vec<Patient>,
    /// One-off changes to the weekly on-call rotation.
    #[serde(default)]
    pub overrides: Vec<OnCallOverride>,
}

/// A one-off change to who is on call: `on_call = true` puts someone on
/// call outside their shifts (cover), `false` takes them off (leave).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCallOverride {
    pub staff: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    pub on_call: bool,
}

/// The crisis line itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub name: String,
    /// The line's own numbers (not any partner's door).
    #[serde(default)]
    pub numbers: Vec<PhoneNumber>,
    /// Emergency number given in safety messages (e.g. "911").
    pub emergency_number: String,
    /// External backup line, the last level of the ladder.
    pub backup_line: PhoneNumber,
    /// The default escalation policy.
    #[serde(default)]
    pub ladder: LadderPolicy,
    /// The automatic safety message for imminent risk, per language
    /// (`{emergency}` is replaced by the emergency number).
    #[serde(default)]
    pub safety_messages: BTreeMap<Language, String>,
    /// The first message of an outreach (a partner referred the person),
    /// per language; `{line}` is replaced by the line's name. It names only
    /// the line: the directory is refused if one names a partner
    /// (42 CFR Part 2: the person must not learn who referred them).
    #[serde(default)]
    pub outreach_intros: BTreeMap<Language, String>,
    /// Canned safety-planning snippets a counsellor can insert in a reply.
    #[serde(default)]
    pub snippets: Vec<Snippet>,
}

/// A canned text for a counsellor's reply (safety planning), in one language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snippet {
    pub id: String,
    pub lang: Language,
    pub title: String,
    pub text: String,
}

/// The introduction when the directory has none in the contact's language
/// nor in English. Names the line only (`{line}`).
pub const DEFAULT_OUTREACH_INTRO: &str = "Hello, this is {line}. We would like to check in with you. A counsellor is here for you: you can reply to this message at any time. Reply STOP if you would rather not hear from us.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartnerKind {
    Clinic,
    Hospital,
    Police,
    Prison,
    ReferralService,
}

/// A partner institution and its doors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub id: PartnerId,
    pub name: String,
    pub kind: PartnerKind,
    /// IANA time zone of the partner's schedules.
    pub timezone: String,
    /// SMS numbers that are this partner's door into the line.
    #[serde(default)]
    pub sms_numbers: Vec<PhoneNumber>,
    /// Hospitals: the number of the medical staff who take a §2.51
    /// medical-emergency disclosure (the emergency department's desk). Never
    /// a door number: those lead back into the line.
    #[serde(default)]
    pub medical_emergency_number: Option<PhoneNumber>,
    /// This partner's escalation policy, instead of the line's.
    #[serde(default)]
    pub ladder: Option<LadderPolicy>,
    /// Referral webhook settings (secrets, callback URL, due times); `None`:
    /// this partner does not post referrals.
    #[serde(default)]
    pub referrals: Option<crate::referral::ReferralSettings>,
    /// Origins (`https://clinic.example`) of the partner's pages that may
    /// embed the line's web chat with this partner as the door. Empty: the
    /// partner has no embedded chat (the line's own chat page always works).
    #[serde(default)]
    pub chat_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Counsellor,
    Supervisor,
}

/// A weekly shift in the partner's time zone. `end` may be before `start`
/// for a shift across midnight; "24:00" means end of day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// Lowercase three-letter day names: mon, tue, … sun.
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

/// A counsellor or supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Staff {
    pub id: CounsellorId,
    pub name: String,
    pub role: Role,
    /// Home institution.
    pub partner: PartnerId,
    pub languages: Vec<Language>,
    /// Skills (e.g. "overdose", "youth", "reentry"), for routing rules to come.
    #[serde(default)]
    pub skills: Vec<String>,
    /// Concurrent conversations.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Argon2id PHC string.
    pub password_hash: String,
    #[serde(default)]
    pub shifts: Vec<Shift>,
}

fn default_capacity() -> u32 {
    3
}

/// A person in treatment known to the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patient {
    pub id: String,
    pub name: String,
    pub phone: PhoneNumber,
    pub language: Language,
    /// The programme (institution) treating them.
    pub programme: PartnerId,
    pub coordinator: Option<CounsellorId>,
    #[serde(default)]
    pub trusted_contacts: Vec<TrustedContact>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedContact {
    pub id: String,
    pub name: String,
    pub phone: PhoneNumber,
    pub relationship: String,
    /// Written consent (42 CFR Part 2) to disclose to this person, if any.
    pub consent: Option<Consent>,
}

/// A 42 CFR Part 2 consent to disclose to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Why the disclosure is allowed, e.g. "crisis-support".
    pub purpose: String,
    /// What may be disclosed, e.g. "that the patient contacted the line and may need support".
    pub disclose: String,
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Consent {
    /// Valid at `now` for `purpose`: signed, not expired, not revoked.
    pub fn covers(&self, purpose: &str, now: OffsetDateTime) -> bool {
        self.purpose == purpose
            && self.signed_at <= now
            && self.expires_at.is_none_or(|e| now < e)
            && self.revoked_at.is_none_or(|r| now < r)
    }
}

/// Why a directory is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("duplicate id {0}")]
    DuplicateId(String),
    #[error("{0} refers to unknown partner {1}")]
    UnknownPartner(String, String),
    #[error("{0} refers to unknown staff {1}")]
    UnknownStaff(String, String),
    #[error("number of {0} is also a door of another partner or the line")]
    DuplicateNumber(String),
    #[error("the directory has no supervisor")]
    NoSupervisor,
    #[error("ladder of {0}: {1}")]
    Ladder(String, PolicyError),
    #[error("{0}: bad time zone or shift: {1}")]
    Schedule(String, String),
    #[error("the outreach introduction ({0}) names partner {1}: it must name only the line")]
    IntroNamesPartner(String, String),
}

impl Directory {
    /// Checks references and uniqueness.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let mut ids = HashSet::new();
        for p in &self.partners {
            if !ids.insert(format!("partner:{}", p.id)) {
                return Err(DirectoryError::DuplicateId(p.id.to_string()));
            }
        }
        let mut numbers: HashSet<&str> = self.line.numbers.iter().map(|n| n.as_e164()).collect();
        for p in &self.partners {
            for n in p.sms_numbers.iter().chain(&p.medical_emergency_number) {
                if !numbers.insert(n.as_e164()) {
                    return Err(DirectoryError::DuplicateNumber(p.id.to_string()));
                }
            }
        }
        for s in &self.staff {
            if !ids.insert(format!("staff:{}", s.id)) {
                return Err(DirectoryError::DuplicateId(s.id.to_string()));
            }
            if self.partner(&s.partner).is_none() {
                return Err(DirectoryError::UnknownPartner(
                    s.id.to_string(),
                    s.partner.to_string(),
                ));
            }
        }
        if !self.staff.iter().any(|s| s.role == Role::Supervisor) {
            return Err(DirectoryError::NoSupervisor);
        }
        self.line
            .ladder
            .validate()
            .map_err(|e| DirectoryError::Ladder("the line".into(), e))?;
        for p in &self.partners {
            if let Some(l) = &p.ladder {
                l.validate()
                    .map_err(|e| DirectoryError::Ladder(p.id.to_string(), e))?;
            }
        }
        for (lang, intro) in &self.line.outreach_intros {
            let intro = intro.to_lowercase();
            if let Some(p) = self
                .partners
                .iter()
                .find(|p| intro.contains(&p.name.to_lowercase()) || intro.contains(p.id.as_str()))
            {
                return Err(DirectoryError::IntroNamesPartner(
                    lang.as_str().to_owned(),
                    p.id.to_string(),
                ));
            }
        }
        for o in &self.overrides {
            if self.staff(&o.staff).is_none() {
                return Err(DirectoryError::UnknownStaff(
                    "an on-call override".into(),
                    o.staff.to_string(),
                ));
            }
        }
        for p in &self.patients {
            if !ids.insert(format!("patient:{}", p.id)) {
                return Err(DirectoryError::DuplicateId(p.id.clone()));
            }
            if self.partner(&p.programme).is_none() {
                return Err(DirectoryError::UnknownPartner(
                    p.id.clone(),
                    p.programme.to_string(),
                ));
            }
            if let Some(c) = p.coordinator.as_ref().filter(|c| self.staff(c).is_none()) {
                return Err(DirectoryError::UnknownStaff(p.id.clone(), c.to_string()));
            }
        }
        Ok(())
    }

    pub fn partner(&self, id: &PartnerId) -> Option<&Partner> {
        self.partners.iter().find(|p| &p.id == id)
    }

    pub fn staff(&self, id: &CounsellorId) -> Option<&Staff> {
        self.staff.iter().find(|s| &s.id == id)
    }

    /// The partner whose door this line number is; `None` for the line's own numbers.
    pub fn partner_for_number(&self, number: &PhoneNumber) -> Option<&Partner> {
        self.partners
            .iter()
            .find(|p| p.sms_numbers.contains(number))
    }

    pub fn patient_by_phone(&self, phone: &PhoneNumber) -> Option<&Patient> {
        self.patients.iter().find(|p| &p.phone == phone)
    }

    /// The escalation policy for a contact through this door.
    pub fn policy_for(&self, door: Option<&PartnerId>) -> LadderPolicy {
        door.and_then(|d| self.partner(d))
            .and_then(|p| p.ladder.clone())
            .unwrap_or_else(|| self.line.ladder.clone())
    }

    /// The safety message in a language (English when missing), with the
    /// emergency number filled in.
    pub fn safety_message(&self, lang: Language) -> String {
        let text = self
            .line
            .safety_messages
            .get(&lang)
            .or_else(|| self.line.safety_messages.get(&Language::En))
            .map_or(
                "If you are in danger now, call {emergency}. A counsellor is joining you now.",
                String::as_str,
            );
        text.replace("{emergency}", &self.line.emergency_number)
    }

    /// The first message of an outreach in a language (English, then the
    /// built-in text, when missing). It takes nothing of the contact or the
    /// referral: it can only name the line.
    pub fn outreach_intro(&self, lang: Language) -> String {
        self.line
            .outreach_intros
            .get(&lang)
            .or_else(|| self.line.outreach_intros.get(&Language::En))
            .map_or(DEFAULT_OUTREACH_INTRO, String::as_str)
            .replace("{line}", &self.line.name)
    }

    /// Display name of a door (partner name, or the line's own name).
    pub fn door_name(&self, door: Option<&PartnerId>) -> String {
        door.and_then(|d| self.partner(d))
            .map_or_else(|| self.line.name.clone(), |p| p.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn consent_checks_purpose_expiry_and_revocation() {
        let c = Consent {
            purpose: "crisis-support".into(),
            disclose: "contacted the line".into(),
            signed_at: datetime!(2026-01-01 0:00 UTC),
            expires_at: Some(datetime!(2027-01-01 0:00 UTC)),
            revoked_at: None,
        };
        let now = datetime!(2026-11-24 10:00 UTC);
        assert!(c.covers("crisis-support", now));
        assert!(!c.covers("billing", now));
        assert!(!c.covers("crisis-support", datetime!(2027-01-01 0:00 UTC)));
        let revoked = Consent {
            revoked_at: Some(datetime!(2026-06-01 0:00 UTC)),
            ..c
        };
        assert!(!revoked.covers("crisis-support", now));
    }

    fn with_hospital_emergency_number(number: &str) -> Result<Directory, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "line": {
                "name": "Test line",
                "numbers": ["+15005550100"],
                "emergency_number": "911",
                "backup_line": "+15005550199",
            },
            "partners": [{
                "id": "county-hospital",
                "name": "County General",
                "kind": "hospital",
                "timezone": "America/Chicago",
                "sms_numbers": ["+15005550120"],
                "medical_emergency_number": number,
            }],
            "staff": [{
                "id": "sam",
                "name": "Sam",
                "role": "supervisor",
                "partner": "county-hospital",
                "languages": ["en"],
                "password_hash": "x",
            }],
        }))
    }

    #[test]
    fn an_outreach_intro_names_only_the_line() {
        let mut dir = with_hospital_emergency_number("+15005550121").unwrap();
        let intro = dir.outreach_intro(Language::Es);
        assert!(intro.starts_with("Hello, this is Test line."), "{intro}");
        assert!(!intro.contains("County"));
        dir.line
            .outreach_intros
            .insert(Language::Es, "Hola, somos {line}.".into());
        assert_eq!(dir.outreach_intro(Language::Es), "Hola, somos Test line.");
        assert_eq!(dir.validate(), Ok(()));
        dir.line.outreach_intros.insert(
            Language::En,
            "Hi, County General referred you to {line}.".into(),
        );
        assert_eq!(
            dir.validate(),
            Err(DirectoryError::IntroNamesPartner(
                "en".into(),
                "county-hospital".into()
            ))
        );
    }

    #[test]
    fn a_medical_emergency_number_must_not_be_a_door_or_line_number() {
        let ok = with_hospital_emergency_number("+15005550121").unwrap();
        assert_eq!(ok.validate(), Ok(()));
        for taken in ["+15005550120", "+15005550100"] {
            let dir = with_hospital_emergency_number(taken).unwrap();
            assert_eq!(
                dir.validate(),
                Err(DirectoryError::DuplicateNumber("county-hospital".into())),
                "{taken}"
            );
        }
    }
}
