//! The triage engine: a compiled rulebook that assesses one message at a time.
//!
//! ```text
//! text ──normalise──▶ ascii + char map
//!      ──▶ one Aho-Corasick pass over the literals every pattern needs
//!          (rules, idioms, context cues): candidates, and where their matches
//!          can start
//!      ──▶ idioms blanked ──▶ candidate patterns' DFAs from those starts: spans
//!      ──context (clause, negation, third person, past, hypothesis)──▶
//!          effective level per rule
//!      ──▶ combinations of tags ──▶ Assessment (max level, score, reasons, lang)
//! ```
//!
//! Every automaton is a full DFA built at load (`matcher`), so text the engine
//! has never seen costs what text it has seen costs.
//!
//! The engine keeps no history: the contact's risk is the router's ratchet
//! of every message's level.

mod factors;
mod matcher;
mod model;
mod normalise;
mod rulebook;
mod voice;

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use nwd_proto::{Assessment, Language, Reason, RiskLevel};

use factors::Bound;
use matcher::Matcher;

pub use model::{BUILTIN_MODEL_NAME, Feature, HEADS as MODEL_HEADS, Model, WINDOW_WORDS};
pub use rulebook::RulebookError;
use rulebook::{BARE_BYTES, BARE_REACH, BARE_WORDS, Combo, Context, Rule};

use normalise::{Lexicon, Normalised, Suffixes, TokenTable};

/// The rulebook shipped with the service.
pub const BUILTIN_RULEBOOK: &str = include_str!("../../rules/rulebook.toml");
/// How the builtin rulebook is named in errors and logs.
pub const BUILTIN_RULEBOOK_NAME: &str = "services/triage/rules/rulebook.toml (builtin)";

/// A compiled rulebook.
#[derive(Debug, Clone)]
pub struct Engine {
    rulebook_version: String,
    source: String,
    rules: Vec<Rule>,
    /// Every rule pattern with its rule index.
    patterns: Vec<(usize, Matcher)>,
    /// One pass over the text finds the literals that some matcher needs
    /// (see `factors`): only matchers with a literal present run, and only
    /// from where their matches can start.
    prefilter: Prefilter,
    idioms: Option<Matcher>,
    combos: Vec<Combo>,
    context: Context,
    tokens: TokenTable,
    suffixes: Suffixes,
    /// The bit of the `no_plan` tag.
    no_plan: u64,
    /// The learned second opinion, which may only raise the rules' level.
    model: Option<Model>,
    /// `rulebook version` or `rulebook version+model version`.
    version: String,
}

/// Matchers other than rule patterns, by their place after the rule
/// patterns in the prefilter (`patterns.len() + slot`).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Idioms,
    Breaks,
    Negation,
    ThirdPerson,
    Past,
    Present,
    Hypothetical,
}

impl Slot {
    const ALL: [Slot; 7] = [
        Slot::Idioms,
        Slot::Breaks,
        Slot::Negation,
        Slot::ThirdPerson,
        Slot::Past,
        Slot::Present,
        Slot::Hypothetical,
    ];
}

/// One match: rule index, start, end, and its level in context with
/// whether context left it unlowered (`None`: negated).
type Matched = (usize, usize, usize, Option<(RiskLevel, bool)>);

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

