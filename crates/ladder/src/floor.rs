//! The staff on the floor at one instant: presence, capacity, load and who
//! is on call — and from that, who may be offered a contact at each rung.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::{Presence, PresenceRecord};
use nwd_proto::directory::{Directory, Role, Staff};
use nwd_proto::ladder::Rung;
use nwd_proto::{ContactId, CounsellorId, RiskLevel};
use time::OffsetDateTime;

use crate::oncall;

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
        .filter(|c| queue_key(c).is_some())
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
        if queue_key(c).is_none() {
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

/// The staff on the floor at one moment.
#[derive(Debug, Clone)]
pub struct Floor {
    pub directory: std::sync::Arc<Directory>,
    pub presence: HashMap<CounsellorId, PresenceRecord>,
    pub load: HashMap<CounsellorId, u32>,
    pub now: OffsetDateTime,
    pub stale_after: time::Duration,
    /// How the line has been doing, for the honest wait estimate.
    pub queue: QueueStats,
    /// The contacts each counsellor holds an offer of, in serving order:
    /// their seats are spoken for by these first (see [`Floor::in_window`]).
    pub held: HashMap<CounsellorId, imbl::OrdSet<QueueKey>>,
    /// Derived from `directory` and `now` on first use (so set those first).
    roster: std::sync::OnceLock<Roster>,
}

/// Staff by id and who is on call, once per floor: a decision looks each
/// person up in constant time instead of scanning the directory.
#[derive(Debug, Clone)]
struct Roster {
    index: HashMap<CounsellorId, usize>,
    on_call: Vec<bool>,
}

/// A waiting contact's place in the queue: highest risk first, then longest
/// waiting, then id (stable). Sorting these is serving order.
pub type QueueKey = (Reverse<RiskLevel>, OffsetDateTime, ContactId);

/// The queue key of a contact, if it is in the queue (waiting or offered).
/// An outreach scheduled for later (its ladder has not started) is in no
/// queue yet: it joins when its first step fires at `offer_at`. A person
/// who left before anyone answered is in the follow-up list instead (ADR
/// 0019): nobody is rung for someone who is gone.
pub fn queue_key(rec: &ContactRecord) -> Option<QueueKey> {
    if rec.scheduled() || rec.left.is_some() {
        return None;
    }
    rec.waiting_since()
        .map(|at| (Reverse(rec.risk), at, rec.id))
}

/// The queue as the caller knows it: the waiting contacts in serving order
/// and recent waits until an accept.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Every waiting contact, in serving order. A persistent set: each floor
    /// built from a [`Board`] shares it, and the board's next change copies
    /// only the path it touches, not the whole queue.
    pub waiting: imbl::OrdSet<QueueKey>,
    /// Median wait until an accept over recent contacts, if known.
    pub typical_wait: Option<time::Duration>,
}

impl QueueStats {
    /// How many waiting contacts are served before this one (risk, then wait).
    pub fn ahead_of(&self, rec: &ContactRecord) -> u32 {
        let Some(me) = queue_key(rec) else {
            return 0;
        };
        self.waiting.range(..me).count() as u32
    }
}

/// What a service knows of the floor, kept up to date change by change:
/// the open contacts (with the revision each was read at), presence, recent
/// waits, and from them each counsellor's load and the queue in serving
/// order. Building a [`Floor`] from it does not pass over every contact, so
/// a decision costs the same with 10 or 10,000 contacts open.
#[derive(Debug, Default)]
pub struct Board {
    open: HashMap<ContactId, (ContactRecord, u64)>,
    presence: HashMap<CounsellorId, PresenceRecord>,
    waits: WaitSamples,
    load: HashMap<CounsellorId, u32>,
    queue: imbl::OrdSet<QueueKey>,
    depth: [usize; 4],
    held: HashMap<CounsellorId, imbl::OrdSet<QueueKey>>,
}

impl Board {
    /// An open contact as last seen.
    pub fn get(&self, id: &ContactId) -> Option<&ContactRecord> {
        self.open.get(id).map(|(r, _)| r)
    }

    /// An open contact as last seen and the revision it was seen at.
    pub fn versioned(&self, id: &ContactId) -> Option<(&ContactRecord, u64)> {
        self.open.get(id).map(|(r, rev)| (r, *rev))
    }

