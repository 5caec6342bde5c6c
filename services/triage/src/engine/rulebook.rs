//! The rulebook: a versioned TOML file of rules, read and checked here.
//!
//! A rulebook that does not parse, or holds one bad rule (unknown level, a
//! pattern that does not compile, a duplicate id, an empty label, an unknown
//! tag in a combination), is an error that names the file, the line and the
//! rule: the service never runs with a partial rulebook.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use nwd_proto::RiskLevel;
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::matcher::Matcher;
use super::normalise::{Suffixes, TokenTable, normalise_phrase, pattern};

/// Why a rulebook cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulebookError {
    #[error("cannot read rulebook {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: rulebook does not parse: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: rule `{rule}`: {problem}")]
    Rule {
        file: String,
        line: usize,
        rule: String,
        problem: String,
    },
}

impl RulebookError {
    /// The line the error points at (0 for a read error).
    pub fn line(&self) -> usize {
        match self {
            RulebookError::Read { .. } => 0,
            RulebookError::Parse { line, .. } | RulebookError::Rule { line, .. } => *line,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRulebook {
    version: Spanned<String>,
    /// Named pattern fragments, used in patterns as `{NAME}`.
    #[serde(default)]
    define: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    context: RawContext,
    /// Token → replacement (slang, abbreviations, misspellings).
    #[serde(default)]
    lexicon: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    language: RawLanguage,
    #[serde(default, rename = "idiom")]
    idioms: Vec<RawIdiom>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default, rename = "combo")]
    combos: Vec<RawCombo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    #[serde(default)]
    clause_breaks: Vec<Spanned<String>>,
    #[serde(default)]
    negation: Vec<Spanned<String>>,
    #[serde(default)]
    negation_fillers: Vec<String>,
    #[serde(default = "default_window")]
    negation_window: usize,
    #[serde(default)]
    third_person: Vec<Spanned<String>>,
    #[serde(default)]
    first_person: Vec<String>,
    #[serde(default)]
    past: Vec<Spanned<String>>,
    #[serde(default)]
    present: Vec<Spanned<String>>,
    #[serde(default)]
    hypothetical: Vec<Spanned<String>>,
    /// Combinations fire only when their matches lie within this many
    /// characters of normalised text (one or two SMS segments).
    #[serde(default = "default_combo_window")]
    combo_window: usize,
}

fn default_window() -> usize {
    4
}

fn default_combo_window() -> usize {
    300
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLanguage {
    #[serde(default)]
    en: Vec<String>,
    #[serde(default)]
    es: Vec<String>,
    /// Endings that count as evidence for a language when the word itself is not listed.
    #[serde(default)]
    en_suffixes: Vec<String>,
    #[serde(default)]
    es_suffixes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdiom {
    id: Spanned<String>,
    patterns: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    label: Spanned<String>,
    level: Spanned<String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    patterns: Vec<Spanned<String>>,
    /// Dropped when a negation governs the match ("I'm not going to …").
    #[serde(default = "yes")]
    negatable: bool,
    /// Level when the subject is someone else ("my brother …").
    third_person: Option<Spanned<String>>,
    /// Level when the clause speaks of the distant past ("I used to …").
    past: Option<Spanned<String>>,
    /// Level when the clause is a question or a hypothesis ("what if …").
    hypothetical: Option<Spanned<String>>,
    /// Level when the message says there is no plan or no intent to act
    /// (a match of a rule tagged `no_plan` within the combination window).
    unplanned: Option<Spanned<String>>,
    /// Counts only when the message is essentially this match (at most
    /// `BARE_WORDS` other words), or when the other rules already reach high.
    #[serde(default)]
    bare: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCombo {
    id: Spanned<String>,
    label: Spanned<String>,
    level: Spanned<String>,
    /// Tags that must all be present among the (unlowered) matches.
    all: Vec<Spanned<String>>,
}

/// A rule ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: String,
    pub label: String,
    pub level: RiskLevel,
    pub tags: u64,
    pub negatable: bool,
    pub third_person: Option<RiskLevel>,
    pub past: Option<RiskLevel>,
    pub hypothetical: Option<RiskLevel>,
    pub unplanned: Option<RiskLevel>,
    pub bare: bool,
}

/// A combination rule: fires when matches carry all of `all`'s tags.
#[derive(Debug, Clone)]
pub(crate) struct Combo {
    pub id: String,
    pub label: String,
    pub level: RiskLevel,
    pub all: u64,
}

/// Context cues, each list compiled into one matcher over normalised text.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub clause_breaks: Option<Matcher>,
    pub negation: Option<Matcher>,
    pub negation_fillers: HashSet<Box<[u8]>>,
    pub negation_window: usize,
    pub third_person: Option<Matcher>,
    pub first_person: HashSet<Box<[u8]>>,
    pub past: Option<Matcher>,
    pub present: Option<Matcher>,
    pub hypothetical: Option<Matcher>,
    pub combo_window: usize,
}

/// A checked, compiled rulebook.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub version: String,
    pub rules: Vec<Rule>,
    /// (rule index, pattern wrapped in word boundaries and compiled) in rulebook order.
    pub patterns: Vec<(usize, Regex)>,
    pub idioms: Vec<String>,
    pub combos: Vec<Combo>,
    pub context: Context,
    pub tokens: TokenTable,
    pub suffixes: Suffixes,
    /// The bit of the `no_plan` tag (0 when no rule carries it).
    pub no_plan: u64,
}

/// The tag of rules that say there is no plan or no intent to act; rules
/// with `unplanned` are lowered near their matches.
pub(crate) const NO_PLAN_TAG: &str = "no_plan";

/// A `bare` rule counts when the message has at most this many words
/// besides its match ("sos", "please call an ambulance", "is anyone there").
pub(crate) const BARE_WORDS: usize = 4;

/// …and at most this many normalised bytes in all.
pub(crate) const BARE_BYTES: usize = 80;

/// A `bare` match in a longer message still counts when a match rated high
/// or more starts within this many normalised bytes of it ("sos" followed by
/// a plan). A bare message is at most [`BARE_BYTES`] long, so a risky
/// phrase appended to it starts within reach and never lowers it.
pub(crate) const BARE_REACH: usize = 120;

/// 1-based line of a byte offset.
/// Reads a rulebook or model file: its text and its name for errors.
pub(crate) fn read(path: &std::path::Path) -> Result<(String, String), RulebookError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, name)),
        Err(source) => Err(RulebookError::Read { file: name, source }),
    }
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    defines: BTreeMap<String, String>,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, rule: &str, problem: impl Into<String>) -> RulebookError {
        RulebookError::Rule {
            file: self.file.to_owned(),
            line: line_of(self.text, span.start),
            rule: rule.to_owned(),
            problem: problem.into(),
        }
    }

    fn level(&self, s: &Spanned<String>, rule: &str) -> Result<RiskLevel, RulebookError> {
        s.get_ref().parse::<RiskLevel>().map_err(|_| {
            self.err(
                s.span(),
                rule,
                format!(
                    "unknown level `{}` (expected imminent, high, moderate or low)",
                    s.get_ref()
                ),
            )
        })
    }

    fn opt_level(
        &self,
        s: &Option<Spanned<String>>,
        rule: &str,
    ) -> Result<Option<RiskLevel>, RulebookError> {
        s.as_ref().map(|s| self.level(s, rule)).transpose()
    }

    /// Expands `{NAME}` references to `[define]` fragments (which may use
    /// other fragments), then normalises the pattern like message text.
    fn pattern(
        &self,
        source: &str,
        span: Range<usize>,
        rule: &str,
    ) -> Result<String, RulebookError> {
        let mut out = source.to_owned();
        // Each round expands every use of one name; nesting is bounded.
        for _ in 0..64 {
            let Some(start) = find_macro(&out) else {
                return Ok(pattern(&out));
            };
            let end = out[start..].find('}').map_or(out.len(), |e| start + e);
            let name = out[start + 1..end].to_owned();
            let Some(value) = self.defines.get(&name) else {
                return Err(self.err(
                    span,
                    rule,
                    format!("unknown fragment {{{name}}} (not in [define])"),
                ));
            };
            out = out.replace(&format!("{{{name}}}"), &format!("(?:{value})"));
        }
        if find_macro(&out).is_some() {
            return Err(self.err(
                span,
                rule,
                "fragments nest too deeply (or refer to themselves)",
            ));
        }
        Ok(pattern(&out))
    }

    fn regex(&self, source: &str, span: Range<usize>, rule: &str) -> Result<Regex, RulebookError> {
        if source.trim().is_empty() {
            return Err(self.err(span, rule, "empty pattern"));
        }
        compile(source).map_err(|e| self.err(span, rule, format!("bad pattern `{source}`: {e}")))
    }

    /// Cues joined into one alternation, bounded by word boundaries.
    fn cues(
        &self,
        list: &[Spanned<String>],
        name: &str,
        bounded: bool,
    ) -> Result<Option<Matcher>, RulebookError> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(list.len());
        for cue in list {
            let p = self.pattern(cue.get_ref(), cue.span(), name)?;
            // Check each cue alone first, so the error points at its line.
            self.regex(&p, cue.span(), name)?;
            parts.push(format!("(?:{p})"));
        }
        let joined = if bounded {
            format!(r"\b(?:{})\b", parts.join("|"))
        } else {
            parts.join("|")
        };
        let span = list.first().map_or(0..0, |c| c.span());
        build(&joined)
            .map(|re| Some(Matcher::new(re)))
            .map_err(|e| self.err(span, name, format!("cues do not compile together: {e}")))
    }
}

