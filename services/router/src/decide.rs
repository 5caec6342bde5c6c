//! The router's decisions, as pure functions of what it knows: the open
//! contacts, the counsellors' presence, the directory and the time. No I/O
//! here, so the later escalator can reuse and extend these rules, and every
//! rule is unit-tested.

use std::collections::{HashMap, HashSet};

use nwd_proto::contact::{ContactRecord, ContactState, TransitionError};
use nwd_proto::dashboard::{Presence, PresenceRecord, WithdrawReason};
use nwd_proto::directory::{Directory, Staff};
use nwd_proto::{CounsellorId, RiskLevel};
use time::OffsetDateTime;

/// Available on the dashboard, and the dashboard vouched for it recently.
/// The server decides presence from heartbeats, not the browser: a laptop
/// that went to sleep with "available" selected is offline.
pub fn is_available(p: &PresenceRecord, now: OffsetDateTime, stale_after: time::Duration) -> bool {
    p.status == Presence::Available && now - p.heartbeat_at <= stale_after
}

/// Open conversations per counsellor (contacts assigned to them).
pub fn load<'r>(
    contacts: impl IntoIterator<Item = &'r ContactRecord>,
) -> HashMap<CounsellorId, u32> {
    let mut load = HashMap::new();
    for c in contacts {
        if let Some(who) = c.assigned_to() {
            *load.entry(who.clone()).or_insert(0) += 1;
        }
    }
    load
}

/// The contacts in the queue (waiting or offered), in the order they are
/// served: highest risk first, then longest waiting, then id (stable).
pub fn queue<'r>(contacts: impl IntoIterator<Item = &'r ContactRecord>) -> Vec<&'r ContactRecord> {
    let mut q: Vec<&ContactRecord> = contacts
        .into_iter()
        .filter(|c| c.waiting_since().is_some())
        .collect();
    q.sort_by(|a, b| {
        b.risk
            .cmp(&a.risk)
            .then(a.waiting_since().cmp(&b.waiting_since()))
            .then(a.id.cmp(&b.id))
    });
    q
}

/// Queue depth (waiting + offered) per risk level, every level present.
pub fn queue_depth<'r>(
    contacts: impl IntoIterator<Item = &'r ContactRecord>,
) -> [(RiskLevel, usize); 4] {
    let mut depth = RiskLevel::ALL.map(|r| (r, 0));
    for c in contacts {
        if c.waiting_since().is_none() {
            continue;
        }
        if let Some(slot) = depth.iter_mut().find(|(r, _)| *r == c.risk) {
            slot.1 += 1;
        }
    }
    depth
}

/// Who the contact is currently offered to (empty unless offered).
pub fn offered_to(rec: &ContactRecord) -> &[CounsellorId] {
    match &rec.state {
        ContactState::Offered { to, .. } => to,
        _ => &[],
    }
}

/// The counsellors on the floor at one moment: presence, capacity, load.
#[derive(Debug, Clone)]
pub struct Floor<'d> {
    pub directory: &'d Directory,
    pub presence: HashMap<CounsellorId, PresenceRecord>,
    pub load: HashMap<CounsellorId, u32>,
    pub now: OffsetDateTime,
    pub stale_after: time::Duration,
}

