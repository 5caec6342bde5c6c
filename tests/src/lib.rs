//! The whole line in one process, for end-to-end and chaos tests: a real
//! nats-server (testkit) and every service's real `run`, each on its own
//! port with its own cancellation token, so a test can stop, crash or
//! restart any one of them. Plus a counsellor client (login + websocket)
//! and a patient (the phone simulator's API).
//!
//! Test support code: it panics with a clear message instead of returning errors.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use nwd_proto::dashboard::{ClientMsg, ServerMsg};
use nwd_testkit::NatsServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

pub const AUTH_TOKEN: &str = "e2e0000000000000000000000000auth";
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
pub const SESSION_KEY: &str = "e2e-session-key-0123456789abcdef0123456789";
/// The chat's token key in tests (never used outside tests).
pub const CHAT_TOKEN_KEY: &str = "e2e-chat-token-key-0123456789abcdef0123456789";
/// Intake's pseudonym key in tests (never used outside tests).
pub const PSEUDONYM_KEY: &str = "e2e-pseudonym-key-0123456789abcdef0123456789";
/// The line's own number and two partner doors in the demo directory.
pub const LINE_NUMBER: &str = "+15005550100";
pub const EASTSIDE_DOOR: &str = "+15005550110";
/// Patients' phones (María is in the directory; the third is unknown).
pub const MARIA: &str = "+15005550142";
pub const JAMES: &str = "+15005550143";
pub const STRANGER: &str = "+15005550144";

type Starter = Arc<
    dyn Fn(TcpListener, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A service runs on its own tokio runtime, so that a crash can drop every
/// task it spawned at once (like a killed process), not just its main task.
struct Service {
    addr: SocketAddr,
    start: Starter,
    token: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    fn launch(&mut self, listener: std::net::TcpListener) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("service runtime");
        self.token = CancellationToken::new();
        let start = self.start.clone();
        let token = self.token.clone();
        self.handle = Some(runtime.spawn(async move {
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let listener = TcpListener::from_std(listener).expect("listener");
            start(listener, token).await;
        }));
        self.runtime = Some(runtime);
    }

    fn kill(&mut self) {
        self.handle = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Every service of the line, running against one real nats-server.
pub struct Line {
    pub nats: NatsServer,
    services: HashMap<&'static str, Service>,
    /// Each service's flags, so a replica can be started with the same.
    opts: HashMap<&'static str, Vec<(&'static str, String)>>,
    pub http: reqwest::Client,
    /// The gateway's spool directory, kept across its crashes and restarts.
    gateway_spool: nwd_testkit::TempDir,
}

/// Names of the services, in start order.
pub const SERVICES: [&str; 10] = [
    "gateway",
    "chat",
    "intake",
    "triage",
    "router",
    "escalator",
    "notifier",
    "referrals",
    "dashboard",
    "phone-sim",
];

fn directory() -> PathBuf {
    nwd_runtime::directory::demo_path()
}

fn starter<C, F, Fut, E>(config: C, run: F) -> Starter
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C, TcpListener, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let run = Arc::new(run);
    Arc::new(move |listener, token| {
        let fut = run(config.clone(), listener, token);
        Box::pin(async move {
            if let Err(e) = fut.await {
                tracing::error!(error = %e, "service stopped with an error");
            }
        })
    })
}

