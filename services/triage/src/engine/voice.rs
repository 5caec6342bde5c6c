//! The addressed voice: stretches of a long text written *to* someone else
//! ("if you want to kill yourself, please reach out", "you deserve to
//! live", "OP, don't do it"), as opposed to the writer's own voice.
//!
//! A stretch starts at a second-person cue ([`YOU`], [`YOU_PHRASES`]) and
//! runs to the end of its sentence (`. ! ?`, a line break), to the end of
//! its clause (`, ; :`) once it has said something after its cue, or to the first
//! word that puts a person back in the sentence as its subject: the writer
//! ([`OWN`]: "can you help me I want to die" is own voice again from "me")
//! or a third person ([`THEY`]: "do you know what to do, she is not
//! breathing" — someone else's state is for the rules' own third-person
//! context). Only what comes before a word decides whether it is
//! addressed, so appending text never changes it for the words already
//! there.
//!
//! Only words from [`FROM_WORD`] on can be addressed: the first 48 words of
//! a message (every usual SMS) are read as before. A crisis text often
//! talks to the counsellor ("are u there took pills") and nothing in a
//! message that short is worth that risk.

/// Words before this index (the model's window, [`super::model::WINDOW_WORDS`])
/// are never addressed.
pub(crate) const FROM_WORD: usize = super::model::WINDOW_WORDS;

/// One addressed stretch `[start, end)` of normalised text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addressed {
    pub start: usize,
    pub end: usize,
    /// Whether the stretch ended without the writer coming back into it
    /// (a sentence end, a third person, the end of the text). Rule matches
    /// are discounted only then: "if you want to die I'd call" keeps the
    /// rules' level (errs up).
    pub without_writer: bool,
}

/// Second-person words (after normalisation: `u` → `you`, `ur` → `your`).
const YOU: &[&[u8]] = &[
    b"you",
    b"your",
    b"youre",
    b"yours",
    b"yourself",
    b"yourselves",
    b"youve",
    b"youll",
    b"youd",
    b"yall",
    b"op",
    b"tu",
    b"te",
    b"ti",
    b"tus",
    b"usted",
    b"ustedes",
    b"contigo",
    b"vos",
];

/// Advice to someone else without a pronoun.
const YOU_PHRASES: &[&[u8]] = &[b"dont do it", b"no lo hagas", b"no te rindas"];

/// The writer as the subject or object: own voice again. Spanish verbs in
/// the first person carry the writer without a pronoun.
const OWN: &[&[u8]] = &[
    b"i",
    b"im",
    b"ive",
    b"ill",
    b"id",
    b"me",
    b"my",
    b"myself",
    b"mine",
    b"we",
    b"us",
    b"our",
    b"yo",
    b"mi",
    b"mis",
    b"conmigo",
    b"nosotros",
    b"nos",
    b"tengo",
    b"quiero",
    b"voy",
    b"estoy",
    b"soy",
    b"puedo",
    b"necesito",
    b"siento",
    b"pienso",
    b"creo",
    b"aguanto",
    b"odio",
    b"hago",
    b"tome",
    b"intente",
    b"hice",
    b"tuve",
    b"estuve",
    b"fui",
    b"compre",
];

/// A third person as the subject: someone else's state.
const THEY: &[&[u8]] = &[
    b"he", b"she", b"they", b"hes", b"shes", b"theyre", b"el", b"ella", b"ellos", b"ellas",
];

