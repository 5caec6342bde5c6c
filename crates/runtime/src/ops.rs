//! `/healthz`, `/readyz` and `/metrics`, and serving an axum router until shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The readiness condition met while NATS answered a round trip recently.
pub const NATS_ROUND_TRIP: &str = "nats";

/// How often the NATS round trip is probed, how long one may take, and how
/// old the last good one may be before the service is not ready. A frozen
/// server (connection open, nothing answered) shows within about 3 s.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const ROUND_TRIP_FRESH: Duration = Duration::from_secs(2);

type Excuse = Arc<dyn Fn() -> bool + Send + Sync>;
/// Conditions excused while NATS is away, and the test that excuses them.
type Tolerance = (BTreeSet<String>, Excuse);

/// Named readiness conditions (streams bound, consumers bound, …). The
/// service is ready when every condition is met and, once a NATS client is
/// watched, NATS answered a round trip in the last two seconds.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, bool>>>,
    probe: Arc<Probe>,
    excuses: Arc<Mutex<Vec<Tolerance>>>,
}

/// The last NATS round trip that succeeded, kept by a probe task.
#[derive(Default)]
struct Probe {
    client: Mutex<Option<async_nats::Client>>,
    last_ok: Mutex<Option<Instant>>,
    /// Whether a probe has finished yet: before that, NATS is neither
    /// answering nor known to be away.
    probed: AtomicBool,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    /// A readiness with these conditions, all initially unmet.
    pub fn new<I, S>(conditions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let map = conditions.into_iter().map(|c| (c.into(), false)).collect();
        Self {
            conditions: Arc::new(Mutex::new(map)),
            ..Self::default()
        }
    }

    /// Also require NATS to answer: a task asks JetStream for the account's
    /// info every 500 ms (a real round trip through the server, which a
    /// frozen connection fails where the connection state still says
    /// "connected"), and [`NATS_ROUND_TRIP`] is met while the last success
    /// is under 2 s old. The task ends when every clone of this readiness
    /// is dropped. Call from within a tokio runtime.
    pub fn watch_client(&self, client: async_nats::Client) {
        if let Ok(mut c) = self.probe.client.lock() {
            *c = Some(client);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe_round_trips(Arc::downgrade(&self.probe)));
        }
    }

    /// While NATS does not answer and `excuse()` is true, the NATS round
    /// trip and these conditions (which need NATS to be met) make the
    /// service degraded, not unready: it still does its job another way
    /// (the gateway's spool takes webhooks while NATS is away). With NATS
    /// answering they count as usual.
    pub fn tolerate_nats_outage<I, S>(
        &self,
        conditions: I,
        excuse: impl Fn() -> bool + Send + Sync + 'static,
    ) where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: BTreeSet<String> = conditions.into_iter().map(Into::into).collect();
        names.insert(NATS_ROUND_TRIP.to_owned());
        if let Ok(mut e) = self.excuses.lock() {
            e.push((names, Arc::new(excuse)));
        }
    }

    pub fn set(&self, condition: &str, met: bool) {
        if let Ok(mut map) = self.conditions.lock() {
            map.insert(condition.to_owned(), met);
        }
    }

    /// Every unmet condition, excused or not.
    fn unmet(&self) -> Vec<String> {
        let mut unmet: Vec<String> = self
            .conditions
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, met)| !**met)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_else(|_| vec!["poisoned".to_owned()]);
        if !self.probe.answering() {
            unmet.push(NATS_ROUND_TRIP.to_owned());
        }
        unmet
    }

    fn excused(&self, condition: &str) -> bool {
        if !self.probe.known_away() {
            return false;
        }
        self.excuses.lock().is_ok_and(|e| {
            e.iter()
                .any(|(names, excuse)| names.contains(condition) && excuse())
        })
    }

    /// Unmet conditions that are not excused; empty when ready.
    pub fn missing(&self) -> Vec<String> {
        self.unmet()
            .into_iter()
            .filter(|c| !self.excused(c))
            .collect()
    }

    /// Unmet conditions that are excused for now.
    pub fn degraded(&self) -> Vec<String> {
        self.unmet()
            .into_iter()
            .filter(|c| self.excused(c))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }
}

impl Probe {
    /// True when no client is watched, or the last round trip is fresh.
    fn answering(&self) -> bool {
        let watched = self.client.lock().is_ok_and(|c| c.is_some());
        if !watched {
            return true;
        }
        self.last_ok
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() < ROUND_TRIP_FRESH)
    }
}

impl Probe {
    /// True when a probe finished and NATS did not answer lately.
    fn known_away(&self) -> bool {
        self.probed.load(Ordering::SeqCst) && !self.answering()
    }
}

async fn probe_round_trips(probe: Weak<Probe>) {
    loop {
        let Some(client) = probe
            .upgrade()
            .and_then(|p| p.client.lock().ok().and_then(|c| c.clone()))
        else {
            return;
        };
        // Not short-cut on the connection state: a client still making its
        // first connection answers within the timeout all the same.
        let answered = tokio::time::timeout(
            PROBE_TIMEOUT,
            async_nats::jetstream::new(client).query_account(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let Some(p) = probe.upgrade() else {
            return;
        };
        if answered && let Ok(mut t) = p.last_ok.lock() {
            *t = Some(Instant::now());
        }
        p.probed.store(true, Ordering::SeqCst);
        drop(p);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Routes for `/healthz`, `/readyz`, `/metrics`. Merge into a service's router.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let missing = readiness.missing();
    let degraded = readiness.degraded();
    if missing.is_empty() && degraded.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else if missing.is_empty() {
        (
            StatusCode::OK,
            format!("ready, degraded: {}", degraded.join(", ")),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", missing.join(", ")),
        )
            .into_response()
    }
}

async fn metrics() -> Response {
    match crate::telemetry::metrics_handle() {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Waits for a server task spawned with [`serve`]; a panicked task is an I/O error.
pub async fn join_server(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> std::io::Result<()> {
    server.await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readyz_reflects_conditions() {
        let readiness = Readiness::new(["consumer:x"]);
        let app = routes(readiness.clone());
        let res = app
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        readiness.set("consumer:x", true);
        let res = app
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_render_prometheus_text() {
        crate::telemetry::metrics_handle();
        metrics::counter!("nwd_test_total", "service" => "test").increment(1);
        let res = routes(Readiness::default())
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("nwd_test_total"));
    }
}
