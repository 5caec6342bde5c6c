//! Every document of the FHIR test data (`fixtures/manifest.json`) is
//! accepted, or refused by the manifest's check at the manifest's field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use nwd_fhir::{Check, read_referral};
use nwd_proto::referral::Priority;
use nwd_proto::risk::Language;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    file: String,
    accept: bool,
    field: Option<String>,
    rejected_by: Option<String>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Checks one case; returns a description of the mismatch, if any.
fn check(case: &Case, body: &[u8]) -> Option<String> {
    match (read_referral(body), case.accept) {
        (Ok(_), true) => None,
        (Ok(_), false) => Some(format!("{}: accepted, should be refused", case.file)),
        (Err(r), true) => Some(format!("{}: refused ({r}), should be accepted", case.file)),
        (Err(r), false) => {
            let want = case.rejected_by.as_deref().unwrap_or_default();
            (r.check.as_str() != want || r.path != case.field).then(|| {
                format!(
                    "{}: refused by {} at {:?}, manifest says {want} at {:?} ({})",
                    case.file, r.check, r.path, case.field, r.message
                )
            })
        }
    }
}

#[test]
fn every_project_document_is_accepted_or_refused_as_the_manifest_says() {
    let mut failures = Vec::new();
    let mut seen = 0;
    for case in manifest().iter().filter(|c| !c.file.starts_with("hl7-")) {
        let body = std::fs::read(fixtures().join(&case.file)).unwrap();
        seen += 1;
        failures.extend(check(case, &body));
    }
    assert_eq!(seen, 42, "every project-written file is in the fixtures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The HL7 examples stay outside the repository (their licence is theirs):
/// read from the shared test data when it is there.
#[test]
fn the_hl7_examples_are_refused_as_the_manifest_says_when_present() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/fhir");
    let cases: Vec<Case> = manifest()
        .into_iter()
        .filter(|c| c.file.starts_with("hl7-"))
        .collect();
    assert_eq!(cases.len(), 3);
    if !shared.join(&cases[0].file).exists() {
        println!(
            "SKIPPED: the HL7 examples are not at {} (they are not copied into the repo)",
            shared.display()
        );
        return;
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case, &std::fs::read(shared.join(&case.file)).unwrap()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn read(file: &str) -> nwd_fhir::Referral {
    read_referral(&std::fs::read(fixtures().join(file)).unwrap()).unwrap()
}

#[test]
fn what_the_line_takes_from_a_contained_referral() {
    let r = read("valid-sr-ed-overdose-stat.json");
    assert_eq!(r.priority, Priority::Stat);
    assert!(r.patient.phone.as_str().starts_with("+1555010"));
    assert!(r.patient.name.is_some());
    assert!(r.reason.is_some());
    assert!(r.focus.as_deref().unwrap().starts_with("ServiceRequest/"));
    assert!(r.identifier.is_some());

    let minimal = read("valid-sr-contained-patient-p1.json");
    assert_eq!(
        minimal.priority,
        Priority::Routine,
        "no priority means routine"
    );

    let release = read("valid-sr-prison-release-urgent.json");
    assert_eq!(release.priority, Priority::Urgent);
    assert_eq!(
        release.occurrence.unwrap().unix_timestamp(),
        time::macros::datetime!(2036-01-15 09:00 -05:00).unix_timestamp()
    );

    let spanish = read("valid-sr-spanish-speaking.json");
    assert_eq!(spanish.patient.language, Some(Language::Es));
}

#[test]
fn a_mobile_phone_is_preferred() {
    let body =
        std::fs::read(fixtures().join("valid-sr-methadone-missed-doses-routine.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let telecom = doc["contained"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["resourceType"] == "Patient")
        .unwrap()["telecom"]
        .as_array()
        .unwrap()
        .clone();
    let mobile = telecom
        .iter()
        .find(|t| t["use"] == "mobile" && t["system"] == "phone")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert_ne!(telecom[0]["use"], "mobile", "the fixture lists home first");
    let r = read_referral(&body).unwrap();
    assert_eq!(r.patient.phone.as_str(), mobile);
}

#[test]
fn bundles_give_the_entry_full_url_as_focus() {
    let r = read("valid-bundle-collection.json");
    assert_eq!(
        r.focus.as_deref(),
        Some("https://fhir.eastside-clinic.example.org/fhir/ServiceRequest/sr-88120")
    );
    let t = read("valid-bundle-transaction.json");
    assert_eq!(t.priority, Priority::Stat);
    assert!(t.focus.unwrap().starts_with("urn:uuid:"));
}

#[test]
fn refusals_never_carry_values_from_the_document() {
    let phone = "+15550100999";
    let body = format!(
        r##"{{"resourceType":"ServiceRequest","status":"active","intent":"order","priority":"{phone}",
        "subject":{{"reference":"#p1"}},"contained":[{{"resourceType":"Patient","id":"p1","telecom":[{{"system":"phone","value":"{phone}"}}]}}]}}"##
    );
    let r = read_referral(body.as_bytes()).unwrap_err();
    assert_eq!(r.check, Check::Binding);
    assert_eq!(r.path.as_deref(), Some("priority"));
    assert!(!r.to_string().contains(phone));
}

fn with_phone(value: &str) -> Vec<u8> {
    format!(
        r##"{{"resourceType":"ServiceRequest","status":"active","intent":"order",
        "subject":{{"reference":"#p1"}},"contained":[{{"resourceType":"Patient","id":"p1",
        "telecom":[{{"system":"email","value":"x@example.org"}},{{"system":"phone","value":"{value}","use":"home"}}]}}]}}"##
    )
    .into_bytes()
}

#[test]
fn a_phone_is_taken_as_an_international_number_or_refused_at_its_path() {
    let r = read_referral(&with_phone("+1 (555) 010-0188")).unwrap();
    assert_eq!(r.patient.phone.as_str(), "+15550100188");
    for national in ["555-010-0188", "0555 0100188", "call me"] {
        let refused = read_referral(&with_phone(national)).unwrap_err();
        assert_eq!(refused.check, Check::Gateway, "{national}");
        assert_eq!(
            refused.path.as_deref(),
            Some("contained[0].telecom[1].value")
        );
        assert!(!refused.to_string().contains(national));
    }
}
