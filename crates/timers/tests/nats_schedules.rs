//! What ADR 0006 relies on about NATS 2.12 per-message schedules (the option
//! not taken), checked against the pinned nats-server, so an upgrade that
//! changes them shows up here.
//!
//! A "deadline" is a schedule message on `sched.<key>` with
//! `Nats-Schedule: @at <RFC3339>` and `Nats-Schedule-Target: fired.<key>`; when
//! due, the server stores the body on the target subject (same stream) and
//! removes the schedule message.
//!
//! "Does not fire" is asserted without sleeping: a later *sentinel* schedule is
//! awaited, and the server fires due schedules in time order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use nwd_testkit::{NatsServer, eventually};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

async fn schedule_stream(server: &NatsServer) -> (jetstream::Context, stream::Stream) {
    let js = jetstream::new(server.client().await);
    // async-nats 0.51 (feature server_2_12) has the field: no raw
    // `$JS.API.STREAM.CREATE` request needed.
    let stream = js
        .create_stream(stream::Config {
            name: "SCHED".into(),
            subjects: vec!["sched.>".into(), "fired.>".into()],
            storage: stream::StorageType::File,
            allow_message_schedules: true,
            ..Default::default()
        })
        .await
        .unwrap();
    (js, stream)
}

fn in_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::milliseconds(ms)
}

fn at(due: OffsetDateTime, target: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "Nats-Schedule",
        format!("@at {}", due.format(&Rfc3339).unwrap()).as_str(),
    );
    h.insert("Nats-Schedule-Target", target);
    h
}