impl Floor<'_> {
    /// Available (status and fresh heartbeat) and known to the directory.
    pub fn is_available(&self, who: &CounsellorId) -> bool {
        self.directory.staff(who).is_some()
            && self
                .presence
                .get(who)
                .is_some_and(|p| is_available(p, self.now, self.stale_after))
    }

    pub fn load_of(&self, who: &CounsellorId) -> u32 {
        self.load.get(who).copied().unwrap_or(0)
    }

    /// Below the directory's capacity (unknown staff have none).
    pub fn has_room(&self, who: &CounsellorId) -> bool {
        self.directory
            .staff(who)
            .is_some_and(|s| self.load_of(who) < s.capacity)
    }

    /// Who may be offered this contact now: available, with room, not among
    /// those who declined it. Those who speak the contact's language come
    /// first and alone if there are any; otherwise everyone eligible — a
    /// person is never kept waiting for a language match nobody can give.
    /// Supervisors are eligible too (in the walking skeleton). Directory order.
    pub fn eligible(
        &self,
        rec: &ContactRecord,
        declined: &HashSet<CounsellorId>,
    ) -> Vec<CounsellorId> {
        if !matches!(
            rec.state,
            ContactState::Waiting { .. } | ContactState::Offered { .. }
        ) {
            return Vec::new();
        }
        let candidates: Vec<&Staff> = self
            .directory
            .staff
            .iter()
            .filter(|s| self.is_available(&s.id) && self.has_room(&s.id))
            .filter(|s| !declined.contains(&s.id))
            .collect();
        let speakers: Vec<&Staff> = candidates
            .iter()
            .copied()
            .filter(|s| s.languages.contains(&rec.lang))
            .collect();
        let chosen = if speakers.is_empty() {
            candidates
        } else {
            speakers
        };
        chosen.into_iter().map(|s| s.id.clone()).collect()
    }

    /// Eligible counsellors this contact is not offered to yet.
    pub fn new_offers(
        &self,
        rec: &ContactRecord,
        declined: &HashSet<CounsellorId>,
    ) -> Vec<CounsellorId> {
        let offered = offered_to(rec);
        self.eligible(rec, declined)
            .into_iter()
            .filter(|c| !offered.contains(c))
            .collect()
    }

    /// Counsellors holding an offer of this contact they can no longer take:
    /// gone offline, away, stale, or at capacity. Their offers are withdrawn.
    pub fn stale_offers(&self, rec: &ContactRecord) -> Vec<CounsellorId> {
        offered_to(rec)
            .iter()
            .filter(|c| !self.is_available(c) || !self.has_room(c))
            .cloned()
            .collect()
    }
}