/// Parses a service config from flags only (the environment of the test
/// process must not leak into the line under test).
fn parse<C: Parser>(args: &[String]) -> C {
    C::try_parse_from(std::iter::once("test".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("bad test config {args:?}: {e}"))
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

impl Line {
    /// Starts nats-server and every service; returns when all are ready.
    pub async fn start() -> Line {
        Self::start_with(|_| {}).await
    }

    /// Like [`Line::start`], letting the test adjust each service's flags.
    pub async fn start_with(
        adjust: impl Fn(&mut HashMap<&'static str, Vec<(&'static str, String)>>),
    ) -> Line {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let nats = NatsServer::start().await;
        let mut listeners = HashMap::new();
        for name in SERVICES {
            listeners.insert(name, nwd_testkit::listener().await);
        }
        let addr = |n: &str| listeners[n].local_addr().unwrap();
        let gateway_url = format!("http://{}", addr("gateway"));
        // The operator's bus setup; each service connects as its own user.
        nats.set_up_bus().await;
        let dir = directory().display().to_string();
        let gateway_spool = nwd_testkit::temp_dir("nwd-e2e-spool-");

        let mut opts: HashMap<&'static str, Vec<(&'static str, String)>> = HashMap::new();
        opts.insert(
            "gateway",
            vec![
                ("nats-url", nats.url_for("gateway")),
                ("ack-timeout-ms", "1000".into()),
                ("addr", addr("gateway").to_string()),
                ("public-url", gateway_url.clone()),
                ("twilio-auth-token", AUTH_TOKEN.into()),
                ("spool-dir", gateway_spool.path().display().to_string()),
                ("directory", dir.clone()),
            ],
        );
        opts.insert(
            "chat",
            vec![
                ("nats-url", nats.url_for("chat")),
                ("ack-timeout-ms", "1000".into()),
                ("addr", addr("chat").to_string()),
                ("directory", dir.clone()),
                ("token-key", CHAT_TOKEN_KEY.into()),
            ],
        );
        opts.insert(
            "intake",
            vec![
                ("nats-url", nats.url_for("intake")),
                ("metrics-addr", addr("intake").to_string()),
                ("directory", dir.clone()),
                ("pseudonym-key", PSEUDONYM_KEY.into()),
            ],
        );
        opts.insert(
            "triage",
            vec![
                ("nats-url", nats.url_for("triage")),
                ("metrics-addr", addr("triage").to_string()),
            ],
        );
        opts.insert(
            "router",
            vec![
                ("nats-url", nats.url_for("router")),
                ("metrics-addr", addr("router").to_string()),
                ("directory", dir.clone()),
                ("sweep-ms", "200".into()),
            ],
        );
        opts.insert(
            "escalator",
            vec![
                ("nats-url", nats.url_for("escalator")),
                ("metrics-addr", addr("escalator").to_string()),
                ("directory", dir.clone()),
                ("max-tick-ms", "100".into()),
                ("announce-grace-ms", "500".into()),
            ],
        );
        opts.insert(
            "notifier",
            vec![
                ("nats-url", nats.url_for("notifier")),
                ("metrics-addr", addr("notifier").to_string()),
                ("twilio-api-base", format!("http://{}", addr("phone-sim"))),
                ("account-sid", ACCOUNT_SID.into()),
                ("auth-token", AUTH_TOKEN.into()),
                ("status-callback-base", gateway_url.clone()),
                ("retry-base-ms", "100".into()),
                ("directory", dir.clone()),
                ("callback-retry-base-ms", "100".into()),
                ("callback-retry-cap-ms", "1000".into()),
                ("callback-probe-ms", "500".into()),
            ],
        );
        opts.insert(
            "referrals",
            vec![
                ("nats-url", nats.url_for("referrals")),
                ("metrics-addr", addr("referrals").to_string()),
                ("directory", dir.clone()),
                ("unknown-retry-ms", "200".into()),
            ],
        );
        opts.insert(
            "dashboard",
            vec![
                ("nats-url", nats.url_for("dashboard")),
                ("addr", addr("dashboard").to_string()),
                ("directory", dir.clone()),
                ("session-key", SESSION_KEY.into()),
                ("heartbeat-ms", "1000".into()),
            ],
        );
        opts.insert(
            "phone-sim",
            vec![
                ("addr", addr("phone-sim").to_string()),
                ("gateway-url", gateway_url.clone()),
                ("account-sid", ACCOUNT_SID.into()),
                ("auth-token", AUTH_TOKEN.into()),
            ],
        );
        adjust(&mut opts);

        let f = |n: &str| flags(&opts[n]);
        let mut starters: HashMap<&'static str, Starter> = HashMap::new();
        starters.insert(
            "gateway",
            starter(
                parse::<nwd_gateway::Config>(&f("gateway")),
                nwd_gateway::run,
            ),
        );
        starters.insert(
            "chat",
            starter(parse::<nwd_chat::Config>(&f("chat")), nwd_chat::run),
        );
        starters.insert(
            "intake",
            starter(parse::<nwd_intake::Config>(&f("intake")), nwd_intake::run),
        );
        starters.insert(
            "triage",
            starter(parse::<nwd_triage::Config>(&f("triage")), nwd_triage::run),
        );
        starters.insert(
            "router",
            starter(parse::<nwd_router::Config>(&f("router")), nwd_router::run),
        );
        starters.insert(
            "escalator",
            starter(
                parse::<nwd_escalator::Config>(&f("escalator")),
                nwd_escalator::run,
            ),
        );
        starters.insert(
            "notifier",
            starter(
                parse::<nwd_notifier::Config>(&f("notifier")),
                nwd_notifier::run,
            ),
        );
        starters.insert(
            "referrals",
            starter(
                parse::<nwd_referrals::Config>(&f("referrals")),
                nwd_referrals::run,
            ),
        );
        starters.insert(
            "dashboard",
            starter(
                parse::<nwd_dashboard::Config>(&f("dashboard")),
                nwd_dashboard::run,
            ),
        );
        starters.insert(
            "phone-sim",
            starter(
                parse::<nwd_phone_sim::Config>(&f("phone-sim")),
                nwd_phone_sim::run,
            ),
        );

        let mut services = HashMap::new();
        for name in SERVICES {
            let listener = listeners.remove(name).unwrap().into_std().unwrap();
            let addr = listener.local_addr().unwrap();
            let start = starters.remove(name).unwrap();
            let mut service = Service {
                addr,
                start,
                token: CancellationToken::new(),
                runtime: None,
                handle: None,
            };
            service.launch(listener);
            services.insert(name, service);
        }
        let line = Line {
            nats,
            services,
            opts,
            http: reqwest::Client::new(),
            gateway_spool,
        };
        for name in SERVICES {
            nwd_testkit::wait_ready(line.addr(name)).await;
        }
        line
    }

    /// Where the gateway spools webhooks while NATS does not answer.
    pub fn gateway_spool_dir(&self) -> &std::path::Path {
        self.gateway_spool.path()
    }

    /// The HTTP address of a service (its ops port for internal services).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("no service {name}"))
            .addr
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(name), path)
    }

    /// Stops a service gracefully (SIGTERM-like) and waits for it to finish.
    pub async fn stop(&mut self, name: &str) {
        let s = self.services.get_mut(name).unwrap();
        s.token.cancel();
        if let Some(h) = s.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
        s.kill();
    }

    /// Kills a service at once: every task it spawned is dropped mid-flight,
    /// like a killed process. Nothing is drained or acknowledged.
    pub async fn crash(&mut self, name: &str) {
        self.services.get_mut(name).unwrap().kill();
        // Let the OS close its sockets.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Starts another replica of `of` (router or escalator) named `name`,
    /// with the same flags on its own ops port, and waits until it is ready.
    pub async fn add_replica(&mut self, name: &'static str, of: &str) {
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let mut flags = self.opts[of].clone();
        flags.retain(|(k, _)| *k != "metrics-addr");
        flags.push(("metrics-addr", addr.to_string()));
        let f = crate::flags(&flags);
        let start = match of {
            "router" => starter(parse::<nwd_router::Config>(&f), nwd_router::run),
            "escalator" => starter(parse::<nwd_escalator::Config>(&f), nwd_escalator::run),
            other => panic!("no replicas of {other}"),
        };
        let mut service = Service {
            addr,
            start,
            token: CancellationToken::new(),
            runtime: None,
            handle: None,
        };
        service.launch(listener.into_std().unwrap());
        self.services.insert(name, service);
        self.opts.insert(name, flags);
        nwd_testkit::wait_ready(addr).await;
    }

    /// Starts a stopped or crashed service again on the same port and waits until ready.
    pub async fn restart(&mut self, name: &str) {
        self.crash(name).await;
        let s = self.services.get_mut(name).unwrap();
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(s.addr) {
                Ok(l) => break l,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 100, "cannot rebind {name} on {}: {e}", s.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        s.launch(listener);
        let addr = s.addr;
        nwd_testkit::wait_ready(addr).await;
    }

    /// A patient texts the line through the phone simulator (signed webhook, Twilio-style retries).
    pub async fn patient_sends(&self, from: &str, to: &str, body: &str) -> String {
        let res = self
            .http
            .post(self.url(
                "phone-sim",
                &format!("/api/phones/{}/messages", urlencode(from)),
            ))
            .json(&serde_json::json!({ "to": to, "body": body }))
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "phone-sim refused the message: {}",
            res.status()
        );
        let v: serde_json::Value = res.json().await.unwrap();
        v["message_sid"].as_str().unwrap_or_default().to_owned()
    }

    /// Every message the line sent through the (simulated) Twilio REST API.
    pub async fn sent_messages(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .http
            .get(self.url("phone-sim", "/api/messages"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v {
            serde_json::Value::Array(a) => a,
            other => other["messages"].as_array().cloned().unwrap_or_default(),
        }
    }

    /// The signed form of an inbound SMS, as Twilio would post it to the gateway.
    pub fn signed_sms(&self, sid: &str, from: &str, to: &str, body: &str) -> (String, String) {
        let params: Vec<(String, String)> = vec![
            ("MessageSid".into(), sid.into()),
            ("SmsSid".into(), sid.into()),
            ("AccountSid".into(), ACCOUNT_SID.into()),
            ("From".into(), from.into()),
            ("To".into(), to.into()),
            ("Body".into(), body.into()),
            ("NumMedia".into(), "0".into()),
            ("NumSegments".into(), "1".into()),
            ("ApiVersion".into(), "2010-04-01".into()),
        ];
        let url = self.url("gateway", "/v1/sms/twilio");
        let signature = nwd_twilio::signature::compute(AUTH_TOKEN, &url, &params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        (body, signature)
    }

    /// Posts a form to the gateway's SMS webhook with the given signature.
    pub async fn post_sms_webhook(&self, form: &str, signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("gateway", "/v1/sms/twilio"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(s) = signature {
            req = req.header("x-twilio-signature", s);
        }
        req.send().await.unwrap()
    }

    /// Intake's KV key of the thread of `sender` (a number or channel address).
    pub fn thread_key(&self, sender: &str) -> String {
        nwd_proto::Pseudonymiser::new(PSEUDONYM_KEY.as_bytes())
            .expect("test pseudonym key")
            .thread_key(&nwd_proto::Address::parse(sender))
    }

    /// A JetStream context on the line's server, for assertions.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.nats.client().await)
    }

    /// How many messages a stream holds on a subject filter.
    pub async fn count(&self, stream: &str, subject: &str) -> u64 {
        let js = self.jetstream().await;
        let mut s = js.get_stream(stream).await.unwrap();
        let info = s.info().await.unwrap();
        if subject.is_empty() {
            return info.state.messages;
        }
        let msgs = nwd_runtime::transcript::read_subjects(
            &js,
            static_stream(stream),
            vec![subject.to_owned()],
        )
        .await
        .unwrap();
        msgs.len() as u64
    }
}

fn static_stream(name: &str) -> &'static str {
    use nwd_proto::streams::*;
    [INBOUND, CONTACTS, OUTBOUND, AUDIT]
        .into_iter()
        .find(|s| *s == name)
        .unwrap()
}

impl Drop for Line {
    fn drop(&mut self) {
        for s in self.services.values_mut() {
            s.token.cancel();
            s.kill();
        }
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A counsellor in a browser: logged in, with a dashboard websocket.
pub struct Counsellor {
    pub id: String,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Messages received but not yet matched by an `expect`.
    pub seen: Vec<ServerMsg>,
}

impl Counsellor {
    /// Logs in (demo password `<id>-demo`) and opens the dashboard websocket.
    pub async fn connect(line: &Line, id: &str) -> Counsellor {
        let cookie = login(line, id, &format!("{id}-demo")).await;
        let url = format!("ws://{}/ws", line.addr("dashboard"));
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("dashboard websocket");
        Counsellor {
            id: id.to_owned(),
            ws,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        let text = serde_json::to_string(msg).unwrap();
        self.ws.send(WsMessage::Text(text.into())).await.unwrap();
    }

    /// Replies in `contact` as a browser does (with a fresh id of its own)
    /// and returns the outbound id the dashboard derives for it (never the
    /// browser's).
    pub async fn reply(
        &mut self,
        contact: nwd_proto::ContactId,
        body: &str,
    ) -> nwd_proto::OutboundId {
        let client_id = nwd_proto::ClientReplyId::new();
        self.send(&ClientMsg::Reply {
            contact_id: contact,
            client_id,
            body: body.into(),
        })
        .await;
        nwd_proto::wire::outbound::counsellor_reply(
            &contact,
            &nwd_proto::CounsellorId::parse(&self.id).unwrap(),
            &client_id,
        )
    }

    /// Waits until a received message matches `pick` (checking earlier,
    /// unmatched messages first). Panics after `within`.
    pub async fn expect<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&ServerMsg) -> Option<T>,
    ) -> T {
        if let Some(i) = self.seen.iter().position(|m| pick(m).is_some()) {
            let m = self.seen.remove(i);
            return pick(&m).unwrap();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} waited {within:?} for {what}; got {:#?}",
                        self.id, self.seen
                    )
                });
            let frame = next
                .unwrap_or_else(|| panic!("{}: socket closed waiting for {what}", self.id))
                .unwrap();
            if let WsMessage::Text(t) = frame {
                let msg: ServerMsg = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("bad server frame {t}: {e}"));
                if let Some(v) = pick(&msg) {
                    return v;
                }
                self.seen.push(msg);
            }
        }
    }

    /// Sends nothing and asserts that nothing matching `pick` arrives within `window`.
    pub async fn expect_none(
        &mut self,
        window: Duration,
        what: &str,
        pick: impl Fn(&ServerMsg) -> bool,
    ) {
        assert!(
            !self.seen.iter().any(&pick),
            "{} already had {what}",
            self.id
        );
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let WsMessage::Text(t) = frame {
                let msg: ServerMsg = serde_json::from_str(&t).unwrap();
                assert!(!pick(&msg), "{} got unexpected {what}: {msg:?}", self.id);
                self.seen.push(msg);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Logs in to the dashboard and returns the `Cookie` header value.
pub async fn login(line: &Line, user: &str, password: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client
        .post(line.url("dashboard", "/login"))
        .form(&[("username", user), ("password", password)])
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success() || res.status().is_redirection(),
        "login failed: {}",
        res.status()
    );
    let set_cookie = res
        .headers()
        .get("set-cookie")
        .expect("session cookie")
        .to_str()
        .unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

// ------------------------------------------------------------ shared helpers

/// The external backup line of the demo directory.
pub const BACKUP_LINE: &str = "+15005550199";

/// How long the helpers below wait for something to happen.
const WAIT: Duration = Duration::from_secs(15);

/// The demo directory with a one-second ladder (and a short language wait),
/// written to a fresh temporary file.
pub fn fast_directory() -> PathBuf {
    let demo = std::fs::read_to_string(directory()).unwrap();
    let fast = format!(
        "{demo}\n[line.ladder]\ntimeouts_ms = {{ imminent = 1000, high = 1000, moderate = 1000, low = 1000 }}\nlanguage_wait_ms = 500\n"
    );
    let path = std::env::temp_dir().join(format!("nwd-fast-ladder-{}.toml", ulid::Ulid::new()));
    std::fs::write(&path, fast).unwrap();
    path
}

impl Line {
    /// The whole line with the one-second ladder of [`fast_directory`] and a
    /// 1.5 s grace before a disconnected counsellor's conversations are requeued.
    pub async fn start_fast() -> Line {
        let dir = fast_directory().display().to_string();
        Line::start_with(move |opts| {
            for svc in ["router", "escalator", "intake", "dashboard"] {
                let o = opts.get_mut(svc).unwrap();
                o.retain(|(k, _)| *k != "directory");
                o.push(("directory", dir.clone()));
            }
            opts.get_mut("router")
                .unwrap()
                .push(("orphan-grace-ms", "1500".into()));
        })
        .await
    }

    /// Every event stored on `subject` in `stream`, decoded.
    pub async fn stored<E: nwd_proto::Event>(
        &self,
        stream: &'static str,
        subject: String,
    ) -> Vec<E> {
        let js = self.jetstream().await;
        nwd_runtime::transcript::read_subjects(&js, stream, vec![subject])
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                nwd_proto::Envelope::<E>::from_bytes(&m.payload)
                    .unwrap()
                    .data
            })
            .collect()
    }

    /// Bodies of the SMS the phone simulator received for `to`.
    pub async fn sms_to(&self, to: &str) -> Vec<String> {
        self.sent_messages()
            .await
            .into_iter()
            .filter(|m| m["to"] == to)
            .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn contacts_bucket(&self) -> async_nats::jetstream::kv::Store {
        let js = self.jetstream().await;
        js.get_key_value(nwd_proto::streams::buckets::CONTACTS)
            .await
            .unwrap()
    }

    /// Every contact record.
    pub async fn records(&self) -> Vec<nwd_proto::contact::ContactRecord> {
        let store = self.contacts_bucket().await;
        let mut keys = store.keys().await.unwrap();
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.unwrap();
            if let Some(r) = nwd_runtime::kv::get(&store, &k).await.unwrap().value {
                out.push(r);
            }
        }
        out
    }

    /// One contact record (it must exist).
    pub async fn record(&self, id: &nwd_proto::ContactId) -> nwd_proto::contact::ContactRecord {
        let store = self.contacts_bucket().await;
        nwd_runtime::kv::get(&store, &id.to_string())
            .await
            .unwrap()
            .value
            .unwrap()
    }

    /// The first contact record to appear (for tests with one contact).
    pub async fn first_contact(&self) -> nwd_proto::ContactId {
        nwd_testkit::eventually(WAIT, "a contact record", || async {
            self.records().await.first().map(|r| r.id)
        })
        .await
    }
}