/// Start of the first `{NAME}` (uppercase letters, digits, `_`) in a pattern.
fn find_macro(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'{'
            && (i == 0 || b[i - 1] != b'\\')
            && b.get(i + 1).is_some_and(|c| c.is_ascii_uppercase())
            && b[i + 1..].iter().position(|&c| c == b'}').is_some_and(|n| {
                b[i + 1..i + 1 + n]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
            })
    })
}

/// Byte regex over normalised text: Unicode off (the text is ASCII).
pub(crate) fn build(source: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(source)
        .unicode(false)
        .size_limit(32 << 20)
        .dfa_size_limit(32 << 20)
        .build()
}

/// A rule pattern (already normalised) wrapped in word boundaries.
pub(crate) fn wrap(normalised: &str) -> String {
    format!(r"\b(?:{normalised})\b")
}

fn compile(normalised: &str) -> Result<Regex, String> {
    if !normalised.is_ascii() {
        return Err(
            "patterns must be ASCII after normalisation (accents are stripped, \
             emoji become words); this character never occurs in normalised text"
                .to_owned(),
        );
    }
    build(&wrap(normalised)).map_err(|e| e.to_string())
}

fn words(list: &[String]) -> HashSet<Box<[u8]>> {
    list.iter()
        .map(|w| normalise_phrase(w).into_boxed_slice())
        .collect()
}

