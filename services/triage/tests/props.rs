//! Property tests of the engine with the builtin rulebook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use nwd_proto::RiskLevel;
use nwd_triage::Engine;
use proptest::prelude::*;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::builtin().unwrap())
}

/// Risky phrases (imminent or high on their own, present tense, no context cues).
const RISKY: &[&str] = &[
    "I took all my pills",
    "he won't wake up",
    "she is not breathing",
    "her lips are blue",
    "I'm going to kill myself tonight",
    "I have a plan to end my life",
    "I tried to kill myself last week",
    "just got out of rehab and used again",
    "me tomé todas las pastillas",
    "mi hermano no despierta",
    "me voy a matar",
    "I'm standing on the bridge",
    "tengo un plan",
    "im gonna kms",
    "💊💊💊💀",
];

/// Words that exercise the context paths (negation, third person, past, idioms).
const VOCAB: &[&str] = &[
    "I",
    "i'm",
    "not",
    "never",
    "no",
    "my",
    "brother",
    "he",
    "she",
    "used",
    "to",
    "years",
    "ago",
    "kill",
    "myself",
    "die",
    "want",
    "pills",
    "took",
    "all",
    "tonight",
    "now",
    "what",
    "if",
    "lol",
    "is",
    "killing",
    "me",
    "dying",
    "quiero",
    "morir",
    "me",
    "muero",
    "de",
    "risa",
    "y",
    "pero",
    "but",
    ",",
    ".",
    "!",
    "?",
    "💊",
    "💀",
    "😭",
    "soooo",
    "kms",
    "od",
    "o.d.",
    "überdose",
    "\u{301}",
    "\u{202E}",
    "\n",
    "\t",
    "\u{0}",
    "hope",
    "less",
    "ya",
    "no",
    "aguanto",
    // The addressed voice (past the first 48 words).
    "you",
    "your",
    "op",
    "tú",
    "te",
    "please",
    "dont do it",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCAB), 0..60).prop_map(|w| w.join(" "))
}

/// Longer than the model's window (48 words), where text written to
/// someone else is discounted.
fn long_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCAB), 45..110).prop_map(|w| w.join(" "))
}