/// What the counsellor's screen should do with an offer a command failed on.
pub fn withdraw_reason(e: &TransitionError) -> WithdrawReason {
    match e {
        TransitionError::Taken => WithdrawReason::Taken,
        TransitionError::Resolved => WithdrawReason::Resolved,
        TransitionError::NotOffered | TransitionError::NotAssigned => WithdrawReason::Expired,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nwd_proto::directory::{Line, Partner, PartnerKind, Role};
    use nwd_proto::events::{Channel, ContactMessage, MessageTriaged};
    use nwd_proto::{Assessment, ContactId, Language, MessageId, PartnerId, PhoneNumber};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-24 10:00 UTC);
    const STALE: time::Duration = time::Duration::seconds(15);

    fn c(s: &str) -> CounsellorId {
        CounsellorId::parse(s).unwrap()
    }

    fn staff(id: &str, languages: &[Language], capacity: u32, role: Role) -> Staff {
        Staff {
            id: c(id),
            name: id.into(),
            role,
            partner: PartnerId::parse("clinic").unwrap(),
            languages: languages.to_vec(),
            capacity,
            password_hash: String::new(),
            shifts: Vec::new(),
        }
    }

    fn directory() -> Directory {
        use Language::{En, Es};
        Directory {
            line: Line {
                name: "Line".into(),
                numbers: vec![],
                emergency_number: "911".into(),
                backup_line: PhoneNumber::parse("+15005550199").unwrap(),
            },
            partners: vec![Partner {
                id: PartnerId::parse("clinic").unwrap(),
                name: "Clinic".into(),
                kind: PartnerKind::Clinic,
                timezone: "UTC".into(),
                sms_numbers: vec![],
            }],
            staff: vec![
                staff("ana", &[En, Es], 2, Role::Counsellor),
                staff("ben", &[En], 1, Role::Counsellor),
                staff("cy", &[En], 3, Role::Counsellor),
                staff("sam", &[En, Es], 5, Role::Supervisor),
            ],
            patients: vec![],
        }
    }

    fn presence(who: &str, status: Presence, age_s: i64) -> (CounsellorId, PresenceRecord) {
        (
            c(who),
            PresenceRecord {
                counsellor: c(who),
                status,
                heartbeat_at: NOW - time::Duration::seconds(age_s),
            },
        )
    }

    fn floor<'d>(dir: &'d Directory, present: &[(&str, Presence, i64)]) -> Floor<'d> {
        Floor {
            directory: dir,
            presence: present
                .iter()
                .map(|(w, s, a)| presence(w, *s, *a))
                .collect(),
            load: HashMap::new(),
            now: NOW,
            stale_after: STALE,
        }
    }

    fn contact(risk: RiskLevel, lang: Language, at: OffsetDateTime) -> ContactRecord {
        let ev = MessageTriaged {
            message: ContactMessage {
                contact_id: ContactId::new(),
                message_id: MessageId::new(),
                channel: Channel::Sms {
                    patient: PhoneNumber::parse("+15005550142").unwrap(),
                    line: PhoneNumber::parse("+15005550100").unwrap(),
                },
                door: None,
                patient: None,
                body: "x".into(),
                received_at: at,
                opens_contact: true,
            },
            assessment: Assessment {
                level: risk,
                score: 0.5,
                reasons: vec![],
                lang,
                rulebook_version: "test".into(),
            },
        };
        ContactRecord::open(&ev)
    }

    fn none() -> HashSet<CounsellorId> {
        HashSet::new()
    }

    #[test]
    fn availability_needs_status_and_a_fresh_heartbeat() {
        let (_, fresh) = presence("ana", Presence::Available, 3);
        assert!(is_available(&fresh, NOW, STALE));
        let (_, stale) = presence("ana", Presence::Available, 16);
        assert!(!is_available(&stale, NOW, STALE));
        let (_, at_limit) = presence("ana", Presence::Available, 15);
        assert!(is_available(&at_limit, NOW, STALE));
        for s in [Presence::Busy, Presence::Away, Presence::Offline] {
            let (_, p) = presence("ana", s, 0);
            assert!(!is_available(&p, NOW, STALE), "{s:?}");
        }
    }

    #[test]
    fn eligible_are_available_fresh_known_and_below_capacity() {
        let dir = directory();
        let mut f = floor(
            &dir,
            &[
                ("ana", Presence::Available, 1),
                ("ben", Presence::Available, 1),
                ("cy", Presence::Available, 60),
                ("sam", Presence::Away, 1),
                ("zed", Presence::Available, 1),
            ],
        );
        let rec = contact(RiskLevel::Low, Language::En, NOW);
        assert_eq!(f.eligible(&rec, &none()), vec![c("ana"), c("ben")]);
        f.load.insert(c("ben"), 1);
        assert_eq!(f.eligible(&rec, &none()), vec![c("ana")], "ben at capacity");
        f.load.insert(c("ana"), 1);
        assert_eq!(f.eligible(&rec, &none()), vec![c("ana")], "ana has room");
        f.load.insert(c("ana"), 2);
        assert!(f.eligible(&rec, &none()).is_empty(), "nobody has room");
    }

    #[test]
    fn never_offered_to_someone_at_capacity_and_such_offers_are_stale() {
        let dir = directory();
        let mut f = floor(
            &dir,
            &[
                ("ben", Presence::Available, 1),
                ("cy", Presence::Available, 1),
            ],
        );
        let mut rec = contact(RiskLevel::Imminent, Language::En, NOW);
        rec.offer(&[c("ben"), c("cy")]).unwrap();
        assert!(f.stale_offers(&rec).is_empty());
        f.load.insert(c("ben"), 1);
        assert_eq!(f.stale_offers(&rec), vec![c("ben")]);
        assert!(f.new_offers(&rec, &none()).is_empty());
        f.presence.remove(&c("cy"));
        assert_eq!(f.stale_offers(&rec), vec![c("ben"), c("cy")]);
    }

    #[test]
    fn offline_away_and_stale_offers_are_withdrawn() {
        let dir = directory();
        let f = floor(
            &dir,
            &[
                ("ana", Presence::Offline, 1),
                ("ben", Presence::Available, 30),
                ("cy", Presence::Available, 1),
                ("sam", Presence::Away, 1),
            ],
        );
        let mut rec = contact(RiskLevel::Low, Language::En, NOW);
        rec.offer(&[c("ana"), c("ben"), c("cy"), c("sam")]).unwrap();
        assert_eq!(f.stale_offers(&rec), vec![c("ana"), c("ben"), c("sam")]);
    }

    #[test]
    fn speakers_of_the_language_come_first_but_nobody_waits_for_one() {
        let dir = directory();
        let f = floor(
            &dir,
            &[
                ("ana", Presence::Available, 1),
                ("ben", Presence::Available, 1),
            ],
        );
        let es = contact(RiskLevel::Moderate, Language::Es, NOW);
        assert_eq!(f.eligible(&es, &none()), vec![c("ana")]);
        let only_ben = floor(&dir, &[("ben", Presence::Available, 1)]);
        assert_eq!(only_ben.eligible(&es, &none()), vec![c("ben")]);
    }

    #[test]
    fn supervisors_are_eligible_in_the_skeleton() {
        let dir = directory();
        let f = floor(&dir, &[("sam", Presence::Available, 1)]);
        let rec = contact(RiskLevel::High, Language::En, NOW);
        assert_eq!(f.eligible(&rec, &none()), vec![c("sam")]);
    }

    #[test]
    fn those_who_declined_are_not_offered_again() {
        let dir = directory();
        let f = floor(
            &dir,
            &[
                ("ana", Presence::Available, 1),
                ("ben", Presence::Available, 1),
            ],
        );
        let es = contact(RiskLevel::Low, Language::Es, NOW);
        let declined: HashSet<_> = [c("ana")].into();
        assert_eq!(
            f.eligible(&es, &declined),
            vec![c("ben")],
            "the only speaker declined: the others are offered"
        );
    }

    #[test]
    fn new_offers_skip_those_already_offered() {
        let dir = directory();
        let f = floor(
            &dir,
            &[
                ("ben", Presence::Available, 1),
                ("cy", Presence::Available, 1),
            ],
        );
        let mut rec = contact(RiskLevel::Low, Language::En, NOW);
        assert_eq!(f.new_offers(&rec, &none()), vec![c("ben"), c("cy")]);
        rec.offer(&[c("ben")]).unwrap();
        assert_eq!(f.new_offers(&rec, &none()), vec![c("cy")]);
        rec.accept(&c("ben"), NOW).unwrap();
        assert!(
            f.new_offers(&rec, &none()).is_empty(),
            "assigned: no offers"
        );
    }

    #[test]
    fn queue_is_risk_first_then_longest_waiting() {
        let t = |m: i64| NOW - time::Duration::minutes(m);
        let low_old = contact(RiskLevel::Low, Language::En, t(30));
        let high_new = contact(RiskLevel::High, Language::En, t(1));
        let high_old = contact(RiskLevel::High, Language::En, t(5));
        let imminent = contact(RiskLevel::Imminent, Language::En, t(0));
        let mut assigned = contact(RiskLevel::Imminent, Language::En, t(50));
        assigned.offer(&[c("ana")]).unwrap();
        assigned.accept(&c("ana"), NOW).unwrap();
        let mut offered = contact(RiskLevel::Moderate, Language::En, t(2));
        offered.offer(&[c("ben")]).unwrap();
        let all = [
            &low_old, &high_new, &assigned, &high_old, &imminent, &offered,
        ];
        let order: Vec<_> = queue(all).into_iter().map(|r| r.id).collect();
        assert_eq!(
            order,
            vec![
                imminent.id,
                high_old.id,
                high_new.id,
                offered.id,
                low_old.id
            ]
        );
        let depth = queue_depth(all);
        assert_eq!(
            depth,
            [
                (RiskLevel::Low, 1),
                (RiskLevel::Moderate, 1),
                (RiskLevel::High, 2),
                (RiskLevel::Imminent, 1)
            ]
        );
        assert_eq!(load(all).get(&c("ana")), Some(&1));
    }

    #[test]
    fn refusals_map_to_withdraw_reasons() {
        assert_eq!(
            withdraw_reason(&TransitionError::Taken),
            WithdrawReason::Taken
        );
        assert_eq!(
            withdraw_reason(&TransitionError::Resolved),
            WithdrawReason::Resolved
        );
        assert_eq!(
            withdraw_reason(&TransitionError::NotOffered),
            WithdrawReason::Expired
        );
    }
}
