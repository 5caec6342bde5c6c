//! Text normalisation: any string in, lowercase ASCII out, with a map from
//! every output byte back to the characters of the original it came from.
//!
//! Steps, in one pass over the characters:
//! - lowercase; strip accents and other combining marks (NFD, marks dropped);
//! - apostrophes are dropped (`don't` → `dont`, `I’m` → `im`);
//! - a few emoji become words (`💊` → `pill`), so rules can name them;
//! - control characters and whitespace become one space; a line break ends a clause (`.`);
//! - any other non-ASCII character (other scripts, symbols) becomes a space;
//! - a run of three or more of the same letter becomes one (`soooo` → `so`);
//!   rule patterns write double letters as `x{1,2}` (see [`pattern`]), so
//!   `killll` and `kill` both match `kill`;
//! - each token is looked up in the rulebook's lexicon (slang, abbreviations,
//!   misspellings: `kms` → `kill myself`); a replacement maps back to the whole token.
//!
//! Because the output is ASCII, one byte is one character and every rule
//! runs as a byte regex with Unicode off, which keeps matching fast.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use unicode_normalization::char::{decompose_canonical, is_combining_mark};

/// What the token table knows about one token.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenInfo {
    /// Replacement text (lexicon), already normalised.
    pub replacement: Option<Box<[u8]>>,
    /// Language evidence: positive for Spanish, negative for English.
    pub lang: i8,
}

pub(crate) type TokenTable = TokenMap<TokenInfo>;

/// A fast hash for tokens: eight bytes at a time, then a 64-bit finaliser
/// (every token of every message is looked up; the table is ours, so
/// SipHash's flood resistance buys nothing here).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenHasher(u64);

/// A map keyed by tokens with [`TokenHasher`].
pub(crate) type TokenMap<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<TokenHasher>>;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl TokenHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(K).rotate_left(29);
    }
}

/// Up to eight bytes as a little-endian word.
fn word(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .enumerate()
        .fold(0, |w, (i, &b)| w | (u64::from(b) << (8 * i)))
}

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        // murmur3's fmix64: every input bit reaches the top bits, which
        // the table's probing uses.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Words are assembled in registers (a copy through memory would
        // stall on store forwarding).
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(word(c));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The length keeps "a" and "a\0" apart.
            self.mix(word(rest) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// Word endings that are evidence for a language (`-iendo` → Spanish).
#[derive(Debug, Clone, Default)]
pub(crate) struct Suffixes {
    pub en: Vec<Box<[u8]>>,
    pub es: Vec<Box<[u8]>>,
}

impl Suffixes {
    fn score(&self, token: &[u8]) -> i32 {
        // Short words say little; a suffix must leave a stem of 2+ letters.
        let ends = |list: &[Box<[u8]>]| {
            list.iter()
                .any(|s| token.len() >= s.len() + 2 && token.ends_with(s))
        };
        if ends(&self.es) {
            1
        } else if ends(&self.en) {
            -1
        } else {
            0
        }
    }
}

/// Language evidence beyond which word endings are no longer checked.
const LANG_DECIDED: i32 = 12;

/// What normalisation needs from the rulebook.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lexicon<'a> {
    pub tokens: &'a TokenTable,
    pub suffixes: &'a Suffixes,
}

/// Normalised text with its map back to the original.
#[derive(Debug, Default)]
pub(crate) struct Normalised {
    /// Lowercase ASCII.
    pub text: Vec<u8>,
    /// For each byte of `text`: the original character range `[start, end)` it came from.
    pub origin: Vec<(u32, u32)>,
    /// Language evidence: > 0 Spanish, < 0 English.
    pub lang_score: i32,
    /// Length of the run of the same letter just pushed (0: not in a run).
    run: u32,
}