impl Counsellor {
    /// Logs in, waits for the hello, and goes available.
    pub async fn available(line: &Line, id: &str) -> Counsellor {
        let mut c = Counsellor::connect(line, id).await;
        c.expect(WAIT, "hello", |m| {
            matches!(m, ServerMsg::Hello { .. }).then_some(())
        })
        .await;
        c.send(&ClientMsg::SetPresence {
            status: nwd_proto::dashboard::Presence::Available,
        })
        .await;
        c.expect(WAIT, "presence ack", |m| {
            matches!(
                m,
                ServerMsg::Presence {
                    status: nwd_proto::dashboard::Presence::Available
                }
            )
            .then_some(())
        })
        .await;
        c
    }
}

/// Picks the offer whose messages include `body`.
pub fn offer_with(
    body: &'static str,
) -> impl FnMut(&ServerMsg) -> Option<nwd_proto::dashboard::ContactView> {
    move |m| match m {
        ServerMsg::Offer { contact } if contact.messages.iter().any(|x| x.body == body) => {
            Some(contact.clone())
        }
        _ => None,
    }
}

// ------------------------------------------------------------ patient chat

/// A patient's chat page, as a websocket client of the chat service.
pub struct ChatPatient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames received but not yet matched by an `expect`.
    pub seen: Vec<nwd_proto::chat::ServerFrame>,
}

