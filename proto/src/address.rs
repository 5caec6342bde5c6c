//! Channel addresses: who a message came from or goes to, as Twilio writes
//! them. Most are E.164 phone numbers (`+15005550142`), but Twilio also
//! posts channel addresses (`whatsapp:+15005550142`, `messenger:1234567`),
//! alphanumeric sender ids (`NWDALERT`) and short codes (`55555`).
//!
//! A person who wrote is a person to answer, whatever their address looks
//! like: [`Address::parse`] never fails. What it recognised is its
//! [`AddressKind`]; the gateway flags anything that is not a phone number.
//!
//! An address is personal data: `Debug` and `Display` are redacted, and KV
//! keys use a keyed pseudonym of it ([`crate::pseudonym::Pseudonymiser`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::phone::PhoneNumber;

/// What an [`Address`] was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// An E.164 phone number: plain SMS.
    Phone,
    /// `scheme:id`, e.g. `whatsapp:+15005550142` or `messenger:1234567`.
    Channel,
    /// An alphanumeric sender id: 1 to 11 letters, digits and spaces, at
    /// least one letter (`NWDALERT`). Twilio does not deliver replies to one.
    Alphanumeric,
    /// A short code: 3 to 8 digits without `+`.
    ShortCode,
    /// None of the above (including empty): kept as written.
    Unrecognised,
}

impl AddressKind {
    /// Bounded value for metric labels and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Phone => "phone",
            AddressKind::Channel => "channel",
            AddressKind::Alphanumeric => "alphanumeric",
            AddressKind::ShortCode => "short_code",
            AddressKind::Unrecognised => "unrecognised",
        }
    }
}

/// A sender or recipient address, as written on the wire.
///
/// Serialised as the plain string, so a plain E.164 number (`"+1…"`) is the
/// same JSON as a [`PhoneNumber`] was, both ways.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct Address {
    raw: String,
    kind: AddressKind,
}

/// Longest accepted channel scheme (`whatsapp`, `messenger`, `rcs`, …).
const MAX_SCHEME_LEN: usize = 32;

impl Address {
    /// Recognises `s`; never fails (an unknown form is [`AddressKind::Unrecognised`]).
    pub fn parse(s: &str) -> Self {
        Self {
            raw: s.to_owned(),
            kind: classify(s),
        }
    }

    /// The address as written, for the wire to Twilio and nothing else.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The channel scheme (`whatsapp`), for channel addresses.
    pub fn scheme(&self) -> Option<&str> {
        match self.kind {
            AddressKind::Channel => self.raw.split_once(':').map(|(s, _)| s),
            _ => None,
        }
    }

    /// The E.164 number behind the address: the number itself, or the id
    /// of a channel address when that is a number (`whatsapp:+1…`).
    pub fn phone(&self) -> Option<PhoneNumber> {
        match self.kind {
            AddressKind::Phone => PhoneNumber::parse(&self.raw).ok(),
            AddressKind::Channel => self
                .raw
                .split_once(':')
                .and_then(|(_, id)| PhoneNumber::parse(id).ok()),
            _ => None,
        }
    }

    /// This address (one of the line's) as seen from `other`'s channel: a
    /// reply to `whatsapp:+1…` goes from `whatsapp:<line>`, an SMS to a
    /// phone from the line's plain number. An address that cannot be put
    /// on `other`'s channel is returned as it is.
    pub fn on_channel_of(&self, other: &Address) -> Address {
        let Some(number) = self.phone() else {
            return self.clone();
        };
        match other.scheme() {
            Some(scheme) => Address {
                raw: format!("{scheme}:{}", number.as_e164()),
                kind: AddressKind::Channel,
            },
            None => Address::from(number),
        }
    }

    /// The channel's name for people (`SMS`, `WhatsApp`, …).
    pub fn channel_name(&self) -> String {
        match self.kind {
            AddressKind::Phone => "SMS".to_owned(),
            AddressKind::Channel => match self.scheme().unwrap_or_default() {
                "whatsapp" => "WhatsApp".to_owned(),
                "messenger" => "Messenger".to_owned(),
                "rcs" => "RCS".to_owned(),
                other => other.to_owned(),
            },
            AddressKind::Alphanumeric => "Sender id".to_owned(),
            AddressKind::ShortCode => "Short code".to_owned(),
            AddressKind::Unrecognised => "Unknown sender".to_owned(),
        }
    }

    /// Bounded channel value for metric labels: `sms`, `whatsapp`,
    /// `messenger`, `rcs`, `other_channel`, `alphanumeric`, `short_code`,
    /// `unrecognised`.
    pub fn channel_kind(&self) -> &'static str {
        match self.kind {
            AddressKind::Phone => "sms",
            AddressKind::Channel => match self.scheme().unwrap_or_default() {
                "whatsapp" => "whatsapp",
                "messenger" => "messenger",
                "rcs" => "rcs",
                _ => "other_channel",
            },
            other => other.as_str(),
        }
    }

    /// The last two characters, for a counsellor's screen ("··67").
    pub fn redacted(&self) -> String {
        let tail: String = {
            let chars: Vec<char> = self.raw.chars().collect();
            chars[chars.len().saturating_sub(2)..].iter().collect()
        };
        if tail.is_empty() {
            String::new()
        } else {
            format!("··{tail}")
        }
    }

    /// What a counsellor sees instead of the address: "WhatsApp ··67".
    pub fn label(&self) -> String {
        let tail = self.redacted();
        if tail.is_empty() {
            self.channel_name()
        } else {
            format!("{} {tail}", self.channel_name())
        }
    }
}

