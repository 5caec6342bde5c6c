//! Logins and sessions against a real nats-server, over real HTTP and
//! websockets: the login throttle, server-side sessions that logout, expiry
//! and removal from the directory end (closing their open sockets), the
//! `Secure` cookie and the websocket's origin check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use nwd_dashboard::{Config, CookieSecure};
use nwd_proto::dashboard::{ClientMsg, ServerMsg};
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::streams::buckets;
use nwd_proto::{ContactId, Envelope, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::service::Secret;
use nwd_testkit::NatsServer;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-session-key-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(10);
/// The bound for a real login while a flood goes on (the test runs
/// alone: see `.config/nextest.toml`).
const REAL_LOGIN_BOUND: Duration = Duration::from_millis(200);

fn config(nats_url: String, addr: SocketAddr) -> Config {
    Config {
        nats: NatsArgs::local(nats_url),
        addr,
        directory: nwd_runtime::directory::demo_path(),
        session_key: Secret::new(KEY),
        public_url: None,
        cookie_secure: CookieSecure::Auto,
        session_ttl_secs: 3600,
        login_per_username_per_minute: 5.try_into().unwrap(),
        login_per_address_per_minute: 30.try_into().unwrap(),
        trusted_proxies: Vec::new(),
        heartbeat_ms: 100,
        command_timeout_ms: 1000,
        idle_timeout_ms: 30_000,
    }
}

/// A dashboard on its own port; stopped on drop.
struct Dashboard {
    addr: SocketAddr,
    stop: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Dashboard {
    async fn start(nats: &NatsServer, adjust: impl FnOnce(&mut Config)) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let mut cfg = config(nats.url_for("dashboard"), addr);
        adjust(&mut cfg);
        let stop = CancellationToken::new();
        tokio::spawn(nwd_dashboard::run(cfg, listener, stop.clone()));
        nwd_testkit::wait_ready(addr).await;
        Self {
            addr,
            stop,
            http: client_from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn login_from(
        &self,
        http: &reqwest::Client,
        user: &str,
        password: &str,
    ) -> reqwest::Response {
        http.post(self.url("/login"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.login_from(&self.http, user, password).await
    }

    /// The `Cookie` header value of a fresh login.
    async fn cookie(&self, user: &str) -> String {
        let res = self.login(user, &format!("{user}-demo")).await;
        assert_eq!(res.status(), 303);
        cookie_of(&res)
    }

    async fn me(&self, cookie: &str) -> u16 {
        self.http
            .get(self.url("/api/me"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn socket(&self, cookie: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            self.addr
        ))
        .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        for (name, value) in headers {
            let name: tungstenite::http::HeaderName = name.parse().unwrap();
            req.headers_mut().insert(name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => {
                let mut ws = Ws(ws);
                ws.hello().await;
                Ok(ws)
            }
            Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(e) => panic!("unexpected websocket error {e}"),
        }
    }

    async fn logout(&self, cookie: &str) -> reqwest::Response {
        self.http
            .post(self.url("/logout"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }
}

/// An HTTP client whose connections come from `local` (any 127.x address
/// reaches the loopback on Linux): another client address.
fn client_from(local: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(local)
        .build()
        .unwrap()
}

fn cookie_of(res: &reqwest::Response) -> String {
    let set = res.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Ws(Socket);

impl Ws {
    /// The next text message; `None` once the dashboard closed the socket.
    async fn next_msg(&mut self, within: Duration) -> Option<ServerMsg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .expect("the socket stayed silent and open");
            match frame {
                None | Some(Ok(WsMessage::Close(_))) | Some(Err(_)) => return None,
                Some(Ok(WsMessage::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn hello(&mut self) {
        loop {
            match self.next_msg(WAIT).await {
                Some(ServerMsg::Hello { .. }) => return,
                Some(_) => {}
                None => panic!("closed before hello"),
            }
        }
    }

    /// Waits until the dashboard closes the socket; returns how long it took.
    async fn closed_within(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        while self.next_msg(within).await.is_some() {}
        started.elapsed()
    }

    /// Proves the socket still answers.
    async fn answers(&mut self) {
        let ping = serde_json::to_string(&ClientMsg::Ping).unwrap();
        self.0.send(WsMessage::Text(ping.into())).await.unwrap();
        loop {
            match self.next_msg(WAIT).await {
                Some(ServerMsg::Pong) => return,
                Some(_) => {}
                None => panic!("the socket was closed"),
            }
        }
    }
}

async fn problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    res.json().await.unwrap()
}

// ------------------------------------------------------------------ login throttle

#[tokio::test]
async fn a_login_flood_gets_429s_and_a_real_login_during_it_stays_fast() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Arc::new(Dashboard::start(&nats, |_| {}).await);
    let refused = Arc::new(Notify::new());

    // A quiet login first, for scale: on a loaded machine where one password
    // check alone takes long, the bound is twice a quiet login instead.
    let quiet = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let started = Instant::now();
    assert_eq!(
        d.login_from(&quiet, "chloe", "chloe-demo").await.status(),
        303
    );
    let quiet_login = started.elapsed();
    let bound = REAL_LOGIN_BOUND.max(quiet_login * 2);

    // 100 wrong passwords for one username, in parallel, from one address.
    let flood: Vec<_> = (0..100)
        .map(|i| {
            let (d, refused) = (d.clone(), refused.clone());
            tokio::spawn(async move {
                let res = d.login("ana", &format!("guess-{i}")).await;
                let status = res.status().as_u16();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                if status == 429 {
                    refused.notify_one();
                    let body = problem(res, 429).await;
                    assert_eq!(
                        body["type"],
                        "https://nowrongdoor.org/problems/too-many-logins"
                    );
                }
                (status, retry_after)
            })
        })
        .collect();

    // While it goes on (the first refusal is back, guesses are still being
    // checked), another counsellor logs in from elsewhere.
    tokio::time::timeout(WAIT, refused.notified())
        .await
        .expect("no attempt of the flood was refused with 429");
    let elsewhere = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let started = Instant::now();
    let res = d.login_from(&elsewhere, "ben", "ben-demo").await;
    let took = started.elapsed();
    assert_eq!(res.status(), 303);
    eprintln!("a real login during the flood took {took:?} (quiet: {quiet_login:?})");
    assert!(
        took < bound,
        "a real login during the flood took {took:?} (quiet: {quiet_login:?})"
    );

    let mut statuses = Vec::new();
    for task in flood {
        let (status, retry_after) = task.await.unwrap();
        match status {
            429 => assert!(
                retry_after.is_some_and(|s| s >= 1),
                "429 without Retry-After"
            ),
            401 => {}
            other => panic!("unexpected status {other}"),
        }
        statuses.push(status);
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= nwd_dashboard::throttle::USERNAME_BURST as usize,
        "{checked} guesses reached the password check"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        100 - checked
    );

    // Sequential guesses meet the per-username rate and back-off soon.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let res = d.login("ana", "another-guess").await;
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(res.status(), 401);
        assert!(
            attempts <= nwd_dashboard::throttle::USERNAME_BURST,
            "never throttled"
        );
    }
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    // Untrusted: every header comes from the same peer, which is throttled.
    let d = Dashboard::start(&nats, |_| {}).await;
    let mut statuses = Vec::new();
    for i in 0..=nwd_dashboard::throttle::ADDRESS_BURST {
        let res = d
            .http
            .post(d.url("/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .form(&[("username", format!("user{i}")), ("password", "x".into())])
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Trusted proxy: each forwarded address has its own budget.
    let d = Dashboard::start(&nats, |c| {
        c.trusted_proxies = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    })
    .await;
    for i in 0..=nwd_dashboard::throttle::ADDRESS_BURST {
        let res = d
            .http
            .post(d.url("/login"))
            .header("x-forwarded-for", format!("198.51.100.7, 203.0.113.{i}"))
            .form(&[("username", format!("user{i}")), ("password", "x".into())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
}

// ------------------------------------------------------------------ sessions

#[tokio::test]
async fn logout_ends_the_session_for_http_and_websocket_and_closes_its_socket() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Dashboard::start(&nats, |_| {}).await;
    let cookie = d.cookie("ana").await;
    let other_tab = d.cookie("ana").await;
    let mut ws = d.socket(&cookie, &[]).await.unwrap();
    let mut other_ws = d.socket(&other_tab, &[]).await.unwrap();

    let res = d.logout(&cookie).await;
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("nwd_session=;")
    );
    ws.closed_within(WAIT).await;
    assert_eq!(d.me(&cookie).await, 401);
    assert_eq!(d.socket(&cookie, &[]).await.err(), Some(401));

    // Only that session ended: another login of the same counsellor goes on.
    other_ws.answers().await;
    assert_eq!(d.me(&other_tab).await, 200);
}

#[tokio::test]
async fn a_logout_on_another_dashboard_closes_the_socket_here() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let here = Dashboard::start(&nats, |_| {}).await;
    let there = Dashboard::start(&nats, |_| {}).await;
    let cookie = here.cookie("ben").await;
    let mut ws = here.socket(&cookie, &[]).await.unwrap();
    assert_eq!(there.me(&cookie).await, 200, "sessions are shared");

    assert_eq!(there.logout(&cookie).await.status(), 303);
    let took = ws.closed_within(WAIT).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert_eq!(here.me(&cookie).await, 401);
}

#[tokio::test]
async fn a_counsellor_removed_from_the_directory_loses_the_socket() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Dashboard::start(&nats, |_| {}).await;
    let cookie = d.cookie("diego").await;
    let mut ws = d.socket(&cookie, &[]).await.unwrap();
    let stays = d.cookie("ben").await;
    let mut stays_ws = d.socket(&stays, &[]).await.unwrap();

    let args = NatsArgs::local(nats.url());
    let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
    let store = js.get_key_value(buckets::DIRECTORY).await.unwrap();
    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    dir.staff.retain(|s| s.id.as_str() != "diego");
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();

    let took = ws.closed_within(WAIT).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert_eq!(d.me(&cookie).await, 401);
    assert_eq!(d.socket(&cookie, &[]).await.err(), Some(401));
    stays_ws.answers().await;
}

#[tokio::test]
async fn an_expired_session_closes_its_socket() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Dashboard::start(&nats, |c| c.session_ttl_secs = 2).await;
    let res = d.login("ana", "ana-demo").await;
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=2"),
        "the cookie lasts as long as the session"
    );
    let cookie = cookie_of(&res);
    let logged_in = Instant::now();
    let mut ws = d.socket(&cookie, &[]).await.unwrap();
    ws.closed_within(WAIT).await;
    let lasted = logged_in.elapsed();
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(5),
        "the socket lasted {lasted:?} of a 2 s session"
    );
    assert_eq!(d.me(&cookie).await, 401);
}

// ------------------------------------------------------------------ commands

/// Every router command names the session's counsellor, whatever the browser
/// writes into the message (a guard: no client message has a counsellor field,
/// and one slipped in is ignored).
#[tokio::test]
async fn router_commands_name_the_sessions_counsellor_not_one_the_browser_sends() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Dashboard::start(&nats, |_| {}).await;
    let client = nats.client().await;
    let mut router = client
        .queue_subscribe(
            subjects::router_command(),
            subjects::ROUTER_QUEUE_GROUP.into(),
        )
        .await
        .unwrap();
    nwd_dashboard::round_trip(&client).await.unwrap();
    let cookie = d.cookie("ana").await;
    let mut ws = d.socket(&cookie, &[]).await.unwrap();
    let contact = ContactId::new();
    let forged = [
        serde_json::json!({"type": "accept", "contact_id": contact, "counsellor": "sam"}),
        serde_json::json!({"type": "decline", "contact_id": contact, "counsellor": "sam"}),
        serde_json::json!({"type": "resolve", "contact_id": contact, "counsellor": "sam",
            "disposition": null}),
        serde_json::json!({"type": "medical_emergency", "contact_id": contact,
            "counsellor": "sam", "partner": "county-hospital", "nature": "overdose"}),
        serde_json::json!({"type": "outreach_outcome", "contact_id": contact,
            "counsellor": "sam", "outcome": "reached"}),
        serde_json::json!({"type": "transfer", "contact_id": contact, "counsellor": "sam",
            "target": {"kind": "counsellor", "id": "ben"}, "mode": "cold"}),
        serde_json::json!({"type": "cancel_transfer", "contact_id": contact, "counsellor": "sam"}),
        serde_json::json!({"type": "claim", "contact_id": contact, "counsellor": "sam"}),
        serde_json::json!({"type": "involve_trusted_contact", "contact_id": contact,
            "counsellor": "sam", "trusted": "maria-sister"}),
    ];
    for msg in forged {
        ws.0.send(WsMessage::Text(msg.to_string().into()))
            .await
            .unwrap();
        let cmd = tokio::time::timeout(WAIT, router.next())
            .await
            .expect("no router command")
            .unwrap();
        let who = Envelope::<RouterCommand>::from_bytes(&cmd.payload)
            .unwrap()
            .data
            .counsellor()
            .clone();
        assert_eq!(who.as_str(), "ana", "{msg}");
        let answer = Envelope::new(RouterReply::Refused {
            reason: "test".into(),
        });
        client
            .publish(cmd.reply.unwrap(), answer.to_bytes().into())
            .await
            .unwrap();
    }
}

// ------------------------------------------------------------------ cookie and origin

#[tokio::test]
async fn the_cookie_is_secure_with_an_https_public_url_or_when_forced() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let set_cookie = |d: &Dashboard| {
        let (http, url) = (d.http.clone(), d.url("/login"));
        async move {
            let res = http
                .post(url)
                .form(&[("username", "ana"), ("password", "ana-demo")])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 303);
            res.headers()["set-cookie"].to_str().unwrap().to_owned()
        }
    };
    let https = Dashboard::start(&nats, |c| {
        c.public_url = Some("https://dashboard.example.org".parse().unwrap());
    })
    .await;
    let set = set_cookie(&https).await;
    assert!(set.contains("; Secure"), "{set}");
    let logout = https.logout("").await;
    assert!(
        logout.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let plain = Dashboard::start(&nats, |_| {}).await;
    assert!(!set_cookie(&plain).await.contains("Secure"));
    let forced = Dashboard::start(&nats, |c| c.cookie_secure = CookieSecure::Always).await;
    assert!(set_cookie(&forced).await.contains("; Secure"));
    let never = Dashboard::start(&nats, |c| {
        c.public_url = Some("https://dashboard.example.org".parse().unwrap());
        c.cookie_secure = CookieSecure::Never;
    })
    .await;
    assert!(!set_cookie(&never).await.contains("Secure"));
}

#[tokio::test]
async fn the_websocket_opens_only_from_the_public_urls_scheme_host_and_port() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let d = Dashboard::start(&nats, |c| {
        c.public_url = Some(format!("http://{}", c.addr).parse().unwrap());
    })
    .await;
    let port = d.addr.port();
    let cookie = d.cookie("ana").await;

    let own = format!("http://127.0.0.1:{port}");
    d.socket(&cookie, &[("origin", &own)]).await.unwrap();
    // A page on another port of the same host (another app there, or a
    // rebinding attacker who also sets the Host header) is refused.
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    let refused = d
        .socket(
            &cookie,
            &[
                ("origin", &format!("http://{other_port}")),
                ("host", &other_port),
            ],
        )
        .await;
    assert_eq!(refused.err(), Some(403));
    for origin in [
        format!("https://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        "http://127.0.0.1".to_owned(),
        "null".to_owned(),
    ] {
        assert_eq!(
            d.socket(&cookie, &[("origin", &origin)]).await.err(),
            Some(403),
            "{origin}"
        );
    }
}
