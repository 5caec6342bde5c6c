//! The chat's HTTP side: the page and its assets (all served from here, no
//! CDN), the embed script for partner sites, a demo partner page, and the
//! websocket, opened only from the chat's own origin or an origin the door
//! partner lists in the live directory (`chat_origins`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nwd_proto::PartnerId;
use nwd_proto::chat::Refusal;
use nwd_proto::directory::Directory;
use nwd_runtime::problem::Problem;
use serde::Deserialize;

use crate::{App, socket};

const PAGE: &str = include_str!("assets/page.html");
const SCRIPT: &str = include_str!("assets/chat.js");
const STYLE: &str = include_str!("assets/chat.css");
const EMBED: &str = include_str!("assets/embed.js");
const DEMO: &str = include_str!("assets/demo.html");

pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route(
            "/chat.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route("/chat.css", get(|| asset(STYLE, "text/css; charset=utf-8")))
        .route("/embed.js", get(embed))
        .route("/demo", get(demo))
        .route("/ws", get(websocket))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
pub struct DoorQuery {
    #[serde(default)]
    partner: Option<String>,
}

/// The partner named by a page, if the directory knows it (an unknown or
/// malformed id is no door, never a refusal).
pub fn door(dir: &Directory, partner: Option<&str>) -> Option<PartnerId> {
    let id = PartnerId::parse(partner?).ok()?;
    dir.partner(&id).map(|p| p.id.clone())
}

/// The chat's own origin: the public URL's, or `http://` + `Host`.
pub fn own_origin(app: &App, headers: &HeaderMap) -> Option<url::Origin> {
    if let Some(o) = &app.settings.origin {
        return Some(o.clone());
    }
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| url::Url::parse(&format!("http://{h}")).ok())
        .map(|u| u.origin())
}

fn origin_of(s: &str) -> Option<url::Origin> {
    url::Url::parse(s)
        .ok()
        .map(|u| u.origin())
        .filter(url::Origin::is_tuple)
}

/// May a page on the request's `Origin` open the websocket for `door`?
/// The chat's own origin always; a partner's listed origins for its own
/// door. No `Origin` header: not a browser page (nothing to protect).
pub fn origin_allowed(
    headers: &HeaderMap,
    own: Option<&url::Origin>,
    dir: &Directory,
    door: Option<&PartnerId>,
) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin.to_str().ok().and_then(origin_of) else {
        return false;
    };
    if own == Some(&origin) {
        return true;
    }
    door.and_then(|d| dir.partner(d)).is_some_and(|p| {
        p.chat_origins
            .iter()
            .filter_map(|o| origin_of(o))
            .any(|o| o == origin)
    })
}

/// `frame-ancestors` of the page: itself, and the door partner's origins.
fn frame_ancestors(dir: &Directory, door: Option<&PartnerId>) -> String {
    let mut sources = vec!["'self'".to_owned()];
    if let Some(p) = door.and_then(|d| dir.partner(d)) {
        sources.extend(
            p.chat_origins
                .iter()
                .filter_map(|o| origin_of(o))
                .map(|o| o.ascii_serialization()),
        );
    }
    sources.join(" ")
}

fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    no_store(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// Escapes text for an HTML attribute.
fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /?partner=<id>&lang=es`: the chat page. It may be framed only by
/// itself and the door partner's listed origins.
async fn page(State(app): State<Arc<App>>, Query(q): Query<DoorQuery>) -> Response {
    let dir = app.directory.get();
    let door = door(&dir, q.partner.as_deref());
    let door_name = door
        .as_ref()
        .and_then(|d| dir.partner(d))
        .map_or_else(|| dir.line.name.clone(), |p| p.name.clone());
    let body = PAGE
        .replace("{{line}}", &attr(&dir.line.name))
        .replace("{{door_name}}", &attr(&door_name))
        .replace(
            "{{partner}}",
            &attr(door.as_ref().map_or("", PartnerId::as_str)),
        )
        .replace("{{emergency}}", &attr(&dir.line.emergency_number))
        .replace(
            "{{quick_exit}}",
            &attr(app.settings.quick_exit_url.as_str()),
        );
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {}",
        frame_ancestors(&dir, door.as_ref())
    );
    let mut res =
        no_store(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response());
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

/// `GET /embed.js?partner=<id>`: the script a partner puts on its pages. It
/// adds a "Chat with us" button that opens the chat page in a frame.
async fn embed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<DoorQuery>,
) -> Response {
    let dir = app.directory.get();
    let door = door(&dir, q.partner.as_deref());
    let own = own_origin(&app, &headers)
        .map(|o| o.ascii_serialization())
        .unwrap_or_default();
    let body = EMBED
        .replace("__CHAT_ORIGIN__", &own.replace('\'', ""))
        .replace("__PARTNER__", door.as_ref().map_or("", PartnerId::as_str));
    let mut res = asset_owned(body, "text/javascript; charset=utf-8");
    // Partners load it cross-origin.
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

fn asset_owned(body: String, kind: &'static str) -> Response {
    no_store(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// `GET /demo`: a made-up partner page that embeds the chat with two lines
/// of HTML, as a partner would.
async fn demo(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let dir = app.directory.get();
    let partner = dir
        .partners
        .iter()
        .find(|p| !p.chat_origins.is_empty())
        .or_else(|| dir.partners.first());
    let (id, name) = partner.map_or(("", "Partner"), |p| (p.id.as_str(), p.name.as_str()));
    let own = own_origin(&app, &headers)
        .map(|o| o.ascii_serialization())
        .unwrap_or_default();
    let body = DEMO
        .replace("{{partner}}", &attr(id))
        .replace("{{partner_name}}", &attr(name))
        .replace("{{chat_origin}}", &attr(&own));
    asset_owned(body, "text/html; charset=utf-8")
}

/// `GET /ws?partner=<id>`: the patient's websocket.
async fn websocket(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<DoorQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let dir = app.directory.get();
    let door = door(&dir, q.partner.as_deref());
    let own = own_origin(&app, &headers);
    if !origin_allowed(&headers, own.as_ref(), &dir, door.as_ref()) {
        socket::refusal(Refusal::Origin);
        tracing::info!("chat websocket refused: foreign origin");
        return Problem::new(
            StatusCode::FORBIDDEN,
            "origin",
            "This chat cannot open on this page",
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let address = client_address(peer.ip(), &headers, &app.settings.trusted_proxies);
    let tasks = app.tasks.clone();
    // Small buffers: thousands of mostly idle sockets per instance, and a
    // frame is at most one 4,000-character message (tungstenite's defaults
    // are 128 KiB of read buffer per socket).
    upgrade
        .max_message_size(64 * 1024)
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |ws| async move {
            tasks
                .track_future(socket::serve(app, ws, door, address))
                .await;
        })
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
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap()
    }

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        h
    }

    #[test]
    fn origins_the_chat_itself_and_the_doors_listed_ones_only() {
        let dir = dir();
        let own = origin_of("https://chat.example.org");
        let eastside = door(&dir, Some("eastside-clinic"));
        let hospital = door(&dir, Some("county-hospital"));
        assert!(eastside.is_some() && hospital.is_some());
        let ok = |h: &HeaderMap, d: Option<&PartnerId>| origin_allowed(h, own.as_ref(), &dir, d);
        assert!(ok(&HeaderMap::new(), None), "not a browser page");
        assert!(ok(&with_origin("https://chat.example.org"), None));
        assert!(ok(
            &with_origin("https://chat.example.org"),
            hospital.as_ref()
        ));
        assert!(
            !ok(&with_origin("http://chat.example.org"), None),
            "scheme counts"
        );
        assert!(ok(&with_origin("http://localhost:8000"), eastside.as_ref()));
        assert!(!ok(
            &with_origin("http://localhost:8000"),
            hospital.as_ref()
        ));
        assert!(!ok(&with_origin("http://localhost:8000"), None));
        assert!(!ok(&with_origin("null"), None));
        assert!(!ok(&with_origin("not a url"), eastside.as_ref()));
        assert_eq!(
            frame_ancestors(&dir, eastside.as_ref()),
            "'self' http://localhost:8000"
        );
        assert_eq!(frame_ancestors(&dir, hospital.as_ref()), "'self'");
        assert_eq!(door(&dir, Some("Eastside Clinic")), None);
        assert_eq!(door(&dir, Some("no-such-partner")), None);
        assert_eq!(door(&dir, None), None);
    }

    #[test]
    fn the_client_address_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.1"),
        );
        let peer: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(client_address(peer, &h, &[proxy]), peer, "not a proxy");
        assert_eq!(
            client_address(proxy, &h, &[proxy]),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_address(proxy, &bad, &[proxy]), proxy);
    }

    #[test]
    fn attributes_are_escaped() {
        assert_eq!(attr(r#"a"<b>&"#), "a&quot;&lt;b&gt;&amp;");
    }
}