    /// Every open contact, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &ContactRecord> {
        self.open.values().map(|(r, _)| r)
    }

    /// The contacts in the queue, in serving order.
    pub fn queue(&self) -> Vec<ContactId> {
        self.queue.iter().map(|(_, _, id)| *id).collect()
    }

    /// Contacts in the queue per risk level, every level present.
    pub fn depth(&self) -> [(RiskLevel, usize); 4] {
        let mut depth = self.depth.iter();
        RiskLevel::ALL.map(|r| (r, depth.next().copied().unwrap_or(0)))
    }

    /// How many contacts are in the queue.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// A record read or written at `revision`: kept if newer than what is
    /// known (closed ones are dropped). A contact that went from the queue
    /// to a counsellor adds its wait to the samples. Returns whether it was
    /// newer.
    pub fn put(&mut self, record: ContactRecord, revision: u64) -> bool {
        if self
            .open
            .get(&record.id)
            .is_some_and(|(_, known)| *known > revision)
        {
            return false;
        }
        let old = self.forget(&record.id);
        if let (Some(since), ContactState::Assigned { since: at, .. }) = (
            old.as_ref().and_then(ContactRecord::waiting_since),
            &record.state,
        ) {
            self.waits.record(*at - since);
        }
        if record.is_open() {
            self.count(&record, true);
            self.open.insert(record.id, (record, revision));
        }
        true
    }

    /// A contact deleted from the store.
    pub fn remove(&mut self, id: &ContactId) {
        self.forget(id);
    }

    fn forget(&mut self, id: &ContactId) -> Option<ContactRecord> {
        let (old, _) = self.open.remove(id)?;
        self.count(&old, false);
        Some(old)
    }

    /// Adds (or takes away) a record's share of load, queue and depth.
    fn count(&mut self, rec: &ContactRecord, add: bool) {
        if let Some(who) = rec.assigned_to() {
            if add {
                *self.load.entry(who.clone()).or_insert(0) += 1;
            } else if let Some(n) = self.load.get_mut(who) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.load.remove(who);
                }
            }
        }
        if let Some(key) = queue_key(rec) {
            let slot = RiskLevel::ALL
                .iter()
                .position(|r| *r == rec.risk)
                .unwrap_or(0);
            // Floors handed out keep the queue they were given.
            let queue = &mut self.queue;
            if add {
                queue.insert(key);
                self.depth[slot] += 1;
            } else {
                queue.remove(&key);
                self.depth[slot] = self.depth[slot].saturating_sub(1);
            }
            for who in offered_to(rec) {
                if add {
                    self.held.entry(who.clone()).or_default().insert(key);
                } else if let Some(held) = self.held.get_mut(who) {
                    held.remove(&key);
                    if held.is_empty() {
                        self.held.remove(who);
                    }
                }
            }
        }
    }

    /// A counsellor's presence (None: gone). Returns the previous record.
    pub fn set_presence(
        &mut self,
        who: CounsellorId,
        record: Option<PresenceRecord>,
    ) -> Option<PresenceRecord> {
        match record {
            Some(r) => self.presence.insert(who, r),
            None => self.presence.remove(&who),
        }
    }

    pub fn presence(&self, who: &CounsellorId) -> Option<&PresenceRecord> {
        self.presence.get(who)
    }

    /// The waiting contacts in serving order (most urgent first).
    pub fn queued(&self) -> impl Iterator<Item = &ContactRecord> {
        self.queue.iter().filter_map(|(_, _, id)| self.get(id))
    }

    /// The offers to make and withdraw so that every counsellor holds
    /// offers of the contacts their free seats are for (see [`crate::plan`]).
    pub fn plan(&self, floor: &Floor) -> Vec<crate::Planned> {
        crate::plan(floor, self.queued())
    }

    /// The floor at `now` under `directory`.
    pub fn floor(
        &self,
        directory: Arc<Directory>,
        now: OffsetDateTime,
        stale_after: time::Duration,
    ) -> Floor {
        Floor::new(
            directory,
            self.presence.clone(),
            self.load.clone(),
            now,
            stale_after,
            QueueStats {
                waiting: self.queue.clone(),
                typical_wait: self.waits.median(),
            },
        )
        .with_held(self.held.clone())
    }
}

