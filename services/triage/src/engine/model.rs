//! The learned second opinion: a linear model over the words of a message
//! and the rules that fired, trained on the labelled sets (`triage-train`)
//! and stored as data next to the rulebook (`rules/model.toml`).
//!
//! The rules say *why*; they miss risk that is worded in a way no rule
//! foresaw ("wrote a note. its in my wallet. havent decided when"). The model
//! only ever **raises** the rules' level, never lowers it. Words may count
//! against the ≥ moderate and ≥ high heads ("lol", "years ago", "shaving"),
//! but the imminent head's weights are non-negative: more words never take a
//! message out of imminent, and a phrase the rules rate high or imminent
//! keeps the message at least there, so adding a risky phrase never lowers
//! the level.
//!
//! Three heads share the features, one per threshold of the ordinal scale:
//! P(level ≥ moderate), P(level ≥ high), P(level = imminent). The model's
//! level is the highest head whose probability reaches its threshold.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use nwd_proto::RiskLevel;
use serde::Deserialize;
use toml::Spanned;

use super::normalise::{TokenHasher, TokenMap};
use super::rulebook::{RulebookError, line_of};
use super::voice::{Addressed, Voice};

/// The model shipped with the service.
pub const BUILTIN_MODEL: &str = include_str!("../../rules/model.toml");
/// How the builtin model is named in errors and logs.
pub const BUILTIN_MODEL_NAME: &str = "services/triage/rules/model.toml (builtin)";

/// The levels the heads raise to, in the order of a weight triple and of
/// `[heads.*]` (`moderate`, `high`, `imminent`).
pub const HEADS: [RiskLevel; 3] = [RiskLevel::Moderate, RiskLevel::High, RiskLevel::Imminent];
/// Positions in [`HEADS`].
const HIGH_HEAD: usize = 1;
const IMMINENT_HEAD: usize = 2;

/// One head: `P = sigmoid(bias + Σ weights)`, raising at `threshold`
/// (at `long_threshold` in a message longer than one window).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Head {
    bias: f32,
    threshold: f32,
    long_threshold: f32,
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Model {
    version: String,
    heads: [Head; 3],
    /// Feature → row of `rows`.
    index: TokenMap<u32>,
    /// Character 4-gram (`c:` + four bytes, little-endian) → row: most
    /// features of a message are 4-grams, so they get a map keyed by one
    /// integer.
    grams: HashMap<u32, u32, BuildHasherDefault<TokenHasher>>,
    /// Weights per head.
    rows: Vec<[f32; 3]>,
    /// The words the model reads whole, compiled: see [`Vocabulary`].
    vocab: Vocabulary,
}

/// Every word of a `w:` or `b:` feature and every word with a voice, with
/// the rows of its own features worked out once at load: a message's
/// known words then cost one lookup each (and a pair one integer lookup)
/// instead of a lookup per 4-gram, word and pair key (`Scorer::word`). A
/// word outside it has no `w:` or `b:` feature and no voice by
/// construction, only 4-grams.
#[derive(Debug, Clone, Default)]
struct Vocabulary {
    /// Word → id.
    ids: TokenMap<u32>,
    /// Per id: the range of `rows` holding the rows of its 4-grams (in
    /// order, repeats kept) and then its `w:` row — the rows the word's
    /// keys ([`word_keys`]) would hit, in their order.
    own: Vec<(u32, u32)>,
    rows: Vec<u32>,
    /// Per id: its voice ([`super::voice::of`]). Every word with a voice is
    /// in the vocabulary, so a word outside it has none.
    voices: Vec<Option<Voice>>,
    /// `b:` features by their two words' ids (`first << 32 | second`).
    pairs: HashMap<u64, u32, BuildHasherDefault<TokenHasher>>,
}

impl Vocabulary {
    fn compile(
        index: &TokenMap<u32>,
        grams: &HashMap<u32, u32, BuildHasherDefault<TokenHasher>>,
    ) -> Vocabulary {
        let mut v = Vocabulary::default();
        // Only keys the walker can produce: lowercase letters and digits.
        let word_like = |w: &[u8]| {
            !w.is_empty()
                && w.iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        let id_of = |v: &mut Vocabulary, word: &[u8]| -> u32 {
            if let Some(&id) = v.ids.get(word) {
                return id;
            }
            let id = u32::try_from(v.own.len()).unwrap_or(u32::MAX);
            let from = v.rows.len();
            for_each_gram(word, |g| {
                if let Some(&row) = grams.get(&g) {
                    v.rows.push(row);
                }
            });
            let mut key = b"w:".to_vec();
            key.extend_from_slice(word);
            if let Some(&row) = index.get(key.as_slice()) {
                v.rows.push(row);
            }
            let range = (
                u32::try_from(from).unwrap_or(u32::MAX),
                u32::try_from(v.rows.len()).unwrap_or(u32::MAX),
            );
            v.own.push(range);
            v.voices.push(super::voice::of(word));
            v.ids.insert(word.into(), id);
            id
        };
        // In key order, so ids do not depend on the map's iteration order.
        let mut keys: Vec<(&[u8], u32)> = index.iter().map(|(k, &r)| (&k[..], r)).collect();
        keys.sort_unstable();
        for word in super::voice::voiced_words() {
            id_of(&mut v, word);
        }
        for (key, row) in keys {
            if let Some(word) = key.strip_prefix(b"w:").filter(|w| word_like(w)) {
                id_of(&mut v, word);
            } else if let Some(pair) = key.strip_prefix(b"b:") {
                let mut parts = pair.splitn(2, |&b| b == b' ');
                if let (Some(a), Some(b)) = (parts.next(), parts.next())
                    && word_like(a)
                    && word_like(b)
                {
                    let (a, b) = (id_of(&mut v, a), id_of(&mut v, b));
                    v.pairs.insert(u64::from(a) << 32 | u64::from(b), row);
                }
            }
        }
        v
    }

    /// The rows of a vocabulary word's own features.
    fn own_rows(&self, id: u32) -> &[u32] {
        self.own
            .get(id as usize)
            .and_then(|&(from, to)| self.rows.get(from as usize..to as usize))
            .unwrap_or_default()
    }
}

/// Calls `f` with each character 4-gram of `word` padded with `_`, as the
/// integer [`gram`] makes of its `c:` key, in order.
fn for_each_gram(word: &[u8], mut f: impl FnMut(u32)) {
    let n = word.len() + 2;
    let at = |k: usize| match k {
        0 => b'_',
        k if k == n - 1 => b'_',
        k => word.get(k - 1).copied().unwrap_or(b'_'),
    };
    for g in 0..n.saturating_sub(3) {
        f(u32::from_le_bytes([at(g), at(g + 1), at(g + 2), at(g + 3)]));
    }
}

/// A feature of one message: its key and the normalised byte span it
/// covers (empty for rule features).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub key: String,
    pub start: usize,
    pub end: usize,
    /// In narration (advice to others, reported or quoted speech, the past;
    /// see [`each_word`]): a window of a long text with more than
    /// three narrated words in ten may not be called imminent by the model
    /// (see `own_voice`).
    pub narrated: bool,
}

