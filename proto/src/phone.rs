//! E.164 phone numbers. A phone number is personal data: it never appears in
//! logs or metric labels; use [`PhoneNumber::redacted`], and for KV keys a
//! keyed pseudonym ([`crate::pseudonym::Pseudonymiser`]).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("phone number must be E.164: '+' then 8 to 15 digits, not starting with 0")]
pub struct PhoneError;

/// A phone number in E.164 form (`+` and 8–15 digits, first digit not 0).
///
/// `Debug` and `Display` are redacted so that a number can't reach a log by
/// accident; [`PhoneNumber::as_e164`] gives the real value where it is needed.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(s: &str) -> Result<Self, PhoneError> {
        let digits = s.strip_prefix('+').ok_or(PhoneError)?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(PhoneError)
        }
    }

    /// The full number, for the wire to Twilio and nothing else.
    pub fn as_e164(&self) -> &str {
        &self.0
    }

    /// The last two digits, for a counsellor's screen ("SMS ··67").
    pub fn redacted(&self) -> String {
        let tail = &self.0[self.0.len().saturating_sub(2)..];
        format!("··{tail}")
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.redacted())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_e164() {
        assert!(PhoneNumber::parse("+15005550100").is_ok());
        assert!(PhoneNumber::parse("+34600111222").is_ok());
        assert!(PhoneNumber::parse("+12345678").is_ok());
    }

    #[test]
    fn rejects_non_e164() {
        for bad in [
            "",
            "+",
            "15005550100",
            "+1 500 555 0100",
            "+1-500-555-0100",
            "+0123456789",
            "+1234567",
            "+1234567890123456",
            "+1500555010a",
            "++15005550100",
            " +15005550100",
        ] {
            assert!(
                PhoneNumber::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_and_debug_never_show_the_number() {
        let p = PhoneNumber::parse("+15005550167").unwrap();
        assert_eq!(p.to_string(), "··67");
        assert!(!format!("{p:?}").contains("5550167"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = PhoneNumber::parse(&s);
        }

        #[test]
        fn valid_numbers_round_trip(d in "[1-9][0-9]{7,14}") {
            let s = format!("+{d}");
            let p = PhoneNumber::parse(&s).unwrap();
            prop_assert_eq!(p.as_e164(), s.as_str());
        }
    }
}