/// Parses and checks a rulebook. `file` names it in errors.
pub(crate) fn parse(text: &str, file: &str) -> Result<Compiled, RulebookError> {
    let raw: RawRulebook = toml::from_str(text).map_err(|e| RulebookError::Parse {
        file: file.to_owned(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().trim().to_owned(),
    })?;
    let mut defines = BTreeMap::new();
    for (name, value) in &raw.define {
        let ok = name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(RulebookError::Rule {
                file: file.to_owned(),
                line: line_of(text, value.span().start),
                rule: format!("define.{name}"),
                problem: "fragment names are UPPERCASE letters, digits and _".to_owned(),
            });
        }
        defines.insert(name.clone(), value.get_ref().clone());
    }
    let c = Checker {
        text,
        file,
        defines,
    };

    let version = raw.version.get_ref().trim().to_owned();
    if version.is_empty() {
        return Err(c.err(raw.version.span(), "version", "empty version"));
    }

    // Tags: every tag a rule carries gets a bit; combos may only name those.
    let mut tag_bits: HashMap<String, u64> = HashMap::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut patterns = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &raw.rules {
        let id = r.id.get_ref().trim().to_owned();
        if id.is_empty() {
            return Err(c.err(r.id.span(), "", "empty rule id"));
        }
        if let Some(first) = seen.insert(id.clone(), line_of(text, r.id.span().start)) {
            return Err(c.err(
                r.id.span(),
                &id,
                format!("duplicate rule id (first defined on line {first})"),
            ));
        }
        let label = r.label.get_ref().trim().to_owned();
        if label.is_empty() {
            return Err(c.err(r.label.span(), &id, "empty label"));
        }
        let level = c.level(&r.level, &id)?;
        let mut tags = 0u64;
        for t in &r.tags {
            let next = tag_bits.len();
            let bit = match tag_bits.get(t.get_ref()) {
                Some(b) => *b,
                None if next < 64 => {
                    let b = 1u64 << next;
                    tag_bits.insert(t.get_ref().clone(), b);
                    b
                }
                None => return Err(c.err(t.span(), &id, "more than 64 distinct tags")),
            };
            tags |= bit;
        }
        if r.patterns.is_empty() {
            return Err(c.err(r.id.span(), &id, "no patterns"));
        }
        let index = rules.len();
        for p in &r.patterns {
            let normalised = c.pattern(p.get_ref(), p.span(), &id)?;
            patterns.push((index, c.regex(&normalised, p.span(), &id)?));
        }
        rules.push(Rule {
            id,
            label,
            level,
            tags,
            negatable: r.negatable,
            third_person: c.opt_level(&r.third_person, r.id.get_ref())?,
            past: c.opt_level(&r.past, r.id.get_ref())?,
            hypothetical: c.opt_level(&r.hypothetical, r.id.get_ref())?,
            unplanned: c.opt_level(&r.unplanned, r.id.get_ref())?,
            bare: r.bare,
        });
    }
    if rules.is_empty() {
        return Err(c.err(0..0, "", "the rulebook has no rules"));
    }

    let mut combos = Vec::with_capacity(raw.combos.len());
    for k in &raw.combos {
        let id = k.id.get_ref().trim().to_owned();
        if id.is_empty() {
            return Err(c.err(k.id.span(), "", "empty combination id"));
        }
        if let Some(first) = seen.insert(id.clone(), line_of(text, k.id.span().start)) {
            return Err(c.err(
                k.id.span(),
                &id,
                format!("duplicate rule id (first defined on line {first})"),
            ));
        }
        let label = k.label.get_ref().trim().to_owned();
        if label.is_empty() {
            return Err(c.err(k.label.span(), &id, "empty label"));
        }
        let level = c.level(&k.level, &id)?;
        if k.all.is_empty() {
            return Err(c.err(k.id.span(), &id, "a combination needs at least one tag"));
        }
        let mut all = 0;
        for t in &k.all {
            let bit = tag_bits.get(t.get_ref()).ok_or_else(|| {
                c.err(
                    t.span(),
                    &id,
                    format!("unknown tag `{}` (no rule carries it)", t.get_ref()),
                )
            })?;
            all |= bit;
        }
        combos.push(Combo {
            id,
            label,
            level,
            all,
        });
    }

    let mut idioms = Vec::new();
    for i in &raw.idioms {
        let id = i.id.get_ref().trim().to_owned();
        if id.is_empty() {
            return Err(c.err(i.id.span(), "", "empty idiom id"));
        }
        if let Some(first) = seen.insert(id.clone(), line_of(text, i.id.span().start)) {
            return Err(c.err(
                i.id.span(),
                &id,
                format!("duplicate rule id (first defined on line {first})"),
            ));
        }
        for p in &i.patterns {
            let normalised = c.pattern(p.get_ref(), p.span(), &id)?;
            c.regex(&normalised, p.span(), &id)?;
            idioms.push(normalised);
        }
    }

    let ctx = &raw.context;
    let negation = c.cues(&ctx.negation, "context.negation", true)?;
    let third_person = c.cues(&ctx.third_person, "context.third_person", true)?;
    let past = c.cues(&ctx.past, "context.past", true)?;
    let present = c.cues(&ctx.present, "context.present", true)?;
    let hypothetical = c.cues(&ctx.hypothetical, "context.hypothetical", true)?;
    let context = Context {
        clause_breaks: c.cues(&ctx.clause_breaks, "context.clause_breaks", false)?,
        negation,
        negation_fillers: words(&ctx.negation_fillers),
        negation_window: ctx.negation_window,
        third_person,
        first_person: words(&ctx.first_person),
        past,
        present,
        hypothetical,
        combo_window: ctx.combo_window,
    };

    let mut tokens = TokenTable::default();
    for w in &raw.language.en {
        tokens
            .entry(normalise_phrase(w).into_boxed_slice())
            .or_default()
            .lang -= 1;
    }
    for w in &raw.language.es {
        tokens
            .entry(normalise_phrase(w).into_boxed_slice())
            .or_default()
            .lang += 1;
    }
    for (key, value) in &raw.lexicon {
        let k = normalise_phrase(key);
        if k.is_empty() || !k.iter().all(u8::is_ascii_alphanumeric) {
            return Err(c.err(
                value.span(),
                &format!("lexicon.{key}"),
                "a lexicon key must be one word (letters and digits)",
            ));
        }
        let v = normalise_phrase(value.get_ref());
        if v.is_empty() {
            return Err(c.err(value.span(), &format!("lexicon.{key}"), "empty replacement"));
        }
        tokens.entry(k.into_boxed_slice()).or_default().replacement = Some(v.into_boxed_slice());
    }

    let suffixes = Suffixes {
        en: raw
            .language
            .en_suffixes
            .iter()
            .map(|w| normalise_phrase(w).into_boxed_slice())
            .collect(),
        es: raw
            .language
            .es_suffixes
            .iter()
            .map(|w| normalise_phrase(w).into_boxed_slice())
            .collect(),
    };

    Ok(Compiled {
        no_plan: tag_bits.get(NO_PLAN_TAG).copied().unwrap_or(0),
        suffixes,
        version,
        rules,
        patterns,
        idioms,
        combos,
        context,
        tokens,
    })
}