/// What the model says about one message (or one window of it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Opinion {
    /// The highest head that reached its threshold.
    pub level: Option<RiskLevel>,
    /// P per head.
    pub p: [f32; 3],
    /// The word feature that added most to the raising head, as a
    /// normalised byte span.
    pub span: Option<(usize, usize)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    version: Spanned<String>,
    /// Which labelled sets it was trained on (documentation only).
    #[serde(default)]
    #[allow(dead_code)]
    trained_on: Vec<String>,
    heads: RawHeads,
    #[serde(default)]
    weights: BTreeMap<String, Spanned<Vec<f32>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeads {
    moderate: Spanned<RawHead>,
    high: Spanned<RawHead>,
    imminent: Spanned<RawHead>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    bias: f32,
    threshold: f32,
    /// The threshold in a message longer than one window; the same as
    /// `threshold` when absent. A window of a long message holds more
    /// known features than most SMS, and with non-negative imminent
    /// weights its score grows with its length: a stricter threshold is
    /// the long text's calibration (docs/triage.md).
    #[serde(default)]
    long_threshold: Option<f32>,
}

impl Model {
    /// Parses and checks a model file; errors name the file, the line and
    /// the feature or head.
    pub fn from_str(text: &str, file: &str) -> Result<Model, RulebookError> {
        let raw: RawModel = toml::from_str(text).map_err(|e| RulebookError::Parse {
            file: file.to_owned(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let err = |span: std::ops::Range<usize>, what: &str, problem: &str| RulebookError::Rule {
            file: file.to_owned(),
            line: line_of(text, span.start),
            rule: what.to_owned(),
            problem: problem.to_owned(),
        };
        let version = raw.version.get_ref().trim().to_owned();
        if version.is_empty() {
            return Err(err(raw.version.span(), "version", "empty version"));
        }
        let mut heads = [Head {
            bias: 0.0,
            threshold: 1.0,
            long_threshold: 1.0,
        }; 3];
        let named = [
            ("heads.moderate", &raw.heads.moderate),
            ("heads.high", &raw.heads.high),
            ("heads.imminent", &raw.heads.imminent),
        ];
        for (slot, (name, head)) in heads.iter_mut().zip(named) {
            let h = head.get_ref();
            if !h.bias.is_finite() {
                return Err(err(head.span(), name, "bias is not a finite number"));
            }
            if !(h.threshold > 0.0 && h.threshold < 1.0) {
                return Err(err(
                    head.span(),
                    name,
                    "threshold must lie strictly between 0 and 1",
                ));
            }
            let long_threshold = h.long_threshold.unwrap_or(h.threshold);
            if !(long_threshold > 0.0 && long_threshold < 1.0) {
                return Err(err(
                    head.span(),
                    name,
                    "long_threshold must lie strictly between 0 and 1",
                ));
            }
            *slot = Head {
                bias: h.bias,
                threshold: h.threshold,
                long_threshold,
            };
        }
        let mut index = TokenMap::default();
        let mut grams = HashMap::default();
        let mut rows = Vec::with_capacity(raw.weights.len());
        for (key, w) in &raw.weights {
            let ok_key = ["w:", "b:", "c:", "r:"].iter().any(|p| key.starts_with(p))
                && key.len() > 2
                && key.is_ascii();
            if !ok_key {
                return Err(err(
                    w.span(),
                    key,
                    "a feature is `w:<word>`, `b:<word> <word>` or `r:<rule>`, in ASCII",
                ));
            }
            let v = w.get_ref();
            let [a, b, c] = v.as_slice() else {
                return Err(err(w.span(), key, "a weight is [moderate, high, imminent]"));
            };
            if [a, b, c].iter().any(|x| !x.is_finite()) {
                return Err(err(w.span(), key, "weights are finite numbers"));
            }
            if *c < 0.0 {
                return Err(err(
                    w.span(),
                    key,
                    "imminent weights are not negative (no word talks a message down from imminent)",
                ));
            }
            let row =
                u32::try_from(rows.len()).map_err(|_| err(w.span(), key, "too many features"))?;
            rows.push([*a, *b, *c]);
            match gram(key.as_bytes()) {
                Some(g) => grams.insert(g, row),
                None => index.insert(key.as_bytes().into(), row),
            };
        }
        let vocab = Vocabulary::compile(&index, &grams);
        Ok(Model {
            version,
            heads,
            index,
            grams,
            rows,
            vocab,
        })
    }

    /// The builtin model.
    pub fn builtin() -> Result<Model, RulebookError> {
        Model::from_str(BUILTIN_MODEL, BUILTIN_MODEL_NAME)
    }

    /// Reads and checks a model file.
    pub fn load(path: &std::path::Path) -> Result<Model, RulebookError> {
        let (text, name) = super::rulebook::read(path)?;
        Model::from_str(&text, &name)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of features with a weight.
    pub fn feature_count(&self) -> usize {
        self.rows.len()
    }

    /// Starts scoring one message: feed it features, then
    /// [`Scorer::opinion`].
    pub(crate) fn scorer(&self) -> Scorer<'_> {
        Scorer {
            model: self,
            hits: Vec::new(),
            keyed: Vec::new(),
            words: 0,
            persons: Vec::new(),
            yous: Vec::new(),
            last: None,
        }
    }

    /// Scores one message's features (each counted once), the rules having
    /// said `rules`.
    #[cfg(test)]
    pub(crate) fn opinion(&self, features: &[Feature], rules: RiskLevel) -> Opinion {
        let mut scorer = self.scorer();
        for f in features {
            scorer.add(f.key.as_bytes(), 0, f.start, f.end, f.narrated);
        }
        scorer.opinion(rules)
    }
}

/// The model reads a message in windows of this many words, overlapping
/// by half, and takes the riskiest: a long text is as risky as its riskiest
/// SMS-length stretch, not the sum of all its words (SMS-length messages
/// are one window).
pub const WINDOW_WORDS: usize = 48;

/// The features of one message that the model knows, as they come.
pub(crate) struct Scorer<'m> {
    model: &'m Model,
    /// (word index, weight row, start, end, narrated) per known feature
    /// occurrence of the words read ([`Scorer::word`]), in word order.
    hits: Vec<Hit>,
    /// The same for features given by key ([`Scorer::add`]: the rules'
    /// features, after the words), in any order.
    keyed: Vec<Hit>,
    /// Words in the message (one past the last word index fed).
    words: usize,
    /// Word indices of words naming the writer or a third person as the
    /// subject ("i", "me", "my", "he", "she", "yo" …), in order.
    persons: Vec<usize>,
    /// Word indices of second-person words ("you", "your", "tú" …), read or
    /// not, in order.
    yous: Vec<usize>,
    /// The vocabulary id of the last word read by [`Scorer::word`], for
    /// its pair with the next.
    last: Option<u32>,
}

/// One known feature occurrence: (word index, weight row, start, end, narrated).
pub(crate) type Hit = (usize, u32, usize, usize, bool);

impl Scorer<'_> {
    pub(crate) fn add(
        &mut self,
        key: &[u8],
        token: usize,
        start: usize,
        end: usize,
        narrated: bool,
    ) {
        self.words = self.words.max(token + 1);
        let row = match gram(key) {
            Some(g) => self.model.grams.get(&g),
            None => self.model.index.get(key),
        };
        if let Some(&row) = row {
            self.keyed.push((token, row, start, end, narrated));
        }
    }

    /// Makes room for the hits of a message of `words` words (a known word
    /// brings about six: its 4-grams, itself, its pair).
    pub(crate) fn reserve(&mut self, words: usize) {
        self.hits.reserve(words.saturating_mul(8));
    }

    /// Reads one word: the same hits as [`Scorer::add`] with each key
    /// [`word_keys`] makes of it, in the same order, from the
    /// compiled [`Vocabulary`] (the test `compiled_words_hit_what_their_keys_hit`).
    ///
    /// With `voices`, also notes the word's voice ([`Scorer::voice`]),
    /// hidden or not.
    pub(crate) fn word(&mut self, w: &Word<'_>, voices: bool) {
        let vocab = &self.model.vocab;
        let id = vocab.ids.get(w.text).copied();
        if voices
            && let Some(v) = id.and_then(|id| vocab.voices.get(id as usize).copied().flatten())
        {
            self.voice(v, w.token);
        }
        if w.hidden {
            self.last = None;
            return;
        }
        self.words = self.words.max(w.token + 1);
        let hit = |row: u32| (w.token, row, w.start, w.end, w.narrated);
        match id {
            Some(id) => self.hits.extend(vocab.own_rows(id).iter().map(|&r| hit(r))),
            None => {
                let (grams, hits) = (&self.model.grams, &mut self.hits);
                for_each_gram(w.text, |g| {
                    if let Some(&row) = grams.get(&g) {
                        hits.push(hit(row));
                    }
                });
            }
        }
        if let (Some((ps, _)), Some(a), Some(b)) = (w.prev, self.last, id)
            && let Some(&row) = vocab.pairs.get(&(u64::from(a) << 32 | u64::from(b)))
        {
            self.hits.push((w.token, row, ps, w.end, w.narrated));
        }
        self.last = id;
    }

    /// Notes the voice of a word at word index `token` (words come in
    /// order): a person ([`Voice::Person`]) or the one addressed
    /// ([`Voice::You`]). Addressed words the model does not read still
    /// count, at the index the next read word will have.
    pub(crate) fn voice(&mut self, voice: Voice, token: usize) {
        match voice {
            Voice::Person => self.persons.push(token),
            Voice::You => self.yous.push(token),
        }
    }

    /// The riskiest window's opinion: the first whose top raised level is
    /// highest, by probability of that head. `rules` is the rules' level of
    /// the whole message (see [`Scorer::window_opinion`] for its use).
    pub(crate) fn opinion(mut self, rules: RiskLevel) -> Opinion {
        // Word features come in word order; keyed ones (the rules') go
        // after the words' own at their word index.
        if !self.keyed.is_empty() {
            self.keyed.sort_by_key(|h| h.0);
            let words = std::mem::take(&mut self.hits);
            self.hits.reserve(words.len() + self.keyed.len());
            let mut from = 0;
            for &k in &self.keyed {
                let rest = words.get(from..).unwrap_or_default();
                let to = from + rest.partition_point(|h| h.0 <= k.0);
                self.hits
                    .extend_from_slice(words.get(from..to).unwrap_or_default());
                self.hits.push(k);
                from = to;
            }
            self.hits
                .extend_from_slice(words.get(from..).unwrap_or_default());
        }
        let last = self.hits.last().map_or(0, |h| h.0);
        let stride = WINDOW_WORDS / 2;
        let bits = self.model.rows.len().div_ceil(64);
        let mut seen = vec![0u64; bits];
        let mut firsts = Vec::new();
        let window = |from: usize| {
            let lo = self.hits.partition_point(|h| h.0 < from);
            let hi = self.hits.partition_point(|h| h.0 < from + WINDOW_WORDS);
            self.hits.get(lo..hi).unwrap_or_default()
        };
        // A message longer than one window (a web-chat message, a story)
        // may be raised to imminent by the model only in a window written
        // in the person's own voice, whatever the rules said: risk words in
        // a long story, a quoted post or advice to someone else add up in
        // every window, and an imminent rings every counsellor on shift.
        let long = self.words > WINDOW_WORDS;
        // Past one window, the model may raise above moderate only in a
        // window not written to someone else (`not_addressed`), unless the
        // rules already rate the message high.
        let open = !long || rules >= RiskLevel::High;
        let (persons, yous) = (&self.persons, &self.yous);
        let high_ok = |from: usize| open || not_addressed(persons, yous, from);
        let mut scan = |high: bool| {
            let mut best =
                self.window_opinion(window(0), rules, high && high_ok(0), &mut seen, &mut firsts);
            let raised = |o: &Opinion| o.level.is_some_and(|l| l >= RiskLevel::High);
            let mut agreeing = if raised(&best) { AGREEING_WINDOWS } else { 0 };
            let mut from = stride;
            while from + stride <= last {
                let hits = window(from);
                let o =
                    self.window_opinion(hits, rules, high && high_ok(from), &mut seen, &mut firsts);
                agreeing += usize::from(raised(&o));
                if (o.level, o.top()) > (best.level, best.top()) {
                    best = o;
                }
                from += stride;
            }
            (best, agreeing)
        };
        // Past the first window, one window is not enough to raise a long
        // message above moderate: a supportive reply or a story has one
        // paragraph that reads like a crisis, a person in one writes more.
        // Read again with the model capped at moderate (rare: only long
        // messages the rules rate below high with one such window).
        let (best, agreeing) = scan(true);
        if open || agreeing == 0 || agreeing >= AGREEING_WINDOWS {
            best
        } else {
            scan(false).0
        }
    }

    /// One window, in word order: each known feature counts once (its
    /// first occurrence gives the span; `firsts` collects them). `seen` is
    /// a bit per weight row, all clear on entry and left clear (only this
    /// window's bits are touched: clearing the whole set per window would
    /// cost more than reading a long message's window).
    ///
    /// The imminent head only refines a message already at high: it counts
    /// when the rules said high or more, or this window's ≥ high head
    /// reached its threshold. Its weights are non-negative, so on its own it
    /// cannot tell "years ago" or "lol" from a crisis; the signed ≥ high head
    /// can, and gating on it calls fewer lows imminent for the same
    /// imminent recall (docs/triage.md).
    fn window_opinion(
        &self,
        hits: &[Hit],
        rules: RiskLevel,
        high_ok: bool,
        seen: &mut [u64],
        firsts: &mut Vec<usize>,
    ) -> Opinion {
        let bias = self.model.heads.map(|h| h.bias);
        let mut z = bias;
        firsts.clear();
        for (k, &(_, row, ..)) in hits.iter().enumerate() {
            let (word, bit) = (row as usize / 64, 1u64 << (row % 64));
            let first = seen.get_mut(word).is_some_and(|b| {
                let new = *b & bit == 0;
                *b |= bit;
                new
            });
            if !first {
                continue;
            }
            let Some(w) = self.model.rows.get(row as usize) else {
                continue;
            };
            for (zi, wi) in z.iter_mut().zip(w) {
                *zi += wi;
            }
            firsts.push(k);
        }
        for &(_, row, ..) in hits {
            if let Some(b) = seen.get_mut(row as usize / 64) {
                *b = 0;
            }
        }
        let p = z.map(sigmoid);
        let long = self.words > WINDOW_WORDS;
        // A head raises on the window's words, never on its bias alone:
        // the ≥ high head's bias is above its threshold, so a text the
        // model knows nothing of ("yes", an empty message) would otherwise
        // be high.
        let reached = |i: usize| {
            z.get(i).zip(bias.get(i)).is_some_and(|(zi, bi)| zi > bi)
                && p.get(i)
                    .zip(self.model.heads.get(i))
                    .is_some_and(|(&pi, head)| {
                        pi >= if long {
                            head.long_threshold
                        } else {
                            head.threshold
                        }
                    })
        };
        // Past one window, imminent only in the person's own voice
        // (`own_voice`, worked out only when the imminent head is reached).
        let at_high = || {
            high_ok
                && (rules >= RiskLevel::High || reached(HIGH_HEAD))
                && (!long || own_voice(hits))
        };
        let mut level = None;
        let mut span = None;
        for i in (0..self.model.heads.len()).rev() {
            if reached(i) && (i != IMMINENT_HEAD || at_high()) && (i != HIGH_HEAD || high_ok) {
                level = HEADS.get(i).copied();
                span = self.best_span(hits, firsts, i);
                break;
            }
        }
        Opinion { level, p, span }
    }

    /// The span of the word feature that added most to head `head` among
    /// a window's first occurrences (`firsts`, indices into `hits` in
    /// order); of equal weights, the one that starts first.
    fn best_span(&self, hits: &[Hit], firsts: &[usize], head: usize) -> Option<(usize, usize)> {
        let mut best: Option<(f32, (usize, usize))> = None;
        for &k in firsts {
            let Some(&(_, row, start, end, _)) = hits.get(k) else {
                continue;
            };
            let Some(&wi) = self.model.rows.get(row as usize).and_then(|w| w.get(head)) else {
                continue;
            };
            if start < end
                && wi > 0.0
                && best.is_none_or(|(bw, (bs, _))| wi > bw || (wi == bw && start < bs))
            {
                best = Some((wi, (start, end)));
            }
        }
        best.map(|(_, s)| s)
    }
}

/// Whether the window of [`WINDOW_WORDS`] words from word `from` is not
/// written to someone else. A second-person word must be outweighed by
/// words naming a person as the subject — the writer or a third person —
/// three times over in the window ([`PERSONS_PER_YOU`]), and at least once over
/// in the whole text up to the window's end (a long reply that has so far
/// said "you" more often than it named anyone is a reply, even where one
/// window tells the helper's own story). A window of advice or support
/// ("you deserve to live, please reach out") is not about the writer's own
/// state; "can you help me, I took my pills" and "do you know what to do,
/// he is not breathing" are. Appending words without a second-person word
/// only adds persons, so it never makes a window addressed.
fn not_addressed(persons: &[usize], yous: &[usize], from: usize) -> bool {
    let end = from + WINDOW_WORDS;
    let upto = |v: &[usize], at: usize| v.partition_point(|&w| w < at);
    let (p, y) = (upto(persons, end), upto(yous, end));
    let window = (p - upto(persons, from), y - upto(yous, from));
    window.0 >= window.1 * PERSONS_PER_YOU && p >= y
}

/// How many windows of a long message (rated below high by the rules)
/// must each raise it above moderate for the model to: 2, the first window
/// counting as 2 on its own (a message that grows past one window keeps
/// what its opening said). Appending only adds windows, so it never takes
/// a raise away. Chosen on the C-SSRS sample and the long sets
/// (docs/triage.md, round eight).
const AGREEING_WINDOWS: usize = 2;

/// Words naming a person (the writer, a third person) a window of a long
/// text needs per second-person word for the model to raise it above
/// moderate: 3 (2 until round eight). Chosen on the C-SSRS sample
/// (docs/triage.md, round eight).
const PERSONS_PER_YOU: usize = 3;

/// At most this share of a long text's window (in tenths of its words)
/// may be narration for the model to call it imminent: 3 in 10. Chosen on
/// round2-long and the C-SSRS sample (docs/triage.md, round two).
const NARRATED_TENTHS: usize = 3;

/// Whether a window is in the person's own voice: at most
/// [`NARRATED_TENTHS`] of its words (those the model knows) are narration
/// (see [`each_word`]). A word's narration depends only on the text
/// before it, so appending to a message never changes it for the words
/// already there.
fn own_voice(hits: &[Hit]) -> bool {
    let (mut words, mut narrated) = (0usize, 0usize);
    let mut prev = None;
    for &(token, _, _, _, n) in hits {
        // A word's own features come before the rule features at its index.
        if prev != Some(token) {
            prev = Some(token);
            words += 1;
            narrated += usize::from(n);
        }
    }
    narrated * 10 <= words * NARRATED_TENTHS
}

impl Opinion {
    /// The probability of the raising head (0 when none raises).
    fn top(&self) -> f32 {
        self.level
            .and_then(|level| HEADS.iter().position(|&h| h == level))
            .and_then(|head| self.p.get(head).copied())
            .unwrap_or(0.0)
    }
}

/// A character 4-gram key (`c:abcd`) as one integer.
fn gram(key: &[u8]) -> Option<u32> {
    match key {
        [b'c', b':', a, b, c, d] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// One word of normalised text as the model reads it ([`each_word`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word<'t> {
    /// The word: a run of letters and digits.
    pub text: &'t [u8],
    /// Its word index; a hidden word has the index the next read word
    /// will have.
    pub token: usize,
    /// Its normalised byte span.
    pub start: usize,
    pub end: usize,
    /// The span of the word before it when the two make a pair: in the
    /// same clause, with no hidden word between.
    pub prev: Option<(usize, usize)>,
    /// In narration (see [`each_word`]); a hidden word always is.
    pub narrated: bool,
    /// Addressed to someone else ([`super::voice`]): not read at all.
    pub hidden: bool,
}

/// Calls `f` with every word of normalised text (lowercase ASCII, idioms
/// blanked), in order. Words are runs of letters and digits; pairs do not
/// cross a clause break (`. , ; : ! ?`).
///
/// A word is in **narration** — not the writer's own current state — from
/// a narration cue ([`NARRATION_WORDS`], [`NARRATION_PHRASES`]) (advice to
/// someone else, reported speech, the past) to the end of its sentence
/// (`. ! ?`, a line break), inside double quotes, or on a line quoting
/// another post (`>`). Only what comes *before* a word decides, so text
/// appended to a message never changes which of its words are narrated.
///
/// Words in `hidden` (addressed to someone else, [`super::voice`]) are not
/// read at all: no features, no word index, no pair across them. Appending
/// addressed text therefore changes nothing the model sees.
pub(crate) fn each_word(text: &[u8], hidden: &[Addressed], mut f: impl FnMut(&Word<'_>)) {
    let mut stretch = 0;
    let mut prev: Option<(usize, usize)> = None;
    let mut token = 0;
    let mut i = 0;
    let mut narrating = false;
    let mut quoted = false;
    let mut sentence_start = true;
    while i < text.len() {
        let b = text.get(i).copied().unwrap_or(b' ');
        if b.is_ascii_alphanumeric() {
            let start = i;
            while text.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                i += 1;
            }
            sentence_start = false;
            let word = text.get(start..i).unwrap_or_default();
            if !narrating
                && text
                    .get(start..)
                    .is_some_and(|rest| starts_narration(word, rest))
            {
                narrating = true;
            }
            while hidden.get(stretch).is_some_and(|a| a.end <= start) {
                stretch += 1;
            }
            let is_hidden = hidden.get(stretch).is_some_and(|a| a.start <= start);
            f(&Word {
                text: word,
                token,
                start,
                end: i,
                prev: prev.filter(|_| !is_hidden),
                narrated: is_hidden || narrating || quoted,
                hidden: is_hidden,
            });
            if is_hidden {
                prev = None;
            } else {
                prev = Some((start, i));
                token += 1;
            }
            continue;
        }
        if matches!(b, b'.' | b',' | b';' | b':' | b'!' | b'?') {
            prev = None;
        }
        match b {
            b'.' | b'!' | b'?' => {
                narrating = false;
                sentence_start = true;
            }
            b'"' => quoted = !quoted,
            b'>' if sentence_start => narrating = true,
            _ => {}
        }
        i += 1;
    }
}

/// Calls `f(key, word index, start, end, narrated)` with the feature keys
/// ([`word_keys`]) of every word of normalised text ([`each_word`]), in
/// order: what training reads, as the tests compare it with scoring.
#[cfg(test)]
pub(crate) fn each_word_feature(
    text: &[u8],
    hidden: &[Addressed],
    mut f: impl FnMut(&[u8], usize, usize, usize, bool),
) {
    let mut key: Vec<u8> = Vec::with_capacity(64);
    each_word(text, hidden, |w| word_keys(text, w, &mut key, &mut f));
}

/// Calls `f(key, word index, start, end, narrated)` for every feature key
/// of one word of `text` (built in `key`): for a read word its character
/// 4-grams (`c:`, of the word padded with `_`: they carry misspellings like
/// "thinl", "cnat" to the words they resemble), the word (`w:`) and its
/// pair with the word before (`b:`, spanning both); for a hidden word only
/// `h:` and the word, for the voice counts. Spans are normalised byte
/// offsets. Training reads these keys (`Engine::learning_features`);
/// scoring reads the words through the compiled vocabulary
/// ([`Scorer::word`]), which hits the same rows.
pub(crate) fn word_keys(
    text: &[u8],
    w: &Word<'_>,
    key: &mut Vec<u8>,
    mut f: impl FnMut(&[u8], usize, usize, usize, bool),
) {
    let Word {
        text: word,
        token,
        start,
        end,
        narrated,
        ..
    } = *w;
    key.clear();
    if w.hidden {
        key.extend_from_slice(b"h:");
        key.extend_from_slice(word);
        f(key, token, start, end, narrated);
        return;
    }
    for_each_gram(word, |g| {
        key.clear();
        key.extend_from_slice(b"c:");
        key.extend_from_slice(&g.to_le_bytes());
        f(key, token, start, end, narrated);
    });
    key.clear();
    key.extend_from_slice(b"w:");
    key.extend_from_slice(word);
    f(key, token, start, end, narrated);
    if let Some((ps, pe)) = w.prev {
        key.clear();
        key.extend_from_slice(b"b:");
        key.extend_from_slice(text.get(ps..pe).unwrap_or_default());
        key.push(b' ');
        key.extend_from_slice(word);
        f(key, token, ps, end, narrated);
    }
}

/// Cues after which the rest of a sentence is narration, not the writer's
/// own current state: advice and support to someone else, reported speech,
/// the past. A cue starts at a word and ends at a word boundary.
///
/// One-word cues, matched as the whole word.
const NARRATION_WORDS: &[&[u8]] = &[
    // Advice and support to someone else.
    b"you",
    b"your",
    b"youre",
    b"yourself",
    b"youve",
    b"youll",
    b"youd",
    // Reported speech.
    b"said",
    b"says",
    b"told",
    b"tells",
    b"wrote",
    b"posted",
    b"asked",
    b"dijo",
    // The past.
    b"was",
    b"were",
    b"had",
    b"tried",
    b"wanted",
    b"felt",
    b"thought",
    b"went",
    b"ago",
    b"intente",
    b"estaba",
    b"tenia",
];

/// Cues of several words, matched from the start of a word.
const NARRATION_PHRASES: &[&[u8]] = &[
    b"please dont",
    b"please do not",
    b"dont do it",
    b"reach out",
    b"si tu",
    b"si te",
    b"si usted",
    b"no lo hagas",
    b"por favor no",
    b"dice que",
    b"me conto",
    b"used to",
    b"back then",
    b"at the time",
    b"last year",
    b"in high school",
    b"cuando tenia",
    b"cuando era",
    b"hace anos",
];

/// Whether a [`NARRATION_WORDS`] or [`NARRATION_PHRASES`] cue starts at
/// `word`, the rest of the text being `rest` (which starts with `word`).
fn starts_narration(word: &[u8], rest: &[u8]) -> bool {
    if super::voice::listed(NARRATION_WORDS, word) {
        return true;
    }
    // Phrases only start with a few words; most words stop here.
    let Some(&first) = word.first() else {
        return false;
    };
    if !matches!(
        first,
        b'p' | b'd' | b'r' | b's' | b'n' | b'm' | b'u' | b'b' | b'a' | b'l' | b'i' | b'c' | b'h'
    ) {
        return false;
    }
    NARRATION_PHRASES.iter().any(|cue| {
        cue.len() > word.len()
            && cue.get(word.len()) == Some(&b' ')
            && cue.first() == Some(&first)
            && cue.starts_with(word)
            && rest.starts_with(cue)
            && !rest.get(cue.len()).is_some_and(u8::is_ascii_alphanumeric)
    })
}

/// What a scorer read: hits, words, persons, second persons.
#[cfg(test)]
pub(crate) type WordsRead = (Vec<Hit>, usize, Vec<usize>, Vec<usize>);

impl Model {
    /// The hits of `text`'s words read both ways: through the compiled
    /// vocabulary ([`Scorer::word`], as the engine scores) and key by key
    /// ([`each_word_feature`] into [`Scorer::add`], as training sees them,
    /// with the voices of `w:` and `h:` keys), each in word order; and the
    /// word counts and voices.
    #[cfg(test)]
    pub(crate) fn hits_both_ways(&self, text: &[u8], hidden: &[Addressed]) -> [WordsRead; 2] {
        let mut compiled = self.scorer();
        each_word(text, hidden, |w| compiled.word(w, true));
        let mut keyed = self.scorer();
        each_word_feature(text, hidden, |key, token, s, e, narrated| {
            let word = key.strip_prefix(b"w:").or_else(|| key.strip_prefix(b"h:"));
            if let Some(v) = word.and_then(super::voice::of) {
                keyed.voice(v, token);
            }
            if !key.starts_with(b"h:") {
                keyed.add(key, token, s, e, narrated);
            }
        });
        keyed.keyed.sort_by_key(|h| h.0);
        [
            (
                compiled.hits,
                compiled.words,
                compiled.persons,
                compiled.yous,
            ),
            (keyed.keyed, keyed.words, keyed.persons, keyed.yous),
        ]
    }
}

/// [`each_word_feature`] collected.
#[cfg(test)]
pub(crate) fn word_features(text: &[u8], out: &mut Vec<Feature>) {
    each_word_feature(text, &[], |key, _, start, end, narrated| {
        if key.starts_with(b"h:") {
            return;
        }
        out.push(Feature {
            key: String::from_utf8_lossy(key).into_owned(),
            start,
            end,
            narrated,
        });
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const SMALL: &str = r#"
version = "t1"
[heads.moderate]
bias = -2.0
threshold = 0.5
[heads.high]
bias = -3.0
threshold = 0.5
[heads.imminent]
bias = -4.0
threshold = 0.5
[weights]
"w:ledge" = [3.0, 3.5, 1.0]
"b:night night" = [3.0, 3.5, 4.5]
"r:farewell:low" = [2.5, 0.0, 0.0]
"#;

    fn feats(text: &str) -> Vec<Feature> {
        let mut v = Vec::new();
        word_features(text.as_bytes(), &mut v);
        v
    }

    #[test]
    fn words_and_pairs_within_clauses() {
        let keys: Vec<String> = feats("on the ledge, night night")
            .into_iter()
            .map(|f| f.key)
            .filter(|k| !k.starts_with("c:"))
            .collect();
        assert_eq!(
            keys,
            [
                "w:on",
                "w:the",
                "b:on the",
                "w:ledge",
                "b:the ledge",
                "w:night",
                "w:night",
                "b:night night"
            ]
        );
        let ledge: Vec<(String, usize, usize)> = feats("on the ledge")
            .into_iter()
            .filter(|f| f.start == 7)
            .map(|f| (f.key, f.start, f.end))
            .collect();
        let grams = ["c:_led", "c:ledg", "c:edge", "c:dge_", "w:ledge"];
        assert_eq!(
            ledge.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            grams
        );
        assert!(ledge.iter().all(|f| (f.1, f.2) == (7, 12)));
    }

    #[test]
    fn heads_raise_to_the_highest_threshold_reached() {
        let m = Model::from_str(SMALL, "small.toml").unwrap();
        assert_eq!(m.version(), "t1");
        assert_eq!(m.opinion(&feats("hello"), RiskLevel::Low).level, None);
        let o = m.opinion(&feats("on the ledge"), RiskLevel::Low);
        assert_eq!(o.level, Some(RiskLevel::High));
        assert_eq!(o.span, Some((7, 12)));
        let o = m.opinion(&feats("night night forever"), RiskLevel::Low);
        assert_eq!(o.level, Some(RiskLevel::Imminent));
        assert_eq!(o.span, Some((0, 11)));
        // A rule feature counts, has no span.
        let rule = Feature {
            key: "r:farewell:low".into(),
            start: 0,
            end: 0,
            narrated: false,
        };
        let o = m.opinion(&[rule.clone(), rule], RiskLevel::Low);
        assert_eq!(o.level, Some(RiskLevel::Moderate), "{o:?}");
        assert_eq!(o.span, None);
    }

    #[test]
    fn narration_is_marked_from_what_comes_before_a_word() {
        let flags = |text: &str| -> Vec<(String, bool)> {
            feats(text)
                .into_iter()
                .filter(|f| f.key.starts_with("w:"))
                .map(|f| (f.key, f.narrated))
                .collect()
        };
        let narrated = |text: &str| -> Vec<String> {
            flags(text)
                .into_iter()
                .filter(|(_, n)| *n)
                .map(|(k, _)| k)
                .collect()
        };
        assert!(narrated("i took them all now").is_empty());
        // Advice, reported speech, the past: to the end of the sentence.
        assert_eq!(
            narrated("please dont do it. i took them"),
            ["w:please", "w:dont", "w:do", "w:it"]
        );
        assert_eq!(
            narrated("i am here. you should call"),
            ["w:you", "w:should", "w:call"]
        );
        assert_eq!(narrated("he said rattle. rattle"), ["w:said", "w:rattle"]);
        assert_eq!(
            narrated("back then i had pills"),
            ["w:back", "w:then", "w:i", "w:had", "w:pills"]
        );
        // Quotes and quoted lines.
        assert_eq!(narrated("i read \"rattle\" today"), ["w:rattle"]);
        assert_eq!(narrated("> rattle. rattle"), ["w:rattle"]);
        // Only what comes before a word decides: appending never changes it.
        let base = flags("i have the rope now");
        let longer = flags("i have the rope now i tried years ago");
        assert_eq!(&longer[..base.len()], &base[..]);

        // In a short message narration does not matter: a third person's
        // overdose in progress, reported in the past, is still imminent.
        let m = Model::from_str(
            &SMALL.replace("\"w:ledge\"", "\"w:rattle\" = [0.0, 0.0, 9.0]\n\"w:ledge\""),
            "small.toml",
        )
        .unwrap();
        assert_eq!(
            m.opinion(&feats("he said rattle"), RiskLevel::High).level,
            Some(RiskLevel::Imminent)
        );
    }

    /// The opinion as the engine forms it: features with their word index.
    fn opinion_in_windows(m: &Model, text: &str, rules: RiskLevel) -> Option<RiskLevel> {
        let mut scorer = m.scorer();
        each_word_feature(text.as_bytes(), &[], |key, token, s, e, narrated| {
            scorer.add(key, token, s, e, narrated);
        });
        scorer.opinion(rules).level
    }

    #[test]
    fn past_one_window_the_model_says_imminent_in_the_persons_own_voice() {
        let m = Model::from_str(
            &SMALL.replace("\"w:ledge\"", "\"w:rattle\" = [0.0, 0.0, 9.0]\n\"w:ledge\""),
            "small.toml",
        )
        .unwrap();
        let short = "rattle on the ledge";
        let own = format!("{short} {}", "and so on ".repeat(30));
        // The same words in a long sentence of reported speech.
        let told = format!("she told me {own}");
        assert_eq!(
            opinion_in_windows(&m, short, RiskLevel::Low),
            Some(RiskLevel::Imminent)
        );
        // Longer than one window, in the person's own voice: imminent.
        assert_eq!(
            opinion_in_windows(&m, &own, RiskLevel::Low),
            Some(RiskLevel::Imminent)
        );
        // Mostly narration: the model alone raises to high at most…
        assert_eq!(
            opinion_in_windows(&m, &told, RiskLevel::Low),
            Some(RiskLevel::High)
        );
        // …and not to imminent even when the rules rate the message high
        // (round eight: the rules' high no longer opens the own-voice gate).
        assert_eq!(
            opinion_in_windows(&m, &told, RiskLevel::High),
            Some(RiskLevel::High)
        );
    }

    /// Round eight: a head raises on the words, never on its bias. The
    /// shipped ≥ high head's bias alone is over its threshold, so an empty
    /// message, "yes" or "👍" (words it has no weight for, or only
    /// negative ones) was high.
    #[test]
    fn a_head_raises_on_evidence_not_on_its_bias() {
        // SMALL with a ≥ high head whose bias alone (p 0.5) is over its
        // threshold, and two small weights that cancel out.
        let m = Model::from_str(
            &SMALL
                .replace(
                    "bias = -3.0\nthreshold = 0.5",
                    "bias = 0.0\nthreshold = 0.4",
                )
                .replace(
                    "\"w:ledge\"",
                    "\"w:bus\" = [0.0, -0.1, 0.0]\n\"w:stop\" = [0.0, 0.1, 0.0]\n\"w:ledge\"",
                ),
            "bias.toml",
        )
        .unwrap();
        // p(high) = 0.5 ≥ 0.4 with nothing known, only a negative word, or
        // words that cancel out: not raised. Words that add to the head,
        // even a little, raise it.
        for (text, want) in [
            ("", None),
            ("see you tuesday", None),
            ("bus", None),
            ("bus stop", None),
            ("on the ledge", Some(RiskLevel::High)),
            ("stop", Some(RiskLevel::High)),
        ] {
            assert_eq!(opinion_in_windows(&m, text, RiskLevel::Low), want, "{text}");
        }
    }

    /// Round eight: past the first window, one window that raises a long
    /// message above moderate is not enough; two are, and so is the first
    /// window alone; when the rules rate the message high, one is.
    #[test]
    fn past_the_first_window_two_windows_must_raise_a_long_message() {
        let m = Model::from_str(
            // "so" is known and weighs nothing: every filler has a hit.
            &SMALL.replace(
                "\"w:ledge\"",
                "\"w:rattle\" = [4.0, 4.0, 0.0]\n\"w:so\" = [0.0, 0.0, 0.0]\n\"w:ledge\"",
            ),
            "small.toml",
        )
        .unwrap();
        let filler = |n: usize| "and so on ".repeat(n);
        // Windows start every 24 words: "rattle" at word 60 is in the
        // windows from 24 and from 48, the second read only when the
        // message goes on to word 72.
        let once = format!("{}rattle {}", filler(20), filler(2));
        let twice = format!("{}rattle {}", filler(20), filler(20));
        let first = format!("rattle {}", filler(30));
        assert!(once.split_whitespace().count() > WINDOW_WORDS);
        for (text, rules, want) in [
            (&once, RiskLevel::Low, RiskLevel::Moderate),
            (&twice, RiskLevel::Low, RiskLevel::High),
            (&first, RiskLevel::Low, RiskLevel::High),
            (&once, RiskLevel::High, RiskLevel::High),
        ] {
            assert_eq!(opinion_in_windows(&m, text, rules), Some(want), "{text}");
        }
        // Appending never takes a raise away.
        for n in 0..40 {
            let longer = format!("{twice}{}", filler(n));
            assert_eq!(
                opinion_in_windows(&m, &longer, RiskLevel::Low),
                Some(RiskLevel::High),
                "{n}"
            );
        }
    }

    /// A head's `long_threshold` applies past one window only: the same
    /// words that are imminent in an SMS need more evidence in a long text
    /// (model 2026.12.4's length calibration), and without the line the
    /// head keeps one threshold.
    #[test]
    fn a_long_threshold_holds_long_messages_to_more_evidence() {
        let weights = "\"w:rattle\" = [0.0, 0.0, 4.5]\n\"w:ledge\"";
        let plain = SMALL.replace("\"w:ledge\"", weights);
        let strict = plain.replace(
            "threshold = 0.5\n[weights]",
            "threshold = 0.5\nlong_threshold = 0.9\n[weights]",
        );
        let (plain, strict) = (
            Model::from_str(&plain, "plain.toml").unwrap(),
            Model::from_str(&strict, "strict.toml").unwrap(),
        );
        let short = "rattle on the ledge";
        let long = format!("{short} {}", "and so on ".repeat(30));
        for m in [&plain, &strict] {
            assert_eq!(
                opinion_in_windows(m, short, RiskLevel::Low),
                Some(RiskLevel::Imminent)
            );
        }
        assert_eq!(
            opinion_in_windows(&plain, &long, RiskLevel::Low),
            Some(RiskLevel::Imminent)
        );
        assert_eq!(
            opinion_in_windows(&strict, &long, RiskLevel::Low),
            Some(RiskLevel::High)
        );
    }

    /// Like `opinion_in_windows`, with the voice counts the engine feeds.
    fn opinion_with_voices(m: &Model, text: &str, rules: RiskLevel) -> Option<RiskLevel> {
        let mut scorer = m.scorer();
        each_word_feature(text.as_bytes(), &[], |key, token, s, e, narrated| {
            if let Some(v) = key.strip_prefix(b"w:").and_then(super::super::voice::of) {
                scorer.voice(v, token);
            }
            scorer.add(key, token, s, e, narrated);
        });
        scorer.opinion(rules).level
    }

    #[test]
    fn past_one_window_a_window_written_to_someone_else_is_raised_to_moderate_at_most() {
        let m = Model::from_str(SMALL, "small.toml").unwrap();
        let filler = "and so on ".repeat(20);
        // The same risky word in an SMS, in a long text addressed to
        // someone else, and in one where the writer (or a third person)
        // is there at least three times per "you".
        let short = "you on the ledge";
        let addressed = format!("you on the ledge {filler}");
        let own = format!("can you see me, i am on the ledge, i am {filler}");
        let theirs = format!("do you see, he is on the ledge, he is, he is {filler}");
        assert!(addressed.split_whitespace().count() > WINDOW_WORDS);
        assert_eq!(
            opinion_with_voices(&m, short, RiskLevel::Low),
            Some(RiskLevel::High)
        );
        assert_eq!(
            opinion_with_voices(&m, &addressed, RiskLevel::Low),
            Some(RiskLevel::Moderate)
        );
        assert_eq!(
            opinion_with_voices(&m, &own, RiskLevel::Low),
            Some(RiskLevel::High)
        );
        assert_eq!(
            opinion_with_voices(&m, &theirs, RiskLevel::Low),
            Some(RiskLevel::High)
        );
        // When the rules rate the message high, every window is open.
        assert_eq!(
            opinion_with_voices(&m, &addressed, RiskLevel::High),
            Some(RiskLevel::High)
        );
    }

    #[test]
    fn a_window_is_addressed_with_fewer_than_three_persons_per_you() {
        assert!(not_addressed(&[], &[], 0));
        assert!(!not_addressed(&[], &[3], 0));
        assert!(!not_addressed(&[1], &[3], 0));
        assert!(!not_addressed(&[1, 2], &[3], 0));
        assert!(not_addressed(&[1, 2, 4], &[3], 0));
        // The window's own words…
        assert!(not_addressed(&[], &[WINDOW_WORDS], 0));
        assert!(!not_addressed(&[30], &[WINDOW_WORDS], 24));
        assert!(not_addressed(&[30, 40, 50, 60], &[WINDOW_WORDS], 24));
        // …and the text so far: a window that tells the writer's own story
        // after a reply that said "you" more often than it named anyone.
        let yous = [1, 2, 3, 4, 5];
        assert!(!not_addressed(&[30, 40, 50, 60], &yous, 24));
        assert!(not_addressed(&[10, 30, 40, 50, 60], &yous, 24));
    }

    #[test]
    fn a_window_is_in_the_persons_own_voice_up_to_three_narrated_words_in_ten() {
        // Ten words, two features each; the first `n` narrated.
        let hits = |n: usize| -> Vec<Hit> {
            (0..10)
                .flat_map(|t| [(t, 0, 0, 0, t < n), (t, 1, 0, 0, t < n)])
                .collect()
        };
        assert!(own_voice(&hits(0)));
        assert!(own_voice(&hits(3)));
        assert!(!own_voice(&hits(4)));
        assert!(!own_voice(&hits(10)));
        // A rule feature at a narrated word does not make it the person's own.
        let mut h = hits(4);
        h.insert(2, (0, 7, 0, 0, false));
        assert!(!own_voice(&h));
    }

    #[test]
    fn the_imminent_head_only_refines_a_high() {
        let m = Model::from_str(
            &SMALL.replace("\"w:ledge\"", "\"w:rattle\" = [0.0, 0.0, 9.0]\n\"w:ledge\""),
            "small.toml",
        )
        .unwrap();
        // P(imminent) is high but neither the ≥ high head nor the rules
        // put the message at high: no raise.
        assert_eq!(m.opinion(&feats("rattle"), RiskLevel::Low).level, None);
        assert_eq!(m.opinion(&feats("rattle"), RiskLevel::Moderate).level, None);
        // The rules at high, or the ≥ high head over its threshold, open it.
        assert_eq!(
            m.opinion(&feats("rattle"), RiskLevel::High).level,
            Some(RiskLevel::Imminent)
        );
        assert_eq!(
            m.opinion(&feats("rattle on the ledge"), RiskLevel::Low)
                .level,
            Some(RiskLevel::Imminent)
        );
    }

    #[test]
    fn words_may_count_against_moderate_and_high() {
        let m = Model::from_str(
            &SMALL.replace("\"w:ledge\"", "\"w:lol\" = [-9.0, -9.0, 0.0]\n\"w:ledge\""),
            "small.toml",
        )
        .unwrap();
        assert_eq!(
            m.opinion(&feats("on the ledge"), RiskLevel::Low).level,
            Some(RiskLevel::High)
        );
        assert_eq!(
            m.opinion(&feats("on the ledge lol"), RiskLevel::Low).level,
            None
        );
    }

    #[test]
    fn repeated_features_count_once() {
        let m = Model::from_str(SMALL, "small.toml").unwrap();
        let once = m.opinion(&feats("ledge"), RiskLevel::Low).p;
        let thrice = m.opinion(&feats("ledge ledge, ledge"), RiskLevel::Low).p;
        assert_eq!(once, thrice);
    }

    #[test]
    fn bad_models_name_file_line_and_feature() {
        let cases = [
            (
                SMALL.replace("3.5, 1.0]", "3.5, -1.0]"),
                13,
                "w:ledge",
                "imminent weights are not negative",
            ),
            (
                SMALL.replace("3.5, 1.0]", "3.5, nan]"),
                13,
                "w:ledge",
                "finite",
            ),
            (
                SMALL.replace("[3.0, 3.5, 1.0]", "[3.0]"),
                13,
                "w:ledge",
                "[moderate, high, imminent]",
            ),
            (
                SMALL.replace("\"w:ledge\"", "\"ledge\""),
                13,
                "ledge",
                "a feature is",
            ),
            (
                SMALL.replace(
                    "threshold = 0.5\n[heads.high]",
                    "threshold = 1.5\n[heads.high]",
                ),
                0,
                "heads.moderate",
                "strictly between",
            ),
            (
                SMALL.replace("version = \"t1\"", "version = \" \""),
                2,
                "version",
                "empty version",
            ),
            (
                SMALL.replace(
                    "threshold = 0.5\n[weights]",
                    "threshold = 0.5\nlong_threshold = 1.5\n[weights]",
                ),
                0,
                "heads.imminent",
                "long_threshold must lie strictly between",
            ),
        ];
        for (text, line, what, problem) in cases {
            let e = Model::from_str(&text, "m.toml").unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("m.toml:"), "{shown}");
            assert!(shown.contains(what) && shown.contains(problem), "{shown}");
            if line > 0 {
                assert_eq!(e.line(), line, "{shown}");
            }
        }
        let e = Model::from_str("version = 3", "m.toml").unwrap_err();
        assert!(matches!(e, RulebookError::Parse { line: 1, .. }), "{e}");
    }

    #[test]
    fn the_builtin_model_loads() {
        let m = Model::builtin().unwrap();
        assert!(m.feature_count() > 100, "{}", m.feature_count());
    }
}
