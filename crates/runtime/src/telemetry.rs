//! Tracing and metrics, installed once per process.
//!
//! Logs never carry message bodies, phone numbers or names: events carry ids
//! only, and [`nwd_proto::PhoneNumber`] redacts itself when formatted.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets for latencies in seconds (100 µs … 10 s).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// Installs the tracing subscriber. `NWD_LOG` (or `RUST_LOG`) sets the filter;
/// `NWD_LOG_FORMAT=json` switches to JSON lines. Safe to call more than once.
pub fn init_tracing() {
    let filter = std::env::var("NWD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,async_nats=warn".to_owned());
    let json = std::env::var("NWD_LOG_FORMAT").is_ok_and(|f| f == "json");
    let registry = tracing_subscriber::registry().with(EnvFilter::new(filter));
    let _ = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json())
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init()
    };
}

/// Installs the global Prometheus recorder once and returns its handle.
/// In tests several services share one process and one registry; metrics
/// carry a `service` label so they stay apart.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