fn classify(s: &str) -> AddressKind {
    if PhoneNumber::parse(s).is_ok() {
        return AddressKind::Phone;
    }
    if let Some((scheme, id)) = s.split_once(':') {
        let scheme_ok = scheme.len() <= MAX_SCHEME_LEN
            && scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let id_ok = !id.is_empty() && !id.chars().any(char::is_whitespace);
        return if scheme_ok && id_ok {
            AddressKind::Channel
        } else {
            AddressKind::Unrecognised
        };
    }
    if (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        return AddressKind::ShortCode;
    }
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && !s.starts_with(' ')
        && !s.ends_with(' ');
    if alphanumeric {
        AddressKind::Alphanumeric
    } else {
        AddressKind::Unrecognised
    }
}

impl From<PhoneNumber> for Address {
    fn from(p: PhoneNumber) -> Self {
        Self {
            raw: p.into(),
            kind: AddressKind::Phone,
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Self {
        let kind = classify(&s);
        Self { raw: s, kind }
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.raw
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.label())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recognises_what_twilio_posts() {
        let cases = [
            ("+15005550142", AddressKind::Phone),
            ("whatsapp:+15005550142", AddressKind::Channel),
            ("messenger:1234567890", AddressKind::Channel),
            ("rcs:nwd_agent", AddressKind::Channel),
            ("NWDALERT", AddressKind::Alphanumeric),
            ("NWD Alert", AddressKind::Alphanumeric),
            ("55555", AddressKind::ShortCode),
            ("4155550123", AddressKind::Unrecognised),
            ("", AddressKind::Unrecognised),
            ("WhatsApp:+15005550142", AddressKind::Unrecognised),
            ("whatsapp:", AddressKind::Unrecognised),
            ("+1 500 555 0142", AddressKind::Unrecognised),
            ("A VERY LONG SENDER", AddressKind::Unrecognised),
        ];
        for (s, kind) in cases {
            assert_eq!(Address::parse(s).kind(), kind, "{s:?}");
            assert_eq!(Address::parse(s).as_str(), s);
        }
    }

    #[test]
    fn plain_numbers_are_wire_compatible_with_phone_numbers() {
        let phone = PhoneNumber::parse("+15005550142").unwrap();
        let from_phone = serde_json::to_string(&phone).unwrap();
        let addr: Address = serde_json::from_str(&from_phone).unwrap();
        assert_eq!(addr, Address::from(phone.clone()));
        assert_eq!(addr.kind(), AddressKind::Phone);
        assert_eq!(serde_json::to_string(&addr).unwrap(), from_phone);
        let back: PhoneNumber =
            serde_json::from_str(&serde_json::to_string(&addr).unwrap()).unwrap();
        assert_eq!(back, phone);
    }

    #[test]
    fn replies_go_back_on_the_senders_channel() {
        let line = Address::parse("+15005550100");
        let whatsapp = Address::parse("whatsapp:+15005550142");
        assert_eq!(
            line.on_channel_of(&whatsapp).as_str(),
            "whatsapp:+15005550100"
        );
        assert_eq!(line.on_channel_of(&whatsapp).kind(), AddressKind::Channel);
        let wa_line = Address::parse("whatsapp:+15005550100");
        let phone = Address::parse("+15005550199");
        assert_eq!(wa_line.on_channel_of(&phone).as_str(), "+15005550100");
        assert_eq!(wa_line.on_channel_of(&whatsapp), wa_line);
        assert_eq!(line.on_channel_of(&phone), line);
        assert_eq!(
            line.on_channel_of(&Address::parse("NWDALERT")),
            line,
            "no channel: the plain number"
        );
        let page = Address::parse("messenger:1234567");
        assert_eq!(page.on_channel_of(&phone), page, "not a number: as it is");
    }

    #[test]
    fn display_and_debug_never_show_the_address() {
        let a = Address::parse("whatsapp:+15005550167");
        assert_eq!(a.to_string(), "WhatsApp ··67");
        assert!(!format!("{a:?}").contains("5550167"));
        assert_eq!(Address::parse("+15005550167").label(), "SMS ··67");
        assert_eq!(Address::parse("").label(), "Unknown sender");
        assert_eq!(Address::parse("NWDALERT").label(), "Sender id ··RT");
        assert_eq!(a.phone().unwrap().as_e164(), "+15005550167");
        assert_eq!(a.channel_kind(), "whatsapp");
        assert_eq!(Address::parse("x:y").channel_kind(), "other_channel");
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_keeps_the_text(s in ".*") {
            let a = Address::parse(&s);
            prop_assert_eq!(a.as_str(), s.as_str());
            let _ = a.label();
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), a);
        }
    }
}
