//! Every vector of `fixtures/twilio/` against this crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use nwd_twilio::signature::{compute, validate, validate_json};
use nwd_twilio::{ErrorResponse, MessageResource};
use proptest::prelude::*;
use serde::Deserialize;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/twilio")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    auth_token: String,
    url: String,
    content_type: String,
    params: Vec<(String, String)>,
    form_body: Option<String>,
    body: Option<String>,
    signature: Option<String>,
    signed_url: Option<String>,
    valid: bool,
}

#[test]
fn all_signature_vectors() {
    let vectors: Vectors = serde_json::from_str(&fixture("signature_vectors.json")).unwrap();
    assert_eq!(vectors.vectors.len(), 38);
    let mut checked = 0;
    for v in &vectors.vectors {
        let sig = v.signature.as_deref();
        let got = match v.content_type.as_str() {
            "application/x-www-form-urlencoded" => {
                let form = v.form_body.as_deref().expect("form vector has form_body");
                let decoded: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
                    .map(|(k, val)| (k.into_owned(), val.into_owned()))
                    .collect();
                assert_eq!(decoded, v.params, "{}: form_body decodes to params", v.name);
                // A correct vector's signature is what `compute` gives over the signed URL.
                if let (true, Some(signed)) = (v.valid, &v.signed_url) {
                    assert_eq!(
                        Some(compute(&v.auth_token, signed, &decoded).as_str()),
                        sig,
                        "{}: compute over signed_url",
                        v.name
                    );
                }
                validate(&v.auth_token, &v.url, &decoded, sig)
            }
            "application/json" => {
                let body = v.body.as_deref().expect("json vector has body");
                validate_json(&v.auth_token, &v.url, body.as_bytes(), sig)
            }
            other => panic!("{}: unexpected content type {other}", v.name),
        };
        assert_eq!(got, v.valid, "{}", v.name);
        checked += 1;
    }
    assert_eq!(checked, 38);
}

#[test]
fn message_resource_fixture_round_trips_with_the_same_keys() {
    let text = fixture("outbound_message_response.json");
    let original: serde_json::Value = serde_json::from_str(&text).unwrap();
    let resource: MessageResource = serde_json::from_str(&text).unwrap();
    assert_eq!(resource.sid, "SMfd42887165ec69e08a524da35e2762d6");
    assert_eq!(resource.status, "queued");
    assert_eq!(resource.num_segments, "1");
    assert_eq!(resource.error_code, None);
    let back = serde_json::to_value(&resource).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&back), keys(&original));
    assert_eq!(back, original, "values survive the round trip too");
}

#[test]
fn error_response_fixture_deserializes() {
    let err: ErrorResponse = serde_json::from_str(&fixture("error_response.json")).unwrap();
    assert_eq!(err.code, 21211);
    assert_eq!(err.status, 400);
    assert!(nwd_twilio::is_permanent(err.code));
    let original: serde_json::Value =
        serde_json::from_str(&fixture("error_response.json")).unwrap();
    assert_eq!(serde_json::to_value(&err).unwrap(), original);
}

fn url_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "https?://[a-z.]{1,12}(:[0-9]{1,5})?(/[a-z0-9/]{0,12})?(\\?[a-z0-9=&%]{0,12})?",
        "https?://[a-z]{1,4}:[a-z]{1,4}@[a-z.]{1,8}(:[0-9]{1,4})?/x",
        "https?://\\[[0-9a-f:]{2,10}\\](:[0-9]{1,4})?/x",
        ".*",
    ]
}

proptest! {
    #[test]
    fn validate_never_panics(
        token in ".*",
        url in url_strategy(),
        params in proptest::collection::vec((".*", ".*"), 0..6),
        sig in proptest::option::of(".*"),
    ) {
        let _ = validate(&token, &url, &params, sig.as_deref());
        let _ = validate_json(&token, &url, url.as_bytes(), sig.as_deref());
    }

    #[test]
    fn compute_then_validate_round_trips(
        token in "[0-9a-f]{32}",
        url in url_strategy(),
        params in proptest::collection::vec(("[A-Za-z]{1,8}", ".*"), 0..8),
    ) {
        let sig = compute(&token, &url, &params);
        prop_assert!(validate(&token, &url, &params, Some(&sig)));
        // Order of posting does not matter.
        let mut reversed = params.clone();
        reversed.reverse();
        prop_assert!(validate(&token, &url, &reversed, Some(&sig)));
        // A different token does not validate.
        let other = format!("{token}x");
        prop_assert!(!validate(&other, &url, &params, Some(&sig)));
    }
}
