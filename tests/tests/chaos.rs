//! Two replicas of the router and of the escalator under load, one of each
//! crashed and restarted mid-way, and the gateway crashed mid-load: every
//! side effect is counted — none missing, none doubled. Then the gateway
//! crashed holding a spool of webhooks taken while NATS was down. Real
//! services, real nats-server, one-second ladder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use nwd_e2e::{BACKUP_LINE, LINE_NUMBER, Line};
use nwd_proto::ladder::StepOutcome;
use nwd_proto::{streams, subjects};

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
    // Second messages arrive while one replica of each is dead, and the
    // gateway dies half-way through them (phone-sim retries like Twilio
    // with connection overrides; its spool directory is kept).
    for i in 0..CONTACTS {
        if i == CONTACTS / 2 {
            line.crash("gateway").await;
        }
        line.patient_sends(&phone(i), LINE_NUMBER, "still here")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    line.restart("gateway").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_crashed_holding_a_spool_while_nats_was_down_loses_and_doubles_nothing() {
    nwd_runtime::telemetry::metrics_handle();
    let mut line = Line::start_fast().await;
    line.nats.kill();
    // Every patient's message is answered 200 from the gateway's spool.
    for i in 0..CONTACTS {
        line.patient_sends(&phone(i), LINE_NUMBER, "is anyone there")
            .await;
    }
    nwd_testkit::eventually(Duration::from_secs(20), "every webhook spooled", || async {
        let text = line
            .http
            .get(line.url("gateway", "/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let spooled: f64 = text
            .lines()
            .find(|l| l.starts_with("nwd_gateway_spooled_total"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (spooled >= CONTACTS as f64).then_some(())
    })
    .await;
    // Killed with all of it on disk; NATS back; the gateway restarted on
    // the same spool directory forwards it.
    line.crash("gateway").await;
    assert!(
        std::fs::read_dir(line.gateway_spool_dir()).unwrap().count() > 0,
        "the spool outlived the crash"
    );
    line.nats.restart().await;
    line.restart("gateway").await;

    nwd_testkit::eventually(
        Duration::from_secs(30),
        "a contact per patient with its one message",
        || async {
            let recs = line.records().await;
            (recs.len() == CONTACTS && recs.iter().all(|r| r.message_count == 1)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        line.count(streams::INBOUND, &subjects::inbound_sms()).await,
        CONTACTS as u64,
        "each webhook stored once"
    );
    let recs = line.records().await;
    assert_eq!(recs.len(), CONTACTS);
    assert!(recs.iter().all(|r| r.message_count == 1), "nothing doubled");
}
