//! `X-Twilio-Signature`: computing and validating Twilio's webhook signature.
//!
//! The signed string is the full URL Twilio requested (query string included,
//! verbatim) followed by every POST parameter sorted by name, each as name
//! immediately followed by value. HMAC-SHA1 keyed with the auth token,
//! base64 (standard, padded). Validation follows twilio-python 9.13.0:
//! the URL is tried as given, with its port removed, and with the scheme's
//! default port added, because Twilio's backend is inconsistent about ports.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The query parameter Twilio adds to the URL of a JSON webhook.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// The signature Twilio would send for a POST of `params` to `url`.
///
/// Parameters are sorted by name (code-point order); a repeated name
/// contributes each of its distinct values once, sorted — twilio-python's
/// `sorted(set(values))` rule.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().insert(value);
    }
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else {
        // HMAC takes keys of any length; this branch cannot be reached.
        return String::new();
    };
    mac.update(url.as_bytes());
    for (name, values) in grouped {
        for value in values {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (the `X-Twilio-Signature` header, `None` when absent)
/// is Twilio's signature of a form POST of `params` to `url`.
///
/// A missing or empty header is rejected. Comparison is constant time.
pub fn validate(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> bool {
    let Some(signature) = signature.filter(|s| !s.is_empty()) else {
        return false;
    };
    matches_any_candidate(auth_token, url, params, signature)
}

/// Like [`validate`], also accepting a signature over `url#fragment`.
///
/// Connection overrides (`#rc=3&rp=all&ct=2000&rt=10000`) ride in the
/// fragment of the webhook URL configured at Twilio, and a fragment never
/// reaches the server, so the receiver cannot see it. Twilio's helper
/// libraries sign and validate the URL exactly as given, fragment included
/// (twilio-python's `RequestValidator.validate`, twilio-node's
/// `validateRequest`); Twilio's documentation does not say whether its
/// backend drops the fragment before signing. Both are accepted: the URL
/// as requested, and with the configured fragment — each also with and
/// without the port, as [`validate`] does.
pub fn validate_with_fragment(
    auth_token: &str,
    url: &str,
    fragment: Option<&str>,
    params: &[(String, String)],
    signature: Option<&str>,
) -> bool {
    let Some(signature) = signature.filter(|s| !s.is_empty()) else {
        return false;
    };
    let plain = matches_any_candidate(auth_token, url, params, signature);
    let with_fragment = fragment.filter(|f| !f.is_empty()).is_some_and(|f| {
        matches_any_candidate(auth_token, &format!("{url}#{f}"), params, signature)
    });
    plain | with_fragment
}

/// Validates a JSON webhook: `url` must carry `bodySHA256` equal to the
/// lowercase hex SHA-256 of the raw `body`, and the signature must cover
/// the URL with no parameters.
pub fn validate_json(auth_token: &str, url: &str, body: &[u8], signature: Option<&str>) -> bool {
    let Some(signature) = signature.filter(|s| !s.is_empty()) else {
        return false;
    };
    let Some(claimed) = query_param(url, BODY_SHA256_PARAM) else {
        return false;
    };
    let actual = body_sha256(body);
    let hash_ok = actual.as_bytes().ct_eq(claimed.as_bytes());
    let sig_ok = matches_any_candidate(auth_token, url, &[], signature);
    bool::from(hash_ok) & sig_ok
}

/// Lowercase hex SHA-256 of a body, as Twilio puts in `bodySHA256`.
pub fn body_sha256(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn matches_any_candidate(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let mut ok = Choice::from(0);
    // Every candidate is computed and compared, so timing says nothing
    // about which one matched.
    for candidate in candidate_urls(url) {
        let expected = compute(auth_token, &candidate, params);
        ok |= expected.as_bytes().ct_eq(signature.as_bytes());
    }
    ok.into()
}

/// The URLs a signature may have been computed over: as given, without its
/// port, and with the scheme's default port (443 for https, 80 otherwise).
pub fn candidate_urls(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(parts) = Authority::find(url) else {
        return out;
    };
    match parts.port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            // `host:port` → `host`; the ':' sits just before the port.
            let colon = port_start(&parts) - 1;
            out.push(format!("{}{}", &url[..colon], &url[parts.end..]));
        }
        Some(_) => {} // "host:" or a non-numeric port: only the URL as given.
        None => {
            let default = if parts.scheme.eq_ignore_ascii_case("https") {
                "443"
            } else {
                "80"
            };
            out.push(format!(
                "{}:{default}{}",
                &url[..parts.end],
                &url[parts.end..]
            ));
        }
    }
    out
}

/// Where the authority of a URL is, and its port if any.
struct Authority<'a> {
    scheme: &'a str,
    /// Byte offset just past the authority (start of path, query or fragment).
    end: usize,
    /// The port text after the host's ':' (without the ':').
    port: Option<&'a str>,
}

impl<'a> Authority<'a> {
    fn find(url: &'a str) -> Option<Self> {
        let scheme_end = url.find("://")?;
        let scheme = &url[..scheme_end];
        let start = scheme_end + 3;
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        let authority = &url[start..end];
        // userinfo may contain ':'; the host starts after the last '@'.
        let host_port = authority
            .rfind('@')
            .map_or(authority, |i| &authority[i + 1..]);
        let port = if host_port.starts_with('[') {
            // IPv6 literal: the port, if any, follows "]:".
            host_port
                .find(']')
                .and_then(|i| host_port[i + 1..].strip_prefix(':'))
        } else {
            host_port.rfind(':').map(|i| &host_port[i + 1..])
        };
        Some(Self { scheme, end, port })
    }
}

fn port_start(parts: &Authority<'_>) -> usize {
    parts.end - parts.port.map_or(0, str::len)
}

/// The first value of a query parameter of `url`, decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn known_answer_from_twilio_docs() {
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let sig = compute(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
        );
        assert_eq!(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn a_url_with_connection_overrides_validates_with_and_without_its_fragment() {
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let overrides = "rc=3&rp=all&ct=2000&rt=10000";
        // HMAC-SHA1 over the URL with its fragment, computed independently
        // (Python's hmac, as twilio-python does).
        let with_fragment = "uhDK4oabHWNn5ZEe9I5veBHuzzg=";
        assert_eq!(
            compute("12345", &format!("{url}#{overrides}"), &params),
            with_fragment
        );
        let v = |sig: &str, fragment: Option<&str>| {
            validate_with_fragment("12345", url, fragment, &params, Some(sig))
        };
        assert!(v(with_fragment, Some(overrides)));
        assert!(
            v("RSOYDt4T1cUTdK1PDd93/VVr8B8=", Some(overrides)),
            "no fragment"
        );
        // … and with the default port added, as Twilio sometimes signs.
        assert!(v("xd3/h7iMqDY3VF+tS2e05eU+DZ4=", Some(overrides)));
        assert!(!v(with_fragment, None), "the fragment must be configured");
        assert!(
            !v(with_fragment, Some("rc=5")),
            "a different fragment fails"
        );
        assert!(!validate_with_fragment(
            "12345",
            url,
            Some(overrides),
            &params,
            None
        ));
    }

    #[test]
    fn candidates_remove_only_the_port() {
        assert_eq!(
            candidate_urls("https://user:pw@host.example:8443/a?b=c"),
            vec![
                "https://user:pw@host.example:8443/a?b=c".to_owned(),
                "https://user:pw@host.example/a?b=c".to_owned(),
            ]
        );
        assert_eq!(
            candidate_urls("http://[::1]:8080/x"),
            vec![
                "http://[::1]:8080/x".to_owned(),
                "http://[::1]/x".to_owned()
            ]
        );
        assert_eq!(
            candidate_urls("http://[::1]/x"),
            vec!["http://[::1]/x".to_owned(), "http://[::1]:80/x".to_owned()]
        );
        assert_eq!(
            candidate_urls("https://user:pw@host.example?q=1"),
            vec![
                "https://user:pw@host.example?q=1".to_owned(),
                "https://user:pw@host.example:443?q=1".to_owned(),
            ]
        );
        assert_eq!(candidate_urls("not a url"), vec!["not a url".to_owned()]);
        assert_eq!(
            candidate_urls("http://h:x/"),
            vec!["http://h:x/".to_owned()]
        );
    }

    #[test]
    fn missing_or_empty_signature_is_rejected() {
        let params = p(&[("A", "1")]);
        assert!(!validate("t", "https://h/", &params, None));
        assert!(!validate("t", "https://h/", &params, Some("")));
        let sig = compute("t", "https://h/", &params);
        assert!(validate("t", "https://h/", &params, Some(&sig)));
    }

    #[test]
    fn json_without_body_hash_is_rejected() {
        let sig = compute("t", "https://h/events", &[]);
        assert!(!validate_json("t", "https://h/events", b"{}", Some(&sig)));
        let url = format!("https://h/events?bodySHA256={}", body_sha256(b"{}"));
        let sig = compute("t", &url, &[]);
        assert!(validate_json("t", &url, b"{}", Some(&sig)));
        assert!(!validate_json("t", &url, b"{ }", Some(&sig)));
        assert!(!validate_json("t", &url, b"{}", None));
    }
}
