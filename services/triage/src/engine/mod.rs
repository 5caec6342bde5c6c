//! The triage engine: a compiled rulebook that assesses one message at a time.
//!
//! ```text
//! text ──normalise──▶ ascii + char map ──idioms blanked──▶ RegexSet (every pattern, one pass)
//!      ──▶ for each pattern that matched: spans ──context (clause, negation,
//!          third person, past, hypothesis)──▶ effective level per rule
//!      ──▶ combinations of tags ──▶ Assessment (max level, score, reasons, lang)
//! ```
//!
//! The engine keeps no history: the contact's risk is the router's ratchet
//! of every message's level.

mod factors;
mod normalise;
mod rulebook;

use std::path::Path;

use aho_corasick::AhoCorasick;
use nwd_proto::{Assessment, Language, Reason, RiskLevel};
use regex::bytes::Regex;

pub use rulebook::RulebookError;
use rulebook::{Combo, Context, Rule};

use normalise::{Lexicon, Normalised, Suffixes, TokenTable};

/// The rulebook shipped with the service.
pub const BUILTIN_RULEBOOK: &str = include_str!("../../rules/rulebook.toml");
/// How the builtin rulebook is named in errors and logs.
pub const BUILTIN_RULEBOOK_NAME: &str = "services/triage/rules/rulebook.toml (builtin)";

/// A compiled rulebook.
#[derive(Debug, Clone)]
pub struct Engine {
    version: String,
    source: String,
    rules: Vec<Rule>,
    /// Every rule pattern with its rule index.
    patterns: Vec<(usize, Regex)>,
    /// One pass over the text finds the literals that some pattern needs
    /// (see `factors`); only patterns with a literal present run.
    prefilter: Prefilter,
    idioms: Option<Regex>,
    combos: Vec<Combo>,
    context: Context,
    tokens: TokenTable,
    suffixes: Suffixes,
}

/// One rule's best match in a message.
#[derive(Debug, Clone, Copy)]
struct Hit {
    rule: usize,
    level: RiskLevel,
    /// Not lowered by context: its tags count for combinations.
    full: bool,
    start: usize,
    end: usize,
    /// How many times the rule matched at this level.
    matches: u32,
}

impl Engine {
    /// Compiles a rulebook from its text; `source_name` names it in errors.
    pub fn from_rulebook_str(text: &str, source_name: &str) -> Result<Engine, RulebookError> {
        let compiled = rulebook::parse(text, source_name)?;
        let invalid = |problem: String| RulebookError::Rule {
            file: source_name.to_owned(),
            line: 1,
            rule: "(all patterns)".to_owned(),
            problem,
        };
        let prefilter = Prefilter::new(compiled.patterns.iter().map(|(_, p)| p.as_str()))
            .map_err(|e| invalid(format!("prefilter does not build: {e}")))?;
        let mut patterns = Vec::with_capacity(compiled.patterns.len());
        for (rule, p) in &compiled.patterns {
            let re = rulebook::build(p).map_err(|e| invalid(e.to_string()))?;
            patterns.push((*rule, re));
        }
        let idioms = if compiled.idioms.is_empty() {
            None
        } else {
            let joined = compiled
                .idioms
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            Some(
                rulebook::build(&rulebook::wrap(&joined))
                    .map_err(|e| invalid(format!("idioms do not compile together: {e}")))?,
            )
        };
        Ok(Engine {
            version: compiled.version,
            source: source_name.to_owned(),
            rules: compiled.rules,
            patterns,
            prefilter,
            idioms,
            combos: compiled.combos,
            context: compiled.context,
            tokens: compiled.tokens,
            suffixes: compiled.suffixes,
        })
    }

