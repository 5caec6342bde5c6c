//! Standard Webhooks verification against every shared vector (signed by
//! the reference Python library), at each vector's `now`; and property
//! tests: any change to a signed request refuses it, nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use axum::http::{HeaderMap, HeaderValue};
use nwd_gateway::partner_signature::{self, SignatureError, Signed, TOLERANCE_SECS};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    secret: String,
    msg_id: String,
    timestamp: String,
    payload: String,
    signature_header: Option<String>,
    now: i64,
    valid: bool,
    #[serde(default)]
    reason: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standard-webhooks/vectors.json");
    let v: Vectors = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.vectors
}

fn headers(id: &str, timestamp: &str, signature: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    // Header names as a partner might send them: any case.
    h.insert("Webhook-Id", HeaderValue::from_str(id).unwrap());
    h.insert(
        "WEBHOOK-TIMESTAMP",
        HeaderValue::from_str(timestamp).unwrap(),
    );
    if let Some(sig) = signature {
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
    }
    h
}

#[test]
fn every_shared_vector_verifies_as_the_reference_library_does() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 27);
    let mut wrong = Vec::new();
    for v in &vectors {
        let h = headers(&v.msg_id, &v.timestamp, v.signature_header.as_deref());
        let got = partner_signature::verify(
            std::slice::from_ref(&v.secret),
            &h,
            v.payload.as_bytes(),
            v.now,
        );
        if got.is_ok() != v.valid {
            wrong.push(format!("{}: {got:?} ({:?})", v.name, v.reason));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_stale_timestamp_is_told_apart_from_a_bad_signature() {
    let v = &vectors()[1];
    assert!(v.valid);
    let h = headers(&v.msg_id, &v.timestamp, v.signature_header.as_deref());
    let ts: i64 = v.timestamp.parse().unwrap();
    let secrets = [v.secret.clone()];
    for now in [ts - TOLERANCE_SECS, ts + TOLERANCE_SECS] {
        assert_eq!(
            partner_signature::verify(&secrets, &h, v.payload.as_bytes(), now),
            Ok(())
        );
    }
    for now in [ts - TOLERANCE_SECS - 1, ts + TOLERANCE_SECS + 1] {
        assert_eq!(
            partner_signature::verify(&secrets, &h, v.payload.as_bytes(), now),
            Err(SignatureError::Stale)
        );
    }
    let other = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()];
    assert_eq!(
        partner_signature::verify(&other, &h, v.payload.as_bytes(), ts),
        Err(SignatureError::NoMatch)
    );
    assert_eq!(
        partner_signature::verify(&secrets, &HeaderMap::new(), v.payload.as_bytes(), ts),
        Err(SignatureError::Missing)
    );
}

#[test]
fn any_active_secret_verifies_during_a_rotation() {
    let old = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=".to_owned();
    let new = "whsec_5iH1uOvPAH93x3Z7Mbh+QP2gCV2DUFh18Mug9sjdjYI=".to_owned();
    let body = br#"{"resourceType":"ServiceRequest"}"#;
    let sig = partner_signature::sign(&old, "msg_1", 1_800_000_000, body).unwrap();
    let h = headers("msg_1", "1800000000", Some(&sig));
    let both = [new.clone(), old.clone()];
    assert!(partner_signature::verify(&both, &h, body, 1_800_000_000).is_ok());
    assert!(partner_signature::verify(&[new], &h, body, 1_800_000_000).is_err());
    // A sender signing with both during its rotation: either matches.
    let two = format!(
        "v1,{} {sig}",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    );
    let h = headers("msg_1", "1800000000", Some(&two));
    assert!(partner_signature::verify(&[old], &h, body, 1_800_000_000).is_ok());
}

proptest! {
    #[test]
    fn a_changed_body_id_or_timestamp_never_verifies(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        id in "[a-zA-Z0-9_]{1,40}",
        ts in 1_700_000_000i64..1_900_000_000,
    ) {
        let secret = "whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=".to_owned();
        let body = String::from_utf8_lossy(&body).into_owned().into_bytes();
        let sig = partner_signature::sign(&secret, &id, ts, &body).unwrap();
        let secrets = [secret];
        let good = headers(&id, &ts.to_string(), Some(&sig));
        prop_assert!(partner_signature::verify(&secrets, &good, &body, ts).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            let i = flip.index(changed.len());
            changed[i] ^= 1 << bit;
            prop_assert!(partner_signature::verify(&secrets, &good, &changed, ts).is_err());
        }
        let other_id = headers(&format!("{id}x"), &ts.to_string(), Some(&sig));
        prop_assert!(partner_signature::verify(&secrets, &other_id, &body, ts).is_err());
        let other_ts = headers(&id, &(ts + 1).to_string(), Some(&sig));
        prop_assert!(partner_signature::verify(&secrets, &other_ts, &body, ts).is_err());
    }

    #[test]
    fn random_signature_headers_never_panic_and_never_verify(
        sig in "[ -~]{0,200}",
        ts in "[ -~]{0,20}",
        id in "[ -~]{0,40}",
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        let secrets = ["whsec_QVu2X5/F2Ii4S/QbOdrANPS6KcbXPmuVFyeqraD/QAo=".to_owned()];
        let verified = partner_signature::verify(&secrets, &h, b"[]", 1_800_000_000);
        prop_assert!(verified.is_err());
        let _ = Signed::read(&h, 1_800_000_000);
    }
}
