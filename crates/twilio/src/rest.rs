//! Twilio's REST Messages resource: create (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`),
//! list (`GET` on the same path, filtered by `To`, `From`, `DateSent`, paged), and the error body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc2822;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// A Message resource, as Twilio returns it (`201 Created` on create).
///
/// Every key is always present; unknown or unsent values are `null`.
/// `num_segments` and `num_media` are strings; dates are RFC 2822. A key
/// missing from an answer reads as empty, so a reader never fails on a
/// resource Twilio trimmed (a send that cannot be read would be resent).
/// Twilio does not show a message's `StatusCallback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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

impl MessageResource {
    /// When Twilio created the message (whole seconds), if readable.
    pub fn created_at(&self) -> Option<OffsetDateTime> {
        parse_date(self.date_created.as_deref()?)
    }

    /// When Twilio sent it, if it has.
    pub fn sent_at(&self) -> Option<OffsetDateTime> {
        parse_date(self.date_sent.as_deref()?)
    }

    /// Sent by us through the API (not an inbound message or a TwiML reply).
    pub fn is_outbound(&self) -> bool {
        self.direction.starts_with("outbound")
    }
}

/// One page of the Messages list, newest first, in Twilio's paging shape.
/// `next_page_uri` is a path (with query) on the API host, `None` on the
/// last page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessagePage {
    pub messages: Vec<MessageResource>,
    pub end: u64,
    pub first_page_uri: String,
    pub next_page_uri: Option<String>,
    pub page: u64,
    pub page_size: u64,
    pub previous_page_uri: Option<String>,
    pub start: u64,
    pub uri: String,
}

/// The filters of `GET …/Messages.json` we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// `To`: the recipient.
    pub to: Option<String>,
    /// `From`: the sender.
    pub from: Option<String>,
    /// `DateSent=YYYY-MM-DD` (GMT): messages *sent* that day. A message
    /// still queued has no `date_sent` and is not matched.
    pub date_sent: Option<Date>,
    /// `PageSize` (Twilio: default 50, at most 1000).
    pub page_size: Option<u32>,
}

/// A list query Twilio would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("DateSent must be a date as YYYY-MM-DD")]
    DateSent,
    #[error("PageSize must be a number from 1 to 1000")]
    PageSize,
    #[error("Page must be a number")]
    Page,
}

/// Twilio's largest `PageSize`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Twilio's default `PageSize`.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

impl MessageFilter {
    /// The query pairs, in Twilio's names.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::with_capacity(4);
        if let Some(to) = &self.to {
            q.push(("To", to.clone()));
        }
        if let Some(from) = &self.from {
            q.push(("From", from.clone()));
        }
        if let Some(date) = self.date_sent {
            q.push(("DateSent", format_date(date)));
        }
        if let Some(size) = self.page_size {
            q.push(("PageSize", size.to_string()));
        }
        q
    }

    /// Reads the filters (and the page number) of a list request, as the
    /// phone simulator serves it. Unknown parameters are ignored.
    pub fn parse(pairs: &[(String, String)]) -> Result<(Self, u64), FilterError> {
        let mut filter = Self::default();
        let mut page = 0;
        for (name, value) in pairs {
            match name.as_str() {
                "To" => filter.to = Some(value.clone()),
                "From" => filter.from = Some(value.clone()),
                "DateSent" => {
                    filter.date_sent =
                        Some(Date::parse(value, DATE_FORMAT).map_err(|_| FilterError::DateSent)?);
                }
                "PageSize" => {
                    let size = value.parse::<u32>().map_err(|_| FilterError::PageSize)?;
                    if !(1..=MAX_PAGE_SIZE).contains(&size) {
                        return Err(FilterError::PageSize);
                    }
                    filter.page_size = Some(size);
                }
                "Page" => page = value.parse::<u64>().map_err(|_| FilterError::Page)?,
                _ => {}
            }
        }
        Ok((filter, page))
    }

    /// Whether a message passes the filters (paging aside).
    pub fn matches(&self, m: &MessageResource) -> bool {
        self.to.as_ref().is_none_or(|to| *to == m.to)
            && self
                .from
                .as_ref()
                .is_none_or(|from| m.from.as_ref() == Some(from))
            && self
                .date_sent
                .is_none_or(|date| m.sent_at().is_some_and(|at| at.date() == date))
    }
}

