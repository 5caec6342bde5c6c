//! The chat service alone against a real nats-server, over real HTTP and
//! websockets: the error paths of a session (no hello, a bad frame, too many
//! new sessions from one address, the line's store not answering), what the
//! page and the embed script are served with, and the storage of a session
//! (a keyed hash, never the token).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nwd_chat::Config;
use nwd_proto::chat::{ClientFrame, ReadAnswer, ReadRequest, Refusal, ServerFrame};
use nwd_proto::router::LineStatus;
use nwd_proto::streams::buckets;
use nwd_runtime::bus::NatsArgs;
use nwd_runtime::service::Secret;
use nwd_testkit::NatsServer;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-chat-token-key-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Chat {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Chat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config(nats: &NatsServer, addr: SocketAddr) -> Config {
    let mut nats_args = NatsArgs::local(nats.url_for("chat"));
    nats_args.ack_timeout_ms = 500;
    Config {
        nats: nats_args,
        addr,
        directory: nwd_runtime::directory::demo_path(),
        token_key: Secret::new(KEY),
        public_url: None,
        session_ttl_secs: 3600,
        session_max_secs: 86_400,
        messages_per_minute: 30.try_into().unwrap(),
        sessions_per_address_per_minute: 2.try_into().unwrap(),
        trusted_proxies: Vec::new(),
        quick_exit_url: "https://example.org/weather".parse().unwrap(),
    }
}

async fn start(nats: &NatsServer) -> Chat {
    start_with(nats, |_| {}).await
}

async fn start_with(nats: &NatsServer, adjust: impl FnOnce(&mut Config)) -> Chat {
    let listener = nwd_testkit::listener().await;
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let mut config = config(nats, addr);
    adjust(&mut config);
    tokio::spawn(nwd_chat::run(config, listener, stop.clone()));
    nwd_testkit::wait_ready(addr).await;
    Chat { addr, stop }
}

async fn open(chat: &Chat) -> Ws {
    let mut req = format!("ws://{}/ws", chat.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{}", chat.addr).parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn send(ws: &mut Ws, frame: &ClientFrame) {
    ws.send(WsMessage::text(serde_json::to_string(frame).unwrap()))
        .await
        .unwrap();
}

/// The next frame, wait estimates aside (they come whenever the person
/// waits; [`any_next`] sees them).
async fn next(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match any_next(ws).await {
            Some(ServerFrame::WaitEstimate { .. }) => {}
            other => return other,
        }
    }
}

async fn any_next(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
        {
            Some(Ok(WsMessage::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// A new session: its token and id (the welcome read).
async fn new_session(chat: &Chat) -> (Ws, String, nwd_proto::ChatSessionId) {
    let mut ws = open(chat).await;
    send(&mut ws, &hello()).await;
    let Some(ServerFrame::Session { token, session, .. }) = next(&mut ws).await else {
        panic!("no session")
    };
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Welcome { read_upto: 0, .. })
    ));
    (ws, token, session)
}

async fn say(ws: &mut Ws, seq: u64) {
    send(
        ws,
        &ClientFrame::Message {
            seq,
            text: format!("message {seq}"),
            safe_now: None,
        },
    )
    .await;
    assert_eq!(next(ws).await, Some(ServerFrame::Ack { seq }));
}

fn hello() -> ClientFrame {
    ClientFrame::Hello {
        token: None,
        last_seen: 0,
    }
}

#[tokio::test]
async fn a_first_frame_that_is_not_hello_is_refused_and_the_socket_closed() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let mut ws = open(&chat).await;
    send(
        &mut ws,
        &ClientFrame::Message {
            seq: 1,
            text: "hi".into(),
            safe_now: None,
        },
    )
    .await;
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Refused {
            reason: Refusal::BadFrame,
            ..
        })
    ));
    assert_eq!(next(&mut ws).await, None, "closed");

    // Garbage inside a session: refused with words, the session goes on.
    let mut ws = open(&chat).await;
    send(&mut ws, &hello()).await;
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Session { .. })
    ));
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Welcome { .. })
    ));
    ws.send(WsMessage::text("{not json")).await.unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Refused {
            reason: Refusal::BadFrame,
            ..
        })
    ));
    for bad in [
        ClientFrame::Message {
            seq: 0,
            text: "zero".into(),
            safe_now: None,
        },
        ClientFrame::Message {
            seq: 1,
            text: "   ".into(),
            safe_now: None,
        },
    ] {
        send(&mut ws, &bad).await;
        assert!(
            matches!(
                next(&mut ws).await,
                Some(ServerFrame::Refused {
                    reason: Refusal::BadFrame,
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    send(
        &mut ws,
        &ClientFrame::Message {
            seq: 1,
            text: "still here".into(),
            safe_now: None,
        },
    )
    .await;
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Ack { seq: 1 }));
}

#[tokio::test]
async fn new_sessions_from_one_address_are_limited_with_words() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    for _ in 0..2 {
        let mut ws = open(&chat).await;
        send(&mut ws, &hello()).await;
        assert!(matches!(
            next(&mut ws).await,
            Some(ServerFrame::Session { .. })
        ));
    }
    let mut ws = open(&chat).await;
    send(&mut ws, &hello()).await;
    match next(&mut ws).await {
        Some(ServerFrame::Refused {
            reason: Refusal::TooManySessions,
            text,
            ..
        }) => assert!(text.contains("wait a minute"), "{text}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_token_is_stored_only_as_a_keyed_hash() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let mut ws = open(&chat).await;
    send(&mut ws, &hello()).await;
    let Some(ServerFrame::Session { token, session, .. }) = next(&mut ws).await else {
        panic!("no session")
    };
    assert!(token.len() >= 43, "256 bits");
    let js = async_nats::jetstream::new(nats.client().await);
    let store = js.get_key_value(buckets::CHAT_SESSIONS).await.unwrap();
    let mut keys = store.keys().await.unwrap();
    let key = keys.next().await.unwrap().unwrap();
    assert!(!key.contains(&token));
    let value = store.get(&key).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&value);
    assert!(!text.contains(&token));
    assert!(text.contains(&session.to_string()));
}

#[tokio::test]
async fn a_message_the_store_did_not_take_is_resent_and_stored_even_after_a_later_one_was() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let mut ws = open(&chat).await;
    send(&mut ws, &hello()).await;
    let Some(ServerFrame::Session { token, .. }) = next(&mut ws).await else {
        panic!("no session")
    };
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Welcome { .. })
    ));
    let message = |seq: u64| ClientFrame::Message {
        seq,
        text: format!("message {seq}"),
        safe_now: None,
    };
    send(&mut ws, &message(1)).await;
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Ack { seq: 1 }));
    // The stream stops taking chat messages: the publish gets no ack.
    let js = async_nats::jetstream::new(nats.client().await);
    let mut inbound = js.get_stream(nwd_proto::streams::INBOUND).await.unwrap();
    let mut cfg = inbound.info().await.unwrap().config.clone();
    let subjects_before = cfg.subjects.clone();
    cfg.subjects = vec!["nwd.v1.inbound.sms".into()];
    js.update_stream(cfg.clone()).await.unwrap();
    send(&mut ws, &message(2)).await;
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerFrame::Refused {
            reason: Refusal::Unavailable,
            seq: Some(2),
            ..
        })
    ));
    cfg.subjects = subjects_before;
    js.update_stream(cfg).await.unwrap();
    // A later message is stored before the page resends the refused one.
    send(&mut ws, &message(3)).await;
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Ack { seq: 3 }));
    drop(ws);

    // After a reconnect the welcome names the gap, and the resend is stored.
    let mut ws = open(&chat).await;
    send(
        &mut ws,
        &ClientFrame::Hello {
            token: Some(token),
            last_seen: 0,
        },
    )
    .await;
    match next(&mut ws).await {
        Some(ServerFrame::Welcome {
            stored, stored_seq, ..
        }) => {
            assert_eq!(stored, [1, 3]);
            assert_eq!(stored_seq, 3);
        }
        other => panic!("no welcome: {other:?}"),
    }
    send(&mut ws, &message(2)).await;
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Ack { seq: 2 }));
    assert_eq!(inbound.info().await.unwrap().state.messages, 3, "none lost");
    send(&mut ws, &message(3)).await;
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Ack { seq: 3 }));
    assert_eq!(
        inbound.info().await.unwrap().state.messages,
        3,
        "none doubled"
    );
}

