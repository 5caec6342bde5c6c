//! Per-message latency of the triage engine with the full builtin rulebook.
//!
//! `cargo bench -p nwd-triage --bench triage`
//! Targets: p99 ≤ 50 µs per SMS-length message, ≥ 20,000 messages/s on one core.
//! Criterion reports means; the `percentiles` group prints p50/p99/max over
//! the SMS mix measured message by message.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nwd_triage::Engine;

/// SMS-length messages across levels, languages and hard cases.
const SMS: &[&str] = &[
    "hi is anyone there",
    "what are your hours tomorrow?",
    "my brother took a bunch of pills and he won't wake up",
    "I can't do this anymore, I have the pills right here and I'm going to kill myself tonight",
    "just got out of rehab last week and used again, first time since",
    "this homework is killing me lol",
    "me quiero morir, ya no aguanto más",
    "mi hermano no despierta y tiene los labios morados",
    "I used to cut when I was a teenager but I'm doing better now",
    "💊💊💊💀",
    "soooo tired of everything, nobody would even notice if i was gone",
    "i'm not going to hurt myself, i just need someone to talk to",
    "where can I get narcan near downtown",
    "relapsed last night after 6 months clean, feeling like garbage",
    "la neta ya no quiero vivir, tengo las pastillas aquí",
    "she's not breathing!!! what do i do",
];

/// A long message of `chars` characters (1,600: the longest SMS; 4,000: a
/// web-chat message).
fn long_message(chars: usize) -> String {
    let mut s = String::new();
    let parts = [
        "I've been having a really hard time since I lost my job and my partner left. ",
        "Most days I just lie in bed and don't answer anyone. ",
        "Sometimes I think everyone would be better off without me, ",
        "but I haven't done anything about it. I used to drink a lot and I've been sober 8 months. ",
        "Tonight the cravings are bad and there's a bottle in the kitchen. ",
    ];
    let mut i = 0;
    while s.chars().count() < chars {
        s.push_str(parts[i % parts.len()]);
        i += 1;
    }
    s.chars().take(chars).collect()
}

