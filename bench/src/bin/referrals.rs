//! `nwd-bench-referrals`: signed partner referral POST → 202, and the drain
//! of a burst into outreach contacts (issue 14).
//!
//! Starts a real nats-server and the real gateway, intake and router
//! binaries (each as its own NATS user) with the demo directory, then posts
//! the emergency department's FHIR referral, signed with Standard Webhooks
//! as the demo hospital, with a fresh `webhook-id` and a distinct patient
//! phone each time (a second referral for a person with an open contact
//! would join it, not open one):
//! - **steady**: at a fixed rate (open loop) for a number of seconds;
//! - **burst**: N referrals posted at once (a prison's release list).
//!
//! Every referral must be answered 202, stored once on INBOUND and become an
//! outreach contact record in the `contacts` bucket (intake opens it, the
//! router writes the record and fires its first ladder step in the same
//! write, so the escalator is not on this path). The burst's **drain** is
//! the time from its first POST until the operator, watching the bucket,
//! has seen every one of its contacts. Each latency is printed next to the
//! raw JetStream publish + ack measured in the same run at the same rate or
//! burst, as a ratio; the drain next to the raw burst's publishes.
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use nwd_bench::{Procs, free_addr, hist, ms, progress, raw_hop, secs};
use nwd_proto::streams::buckets;
use nwd_proto::{PartnerId, wire};

/// The demo hospital (deploy/local/demo/directory.toml) and its first
/// referral secret.
const PARTNER: &str = "county-hospital";
const SECRET: &str = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=";
const REFERRAL: &str =
    include_str!("../../../crates/fhir/tests/fixtures/valid-sr-ed-overdose-stat.json");
/// The patient's phone in [`REFERRAL`], replaced by a distinct one per referral.
const FIXTURE_PHONE: &str = "+15550100142";
/// The services a referral passes through on its way to a contact record.
const SERVICES: [&str; 3] = ["gateway", "intake", "router"];
/// How long the outreach contacts of a run may take to appear.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
struct Args {
    /// Referrals per second in the steady run.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Referrals posted at once in the burst.
    #[arg(long, default_value_t = 1000)]
    burst: u32,
    /// A short bounded run for CI: 20/s for 2 s and a burst of 50.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Poster {
    http: reqwest::Client,
    url: String,
    webhook: standardwebhooks::Webhook,
}

impl Poster {
    /// Posts the referral for `phone` under `id`; returns the latency (µs)
    /// of a 202.
    async fn post(&self, id: &str, phone: &str) -> anyhow::Result<u64> {
        let body = REFERRAL.replace(FIXTURE_PHONE, phone);
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.webhook.sign(id, ts, body.as_bytes())?;
        let start = Instant::now();
        let res = self
            .http
            .post(&self.url)
            .header("content-type", "application/fhir+json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await?;
        let took = start.elapsed().as_micros() as u64;
        if res.status().as_u16() != 202 {
            bail!("referral {id}: {}", res.status());
        }
        Ok(took)
    }
}

/// Runs `posts` and collects their latencies; counts what was not a 202.
async fn collect(
    posts: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
) -> (Histogram<u64>, u64) {
    let mut h = hist();
    let mut failed = 0;
    for p in posts {
        match p.await {
            Ok(Ok(us)) => {
                let _ = h.record(us);
            }
            Ok(Err(e)) => {
                failed += 1;
                progress(&format!("not accepted: {e}"));
            }
            Err(_) => failed += 1,
        }
    }
    (h, failed)
}

/// Raw JetStream publish + ack of `n` messages sent at once, in µs.
async fn raw_burst(nats_url: &str, n: u32) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let client =
        nwd_runtime::bus::connect(&nwd_runtime::bus::NatsArgs::local(nats_url), "bench").await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "BENCHBURST".into(),
        subjects: vec!["bench.burst".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from_static(REFERRAL.as_bytes());
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (js, payload) = (js.clone(), payload.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                js.publish("bench.burst", payload).await?.await?;
                Ok::<_, anyhow::Error>(start.elapsed().as_micros() as u64)
            })
        })
        .collect();
    let (h, failed) = collect(tasks).await;
    if failed > 0 {
        bail!("{failed} raw publishes failed");
    }
    Ok((h, started.elapsed()))
}

