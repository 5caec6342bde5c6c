//! `nwd-bench-queue`: queue decisions per second with N contacts waiting and
//! M staff on the floor (issue 5; defaults 1,000 and 200).
//!
//! The directory is the demo one with its staff extended to M (about 5%
//! supervisors, counsellors spread over the partners, ~30% speak Spanish and
//! English, capacity 3, on call around the clock). Contacts are mixed like a
//! busy night: ~2% imminent, 18% high, 40% moderate, 40% low risk; 30% in
//! Spanish; doors spread over the partners.
//!
//! 1. **In process**: the pure decisions the router makes inside its
//!    compare-and-swaps (`nwd_ladder::fire`, `widen`, the floor it builds
//!    from its state, the queue order, the stale-offer scan of a sweep),
//!    timed on one core with the N contacts and M staff in memory.
//! 2. **Through the router**: the real `nwd-router` release binary against a
//!    real nats-server (file storage, `sync_interval: always`). With all M
//!    present but away, N triaged new contacts are published as triage
//!    would, as fast as the router takes them (publish → record written,
//!    from a watch of the contacts bucket). Then all M become available at
//!    once: the time until the offers settle (priority offers, ADR 0017: only
//!    the top of the queue is offered when contacts outnumber seats), and how
//!    many offers that made;
//!    then the router's CPU while nothing changes. Then every counsellor
//!    accepts disjoint contacts in queue order up to capacity, all at once
//!    (accept round trip, accepts/s); the router is timed until no offer is
//!    left with a counsellor at capacity, while one counsellor frees a place
//!    (how soon is it offered a waiting contact?); and the invariants are
//!    checked on the records and the stream.
//! 3. **Raw JetStream** in the same run, before the router is loaded: the raw
//!    hop (as `nwd-bench`) and a sequential KV update of one key.
//!
//! Every figure is printed with its ratio to the raw hop p50. Each phase
//! through the router has a time limit; a phase that does not finish says so
//! with the progress it made. Progress goes to stderr, figures to stdout
//! (markdown).
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, kv};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use nwd_bench::{Procs, cpu_time, free_addr, hist, lock, ms, progress, raw_hop, secs};
use nwd_ladder::Board;
use nwd_ladder::floor;
use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::{DashboardPush, Presence, PresenceRecord, ServerMsg};
use nwd_proto::directory::{Directory, Role};
use nwd_proto::events::{Channel, ContactAssigned, ContactMessage, MessageTriaged};
use nwd_proto::ladder::Escalation;
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{
    Assessment, ContactId, CounsellorId, Envelope, Language, MessageId, PartnerId, PhoneNumber,
    Reason, RiskLevel, subjects,
};
use nwd_runtime::bus::{self, NatsArgs};
use time::OffsetDateTime;

#[derive(Parser, Debug)]
struct Args {
    /// Contacts waiting in the queue.
    #[arg(long, default_value_t = 1_000)]
    waiting: usize,
    /// Staff on the floor (about 5% supervisors, the rest counsellors).
    #[arg(long, default_value_t = 200)]
    counsellors: usize,
    /// Time limit of each phase through the router, in seconds.
    #[arg(long, default_value_t = 300)]
    phase_timeout: u64,
    /// The router's sweep period (`NWD_ROUTER_SWEEP_MS`; 1000 is its default).
    #[arg(long, default_value_t = 1_000)]
    sweep_ms: u64,
    /// A short bounded run for CI: 200 waiting, 40 staff, 15 s per phase.
    #[arg(long)]
    smoke: bool,
    /// Only the in-process decisions (no nats-server, no router).
    #[arg(long)]
    in_process_only: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Every generated staff member's capacity.
const CAPACITY: u32 = 3;
/// Heartbeats never go stale during the run.
const STALE_AFTER_MS: u64 = 3_600_000;

// ---------------------------------------------------------------------------
// The floor and the contacts

/// The demo directory with its staff extended to `m`: the demo staff kept
/// (patients name them as coordinators), all with capacity 3 and on call
/// around the clock, plus generated staff so that about 5% are supervisors,
/// the counsellors are spread over the partners and ~30% speak es + en.
fn directory(m: usize) -> anyhow::Result<Directory> {
    let demo = nwd_testkit::workspace_root().join("deploy/local/demo/directory.toml");
    let mut dir = nwd_runtime::directory::load(&demo)?;
    let kept = dir.staff.len();
    if m < kept {
        bail!("--counsellors must be at least {kept} (the demo staff)");
    }
    let all_week = nwd_bench::on_call_all_week();
    for s in &mut dir.staff {
        s.capacity = CAPACITY;
        s.shifts = all_week.clone();
    }
    // Generated staff are copies of a demo counsellor (same password hash).
    let template = dir
        .staff
        .iter()
        .find(|s| s.role == Role::Counsellor)
        .context("the demo directory has no counsellor")?
        .clone();
    let partners: Vec<PartnerId> = dir.partners.iter().map(|p| p.id.clone()).collect();
    let supervisors_wanted = (m * 5).div_ceil(100).max(1);
    let mut supervisors = dir
        .staff
        .iter()
        .filter(|s| s.role == Role::Supervisor)
        .count();
    let mut spanish = dir
        .staff
        .iter()
        .filter(|s| s.languages.contains(&Language::Es))
        .count();
    for k in 0..m - kept {
        let mut s = template.clone();
        let supervisor = supervisors < supervisors_wanted;
        if supervisor {
            supervisors += 1;
            s.role = Role::Supervisor;
            s.id = CounsellorId::parse(&format!("sup-{k:03}"))?;
            s.name = format!("Supervisor {k}");
        } else {
            s.role = Role::Counsellor;
            s.id = CounsellorId::parse(&format!("c-{k:03}"))?;
            s.name = format!("Counsellor {k}");
        }
        s.partner = partners
            .get(k % partners.len().max(1))
            .context("the demo directory has no partner")?
            .clone();
        let speaks_spanish = spanish * 10 < (kept + k + 1) * 3;
        s.languages = if speaks_spanish {
            spanish += 1;
            vec![Language::Es, Language::En]
        } else {
            vec![Language::En]
        };
        s.skills = Vec::new();
        s.capacity = CAPACITY;
        s.shifts = all_week.clone();
        dir.staff.push(s);
    }
    dir.validate()?;
    Ok(dir)
}

/// Each partner and its door number.
fn doors(dir: &Directory) -> anyhow::Result<Vec<(PartnerId, PhoneNumber)>> {
    dir.partners
        .iter()
        .map(|p| {
            let number = p
                .sms_numbers
                .first()
                .with_context(|| format!("partner {} has no door number", p.id))?;
            Ok((p.id.clone(), number.clone()))
        })
        .collect()
}

/// Contact `i`'s risk: 1 in 50 imminent, 9 high, 20 moderate, 20 low.
fn risk_of(i: usize) -> RiskLevel {
    match i % 50 {
        0 => RiskLevel::Imminent,
        1..=9 => RiskLevel::High,
        10..=29 => RiskLevel::Moderate,
        _ => RiskLevel::Low,
    }
}

/// The first message of new contact `i`, triaged, received at `at`.
fn triaged(
    i: usize,
    doors: &[(PartnerId, PhoneNumber)],
    at: OffsetDateTime,
) -> anyhow::Result<MessageTriaged> {
    let level = risk_of(i);
    // 7 is coprime with 10: three in ten, not correlated with the risk pattern.
    let lang = if (i * 7) % 10 < 3 {
        Language::Es
    } else {
        Language::En
    };
    let (door, line) = doors
        .get(i % doors.len().max(1))
        .context("no doors")?
        .clone();
    Ok(MessageTriaged {
        message: ContactMessage {
            contact_id: ContactId::new(),
            message_id: MessageId::new(),
            channel: Channel::Sms {
                patient: PhoneNumber::parse(&format!("+1555{:07}", 3_000_000 + i))?.into(),
                line: line.into(),
            },
            door: Some(door),
            patient: None,
            body: format!("q{i} I need to talk to someone tonight"),
            received_at: at,
            opens_contact: true,
            previous: None,
            quick_exit: false,
        },
        assessment: Assessment {
            level,
            score: 0.5,
            reasons: vec![Reason {
                rule: format!("bench-{}", level.as_str()),
                label: format!("bench {} signal", level.as_str()),
                level,
                start: 0,
                end: 1,
            }],
            lang,
            rulebook_version: "bench".into(),
        },
    })
}

fn presence_map(
    dir: &Directory,
    status: Presence,
    at: OffsetDateTime,
) -> HashMap<CounsellorId, PresenceRecord> {
    dir.staff
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                PresenceRecord {
                    counsellor: s.id.clone(),
                    status,
                    heartbeat_at: at,
                },
            )
        })
        .collect()
}

