//! Matchers: one compiled pattern, searched without building automaton
//! states per message.
//!
//! Every pattern of the rulebook (rule patterns, the joined idioms, the
//! context cue lists, clause breaks) is compiled at load into one of:
//!
//! 1. an **anchored full DFA** (`regex_automata::dfa::dense`), when the
//!    pattern has necessary literals with a bounded `pre` (see `factors`):
//!    the engine runs it only from the positions where a match can start,
//!    `[l - pre, l]` for each literal occurrence `l` the prefilter found.
//!    An anchored DFA has no unanchored prefix loop, so it stays small even
//!    for patterns with gaps (`.{0,20}`, `(\w+ ){0,3}`).
//! 2. otherwise an **unanchored full DFA** pair (forward, and reverse for the
//!    match start) that searches the whole text;
//! 3. otherwise (a DFA over [`DFA_LIMIT`] bytes) the **lazy** regex.
//!
//! DFAs are built once, so text the engine has never seen costs what text it
//! has seen costs. The lazy `regex::bytes::Regex` is the reference the tests
//! compare against (`Engine::assess_exhaustive`) and the fallback; it is kept
//! from load only for a pattern that runs on it, and otherwise compiled on
//! first use (never, in the service). All three have the same leftmost-first
//! semantics (bytes, Unicode off), so they find the same matches.

use std::sync::OnceLock;

use regex::bytes::Regex;
use regex_automata::dfa::{Automaton, StartKind, dense, regex::Regex as DfaRegex};
use regex_automata::nfa::thompson;
use regex_automata::util::iter::Searcher;
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, Input, MatchError, MatchKind};

use super::factors::{self, Analysis, Bound};

/// Largest DFA (bytes; forward and reverse each) kept for one pattern; a
/// pattern whose DFA would be larger runs on its lazy regex.
pub(crate) const DFA_LIMIT: usize = 2 << 20;

/// A pattern compiled for search.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    /// The pattern as compiled (wrapped, normalised).
    source: String,
    /// The lazy regex, once compiled (`None` never happens: the same
    /// pattern compiled when the rulebook was checked).
    lazy: OnceLock<Option<Regex>>,
    analysis: Analysis,
    engine: Fast,
}

#[derive(Debug, Clone)]
enum Fast {
    Anchored(Box<AnchoredDfa>),
    Unanchored(Box<DfaRegex>),
    Lazy,
}

/// Longest walk of an anchored DFA whose pattern has no bounded longest
/// match; a longer one gives up and the text is searched by the fallback,
/// so a message never costs (starts × text length).
const WALK_CAP: usize = 256;

/// An anchored DFA and its start state for every look-behind byte.
#[derive(Debug, Clone)]
struct AnchoredDfa {
    dfa: dense::DFA<Vec<u32>>,
    /// Longest walk (`None`: the pattern's matches are bounded, so the DFA
    /// dies soon after their bound).
    cap: Option<usize>,
    /// Which of `starts` a match uses when it would begin at the text start
    /// (index 0) or after byte `b` (index `b + 1`).
    start_of: Vec<u8>,
    /// The distinct start states, each with the bytes that do not kill it
    /// (a bit set): most positions are rejected on that one bit.
    starts: Vec<(StateID, [u64; 4])>,
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

fn thompson_config() -> thompson::Config {
    thompson::Config::new().utf8(false)
}

fn dense_config() -> dense::Config {
    dense::Config::new()
        .dfa_size_limit(Some(DFA_LIMIT))
        .determinize_size_limit(Some(DFA_LIMIT))
}

impl AnchoredDfa {
    fn new(source: &str, cap: Option<usize>) -> Option<AnchoredDfa> {
        let dfa = dense::Builder::new()
            .syntax(syntax_config())
            .thompson(thompson_config())
            .configure(
                dense_config()
                    .start_kind(StartKind::Anchored)
                    .match_kind(MatchKind::LeftmostFirst)
                    .accelerate(false)
                    .specialize_start_states(false),
            )
            .build(source)
            .ok()?;
        let config = start::Config::new().anchored(Anchored::Yes);
        let mut start_of = Vec::with_capacity(257);
        let mut starts: Vec<(StateID, [u64; 4])> = Vec::new();
        for lb in std::iter::once(None).chain((0..=255u8).map(Some)) {
            let sid = dfa.start_state(&config.clone().look_behind(lb)).ok()?;
            let k = match starts.iter().position(|s| s.0 == sid) {
                Some(k) => k,
                None => {
                    let mut alive = [0u64; 4];
                    for b in 0..=255u8 {
                        if !dfa.is_dead_state(dfa.next_state(sid, b)) {
                            alive[usize::from(b >> 6)] |= 1 << (b & 63);
                        }
                    }
                    starts.push((sid, alive));
                    starts.len() - 1
                }
            };
            start_of.push(u8::try_from(k).ok()?);
        }
        Some(AnchoredDfa {
            dfa,
            cap,
            start_of,
            starts,
        })
    }

