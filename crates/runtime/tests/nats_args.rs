//! NATS connection settings: who a service connects as, and that printed
//! configuration never shows a password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nwd_runtime::bus::{self, NatsArgs};
use nwd_testkit::NatsServer;

#[test]
fn the_user_is_the_flag_else_the_urls_else_the_services() {
    let mut args = NatsArgs::local("nats://127.0.0.1:4222");
    assert_eq!(args.user_for("intake"), "intake");
    args.url = "nats://router:pw@127.0.0.1:4222".into();
    assert_eq!(args.user_for("intake"), "router");
    args.user = Some("operator".into());
    assert_eq!(args.user_for("intake"), "operator");
}

#[test]
fn printed_settings_hide_the_password_in_the_url_and_the_flag() {
    let mut args = NatsArgs::local("nats://gateway:s3cretpw@127.0.0.1:4222");
    args.password = Some("an0therpw".parse().unwrap());
    let printed = format!("{args:?}");
    assert!(!printed.contains("s3cretpw"), "{printed}");
    assert!(!printed.contains("an0therpw"), "{printed}");
    assert!(printed.contains("gateway:***@127.0.0.1:4222"), "{printed}");
}

#[tokio::test]
async fn a_service_connects_with_a_password_file_as_its_own_user() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.password");
    std::fs::write(&file, format!("{}\n", server.password("gateway"))).unwrap();
    let args = NatsArgs {
        password_file: Some(file),
        ..NatsArgs::local(server.anonymous_url())
    };
    let client = bus::connect(&args, "gateway").await.unwrap();
    let js = bus::jetstream(client, &args);
    // The gateway's own subject is stored; reading the INBOUND stream's
    // info is all it may do there.
    let ack = js
        .publish(nwd_proto::subjects::inbound_sms(), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, nwd_proto::streams::INBOUND);
}
