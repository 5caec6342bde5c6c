//! Two replicas of the router and of the escalator under load, one of each
//! crashed and restarted mid-way: every side effect is counted — none
//! missing, none doubled. Real services, real nats-server, one-second ladder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use nwd_e2e::{BACKUP_LINE, LINE_NUMBER, Line};
use nwd_proto::ladder::StepOutcome;

const CONTACTS: usize = 16;

fn phone(i: usize) -> String {
    format!("+150055502{i:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_each_with_crashes_under_load_lose_and_double_nothing() {
    let mut line = Line::start_fast().await;
    line.add_replica("router-b", "router").await;
    line.add_replica("escalator-b", "escalator").await;

    // Nobody is on the floor: every contact climbs to the backup line and
    // repeats there every second, on both replicas' watch.
    for i in 0..CONTACTS {
        line.patient_sends(&phone(i), LINE_NUMBER, "is anyone there")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    line.crash("router").await;
    line.crash("escalator").await;
    // Second messages arrive while one replica of each is dead.
    for i in 0..CONTACTS {
        line.patient_sends(&phone(i), LINE_NUMBER, "still here")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    line.restart("router").await;
    line.restart("escalator").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Stop the ladder (gracefully: in-flight steps finish and are announced),
    // then count.
    line.stop("escalator").await;
    line.stop("escalator-b").await;

    let recs = nwd_testkit::eventually(
        Duration::from_secs(15),
        "every contact with both messages, every step announced",
        || async {
            let recs = line.records().await;
            (recs.len() == CONTACTS
                && recs.iter().all(|r| {
                    let e = r.escalation.as_ref().unwrap();
                    r.message_count == 2 && e.announced == e.steps
                }))
            .then_some(recs)
        },
    )
    .await;

    // Every backup-line step produced exactly one SMS, and nothing else did.
    let expected: HashMap<String, usize> = recs
        .iter()
        .map(|r| {
            let e = r.escalation.as_ref().unwrap();
            let n = e
                .trail
                .iter()
                .filter(|s| matches!(s.outcome, StepOutcome::BackupAlerted { .. }))
                .count();
            (r.id.to_string(), n)
        })
        .collect();
    let total: usize = expected.values().sum();
    assert!(
        total >= CONTACTS * 3,
        "the ladder kept repeating through the crashes: {total}"
    );
    let sent =
        nwd_testkit::eventually(Duration::from_secs(15), "every backup SMS sent", || async {
            let sent: Vec<String> = line
                .sent_messages()
                .await
                .into_iter()
                .filter(|m| m["to"] == BACKUP_LINE)
                .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
                .collect();
            (sent.len() >= total).then_some(sent)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sent.len(), total, "no backup SMS doubled");
    for (id, n) in &expected {
        let got = sent.iter().filter(|b| b.contains(id.as_str())).count();
        assert_eq!(got, *n, "contact {id}: backup alerts sent vs steps");
    }
    for r in &recs {
        let e = r.escalation.as_ref().unwrap();
        // Steps are numbered without gap or repeat …
        let numbers: Vec<u64> = e.trail.iter().map(|s| s.step).collect();
        let first = numbers[0];
        assert_eq!(
            numbers,
            (first..first + numbers.len() as u64).collect::<Vec<_>>()
        );
        // … and no deadline fired twice: repeats are a timeout apart.
        let backups: Vec<_> = e
            .trail
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::BackupAlerted { .. }))
            .map(|s| s.at)
            .collect();
        for w in backups.windows(2) {
            assert!(
                w[1] - w[0] >= time::Duration::milliseconds(900),
                "contact {}: two backup steps {} ms apart",
                r.id,
                (w[1] - w[0]).whole_milliseconds()
            );
        }
    }
}
