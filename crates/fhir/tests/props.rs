//! The reader never panics: random bytes, truncations and mutations of the
//! valid referrals give a referral or a rejection, nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use nwd_fhir::read_referral;
use proptest::prelude::*;

fn valid_bodies() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("valid-"))
        })
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_are_refused_without_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(read_referral(&body).is_err());
    }

    #[test]
    fn truncated_referrals_are_refused_as_json(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let bodies = valid_bodies();
        // Without its trailing newline, so that every cut takes away at
        // least the closing brace: a JSON object cut short is never whole.
        let body = bodies[pick.index(bodies.len())].trim_ascii_end();
        let end = cut.index(body.len());
        let r = read_referral(&body[..end]);
        prop_assert!(r.is_err());
        prop_assert_eq!(r.unwrap_err().check, nwd_fhir::Check::Json);
    }

    #[test]
    fn mutated_referrals_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let bodies = valid_bodies();
        let mut body = bodies[pick.index(bodies.len())].clone();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        match read_referral(&body) {
            Ok(r) => prop_assert!(!r.patient.phone.as_str().is_empty()),
            Err(rejection) => prop_assert!(!rejection.message.is_empty()),
        }
    }

    #[test]
    fn mutated_values_are_refused_at_a_path_or_taken(
        pick in any::<prop::sample::Index>(),
        key in prop::sample::select(vec!["status", "intent", "priority", "subject", "occurrenceDateTime", "contained", "resourceType"]),
        value in prop_oneof![
            Just(serde_json::Value::Null),
            Just(serde_json::json!("")),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            Just(serde_json::json!(5)),
            Just(serde_json::json!("bogus")),
            Just(serde_json::json!({"reference": "#nope"})),
        ],
    ) {
        let bodies = valid_bodies();
        let mut doc: serde_json::Value = serde_json::from_slice(&bodies[pick.index(bodies.len())]).unwrap();
        if doc["resourceType"] == "ServiceRequest" {
            doc[key] = value;
            let body = serde_json::to_vec(&doc).unwrap();
            if let Err(r) = read_referral(&body) {
                prop_assert!(r.path.is_some(), "{r}");
            }
        }
    }
}