impl Normalised {
    /// The original character span of the normalised byte span `[s, e)`.
    pub fn original_span(&self, s: usize, e: usize) -> (usize, usize) {
        let start = self.origin.get(s).map_or(0, |o| o.0);
        let end = e
            .checked_sub(1)
            .and_then(|i| self.origin.get(i))
            .map_or(start, |o| o.1);
        (start as usize, end.max(start) as usize)
    }

    fn push(&mut self, b: u8, start: u32, end: u32) {
        self.text.push(b);
        self.origin.push((start, end));
        self.run = 0;
    }

    fn push_space(&mut self, start: u32, end: u32) {
        match self.text.last() {
            None | Some(b' ') => {}
            Some(_) => self.push(b' ', start, end),
        }
    }

    fn push_word(&mut self, word: &str, start: u32, end: u32) {
        self.push_space(start, end);
        for b in word.bytes() {
            self.push(b, start, end);
        }
        self.push(b' ', start, end);
    }

    /// Pushes a letter or digit, collapsing runs of three or more of the same
    /// letter into one letter that spans the whole run.
    fn push_alnum(&mut self, b: u8, start: u32, end: u32) {
        let continues = b.is_ascii_lowercase() && self.run > 0 && self.text.last() == Some(&b);
        if !continues {
            self.push(b, start, end);
            if b.is_ascii_lowercase() {
                self.run = 1;
            }
            return;
        }
        self.run = self.run.saturating_add(1);
        if self.run == 2 {
            self.text.push(b);
            self.origin.push((start, end));
            return;
        }
        if self.run == 3 {
            // Third of a run: drop the second letter, keep one for the run.
            self.text.pop();
            self.origin.pop();
        }
        if let Some(last) = self.origin.last_mut() {
            last.1 = end;
        }
    }
}

/// Emoji that mean something for triage, as words.
fn emoji_word(c: char) -> Option<&'static str> {
    Some(match c {
        '💊' => "pill",
        '💉' => "syringe",
        '🔫' => "gun",
        '🔪' | '🗡' => "knife",
        '🪢' => "rope",
        '⚰' => "coffin",
        '🪦' => "grave",
        '💀' | '☠' => "skull",
        '🆘' => "sos",
        '🌉' => "bridge",
        '🚑' => "ambulance",
        '🩸' => "blood",
        '🍺' | '🍻' | '🍷' | '🥃' | '🍾' => "alcohol",
        '💔' => "heartbroken",
        '😭' | '😢' => "crying",
        '🙏' => "please",
        '⏰' | '⏱' => "clock",
        '⌛' | '⏳' => "hourglass",
        '🔚' => "end",
        '👋' => "bye",
        '✌' => "peace",
        _ => return None,
    })
}

/// The character a leet digit or symbol stands for.
fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '@' => 'a',
        '$' => 's',
        '!' => 'i',
        _ => return None,
    })
}

/// A character of a word as obfuscated writing spells it.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '@' || c == '$' || c == '!'
}

/// Characters that may stand between the letters of a spaced-out word
/// ("k.i.l.l", "s u i c i d e", "k-i-l-l").
fn is_letter_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '.' | '-' | '_' | '*' | '/' | '|' | '+' | '~' | '\u{B7}'
    )
}

