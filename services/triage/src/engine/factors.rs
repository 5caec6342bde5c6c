//! What a pattern needs, for the Aho-Corasick prefilter and the search.
//!
//! For a (normalised, compiled) pattern we compute from its syntax tree
//! (`regex_syntax::hir`):
//!
//! - a set of **necessary literals**: every match contains one of them. A
//!   message that contains none of a pattern's literals cannot match it, so
//!   the pattern need not run. `None` means "no such set found": the pattern
//!   runs on every message.
//! - **`pre`**: how far into a match that literal can start — every match
//!   `[s, e)` contains an occurrence `[l, …)` of one of the literals with
//!   `l - s ≤ pre`. So a match can only start in `[l - pre, l]` of some
//!   occurrence, and the engine tries an anchored DFA at those positions only.
//! - **`max`**: the longest match.
//!
//! Lengths are [`Bound`]s: `fixed + runs × w`, where `w` is the longest run of
//! word bytes (`[0-9A-Za-z_]`) in the text searched, because an unbounded
//! repetition of something that only matches word bytes (`\w+`, `\d*`)
//! matches within one such run. Anything else unbounded is `None`.
//!
//! Every rule is sound rather than clever: look-arounds count as empty,
//! classes of more than [`MAX_CLASS`] bytes are unknown, sets that grow past
//! [`MAX_EXACT`] strings are dropped.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Most strings an exact set may hold before it is dropped.
const MAX_EXACT: usize = 64;
/// Longest string an exact set may hold.
const MAX_LEN: usize = 48;
/// Largest class expanded into its bytes.
const MAX_CLASS: usize = 10;
/// Literals at least this long are taken as selective enough: among sets
/// whose shortest literal is this long, a smaller `pre` wins.
const SELECTIVE: usize = 5;

type Set = Vec<Vec<u8>>;

/// A length that may grow with the longest run of word bytes in the text:
/// `fixed + runs × w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Bound {
    pub fixed: usize,
    pub runs: usize,
}

impl Bound {
    const ZERO: Bound = Bound { fixed: 0, runs: 0 };
    /// At most one run of word bytes.
    const RUN: Bound = Bound { fixed: 0, runs: 1 };

    fn fixed(n: usize) -> Bound {
        Bound { fixed: n, runs: 0 }
    }

    /// The bound for a text whose longest run of word bytes is `word_run`.
    pub fn at(self, word_run: usize) -> usize {
        self.fixed
            .saturating_add(self.runs.saturating_mul(word_run))
    }

    fn add(self, o: Bound) -> Bound {
        Bound {
            fixed: self.fixed.saturating_add(o.fixed),
            runs: self.runs.saturating_add(o.runs),
        }
    }

    fn max(self, o: Bound) -> Bound {
        Bound {
            fixed: self.fixed.max(o.fixed),
            runs: self.runs.max(o.runs),
        }
    }

    fn times(self, n: usize) -> Bound {
        Bound {
            fixed: self.fixed.saturating_mul(n),
            runs: self.runs.saturating_mul(n),
        }
    }
}

fn add(a: Option<Bound>, b: Option<Bound>) -> Option<Bound> {
    Some(a?.add(b?))
}

/// Is `b` a word byte (ASCII `\w`)?
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Longest run of word bytes in `text`.
pub(crate) fn longest_word_run(text: &[u8]) -> usize {
    text.split(|&b| !is_word(b))
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// What the engine needs to know about a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Analysis {
    /// Necessary literals (sorted, distinct, none empty), each with how
    /// far into a match it can start (`None`: unbounded), or `None`.
    pub literals: Option<Vec<(Vec<u8>, Option<Bound>)>>,
    /// The largest of those (`None`: unbounded, or no literals).
    pub pre: Option<Bound>,
    /// Longest match (`None`: unbounded).
    pub max: Option<Bound>,
}