fn bench(c: &mut Criterion) {
    let engine = Engine::builtin().expect("builtin rulebook");
    let long = long_message(1600);
    let chat = long_message(4000);
    let written = written_chat(4000);

    let mut group = c.benchmark_group("triage");
    group.throughput(Throughput::Elements(SMS.len() as u64));
    group.bench_function("sms_mix_16", |b| {
        b.iter(|| {
            for m in SMS {
                black_box(engine.assess(black_box(m)));
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("sms_imminent", |b| {
        b.iter(|| black_box(engine.assess(black_box(SMS[3]))))
    });
    group.bench_function("sms_low", |b| {
        b.iter(|| black_box(engine.assess(black_box(SMS[1]))))
    });
    group.bench_function("long_1600_chars", |b| {
        b.iter(|| black_box(engine.assess(black_box(long.as_str()))))
    });
    group.bench_function("chat_4000_chars", |b| {
        b.iter(|| black_box(engine.assess(black_box(chat.as_str()))))
    });
    group.bench_function("chat_4000_chars_written", |b| {
        b.iter(|| black_box(engine.assess(black_box(written.as_str()))))
    });
    group.finish();

    // Percentiles, message by message (criterion reports means only).
    let mut samples: Vec<Duration> = Vec::with_capacity(SMS.len() * 20_000);
    let started = Instant::now();
    for _ in 0..20_000 {
        for m in SMS {
            let t = Instant::now();
            black_box(engine.assess(black_box(m)));
            samples.push(t.elapsed());
        }
    }
    let wall = started.elapsed();
    let n = samples.len();
    samples.sort_unstable();
    let pct = |p: f64| percentile(&samples, p);
    let timed = |text: &str| {
        let mut v: Vec<Duration> = (0..5_000)
            .map(|_| {
                let t = Instant::now();
                black_box(engine.assess(black_box(text)));
                t.elapsed()
            })
            .collect();
        v.sort_unstable();
        v
    };
    let long_samples = timed(long.as_str());
    let chat_samples = timed(chat.as_str());
    let written_samples = timed(written.as_str());
    let ln = long_samples.len();
    let lp = |p: f64| percentile(&long_samples, p);
    let cn = chat_samples.len();
    let cp = |p: f64| percentile(&chat_samples, p);
    let wp = |p: f64| percentile(&written_samples, p);
    eprintln!(
        "\ntriage percentiles (rulebook {}, {} patterns):\n  SMS mix  n={n}: p50 {:?}  p99 {:?}  max {:?}  throughput {:.0} msg/s (one core)\n  1600 ch  n={ln}: p50 {:?}  p99 {:?}  max {:?}\n  4000 ch  n={cn}: p50 {:?}  p99 {:?}  max {:?}",
        engine.version(),
        engine.pattern_count(),
        pct(0.50),
        pct(0.99),
        samples[n - 1],
        n as f64 / wall.as_secs_f64(),
        lp(0.50),
        lp(0.99),
        long_samples[ln - 1],
        cp(0.50),
        cp(0.99),
        chat_samples[cn - 1],
    );
    eprintln!(
        "  4000 ch written (round7-long messages one after another) n={}: p50 {:?}  p99 {:?}  max {:?}",
        written_samples.len(),
        wp(0.50),
        wp(0.99),
        written_samples[written_samples.len() - 1],
    );
    // The tail of one pooled run swings with the machine (a burst of
    // preemption lands in it); per-round p99 over five rounds shows the
    // spread.
    for (name, text) in [
        ("4000 ch", chat.as_str()),
        ("4000 ch written", written.as_str()),
    ] {
        let mut p99s: Vec<Duration> = (0..5).map(|_| percentile(&timed(text), 0.99)).collect();
        p99s.sort_unstable();
        eprintln!(
            "  {name}: p99 of 5 more rounds of 5,000: min {:?}  median {:?}  max {:?}",
            p99s[0], p99s[2], p99s[4]
        );
    }
}

/// The `p` quantile of sorted samples (zero when there are none).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = (sorted.len() as f64 * p) as usize;
    sorted
        .get(at.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A web-chat message of `chars` characters written by people, not
/// repeated sentences: the messages of an unseen long eval set one after
/// another (as someone pasting what they wrote elsewhere), cut at `chars`.
fn written_chat(chars: usize) -> String {
    eval_texts("round7-long.jsonl")
        .join("\n\n")
        .chars()
        .take(chars)
        .collect()
}

/// Texts of an eval file (`{"text": …}` per line).
fn eval_texts(name: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/");
    std::fs::read_to_string(format!("{path}{name}"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect()
}

/// First-sight latency: every message is new text, as in production. An
/// engine is warmed on the dev set, then each held-out message (and a
/// variant with a new tail) is assessed once. An engine with lazy automata
/// builds states for text it has not seen; this one builds every automaton
/// at load, and this checks it. The experiment is repeated on fresh engines
/// (a clone has no lazy state) so the p99 rests on more than a handful of
/// samples; the spread of the per-round p99 is printed too.
fn first_sight(_c: &mut Criterion) {
    const ROUNDS: usize = 10;
    let loaded = Engine::builtin().expect("builtin rulebook");
    let dev = eval_texts("dev.jsonl");
    let mut novel: Vec<String> = [
        "heldout.jsonl",
        "heldout2.jsonl",
        "heldout3.jsonl",
        "heldout4.jsonl",
    ]
    .iter()
    .flat_map(|f| eval_texts(f))
    .collect();
    // Variants make more unseen text: suffixes change the tail of each message.
    let base = novel.clone();
    for (i, t) in base.iter().enumerate() {
        novel.push(format!(
            "{t} {}",
            ["pls", "idk", "ok?", "right now", "lol"][i % 5]
        ));
    }
    if novel.is_empty() {
        return;
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(ROUNDS * novel.len());
    let mut round_p99: Vec<Duration> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let engine = loaded.clone();
        for t in &dev {
            black_box(engine.assess(t));
        }
        let mut round: Vec<Duration> = novel
            .iter()
            .map(|t| {
                let start = Instant::now();
                black_box(engine.assess(black_box(t)));
                start.elapsed()
            })
            .collect();
        samples.extend_from_slice(&round);
        round.sort_unstable();
        round_p99.push(percentile(&round, 0.99));
    }
    samples.sort_unstable();
    round_p99.sort_unstable();
    let n = samples.len();
    let pct = |p: f64| percentile(&samples, p);
    eprintln!(
        "first sight (warmed on dev, new texts, {ROUNDS} fresh engines): n={n}: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}; per-round p99 min {:?} median {:?} max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[n - 1],
        round_p99[0],
        round_p99[ROUNDS / 2],
        round_p99[ROUNDS - 1],
    );
    // Engines with lazy automata grow their caches as they see text.
    eprintln!(
        "bench process peak resident memory: {} KiB",
        proc_kib("VmHWM").unwrap_or(0)
    );
}

/// A memory figure of this process from `/proc/self/status` in KiB
/// (`VmRSS` resident now, `VmHWM` peak; Linux only, `None` elsewhere).
fn proc_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn rss_kib() -> Option<u64> {
    proc_kib("VmRSS")
}

/// Loading the rulebook: every automaton is built here, once, at start.
fn load(_c: &mut Criterion) {
    let before = rss_kib();
    let t = Instant::now();
    let engine = Engine::builtin().expect("builtin rulebook");
    let mut times = vec![t.elapsed()];
    let after = rss_kib();
    for _ in 0..2 {
        let t = Instant::now();
        black_box(Engine::builtin().expect("builtin rulebook"));
        times.push(t.elapsed());
    }
    times.sort_unstable();
    eprintln!(
        "rulebook load ({} rules, {} patterns): min {:?}  median {:?}  max {:?}; resident memory of one engine +{} KiB; {:?}",
        engine.rule_count(),
        engine.pattern_count(),
        times[0],
        times[1],
        times[2],
        after.zip(before).map_or(0, |(a, b)| a.saturating_sub(b)),
        engine.stats(),
    );
}

criterion_group!(benches, load, bench, first_sight);
criterion_main!(benches);
