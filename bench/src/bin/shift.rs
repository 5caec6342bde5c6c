//! `nwd-bench-shift`: a compressed shift on the real line (issue 16), and a
//! staffing tool: how soon is each person answered, by risk, with N
//! counsellors at a given arrival rate?
//!
//! Each run starts a real nats-server and the real binaries (gateway,
//! intake, triage, router, escalator, dashboard) with a directory of N
//! counsellor bots (every language, on call around the clock, `--capacity`
//! conversations each). Signed Twilio webhooks arrive as a Poisson process
//! for `--seconds`, each from a new number, carrying a message drawn from
//! the project's own labelled set (`services/triage/eval/dev.jsonl`) with
//! the risk mix of `--mix` — real triage decides the level the line acts
//! on. The rate is `load × N × capacity / mean conversation`: load 1.0 is
//! what the counsellors can take.
//!
//! Each bot holds a dashboard websocket like a counsellor: it reacts to its
//! offers after `--reaction-secs` (±50%), then takes one by its click
//! policy — **first**: the offer that reached it first; **top**: the top
//! card on screen (most urgent, then longest waiting) — talks for an
//! exponential time of mean `--conversation-secs`, and resolves. A bot
//! never declines.
//!
//! Printed per load and policy: time from webhook to a counsellor's accept,
//! by the level triage gave (p50, p90, share answered within 30 s — 988's
//! bar is 85% — with anyone not answered by the end counted as over), what
//! the ladder did (steps by rung), and the raw JetStream hop from the same
//! run with the p50 as a ratio of it.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use nwd_bench::{Line, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, hist, lock, ms, progress, raw_hop};
use nwd_proto::RiskLevel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser, Debug)]
struct Args {
    /// Counsellor bots on shift.
    #[arg(long, default_value_t = 4)]
    counsellors: usize,
    /// Conversations each counsellor holds at once.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Mean conversation length, seconds (compressed: a shift in minutes).
    #[arg(long, default_value_t = 20.0)]
    conversation_secs: f64,
    /// Time a counsellor takes to react to an offer, seconds (±50%).
    #[arg(long, default_value_t = 2.0)]
    reaction_secs: f64,
    /// Loads, as multiples of what the counsellors can take.
    #[arg(long, value_delimiter = ',', default_value = "0.7,1.5")]
    loads: Vec<f64>,
    /// Click policies: `first` (first offer received), `top` (top of the screen).
    #[arg(long, value_delimiter = ',', default_value = "first,top")]
    policies: Vec<String>,
    /// Seconds of arrivals per run.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Longest wait for the queue to drain after the arrivals, seconds.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    /// Risk mix of arrivals, percent by label: imminent,high,moderate,low.
    #[arg(long, value_delimiter = ',', default_value = "5,20,40,35")]
    mix: Vec<u32>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// A short bounded run for CI: 2 counsellors, load 1.5, both policies, 20 s.
    #[arg(long)]
    smoke: bool,
    /// Where the service binaries are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const SERVICES: [&str; 6] = [
    "gateway",
    "intake",
    "triage",
    "router",
    "escalator",
    "dashboard",
];

/// The answer bar: 988's 85% of contacts within 30 s.
const WITHIN: Duration = Duration::from_secs(30);

const LEVELS: [RiskLevel; 4] = [
    RiskLevel::Imminent,
    RiskLevel::High,
    RiskLevel::Moderate,
    RiskLevel::Low,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    First,
    Top,
}

impl Policy {
    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "first" => Ok(Policy::First),
            "top" => Ok(Policy::Top),
            other => anyhow::bail!("unknown policy {other:?} (first, top)"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Policy::First => "first offer received",
            Policy::Top => "top of the screen",
        }
    }
}

/// The labelled messages by level.
fn messages() -> anyhow::Result<BTreeMap<RiskLevel, Vec<String>>> {
    let path = nwd_testkit::workspace_root().join("services/triage/eval/dev.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut by: BTreeMap<RiskLevel, Vec<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let level: RiskLevel = serde_json::from_value(v["level"].clone())?;
        let text = v["text"].as_str().context("a message without text")?;
        by.entry(level).or_default().push(text.to_owned());
    }
    Ok(by)
}

fn bot(k: usize) -> String {
    format!("bot-{:02}", k + 1)
}

/// What happened to one arrival.
#[derive(Debug, Clone)]
struct Arrival {
    sent: Instant,
    /// The level triage gave (from the first offer or conversation seen).
    risk: Option<RiskLevel>,
    answered: Option<Duration>,
}

type Arrivals = Arc<Mutex<HashMap<String, Arrival>>>;

/// An offer on a bot's screen.
struct Offer {
    contact: String,
    received: Instant,
    risk: RiskLevel,
    waiting_since: String,
}

