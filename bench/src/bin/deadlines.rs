//! `nwd-bench-deadlines`: durable deadlines of the escalation ladder, two ways,
//! against a real nats-server (JetStream, file storage, `sync_interval:
//! always`, as `deploy/nats/nats.conf`). See ADR 0006.
//!
//! - **A, our own index**: the deadline lives in the contact's KV record. An
//!   escalator watches the bucket (`watch_with_history`: the last value of
//!   every key, then every change) into an `nwd_timers::DeadlineIndex`; a
//!   sweeper pops what is due and fires it with a compare-and-swap on the
//!   record (token check, `fired = true`).
//! - **B, NATS 2.12 message schedules**: the contact record (KV) plus one
//!   schedule message per contact on `sched.<key>` (`Nats-Schedule: @at
//!   <RFC3339>`, `Nats-Schedule-Target: fired.<key>`) in a stream with
//!   `allow_msg_schedules`; the server publishes to `fired.<key>` when due, a
//!   pull consumer receives it and fires with the same compare-and-swap.
//!
//! For each, on its own fresh server: L live deadlines (default 10,000),
//! armed at an even pace and each due a fixed 20 s (+ up to 1 s) after it
//! was armed, so they fire at the pace they were armed (500/s by default),
//! with their lateness (observed time − due time) when *detected* (A: popped
//! from the index; B: message received) and when *fired* (the CAS acked).
//! Then the restart test with N more (default 100,000): A stops its
//! escalator, arms them, lets them fall due and starts a fresh escalator that
//! rebuilds its index from the bucket; B arms them due at one time after
//! arming, kills nats-server (SIGKILL) before then and starts it again when
//! all are overdue. Measured: the time until all have fired, and resident
//! memory with the N pending (A: this process once the fresh index is built;
//! B: nats-server before and after the schedules are stored). The raw
//! JetStream publish round trip is measured on the same server, so every
//! figure is also given as a ratio to it. Progress goes to stderr, figures to
//! stdout (markdown).
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use nwd_bench::{hist, lock, ms, progress, rss_kib, secs};
use nwd_timers::{DeadlineIndex, sleep_until_due};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Parser, Debug)]
struct Args {
    /// Deadlines pending in the restart test (all overdue when the escalator
    /// or the server comes back); memory is read with all of them pending.
    #[arg(long, default_value_t = 100_000)]
    deadlines: u64,
    /// Deadlines fired live before that, while the escalator runs.
    #[arg(long, default_value_t = 10_000)]
    live: u64,
    /// When the live deadlines fall due, in seconds after the first is
    /// armed: `from,to`. They are armed at an even pace over `to − from`
    /// seconds, each due `from` seconds (plus up to 1 s) after it was armed,
    /// so they fire at the pace they were armed, after it.
    #[arg(long, value_delimiter = ',', default_value = "20,40")]
    window: Vec<f64>,
    /// In-flight writes while arming and firing.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Run only one approach: `a` or `b`.
    #[arg(long)]
    only: Option<String>,
    /// A short bounded run for CI: 5,000 deadlines in the restart test, 1,000
    /// live (due 3–6 s after the first was armed).
    #[arg(long)]
    smoke: bool,
}

/// What the contact record carries for the ladder (plus padding to the size of
/// a small real record).
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Record {
    /// The pending step's token (the fencing token of the deadline).
    token: u64,
    /// A: the pending step's due time (in the record). B: unused (the
    /// schedule message carries it).
    #[serde(with = "time::serde::rfc3339::option")]
    due: Option<OffsetDateTime>,
    fired: bool,
    pad: String,
}

const PAD: usize = 320;

fn record(token: u64, due: Option<OffsetDateTime>, fired: bool) -> anyhow::Result<Bytes> {
    Ok(serde_json::to_vec(&Record {
        token,
        due,
        fired,
        pad: "x".repeat(PAD),
    })?
    .into())
}

fn micros(d: time::Duration) -> u64 {
    d.whole_microseconds().clamp(1, i128::from(u64::MAX)) as u64
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rfc3339(t: OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.format(&Rfc3339)?)
}

fn server_rss(server: &nwd_testkit::NatsServer) -> anyhow::Result<u64> {
    rss_kib(&server.pid().context("nats-server not running")?.to_string())
}