/// Analyses a pattern's syntax tree.
pub(crate) fn analyse(hir: &Hir) -> Analysis {
    let mut analyser = Analyser { positional: true };
    let mut info = analyser.info(hir);
    if analyser
        .usable(&info)
        .is_some_and(|f| max_pre(&f).is_none())
    {
        // No literal sits at a bounded distance from the match start, so
        // the search cannot start near one: pick the most selective
        // literals instead.
        analyser = Analyser { positional: false };
        info = analyser.info(hir);
    }
    let max = info.max;
    let Some(mut set) = analyser.usable(&info) else {
        return Analysis {
            literals: None,
            pre: None,
            max,
        };
    };
    // One entry per literal, with the largest `pre` it was found with.
    set.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Factors = Vec::with_capacity(set.len());
    for (lit, pre) in set {
        match merged.last_mut() {
            Some(last) if last.0 == lit => {
                last.1 = last.1.zip(pre).map(|(a, b)| a.max(b));
            }
            _ => merged.push((lit, pre)),
        }
    }
    Analysis {
        pre: max_pre(&merged),
        literals: Some(merged),
        max,
    }
}

/// A necessary literal and how far into a match it can start.
type Lit = (Vec<u8>, Option<Bound>);
/// A set of necessary literals.
type Factors = Vec<Lit>;

fn with_pre(set: Set, pre: Option<Bound>) -> Factors {
    set.into_iter().map(|s| (s, pre)).collect()
}

/// The literals of a sub-expression that starts at most `before` into the match.
fn shift(f: Factors, before: Option<Bound>) -> Factors {
    f.into_iter().map(|(s, p)| (s, add(before, p))).collect()
}

/// The largest `pre` of a set (`None` if any is unbounded).
fn max_pre(f: &Factors) -> Option<Bound> {
    f.iter()
        .try_fold(Bound::ZERO, |acc, (_, p)| Some(acc.max((*p)?)))
}

/// What we know about a sub-expression.
#[derive(Debug, Clone)]
struct Info {
    /// Every string it can match, when that set is small.
    exact: Option<Set>,
    /// A set of literals one of which every match contains, and how far
    /// into the match it can start.
    factors: Option<Factors>,
    /// Longest match.
    max: Option<Bound>,
    /// Every match consists of word bytes only.
    word_only: bool,
}

/// Chooses among factor sets.
#[derive(Debug, Clone, Copy)]
struct Analyser {
    /// Where the literal sits matters (the search starts near it).
    positional: bool,
}

impl Analyser {
    /// Is `a` a better factor set than `b`? When positional: bounded `pre`
    /// first (the search can start near the literal), then selective
    /// literals (the shortest one, counted up to [`SELECTIVE`]), then a
    /// smaller `pre` (fewer start positions), then fewer literals (a
    /// smaller automaton), then longer ones. Otherwise the longest shortest
    /// literal, then fewer literals.
    fn better(self, a: &Factors, b: &Factors) -> bool {
        let key = |f: &Factors| {
            let min = f.iter().map(|(s, _)| s.len()).min().unwrap_or(0);
            let pre = max_pre(f);
            if self.positional {
                (
                    pre.is_some(),
                    min.min(SELECTIVE),
                    std::cmp::Reverse(pre.unwrap_or_default()),
                    std::cmp::Reverse(f.len()),
                    min,
                )
            } else {
                (
                    true,
                    min,
                    std::cmp::Reverse(Bound::ZERO),
                    std::cmp::Reverse(f.len()),
                    min,
                )
            }
        };
        key(a) > key(b)
    }

    /// Factors usable for the prefilter: the better of the exact set (it
    /// starts at the start of the match) and the factors.
    fn usable(self, info: &Info) -> Option<Factors> {
        let mut best = None;
        self.consider(
            &mut best,
            info.exact.clone().map(|e| with_pre(e, Some(Bound::ZERO))),
        );
        self.consider(&mut best, info.factors.clone());
        best
    }

