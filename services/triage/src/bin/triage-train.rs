//! Trains the learned second opinion (`rules/model.toml`) on labelled sets.
//!
//! ```text
//! cargo run --release -p nwd-triage --bin triage-train -- \
//!     --input services/triage/eval/dev.jsonl --input … --cv 5 --out services/triage/rules/model.toml
//! ```
//!
//! Features are what `Engine::learning_features` gives with the rules alone:
//! words, word pairs and character 4-grams of the normalised message (idioms
//! and negated matches blanked) and every rule that fired, with its level.
//! Each head (≥ moderate, ≥ high, imminent) is a logistic regression (Adam,
//! L2), classes balanced; the **imminent head's weights are kept
//! non-negative** (projected gradient), so no word can talk a message down
//! from imminent. Deterministic: same inputs, same model.
//!
//! `--cv K` or `--hold-out FILE…` first reports out-of-fold figures (the
//! rules plus a model trained without the fold) for a grid of thresholds, so
//! thresholds are chosen on messages — and with `--hold-out`, authors — the
//! model has not seen.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use nwd_proto::RiskLevel;
use nwd_triage::engine::MODEL_HEADS as HEADS;
use nwd_triage::engine::WINDOW_WORDS;
use nwd_triage::eval::{Figures, Tally};
use nwd_triage::{Engine, Feature};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "triage-train",
    about = "Trains the triage model on labelled messages"
)]
struct Args {
    /// Labelled JSONL files ({"id","text","level"} per line); repeat.
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Where to write the model (TOML).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The model's version.
    #[arg(long, default_value = "dev")]
    version: String,
    /// Report K-fold out-of-fold figures for a grid of thresholds first.
    #[arg(long)]
    cv: Option<usize>,
    /// Instead of K folds, hold out each of these input files in turn (its
    /// author unseen by the model that predicts it); repeat.
    #[arg(long)]
    hold_out: Vec<PathBuf>,

