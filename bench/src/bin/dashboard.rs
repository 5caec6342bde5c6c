//! `nwd-bench-dashboard`: one dashboard instance with many authenticated
//! counsellor websockets (issue 16; default 2,000: 500 counsellors × 4 tabs).
//!
//! Starts a real nats-server and the real binaries (gateway, intake, triage,
//! router, dashboard) with a directory of `--users` counsellors, logs each in
//! once and opens `--tabs` websockets on their session, all away but one
//! counsellor who is available. Reports:
//! - **memory per connection**: the dashboard's RSS before and after;
//! - **queue fan-out**: signed webhooks open new contacts at `--rate`; each
//!   change reaches the dashboards as one queue snapshot from the router.
//!   For every snapshot, the time from its arrival on the bus (this program
//!   subscribes too) to its arrival on each socket — p50/p99 over all
//!   sockets and snapshots, and p50/p99 of the last socket per snapshot;
//! - **offer to screen**: webhook POST → offer on the available counsellor's
//!   socket, with every other socket open;
//!
//! next to the raw JetStream hop measured in the same run. Needs file
//! descriptors for 2 × sockets (`ulimit -n`).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use nwd_bench::{
    Line, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, hist, lock, ms, progress, raw_hop, rss_kib,
};
use nwd_proto::dashboard::QueueSnapshot;
use nwd_proto::{Envelope, subjects};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser, Debug)]
struct Args {
    /// Counsellors logged in (each once).
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Websockets per counsellor (tabs).
    #[arg(long, default_value_t = 4)]
    tabs: usize,
    /// New contacts per second during the fan-out run.
    #[arg(long, default_value_t = 2)]
    rate: u32,
    /// Seconds of the fan-out run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// A short bounded run for CI: 50 counsellors × 2 tabs, 2 contacts/s for 3 s.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

const SERVICES: [&str; 5] = ["gateway", "intake", "triage", "router", "dashboard"];

fn user(k: usize) -> String {
    format!("u-{k:04}")
}

fn p(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.users = 50;
        args.tabs = 2;
        args.rate = 2;
        args.seconds = 3;
    }
    anyhow::ensure!(
        args.users > 0 && args.tabs > 0,
        "--users and --tabs must be positive"
    );
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-dashboard")?;
    let directory = log_dir.join("directory.toml");
    let ids: Vec<String> = (0..args.users).map(user).collect();
    nwd_bench::write_staff_directory(&directory, &ids, 3, false)?;
    let unlimited = "1000000".to_owned();
    let extra = [
        (
            "NWD_DASHBOARD_LOGIN_PER_ADDRESS_PER_MINUTE",
            unlimited.clone(),
        ),
        ("NWD_DASHBOARD_LOGIN_PER_USERNAME_PER_MINUTE", unlimited),
    ];
    let line = Line::start(&bin_dir, &log_dir, &SERVICES, &directory, &extra).await?;
    let dashboard = line.addr("dashboard")?;
    println!(
        "nwd-bench-dashboard: real services from {} (logs {})",
        bin_dir.display(),
        log_dir.display()
    );

    // Snapshots as they reach the bus.
    let on_bus: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bus = line.nats.client().await;
    let mut snapshots = bus.subscribe(subjects::dashboard_queue()).await?;
    let bus_seen = on_bus.clone();
    tokio::spawn(async move {
        while let Some(m) = snapshots.next().await {
            let now = Instant::now();
            if let Ok(env) = Envelope::<QueueSnapshot>::from_bytes(&m.payload)
                && let Ok(at) = env
                    .data
                    .at
                    .format(&time::format_description::well_known::Rfc3339)
            {
                lock(&bus_seen).insert(at, now);
            }
        }
    });