impl ChatPatient {
    /// Opens `/ws` (with `?partner=` when given) from `origin` (`None`: no
    /// `Origin` header). The HTTP refusal when the chat refuses the upgrade.
    pub async fn open(
        line: &Line,
        partner: Option<&str>,
        origin: Option<&str>,
    ) -> Result<ChatPatient, tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let query = partner.map_or_else(String::new, |p| format!("?partner={p}"));
        let mut req = format!("ws://{}/ws{query}", line.addr("chat"))
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(ChatPatient {
            ws,
            seen: Vec::new(),
        })
    }

    /// The chat's own origin (what its page sends).
    pub fn own_origin(line: &Line) -> String {
        format!("http://{}", line.addr("chat"))
    }

    /// A new session through `partner`'s door: the token and the session.
    pub async fn start(
        line: &Line,
        partner: Option<&str>,
    ) -> (ChatPatient, String, nwd_proto::ChatSessionId) {
        use nwd_proto::chat::{ClientFrame, ServerFrame};
        let mut p = Self::open(line, partner, Some(&Self::own_origin(line)))
            .await
            .expect("chat websocket");
        p.send(&ClientFrame::Hello {
            token: None,
            last_seen: 0,
        })
        .await;
        let (token, session) = p
            .expect(WAIT, "a new session", |f| match f {
                ServerFrame::Session { token, session, .. } => Some((token.clone(), *session)),
                _ => None,
            })
            .await;
        p.expect(WAIT, "welcome", |f| {
            matches!(f, ServerFrame::Welcome { .. }).then_some(())
        })
        .await;
        (p, token, session)
    }

    /// Resumes the session of `token` having seen ours up to `last_seen`:
    /// the client and the welcome's `(stored_seq, own messages)`.
    pub async fn resume(
        line: &Line,
        token: &str,
        last_seen: u64,
    ) -> (ChatPatient, nwd_proto::chat::ServerFrame) {
        use nwd_proto::chat::{ClientFrame, ServerFrame};
        let mut p = Self::open(line, None, Some(&Self::own_origin(line)))
            .await
            .expect("chat websocket");
        p.send(&ClientFrame::Hello {
            token: Some(token.to_owned()),
            last_seen,
        })
        .await;
        let first = p
            .expect(WAIT, "welcome or refusal", |f| match f {
                ServerFrame::Welcome { .. } | ServerFrame::Refused { .. } => Some(f.clone()),
                _ => None,
            })
            .await;
        (p, first)
    }

    pub async fn send(&mut self, frame: &nwd_proto::chat::ClientFrame) {
        self.ws
            .send(WsMessage::text(serde_json::to_string(frame).unwrap()))
            .await
            .unwrap();
    }

    /// Sends a message and waits for the server's ack of it.
    pub async fn say(&mut self, seq: u64, text: &str) {
        use nwd_proto::chat::{ClientFrame, ServerFrame};
        self.send(&ClientFrame::Message {
            seq,
            text: text.to_owned(),
            safe_now: None,
        })
        .await;
        self.expect(WAIT, "the ack of a message", |f| {
            matches!(f, ServerFrame::Ack { seq: s } if *s == seq).then_some(())
        })
        .await;
    }

    /// Waits for the first frame (already seen or new) `f` accepts.
    pub async fn expect<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&nwd_proto::chat::ServerFrame) -> Option<T>,
    ) -> T {
        if let Some(i) = self.seen.iter().position(|m| f(m).is_some()) {
            let m = self.seen.remove(i);
            return f(&m).unwrap();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {within:?}; seen {:?}", self.seen));
            match next {
                Some(Ok(WsMessage::Text(t))) => {
                    let m: nwd_proto::chat::ServerFrame = serde_json::from_str(&t).unwrap();
                    if let Some(v) = f(&m) {
                        return v;
                    }
                    self.seen.push(m);
                }
                Some(Ok(_)) => {}
                other => panic!(
                    "chat socket ended while waiting for {what}: {other:?}; seen {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits until the server closes the socket.
    pub async fn closed(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the chat socket stayed open"),
                Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return,
                Ok(Some(Ok(WsMessage::Text(t)))) => {
                    self.seen.push(serde_json::from_str(&t).unwrap());
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Drops the connection at once (no close handshake), like a lost network.
    pub fn drop_connection(self) {
        drop(self);
    }
}

/// Every callback a partner endpoint received: (webhook-id, the Task's
/// status, whether its Standard Webhooks signature verified).
pub type Callbacks = Arc<std::sync::Mutex<Vec<(String, String, bool)>>>;

/// A partner's callback endpoint on 127.0.0.1 that checks every POST's
/// signature with `secret` and answers 204. Returns its URL.
pub async fn partner_callbacks(secret: &'static str) -> (String, Callbacks) {
    let calls: Callbacks = Arc::default();
    let sink = calls.clone();
    let app = axum::Router::new().route(
        "/callbacks",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let verified = standardwebhooks::Webhook::new(secret)
                        .expect("a valid test secret")
                        .verify(&body, &headers)
                        .is_ok();
                    let task: serde_json::Value =
                        serde_json::from_slice(&body).expect("a Task as JSON");
                    let id = headers["webhook-id"]
                        .to_str()
                        .expect("webhook-id")
                        .to_owned();
                    let status = task["status"].as_str().expect("a status").to_owned();
                    sink.lock().expect("callbacks").push((id, status, verified));
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = nwd_testkit::listener().await;
    let url = format!("http://{}/callbacks", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("partner endpoint") });
    (url, calls)
}

impl Line {
    /// Whether `service` has applied a directory version from the bucket
    /// (`nwd_directory_updates_total{service,outcome="applied"}`; the
    /// services run in the test's process, which must have installed the
    /// metrics recorder before the line started).
    pub async fn directory_applied(&self, service: &str) -> bool {
        let Ok(res) = reqwest::get(format!("http://{}/metrics", self.addr(service))).await else {
            return false;
        };
        let text = res.text().await.unwrap_or_default();
        text.lines().any(|l| {
            l.starts_with("nwd_directory_updates_total")
                && l.contains(&format!("service=\"{service}\""))
                && l.contains("outcome=\"applied\"")
        })
    }
}
