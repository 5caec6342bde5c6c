//! The fast matchers find exactly what the lazy regexes find.
//!
//! `tests/props.rs` compares whole assessments (`assess` against
//! `assess_exhaustive`); these tests compare every matcher's matches, so a
//! difference cannot hide behind context or levels.

use proptest::prelude::*;

use super::*;

fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::builtin().expect("builtin rulebook compiles"))
}

/// The texts of every eval set; of the long ones (`*-long*`: web-chat
/// length) only with `with_long`.
fn eval_texts(with_long: bool) -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/eval");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let long = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("-long"));
        if path.extension().is_some_and(|e| e == "jsonl") && (with_long || !long) {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                texts.push(v["text"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(texts.len() > 600);
    texts
}

fn lazy(m: &Matcher, hay: &[u8]) -> Vec<(usize, usize)> {
    m.lazy()
        .unwrap()
        .find_iter(hay)
        .map(|m| (m.start(), m.end()))
        .collect()
}

/// Every matcher of `e` on `text` (normalised): the whole text from the
/// prefilter's starts, and slices (as clauses are searched) from the starts
/// inside them, against the lazy regex.
#[track_caller]
fn check(e: &Engine, text: &str) {
    let n = normalise::normalise(
        text,
        Lexicon {
            tokens: &e.tokens,
            suffixes: &e.suffixes,
        },
    );
    let hay = &n.text;
    let starts = e.prefilter.scan(hay, factors::longest_word_run(hay));
    let len = hay.len();
    let slices = [
        (0, len),
        (len / 3, len),
        (0, len / 2),
        (len / 4, 3 * len / 4),
    ];
    for id in 0..e.matcher_count() {
        let Some(m) = e.matcher(id) else {
            continue;
        };
        for &(s, t) in &slices {
            let slice = &hay[s..t];
            let mut got = Vec::new();
            if let Some(within) = starts.within(id, s, t) {
                m.find_from(slice, &within, &mut got);
            }
            assert_eq!(
                got,
                lazy(m, slice),
                "matcher {id} `{}` on {:?}[{s}..{t}]",
                m.source(),
                String::from_utf8_lossy(hay)
            );
            let mut all = Vec::new();
            m.find_all(slice, false, &mut all);
            assert_eq!(all, got, "matcher {id} without starts");
        }
    }
}

#[test]
fn every_matcher_agrees_on_the_eval_texts() {
    let e = engine();
    // Long texts are compared as whole assessments in tests/props.rs; here
    // every matcher runs its lazy regex over four slices of every text,
    // which for them would double the test's time.
    let texts = eval_texts(false);
    for (i, t) in texts.iter().enumerate() {
        check(e, t);
        // A doubled text (every third, to keep the test under a minute):
        // the second copy's matches start past the first's.
        if i % 3 == 0 {
            check(e, &format!("{t} {}", t.to_uppercase()));
        }
    }
    // Long texts: many literal hits, start ranges grouped by matcher.
    for chunk in texts.chunks(12) {
        check(e, &chunk.join("\n"));
    }
}

/// Words that start, end and cross many patterns.
const VOCAB: &[&str] = &[
    "i",
    "im",
    "not",
    "my",
    "brother",
    "he",
    "she",
    "took",
    "all",
    "pills",
    "kill",
    "myself",
    "want",
    "to",
    "die",
    "going",
    "tonight",
    "used",
    "again",
    "after",
    "rehab",
    "years",
    "ago",
    "lol",
    "killing",
    "me",
    "dying",
    "of",
    "the",
    "a",
    "bottle",
    "gun",
    "rope",
    "bridge",
    "no",
    "quiero",
    "morir",
    "me",
    "voy",
    "a",
    "matar",
    "pastillas",
    "todas",
    "las",
    "30",
    "mg",
    "clean",
    "for",
    "6",
    "months",
    "what",
    "if",
    "but",
    ",",
    ".",
    "?",
    "and",
    "now",
    "skull",
    "pill",
    "cant",
    "wake",
    "up",
    "blue",
    "lips",
    "not",
    "breathing",
    "better",
    "off",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCAB), 0..80).prop_map(|w| w.join(" "))
}

