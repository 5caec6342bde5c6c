//! NATS down at the edge: signed webhooks are fsynced to the gateway's
//! spool, answered 200, and forwarded in order, exactly once, when NATS is
//! back — across a gateway crash and a torn last record. Only a full spool
//! answers 503. Real nats-server, real HTTP, the gateway on its own runtime
//! so that a crash drops every task it spawned at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use nwd_gateway::spool::SpoolArgs;
use nwd_gateway::{Config, SMS_PATH, STATUS_PATH};
use nwd_proto::events::{InboundSms, SmsStatus};
use nwd_proto::{Envelope, streams, subjects};
use nwd_runtime::bus::NatsArgs;
use nwd_runtime::service::Secret;
use nwd_testkit::{NatsServer, eventually};
use nwd_twilio::{InboundSmsForm, StatusCallbackForm, new_message_sid, signature};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "5b2c0c8f3c9e4a8a9d1b6e7f00112233";
const ACCOUNT: &str = "AC9af211329b2fc82e5efe906062c73008";
const PATIENT: &str = "+15005550142";
const LINE: &str = "+15005550100";
const PUBLIC_URL: &str = "https://gateway.example.org";
/// A second gateway, configured at Twilio as the number's Fallback URL.
const FALLBACK_URL: &str = "https://gateway-b.example.org:8443";

/// A gateway on its own tokio runtime: [`Gateway::crash`] drops the
/// runtime, and with it every task mid-flight, like `kill -9`.
struct Gateway {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(nats_url: &str, spool_dir: &Path, spool_max_bytes: u64) -> Self {
        Self::start_with(nats_url, spool_dir, spool_max_bytes, PUBLIC_URL, None).await
    }