    /// End of the leftmost-first match that starts at `at`, if any (`Err`:
    /// the DFA gave up, which this configuration never does).
    fn walk(&self, hay: &[u8], at: usize) -> Result<Option<usize>, ()> {
        let behind = match at.checked_sub(1) {
            None => 0,
            Some(i) => usize::from(*hay.get(i).ok_or(())?) + 1,
        };
        let k = usize::from(*self.start_of.get(behind).ok_or(())?);
        let &(mut sid, alive) = self.starts.get(k).ok_or(())?;
        let dfa = &self.dfa;
        if let Some(&b) = hay.get(at)
            && alive[usize::from(b >> 6)] & (1 << (b & 63)) == 0
        {
            return Ok(None);
        }
        let mut end = None;
        let stop = self.cap.map_or(hay.len(), |c| at.saturating_add(c));
        // Matches are reported one byte late: entering a match state after
        // the byte at `i` means a match ends at `i`.
        for (i, &b) in hay.iter().enumerate().skip(at) {
            if i >= stop {
                return Err(());
            }
            sid = dfa.next_state(sid, b);
            if dfa.is_special_state(sid) {
                if dfa.is_match_state(sid) {
                    end = Some(i);
                } else if dfa.is_dead_state(sid) {
                    return Ok(end);
                } else {
                    return Err(());
                }
            }
        }
        sid = dfa.next_eoi_state(sid);
        if dfa.is_match_state(sid) {
            end = Some(hay.len());
        }
        Ok(end)
    }

    fn memory(&self) -> usize {
        self.dfa.memory_usage()
            + self.start_of.len()
            + self.starts.len() * std::mem::size_of::<(StateID, [u64; 4])>()
    }
}

impl Matcher {
    /// Analyses `lazy`'s pattern (already checked by the lazy regex) and
    /// builds its DFA.
    pub fn new(lazy: Regex) -> Matcher {
        let source = lazy.as_str().to_owned();
        let matcher = Matcher::compile(&source);
        if matcher.has_dfa() {
            matcher
        } else {
            // It runs on the lazy regex: keep it.
            Matcher {
                lazy: OnceLock::from(Some(lazy)),
                ..matcher
            }
        }
    }

    fn compile(source: &str) -> Matcher {
        let analysis = syntax::parse_with(source, &syntax_config())
            .map(|hir| factors::analyse(&hir))
            .unwrap_or_default();
        let anchored = analysis
            .literals
            .as_ref()
            .filter(|l| !l.is_empty() && analysis.pre.is_some())
            .and_then(|_| AnchoredDfa::new(source, analysis.max.map_or(Some(WALK_CAP), |_| None)));
        let engine = match anchored {
            Some(a) => Fast::Anchored(Box::new(a)),
            None => DfaRegex::builder()
                .syntax(syntax_config())
                .thompson(thompson_config())
                .dense(dense_config())
                .build(source)
                .map_or(Fast::Lazy, |d| Fast::Unanchored(Box::new(d))),
        };
        Matcher {
            source: source.to_owned(),
            lazy: OnceLock::new(),
            analysis,
            engine,
        }
    }

