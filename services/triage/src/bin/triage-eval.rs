//! Evaluates the triage engine on a labelled JSONL file.
//!
//! ```text
//! cargo run --release -p nwd-triage --bin triage-eval -- \
//!     --input services/triage/eval/dev.jsonl --predictions /tmp/dev.pred.jsonl
//! cargo run --release -p nwd-triage --bin triage-eval -- --cssrs   # the Reddit C-SSRS sample
//! ```
//!
//! Input lines: `{"id", "text", "level"?, "lang"?, "rationale"?}`; a rationale
//! starting with `[hard:` marks a hard case. Output lines (`--predictions`):
//! `{"id", "level", "reasons": [rule ids]}`. With labels, prints a confusion
//! matrix, per-level precision/recall, the under-triage rate, recall of
//! imminent+high predicted at high or above, imminent recall, and the rate of
//! low messages predicted imminent.
//!
//! Lines in the Reddit C-SSRS format (`{"id", "text", "cssrs"}`) are detected
//! and their labels mapped (see [`cssrs_level`]); the source's known word
//! substitutions are undone first (see [`undo_cssrs_quirks`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use nwd_proto::{Language, RiskLevel};
use nwd_triage::eval::Tally;
use nwd_triage::{Engine, Model};
use serde::Deserialize;

/// Default location of the Reddit C-SSRS sample: `shared/` beside the repository.
const CSSRS_DEFAULT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/testdata/cssrs-reddit/posts.jsonl"
);

#[derive(Parser, Debug)]
#[command(
    name = "triage-eval",
    about = "Evaluates the triage rulebook on labelled messages"
)]
struct Args {
    /// JSONL input: {"id","text","level"?,"lang"?} per line (or the C-SSRS format).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write {"id","level","reasons"} per line.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Evaluate the Reddit C-SSRS sample (default: shared/testdata/cssrs-reddit/posts.jsonl).
    #[arg(long, num_args = 0..=1, default_missing_value = CSSRS_DEFAULT)]
    cssrs: Option<PathBuf>,
    /// A rulebook file instead of the builtin one.
    #[arg(long)]
    rulebook: Option<PathBuf>,
    /// A learned model file instead of the builtin one.
    #[arg(long, conflicts_with = "no_model")]
    model: Option<PathBuf>,
    /// Rules only, without the learned model.
    #[arg(long)]
    no_model: bool,
    /// Print each misclassified message (own eval sets only; never C-SSRS text).
    #[arg(long)]
    show_errors: bool,
}

#[derive(Debug, Deserialize)]
struct Row {
    id: serde_json::Value,
    text: String,
    level: Option<RiskLevel>,
    lang: Option<Language>,
    rationale: Option<String>,
    cssrs: Option<String>,
}

/// How the C-SSRS user labels map to our levels: Supportive and Indicator
/// express no suicidal ideation or behaviour of their own (low); Ideation is
/// thoughts of suicide without an act (moderate); Behavior (self-harm,
/// preparation, aborted attempts) and Attempt are high — an imminent
/// prediction counts as at least high. Posts are mostly in the past, so
/// nothing in this set is labelled imminent.
fn cssrs_level(label: &str) -> Option<RiskLevel> {
    match label.trim() {
        "Supportive" | "Indicator" => Some(RiskLevel::Low),
        "Ideation" => Some(RiskLevel::Moderate),
        "Behavior" | "Attempt" => Some(RiskLevel::High),
        _ => None,
    }
}

