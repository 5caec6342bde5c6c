//! The escalator refuses to start on a directory whose schedules it cannot read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nwd_escalator::{Config, Error};
use nwd_runtime::bus::NatsArgs;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_bad_time_zone_stops_the_escalator_at_start() {
    let demo = std::fs::read_to_string(nwd_runtime::directory::demo_path()).unwrap();
    let bad = demo.replacen("America/Chicago", "Mars/Olympus", 1);
    let path = std::env::temp_dir().join(format!("nwd-bad-tz-{}.toml", std::process::id()));
    std::fs::write(&path, bad).unwrap();
    let listener = nwd_testkit::listener().await;
    let config = Config {
        // Nothing listens here: the directory is checked before connecting.
        nats: NatsArgs::local("nats://127.0.0.1:1"),
        metrics_addr: listener.local_addr().unwrap(),
        directory: path,
        presence_stale_ms: 9_000,
        max_tick_ms: 250,
        announce_grace_ms: 2_000,
    };
    let err = nwd_escalator::run(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Schedule(ref m) if m.contains("Mars/Olympus")),
        "{err}"
    );
}
