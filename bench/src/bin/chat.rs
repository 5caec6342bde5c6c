//! `nwd-bench-chat`: the patient web chat under many open sockets (issue 15).
//!
//! Starts a real nats-server and the real binaries (chat, intake, triage,
//! router, dashboard), opens `--sockets` patient sessions on one chat
//! instance (hello → session → welcome, each holding its reply feed) and
//! reports the chat process's memory per open socket. Then, with every
//! socket still open, sends `--rate` chat messages a second for `--seconds`
//! (open loop, each from another session, so each opens a contact) and
//! measures **chat message sent → offer on the counsellor's websocket**,
//! next to the raw JetStream hop measured at the same rate in the same run.
//! Needs file descriptors for 2 × sockets (`ulimit -n`).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use nwd_bench::{hist, ms, raw_hop, rss_kib};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

#[derive(Parser, Debug)]
struct Args {
    /// Patient sockets held open on the one chat instance.
    #[arg(long, default_value_t = 5000)]
    sockets: usize,
    /// Chat messages per second during the latency run.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// A short bounded run for CI: 200 sockets, 20 messages/s for 3 s.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

const SERVICES: [&str; 5] = ["chat", "intake", "triage", "router", "dashboard"];

type Sink = futures::stream::SplitSink<nwd_bench::Ws, WsMessage>;

/// Opens one patient session; returns its sending half (the receiving half
/// is drained by a task, answering the server's pings).
async fn patient(chat: SocketAddr) -> anyhow::Result<Sink> {
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{chat}/ws"))?;
    req.headers_mut()
        .insert("origin", format!("http://{chat}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    ws.send(WsMessage::Text(r#"{"type":"hello"}"#.into()))
        .await?;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no welcome")?
            .context("socket closed")??;
        if let WsMessage::Text(t) = frame
            && t.contains(r#""type":"welcome""#)
        {
            break;
        }
    }
    let (sink, mut stream) = ws.split();
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    Ok(sink)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.sockets = 200;
        args.rate = 20;
        args.seconds = 3;
    }
    let total = u64::from(args.rate) * args.seconds;
    anyhow::ensure!(
        total as usize <= args.sockets,
        "rate × seconds must not exceed the sockets (one message per session)"
    );
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-chat")?;
    let directory = nwd_testkit::workspace_root().join("deploy/local/demo/directory.toml");
    // Every socket comes from 127.0.0.1.
    let extra = [(
        "NWD_CHAT_SESSIONS_PER_ADDRESS_PER_MINUTE",
        "1000000".to_owned(),
    )];
    let line = nwd_bench::Line::start(&bin_dir, &log_dir, &SERVICES, &directory, &extra).await?;
    let addrs = &line.addrs;
    let chat_pid = line.pids.get("chat").copied().unwrap_or_default();
    println!(
        "nwd-bench-chat: real services from {} (logs {})",
        bin_dir.display(),
        log_dir.display()
    );

    // Memory per open socket.
    let pid = chat_pid.to_string();
    let before = rss_kib(&pid)?;
    let started = Instant::now();
    let mut sinks = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        sinks.push(
            patient(addrs["chat"])
                .await
                .with_context(|| format!("socket {i}"))?,
        );
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&pid)?;
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / args.sockets as f64;

    // Chat message → offer, every socket still open.
    let mut ws = nwd_bench::counsellor_socket(addrs["dashboard"], "ana", "ana-demo").await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let reader_sent = sent.clone();
    let seconds = args.seconds;
    let reader = tokio::spawn(async move {
        let mut h = hist();
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while got < total && Instant::now() < deadline {
            let Ok(Some(Ok(WsMessage::Text(t)))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
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
            if let Some(start) = nwd_bench::lock(&reader_sent).remove(&tag) {
                let _ = h.record(now.duration_since(start).as_micros() as u64);
                got += 1;
            }
        }
        h
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (i, sink) in sinks.iter_mut().take(total as usize).enumerate() {
        tick.tick().await;
        let tag = format!("c{i}");
        let frame = format!(
            r#"{{"type":"message","seq":1,"text":"{tag} I feel really anxious tonight and need to talk to someone"}}"#
        );
        nwd_bench::lock(&sent).insert(tag, Instant::now());
        sink.send(WsMessage::Text(frame.into())).await?;
    }
    let e2e = reader.await?;
    let (hop, _) = raw_hop(&line.nats.url(), args.rate, args.seconds, 1).await?;
    let (p50, p99) = (e2e.value_at_quantile(0.5), e2e.value_at_quantile(0.99));
    let (h50, h99) = (hop.value_at_quantile(0.5), hop.value_at_quantile(0.99));
    println!();
    println!(
        "| open sockets | opened in | chat RSS before → after | per socket | rate (msg/s) | offers | chat→offer p50 | p99 | raw hop p50 | p99 | p50 / raw hop |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} s | {:.1} → {:.1} MiB | {:.1} KiB | {} | {}/{total} | {} | {} | {} | {} | {:.1} |",
        args.sockets,
        opened.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_socket / 1024.0,
        args.rate,
        e2e.len(),
        ms(p50),
        ms(p99),
        ms(h50),
        ms(h99),
        p50 as f64 / h50.max(1) as f64,
    );
    drop(sinks);
    drop(line);
    Ok(())
}