/// How a counsellor bot behaves.
#[derive(Debug, Clone, Copy)]
struct Bot {
    policy: Policy,
    capacity: usize,
    /// Mean reaction time, seconds.
    reaction: f64,
    /// Mean conversation length, seconds.
    conversation: f64,
    seed: u64,
}

/// One counsellor bot: reacts to offers by its policy, talks, resolves.
async fn counsellor_bot(
    mut ws: nwd_bench::Ws,
    bot: Bot,
    arrivals: Arrivals,
    stop: tokio_util::sync::CancellationToken,
) {
    let Bot {
        policy,
        capacity,
        reaction,
        conversation,
        seed,
    } = bot;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut offers: Vec<Offer> = Vec::new();
    let mut talking: Vec<(String, tokio::time::Instant)> = Vec::new();
    let mut accepting: Option<String> = None;
    let mut decide_at: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        // React to offers when a seat is free and nothing is being decided.
        if decide_at.is_none()
            && accepting.is_none()
            && talking.len() < capacity
            && !offers.is_empty()
        {
            let secs = reaction * rng.gen_range(0.5..1.5);
            decide_at = Some(tokio::time::Instant::now() + Duration::from_secs_f64(secs));
        }
        let next_end = talking.iter().map(|(_, t)| *t).min().unwrap_or_else(far);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(decide_at.unwrap_or_else(far)), if decide_at.is_some() => {
                decide_at = None;
                let choice = match policy {
                    Policy::First => offers.iter().min_by_key(|o| o.received),
                    // Most urgent first, then longest waiting (RFC 3339 UTC
                    // strings of one format order as times).
                    Policy::Top => offers.iter().min_by(|a, b| {
                        b.risk.cmp(&a.risk).then_with(|| a.waiting_since.cmp(&b.waiting_since))
                    }),
                };
                if let Some(o) = choice {
                    let frame = serde_json::json!({"type": "accept", "contact_id": o.contact});
                    accepting = Some(o.contact.clone());
                    if ws.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
            () = tokio::time::sleep_until(next_end), if !talking.is_empty() => {
                let now = tokio::time::Instant::now();
                let (done, rest): (Vec<_>, Vec<_>) = talking.drain(..).partition(|(_, t)| *t <= now);
                talking = rest;
                for (contact, _) in done {
                    let frame = serde_json::json!({
                        "type": "resolve", "contact_id": contact, "disposition": "support-given"
                    });
                    if ws.send(WsMessage::Text(frame.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { return };
                let WsMessage::Text(t) = frame else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else { continue };
                match v["type"].as_str() {
                    Some("offer") => {
                        let c = &v["contact"];
                        let contact = c["contact_id"].as_str().unwrap_or_default().to_owned();
                        let risk: RiskLevel = serde_json::from_value(c["risk"].clone()).unwrap_or(RiskLevel::Low);
                        note_risk(&arrivals, c, risk);
                        if !offers.iter().any(|o| o.contact == contact) {
                            offers.push(Offer {
                                contact,
                                received: Instant::now(),
                                risk,
                                waiting_since: c["waiting_since"].as_str().unwrap_or_default().to_owned(),
                            });
                        }
                    }
                    Some("offer_withdrawn") => {
                        let contact = v["contact_id"].as_str().unwrap_or_default();
                        offers.retain(|o| o.contact != contact);
                        if accepting.as_deref() == Some(contact) {
                            accepting = None;
                        }
                    }
                    Some("conversation") => {
                        let c = &v["contact"];
                        let contact = c["contact_id"].as_str().unwrap_or_default().to_owned();
                        let risk: RiskLevel = serde_json::from_value(c["risk"].clone()).unwrap_or(RiskLevel::Low);
                        note_risk(&arrivals, c, risk);
                        if let Some(tag) = tag_of(c)
                            && let Some(a) = lock(&arrivals).get_mut(&tag)
                            && a.answered.is_none()
                        {
                            a.answered = Some(a.sent.elapsed());
                        }
                        offers.retain(|o| o.contact != contact);
                        if accepting.as_deref() == Some(contact.as_str()) {
                            accepting = None;
                        }
                        if !talking.iter().any(|(x, _)| *x == contact) {
                            let secs = -conversation * (1.0 - rng.r#gen::<f64>()).ln();
                            talking.push((contact, tokio::time::Instant::now() + Duration::from_secs_f64(secs)));
                        }
                    }
                    Some("error") => accepting = None,
                    Some("resolved") => {
                        let contact = v["contact_id"].as_str().unwrap_or_default();
                        talking.retain(|(x, _)| x != contact);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The arrival's tag: the first word of the person's first message.
fn tag_of(contact: &serde_json::Value) -> Option<String> {
    contact["messages"][0]["body"]
        .as_str()?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

fn note_risk(arrivals: &Arrivals, contact: &serde_json::Value, risk: RiskLevel) {
    if let Some(tag) = tag_of(contact)
        && let Some(a) = lock(arrivals).get_mut(&tag)
    {
        a.risk = Some(a.risk.map_or(risk, |r| r.max(risk)));
    }
}

/// Escalation steps by rung, from a service's metrics.
async fn ladder_steps(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let mut by = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("nwd_escalation_steps_total{"))
    {
        let rung = l
            .split("rung=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let outcome = l
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let n: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *by.entry(format!("{rung}/{outcome}")).or_insert(0.0) += n;
    }
    Ok(by)
}

struct RunSpec<'a> {
    load: f64,
    policy: Policy,
    run: u32,
    args: &'a Args,
    bin_dir: &'a Path,
    log_dir: &'a Path,
    directory: &'a Path,
    messages: &'a BTreeMap<RiskLevel, Vec<String>>,
}

async fn run(spec: RunSpec<'_>) -> anyhow::Result<()> {
    let args = spec.args;
    let log_dir = spec
        .log_dir
        .join(format!("load-{}-{:?}", spec.load, spec.policy));
    let unlimited = "1000000".to_owned();
    let extra = [
        (
            "NWD_DASHBOARD_LOGIN_PER_ADDRESS_PER_MINUTE",
            unlimited.clone(),
        ),
        ("NWD_DASHBOARD_LOGIN_PER_USERNAME_PER_MINUTE", unlimited),
    ];
    let line = Line::start(spec.bin_dir, &log_dir, &SERVICES, spec.directory, &extra).await?;
    let arrivals: Arrivals = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut bots = Vec::new();
    for k in 0..args.counsellors {
        let ws = nwd_bench::counsellor_socket(line.addr("dashboard")?, &bot(k), "ana-demo").await?;
        let behaviour = Bot {
            policy: spec.policy,
            capacity: args.capacity as usize,
            reaction: args.reaction_secs,
            conversation: args.conversation_secs,
            seed: args.seed ^ (k as u64 + 1) ^ (u64::from(spec.run) << 32),
        };
        bots.push(tokio::spawn(counsellor_bot(
            ws,
            behaviour,
            arrivals.clone(),
            stop.clone(),
        )));
    }

    // Arrivals: Poisson at load × what the counsellors can take.
    let rate =
        spec.load * args.counsellors as f64 * f64::from(args.capacity) / args.conversation_secs;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(u64::from(spec.run)));
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/sms/twilio", line.addr("gateway")?);
    let weights: u32 = args.mix.iter().sum();
    let started = Instant::now();
    let mut next = 0.0f64;
    let mut i = 0u64;
    let mut refused = 0u64;
    loop {
        next += -(1.0 - rng.r#gen::<f64>()).ln() / rate;
        if next > args.seconds as f64 {
            break;
        }
        tokio::time::sleep_until((started + Duration::from_secs_f64(next)).into()).await;
        let mut pick = rng.gen_range(0..weights.max(1));
        let level = LEVELS
            .iter()
            .zip(args.mix.iter())
            .find(|(_, w)| {
                if pick < **w {
                    true
                } else {
                    pick -= **w;
                    false
                }
            })
            .map_or(RiskLevel::Low, |(l, _)| *l);
        let pool = spec.messages.get(&level).context("no message of a level")?;
        let text = &pool[rng.gen_range(0..pool.len())];
        let tag = format!("s{i}");
        let params: Vec<(String, String)> = vec![
            (
                "MessageSid".into(),
                format!("SM{:032x}", (u128::from(spec.run) << 64) | u128::from(i)),
            ),
            ("AccountSid".into(), TWILIO_ACCOUNT_SID.into()),
            (
                "From".into(),
                format!("+1555{:07}", 3_000_000 + u64::from(spec.run) * 100_000 + i),
            ),
            ("To".into(), "+15005550100".into()),
            ("Body".into(), format!("{tag} {text}")),
            ("NumMedia".into(), "0".into()),
        ];
        let sig = nwd_twilio::signature::compute(TWILIO_AUTH_TOKEN, &url, &params);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        lock(&arrivals).insert(
            tag,
            Arrival {
                sent: Instant::now(),
                risk: None,
                answered: None,
            },
        );
        let ok = http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(form)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            refused += 1;
        }
        i += 1;
    }
    progress(&format!(
        "load {} / {}: {i} arrivals in {} s; draining",
        spec.load,
        spec.policy.label(),
        args.seconds
    ));
    let drain_until = Instant::now() + Duration::from_secs(args.drain_secs);
    while Instant::now() < drain_until && lock(&arrivals).values().any(|a| a.answered.is_none()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut ladder = ladder_steps(line.addr("router")?).await?;
    for (k, v) in ladder_steps(line.addr("escalator")?).await? {
        *ladder.entry(k).or_insert(0.0) += v;
    }
    stop.cancel();
    for b in bots {
        let _ = b.await;
    }
    let (hop, _) = raw_hop(&line.nats.url(), 20, 2, spec.run).await?;
    let hop50 = hop.value_at_quantile(0.5).max(1);
    drop(line);

    let arrivals = lock(&arrivals).clone();
    println!();
    println!(
        "**load {:.1}× ({:.2} arrivals/s, {} counsellors × {} seats, conversations {:.0} s mean, reaction {:.1} s), click policy: {}** — {} arrivals, {} refused by the gateway; raw JetStream hop p50 {} in the same run",
        spec.load,
        rate,
        args.counsellors,
        args.capacity,
        args.conversation_secs,
        args.reaction_secs,
        spec.policy.label(),
        arrivals.len(),
        refused,
        ms(hop50),
    );
    println!();
    println!("| triaged level | contacts | answered | p50 | p90 | within 30 s | p50 / raw hop |");
    println!("|---|---|---|---|---|---|---|");
    let rows = LEVELS.iter().map(|l| Some(*l)).chain([None]);
    for level in rows {
        let of: Vec<&Arrival> = arrivals
            .values()
            .filter(|a| level.is_none() || a.risk == level)
            .collect();
        if of.is_empty() {
            continue;
        }
        let mut h = hist();
        let mut within = 0usize;
        let mut answered = 0usize;
        for a in &of {
            // Not answered by the end: counted at the whole wait so far.
            let wait = a.answered.unwrap_or_else(|| a.sent.elapsed());
            let _ = h.record(wait.as_micros() as u64);
            if a.answered.is_some() {
                answered += 1;
            }
            if a.answered.is_some_and(|w| w <= WITHIN) {
                within += 1;
            }
        }
        let p50 = h.value_at_quantile(0.5);
        println!(
            "| {} | {} | {} | {} | {} | {:.0}% | {:.0} |",
            level.map_or("all", |l| l.as_str()),
            of.len(),
            answered,
            secs(p50),
            secs(h.value_at_quantile(0.9)),
            100.0 * within as f64 / of.len() as f64,
            p50 as f64 / hop50 as f64,
        );
    }
    let steps: Vec<String> = ladder
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(k, n)| format!("{k} {n:.0}"))
        .collect();
    println!();
    println!("Ladder steps (rung/outcome): {}", steps.join(", "));
    Ok(())
}

fn secs(us: u64) -> String {
    format!("{:.1} s", us as f64 / 1e6)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.counsellors = 2;
        args.loads = vec![1.5];
        args.seconds = 20;
        args.drain_secs = 30;
        args.conversation_secs = 8.0;
        args.reaction_secs = 1.0;
    }
    anyhow::ensure!(args.counsellors > 0, "--counsellors must be at least 1");
    anyhow::ensure!(args.capacity > 0, "--capacity must be at least 1");
    anyhow::ensure!(
        args.conversation_secs > 0.0,
        "--conversation-secs must be positive"
    );
    anyhow::ensure!(args.mix.len() == 4, "--mix takes four percentages");
    let policies = args
        .policies
        .iter()
        .map(|p| Policy::parse(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    nwd_bench::install_crypto();
    let bin_dir = nwd_bench::bin_dir(args.bin_dir.clone())?;
    let log_dir = nwd_bench::log_dir("nwd-bench-shift")?;
    let directory = log_dir.join("directory.toml");
    let ids: Vec<String> = (0..args.counsellors).map(bot).collect();
    // Bots spread over the partners (every door has its own), every
    // language, on call around the clock; one supervisor who stays away.
    nwd_bench::write_staff_directory(&directory, &ids, args.capacity, true)?;
    let messages = messages()?;
    for l in LEVELS {
        anyhow::ensure!(
            messages.get(&l).is_some_and(|m| !m.is_empty()),
            "no labelled message at {}",
            l.as_str()
        );
    }
    println!(
        "nwd-bench-shift: real services from {} (logs {})",
        bin_dir.display(),
        log_dir.display()
    );
    let mut run_no = 0u32;
    for load in &args.loads {
        for policy in &policies {
            run_no += 1;
            run(RunSpec {
                load: *load,
                policy: *policy,
                run: run_no,
                args: &args,
                bin_dir: &bin_dir,
                log_dir: &log_dir,
                directory: &directory,
                messages: &messages,
            })
            .await?;
        }
    }
    Ok(())
}