/// Undoes obfuscated writing, character by character, before normalisation:
///
/// - **leet** inside a word that holds letters: `0 1 3 4 5 7 @ $` stand for
///   `o i e a s t a s` (`11` for `ll`): `k1ll` → `kill`, `d13` → `die`,
///   `su1c1d3` → `suicide`, `my$elf` → `myself`. A word qualifies when it
///   has 3+ characters, a letter, no other digit (`covid19`, `b12`, `2nite`
///   stay) and does not start with a digit (`3am`, `10mg`, `5pills` stay;
///   a leading `0` before 3+ letters is read as `o`: `0verdose`); `@`
///   and `!` only between letters (`su!c!de`), `$` only before a letter;
/// - **spaced-out letters**: three or more one-character words (two or
///   more of them letters) separated by the same short run of separators
///   are joined (`k.i.l.l`, `s u i c i d e`); a longer gap ends the word
///   (`k i l l  m y s e l f` → `kill myself`);
/// - repeated letters need nothing here: [`normalise`] collapses runs of
///   three or more (`diiiie` → `die`).
///
/// Returns the characters to normalise, each with the index of the original
/// character it stands for (dropped separators leave gaps), or `None` when
/// the text has nothing to undo (a clean text: no digit, `@` or `$` inside
/// a word with letters, no run of three one-character words).
pub(crate) fn deobfuscate(text: &str) -> Option<Vec<(char, u32)>> {
    // Cheap test first: most messages have neither.
    let bytes = text.as_bytes();
    // A digit, `@` or `$` next to a letter.
    let leety = |b: &u8| b.is_ascii_digit() || *b == b'@' || *b == b'$';
    let maybe_leet = bytes.windows(2).any(|w| match w {
        [a, b] => {
            (leety(a) && !b.is_ascii_digit() && b.is_ascii_alphanumeric())
                || (leety(b) && !a.is_ascii_digit() && a.is_ascii_alphanumeric())
                || (leety(a) && !b.is_ascii())
                || (leety(b) && !a.is_ascii())
        }
        _ => false,
    }) || bytes.windows(3).any(|w| {
        // `!` between two letters: "su!c!de".
        matches!(w, [a, b'!', c] if a.is_ascii_alphabetic() && c.is_ascii_alphabetic())
    });
    // Three one-character words in a row: "x.y.z", "x y z".
    let single = |w: &[u8], k: usize| {
        w.get(k).is_some_and(u8::is_ascii_alphanumeric)
            && !k
                .checked_sub(1)
                .and_then(|p| w.get(p))
                .is_some_and(u8::is_ascii_alphanumeric)
            && !w.get(k + 1).is_some_and(u8::is_ascii_alphanumeric)
    };
    let maybe_spaced = bytes.iter().enumerate().any(|(k, b)| {
        b.is_ascii_alphanumeric() && single(bytes, k) && {
            // The next two one-character words within short gaps.
            let next = |from: usize| {
                (from + 1..(from + 5).min(bytes.len()))
                    .find(|&m| bytes.get(m).is_some_and(u8::is_ascii_alphanumeric))
                    .filter(|&m| single(bytes, m))
            };
            next(k).and_then(next).is_some()
        }
    });
    if !maybe_leet && !maybe_spaced {
        return None;
    }
    let mut chars: Vec<char> = text.chars().collect();
    let mut keep = vec![true; chars.len()];
    let mut changed = false;
    if maybe_leet {
        changed |= undo_leet(&mut chars);
    }
    if maybe_spaced {
        changed |= join_spaced_letters(&mut chars, &mut keep);
    }
    if !changed {
        return None;
    }
    Some(
        chars
            .into_iter()
            .zip(keep)
            .enumerate()
            .filter(|(_, (_, k))| *k)
            .map(|(i, (c, _))| (c, i as u32))
            .collect(),
    )
}

/// Leet inside words (see [`deobfuscate`]); true when something changed.
fn undo_leet(chars: &mut [char]) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        if !chars.get(i).copied().is_some_and(is_word_char) {
            i += 1;
            continue;
        }
        let start = i;
        while chars.get(i).copied().is_some_and(is_word_char) {
            i += 1;
        }
        let Some(word) = chars.get_mut(start..i) else {
            break;
        };
        changed |= undo_leet_word(word);
    }
    changed
}

