//! The dashboard against a real nats-server, over real HTTP and websockets.
//! The tests play the router: they answer `router.command` requests, write
//! contact records into the `contacts` bucket and publish triaged messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv::Store};
use futures::{SinkExt, StreamExt};
use nwd_dashboard::session::Sessions;
use nwd_dashboard::socket::{self, Inbound, Outbound};
use nwd_dashboard::{App, Config};
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{
    ClientMsg, DashboardPush, MessageView, PartnerOption, Presence, PresenceRecord, QueueEntry,
    QueueSnapshot, ReplyRecord, ServerMsg, Speaker, WithdrawReason,
};
use nwd_proto::events::{
    Author, Channel, ContactMessage, DeliveryStatus, MessageTriaged, OutboundSms, OutboundStatus,
};
use nwd_proto::ladder::{Escalation, LadderPolicy, StepOutcome, StepRecord};
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{
    Assessment, ClientReplyId, ContactId, CounsellorId, Envelope, Language, MessageId, OutboundId,
    PartnerId, Reason, RiskLevel, subjects, wire,
};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::escalation::Announcer;
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::service::Secret;
use nwd_runtime::transcript;
use nwd_testkit::{NatsServer, eventually};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-session-key-0123456789abcdef0123456789";
const PATIENT: &str = "+15005550142";
const LINE: &str = "+15005550110";
const WAIT: Duration = Duration::from_secs(10);

struct Dashboard {
    nats: NatsServer,
    addr: SocketAddr,
    js: jetstream::Context,
    contacts: Store,
    presence: Store,
    stop: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config(nats_url: String, addr: SocketAddr) -> Config {
    Config {
        nats: NatsArgs::local(nats_url),
        addr,
        directory: nwd_runtime::directory::demo_path(),
        session_key: Secret::new(KEY),
        public_url: None,
        cookie_secure: nwd_dashboard::CookieSecure::Auto,
        session_ttl_secs: 3600,
        login_per_username_per_minute: 60.try_into().unwrap(),
        login_per_address_per_minute: 600.try_into().unwrap(),
        trusted_proxies: Vec::new(),
        heartbeat_ms: 100,
        command_timeout_ms: 1000,
        idle_timeout_ms: 30_000,
    }
}

fn c(s: &str) -> CounsellorId {
    CounsellorId::parse(s).unwrap()
}

impl Dashboard {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let nats = NatsServer::start().await;
        nats.set_up_bus().await;
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(nwd_dashboard::run(
            config(nats.url_for("dashboard"), addr),
            listener,
            stop.clone(),
        ));
        nwd_testkit::wait_ready(addr).await;
        let args = NatsArgs::local(nats.url());
        let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
        let contacts = js.get_key_value(buckets::CONTACTS).await.unwrap();
        let presence = js.get_key_value(buckets::PRESENCE).await.unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            nats,
            addr,
            js,
            contacts,
            presence,
            stop,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/login"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    /// The `Cookie` header value of a fresh login.
    async fn cookie(&self, user: &str) -> String {
        let res = self.login(user, &format!("{user}-demo")).await;
        assert_eq!(res.status(), 303);
        let set = res.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    async fn socket(&self, user: &str) -> Ws {
        let cookie = self.cookie(user).await;
        self.socket_with(&cookie).await.unwrap()
    }

    async fn socket_with(&self, cookie: &str) -> Result<Ws, tungstenite::Error> {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            self.addr
        ))
        .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws {
            ws,
            seen: Vec::new(),
        })
    }

    /// Publishes a person's triaged message and writes the contact record the
    /// router would have made, in the given state.
    async fn contact(&self, body: &str, state: impl FnOnce(&mut ContactRecord)) -> ContactRecord {
        let ev = triaged(ContactId::new(), body);
        self.publish_triaged(&ev).await;
        let mut rec = ContactRecord::open(&ev);
        state(&mut rec);
        self.put(&rec).await;
        rec
    }

    async fn publish_triaged(&self, ev: &MessageTriaged) {
        bus::publish(
            &self.js,
            subjects::contact_triaged(&ev.message.contact_id),
            &wire::msg_id::message_triaged(&ev.message.message_id),
            &Envelope::new(ev.clone()),
        )
        .await
        .unwrap();
    }

    async fn put(&self, rec: &ContactRecord) {
        let r = rec.clone();
        kv::cas(&self.contacts, &wire::key::contact(&rec.id), move |_| {
            Cas::Write(r.clone(), ())
        })
        .await
        .unwrap();
    }

    async fn presence_of(&self, who: &str) -> Option<PresenceRecord> {
        kv::get::<PresenceRecord>(&self.presence, who)
            .await
            .unwrap()
            .value
    }

    /// Replies sent for a contact (OUTBOUND, `outbound.sms.<id>`).
    async fn outbound(&self, contact: &ContactId) -> Vec<OutboundSms> {
        transcript::read_subjects(
            &self.js,
            streams::OUTBOUND,
            vec![subjects::outbound_sms(contact)],
        )
        .await
        .unwrap()
        .iter()
        .map(|m| {
            Envelope::<OutboundSms>::from_bytes(&m.payload)
                .unwrap()
                .data
        })
        .collect()
    }

    /// A delivery status of one of our messages, as the notifier publishes it.
    async fn publish_status(
        &self,
        contact: ContactId,
        outbound_id: OutboundId,
        status: DeliveryStatus,
    ) {
        let st = OutboundStatus {
            outbound_id,
            contact_id: contact,
            status,
            provider_sid: None,
            error_code: None,
            at: OffsetDateTime::now_utc(),
        };
        bus::publish(
            &self.js,
            subjects::outbound_status(&contact),
            &wire::msg_id::outbound_status(&outbound_id, status),
            &Envelope::new(st),
        )
        .await
        .unwrap();
    }

    /// A fake router answering every command with `reply`; returns the commands it saw.
    async fn fake_router(&self, reply: RouterReply) -> mpsc::UnboundedReceiver<RouterCommand> {
        let client = self.nats.client().await;
        let mut sub = client
            .queue_subscribe(
                subjects::router_command(),
                subjects::ROUTER_QUEUE_GROUP.into(),
            )
            .await
            .unwrap();
        nwd_dashboard::round_trip(&client).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let cmd = Envelope::<RouterCommand>::from_bytes(&msg.payload).unwrap();
                let _ = tx.send(cmd.data);
                if let Some(inbox) = msg.reply {
                    let answer = Envelope::new(reply.clone()).to_bytes();
                    client.publish(inbox, answer.into()).await.unwrap();
                }
            }
        });
        rx
    }
}

fn triaged(contact: ContactId, body: &str) -> MessageTriaged {
    MessageTriaged {
        message: ContactMessage {
            contact_id: contact,
            message_id: MessageId::new(),
            channel: Channel::Sms {
                patient: nwd_proto::Address::parse(PATIENT),
                line: nwd_proto::Address::parse(LINE),
            },
            door: Some(nwd_proto::PartnerId::parse("eastside-clinic").unwrap()),
            patient: None,
            body: body.to_owned(),
            received_at: OffsetDateTime::now_utc(),
            opens_contact: true,
            previous: None,
            quick_exit: false,
        },
        assessment: Assessment {
            level: RiskLevel::High,
            score: 0.8,
            reasons: vec![Reason {
                rule: "relapse.using-again".into(),
                label: "Using again".into(),
                level: RiskLevel::High,
                start: 0,
                end: 4,
            }],
            lang: Language::En,
            rulebook_version: "test".into(),
        },
    }
}

fn offered_to(who: &'static [&'static str]) -> impl FnOnce(&mut ContactRecord) {
    move |r| {
        let to: Vec<_> = who.iter().map(|w| c(w)).collect();
        r.offer(&to).unwrap();
    }
}

