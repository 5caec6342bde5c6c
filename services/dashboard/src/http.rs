//! HTTP: the page, login/logout, `/api/me` and the websocket upgrade. Every
//! error is problem+json.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt, future};
use nwd_proto::directory::Staff;
use nwd_runtime::problem::Problem;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::App;
use crate::session::{self, Login};
use crate::socket::{self, Inbound, Outbound};
use crate::throttle::Refused;

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

/// The sessions bucket cannot be reached: nobody can be logged in or out.
fn sessions_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "The dashboard cannot reach its sessions; retry",
    )
    .retry_after(1)
}

fn too_many_attempts(refused: Refused) -> Problem {
    let secs = u32::try_from(refused.retry_after_secs()).unwrap_or(u32::MAX);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-logins",
        "Too many login attempts; wait and try again",
    )
    .detail(format!("retry in {secs} s"))
    .retry_after(secs)
}

/// The logged-in staff member of a request, and their session.
async fn authenticate(app: &App, headers: &HeaderMap) -> Result<(Staff, Login), Problem> {
    let id = session::from_headers(headers).ok_or_else(unauthenticated)?;
    let stores = app.stores().ok_or_else(sessions_unavailable)?;
    let login = app
        .sessions
        .find(&stores.sessions, id, OffsetDateTime::now_utc())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the session");
            sessions_unavailable()
        })?
        .ok_or_else(unauthenticated)?;
    // Someone removed from the directory loses access at once.
    let staff = app
        .directory
        .get()
        .staff(&login.counsellor)
        .cloned()
        .ok_or_else(unauthenticated)?;
    Ok((staff, login))
}

/// The address a request came from: the socket's peer, or, when the peer is
/// a trusted proxy, the nearest untrusted hop of `X-Forwarded-For`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Whatever the proxy could not vouch for is the proxy's.
            Err(_) => return peer,
        }
    }
    peer
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

/// A failed login, by a bounded reason (never the username).
fn count_failure(reason: &'static str) {
    metrics::counter!(
        "nwd_dashboard_login_failures_total",
        "service" => crate::NAME, "reason" => reason
    )
    .increment(1);
}

/// `POST /login`: a form (303 to `/`) or JSON (200 `{"counsellor": id}`).
/// Throttled per username and per client address before the password is
/// checked (429 with `Retry-After`).
async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
        count_failure("malformed");
        return Problem::bad_request("expected username and password").into_response();
    };
    let Some(stores) = app.stores() else {
        return sessions_unavailable().into_response();
    };
    let address = client_address(peer.ip(), &headers, &app.settings.trusted_proxies);
    let checking = match app.throttle.admit(address, &form.username, Instant::now()) {
        Ok(c) => c,
        Err(refused) => {
            count_login("throttled");
            count_failure(refused.reason.as_str());
            tracing::info!(reason = refused.reason.as_str(), "login throttled");
            return too_many_attempts(refused).into_response();
        }
    };
    let checked = app
        .credentials
        .check(&app.directory.get(), &form.username, &form.password)
        .await;
    drop(checking);
    let Some(who) = checked else {
        app.throttle.failed(address, &form.username, Instant::now());
        count_login("refused");
        count_failure("bad_credentials");
        tracing::info!("login refused");
        return bad_credentials().into_response();
    };
    app.throttle.succeeded(address, &form.username);
    let opened = app
        .sessions
        .open(&stores.sessions, &who, OffsetDateTime::now_utc())
        .await;
    let id = match opened {
        Ok((id, _)) => id,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store the session");
            count_login("unavailable");
            return sessions_unavailable().into_response();
        }
    };
    count_login("ok");
    tracing::info!(counsellor = %who, "logged in");
    let cookie = session::set_cookie(&id, app.sessions.ttl(), app.settings.cookie_secure);
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

/// `POST /logout`: ends the session at once (its sockets here close now,
/// on other dashboard processes as soon as they see the delete), drops the
/// cookie and goes back to the page.
async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let clear = session::clear_cookie(app.settings.cookie_secure);
    if let Some(id) = session::from_headers(&headers) {
        if let Some(key) = app.sessions.key_of(id) {
            app.hub.close_session(&key);
        }
        let ended = match app.stores() {
            Some(stores) => app.sessions.end(&stores.sessions, id).await.map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = ended {
            // The session would outlive the logout: say so, and let the page retry.
            tracing::warn!(error = %e, "cannot end the session");
            return ([(header::SET_COOKIE, clear)], sessions_unavailable()).into_response();
        }
        tracing::info!("logged out");
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, clear),
            (header::LOCATION, HeaderValue::from_static("/")),
        ],
    )
        .into_response()
}