/// When deadlines fall due. Live deadlines (keys `l<i>`) are due
/// `live_offset(i)` after the moment each is armed (uniform over the window,
/// scrambled), so each is pending at least `from` seconds however slow the
/// disk is that day. Restart-test deadlines (keys `r<i>`) are spread over
/// [`RESTART_SPREAD`] after a given time.
struct Plan {
    live: u64,
    rest: u64,
    from: f64,
    to: f64,
}

const RESTART_SPREAD: f64 = 2.0;

impl Plan {
    fn new(args: &Args) -> Self {
        Self {
            live: args.live,
            rest: args.deadlines,
            from: args.window[0],
            to: args.window[1],
        }
    }

    /// How long after it is armed live deadline `i` is due.
    fn live_offset(&self, i: u64) -> time::Duration {
        time::Duration::seconds_f64(self.from + scrambled(i, self.live))
    }

    /// The pace of arming live deadlines (and so of firing them).
    fn live_period(&self) -> Duration {
        Duration::from_secs_f64((self.to - self.from).max(0.001) / self.live.max(1) as f64)
    }

    fn rest_offset(&self, i: u64) -> time::Duration {
        time::Duration::seconds_f64(scrambled(i, self.rest) * RESTART_SPREAD)
    }

    /// How long to wait for the live deadlines to fire.
    fn live_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.to + 120.0)
    }
}

/// `i` of `n` mapped to [0, 1] through a fixed permutation (a multiplicative
/// stride coprime with `n`): arming order is not due order.
fn scrambled(i: u64, n: u64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let mut stride = 7_919 % n;
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    ((i * stride) % n) as f64 / (n - 1) as f64
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// ---------------------------------------------------------------------------
// Measurements

/// What one phase observed.
struct Sink {
    expected: u64,
    /// Only keys with this prefix count (the phase's deadlines).
    prefix: &'static str,
    started: Instant,
    inner: Mutex<SinkInner>,
    done: Notify,
}

struct SinkInner {
    detect: Histogram<u64>,
    fire: Histogram<u64>,
    won: u64,
    lost: u64,
    redelivered: u64,
    seen: HashSet<(String, u64)>,
    last_detect: Option<Instant>,
    last_fire: Option<Instant>,
}

impl Sink {
    fn new(expected: u64, prefix: &'static str) -> Arc<Self> {
        Arc::new(Self {
            expected,
            prefix,
            started: Instant::now(),
            inner: Mutex::new(SinkInner {
                detect: hist(),
                fire: hist(),
                won: 0,
                lost: 0,
                redelivered: 0,
                seen: HashSet::new(),
                last_detect: None,
                last_fire: None,
            }),
            done: Notify::new(),
        })
    }

    /// The deadline `(key, token)` due at `due` was detected now.
    fn detected(&self, key: &str, token: u64, due: OffsetDateTime) {
        if !key.starts_with(self.prefix) {
            return;
        }
        let late = OffsetDateTime::now_utc() - due;
        let mut s = lock(&self.inner);
        if s.seen.insert((key.to_owned(), token)) {
            let _ = s.detect.record(micros(late));
            s.last_detect = Some(Instant::now());
        } else {
            s.redelivered += 1;
        }
    }

    /// The compare-and-swap of `(key, token)` won (the step fired) or lost.
    fn fired(&self, key: &str, won: bool, due: OffsetDateTime) {
        if !key.starts_with(self.prefix) {
            return;
        }
        let late = OffsetDateTime::now_utc() - due;
        let mut s = lock(&self.inner);
        if won {
            let _ = s.fire.record(micros(late));
            s.won += 1;
            s.last_fire = Some(Instant::now());
            if s.won >= self.expected {
                self.done.notify_one();
            }
        } else {
            s.lost += 1;
        }
    }

    async fn wait(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.done.notified();
            if lock(&self.inner).won >= self.expected {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.inner).won >= self.expected;
            }
        }
    }

    fn report(&self) -> Report {
        let s = lock(&self.inner);
        Report {
            won: s.won,
            lost: s.lost,
            redelivered: s.redelivered,
            detect: s.detect.clone(),
            fire: s.fire.clone(),
            all_fired_after: s.last_fire.map(|t| t.duration_since(self.started)),
            all_detected_after: s.last_detect.map(|t| t.duration_since(self.started)),
        }
    }
}

struct Report {
    won: u64,
    lost: u64,
    redelivered: u64,
    detect: Histogram<u64>,
    fire: Histogram<u64>,
    all_fired_after: Option<Duration>,
    all_detected_after: Option<Duration>,
}