    fn consider(self, best: &mut Option<Factors>, cand: Option<Factors>) {
        let usable = cand.filter(|c| !c.is_empty() && c.iter().all(|(s, _)| !s.is_empty()));
        if let Some(c) = usable.filter(|c| best.as_ref().is_none_or(|b| self.better(c, b))) {
            *best = Some(c);
        }
    }
}

fn cross(a: &Set, b: &Set) -> Option<Set> {
    if a.len().saturating_mul(b.len()) > MAX_EXACT {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            if x.len() + y.len() > MAX_LEN {
                return None;
            }
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    Some(out)
}

/// The strings of `e` repeated `min..=max` times, when few enough.
fn repeat(e: &Set, min: usize, max: usize) -> Option<Set> {
    let mut all: Set = Vec::new();
    let mut power: Set = vec![Vec::new()];
    for k in 0..=max {
        if k >= min {
            all.extend(power.iter().cloned());
        }
        if k < max {
            power = cross(&power, e)?;
        }
    }
    (all.len() <= MAX_EXACT).then_some(all)
}

impl Analyser {
    fn info(self, hir: &Hir) -> Info {
        let mut info = match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => Info {
                exact: Some(vec![Vec::new()]),
                factors: None,
                max: Some(Bound::ZERO),
                word_only: true,
            },
            HirKind::Literal(l) => {
                let bytes = l.0.to_vec();
                Info {
                    exact: (bytes.len() <= MAX_LEN).then(|| vec![bytes.clone()]),
                    max: Some(Bound::fixed(bytes.len())),
                    word_only: bytes.iter().all(|&b| is_word(b)),
                    factors: Some(vec![(bytes, Some(Bound::ZERO))]),
                }
            }
            HirKind::Class(class) => {
                let strings = class_strings(class);
                Info {
                    factors: strings.clone().map(|s| with_pre(s, Some(Bound::ZERO))),
                    exact: strings,
                    max: hir.properties().maximum_len().map(Bound::fixed),
                    word_only: class_is_word(class),
                }
            }
            HirKind::Capture(c) => self.info(&c.sub),
            HirKind::Repetition(r) => {
                let sub = self.info(&r.sub);
                let min = usize::try_from(r.min).unwrap_or(usize::MAX);
                let max = r.max.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
                let exact = match (&sub.exact, max) {
                    (Some(e), Some(max)) if max <= 3 => repeat(e, min, max),
                    _ => None,
                };
                // The first repetition starts the match and holds a literal.
                let factors = if min >= 1 { self.usable(&sub) } else { None };
                Info {
                    exact,
                    factors,
                    max: max.and_then(|m| Some(sub.max?.times(m))),
                    word_only: sub.word_only,
                }
            }
            HirKind::Concat(subs) => self.concat(subs),
            HirKind::Alternation(subs) => self.alternation(subs),
        };
        if info.word_only && info.max.is_none_or(|m| m.runs > 0) {
            // Word bytes only: the match is within one run of them.
            info.max = Some(Bound::RUN);
        }
        info
    }

    fn concat(self, subs: &[Hir]) -> Info {
        // The current run of consecutive exact items, crossed together, and how
        // far into the match it starts.
        let mut run: Option<Set> = Some(vec![Vec::new()]);
        let mut run_pre: Option<Bound> = Some(Bound::ZERO);
        let mut best: Option<Factors> = None;
        let mut whole_exact: Option<Set> = Some(vec![Vec::new()]);
        // Longest prefix of a match before the current item.
        let mut before: Option<Bound> = Some(Bound::ZERO);
        let mut word_only = true;
        for sub in subs {
            let item = self.info(sub);
            word_only &= item.word_only;
            whole_exact = match (&whole_exact, &item.exact) {
                (Some(w), Some(e)) => cross(w, e),
                _ => None,
            };
            let after = add(before, item.max);
            match &item.exact {
                Some(e) => {
                    // The run so far is a factor set too (every longer run
                    // string starts with one of it), with fewer literals.
                    self.consider(&mut best, run.clone().map(|r| with_pre(r, run_pre)));
                    let joined = run.as_ref().and_then(|r| cross(r, e));
                    match joined {
                        Some(j) => run = Some(j),
                        None => {
                            self.consider(&mut best, run.take().map(|r| with_pre(r, run_pre)));
                            run = Some(e.clone());
                            run_pre = before;
                        }
                    }
                }
                None => {
                    self.consider(&mut best, run.take().map(|r| with_pre(r, run_pre)));
                    self.consider(&mut best, item.factors.clone().map(|f| shift(f, before)));
                    run = Some(vec![Vec::new()]);
                    run_pre = after;
                }
            }
            before = after;
        }
        self.consider(&mut best, run.map(|r| with_pre(r, run_pre)));
        Info {
            exact: whole_exact,
            factors: best,
            max: before,
            word_only,
        }
    }

    fn alternation(self, subs: &[Hir]) -> Info {
        let mut exact: Option<Set> = Some(Vec::new());
        let mut factors: Option<Factors> = Some(Vec::new());
        let mut max: Option<Bound> = Some(Bound::ZERO);
        let mut word_only = true;
        for sub in subs {
            let br = self.info(sub);
            word_only &= br.word_only;
            max = match (max, br.max) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            exact = match (exact, &br.exact) {
                (Some(mut acc), Some(e)) if acc.len() + e.len() <= MAX_EXACT => {
                    acc.extend(e.iter().cloned());
                    Some(acc)
                }
                _ => None,
            };
            factors = match (factors, self.usable(&br)) {
                (Some(mut acc), Some(f)) => {
                    acc.extend(f);
                    Some(acc)
                }
                _ => None,
            };
        }
        Info {
            exact,
            factors,
            max,
            word_only,
        }
    }
}