fn undo_leet_word(word: &mut [char]) -> bool {
    let letters = word.iter().filter(|c| c.is_alphabetic()).count();
    let leets = word.iter().filter(|&&c| leet(c).is_some()).count();
    let other_digits = word.iter().any(|&c| c.is_numeric() && leet(c).is_none());
    if word.len() < 3 || letters == 0 || leets == 0 || other_digits {
        return false;
    }
    let leading_o = word.first() == Some(&'0')
        && word
            .get(1..)
            .is_some_and(|rest| rest.len() >= 3 && rest.iter().take(3).all(|c| c.is_alphabetic()));
    if word.first().is_some_and(|c| c.is_numeric()) && !leading_o {
        return false;
    }
    let letter_at =
        |w: &[char], k: Option<usize>| k.and_then(|k| w.get(k)).is_some_and(|c| c.is_alphabetic());
    let mut changed = false;
    for k in 0..word.len() {
        let c = word.get(k).copied().unwrap_or(' ');
        let Some(mut to) = leet(c) else {
            continue;
        };
        match c {
            '@' | '!' if !(letter_at(word, k.checked_sub(1)) && letter_at(word, Some(k + 1))) => {
                continue;
            }
            '$' if !letter_at(word, Some(k + 1)) => continue,
            // "11" and a final "l1" are "ll" ("k1ll", "kil1"); "l1" before
            // a letter is "li" ("l1fe", "sl1de").
            '1' if word.get(k + 1) == Some(&'1')
                || (k.checked_sub(1).and_then(|p| word.get(p)) == Some(&'l')
                    && !letter_at(word, Some(k + 1))) =>
            {
                to = 'l';
            }
            _ => {}
        }
        if let Some(slot) = word.get_mut(k) {
            *slot = to;
            changed = true;
        }
    }
    changed
}

/// Joins spaced-out letters (see [`deobfuscate`]); drops the separators by
/// clearing their `keep` flags. True when something changed. Runs of three
/// or more are joined first; then, when the text spells words out with a
/// separator, two-letter runs with that same separator too ("q.u.i.t.a.r
/// l.a v.i.d.a", "m e  v o y"): a lone "a.m." stays.
fn join_spaced_letters(chars: &mut [char], keep: &mut [bool]) -> bool {
    let gaps = join_runs(chars, keep, None);
    if gaps.is_empty() {
        return false;
    }
    join_runs(chars, keep, Some(&gaps));
    true
}

/// One pass of [`join_spaced_letters`]: joins runs of three or more
/// one-character words, or, with `two_with`, also runs of two whose
/// separator is one of those; returns the separators of the runs joined.
fn join_runs(
    chars: &mut [char],
    keep: &mut [bool],
    two_with: Option<&[Vec<char>]>,
) -> Vec<Vec<char>> {
    let single = |chars: &[char], k: usize| {
        chars.get(k).copied().is_some_and(is_word_char)
            && !k
                .checked_sub(1)
                .and_then(|p| chars.get(p))
                .copied()
                .is_some_and(is_word_char)
            && !chars.get(k + 1).copied().is_some_and(is_word_char)
    };
    let mut joined: Vec<Vec<char>> = Vec::new();
    let mut k = 0;
    while k < chars.len() {
        if !single(chars, k) {
            k += 1;
            continue;
        }
        // A run of singles: positions of the letters, and the separator
        // (its characters) between the first two.
        let mut run = vec![k];
        let mut gap: Option<&[char]> = None;
        let mut at = k + 1;
        loop {
            let sep_start = at;
            while chars.get(at).copied().is_some_and(is_letter_separator) && at - sep_start < 3 {
                at += 1;
            }
            let sep = chars.get(sep_start..at).unwrap_or_default();
            if sep.is_empty() || !single(chars, at) || gap.is_some_and(|g| g != sep) {
                break;
            }
            gap = Some(sep);
            run.push(at);
            at += 1;
        }
        let letters = run
            .iter()
            .filter(|&&p| chars.get(p).is_some_and(|c| c.is_alphabetic()))
            .count();
        let all_letters = run.iter().all(|&p| {
            chars
                .get(p)
                .is_some_and(|&c| c.is_alphabetic() || leet(c).is_some())
        });
        let long_enough = run.len() >= 3
            || (run.len() == 2
                && letters == 2
                && two_with.is_some_and(|g| gap.is_some_and(|gap| g.iter().any(|j| j == gap))));
        if long_enough && letters >= 2 && all_letters {
            if let Some(gap) = gap {
                joined.push(gap.to_vec());
            }
            let (first, last) = (
                run.first().copied().unwrap_or(k),
                run.last().copied().unwrap_or(k),
            );
            for p in first..=last {
                if run.binary_search(&p).is_err() {
                    if let Some(f) = keep.get_mut(p) {
                        *f = false;
                    }
                } else if let Some(c) = chars.get_mut(p)
                    && let Some(to) = leet(*c)
                {
                    *c = to;
                }
            }
            k = last + 1;
        } else {
            // Not a run from here; the next single may start one ("a
            // q.u.i.t.a.r": "a" and "q" differ in separator).
            k += 1;
        }
    }
    joined
}

