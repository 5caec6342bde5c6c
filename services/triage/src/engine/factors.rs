//! Necessary literals of a pattern, for the Aho-Corasick prefilter.
//!
//! For a (normalised) rule pattern we compute a set of literal strings such
//! that every match of the pattern contains at least one of them. A message
//! that contains none of a pattern's literals cannot match it, so the pattern
//! need not run. `None` means "no such set found": the pattern always runs.
//! Being conservative is the point: when in doubt, return `None`.
//!
//! The parser understands the regex subset rulebooks use: literals, escapes,
//! `.`, classes `[...]`, groups `(...)`/`(?:...)`, alternation and the
//! quantifiers `? * + {m} {m,} {m,n}` (greedy or lazy). Anything else
//! (inline flags, look-around) makes it give up with `None`.

/// Most strings an exact set may hold before it is dropped.
const MAX_EXACT: usize = 64;
/// Longest string an exact set may hold.
const MAX_LEN: usize = 48;

type Set = Vec<Vec<u8>>;

/// What we know about a sub-expression.
#[derive(Debug, Clone, Default)]
struct Info {
    /// Every string it can match, when that set is small.
    exact: Option<Set>,
    /// A set of literals one of which every match contains.
    factors: Option<Set>,
}

impl Info {
    fn unknown() -> Info {
        Info::default()
    }

    fn literal(bytes: &[u8]) -> Info {
        let s = vec![bytes.to_vec()];
        Info {
            exact: Some(s.clone()),
            factors: Some(s),
        }
    }

    fn empty() -> Info {
        Info {
            exact: Some(vec![Vec::new()]),
            factors: None,
        }
    }

    /// Factors usable for the prefilter: from the exact set when known.
    fn usable(&self) -> Option<Set> {
        match &self.exact {
            Some(e) if e.iter().all(|s| !s.is_empty()) => Some(e.clone()),
            _ => self.factors.clone(),
        }
    }
}

/// Necessary literals of `pattern`, or `None`.
pub(crate) fn necessary_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let mut p = Parser {
        b: pattern.as_bytes(),
        i: 0,
    };
    let info = p.alternation()?;
    if p.i != p.b.len() {
        return None;
    }
    let mut set = info.usable()?;
    if set.iter().any(Vec::is_empty) {
        return None;
    }
    set.sort();
    set.dedup();
    Some(set)
}