/// The one-byte (or one-character) strings of a small class.
fn class_strings(class: &Class) -> Option<Set> {
    let mut out = Vec::new();
    match class {
        Class::Bytes(c) => {
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    if out.len() >= MAX_CLASS {
                        return None;
                    }
                    out.push(vec![b]);
                }
            }
        }
        Class::Unicode(c) => {
            for r in c.ranges() {
                for ch in r.start()..=r.end() {
                    if out.len() >= MAX_CLASS {
                        return None;
                    }
                    let mut buf = [0; 4];
                    out.push(ch.encode_utf8(&mut buf).as_bytes().to_vec());
                }
            }
        }
    }
    Some(out)
}

/// Does the class hold word bytes only?
fn class_is_word(class: &Class) -> bool {
    match class {
        Class::Bytes(c) => c
            .ranges()
            .iter()
            .all(|r| (r.start()..=r.end()).all(is_word)),
        Class::Unicode(c) => c.ranges().iter().all(|r| {
            (r.start()..=r.end()).all(|ch| u8::try_from(u32::from(ch)).is_ok_and(is_word))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &str) -> Hir {
        let config = regex_automata::util::syntax::Config::new()
            .unicode(false)
            .utf8(false);
        regex_automata::util::syntax::parse_with(p, &config).unwrap()
    }

    fn lits(p: &str) -> Option<Vec<String>> {
        analyse(&parse(p)).literals.map(|s| {
            s.into_iter()
                .map(|(b, _)| String::from_utf8(b).unwrap())
                .collect()
        })
    }

    fn pre(p: &str) -> Option<Bound> {
        analyse(&parse(p)).pre
    }

    fn max(p: &str) -> Option<Bound> {
        analyse(&parse(p)).max
    }

    fn b(fixed: usize, runs: usize) -> Option<Bound> {
        Some(Bound { fixed, runs })
    }

    #[test]
    fn literals_and_alternations() {
        assert_eq!(lits(r"\b(?:kill myself)\b").unwrap(), vec!["kill myself"]);
        assert_eq!(lits(r"(a|b)c").unwrap(), vec!["ac", "bc"]);
        assert_eq!(
            lits(r"\b(?:(wont|cant) wake up)\b").unwrap(),
            vec!["cant wake up", "wont wake up"]
        );
        assert_eq!(lits(r"ki(?:l{1,2})").unwrap(), vec!["kil", "kill"]);
        assert_eq!(lits(r"[ab]c").unwrap(), vec!["ac", "bc"]);
    }

    #[test]
    fn optional_parts_are_not_required() {
        assert_eq!(lits(r"(very )?sad").unwrap(), vec!["sad", "very sad"]);
        assert_eq!(lits(r"x?"), None);
        assert_eq!(lits(r"a|b?"), None);
        assert_eq!(lits(r"(\w+ )?pills").unwrap(), vec!["pills"]);
    }

    #[test]
    fn picks_a_selective_literal_near_the_start() {
        assert_eq!(lits(r"took \d+ pills").unwrap(), vec!["took "]);
        assert_eq!(pre(r"took \d+ pills"), b(0, 0));
        assert_eq!(lits(r"took .{0,20}pills").unwrap(), vec!["took "]);
        assert_eq!(lits(r"[a-z]+"), None);
        assert_eq!(lits(r"\d+ ?mg").unwrap(), vec![" mg", "mg"]);
        assert_eq!(pre(r"\d+ ?mg"), b(0, 1));
        // Small exact sets cross into whole phrases.
        assert_eq!(lits(r"(he|she) (wont|cant) wake up").unwrap().len(), 4);
        assert_eq!(pre(r"(he|she) (wont|cant) wake up"), b(0, 0));
        // The short first word loses to the selective later phrase.
        assert_eq!(
            lits(r"(he|my \w+) (wont|cant) wake up").unwrap(),
            vec![" cant wake up", " wont wake up"]
        );
        assert_eq!(pre(r"(he|my \w+) (wont|cant) wake up"), b(3, 1));
        // A literal at a bounded distance from the start wins ...
        assert_eq!(lits(r"a.*bcdef").unwrap(), vec!["a"]);
        assert_eq!(pre(r"a.*bcdef"), b(0, 0));
        // ... and when there is none, the most selective one.
        assert_eq!(lits(r"\w+ ab .*bcdef").unwrap(), vec![" ab "]);
        assert_eq!(lits(r".*ab .*bcdef").unwrap(), vec!["bcdef"]);
        assert_eq!(pre(r".*ab .*bcdef"), None);
    }

    #[test]
    fn each_literal_has_its_own_pre() {
        let a = analyse(&parse(r"(kills me|the \w+ kills you)"));
        assert_eq!(
            a.literals.unwrap(),
            vec![
                (b" kills you".to_vec(), b(4, 1)),
                (b"kills me".to_vec(), b(0, 0))
            ]
        );
        assert_eq!(a.pre, b(4, 1));
    }

    #[test]
    fn longest_match() {
        assert_eq!(max(r"\b(?:kill myself)\b"), b(11, 0));
        assert_eq!(max(r"my \w+ died"), b(8, 1));
        assert_eq!(max(r"(a|bcd)?x{2,3}"), b(6, 0));
        assert_eq!(max(r"took .{0,20}pills"), b(30, 0));
        assert_eq!(max(r"haha\w*"), b(0, 1));
        assert_eq!(max(r"(\w+ )+"), None);
        assert_eq!(max(r"a.*b"), None);
        assert_eq!(max(r"[^ ]+"), None);
        assert_eq!(Bound { fixed: 8, runs: 2 }.at(10), 28);
    }

    #[test]
    fn word_runs() {
        assert_eq!(longest_word_run(b""), 0);
        assert_eq!(longest_word_run(b"ab cde_1 f"), 5);
    }

    #[test]
    fn understands_what_the_old_parser_did_not() {
        assert_eq!(lits(r"(?i)ab").unwrap().len(), 4);
        assert_eq!(lits(r"\x41").unwrap(), vec!["A"]);
        assert_eq!(
            lits(r"[^\x00-\xff]").unwrap_or_default(),
            Vec::<String>::new()
        );
    }
}
