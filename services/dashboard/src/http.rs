//! HTTP: the page, login/logout, `/api/me` and the websocket upgrade. Every
//! error is problem+json.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt, future};
use nwd_proto::directory::Staff;
use nwd_runtime::problem::Problem;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::App;
use crate::session;
use crate::socket::{self, Inbound, Outbound};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest websocket message accepted from a browser.
pub const MAX_WS_MESSAGE: usize = 64 * 1024;

const PAGE: &str = include_str!("page.html");

/// The dashboard's own routes (merge `ops::routes` in next to them).
pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/ws", get(ws))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn unauthenticated() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Log in to use the dashboard",
    )
}

fn bad_credentials() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "bad-credentials",
        "Unknown user or wrong password",
    )
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "No such page")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed here",
    )
}

/// The logged-in staff member of a request.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<Staff, Problem> {
    let token = session::from_headers(headers).ok_or_else(unauthenticated)?;
    let who = app
        .sessions
        .verify(token, OffsetDateTime::now_utc())
        .ok_or_else(unauthenticated)?;
    // Someone removed from the directory loses access at once.
    app.directory
        .get()
        .staff(&who)
        .cloned()
        .ok_or_else(unauthenticated)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self' ws: wss:; frame-ancestors 'none'; form-action 'self'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

fn body_problem(rejection: &BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::payload_too_large(MAX_BODY)
    } else {
        Problem::bad_request("unreadable body")
    }
}

fn count_login(outcome: &'static str) {
    metrics::counter!("nwd_dashboard_logins_total", "service" => crate::NAME, "outcome" => outcome)
        .increment(1);
}

/// `POST /login`: a form (303 to `/`) or JSON (200 `{"counsellor": id}`).
async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_problem(&r).into_response(),
    };
    let json = is_json(&headers);
    let form: Result<LoginForm, String> = if json {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(&body).map_err(|e| e.to_string())
    };
    let Ok(form) = form else {
        count_login("malformed");
        return Problem::bad_request("expected username and password").into_response();
    };
    let Some(who) = app
        .credentials
        .check(&app.directory.get(), &form.username, &form.password)
        .await
    else {
        count_login("refused");
        tracing::info!("login refused");
        return bad_credentials().into_response();
    };
    count_login("ok");
    tracing::info!(counsellor = %who, "logged in");
    let token = app.sessions.issue(&who, OffsetDateTime::now_utc());
    let cookie = session::set_cookie(&token, app.settings.cookie_secure);
    if json {
        (
            [(header::SET_COOKIE, cookie)],
            axum::Json(serde_json::json!({ "counsellor": who })),
        )
            .into_response()
    } else {
        (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, HeaderValue::from_static("/")),
            ],
        )
            .into_response()
    }
}

/// `POST /logout`: drops the cookie and goes back to the page.
async fn logout(State(app): State<Arc<App>>) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::clear_cookie(app.settings.cookie_secure),
            ),
            (header::LOCATION, HeaderValue::from_static("/")),
        ],
    )
        .into_response()
}

/// `GET /api/me`: who is logged in.
async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match authenticate(&app, &headers) {
        Ok(s) => axum::Json(serde_json::json!({ "id": s.id, "name": s.name, "role": s.role }))
            .into_response(),
        Err(p) => p.into_response(),
    }
}

/// The websocket only opens from this site's own pages (when the browser says
/// where the page came from), on top of the `SameSite=Strict` cookie.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// `GET /ws`: the dashboard websocket, for a logged-in counsellor.
async fn ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let who = match authenticate(&app, &headers) {
        Ok(s) => s.id.clone(),
        Err(p) => return p.into_response(),
    };
    if !same_origin(&headers) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "The websocket opens only from the dashboard page",
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => {
            return Problem::new(
                r.status(),
                "not-a-websocket",
                "Expected a websocket upgrade",
            )
            .into_response();
        }
    };
    if app.stores().is_none() {
        return Problem::unavailable().into_response();
    }
    let tasks = app.tasks.clone();
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| tasks.track_future(serve_websocket(app, who, socket)))
}

/// Adapts an axum websocket to [`socket::serve`].
async fn serve_websocket(app: Arc<App>, who: nwd_proto::CounsellorId, ws: WebSocket) {
    let (sink, stream) = ws.split();
    let writer = sink.with(|out: Outbound| {
        future::ready(Ok::<_, axum::Error>(match out {
            Outbound::Msg(m) => Message::Text(serde_json::to_string(&m).unwrap_or_default().into()),
            Outbound::KeepAlive => Message::Ping(Bytes::new()),
        }))
    });
    let reader = stream
        .take_while(|frame| {
            future::ready(matches!(frame, Ok(m) if !matches!(m, Message::Close(_))))
        })
        .filter_map(|frame| {
            future::ready(match frame {
                Ok(Message::Text(t)) => Some(Inbound::Text(t.as_str().to_owned())),
                Ok(Message::Binary(_)) => Some(Inbound::Binary),
                Ok(Message::Ping(_) | Message::Pong(_)) => Some(Inbound::Alive),
                _ => None,
            })
        });
    socket::serve(app, who, writer, reader).await;
}