const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]");

/// A date as the list filters take it: `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    date.format(DATE_FORMAT).unwrap_or_default()
}

/// Reads a date as Twilio writes it (RFC 2822).
pub fn parse_date(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc2822).ok()
}

/// Twilio's error body: `{code, message, more_info, status}`.
/// Branch on `code` and `status`; `message` wording changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub more_info: String,
    #[serde(default)]
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
    /// A parameter of the request is invalid (e.g. a list filter).
    pub const INVALID_PARAMETER: u32 = 20001;
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

/// `/2010-04-01/Accounts/{account}/Messages.json`: create (POST) and list (GET).
pub fn messages_path(account_sid: &str) -> String {
    format!(
        "/{}/Accounts/{account_sid}/Messages.json",
        crate::API_VERSION
    )
}

/// [`messages_path`] on an API base URL (`https://api.twilio.com`).
pub fn messages_url(api_base: &str, account_sid: &str) -> String {
    format!(
        "{}{}",
        api_base.trim_end_matches('/'),
        messages_path(account_sid)
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
    fn list_filters_round_trip_and_match() {
        let filter = MessageFilter {
            to: Some("+15005550142".into()),
            from: Some("+15005550110".into()),
            date_sent: Some(time::macros::date!(2025 - 02 - 19)),
            page_size: Some(20),
        };
        let pairs: Vec<(String, String)> = filter
            .query()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(pairs[2], ("DateSent".to_owned(), "2025-02-19".to_owned()));
        assert_eq!(MessageFilter::parse(&pairs), Ok((filter.clone(), 0)));

        let mut m = MessageResource {
            to: "+15005550142".into(),
            from: Some("+15005550110".into()),
            date_sent: Some("Wed, 19 Feb 2025 23:59:59 +0000".into()),
            ..MessageResource::default()
        };
        assert!(filter.matches(&m));
        m.date_sent = None; // still queued: not "sent on" any day
        assert!(!filter.matches(&m));
        m.date_sent = Some("Thu, 20 Feb 2025 00:00:00 +0000".into());
        assert!(!filter.matches(&m));
        assert!(MessageFilter::default().matches(&m));

        let bad = |k: &str, v: &str| MessageFilter::parse(&[(k.to_owned(), v.to_owned())]);
        assert_eq!(bad("DateSent", "19/02/2025"), Err(FilterError::DateSent));
        assert_eq!(bad("PageSize", "1001"), Err(FilterError::PageSize));
        assert_eq!(bad("Page", "x"), Err(FilterError::Page));
    }

    #[test]
    fn a_page_reads_twilio_paging_fields() {
        let page: MessagePage = serde_json::from_str(
            r#"{"messages":[{"sid":"SM1","to":"+1","direction":"outbound-api","date_created":"Wed, 19 Feb 2025 21:20:05 +0000"}],
                "end":0,"first_page_uri":"/x?Page=0","next_page_uri":null,"page":0,"page_size":50,
                "previous_page_uri":null,"start":0,"uri":"/x?Page=0"}"#,
        )
        .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert!(page.messages[0].is_outbound());
        assert_eq!(
            page.messages[0].created_at(),
            Some(time::macros::datetime!(2025-02-19 21:20:05 UTC))
        );
        assert_eq!(page.next_page_uri, None);
    }

    #[test]
    fn dates_are_rfc2822_gmt() {
        let at = time::macros::datetime!(2025-02-19 21:20:05 UTC);
        assert_eq!(rfc2822(at), "Wed, 19 Feb 2025 21:20:05 +0000");
    }
}