/// `GET /api/me`: who is logged in.
async fn me(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match authenticate(&app, &headers).await {
        Ok((s, _)) => axum::Json(serde_json::json!({ "id": s.id, "name": s.name, "role": s.role }))
            .into_response(),
        Err(p) => p.into_response(),
    }
}

/// The websocket only opens from this site's own pages (when the browser says
/// where the page came from), on top of the `SameSite=Strict` cookie: the
/// `Origin` must match the public URL's scheme, host and port (without a
/// public URL, `http://` and the request's `Host`).
pub fn same_origin(headers: &HeaderMap, public: Option<&url::Origin>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .map(|u| u.origin())
    else {
        return false;
    };
    let expected = match public {
        Some(p) => p.clone(),
        None => match headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| url::Url::parse(&format!("http://{h}")).ok())
        {
            Some(u) => u.origin(),
            None => return false,
        },
    };
    // Opaque origins (`null`) never equal anything.
    origin.is_tuple() && origin == expected
}

/// `GET /ws`: the dashboard websocket, for a logged-in counsellor.
async fn ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers, app.settings.origin.as_ref()) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "The websocket opens only from the dashboard page",
        )
        .into_response();
    }
    let login = match authenticate(&app, &headers).await {
        Ok((_, login)) => login,
        Err(p) => return p.into_response(),
    };
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
        .on_upgrade(move |socket| tasks.track_future(serve_websocket(app, login, socket)))
}

/// Adapts an axum websocket to [`socket::serve`].
async fn serve_websocket(app: Arc<App>, login: Login, ws: WebSocket) {
    let (sink, stream) = ws.split();
    let writer = sink.with(|out: Outbound| {
        future::ready(Ok::<_, axum::Error>(match out {
            Outbound::Msg(m) => Message::Text(serde_json::to_string(&m).unwrap_or_default().into()),
            Outbound::Json(text) => Message::Text(text),
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
    socket::serve(app, login, writer, reader).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.2");
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9")]);
        assert_eq!(client_address(proxy, &xff, &[]), proxy);
        assert_eq!(client_address(proxy, &xff, &[proxy]), ip("203.0.113.9"));
        // Chained trusted proxies are skipped; a client's own claim is not trusted.
        let chained = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.3")]);
        assert_eq!(
            client_address(proxy, &chained, &[proxy, ip("10.0.0.3")]),
            ip("203.0.113.9")
        );
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(client_address(proxy, &garbage, &[proxy]), proxy);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
        // IPv4 seen over IPv6 is the same client.
        assert_eq!(
            client_address(ip("::ffff:192.0.2.1"), &HeaderMap::new(), &[]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn the_origin_must_match_scheme_host_and_port() {
        let public = url::Url::parse("https://dash.example.org")
            .unwrap()
            .origin();
        let check = |origin: &str| same_origin(&headers(&[("origin", origin)]), Some(&public));
        assert!(check("https://dash.example.org"));
        assert!(check("https://dash.example.org:443"));
        assert!(check("https://DASH.example.org"));
        for other in [
            "http://dash.example.org",
            "https://dash.example.org:8443",
            "https://evil.example.org",
            "https://dash.example.org.evil.example",
            "null",
            "",
        ] {
            assert!(!check(other), "{other}");
        }
        // No Origin: not a browser page, nothing to compare.
        assert!(same_origin(&HeaderMap::new(), Some(&public)));
        // No public URL: http and the request's Host.
        let local = |origin: &str, host: &str| {
            same_origin(&headers(&[("origin", origin), ("host", host)]), None)
        };
        assert!(local("http://127.0.0.1:8090", "127.0.0.1:8090"));
        assert!(!local("http://127.0.0.1:8091", "127.0.0.1:8090"));
        assert!(!local("https://127.0.0.1:8090", "127.0.0.1:8090"));
    }
}