/// A better factor set has a longer shortest literal, then fewer literals.
fn better(a: &Set, b: &Set) -> bool {
    let min = |s: &Set| s.iter().map(Vec::len).min().unwrap_or(0);
    (min(a), std::cmp::Reverse(a.len())) > (min(b), std::cmp::Reverse(b.len()))
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

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// alternation := concat ('|' concat)*
    fn alternation(&mut self) -> Option<Info> {
        let mut branches = vec![self.concat()?];
        while self.peek() == Some(b'|') {
            self.i += 1;
            branches.push(self.concat()?);
        }
        if branches.len() == 1 {
            return branches.pop();
        }
        let mut exact: Option<Set> = Some(Vec::new());
        let mut factors: Option<Set> = Some(Vec::new());
        for br in &branches {
            exact = match (exact, &br.exact) {
                (Some(mut acc), Some(e)) if acc.len() + e.len() <= MAX_EXACT => {
                    acc.extend(e.iter().cloned());
                    Some(acc)
                }
                _ => None,
            };
            factors = match (factors, br.usable()) {
                (Some(mut acc), Some(f)) => {
                    acc.extend(f);
                    Some(acc)
                }
                _ => None,
            };
        }
        Some(Info { exact, factors })
    }

    /// concat := (atom quantifier?)*
    fn concat(&mut self) -> Option<Info> {
        let mut run: Option<Set> = Some(vec![Vec::new()]);
        let mut best: Option<Set> = None;
        let mut whole_exact: Option<Set> = Some(vec![Vec::new()]);
        let consider = |best: &mut Option<Set>, cand: Option<Set>| {
            let usable = cand.filter(|c| !c.is_empty() && c.iter().all(|s| !s.is_empty()));
            if let Some(c) = usable.filter(|c| best.as_ref().is_none_or(|b| better(c, b))) {
                *best = Some(c);
            }
        };
        while let Some(c) = self.peek() {
            if c == b'|' || c == b')' {
                break;
            }
            let atom = self.atom()?;
            let item = self.quantified(atom)?;
            whole_exact = match (&whole_exact, &item.exact) {
                (Some(w), Some(e)) => cross(w, e),
                _ => None,
            };
            match &item.exact {
                Some(e) => {
                    let joined = run.as_ref().and_then(|r| cross(r, e));
                    match joined {
                        Some(j) => run = Some(j),
                        None => {
                            consider(&mut best, run.take());
                            run = Some(e.clone());
                        }
                    }
                }
                None => {
                    consider(&mut best, run.take());
                    consider(&mut best, item.factors.clone());
                    run = Some(vec![Vec::new()]);
                }
            }
        }
        consider(&mut best, run);
        Some(Info {
            exact: whole_exact,
            factors: best,
        })
    }

    fn atom(&mut self) -> Option<Info> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b'(' => {
                if self.peek() == Some(b'?') {
                    // Only non-capturing groups `(?:`.
                    if self.b.get(self.i + 1) != Some(&b':') {
                        return None;
                    }
                    self.i += 2;
                }
                let inner = self.alternation()?;
                if self.peek() != Some(b')') {
                    return None;
                }
                self.i += 1;
                Some(inner)
            }
            b'[' => {
                self.class()?;
                Some(Info::unknown())
            }
            b'.' => Some(Info::unknown()),
            b'^' | b'$' => Some(Info::empty()),
            b'\\' => {
                let e = self.peek()?;
                self.i += 1;
                match e {
                    b'b' | b'B' | b'A' | b'z' => Some(Info::empty()),
                    b'w' | b'W' | b'd' | b'D' | b's' | b'S' => Some(Info::unknown()),
                    b'x' | b'p' | b'P' | b'u' | b'U' => None,
                    e if e.is_ascii_alphanumeric() => None,
                    e => Some(Info::literal(&[e])),
                }
            }
            b'*' | b'+' | b'?' | b'{' | b')' | b'|' => None,
            c if c.is_ascii() => Some(Info::literal(&[c])),
            _ => None,
        }
    }

    /// Skips a character class; the opening `[` is consumed.
    fn class(&mut self) -> Option<()> {
        if self.peek() == Some(b'^') {
            self.i += 1;
        }
        if self.peek() == Some(b']') {
            self.i += 1;
        }
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'\\' => self.i += 1,
                b'[' => return None,
                b']' => return Some(()),
                _ => {}
            }
        }
        None
    }

    fn quantified(&mut self, atom: Info) -> Option<Info> {
        let (min, max) = match self.peek() {
            Some(b'?') => (0, Some(1)),
            Some(b'*') => (0, None),
            Some(b'+') => (1, None),
            Some(b'{') => {
                let close = self.b[self.i..].iter().position(|&c| c == b'}')? + self.i;
                let body = std::str::from_utf8(&self.b[self.i + 1..close]).ok()?;
                let (lo, hi) = match body.split_once(',') {
                    None => {
                        let n: usize = body.parse().ok()?;
                        (n, Some(n))
                    }
                    Some((lo, "")) => (lo.parse().ok()?, None),
                    Some((lo, hi)) => (lo.parse().ok()?, Some(hi.parse().ok()?)),
                };
                self.i = close;
                (lo, hi)
            }
            _ => return Some(atom),
        };
        self.i += 1;
        if self.peek() == Some(b'?') {
            self.i += 1;
        }
        let exact = match (&atom.exact, max) {
            (Some(e), Some(max)) if max <= 3 => repeat(e, min, max),
            _ => None,
        };
        let factors = if min >= 1 { atom.usable() } else { None };
        Some(Info { exact, factors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(p: &str) -> Option<Vec<String>> {
        necessary_literals(p).map(|s| {
            s.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        })
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
    }

    #[test]
    fn optional_parts_are_not_required() {
        assert_eq!(lits(r"(very )?sad").unwrap(), vec!["sad", "very sad"]);
        assert_eq!(lits(r"x?"), None);
        assert_eq!(lits(r"a|b?"), None);
        assert_eq!(lits(r"(\w+ )?pills").unwrap(), vec!["pills"]);
    }

    #[test]
    fn picks_the_longest_required_part_around_unknowns() {
        assert_eq!(lits(r"took \d+ pills").unwrap(), vec![" pills"]);
        assert_eq!(lits(r"took .{0,20}pills").unwrap(), vec!["took "]);
        assert_eq!(lits(r"[a-z]+"), None);
        assert_eq!(lits(r"\d+ ?mg").unwrap(), vec![" mg", "mg"]);
    }

    #[test]
    fn gives_up_on_what_it_does_not_understand() {
        assert_eq!(lits(r"(?i)abc"), None);
        assert_eq!(lits(r"\x41"), None);
        assert_eq!(lits(r"(abc"), None);
    }
}