/// Recent waits until an accept (bounded), for [`QueueStats::typical_wait`].
#[derive(Debug, Clone, Default)]
pub struct WaitSamples(std::collections::VecDeque<time::Duration>);

impl WaitSamples {
    const KEEP: usize = 50;

    pub fn record(&mut self, wait: time::Duration) {
        self.0.push_back(wait);
        if self.0.len() > Self::KEEP {
            self.0.pop_front();
        }
    }

    pub fn median(&self) -> Option<time::Duration> {
        let mut v: Vec<time::Duration> = self.0.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

impl Floor {
    pub fn new(
        directory: Arc<Directory>,
        presence: HashMap<CounsellorId, PresenceRecord>,
        load: HashMap<CounsellorId, u32>,
        now: OffsetDateTime,
        stale_after: time::Duration,
        queue: QueueStats,
    ) -> Self {
        Self {
            directory,
            presence,
            load,
            now,
            stale_after,
            queue,
            held: HashMap::new(),
            roster: std::sync::OnceLock::new(),
        }
    }

    /// The offers each counsellor holds (by the contacts' queue keys).
    pub fn with_held(mut self, held: HashMap<CounsellorId, imbl::OrdSet<QueueKey>>) -> Self {
        self.held = held;
        self
    }

    fn roster(&self) -> &Roster {
        self.roster.get_or_init(|| Roster {
            index: self
                .directory
                .staff
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.clone(), i))
                .collect(),
            on_call: oncall::on_call_all(&self.directory, self.now),
        })
    }

    /// A staff member of the directory, by id.
    pub fn staff(&self, who: &CounsellorId) -> Option<&Staff> {
        let i = *self.roster().index.get(who)?;
        self.directory.staff.get(i)
    }

    fn present(&self, who: &CounsellorId) -> bool {
        self.presence
            .get(who)
            .is_some_and(|p| is_available(p, self.now, self.stale_after))
    }

    /// Available (status and fresh heartbeat) and known to the directory.
    pub fn is_available(&self, who: &CounsellorId) -> bool {
        self.staff(who).is_some() && self.present(who)
    }

    /// The counsellor's dashboard connection is gone: offline, no record,
    /// or a stale heartbeat (busy and away are choices, not disconnections).
    pub fn disconnected(&self, who: &CounsellorId) -> bool {
        self.presence.get(who).is_none_or(|p| {
            p.status == Presence::Offline || self.now - p.heartbeat_at > self.stale_after
        })
    }

    pub fn load_of(&self, who: &CounsellorId) -> u32 {
        self.load.get(who).copied().unwrap_or(0)
    }

    /// Seats free: capacity less open conversations (unknown staff have none).
    pub fn free_seats(&self, who: &CounsellorId) -> u32 {
        self.staff(who)
            .map_or(0, |s| s.capacity.saturating_sub(self.load_of(who)))
    }

    /// How many offers of contacts served before this one the counsellor
    /// holds (their seats are spoken for by those first).
    pub fn held_ahead(&self, who: &CounsellorId, rec: &ContactRecord) -> usize {
        let (Some(held), Some(me)) = (self.held.get(who), queue_key(rec)) else {
            return 0;
        };
        held.range(..me).filter(|(_, _, id)| *id != rec.id).count()
    }

    /// How many offers the counsellor holds in all.
    pub fn held_count(&self, who: &CounsellorId) -> usize {
        self.held.get(who).map_or(0, imbl::OrdSet::len)
    }

    /// Whether this contact is within the counsellor's window: one of the
    /// k most urgent contacts they hold or may be offered, k being their
    /// free seats (ADR 0017). The imminent broadcast does not ask.
    pub fn in_window(&self, who: &CounsellorId, rec: &ContactRecord) -> bool {
        queue_key(rec).is_none() || self.held_ahead(who, rec) < self.free_seats(who) as usize
    }

    /// Below the directory's capacity (unknown staff have none).
    pub fn has_room(&self, who: &CounsellorId) -> bool {
        self.staff(who)
            .is_some_and(|s| self.load_of(who) < s.capacity)
    }

    pub fn on_call(&self, staff: &Staff) -> bool {
        let roster = self.roster();
        match roster
            .index
            .get(&staff.id)
            .and_then(|i| roster.on_call.get(*i))
        {
            Some(on) => *on,
            None => oncall::on_call(&self.directory, staff, self.now),
        }
    }