/// Messages stored on INBOUND (only referrals are posted in this run).
async fn stored(nats_url: &str) -> anyhow::Result<u64> {
    let client =
        nwd_runtime::bus::connect(&nwd_runtime::bus::NatsArgs::local(nats_url), "bench").await?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(nwd_proto::streams::INBOUND)
        .await
        .context("INBOUND")?;
    Ok(stream.info().await?.state.messages)
}

/// One referral of the run: its `webhook-id`, the patient's phone (distinct
/// per referral: +1 555 3xx xxxx steady, 4xx xxxx burst) and the key of its
/// outreach contact in the `contacts` bucket.
struct Referral {
    webhook_id: String,
    phone: String,
    contact_key: String,
}

fn referrals(partner: &PartnerId, run: &str, phones_from: u64, n: u64) -> Vec<Referral> {
    (0..n)
        .map(|i| {
            let webhook_id = format!("msg_{run}_{i}");
            let referral_id = wire::referral_id(partner, &webhook_id);
            Referral {
                contact_key: wire::key::contact(&wire::outreach_contact(&referral_id)),
                phone: format!("+1555{:07}", phones_from + i),
                webhook_id,
            }
        })
        .collect()
}

/// How many of a run's outreach contacts appeared, and when the last did.
struct Drain {
    expected: usize,
    seen: usize,
    /// When the last contact was seen (`None` unless all were).
    done_at: Option<Instant>,
}

/// Starts watching the `contacts` bucket, as the operator, for the records
/// under `keys` (new writes only: call before the referrals are posted).
/// The task ends when all are seen or after `within`. Should the
/// watch end early, it falls back to reading the missing keys.
async fn watch_contacts(
    nats_url: &str,
    keys: HashSet<String>,
    within: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<Drain>> {
    let client =
        nwd_runtime::bus::connect(&nwd_runtime::bus::NatsArgs::local(nats_url), "bench").await?;
    let contacts = nwd_runtime::bus::bucket(&jetstream::new(client), buckets::CONTACTS)
        .await
        .context("contacts bucket")?;
    let mut watch = contacts.watch_all().await.context("watch contacts")?;
    Ok(tokio::spawn(async move {
        let expected = keys.len();
        let mut pending = keys;
        let deadline = tokio::time::Instant::now() + within;
        let mut done_at = None;
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    if pending.remove(&entry.key) && pending.is_empty() {
                        done_at = Some(Instant::now());
                    }
                }
                Ok(Some(Err(e))) => {
                    progress(&format!("contacts watch failed ({e}); reading the keys"));
                    break;
                }
                Ok(None) => {
                    progress("contacts watch ended; reading the keys");
                    break;
                }
                Err(_) => break,
            }
        }
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            let mut found = Vec::new();
            for key in &pending {
                if matches!(contacts.get(key.as_str()).await, Ok(Some(_))) {
                    found.push(key.clone());
                }
            }
            for key in found {
                pending.remove(&key);
            }
            if pending.is_empty() {
                done_at = Some(Instant::now());
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Drain {
            expected,
            seen: expected - pending.len(),
            done_at,
        }
    }))
}

fn row(name: &str, h: &Histogram<u64>, raw: &Histogram<u64>) {
    let ratio = |q: f64| {
        let r = raw.value_at_quantile(q).max(1);
        h.value_at_quantile(q) as f64 / r as f64
    };
    println!(
        "| {name} | {} | {} | {} | {} | {:.1}× | {:.1}× |",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        format_args!(
            "{} / {}",
            ms(raw.value_at_quantile(0.5)),
            ms(raw.value_at_quantile(0.99))
        ),
        ratio(0.5),
        ratio(0.99),
    );
}

