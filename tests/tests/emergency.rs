//! The medical-emergency disclosure (42 CFR §2.51) end to end: every real
//! service against a real nats-server, the counsellor on the dashboard
//! websocket, the hospital's SMS through the notifier and the fake Twilio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nwd_e2e::{Counsellor, LINE_NUMBER, Line, MARIA};
use nwd_proto::dashboard::{ClientMsg, ContactView, ServerMsg};
use nwd_proto::events::{Disclosure, DisclosureRefused, LegalBasis, Recipient};
use nwd_proto::streams;
use nwd_proto::{ContactId, PartnerId, subjects};

const T: Duration = Duration::from_secs(15);
/// County General Hospital ED's desk for §2.51 disclosures (kind `hospital`
/// in the demo directory); its door number is +15005550120.
const HOSPITAL_NUMBER: &str = "+15005550121";
const HOSPITAL_DOOR: &str = "+15005550120";
const NATURE: &str = "she says she took her whole script an hour ago and is falling asleep";

fn partner(id: &str) -> PartnerId {
    PartnerId::parse(id).unwrap()
}

fn emergency(contact_id: ContactId, to: &str) -> ClientMsg {
    ClientMsg::MedicalEmergency {
        contact_id,
        partner: partner(to),
        nature: NATURE.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellor_discloses_to_the_hospital_in_a_medical_emergency_and_not_to_a_clinic() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let body = "I took all my pills";
    line.patient_sends(MARIA, LINE_NUMBER, body).await;
    let offer: ContactView = ana
        .expect(T, "the offer", |m| match m {
            ServerMsg::Offer { contact } if contact.messages.iter().any(|x| x.body == body) => {
                Some(contact.clone())
            }
            _ => None,
        })
        .await;
    let id = offer.contact_id;
    ana.send(&ClientMsg::Accept { contact_id: id }).await;
    ana.expect(T, "the conversation", |m| {
        matches!(m, ServerMsg::Conversation { contact } if contact.contact_id == id).then_some(())
    })
    .await;

    // The hospital: recorded and notified, once even when sent twice.
    for _ in 0..2 {
        ana.send(&emergency(id, "county-hospital")).await;
        ana.expect(T, "the disclosure confirmed", |m| {
            (*m == ServerMsg::MedicalEmergencyRecorded {
                contact_id: id,
                partner: partner("county-hospital"),
            })
            .then_some(())
        })
        .await;
    }
    let disclosed: Vec<Disclosure> = line
        .stored(streams::AUDIT, subjects::audit_disclosure(&id))
        .await;
    assert_eq!(disclosed.len(), 1, "{disclosed:?}");
    let d = &disclosed[0];
    assert_eq!(d.patient, "maria");
    assert_eq!(d.recipient, Recipient::Partner(partner("county-hospital")));
    assert_eq!(d.by, "ana");
    assert_eq!(d.purpose, "medical-emergency");
    assert_eq!(
        d.basis,
        LegalBasis::MedicalEmergency {
            recipient_affiliation: "County General Hospital ED".into(),
            nature_of_emergency: NATURE.into(),
        }
    );
    let to_hospital = nwd_testkit::eventually(T, "the hospital texted", || async {
        let sent = line.sms_to(HOSPITAL_NUMBER).await;
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(to_hospital.len(), 1, "{to_hospital:?}");
    assert!(
        to_hospital[0].contains("medical emergency") && to_hospital[0].contains(&id.to_string()),
        "{}",
        to_hospital[0]
    );
    assert!(!to_hospital[0].contains("pills") && !to_hospital[0].contains("script"));
    // The record is stored before the hospital's SMS is queued.
    let js = line.jetstream().await;
    let read = |stream, subject| {
        let js = js.clone();
        async move {
            nwd_runtime::transcript::read_subjects(&js, stream, vec![subject])
                .await
                .unwrap()
        }
    };
    let audited_at = read(streams::AUDIT, subjects::audit_disclosure(&id)).await[0]
        .info()
        .unwrap()
        .published;
    let notice_at = read(streams::OUTBOUND, subjects::outbound_sms(&id))
        .await
        .iter()
        .find(|m| {
            nwd_proto::Envelope::<nwd_proto::events::OutboundSms>::from_bytes(&m.payload)
                .unwrap()
                .data
                .to
                .as_str()
                == HOSPITAL_NUMBER
        })
        .unwrap()
        .info()
        .unwrap()
        .published;
    assert!(audited_at < notice_at, "{audited_at} < {notice_at}");
    assert!(
        line.sms_to(HOSPITAL_DOOR).await.is_empty(),
        "the hospital's door number leads back into the line: never used for the disclosure"
    );

    // A clinic is not medical personnel: refused, and the refusal recorded.
    ana.send(&emergency(id, "eastside-clinic")).await;
    let why = ana
        .expect(T, "the refusal", |m| match m {
            ServerMsg::Error { code, message } if code == "refused" => Some(message.clone()),
            _ => None,
        })
        .await;
    assert!(why.contains("not medical personnel"), "{why}");
    let refused: Vec<DisclosureRefused> = line
        .stored(streams::AUDIT, subjects::audit_disclosure_refused(&id))
        .await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0].recipient,
        Recipient::Partner(partner("eastside-clinic"))
    );
    assert_eq!(refused[0].reason, "not_medical_personnel");
    let disclosed: Vec<Disclosure> = line
        .stored(streams::AUDIT, subjects::audit_disclosure(&id))
        .await;
    assert_eq!(disclosed.len(), 1, "still only the hospital's");
    assert!(
        line.sms_to("+15005550110").await.is_empty(),
        "the clinic is never texted"
    );
    assert_eq!(line.sms_to(HOSPITAL_NUMBER).await.len(), 1);
}