    /// Reads and compiles a rulebook file.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine, RulebookError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulebookError::Read {
            file: name.clone(),
            source,
        })?;
        Engine::from_rulebook_str(&text, &name)
    }

    /// The rulebook compiled into the binary (`services/triage/rules/rulebook.toml`).
    pub fn builtin() -> Result<Engine, RulebookError> {
        Engine::from_rulebook_str(BUILTIN_RULEBOOK, BUILTIN_RULEBOOK_NAME)
    }

    /// The rulebook's `version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the rulebook came from (a path, or the builtin name).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of rules (combinations included).
    pub fn rule_count(&self) -> usize {
        self.rules.len() + self.combos.len()
    }

    /// Number of patterns.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Patterns that run on every message (no necessary literal found).
    pub fn unfiltered_pattern_count(&self) -> usize {
        self.prefilter.always.len()
    }

    /// Assesses one message. Any string is accepted; never panics.
    pub fn assess(&self, text: &str) -> Assessment {
        self.assess_with(text, false)
    }

    /// Like [`Engine::assess`] but runs every pattern, skipping the
    /// prefilter. Slow; for tests that check the prefilter changes nothing.
    #[doc(hidden)]
    pub fn assess_exhaustive(&self, text: &str) -> Assessment {
        self.assess_with(text, true)
    }

    fn assess_with(&self, text: &str, exhaustive: bool) -> Assessment {
        let mut n = normalise::normalise(
            text,
            Lexicon {
                tokens: &self.tokens,
                suffixes: &self.suffixes,
            },
        );
        let lang = if n.lang_score > 0 {
            Language::Es
        } else {
            Language::En
        };
        if let Some(idioms) = &self.idioms {
            let spans: Vec<(usize, usize)> = idioms
                .find_iter(&n.text)
                .map(|m| (m.start(), m.end()))
                .collect();
            for (s, e) in spans {
                if let Some(bytes) = n.text.get_mut(s..e) {
                    bytes.fill(b' ');
                }
            }
        }
        let matched: Vec<usize> = if exhaustive {
            (0..self.patterns.len())
                .filter(|&i| {
                    self.patterns
                        .get(i)
                        .is_some_and(|(_, re)| re.is_match(&n.text))
                })
                .collect()
        } else {
            self.prefilter.candidates(&n.text)
        };
        if matched.is_empty() {
            return self.assessment(RiskLevel::Low, Vec::new(), lang, 0);
        }
        let mut cues = Cues::new(&self.context, &n.text);
        let mut hits: Vec<Hit> = Vec::new();
        // Every unlowered match with its rule's tags, for combinations.
        let mut tagged: Vec<(u64, usize, usize)> = Vec::new();
        for &index in &matched {
            let Some((rule_index, re)) = self.patterns.get(index) else {
                continue;
            };
            let Some(rule) = self.rules.get(*rule_index) else {
                continue;
            };
            for m in re.find_iter(&n.text) {
                let Some((level, full)) = self.effective(rule, m.start(), m.end(), &mut cues, &n)
                else {
                    continue;
                };
                if full && rule.tags != 0 {
                    tagged.push((rule.tags, m.start(), m.end()));
                }
                let hit = Hit {
                    rule: *rule_index,
                    level,
                    full,
                    start: m.start(),
                    end: m.end(),
                    matches: 1,
                };
                match hits.iter_mut().find(|h| h.rule == *rule_index) {
                    Some(h) => {
                        if (hit.level, hit.full) > (h.level, h.full) {
                            *h = hit;
                        } else if (hit.level, hit.full) == (h.level, h.full) {
                            h.matches += 1;
                            if hit.start < h.start {
                                h.start = hit.start;
                                h.end = hit.end;
                            }
                        }
                    }
                    None => hits.push(hit),
                }
            }
        }
        let mut reasons: Vec<Reason> = Vec::with_capacity(hits.len() + 1);
        for combo in &self.combos {
            let Some((s, e)) = combo_span(combo.all, &tagged, self.context.combo_window) else {
                continue;
            };
            let (start, end) = n.original_span(s, e);
            reasons.push(Reason {
                rule: combo.id.clone(),
                label: combo.label.clone(),
                level: combo.level,
                start,
                end,
            });
        }
        for h in &hits {
            let Some(rule) = self.rules.get(h.rule) else {
                continue;
            };
            let (start, end) = n.original_span(h.start, h.end);
            reasons.push(Reason {
                rule: rule.id.clone(),
                label: rule.label.clone(),
                level: h.level,
                start,
                end,
            });
        }
        reasons.sort_by(|a, b| b.level.cmp(&a.level).then(a.start.cmp(&b.start)));
        let level = reasons
            .iter()
            .map(|r| r.level)
            .max()
            .unwrap_or(RiskLevel::Low);
        // Repeated matches of one rule strengthen it a little.
        let repeats = hits
            .iter()
            .filter(|h| h.level == level)
            .map(|h| h.matches.saturating_sub(1) as usize)
            .sum();
        self.assessment(level, reasons, lang, repeats)
    }

    fn assessment(
        &self,
        level: RiskLevel,
        reasons: Vec<Reason>,
        lang: Language,
        repeats: usize,
    ) -> Assessment {
        Assessment {
            level,
            score: score(level, &reasons, repeats),
            reasons,
            lang,
            rulebook_version: self.version.clone(),
        }
    }

    /// The level a match argues for in its context, or `None` when negated.
    /// The flag is true when no context lowered it.
    fn effective(
        &self,
        rule: &Rule,
        s: usize,
        e: usize,
        cues: &mut Cues,
        n: &Normalised,
    ) -> Option<(RiskLevel, bool)> {
        let contextual = rule.negatable
            || rule.third_person.is_some()
            || rule.past.is_some()
            || rule.hypothetical.is_some();
        if !contextual {
            return Some((rule.level, true));
        }
        let text = &n.text;
        let clause = cues.clause(s, e);
        let ctx = &self.context;
        let (cs, ce) = (clause.start, clause.end);
        if rule.negatable && clause.negated(s, text, ctx) {
            return None;
        }
        let mut level = rule.level;
        if let Some(l) = rule
            .third_person
            .filter(|_| clause.third_person(s, e, text, ctx))
        {
            level = level.min(l);
        }
        let past = || any_within(&clause.past, cs, ce) && !any_within(&clause.present, cs, ce);
        if let Some(l) = rule.past.filter(|_| past()) {
            level = level.min(l);
        }
        if let Some(l) = rule
            .hypothetical
            .filter(|_| any_within(&clause.hypothetical, cs, s))
        {
            level = level.min(l);
        }
        Some((level, level == rule.level))
    }
}