/// Who holds how many contacts, from the records.
fn load_of(records: &HashMap<ContactId, ContactRecord>) -> HashMap<CounsellorId, u32> {
    floor::load(records.values())
}

// ---------------------------------------------------------------------------
// 1. In process

fn stale_after() -> time::Duration {
    time::Duration::milliseconds(STALE_AFTER_MS as i64)
}

/// The router's state: every contact and every presence record on a
/// [`Board`], as `Router::remember` and `set_presence` keep it.
fn board_of(records: &[ContactRecord], presence: &HashMap<CounsellorId, PresenceRecord>) -> Board {
    let mut board = Board::default();
    for (who, p) in presence {
        board.set_presence(who.clone(), Some(p.clone()));
    }
    for r in records {
        board.put(r.clone(), 1);
    }
    board
}

/// µs per call of `f`, called at least 3 times and for at least `min`.
fn per_call(min: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || start.elapsed() < min {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

/// µs per item of one pass of `f` over `items`.
fn per_item<T>(items: &mut [T], mut f: impl FnMut(&mut T)) -> f64 {
    let start = Instant::now();
    for it in items.iter_mut() {
        f(it);
    }
    start.elapsed().as_secs_f64() * 1e6 / items.len().max(1) as f64
}

struct InProcess {
    floor_us: f64,
    queue_us: f64,
    remember_us: f64,
    fire_away_us: f64,
    fire_free_us: f64,
    widen_us: f64,
    /// One sweep's offer pass over the queue, as `Router::sweep` runs it:
    /// one floor; per contact the cached record cloned, `widen` on it, then
    /// inside the CAS the record decoded, `widen` again, the offer, the
    /// record encoded; then `remember` (board + depth gauge).
    pass: Duration,
    /// The offer pushes of that pass: one contact view per contact, one
    /// encoded push per counsellor offered.
    pushes: Duration,
    pass_offers: usize,
    stale_scan_us: f64,
    stale_pairs: usize,
    idle_sweep_us: f64,
}

impl InProcess {
    fn per_decision_us(&self, n: usize) -> f64 {
        self.pass.as_secs_f64() * 1e6 / n.max(1) as f64
    }
}

fn in_process(dir: &Arc<Directory>, n: usize) -> anyhow::Result<InProcess> {
    let doors = doors(dir)?;
    let now = OffsetDateTime::now_utc();
    let away = presence_map(dir, Presence::Away, now);
    let available = presence_map(dir, Presence::Available, now);
    // Arrived over the last minute: past the language wait, the widest offers.
    let arrived = now - time::Duration::seconds(60);
    let mut fresh = Vec::with_capacity(n);
    let mut bodies = HashMap::with_capacity(n);
    for i in 0..n {
        let ev = triaged(i, &doors, arrived + time::Duration::milliseconds(i as i64))?;
        let mut rec = ContactRecord::open(&ev);
        rec.escalation = Some(Escalation::start(
            dir.policy_for(rec.door.as_ref()),
            ev.message.received_at,
        ));
        bodies.insert(rec.id, nwd_runtime::transcript::person_view(&ev));
        fresh.push(rec);
    }
    let min = Duration::from_millis(300);

    // A new contact with everyone away: the ladder climbs every rung to the
    // backup line (what phase A does through the router).
    let floor_away = board_of(&fresh, &away).floor(dir.clone(), now, stale_after());
    let mut records = fresh.clone();
    let fire_away_us = per_item(&mut records, |r| {
        black_box(nwd_ladder::fire(r, &floor_away));
    });
    // A new contact with everyone free: the door's counsellors are offered it.
    let floor_free = board_of(&fresh, &available).floor(dir.clone(), now, stale_after());
    let mut fresh_free = fresh.clone();
    let fire_free_us = per_item(&mut fresh_free, |r| {
        black_box(nwd_ladder::fire(r, &floor_free));
    });

    let mut board = board_of(&records, &available);
    let floor_us = per_call(min, || {
        black_box(board.floor(dir.clone(), now, stale_after()));
    });
    let queue_us = per_call(min, || {
        black_box(board.queue().len());
    });
    let floor_now = board.floor(dir.clone(), now, stale_after());
    let widen_us = per_item(&mut records.clone(), |r| {
        black_box(nwd_ladder::widen(r, &floor_now));
    });
    let mut revision = 1;
    let remember_us = per_item(&mut records.clone(), |r| {
        revision += 1;
        board.put(r.clone(), revision);
        black_box(board.depth());
    });

    // One sweep's offer pass, in queue order, as `Router::sweep` runs it.
    let mut stored: HashMap<ContactId, Vec<u8>> = records
        .iter()
        .map(|r| Ok((r.id, serde_json::to_vec(r)?)))
        .collect::<anyhow::Result<_>>()?;
    let floor = board.floor(dir.clone(), now, stale_after());
    let mut pass_offers = 0;
    let mut pushes = Duration::ZERO;
    let start = Instant::now();
    for id in board.queue() {
        let Some(cached) = board.get(&id).cloned() else {
            continue;
        };
        if nwd_ladder::widen(&cached, &floor).is_empty() {
            continue;
        }
        let Some(bytes) = stored.get(&id) else {
            continue;
        };
        let mut rec: ContactRecord = serde_json::from_slice(bytes)?;
        let new = nwd_ladder::widen(&rec, &floor);
        if new.is_empty() || rec.offer(&new).is_err() {
            continue;
        }
        stored.insert(id, serde_json::to_vec(&rec)?);
        revision += 1;
        board.put(rec.clone(), revision);
        black_box(board.depth());
        pass_offers += new.len();
        let t = Instant::now();
        let messages = bodies.get(&id).cloned().into_iter().collect();
        let view = nwd_runtime::transcript::contact_view(&rec, dir, messages);
        for who in new {
            let push = Envelope::new(DashboardPush {
                counsellor: who,
                msg: ServerMsg::Offer {
                    contact: view.clone(),
                },
            });
            black_box(push.to_bytes());
        }
        pushes += t.elapsed();
    }
    let pass = start.elapsed().saturating_sub(pushes);

    // A sweep with nothing to do (everyone offered everything, nobody at
    // capacity): the stale scan, then each contact in the queue cloned from
    // the cache and widened, to find nobody new.
    let idle = board.floor(dir.clone(), now, stale_after());
    let idle_sweep_us = per_call(min, || {
        let stale: usize = board.records().map(|r| idle.stale_offers(r).len()).sum();
        let mut new = 0;
        for id in board.queue() {
            if let Some(cached) = board.get(&id).cloned() {
                new += nwd_ladder::widen(&cached, &idle).len();
            }
        }
        black_box((stale, new));
    });

    // A sweep once everyone is at capacity: every offer is stale.
    let mut full = board.floor(dir.clone(), now, stale_after());
    for s in &dir.staff {
        full.load.insert(s.id.clone(), s.capacity);
    }
    let mut stale_pairs = 0;
    let stale_scan_us = per_call(min, || {
        stale_pairs = board.records().map(|r| full.stale_offers(r).len()).sum();
    });
    Ok(InProcess {
        floor_us,
        queue_us,
        remember_us,
        fire_away_us,
        fire_free_us,
        widen_us,
        pass,
        pushes,
        pass_offers,
        stale_scan_us,
        stale_pairs,
        idle_sweep_us,
    })
}

// ---------------------------------------------------------------------------
// 2. Through the router

/// What a watch of the contacts bucket has seen. Times are the server's
/// write times of the entries (`created`, same clock as this process), so
/// the figures do not depend on how quickly this process reads the watch.
#[derive(Default)]
struct Seen {
    records: HashMap<ContactId, ContactRecord>,
    /// When each record was first written.
    created: HashMap<ContactId, OffsetDateTime>,
    /// When each record was first written holding offers.
    first_offered: HashMap<ContactId, OffsetDateTime>,
    /// The last write, and when this process read it.
    last_written: Option<OffsetDateTime>,
    last_read: Option<Instant>,
    /// The last write that took an offer away from someone (the contact
    /// stayed in the queue).
    last_withdrawal: Option<OffsetDateTime>,
    /// Writes that took offers away (the contact staying in the queue).
    withdrawal_writes: u64,
    /// Longest time between a write and this process reading it.
    max_lag: Duration,
    /// A counsellor watched for new offers: the first write that newly
    /// offers them a contact after this is set.
    probe: Option<CounsellorId>,
    probe_offered: Option<OffsetDateTime>,
}

/// `t − start`, zero if before.
fn after(t: OffsetDateTime, start: OffsetDateTime) -> Duration {
    Duration::try_from(t - start).unwrap_or_default()
}

impl Seen {
    fn count(&self, f: impl Fn(&ContactRecord) -> bool) -> usize {
        self.records.values().filter(|r| f(r)).count()
    }

    /// (contact, counsellor) offers held by counsellors at capacity.
    fn stale_offers(&self, capacity: &HashMap<CounsellorId, u32>) -> usize {
        let load = load_of(&self.records);
        let full: HashSet<&CounsellorId> = load
            .iter()
            .filter(|(who, n)| capacity.get(*who).is_some_and(|c| **n >= *c))
            .map(|(who, _)| who)
            .collect();
        self.records
            .values()
            .map(|r| {
                floor::offered_to(r)
                    .iter()
                    .filter(|c| full.contains(c))
                    .count()
            })
            .sum()
    }

    fn offer_pairs(&self) -> usize {
        self.records
            .values()
            .map(|r| floor::offered_to(r).len())
            .sum()
    }
}

type Tracker = Arc<Mutex<Seen>>;

async fn track(contacts: &kv::Store) -> anyhow::Result<Tracker> {
    let tracker: Tracker = Arc::default();
    let mut watch = contacts.watch_with_history(">").await?;
    let t = tracker.clone();
    tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let written = entry.created;
            let lag = after(OffsetDateTime::now_utc(), written);
            let Ok(rec) = serde_json::from_slice::<ContactRecord>(&entry.value) else {
                continue;
            };
            let mut s = lock(&t);
            let old = s.records.get(&rec.id);
            let offered_before = old.map_or(&[][..], floor::offered_to);
            let offered_now = floor::offered_to(&rec);
            let newly_offered =
                |who: &CounsellorId| offered_now.contains(who) && !offered_before.contains(who);
            let probe_hit =
                s.probe_offered.is_none() && s.probe.as_ref().is_some_and(newly_offered);
            let withdrawal =
                rec.waiting_since().is_some() && offered_now.len() < offered_before.len();
            if probe_hit {
                s.probe_offered = Some(written);
            }
            if withdrawal {
                s.last_withdrawal = Some(written);
                s.withdrawal_writes += 1;
            }
            s.created.entry(rec.id).or_insert(written);
            if matches!(rec.state, ContactState::Offered { .. }) {
                s.first_offered.entry(rec.id).or_insert(written);
            }
            s.records.insert(rec.id, rec);
            s.last_written = Some(written);
            s.last_read = Some(Instant::now());
            s.max_lag = s.max_lag.max(lag);
        }
    });
    Ok(tracker)
}