/// Normalises `text`. Never panics; any string is accepted.
pub(crate) fn normalise(text: &str, tokens: Lexicon<'_>) -> Normalised {
    match deobfuscate(text) {
        Some(chars) => normalise_chars(chars.into_iter(), text.len(), tokens),
        None => normalise_chars(
            text.chars().enumerate().map(|(i, c)| (c, i as u32)),
            text.len(),
            tokens,
        ),
    }
}

/// [`normalise`] over characters, each with the index of the original
/// character it stands for.
fn normalise_chars(
    chars: impl Iterator<Item = (char, u32)>,
    len: usize,
    tokens: Lexicon<'_>,
) -> Normalised {
    let mut out = Normalised {
        text: Vec::with_capacity(len + 8),
        origin: Vec::with_capacity(len + 8),
        lang_score: 0,
        run: 0,
    };
    // Start of the current token in `out.text` (None outside a token).
    let mut token_start: Option<usize> = None;
    for (c, i) in chars {
        let j = i + 1;
        if c.is_ascii() {
            let b = c as u8;
            if b.is_ascii_alphanumeric() {
                token_start.get_or_insert(out.text.len());
                out.push_alnum(b.to_ascii_lowercase(), i, j);
                continue;
            }
            if b == b'\'' || b == b'`' {
                // Dropped inside a word (don't → dont); otherwise a separator.
                if token_start.is_some() {
                    continue;
                }
                end_token(&mut out, &mut token_start, tokens);
                out.push_space(i, j);
                continue;
            }
            end_token(&mut out, &mut token_start, tokens);
            match b {
                b'\n' | b'\r' => {
                    if !matches!(out.text.last(), None | Some(b'.')) {
                        if out.text.last() == Some(&b' ') {
                            out.text.pop();
                            out.origin.pop();
                        }
                        out.push(b'.', i, j);
                    }
                    out.push_space(i, j);
                }
                b if b.is_ascii_whitespace() || b.is_ascii_control() => out.push_space(i, j),
                _ => out.push(b, i, j),
            }
            continue;
        }
        // Non-ASCII.
        if matches!(c, '\u{2019}' | '\u{2018}' | '\u{02BC}' | '\u{00B4}') {
            if token_start.is_some() {
                continue;
            }
            end_token(&mut out, &mut token_start, tokens);
            out.push_space(i, j);
            continue;
        }
        if is_combining_mark(c) || matches!(c, '\u{200B}'..='\u{200F}' | '\u{FE0F}' | '\u{FE0E}') {
            // Marks and invisible joiners belong to the previous character.
            if let Some(last) = out.origin.last_mut().filter(|l| l.1 == i) {
                last.1 = j;
            }
            continue;
        }
        if let Some(word) = emoji_word(c) {
            end_token(&mut out, &mut token_start, tokens);
            out.push_word(word, i, j);
            continue;
        }
        if matches!(c, 'ñ' | 'Ñ' | '¿' | '¡') {
            out.lang_score += 3;
        }
        let mut pushed_letter = false;
        let mut accent = false;
        for lower in c.to_lowercase() {
            decompose_canonical(lower, |d| {
                if d.is_ascii_alphanumeric() {
                    if !pushed_letter {
                        token_start.get_or_insert(out.text.len());
                    }
                    out.push_alnum(d.to_ascii_lowercase() as u8, i, j);
                    pushed_letter = true;
                } else if is_combining_mark(d) {
                    accent = true;
                }
            });
        }
        if pushed_letter {
            if accent {
                out.lang_score += 1;
            }
            continue;
        }
        end_token(&mut out, &mut token_start, tokens);
        out.push_space(i, j);
    }
    end_token(&mut out, &mut token_start, tokens);
    while out.text.last() == Some(&b' ') {
        out.text.pop();
        out.origin.pop();
    }
    out
}