#[tokio::test]
async fn the_page_and_the_embed_script_are_served_locally_with_safe_headers() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{}{path}", chat.addr)).send();
    let page = get("/?partner=county-hospital").await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    assert!(
        !csp.contains("localhost:8000"),
        "another partner's origin: {csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("data-partner=\"county-hospital\""));
    assert!(html.contains("data-quick-exit=\"https://example.org/weather\""));
    for remote in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(remote),
            "everything is served locally: {remote}"
        );
    }
    // An unknown partner is no door (the line's own page), never an error.
    let unknown = get("/?partner=Not%20A%20Partner").await.unwrap();
    assert_eq!(unknown.status(), 200);
    assert!(unknown.text().await.unwrap().contains("data-partner=\"\""));
    for (path, kind) in [
        ("/chat.js", "text/javascript"),
        ("/chat.css", "text/css"),
        ("/embed.js?partner=eastside-clinic", "text/javascript"),
        ("/demo", "text/html"),
    ] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
    }
    let js = get("/chat.js").await.unwrap().text().await.unwrap();
    assert!(
        !js.contains("localStorage.setItem"),
        "nothing in localStorage"
    );
    assert!(js.contains("location.replace"));
    assert!(!js.contains("Notification"), "no notifications");
    // Not a websocket request: refused by axum, not a 500.
    assert_eq!(get("/ws").await.unwrap().status().as_u16() / 100, 4);
}

