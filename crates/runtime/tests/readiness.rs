//! `/readyz` follows NATS round trips, not the connection state: a frozen
//! server (SIGSTOP, sockets open) makes the service unready within seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

    server.resume();
    eventually(Duration::from_secs(10), "ready again", || async {
        (readyz(&readiness).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_excused_condition_degrades_instead_of_failing() {
    let readiness = Readiness::new(["streams"]);
    let spooling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = spooling.clone();
    readiness.excuse_while(["streams"], move || {
        flag.load(std::sync::atomic::Ordering::SeqCst)
    });
    let (status, body) = readyz(&readiness).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("degraded: streams"), "{body}");
    spooling.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(readyz(&readiness).await.0, StatusCode::SERVICE_UNAVAILABLE);
}