/// The addressed stretches of normalised text (lowercase ASCII), in order.
pub(crate) fn addressed(text: &[u8]) -> Vec<Addressed> {
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    // Words of the open stretch after its cue: a clause break (`, ; :`)
    // ends a stretch that has said something ("you never listen, going to
    // end it all": the writer's own words again after the comma), not a
    // cue alone ("op, don't do it", "no lo hagas, vale la pena": a vocative
    // or an imperative whose advice follows).
    let mut said = 0usize;
    let mut words = 0usize;
    let mut i = 0;
    while i < text.len() {
        let b = text.get(i).copied().unwrap_or(b' ');
        if b.is_ascii_alphanumeric() {
            let start = i;
            while text.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                i += 1;
            }
            let word = text.get(start..i).unwrap_or_default();
            let index = words;
            words += 1;
            if let Some(from) = open {
                let writer = listed(OWN, word);
                if writer || listed(THEY, word) {
                    out.push(Addressed {
                        start: from,
                        end: start,
                        without_writer: !writer,
                    });
                    open = None;
                } else if start > from {
                    said += 1;
                }
            } else if index >= FROM_WORD {
                if listed(YOU, word) {
                    open = Some(start);
                    said = 0;
                } else if let Some(len) = phrase_at(text.get(start..).unwrap_or_default()) {
                    // From the end of the phrase: its first words are not
                    // addressed until it is complete.
                    open = Some(start + len);
                    said = 0;
                }
            }
            continue;
        }
        let sentence_end = matches!(b, b'.' | b'!' | b'?' | b'\n');
        let clause_end = matches!(b, b',' | b';' | b':') && said > 0;
        if (sentence_end || clause_end)
            && let Some(from) = open.take()
        {
            out.push(Addressed {
                start: from,
                end: i,
                without_writer: true,
            });
        }
        i += 1;
    }
    if let Some(from) = open {
        out.push(Addressed {
            start: from,
            end: text.len(),
            without_writer: true,
        });
    }
    out
}

/// The length of the [`YOU_PHRASES`] cue that starts `rest` (at a word
/// start) and ends at a word boundary, if any.
fn phrase_at(rest: &[u8]) -> Option<usize> {
    YOU_PHRASES
        .iter()
        .find(|cue| {
            rest.starts_with(cue) && !rest.get(cue.len()).is_some_and(u8::is_ascii_alphanumeric)
        })
        .map(|cue| cue.len())
}

/// Whether `[s, e)` lies inside one addressed stretch that ended without
/// the writer: a rule match there is advice or support to someone else.
pub(crate) fn discounts(stretches: &[Addressed], s: usize, e: usize) -> bool {
    let at = stretches.partition_point(|a| a.end < e);
    stretches
        .get(at)
        .is_some_and(|a| a.without_writer && a.start <= s && e <= a.end)
}

/// Whether the word starting at `s` is addressed (any stretch).
pub(crate) fn hides(stretches: &[Addressed], s: usize) -> bool {
    let at = stretches.partition_point(|a| a.end <= s);
    stretches.get(at).is_some_and(|a| a.start <= s)
}

/// A word's voice, for the model's addressed-window gate
/// ([`super::model`]): a person as the subject (the writer, [`OWN`], or a
/// third person, [`THEY`]) or the one addressed ([`YOU`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Voice {
    Person,
    You,
}

/// Every word with a voice ([`of`]).
pub(crate) fn voiced_words() -> impl Iterator<Item = &'static [u8]> {
    OWN.iter().chain(THEY).chain(YOU).copied()
}

/// Whether `word` is in `list`: lengths and first letters are compared
/// before the bytes (most words of a text are in no list; this runs per
/// word of every message).
pub(crate) fn listed(list: &[&[u8]], word: &[u8]) -> bool {
    list.iter()
        .any(|w| w.len() == word.len() && w.first() == word.first() && *w == word)
}