    // Log everyone in first: a login hashes a password (Argon2id, 19 MiB
    // each), which the allocator may keep; memory per socket is measured
    // over opening the sockets only.
    let mut cookies = Vec::with_capacity(args.users);
    for k in 0..args.users {
        cookies.push(
            nwd_bench::login(dashboard, &user(k), "ana-demo")
                .await
                .with_context(|| format!("login {k}"))?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = line
        .pids
        .get("dashboard")
        .copied()
        .unwrap_or_default()
        .to_string();
    let before = rss_kib(&pid)?;
    let started = Instant::now();
    // (snapshot `at`, received) per socket, collected at the end.
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut offers_ws = None;
    let sockets = args.users * args.tabs;
    for (k, cookie) in cookies.iter().enumerate() {
        let available = k == 0;
        for t in 0..args.tabs {
            let ws = nwd_bench::open_socket(dashboard, cookie, available && t == 0)
                .await
                .with_context(|| format!("counsellor {k}, tab {t}"))?;
            if available && t == 0 {
                offers_ws = Some(ws);
                continue;
            }
            let (mut sink, mut stream) = ws.split();
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = stream.next().await {
                    let now = Instant::now();
                    match frame {
                        WsMessage::Text(t) if t.starts_with(r#"{"type":"queue""#) => {
                            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
                                && let Some(at) = v["at"].as_str()
                            {
                                lock(&seen).push((at.to_owned(), now));
                            }
                        }
                        WsMessage::Ping(p) => {
                            let _ = sink.send(WsMessage::Pong(p)).await;
                        }
                        _ => {}
                    }
                }
            });
        }
        if k % 100 == 99 {
            progress(&format!("{} sockets open", (k + 1) * args.tabs));
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&pid)?;
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / sockets as f64;
    lock(&seen).clear();
    lock(&on_bus).clear();

    // Queue changes (new contacts) and offers to the one available counsellor.
    let mut offer_ws = offers_ws.context("no available counsellor socket")?;
    let total = u64::from(args.rate) * args.seconds;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reader_sent = sent.clone();
    let seconds = args.seconds;
    let offers = tokio::spawn(async move {
        let mut h = hist();
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while (h.len() as u64) < total && Instant::now() < deadline {
            let Ok(Some(Ok(WsMessage::Text(t)))) =
                tokio::time::timeout(Duration::from_secs(5), offer_ws.next()).await
            else {
                continue;
            };
            let now = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                continue;
            };
            if v["type"] != "offer" {
                continue;
            }
            let tag = v["contact"]["messages"][0]["body"]
                .as_str()
                .and_then(|b| b.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            if let Some(start) = lock(&reader_sent).remove(&tag) {
                let _ = h.record(now.duration_since(start).as_micros() as u64);
            }
        }
        h
    });
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/sms/twilio", line.addr("gateway")?);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    for i in 0..total {
        tick.tick().await;
        let tag = format!("d{i}");
        let params: Vec<(String, String)> = vec![
            ("MessageSid".into(), format!("SM{i:032x}")),
            ("AccountSid".into(), TWILIO_ACCOUNT_SID.into()),
            ("From".into(), format!("+1555{:07}", 4_000_000 + i)),
            ("To".into(), "+15005550100".into()),
            (
                "Body".into(),
                format!("{tag} I relapsed last night and I am scared, can someone talk to me"),
            ),
            ("NumMedia".into(), "0".into()),
        ];
        let sig = nwd_twilio::signature::compute(TWILIO_AUTH_TOKEN, &url, &params);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        lock(&sent).insert(tag, Instant::now());
        http.post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(form)
            .send()
            .await?
            .error_for_status()?;
    }
    let offer_hist = offers.await?;
    // Let the last snapshots reach every socket.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let on_bus = lock(&on_bus).clone();
    let seen = std::mem::take(&mut *lock(&seen));
    let mut fan = hist();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut per_snapshot: HashMap<&str, usize> = HashMap::new();
    for (at, when) in &seen {
        let Some(t0) = on_bus.get(at) else { continue };
        let us = when.saturating_duration_since(*t0).as_micros() as u64;
        let _ = fan.record(us);
        let l = last.entry(at.as_str()).or_insert(0);
        *l = (*l).max(us);
        *per_snapshot.entry(at.as_str()).or_insert(0) += 1;
    }
    let mut last_hist = hist();
    for us in last.values() {
        let _ = last_hist.record(*us);
    }
    let complete = per_snapshot.values().filter(|n| **n >= sockets - 1).count();
    let (hop, _) = raw_hop(&line.nats.url(), args.rate.max(20), 3, 1).await?;
    let hop50 = p(&hop, 0.5).max(1);
    println!();
    println!(
        "| sockets | opened in | dashboard RSS before → after | per socket | snapshots fanned out (to every socket) | fan-out p50 | p99 | last socket p50 | p99 | offer to screen p50 | p99 | raw hop p50 | p99 | fan-out p99 / raw hop |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {sockets} | {:.1} s | {:.1} → {:.1} MiB | {:.1} KiB | {} ({complete}) | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_socket / 1024.0,
        per_snapshot.len(),
        ms(p(&fan, 0.5)),
        ms(p(&fan, 0.99)),
        ms(p(&last_hist, 0.5)),
        ms(p(&last_hist, 0.99)),
        ms(p(&offer_hist, 0.5)),
        ms(p(&offer_hist, 0.99)),
        ms(hop50),
        ms(p(&hop, 0.99)),
        p(&fan, 0.99) as f64 / hop50 as f64,
    );
    drop(line);
    Ok(())
}
