//! Twilio's REST Messages resource (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`)
//! and its error body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// A Message resource, as Twilio returns it (`201 Created` on create).
///
/// Every key is always present; unknown or unsent values are `null`.
/// `num_segments` and `num_media` are strings; dates are RFC 2822.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageResource {
    pub account_sid: String,
    pub api_version: String,
    pub body: String,
    pub date_created: Option<String>,
    pub date_sent: Option<String>,
    pub date_updated: Option<String>,
    /// `outbound-api`, `inbound`, `outbound-call`, `outbound-reply`.
    pub direction: String,
    pub error_code: Option<u32>,
    pub error_message: Option<String>,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub num_media: String,
    pub num_segments: String,
    pub price: Option<String>,
    pub price_unit: Option<String>,
    pub sid: String,
    /// `queued`, `sending`, `sent`, `delivered`, `undelivered`, `failed`, …
    pub status: String,
    pub subresource_uris: Option<BTreeMap<String, String>>,
    pub to: String,
    pub uri: String,
}

/// Twilio's error body: `{code, message, more_info, status}`.
/// Branch on `code` and `status`; `message` wording changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: u32,
    pub message: String,
    #[serde(default)]
    pub more_info: String,
    pub status: u16,
}

impl ErrorResponse {
    /// An error body with Twilio's usual `more_info` link.
    pub fn new(code: u32, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            more_info: format!("https://www.twilio.com/docs/errors/{code}"),
            status,
        }
    }
}

/// Twilio error codes we branch on.
pub mod codes {
    /// Authentication failed (wrong Account SID or auth token).
    pub const AUTHENTICATION_FAILED: u32 = 20003;
    /// The requested resource was not found.
    pub const NOT_FOUND: u32 = 20404;
    /// Too many requests.
    pub const TOO_MANY_REQUESTS: u32 = 20429;
    /// Internal error on Twilio's side.
    pub const INTERNAL_ERROR: u32 = 20500;
    /// Service unavailable.
    pub const SERVICE_UNAVAILABLE: u32 = 20503;
    /// The `To` number is not a valid phone number.
    pub const INVALID_TO: u32 = 21211;
    /// The `From` number is not a valid phone number.
    pub const INVALID_FROM: u32 = 21212;
    /// Permission to send an SMS to this region has not been enabled.
    pub const REGION_NOT_ENABLED: u32 = 21408;
    /// Message body is required.
    pub const BODY_REQUIRED: u32 = 21602;
    /// A `From` number (or MessagingServiceSid) is required.
    pub const FROM_REQUIRED: u32 = 21603;
    /// A `To` number is required.
    pub const TO_REQUIRED: u32 = 21604;
    /// The recipient replied STOP: unsubscribed from this sender.
    pub const UNSUBSCRIBED: u32 = 21610;
    /// The `To` number is not currently reachable via SMS.
    pub const NOT_REACHABLE: u32 = 21612;
    /// The `To` number is not a mobile number.
    pub const NOT_MOBILE: u32 = 21614;
}

/// Permanent failures: retrying the same message can never succeed.
pub const PERMANENT_ERROR_CODES: [u32; 5] = [
    codes::INVALID_TO,
    codes::UNSUBSCRIBED,
    codes::NOT_MOBILE,
    codes::NOT_REACHABLE,
    codes::REGION_NOT_ENABLED,
];

/// Whether a Twilio error code means "don't retry this message".
pub fn is_permanent(code: u32) -> bool {
    PERMANENT_ERROR_CODES.contains(&code)
}

/// A date as Twilio writes it: RFC 2822 in GMT (`Wed, 19 Feb 2025 21:20:05 +0000`).
pub fn rfc2822(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc2822)
        .unwrap_or_default()
}

/// `/2010-04-01/Accounts/{account}/Messages/{sid}.json`
pub fn message_uri(account_sid: &str, sid: &str) -> String {
    format!(
        "/{}/Accounts/{account_sid}/Messages/{sid}.json",
        crate::API_VERSION
    )
}

/// `/2010-04-01/Accounts/{account}/Messages.json`, the create endpoint.
pub fn messages_path(account_sid: &str) -> String {
    format!(
        "/{}/Accounts/{account_sid}/Messages.json",
        crate::API_VERSION
    )
}

/// How many SMS segments a body takes: GSM-7 (160, or 153 per part when
/// concatenated) if every character is in the GSM basic set, else UCS-2
/// (70, or 67 UTF-16 units per part).
pub fn num_segments(body: &str) -> u32 {
    const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
        ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";
    let gsm = body
        .chars()
        .all(|c| GSM_BASIC.contains(c) || GSM_EXTENDED.contains(c));
    let (units, single, part) = if gsm {
        let units = body
            .chars()
            .map(|c| if GSM_EXTENDED.contains(c) { 2 } else { 1 })
            .sum::<usize>();
        (units, 160, 153)
    } else {
        (body.encode_utf16().count(), 70, 67)
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    u32::try_from(segments).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_codes() {
        for code in [21211, 21610, 21614, 21612, 21408] {
            assert!(is_permanent(code), "{code}");
        }
        for code in [20003, 20429, 20500, 30003, 0] {
            assert!(!is_permanent(code), "{code}");
        }
    }

    #[test]
    fn segments() {
        assert_eq!(num_segments(""), 1);
        assert_eq!(num_segments(&"a".repeat(160)), 1);
        assert_eq!(num_segments(&"a".repeat(161)), 2);
        assert_eq!(num_segments(&"ñ".repeat(160)), 1);
        assert_eq!(num_segments(&"🙂".repeat(35)), 1);
        assert_eq!(num_segments(&"🙂".repeat(36)), 2);
    }

    #[test]
    fn dates_are_rfc2822_gmt() {
        let at = time::macros::datetime!(2025-02-19 21:20:05 UTC);
        assert_eq!(rfc2822(at), "Wed, 19 Feb 2025 21:20:05 +0000");
    }
}