/// The voice of a word, if it has one.
pub(crate) fn of(word: &[u8]) -> Option<Voice> {
    // Every listed word has at most 10 letters.
    if word.len() > 10 {
        None
    } else if listed(OWN, word) || listed(THEY, word) {
        Some(Voice::Person)
    } else if listed(YOU, word) {
        Some(Voice::You)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `FROM_WORD` words of an opening, then `tail` (normalised text).
    fn long(tail: &str) -> String {
        format!("{}{tail}", "so ".repeat(FROM_WORD))
    }

    /// The addressed words of `text` (normalised), and whether each
    /// stretch ended without the writer.
    fn stretches(text: &str) -> Vec<(String, bool)> {
        addressed(text.as_bytes())
            .iter()
            .map(|a| (text[a.start..a.end].trim().to_owned(), a.without_writer))
            .collect()
    }

    #[test]
    fn advice_to_someone_else_is_addressed_to_the_end_of_its_sentence() {
        let text = long("if you want to kill yourself, please reach out. im fine");
        assert_eq!(
            stretches(&text),
            [("you want to kill yourself".to_owned(), true)]
        );
        // A clause break ends a stretch that has said something: the
        // writer's own (subject-less) words may follow.
        let text = long("you never listen, going to end it all");
        assert_eq!(stretches(&text), [("you never listen".to_owned(), true)]);
        let text = long("op, dont do it. you deserve to live");
        assert_eq!(
            stretches(&text),
            [
                ("op, dont do it".to_owned(), true),
                ("you deserve to live".to_owned(), true)
            ]
        );
        let text =
            long("si tu quieres matarte, por favor llama a alguien. no lo hagas, vale la pena");
        assert_eq!(
            stretches(&text),
            [
                ("tu quieres matarte".to_owned(), true),
                (", vale la pena".to_owned(), true)
            ]
        );
    }

    #[test]
    fn the_writer_or_a_third_person_ends_the_addressed_voice() {
        // The writer comes back: own voice from "me" on, and matches before
        // it are not discounted (errs up).
        let text = long("can you help me i want to die");
        assert_eq!(stretches(&text), [("you help".to_owned(), false)]);
        let text = long("te escribo porque quiero morir");
        assert_eq!(stretches(&text), [("te escribo porque".to_owned(), false)]);
        let text = long("are you there? i have the rope");
        assert_eq!(stretches(&text), [("you there".to_owned(), true)]);
        // Someone else's state is for the rules' own third-person context.
        let text = long("do you know what to do, he is not breathing");
        assert_eq!(stretches(&text), [("you know what to do".to_owned(), true)]);
        let text = long("sabes que hacer, ella no respira");
        assert!(stretches(&text).is_empty());
    }

    #[test]
    fn the_first_window_is_never_addressed() {
        assert!(addressed(b"if you want to kill yourself please reach out").is_empty());
        let text = format!("{}you deserve to live", "so ".repeat(FROM_WORD - 1));
        assert!(addressed(text.as_bytes()).is_empty());
    }

    #[test]
    fn only_what_comes_before_a_word_decides_whether_it_is_addressed() {
        let text = long(
            "you deserve better, honestly you do. can you help me please i took pills. \
             te quiero mucho y no lo hagas por favor, mi hermano dice",
        );
        let full = addressed(text.as_bytes());
        // Cut at word boundaries: text is appended after a space.
        let cuts = (0..=text.len()).filter(|&c| {
            !text
                .as_bytes()
                .get(c)
                .is_some_and(u8::is_ascii_alphanumeric)
        });
        for cut in cuts {
            let prefix = &text.as_bytes()[..cut];
            let part = addressed(prefix);
            // Every word of the prefix is hidden alike.
            for (s, _) in prefix.iter().enumerate().filter(|&(s, &b)| {
                b.is_ascii_alphanumeric() && (s == 0 || !prefix[s - 1].is_ascii_alphanumeric())
            }) {
                assert_eq!(hides(&part, s), hides(&full, s), "cut {cut}, word at {s}");
            }
            // A stretch ended without the writer in the prefix either ends
            // the same way or, later, with the writer (only raises).
            for a in &part {
                let f = full.iter().find(|f| f.start == a.start).unwrap();
                assert!(f.end >= a.end.min(f.end));
                assert!(a.without_writer || !f.without_writer);
            }
        }
    }

    #[test]
    fn a_match_is_discounted_only_inside_a_stretch_without_the_writer() {
        let text = long("if you want to kill yourself tonight, please reach out");
        let a = addressed(text.as_bytes());
        let s = text.find("want").unwrap();
        let e = text.find(" tonight").unwrap();
        assert!(discounts(&a, s, e));
        assert!(hides(&a, s));
        // A match running past the stretch is not.
        let text = long("you know i want to kill myself");
        let a = addressed(text.as_bytes());
        let s = text.find("want").unwrap();
        assert!(!discounts(&a, s, text.len()));
        assert!(!hides(&a, s));
    }

    #[test]
    fn voices_of_words() {
        assert_eq!(of(b"i"), Some(Voice::Person));
        assert_eq!(of(b"she"), Some(Voice::Person));
        assert_eq!(of(b"quiero"), Some(Voice::Person));
        assert_eq!(of(b"you"), Some(Voice::You));
        assert_eq!(of(b"yourselves"), Some(Voice::You));
        assert_eq!(of(b"tu"), Some(Voice::You));
        assert_eq!(of(b"pills"), None);
        assert_eq!(of(b"yourselvesss"), None);
    }
}