/// The dashboard's read request for `session` (sent on `subject`).
async fn read_request(
    dashboard: &async_nats::Client,
    subject: String,
    session: nwd_proto::ChatSessionId,
    upto: u64,
) -> ReadAnswer {
    let body = nwd_proto::Envelope::new(ReadRequest { session, upto }).to_bytes();
    let answer = tokio::time::timeout(WAIT, dashboard.request(subject, body.into()))
        .await
        .expect("an answer in time")
        .expect("an answer");
    nwd_proto::Envelope::<ReadAnswer>::from_bytes(&answer.payload)
        .unwrap()
        .data
}

#[tokio::test]
async fn a_read_mark_is_kept_only_raised_told_to_the_socket_and_given_back_in_the_welcome() {
    nwd_runtime::telemetry::metrics_handle();
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let (mut ws, token, session) = new_session(&chat).await;
    for seq in 1..=3 {
        say(&mut ws, seq).await;
    }
    let dashboard = nats.client_as("dashboard").await;
    let subject = nwd_proto::subjects::chat_read(&session);
    assert_eq!(
        read_request(&dashboard, subject.clone(), session, 2).await,
        ReadAnswer::Kept { upto: 2 }
    );
    assert_eq!(next(&mut ws).await, Some(ServerFrame::Seen { upto: 2 }));
    // A lower mark (an older screen) changes nothing and is not told.
    assert_eq!(
        read_request(&dashboard, subject.clone(), session, 1).await,
        ReadAnswer::Kept { upto: 2 }
    );
    // A request whose body names another session than its subject is refused.
    let other = nwd_proto::ChatSessionId::new();
    assert!(matches!(
        read_request(&dashboard, subject.clone(), other, 9).await,
        ReadAnswer::Failed { .. }
    ));
    let js = async_nats::jetstream::new(nats.client().await);
    let store = js.get_key_value(buckets::CHAT_SESSIONS).await.unwrap();
    assert!(
        store
            .get(nwd_proto::wire::key::chat_read_mark(&other))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        read_request(&dashboard, subject, session, 3).await,
        ReadAnswer::Kept { upto: 3 }
    );
    assert_eq!(
        next(&mut ws).await,
        Some(ServerFrame::Seen { upto: 3 }),
        "the lower mark was never told"
    );
    drop(ws);

    // The page comes back: the kept mark is in its welcome.
    let mut ws = open(&chat).await;
    send(
        &mut ws,
        &ClientFrame::Hello {
            token: Some(token),
            last_seen: 0,
        },
    )
    .await;
    match next(&mut ws).await {
        Some(ServerFrame::Welcome { read_upto, .. }) => assert_eq!(read_upto, 3),
        other => panic!("no welcome: {other:?}"),
    }
    let kept: nwd_proto::chat::ReadMark = serde_json::from_slice(
        &store
            .get(nwd_proto::wire::key::chat_read_mark(&session))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(kept.upto, 3);
    let metrics = reqwest::get(format!("http://{}/metrics", chat.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for counted in [
        "nwd_chat_read_marks_total",
        "nwd_chat_read_requests_total{service=\"chat\",outcome=\"malformed\"}",
    ] {
        assert!(metrics.contains(counted), "{counted}: {metrics}");
    }
}

fn status(waiting: u32, typical_wait_secs: Option<u64>) -> LineStatus {
    LineStatus {
        waiting: vec![
            (nwd_proto::RiskLevel::Low, waiting.saturating_sub(1)),
            (nwd_proto::RiskLevel::High, waiting.min(1)),
        ],
        counsellors_available: 1,
        free_seats: 0,
        typical_wait_secs,
        at: time::OffsetDateTime::now_utc(),
    }
}

/// The next wait estimate on `ws`, the router publishing `status` until
/// then (a chat that just started may not follow the subject yet).
async fn estimate_while_publishing(
    ws: &mut Ws,
    router: &async_nats::Client,
    status: LineStatus,
) -> ServerFrame {
    let router = router.clone();
    let publisher = tokio::spawn(async move {
        loop {
            let body = nwd_proto::Envelope::new(status.clone()).to_bytes();
            let _ = router
                .publish(nwd_proto::subjects::line_status(), body.into())
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let frame = loop {
        match any_next(ws).await {
            Some(f @ ServerFrame::WaitEstimate { .. }) => break f,
            Some(_) => {}
            None => panic!("the socket closed"),
        }
    };
    publisher.abort();
    frame
}

#[tokio::test]
async fn a_waiting_person_is_told_the_line_status_as_it_changes_and_unknown_figures_as_unknown() {
    nwd_runtime::telemetry::metrics_handle();
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let chat = start(&nats).await;
    let (mut ws, _token, _session) = new_session(&chat).await;
    // Nothing written yet: not waiting, nothing told. The first message
    // makes the person wait; no figures are known yet.
    send(
        &mut ws,
        &ClientFrame::Message {
            seq: 1,
            text: "is anyone there".into(),
            safe_now: None,
        },
    )
    .await;
    assert_eq!(any_next(&mut ws).await, Some(ServerFrame::Ack { seq: 1 }));
    assert_eq!(
        any_next(&mut ws).await,
        Some(ServerFrame::WaitEstimate {
            waiting: None,
            typical_wait_secs: None
        })
    );
    let router = nats.client_as("router").await;
    assert_eq!(
        estimate_while_publishing(&mut ws, &router, status(3, Some(240))).await,
        ServerFrame::WaitEstimate {
            waiting: Some(3),
            typical_wait_secs: Some(240)
        }
    );
    assert_eq!(
        estimate_while_publishing(&mut ws, &router, status(5, Some(300))).await,
        ServerFrame::WaitEstimate {
            waiting: Some(5),
            typical_wait_secs: Some(300)
        }
    );
    // A session that wrote nothing is told nothing.
    let (mut quiet, _, _) = new_session(&chat).await;
    send(&mut quiet, &ClientFrame::Ack { seq: 0 }).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), quiet.next())
            .await
            .is_err(),
        "no estimate before a message"
    );
    // The metric counts what was told.
    let metrics = reqwest::get(format!("http://{}/metrics", chat.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nwd_chat_wait_estimates_total"),
        "{metrics}"
    );
}

async fn resume(chat: &Chat, token: &str) -> Option<ServerFrame> {
    let mut ws = open(chat).await;
    send(
        &mut ws,
        &ClientFrame::Hello {
            token: Some(token.to_owned()),
            last_seen: 0,
        },
    )
    .await;
    next(&mut ws).await
}

#[tokio::test]
async fn activity_keeps_a_token_alive_up_to_its_cap_and_an_expired_token_stays_refused() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    // Two seconds after the last activity, four at most from the start.
    let chat = start_with(&nats, |c| {
        c.session_ttl_secs = 2;
        c.session_max_secs = 4;
    })
    .await;
    let started = tokio::time::Instant::now();
    let (mut ws, token, _) = new_session(&chat).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    say(&mut ws, 1).await;
    drop(ws);
    // Past the first two seconds: the message moved the expiry on.
    tokio::time::sleep_until(started + Duration::from_millis(2500)).await;
    assert!(
        matches!(
            resume(&chat, &token).await,
            Some(ServerFrame::Welcome { .. })
        ),
        "a message extends the token"
    );
    // Past the cap, however active: refused, and it stays refused.
    tokio::time::sleep_until(started + Duration::from_millis(4300)).await;
    let refused = |f: Option<ServerFrame>| {
        matches!(
            f,
            Some(ServerFrame::Refused {
                reason: Refusal::Expired | Refusal::UnknownToken,
                ..
            })
        )
    };
    assert!(refused(resume(&chat, &token).await), "the cap holds");
    assert!(
        refused(resume(&chat, &token).await),
        "an expired token stays refused"
    );
}
