//! `nwd-bench`: measures the line as a patient and a counsellor see it.
//!
//! It starts a real nats-server (JetStream, file storage, `sync_interval:
//! always`) and the real service binaries (from the same target directory),
//! logs a counsellor in over the dashboard websocket, then posts signed
//! Twilio webhooks for new contacts at a fixed rate (open loop: requests are
//! sent on schedule whether or not earlier ones finished) and measures
//! **webhook POST → offer received on the counsellor's websocket**.
//! In the same run and at the same rate it measures the raw JetStream hop
//! (publish + ack → pull consume → ack) on a scratch stream, and prints each
//! figure with its ratio to that hop.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use nwd_bench::{
    Line, TWILIO_ACCOUNT_SID as ACCOUNT_SID, TWILIO_AUTH_TOKEN as AUTH_TOKEN, hist, ms, raw_hop,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser, Debug)]
struct Args {
    /// New contacts per second, one run per rate.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    rates: Vec<u32>,
    /// Seconds of load per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// A short bounded run for CI: 50/s for 3 s.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The services of the line, each started from its release binary `nwd-<name>`.
const SERVICES: [&str; 7] = [
    "gateway",
    "intake",
    "triage",
    "router",
    "notifier",
    "dashboard",
    "phone-sim",
];

async fn start_line(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Line> {
    let directory = nwd_testkit::workspace_root().join("deploy/local/demo/directory.toml");
    Line::start(bin_dir, log_dir, &SERVICES, &directory, &[]).await
}

/// Webhook POST → offer on the websocket, at `rate` new contacts/s for `seconds`.
async fn webhook_to_offer(
    line: &Line,
    rate: u32,
    seconds: u64,
    run: u32,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut ws = nwd_bench::counsellor_socket(line.addr("dashboard")?, "ana", "ana-demo").await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = u64::from(rate) * seconds;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("http://{}/v1/sms/twilio", line.addr("gateway")?);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let reader_sent = sent.clone();
    let reader = tokio::spawn(async move {
        let mut h = hist();
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while got < total && Instant::now() < deadline {
            let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            else {
                break;
            };
            let WsMessage::Text(t) = frame else { continue };
            let now = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                continue;
            };
            if v["type"] != "offer" {
                continue;
            }
            let Some(body) = v["contact"]["messages"][0]["body"].as_str() else {
                continue;
            };
            let Some(tag) = body.split_whitespace().next() else {
                continue;
            };
            let start = reader_sent.lock().ok().and_then(|mut m| m.remove(tag));
            if let Some(start) = start {
                let _ = h.record(now.duration_since(start).as_micros() as u64);
                got += 1;
            }
        }
        h
    });

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let tag = format!("b{run}x{i}");
        // A distinct phone per contact: +1 555 2xx xxxx.
        let from = format!("+1555{:07}", 2_000_000 + u64::from(run) * 100_000 + i);
        let sid = format!("SM{:032x}", (u128::from(run) << 64) | u128::from(i));
        let params: Vec<(String, String)> = vec![
            ("MessageSid".into(), sid.clone()),
            ("AccountSid".into(), ACCOUNT_SID.into()),
            ("From".into(), from),
            ("To".into(), "+15005550100".into()),
            (
                "Body".into(),
                format!("{tag} I feel really anxious tonight and need to talk to someone"),
            ),
            ("NumMedia".into(), "0".into()),
        ];
        let sig = nwd_twilio::signature::compute(AUTH_TOKEN, &url, &params);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        let (http, url, sent, errors) = (http.clone(), url.clone(), sent.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            if let Ok(mut m) = sent.lock() {
                m.insert(tag, Instant::now());
            }
            let ok = http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", sig)
                .body(form)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = reader.await?;
    Ok((h, total, errors.load(std::sync::atomic::Ordering::Relaxed)))
}

/// JetStream hops between webhook and offer: gateway→INBOUND→intake,
/// intake→CONTACTS→triage, triage→CONTACTS→router. (Plus two KV writes: the
/// thread record and the contact record, each one fsync.)
const HOPS: u64 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.rates = vec![50];
        args.seconds = 3;
    }
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench")?;
    println!(
        "nwd-bench: real services from {} against nats-server (file storage, sync_interval: always)",
        bin_dir.display()
    );
    println!("service logs: {}", log_dir.display());
    println!();
    println!(
        "| rate (contacts/s) | seconds | offers | webhook errors | webhook→offer p50 | p99 | raw hop p50 | p99 | publish+ack p50 | p50 / raw hop | p50 / ({HOPS} × raw hop) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (run, rate) in args.rates.iter().copied().enumerate() {
        let run = run as u32;
        // Each rate on a fresh line (its own nats-server and services): the
        // contacts of one run, never answered, must not load the next.
        let line = start_line(&bin_dir, &log_dir.join(format!("rate-{rate}"))).await?;
        // Warm up connections, consumers and caches.
        let _ = webhook_to_offer(&line, 20, 1, 99).await?;
        let _ = raw_hop(&line.nats.url(), 20, 1, 99).await?;
        let (e2e, total, errors) = webhook_to_offer(&line, rate, args.seconds, run).await?;
        let (hop, ack) = raw_hop(&line.nats.url(), rate, args.seconds, run).await?;
        let (p50, p99) = (e2e.value_at_quantile(0.5), e2e.value_at_quantile(0.99));
        let (h50, h99) = (hop.value_at_quantile(0.5), hop.value_at_quantile(0.99));
        println!(
            "| {rate} | {} | {}/{total} | {errors} | {} | {} | {} | {} | {} | {:.1} | {:.2} |",
            args.seconds,
            e2e.len(),
            ms(p50),
            ms(p99),
            ms(h50),
            ms(h99),
            ms(ack.value_at_quantile(0.5)),
            p50 as f64 / h50.max(1) as f64,
            p50 as f64 / (HOPS * h50.max(1)) as f64,
        );
        if e2e.len() < total {
            println!(
                "!! {} contacts got no offer within the run",
                total - e2e.len()
            );
        }
    }
    println!();
    println!(
        "Targets (issue 3): p50 ≤ 1.5 ms and p99 ≤ 5 ms at 500/s; p50 ≤ 2 × ({HOPS} hops × raw hop p50), i.e. the last column ≤ 2."
    );
    Ok(())
}