fn keys(referrals: &[Referral]) -> HashSet<String> {
    referrals.iter().map(|r| r.contact_key.clone()).collect()
}

/// Posts every referral at once; returns the latencies of the 202s and how
/// many were not accepted.
async fn post_all(poster: &Arc<Poster>, referrals: &[Referral]) -> (Histogram<u64>, u64) {
    let posts: Vec<_> = referrals
        .iter()
        .map(|r| {
            let (poster, id, phone) = (poster.clone(), r.webhook_id.clone(), r.phone.clone());
            tokio::spawn(async move { poster.post(&id, &phone).await })
        })
        .collect();
    collect(posts).await
}

fn drain_row(
    name: &str,
    drain: &Drain,
    started: Instant,
    raw: &Histogram<u64>,
    raw_wall: Duration,
) {
    let (took, rate, ratio) = match drain.done_at {
        Some(done) => {
            let took = done.duration_since(started);
            (
                secs(took),
                format!("{:.0}", drain.expected as f64 / took.as_secs_f64()),
                format!("{:.1}×", took.as_secs_f64() / raw_wall.as_secs_f64()),
            )
        }
        None => (
            format!("not drained in {}", secs(DRAIN_TIMEOUT)),
            "—".into(),
            "—".into(),
        ),
    };
    println!(
        "| {name} | {} | {} | {took} | {rate} | {} | {} | {ratio} |",
        drain.expected,
        drain.seen,
        ms(raw.value_at_quantile(0.5)),
        secs(raw_wall),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.rate, args.seconds, args.burst) = (20, 2, 50);
    }
    let total = u64::from(args.rate) * args.seconds;
    if total >= 1_000_000 || args.burst >= 1_000_000 {
        bail!("at most 999,999 referrals per run (one phone number each)");
    }
    if !REFERRAL.contains(FIXTURE_PHONE) {
        bail!("the referral fixture no longer holds the phone {FIXTURE_PHONE}");
    }
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-referrals")?;
    let nats = nwd_testkit::NatsServer::start().await;
    nats.set_up_bus().await;
    let addrs: HashMap<&str, SocketAddr> = SERVICES
        .into_iter()
        .map(|n| Ok((n, free_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    let gateway = addrs["gateway"];
    let root = nwd_testkit::workspace_root();
    let env: Vec<(String, String)> = vec![
        (
            "NWD_LOG".into(),
            std::env::var("NWD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        (
            "NWD_DIRECTORY".into(),
            root.join("deploy/local/demo/directory.toml")
                .display()
                .to_string(),
        ),
        ("NWD_GATEWAY_ADDR".into(), gateway.to_string()),
        ("NWD_GATEWAY_PUBLIC_URL".into(), format!("http://{gateway}")),
        (
            "NWD_GATEWAY_SPOOL_DIR".into(),
            log_dir.join("spool").display().to_string(),
        ),
        (
            "NWD_TWILIO_AUTH_TOKEN".into(),
            "bench000000000000000000000000tok".into(),
        ),
        (
            "NWD_INTAKE_METRICS_ADDR".into(),
            addrs["intake"].to_string(),
        ),
        (
            "NWD_ROUTER_METRICS_ADDR".into(),
            addrs["router"].to_string(),
        ),
        (
            "NWD_PSEUDONYM_KEY".into(),
            "bench-pseudonym-key-0123456789abcdef0123".into(),
        ),
    ];
    let mut procs = Procs::default();
    for name in SERVICES {
        // Each service as its own NATS user.
        let mut env = env.clone();
        env.push(("NWD_NATS_URL".into(), nats.url_for(name)));
        procs.spawn(&bin_dir, name, &env, &log_dir)?;
    }
    nwd_bench::wait_ready(addrs.iter().map(|(n, a)| (*n, *a))).await?;
    let poster = Arc::new(Poster {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .build()?,
        url: format!("http://{gateway}/v1/referrals"),
        webhook: standardwebhooks::Webhook::new(SECRET)?,
    });
    let run_id = time::OffsetDateTime::now_utc().unix_timestamp();
    let partner = PartnerId::parse(PARTNER)?;
    let steady_referrals = referrals(&partner, &format!("steady_{run_id}"), 3_000_000, total);
    let burst_referrals = referrals(
        &partner,
        &format!("burst_{run_id}"),
        4_000_000,
        u64::from(args.burst),
    );

    progress(&format!(
        "steady: {}/s for {} s (logs in {})",
        args.rate,
        args.seconds,
        log_dir.display()
    ));
    // Its contacts may come in until the raw run after it is over.
    let steady_watch = watch_contacts(
        &nats.url(),
        keys(&steady_referrals),
        Duration::from_secs(2 * args.seconds) + DRAIN_TIMEOUT,
    )
    .await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = Vec::new();
    for r in &steady_referrals {
        tick.tick().await;
        let (poster, id, phone) = (poster.clone(), r.webhook_id.clone(), r.phone.clone());
        posts.push(tokio::spawn(async move { poster.post(&id, &phone).await }));
    }
    let (steady, steady_failed) = collect(posts).await;
    progress("raw JetStream at the same rate");
    let (_, raw_steady) = raw_hop(&nats.url(), args.rate, args.seconds, 1).await?;
    // The burst starts on an idle line: every steady contact is in.
    let steady_drain = steady_watch.await?;
    progress(&format!(
        "steady: {} of {} outreach contacts",
        steady_drain.seen, steady_drain.expected
    ));

    progress(&format!("burst: {} referrals at once", args.burst));
    let burst_watch = watch_contacts(&nats.url(), keys(&burst_referrals), DRAIN_TIMEOUT).await?;
    let started = Instant::now();
    let (burst, burst_failed) = post_all(&poster, &burst_referrals).await;
    let burst_wall = started.elapsed();
    progress("burst: draining into outreach contacts");
    let burst_drain = burst_watch.await?;
    progress("raw JetStream burst");
    let (raw_burst_hist, raw_burst_wall) = raw_burst(&nats.url(), args.burst).await?;

    let stored = stored(&nats.url()).await?;
    println!();
    println!(
        "### Partner referrals: signed POST → 202 ({})",
        if cfg!(debug_assertions) {
            "debug build: figures not comparable"
        } else {
            "release build"
        }
    );
    println!();
    println!("| run | referrals | p50 | p99 | raw publish+ack p50 / p99 | ratio p50 | ratio p99 |");
    println!("|---|---|---|---|---|---|---|");
    row(
        &format!("steady {}/s × {} s", args.rate, args.seconds),
        &steady,
        &raw_steady,
    );
    row(&format!("burst of {}", args.burst), &burst, &raw_burst_hist);
    println!();
    println!(
        "Burst drain: from its first POST until the operator has seen every referral's outreach contact in `contacts`; raw: the same number of publishes sent at once, until all are acked."
    );
    println!();
    println!(
        "| run | referrals | contacts | drain | referrals/s | raw publish+ack p50 | raw burst all acked | drain / raw burst |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    drain_row(
        &format!("burst of {} → outreach contacts", args.burst),
        &burst_drain,
        started,
        &raw_burst_hist,
        raw_burst_wall,
    );
    println!();
    println!(
        "burst: all answered in {} (raw publishes: {}); not accepted: {} steady, {} burst; stored on INBOUND: {stored} of {}; outreach contacts: {} of {} steady, {} of {} burst",
        secs(burst_wall),
        secs(raw_burst_wall),
        steady_failed,
        burst_failed,
        total + u64::from(args.burst),
        steady_drain.seen,
        steady_drain.expected,
        burst_drain.seen,
        burst_drain.expected,
    );
    if steady_failed + burst_failed > 0 || stored != total + u64::from(args.burst) {
        bail!("referrals lost or refused");
    }
    if steady_drain.seen < steady_drain.expected || burst_drain.seen < burst_drain.expected {
        bail!("referrals without an outreach contact");
    }
    Ok(())
}