/// The source replaced everyday words by capitalised medical-concept names
/// (README "Known quirks"); map them back so rules see the writer's words,
/// and decode the Reddit HTML entities.
fn undo_cssrs_quirks(text: &str) -> String {
    const SUBSTITUTIONS: [(&str, &str); 31] = [
        // Not in the README's examples ("examples from context"), read
        // from their contexts in the sample; the longer names go first
        // ("Chest Pain" before "Pain").
        ("Respiratory Distress Syndrome, Adult", "adult"),
        ("Excessive upper gastrointestinal gas", "gas"),
        ("Ventricular Dysfunction, Left", "left"),
        ("Drug withdrawal syndrome", "crash"),
        ("Weakness of hand", "hands"),
        ("Increased Sweating", "sweat"),
        ("Mental Depression", "depression"),
        ("Injury of muscle", "permanent"),
        ("Seizures, Focal", "focal"),
        ("Irritable Mood", "mean"),
        ("Phobia, Social", "social"),
        ("Panic Attacks", "panic"),
        ("Drug craving", "addiction"),
        ("Chest Pain", "hurt"),
        ("Sharp Pain", "quick"),
        ("Somnolence", "asleep"),
        ("Exhaustion", "exhausted"),
        ("Numbness", "numb"),
        ("Nausea", "sick"),
        ("Ache", "pain"),
        // The README's examples.
        ("Hyperactive behavior", "like"),
        ("Depressed mood", "sad"),
        ("Sedated state", "calm"),
        ("Social fear", "scared"),
        ("Drug abuse", "high"),
        ("Hypersomnia", "sleep"),
        ("Asthenia", "week"),
        ("Illness", "sick"),
        ("Tired", "very"),
        ("Pain", "hurt"),
        ("&amp;", "&"),
    ];
    let mut out = text.to_owned();
    for (from, to) in SUBSTITUTIONS {
        out = out.replace(from, to);
    }
    out.replace("&gt;", ">").replace("&lt;", "<")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rules = match &args.rulebook {
        Some(p) => Engine::load(p)?,
        None => Engine::builtin_rules()?,
    };
    let model = match (&args.model, args.no_model) {
        (_, true) => None,
        (Some(p), false) => Some(Model::load(p)?),
        (None, false) => Some(Model::builtin()?),
    };
    let engine = rules.with_model(model);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "rulebook {} ({}), {} rules, {} patterns",
        engine.version(),
        engine.source(),
        engine.rule_count(),
        engine.pattern_count()
    )?;
    let (input, explicit_cssrs) = match (&args.input, &args.cssrs) {
        (Some(i), None) => (i.clone(), false),
        (None, Some(c)) => (c.clone(), true),
        (Some(_), Some(_)) => bail!("give either --input or --cssrs, not both"),
        (None, None) => bail!("nothing to evaluate: give --input FILE.jsonl or --cssrs [PATH]"),
    };
    if !input.exists() {
        if explicit_cssrs {
            writeln!(
                out,
                "C-SSRS sample not present at {} — nothing evaluated (a development set for long texts).",
                input.display()
            )?;
            return Ok(());
        }
        bail!("input file {} does not exist", input.display());
    }
    evaluate(&engine, &input, &args, &mut out)
}

/// The C-SSRS user labels, in order of severity.
const CSSRS_LABELS: [&str; 5] = ["Supportive", "Indicator", "Ideation", "Behavior", "Attempt"];

fn level_index(level: RiskLevel) -> usize {
    match level {
        RiskLevel::Low => 0,
        RiskLevel::Moderate => 1,
        RiskLevel::High => 2,
        RiskLevel::Imminent => 3,
    }
}

/// Predicted levels per C-SSRS label, and issue 13's long-text figures:
/// Behavior ∪ Attempt at ≥ high (≥ 0.90), Ideation at ≥ moderate (≥ 0.90),
/// Supportive at ≥ high (≤ 0.30), Supportive ∪ Indicator imminent (≤ 0.15).
fn cssrs_report(by_label: &[(String, [usize; 4])]) -> String {
    let mut s = String::from("\nper C-SSRS label (predicted low / moderate / high / imminent):\n");
    for (label, c) in by_label {
        s.push_str(&format!(
            "  {label:<11} {:>4} {:>4} {:>4} {:>4}   ({} users)\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c.iter().sum::<usize>()
        ));
    }
    let share = |labels: &[&str], from: usize| {
        let (mut hit, mut all) = (0, 0);
        for (_, c) in by_label
            .iter()
            .filter(|(l, _)| labels.contains(&l.as_str()))
        {
            hit += c.iter().skip(from).sum::<usize>();
            all += c.iter().sum::<usize>();
        }
        hit as f64 / all.max(1) as f64
    };
    s.push_str(&format!(
        "Behavior ∪ Attempt at >= high          {:.3}  (target >= 0.90)\n",
        share(&["Behavior", "Attempt"], 2)
    ));
    s.push_str(&format!(
        "Ideation at >= moderate                {:.3}  (target >= 0.90)\n",
        share(&["Ideation"], 1)
    ));
    s.push_str(&format!(
        "Supportive at >= high                  {:.3}  (target <= 0.30)\n",
        share(&["Supportive"], 2)
    ));
    s.push_str(&format!(
        "Supportive ∪ Indicator imminent        {:.3}  (target <= 0.15)\n",
        share(&["Supportive", "Indicator"], 3)
    ));
    s
}