/// The model's compiled vocabulary hits exactly the rows the feature keys
/// of each word hit (the keys are what training saw), in the same order,
/// with the same spans and the same voices, on `text` normalised as the
/// engine does, with its addressed stretches hidden.
#[track_caller]
fn check_words(e: &Engine, text: &str) {
    let model = e.model().expect("the builtin engine has a model");
    let n = normalise::normalise(
        text,
        Lexicon {
            tokens: &e.tokens,
            suffixes: &e.suffixes,
        },
    );
    let hidden = voice::addressed(&n.text);
    let [compiled, keyed] = model.hits_both_ways(&n.text, &hidden);
    assert_eq!(compiled, keyed, "{:?}", String::from_utf8_lossy(&n.text));
}

#[test]
fn compiled_words_hit_what_their_keys_hit() {
    let e = engine();
    let texts = eval_texts(true);
    assert!(texts.len() > 5_000, "{}", texts.len());
    for t in &texts {
        check_words(e, t);
    }
    // Unknown words, digits, repeated 4-grams, one-letter words.
    for t in [
        "zzqx aaaaaa 1234 b2b x",
        "",
        "a",
        "__ _a_",
        "qwertyuiopasdfgh",
    ] {
        check_words(e, t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_matcher_agrees_on_random_text(
        text in prop_oneof![soup(), any::<String>(), "[a-z .,]{0,300}"],
    ) {
        check(engine(), &text);
    }

    #[test]
    fn compiled_words_hit_what_their_keys_hit_on_random_text(
        text in prop_oneof![soup(), any::<String>(), "[a-z0-9 .,]{0,600}"],
    ) {
        check_words(engine(), &text);
    }
}

/// A rulebook whose patterns take every path: an anchored DFA, a pattern
/// without literals (always runs, unanchored DFA), one whose DFA is over the
/// size limit (lazy regex), and one whose walks can be long (capped).
const PATHS: &str = r#"
version = "paths"

[[rule]]
id = "anchored"
label = "Anchored"
level = "high"
patterns = ['took (all|every) (my|the) pills']

[[rule]]
id = "no.literals"
label = "No literals"
level = "moderate"
patterns = ['[a-z]{25,}']

[[rule]]
id = "too.big"
label = "DFA too big"
level = "moderate"
patterns = ['(a|b)*a(a|b){20}']

[[rule]]
id = "long.walk"
label = "Unbounded walk"
level = "low"
patterns = ['xq.*zz']
"#;

#[test]
fn every_path_agrees_with_the_reference() {
    let e = Engine::from_rulebook_str(PATHS, "paths.toml").unwrap();
    let stats = e.stats();
    assert_eq!(stats.always, 1, "{stats:?}");
    assert_eq!(stats.lazy_fallbacks, 1, "{stats:?}");
    let long_walk = format!("xq {} zz xq yy", "abc ".repeat(200));
    let texts = [
        "i took all my pills",
        "supercalifragilisticexpialidocious words",
        "abababababababababababababababab a b",
        long_walk.as_str(),
        "xq zz",
        "",
    ];
    for t in texts {
        assert_eq!(e.assess(t), e.assess_exhaustive(t), "{t:?}");
        check(&e, t);
    }
    assert_eq!(e.assess(&long_walk).level, RiskLevel::Low);
    assert_eq!(e.assess(&long_walk).reasons.len(), 1);
}

/// Where a combination fires, the plain way: every match in match order
/// as the anchor, every other match checked against it.
fn combo_span_reference(
    all: u64,
    tagged: &[(u64, usize, usize)],
    reach: Reach,
) -> Option<(usize, usize)> {
    let candidates = || tagged.iter().filter(|(t, _, _)| t & all != 0);
    for &(_, anchor, _) in candidates() {
        let (mut covered, mut s, mut e) = (0, usize::MAX, 0);
        for &(t, ms, me) in candidates() {
            if ms >= anchor && me <= reach.limit(anchor, ms) {
                covered |= t & all;
                s = s.min(ms);
                e = e.max(me);
            }
        }
        if covered == all {
            return Some((s, e));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn combo_spans_are_found_as_the_plain_way_finds_them(
        matches in prop::collection::vec((1u64..16, 0usize..1_500, 1usize..60), 0..60),
        all in 1u64..16,
        window in prop_oneof![Just(300usize), 20usize..400],
        edge in prop_oneof![Just(usize::MAX), 0usize..1_500],
    ) {
        let tagged: Vec<(u64, usize, usize)> =
            matches.iter().map(|&(t, s, len)| (t, s, s + len)).collect();
        let reach = Reach { window, edge };
        prop_assert_eq!(
            combo_span(all, &Tagged::new(tagged.clone()), reach),
            combo_span_reference(all, &tagged, reach)
        );
    }
}