/// The firing: compare-and-swap on the record, only if it still waits for
/// this token. Returns whether this call fired it.
async fn fire(store: &kv::Store, key: &str, token: u64) -> anyhow::Result<bool> {
    for _ in 0..200 {
        let Some(entry) = store.entry(key).await? else {
            return Ok(false);
        };
        let mut rec: Record = serde_json::from_slice(&entry.value)?;
        if rec.token != token || rec.fired {
            return Ok(false);
        }
        rec.fired = true;
        match store
            .update(key, serde_json::to_vec(&rec)?.into(), entry.revision)
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    bail!("could not fire {key}")
}

/// Raw JetStream publish round trip (publish → ack) on a scratch file stream:
/// `n` sequential publishes, p50 and p99 in µs.
async fn raw_publish(js: &jetstream::Context, n: u64) -> anyhow::Result<(u64, u64)> {
    js.create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let mut h = hist();
    for i in 0..n {
        let start = Instant::now();
        js.publish("raw", Bytes::from(i.to_string())).await?.await?;
        let _ = h.record(start.elapsed().as_micros() as u64);
    }
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

/// Runs `op(i)` for `0..n`, one every `period` (open loop: on schedule whether
/// or not earlier ones finished), at most `concurrency` in flight; returns the
/// time taken.
async fn arm_paced<F, Fut>(
    n: u64,
    period: Duration,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Duration>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        let fut = op(i);
        tasks.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

/// Runs `op(i)` for `0..n` with `concurrency` in flight; returns the time taken.
async fn arm<F, Fut>(n: u64, concurrency: usize, op: F) -> anyhow::Result<Duration>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut results = futures::stream::iter((0..n).map(op)).buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------
// A: our own index over the contacts bucket

struct Escalator {
    tasks: Vec<JoinHandle<()>>,
    index: Arc<Mutex<DeadlineIndex>>,
    /// When the watcher had replayed the whole bucket.
    caught_up: Arc<Mutex<Option<Instant>>>,
    /// The sweeper starts when this is notified.
    go: Arc<Notify>,
}

impl Escalator {
    /// Starts the watcher; the sweeper waits for [`Self::sweep`].
    async fn start(store: kv::Store, sink: Arc<Sink>, concurrency: usize) -> anyhow::Result<Self> {
        let go = Arc::new(Notify::new());
        let index = Arc::new(Mutex::new(DeadlineIndex::new()));
        let wake = Arc::new(Notify::new());
        let caught_up = Arc::new(Mutex::new(None));
        let mut watch = store.watch_with_history(">").await?;
        let (w_index, w_wake, w_caught) = (index.clone(), wake.clone(), caught_up.clone());
        let watcher = tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let live = match entry.operation {
                    kv::Operation::Put => serde_json::from_slice::<Record>(&entry.value)
                        .ok()
                        .filter(|r| !r.fired)
                        .and_then(|r| r.due.map(|due| (due, r.token))),
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                {
                    let mut ix = lock(&w_index);
                    match live {
                        Some((due, token)) => {
                            let earlier = ix.next_due().is_none_or(|next| due < next);
                            ix.set(&entry.key, due, token);
                            if earlier {
                                w_wake.notify_one();
                            }
                        }
                        None => ix.cancel(&entry.key),
                    }
                }
                if entry.delta == 0 {
                    let mut c = lock(&w_caught);
                    if c.is_none() {
                        *c = Some(Instant::now());
                    }
                }
            }
        });
        let (s_index, s_wake) = (index.clone(), wake.clone());
        let s_go = go.clone();
        let sweeper = tokio::spawn(async move {
            s_go.notified().await;
            let permits = Arc::new(Semaphore::new(concurrency));
            // Dropped (so aborted) with the sweeper: a crash stops in-flight fires too.
            let mut inflight = JoinSet::new();
            loop {
                sleep_until_due(&s_index, &s_wake, Duration::from_secs(1)).await;
                let due = lock(&s_index).pop_due(OffsetDateTime::now_utc(), 4096);
                for d in &due {
                    sink.detected(&d.key, d.token, d.due);
                }
                for d in due {
                    while inflight.try_join_next().is_some() {}
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let (store, sink, index, wake) =
                        (store.clone(), sink.clone(), s_index.clone(), s_wake.clone());
                    inflight.spawn(async move {
                        match fire(&store, &d.key, d.token).await {
                            Ok(won) => sink.fired(&d.key, won, d.due),
                            // Put it back: the sweeper retries it.
                            Err(_) => {
                                let retry = OffsetDateTime::now_utc() + time::Duration::SECOND;
                                lock(&index).set(&d.key, retry, d.token);
                                wake.notify_one();
                            }
                        }
                        drop(permit);
                    });
                }
            }
        });
        Ok(Self {
            tasks: vec![watcher, sweeper],
            index,
            caught_up,
            go,
        })
    }

    fn sweep(&self) {
        self.go.notify_one();
    }

    /// What a crash looks like: the tasks stop, memory is gone.
    fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Figures {
    name: &'static str,
    armed: u64,
    arm_took: Duration,
    raw_p50: u64,
    raw_p99: u64,
    live: Report,
    restart: Report,
    restart_ready: Duration,
    rss_note: String,
    rss_kib: u64,
    notes: Vec<String>,
}

/// A fresh nats-server for one approach: its raw publish + ack (p50, p99)
/// measured first, and the file-backed bucket of contact records.
async fn fresh_server(
    args: &Args,
    bucket: &str,
) -> anyhow::Result<(
    nwd_testkit::NatsServer,
    jetstream::Context,
    (u64, u64),
    kv::Store,
)> {
    let server = nwd_testkit::NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let raw = raw_publish(&js, if args.smoke { 300 } else { 2_000 }).await?;
    let store = js
        .create_key_value(kv::Config {
            bucket: bucket.into(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    Ok((server, js, raw, store))
}

async fn approach_a(args: &Args) -> anyhow::Result<Figures> {
    let (server, _js, (raw_p50, raw_p99), store) = fresh_server(args, "DEADLINES").await?;
    let server_rss_empty = server_rss(&server)?;
    let plan = Arc::new(Plan::new(args));

    // Live: deadlines armed while an escalator runs, each a field of the
    // contact record (one write).
    progress(&format!("A: arming {} live deadlines", plan.live));
    let sink = Sink::new(plan.live, "l");
    let esc = Escalator::start(store.clone(), sink.clone(), args.concurrency).await?;
    esc.sweep();
    let live_took = arm_paced(plan.live, plan.live_period(), args.concurrency, |i| {
        let (store, plan) = (store.clone(), plan.clone());
        async move {
            let due = OffsetDateTime::now_utc() + plan.live_offset(i);
            store
                .put(format!("l{i}"), record(1, Some(due), false)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    if !sink.wait(plan.live_timeout()).await {
        println!("!! A: not every live deadline fired");
    }
    let live = sink.report();
    progress(&format!("A: {} live deadlines fired", live.won));

    // Restart: the escalator is down while the rest are armed and fall due;
    // a fresh one rebuilds its index from the bucket and fires them.
    esc.stop();
    progress(&format!(
        "A: escalator stopped; arming {} deadlines",
        plan.rest
    ));
    let rest_took = arm(plan.rest, args.concurrency, |i| {
        let (store, plan) = (store.clone(), plan.clone());
        async move {
            let due = OffsetDateTime::now_utc() + plan.rest_offset(i);
            store
                .put(format!("r{i}"), record(1, Some(due), false)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs_f64(RESTART_SPREAD + 1.0)).await;
    let server_rss_kib = server_rss(&server)?;
    progress("A: starting a fresh escalator, every deadline overdue");
    let rss_before = rss_kib("self")?;
    let sink2 = Sink::new(plan.rest, "r");
    // Its sweeper starts once the index is rebuilt (after the memory is
    // read); the service's sweeper would start at once, which can only be
    // sooner.
    let esc2 = Escalator::start(store.clone(), sink2.clone(), args.concurrency).await?;
    let t = Instant::now();
    while lock(&esc2.caught_up).is_none() && t.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_with_index = rss_kib("self")?;
    let in_index = lock(&esc2.index).len();
    esc2.sweep();
    if !sink2.wait(Duration::from_secs(900)).await {
        println!("!! A: not every overdue deadline fired after the restart");
    }
    let restart = sink2.report();
    let restart_ready = lock(&esc2.caught_up)
        .map(|t| t.duration_since(sink2.started))
        .unwrap_or_default();
    esc2.stop();

    Ok(Figures {
        name: "A: KV record + own index",
        armed: plan.rest,
        arm_took: rest_took,
        raw_p50,
        raw_p99,
        live,
        restart,
        restart_ready,
        rss_note: format!(
            "bench process {} with the fresh escalator's index rebuilt ({in_index} deadlines), {} before it started",
            mib(rss_with_index),
            mib(rss_before)
        ),
        rss_kib: rss_with_index.saturating_sub(rss_before),
        notes: vec![
            format!(
                "one durable write per deadline (the contact CAS); {} live deadlines armed over {} while the escalator ran",
                plan.live,
                secs(live_took)
            ),
            format!(
                "nats-server {} with the bucket ({} with the empty bucket): the records themselves, not an extra cost of A",
                mib(server_rss_kib),
                mib(server_rss_empty)
            ),
        ],
    })
}

// ---------------------------------------------------------------------------
// B: NATS 2.12 message schedules

fn schedule_headers(key: &str, token: u64, due: OffsetDateTime) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert("Nats-Schedule", format!("@at {}", rfc3339(due)?).as_str());
    h.insert("Nats-Schedule-Target", format!("fired.{key}").as_str());
    h.insert("Nats-Msg-Id", format!("{key}:{token}").as_str());
    Ok(h)
}

/// Arms `(key, token, due)`: the contact record (KV) and the schedule message.
async fn arm_b(
    js: &jetstream::Context,
    store: &kv::Store,
    key: String,
    token: u64,
    due: OffsetDateTime,
) -> anyhow::Result<()> {
    let (r, s) = tokio::join!(
        arm_b_record(store, &key, token),
        arm_b_schedule(js, &key, token, due)
    );
    r?;
    s
}

async fn arm_b_record(store: &kv::Store, key: &str, token: u64) -> anyhow::Result<()> {
    store.put(key, record(token, None, false)?).await?;
    Ok(())
}

async fn arm_b_schedule(
    js: &jetstream::Context,
    key: &str,
    token: u64,
    due: OffsetDateTime,
) -> anyhow::Result<()> {
    let payload = format!("{key} {token} {}", due.unix_timestamp_nanos());
    js.publish_with_headers(
        format!("sched.{key}"),
        schedule_headers(key, token, due)?,
        payload.into(),
    )
    .await?
    .await?;
    Ok(())
}

/// The escalator's consumer of fired schedules.
async fn consume_b(
    js: jetstream::Context,
    store: kv::Store,
    sink: Arc<Sink>,
    concurrency: usize,
) -> anyhow::Result<JoinHandle<()>> {
    let stream = js.get_stream("SCHED").await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "escalator",
            consumer::pull::Config {
                durable_name: Some("escalator".into()),
                filter_subject: "fired.>".into(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1_000)
        .messages()
        .await?;
    Ok(tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(concurrency));
        while let Some(Ok(msg)) = messages.next().await {
            let text = String::from_utf8_lossy(&msg.payload).into_owned();
            let mut parts = text.split(' ');
            let (Some(key), Some(token), Some(due)) = (
                parts.next().map(str::to_owned),
                parts.next().and_then(|t| t.parse::<u64>().ok()),
                parts
                    .next()
                    .and_then(|d| d.parse::<i128>().ok())
                    .and_then(|d| OffsetDateTime::from_unix_timestamp_nanos(d).ok()),
            ) else {
                let _ = msg.ack().await;
                continue;
            };
            sink.detected(&key, token, due);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (store, sink) = (store.clone(), sink.clone());
            tokio::spawn(async move {
                match fire(&store, &key, token).await {
                    Ok(won) => {
                        sink.fired(&key, won, due);
                        let _ = msg.ack().await;
                    }
                    Err(_) => {
                        let _ = msg
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
                drop(permit);
            });
        }
    }))
}

async fn approach_b(args: &Args) -> anyhow::Result<Figures> {
    let (mut server, js, (raw_p50, raw_p99), store) = fresh_server(args, "CONTACTS_B").await?;
    // async-nats 0.51 exposes `allow_msg_schedules` (feature server_2_12).
    js.create_stream(stream::Config {
        name: "SCHED".into(),
        subjects: vec!["sched.>".into(), "fired.>".into()],
        storage: stream::StorageType::File,
        allow_message_schedules: true,
        ..Default::default()
    })
    .await?;
    let mut sched = js.get_stream("SCHED").await?;
    let rss_empty = server_rss(&server)?;
    let plan = Arc::new(Plan::new(args));

    // Live: the contact record and a schedule message per deadline (two
    // writes, in two streams, at once), armed while the consumer runs.
    progress(&format!("B: arming {} live deadlines", plan.live));
    let sink = Sink::new(plan.live, "l");
    let consumer = consume_b(js.clone(), store.clone(), sink.clone(), args.concurrency).await?;
    let live_took = arm_paced(plan.live, plan.live_period(), args.concurrency, |i| {
        let (js, store, plan) = (js.clone(), store.clone(), plan.clone());
        async move {
            let due = OffsetDateTime::now_utc() + plan.live_offset(i);
            arm_b(&js, &store, format!("l.{i}"), 1, due).await
        }
    })
    .await?;
    if !sink.wait(plan.live_timeout()).await {
        println!("!! B: not every live deadline fired");
    }
    let live = sink.report();
    progress(&format!("B: {} live deadlines fired", live.won));
    consumer.abort();

    // Restart test: the records, then the schedules (in two passes so the
    // server's memory for the schedules alone can be read), all due at one
    // time after arming ends; the server is killed before that and started
    // again when all are overdue. The due time comes from the rate the
    // records pass just measured; if the schedules pass is slower still, they
    // are purged and armed again for a later time.
    progress(&format!("B: arming {} deadlines", plan.rest));
    let records_took = arm(plan.rest, args.concurrency, |i| {
        let store = store.clone();
        async move { arm_b_record(&store, &format!("r.{i}"), 1).await }
    })
    .await?;
    let rss_records = server_rss(&server)?;
    let mut per_write = records_took.as_secs_f64() / plan.rest.max(1) as f64;
    let mut attempts = 0;
    let (schedules_took, due_at) = loop {
        attempts += 1;
        let lead = plan.rest as f64 * per_write * 1.5 * f64::from(attempts) + 2.0;
        let due_at = OffsetDateTime::now_utc() + time::Duration::seconds_f64(lead);
        let took =
            arm(plan.rest, args.concurrency, |i| {
                let (js, plan) = (js.clone(), plan.clone());
                async move {
                    arm_b_schedule(&js, &format!("r.{i}"), 1, due_at + plan.rest_offset(i)).await
                }
            })
            .await?;
        if OffsetDateTime::now_utc() + time::Duration::milliseconds(500) < due_at || attempts == 4 {
            break (took, due_at);
        }
        progress("B: arming was slower than the lead; purging and arming again");
        per_write = took.as_secs_f64() / plan.rest.max(1) as f64;
        sched.purge().filter("sched.r.>").await?;
        sched.purge().filter("fired.r.>").await?;
    };
    let rss_pending = server_rss(&server)?;
    let pending = sched.info().await?.state.messages;
    server.kill();
    let killed_in_time = OffsetDateTime::now_utc() < due_at;
    let overdue = due_at + time::Duration::seconds_f64(RESTART_SPREAD + 1.0);
    tokio::time::sleep(Duration::from_secs_f64(
        (overdue - OffsetDateTime::now_utc())
            .as_seconds_f64()
            .max(0.0),
    ))
    .await;
    progress("B: restarting nats-server, every deadline overdue");
    let sink2 = Sink::new(plan.rest, "r");
    server.restart().await;
    let restart_ready = sink2.started.elapsed();
    let js2 = jetstream::new(server.client().await);
    let store2 = js2.get_key_value("CONTACTS_B").await?;
    let consumer2 = consume_b(js2.clone(), store2, sink2.clone(), args.concurrency).await?;
    if !sink2.wait(Duration::from_secs(900)).await {
        println!("!! B: not every overdue deadline fired after the restart");
    }
    let restart = sink2.report();
    let rss_after = server_rss(&server)?;
    consumer2.abort();

    Ok(Figures {
        name: "B: NATS message schedules",
        armed: plan.rest,
        arm_took: records_took + schedules_took,
        raw_p50,
        raw_p99,
        live,
        restart,
        restart_ready,
        rss_note: format!(
            "nats-server {} with {pending} messages in the schedule stream, {} with the contact records only, {} with empty streams",
            mib(rss_pending),
            mib(rss_records),
            mib(rss_empty),
        ),
        rss_kib: rss_pending.saturating_sub(rss_records),
        notes: vec![
            format!(
                "two durable writes per deadline (contact record + schedule); records armed in {}, schedules in {} (attempt {attempts}); {} live deadlines armed over {} while the consumer ran",
                secs(records_took),
                secs(schedules_took),
                plan.live,
                secs(live_took)
            ),
            format!(
                "nats-server {} after the restart test: every fired message stays in the stream unless a retention policy or Nats-Schedule-TTL removes it",
                mib(rss_after)
            ),
            format!("server killed before the first restart-test deadline: {killed_in_time}"),
        ],
    })
}

fn print(f: &Figures) {
    let raw = f.raw_p50.max(1) as f64;
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    println!("### {}", f.name);
    println!(
        "- armed {} deadlines in {} ({:.0}/s)",
        f.armed,
        secs(f.arm_took),
        f.armed as f64 / f.arm_took.as_secs_f64().max(1e-3),
    );
    for note in &f.notes {
        println!("- {note}");
    }
    println!(
        "- raw JetStream publish round trip: p50 {} p99 {}",
        ms(f.raw_p50),
        ms(f.raw_p99)
    );
    let r = &f.live;
    println!(
        "- live: fired {} (CAS refused as stale {}, delivered twice {}); detect lateness p50 {} p99 {} max {}; fire lateness p50 {} ({:.1}× raw) p99 {} ({:.1}× raw) max {}",
        r.won,
        r.lost,
        r.redelivered,
        ms(q(&r.detect, 0.5)),
        ms(q(&r.detect, 0.99)),
        ms(r.detect.max()),
        ms(q(&r.fire, 0.5)),
        q(&r.fire, 0.5) as f64 / raw,
        ms(q(&r.fire, 0.99)),
        q(&r.fire, 0.99) as f64 / raw,
        ms(r.fire.max()),
    );
    let r = &f.restart;
    let took = r
        .all_fired_after
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    println!(
        "- restart: ready (index rebuilt / server answering) after {}; all {} overdue detected after {}, fired after {} ({:.0}/s; CAS refused as stale {}, delivered twice {})",
        secs(f.restart_ready),
        r.won,
        r.all_detected_after
            .map_or_else(|| "never".to_owned(), secs),
        f.restart_all_fired(),
        r.won as f64 / took,
        r.lost,
        r.redelivered,
    );
    println!(
        "- memory: {}; the pending deadlines cost {} ({:.0} B each)",
        f.rss_note,
        mib(f.rss_kib),
        f.rss_kib as f64 * 1024.0 / f.armed.max(1) as f64,
    );
    println!();
}

impl Figures {
    fn restart_all_fired(&self) -> String {
        self.restart
            .all_fired_after
            .map_or_else(|| "never".to_owned(), secs)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.deadlines = 5_000;
        args.live = 1_000;
        args.window = vec![3.0, 6.0];
    }
    if args.window.len() != 2 || args.window[0] < 0.0 || args.window[1] < args.window[0] {
        bail!("--window wants from,to with 0 <= from <= to");
    }
    if let Some(only) = args.only.as_deref()
        && only != "a"
        && only != "b"
    {
        bail!("--only wants a or b");
    }
    println!(
        "nwd-bench-deadlines: per approach {} deadlines fired live, falling due over {}–{} s after the first was armed (armed at the pace they fire), then {} overdue at a restart; nats-server with file storage, sync_interval: always",
        args.live, args.window[0], args.window[1], args.deadlines,
    );
    println!();
    let mut all = Vec::new();
    if args.only.as_deref() != Some("b") {
        let f = approach_a(&args).await?;
        print(&f);
        all.push(f);
    }
    if args.only.as_deref() != Some("a") {
        let f = approach_b(&args).await?;
        print(&f);
        all.push(f);
    }
    println!(
        "| approach | pending | live fire lateness p50 | p99 | max | detect p50 | p99 | restart: all overdue fired | memory for the pending deadlines | raw publish p50 | fire p50 / raw | fire p99 / raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let raw = f.raw_p50.max(1) as f64;
        let (p50, p99) = (
            f.live.fire.value_at_quantile(0.5),
            f.live.fire.value_at_quantile(0.99),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            f.name,
            f.armed,
            ms(p50),
            ms(p99),
            ms(f.live.fire.max()),
            ms(f.live.detect.value_at_quantile(0.5)),
            ms(f.live.detect.value_at_quantile(0.99)),
            f.restart_all_fired(),
            mib(f.rss_kib),
            ms(f.raw_p50),
            p50 as f64 / raw,
            p99 as f64 / raw,
        );
    }
    Ok(())
}