/// Words as the engine counts them, roughly (runs of letters and digits);
/// `MARGIN` covers what normalisation adds or removes.
fn words(text: &str) -> usize {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

/// Whether appending took the message across the model's first window (48
/// words), give or take what normalisation changes.
fn crosses_the_first_window(before: &str, after: &str) -> bool {
    const WINDOW: usize = 48;
    const MARGIN: usize = 8;
    words(before) <= WINDOW + MARGIN && words(after) + MARGIN > WINDOW
}

/// Soup around the first window's edge with no second-person word.
fn soup_without_you() -> impl Strategy<Value = String> {
    let vocab: Vec<&'static str> = VOCAB
        .iter()
        .copied()
        .filter(|w| {
            !matches!(
                *w,
                "you" | "your" | "op" | "tú" | "te" | "please" | "dont do it"
            )
        })
        .collect();
    prop::collection::vec(prop::sample::select(vocab), 38..52).prop_map(|w| w.join(" "))
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..1700).prop_map(|c| c.into_iter().collect()),
        soup(),
        long_soup(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_string_gets_a_well_formed_assessment(text in any_text()) {
        let a = engine().assess(&text);
        let chars = text.chars().count();
        prop_assert!((0.0..=1.0).contains(&a.score));
        prop_assert_eq!(&a.rulebook_version, engine().version());
        let top = a.reasons.iter().map(|r| r.level).max().unwrap_or(RiskLevel::Low);
        prop_assert_eq!(a.level, top);
        for r in &a.reasons {
            prop_assert!(r.start <= r.end && r.end <= chars, "{:?} in {} chars", r, chars);
        }
    }

    #[test]
    fn the_prefilter_changes_nothing(text in any_text()) {
        prop_assert_eq!(engine().assess(&text), engine().assess_exhaustive(&text));
    }

    /// Appending never lowers the level — on either side of the model's
    /// first window. Crossing it is the one known exception (below).
    #[test]
    fn appending_a_risky_phrase_never_lowers_the_level(
        text in any_text(),
        phrase in prop::sample::select(RISKY),
    ) {
        let longer = format!("{text} {phrase}");
        prop_assume!(!crosses_the_first_window(&text, &longer));
        let before = engine().assess(&text).level;
        let after = engine().assess(&longer).level;
        prop_assert!(after >= before, "{:?} + {:?}: {} -> {}", text, phrase, before, after);
    }

    /// Known gap (docs/triage.md, "The first window's edge"): a message
    /// that grows past 48 words is read with the long-text gates, so the
    /// model's imminent on a mostly narrated first window can become high.
    /// Without a second-person word (the addressed gates), it never drops
    /// below high, and never below what the rules say.
    #[test]
    fn crossing_the_first_window_never_drops_below_high(
        text in soup_without_you(),
        phrase in prop::sample::select(RISKY),
    ) {
        let longer = format!("{text} {phrase}");
        let before = engine().assess(&text).level;
        let after = engine().assess(&longer).level;
        prop_assert!(
            after >= before.min(RiskLevel::High),
            "{:?} + {:?}: {} -> {}", text, phrase, before, after
        );
    }

    #[test]
    fn a_risky_phrase_after_a_sentence_break_is_at_least_high(
        text in any_text(),
        phrase in prop::sample::select(RISKY),
    ) {
        let after = engine().assess(&format!("{text}\n{phrase}")).level;
        prop_assert!(after >= RiskLevel::High, "{:?} + {:?}: {}", text, phrase, after);
    }
}

#[test]
fn the_prefilter_changes_nothing_on_the_eval_sets() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/eval");
    let mut n = 0;
    for file in [
        "dev.jsonl",
        "heldout.jsonl",
        "heldout2.jsonl",
        "heldout3.jsonl",
        "round2-long.jsonl",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["text"].as_str().unwrap();
            for variant in [t.to_owned(), t.to_uppercase(), format!("{t} {t}")] {
                assert_eq!(
                    engine().assess(&variant),
                    engine().assess_exhaustive(&variant),
                    "{variant:?}"
                );
                n += 1;
            }
        }
    }
    assert!(n > 1000);
}

/// Found by the property above: a trailing "no" negates the appended
/// "tengo un plan", and the negated plan read as "no plan" lowered the
/// active ideation before it (and, as a rule feature, the model's ≥ high
/// head). A negated plan is not a "no plan" statement.
#[test]
fn a_trailing_negation_does_not_let_a_risky_phrase_lower_the_level() {
    for base in [
        "i want to kill myself. im no",
        "myself all die ya ago now 💀 i'm no",
    ] {
        let before = engine().assess(base).level;
        let after = engine().assess(&format!("{base} tengo un plan")).level;
        assert!(after >= before, "{base:?}: {before} -> {after}");
    }
}

#[test]
fn every_risky_phrase_is_at_least_high_alone() {
    for phrase in RISKY {
        assert!(
            engine().assess(phrase).level >= RiskLevel::High,
            "{phrase}: {:?}",
            engine().assess(phrase)
        );
    }
}

/// The case the property test found (2026-12-07): 45 words, mostly
/// narration after "ago", called imminent by the model as an SMS; the same
/// text with "he won't wake up" appended is 50 words and is read with the
/// long-text gate, which keeps the model's imminent for a window in the
/// writer's own voice. It stays at high, never lower. (Model 2026.12.3
/// rates the 45-word text itself high, so today it does not drop at all.)
#[test]
fn the_first_windows_edge_keeps_at_least_high() {
    let text = "I brother i'm i'm I hope I I not I I not I I not all I I not I I not took I I not I I ago I I my I my I if he I I überdose I I not I I";
    let before = engine().assess(text).level;
    let after = engine().assess(&format!("{text} he won't wake up")).level;
    assert!(before >= RiskLevel::High, "{before}");
    assert!(after >= RiskLevel::High, "{after}");
}