/// What [`Engine::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Compiled matchers: rule patterns, the joined idioms, the context cue
    /// lists and clause breaks.
    pub matchers: usize,
    /// Of those, how many run an anchored DFA from the prefilter's starts.
    pub anchored: usize,
    /// How many run on a lazy regex because their DFA is over the limit.
    pub lazy_fallbacks: usize,
    /// How many run on every message (no necessary literal).
    pub always: usize,
    /// Memory of all DFAs.
    pub dfa_bytes: usize,
    /// Memory of the Aho-Corasick automaton.
    pub prefilter_bytes: usize,
    /// Distinct literals in the prefilter.
    pub literals: usize,
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
        let patterns: Vec<(usize, Matcher)> = compiled
            .patterns
            .into_iter()
            .map(|(rule, re)| (rule, Matcher::new(re)))
            .collect();
        let idioms = if compiled.idioms.is_empty() {
            None
        } else {
            let joined = compiled
                .idioms
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            let re = rulebook::build(&rulebook::wrap(&joined))
                .map_err(|e| invalid(format!("idioms do not compile together: {e}")))?;
            Some(Matcher::new(re))
        };
        let mut engine = Engine {
            version: compiled.version.clone(),
            model: None,
            rulebook_version: compiled.version,
            source: source_name.to_owned(),
            rules: compiled.rules,
            patterns,
            prefilter: Prefilter::default(),
            idioms,
            combos: compiled.combos,
            context: compiled.context,
            tokens: compiled.tokens,
            suffixes: compiled.suffixes,
            no_plan: compiled.no_plan,
        };
        let matchers: Vec<Option<&Matcher>> = (0..engine.matcher_count())
            .map(|id| engine.matcher(id))
            .collect();
        engine.prefilter = Prefilter::new(&matchers)
            .map_err(|e| invalid(format!("prefilter does not build: {e}")))?;
        Ok(engine)
    }

    /// Reads and compiles a rulebook file.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine, RulebookError> {
        let (text, name) = rulebook::read(path.as_ref())?;
        Engine::from_rulebook_str(&text, &name)
    }

    /// The rulebook and the model compiled into the binary
    /// (`services/triage/rules/rulebook.toml`, `rules/model.toml`).
    pub fn builtin() -> Result<Engine, RulebookError> {
        Ok(Engine::builtin_rules()?.with_model(Some(Model::builtin()?)))
    }

    /// The builtin rulebook without the model.
    pub fn builtin_rules() -> Result<Engine, RulebookError> {
        Engine::from_rulebook_str(BUILTIN_RULEBOOK, BUILTIN_RULEBOOK_NAME)
    }

    /// Replaces the learned model (`None`: rules only).
    #[must_use]
    pub fn with_model(mut self, model: Option<Model>) -> Engine {
        self.version = match &model {
            Some(m) => format!("{}+model.{}", self.rulebook_version, m.version()),
            None => self.rulebook_version.clone(),
        };
        self.model = model;
        self
    }

    /// The learned model, if any.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// What every assessment records: the rulebook's `version`, and the
    /// model's when there is one (`2025.11.7+model.2026.11.3`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The rulebook's own `version`.
    pub fn rulebook_version(&self) -> &str {
        &self.rulebook_version
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
        self.prefilter
            .always
            .iter()
            .filter(|&&id| id < self.patterns.len())
            .count()
    }

    /// What was built at load: automata, their memory, and which matchers
    /// fall back to a lazy regex (a DFA over the size limit).
    pub fn stats(&self) -> EngineStats {
        let all = || (0..self.matcher_count()).filter_map(|id| self.matcher(id));
        EngineStats {
            matchers: all().count(),
            anchored: all().filter(|m| m.is_anchored()).count(),
            lazy_fallbacks: all().filter(|m| !m.has_dfa()).count(),
            always: self.prefilter.always.len(),
            dfa_bytes: all().map(Matcher::dfa_memory).sum(),
            prefilter_bytes: self
                .prefilter
                .literals
                .as_ref()
                .map_or(0, AhoCorasick::memory_usage),
            literals: self.prefilter.need_at.len().saturating_sub(1),
        }
    }

    /// Rule patterns, then the [`Slot`]s.
    fn matcher_count(&self) -> usize {
        self.patterns.len() + Slot::ALL.len()
    }

    fn slot_id(&self, slot: Slot) -> usize {
        self.patterns.len() + slot as usize
    }

    fn matcher(&self, id: usize) -> Option<&Matcher> {
        if let Some((_, m)) = self.patterns.get(id) {
            return Some(m);
        }
        let ctx = &self.context;
        match Slot::ALL.get(id.checked_sub(self.patterns.len())?)? {
            Slot::Idioms => self.idioms.as_ref(),
            Slot::Breaks => ctx.clause_breaks.as_ref(),
            Slot::Negation => ctx.negation.as_ref(),
            Slot::ThirdPerson => ctx.third_person.as_ref(),
            Slot::Past => ctx.past.as_ref(),
            Slot::Present => ctx.present.as_ref(),
            Slot::Hypothetical => ctx.hypothetical.as_ref(),
        }
    }

    /// Assesses one message. Any string is accepted; never panics.
    pub fn assess(&self, text: &str) -> Assessment {
        self.assess_with(text, false)
    }

    /// Like [`Engine::assess`] but with the reference engine: no prefilter,
    /// every pattern's lazy regex over the whole text. Slow; for tests that
    /// check the prefilter and the DFAs change nothing.
    #[doc(hidden)]
    pub fn assess_exhaustive(&self, text: &str) -> Assessment {
        self.assess_with(text, true)
    }

    /// The rules' verdict, before the model.
    fn judge(&self, text: &str, exhaustive: bool) -> Judged {
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
        let word_run = factors::longest_word_run(&n.text);
        let mut starts = if exhaustive {
            Starts::default()
        } else {
            self.prefilter.scan(&n.text, word_run)
        };
        let mut found: Vec<(usize, usize)> = Vec::new();
        if let Some(idioms) = &self.idioms {
            if exhaustive {
                idioms.find_all(&n.text, true, &mut found);
            } else if let Some(at) = starts.of(self.slot_id(Slot::Idioms)) {
                idioms.find_from(&n.text, at, &mut found);
            }
            for &(s, e) in &found {
                if let Some(bytes) = n.text.get_mut(s..e) {
                    bytes.fill(b' ');
                }
            }
            if !found.is_empty() && !exhaustive {
                // Blanking changed the text: find the literals again.
                starts = self.prefilter.scan(&n.text, word_run);
            }
        }
        // Candidate patterns in pattern order.
        let candidates: Vec<usize> = if exhaustive {
            (0..self.patterns.len())
                .filter(|&i| {
                    self.patterns
                        .get(i)
                        .is_some_and(|(_, m)| m.lazy().is_some_and(|re| re.is_match(&n.text)))
                })
                .collect()
        } else {
            starts
                .ids()
                .filter(|&id| id < self.patterns.len())
                .collect()
        };
        // Stretches addressed to someone else (only past the first window).
        let words = word_count(&n.text);
        let addressed = if words > voice::FROM_WORD {
            voice::addressed(&n.text)
        } else {
            Vec::new()
        };
        if candidates.is_empty() {
            return Judged {
                n,
                lang,
                addressed,
                words,
                unsaid: Vec::new(),
                fired: Vec::new(),
                reasons: Vec::new(),
                level: RiskLevel::Low,
                repeats: 0,
            };
        }
        let mut cues = Cues::new(self, &n.text, (!exhaustive).then_some(&starts));
        let mut hits: Vec<Hit> = Vec::new();
        // Matches the context negated: not evidence for the model.
        let mut unsaid: Vec<(usize, usize)> = Vec::new();
        // Every unlowered match with its rule's tags, for combinations.
        let mut tagged: Vec<(u64, usize, usize)> = Vec::new();
        // Every match with its level in context (None: negated), in pattern
        // order; then "no plan" statements, which lower `unplanned` rules.
        let mut matched: Vec<Matched> = Vec::new();
        for &index in &candidates {
            let Some((rule_index, m)) = self.patterns.get(index) else {
                continue;
            };
            let Some(rule) = self.rules.get(*rule_index) else {
                continue;
            };
            found.clear();
            match starts.of(index).filter(|_| !exhaustive) {
                Some(at) => m.find_from(&n.text, at, &mut found),
                None => m.find_all(&n.text, exhaustive, &mut found),
            }
            for &(start, end) in &found {
                let effective = self.effective(rule, start, end, &mut cues, &n);
                matched.push((*rule_index, start, end, effective));
            }
        }
        // A "no plan" statement counts unless it is a negated match rated high
        // or more ("no" + "tengo un plan"): a risky phrase appended after a
        // trailing "no" must not lower the message it is appended to.
        let negated_high: Vec<(usize, usize)> = matched
            .iter()
            .filter(|(r, _, _, e)| {
                e.is_none()
                    && self
                        .rules
                        .get(*r)
                        .is_some_and(|r| r.level >= RiskLevel::High)
            })
            .map(|&(_, s, e, _)| (s, e))
            .collect();
        let says_no_plan = |r: usize, s: usize, e: usize| {
            self.rules
                .get(r)
                .is_some_and(|r| r.tags & self.no_plan != 0)
                && !negated_high.iter().any(|&(ns, ne)| ns < e && s < ne)
        };
        let no_plan_at: Vec<usize> = matched
            .iter()
            .filter(|&&(r, s, e, eff)| {
                eff.is_some() && says_no_plan(r, s, e) && !voice::discounts(&addressed, s, e)
            })
            .map(|&(_, s, _, _)| s)
            .collect();
        // Matches of `bare` rules, and whether the message is short enough.
        let mut deferred: Vec<(Hit, bool)> = Vec::new();
        let reach = Reach {
            window: self.context.combo_window,
            edge: if words > voice::FROM_WORD {
                word_start(&n.text, voice::FROM_WORD)
            } else {
                usize::MAX
            },
        };
        for &(rule_index, start, end, effective) in &matched {
            let Some(rule) = self.rules.get(rule_index) else {
                continue;
            };
            let Some((mut level, mut unlowered)) = effective else {
                unsaid.push((start, end));
                continue;
            };
            if rule.level < RiskLevel::Imminent && voice::discounts(&addressed, start, end) {
                // Advice or support to someone else: at most moderate, and
                // its tags combine with nothing. An emergency in progress
                // (overdose signs, an attempt under way, bleeding that will
                // not stop) is not advice, and a message to the line often
                // says "you" to the counsellor before it: it keeps its level.
                level = level.min(RiskLevel::Moderate);
                unlowered = false;
            }
            if rule.tags & self.no_plan != 0 && !says_no_plan(rule_index, start, end) {
                // A negated plan: neither a reason nor a feature.
                continue;
            }
            let mut full = unlowered;
            if let Some(l) = rule.unplanned.filter(|_| {
                no_plan_at
                    .iter()
                    .any(|&p| p.abs_diff(start) <= self.context.combo_window)
            }) {
                // Tags stay: means with unplanned ideation is still a combination.
                level = level.min(l);
                full = full && level == rule.level;
            }
            let hit = Hit {
                rule: rule_index,
                level,
                full,
                start,
                end,
                matches: 1,
            };
            if rule.bare {
                let inside = n.text.get(start..end).map_or(0, word_count);
                let short =
                    words.saturating_sub(inside) <= BARE_WORDS && n.text.len() <= BARE_BYTES;
                deferred.push((hit, short));
                continue;
            }
            if unlowered && rule.tags != 0 {
                tagged.push((rule.tags, start, end));
            }
            match hits.iter_mut().find(|h| h.rule == rule_index) {
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
        // A bare signal counts when the message is essentially just that: a
        // few other words and nothing denied ("I'm not going to kill myself,
        // I just need to talk" has content). Inside a longer message it still
        // counts next to a match rated high or more: "sos" followed by a plan
        // is imminent, and an appended risky phrase never lowers a bare "sos"
        // (see `BARE_REACH`); "the emergency room" in a long story does not.
        let tagged = Tagged::new(tagged);
        if !deferred.is_empty() {
            let near = |at: usize, s: usize| at.abs_diff(s) <= BARE_REACH;
            let high_near = |at: usize| {
                hits.iter()
                    .any(|h| h.level >= RiskLevel::High && near(at, h.start))
                    || self.combos.iter().any(|c| {
                        c.level >= RiskLevel::High
                            && combo_span(c.all, &tagged, reach).is_some_and(|(s, _)| near(at, s))
                    })
            };
            let mut kept: Vec<Hit> = Vec::new();
            for (d, short) in deferred {
                if ((short && unsaid.is_empty()) || high_near(d.start))
                    && !hits.iter().chain(&kept).any(|h| h.rule == d.rule)
                {
                    kept.push(d);
                }
            }
            hits.extend(kept);
        }
        let mut reasons: Vec<Reason> = Vec::with_capacity(hits.len() + 1);
        let mut fired: Vec<Fired> = Vec::with_capacity(hits.len() + 1);
        for (index, combo) in self.combos.iter().enumerate() {
            let Some((s, e)) = combo_span(combo.all, &tagged, reach) else {
                continue;
            };
            fired.push(Fired {
                combo: true,
                index,
                level: combo.level,
                at: s,
            });
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
            fired.push(Fired {
                combo: false,
                index: h.rule,
                level: h.level,
                at: h.start,
            });
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
        Judged {
            n,
            lang,
            addressed,
            words,
            unsaid,
            fired,
            reasons,
            level,
            repeats,
        }
    }

    fn assess_with(&self, text: &str, exhaustive: bool) -> Assessment {
        let mut j = self.judge(text, exhaustive);
        if let Some(model) = &self.model {
            let mut scorer = model.scorer();
            scorer.reserve(j.words);
            let long = j.words > model::WINDOW_WORDS;
            self.each_feature(&j, |input| match input {
                // The voice counts only matter past one window.
                Input::Word { word, .. } => scorer.word(word, long),
                Input::Rule { key, token } => scorer.add(key, token, 0, 0, false),
            });
            let opinion = scorer.opinion(j.level);
            if let Some(level) = opinion.level.filter(|&l| l > j.level) {
                let (start, end) = opinion
                    .span
                    .map_or((0, 0), |(s, e)| j.n.original_span(s, e));
                j.reasons.insert(
                    0,
                    Reason {
                        rule: format!("model.{}", level.as_str()),
                        label: model_label(level).to_owned(),
                        level,
                        start,
                        end,
                    },
                );
                j.level = level;
                j.repeats = 0;
            }
        }
        self.assessment(j.level, j.reasons, j.lang, j.repeats)
    }

    /// The features the model sees for `text` (see `each_feature`), with
    /// normalised spans, and the rules' level. For `triage-train`.
    #[doc(hidden)]
    pub fn learning_features(&self, text: &str) -> (Vec<Feature>, RiskLevel) {
        let judged = self.judge(text, false);
        let mut out = Vec::new();
        let mut key = Vec::with_capacity(64);
        let feature = |key: &[u8], start, end, narrated| Feature {
            key: String::from_utf8_lossy(key).into_owned(),
            start,
            end,
            narrated,
        };
        self.each_feature(&judged, |input| match input {
            Input::Word { word, .. } if word.hidden => {}
            Input::Word { text, word } => {
                model::word_keys(text, word, &mut key, |k, _, s, e, n| {
                    out.push(feature(k, s, e, n));
                });
            }
            Input::Rule { key, .. } => out.push(feature(key, 0, 0, false)),
        });
        (out, judged.level)
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

/// The rules' verdict on one message, with its normalised text.
struct Judged {
    n: Normalised,
    lang: Language,
    /// Stretches addressed to someone else: rule matches inside them are
    /// discounted, and the model does not read them.
    addressed: Vec<voice::Addressed>,
    /// Words in the normalised text.
    words: usize,
    /// Spans of matches the context negated ("no me voy a matar"): the
    /// model does not see their words.
    unsaid: Vec<(usize, usize)>,
    /// The rules and combinations that fired, for the model.
    fired: Vec<Fired>,
    reasons: Vec<Reason>,
    level: RiskLevel,
    repeats: usize,
}

/// A rule or combination that fired, at a normalised offset.
#[derive(Debug, Clone, Copy)]
struct Fired {
    combo: bool,
    index: usize,
    level: RiskLevel,
    at: usize,
}

impl Engine {
    /// The model's input of a judged message: its words in order
    /// ([`Input::Word`], negated matches blanked; see [`model::each_word`]),
    /// then `r:<rule>:<level>` for every rule and combination that fired
    /// ([`Input::Rule`], at the index of the word where its match starts).
    fn each_feature(&self, j: &Judged, mut f: impl FnMut(Input<'_>)) {
        let mut word_starts: Vec<usize> = Vec::new();
        let blanked;
        let text: &[u8] = if j.unsaid.is_empty() {
            &j.n.text
        } else {
            let mut t = j.n.text.clone();
            for &(s, e) in &j.unsaid {
                if let Some(bytes) = t.get_mut(s..e) {
                    bytes.fill(b' ');
                }
            }
            blanked = t;
            &blanked
        };
        model::each_word(text, &j.addressed, |w| {
            if !w.hidden {
                word_starts.push(w.start);
            }
            f(Input::Word { text, word: w });
        });
        let mut key = Vec::with_capacity(64);
        for r in &j.fired {
            if voice::hides(&j.addressed, r.at) {
                continue;
            }
            let id = if r.combo {
                self.combos.get(r.index).map(|c| c.id.as_str())
            } else {
                self.rules.get(r.index).map(|c| c.id.as_str())
            };
            let Some(id) = id else {
                continue;
            };
            key.clear();
            key.extend_from_slice(b"r:");
            key.extend_from_slice(id.as_bytes());
            key.push(b':');
            key.extend_from_slice(r.level.as_str().as_bytes());
            let token = word_starts
                .partition_point(|&s| s <= r.at)
                .saturating_sub(1);
            f(Input::Rule { key: &key, token });
        }
    }
}

/// One piece of the model's input ([`Engine::each_feature`]).
enum Input<'a> {
    /// A word of `text` (the normalised text, negated matches blanked).
    Word {
        text: &'a [u8],
        word: &'a model::Word<'a>,
    },
    /// A rule or combination that fired, as its `r:` key.
    Rule { key: &'a [u8], token: usize },
}

/// The byte offset where word `n` (0-based, counted as [`word_count`]
/// does) begins, or `usize::MAX` when the text has at most `n` words.
fn word_start(text: &[u8], n: usize) -> usize {
    word_starts(text).nth(n).unwrap_or(usize::MAX)
}

/// Words (runs of letters and digits) in normalised text.
fn word_count(text: &[u8]) -> usize {
    word_starts(text).count()
}

/// Where each word (run of letters and digits) of normalised text begins.
fn word_starts(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    // Each byte with the one before it (a space before the first).
    std::iter::once(&b' ')
        .chain(text)
        .zip(text)
        .enumerate()
        .filter(|(_, (before, b))| b.is_ascii_alphanumeric() && !before.is_ascii_alphanumeric())
        .map(|(i, _)| i)
}

/// How a raise by the model reads on the counsellor's screen.
fn model_label(level: RiskLevel) -> &'static str {
    match level {
        RiskLevel::Imminent => "Worded like messages from people in danger now (learned model)",
        RiskLevel::High => "Worded like messages from people at high risk (learned model)",
        RiskLevel::Moderate | RiskLevel::Low => {
            "Worded like messages from people at moderate risk (learned model)"
        }
    }
}

/// Up to this many (matcher, start range) entries are sorted directly;
/// more are grouped by matcher first.
const SMALL_SCAN: usize = 64;

/// A matcher that needs a literal, and how far into its matches the
/// literal can start (`fixed == u32::MAX`: unbounded).
#[derive(Debug, Clone, Copy)]
struct Need {
    id: usize,
    fixed: u32,
    runs: u32,
}

impl Need {
    fn new(id: usize, pre: Option<Bound>) -> Need {
        let narrow = |n: usize| u32::try_from(n).ok().filter(|&n| n != u32::MAX);
        let pre = pre.and_then(|p| Some((narrow(p.fixed)?, narrow(p.runs)?)));
        Need {
            id,
            fixed: pre.map_or(u32::MAX, |p| p.0),
            runs: pre.map_or(0, |p| p.1),
        }
    }

    fn pre(self) -> Option<Bound> {
        (self.fixed != u32::MAX).then_some(Bound {
            fixed: self.fixed as usize,
            runs: self.runs as usize,
        })
    }
}

/// Literals that matchers need, found in one Aho-Corasick pass.
#[derive(Debug, Clone, Default)]
struct Prefilter {
    /// `None` when no matcher has literals.
    literals: Option<AhoCorasick>,
    /// Literal `k` is needed by `needs[need_at[k]..need_at[k + 1]]`: one
    /// flat array, so a hit costs no pointer chase.
    needs: Vec<Need>,
    need_at: Vec<usize>,
    /// Matchers without necessary literals: they always run.
    always: Vec<usize>,
    /// Number of matcher ids.
    ids: usize,
}

impl Prefilter {
    fn new(matchers: &[Option<&Matcher>]) -> Result<Prefilter, aho_corasick::BuildError> {
        let mut index: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
        let mut literals: Vec<&[u8]> = Vec::new();
        let mut needed_by: Vec<Vec<Need>> = Vec::new();
        let mut always = Vec::new();
        for (id, m) in matchers.iter().enumerate() {
            let Some(m) = m else {
                continue;
            };
            let Some(lits) = &m.analysis().literals else {
                always.push(id);
                continue;
            };
            for (lit, pre) in lits {
                let k = *index.entry(lit.as_slice()).or_insert_with(|| {
                    literals.push(lit.as_slice());
                    needed_by.push(Vec::new());
                    literals.len() - 1
                });
                if let Some(v) = needed_by.get_mut(k) {
                    v.push(Need::new(id, *pre));
                }
            }
        }
        let literals = if literals.is_empty() {
            None
        } else {
            // Overlapping search needs standard match semantics. A
            // contiguous NFA (0.6 MB): a DFA (10 MB) scans a 4,000-character
            // message a few per cent faster but, cold in the cache, slows
            // the first sight of an SMS (docs/triage.md, "Speed, round two").
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(&literals)
                    .or_else(|_| AhoCorasick::new(&literals))?,
            )
        };
        let mut need_at = Vec::with_capacity(needed_by.len() + 1);
        let mut needs = Vec::new();
        for v in needed_by {
            need_at.push(needs.len());
            needs.extend(v);
        }
        need_at.push(needs.len());
        Ok(Prefilter {
            literals,
            needs,
            need_at,
            always,
            ids: matchers.len(),
        })
    }

    /// For each matcher that may match `text`, where its matches can start:
    /// a matcher without literals anywhere, one with literals only in
    /// `[l - pre, l]` of an occurrence `l` of one of them. `word_run` is the
    /// longest run of word bytes in `text` (see [`Bound`]).
    fn scan(&self, text: &[u8], word_run: usize) -> Starts {
        let len = text.len();
        let mut raw: Vec<(usize, usize, usize)> =
            self.always.iter().map(|&id| (id, 0, len)).collect();
        for m in self
            .literals
            .iter()
            .flat_map(|ac| ac.find_overlapping_iter(text))
        {
            let k = m.pattern().as_usize();
            let (from, to) = (
                self.need_at.get(k).copied().unwrap_or(0),
                self.need_at.get(k + 1).copied().unwrap_or(0),
            );
            for need in self.needs.get(from..to).into_iter().flatten() {
                let (lo, hi) = matcher::start_range(need.pre(), m.start(), word_run);
                raw.push((need.id, lo, hi));
            }
        }
        let sorted = if raw.len() <= SMALL_SCAN {
            raw.sort_unstable();
            raw
        } else {
            self.group(&raw)
        };
        let mut starts = Starts::default();
        for (id, lo, hi) in sorted {
            match (starts.groups.last_mut(), starts.spans.last_mut()) {
                (Some(g), Some(last)) if g.0 == id && lo <= last.1.saturating_add(1) => {
                    last.1 = last.1.max(hi);
                }
                (Some(g), _) if g.0 == id => {
                    starts.spans.push((lo, hi));
                    g.2 = starts.spans.len();
                }
                _ => {
                    starts.spans.push((lo, hi));
                    let end = starts.spans.len();
                    starts.groups.push((id, end - 1, end));
                }
            }
        }
        starts
    }

    /// `raw` sorted, for many entries: grouped by matcher with a counting
    /// sort (ids are small), then each group sorted by start (hits arrive
    /// nearly in order, so that is cheap).
    fn group(&self, raw: &[(usize, usize, usize)]) -> Vec<(usize, usize, usize)> {
        let mut offsets = vec![0usize; self.ids + 1];
        for &(id, _, _) in raw {
            if let Some(c) = offsets.get_mut(id + 1) {
                *c += 1;
            }
        }
        for i in 1..offsets.len() {
            let before = offsets.get(i - 1).copied().unwrap_or(0);
            if let Some(c) = offsets.get_mut(i) {
                *c += before;
            }
        }
        let mut next = offsets.clone();
        let mut sorted = vec![(0usize, 0usize, 0usize); raw.len()];
        for &entry in raw {
            if let Some(at) = next.get_mut(entry.0)
                && let Some(slot) = sorted.get_mut(*at)
            {
                *slot = entry;
                *at += 1;
            }
        }
        for bounds in offsets.windows(2) {
            if let &[from, to] = bounds
                && let Some(group) = sorted.get_mut(from..to)
            {
                group.sort_unstable();
            }
        }
        sorted
    }
}

/// Where each candidate matcher's matches can start.
#[derive(Debug, Default)]
struct Starts {
    /// Inclusive position ranges `[lo, hi]`, sorted and disjoint per matcher.
    spans: Vec<(usize, usize)>,
    /// `(matcher id, first span, end of spans)`, ids ascending.
    groups: Vec<(usize, usize, usize)>,
}

impl Starts {
    /// The candidate matchers, ascending.
    fn ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.groups.iter().map(|g| g.0)
    }

    /// The start ranges of matcher `id`, or `None` if it cannot match.
    fn of(&self, id: usize) -> Option<&[(usize, usize)]> {
        let i = self.groups.binary_search_by_key(&id, |g| g.0).ok()?;
        let &(_, from, to) = self.groups.get(i)?;
        self.spans.get(from..to)
    }

    /// The start ranges of matcher `id` inside `text[start..end]`, relative
    /// to it, for a search of that slice alone; `None` if there are none.
    /// (A match in the slice holds a literal occurrence in the slice, so
    /// its start is among these.)
    fn within(&self, id: usize, start: usize, end: usize) -> Option<Vec<(usize, usize)>> {
        let within: Vec<(usize, usize)> = self
            .of(id)?
            .iter()
            .filter(|&&(lo, hi)| hi >= start && lo <= end)
            .map(|&(lo, hi)| (lo.max(start) - start, hi.min(end) - start))
            .collect();
        (!within.is_empty()).then_some(within)
    }
}

/// Where the tags of a combination must lie: within `window` bytes of the
/// first, and, for a match starting at or past `edge` (the first byte of
/// the word after the model's first window), within [`LONG_COMBO_REACH`].
#[derive(Clone, Copy)]
struct Reach {
    window: usize,
    edge: usize,
}

/// Past the first window of a long message, a combination's parts must be
/// this close (about a sentence): a story that mentions an overdose in one
/// paragraph and "now" in the next is not an overdose now. Within the
/// first window (every SMS) the rulebook's `combo_window` applies, so a
/// message that grows past 48 words keeps every combination it had.
const LONG_COMBO_REACH: usize = 120;

impl Reach {
    /// How far a match starting at `start` may end for a combination
    /// anchored at `anchor`.
    fn limit(self, anchor: usize, start: usize) -> usize {
        let window = if start < self.edge {
            self.window
        } else {
            self.window.min(LONG_COMBO_REACH)
        };
        anchor.saturating_add(window)
    }
}

/// Every unlowered match with its rule's tags `(tags, start, end)`, for
/// combinations: in match order, and by start.
struct Tagged {
    /// In match order: `(tags, start, the first index of by_start that
    /// starts there)`.
    in_order: Vec<(u64, usize, usize)>,
    by_start: Vec<(u64, usize, usize)>,
    /// Every tag that occurs.
    tags: u64,
}

impl Tagged {
    fn new(mut in_order: Vec<(u64, usize, usize)>) -> Tagged {
        let mut by_start = in_order.clone();
        by_start.sort_unstable_by_key(|&(_, s, _)| s);
        let tags = in_order.iter().fold(0, |acc, (t, _, _)| acc | t);
        for (_, start, from) in &mut in_order {
            *from = by_start.partition_point(|&(_, s, _)| s < *start);
        }
        Tagged {
            in_order,
            by_start,
            tags,
        }
    }
}

/// Where a combination fires: the span covering one match of each of its
/// tags, all within reach of the first (see [`Reach`]); `None` if it does
/// not. The first match in match order that can anchor one decides.
fn combo_span(all: u64, tagged: &Tagged, reach: Reach) -> Option<(usize, usize)> {
    // Quick reject: some tag occurs nowhere.
    if tagged.tags & all != all {
        return None;
    }
    for &(t, anchor, from) in &tagged.in_order {
        if t & all == 0 {
            continue;
        }
        let (mut covered, mut s, mut e) = (0, usize::MAX, 0);
        let far = anchor.saturating_add(reach.window);
        // Matches from the anchor on, by start, until none can fit.
        for &(t, ms, me) in tagged.by_start.get(from..).unwrap_or_default() {
            if ms > far {
                break;
            }
            if t & all != 0 && me <= reach.limit(anchor, ms) {
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
    engine: &'a Engine,
    text: &'a [u8],
    /// Where cue matches can start (`None`: the reference engine, lazy
    /// regexes over each clause).
    starts: Option<&'a Starts>,
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
    fn new(engine: &'a Engine, text: &'a [u8], starts: Option<&'a Starts>) -> Cues<'a> {
        let mut cues = Cues {
            engine,
            text,
            starts,
            breaks: Vec::new(),
            clauses: Vec::new(),
        };
        let mut breaks = Vec::new();
        cues.find(Slot::Breaks, 0, text.len(), &mut breaks);
        cues.breaks = breaks;
        cues
    }

    /// Matches of a slot's matcher in `text[start..end]` searched alone (its
    /// edges are text edges), at offsets into the whole text.
    fn find(&self, slot: Slot, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
        let id = self.engine.slot_id(slot);
        let Some(m) = self.engine.matcher(id) else {
            return;
        };
        let slice = self.text.get(start..end).unwrap_or_default();
        let first = out.len();
        match self.starts {
            None => m.find_all(slice, true, out),
            Some(starts) => {
                let Some(within) = starts.within(id, start, end) else {
                    return;
                };
                m.find_from(slice, &within, out);
            }
        }
        for c in out.iter_mut().skip(first) {
            *c = (start + c.0, start + c.1);
        }
    }

    /// The clause around `[s, e)` — from the end of the last break before it
    /// to the start of the first break after it — with its cues.
    fn clause(&mut self, s: usize, e: usize) -> &Clause {
        // Breaks are leftmost-first matches: sorted and non-overlapping.
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
                let mut clause = Clause {
                    start,
                    end,
                    ..Clause::default()
                };
                self.find(Slot::Negation, start, end, &mut clause.negation);
                self.find(Slot::ThirdPerson, start, end, &mut clause.third_person);
                self.find(Slot::Past, start, end, &mut clause.past);
                self.find(Slot::Present, start, end, &mut clause.present);
                self.find(Slot::Hypothetical, start, end, &mut clause.hypothetical);
                self.clauses.push(clause);
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
mod equivalence;
#[cfg(test)]
mod tests;