    /// The pattern as compiled.
    #[cfg(test)]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The lazy regex (reference and fallback), compiled on first use.
    pub fn lazy(&self) -> Option<&Regex> {
        self.lazy
            .get_or_init(|| super::rulebook::build(&self.source).ok())
            .as_ref()
    }

    /// Necessary literals, `pre` and longest match.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// Whether a full DFA was built (anchored or not).
    pub fn has_dfa(&self) -> bool {
        !matches!(self.engine, Fast::Lazy)
    }

    /// Whether the matcher runs from the prefilter's start positions.
    pub fn is_anchored(&self) -> bool {
        matches!(self.engine, Fast::Anchored(_))
    }

    /// Bytes the DFAs use.
    pub fn dfa_memory(&self) -> usize {
        match &self.engine {
            Fast::Anchored(a) => a.memory(),
            Fast::Unanchored(d) => d.forward().memory_usage() + d.reverse().memory_usage(),
            Fast::Lazy => 0,
        }
    }

    /// Every match in `hay`, as `find_iter` reports them, appended to `out`.
    /// `reference` uses the lazy regex.
    pub fn find_all(&self, hay: &[u8], reference: bool, out: &mut Vec<(usize, usize)>) {
        let done = match &self.engine {
            Fast::Unanchored(d) if !reference => {
                let first = out.len();
                let r = find_unanchored(d, hay, out);
                if r.is_err() {
                    out.truncate(first);
                }
                r.is_ok()
            }
            Fast::Anchored(a) if !reference => {
                let first = out.len();
                let r = self.find_anchored(a, hay, &[(0, hay.len())], out);
                if r.is_err() {
                    out.truncate(first);
                }
                r.is_ok()
            }
            _ => false,
        };
        if !done && let Some(re) = self.lazy() {
            out.extend(re.find_iter(hay).map(|m| (m.start(), m.end())));
        }
    }

    /// Every match in `hay`, given `starts`: sorted, disjoint, inclusive
    /// ranges `[lo, hi]` of positions that hold every match start (from
    /// the literal occurrences and `pre`). Same result as
    /// [`Matcher::find_all`]; only an anchored matcher uses `starts`.
    pub fn find_from(&self, hay: &[u8], starts: &[(usize, usize)], out: &mut Vec<(usize, usize)>) {
        if let Fast::Anchored(a) = &self.engine {
            let first = out.len();
            if self.find_anchored(a, hay, starts, out).is_ok() {
                return;
            }
            out.truncate(first);
        }
        self.find_all(hay, false, out);
    }