    /// A feature must occur in at least this many training messages.
    #[arg(long, default_value_t = 2)]
    min_df: usize,
    /// L2 penalty.
    #[arg(long, default_value_t = 0.003)]
    l2: f64,
    /// Gradient steps.
    #[arg(long, default_value_t = 400)]
    epochs: usize,
    /// Thresholds written into the model: moderate, high, imminent.
    #[arg(long, num_args = 3, default_values_t = [0.5, 0.5, 0.5])]
    thresholds: Vec<f64>,
    /// Thresholds in a message longer than one window (moderate, high,
    /// imminent); the same as `--thresholds` when absent.
    #[arg(long, num_args = 3)]
    long_thresholds: Option<Vec<f64>>,
    /// Also train on each window of a long message labelled low or
    /// moderate (see `windows_of`): no window of a message is riskier than
    /// the message, so each is a negative for the heads above its label.
    #[arg(long)]
    windows: bool,
    /// Thresholds tried for the ≥ high and imminent heads in the
    /// out-of-fold grid (≥ moderate: 0.5 and 0.7).
    #[arg(long, num_args = 1.., default_values_t = [0.3, 0.4, 0.5, 0.6, 0.7])]
    grid: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct Row {
    text: String,
    level: RiskLevel,
}

/// A trained head: bias and one weight per vocabulary feature.
type Head = (f64, Vec<f64>);

/// One training message: its feature indices (distinct) and labels.
struct Example {
    features: Vec<usize>,
    /// The features with an occurrence outside narration: the imminent
    /// head's evidence (see `each_word_feature`).
    present: Vec<usize>,
    level: RiskLevel,
    rules: RiskLevel,
    /// The lowest head this example teaches: a window of a moderate long
    /// message says nothing about the ≥ moderate head (the moderate part
    /// may be in another window), only that it is below high.
    from_head: RiskLevel,
    /// How much it counts (see `Texts`).
    weight: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.thresholds.iter().any(|t| !(*t > 0.0 && *t < 1.0)) {
        bail!("thresholds lie strictly between 0 and 1");
    }
    let engine = Engine::builtin_rules()?;
    let mut texts: Vec<Texts> = Vec::new();
    let mut names = Vec::new();
    for (file, path) in args.input.iter().enumerate() {
        let reader = BufReader::new(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        );
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let row: Row = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a labelled line", path.display(), n + 1))?;
            let (features, rules) = engine.learning_features(&row.text);
            if args.windows && row.level <= RiskLevel::Moderate {
                let from_head = if row.level == RiskLevel::Low {
                    RiskLevel::Moderate
                } else {
                    RiskLevel::High
                };
                let windows = windows_of(&features);
                let weight = 1.0 / windows.len().max(1) as f64;
                for keys in windows {
                    texts.push(Texts {
                        keys,
                        level: row.level,
                        rules,
                        from_head,
                        weight,
                        file,
                        window: true,
                    });
                }
            }
            let keys = features.into_iter().map(|f| (f.key, f.narrated)).collect();
            texts.push(Texts {
                keys,
                level: row.level,
                rules,
                from_head: RiskLevel::Moderate,
                weight: 1.0,
                file,
                window: false,
            });
        }
        names.push(
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} labelled messages from {}",
        texts.len(),
        names.join(", ")
    )?;
    let mut folds: Vec<Vec<usize>> = Vec::new();
    if let Some(k) = args.cv.filter(|&k| k > 1) {
        folds.extend((0..k).map(|f| (0..texts.len()).filter(|i| i % k == f).collect()));
    }
    let mut fold_names: Vec<String> = (0..folds.len()).map(|k| format!("fold {k}")).collect();
    for held in &args.hold_out {
        fold_names.push(
            held.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
        let Some(file) = args.input.iter().position(|p| p == held) else {
            bail!(
                "--hold-out {} is not one of the --input files",
                held.display()
            );
        };
        folds.push(
            (0..texts.len())
                .filter(|&i| texts.get(i).is_some_and(|t| t.file == file))
                .collect(),
        );
    }
    if !folds.is_empty() {
        cross_validate(&texts, &folds, &fold_names, &args, &mut out)?;
    }
    let (vocab, examples) = featurise(&texts, &(0..texts.len()).collect::<Vec<_>>(), args.min_df);
    let heads = train_heads(&examples, vocab.len(), &args);
    writeln!(out, "features: {} (min_df {})", vocab.len(), args.min_df)?;
    if let Some(path) = &args.out {
        let toml = render(&args, &names, &vocab, &heads);
        std::fs::write(path, toml).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// The vocabulary of the chosen messages (features in ≥ `min_df` of them)
/// and those messages as index lists.
fn featurise(texts: &[Texts], chosen: &[usize], min_df: usize) -> (Vec<String>, Vec<Example>) {
    let mut df: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in chosen {
        let Some(Texts { keys, .. }) = texts.get(i) else {
            continue;
        };
        let mut distinct: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        for k in distinct {
            *df.entry(k).or_default() += 1;
        }
    }
    let vocab: Vec<String> = df
        .into_iter()
        .filter(|&(_, n)| n >= min_df)
        .map(|(k, _)| k.to_owned())
        .collect();
    let examples = examples_in(texts, chosen, &vocab);
    (vocab, examples)
}

/// The chosen messages as examples over `vocab`.
fn examples_in(texts: &[Texts], chosen: &[usize], vocab: &[String]) -> Vec<Example> {
    chosen
        .iter()
        .filter_map(|&i| texts.get(i))
        .map(|t| example(vocab, t))
        .collect()
}

/// All three heads.
fn train_heads(examples: &[Example], dims: usize, args: &Args) -> Vec<Head> {
    HEADS
        .iter()
        .map(|&h| train(examples, dims, h, args))
        .collect()
}

fn example(vocab: &[String], t: &Texts) -> Example {
    let keys = &t.keys;
    let index = |narrated_too: bool| {
        let mut v: Vec<usize> = keys
            .iter()
            .filter(|(_, narrated)| narrated_too || !narrated)
            .filter_map(|(k, _)| vocab.binary_search(k).ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    Example {
        features: index(true),
        present: index(false),
        level: t.level,
        rules: t.rules,
        from_head: t.from_head,
        weight: t.weight,
    }
}

/// One labelled message, or one window of a long one.
struct Texts {
    /// Its features (key, narrated).
    keys: Vec<(String, bool)>,
    level: RiskLevel,
    /// The rules' level of the whole message.
    rules: RiskLevel,
    /// The lowest head it teaches (see `Example::from_head`).
    from_head: RiskLevel,
    /// 1 for a message, 1/n for each of a message's n windows (a long
    /// message teaches as much as a short one).
    weight: f64,
    /// Which `--input` file it came from.
    file: usize,
    /// A window of a long message: trained on, never predicted in the
    /// out-of-fold figures.
    window: bool,
}

/// The model's windows of a long message (`WINDOW_WORDS` words, by half),
/// as feature lists: a feature belongs to the window its first word is in.
/// Words are counted by their `w:` features, as the model reads them.
fn windows_of(features: &[Feature]) -> Vec<Vec<(String, bool)>> {
    let mut starts: Vec<usize> = features
        .iter()
        .filter(|f| f.key.starts_with("w:"))
        .map(|f| f.start)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    if starts.len() <= WINDOW_WORDS {
        return Vec::new();
    }
    let word_of = |at: usize| starts.partition_point(|&s| s <= at).saturating_sub(1);
    let stride = WINDOW_WORDS / 2;
    let mut out = Vec::new();
    let mut from = 0;
    while from < starts.len() {
        let keys = features
            .iter()
            .filter(|f| (from..from + WINDOW_WORDS).contains(&word_of(f.start)))
            .map(|f| (f.key.clone(), f.narrated))
            .collect();
        out.push(keys);
        if from + WINDOW_WORDS >= starts.len() {
            break;
        }
        from += stride;
    }
    out
}

/// One head: bias and weights (non-negative for the imminent head).
fn train(examples: &[Example], dims: usize, head: RiskLevel, args: &Args) -> Head {
    let examples: Vec<&Example> = examples.iter().filter(|e| e.from_head <= head).collect();
    let weight_of = |positive: bool| {
        examples
            .iter()
            .filter(|e| (e.level >= head) == positive)
            .map(|e| e.weight)
            .sum::<f64>()
    };
    let (positives, negatives) = (weight_of(true), weight_of(false));
    let n = (positives + negatives).max(1.0);
    // Balanced classes: each side weighs half.
    let w_pos = n / (2.0 * positives.max(1.0));
    let w_neg = n / (2.0 * negatives.max(1.0));
    let mut w = vec![0.0f64; dims];
    let mut bias = 0.0f64;
    let (mut m, mut v) = (vec![0.0f64; dims + 1], vec![0.0f64; dims + 1]);
    let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
    let mut grad = vec![0.0f64; dims + 1];
    for step in 1..=args.epochs {
        grad.iter_mut().for_each(|g| *g = 0.0);
        for e in &examples {
            let features = if head == RiskLevel::Imminent {
                &e.present
            } else {
                &e.features
            };
            let z = bias + features.iter().filter_map(|&f| w.get(f)).sum::<f64>();
            let p = sigmoid(z);
            let (y, c) = if e.level >= head {
                (1.0, w_pos * e.weight)
            } else {
                (0.0, w_neg * e.weight)
            };
            let g = c * (p - y) / n;
            for &f in features {
                if let Some(gf) = grad.get_mut(f) {
                    *gf += g;
                }
            }
            if let Some(gb) = grad.get_mut(dims) {
                *gb += g;
            }
        }
        let t = step as i32;
        for i in 0..=dims {
            let param = if i == dims {
                bias
            } else {
                w.get(i).copied().unwrap_or(0.0)
            };
            let g =
                grad.get(i).copied().unwrap_or(0.0) + if i == dims { 0.0 } else { args.l2 * param };
            let (Some(mi), Some(vi)) = (m.get_mut(i), v.get_mut(i)) else {
                continue;
            };
            *mi = b1 * *mi + (1.0 - b1) * g;
            *vi = b2 * *vi + (1.0 - b2) * g * g;
            let mh = *mi / (1.0 - b1.powi(t));
            let vh = *vi / (1.0 - b2.powi(t));
            let next = param - lr * mh / (vh.sqrt() + eps);
            if i == dims {
                bias = next;
            } else if let Some(wi) = w.get_mut(i) {
                // Only the imminent head is kept non-negative (see model.rs).
                *wi = if head < RiskLevel::Imminent {
                    next
                } else {
                    next.max(0.0)
                };
            }
        }
    }
    (bias, w)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The model's level for one example: the highest head over its
/// threshold, the imminent head only when the example is already at high
/// (rules or ≥ high head), as `Scorer::window_opinion` does.
fn predict(heads: &[Head], e: &Example, thresholds: &[f64]) -> Option<RiskLevel> {
    let reached: Vec<bool> = heads
        .iter()
        .zip(thresholds)
        .zip(HEADS)
        .map(|(((bias, w), t), head)| {
            let features = if head == RiskLevel::Imminent {
                &e.present
            } else {
                &e.features
            };
            sigmoid(bias + features.iter().filter_map(|&f| w.get(f)).sum::<f64>()) >= *t
        })
        .collect();
    let at_high = e.rules >= RiskLevel::High
        || HEADS
            .iter()
            .zip(&reached)
            .any(|(&head, &r)| head == RiskLevel::High && r);
    HEADS
        .iter()
        .zip(&reached)
        .rev()
        .find(|&(&head, &r)| r && (head < RiskLevel::Imminent || at_high))
        .map(|(&head, _)| head)
}

/// Out-of-fold figures: each fold (message indices) is predicted by a
/// model trained on every other message.
fn cross_validate(
    texts: &[Texts],
    held_out: &[Vec<usize>],
    fold_names: &[String],
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // For each fold: the fold model's heads and the fold's messages in its vocab.
    let mut folds: Vec<(Vec<Head>, Vec<Example>)> = Vec::new();
    for fold in held_out {
        let train_ix: Vec<usize> = (0..texts.len()).filter(|i| !fold.contains(i)).collect();
        let (vocab, examples) = featurise(texts, &train_ix, args.min_df);
        let heads = train_heads(&examples, vocab.len(), args);
        let whole: Vec<usize> = fold
            .iter()
            .copied()
            .filter(|&i| texts.get(i).is_some_and(|t| !t.window))
            .collect();
        folds.push((heads, examples_in(texts, &whole, &vocab)));
    }
    let k = held_out.len();
    let figures = |thresholds: &[f64]| -> Figures {
        let mut tally = Tally::default();
        for (heads, held) in &folds {
            for e in held {
                let model = predict(heads, e, thresholds).unwrap_or(RiskLevel::Low);
                tally.add(e.level, e.rules.max(model));
            }
        }
        tally.figures()
    };
    let show = |x: Option<f64>| x.map_or_else(|| "  n/a".to_owned(), |x| format!("{x:.3}"));
    let mut rules_only = Tally::default();
    for (_, held) in &folds {
        for e in held {
            rules_only.add(e.level, e.rules);
        }
    }
    writeln!(
        out,
        "out-of-fold figures over {k} folds (rules + model; thresholds moderate/high/imminent)"
    )?;
    writeln!(
        out,
        "{:>18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "thresholds", "accuracy", "under", "imm+high", "imminent", "low→imm", "imm prec"
    )?;
    let row = |out: &mut dyn Write, name: String, f: Figures| {
        writeln!(
            out,
            "{name:>18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            show(f.accuracy),
            show(f.under_triage),
            show(f.high_plus_recall),
            show(f.imminent_recall),
            show(f.low_as_imminent),
            show(f.imminent_precision)
        )
    };
    row(out, "rules only".to_owned(), rules_only.figures())?;
    for &tm in &[0.5, 0.7] {
        for &th in &args.grid {
            for &ti in &args.grid {
                let t = [tm, th, ti];
                row(out, format!("{tm}/{th}/{ti}"), figures(&t))?;
            }
        }
    }
    writeln!(
        out,
        "per held-out part at --thresholds {:?}:",
        args.thresholds
    )?;
    for ((heads, held), name) in folds.iter().zip(fold_names) {
        let mut tally = Tally::default();
        for e in held {
            let model = predict(heads, e, &args.thresholds).unwrap_or(RiskLevel::Low);
            tally.add(e.level, e.rules.max(model));
        }
        row(out, name.clone(), tally.figures())?;
    }
    Ok(())
}

fn render(args: &Args, names: &[String], vocab: &[String], heads: &[Head]) -> String {
    let mut weights: BTreeMap<&str, [f64; 3]> = BTreeMap::new();
    for (h, (_, w)) in heads.iter().enumerate() {
        for (i, &wi) in w.iter().enumerate() {
            let rounded = (wi * 10_000.0).round() / 10_000.0;
            if rounded != 0.0
                && let Some(key) = vocab.get(i)
                && let Some(entry) = weights.entry(key.as_str()).or_default().get_mut(h)
            {
                *entry = rounded;
            }
        }
    }
    let mut s = String::new();
    s.push_str("# Generated by triage-train; do not edit by hand. See docs/triage.md.\n");
    s.push_str(&format!("version = {:?}\n", args.version));
    s.push_str(&format!("trained_on = {names:?}\n"));
    s.push_str(&format!(
        "# min_df {}, l2 {}, epochs {}\n",
        args.min_df, args.l2, args.epochs
    ));
    for (i, ((level, (bias, _)), t)) in HEADS.iter().zip(heads).zip(&args.thresholds).enumerate() {
        let name = level.as_str();
        s.push_str(&format!(
            "\n[heads.{name}]\nbias = {:.4}\nthreshold = {t:?}\n",
            (bias * 10_000.0).round() / 10_000.0
        ));
        if let Some(long) = args.long_thresholds.as_ref().and_then(|l| l.get(i)) {
            s.push_str(&format!("long_threshold = {long:?}\n"));
        }
    }
    s.push_str("\n[weights]\n");
    for (key, w) in weights {
        s.push_str(&format!("{key:?} = [{:?}, {:?}, {:?}]\n", w[0], w[1], w[2]));
    }
    s
}