/// Polls until `done` or `deadline`; whether it was done.
async fn wait_for(
    tracker: &Tracker,
    deadline: Instant,
    every: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) -> bool {
    loop {
        if done(&lock(tracker)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until no record changed for `quiet` (or `deadline`).
async fn wait_quiet(tracker: &Tracker, quiet: Duration, deadline: Instant) -> bool {
    wait_for(tracker, deadline, Duration::from_millis(100), |s| {
        s.last_read.is_none_or(|t| t.elapsed() >= quiet)
    })
    .await
}

/// CPU used by the router and nats-server over a phase.
struct Cpu {
    pids: [u32; 2],
    start: Instant,
    used: [Duration; 2],
}

impl Cpu {
    fn start(router: u32, nats: u32) -> Self {
        let pids = [router, nats];
        Self {
            pids,
            start: Instant::now(),
            used: pids.map(|p| cpu_time(p).unwrap_or_default()),
        }
    }

    /// "router 93% · nats-server 41%" (of one core, over the phase so far).
    fn report(&self) -> String {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        let pct = |i: usize| {
            let now = self.pids.get(i).and_then(|p| cpu_time(*p).ok());
            let before = self.used.get(i).copied().unwrap_or_default();
            now.map_or(0.0, |t| {
                t.saturating_sub(before).as_secs_f64() / wall * 100.0
            })
        };
        format!("router {:.0}% · nats-server {:.0}%", pct(0), pct(1))
    }
}

/// Sum of a Prometheus counter's series whose labels contain `label`.
async fn metric(http: &reqwest::Client, addr: SocketAddr, name: &str, label: &str) -> f64 {
    let Ok(res) = http.get(format!("http://{addr}/metrics")).send().await else {
        return f64::NAN;
    };
    let Ok(text) = res.text().await else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn set_presence(
    store: &kv::Store,
    staff: &[CounsellorId],
    status: Presence,
) -> anyhow::Result<()> {
    let at = OffsetDateTime::now_utc();
    let mut puts = futures::stream::iter(staff.iter().map(|who| {
        let store = store.clone();
        let rec = PresenceRecord {
            counsellor: who.clone(),
            status,
            heartbeat_at: at,
        };
        async move {
            store
                .put(rec.counsellor.as_str(), serde_json::to_vec(&rec)?.into())
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(staff.len().max(1));
    while let Some(r) = puts.next().await {
        r?;
    }
    Ok(())
}

/// A raw KV update: `n` sequential compare-and-swaps of one key, µs.
async fn raw_kv_update(js: &jetstream::Context, n: u32) -> anyhow::Result<Histogram<u64>> {
    let store = js
        .create_key_value(kv::Config {
            bucket: "bench-raw".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let value = bytes::Bytes::from(vec![b'x'; 1024]);
    let mut revision = store.put("k", value.clone()).await?;
    let mut h = hist();
    for _ in 0..n {
        let start = Instant::now();
        revision = store.update("k", value.clone(), revision).await?;
        let _ = h.record(start.elapsed().as_micros() as u64);
    }
    Ok(h)
}

struct Raw {
    hop: Histogram<u64>,
    ack: Histogram<u64>,
    kv: Histogram<u64>,
}

impl Raw {
    fn p50(&self) -> f64 {
        self.hop.value_at_quantile(0.5).max(1) as f64
    }
}

/// Phase A: N new contacts with everyone away.
struct Opened {
    latency: Histogram<u64>,
    created: usize,
    published_in: Duration,
    taken_in: Option<Duration>,
    announced_in: Option<Duration>,
    cpu: String,
}

/// Phase B: everyone available at once.
struct Offered {
    all_offered_in: Option<Duration>,
    offered: usize,
    per_contact: Histogram<u64>,
    quiet_in: Option<Duration>,
    offer_pairs: usize,
    offers_metric: f64,
    cpu: String,
    /// CPU over a window with nothing changing, after the offers.
    idle_window: Duration,
    idle_cpu: String,
    idle_writes: bool,
}

/// Phase C + D: accepts, then the router withdrawing the offers of those at capacity.
struct Accepted {
    planned: usize,
    done: usize,
    refused: HashMap<String, usize>,
    failed: usize,
    rtt: Histogram<u64>,
    accepts_in: Duration,
    cpu_accepts: String,
    stale_peak: usize,
    stale_at_accepts_end: usize,
    stale_left: usize,
    settled_in: Option<Duration>,
    /// Writes that withdrew offers: during the accepts, and after them.
    writes_during_accepts: u64,
    writes_after_accepts: u64,
    /// Resolving one conversation right after the accepts: the reply, and
    /// the first new offer to that counsellor (both from the accepts' end).
    probe_rtt: Option<Duration>,
    probe_offered: Option<Duration>,
    /// From the end of the accepts until no stale offer was left (or the limit).
    settle_took: Duration,
    cpu_settle: String,
    withdrawn_metric: f64,
    cas_conflicts: f64,
    violations: Vec<String>,
    states: HashMap<&'static str, usize>,
}

struct Line {
    nats: nwd_testkit::NatsServer,
    _procs: Procs,
    router_pid: u32,
    router_addr: SocketAddr,
    client: async_nats::Client,
    js: jetstream::Context,
    presence: kv::Store,
    contacts: kv::Store,
    staff: Vec<CounsellorId>,
    capacity: HashMap<CounsellorId, u32>,
    doors: Vec<(PartnerId, PhoneNumber)>,
    http: reqwest::Client,
}

impl Line {
    fn cpu(&self) -> Cpu {
        Cpu::start(self.router_pid, self.nats.pid().unwrap_or(0))
    }

    async fn metric(&self, name: &str, label: &str) -> f64 {
        metric(&self.http, self.router_addr, name, label).await
    }
}

async fn start_line(
    dir: &Directory,
    bin_dir: &Path,
    log_dir: &Path,
    sweep_ms: u64,
) -> anyhow::Result<Line> {
    let path = log_dir.join("directory.toml");
    std::fs::write(&path, toml::to_string(dir)?)?;
    // The file the router reads is the directory measured in process.
    let reread = nwd_runtime::directory::load(&path)?;
    if reread.staff.len() != dir.staff.len() {
        bail!("the generated directory does not read back");
    }
    let nats = nwd_testkit::NatsServer::start().await;
    nats.set_up_bus().await;
    let router_addr = free_addr()?;
    let env: Vec<(String, String)> = vec![
        ("NWD_NATS_URL".into(), nats.url_for("router")),
        ("NWD_LOG".into(), "warn".into()),
        ("NWD_DIRECTORY".into(), path.display().to_string()),
        ("NWD_ROUTER_METRICS_ADDR".into(), router_addr.to_string()),
        ("NWD_PRESENCE_STALE_MS".into(), STALE_AFTER_MS.to_string()),
        ("NWD_ROUTER_SWEEP_MS".into(), sweep_ms.to_string()),
    ];
    let mut procs = Procs::default();
    let router_pid = procs.spawn(bin_dir, "router", &env, log_dir)?;
    nwd_bench::wait_ready([("router", router_addr)]).await?;
    // Commands as the dashboard (the only user that may send them); the
    // bench's own reads and writes as the operator.
    let client = nats
        .connect_options_as("dashboard")
        .request_timeout(Some(Duration::from_secs(120)))
        .connect(nats.url_for("dashboard"))
        .await?;
    let operator = nats
        .connect_options_as("operator")
        .request_timeout(Some(Duration::from_secs(120)))
        .connect(nats.url())
        .await?;
    let nats_args = NatsArgs {
        ack_timeout_ms: 30_000,
        ..NatsArgs::local(nats.url())
    };
    let js = bus::jetstream(operator, &nats_args);
    let presence = bus::bucket(&js, buckets::PRESENCE).await?;
    let contacts = bus::bucket(&js, buckets::CONTACTS).await?;
    Ok(Line {
        nats,
        _procs: procs,
        router_pid,
        router_addr,
        client,
        js,
        presence,
        contacts,
        staff: dir.staff.iter().map(|s| s.id.clone()).collect(),
        capacity: dir
            .staff
            .iter()
            .map(|s| (s.id.clone(), s.capacity))
            .collect(),
        doors: doors(dir)?,
        http: reqwest::Client::new(),
    })
}

async fn raw(line: &Line, smoke: bool) -> anyhow::Result<Raw> {
    let url = line.nats.url();
    let _ = raw_hop(&url, 50, 1, 99).await?;
    let (hop, ack) = raw_hop(&url, 200, 2, 0).await?;
    let kv = raw_kv_update(&line.js, if smoke { 200 } else { 500 }).await?;
    Ok(Raw { hop, ack, kv })
}

async fn open_contacts(
    line: &Line,
    tracker: &Tracker,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Opened> {
    set_presence(&line.presence, &line.staff, Presence::Away).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = line.cpu();
    let sent: Arc<Mutex<HashMap<ContactId, OffsetDateTime>>> = Arc::default();
    let start_at = OffsetDateTime::now_utc();
    let start = Instant::now();
    let deadline = start + limit;
    let mut publishes = futures::stream::iter((0..n).map(|i| {
        let (js, sent) = (line.js.clone(), sent.clone());
        let ev = triaged(i, &line.doors, OffsetDateTime::now_utc());
        async move {
            let ev = ev?;
            let id = ev.message.contact_id;
            lock(&sent).insert(id, OffsetDateTime::now_utc());
            bus::publish(
                &js,
                subjects::contact_triaged(&id),
                &nwd_proto::wire::msg_id::message_triaged(&ev.message.message_id),
                &Envelope::new(ev),
            )
            .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(64);
    while let Some(r) = publishes.next().await {
        r?;
    }
    let published_in = start.elapsed();
    progress(&format!("A: {n} published in {}", secs(published_in)));
    let taken = wait_for(tracker, deadline, Duration::from_millis(50), |s| {
        s.created.len() >= n
    })
    .await;
    let taken_in = taken
        .then(|| {
            lock(tracker)
                .created
                .values()
                .max()
                .map(|t| after(*t, start_at))
        })
        .flatten();
    progress(&format!(
        "A: {} of {n} records written{}",
        lock(tracker).created.len(),
        taken_in.map_or_else(
            || " (time limit)".to_owned(),
            |t| format!(" in {}", secs(t))
        )
    ));
    // The router also publishes each contact's ladder steps and marks them
    // announced: wait for that too, so the next phase starts on a quiet router.
    let announced = wait_for(tracker, deadline, Duration::from_millis(50), |s| {
        s.records.len() >= n
            && s.records.values().all(|r| {
                r.escalation
                    .as_ref()
                    .is_some_and(|e| e.announced >= e.steps)
            })
    })
    .await;
    let announced_in = announced
        .then(|| lock(tracker).last_written.map(|t| after(t, start_at)))
        .flatten();
    let cpu = cpu.report();
    let mut latency = hist();
    let created = {
        let s = lock(tracker);
        let sent = lock(&sent);
        for (id, at) in &s.created {
            if let Some(t0) = sent.get(id) {
                let _ = latency.record(after(*at, *t0).as_micros() as u64);
            }
        }
        s.created.len()
    };
    wait_quiet(
        tracker,
        Duration::from_secs(1),
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    Ok(Opened {
        latency,
        created,
        published_in,
        taken_in,
        announced_in,
        cpu,
    })
}

async fn everyone_available(
    line: &Line,
    tracker: &Tracker,
    n: usize,
    limit: Duration,
    idle_window: Duration,
) -> anyhow::Result<Offered> {
    let offers_before = line.metric("nwd_offers_total", "outcome=\"offered\"").await;
    let cpu = line.cpu();
    let start_at = OffsetDateTime::now_utc();
    let start = Instant::now();
    let deadline = start + limit;
    set_presence(&line.presence, &line.staff, Presence::Available).await?;
    progress(&format!(
        "B: {} staff available (presence written in {})",
        line.staff.len(),
        secs(start.elapsed())
    ));
    // Priority offers (ADR 0017): each counsellor's free seats go to the most
    // urgent contacts they may take, so with more contacts than seats only
    // the top of the queue holds offers. The phase ends when the offers
    // settle: every contact offered, or no record written for a second.
    let mut next_note = Instant::now() + Duration::from_secs(5);
    let first = wait_for(tracker, deadline, Duration::from_millis(50), |s| {
        let offered = s.count(|r| matches!(r.state, ContactState::Offered { .. }));
        if Instant::now() >= next_note {
            next_note = Instant::now() + Duration::from_secs(5);
            progress(&format!("B: {offered} of {n} hold offers"));
        }
        offered > 0
    })
    .await;
    let all = first
        && wait_for(tracker, deadline, Duration::from_millis(50), |s| {
            s.count(|r| matches!(r.state, ContactState::Offered { .. })) >= n
                || s.last_read
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        })
        .await;
    let all_offered_in = all
        .then(|| {
            lock(tracker)
                .first_offered
                .values()
                .max()
                .map(|t| after(*t, start_at))
        })
        .flatten();
    let cpu_offers = cpu.report();
    progress(&format!(
        "B: offers settled: {}",
        all_offered_in.map_or_else(|| "no (time limit)".to_owned(), secs)
    ));
    // Offers keep widening (the language wait ends, later sweeps): until quiet.
    let quiet = wait_quiet(tracker, Duration::from_secs(2), deadline).await;
    let quiet_in = quiet
        .then(|| lock(tracker).last_written.map(|t| after(t, start_at)))
        .flatten();
    let offers_metric =
        line.metric("nwd_offers_total", "outcome=\"offered\"").await - offers_before;
    // Nothing changes now: what the router's sweeps cost on their own.
    let writes_before = lock(tracker).last_written;
    let idle = line.cpu();
    tokio::time::sleep(idle_window).await;
    let idle_cpu = idle.report();
    let idle_writes = lock(tracker).last_written != writes_before;
    let s = lock(tracker);
    let mut per_contact = hist();
    for t in s.first_offered.values() {
        let _ = per_contact.record(after(*t, start_at).as_micros() as u64);
    }
    Ok(Offered {
        all_offered_in,
        offered: s.count(|r| matches!(r.state, ContactState::Offered { .. })),
        per_contact,
        quiet_in,
        offer_pairs: s.offer_pairs(),
        offers_metric,
        cpu: cpu_offers,
        idle_window,
        idle_cpu,
        idle_writes,
    })
}

/// Who accepts what: contacts in queue order, each to the next counsellor
/// (round robin) who holds its offer and has room, up to capacity.
fn plan_accepts(
    records: &[ContactRecord],
    staff: &[CounsellorId],
    capacity: &HashMap<CounsellorId, u32>,
) -> Vec<(CounsellorId, Vec<ContactId>)> {
    let mut room: Vec<u32> = staff
        .iter()
        .map(|s| capacity.get(s).copied().unwrap_or(0))
        .collect();
    let mut plan: Vec<Vec<ContactId>> = vec![Vec::new(); staff.len()];
    let mut next = 0usize;
    for rec in floor::queue(records) {
        let to: HashSet<&CounsellorId> = floor::offered_to(rec).iter().collect();
        for k in 0..staff.len() {
            let j = (next + k) % staff.len();
            let fits =
                room.get(j).is_some_and(|r| *r > 0) && staff.get(j).is_some_and(|s| to.contains(s));
            if fits {
                if let (Some(r), Some(p)) = (room.get_mut(j), plan.get_mut(j)) {
                    *r -= 1;
                    p.push(rec.id);
                }
                next = j + 1;
                break;
            }
        }
    }
    staff
        .iter()
        .cloned()
        .zip(plan)
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

enum Answer {
    Done,
    Refused(String),
    Failed,
}

async fn accepts_and_settle(
    line: &Line,
    tracker: &Tracker,
    n: usize,
    ids: &[ContactId],
    limit: Duration,
) -> anyhow::Result<Accepted> {
    let withdrawn_before = line
        .metric("nwd_offers_total", "outcome=\"withdrawn\"")
        .await;
    let conflicts_before = line.metric("nwd_kv_cas_conflicts_total", "").await;
    let snapshot: Vec<ContactRecord> = lock(tracker).records.values().cloned().collect();
    let plan = plan_accepts(&snapshot, &line.staff, &line.capacity);
    let planned: usize = plan.iter().map(|(_, p)| p.len()).sum();
    progress(&format!(
        "C: {} staff accept {planned} contacts (up to capacity), all at once",
        plan.len()
    ));
    let writes_at_start = lock(tracker).withdrawal_writes;
    let cpu = line.cpu();
    let start_at = OffsetDateTime::now_utc();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut tasks = tokio::task::JoinSet::new();
    for (who, contacts) in plan {
        let client = line.client.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for id in contacts {
                let cmd = Envelope::new(RouterCommand::Accept {
                    contact_id: id,
                    counsellor: who.clone(),
                });
                let t = Instant::now();
                let reply = tokio::time::timeout_at(
                    deadline,
                    client.request(subjects::router_command(), cmd.to_bytes().into()),
                )
                .await;
                let rtt = t.elapsed();
                let answer = match reply {
                    Ok(Ok(msg)) => match Envelope::<RouterReply>::from_bytes(&msg.payload) {
                        Ok(env) => match env.data {
                            RouterReply::Done => Answer::Done,
                            RouterReply::Refused { reason } => Answer::Refused(reason),
                        },
                        Err(_) => Answer::Failed,
                    },
                    Ok(Err(_)) | Err(_) => Answer::Failed,
                };
                out.push((id, who.clone(), answer, rtt, Instant::now()));
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            out
        });
    }
    // Stale offers (held by counsellors at capacity), sampled while accepting.
    let mut stale_peak = 0;
    let mut results = Vec::new();
    let mut next_note = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(r) => results.extend(r?),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let stale = lock(tracker).stale_offers(&line.capacity);
                stale_peak = stale_peak.max(stale);
                if Instant::now() >= next_note {
                    next_note = Instant::now() + Duration::from_secs(5);
                    progress(&format!("C: accepting; {stale} stale offers"));
                }
            }
        }
    }
    let accepts_in = results
        .iter()
        .map(|r| r.4.duration_since(start))
        .max()
        .unwrap_or_default();
    let cpu_accepts = cpu.report();
    let mut rtt = hist();
    let mut done = 0;
    let mut failed = 0;
    let mut refused: HashMap<String, usize> = HashMap::new();
    let mut won: HashMap<ContactId, Vec<CounsellorId>> = HashMap::new();
    for (id, who, answer, t, _) in &results {
        match answer {
            Answer::Done => {
                done += 1;
                let _ = rtt.record(t.as_micros() as u64);
                won.entry(*id).or_default().push(who.clone());
            }
            Answer::Refused(reason) => *refused.entry(reason.clone()).or_default() += 1,
            Answer::Failed => failed += 1,
        }
    }
    progress(&format!(
        "C: {done} accepted, {} refused, {failed} failed in {}",
        refused.values().sum::<usize>(),
        secs(accepts_in)
    ));

    // D: the router withdraws every offer held by someone at capacity.
    let (stale_at_accepts_end, writes_at_accepts_end) = {
        let s = lock(tracker);
        (s.stale_offers(&line.capacity), s.withdrawal_writes)
    };
    stale_peak = stale_peak.max(stale_at_accepts_end);
    let cpu = line.cpu();
    let settle_start_at = OffsetDateTime::now_utc();
    let settle_start = Instant::now();
    // Meanwhile a counsellor frees a place (resolves one conversation): how
    // long until they are offered one of the contacts still waiting?
    let probe = results
        .iter()
        .find(|r| matches!(r.2, Answer::Done))
        .map(|r| (r.0, r.1.clone()));
    let mut probe_rtt = None;
    if let Some((contact, who)) = &probe {
        {
            let mut s = lock(tracker);
            s.probe = Some(who.clone());
            s.probe_offered = None;
        }
        let cmd = Envelope::new(RouterCommand::Resolve {
            contact_id: *contact,
            counsellor: who.clone(),
            disposition: None,
            note: None,
        });
        let reply = line
            .client
            .request(subjects::router_command(), cmd.to_bytes().into())
            .await;
        let done = reply.ok().is_some_and(|m| {
            Envelope::<RouterReply>::from_bytes(&m.payload)
                .is_ok_and(|e| matches!(e.data, RouterReply::Done))
        });
        if done {
            probe_rtt = Some(settle_start.elapsed());
        }
        progress(&format!(
            "D: {who} resolved a conversation (done: {done}) and has room for one more"
        ));
    }
    let mut next_note = Instant::now() + Duration::from_secs(10);
    let settled = wait_for(
        tracker,
        settle_start + limit,
        Duration::from_millis(250),
        |s| {
            let stale = s.stale_offers(&line.capacity);
            if Instant::now() >= next_note {
                next_note = Instant::now() + Duration::from_secs(10);
                progress(&format!("D: {stale} stale offers left"));
            }
            stale == 0
        },
    )
    .await;
    // The last withdrawal, by the server's clock.
    let (last_withdrawal, writes_at_end) = {
        let s = lock(tracker);
        (s.last_withdrawal, s.withdrawal_writes)
    };
    let settled_in = settled
        .then(|| last_withdrawal.map(|t| after(t, start_at)))
        .flatten();
    let settle_took = match (settled, last_withdrawal) {
        (true, Some(t)) => after(t, settle_start_at),
        _ => settle_start.elapsed(),
    };
    let probe_offered = if probe_rtt.is_some() {
        wait_for(
            tracker,
            settle_start + limit,
            Duration::from_millis(100),
            |s| s.probe_offered.is_some(),
        )
        .await;
        lock(tracker)
            .probe_offered
            .map(|t| after(t, settle_start_at))
    } else {
        None
    };
    progress(&format!(
        "D: the counsellor who freed a place was offered a contact: {}",
        probe_offered.map_or_else(|| format!("not within {}", secs(limit)), secs)
    ));
    let cpu_settle = cpu.report();
    let stale_left = lock(tracker).stale_offers(&line.capacity);
    progress(&format!(
        "D: {}",
        settled_in.map_or_else(
            || format!(
                "did not finish in {}: {stale_left} stale offers left",
                secs(limit)
            ),
            |t| format!("no stale offer left, {} after the first accept", secs(t))
        )
    ));
    let withdrawn_metric = line
        .metric("nwd_offers_total", "outcome=\"withdrawn\"")
        .await
        - withdrawn_before;
    let cas_conflicts = line.metric("nwd_kv_cas_conflicts_total", "").await - conflicts_before;

    // Invariants, on the records as stored and the events on the stream.
    let resolved = probe_rtt.and(probe.as_ref().map(|p| p.0));
    let (violations, states) = check(line, n, ids, &won, resolved).await?;
    Ok(Accepted {
        planned,
        done,
        refused,
        failed,
        rtt,
        accepts_in,
        cpu_accepts,
        stale_peak,
        stale_at_accepts_end,
        stale_left,
        settled_in,
        writes_during_accepts: writes_at_accepts_end.saturating_sub(writes_at_start),
        writes_after_accepts: writes_at_end.saturating_sub(writes_at_accepts_end),
        probe_rtt,
        probe_offered,
        settle_took,
        cpu_settle,
        withdrawn_metric,
        cas_conflicts,
        violations,
        states,
    })
}

/// No contact with two assignees (records, replies, `ContactAssigned` events);
/// nobody over capacity; every contact assigned, offered or waiting.
async fn check(
    line: &Line,
    n: usize,
    ids: &[ContactId],
    won: &HashMap<ContactId, Vec<CounsellorId>>,
    resolved: Option<ContactId>,
) -> anyhow::Result<(Vec<String>, HashMap<&'static str, usize>)> {
    let mut v = Vec::new();
    let mut reads = futures::stream::iter(ids.iter().map(|id| {
        let store = line.contacts.clone();
        async move {
            nwd_runtime::kv::get::<ContactRecord>(&store, &id.to_string())
                .await
                .map(|r| (*id, r.value))
        }
    }))
    .buffer_unordered(32);
    let mut records = HashMap::new();
    while let Some(r) = reads.next().await {
        let (id, rec) = r?;
        match rec {
            Some(rec) => {
                records.insert(id, rec);
            }
            None => v.push(format!("contact {id} has no record")),
        }
    }
    if records.len() != n {
        v.push(format!("{} records for {n} contacts", records.len()));
    }
    let mut states: HashMap<&'static str, usize> = HashMap::new();
    for rec in records.values() {
        *states.entry(rec.state.name()).or_default() += 1;
        if matches!(rec.state, ContactState::Resolved { .. }) && Some(rec.id) != resolved {
            v.push(format!(
                "contact {} is resolved; nobody resolved it",
                rec.id
            ));
        }
    }
    for (who, n) in floor::load(records.values()) {
        let cap = line.capacity.get(&who).copied().unwrap_or(0);
        if n > cap {
            v.push(format!("{who} holds {n} contacts, capacity {cap}"));
        }
    }
    for (id, winners) in won {
        if winners.len() > 1 {
            v.push(format!("contact {id}: accept done for {winners:?}"));
        }
        let holder = records.get(id).and_then(|r| match &r.state {
            ContactState::Assigned { counsellor, .. } => Some(counsellor),
            ContactState::Resolved { by, .. } if Some(*id) == resolved => Some(by),
            _ => None,
        });
        if winners.first() != holder {
            v.push(format!(
                "contact {id}: accept done for {winners:?} but the record says {holder:?}"
            ));
        }
    }
    let assigned_subject = subjects::contact_assigned(&ContactId::new());
    let all_assigned = match assigned_subject.rsplit_once('.') {
        Some((prefix, _)) => format!("{prefix}.*"),
        None => assigned_subject,
    };
    let events =
        nwd_runtime::transcript::read_subjects(&line.js, streams::CONTACTS, vec![all_assigned])
            .await?;
    let mut assignees: HashMap<ContactId, HashSet<CounsellorId>> = HashMap::new();
    for m in &events {
        if let Ok(env) = Envelope::<ContactAssigned>::from_bytes(&m.payload) {
            assignees
                .entry(env.data.contact_id)
                .or_default()
                .insert(env.data.counsellor);
        }
    }
    for (id, who) in &assignees {
        if who.len() > 1 {
            v.push(format!("contact {id}: ContactAssigned to {who:?}"));
        }
    }
    let assigned = records
        .values()
        .filter(|r| r.assigned_to().is_some() || Some(r.id) == resolved)
        .count();
    if assignees.len() != assigned {
        v.push(format!(
            "{assigned} records assigned but ContactAssigned for {} contacts",
            assignees.len()
        ));
    }
    Ok((v, states))
}

// ---------------------------------------------------------------------------
// Report

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.1} µs")
    }
}

/// A ratio to the raw hop, with the digits that matter.
fn ratio(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.3}×")
    } else if x < 10.0 {
        format!("{x:.2}×")
    } else {
        format!("{x:.0}×")
    }
}

fn or_not(d: Option<Duration>, limit: Duration) -> String {
    d.map_or_else(|| format!("did not finish in {}", secs(limit)), secs)
}

/// The in-process rows of the table, with their ratio to the raw hop p50 if measured.
fn print_in_process(inproc: &InProcess, n: usize, m: usize, raw: Option<f64>) {
    let vs = |v: f64| raw.map_or_else(|| "–".to_owned(), |r| ratio(v / r));
    let row = |what: &str, v: f64| {
        println!("| in process: {what} | {} | {} |", us(v), vs(v));
    };
    row(
        &format!(
            "build the floor from the board ({n} open contacts, {m} staff), as `Router::floor()`"
        ),
        inproc.floor_us,
    );
    row(
        &format!("the queue in serving order ({n})"),
        inproc.queue_us,
    );
    row(
        "`remember` one changed record (board + depth gauge)",
        inproc.remember_us,
    );
    row(
        "`fire` on a new contact, everyone away (climbs to the backup line)",
        inproc.fire_away_us,
    );
    row(
        "`fire` on a new contact, everyone available",
        inproc.fire_free_us,
    );
    row(
        "`widen` on a waiting contact, everyone available",
        inproc.widen_us,
    );
    let per = inproc.per_decision_us(n);
    println!(
        "| in process: **offer decision** as a sweep makes it ({n} in queue order, one floor; `widen` on the cache, record decoded, `widen`, offer, encoded, `remember`) | {} per decision, **{:.0} decisions/s** on one core ({} offers) | {} |",
        us(per),
        1e6 / per.max(1e-3),
        inproc.pass_offers,
        vs(per)
    );
    let push_us = inproc.pushes.as_secs_f64() * 1e6;
    row(
        &format!(
            "encode the offer pushes of one decision ({:.0} per contact; {} per push)",
            inproc.pass_offers as f64 / n.max(1) as f64,
            us(push_us / inproc.pass_offers.max(1) as f64)
        ),
        push_us / n.max(1) as f64,
    );
    row(
        &format!(
            "stale-offer scan of one sweep, everyone at capacity ({} stale offers)",
            inproc.stale_pairs
        ),
        inproc.stale_scan_us,
    );
    row(
        &format!(
            "a sweep with nothing to do ({n} contacts each offered to all {m}, nobody at capacity: stale scan + `widen` on every cached contact)"
        ),
        inproc.idle_sweep_us,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.waiting = 200;
        args.counsellors = 40;
        args.phase_timeout = 15;
    }
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-queue")?;
    let (n, m) = (args.waiting, args.counsellors);
    let limit = Duration::from_secs(args.phase_timeout);
    let dir = Arc::new(directory(m)?);
    let supervisors = dir
        .staff
        .iter()
        .filter(|s| s.role == Role::Supervisor)
        .count();
    let spanish = dir
        .staff
        .iter()
        .filter(|s| s.languages.contains(&Language::Es))
        .count();
    println!(
        "nwd-bench-queue: {n} contacts waiting, {m} staff ({supervisors} supervisors, {spanish} speak es, capacity {CAPACITY}); nwd-router from {} against nats-server (file storage, sync_interval: always), sweep every {} ms",
        bin_dir.display(),
        args.sweep_ms
    );
    println!(
        "service logs and the generated directory: {}",
        log_dir.display()
    );

    progress("in process: the router's decisions on one core");
    let inproc = in_process(&dir, n)?;

    if args.in_process_only {
        println!();
        println!("| figure | value | vs raw hop p50 |");
        println!("|---|---|---|");
        print_in_process(&inproc, n, m, None);
        return Ok(());
    }
    progress("starting nats-server and nwd-router");
    let line = start_line(&dir, &bin_dir, &log_dir, args.sweep_ms).await?;
    progress("raw JetStream: hop at 200/s for 2 s, KV update");
    let raw = raw(&line, args.smoke).await?;
    let tracker = track(&line.contacts).await?;

    progress(&format!("A: {n} new contacts, {m} staff away"));
    let opened = open_contacts(&line, &tracker, n, limit).await?;
    let ids: Vec<ContactId> = lock(&tracker).records.keys().copied().collect();

    progress(&format!("B: {m} staff available at once"));
    let idle_window = Duration::from_secs(if args.smoke { 2 } else { 5 });
    let offered = everyone_available(&line, &tracker, n, limit, idle_window).await?;

    let accepted = accepts_and_settle(&line, &tracker, n, &ids, limit).await?;
    let router_rss = nwd_bench::rss_kib(&line.router_pid.to_string()).unwrap_or(0);

    // ------------------------------------------------------------------ print
    let r = raw.p50();
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    println!();
    println!("| figure | value | vs raw hop p50 |");
    println!("|---|---|---|");
    println!(
        "| raw JetStream hop (publish + ack → pull consumer → ack), 200/s for 2 s: p50 / p99 | {} / {} | 1.0× |",
        ms(q(&raw.hop, 0.5)),
        ms(q(&raw.hop, 0.99))
    );
    println!(
        "| raw JetStream publish + ack p50 | {} | {} |",
        ms(q(&raw.ack, 0.5)),
        ratio(q(&raw.ack, 0.5) as f64 / r)
    );
    println!(
        "| raw KV update (one key, sequential, {}×): p50 / p99 | {} / {} | {} |",
        raw.kv.len(),
        ms(q(&raw.kv, 0.5)),
        ms(q(&raw.kv, 0.99)),
        ratio(q(&raw.kv, 0.5) as f64 / r)
    );
    print_in_process(&inproc, n, m, Some(r));
    println!(
        "| router A: triaged → record written, {n} published at once: p50 / p99 | {} / {} | {} |",
        ms(q(&opened.latency, 0.5)),
        ms(q(&opened.latency, 0.99)),
        ratio(q(&opened.latency, 0.5) as f64 / r)
    );
    match opened.taken_in {
        Some(t) => println!(
            "| router A: new contacts taken (published in {}; CPU {}) | {n} in {} = **{:.0}/s**, {} per contact | {} |",
            secs(opened.published_in),
            opened.cpu,
            secs(t),
            n as f64 / t.as_secs_f64().max(1e-3),
            ms((t.as_micros() as u64) / n.max(1) as u64),
            ratio(t.as_secs_f64() * 1e6 / n.max(1) as f64 / r)
        ),
        None => println!(
            "| router A: new contacts taken | did not finish in {}: {} of {n} records written | – |",
            secs(limit),
            opened.created
        ),
    }
    println!(
        "| router A: every step announced | {} | – |",
        or_not(opened.announced_in, limit)
    );
    // Contacts that held an offer at some point in the phase.
    let decided = offered.per_contact.len().max(1);
    match offered.all_offered_in {
        Some(t) => println!(
            "| router B: {m} staff available at once → offers settle (priority offers: {} of {n} contacts offered; CPU {}) | {} = **{:.0} decisions/s**, {} per decision; first offer {}, half {} | {} |",
            offered.per_contact.len(),
            offered.cpu,
            secs(t),
            decided as f64 / t.as_secs_f64().max(1e-3),
            ms((t.as_micros() as u64) / decided as u64),
            ms(q(&offered.per_contact, 0.0)),
            ms(q(&offered.per_contact, 0.5)),
            ratio(t.as_secs_f64() * 1e6 / decided as f64 / r)
        ),
        None => println!(
            "| router B: {m} staff available at once → offers settle | did not settle in {}: {} of {n} offered | – |",
            secs(limit),
            offered.offered
        ),
    }
    println!(
        "| router B: offers made (offer lists in the records / router's `nwd_offers_total` offered) | {} / {:.0} ({:.0} per contact); quiet after {} | – |",
        offered.offer_pairs,
        offered.offers_metric,
        offered.offer_pairs as f64 / n.max(1) as f64,
        or_not(offered.quiet_in, limit)
    );
    println!(
        "| router B, then idle for {}: {n} contacts waiting, the top of the queue offered, nothing changing{} | CPU {} | – |",
        secs(offered.idle_window),
        if offered.idle_writes {
            " (some records were still written)"
        } else {
            ""
        },
        offered.idle_cpu
    );
    let a = &accepted;
    let refused: usize = a.refused.values().sum();
    println!(
        "| router C: accept round trip, {} accepts by all staff at once: p50 / p99 | {} / {} | {} |",
        a.planned,
        ms(q(&a.rtt, 0.5)),
        ms(q(&a.rtt, 0.99)),
        ratio(q(&a.rtt, 0.5) as f64 / r)
    );
    println!(
        "| router C: accepts (done / refused / failed; CPU {}) | {} / {refused} / {} in {} = **{:.0}/s**, {} per accept | {} |",
        a.cpu_accepts,
        a.done,
        a.failed,
        secs(a.accepts_in),
        a.done as f64 / a.accepts_in.as_secs_f64().max(1e-3),
        ms((a.accepts_in.as_micros() as u64) / a.done.max(1) as u64),
        ratio(a.accepts_in.as_secs_f64() * 1e6 / a.done.max(1) as f64 / r)
    );
    let withdrawn = a.stale_at_accepts_end.saturating_sub(a.stale_left);
    let took = a.settle_took.as_secs_f64().max(1e-3);
    let writes = a.writes_after_accepts;
    let per_write = took * 1e6 / writes.max(1) as f64;
    let settle_value = match a.settled_in {
        Some(t) => format!(
            "none left {} after the first accept: the {} left when the accepts ended (peak {}) withdrawn in {} by {writes} writes = **{:.0} offers/s**, {} per write ({} withdrawal writes during the accepts)",
            secs(t),
            a.stale_at_accepts_end,
            a.stale_peak,
            secs(a.settle_took),
            withdrawn as f64 / took,
            ms(per_write as u64),
            a.writes_during_accepts,
        ),
        None => format!(
            "**did not finish in {}** after the accepts: {} of {} withdrawn by {writes} writes ({:.0} offers/s, {} per write), {} left (peak {}); at that rate ~{:.0} s more",
            secs(a.settle_took),
            withdrawn,
            a.stale_at_accepts_end,
            withdrawn as f64 / took,
            ms(per_write as u64),
            a.stale_left,
            a.stale_peak,
            a.stale_left as f64 / (withdrawn.max(1) as f64 / took),
        ),
    };
    println!(
        "| router D: offers held by staff at capacity, withdrawn by the sweep (CPU {}; `withdrawn` counter, taken + expired: +{:.0}; CAS conflicts +{:.0}) | {settle_value} | {} |",
        a.cpu_settle,
        a.withdrawn_metric,
        a.cas_conflicts,
        ratio(per_write / r)
    );
    if let Some(rtt) = a.probe_rtt {
        let value = match a.probe_offered {
            Some(t) => format!(
                "resolve answered in {}; first new offer to them **{} after the accepts ended**",
                ms(rtt.as_micros() as u64),
                secs(t)
            ),
            None => format!(
                "resolve answered in {}; **no new offer to them within {}**",
                ms(rtt.as_micros() as u64),
                secs(limit)
            ),
        };
        println!(
            "| router D: a counsellor resolves a conversation as the accepts end (a place frees up while {} contacts wait) | {value} | {} |",
            a.states.get("waiting").copied().unwrap_or(0)
                + a.states.get("offered").copied().unwrap_or(0),
            a.probe_offered
                .map_or_else(|| "–".to_owned(), |t| ratio(t.as_secs_f64() * 1e6 / r)),
        );
    }
    let mut states: Vec<String> = a.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    states.sort();
    println!(
        "| invariants (one assignee per contact in records, replies and ContactAssigned; nobody over capacity; every contact assigned/offered/waiting) | {} ({}) | – |",
        if a.violations.is_empty() {
            "hold".to_owned()
        } else {
            format!("**{} violated**", a.violations.len())
        },
        states.join(", ")
    );
    println!(
        "| router resident memory at the end | {:.1} MiB | – |",
        router_rss as f64 / 1024.0
    );
    println!(
        "| this bench's watch of the contacts bucket: longest lag behind a write (times above are the server's write times) | {} | – |",
        secs(lock(&tracker).max_lag)
    );
    for v in a.violations.iter().take(20) {
        println!("!! {v}");
    }
    for (reason, k) in &a.refused {
        println!("!! accept refused {k}×: {reason}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_as_described() {
        let n = 1_000;
        let count = |l: RiskLevel| (0..n).filter(|i| risk_of(*i) == l).count();
        assert_eq!(count(RiskLevel::Imminent), 20);
        assert_eq!(count(RiskLevel::High), 180);
        assert_eq!(count(RiskLevel::Moderate), 400);
        assert_eq!(count(RiskLevel::Low), 400);
    }

    #[test]
    fn the_generated_directory_validates_and_reads_back() {
        let dir = directory(200).unwrap();
        assert_eq!(dir.staff.len(), 200);
        let sup = dir
            .staff
            .iter()
            .filter(|s| s.role == Role::Supervisor)
            .count();
        assert_eq!(sup, 10);
        let es = dir
            .staff
            .iter()
            .filter(|s| s.languages.contains(&Language::Es))
            .count();
        assert!((55..=65).contains(&es), "{es}");
        let text = toml::to_string(&dir).unwrap();
        let back: Directory = toml::from_str(&text).unwrap();
        assert_eq!(back, dir);
    }

    #[test]
    fn accepts_are_disjoint_and_within_capacity() {
        let dir = directory(10).unwrap();
        let doors = doors(&dir).unwrap();
        let staff: Vec<CounsellorId> = dir.staff.iter().map(|s| s.id.clone()).collect();
        let capacity: HashMap<CounsellorId, u32> = dir
            .staff
            .iter()
            .map(|s| (s.id.clone(), s.capacity))
            .collect();
        let records: Vec<ContactRecord> = (0..50)
            .map(|i| {
                let mut r =
                    ContactRecord::open(&triaged(i, &doors, OffsetDateTime::now_utc()).unwrap());
                r.offer(&staff[..(i % 10) + 1]).unwrap();
                r
            })
            .collect();
        let plan = plan_accepts(&records, &staff, &capacity);
        let mut seen = HashSet::new();
        for (who, contacts) in &plan {
            assert!(contacts.len() as u32 <= capacity[who]);
            for c in contacts {
                assert!(seen.insert(*c), "disjoint");
                let rec = records.iter().find(|r| r.id == *c).unwrap();
                assert!(floor::offered_to(rec).contains(who));
            }
        }
        assert_eq!(seen.len(), 30, "10 staff × capacity 3");
    }
}