/// Literals that patterns need, found in one Aho-Corasick pass.
#[derive(Debug, Clone)]
struct Prefilter {
    literals: AhoCorasick,
    /// Literal index → patterns that need it (one of their literals).
    needed_by: Vec<Vec<usize>>,
    /// Patterns without a necessary literal: they always run.
    always: Vec<usize>,
    count: usize,
}

impl Prefilter {
    fn new<'a>(
        patterns: impl Iterator<Item = &'a str>,
    ) -> Result<Prefilter, aho_corasick::BuildError> {
        let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut needed_by: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        let mut count = 0;
        for (p, source) in patterns.enumerate() {
            count += 1;
            match factors::necessary_literals(source) {
                Some(lits) => {
                    for lit in lits {
                        let k = *index.entry(lit.clone()).or_insert_with(|| {
                            literals.push(lit);
                            needed_by.push(Vec::new());
                            literals.len() - 1
                        });
                        if let Some(v) = needed_by.get_mut(k) {
                            v.push(p);
                        }
                    }
                }
                None => always.push(p),
            }
        }
        Ok(Prefilter {
            literals: AhoCorasick::new(&literals)?,
            needed_by,
            always,
            count,
        })
    }

    /// Patterns that may match `text`, in pattern order.
    fn candidates(&self, text: &[u8]) -> Vec<usize> {
        let mut wanted = vec![false; self.count];
        for &p in &self.always {
            if let Some(w) = wanted.get_mut(p) {
                *w = true;
            }
        }
        for m in self.literals.find_overlapping_iter(text) {
            for &p in self
                .needed_by
                .get(m.pattern().as_usize())
                .into_iter()
                .flatten()
            {
                if let Some(w) = wanted.get_mut(p) {
                    *w = true;
                }
            }
        }
        wanted
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.then_some(i))
            .collect()
    }
}