    /// On call, available, with room, and not among those who declined.
    /// `s` is a directory entry (from iterating the directory's staff).
    fn can_take(&self, s: &Staff, rec: &ContactRecord) -> bool {
        self.on_call(s)
            && self.present(&s.id)
            && self.load_of(&s.id) < s.capacity
            && !rec
                .escalation
                .as_ref()
                .is_some_and(|e| e.declined.contains(&s.id))
    }

    /// The door institution of a contact: the partner it came through, or
    /// the patient's programme.
    fn door<'a>(&'a self, rec: &'a ContactRecord) -> Option<&'a nwd_proto::PartnerId> {
        rec.door.as_ref().or_else(|| {
            rec.patient
                .as_ref()
                .and_then(|p| self.directory.patients.iter().find(|x| &x.id == p))
                .map(|p| &p.programme)
        })
    }

    /// Who a rung would offer this contact to now, before language
    /// preference and before removing those already offered. Empty for the
    /// rungs that notify rather than offer. A contact the switchboard holds
    /// (ADR 0019) is offered at every offering rung to the supervisors on
    /// call only; its clock keeps running.
    pub fn rung_candidates(&self, rung: Rung, rec: &ContactRecord) -> Vec<&Staff> {
        let staff = self.directory.staff.iter();
        if rec.held.is_some() && rung.offers() {
            return staff
                .filter(|s| s.role == Role::Supervisor && self.can_take(s, rec))
                .collect();
        }
        match rung {
            Rung::Coordinator => {
                let coordinator = rec
                    .patient
                    .as_ref()
                    .and_then(|p| self.directory.patients.iter().find(|x| &x.id == p))
                    .and_then(|p| p.coordinator.as_ref());
                staff
                    .filter(|s| Some(&s.id) == coordinator && self.can_take(s, rec))
                    .collect()
            }
            Rung::DoorOnCall => {
                let door = self.door(rec);
                staff
                    .filter(|s| s.role == Role::Counsellor && Some(&s.partner) == door)
                    .filter(|s| self.can_take(s, rec))
                    .collect()
            }
            Rung::AnyOnCall => staff
                .filter(|s| s.role == Role::Counsellor && self.can_take(s, rec))
                .collect(),
            Rung::Supervisor => staff
                .filter(|s| s.role == Role::Supervisor && self.can_take(s, rec))
                .collect(),
            Rung::TrustedContact | Rung::BackupLine => Vec::new(),
        }
    }

    /// Everyone on call who can take the contact (the imminent broadcast).
    pub fn broadcast_candidates(&self, rec: &ContactRecord) -> Vec<&Staff> {
        self.directory
            .staff
            .iter()
            .filter(|s| self.can_take(s, rec))
            .collect()
    }

    /// Supervisors on call, whatever their presence (they are alerted).
    pub fn supervisors_on_call(&self) -> Vec<CounsellorId> {
        self.directory
            .staff
            .iter()
            .filter(|s| s.role == Role::Supervisor && self.on_call(s))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Keeps candidates not offered yet; while the contact has waited less
    /// than the policy's language wait, keeps only those who speak its
    /// language if any of them can take it — a person is never kept waiting
    /// for a language match nobody can give.
    pub fn choose(&self, rec: &ContactRecord, candidates: Vec<&Staff>) -> Vec<CounsellorId> {
        let offered: HashSet<&CounsellorId> = offered_to(rec).iter().collect();
        let language_wait = rec
            .escalation
            .as_ref()
            .map_or(0, |e| e.policy.language_wait_ms);
        let waited = rec
            .waiting_since()
            .map_or(time::Duration::ZERO, |since| self.now - since);
        let within_wait = waited < time::Duration::milliseconds(language_wait as i64);
        // Speakers among everyone who can take it, including those already
        // offered: while one of them holds the offer, others wait their turn.
        let speakers_exist = candidates.iter().any(|s| s.languages.contains(&rec.lang));
        candidates
            .into_iter()
            .filter(|s| !offered.contains(&s.id))
            .filter(|s| !(within_wait && speakers_exist) || s.languages.contains(&rec.lang))
            .map(|s| s.id.clone())
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
