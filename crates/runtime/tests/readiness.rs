//! `/readyz` follows NATS round trips, not the connection state: a frozen
//! server (SIGSTOP, sockets open) makes the service unready within seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::ops::{self, Readiness};
use nwd_testkit::{NatsServer, eventually};
use tower::ServiceExt;

async fn readyz(readiness: &Readiness) -> (StatusCode, String) {
    let res = ops::routes(readiness.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readyz_turns_503_while_nats_is_frozen_and_200_when_it_answers_again() {
    let server = NatsServer::start().await;
    let client = bus::connect(&NatsArgs::local(server.url()), "readiness-test")
        .await
        .unwrap();
    let readiness = Readiness::new(["streams"]);
    readiness.set("streams", true);
    readiness.watch_client(client.clone());
    // A service that can do without NATS for a while (the gateway and its
    // spool) tolerates the outage while it can.
    let tolerant = Readiness::new(["streams"]);
    tolerant.watch_client(client.clone());
    let can_cope = Arc::new(AtomicBool::new(true));
    {
        let can_cope = can_cope.clone();
        tolerant.tolerate_nats_outage(["streams"], move || can_cope.load(Ordering::SeqCst));
    }
    // With NATS answering (once probed), an unmet condition is not excused.
    eventually(
        Duration::from_secs(5),
        "unready without streams",
        || async {
            let (status, body) = readyz(&tolerant).await;
            (status == StatusCode::SERVICE_UNAVAILABLE && !body.contains("nats")).then_some(())
        },
    )
    .await;
    tolerant.set("streams", true);
    eventually(Duration::from_secs(5), "ready", || async {
        (readyz(&readiness).await.0 == StatusCode::OK).then_some(())
    })
    .await;

    server.pause();
    let frozen = std::time::Instant::now();
    let (_, body) = eventually(Duration::from_secs(6), "not ready while frozen", || async {
        let r = readyz(&readiness).await;
        (r.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert!(body.contains("nats"), "{body}");
    // The connection itself never noticed: only the round trip did.
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    assert!(frozen.elapsed() < Duration::from_secs(5));
    tolerant.set("streams", false);
    let (status, body) = readyz(&tolerant).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("degraded") && body.contains("nats") && body.contains("streams"),
        "{body}"
    );
    can_cope.store(false, Ordering::SeqCst);
    assert_eq!(readyz(&tolerant).await.0, StatusCode::SERVICE_UNAVAILABLE);

    server.resume();
    eventually(Duration::from_secs(10), "ready again", || async {
        (readyz(&readiness).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}