/// Where a combination fires: the span covering one match of each of its
/// tags, all within `window` bytes of normalised text; `None` if it does not.
fn combo_span(all: u64, tagged: &[(u64, usize, usize)], window: usize) -> Option<(usize, usize)> {
    let candidates = || tagged.iter().filter(|(t, _, _)| t & all != 0);
    for &(_, anchor, _) in candidates() {
        let limit = anchor.saturating_add(window);
        let mut covered = 0;
        let (mut s, mut e) = (usize::MAX, 0);
        for &(t, ms, me) in candidates() {
            if ms >= anchor && me <= limit {
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

/// Orders messages within a level: the level's band, plus a little for each
/// further reason or repeated match. Always in `[0, 1]`.
fn score(level: RiskLevel, reasons: &[Reason], repeats: usize) -> f32 {
    if reasons.is_empty() {
        return 0.0;
    }
    let band = match level {
        RiskLevel::Low => 0.05,
        RiskLevel::Moderate => 0.30,
        RiskLevel::High => 0.55,
        RiskLevel::Imminent => 0.80,
    };
    let at_level = reasons.iter().filter(|r| r.level == level).count();
    let others = reasons.len().saturating_sub(at_level);
    let at_level = at_level + repeats;
    let bonus = 0.04 * at_level.saturating_sub(1) as f32 + 0.01 * others as f32;
    (band + bonus.min(0.19)).clamp(0.0, 1.0)
}

/// Context cues of one message, found clause by clause and only for the
/// clauses that hold a match that needs them.
struct Cues<'a> {
    ctx: &'a Context,
    text: &'a [u8],
    /// Clause breaks of the whole message.
    breaks: Vec<(usize, usize)>,
    /// Clauses whose cues were already found.
    clauses: Vec<Clause>,
}

/// One clause `[start, end)` and the cues inside it (offsets into the whole text).
#[derive(Debug, Default)]
struct Clause {
    start: usize,
    end: usize,
    negation: Vec<(usize, usize)>,
    third_person: Vec<(usize, usize)>,
    past: Vec<(usize, usize)>,
    present: Vec<(usize, usize)>,
    hypothetical: Vec<(usize, usize)>,
}

/// Is any cue entirely within `[from, to)`?
fn any_within(cues: &[(usize, usize)], from: usize, to: usize) -> bool {
    cues.iter().any(|&(s, e)| s >= from && e <= to)
}

impl<'a> Cues<'a> {
    fn new(ctx: &'a Context, text: &'a [u8]) -> Cues<'a> {
        let breaks = ctx
            .clause_breaks
            .as_ref()
            .map(|re| re.find_iter(text).map(|m| (m.start(), m.end())).collect())
            .unwrap_or_default();
        Cues {
            ctx,
            text,
            breaks,
            clauses: Vec::new(),
        }
    }

    /// The clause around `[s, e)` — from the end of the last break before it
    /// to the start of the first break after it — with its cues.
    fn clause(&mut self, s: usize, e: usize) -> &Clause {
        // Breaks come from find_iter: sorted and non-overlapping.
        let before = self.breaks.partition_point(|b| b.1 <= s);
        let start = before
            .checked_sub(1)
            .and_then(|i| self.breaks.get(i))
            .map_or(0, |b| b.1);
        let after = self.breaks.partition_point(|b| b.0 < e);
        let end = self.breaks.get(after).map_or(self.text.len(), |b| b.0);
        let index = match self
            .clauses
            .iter()
            .position(|c| c.start == start && c.end == end)
        {
            Some(i) => i,
            None => {
                let slice = self.text.get(start..end).unwrap_or_default();
                let present = self.ctx.cue_set.matches(slice);
                let find = |k: usize, re: &Option<Regex>| -> Vec<(usize, usize)> {
                    match re.as_ref().filter(|_| present.matched(k)) {
                        Some(re) => re
                            .find_iter(slice)
                            .map(|m| (start + m.start(), start + m.end()))
                            .collect(),
                        None => Vec::new(),
                    }
                };
                self.clauses.push(Clause {
                    start,
                    end,
                    negation: find(0, &self.ctx.negation),
                    third_person: find(1, &self.ctx.third_person),
                    past: find(2, &self.ctx.past),
                    present: find(3, &self.ctx.present),
                    hypothetical: find(4, &self.ctx.hypothetical),
                });
                self.clauses.len() - 1
            }
        };
        &self.clauses[index]
    }
}

impl Clause {
    /// A negation cue in the clause governs the match when only filler
    /// words ("going to", "ever", "want to") stand between them.
    fn negated(&self, s: usize, text: &[u8], ctx: &Context) -> bool {
        self.negation.iter().any(|&(ns, ne)| {
            if ne > s {
                return false;
            }
            let between = text.get(ne..s).unwrap_or_default();
            let mut count = 0;
            for word in between
                .split(|b| !b.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                count += 1;
                if count > ctx.negation_window || !ctx.negation_fillers.contains(word) {
                    return false;
                }
            }
            ns >= self.start
        })
    }

    /// Someone else is the subject: a third-person cue earlier in the clause
    /// and no first-person word between it and the end of the match.
    fn third_person(&self, s: usize, e: usize, text: &[u8], ctx: &Context) -> bool {
        self.third_person.iter().any(|&(_, te)| {
            if te > s {
                return false;
            }
            !text
                .get(te..e)
                .unwrap_or_default()
                .split(|b| !b.is_ascii_alphanumeric())
                .any(|w| ctx.first_person.contains(w))
        })
    }
}

#[cfg(test)]
mod tests;
