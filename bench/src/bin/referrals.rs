//! `nwd-bench-referrals`: signed partner referral POST → 202 (issue 14).
//!
//! Starts a real nats-server and the real gateway binary with the demo
//! directory, then posts the emergency department's FHIR referral, signed
//! with Standard Webhooks as the demo hospital, with a fresh `webhook-id`
//! each time:
//! - **steady**: at a fixed rate (open loop) for a number of seconds;
//! - **burst**: N referrals posted at once (a prison's release list).
//!
//! Every referral must be answered 202 and stored once on INBOUND. Each
//! latency is printed next to the raw JetStream publish + ack measured in the
//! same run at the same rate or burst, as a ratio. The drain into outreach
//! contacts is intake's (issue 14's outreach part) and is not measured here.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use clap::Parser;
use hdrhistogram::Histogram;
use nwd_bench::{Procs, free_addr, hist, ms, progress, raw_hop, secs};

/// The demo hospital's first referral secret (deploy/local/demo/directory.toml).
const SECRET: &str = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=";
const REFERRAL: &[u8] =
    include_bytes!("../../../crates/fhir/tests/fixtures/valid-sr-ed-overdose-stat.json");

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
    /// Posts the referral under `id`; returns the latency (µs) of a 202.
    async fn post(&self, id: &str) -> anyhow::Result<u64> {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = self.webhook.sign(id, ts, REFERRAL)?;
        let start = Instant::now();
        let res = self
            .http
            .post(&self.url)
            .header("content-type", "application/fhir+json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(REFERRAL)
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
    let payload = bytes::Bytes::from_static(REFERRAL);
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.rate, args.seconds, args.burst) = (20, 2, 50);
    }
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-referrals")?;
    let nats = nwd_testkit::NatsServer::start().await;
    nats.set_up_bus().await;
    let gateway = free_addr()?;
    let root = nwd_testkit::workspace_root();
    let env: Vec<(String, String)> = vec![
        (
            "NWD_LOG".into(),
            std::env::var("NWD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        ("NWD_NATS_URL".into(), nats.url_for("gateway")),
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
    ];
    let mut procs = Procs::default();
    procs.spawn(&bin_dir, "gateway", &env, &log_dir)?;
    nwd_bench::wait_ready([("gateway", gateway)]).await?;
    let poster = Arc::new(Poster {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .build()?,
        url: format!("http://{gateway}/v1/referrals"),
        webhook: standardwebhooks::Webhook::new(SECRET)?,
    });
    let run_id = time::OffsetDateTime::now_utc().unix_timestamp();

    progress(&format!(
        "steady: {}/s for {} s (logs in {})",
        args.rate,
        args.seconds,
        log_dir.display()
    ));
    let total = u64::from(args.rate) * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let poster = poster.clone();
        posts.push(tokio::spawn(async move {
            poster.post(&format!("msg_steady_{run_id}_{i}")).await
        }));
    }
    let (steady, steady_failed) = collect(posts).await;
    progress("raw JetStream at the same rate");
    let (_, raw_steady) = raw_hop(&nats.url(), args.rate, args.seconds, 1).await?;

    progress(&format!("burst: {} referrals at once", args.burst));
    let started = Instant::now();
    let posts: Vec<_> = (0..args.burst)
        .map(|i| {
            let poster = poster.clone();
            tokio::spawn(async move { poster.post(&format!("msg_burst_{run_id}_{i}")).await })
        })
        .collect();
    let (burst, burst_failed) = collect(posts).await;
    let burst_wall = started.elapsed();
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
        "burst: all answered in {} (raw publishes: {}); not accepted: {} steady, {} burst; stored on INBOUND: {stored} of {}",
        secs(burst_wall),
        secs(raw_burst_wall),
        steady_failed,
        burst_failed,
        total + u64::from(args.burst),
    );
    if steady_failed + burst_failed > 0 || stored != total + u64::from(args.burst) {
        bail!("referrals lost or refused");
    }
    Ok(())
}