    fn find_anchored(
        &self,
        a: &AnchoredDfa,
        hay: &[u8],
        starts: &[(usize, usize)],
        out: &mut Vec<(usize, usize)>,
    ) -> Result<(), ()> {
        // Leftmost-first, non-overlapping: the first start (in order) with
        // a match gives the match; the next search begins at its end.
        let mut from = 0;
        for &(lo, hi) in starts {
            let mut at = lo.max(from);
            while at <= hi.min(hay.len()) {
                match a.walk(hay, at)? {
                    Some(end) if end > at => {
                        out.push((at, end));
                        from = end;
                        at = end;
                    }
                    // Never: a match holds a non-empty literal.
                    Some(_) => return Err(()),
                    None => at += 1,
                }
            }
        }
        Ok(())
    }
}

fn find_unanchored(
    dfa: &DfaRegex,
    hay: &[u8],
    out: &mut Vec<(usize, usize)>,
) -> Result<(), MatchError> {
    let mut it = Searcher::new(Input::new(hay));
    while let Some(m) = it.try_advance(|input| dfa.try_search(input))? {
        out.push((m.start(), m.end()));
    }
    Ok(())
}

/// Start ranges for a match: `[l - pre, l]` for a literal occurrence at `l`.
pub(crate) fn start_range(pre: Option<Bound>, at: usize, word_run: usize) -> (usize, usize) {
    match pre {
        Some(p) => (at.saturating_sub(p.at(word_run)), at),
        None => (0, at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> Matcher {
        Matcher::new(super::super::rulebook::build(p).unwrap())
    }

    fn lazy(m: &Matcher, t: &[u8]) -> Vec<(usize, usize)> {
        m.lazy()
            .unwrap()
            .find_iter(t)
            .map(|m| (m.start(), m.end()))
            .collect()
    }

    #[test]
    fn every_engine_agrees_with_the_lazy_regex() {
        let texts: &[&[u8]] = &[
            b"i took all my pills and i took all the pills",
            b"kill kil killl myself",
            b"",
            b"aaa",
            b"mytook all my pills",
        ];
        for p in [
            r"\b(?:took all (my|the) pills)\b",
            r"a*",
            r"\b",
            r"ki(?:l{1,2})",
            r"(a|aa)",
            r"a.*s",
        ] {
            let matcher = m(p);
            assert!(matcher.has_dfa(), "{p}");
            for t in texts {
                let want = lazy(&matcher, t);
                for reference in [false, true] {
                    let mut got = Vec::new();
                    matcher.find_all(t, reference, &mut got);
                    assert_eq!(got, want, "{p} on {t:?}");
                }
            }
        }
    }

    #[test]
    fn anchored_matchers_start_only_where_told() {
        let matcher = m(r"\b(?:took all (my|the) pills)\b");
        assert!(matcher.is_anchored());
        let t = b"i took all my pills and i took all the pills";
        let mut out = Vec::new();
        matcher.find_from(t, &[(2, 2), (26, 26)], &mut out);
        assert_eq!(out, vec![(2, 19), (26, 44)]);
        out.clear();
        matcher.find_from(t, &[(0, 5)], &mut out);
        assert_eq!(out, vec![(2, 19)]);
        out.clear();
        // Look-behind sees the byte before the start: no boundary inside `mytook`.
        matcher.find_from(b"mytook all my pills", &[(2, 2)], &mut out);
        assert_eq!(out, vec![]);
        // A start range past the end of the text is clipped.
        matcher.find_from(t, &[(40, 400)], &mut out);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn leftmost_first_from_each_start() {
        // `(a|aa)` prefers `a`: two matches in `aa`, as `find_iter` finds.
        let matcher = m(r"(a|aa)");
        assert!(matcher.is_anchored());
        let mut out = Vec::new();
        matcher.find_from(b"aa", &[(0, 1)], &mut out);
        assert_eq!(out, lazy(&matcher, b"aa"));
    }

    #[test]
    fn patterns_without_a_near_literal_search_the_whole_text() {
        let matcher = m(r".*ab .*bcdef");
        assert!(matcher.has_dfa() && !matcher.is_anchored());
        let mut out = Vec::new();
        matcher.find_from(b"xx ab yy bcdef", &[(9, 9)], &mut out);
        assert_eq!(out, vec![(0, 14)]);
    }

    #[test]
    fn long_walks_give_up_and_fall_back() {
        let matcher = m(r"a.*b");
        assert!(matcher.is_anchored());
        let mut t = vec![b'a'; 2 * WALK_CAP];
        t.push(b'b');
        let mut out = Vec::new();
        matcher.find_from(&t, &[(0, t.len())], &mut out);
        assert_eq!(out, lazy(&matcher, &t));
        out.clear();
        matcher.find_from(b"xx a yy b", &[(3, 3)], &mut out);
        assert_eq!(out, vec![(3, 9)]);
    }

    #[test]
    fn start_ranges() {
        let pre = Some(Bound { fixed: 3, runs: 1 });
        assert_eq!(start_range(pre, 10, 4), (3, 10));
        assert_eq!(start_range(pre, 2, 4), (0, 2));
        assert_eq!(start_range(None, 7, 4), (0, 7));
    }
}