fn assigned_to(who: &'static str) -> impl FnOnce(&mut ContactRecord) {
    move |r| {
        r.offer(&[c(who)]).unwrap();
        r.accept(&c(who), OffsetDateTime::now_utc()).unwrap();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A browser's socket.
struct Ws {
    ws: Socket,
    seen: Vec<ServerMsg>,
}

impl Ws {
    async fn send(&mut self, msg: &ClientMsg) {
        self.send_text(&serde_json::to_string(msg).unwrap()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The first message (earlier unmatched ones first) for which `pick` is `Some`.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        if let Some(i) = self.seen.iter().position(|m| pick(m).is_some()) {
            return pick(&self.seen.remove(i)).unwrap();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("waited for {what}; got {:#?}", self.seen))
                .unwrap_or_else(|| panic!("socket closed waiting for {what}"))
                .unwrap();
            if let WsMessage::Text(t) = frame {
                let msg: ServerMsg = serde_json::from_str(&t).unwrap();
                if let Some(v) = pick(&msg) {
                    return v;
                }
                self.seen.push(msg);
            }
        }
    }

    async fn expect_error(&mut self, code: &str) -> String {
        self.expect(code, |m| match m {
            ServerMsg::Error { code: c, message } if c == code => Some(message.clone()),
            _ => None,
        })
        .await
    }

    /// Asserts nothing matching `pick` arrives within `window`.
    async fn expect_none(
        &mut self,
        window: Duration,
        what: &str,
        pick: impl Fn(&ServerMsg) -> bool,
    ) {
        assert!(!self.seen.iter().any(&pick), "already had {what}");
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let WsMessage::Text(t) = frame {
                let msg: ServerMsg = serde_json::from_str(&t).unwrap();
                assert!(!pick(&msg), "unexpected {what}: {msg:?}");
                self.seen.push(msg);
            }
        }
    }

    async fn hello(&mut self) -> ServerMsg {
        self.expect("hello", |m| {
            matches!(m, ServerMsg::Hello { .. }).then(|| m.clone())
        })
        .await
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

// ------------------------------------------------------------------ login

#[tokio::test]
async fn login_sets_an_http_only_session_cookie() {
    let d = Dashboard::start().await;
    let res = d.login("ana", "ana-demo").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("nwd_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    assert!(!set.contains("Secure"));
    let cookie = set.split(';').next().unwrap();
    let me: serde_json::Value = d
        .http
        .get(d.url("/api/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        serde_json::json!({"id": "ana", "name": "Ana García", "role": "counsellor"})
    );

    // The JSON variant, for the page's own login form.
    let res = d
        .http
        .post(d.url("/login"))
        .json(&serde_json::json!({"username": "sam", "password": "sam-demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("set-cookie"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"counsellor": "sam"}));

    // Logout clears the cookie.
    let res = d.http.post(d.url("/logout")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("nwd_session=;")
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let d = Dashboard::start().await;
    let wrong = problem(d.login("ana", "ben-demo").await, 401).await;
    let unknown = problem(d.login("zoe", "zoe-demo").await, 401).await;
    assert_eq!(wrong, unknown);
    assert_eq!(
        wrong["type"],
        "https://nowrongdoor.org/problems/bad-credentials"
    );
    let res = d
        .http
        .post(d.url("/login"))
        .json(&serde_json::json!({"username": "ana", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(res, 401).await, wrong);
}

#[tokio::test]
async fn malformed_and_oversized_logins_are_problems() {
    let d = Dashboard::start().await;
    let res = d
        .http
        .post(d.url("/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    let res = d
        .http
        .post(d.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=ana&password={}", "a".repeat(70 * 1024)))
        .send()
        .await
        .unwrap();
    problem(res, 413).await;
    problem(d.http.get(d.url("/nope")).send().await.unwrap(), 404).await;
    problem(d.http.get(d.url("/login")).send().await.unwrap(), 405).await;
}

#[tokio::test]
async fn the_websocket_and_me_need_a_valid_session() {
    let d = Dashboard::start().await;
    problem(d.http.get(d.url("/ws")).send().await.unwrap(), 401).await;
    problem(d.http.get(d.url("/api/me")).send().await.unwrap(), 401).await;

    let rejected = |r: Result<Ws, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the socket opened"),
    };
    assert_eq!(rejected(d.socket_with("other=1").await), 401);

    let good = d.cookie("ana").await;
    let last = good.chars().last().unwrap();
    let tampered = format!(
        "{}{}",
        &good[..good.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    assert_eq!(rejected(d.socket_with(&tampered).await), 401);
    let store = d.js.get_key_value(buckets::SESSIONS).await.unwrap();
    let sessions = Sessions::new(KEY.as_bytes(), time::Duration::hours(1)).unwrap();
    let expired = Sessions::new(KEY.as_bytes(), time::Duration::seconds(-1)).unwrap();
    let (expired, _) = expired
        .open(&store, &c("ana"), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(
        rejected(d.socket_with(&format!("nwd_session={expired}")).await),
        401
    );
    let (other_key, _) = Sessions::new(
        b"another-key-0123456789abcdef0123456789",
        time::Duration::hours(1),
    )
    .unwrap()
    .open(&store, &c("ana"), OffsetDateTime::now_utc())
    .await
    .unwrap();
    assert_eq!(
        rejected(d.socket_with(&format!("nwd_session={other_key}")).await),
        401
    );
    let res = d
        .http
        .get(d.url("/api/me"))
        .header("cookie", &tampered)
        .send()
        .await
        .unwrap();
    problem(res, 401).await;

    // A session opened by any dashboard process (same key, same bucket) is valid here.
    let (fresh, _) = sessions
        .open(&store, &c("ana"), OffsetDateTime::now_utc())
        .await
        .unwrap();
    let mut ws = d
        .socket_with(&format!("nwd_session={fresh}"))
        .await
        .unwrap();
    ws.hello().await;
}

// ------------------------------------------------------------------ presence

#[tokio::test]
async fn hello_presence_heartbeat_and_offline_when_the_last_socket_closes() {
    let d = Dashboard::start().await;
    let mut ws = d.socket("ana").await;
    let ServerMsg::Hello {
        counsellor,
        name,
        supervisor,
        presence,
        hospitals,
        capacity,
        shift_ends_at,
        snippets,
        colleagues,
        partners,
    } = ws.hello().await
    else {
        panic!("the first message is Hello");
    };
    assert_eq!(
        (counsellor, name.as_str(), supervisor, presence),
        (c("ana"), "Ana García", false, Presence::Offline)
    );
    assert_eq!((capacity, shift_ends_at), (3, None));
    // Medical personnel for a §2.51 disclosure: the hospitals only.
    assert_eq!(
        hospitals,
        vec![PartnerOption {
            id: PartnerId::parse("county-hospital").unwrap(),
            name: "County General Hospital ED".into(),
        }]
    );
    // Whom a conversation can be transferred to: everyone else, every partner.
    assert!(colleagues.iter().any(|s| s.id == c("ben")));
    assert!(colleagues.iter().all(|s| s.id != c("ana")));
    assert_eq!(partners.len(), 3);
    // Snippets in the languages she speaks (English and Spanish).
    let langs: std::collections::BTreeSet<Language> = snippets.iter().map(|s| s.lang).collect();
    assert_eq!(langs, [Language::En, Language::Es].into());
    let ben = d.socket("ben").await;
    let mut ben = ben;
    let ServerMsg::Hello { snippets, .. } = ben.hello().await else {
        panic!("the first message is Hello");
    };
    assert!(!snippets.is_empty());
    assert!(
        snippets.iter().all(|s| s.lang == Language::En),
        "Ben speaks English only"
    );
    drop(ben);
    ws.send(&ClientMsg::SetPresence {
        status: Presence::Available,
    })
    .await;
    ws.expect("presence", |m| {
        (*m == ServerMsg::Presence {
            status: Presence::Available,
        })
        .then_some(())
    })
    .await;
    let first = d.presence_of("ana").await.unwrap();
    assert_eq!(first.status, Presence::Available);
    assert_eq!(first.counsellor, c("ana"));

    // The heartbeat keeps the record fresh while the socket is open.
    eventually(WAIT, "a heartbeat", || async {
        let r = d.presence_of("ana").await?;
        (r.heartbeat_at > first.heartbeat_at && r.status == Presence::Available).then_some(())
    })
    .await;

    // A second tab shares the status; closing one keeps the counsellor present.
    let mut tab = d.socket("ana").await;
    match tab.hello().await {
        ServerMsg::Hello { presence, .. } => assert_eq!(presence, Presence::Available),
        _ => unreachable!(),
    }
    tab.ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.presence_of("ana").await.unwrap().status,
        Presence::Available
    );

    ws.ws.close(None).await.unwrap();
    eventually(WAIT, "offline", || async {
        (d.presence_of("ana").await?.status == Presence::Offline).then_some(())
    })
    .await;
}

// ------------------------------------------------------------------ pushes

#[tokio::test]
async fn a_router_push_reaches_only_its_counsellor() {
    let d = Dashboard::start().await;
    let mut ana = d.socket("ana").await;
    let mut ben = d.socket("ben").await;
    ana.hello().await;
    ben.hello().await;
    let contact_id = ContactId::new();
    let push = Envelope::new(DashboardPush {
        counsellor: c("ana"),
        msg: ServerMsg::OfferWithdrawn {
            contact_id,
            reason: WithdrawReason::Taken,
        },
    });
    let client = d.nats.client().await;
    client
        .publish(subjects::dashboard_push(&c("ana")), push.to_bytes().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    ana.expect("the push", |m| {
        matches!(m, ServerMsg::OfferWithdrawn { contact_id: id, reason: WithdrawReason::Taken } if *id == contact_id)
            .then_some(())
    })
    .await;
    ben.expect_none(Duration::from_millis(500), "ana's push", |m| {
        matches!(m, ServerMsg::OfferWithdrawn { .. })
    })
    .await;
}

// ------------------------------------------------------------------ the queue

fn queue_entry(door: Option<&str>, risk: RiskLevel) -> QueueEntry {
    QueueEntry {
        contact_id: ContactId::new(),
        risk,
        reasons: vec![nwd_proto::dashboard::ReasonView {
            rule: "relapse.using-again".into(),
            label: "Using again".into(),
            level: RiskLevel::High,
        }],
        lang: Language::En,
        channel: "SMS ··42".into(),
        door: door.unwrap_or("No Wrong Door").into(),
        door_id: door.map(|d| PartnerId::parse(d).unwrap()),
        waiting_since: OffsetDateTime::now_utc(),
        escalation: None,
        offered: 2,
        outreach: false,
        open_to_all: false,
        held: false,
    }
}

impl Dashboard {
    /// A queue snapshot as the router publishes it (core NATS).
    async fn publish_queue(&self, seq: u64, at: OffsetDateTime, entries: &[QueueEntry]) {
        let snapshot = Envelope::new(QueueSnapshot {
            seq,
            at,
            entries: entries.to_vec(),
            follow_ups: Vec::new(),
        });
        let client = self.nats.client().await;
        client
            .publish(subjects::dashboard_queue(), snapshot.to_bytes().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
}

impl Ws {
    /// The contact ids of the next queue message.
    async fn queue(&mut self) -> Vec<ContactId> {
        self.expect("the queue", |m| match m {
            ServerMsg::Queue { entries, .. } => {
                Some(entries.iter().map(|e| e.contact_id).collect())
            }
            _ => None,
        })
        .await
    }
}

#[tokio::test]
async fn the_queue_reaches_every_socket_and_a_partners_counsellor_sees_their_doors() {
    let d = Dashboard::start().await;
    let mut sockets = Vec::new();
    for who in ["ana", "ana", "ben", "chloe", "sam"] {
        let mut ws = d.socket(who).await;
        ws.hello().await;
        sockets.push(ws);
    }
    let line = queue_entry(None, RiskLevel::Imminent);
    let clinic = queue_entry(Some("eastside-clinic"), RiskLevel::High);
    let hospital = queue_entry(Some("county-hospital"), RiskLevel::Moderate);
    d.publish_queue(
        1,
        OffsetDateTime::now_utc(),
        &[line.clone(), clinic.clone(), hospital.clone()],
    )
    .await;

    let [ana, ana_tab, ben, chloe, sam] = &mut sockets[..] else {
        unreachable!()
    };
    // Eastside's counsellors: the line's own number and Eastside's door, in
    // the router's order; the hospital's counsellor: the line's and hers.
    for ws in [ana, ana_tab, ben] {
        assert_eq!(ws.queue().await, [line.contact_id, clinic.contact_id]);
    }
    assert_eq!(chloe.queue().await, [line.contact_id, hospital.contact_id]);
    // The supervisor: everything.
    assert_eq!(
        sam.queue().await,
        [line.contact_id, clinic.contact_id, hospital.contact_id]
    );
}

#[tokio::test]
async fn a_later_socket_gets_the_newest_queue_at_once_and_an_older_snapshot_is_ignored() {
    let d = Dashboard::start().await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let now = OffsetDateTime::now_utc();
    let newest = queue_entry(None, RiskLevel::High);
    d.publish_queue(7, now, std::slice::from_ref(&newest)).await;
    assert_eq!(ana.queue().await, [newest.contact_id]);

    // Late arrivals: a lower seq at the same time, an earlier time with a
    // higher seq (a router that restarted on a clock behind). Neither
    // replaces the newest, so neither is sent.
    let stale = queue_entry(None, RiskLevel::Imminent);
    d.publish_queue(6, now, std::slice::from_ref(&stale)).await;
    d.publish_queue(
        99,
        now - time::Duration::seconds(5),
        std::slice::from_ref(&stale),
    )
    .await;
    // The same entries again (the router's steady republish): nothing sent.
    d.publish_queue(8, now, std::slice::from_ref(&newest)).await;
    let next = queue_entry(None, RiskLevel::Low);
    d.publish_queue(9, now, &[newest.clone(), next.clone()])
        .await;
    assert_eq!(
        ana.queue().await,
        [newest.contact_id, next.contact_id],
        "the next queue message is the newer change, not a stale one"
    );

    // A socket opened now gets the newest straight after its hello.
    let mut tab = d.socket("ana").await;
    tab.hello().await;
    assert_eq!(tab.queue().await, [newest.contact_id, next.contact_id]);
    let mut chloe = d.socket("chloe").await;
    chloe.hello().await;
    assert_eq!(chloe.queue().await, [newest.contact_id, next.contact_id]);
}

#[tokio::test]
async fn a_directory_change_of_home_partner_changes_the_queue_an_open_socket_sees() {
    let d = Dashboard::start().await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    let line = queue_entry(None, RiskLevel::High);
    let clinic = queue_entry(Some("eastside-clinic"), RiskLevel::High);
    let hospital = queue_entry(Some("county-hospital"), RiskLevel::High);
    d.publish_queue(
        1,
        OffsetDateTime::now_utc(),
        &[line.clone(), clinic.clone(), hospital.clone()],
    )
    .await;
    assert_eq!(ben.queue().await, [line.contact_id, clinic.contact_id]);

    // Ben moves from Eastside to the hospital: his queue follows without a
    // reconnect and without a new snapshot.
    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    for s in dir.staff.iter_mut().filter(|s| s.id.as_str() == "ben") {
        s.partner = PartnerId::parse("county-hospital").unwrap();
    }
    let store = d.js.get_key_value(buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    assert_eq!(ben.queue().await, [line.contact_id, hospital.contact_id]);
}

#[tokio::test]
async fn hello_carries_capacity_and_the_end_of_the_shift() {
    let d = Dashboard::start().await;
    let mut ana = d.socket("ana").await;
    match ana.hello().await {
        ServerMsg::Hello {
            capacity,
            shift_ends_at,
            ..
        } => {
            assert_eq!(capacity, 3, "the directory's capacity");
            assert_eq!(shift_ends_at, None, "a 24/7 rota has no end to show");
        }
        other => panic!("{other:?}"),
    }

    // Leave from an hour from now ends her shift there.
    let leave = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let leave = leave.replace_nanosecond(0).unwrap();
    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    dir.overrides.push(nwd_proto::directory::OnCallOverride {
        staff: c("ana"),
        from: leave,
        until: leave + time::Duration::hours(2),
        on_call: false,
    });
    let store = d.js.get_key_value(buckets::DIRECTORY).await.unwrap();
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    eventually(WAIT, "the shift end from the new directory", || async {
        let mut ws = d.socket("ana").await;
        match ws.hello().await {
            ServerMsg::Hello {
                shift_ends_at: Some(end),
                ..
            } => Some(end),
            _ => None,
        }
    })
    .await;
    let mut ws = d.socket("ana").await;
    assert!(matches!(
        ws.hello().await,
        ServerMsg::Hello { shift_ends_at: Some(end), .. } if end == leave
    ));
}

#[tokio::test]
async fn an_ops_alert_reaches_every_supervisor_and_no_one_else() {
    let d = Dashboard::start().await;
    let mut sam = d.socket("sam").await;
    let mut ana = d.socket("ana").await;
    sam.hello().await;
    ana.hello().await;
    let alert = nwd_proto::deadletter::OpsAlert::DeadLetter {
        consumer: "intake-sms".into(),
        reason: nwd_proto::deadletter::DeadLetterReason::NewerSchema,
        stream: streams::INBOUND.into(),
        stream_sequence: 7,
    };
    let client = d.nats.client().await;
    client
        .publish(
            subjects::ops_alert(),
            Envelope::new(alert.clone()).to_bytes().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    sam.expect("the alert", |m| {
        matches!(m, ServerMsg::OpsAlert { alert: a } if *a == alert).then_some(())
    })
    .await;
    ana.expect_none(Duration::from_millis(500), "a supervisor's alert", |m| {
        matches!(m, ServerMsg::OpsAlert { .. })
    })
    .await;
}

// ------------------------------------------------------------------ router commands

#[tokio::test]
async fn accept_asks_the_router_and_opens_the_conversation_with_its_transcript() {
    let d = Dashboard::start().await;
    let rec = d
        .contact("I started using again", offered_to(&["ana", "ben"]))
        .await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    // The open offer is in the snapshot.
    let offer = ana
        .expect("the offer", |m| match m {
            ServerMsg::Offer { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    assert_eq!(offer.contact_id, rec.id);
    assert_eq!(offer.risk, RiskLevel::High);
    assert_eq!(offer.reasons[0].label, "Using again");
    assert_eq!(offer.door, "Eastside Recovery Clinic");
    assert_eq!(offer.channel, "SMS ··42");

    ana.send(&ClientMsg::Accept { contact_id: rec.id }).await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Accept {
            contact_id: rec.id,
            counsellor: c("ana")
        }
    );
    let conv = ana
        .expect("the conversation", |m| match m {
            ServerMsg::Conversation { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    assert_eq!(conv.contact_id, rec.id);
    assert_eq!(conv.messages.len(), 1);
    assert_eq!(conv.messages[0].speaker, Speaker::Person);
    assert_eq!(conv.messages[0].body, "I started using again");
}

#[tokio::test]
async fn a_refused_accept_is_an_error_and_so_is_a_missing_router() {
    let d = Dashboard::start().await;
    let rec = d.contact("help", offered_to(&["ana"])).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;

    // No router at all: no responders.
    ana.send(&ClientMsg::Accept { contact_id: rec.id }).await;
    ana.expect_error("router-unavailable").await;

    let mut commands = d
        .fake_router(RouterReply::Refused {
            reason: "already taken".into(),
        })
        .await;
    ana.send(&ClientMsg::Accept { contact_id: rec.id }).await;
    assert_eq!(ana.expect_error("refused").await, "already taken");
    assert!(matches!(
        commands.recv().await.unwrap(),
        RouterCommand::Accept { .. }
    ));
    ana.expect_none(Duration::from_millis(300), "a conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. })
    })
    .await;
}

#[tokio::test]
async fn a_router_that_does_not_answer_times_out() {
    let d = Dashboard::start().await;
    // Subscribed but never replying.
    let client = d.nats.client().await;
    let _silent = client.subscribe(subjects::router_command()).await.unwrap();
    nwd_dashboard::round_trip(&client).await.unwrap();
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    ana.send(&ClientMsg::Decline {
        contact_id: ContactId::new(),
    })
    .await;
    ana.expect_error("router-unavailable").await;
}

#[tokio::test]
async fn decline_and_resolve_go_to_the_router_and_update_every_tab() {
    let d = Dashboard::start().await;
    let offered = d.contact("hi", offered_to(&["ana"])).await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    let mut tab = d.socket("ana").await;
    ana.hello().await;
    tab.hello().await;

    ana.send(&ClientMsg::Decline {
        contact_id: offered.id,
    })
    .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Decline {
            contact_id: offered.id,
            counsellor: c("ana")
        }
    );
    for ws in [&mut ana, &mut tab] {
        ws.expect("withdrawn", |m| {
            matches!(m, ServerMsg::OfferWithdrawn { contact_id, reason: WithdrawReason::Declined } if *contact_id == offered.id)
                .then_some(())
        })
        .await;
    }

    ana.send(&ClientMsg::Resolve {
        contact_id: mine.id,
        disposition: Some(nwd_proto::dashboard::Disposition::SupportGiven),
        note: None,
    })
    .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Resolve {
            contact_id: mine.id,
            counsellor: c("ana"),
            disposition: Some("support-given".into()),
            note: None,
        }
    );
    for ws in [&mut ana, &mut tab] {
        ws.expect("resolved", |m| {
            (*m == ServerMsg::Resolved {
                contact_id: mine.id,
            })
            .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_resolve_carries_its_disposition_and_note_and_a_long_note_is_refused() {
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;

    // One character too many: refused here, nothing reaches the router.
    let long = "n".repeat(nwd_proto::dashboard::MAX_NOTE_CHARS + 1);
    ana.send_text(&format!(
        r#"{{"type":"resolve","contact_id":"{}","disposition":"safety-plan-made","note":"{long}"}}"#,
        mine.id
    ))
    .await;
    let message = ana.expect_error("bad-note").await;
    assert!(message.contains("2000"), "{message}");

    // The longest note, counted in characters (not bytes), goes through.
    let note = "é".repeat(nwd_proto::dashboard::MAX_NOTE_CHARS);
    ana.send(&ClientMsg::Resolve {
        contact_id: mine.id,
        disposition: Some(nwd_proto::dashboard::Disposition::SafetyPlanMade),
        note: Some(note.clone()),
    })
    .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Resolve {
            contact_id: mine.id,
            counsellor: c("ana"),
            disposition: Some("safety-plan-made".into()),
            note: Some(note),
        },
        "the first command the router sees is the valid one"
    );
    ana.expect("resolved", |m| {
        (*m == ServerMsg::Resolved {
            contact_id: mine.id,
        })
        .then_some(())
    })
    .await;

    // An unknown disposition is not a message the dashboard understands.
    ana.send_text(&format!(
        r#"{{"type":"resolve","contact_id":"{}","disposition":"went-fishing"}}"#,
        mine.id
    ))
    .await;
    ana.expect_error("bad-message").await;
    assert!(
        commands.try_recv().is_err(),
        "nothing more reached the router"
    );
}

#[tokio::test]
async fn a_refused_screener_is_an_error_and_names_the_sessions_counsellor() {
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let answers = nwd_proto::screener::ScreenerAnswers {
        wish_dead: true,
        thoughts: true,
        method: Some(true),
        intent: Some(false),
        plan: Some(false),
        behaviour: false,
        behaviour_recent: None,
    };

    // Refused (e.g. not the holder any more): an error, nothing recorded.
    let mut refusing = d
        .fake_router(RouterReply::Refused {
            reason: "not-assigned".into(),
        })
        .await;
    ana.send(&ClientMsg::Assess {
        contact_id: mine.id,
        answers,
    })
    .await;
    assert_eq!(
        refusing.recv().await.unwrap(),
        RouterCommand::Assess {
            contact_id: mine.id,
            counsellor: c("ana"),
            answers,
        }
    );
    assert_eq!(ana.expect_error("refused").await, "not-assigned");
    ana.expect_none(Duration::from_millis(300), "a result", |m| {
        matches!(m, ServerMsg::Assessed { .. })
    })
    .await;
}

#[tokio::test]
async fn take_next_asks_the_router_for_this_counsellor_and_a_refusal_is_shown() {
    let d = Dashboard::start().await;
    let mut commands = d
        .fake_router(RouterReply::Refused {
            reason: "queue-empty".into(),
        })
        .await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    // Whatever else the browser writes, the command names the session's counsellor.
    ana.send_text(r#"{"type":"take_next","counsellor":"ben"}"#)
        .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::TakeNext {
            counsellor: c("ana")
        }
    );
    assert_eq!(ana.expect_error("refused").await, "queue-empty");
}

#[tokio::test]
async fn a_medical_emergency_goes_to_the_router_and_is_confirmed_on_every_tab() {
    let d = Dashboard::start().await;
    let mine = d.contact("I took everything", assigned_to("ana")).await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    let mut tab = d.socket("ana").await;
    ana.hello().await;
    tab.hello().await;
    let hospital = PartnerId::parse("county-hospital").unwrap();

    // The nature is required and bounded: refused here, the router never asked.
    for nature in [String::new(), "  ".into(), "x".repeat(501)] {
        ana.send(&ClientMsg::MedicalEmergency {
            contact_id: mine.id,
            partner: hospital.clone(),
            nature,
        })
        .await;
        assert!(ana.expect_error("bad-emergency").await.contains("nature"));
    }
    ana.send(&ClientMsg::MedicalEmergency {
        contact_id: mine.id,
        partner: hospital.clone(),
        nature: "overdose, barely conscious".into(),
    })
    .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::MedicalEmergency {
            contact_id: mine.id,
            counsellor: c("ana"),
            partner: hospital.clone(),
            nature: "overdose, barely conscious".into(),
        }
    );
    for ws in [&mut ana, &mut tab] {
        ws.expect("recorded", |m| {
            (*m == ServerMsg::MedicalEmergencyRecorded {
                contact_id: mine.id,
                partner: hospital.clone(),
            })
            .then_some(())
        })
        .await;
    }
    assert!(commands.try_recv().is_err(), "one command only");
}

#[tokio::test]
async fn a_refused_medical_emergency_is_an_error_and_not_confirmed() {
    let d = Dashboard::start().await;
    let mine = d.contact("help", assigned_to("ana")).await;
    let _commands = d
        .fake_router(RouterReply::Refused {
            reason: "Eastside Recovery Clinic is not medical personnel".into(),
        })
        .await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    ana.send(&ClientMsg::MedicalEmergency {
        contact_id: mine.id,
        partner: PartnerId::parse("eastside-clinic").unwrap(),
        nature: "overdose".into(),
    })
    .await;
    assert!(
        ana.expect_error("refused")
            .await
            .contains("not medical personnel")
    );
    ana.expect_none(Duration::from_millis(300), "a confirmation", |m| {
        matches!(m, ServerMsg::MedicalEmergencyRecorded { .. })
    })
    .await;
}

// ------------------------------------------------------------------ replies

/// What came back to the socket that sent reply `client_id`.
async fn outcome(ws: &mut Ws, client_id: ClientReplyId) -> (MessageView, bool) {
    ws.expect("the reply's outcome", |m| match m {
        ServerMsg::ReplyOutcome {
            client_id: c,
            message,
            resent,
            ..
        } if *c == client_id => Some((message.clone(), *resent)),
        _ => None,
    })
    .await
}

fn reply(contact_id: ContactId, client_id: ClientReplyId, body: &str) -> ClientMsg {
    ClientMsg::Reply {
        contact_id,
        client_id,
        body: body.into(),
    }
}

#[tokio::test]
async fn a_reply_is_published_under_an_id_the_server_derives_and_echoed_to_every_tab() {
    let d = Dashboard::start().await;
    let rec = d.contact("can you talk", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    let mut other_tab = d.socket("ana").await;
    ana.hello().await;
    other_tab.hello().await;
    let client_id = ClientReplyId::new();
    let expected = wire::outbound::counsellor_reply(&rec.id, &c("ana"), &client_id);
    ana.send(&reply(
        rec.id,
        client_id,
        "I'm here. Are you safe right now?",
    ))
    .await;
    let (line, resent) = outcome(&mut ana, client_id).await;
    assert!(!resent);
    assert_eq!(line.id, expected.to_string());
    assert_eq!(line.speaker, Speaker::Counsellor);
    assert_eq!(line.status, None);
    let echoed = other_tab
        .expect("the reply line", |m| match m {
            ServerMsg::Message {
                contact_id,
                message,
                risk,
                ..
            } if *contact_id == rec.id => Some((message.clone(), *risk)),
            _ => None,
        })
        .await;
    assert_eq!(echoed.0.id, expected.to_string());
    assert_eq!(echoed.1, RiskLevel::High);

    let sent = d.outbound(&rec.id).await;
    assert_eq!(sent.len(), 1);
    let sms = &sent[0];
    assert_eq!(sms.outbound_id, expected);
    assert_eq!(sms.to.as_str(), PATIENT);
    assert_eq!(sms.from.as_str(), LINE);
    assert_eq!(sms.author, Author::Counsellor(c("ana")));
    assert_eq!(sms.body, "I'm here. Are you safe right now?");

    // A reconnecting browser sees its reply in the transcript.
    let mut again = d.socket("ana").await;
    let conv = again
        .expect("the conversation", |m| match m {
            ServerMsg::Conversation { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    assert_eq!(conv.messages.len(), 2);
    assert_eq!(conv.messages[1].id, expected.to_string());
}

#[tokio::test]
async fn the_same_browser_id_in_two_conversations_sends_both_replies() {
    let d = Dashboard::start().await;
    let a = d.contact("first person", assigned_to("ana")).await;
    let b = d.contact("second person", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let x = ClientReplyId::new();
    ana.send(&reply(a.id, x, "hello A")).await;
    let (to_a, resent_a) = outcome(&mut ana, x).await;
    ana.send(&reply(b.id, x, "hello B")).await;
    let (to_b, resent_b) = outcome(&mut ana, x).await;
    assert!(!resent_a && !resent_b, "neither is a resend");
    assert_ne!(to_a.id, to_b.id);
    let sent_a = d.outbound(&a.id).await;
    let sent_b = d.outbound(&b.id).await;
    assert_eq!(sent_a.len(), 1, "{sent_a:?}");
    assert_eq!(
        sent_b.len(),
        1,
        "B's reply was not swallowed by A's: {sent_b:?}"
    );
    assert_eq!(sent_a[0].body, "hello A");
    assert_eq!(sent_b[0].body, "hello B");
    assert_ne!(sent_a[0].outbound_id, sent_b[0].outbound_id);
    // Another counsellor's reply with the same browser id is theirs too.
    let c2 = d.contact("third person", assigned_to("ben")).await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    ben.send(&reply(c2.id, x, "hello C")).await;
    let (_, resent) = outcome(&mut ben, x).await;
    assert!(!resent);
    assert_eq!(d.outbound(&c2.id).await.len(), 1);
}

#[tokio::test]
async fn a_resend_is_sent_once_and_reported_with_the_originals_status() {
    let d = Dashboard::start().await;
    let rec = d.contact("can you talk", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let x = ClientReplyId::new();
    let body = "I'm here. Are you safe right now?";
    ana.send(&reply(rec.id, x, body)).await;
    let (first, resent) = outcome(&mut ana, x).await;
    assert!(!resent);
    assert_eq!(first.status, None);
    // The notifier reports it delivered.
    let outbound_id: OutboundId = first.id.parse().unwrap();
    d.publish_status(rec.id, outbound_id, DeliveryStatus::Delivered)
        .await;

    // The browser lost its socket and resends, on a new one.
    let mut again = d.socket("ana").await;
    again.hello().await;
    again.send(&reply(rec.id, x, body)).await;
    let (second, resent) = outcome(&mut again, x).await;
    assert!(resent, "reported as a resend, not a fresh send");
    assert_eq!(second.id, first.id);
    assert_eq!(
        second.status,
        Some(DeliveryStatus::Delivered),
        "the original's outcome"
    );
    assert_eq!(second.at, first.at, "the original's time");
    again
        .expect_none(Duration::from_millis(300), "a second reply line", |m| {
            matches!(m, ServerMsg::Message { .. })
        })
        .await;
    assert_eq!(d.outbound(&rec.id).await.len(), 1, "sent once");
}

#[tokio::test]
async fn a_reply_recorded_but_not_published_before_a_crash_is_sent_on_its_resend() {
    let d = Dashboard::start().await;
    let rec = d.contact("can you talk", assigned_to("ana")).await;
    let x = ClientReplyId::new();
    let body = "I'm still here";
    // A dashboard recorded the reply and died before publishing it.
    let id = wire::outbound::counsellor_reply(&rec.id, &c("ana"), &x);
    let replies = d.js.get_key_value(buckets::REPLIES).await.unwrap();
    let record = ReplyRecord {
        contact_id: rec.id,
        counsellor: c("ana"),
        client_id: x,
        body_sha256: ReplyRecord::hash(body),
        created_at: OffsetDateTime::now_utc(),
        published: false,
    };
    kv::cas(&replies, &wire::key::reply(&id), move |_| {
        Cas::Write(record.clone(), ())
    })
    .await
    .unwrap();
    assert!(d.outbound(&rec.id).await.is_empty());

    let mut ana = d.socket("ana").await;
    ana.hello().await;
    ana.send(&reply(rec.id, x, body)).await;
    let (line, resent) = outcome(&mut ana, x).await;
    assert!(!resent, "it had not been sent");
    assert_eq!(line.id, id.to_string());
    let sent = d.outbound(&rec.id).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, body);
}

#[tokio::test]
async fn the_same_browser_id_with_another_body_is_refused_and_nothing_is_sent() {
    let d = Dashboard::start().await;
    let rec = d.contact("can you talk", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let x = ClientReplyId::new();
    ana.send(&reply(rec.id, x, "first words")).await;
    outcome(&mut ana, x).await;
    ana.expect("the first reply's line", |m| {
        matches!(m, ServerMsg::Message { .. }).then_some(())
    })
    .await;
    ana.send(&reply(rec.id, x, "other words")).await;
    let message = ana.expect_error("reply-id-reused").await;
    assert!(message.contains("Not sent"), "{message}");
    ana.expect_none(
        Duration::from_millis(300),
        "an outcome for the refused reply",
        |m| {
            matches!(
                m,
                ServerMsg::ReplyOutcome { .. } | ServerMsg::Message { .. }
            )
        },
    )
    .await;
    let sent = d.outbound(&rec.id).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, "first words");
}

#[tokio::test]
async fn a_browser_id_equal_to_a_system_messages_id_does_not_suppress_the_safety_message() {
    let d = Dashboard::start().await;
    let mut rec = d
        .contact("i have the pills in my hand", assigned_to("ana"))
        .await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    // Anyone can derive the safety message's id from the contact id.
    let safety = wire::outbound::safety_message(&rec.id);
    let spoof = ClientReplyId::from_ulid(safety.ulid());
    ana.send(&reply(rec.id, spoof, "stay with me")).await;
    let (line, _) = outcome(&mut ana, spoof).await;
    assert_ne!(line.id, safety.to_string());

    // Then the line sends the safety message, as the escalation does.
    let mut escalation = Escalation::start(LadderPolicy::default(), OffsetDateTime::now_utc());
    escalation.steps = 1;
    escalation.push_step(StepRecord {
        step: 1,
        rung: None,
        outcome: StepOutcome::Broadcast {
            to: Vec::new(),
            alerted: Vec::new(),
        },
        at: OffsetDateTime::now_utc(),
    });
    rec.escalation = Some(escalation);
    d.put(&rec).await;
    let announcer = Announcer {
        client: d.nats.client().await,
        js: d.js.clone(),
        contacts: d.contacts.clone(),
        directory: nwd_runtime::directory::Live::new(
            nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap(),
        ),
        service: "test",
    };
    announcer.announce(&rec).await.unwrap();

    let sent = d.outbound(&rec.id).await;
    assert_eq!(sent.len(), 2, "the reply and the safety message: {sent:?}");
    let safety_sms = sent
        .iter()
        .find(|s| s.outbound_id == safety)
        .expect("the safety message is on OUTBOUND");
    assert_eq!(safety_sms.author, Author::System);
    assert!(sent.iter().any(|s| s.body == "stay with me"));
}

#[tokio::test]
async fn replies_are_refused_unless_assigned_and_well_sized() {
    let d = Dashboard::start().await;
    let bens = d.contact("hello", assigned_to("ben")).await;
    let offered = d.contact("hello", offered_to(&["ana"])).await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let reply = |contact_id, body: String| ClientMsg::Reply {
        contact_id,
        client_id: ClientReplyId::new(),
        body,
    };
    for contact in [bens.id, offered.id, ContactId::new()] {
        ana.send(&reply(contact, "hi".into())).await;
        ana.expect_error("not-assigned").await;
    }
    for body in [String::new(), "   ".into(), "x".repeat(1601)] {
        ana.send(&reply(mine.id, body)).await;
        ana.expect_error("bad-reply").await;
    }
    // 1600 characters (not bytes) is fine.
    ana.send(&reply(mine.id, "é".repeat(1600))).await;
    ana.expect("the reply", |m| {
        matches!(m, ServerMsg::ReplyOutcome { resent: false, .. }).then_some(())
    })
    .await;
    assert!(d.outbound(&bens.id).await.is_empty());
    assert!(d.outbound(&offered.id).await.is_empty());
    assert_eq!(d.outbound(&mine.id).await.len(), 1);
}

#[tokio::test]
async fn no_reply_goes_before_an_outreach_introduction() {
    let d = Dashboard::start().await;
    let referral = nwd_proto::ReferralId::new();
    let opened = nwd_proto::referral::OutreachOpened {
        contact_id: wire::outreach_contact(&referral),
        referral_id: referral,
        channel: Channel::Sms {
            patient: nwd_proto::Address::parse("+15005550166"),
            line: nwd_proto::Address::parse("+15005550100"),
        },
        door: nwd_proto::PartnerId::parse("county-hospital").unwrap(),
        patient: None,
        patient_name: None,
        lang: Language::En,
        priority: nwd_proto::referral::Priority::Stat,
        offer_at: OffsetDateTime::now_utc(),
        due_at: OffsetDateTime::now_utc(),
        reason: None,
        received_at: OffsetDateTime::now_utc(),
    };
    let mut rec = ContactRecord::open_outreach(&opened);
    rec.offer(&[CounsellorId::parse("ana").unwrap()]).unwrap();
    rec.accept(
        &CounsellorId::parse("ana").unwrap(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    d.put(&rec).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let reply = || ClientMsg::Reply {
        contact_id: rec.id,
        client_id: ClientReplyId::new(),
        body: "hi, it's Ana".into(),
    };
    ana.send(&reply()).await;
    ana.expect_error("intro-pending").await;
    assert!(d.outbound(&rec.id).await.is_empty());
    // Once the line has introduced itself, the counsellor writes freely.
    rec.outreach.as_mut().unwrap().introduced = true;
    d.put(&rec).await;
    ana.send(&reply()).await;
    ana.expect("the reply", |m| {
        matches!(m, ServerMsg::ReplyOutcome { resent: false, .. }).then_some(())
    })
    .await;
    assert_eq!(d.outbound(&rec.id).await.len(), 1);
}

#[tokio::test]
async fn a_delivery_status_reaches_the_assigned_counsellor() {
    let d = Dashboard::start().await;
    let rec = d.contact("hello", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    let mut ben = d.socket("ben").await;
    ana.hello().await;
    ben.hello().await;
    let outbound_id = OutboundId::new();
    d.publish_status(rec.id, outbound_id, DeliveryStatus::Delivered)
        .await;
    ana.expect("the status", |m| {
        (*m == ServerMsg::DeliveryStatus {
            contact_id: rec.id,
            outbound_id,
            status: DeliveryStatus::Delivered,
        })
        .then_some(())
    })
    .await;
    ben.expect_none(Duration::from_millis(300), "ana's status", |m| {
        matches!(m, ServerMsg::DeliveryStatus { .. })
    })
    .await;
}

// ------------------------------------------------------------------ snapshot, frames

#[tokio::test]
async fn a_new_socket_gets_the_assigned_conversation_in_its_snapshot() {
    let d = Dashboard::start().await;
    let rec = d.contact("are you there", assigned_to("ana")).await;
    let _other = d.contact("someone else", assigned_to("ben")).await;
    let _resolved = d
        .contact("done", |r| {
            r.offer(&[c("ana")]).unwrap();
            r.accept(&c("ana"), OffsetDateTime::now_utc()).unwrap();
            r.resolve(&c("ana"), OffsetDateTime::now_utc()).unwrap();
        })
        .await;
    let mut first = d.socket("ana").await;
    first.hello().await;
    first.ws.close(None).await.unwrap();

    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let conv = ana
        .expect("the conversation", |m| match m {
            ServerMsg::Conversation { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    assert_eq!(conv.contact_id, rec.id);
    assert_eq!(conv.messages[0].body, "are you there");
    ana.expect_none(Duration::from_millis(300), "another contact", |m| {
        matches!(m, ServerMsg::Conversation { .. } | ServerMsg::Offer { .. })
    })
    .await;
}

#[tokio::test]
async fn a_malformed_frame_is_an_error_and_the_socket_stays_open() {
    let d = Dashboard::start().await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    ana.send_text("not json").await;
    ana.expect_error("bad-message").await;
    ana.send_text(r#"{"type":"launch_rockets"}"#).await;
    ana.expect_error("bad-message").await;
    ana.ws
        .send(WsMessage::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    ana.expect_error("bad-message").await;
    ana.send(&ClientMsg::Ping).await;
    ana.expect("pong", |m| (*m == ServerMsg::Pong).then_some(()))
        .await;
}

#[tokio::test]
async fn the_page_is_served_with_its_test_ids() {
    let d = Dashboard::start().await;
    let res = d.http.get(d.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text().await.unwrap();
    for id in [
        "login-form",
        "presence-available",
        "offers",
        "conversations",
        "\"accept\"",
        "\"reply-input\"",
        "\"reply-send\"",
        "\"resolve\"",
        "\"message\"",
        "\"emergency-partner\"",
        "\"emergency-nature\"",
        "\"emergency-send\"",
        "\"emergency-status\"",
        "\"take-next\"",
        "\"queue-list\"",
        "\"load\"",
        "\"shift-end\"",
        "\"resolve-dialog\"",
        "\"disposition\"",
        "\"screener-submit\"",
        "<h1>",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
}

// ------------------------------------------------------------------ socket logic over channels

#[tokio::test]
async fn the_socket_logic_runs_over_plain_channels() {
    let nats = NatsServer::start().await;
    nats.set_up_bus().await;
    let stop = CancellationToken::new();
    let cfg = config(nats.url_for("dashboard"), "127.0.0.1:0".parse().unwrap());
    let (app, readiness) = App::start(&cfg, stop.clone()).await.unwrap();
    eventually(WAIT, "ready", || async {
        readiness.is_ready().then_some(())
    })
    .await;

    let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<Outbound>(16);
    let (mut in_tx, in_rx) = futures::channel::mpsc::channel::<Inbound>(16);
    let (_, login) = app
        .sessions
        .open(
            &app.stores().unwrap().sessions,
            &c("sam"),
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let served = tokio::spawn(socket::serve(Arc::clone(&app), login, out_tx, in_rx));
    // The hello is numbered: the page resumes from its number after a drop.
    match out_rx.next().await.unwrap() {
        Outbound::Json(text) => {
            let hello: nwd_proto::dashboard::SequencedMsg =
                serde_json::from_str(text.as_str()).unwrap();
            assert!(hello.seq > 0);
            match hello.msg {
                ServerMsg::Hello {
                    counsellor,
                    supervisor,
                    ..
                } => {
                    assert_eq!(counsellor, c("sam"));
                    assert!(supervisor);
                }
                other => panic!("expected hello, got {other:?}"),
            }
        }
        other => panic!("expected hello, got {other:?}"),
    }
    in_tx
        .send(Inbound::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    // Keep-alives (every heartbeat) may come first.
    let next_msg = async |rx: &mut futures::channel::mpsc::Receiver<Outbound>| loop {
        match rx.next().await.unwrap() {
            Outbound::KeepAlive | Outbound::Json(_) => continue,
            Outbound::Msg(m) => break *m,
        }
    };
    assert_eq!(next_msg(&mut out_rx).await, ServerMsg::Pong);
    eventually(WAIT, "a keep-alive", || {
        let got = matches!(out_rx.try_recv(), Ok(Outbound::KeepAlive));
        async move { got.then_some(()) }
    })
    .await;
    assert_eq!(app.hub.socket_count(), 1);
    drop(in_tx);
    served.await.unwrap();
    assert_eq!(app.hub.socket_count(), 0);
    stop.cancel();
    app.drain().await;
}

// ------------------------------------------------------------------ handover commands

#[tokio::test]
async fn handover_commands_go_to_the_router_in_the_sessions_name() {
    use nwd_proto::handover::{TransferMode, TransferTarget};
    let d = Dashboard::start().await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let id = ContactId::new();

    // A forged counsellor in the frame is ignored: the session's is named.
    ana.send_text(&format!(
        r#"{{"type":"transfer","contact_id":"{id}","counsellor":"ben","target":{{"kind":"supervisor"}},"mode":"warm","note":"knows the plan"}}"#
    ))
    .await;
    let sent = commands.recv().await.unwrap();
    assert_eq!(
        sent,
        RouterCommand::Transfer {
            contact_id: id,
            counsellor: c("ana"),
            target: TransferTarget::Supervisor,
            mode: TransferMode::Warm,
            note: Some("knows the plan".into()),
        }
    );
    for (msg, expected) in [
        (
            ClientMsg::CancelTransfer { contact_id: id },
            RouterCommand::CancelTransfer {
                contact_id: id,
                counsellor: c("ana"),
            },
        ),
        (
            ClientMsg::Claim { contact_id: id },
            RouterCommand::Claim {
                contact_id: id,
                counsellor: c("ana"),
            },
        ),
        (
            ClientMsg::InvolveTrustedContact {
                contact_id: id,
                trusted: "maria-sister".into(),
            },
            RouterCommand::InvolveTrustedContact {
                contact_id: id,
                counsellor: c("ana"),
                trusted: "maria-sister".into(),
            },
        ),
    ] {
        ana.send(&msg).await;
        assert_eq!(commands.recv().await.unwrap(), expected);
    }

    // A supervisor may use the switchboard and reassign.
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    sam.send(&ClientMsg::Switchboard { on: true }).await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Switchboard {
            counsellor: c("sam"),
            on: true
        }
    );
    sam.send(&ClientMsg::Reassign {
        contact_id: id,
        to: c("ben"),
    })
    .await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Reassign {
            contact_id: id,
            counsellor: c("sam"),
            to: c("ben"),
        }
    );
}

#[tokio::test]
async fn supervisor_actions_and_long_handover_notes_are_refused_before_the_router() {
    use nwd_proto::handover::{MAX_HANDOVER_NOTE_CHARS, TransferMode, TransferTarget};
    let d = Dashboard::start().await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let id = ContactId::new();

    ana.send(&ClientMsg::Switchboard { on: true }).await;
    ana.expect_error("not-a-supervisor").await;
    ana.send(&ClientMsg::Reassign {
        contact_id: id,
        to: c("ana"),
    })
    .await;
    ana.expect_error("not-a-supervisor").await;
    ana.send(&ClientMsg::Monitor { contact_id: id }).await;
    ana.expect_error("not-a-supervisor").await;
    ana.send(&ClientMsg::Transfer {
        contact_id: id,
        target: TransferTarget::Supervisor,
        mode: TransferMode::Cold,
        note: Some("x".repeat(MAX_HANDOVER_NOTE_CHARS + 1)),
    })
    .await;
    let why = ana.expect_error("bad-note").await;
    assert!(why.contains(&MAX_HANDOVER_NOTE_CHARS.to_string()), "{why}");

    // Nothing of that reached the router: the next command it sees is this.
    ana.send(&ClientMsg::Claim { contact_id: id }).await;
    assert_eq!(
        commands.recv().await.unwrap(),
        RouterCommand::Claim {
            contact_id: id,
            counsellor: c("ana"),
        }
    );
    assert!(commands.try_recv().is_err());
}

// ------------------------------------------------------------------ private notes

#[tokio::test]
async fn a_note_is_stored_once_shown_on_every_tab_and_in_the_conversation_after() {
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut tab1 = d.socket("ana").await;
    let mut tab2 = d.socket("ana").await;
    tab1.hello().await;
    tab2.hello().await;
    let client_id = ClientReplyId::new();
    let note = ClientMsg::Note {
        contact_id: mine.id,
        client_id,
        text: "Sister is nearby".into(),
    };
    tab1.send(&note).await;
    let mut ids = Vec::new();
    for tab in [&mut tab1, &mut tab2] {
        let shown = tab
            .expect("noted", |m| match m {
                ServerMsg::Noted { contact_id, note } if *contact_id == mine.id => {
                    Some(note.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(shown.text, "Sister is nearby");
        assert_eq!(shown.by, c("ana"));
        assert_eq!(shown.by_name, "Ana García");
        ids.push(shown.id);
    }
    assert_eq!(ids[0], ids[1]);
    // A resend (a dropped socket) is the same note: stored once.
    tab1.send(&note).await;
    tab1.expect("the resend's noted", |m| {
        matches!(m, ServerMsg::Noted { note, .. } if note.id == ids[0]).then_some(())
    })
    .await;
    let stored = transcript::read_subjects(
        &d.js,
        streams::CONTACTS,
        vec![subjects::contact_noted(&mine.id)],
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1);

    // A socket opened later has the note in the conversation.
    let mut later = d.socket("ana").await;
    let contact = later
        .expect("the conversation", |m| match m {
            ServerMsg::Conversation { contact } if contact.contact_id == mine.id => {
                Some(contact.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(contact.notes.len(), 1);
    assert_eq!(contact.notes[0].text, "Sister is nearby");
}

#[tokio::test]
async fn a_note_on_someone_elses_conversation_or_too_long_is_refused_and_not_stored() {
    let d = Dashboard::start().await;
    let anas = d.contact("hello", assigned_to("ana")).await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    ben.send(&ClientMsg::Note {
        contact_id: anas.id,
        client_id: ClientReplyId::new(),
        text: "forged".into(),
    })
    .await;
    ben.expect_error("not-assigned").await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    for text in [
        String::from("   "),
        "x".repeat(nwd_proto::dashboard::MAX_NOTE_CHARS + 1),
    ] {
        ana.send(&ClientMsg::Note {
            contact_id: anas.id,
            client_id: ClientReplyId::new(),
            text,
        })
        .await;
        ana.expect_error("bad-note").await;
    }
    let stored = transcript::read_subjects(
        &d.js,
        streams::CONTACTS,
        vec![subjects::contact_noted(&anas.id)],
    )
    .await
    .unwrap();
    assert!(stored.is_empty());
}

// ------------------------------------------------------------------ the floor

impl Dashboard {
    /// A floor snapshot as the router publishes it (core NATS).
    async fn publish_floor(&self, seq: u64, switchboard_on: bool) {
        let at = OffsetDateTime::now_utc();
        let snapshot = Envelope::new(nwd_proto::dashboard::FloorSnapshot {
            seq,
            at,
            staff: Vec::new(),
            conversations: Vec::new(),
            switchboard: Some(nwd_proto::handover::Switchboard {
                on: switchboard_on,
                by: c("sam"),
                at,
            }),
        });
        let client = self.nats.client().await;
        client
            .publish(subjects::dashboard_floor(), snapshot.to_bytes().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
}

#[tokio::test]
async fn the_floor_reaches_supervisors_on_change_and_on_connect_and_no_counsellor() {
    let d = Dashboard::start().await;
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    d.publish_floor(1, true).await;
    let seq = sam
        .expect("the floor", |m| match m {
            ServerMsg::Floor { floor } => Some(floor.seq),
            _ => None,
        })
        .await;
    assert_eq!(seq, 1);
    // A supervisor who connects later has it at once.
    let mut later = d.socket("sam").await;
    let on = later
        .expect("the floor on connect", |m| match m {
            ServerMsg::Floor { floor } => Some(floor.switchboard.as_ref().unwrap().on),
            _ => None,
        })
        .await;
    assert!(on);
    ana.expect_none(Duration::from_millis(300), "a floor", |m| {
        matches!(m, ServerMsg::Floor { .. })
    })
    .await;
}

// ------------------------------------------------------------------ profile

#[tokio::test]
async fn the_profile_is_for_the_holder_and_offered_and_lists_earlier_contacts() {
    let d = Dashboard::start().await;
    let earlier = d
        .contact("before", |r| {
            r.patient = Some("maria".into());
            r.disposition = Some("safety-plan-made".into());
        })
        .await;
    let now = d
        .contact("again", |r| {
            r.patient = Some("maria".into());
            r.previous = Some(earlier.id);
            r.offer(&[c("ana"), c("ben")]).unwrap();
        })
        .await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    ben.send(&ClientMsg::Profile { contact_id: now.id }).await;
    let profile = ben
        .expect("the profile", |m| match m {
            ServerMsg::Profile {
                contact_id,
                profile,
            } if *contact_id == now.id => Some(profile.clone()),
            _ => None,
        })
        .await;
    let patient = profile.patient.unwrap();
    assert_eq!(patient.name, "María López");
    assert_eq!(patient.coordinator.as_deref(), Some("Ana García"));
    assert!(!patient.trusted_contacts.is_empty());
    assert_eq!(profile.earlier.len(), 1);
    assert_eq!(profile.earlier[0].contact_id, earlier.id);
    assert_eq!(
        profile.earlier[0].disposition.as_deref(),
        Some("safety-plan-made")
    );

    // Chloe is neither offered nor holding it: refused.
    let mut chloe = d.socket("chloe").await;
    chloe.hello().await;
    chloe.send(&ClientMsg::Profile { contact_id: now.id }).await;
    chloe.expect_error("not-assigned").await;
}

// ------------------------------------------------------------------ silent monitoring

#[tokio::test]
async fn a_supervisor_monitors_a_conversation_silently_until_they_stop() {
    let d = Dashboard::start().await;
    let anas = d.contact("first words", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    sam.send(&ClientMsg::Monitor {
        contact_id: anas.id,
    })
    .await;
    let history = sam
        .expect("monitoring", |m| match m {
            ServerMsg::Monitoring { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    assert_eq!(history.contact_id, anas.id);
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].body, "first words");

    // The person writes, the counsellor replies and notes: sam sees each.
    let mut more = triaged(anas.id, "second words");
    more.message.opens_contact = false;
    d.publish_triaged(&more).await;
    let line = sam
        .expect("the person's line", |m| match m {
            ServerMsg::Message {
                contact_id,
                message,
                ..
            } if *contact_id == anas.id => Some(message.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (line.speaker, line.body.as_str()),
        (Speaker::Person, "second words")
    );
    ana.send(&reply(anas.id, ClientReplyId::new(), "I'm here"))
        .await;
    let line = sam
        .expect("the reply", |m| match m {
            ServerMsg::Message { message, .. } if message.speaker == Speaker::Counsellor => {
                Some(message.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(line.body, "I'm here");
    ana.send(&ClientMsg::Note {
        contact_id: anas.id,
        client_id: ClientReplyId::new(),
        text: "calmer".into(),
    })
    .await;
    sam.expect("the note", |m| {
        matches!(m, ServerMsg::Noted { note, .. } if note.text == "calmer").then_some(())
    })
    .await;
    // A monitoring supervisor may note too; the holder sees it.
    sam.send(&ClientMsg::Note {
        contact_id: anas.id,
        client_id: ClientReplyId::new(),
        text: "watch the plan".into(),
    })
    .await;
    ana.expect("the supervisor's note", |m| {
        matches!(m, ServerMsg::Noted { note, .. } if note.by == c("sam")).then_some(())
    })
    .await;

    // Nothing tells the holder they are watched.
    ana.expect_none(Duration::from_millis(200), "a monitoring frame", |m| {
        matches!(m, ServerMsg::Monitoring { .. })
    })
    .await;

    sam.send(&ClientMsg::StopMonitoring {
        contact_id: anas.id,
    })
    .await;
    sam.answers_ping().await;
    let mut last = triaged(anas.id, "third words");
    last.message.opens_contact = false;
    d.publish_triaged(&last).await;
    sam.expect_none(
        Duration::from_millis(400),
        "a line after stopping",
        |m| matches!(m, ServerMsg::Message { message, .. } if message.body == "third words"),
    )
    .await;
}

impl Ws {
    /// Sends a ping and waits for its pong: everything sent before is handled.
    async fn answers_ping(&mut self) {
        self.send(&ClientMsg::Ping).await;
        self.expect("pong", |m| matches!(m, ServerMsg::Pong).then_some(()))
            .await;
    }
}

// ------------------------------------------------------------------ resume by sequence

impl Dashboard {
    /// A router push to `who` of an offer withdrawn for `contact_id`.
    async fn push_withdrawn(&self, who: &str, contact_id: ContactId) {
        let push = Envelope::new(DashboardPush {
            counsellor: c(who),
            msg: ServerMsg::OfferWithdrawn {
                contact_id,
                reason: WithdrawReason::Taken,
            },
        });
        let client = self.nats.client().await;
        client
            .publish(subjects::dashboard_push(&c(who)), push.to_bytes().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
}

impl Ws {
    /// The next text frame as numbered JSON (`seq` is `None` when unnumbered).
    async fn next_raw(&mut self) -> (Option<u64>, ServerMsg) {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame")
                .expect("the socket is open")
                .unwrap();
            if let WsMessage::Text(t) = frame {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                return (v["seq"].as_u64(), serde_json::from_str(&t).unwrap());
            }
        }
    }

    /// Frames up to the pong of a ping sent now.
    async fn raw_until_pong(&mut self) -> Vec<(Option<u64>, ServerMsg)> {
        self.send(&ClientMsg::Ping).await;
        let mut out = Vec::new();
        loop {
            let f = self.next_raw().await;
            if f.1 == ServerMsg::Pong {
                return out;
            }
            out.push(f);
        }
    }

    /// The hello's number.
    async fn hello_seq(&mut self) -> u64 {
        loop {
            if let (seq, ServerMsg::Hello { .. }) = self.next_raw().await {
                return seq.expect("a numbered hello");
            }
        }
    }
}

#[tokio::test]
async fn a_page_that_resumes_gets_exactly_the_frames_it_missed_in_order() {
    let d = Dashboard::start().await;
    let cookie = d.cookie("ana").await;
    let mut tab = d.socket_with(&cookie).await.unwrap();
    let hello = tab.hello_seq().await;
    let first = ContactId::new();
    d.push_withdrawn("ana", first).await;
    let seen = loop {
        if let (Some(seq), ServerMsg::OfferWithdrawn { contact_id, .. }) = tab.next_raw().await
            && contact_id == first
        {
            break seq;
        }
    };
    assert!(seen > hello);

    // The network drops; three pushes come meanwhile.
    drop(tab);
    eventually(WAIT, "ana offline", || async {
        d.presence_of("ana")
            .await
            .is_some_and(|p| p.status == Presence::Offline)
            .then_some(())
    })
    .await;
    let missed: Vec<ContactId> = (0..3).map(|_| ContactId::new()).collect();
    for id in &missed {
        d.push_withdrawn("ana", *id).await;
    }
    // Pushes are handled in order: once ben has his, ana's are journaled.
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    let marker = ContactId::new();
    d.push_withdrawn("ben", marker).await;
    ben.expect("the marker", |m| {
        matches!(m, ServerMsg::OfferWithdrawn { contact_id, .. } if *contact_id == marker)
            .then_some(())
    })
    .await;

    let mut back = d.socket_with(&cookie).await.unwrap();
    let rejoined = back.hello_seq().await;
    assert_eq!(rejoined, seen + 3);
    back.raw_until_pong().await;
    back.send(&ClientMsg::Resume { last_seq: seen }).await;
    let replayed: Vec<(u64, ContactId)> = back
        .raw_until_pong()
        .await
        .into_iter()
        .filter_map(|(seq, m)| match m {
            ServerMsg::OfferWithdrawn { contact_id, .. } => Some((seq.unwrap(), contact_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        replayed,
        vec![
            (seen + 1, missed[0]),
            (seen + 2, missed[1]),
            (seen + 3, missed[2])
        ]
    );
    // Nothing missed since: nothing replayed.
    back.send(&ClientMsg::Resume { last_seq: rejoined }).await;
    assert!(
        back.raw_until_pong()
            .await
            .iter()
            .all(|(_, m)| !matches!(m, ServerMsg::OfferWithdrawn { .. } | ServerMsg::Resync))
    );
}

#[tokio::test]
async fn a_gap_beyond_what_is_kept_gets_a_resync_and_the_whole_state() {
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    let hello = ana.hello_seq().await;
    ana.raw_until_pong().await;
    // A number from before this journal (another process, a restart, or
    // long ago): not kept.
    ana.send(&ClientMsg::Resume {
        last_seq: hello / 2,
    })
    .await;
    let after = ana.raw_until_pong().await;
    assert_eq!(after[0].1, ServerMsg::Resync);
    assert!(matches!(after[1].1, ServerMsg::Hello { .. }));
    assert!(after.iter().any(
        |(_, m)| matches!(m, ServerMsg::Conversation { contact } if contact.contact_id == mine.id)
    ));
}

// ------------------------------------------------------------------ audit of views

impl Dashboard {
    /// The AUDIT records of who was shown `contact`.
    async fn views_of(&self, contact: &ContactId) -> Vec<nwd_proto::events::ContactViewed> {
        transcript::read_subjects(
            &self.js,
            streams::AUDIT,
            vec![subjects::audit_viewed(contact)],
        )
        .await
        .unwrap()
        .iter()
        .map(|m| {
            Envelope::<nwd_proto::events::ContactViewed>::from_bytes(&m.payload)
                .unwrap()
                .data
        })
        .collect()
    }
}

#[tokio::test]
async fn showing_a_contact_is_audited_once_per_counsellor_and_view() {
    use nwd_proto::events::ContactViewKind;
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut tab1 = d.socket("ana").await;
    tab1.hello().await;
    tab1.send(&ClientMsg::Profile {
        contact_id: mine.id,
    })
    .await;
    tab1.expect("the profile", |m| {
        matches!(m, ServerMsg::Profile { .. }).then_some(())
    })
    .await;
    // A second tab renders the same conversation again: no second record.
    let mut tab2 = d.socket("ana").await;
    tab2.expect("the conversation", |m| {
        matches!(m, ServerMsg::Conversation { .. }).then_some(())
    })
    .await;
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    sam.send(&ClientMsg::Monitor {
        contact_id: mine.id,
    })
    .await;
    sam.expect("monitoring", |m| {
        matches!(m, ServerMsg::Monitoring { .. }).then_some(())
    })
    .await;
    let views = eventually(WAIT, "three view records", || async {
        let v = d.views_of(&mine.id).await;
        (v.len() >= 3).then_some(v)
    })
    .await;
    let mut got: Vec<(CounsellorId, ContactViewKind)> = views
        .iter()
        .map(|v| (v.counsellor.clone(), v.view))
        .collect();
    got.sort_by_key(|(w, v)| (w.to_string(), v.as_str()));
    assert_eq!(
        got,
        vec![
            (c("ana"), ContactViewKind::Conversation),
            (c("ana"), ContactViewKind::Profile),
            (c("sam"), ContactViewKind::Monitoring),
        ]
    );
    // Nothing of the conversation's text is in the trail.
    let raw = transcript::read_subjects(
        &d.js,
        streams::AUDIT,
        vec![subjects::audit_viewed(&mine.id)],
    )
    .await
    .unwrap();
    assert!(
        raw.iter()
            .all(|m| !String::from_utf8_lossy(&m.payload).contains("hello"))
    );
    tab2.answers_ping().await;
    assert_eq!(d.views_of(&mine.id).await.len(), 3);
}

// ------------------------------------------------------------------ authorisation

#[tokio::test]
async fn a_counsellor_cannot_read_or_act_on_anothers_conversation_by_forged_messages() {
    let d = Dashboard::start().await;
    let bens = d.contact("ben's person", assigned_to("ben")).await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    let mut ana = d.socket("ana").await;
    ana.hello().await;
    // Ana never had ben's conversation on connect.
    ana.answers_ping().await;
    assert!(!ana.seen.iter().any(|m| matches!(
        m,
        ServerMsg::Conversation { contact } | ServerMsg::Offer { contact }
            if contact.contact_id == bens.id
    )));

    for forged in [
        ClientMsg::Note {
            contact_id: bens.id,
            client_id: ClientReplyId::new(),
            text: "forged".into(),
        },
        ClientMsg::Profile {
            contact_id: bens.id,
        },
        reply(bens.id, ClientReplyId::new(), "forged"),
    ] {
        ana.send(&forged).await;
        ana.expect_error("not-assigned").await;
    }
    ana.send(&ClientMsg::Monitor {
        contact_id: bens.id,
    })
    .await;
    ana.expect_error("not-a-supervisor").await;
    // A read mark or typing for ben's conversation: silently nothing.
    ana.send(&ClientMsg::Read {
        contact_id: bens.id,
        upto: MessageId::new().to_string(),
    })
    .await;
    ana.send(&ClientMsg::Typing {
        contact_id: bens.id,
    })
    .await;
    ana.answers_ping().await;

    // Ben's own note reaches ben, never ana.
    ben.send(&ClientMsg::Note {
        contact_id: bens.id,
        client_id: ClientReplyId::new(),
        text: "his".into(),
    })
    .await;
    ben.expect("ben's note", |m| {
        matches!(m, ServerMsg::Noted { .. }).then_some(())
    })
    .await;
    ana.expect_none(Duration::from_millis(300), "ben's note", |m| {
        matches!(m, ServerMsg::Noted { .. } | ServerMsg::Profile { .. })
    })
    .await;
    assert!(d.outbound(&bens.id).await.is_empty());
    let notes = transcript::load_notes(&d.js, &bens.id).await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].counsellor, c("ben"));
}

#[tokio::test]
async fn a_supervisor_demoted_in_the_directory_loses_supervisor_actions_at_once() {
    let d = Dashboard::start().await;
    let mut commands = d.fake_router(RouterReply::Done).await;
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    sam.send(&ClientMsg::Switchboard { on: true }).await;
    assert!(matches!(
        commands.recv().await.unwrap(),
        RouterCommand::Switchboard { .. }
    ));

    let store = d.js.get_key_value(buckets::DIRECTORY).await.unwrap();
    let mut dir = nwd_runtime::directory::load(&nwd_runtime::directory::demo_path()).unwrap();
    // The line keeps a supervisor: chloe takes over.
    for s in dir.staff.iter_mut() {
        match s.id.as_str() {
            "sam" => s.role = nwd_proto::directory::Role::Counsellor,
            "chloe" => s.role = nwd_proto::directory::Role::Supervisor,
            _ => {}
        }
    }
    nwd_runtime::directory::publish(&store, &dir).await.unwrap();
    // The socket stays open (sam is still staff); the role is read live.
    // Each try is answered before the ping after it: no sleep needed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        sam.send(&ClientMsg::Switchboard { on: false }).await;
        sam.send(&ClientMsg::Ping).await;
        let refused = sam
            .expect("an answer", |m| match m {
                ServerMsg::Error { code, .. } if code == "not-a-supervisor" => Some(true),
                ServerMsg::Pong => Some(false),
                _ => None,
            })
            .await;
        if refused {
            break;
        }
    }
}

#[tokio::test]
async fn a_monitoring_ends_when_the_contact_is_resolved() {
    let d = Dashboard::start().await;
    let anas = d.contact("first words", assigned_to("ana")).await;
    let mut sam = d.socket("sam").await;
    sam.hello().await;
    sam.send(&ClientMsg::Monitor {
        contact_id: anas.id,
    })
    .await;
    sam.expect("monitoring", |m| {
        matches!(m, ServerMsg::Monitoring { .. }).then_some(())
    })
    .await;
    let at = OffsetDateTime::now_utc();
    bus::publish(
        &d.js,
        subjects::contact_resolved(&anas.id),
        &wire::msg_id::contact_resolved(&anas.id, at),
        &Envelope::new(nwd_proto::events::ContactResolved {
            contact_id: anas.id,
            channel: anas.channel.clone(),
            counsellor: c("ana"),
            disposition: Some("de-escalated".into()),
            note: None,
            at,
        }),
    )
    .await
    .unwrap();
    sam.expect("resolved", |m| {
        matches!(m, ServerMsg::Resolved { contact_id } if *contact_id == anas.id).then_some(())
    })
    .await;
    let mut late = triaged(anas.id, "after the end");
    late.message.opens_contact = false;
    d.publish_triaged(&late).await;
    sam.expect_none(Duration::from_millis(400), "a line after the end", |m| {
        matches!(m, ServerMsg::Message { .. })
    })
    .await;
}

#[tokio::test]
async fn a_warm_transfers_receiver_may_read_the_profile_and_no_one_else() {
    use nwd_proto::handover::{TransferMode, TransferTarget};
    let d = Dashboard::start().await;
    let handed = d
        .contact("hello", |r| {
            assigned_to("ana")(r);
            r.start_transfer(
                &c("ana"),
                TransferTarget::Counsellor { id: c("ben") },
                TransferMode::Warm,
                &[c("ben")],
                None,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        })
        .await;
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    ben.send(&ClientMsg::Profile {
        contact_id: handed.id,
    })
    .await;
    ben.expect("the profile", |m| {
        matches!(m, ServerMsg::Profile { contact_id, .. } if *contact_id == handed.id).then_some(())
    })
    .await;
    let mut diego = d.socket("diego").await;
    diego.hello().await;
    diego
        .send(&ClientMsg::Profile {
            contact_id: handed.id,
        })
        .await;
    diego.expect_error("not-assigned").await;
}

#[tokio::test]
async fn a_conversation_the_router_pushes_carries_its_notes_and_is_audited() {
    use nwd_proto::events::ContactViewKind;
    let d = Dashboard::start().await;
    let mine = d.contact("hello", assigned_to("ana")).await;
    let mut ana = d.socket("ana").await;
    let mut view = ana
        .expect("the conversation", |m| match m {
            ServerMsg::Conversation { contact } => Some(contact.clone()),
            _ => None,
        })
        .await;
    ana.send(&ClientMsg::Note {
        contact_id: mine.id,
        client_id: ClientReplyId::new(),
        text: "noted before the push".into(),
    })
    .await;
    ana.expect("noted", |m| {
        matches!(m, ServerMsg::Noted { .. }).then_some(())
    })
    .await;
    // The router's view has no notes; ben is shown it (a reassignment).
    view.notes.clear();
    let push = Envelope::new(DashboardPush {
        counsellor: c("ben"),
        msg: ServerMsg::Conversation { contact: view },
    });
    let mut ben = d.socket("ben").await;
    ben.hello().await;
    let client = d.nats.client().await;
    client
        .publish(subjects::dashboard_push(&c("ben")), push.to_bytes().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let shown = ben
        .expect("the pushed conversation", |m| match m {
            ServerMsg::Conversation { contact } if contact.contact_id == mine.id => {
                Some(contact.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(shown.notes.len(), 1);
    assert_eq!(shown.notes[0].text, "noted before the push");
    eventually(WAIT, "ben's view audited", || async {
        d.views_of(&mine.id)
            .await
            .iter()
            .any(|v| v.counsellor == c("ben") && v.view == ContactViewKind::Conversation)
            .then_some(())
    })
    .await;
}