async fn schedule(js: &jetstream::Context, key: &str, due: OffsetDateTime, body: &str) -> u64 {
    js.publish_with_headers(
        format!("sched.{key}"),
        at(due, &format!("fired.{key}")),
        body.to_owned().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap()
    .sequence
}

async fn last(stream: &stream::Stream, subject: &str) -> Option<StreamMessage> {
    stream.get_last_raw_message_by_subject(subject).await.ok()
}

async fn fired_body(stream: &stream::Stream, key: &str) -> Option<String> {
    last(stream, &format!("fired.{key}"))
        .await
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
}

async fn wait_fired(stream: &stream::Stream, key: &str) -> String {
    eventually(Duration::from_secs(10), &format!("fired.{key}"), || async {
        fired_body(stream, key).await
    })
    .await
}

#[tokio::test]
async fn an_at_schedule_fires_once_into_its_target_and_is_removed() {
    let server = NatsServer::start().await;
    let (js, mut stream) = schedule_stream(&server).await;
    assert!(stream.info().await.unwrap().config.allow_message_schedules);
    let mut h = at(in_ms(700), "fired.a");
    h.insert("Nats-Msg-Id", "a:1");
    h.insert("X-Token", "1");
    js.publish_with_headers("sched.a", h, "step 1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Stored with a rollup per subject: one schedule per subject.
    let held = last(&stream, "sched.a").await.unwrap();
    assert_eq!(
        held.headers.get("Nats-Rollup").map(|v| v.as_str()),
        Some("sub")
    );

    assert_eq!(wait_fired(&stream, "a").await, "step 1");
    let fired = last(&stream, "fired.a").await.unwrap();
    let h = &fired.headers;
    assert_eq!(h.get("Nats-Scheduler").map(|v| v.as_str()), Some("sched.a"));
    assert_eq!(
        h.get("Nats-Schedule-Next").map(|v| v.as_str()),
        Some("purge")
    );
    assert_eq!(h.get("X-Token").map(|v| v.as_str()), Some("1"));
    assert!(h.get("Nats-Msg-Id").is_none(), "{h:?}");
    assert!(h.get("Nats-Schedule").is_none(), "{h:?}");
    // The schedule message is gone once it fired.
    eventually(Duration::from_secs(5), "schedule removed", || async {
        last(&stream, "sched.a").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn republishing_on_the_subject_replaces_the_schedule() {
    let server = NatsServer::start().await;
    let (js, stream) = schedule_stream(&server).await;
    // Margins of a second: a loaded machine must not fire step 1 before it
    // is replaced.
    schedule(&js, "b", in_ms(1_000), "step 1").await;
    schedule(&js, "b", in_ms(3_000), "step 2").await;
    schedule(&js, "sentinel", in_ms(2_000), "s").await;
    wait_fired(&stream, "sentinel").await;
    // Step 1 was due before the sentinel and did not fire.
    assert_eq!(fired_body(&stream, "b").await, None);
    assert_eq!(wait_fired(&stream, "b").await, "step 2");
}

#[tokio::test]
async fn cancelling_by_rollup_purge_or_delete() {
    let server = NatsServer::start().await;
    let (js, stream) = schedule_stream(&server).await;
    // 1. A plain message with Nats-Rollup: sub replaces the schedule.
    schedule(&js, "rollup", in_ms(1_500), "x").await;
    let mut h = HeaderMap::new();
    h.insert("Nats-Rollup", "sub");
    js.publish_with_headers("sched.rollup", h, "cancelled".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // 2. Purging the subject.
    schedule(&js, "purge", in_ms(1_500), "x").await;
    stream.purge().filter("sched.purge").await.unwrap();
    // 3. Deleting the message.
    let seq = schedule(&js, "delete", in_ms(1_500), "x").await;
    assert!(stream.delete_message(seq).await.unwrap());
    // 4. A plain message without rollup also stops it, but the schedule
    //    message stays in the stream.
    schedule(&js, "plain", in_ms(1_500), "x").await;
    js.publish("sched.plain", "plain".into())
        .await
        .unwrap()
        .await
        .unwrap();

    schedule(&js, "sentinel", in_ms(2_500), "s").await;
    wait_fired(&stream, "sentinel").await;
    for key in ["rollup", "purge", "delete", "plain"] {
        assert_eq!(fired_body(&stream, key).await, None, "{key} fired");
    }
    let mut info = stream.clone();
    let state = info.info().await.unwrap().state.clone();
    // sched.rollup (the plain "cancelled"), sched.plain ×2, fired.sentinel.
    assert_eq!(state.messages, 4, "{state:?}");
}

#[tokio::test]
async fn a_schedule_in_the_past_fires_at_once() {
    let server = NatsServer::start().await;
    let (js, stream) = schedule_stream(&server).await;
    let t = std::time::Instant::now();
    schedule(&js, "late", in_ms(-60_000), "overdue").await;
    assert_eq!(wait_fired(&stream, "late").await, "overdue");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_conditional_replace_refuses_a_stale_expected_sequence() {
    let server = NatsServer::start().await;
    let (js, stream) = schedule_stream(&server).await;
    let first = schedule(&js, "c", in_ms(60_000), "step 1").await;
    let mut h = at(in_ms(60_000), "fired.c");
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        first.to_string().as_str(),
    );
    js.publish_with_headers("sched.c", h.clone(), "step 2".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // The same expectation again is stale now.
    let err = js
        .publish_with_headers("sched.c", h, "step 3".into())
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
    let held = last(&stream, "sched.c").await.unwrap();
    assert_eq!(held.payload.as_ref(), b"step 2");
}

#[tokio::test]
async fn invalid_schedules_are_refused() {
    let server = NatsServer::start().await;
    let (js, _stream) = schedule_stream(&server).await;
    let refused = |subject: &'static str, h: HeaderMap| {
        let js = js.clone();
        async move {
            let err = js
                .publish_with_headers(subject, h, "x".into())
                .await
                .unwrap()
                .await
                .unwrap_err();
            format!("{err:?}")
        }
    };
    // Target outside the stream.
    let e = refused("sched.t", at(in_ms(1_000), "elsewhere.t")).await;
    assert!(e.contains("10190"), "{e}");
    // Target equal to the schedule's own subject.
    let e = refused("sched.t", at(in_ms(1_000), "sched.t")).await;
    assert!(e.contains("10190"), "{e}");
    // Not a schedule pattern.
    let mut h = HeaderMap::new();
    h.insert("Nats-Schedule", "tomorrow");
    h.insert("Nats-Schedule-Target", "fired.t");
    let e = refused("sched.t", h).await;
    assert!(e.contains("10189"), "{e}");
    // 2.12 implements `@at` only: no intervals or cron yet.
    for pattern in ["@every 5s", "@hourly", "0 0 * * * *"] {
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", pattern);
        h.insert("Nats-Schedule-Target", "fired.t");
        let e = refused("sched.t", h).await;
        assert!(e.contains("10189"), "{pattern}: {e}");
    }

    // A stream without allow_msg_schedules refuses schedules.
    js.create_stream(stream::Config {
        name: "PLAIN".into(),
        subjects: vec!["plain.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let e = refused("plain.a", at(in_ms(1_000), "plain.b")).await;
    assert!(e.contains("10188"), "{e}");
}

#[tokio::test]
async fn overdue_schedules_fire_after_a_server_restart() {
    let mut server = NatsServer::start().await;
    let (js, _) = schedule_stream(&server).await;
    let due = in_ms(1_500);
    for i in 0..50 {
        schedule(&js, &format!("r{i}"), due, &format!("step {i}")).await;
    }
    // Down before they are due, up again when all are overdue.
    server.kill();
    tokio::time::sleep(Duration::from_secs_f64(
        (due - OffsetDateTime::now_utc()).as_seconds_f64().max(0.0) + 0.5,
    ))
    .await;
    server.restart().await;
    let js = jetstream::new(server.client().await);
    let stream = js.get_stream("SCHED").await.unwrap();
    for i in 0..50 {
        assert_eq!(
            wait_fired(&stream, &format!("r{i}")).await,
            format!("step {i}")
        );
    }
    let mut s = stream.clone();
    let state = s.info().await.unwrap().state.clone();
    // Each fired exactly once and no schedule is left.
    assert_eq!(state.messages, 50, "{state:?}");
}