    async fn start_with(
        nats_url: &str,
        spool_dir: &Path,
        spool_max_bytes: u64,
        public_url: &str,
        url_fragment: Option<&str>,
    ) -> Self {
        nwd_testkit::install_crypto();
        let listener = nwd_testkit::listener().await.into_std().unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            nats: NatsArgs {
                ack_timeout_ms: 500,
                ..NatsArgs::local(nats_url)
            },
            addr,
            public_url: public_url.to_owned(),
            twilio_auth_token: Secret::new(TOKEN),
            twilio_url_fragment: url_fragment.map(str::to_owned),
            directory: nwd_runtime::directory::demo_path(),
            max_body_bytes: 65536,
            spool: SpoolArgs {
                dir: spool_dir.to_owned(),
                max_bytes: spool_max_bytes,
            },
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        runtime.spawn(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            nwd_gateway::run(config, listener, stop).await.unwrap();
        });
        let gw = Self {
            addr,
            runtime: Some(runtime),
            shutdown,
            http: reqwest::Client::new(),
        };
        // Ready even while NATS is away (the spool takes webhooks), so wait
        // for "ready" without "degraded": streams made, NATS answering. A
        // restart after a kill may start degraded; forwarding goes on anyway.
        eventually(Duration::from_secs(20), "gateway ready", || async {
            let (status, body) = gw.get("/readyz").await;
            (status == 200 && !body.contains("degraded")).then_some(())
        })
        .await;
        gw
    }

    /// Every task of the gateway dropped at once; nothing drained.
    fn crash(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    async fn post_signed(&self, path: &str, params: &[(String, String)]) -> reqwest::Response {
        self.post_signed_over(&format!("{PUBLIC_URL}{path}"), path, params)
            .await
    }

    /// Posts to `path`, signed over `signed_url` (what Twilio requested).
    async fn post_signed_over(
        &self,
        signed_url: &str,
        path: &str,
        params: &[(String, String)],
    ) -> reqwest::Response {
        let sig = signature::compute(TOKEN, signed_url, params);
        self.http
            .post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(nwd_twilio::SIGNATURE_HEADER, sig)
            .body(nwd_twilio::form::encode(params))
            .send()
            .await
            .unwrap()
    }

    /// Posts a new signed SMS; returns its MessageSid and the answer's status.
    async fn sms(&self, body: &str) -> (String, u16) {
        let form = InboundSmsForm::new(new_message_sid(), ACCOUNT, PATIENT, LINE, body);
        let status = self.post_signed(SMS_PATH, &form.params()).await.status();
        (form.message_sid, status.as_u16())
    }

    /// Posts `n` signed SMS (`<label> <i>`), each of which must be answered
    /// 200; their MessageSids in order.
    async fn sms_all_taken(&self, n: usize, label: &str) -> Vec<String> {
        let mut sent = Vec::new();
        for i in 0..n {
            let (sid, status) = self.sms(&format!("{label} {i}")).await;
            assert_eq!(status, 200, "SMS {i} answered {status} while NATS is down");
            sent.push(sid);
        }
        sent
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let res = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Every message on INBOUND in stream order: (subject, Nats-Msg-Id, payload).
async fn inbound(server: &NatsServer) -> Vec<(String, String, bytes::Bytes)> {
    let js = jetstream::new(server.client().await);
    let stream = js.get_stream(streams::INBOUND).await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((m.subject.to_string(), id, m.payload));
    }
    out
}

/// MessageSids of the inbound SMS on INBOUND, in stream order, once it holds `n`.
async fn stored_sids(server: &NatsServer, n: usize, within: Duration) -> Vec<String> {
    let sms = subjects::inbound_sms();
    eventually(within, &format!("{n} SMS on INBOUND"), || async {
        let sids: Vec<String> = inbound(server)
            .await
            .into_iter()
            .filter(|(s, _, _)| *s == sms)
            .map(|(_, id, payload)| {
                let env = Envelope::<InboundSms>::from_bytes(&payload).unwrap();
                assert_eq!(
                    env.data.message_sid.as_str(),
                    id,
                    "Nats-Msg-Id is the MessageSid"
                );
                id
            })
            .collect();
        (sids.len() >= n).then_some(sids)
    })
    .await
}

fn spool_dir() -> (nwd_testkit::TempDir, PathBuf) {
    let tmp = nwd_testkit::temp_dir("nwd-gateway-spool-");
    let dir = tmp.path().join("spool");
    (tmp, dir)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sms_while_nats_is_down_are_answered_200_and_stored_once_in_order() {
    nwd_runtime::telemetry::metrics_handle();
    let mut server = NatsServer::start().await;
    server.set_up_bus().await;
    let (_tmp, dir) = spool_dir();
    let gw = Gateway::start(&server.url_for("gateway"), &dir, 8 << 20).await;

    server.kill();
    let sent = gw.sms_all_taken(100, "message").await;
    // A delivery status while NATS is down is spooled the same way.
    let status_sid = new_message_sid();
    let form = StatusCallbackForm::new(&status_sid, "delivered", ACCOUNT, LINE, PATIENT);
    assert_eq!(
        gw.post_signed(STATUS_PATH, &form.params()).await.status(),
        200
    );

    assert_eq!(gw.metric("nwd_gateway_spool_depth").await, Some(101.0));
    assert_eq!(
        gw.metric("nwd_gateway_spool_max_bytes").await,
        Some(f64::from(8u32 << 20))
    );
    assert!(gw.metric("nwd_gateway_spool_bytes").await > Some(0.0));
    assert!(gw.metric("nwd_gateway_spool_oldest_age_seconds").await >= Some(0.0));
    // The gateway stays in rotation while it can still keep webhooks.
    eventually(Duration::from_secs(5), "ready, degraded", || async {
        let (status, body) = gw.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        body.contains("degraded").then_some(())
    })
    .await;

    server.restart().await;
    let stored = stored_sids(&server, 100, Duration::from_secs(30)).await;
    assert_eq!(
        stored, sent,
        "all 100, once each, in the order they arrived"
    );
    let status_id = format!("status:{status_sid}:delivered");
    let all = eventually(Duration::from_secs(10), "the status stored", || async {
        let all = inbound(&server).await;
        all.iter().any(|(_, id, _)| *id == status_id).then_some(all)
    })
    .await;
    let (_, _, payload) = all.iter().find(|(_, id, _)| *id == status_id).unwrap();
    let env = Envelope::<SmsStatus>::from_bytes(payload).unwrap();
    assert_eq!(env.data.message_sid.as_str(), status_sid);

    eventually(Duration::from_secs(5), "the spool drained", || async {
        (gw.metric("nwd_gateway_spool_depth").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        gw.metric("nwd_gateway_spool_forwarded_total").await,
        Some(101.0)
    );
    assert!(segments(&dir).is_empty(), "forwarded segments are deleted");
    // Back to the normal path: stored before the answer.
    let (sid, status) = gw.sms("after").await;
    assert_eq!(status, 200);
    assert_eq!(
        stored_sids(&server, 101, Duration::from_secs(5))
            .await
            .last(),
        Some(&sid)
    );
    assert_eq!(inbound(&server).await.len(), 102, "nothing doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nats_is_waited_out_on_the_spool_and_nothing_doubles() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let (_tmp, dir) = spool_dir();
    let gw = Gateway::start(&server.url_for("gateway"), &dir, 8 << 20).await;

    // SIGSTOP: the connection stays open, publishes are written to the
    // socket and never acked. The first one waits out the publish timeout.
    server.pause();
    let sent = gw.sms_all_taken(10, "frozen").await;
    server.resume();
    // The first publish may reach the stream itself once the server thaws;
    // its forward from the spool then is a duplicate the stream swallows.
    let stored = stored_sids(&server, 10, Duration::from_secs(30)).await;
    assert_eq!(stored, sent);
    eventually(Duration::from_secs(10), "the spool drained", || async {
        segments(&dir).is_empty().then_some(())
    })
    .await;
    assert_eq!(inbound(&server).await.len(), 10, "nothing doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_crashed_with_a_full_spool_forwards_it_after_restart_once() {
    let mut server = NatsServer::start().await;
    server.set_up_bus().await;
    let url = server.url_for("gateway");
    let (_tmp, dir) = spool_dir();
    let gw = Gateway::start(&url, &dir, 8 << 20).await;

    server.kill();
    let sent = gw.sms_all_taken(40, "before the crash").await;
    gw.crash();
    assert!(!segments(&dir).is_empty(), "the spool outlives the crash");

    server.restart().await;
    // Restarted on the same spool: it forwards; crash it again as soon as
    // some are through (mid-way, most likely), and start once more.
    let gw = Gateway::start(&url, &dir, 8 << 20).await;
    eventually(Duration::from_secs(20), "forwarding started", || async {
        (!inbound(&server).await.is_empty()).then_some(())
    })
    .await;
    gw.crash();
    let gw = Gateway::start(&url, &dir, 8 << 20).await;

    let stored = stored_sids(&server, 40, Duration::from_secs(30)).await;
    assert_eq!(stored, sent, "nothing lost, nothing doubled, in order");
    eventually(Duration::from_secs(10), "the spool drained", || async {
        segments(&dir).is_empty().then_some(())
    })
    .await;
    assert_eq!(inbound(&server).await.len(), 40);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_ignored_and_does_not_block_replay() {
    let mut server = NatsServer::start().await;
    server.set_up_bus().await;
    let url = server.url_for("gateway");
    let (_tmp, dir) = spool_dir();
    let gw = Gateway::start(&url, &dir, 8 << 20).await;
    server.kill();
    let mut sent = gw.sms_all_taken(5, "spooled").await;
    gw.crash();

    // A crash mid-append leaves half a record at the tail (it was never
    // answered 200, so Twilio still holds it).
    let last = segments(&dir).pop().expect("a segment");
    let torn = nwd_gateway::spool::encode("nwd.v1.inbound.sms", "SMtorn", &[b'x'; 300], 0);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&last, &bytes).unwrap();

    server.restart().await;
    let gw = Gateway::start(&url, &dir, 8 << 20).await;
    // A new webhook after the restart lands behind the valid records, not
    // behind the torn bytes.
    let (sid, status) = gw.sms("after the restart").await;
    assert_eq!(status, 200);
    sent.push(sid);
    let stored = stored_sids(&server, 6, Duration::from_secs(20)).await;
    assert_eq!(stored, sent);
    assert!(
        inbound(&server)
            .await
            .iter()
            .all(|(_, id, _)| id != "SMtorn"),
        "the torn record is never forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_what_it_took_is_still_forwarded() {
    let mut server = NatsServer::start().await;
    server.set_up_bus().await;
    let (_tmp, dir) = spool_dir();
    // Room for a handful of SMS envelopes.
    let gw = Gateway::start(&server.url_for("gateway"), &dir, 8 * 1024).await;
    server.kill();

    let mut sent = Vec::new();
    let refused = loop {
        let form = InboundSmsForm::new(new_message_sid(), ACCOUNT, PATIENT, LINE, "fill");
        let res = gw.post_signed(SMS_PATH, &form.params()).await;
        if res.status() == 503 {
            break res;
        }
        assert_eq!(res.status(), 200);
        sent.push(form.message_sid);
        assert!(sent.len() < 100, "the spool never filled");
    };
    assert!(sent.len() >= 3, "a few were spooled first: {}", sent.len());
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    // Full and NATS away: nothing can keep a webhook now, so out of rotation.
    eventually(Duration::from_secs(5), "not ready", || async {
        (gw.get("/readyz").await.0 == 503).then_some(())
    })
    .await;

    server.restart().await;
    let stored = stored_sids(&server, sent.len(), Duration::from_secs(20)).await;
    assert_eq!(stored, sent);
    let (_, status) = gw.sms("room again").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_with_connection_overrides_and_a_fallback_gateway_validate() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let (_tmp, dir) = spool_dir();
    let (_tmp_b, dir_b) = spool_dir();
    // As configured at Twilio: Request URL and Fallback URL, each with
    // connection overrides in the fragment (which never reaches us).
    let overrides = "rc=3&rp=all&ct=2000&rt=10000";
    let primary = Gateway::start_with(
        &server.url_for("gateway"),
        &dir,
        8 << 20,
        PUBLIC_URL,
        Some(overrides),
    )
    .await;
    let fallback = Gateway::start_with(
        &server.url_for("gateway"),
        &dir_b,
        8 << 20,
        FALLBACK_URL,
        Some(overrides),
    )
    .await;
    let form = InboundSmsForm::new(new_message_sid(), ACCOUNT, PATIENT, LINE, "hello?");
    let params = form.params();

    // The primary did not answer in time; Twilio tries the Fallback URL,
    // signing the URL as configured, fragment included.
    let res = fallback
        .post_signed_over(
            &format!("{FALLBACK_URL}{SMS_PATH}#{overrides}"),
            SMS_PATH,
            &params,
        )
        .await;
    assert_eq!(res.status(), 200);
    // The same webhook reaches the primary after all, signed without the
    // fragment (were Twilio to drop it): valid, and a duplicate.
    let res = primary
        .post_signed_over(&format!("{PUBLIC_URL}{SMS_PATH}"), SMS_PATH, &params)
        .await;
    assert_eq!(res.status(), 200);
    // A signature over another gateway's URL, or another fragment, is not valid here.
    for wrong in [
        format!("{PUBLIC_URL}{SMS_PATH}#{overrides}"),
        format!("{FALLBACK_URL}{SMS_PATH}#rc=5"),
    ] {
        let res = fallback.post_signed_over(&wrong, SMS_PATH, &params).await;
        assert_eq!(res.status(), 403, "{wrong}");
    }
    assert_eq!(
        stored_sids(&server, 1, Duration::from_secs(5)).await,
        [form.message_sid]
    );
    assert_eq!(
        inbound(&server).await.len(),
        1,
        "stored once across both gateways"
    );
}

/// Figures for ADR 0011, not an assertion: the p50/p99 of a JetStream
/// publish+ack to the hub (file storage, `sync_interval: always`) against
/// the p50/p99 of a spool append+fsync on the same disk, same payload, in
/// the same run. `cargo nextest run -p nwd-gateway --run-ignored only
/// -E 'test(measure)' --no-capture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the ADR, prints a table"]
async fn measure_publish_ack_against_spool_append() {
    const N: usize = 1000;
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let args = NatsArgs::local(server.url());
    let client = nwd_runtime::bus::connect(&args, "measure").await.unwrap();
    let js = nwd_runtime::bus::jetstream(client, &args);
    nwd_runtime::bus::ensure_all(&js, 1).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 700]); // an SMS envelope's size
    let subject = subjects::inbound_sms();

    let mut hub = Vec::with_capacity(N);
    for i in 0..N {
        let started = std::time::Instant::now();
        let msg = jetstream::message::PublishMessage::build()
            .message_id(format!("measure-{i}"))
            .payload(payload.clone());
        js.send_publish(subject.clone(), msg)
            .await
            .unwrap()
            .await
            .unwrap();
        hub.push(started.elapsed());
    }

    let (_tmp, dir) = spool_dir();
    let spool = nwd_gateway::spool::Spool::open(&dir, 1 << 30).unwrap();
    let mut edge = Vec::with_capacity(N);
    for i in 0..N {
        let started = std::time::Instant::now();
        spool
            .append(&subject, &format!("measure-{i}"), &payload)
            .unwrap();
        edge.push(started.elapsed());
    }

    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    };
    let (h50, h99) = (pct(&mut hub, 0.5), pct(&mut hub, 0.99));
    let (e50, e99) = (pct(&mut edge, 0.5), pct(&mut edge, 0.99));
    println!("| path ({N} × 700 B) | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!("| JetStream publish + ack (hub, fsync always) | {h50:.3} | {h99:.3} |");
    println!("| spool append + fsync (edge) | {e50:.3} | {e99:.3} |");
    println!(
        "| ratio spool / hub | {:.2} | {:.2} |",
        e50 / h50,
        e99 / h99
    );
}

/// A nats-server started from a config text, killed on drop (for the leaf
/// node measurement only; every other test uses the testkit's server).
struct ConfiguredServer(std::process::Child);

impl ConfiguredServer {
    fn start(dir: &Path, name: &str, config: &str) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = std::process::Command::new(nwd_testkit::nats_server_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for ConfiguredServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Figures for ADR 0011's other option: a leaf node beside the gateway with
/// a JetStream stream (domain `edge`) that the hub's INBOUND sources from.
/// Prints the publish+ack latency at the leaf (the gateway's hot path under
/// that option), the sourcing lag to the hub, and whether INBOUND dedupes a
/// sourced message whose `Nats-Msg-Id` it already stored directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the ADR, prints a table"]
async fn measure_leaf_node_store_and_forward() {
    use async_nats::jetstream::stream;
    const N: usize = 500;
    let tmp = nwd_testkit::temp_dir("nwd-leaf-");
    let (hub_port, leaf_port, edge_port) = (free_port(), free_port(), free_port());
    let store = |n: &str| tmp.path().join(n).display().to_string();
    let _hub = ConfiguredServer::start(
        tmp.path(),
        "hub",
        &format!(
            "server_name: hub\nlisten: \"127.0.0.1:{hub_port}\"\n\
             jetstream {{ store_dir: {:?}, sync_interval: always, domain: hub }}\n\
             leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
            store("hub")
        ),
    );
    let _edge = ConfiguredServer::start(
        tmp.path(),
        "edge",
        &format!(
            "server_name: edge\nlisten: \"127.0.0.1:{edge_port}\"\n\
             jetstream {{ store_dir: {:?}, sync_interval: always, domain: edge }}\n\
             leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n",
            store("edge")
        ),
    );
    let connect = |port: u16| async move {
        eventually(Duration::from_secs(20), "server up", || async {
            async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .ok()
        })
        .await
    };
    let hub = jetstream::new(connect(hub_port).await);
    let edge = jetstream::new(connect(edge_port).await);
    // The leaf link is up when the hub reaches the edge's JetStream domain.
    let edge_from_hub = jetstream::with_domain(hub.client(), "edge");
    eventually(Duration::from_secs(20), "leaf link", || async {
        edge_from_hub.query_account().await.ok()
    })
    .await;

    let window = Duration::from_secs(3600);
    let edge_stream = edge
        .create_stream(stream::Config {
            name: "EDGE".into(),
            subjects: vec!["edge.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .unwrap();
    let inbound = hub
        .create_stream(stream::Config {
            name: "INBOUND".into(),
            subjects: vec!["nwd.v1.inbound.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: window,
            sources: Some(vec![stream::Source {
                name: "EDGE".into(),
                external: Some(stream::External {
                    api_prefix: "$JS.edge.API".into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await
        .unwrap();

    let payload = bytes::Bytes::from(vec![b'x'; 700]);
    let publish = |js: &jetstream::Context, subject: &str, id: String| {
        let msg = jetstream::message::PublishMessage::build()
            .message_id(id)
            .payload(payload.clone());
        let (js, subject) = (js.clone(), subject.to_owned());
        async move { js.send_publish(subject, msg).await.unwrap().await.unwrap() }
    };
    let mut direct = Vec::new();
    for i in 0..N {
        let t = std::time::Instant::now();
        publish(&hub, "nwd.v1.inbound.sms", format!("direct-{i}")).await;
        direct.push(t.elapsed());
    }
    let mut at_leaf = Vec::new();
    for i in 0..N {
        let t = std::time::Instant::now();
        publish(&edge, "edge.nwd.v1.inbound.sms", format!("leaf-{i}")).await;
        at_leaf.push(t.elapsed());
    }
    let expected = 2 * N as u64;
    eventually(Duration::from_secs(60), "all sourced", || async {
        (inbound.get_info().await.ok()?.state.messages >= expected).then_some(())
    })
    .await;
    // Sourcing lag: hub store time minus leaf store time, per message.
    let mut lag = Vec::new();
    for seq in 1..=N as u64 {
        let at_edge = edge_stream.get_raw_message(seq).await.unwrap().time;
        let at_hub = inbound.get_raw_message(N as u64 + seq).await.unwrap().time;
        lag.push(Duration::from_secs_f64(
            (at_hub - at_edge).as_seconds_f64().max(0.0),
        ));
    }

    // Dedupe across the hop: an id INBOUND stored directly, then sent via the leaf.
    publish(&hub, "nwd.v1.inbound.sms", "SMtwice".into()).await;
    publish(&edge, "edge.nwd.v1.inbound.sms", "SMtwice".into()).await;
    publish(&edge, "edge.nwd.v1.inbound.sms", "SMmarker".into()).await;
    eventually(Duration::from_secs(20), "marker sourced", || async {
        let n = inbound.get_info().await.ok()?.state.messages;
        (n >= expected + 2).then_some(())
    })
    .await;
    let total = inbound.get_info().await.unwrap().state.messages;
    let deduped = total == expected + 2;

    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
    };
    println!("| leaf-node option ({N} × 700 B, sync_interval: always) | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!(
        "| publish + ack at the hub (today's hot path) | {:.3} | {:.3} |",
        pct(&mut direct, 0.5),
        pct(&mut direct, 0.99)
    );
    println!(
        "| publish + ack at the leaf (hot path under option A) | {:.3} | {:.3} |",
        pct(&mut at_leaf, 0.5),
        pct(&mut at_leaf, 0.99)
    );
    println!(
        "| sourcing lag leaf → hub INBOUND | {:.3} | {:.3} |",
        pct(&mut lag, 0.5),
        pct(&mut lag, 0.99)
    );
    println!(
        "INBOUND deduped a sourced message whose Nats-Msg-Id it had stored directly: {deduped} \
         ({total} stored, {} expected if deduped)",
        expected + 2
    );
}