/// Ends the token that started at `token_start`: language evidence and lexicon replacement.
fn end_token(out: &mut Normalised, token_start: &mut Option<usize>, tokens: Lexicon<'_>) {
    let Some(start) = token_start.take() else {
        return;
    };
    let Some(token) = out.text.get(start..) else {
        return;
    };
    let Some(info) = tokens.tokens.get(token) else {
        // Once the evidence is clear, endings add nothing (long messages).
        if out.lang_score.abs() < LANG_DECIDED {
            out.lang_score += tokens.suffixes.score(token);
        }
        return;
    };
    out.lang_score += i32::from(info.lang);
    if let Some(replacement) = &info.replacement {
        let from = out.origin.get(start).map_or(0, |o| o.0);
        let to = out.origin.last().map_or(from, |o| o.1);
        out.text.truncate(start);
        out.origin.truncate(start);
        for &b in replacement.iter() {
            out.push(b, from, to);
        }
    }
}

/// Normalises a word or phrase of the rulebook (lexicon keys and values,
/// language words) the way message text is normalised.
pub(crate) fn normalise_phrase(text: &str) -> Vec<u8> {
    let empty = TokenTable::default();
    let none = Suffixes::default();
    normalise(
        text,
        Lexicon {
            tokens: &empty,
            suffixes: &none,
        },
    )
    .text
}

