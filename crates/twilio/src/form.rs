//! The `application/x-www-form-urlencoded` forms Twilio posts to webhooks.

use crate::API_VERSION;

/// Name/value pairs in posted order, as [`crate::signature`] takes them.
pub type Params = Vec<(String, String)>;

/// A fresh Message SID: `SM` + 32 lowercase hex characters.
pub fn new_message_sid() -> String {
    format!("SM{:032x}", rand::random::<u128>())
}

/// Encodes pairs as a form body (space as `+`, UTF-8 percent-encoding).
pub fn encode(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Decodes a form body into pairs in posted order. Never fails: invalid
/// UTF-8 is replaced, as a standard form parser does.
pub fn decode(body: &[u8]) -> Params {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name` in `params`.
pub fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The form Twilio posts for an inbound SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSmsForm {
    pub message_sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub num_media: u32,
    pub num_segments: u32,
    pub to_country: String,
    pub to_state: String,
    pub to_city: String,
    pub to_zip: String,
    pub from_country: String,
    pub from_state: String,
    pub from_city: String,
    pub from_zip: String,
}

impl InboundSmsForm {
    /// An inbound SMS with US geography fields left empty (Twilio leaves them
    /// empty when it cannot resolve them) and segments computed from `body`.
    pub fn new(
        message_sid: impl Into<String>,
        account_sid: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        let body = body.into();
        Self {
            message_sid: message_sid.into(),
            account_sid: account_sid.into(),
            from: from.into(),
            to: to.into(),
            num_segments: crate::rest::num_segments(&body),
            body,
            num_media: 0,
            to_country: "US".to_owned(),
            to_state: String::new(),
            to_city: String::new(),
            to_zip: String::new(),
            from_country: "US".to_owned(),
            from_state: String::new(),
            from_city: String::new(),
            from_zip: String::new(),
        }
    }

    /// The parameters in the order Twilio posts them.
    pub fn params(&self) -> Params {
        let sid = self.message_sid.clone();
        [
            ("ToCountry", self.to_country.clone()),
            ("ToState", self.to_state.clone()),
            ("SmsMessageSid", sid.clone()),
            ("NumMedia", self.num_media.to_string()),
            ("ToCity", self.to_city.clone()),
            ("FromZip", self.from_zip.clone()),
            ("SmsSid", sid.clone()),
            ("FromState", self.from_state.clone()),
            ("SmsStatus", "received".to_owned()),
            ("FromCity", self.from_city.clone()),
            ("Body", self.body.clone()),
            ("FromCountry", self.from_country.clone()),
            ("To", self.to.clone()),
            ("ToZip", self.to_zip.clone()),
            ("NumSegments", self.num_segments.to_string()),
            ("MessageSid", sid),
            ("AccountSid", self.account_sid.clone()),
            ("From", self.from.clone()),
            ("ApiVersion", API_VERSION.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The urlencoded body.
    pub fn encode(&self) -> String {
        encode(&self.params())
    }
}

/// The form Twilio posts to a message's `StatusCallback` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCallbackForm {
    pub message_sid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed`, …
    pub message_status: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    /// Set for `undelivered`/`failed` (e.g. 30003).
    pub error_code: Option<u32>,
}

impl StatusCallbackForm {
    pub fn new(
        message_sid: impl Into<String>,
        message_status: impl Into<String>,
        account_sid: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Self {
        Self {
            message_sid: message_sid.into(),
            message_status: message_status.into(),
            account_sid: account_sid.into(),
            from: from.into(),
            to: to.into(),
            error_code: None,
        }
    }

    #[must_use]
    pub fn error_code(mut self, code: u32) -> Self {
        self.error_code = Some(code);
        self
    }

    /// The parameters in the order Twilio posts them.
    pub fn params(&self) -> Params {
        let mut params: Params = Vec::with_capacity(9);
        if let Some(code) = self.error_code {
            params.push(("ErrorCode".to_owned(), code.to_string()));
        }
        params.extend(
            [
                ("SmsSid", self.message_sid.clone()),
                ("SmsStatus", self.message_status.clone()),
                ("MessageStatus", self.message_status.clone()),
                ("To", self.to.clone()),
                ("MessageSid", self.message_sid.clone()),
                ("AccountSid", self.account_sid.clone()),
                ("From", self.from.clone()),
                ("ApiVersion", API_VERSION.to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        params
    }

    /// The urlencoded body.
    pub fn encode(&self) -> String {
        encode(&self.params())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sids_look_like_twilio_sids() {
        let sid = new_message_sid();
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("SM"));
        assert!(
            sid[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(sid, new_message_sid());
    }

    #[test]
    fn inbound_form_has_every_parameter_twilio_posts() {
        let form = InboundSmsForm::new(
            "SM66a94161a6ebb09e832df8a3d2bf0e94",
            "AC9af211329b2fc82e5efe906062c73008",
            "+14155550123",
            "+12065550100",
            "hola & adiós",
        );
        let params = form.params();
        let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "ToCountry",
                "ToState",
                "SmsMessageSid",
                "NumMedia",
                "ToCity",
                "FromZip",
                "SmsSid",
                "FromState",
                "SmsStatus",
                "FromCity",
                "Body",
                "FromCountry",
                "To",
                "ToZip",
                "NumSegments",
                "MessageSid",
                "AccountSid",
                "From",
                "ApiVersion"
            ]
        );
        assert_eq!(decode(form.encode().as_bytes()), params);
        assert_eq!(get(&params, "Body"), Some("hola & adiós"));
    }

    #[test]
    fn status_form_carries_error_code_only_when_set() {
        let form = StatusCallbackForm::new("SMx", "delivered", "ACx", "+1500", "+1501");
        assert_eq!(get(&form.params(), "ErrorCode"), None);
        let form = form.error_code(30003);
        assert_eq!(get(&form.params(), "ErrorCode"), Some("30003"));
        assert_eq!(get(&form.params(), "MessageStatus"), Some("delivered"));
    }
}
