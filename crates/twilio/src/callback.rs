//! Our `StatusCallback` URL: where Twilio posts what became of a message we
//! sent. The notifier builds it (with our outbound id in the query, because
//! Twilio's callback form carries only its own MessageSid), the gateway
//! serves and reads it.

/// Path of the gateway's delivery-status webhook.
pub const STATUS_CALLBACK_PATH: &str = "/v1/sms/twilio/status";
/// Query parameter carrying our outbound id.
pub const OUTBOUND_PARAM: &str = "outbound";

/// `{public_base}/v1/sms/twilio/status?outbound={outbound_id}`. The id is
/// a ULID (URL-safe); a trailing `/` on the base is ignored.
pub fn status_callback_url(public_base: &str, outbound_id: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair(OUTBOUND_PARAM, outbound_id)
        .finish();
    format!(
        "{}{STATUS_CALLBACK_PATH}?{query}",
        public_base.trim_end_matches('/')
    )
}

/// The raw outbound id of a callback's query string (`None` without one).
pub fn outbound_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == OUTBOUND_PARAM)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_the_outbound_id_back() {
        let url = status_callback_url("https://gw.example.org/", "01JAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(
            url,
            "https://gw.example.org/v1/sms/twilio/status?outbound=01JAAAAAAAAAAAAAAAAAAAAAAA"
        );
        let query = url.split_once('?').map(|(_, q)| q);
        assert_eq!(
            outbound_param(query).as_deref(),
            Some("01JAAAAAAAAAAAAAAAAAAAAAAA")
        );
        assert_eq!(outbound_param(None), None);
        assert_eq!(outbound_param(Some("other=1")), None);
    }
}
