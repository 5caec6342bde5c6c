//! Two replicas of the router and of the escalator under load, one of each
//! crashed and restarted mid-way: every side effect is counted — none
//! missing, none doubled. Real services, real nats-server, one-second ladder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use nwd_e2e::{LINE_NUMBER, Line};
use nwd_proto::contact::ContactRecord;
use nwd_proto::ladder::StepOutcome;
use nwd_proto::streams::buckets;
use nwd_runtime::kv;

const BACKUP_LINE: &str = "+15005550199";
const CONTACTS: usize = 16;

fn fast_directory() -> std::path::PathBuf {
    let demo = std::fs::read_to_string(nwd_runtime::directory::demo_path()).unwrap();
    let fast = format!(
        "{demo}\n[line.ladder]\ntimeouts_ms = {{ imminent = 1000, high = 1000, moderate = 1000, low = 1000 }}\n"
    );
    let path = std::env::temp_dir().join(format!("nwd-chaos-{}.toml", ulid::Ulid::new()));
    std::fs::write(&path, fast).unwrap();
    path
}

fn phone(i: usize) -> String {
    format!("+150055502{i:02}")
}

async fn records(line: &Line) -> Vec<ContactRecord> {
    use futures::StreamExt;
    let js = line.jetstream().await;
    let store = js.get_key_value(buckets::CONTACTS).await.unwrap();
    let mut keys = store.keys().await.unwrap();
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.unwrap();
        if let Some(r) = kv::get::<ContactRecord>(&store, &k).await.unwrap().value {
            out.push(r);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_each_with_crashes_under_load_lose_and_double_nothing() {
    let dir = fast_directory().display().to_string();
    let mut line = Line::start_with(move |opts| {
        for svc in ["router", "escalator", "intake", "dashboard"] {
            let o = opts.get_mut(svc).unwrap();
            o.retain(|(k, _)| *k != "directory");
            o.push(("directory", dir.clone()));
        }
    })
    .await;
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
            let recs = records(&line).await;
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
