//! `/healthz`, `/readyz` and `/metrics`, and serving an axum router until shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness conditions (streams bound, consumers bound, …). The
/// service is ready when every condition is met and NATS is connected.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, bool>>>,
    client: Arc<Mutex<Option<async_nats::Client>>>,
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
            client: Arc::default(),
        }
    }

    /// Also require this NATS connection to be up.
    pub fn watch_client(&self, client: async_nats::Client) {
        if let Ok(mut c) = self.client.lock() {
            *c = Some(client);
        }
    }

    pub fn set(&self, condition: &str, met: bool) {
        if let Ok(mut map) = self.conditions.lock() {
            map.insert(condition.to_owned(), met);
        }
    }

    /// Unmet conditions; empty when ready.
    pub fn missing(&self) -> Vec<String> {
        let mut missing: Vec<String> = self
            .conditions
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, met)| !**met)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_else(|_| vec!["poisoned".to_owned()]);
        let connected = self.client.lock().ok().and_then(|c| {
            c.as_ref()
                .map(|c| c.connection_state() == async_nats::connection::State::Connected)
        });
        if connected == Some(false) {
            missing.push("nats-connection".to_owned());
        }
        missing
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
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
    if missing.is_empty() {
        (StatusCode::OK, "ready").into_response()
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