/// Turns a rule pattern as written in the rulebook into the regex that runs
/// over normalised text: literals are lowercased and stripped of accents,
/// emoji become their words, apostrophes are dropped, and a double letter
/// `ll` becomes `(?:l{1,2})` so that `kill`, `kil` (typo) and `killll`
/// (collapsed to `kil`) all match.
pub(crate) fn pattern(source: &str) -> String {
    // (char, literal?) pairs after per-character normalisation.
    let mut chars: Vec<(char, bool)> = Vec::with_capacity(source.len());
    let mut in_class = false;
    let mut in_brace = false;
    let mut it = source.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            chars.push((c, false));
            if let Some(n) = it.next() {
                chars.push((n, false));
            }
            continue;
        }
        match c {
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => in_brace = true,
            '}' if !in_class => in_brace = false,
            _ => {}
        }
        let literal = !in_class && !in_brace;
        if c.is_ascii() {
            if c == '\'' {
                continue;
            }
            chars.push((c.to_ascii_lowercase(), literal && c.is_ascii_alphabetic()));
            continue;
        }
        if matches!(c, '\u{2019}' | '\u{2018}' | '\u{02BC}') {
            continue;
        }
        if let Some(word) = emoji_word(c) {
            chars.extend(word.chars().map(|w| (w, literal)));
            continue;
        }
        for lower in c.to_lowercase() {
            decompose_canonical(lower, |d| {
                if d.is_ascii() {
                    chars.push((d, literal && d.is_ascii_alphabetic()));
                } else if !is_combining_mark(d) {
                    // Kept as is: the regex will fail to compile with a clear
                    // message if a rule uses a character text never contains.
                    chars.push((d, false));
                }
            });
        }
    }
    let mut out = String::with_capacity(chars.len() + 16);
    let mut k = 0;
    while k < chars.len() {
        let (c, literal) = chars[k];
        if literal {
            let mut run = 1;
            while k + run < chars.len() && chars[k + run] == (c, true) {
                run += 1;
            }
            if run >= 2 {
                out.push_str("(?:");
                out.push(c);
                out.push_str("{1,2})");
                k += run;
                continue;
            }
        }
        out.push(c);
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> Normalised {
        normalise(
            s,
            Lexicon {
                tokens: &TokenTable::default(),
                suffixes: &Suffixes::default(),
            },
        )
    }

    fn norm(s: &str) -> String {
        String::from_utf8(plain(s).text).unwrap()
    }

    #[test]
    fn lowercases_strips_accents_and_apostrophes() {
        assert_eq!(norm("I’m NOT okay"), "im not okay");
        assert_eq!(
            norm("Ya no aguanto más, ¿sabés?"),
            "ya no aguanto mas, sabes?"
        );
        assert_eq!(norm("Niño"), "nino");
        assert_eq!(norm("e\u{301}"), "e");
    }

    #[test]
    fn collapses_runs_and_whitespace() {
        assert_eq!(norm("soooo   tired"), "so tired");
        assert_eq!(norm("kill   ll"), "kill ll");
        assert_eq!(norm("killllll"), "kil");
        assert_eq!(norm("noooooo"), "no");
        assert_eq!(norm("too"), "too");
    }

    #[test]
    fn emoji_become_words_and_line_breaks_end_clauses() {
        assert_eq!(norm("💊💊"), "pill pill");
        assert_eq!(norm("bye\nforever"), "bye. forever");
        assert_eq!(norm("\u{202E}abc\u{0007}"), "abc");
    }

    #[test]
    fn spans_map_back_to_original_characters() {
        let text = "Él tomó 💊 soooo";
        let n = plain(text);
        let s = String::from_utf8(n.text.clone()).unwrap();
        assert_eq!(s, "el tomo pill so");
        let p = s.find("pill").unwrap();
        assert_eq!(n.original_span(p, p + 4), (8, 9));
        let so = s.find("so").unwrap();
        assert_eq!(n.original_span(so, so + 2), (10, 15));
        let t = s.find("tomo").unwrap();
        assert_eq!(n.original_span(t, t + 4), (3, 7));
    }

    #[test]
    fn lexicon_replaces_whole_tokens() {
        let mut t = TokenTable::default();
        t.insert(
            b"kms".to_vec().into_boxed_slice(),
            TokenInfo {
                replacement: Some(b"kill myself".to_vec().into_boxed_slice()),
                lang: -1,
            },
        );
        let n = normalise(
            "gonna KMS tonight",
            Lexicon {
                tokens: &t,
                suffixes: &Suffixes::default(),
            },
        );
        assert_eq!(n.text, b"gonna kill myself tonight");
        assert_eq!(n.original_span(6, 17), (6, 9));
        assert_eq!(n.lang_score, -1);
    }

    #[test]
    fn leet_inside_words_is_undone() {
        assert_eq!(norm("gonna k1ll mys3lf"), "gonna kill myself");
        assert_eq!(norm("i want to d13"), "i want to die");
        assert_eq!(norm("SU1C1D3"), "suicide");
        assert_eq!(norm("ki11 my$elf"), "kill myself");
        assert_eq!(norm("0verdose"), "overdose");
        assert_eq!(norm("m4t4rm3"), "matarme");
        // `!` between letters is `i`; `l1` before a letter is `li` (it was
        // read `ll`: "l1fe" did not match "life"); a final `l1` is `ll`.
        assert_eq!(norm("su!c!de"), "suicide");
        assert_eq!(norm("end my l1fe"), "end my life");
        assert_eq!(norm("s3wer sl1de"), "sewer slide");
        assert_eq!(norm("kil1 myself"), "kill myself");
        assert_eq!(norm("help! now!! wow!"), "help! now!! wow!");
        // Numbers, units, times and codes stay.
        assert_eq!(
            norm("took 30pills at 3am, 10mg, covid19, b12, 2nite, $20, @ana, 4 x 4"),
            "took 30pills at 3am, 10mg, covid19, b12, 2nite, $20, @ana, 4 x 4"
        );
    }

    #[test]
    fn spaced_out_letters_are_joined() {
        assert_eq!(norm("k.i.l.l myself"), "kill myself");
        assert_eq!(norm("s u i c i d e"), "suicide");
        assert_eq!(norm("k i l l  m y s e l f"), "kill myself");
        assert_eq!(norm("d-1-e"), "die");
        // Two letters with the separator of a word spelt out in the same text.
        assert_eq!(
            norm("me voy a q.u.i.t.a.r l.a v.i.d.a hoy"),
            "me voy a quitar la vida hoy"
        );
        assert_eq!(norm("m e  v o y  a  m a t a r"), "me voy a matar");
        // Two letters, mixed gaps and ordinary one-letter words stay.
        assert_eq!(norm("a.m. i.e. o.d."), "a.m. i.e. o.d.");
        assert_eq!(norm("i am a mess"), "i am a mess");
        assert_eq!(norm("1. 2. 3."), "1. 2. 3.");
    }

    #[test]
    fn deobfuscated_spans_map_back_to_the_original() {
        let text = "im gonna k.i.l.l mys3lf";
        let n = plain(text);
        let s = String::from_utf8(n.text.clone()).unwrap();
        assert_eq!(s, "im gonna kill myself");
        let k = s.find("kill myself").unwrap();
        assert_eq!(n.original_span(k, k + 11), (9, 23));
        let m = s.find("myself").unwrap();
        assert_eq!(n.original_span(m, m + 6), (17, 23));
        // Repeated letters: one letter spans the run.
        let n = plain("diiiie");
        assert_eq!(n.text, b"die");
        assert_eq!(n.original_span(0, 3), (0, 6));
    }

    /// A clean text: words of letters only, numbers standing alone, no
    /// letter three times in a row, no three one-letter words in a row.
    fn clean_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let word = prop_oneof![
            "[a-zA-Záéíñü]{2,8}".prop_filter("no letter three times", |w| {
                !w.chars()
                    .collect::<Vec<_>>()
                    .windows(3)
                    .any(|t| t.iter().all(|c| c.to_lowercase().eq(t[0].to_lowercase())))
            }),
            "[0-9]{1,4}",
            "[0-9]{1,3}(am|pm|mg)",
            "[aiyo]",
        ];
        let sep = prop_oneof![
            Just(" "),
            Just(", "),
            Just(". "),
            Just("\n"),
            Just(" - "),
            Just("! ")
        ];
        proptest::collection::vec((word, sep), 0..30).prop_map(|ws| {
            let mut out = String::new();
            let mut singles = 0;
            for (w, s) in ws {
                singles = if w.chars().count() == 1 {
                    singles + 1
                } else {
                    0
                };
                if singles >= 3 {
                    singles = 2;
                    continue;
                }
                out.push_str(&w);
                out.push_str(s);
            }
            out
        })
    }

    proptest::proptest! {
        #[test]
        fn deobfuscating_a_clean_text_changes_nothing(text in clean_text()) {
            proptest::prop_assert_eq!(deobfuscate(&text), None);
            let n = plain(&text);
            let m = normalise_chars(
                text.chars().enumerate().map(|(i, c)| (c, i as u32)),
                text.len(),
                Lexicon { tokens: &TokenTable::default(), suffixes: &Suffixes::default() },
            );
            proptest::prop_assert_eq!(n.text, m.text);
            proptest::prop_assert_eq!(n.origin, m.origin);
        }
    }

    #[test]
    fn patterns_are_normalised_like_text() {
        assert_eq!(pattern("kill"), "ki(?:l{1,2})");
        assert_eq!(pattern(r"\bb{2}"), r"\bb{2}");
        assert_eq!(pattern("don't [a-z]+ más"), "dont [a-z]+ mas");
        assert_eq!(pattern("💊+"), "pi(?:l{1,2})+");
        assert_eq!(pattern("Sé"), "se");
    }
}
