//! Storage limits against a real nats-server: every stream and bucket gets
//! its byte limit, age and discard policy, also when an older version
//! created it without them, and the sizes are exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, stream::DiscardPolicy};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{ContactId, Envelope, Event};
use nwd_runtime::bus::{self, Layout, NatsArgs};
use nwd_testkit::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    n: u32,
}
impl Event for Probe {
    const TYPE: &'static str = "test.probe";
}

async fn info(js: &jetstream::Context, name: &str) -> jetstream::stream::Info {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

#[tokio::test]
async fn streams_an_older_version_created_are_given_their_limits_in_place() {
    let server = NatsServer::start().await;
    let args = NatsArgs::local(server.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    // What the previous version created: no byte limits, discard old, a
    // 30-day sends bucket; and a message already stored.
    js.create_stream(jetstream::stream::Config {
        name: streams::AUDIT.to_owned(),
        subjects: vec![nwd_proto::subjects::AUDIT_ALL.to_owned()],
        deny_delete: true,
        deny_purge: true,
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    js.create_key_value(jetstream::kv::Config {
        bucket: buckets::SENDS.to_owned(),
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let contact = ContactId::new();
    // Only the audit writers (router, escalator) may publish to AUDIT.
    let router_args = NatsArgs::local(server.url_for("router"));
    let router = bus::jetstream(
        bus::connect(&router_args, "router").await.unwrap(),
        &router_args,
    );
    bus::publish(
        &router,
        nwd_proto::subjects::audit_disclosure(&contact),
        "audit-1",
        &Envelope::new(Probe { n: 1 }),
    )
    .await
    .unwrap();

    let layout = Layout {
        replicas: 1,
        store_bytes: 4 << 30,
    };
    bus::ensure_all(&js, layout).await.unwrap();

    for name in streams::ALL {
        let info = info(&js, name).await;
        assert_eq!(info.config.max_bytes, layout.max_bytes(name), "{name}");
        assert!(info.config.max_bytes > 0, "{name}");
        let expected = if name == streams::AUDIT || name == streams::DEADLETTER {
            DiscardPolicy::New
        } else {
            DiscardPolicy::Old
        };
        assert_eq!(info.config.discard, expected, "{name}");
    }
    let audit = info(&js, streams::AUDIT).await;
    assert!(audit.config.max_age.is_zero(), "AUDIT never ages out");
    assert!(audit.config.deny_delete && audit.config.deny_purge);
    assert_eq!(audit.state.messages, 1, "updated in place, nothing lost");
    for name in buckets::ALL {
        let info = info(&js, &buckets::stream_of(name)).await;
        assert_eq!(info.config.max_bytes, layout.max_bytes(name), "{name}");
    }
    let sends = info(&js, &buckets::stream_of(buckets::SENDS)).await;
    assert_eq!(sends.config.max_age, bus::SENDS_TTL);

    // The exported figures: every stream and bucket, limits as the server has them.
    let usage = bus::sample_storage(&js, &layout).await;
    assert_eq!(usage.len(), streams::ALL.len() + buckets::ALL.len());
    assert!(usage.iter().all(|u| u.limit_bytes > 0), "{usage:?}");
    let audit = usage.iter().find(|u| u.stream == streams::AUDIT).unwrap();
    assert_eq!(audit.messages, 1);
    assert!(audit.bytes > 0);
}

#[tokio::test]
async fn a_stream_limit_beyond_the_servers_store_is_refused() {
    // The test server's max_file_store is 10 GB, like the shipped config.
    // The server checks each limit against the store, not their sum: a
    // store configured larger than the server's silently loses the headroom
    // until one limit no longer fits (CONTACTS' 20% of 200 GiB).
    let server = NatsServer::start().await;
    let args = NatsArgs::local(server.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    let too_big = Layout {
        replicas: 1,
        store_bytes: 200 << 30,
    };
    assert!(bus::ensure_all(&js, too_big).await.is_err());
    bus::ensure_all(&js, Layout::from(1)).await.unwrap();
}