fn evaluate(
    engine: &Engine,
    input: &Path,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let reader = BufReader::new(
        File::open(input).with_context(|| format!("cannot open {}", input.display()))?,
    );
    let mut predictions = match &args.predictions {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut tally = Tally::default();
    let mut cssrs_rows = 0usize;
    // Per C-SSRS label: predictions per level (low, moderate, high, imminent).
    let mut by_label: Vec<(String, [usize; 4])> = CSSRS_LABELS
        .iter()
        .map(|l| ((*l).to_owned(), [0; 4]))
        .collect();
    let mut errors = Vec::new();
    let mut elapsed = std::time::Duration::ZERO;
    let mut chars = 0usize;
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", input.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a message line", input.display(), n + 1))?;
        let (text, truth, is_cssrs) = match &row.cssrs {
            Some(label) => {
                let level = cssrs_level(label).with_context(|| {
                    format!(
                        "{}:{}: unknown C-SSRS label {label:?}",
                        input.display(),
                        n + 1
                    )
                })?;
                (undo_cssrs_quirks(&row.text), Some(level), true)
            }
            None => (row.text.clone(), row.level, false),
        };
        cssrs_rows += usize::from(is_cssrs);
        chars += text.chars().count();
        let started = Instant::now();
        let a = engine.assess(&text);
        elapsed += started.elapsed();
        if let Some(w) = predictions.as_mut() {
            let rules: Vec<&str> = a.reasons.iter().map(|r| r.rule.as_str()).collect();
            serde_json::to_writer(
                &mut *w,
                &serde_json::json!({"id": row.id, "level": a.level, "reasons": rules}),
            )?;
            w.write_all(b"\n")?;
        }
        if let Some(label) = &row.cssrs
            && let Some((_, counts)) = by_label.iter_mut().find(|(l, _)| l == label)
            && let Some(c) = counts.get_mut(level_index(a.level))
        {
            *c += 1;
        }
        let Some(truth) = truth else {
            tally.unlabelled += 1;
            continue;
        };
        tally.add(truth, a.level);
        if let Some(lang) = row.lang {
            tally.lang_total += 1;
            tally.lang_right += usize::from(lang == a.lang);
            if lang != a.lang && !is_cssrs {
                errors.push(format!(
                    "{:>8} {} true {} → detected {} {:?}",
                    "LANG",
                    row.id,
                    lang.as_str(),
                    a.lang.as_str(),
                    row.text
                ));
            }
        }
        if row
            .rationale
            .as_deref()
            .is_some_and(|r| r.starts_with("[hard:"))
        {
            tally.hard_total += 1;
            tally.hard_right += usize::from(truth == a.level);
            tally.hard_under += usize::from(a.level < truth);
        }
        if truth != a.level {
            let rules: Vec<String> = a
                .reasons
                .iter()
                .map(|r| format!("{}={}", r.rule, r.level))
                .collect();
            let shown = if is_cssrs {
                // Real people's posts: ids only.
                String::new()
            } else {
                format!(" {:?}", row.text)
            };
            errors.push(format!(
                "{:>8} {} true {truth} → predicted {}{shown} {rules:?}",
                if a.level < truth { "UNDER" } else { "over" },
                row.id,
                a.level,
            ));
        }
    }
    if let Some(mut w) = predictions {
        w.flush()?;
    }
    let total = tally.total() + tally.unlabelled;
    writeln!(
        out,
        "input {} ({} messages{}), {:.1} µs per message on average, cold regex caches included ({} chars on average)",
        input.display(),
        total,
        if cssrs_rows > 0 {
            ", Reddit C-SSRS format: labels mapped Supportive/Indicator→low, Ideation→moderate, Behavior/Attempt→high"
        } else {
            ""
        },
        elapsed.as_secs_f64() * 1e6 / total.max(1) as f64,
        chars / total.max(1),
    )?;
    if tally.total() == 0 {
        writeln!(out, "no labels: predictions only")?;
        return Ok(());
    }
    write!(out, "{}", tally.report(cssrs_rows == 0))?;
    if cssrs_rows > 0 {
        write!(out, "{}", cssrs_report(&by_label))?;
    }
    if args.show_errors {
        writeln!(out, "\nmisclassified ({}):", errors.len())?;
        for e in &errors {
            writeln!(out, "{e}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::undo_cssrs_quirks;

    /// The source's concept names go back to the writer's words, the longer
    /// names before the shorter ones they contain ("Chest Pain" is "hurt",
    /// not "Chest hurt"), and the HTML entities are decoded.
    #[test]
    fn the_samples_substitutions_are_undone() {
        for (source, written) in [
            (
                "they did not Irritable Mood to Chest Pain me",
                "they did not mean to hurt me",
            ),
            ("it Pain so much", "it hurt so much"),
            ("a Sharp Pain fix", "a quick fix"),
            ("Im Tired Exhaustion", "Im very exhausted"),
            (
                "the Ventricular Dysfunction, Left behind",
                "the left behind",
            ),
            (
                "I know how Mental Depression can be",
                "I know how depression can be",
            ),
            ("&gt; you said &amp; I &lt;3", "> you said & I <3"),
            ("plain words stay", "plain words stay"),
        ] {
            assert_eq!(undo_cssrs_quirks(source), written);
        }
    }
}
