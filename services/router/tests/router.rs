//! The router against a real nats-server, driven the way the other services
//! drive it: presence records in the `presence` bucket (dashboard), triaged
//! messages on CONTACTS (triage), commands by request/reply (dashboard);
//! pushes observed on the dashboard push subjects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::{
    ContactView, DashboardPush, MessageView, Presence, PresenceRecord, ServerMsg, Speaker,
    WithdrawReason,
};
use nwd_proto::events::{
    Channel, ContactAssigned, ContactMessage, ContactResolved, MessageTriaged,
};
use nwd_proto::router::{LineStatus, RouterCommand, RouterReply};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{
    Assessment, ContactId, CounsellorId, Envelope, Language, MessageId, Reason, RiskLevel, subjects,
};
use nwd_router::{Config, Error};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::kv;
use nwd_testkit::{NatsServer, eventually};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(10);

fn c(s: &str) -> CounsellorId {
    CounsellorId::parse(s).unwrap()
}

fn test_directory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/directory.toml")
}

/// A router running in-process.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
    addr: SocketAddr,
}

impl Running {
    async fn start(url: &str) -> Self {
        Self::start_with_grace(url, 60_000).await
    }

    async fn start_with_grace(url: &str, orphan_grace_ms: u64) -> Self {
        // reqwest (readiness polling) needs a crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = nwd_testkit::listener().await;
        let addr = listener.local_addr().unwrap();
        let config = Config {
            nats: NatsArgs::local(url),
            metrics_addr: addr,
            directory: test_directory(),
            presence_stale_ms: 15_000,
            orphan_grace_ms,
            sweep_ms: 200,
            line_status_ms: 300,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(nwd_router::run(config, listener, shutdown.clone()));
        nwd_testkit::wait_ready(addr).await;
        Self {
            shutdown,
            task,
            addr,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Every push the router made, in arrival order.
#[derive(Clone, Default)]
struct Pushes(Arc<Mutex<Vec<(CounsellorId, ServerMsg)>>>);

impl Pushes {
    fn all(&self) -> Vec<(CounsellorId, ServerMsg)> {
        self.0.lock().unwrap().clone()
    }

    fn to(&self, who: &str) -> Vec<ServerMsg> {
        let who = c(who);
        self.all()
            .into_iter()
            .filter(|(c, _)| *c == who)
            .map(|(_, m)| m)
            .collect()
    }

    fn offers(&self, who: &str, contact: ContactId) -> Vec<ContactView> {
        self.to(who)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Offer { contact: v } if v.contact_id == contact => Some(v),
                _ => None,
            })
            .collect()
    }

    fn withdrawn(&self, who: &str, contact: ContactId) -> Vec<WithdrawReason> {
        self.to(who)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::OfferWithdrawn { contact_id, reason } if contact_id == contact => {
                    Some(reason)
                }
                _ => None,
            })
            .collect()
    }

    fn messages(&self, who: &str, contact: ContactId) -> Vec<String> {
        self.message_views(who, contact)
            .into_iter()
            .map(|m| m.body)
            .collect()
    }

    fn message_views(&self, who: &str, contact: ContactId) -> Vec<MessageView> {
        self.to(who)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Message {
                    contact_id,
                    message,
                    ..
                } if contact_id == contact => Some(message),
                _ => None,
            })
            .collect()
    }

    async fn wait_offer(&self, who: &str, contact: ContactId) -> ContactView {
        eventually(WITHIN, &format!("an offer to {who}"), || async {
            self.offers(who, contact).into_iter().next()
        })
        .await
    }

    async fn wait_withdrawn(&self, who: &str, contact: ContactId) -> WithdrawReason {
        eventually(
            WITHIN,
            &format!("an offer withdrawn from {who}"),
            || async { self.withdrawn(who, contact).into_iter().next() },
        )
        .await
    }

    async fn wait_message(&self, who: &str, contact: ContactId, body: &str) {
        eventually(WITHIN, &format!("message pushed to {who}"), || async {
            self.messages(who, contact)
                .iter()
                .any(|b| b == body)
                .then_some(())
        })
        .await;
    }
}

/// A nats-server, a client acting as the other services, and a router.
struct Line {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    presence: jetstream::kv::Store,
    contacts: jetstream::kv::Store,
    pushes: Pushes,
    router: Option<Running>,
}

impl Line {
    async fn start() -> Self {
        Self::start_with_grace(60_000).await
    }

    /// With a short grace before a dropped counsellor's conversations are requeued.
    async fn start_with_grace(orphan_grace_ms: u64) -> Self {
        let server = NatsServer::start().await;
        let args = NatsArgs::local(server.url());
        let js = bus::jetstream(bus::connect(&args, "test").await.unwrap(), &args);
        bus::ensure_all(&js, 1).await.unwrap();
        // Commands and pushes as the dashboard, the only user that may send them.
        let client = server.client_as("dashboard").await;
        let presence = bus::bucket(&js, buckets::PRESENCE).await.unwrap();
        let contacts = bus::bucket(&js, buckets::CONTACTS).await.unwrap();
        let pushes = Pushes::default();
        let mut sub = client
            .subscribe(subjects::dashboard_push_all())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let sink = pushes.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let env = Envelope::<DashboardPush>::from_bytes(&msg.payload).unwrap();
                assert_eq!(
                    msg.subject.as_str(),
                    subjects::dashboard_push(&env.data.counsellor)
                );
                sink.0
                    .lock()
                    .unwrap()
                    .push((env.data.counsellor, env.data.msg));
            }
        });
        let router =
            Some(Running::start_with_grace(&server.url_for("router"), orphan_grace_ms).await);
        Self {
            server,
            client,
            js,
            presence,
            contacts,
            pushes,
            router,
        }
    }

    async fn restart_router(&mut self) {
        if let Some(r) = self.router.take() {
            r.stop().await;
        }
        self.router = Some(Running::start(&self.server.url_for("router")).await);
    }

    async fn presence(&self, who: &str, status: Presence) {
        self.presence_at(who, status, OffsetDateTime::now_utc())
            .await;
    }

    async fn presence_at(&self, who: &str, status: Presence, heartbeat_at: OffsetDateTime) {
        let rec = PresenceRecord {
            counsellor: c(who),
            status,
            heartbeat_at,
        };
        self.presence
            .put(who, serde_json::to_vec(&rec).unwrap().into())
            .await
            .unwrap();
    }

    /// Publishes a triaged message as triage does; returns the event.
    async fn message(
        &self,
        contact: ContactId,
        level: RiskLevel,
        lang: Language,
        body: &str,
    ) -> MessageTriaged {
        let ev = triaged(contact, level, lang, body);
        self.publish(
            &ev,
            &nwd_proto::wire::msg_id::message_triaged(&ev.message.message_id),
        )
        .await;
        ev
    }

    async fn publish(&self, ev: &MessageTriaged, msg_id: &str) {
        bus::publish(
            &self.js,
            subjects::contact_triaged(&ev.message.contact_id),
            msg_id,
            &Envelope::new(ev.clone()),
        )
        .await
        .unwrap();
    }

    async fn command(&self, cmd: RouterCommand) -> RouterReply {
        self.request(Envelope::new(cmd).to_bytes()).await
    }

    async fn request(&self, payload: Vec<u8>) -> RouterReply {
        let res = self
            .client
            .request(subjects::router_command(), payload.into())
            .await
            .unwrap();
        Envelope::<RouterReply>::from_bytes(&res.payload)
            .unwrap()
            .data
    }

    async fn accept(&self, contact: ContactId, who: &str) -> RouterReply {
        self.command(RouterCommand::Accept {
            contact_id: contact,
            counsellor: c(who),
        })
        .await
    }

    async fn record(&self, contact: ContactId) -> Option<ContactRecord> {
        kv::get::<ContactRecord>(&self.contacts, &contact.to_string())
            .await
            .unwrap()
            .value
    }

    async fn wait_state(
        &self,
        contact: ContactId,
        what: &str,
        check: impl Fn(&ContactState) -> bool,
    ) -> ContactRecord {
        eventually(WITHIN, what, || async {
            self.record(contact).await.filter(|r| check(&r.state))
        })
        .await
    }
}

fn triaged(contact: ContactId, level: RiskLevel, lang: Language, body: &str) -> MessageTriaged {
    MessageTriaged {
        message: ContactMessage {
            contact_id: contact,
            message_id: MessageId::new(),
            channel: Channel::Sms {
                patient: nwd_proto::Address::parse("+15005550142"),
                line: nwd_proto::Address::parse("+15005550110"),
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
            level,
            score: 0.9,
            reasons: vec![Reason {
                rule: format!("rule-{}", level.as_str()),
                label: format!("{} signal", level.as_str()),
                level,
                start: 0,
                end: 1,
            }],
            lang,
            rulebook_version: "test".into(),
        },
    }
}

fn waiting(s: &ContactState) -> bool {
    matches!(s, ContactState::Waiting { .. })
}

fn offered_to(who: &'static [&'static str]) -> impl Fn(&ContactState) -> bool {
    move |s| match s {
        ContactState::Offered { to, .. } => {
            let mut to: Vec<&str> = to.iter().map(CounsellorId::as_str).collect();
            to.sort_unstable();
            let mut want = who.to_vec();
            want.sort_unstable();
            to == want
        }
        _ => false,
    }
}

async fn stored<T: nwd_proto::Event>(js: &jetstream::Context, subject: String) -> Vec<T> {
    nwd_runtime::transcript::read_subjects(js, streams::CONTACTS, vec![subject])
        .await
        .unwrap()
        .into_iter()
        .map(|m| Envelope::<T>::from_bytes(&m.payload).unwrap().data)
        .collect()
}

#[tokio::test]
async fn a_new_contact_is_offered_with_its_message_risk_and_reasons() {
    nwd_runtime::telemetry::metrics_handle();
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::High, Language::En, "I have the pills here")
        .await;
    let offer = line.pushes.wait_offer("ben", id).await;
    assert_eq!(offer.risk, RiskLevel::High);
    assert_eq!(offer.reasons.len(), 1);
    assert_eq!(offer.reasons[0].rule, "rule-high");
    assert_eq!(offer.messages.len(), 1);
    assert_eq!(offer.messages[0].body, "I have the pills here");
    assert_eq!(offer.messages[0].speaker, Speaker::Person);
    assert_eq!(offer.door, "Eastside Recovery Clinic");
    assert_eq!(offer.channel, "SMS ··42", "never the number");
    assert!(offer.waiting_since.is_some());
    let rec = line
        .wait_state(id, "offered to ben", offered_to(&["ben"]))
        .await;
    assert_eq!(rec.risk, RiskLevel::High);
    assert!(
        line.pushes.offers("ana", id).is_empty(),
        "ana is not on the floor"
    );

    let addr = line.router.as_ref().unwrap().addr;
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("nwd_offers_total"), "{metrics}");
    assert!(metrics.contains("nwd_queue_depth"), "{metrics}");
    assert!(
        metrics.contains(
            r#"nwd_escalation_steps_total{service="router",rung="coordinator",outcome="skipped"}"#
        ) && metrics.contains(r#"rung="door-on-call",outcome="offered""#),
        "the first step fired in the router: {metrics}"
    );
    let logs = logs.contents();
    assert!(logs.contains(&id.to_string()), "contact ids are logged");
    assert!(!logs.contains("pills"), "never a message body");
    assert!(!logs.contains("5550142"), "never a phone number");
}

#[tokio::test]
async fn the_line_status_tells_the_chat_the_queue_the_free_seats_and_the_typical_wait() {
    let line = Line::start().await;
    // As the chat, the status's one reader.
    let chat = line.server.client_as("chat").await;
    let mut statuses = chat.subscribe(subjects::line_status()).await.unwrap();
    chat.flush().await.unwrap();
    let mut next_matching = async |what: &str, want: &dyn Fn(&LineStatus) -> bool| {
        tokio::time::timeout(WITHIN, async {
            loop {
                let msg = statuses.next().await.unwrap();
                let status = Envelope::<LineStatus>::from_bytes(&msg.payload)
                    .unwrap()
                    .data;
                if want(&status) {
                    return status;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no line status with {what}"))
    };
    // Steady even when nothing happens: a new chat learns the figures.
    let empty = next_matching("nothing waiting", &|s| s.waiting_total() == 0).await;
    assert_eq!(empty.counsellors_available, 0);
    assert_eq!(empty.typical_wait_secs, None);
    let again = next_matching("the steady repeat", &|s| s.at > empty.at).await;
    assert!(again.same_figures(&empty));

    let (low, high) = (ContactId::new(), ContactId::new());
    line.message(low, RiskLevel::Low, Language::En, "a question")
        .await;
    line.message(high, RiskLevel::High, Language::En, "I have a plan")
        .await;
    let queued = next_matching("two waiting", &|s| s.waiting_total() == 2).await;
    assert!(queued.waiting.contains(&(RiskLevel::High, 1)));
    assert!(queued.waiting.contains(&(RiskLevel::Low, 1)));
    // Nothing about any person: counts and a duration only.
    let json = serde_json::to_string(&queued).unwrap();
    assert!(
        !json.contains(&low.to_string()) && !json.contains("question"),
        "{json}"
    );

    line.presence("ben", Presence::Available).await;
    line.pushes.wait_offer("ben", high).await;
    assert_eq!(line.accept(high, "ben").await, RouterReply::Done);
    let served = next_matching("one taken, a typical wait", &|s| {
        s.waiting_total() == 1 && s.typical_wait_secs.is_some() && s.counsellors_available == 1
    })
    .await;
    assert_eq!(
        served.free_seats, 1,
        "ben holds one of two seats: {served:?}"
    );
}

#[tokio::test]
async fn nobody_available_means_waiting_then_the_highest_risk_is_offered_first() {
    let line = Line::start().await;
    // Not on the floor: away, or a heartbeat long stale.
    line.presence("chloe", Presence::Away).await;
    line.presence_at(
        "ben",
        Presence::Available,
        OffsetDateTime::now_utc() - time::Duration::minutes(5),
    )
    .await;
    let low = ContactId::new();
    let imminent = ContactId::new();
    let moderate = ContactId::new();
    line.message(low, RiskLevel::Low, Language::En, "a question")
        .await;
    line.wait_state(low, "low waiting", waiting).await;
    line.message(imminent, RiskLevel::Imminent, Language::En, "now")
        .await;
    line.message(moderate, RiskLevel::Moderate, Language::En, "cravings")
        .await;
    line.wait_state(imminent, "imminent waiting", waiting).await;
    line.wait_state(moderate, "moderate waiting", waiting).await;

    line.presence("ben", Presence::Available).await;
    for id in [imminent, moderate] {
        line.pushes.wait_offer("ben", id).await;
    }
    let order = || -> Vec<ContactId> {
        line.pushes
            .all()
            .into_iter()
            .filter_map(|(_, m)| match m {
                ServerMsg::Offer { contact } => Some(contact.contact_id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        order(),
        vec![imminent, moderate],
        "nothing offered before ben was available; then risk first, \
         as many as his two seats"
    );
    // He passes on the moderate: his seat goes to the low.
    let reply = line
        .command(RouterCommand::Decline {
            contact_id: moderate,
            counsellor: c("ben"),
        })
        .await;
    assert_eq!(reply, RouterReply::Done);
    line.pushes.wait_offer("ben", low).await;
    assert_eq!(order(), vec![imminent, moderate, low]);
}

#[tokio::test]
async fn concurrent_accepts_have_exactly_one_winner() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    line.presence("chloe", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Moderate, Language::En, "hello")
        .await;
    line.pushes.wait_offer("ben", id).await;
    line.pushes.wait_offer("chloe", id).await;

    let (a, b) = tokio::join!(line.accept(id, "ben"), line.accept(id, "chloe"));
    let (winner, loser) = match (&a, &b) {
        (RouterReply::Done, RouterReply::Refused { .. }) => ("ben", "chloe"),
        (RouterReply::Refused { .. }, RouterReply::Done) => ("chloe", "ben"),
        other => panic!("expected one Done and one Refused, got {other:?}"),
    };
    let reason = line.pushes.wait_withdrawn(loser, id).await;
    assert_eq!(reason, WithdrawReason::Taken);
    assert!(line.pushes.withdrawn(winner, id).is_empty());
    let rec = line.record(id).await.unwrap();
    assert_eq!(rec.assigned_to(), Some(&c(winner)));
    let assigned: Vec<ContactAssigned> = stored(&line.js, subjects::contact_assigned(&id)).await;
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].counsellor, c(winner));
    // Accepting again is harmless for the winner, refused for the loser.
    assert_eq!(line.accept(id, winner).await, RouterReply::Done);
    assert!(matches!(
        line.accept(id, loser).await,
        RouterReply::Refused { .. }
    ));
    assert_eq!(
        stored::<ContactAssigned>(&line.js, subjects::contact_assigned(&id))
            .await
            .len(),
        1,
        "deduplicated by Nats-Msg-Id"
    );
}

#[tokio::test]
async fn later_messages_of_an_assigned_contact_go_to_the_assignee_only() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    line.presence("chloe", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Low, Language::En, "first")
        .await;
    line.pushes.wait_offer("chloe", id).await;
    assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
    line.message(id, RiskLevel::High, Language::En, "second")
        .await;
    line.pushes.wait_message("ben", id, "second").await;
    let pushed = line.pushes.to("ben");
    let risk = pushed.iter().find_map(|m| match m {
        ServerMsg::Message { risk, reasons, .. } => Some((*risk, reasons.len())),
        _ => None,
    });
    assert_eq!(
        risk,
        Some((RiskLevel::High, 2)),
        "risk ratcheted, reasons merged"
    );
    // Barrier: a later message to ben means the router is past "second".
    line.message(id, RiskLevel::Low, Language::En, "third")
        .await;
    line.pushes.wait_message("ben", id, "third").await;
    assert!(line.pushes.messages("chloe", id).is_empty());
    assert_eq!(line.pushes.offers("chloe", id).len(), 1);
}

#[tokio::test]
async fn a_decline_puts_the_contact_back_and_it_goes_to_someone_else() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Moderate, Language::En, "hi")
        .await;
    line.pushes.wait_offer("ben", id).await;
    let reply = line
        .command(RouterCommand::Decline {
            contact_id: id,
            counsellor: c("ben"),
        })
        .await;
    assert_eq!(reply, RouterReply::Done);
    assert_eq!(
        line.pushes.wait_withdrawn("ben", id).await,
        WithdrawReason::Declined
    );
    line.wait_state(id, "back to waiting", waiting).await;

    line.presence("chloe", Presence::Available).await;
    let offer = line.pushes.wait_offer("chloe", id).await;
    assert_eq!(
        offer.messages.len(),
        1,
        "the transcript is read from the stream"
    );
    line.wait_state(id, "offered to chloe only", offered_to(&["chloe"]))
        .await;
    assert_eq!(
        line.pushes.offers("ben", id).len(),
        1,
        "not offered again to the one who declined"
    );
}

#[tokio::test]
async fn resolve_publishes_the_event_and_a_new_message_reopens_the_contact() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    let first = line
        .message(id, RiskLevel::Low, Language::En, "hello")
        .await;
    line.pushes.wait_offer("ben", id).await;
    assert_eq!(line.accept(id, "ben").await, RouterReply::Done);

    let not_theirs = line
        .command(RouterCommand::Resolve {
            contact_id: id,
            counsellor: c("chloe"),
            disposition: None,
            note: None,
        })
        .await;
    assert!(matches!(not_theirs, RouterReply::Refused { .. }));

    let resolve = RouterCommand::Resolve {
        contact_id: id,
        counsellor: c("ben"),
        disposition: Some("support-given".into()),
        note: None,
    };
    assert_eq!(line.command(resolve.clone()).await, RouterReply::Done);
    eventually(WITHIN, "Resolved pushed", || async {
        line.pushes
            .to("ben")
            .contains(&ServerMsg::Resolved { contact_id: id })
            .then_some(())
    })
    .await;
    let rec = line.record(id).await.unwrap();
    assert!(!rec.is_open());
    let resolved: Vec<ContactResolved> = stored(&line.js, subjects::contact_resolved(&id)).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].counsellor, c("ben"));
    assert_eq!(resolved[0].channel, first.message.channel);
    assert_eq!(resolved[0].disposition.as_deref(), Some("support-given"));
    // A retried resolve is done, and not published twice.
    assert_eq!(line.command(resolve).await, RouterReply::Done);
    assert_eq!(
        stored::<ContactResolved>(&line.js, subjects::contact_resolved(&id))
            .await
            .len(),
        1
    );

    line.message(id, RiskLevel::Moderate, Language::En, "me again")
        .await;
    eventually(WITHIN, "a second offer", || async {
        (line.pushes.offers("ben", id).len() == 2).then_some(())
    })
    .await;
    let offer = line.pushes.offers("ben", id).pop().unwrap();
    let bodies: Vec<&str> = offer.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, vec!["hello", "me again"]);
    assert_eq!(offer.risk, RiskLevel::Moderate);
}

#[tokio::test]
async fn the_same_triaged_message_delivered_twice_is_offered_once() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    let ev = triaged(id, RiskLevel::High, Language::En, "once");
    // Different Nats-Msg-Ids, so the stream keeps both: a redelivery.
    line.publish(&ev, "first-delivery").await;
    line.publish(&ev, "second-delivery").await;
    // The offer comes when the router has both the contact and ben's
    // presence, in whichever order they reach it; only then is a new
    // message pushed to ben as a message (before, it is part of the offer).
    line.pushes.wait_offer("ben", id).await;
    line.message(id, RiskLevel::Low, Language::En, "barrier")
        .await;
    line.pushes.wait_message("ben", id, "barrier").await;
    assert_eq!(line.pushes.offers("ben", id).len(), 1);
    // A redelivery may push the line again, but as the same message (the
    // screen keys messages by id), never as a new one.
    let id_of_once = ev.message.message_id.to_string();
    assert!(
        line.pushes
            .message_views("ben", id)
            .iter()
            .filter(|m| m.body == "once")
            .all(|m| m.id == id_of_once)
    );
    assert_eq!(line.record(id).await.unwrap().message_count, 2);
}

/// The router writes a message into the record, then pushes it to the
/// assignee's screen. A crash between the two means a redelivery finds the
/// message already applied: it must still reach the screen.
#[tokio::test]
async fn a_redelivered_message_of_an_assigned_contact_is_pushed_again() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Low, Language::En, "first")
        .await;
    line.pushes.wait_offer("ben", id).await;
    assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
    let ev = triaged(id, RiskLevel::Low, Language::En, "again");
    line.publish(&ev, "first-delivery").await;
    line.pushes.wait_message("ben", id, "again").await;
    // The same event delivered again (a different Nats-Msg-Id, so the
    // stream keeps it), as after a crash between the write and the push.
    line.publish(&ev, "redelivery").await;
    let id_of_again = ev.message.message_id.to_string();
    eventually(WITHIN, "the message pushed a second time", || async {
        let again: Vec<_> = line
            .pushes
            .message_views("ben", id)
            .into_iter()
            .filter(|m| m.body == "again")
            .collect();
        (again.len() == 2).then_some(again)
    })
    .await
    .iter()
    .for_each(|m| assert_eq!(m.id, id_of_again, "the same message, not a new one"));
    assert_eq!(line.record(id).await.unwrap().message_count, 2);
}

/// ana (capacity 1) available and offered two new imminent contacts (the
/// imminent broadcast goes to everyone, whatever their free seats).
async fn two_offers_to_ana(line: &Line) -> (ContactId, ContactId) {
    line.presence("ana", Presence::Available).await;
    let first = ContactId::new();
    let second = ContactId::new();
    line.message(first, RiskLevel::Imminent, Language::En, "one")
        .await;
    line.message(second, RiskLevel::Imminent, Language::En, "two")
        .await;
    line.pushes.wait_offer("ana", first).await;
    line.pushes.wait_offer("ana", second).await;
    (first, second)
}

#[tokio::test]
async fn a_counsellor_at_capacity_is_not_offered_and_their_offers_move_on() {
    let line = Line::start().await;
    let (first, second) = two_offers_to_ana(&line).await;
    assert_eq!(line.accept(first, "ana").await, RouterReply::Done);
    assert_eq!(
        line.pushes.wait_withdrawn("ana", second).await,
        WithdrawReason::Expired,
        "at capacity: her other offer is withdrawn"
    );
    line.wait_state(second, "second waiting", waiting).await;
    let refused = line.accept(second, "ana").await;
    assert!(
        matches!(refused, RouterReply::Refused { .. }),
        "{refused:?}"
    );

    let third = ContactId::new();
    line.message(third, RiskLevel::Imminent, Language::Es, "ayuda")
        .await;
    line.wait_state(third, "third waiting", waiting).await;
    line.presence("ben", Presence::Available).await;
    line.pushes.wait_offer("ben", third).await;
    line.pushes.wait_offer("ben", second).await;
    line.wait_state(third, "third offered to ben only", offered_to(&["ben"]))
        .await;
    assert!(line.pushes.offers("ana", third).is_empty());
    assert_eq!(line.pushes.offers("ana", second).len(), 1);
}

/// Accepts are serialised per counsellor: two at the same moment by one
/// counsellor with room for one give one conversation and one refusal.
#[tokio::test]
async fn two_accepts_at_once_by_one_counsellor_never_exceed_capacity() {
    let line = Line::start().await;
    let (first, second) = two_offers_to_ana(&line).await;
    let (a, b) = tokio::join!(line.accept(first, "ana"), line.accept(second, "ana"));
    let done = [&a, &b]
        .iter()
        .filter(|r| ***r == RouterReply::Done)
        .count();
    assert_eq!(done, 1, "{a:?} {b:?}");
    let assigned = [first, second].len()
        - [
            line.record(first).await.unwrap(),
            line.record(second).await.unwrap(),
        ]
        .iter()
        .filter(|r| r.assigned_to().is_none())
        .count();
    assert_eq!(assigned, 1);
}

#[tokio::test]
async fn going_offline_withdraws_offers_and_they_go_to_others() {
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::High, Language::En, "hi").await;
    line.pushes.wait_offer("ben", id).await;
    line.presence("chloe", Presence::Busy).await;
    line.presence("ben", Presence::Offline).await;
    assert_eq!(
        line.pushes.wait_withdrawn("ben", id).await,
        WithdrawReason::Expired
    );
    line.wait_state(id, "waiting", waiting).await;
    line.presence("chloe", Presence::Available).await;
    line.pushes.wait_offer("chloe", id).await;
}

#[tokio::test]
async fn waiting_contacts_are_offered_after_a_restart() {
    let mut line = Line::start().await;
    let low = ContactId::new();
    let high = ContactId::new();
    line.message(low, RiskLevel::Low, Language::En, "a").await;
    line.message(high, RiskLevel::High, Language::En, "b").await;
    line.wait_state(low, "low waiting", waiting).await;
    line.wait_state(high, "high waiting", waiting).await;
    line.router.take().unwrap().stop().await;

    line.presence("chloe", Presence::Available).await;
    line.restart_router().await;
    line.pushes.wait_offer("chloe", high).await;
    line.pushes.wait_offer("chloe", low).await;
}

#[tokio::test]
async fn malformed_input_is_refused_or_rejected_and_the_router_goes_on() {
    let line = Line::start().await;
    assert_eq!(
        line.request(b"{not json".to_vec()).await,
        RouterReply::Refused {
            reason: "malformed command".into()
        }
    );
    let unknown = line.accept(ContactId::new(), "ben").await;
    assert!(
        matches!(unknown, RouterReply::Refused { .. }),
        "{unknown:?}"
    );
    let decline_unknown = line
        .command(RouterCommand::Decline {
            contact_id: ContactId::new(),
            counsellor: c("ben"),
        })
        .await;
    assert_eq!(decline_unknown, RouterReply::Done, "nothing to decline");

    let id = ContactId::new();
    line.js
        .publish(subjects::contact_triaged(&id), "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    line.presence("ben", Presence::Available).await;
    line.message(id, RiskLevel::Low, Language::En, "after garbage")
        .await;
    line.pushes.wait_offer("ben", id).await;
    let stream = line.js.get_stream(streams::CONTACTS).await.unwrap();
    eventually(WITHIN, "nothing left pending", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info(streams::consumers::ROUTER)
                .await
                .ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
}

// ------------------------------------------------------------ medical emergency (42 CFR §2.51)

mod medical_emergency {
    use super::*;
    use nwd_proto::events::{
        Author, Disclosure, DisclosureRefused, LegalBasis, OutboundSms, Recipient,
    };
    use nwd_proto::{OutboundId, PartnerId};

    /// County General's ED desk (its `medical_emergency_number`), not its door.
    const HOSPITAL_NUMBER: &str = "+15005550121";
    const NATURE: &str = "took a whole bottle of pills an hour ago, now very drowsy";

    fn p(s: &str) -> PartnerId {
        PartnerId::parse(s).unwrap()
    }

    async fn emergency(
        line: &Line,
        contact: ContactId,
        who: &str,
        partner: &str,
        nature: &str,
    ) -> RouterReply {
        line.command(RouterCommand::MedicalEmergency {
            contact_id: contact,
            counsellor: c(who),
            partner: p(partner),
            nature: nature.to_owned(),
        })
        .await
    }

    /// A contact of María's (a known patient) that `who` accepted.
    async fn held_by(line: &Line, who: &str) -> ContactId {
        line.presence(who, Presence::Available).await;
        let id = ContactId::new();
        let mut ev = triaged(id, RiskLevel::High, Language::En, "I took all my pills");
        ev.message.patient = Some("maria".into());
        line.publish(
            &ev,
            &nwd_proto::wire::msg_id::message_triaged(&ev.message.message_id),
        )
        .await;
        line.pushes.wait_offer(who, id).await;
        assert_eq!(line.accept(id, who).await, RouterReply::Done);
        id
    }

    /// Events on a subject of a stream, each with its `Nats-Msg-Id`.
    async fn on<T: nwd_proto::Event>(
        line: &Line,
        stream: &'static str,
        subject: String,
    ) -> Vec<(String, T)> {
        nwd_runtime::transcript::read_subjects(&line.js, stream, vec![subject])
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                (id, Envelope::<T>::from_bytes(&m.payload).unwrap().data)
            })
            .collect()
    }

    async fn disclosures(line: &Line, id: ContactId) -> Vec<(String, Disclosure)> {
        on(line, streams::AUDIT, subjects::audit_disclosure(&id)).await
    }

    async fn refusals(line: &Line, id: ContactId) -> Vec<(String, DisclosureRefused)> {
        on(
            line,
            streams::AUDIT,
            subjects::audit_disclosure_refused(&id),
        )
        .await
    }

    async fn sms_to_hospital(line: &Line, id: ContactId) -> Vec<(String, OutboundSms)> {
        on::<OutboundSms>(line, streams::OUTBOUND, subjects::outbound_sms(&id))
            .await
            .into_iter()
            .filter(|(_, s)| s.to.as_str() == HOSPITAL_NUMBER)
            .collect()
    }

    fn refusal_reason(reply: RouterReply) -> String {
        match reply {
            RouterReply::Refused { reason } => reason,
            RouterReply::Done => panic!("expected a refusal"),
        }
    }

    #[tokio::test]
    async fn refused_unless_the_contact_is_assigned_to_the_requester_and_the_request_is_complete() {
        let line = Line::start().await;
        // Nobody holds a waiting contact.
        let waiting_id = ContactId::new();
        line.message(waiting_id, RiskLevel::High, Language::En, "help")
            .await;
        line.wait_state(waiting_id, "waiting", waiting).await;
        let r = emergency(&line, waiting_id, "ben", "county-hospital", NATURE).await;
        assert_eq!(
            refusal_reason(r),
            "the contact is not assigned to this counsellor"
        );
        // No such contact.
        let r = emergency(&line, ContactId::new(), "ben", "county-hospital", NATURE).await;
        assert!(matches!(r, RouterReply::Refused { .. }), "{r:?}");

        // Ben holds it: not Chloe's to disclose.
        let id = held_by(&line, "ben").await;
        let r = emergency(&line, id, "chloe", "county-hospital", NATURE).await;
        assert_eq!(
            refusal_reason(r),
            "the contact is not assigned to this counsellor"
        );
        // The nature of the emergency is required, and bounded.
        for nature in ["", "   ", &"x".repeat(501)] {
            let r = emergency(&line, id, "ben", "county-hospital", nature).await;
            assert!(
                refusal_reason(r).contains("nature of the emergency"),
                "nature of {} chars",
                nature.len()
            );
        }
        let r = emergency(&line, id, "ben", "nowhere-hospital", NATURE).await;
        assert_eq!(refusal_reason(r), "unknown partner");
        let r = emergency(&line, id, "ben", "northside-hospital", NATURE).await;
        assert!(refusal_reason(r).contains("no medical-emergency number"));

        // Nothing disclosed, recorded or sent for any of them.
        for contact in [waiting_id, id] {
            assert!(disclosures(&line, contact).await.is_empty());
            assert!(refusals(&line, contact).await.is_empty());
            assert!(sms_to_hospital(&line, contact).await.is_empty());
        }
        assert!(line.record(id).await.unwrap().emergencies.is_empty());
        // The 500-character maximum is allowed.
        let r = emergency(&line, id, "ben", "county-hospital", &"x".repeat(500)).await;
        assert_eq!(r, RouterReply::Done);
    }

    #[tokio::test]
    async fn a_partner_that_is_not_a_hospital_is_refused_and_the_refusal_is_audited() {
        let line = Line::start().await;
        let id = held_by(&line, "ben").await;
        let r = emergency(&line, id, "ben", "eastside-clinic", NATURE).await;
        let reason = refusal_reason(r);
        assert!(reason.contains("not medical personnel"), "{reason}");
        let refused = refusals(&line, id).await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        let (msg_id, refused) = &refused[0];
        assert_eq!(refused.contact_id, id);
        assert_eq!(refused.patient, "maria");
        assert_eq!(refused.recipient, Recipient::Partner(p("eastside-clinic")));
        assert_eq!(refused.reason, "not_medical_personnel");
        assert_eq!(refused.by, "ben");
        assert_eq!(
            msg_id,
            &format!(
                "{id}:emergency:eastside-clinic:{}:refused",
                refused.at.unix_timestamp()
            )
        );
        assert!(disclosures(&line, id).await.is_empty(), "nothing disclosed");
        assert!(
            on::<OutboundSms>(&line, streams::OUTBOUND, subjects::outbound_sms(&id))
                .await
                .is_empty(),
            "nobody texted"
        );
        assert!(line.record(id).await.unwrap().emergencies.is_empty());
    }

    #[tokio::test]
    async fn a_disclosure_is_recorded_once_with_the_2_51_fields_and_the_hospital_texted_once_even_when_sent_twice()
     {
        let logs = nwd_testkit::capture_logs();
        let line = Line::start().await;
        let id = held_by(&line, "ben").await;
        let before = OffsetDateTime::now_utc();
        assert_eq!(
            emergency(&line, id, "ben", "county-hospital", NATURE).await,
            RouterReply::Done
        );
        // The dashboard's retry, a second or more later: the same disclosure.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            emergency(&line, id, "ben", "county-hospital", NATURE).await,
            RouterReply::Done
        );
        let after = OffsetDateTime::now_utc();

        let disclosed = disclosures(&line, id).await;
        assert_eq!(disclosed.len(), 1, "{disclosed:?}");
        let (msg_id, d) = &disclosed[0];
        assert_eq!(d.contact_id, id);
        assert_eq!(d.patient, "maria");
        assert_eq!(d.recipient, Recipient::Partner(p("county-hospital")));
        assert_eq!(
            d.basis,
            LegalBasis::MedicalEmergency {
                recipient_affiliation: "County General Hospital ED".into(),
                nature_of_emergency: NATURE.into(),
            }
        );
        assert_eq!(
            d.what,
            "identity, location of contact and risk summary for a medical emergency"
        );
        assert_eq!(d.purpose, "medical-emergency");
        assert_eq!(d.by, "ben");
        assert!(before <= d.at && d.at <= after, "{}", d.at);
        let key = format!("{id}:emergency:county-hospital:{}", d.at.unix_timestamp());
        assert_eq!(msg_id, &key);

        let sent = sms_to_hospital(&line, id).await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (sms_msg_id, sms) = &sent[0];
        assert_eq!(sms.outbound_id, OutboundId::derived(&format!("{key}:sms")));
        assert_eq!(sms_msg_id, &format!("out:{}", sms.outbound_id));
        assert_eq!(sms.from.as_str(), "+15005550110", "the contact's line");
        assert_eq!(sms.author, Author::System);
        assert!(
            sms.body
                .contains("a person in a medical emergency needs help")
                && sms.body.contains("counsellor will call")
                && sms.body.contains(&id.to_string()),
            "{}",
            sms.body
        );
        for secret in ["pills", "drowsy", "5550142", "Maria", "María"] {
            assert!(!sms.body.contains(secret), "the SMS holds no {secret}");
        }
        assert_eq!(line.record(id).await.unwrap().emergencies.len(), 1);

        // A different emergency is a new disclosure, with its own ids.
        assert_eq!(
            emergency(&line, id, "ben", "county-hospital", "not breathing now").await,
            RouterReply::Done
        );
        assert_eq!(disclosures(&line, id).await.len(), 2);
        assert_eq!(sms_to_hospital(&line, id).await.len(), 2);

        let logs = logs.contents();
        assert!(logs.contains(&id.to_string()), "ids are logged");
        for secret in [
            "drowsy",
            "not breathing",
            "County General",
            "5550120",
            "5550121",
            "5550142",
        ] {
            assert!(!logs.contains(secret), "never logged: {secret}");
        }
    }

    #[tokio::test]
    async fn an_audit_record_that_cannot_be_written_is_a_refusal_and_the_retry_completes_the_same_disclosure()
     {
        let line = Line::start().await;
        let id = held_by(&line, "ben").await;
        // AUDIT takes no records (nobody may delete it; the operator points
        // it elsewhere): no disclosure may happen without its record.
        let mut audit = line.js.get_stream(streams::AUDIT).await.unwrap();
        let mut elsewhere = audit.info().await.unwrap().config.clone();
        elsewhere.subjects = vec!["nwd.v1.audit-moved.>".to_owned()];
        line.js.update_stream(elsewhere).await.unwrap();
        // Nor a refusal without its record: the counsellor is asked to retry.
        let r = emergency(&line, id, "ben", "eastside-clinic", NATURE).await;
        assert_eq!(
            refusal_reason(r),
            "the line could not record this just now; please try again"
        );
        let r = emergency(&line, id, "ben", "county-hospital", NATURE).await;
        assert_eq!(
            refusal_reason(r),
            "the line could not record this just now; please try again"
        );
        assert!(
            on::<OutboundSms>(&line, streams::OUTBOUND, subjects::outbound_sms(&id))
                .await
                .is_empty(),
            "the hospital is not texted without the record"
        );
        let decided = line.record(id).await.unwrap().emergencies;
        assert_eq!(decided.len(), 1);

        bus::ensure_all(&line.js, 1).await.unwrap();
        assert_eq!(
            emergency(&line, id, "ben", "county-hospital", NATURE).await,
            RouterReply::Done
        );
        let disclosed = disclosures(&line, id).await;
        assert_eq!(disclosed.len(), 1);
        assert_eq!(
            disclosed[0].1.at, decided[0].at,
            "the disclosure first decided"
        );
        assert_eq!(sms_to_hospital(&line, id).await.len(), 1);
    }
}

// ---------------------------------------------------------------- outreach

mod outreach {
    use super::*;
    use nwd_proto::events::{Author, OutboundSms};
    use nwd_proto::referral::{
        OutreachChange, OutreachOpened, OutreachOutcome, OutreachUpdate, Priority,
    };
    use nwd_proto::{ReferralId, wire};

    const REASON: &str = "overdose, discharged from the ED";

    fn opened(door: &str, offer_at: OffsetDateTime) -> OutreachOpened {
        let referral_id = ReferralId::new();
        OutreachOpened {
            contact_id: wire::outreach_contact(&referral_id),
            referral_id,
            channel: Channel::Sms {
                patient: nwd_proto::Address::parse("+15005550166"),
                line: nwd_proto::Address::parse("+15005550100"),
            },
            door: nwd_proto::PartnerId::parse(door).unwrap(),
            patient: None,
            patient_name: Some("Jo Doe".into()),
            lang: Language::En,
            priority: Priority::Stat,
            offer_at,
            due_at: offer_at + time::Duration::minutes(15),
            reason: Some(REASON.into()),
            received_at: OffsetDateTime::now_utc(),
        }
    }

    impl Line {
        async fn outreach(&self, ev: &OutreachOpened, msg_id: &str) {
            bus::publish(
                &self.js,
                subjects::contact_outreach(&ev.contact_id),
                msg_id,
                &Envelope::new(ev.clone()),
            )
            .await
            .unwrap();
        }

        async fn updates(&self, contact: ContactId) -> Vec<OutreachUpdate> {
            stored(&self.js, subjects::contact_outreach_update(&contact)).await
        }

        async fn wait_updates(&self, contact: ContactId, n: usize) -> Vec<OutreachUpdate> {
            eventually(WITHIN, &format!("{n} outreach updates"), || async {
                let u = self.updates(contact).await;
                (u.len() >= n).then_some(u)
            })
            .await
        }

        async fn sms_to_person(&self, contact: ContactId) -> Vec<OutboundSms> {
            nwd_runtime::transcript::read_subjects(
                &self.js,
                streams::OUTBOUND,
                vec![subjects::outbound_sms(&contact)],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                Envelope::<OutboundSms>::from_bytes(&m.payload)
                    .unwrap()
                    .data
            })
            .collect()
        }
    }

    fn changes(updates: &[OutreachUpdate]) -> Vec<&'static str> {
        updates.iter().map(|u| u.change.name()).collect()
    }

    #[tokio::test]
    async fn an_outreach_through_a_door_with_nobody_on_call_is_served_by_anyone_on_call_and_tells_each_step()
     {
        nwd_runtime::telemetry::metrics_handle();
        let line = Line::start().await;
        line.presence("ben", Presence::Available).await;
        // Northside Hospital has no staff at all: no wrong door.
        let ev = opened("northside-hospital", OffsetDateTime::now_utc());
        let id = ev.contact_id;
        line.outreach(&ev, &wire::msg_id::outreach_opened(&ev.referral_id))
            .await;
        let offer = line.pushes.wait_offer("ben", id).await;
        let view = offer.outreach.expect("shown as an outreach");
        assert_eq!(view.referred_by, "Northside Hospital");
        assert_eq!(view.reason.as_deref(), Some(REASON));
        assert_eq!(view.patient_name.as_deref(), Some("Jo Doe"));
        assert_eq!(view.due_at, ev.due_at);
        assert!(!view.late);
        assert!(offer.messages.is_empty(), "the person has not written");
        let rec = line.record(id).await.unwrap();
        assert_eq!(rec.risk, RiskLevel::High, "stat starts high");
        assert_eq!(changes(&line.wait_updates(id, 1).await), ["queued"]);
        // Nothing reached the person yet: no queue notice to someone who did not write.
        assert!(line.sms_to_person(id).await.is_empty());

        assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
        let updates = line.wait_updates(id, 2).await;
        assert_eq!(
            updates[1].change,
            OutreachChange::Assigned {
                counsellor: c("ben")
            }
        );
        // The line's introduction, once, from the line's own number, naming
        // neither the referrer nor the reason.
        let intro = eventually(WITHIN, "the introduction", || async {
            line.sms_to_person(id).await.into_iter().next()
        })
        .await;
        assert_eq!(intro.outbound_id, wire::outbound::outreach_intro(&id));
        assert_eq!(intro.author, Author::System);
        assert_eq!(intro.from, nwd_proto::Address::parse("+15005550100"));
        assert_eq!(intro.to, nwd_proto::Address::parse("+15005550166"));
        assert!(intro.body.contains("No Wrong Door"), "{}", intro.body);
        for secret in ["Northside", "Hospital", "overdose", "ED", "Jo Doe"] {
            assert!(!intro.body.contains(secret), "{secret} in {}", intro.body);
        }
        let rec = eventually(WITHIN, "introduced", || async {
            line.record(id)
                .await
                .filter(|r| r.outreach.as_ref().is_some_and(|o| o.introduced))
        })
        .await;
        assert_eq!(rec.outreach.unwrap().attempts, 1);
        // A retried accept sends nothing twice.
        assert_eq!(line.accept(id, "ben").await, RouterReply::Done);

        // Only the holder records the outcome; a retry repeats nothing.
        let outcome = |who: &str| RouterCommand::OutreachOutcome {
            contact_id: id,
            counsellor: c(who),
            outcome: OutreachOutcome::Reached,
        };
        assert!(matches!(
            line.command(outcome("ana")).await,
            RouterReply::Refused { .. }
        ));
        assert_eq!(line.command(outcome("ben")).await, RouterReply::Done);
        assert_eq!(line.command(outcome("ben")).await, RouterReply::Done);
        // An outcome on a contact that is no outreach is refused.
        let inbound = ContactId::new();
        line.presence("chloe", Presence::Available).await;
        line.message(inbound, RiskLevel::Low, Language::En, "hi")
            .await;
        line.pushes.wait_offer("chloe", inbound).await;
        assert_eq!(line.accept(inbound, "chloe").await, RouterReply::Done);
        assert!(matches!(
            line.command(RouterCommand::OutreachOutcome {
                contact_id: inbound,
                counsellor: c("chloe"),
                outcome: OutreachOutcome::Reached,
            })
            .await,
            RouterReply::Refused { .. }
        ));

        assert_eq!(
            line.command(RouterCommand::Resolve {
                contact_id: id,
                counsellor: c("ben"),
                disposition: None,
                note: None,
            })
            .await,
            RouterReply::Done
        );
        let updates = line.wait_updates(id, 4).await;
        assert_eq!(
            changes(&updates),
            ["queued", "assigned", "outcome", "resolved"]
        );
        assert_eq!(
            updates[2].change,
            OutreachChange::Outcome {
                counsellor: c("ben"),
                outcome: OutreachOutcome::Reached
            }
        );
        assert!(updates.iter().all(|u| u.referral_id == ev.referral_id));
        assert_eq!(line.sms_to_person(id).await.len(), 1, "one introduction");

        // A redelivered referral changes nothing (another Nats-Msg-Id: past the window).
        line.outreach(&ev, "re-post").await;
        let stream = line.js.get_stream(streams::CONTACTS).await.unwrap();
        eventually(WITHIN, "the router consumer idle", || {
            let stream = stream.clone();
            async move {
                let info = stream
                    .consumer_info(nwd_proto::streams::consumers::ROUTER)
                    .await
                    .ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
        let rec = line.record(id).await.unwrap();
        assert!(matches!(rec.state, ContactState::Resolved { .. }));
        assert_eq!(changes(&line.updates(id).await).len(), 4);
        assert!(
            line.updates(inbound).await.is_empty(),
            "no updates for an inbound contact"
        );
        line.router.unwrap().stop().await;
    }

    #[tokio::test]
    async fn an_outreach_for_later_is_offered_to_nobody_before_its_time_but_a_person_who_writes_is_served()
     {
        let mut line = Line::start().await;
        line.presence("ben", Presence::Available).await;
        let later = OffsetDateTime::now_utc() + time::Duration::hours(6);
        let ev = opened("eastside-clinic", later);
        let id = ev.contact_id;
        line.outreach(&ev, &wire::msg_id::outreach_opened(&ev.referral_id))
            .await;
        let rec = line.wait_state(id, "the record", waiting).await;
        assert!(rec.scheduled());
        assert_eq!(rec.escalation.as_ref().unwrap().due, Some(later));
        assert_eq!(changes(&line.wait_updates(id, 1).await), ["queued"]);
        // A restart replays every record: still nobody is offered it.
        line.restart_router().await;
        // Sweeps run every 200 ms; an offer would come within a few.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(line.pushes.offers("ben", id).is_empty());
        assert!(line.record(id).await.unwrap().scheduled());

        // The person writes (they were released early): served now.
        let mut m = triaged(id, RiskLevel::Low, Language::En, "hello?");
        m.message.opens_contact = false;
        line.publish(&m, &wire::msg_id::message_triaged(&m.message.message_id))
            .await;
        line.pushes.wait_offer("ben", id).await;
        line.router.unwrap().stop().await;
    }

    #[tokio::test]
    async fn an_introduction_owed_after_a_crash_is_sent_once_by_the_sweep() {
        let line = Line::start().await;
        line.presence("ben", Presence::Available).await;
        // What a router that crashed between the accept's write and the
        // introduction leaves: assigned, not introduced.
        let ev = opened("eastside-clinic", OffsetDateTime::now_utc());
        let id = ev.contact_id;
        let mut rec = ContactRecord::open_outreach(&ev);
        rec.offer(&[c("ben")]).unwrap();
        rec.accept(&c("ben"), OffsetDateTime::now_utc()).unwrap();
        assert!(rec.owes_introduction());
        line.contacts
            .put(id.to_string(), serde_json::to_vec(&rec).unwrap().into())
            .await
            .unwrap();
        let rec = eventually(WITHIN, "introduced by the sweep", || async {
            line.record(id)
                .await
                .filter(|r| r.outreach.as_ref().is_some_and(|o| o.introduced))
        })
        .await;
        assert_eq!(rec.outreach.unwrap().attempts, 1);
        let sent = line.sms_to_person(id).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].outbound_id, wire::outbound::outreach_intro(&id));
        assert_eq!(
            line.wait_updates(id, 1).await[0].change,
            OutreachChange::Assigned {
                counsellor: c("ben")
            }
        );
        line.router.unwrap().stop().await;
    }

    #[tokio::test]
    async fn a_referral_for_a_person_already_talking_joins_their_contact_and_a_second_gets_its_own()
    {
        let line = Line::start().await;
        line.presence("ben", Presence::Available).await;
        // The person is already in a conversation with Ben.
        let open = ContactId::new();
        line.message(open, RiskLevel::Low, Language::En, "hi").await;
        line.pushes.wait_offer("ben", open).await;
        assert_eq!(line.accept(open, "ben").await, RouterReply::Done);

        let mut first = opened("eastside-clinic", OffsetDateTime::now_utc());
        first.contact_id = open;
        line.outreach(&first, &wire::msg_id::outreach_opened(&first.referral_id))
            .await;
        let updates = line.wait_updates(open, 2).await;
        assert_eq!(
            updates.iter().map(|u| u.change.clone()).collect::<Vec<_>>(),
            [
                OutreachChange::Queued,
                OutreachChange::Assigned {
                    counsellor: c("ben")
                }
            ]
        );
        let rec = line.record(open).await.unwrap();
        let o = rec.outreach.clone().unwrap();
        assert!(o.joined && o.introduced);
        assert_eq!(o.referral_id, first.referral_id);
        assert_eq!(rec.risk, RiskLevel::High, "raised to the referral's");
        assert_eq!(rec.assigned_to(), Some(&c("ben")), "still with Ben");
        assert!(
            line.sms_to_person(open).await.is_empty(),
            "no introduction to someone who wrote first"
        );

        // A second referral for the same person while the first is open.
        let mut second = opened("county-hospital", OffsetDateTime::now_utc());
        second.contact_id = open;
        line.outreach(&second, &wire::msg_id::outreach_opened(&second.referral_id))
            .await;
        let own = wire::outreach_contact(&second.referral_id);
        let rec = line.wait_state(own, "its own record", |_| true).await;
        assert_eq!(rec.outreach.unwrap().referral_id, second.referral_id);
        assert_eq!(changes(&line.wait_updates(own, 1).await)[0], "queued");
        assert_eq!(
            line.record(open)
                .await
                .unwrap()
                .outreach
                .unwrap()
                .referral_id,
            first.referral_id,
            "the first keeps its contact"
        );
        line.router.unwrap().stop().await;
    }

    #[tokio::test]
    async fn an_outreach_not_taken_by_its_due_time_is_late_once() {
        nwd_runtime::telemetry::metrics_handle();
        let line = Line::start().await;
        // Nobody on: it waits, climbing the ladder; it is late.
        let mut ev = opened("eastside-clinic", OffsetDateTime::now_utc());
        ev.due_at = ev.offer_at - time::Duration::seconds(1);
        let id = ev.contact_id;
        line.outreach(&ev, &wire::msg_id::outreach_opened(&ev.referral_id))
            .await;
        let rec = eventually(WITHIN, "marked late", || async {
            line.record(id)
                .await
                .filter(|r| r.outreach.as_ref().is_some_and(|o| o.late_at.is_some()))
        })
        .await;
        let view = nwd_runtime::transcript::contact_view(
            &rec,
            &nwd_runtime::directory::load(&test_directory()).unwrap(),
            Vec::new(),
        );
        assert!(view.outreach.unwrap().late);
        let addr = line.router.as_ref().unwrap().addr;
        // Counted just after the record is written: wait for it.
        let metrics = eventually(WITHIN, "the late outreach counted", || async {
            let metrics = reqwest::get(format!("http://{addr}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .contains(
                    r#"nwd_outreach_late_total{service="router",partner="eastside-clinic",priority="stat"} 1"#,
                )
                .then_some(metrics)
        })
        .await;
        assert!(metrics.contains("nwd_outreach_due_total"), "{metrics}");
        line.router.unwrap().stop().await;
    }
}

// ------------------------------------------------------------ priority offers (ADR 0017)

/// `who` available, holding one conversation, then away: one seat free when
/// they come back.
async fn one_conversation(line: &Line, who: &str) -> ContactId {
    line.presence(who, Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Low, Language::En, "earlier")
        .await;
    line.pushes.wait_offer(who, id).await;
    assert_eq!(line.accept(id, who).await, RouterReply::Done);
    line.presence(who, Presence::Away).await;
    id
}

#[tokio::test]
async fn one_free_seat_is_offered_only_the_most_urgent_contact_then_the_next() {
    let line = Line::start().await;
    let earlier = one_conversation(&line, "ben").await;
    let low = ContactId::new();
    let moderate = ContactId::new();
    let high = ContactId::new();
    for (id, level) in [
        (low, RiskLevel::Low),
        (moderate, RiskLevel::Moderate),
        (high, RiskLevel::High),
    ] {
        line.message(id, level, Language::En, "waiting").await;
        line.wait_state(id, "waiting", waiting).await;
    }
    line.presence("ben", Presence::Available).await;
    line.pushes.wait_offer("ben", high).await;
    line.wait_state(high, "the high offered to ben", offered_to(&["ben"]))
        .await;
    // The pass that offered the high decided the others too (and pushes in
    // queue order, the high first); absence cannot be waited on, so give
    // the sweep (every 200 ms here) a few more passes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(line.pushes.offers("ben", moderate).is_empty());
    assert!(line.pushes.offers("ben", low).is_empty());
    assert!(waiting(&line.record(moderate).await.unwrap().state));

    // He takes it and closes his earlier conversation: the moderate is next.
    assert_eq!(line.accept(high, "ben").await, RouterReply::Done);
    let resolve = RouterCommand::Resolve {
        contact_id: earlier,
        counsellor: c("ben"),
        disposition: Some("support-given".into()),
        note: None,
    };
    assert_eq!(line.command(resolve).await, RouterReply::Done);
    line.pushes.wait_offer("ben", moderate).await;
    assert!(line.pushes.offers("ben", low).is_empty());
}

#[tokio::test]
async fn a_lower_offer_is_withdrawn_when_a_more_urgent_contact_needs_the_seat() {
    let line = Line::start().await;
    // ana: one seat.
    line.presence("ana", Presence::Available).await;
    let low = ContactId::new();
    line.message(low, RiskLevel::Low, Language::En, "a question")
        .await;
    line.pushes.wait_offer("ana", low).await;
    let high = ContactId::new();
    line.message(high, RiskLevel::High, Language::En, "I have the pills")
        .await;
    line.pushes.wait_offer("ana", high).await;
    assert_eq!(
        line.pushes.wait_withdrawn("ana", low).await,
        WithdrawReason::Expired
    );
    line.wait_state(low, "the low waits", waiting).await;
    line.wait_state(high, "the high is hers", offered_to(&["ana"]))
        .await;
}

// ------------------------------------------------------------ "take the next" (ADR 0017)

mod take_next {
    use super::*;

    async fn take_next(line: &Line, who: &str) -> RouterReply {
        line.command(RouterCommand::TakeNext { counsellor: c(who) })
            .await
    }

    fn refusal(reason: &str) -> RouterReply {
        RouterReply::Refused {
            reason: reason.into(),
        }
    }

    fn conversations(line: &Line, who: &str) -> Vec<ContactView> {
        line.pushes
            .to(who)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Conversation { contact } => Some(contact),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn takes_the_most_urgent_contact_they_are_eligible_for_and_the_others_lose_the_offer() {
        nwd_runtime::telemetry::metrics_handle();
        let line = Line::start().await;
        line.presence("ana", Presence::Available).await;
        line.presence("ben", Presence::Available).await;
        // A Spanish speaker's contact: during the language wait only ana
        // (who speaks Spanish) is eligible, though it is the most urgent.
        let spanish = ContactId::new();
        line.message(spanish, RiskLevel::High, Language::Es, "ayuda")
            .await;
        line.wait_state(spanish, "offered to ana", offered_to(&["ana"]))
            .await;
        let low = ContactId::new();
        line.message(low, RiskLevel::Low, Language::En, "a question")
            .await;
        let moderate = ContactId::new();
        line.message(moderate, RiskLevel::Moderate, Language::En, "cravings")
            .await;
        line.pushes.wait_offer("ben", moderate).await;
        line.presence("chloe", Presence::Available).await;
        line.pushes.wait_offer("chloe", moderate).await;

        assert_eq!(take_next(&line, "ben").await, RouterReply::Done);
        let rec = line.record(moderate).await.unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ben")), "not the Spanish one");
        assert_eq!(
            line.pushes.wait_withdrawn("chloe", moderate).await,
            WithdrawReason::Taken
        );
        let conversation = eventually(WITHIN, "the conversation pushed", || async {
            conversations(&line, "ben").into_iter().next()
        })
        .await;
        assert_eq!(conversation.contact_id, moderate);
        assert_eq!(conversation.messages[0].body, "cravings");
        let assigned: Vec<ContactAssigned> =
            stored(&line.js, subjects::contact_assigned(&moderate)).await;
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].counsellor, c("ben"));
        assert!(line.record(spanish).await.unwrap().assigned_to().is_none());

        // ana takes the top of hers: the Spanish contact.
        assert_eq!(take_next(&line, "ana").await, RouterReply::Done);
        assert_eq!(
            line.record(spanish).await.unwrap().assigned_to(),
            Some(&c("ana"))
        );
        let addr = line.router.as_ref().unwrap().addr;
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(r#"nwd_router_take_next_total{service="router",outcome="taken"} 2"#),
            "{metrics}"
        );
    }

    /// A contact through another institution's door, offered to its own
    /// counsellor on the door rung, is not "the next" for a counsellor of
    /// another door until the ladder widens to them.
    #[tokio::test]
    async fn a_contact_of_another_door_not_yet_widened_is_not_taken() {
        let line = Line::start().await;
        line.presence("dee", Presence::Available).await;
        line.presence("ben", Presence::Available).await;
        let hospital = ContactId::new();
        let mut ev = triaged(hospital, RiskLevel::High, Language::En, "help");
        ev.message.door = Some(nwd_proto::PartnerId::parse("county-hospital").unwrap());
        line.publish(
            &ev,
            &nwd_proto::wire::msg_id::message_triaged(&ev.message.message_id),
        )
        .await;
        line.wait_state(hospital, "offered to dee only", offered_to(&["dee"]))
            .await;
        assert_eq!(take_next(&line, "ben").await, refusal("queue-empty"));
        let clinic = ContactId::new();
        line.message(clinic, RiskLevel::Low, Language::En, "a question")
            .await;
        line.wait_state(clinic, "in the queue", |s| {
            matches!(
                s,
                ContactState::Offered { .. } | ContactState::Waiting { .. }
            )
        })
        .await;
        assert_eq!(take_next(&line, "ben").await, RouterReply::Done);
        assert_eq!(
            line.record(clinic).await.unwrap().assigned_to(),
            Some(&c("ben")),
            "the less urgent contact of his own door"
        );
        let rec = line.record(hospital).await.unwrap();
        assert!(offered_to(&["dee"])(&rec.state), "still dee's only");
    }

    #[tokio::test]
    async fn refused_when_away_at_capacity_or_with_nothing_to_take() {
        let line = Line::start().await;
        assert_eq!(take_next(&line, "sam").await, refusal("not-available"));
        line.presence("ben", Presence::Away).await;
        assert_eq!(take_next(&line, "ben").await, refusal("not-available"));
        line.presence("ana", Presence::Available).await;
        assert_eq!(take_next(&line, "ana").await, refusal("queue-empty"));
        let first = ContactId::new();
        line.message(first, RiskLevel::Low, Language::En, "one")
            .await;
        line.wait_state(first, "offered to ana", offered_to(&["ana"]))
            .await;
        assert_eq!(take_next(&line, "ana").await, RouterReply::Done);
        let second = ContactId::new();
        line.message(second, RiskLevel::High, Language::En, "two")
            .await;
        line.wait_state(second, "waiting", waiting).await;
        assert_eq!(take_next(&line, "ana").await, refusal("at-capacity"));
        assert!(line.record(second).await.unwrap().assigned_to().is_none());
    }

    #[tokio::test]
    async fn two_counsellors_taking_the_next_at_once_never_get_the_same_contact() {
        let line = Line::start().await;
        line.presence("ben", Presence::Available).await;
        line.presence("chloe", Presence::Available).await;
        let only = ContactId::new();
        line.message(only, RiskLevel::High, Language::En, "help")
            .await;
        line.wait_state(only, "offered", offered_to(&["ben", "chloe"]))
            .await;
        let (a, b) = tokio::join!(take_next(&line, "ben"), take_next(&line, "chloe"));
        let mut replies = [a, b];
        replies.sort_by_key(|r| r == &RouterReply::Done);
        assert_eq!(replies, [refusal("queue-empty"), RouterReply::Done]);
        assert_eq!(
            stored::<ContactAssigned>(&line.js, subjects::contact_assigned(&only))
                .await
                .len(),
            1
        );

        // Two waiting, two takers: one each.
        let first = ContactId::new();
        let second = ContactId::new();
        line.message(first, RiskLevel::High, Language::En, "one")
            .await;
        line.message(second, RiskLevel::Low, Language::En, "two")
            .await;
        line.wait_state(first, "offered", |s| {
            matches!(s, ContactState::Offered { .. })
        })
        .await;
        line.wait_state(second, "in the queue", |s| {
            matches!(
                s,
                ContactState::Offered { .. } | ContactState::Waiting { .. }
            )
        })
        .await;
        let (a, b) = tokio::join!(take_next(&line, "ben"), take_next(&line, "chloe"));
        assert_eq!((a, b), (RouterReply::Done, RouterReply::Done));
        let mut holders = vec![
            line.record(first)
                .await
                .unwrap()
                .assigned_to()
                .cloned()
                .unwrap(),
            line.record(second)
                .await
                .unwrap()
                .assigned_to()
                .cloned()
                .unwrap(),
        ];
        holders.sort();
        assert_eq!(holders, vec![c("ben"), c("chloe")]);
    }

    /// Take-next and accept share the counsellor's lock: at once, by one
    /// counsellor with one seat, they give one conversation.
    #[tokio::test]
    async fn take_next_and_accept_together_never_exceed_capacity() {
        let line = Line::start().await;
        let (first, second) = two_offers_to_ana(&line).await;
        let (a, b) = tokio::join!(line.accept(first, "ana"), take_next(&line, "ana"));
        let done = [&a, &b]
            .iter()
            .filter(|r| ***r == RouterReply::Done)
            .count();
        assert_eq!(done, 1, "{a:?} {b:?}");
        let held = [
            line.record(first).await.unwrap(),
            line.record(second).await.unwrap(),
        ]
        .iter()
        .filter(|r| r.assigned_to() == Some(&c("ana")))
        .count();
        assert_eq!(held, 1);
    }
}

// ------------------------------------------------------------ the C-SSRS screener

mod screener {
    use super::*;
    use nwd_proto::events::ScreenerRecorded;
    use nwd_proto::screener::ScreenerAnswers;

    /// Thoughts of killing oneself and of how, no intent, no plan, nothing
    /// done: moderate.
    fn moderate() -> ScreenerAnswers {
        ScreenerAnswers {
            wish_dead: true,
            thoughts: true,
            method: Some(true),
            intent: Some(false),
            plan: Some(false),
            behaviour: false,
            behaviour_recent: None,
        }
    }

    async fn assess(
        line: &Line,
        id: ContactId,
        who: &str,
        answers: ScreenerAnswers,
    ) -> RouterReply {
        line.command(RouterCommand::Assess {
            contact_id: id,
            counsellor: c(who),
            answers,
        })
        .await
    }

    async fn audited(line: &Line, id: ContactId) -> Vec<ScreenerRecorded> {
        nwd_runtime::transcript::read_subjects(
            &line.js,
            streams::AUDIT,
            vec![subjects::audit_screener(&id)],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            Envelope::<ScreenerRecorded>::from_bytes(&m.payload)
                .unwrap()
                .data
        })
        .collect()
    }

    /// A high-risk contact ben accepted.
    async fn held_by_ben(line: &Line) -> ContactId {
        line.presence("ben", Presence::Available).await;
        let id = ContactId::new();
        line.message(id, RiskLevel::High, Language::En, "I want to die")
            .await;
        line.pushes.wait_offer("ben", id).await;
        assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
        id
    }

    #[tokio::test]
    async fn a_screener_by_the_holder_lowers_the_level_is_audited_and_later_messages_raise_it_again()
     {
        let line = Line::start().await;
        let id = held_by_ben(&line).await;
        assert_eq!(
            assess(&line, id, "ben", moderate()).await,
            RouterReply::Done
        );
        let rec = line.record(id).await.unwrap();
        assert_eq!(rec.risk, RiskLevel::Moderate, "lowered by the screener");
        let result = rec.screener.unwrap();
        assert_eq!(
            (result.before, result.level),
            (RiskLevel::High, RiskLevel::Moderate)
        );
        assert_eq!(result.by, c("ben"));
        let pushed = eventually(WITHIN, "Assessed pushed to ben", || async {
            line.pushes.to("ben").into_iter().find_map(|m| match m {
                ServerMsg::Assessed { contact_id, result } if contact_id == id => Some(result),
                _ => None,
            })
        })
        .await;
        assert_eq!(pushed.level, RiskLevel::Moderate);
        let audit = audited(&line, id).await;
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].counsellor, c("ben"));
        assert_eq!(
            (audit[0].before, audit[0].after),
            (RiskLevel::High, RiskLevel::Moderate)
        );
        assert_eq!(audit[0].answers, moderate());
        assert_eq!(audit[0].at, result.at);
        // The same answers again (a retry): recorded once.
        assert_eq!(
            assess(&line, id, "ben", moderate()).await,
            RouterReply::Done
        );
        assert_eq!(audited(&line, id).await.len(), 1);

        // A low message leaves the assessed level; a high one raises it.
        line.message(id, RiskLevel::Low, Language::En, "thanks")
            .await;
        line.pushes.wait_message("ben", id, "thanks").await;
        assert_eq!(line.record(id).await.unwrap().risk, RiskLevel::Moderate);
        line.message(id, RiskLevel::High, Language::En, "I have the pills")
            .await;
        line.pushes
            .wait_message("ben", id, "I have the pills")
            .await;
        assert_eq!(line.record(id).await.unwrap().risk, RiskLevel::High);
    }

    #[tokio::test]
    async fn refused_for_anyone_but_the_holder_and_for_answers_that_break_the_skip_logic() {
        let line = Line::start().await;
        let id = held_by_ben(&line).await;
        let not_theirs = assess(&line, id, "chloe", moderate()).await;
        assert_eq!(
            not_theirs,
            RouterReply::Refused {
                reason: "the contact is not assigned to this counsellor".into()
            }
        );
        let mut skipped = moderate();
        skipped.plan = None;
        let RouterReply::Refused { reason } = assess(&line, id, "ben", skipped).await else {
            panic!("answers missing question 5 are refused");
        };
        assert!(reason.contains("only after yes to question 2"), "{reason}");
        let unknown = assess(&line, ContactId::new(), "ben", moderate()).await;
        assert!(matches!(unknown, RouterReply::Refused { .. }));
        let rec = line.record(id).await.unwrap();
        assert_eq!(rec.risk, RiskLevel::High, "unchanged");
        assert!(rec.screener.is_none());
        assert!(audited(&line, id).await.is_empty());
    }
}

// ------------------------------------------------------------ the queue feed

mod queue_feed {
    use super::*;
    use nwd_proto::dashboard::QueueSnapshot;

    /// Every snapshot on the queue subject (as the dashboard's user), with
    /// its raw payload.
    #[derive(Clone, Default)]
    struct Snapshots(Arc<Mutex<Vec<(QueueSnapshot, String)>>>);

    impl Snapshots {
        async fn follow(line: &Line) -> Self {
            let snapshots = Self::default();
            let mut sub = line
                .client
                .subscribe(subjects::dashboard_queue())
                .await
                .unwrap();
            line.client.flush().await.unwrap();
            let sink = snapshots.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let raw = String::from_utf8(msg.payload.to_vec()).unwrap();
                    let env = Envelope::<QueueSnapshot>::from_bytes(&msg.payload).unwrap();
                    sink.0.lock().unwrap().push((env.data, raw));
                }
            });
            snapshots
        }

        /// The first snapshot after the `after`-th one that satisfies `check`.
        async fn wait(
            &self,
            after: usize,
            what: &str,
            check: impl Fn(&QueueSnapshot) -> bool,
        ) -> (usize, QueueSnapshot, String) {
            eventually(WITHIN, what, || async {
                let all = self.0.lock().unwrap().clone();
                all.into_iter()
                    .enumerate()
                    .skip(after)
                    .find(|(_, (s, _))| check(s))
                    .map(|(i, (s, raw))| (i + 1, s, raw))
            })
            .await
        }
    }

    #[tokio::test]
    async fn a_waiting_contact_is_in_the_next_snapshot_without_its_text_and_leaves_on_accept() {
        let line = Line::start().await;
        let snapshots = Snapshots::follow(&line).await;
        let low = ContactId::new();
        let high = ContactId::new();
        line.message(low, RiskLevel::Low, Language::En, "a question")
            .await;
        line.message(high, RiskLevel::High, Language::En, "the pills are here")
            .await;
        let (seen, snapshot, raw) = snapshots
            .wait(0, "both waiting contacts in a snapshot", |s| {
                s.entries.len() == 2
            })
            .await;
        let order: Vec<ContactId> = snapshot.entries.iter().map(|e| e.contact_id).collect();
        assert_eq!(order, vec![high, low], "most urgent first");
        let entry = &snapshot.entries[0];
        assert_eq!(entry.risk, RiskLevel::High);
        assert_eq!(entry.reasons[0].rule, "rule-high");
        assert_eq!(entry.channel, "SMS ··42");
        assert_eq!(entry.door, "Eastside Recovery Clinic");
        assert_eq!(entry.offered, 0);
        assert!(!raw.contains("pills"), "never the message text: {raw}");
        assert!(!raw.contains("5550142"), "never the number: {raw}");

        line.presence("ben", Presence::Available).await;
        line.pushes.wait_offer("ben", high).await;
        let (seen, offered, _) = snapshots
            .wait(seen, "the high offered to one", |s| {
                s.entries
                    .iter()
                    .any(|e| e.contact_id == high && e.offered == 1)
            })
            .await;
        assert!(offered.seq > snapshot.seq);
        assert_eq!(line.accept(high, "ben").await, RouterReply::Done);
        let (_, after, _) = snapshots
            .wait(seen, "the high gone from the queue", |s| {
                s.entries.iter().all(|e| e.contact_id != high)
            })
            .await;
        assert!(after.entries.iter().any(|e| e.contact_id == low));
    }
}

/// The floor feed for supervisors: staff, conversations, the switchboard.
#[tokio::test]
async fn the_floor_snapshot_shows_staff_load_conversations_and_the_switchboard_without_text() {
    use nwd_proto::dashboard::FloorSnapshot;
    let line = Line::start().await;
    let seen: Arc<Mutex<Vec<(FloorSnapshot, String)>>> = Arc::default();
    let mut sub = line
        .client
        .subscribe(subjects::dashboard_floor())
        .await
        .unwrap();
    line.client.flush().await.unwrap();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let raw = String::from_utf8(msg.payload.to_vec()).unwrap();
            let env = Envelope::<FloorSnapshot>::from_bytes(&msg.payload).unwrap();
            sink.lock().unwrap().push((env.data, raw));
        }
    });
    let wait = |what: &'static str, check: Box<dyn Fn(&FloorSnapshot) -> bool + Send + Sync>| {
        let seen = seen.clone();
        async move {
            eventually(WITHIN, what, || async {
                seen.lock().unwrap().iter().find(|(s, _)| check(s)).cloned()
            })
            .await
        }
    };
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::High, Language::En, "the pills are here")
        .await;
    line.pushes.wait_offer("ben", id).await;
    assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
    let (snapshot, raw) = wait(
        "ben's conversation on the floor",
        Box::new(move |s| s.conversations.iter().any(|c| c.contact_id == id)),
    )
    .await;
    let conversation = &snapshot.conversations[0];
    assert_eq!(conversation.counsellor, c("ben"));
    assert_eq!(conversation.risk, RiskLevel::High);
    assert_eq!(conversation.door, "Eastside Recovery Clinic");
    assert!(!conversation.orphaned && !conversation.transferring);
    let ben = snapshot.staff.iter().find(|s| s.id == c("ben")).unwrap();
    assert_eq!(
        (ben.presence, ben.load, ben.capacity, ben.on_call),
        (Presence::Available, 1, 2, true)
    );
    let ana = snapshot.staff.iter().find(|s| s.id == c("ana")).unwrap();
    assert_eq!((ana.presence, ana.load), (Presence::Offline, 0));
    assert_eq!(snapshot.staff.len(), 5, "everyone in the directory");
    assert!(snapshot.switchboard.is_none());
    assert!(!raw.contains("pills"), "never the message text: {raw}");
    assert!(!raw.contains("5550142"), "never the number: {raw}");
    let on = RouterCommand::Switchboard {
        counsellor: c("sam"),
        on: true,
    };
    assert_eq!(line.command(on).await, RouterReply::Done);
    let (snapshot, _) = wait(
        "the switchboard on",
        Box::new(|s| s.switchboard.as_ref().is_some_and(|b| b.on)),
    )
    .await;
    assert_eq!(snapshot.switchboard.unwrap().by, c("sam"));
}

#[tokio::test]
async fn the_closing_note_and_disposition_reach_contact_resolved() {
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    line.presence("ben", Presence::Available).await;
    let id = ContactId::new();
    line.message(id, RiskLevel::Moderate, Language::En, "hello")
        .await;
    line.pushes.wait_offer("ben", id).await;
    assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
    let note = "Agreed a safety plan; will text the clinic tomorrow";
    let reply = line
        .command(RouterCommand::Resolve {
            contact_id: id,
            counsellor: c("ben"),
            disposition: Some(
                nwd_proto::dashboard::Disposition::SafetyPlanMade
                    .as_str()
                    .into(),
            ),
            note: Some(note.into()),
        })
        .await;
    assert_eq!(reply, RouterReply::Done);
    let resolved: Vec<ContactResolved> = stored(&line.js, subjects::contact_resolved(&id)).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].note.as_deref(), Some(note));
    assert_eq!(resolved[0].disposition.as_deref(), Some("safety-plan-made"));
    assert_eq!(
        line.record(id).await.unwrap().disposition.as_deref(),
        Some("safety-plan-made"),
        "the disposition is on the record"
    );
    assert!(
        !logs.contents().contains("safety plan"),
        "never the note in logs"
    );
}

// ------------------------------------------------------------ handovers (ADR 0019)

mod handovers {
    use super::*;
    use nwd_proto::dashboard::TransferStatus;
    use nwd_proto::events::{HandoverAction, HandoverRecorded};
    use nwd_proto::handover::{LeftHow, TransferMode, TransferTarget};

    async fn audited(line: &Line, id: ContactId) -> Vec<HandoverRecorded> {
        audit_on(line, subjects::audit_handover(&id)).await
    }

    async fn audit_on(line: &Line, subject: String) -> Vec<HandoverRecorded> {
        nwd_runtime::transcript::read_subjects(&line.js, streams::AUDIT, vec![subject])
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                Envelope::<HandoverRecorded>::from_bytes(&m.payload)
                    .unwrap()
                    .data
            })
            .collect()
    }

    fn refusal(reply: RouterReply) -> String {
        match reply {
            RouterReply::Refused { reason } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A contact `who` accepted (they stay available).
    async fn held_by(line: &Line, who: &str, body: &str) -> ContactId {
        line.presence(who, Presence::Available).await;
        let id = ContactId::new();
        line.message(id, RiskLevel::High, Language::En, body).await;
        line.pushes.wait_offer(who, id).await;
        assert_eq!(line.accept(id, who).await, RouterReply::Done);
        id
    }

    async fn transfer(
        line: &Line,
        id: ContactId,
        who: &str,
        target: TransferTarget,
        mode: TransferMode,
        note: Option<&str>,
    ) -> RouterReply {
        line.command(RouterCommand::Transfer {
            contact_id: id,
            counsellor: c(who),
            target,
            mode,
            note: note.map(str::to_owned),
        })
        .await
    }

    /// A transfer expected to go through: retried while the router has not
    /// yet seen the receiver's presence (a refusal changes nothing).
    async fn transfer_done(
        line: &Line,
        id: ContactId,
        who: &str,
        target: TransferTarget,
        mode: TransferMode,
        note: Option<&str>,
    ) {
        eventually(WITHIN, "the transfer accepted by the router", || async {
            let reply = transfer(line, id, who, target.clone(), mode, note).await;
            (reply == RouterReply::Done).then_some(())
        })
        .await;
    }

    fn to(who: &str) -> TransferTarget {
        TransferTarget::Counsellor { id: c(who) }
    }

    async fn wait_push(
        line: &Line,
        who: &str,
        what: &str,
        pick: impl Fn(&ServerMsg) -> bool,
    ) -> ServerMsg {
        eventually(WITHIN, what, || async {
            line.pushes.to(who).into_iter().find(|m| pick(m))
        })
        .await
    }

    fn assigned_to(who: &'static str) -> impl Fn(&ContactState) -> bool {
        move |s| matches!(s, ContactState::Assigned { counsellor, .. } if counsellor.as_str() == who)
    }

    #[tokio::test]
    async fn a_warm_transfer_stays_with_the_sender_until_the_receiver_accepts_and_is_audited_without_the_note()
     {
        let logs = nwd_testkit::capture_logs();
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        line.presence("ben", Presence::Available).await;
        let note = "Talked about her sister; wants a callback";
        transfer_done(&line, id, "ana", to("ben"), TransferMode::Warm, Some(note)).await;
        // Ben is offered it with the sender and the note; Ana keeps it.
        let offer = line.pushes.wait_offer("ben", id).await;
        let t = offer.transfer.expect("the offer names the transfer");
        assert_eq!(
            (t.from, t.from_name.as_str(), t.mode),
            (c("ana"), "Ana", TransferMode::Warm)
        );
        assert_eq!(t.note.as_deref(), Some(note));
        assert_eq!(
            line.record(id).await.unwrap().assigned_to(),
            Some(&c("ana"))
        );
        wait_push(&line, "ana", "transfer offered", |m| {
            matches!(m, ServerMsg::TransferUpdate { status: TransferStatus::Offered { to }, .. } if to == &["Ben".to_owned()])
        })
        .await;
        let audit = audited(&line, id).await;
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].counsellor, c("ana"));
        assert_eq!(
            audit[0].action,
            HandoverAction::Transfer {
                target: to("ben"),
                mode: TransferMode::Warm,
                to: vec![c("ben")],
                with_note: true,
            }
        );
        // Ben accepts: his now; Ana is told; Ben has the conversation.
        assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
        line.wait_state(id, "assigned to ben", assigned_to("ben"))
            .await;
        wait_push(
            &line,
            "ana",
            "handed over",
            |m| matches!(m, ServerMsg::HandedOver { to, .. } if to == "Ben"),
        )
        .await;
        wait_push(&line, "ana", "transfer accepted", |m| {
            matches!(m, ServerMsg::TransferUpdate { status: TransferStatus::Accepted { by }, .. } if by == "Ben")
        })
        .await;
        wait_push(
            &line,
            "ben",
            "the conversation",
            |m| matches!(m, ServerMsg::Conversation { contact } if contact.contact_id == id),
        )
        .await;
        let assigned: Vec<ContactAssigned> =
            stored(&line.js, subjects::contact_assigned(&id)).await;
        assert!(assigned.iter().any(|a| a.counsellor == c("ben")));
        assert!(line.record(id).await.unwrap().transfer.is_none());
        // A later message goes to Ben only.
        line.message(id, RiskLevel::High, Language::En, "are you there")
            .await;
        line.pushes.wait_message("ben", id, "are you there").await;
        assert!(
            !line
                .pushes
                .messages("ana", id)
                .contains(&"are you there".to_owned())
        );
        assert!(
            !logs.contents().contains("sister"),
            "never the note in logs"
        );
    }

    #[tokio::test]
    async fn a_declined_or_cancelled_warm_transfer_leaves_the_conversation_with_the_sender() {
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        line.presence("ben", Presence::Available).await;
        transfer_done(&line, id, "ana", to("ben"), TransferMode::Warm, None).await;
        line.pushes.wait_offer("ben", id).await;
        let decline = line
            .command(RouterCommand::Decline {
                contact_id: id,
                counsellor: c("ben"),
            })
            .await;
        assert_eq!(decline, RouterReply::Done);
        assert_eq!(
            line.pushes.wait_withdrawn("ben", id).await,
            WithdrawReason::Declined
        );
        wait_push(&line, "ana", "declined", |m| {
            matches!(
                m,
                ServerMsg::TransferUpdate {
                    status: TransferStatus::Declined,
                    ..
                }
            )
        })
        .await;
        let rec = line.record(id).await.unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ana")));
        assert!(rec.transfer.is_none());
        // Again, then cancelled by the sender: Chloe's offer is withdrawn.
        line.presence("chloe", Presence::Available).await;
        transfer_done(&line, id, "ana", to("chloe"), TransferMode::Warm, None).await;
        line.pushes.wait_offer("chloe", id).await;
        let cancel = RouterCommand::CancelTransfer {
            contact_id: id,
            counsellor: c("ana"),
        };
        assert_eq!(line.command(cancel.clone()).await, RouterReply::Done);
        line.pushes.wait_withdrawn("chloe", id).await;
        wait_push(&line, "ana", "cancelled", |m| {
            matches!(
                m,
                ServerMsg::TransferUpdate {
                    status: TransferStatus::Cancelled,
                    ..
                }
            )
        })
        .await;
        assert_eq!(line.accept(id, "chloe").await, refusal_of_taken());
        assert_eq!(
            line.record(id).await.unwrap().assigned_to(),
            Some(&c("ana"))
        );
        // Nothing left to cancel.
        assert!(matches!(
            line.command(cancel).await,
            RouterReply::Refused { .. }
        ));
        let audit = audited(&line, id).await;
        let kinds: Vec<&str> = audit.iter().map(|a| a.action.kind()).collect();
        assert_eq!(kinds, ["transfer", "transfer", "cancel_transfer"]);
    }

    fn refusal_of_taken() -> RouterReply {
        RouterReply::Refused {
            reason: nwd_proto::contact::TransitionError::Taken.to_string(),
        }
    }

    #[tokio::test]
    async fn a_transfer_is_refused_unless_by_the_holder_to_someone_free_with_a_short_note() {
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        // Not the holder.
        line.presence("ben", Presence::Available).await;
        let r = transfer(&line, id, "ben", to("chloe"), TransferMode::Warm, None).await;
        assert!(matches!(r, RouterReply::Refused { .. }), "{r:?}");
        // Chloe is not available; nobody knows "zed"; the supervisor is away.
        for target in [to("chloe"), to("zed"), TransferTarget::Supervisor] {
            let r = transfer(&line, id, "ana", target, TransferMode::Cold, None).await;
            assert_eq!(refusal(r), "nobody-available");
        }
        // A partner with nobody available.
        let hospital = TransferTarget::Partner {
            partner: nwd_proto::PartnerId::parse("county-hospital").unwrap(),
        };
        let r = transfer(&line, id, "ana", hospital, TransferMode::Warm, None).await;
        assert_eq!(refusal(r), "nobody-available");
        // Ben has a free seat, but the note is too long.
        let long = "x".repeat(nwd_proto::handover::MAX_HANDOVER_NOTE_CHARS + 1);
        let r = transfer(&line, id, "ana", to("ben"), TransferMode::Warm, Some(&long)).await;
        assert_eq!(refusal(r), "note-too-long");
        let rec = line.record(id).await.unwrap();
        assert_eq!(rec.assigned_to(), Some(&c("ana")));
        assert!(rec.transfer.is_none());
        assert!(
            audited(&line, id).await.is_empty(),
            "refusals change nothing"
        );
        assert!(line.pushes.offers("ben", id).is_empty());
    }

    #[tokio::test]
    async fn a_cold_transfer_to_a_partner_lets_go_at_once_and_is_accepted_like_an_offer() {
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        line.presence("dee", Presence::Available).await;
        let hospital = TransferTarget::Partner {
            partner: nwd_proto::PartnerId::parse("county-hospital").unwrap(),
        };
        transfer_done(&line, id, "ana", hospital, TransferMode::Cold, None).await;
        wait_push(
            &line,
            "ana",
            "handed over",
            |m| matches!(m, ServerMsg::HandedOver { to, .. } if to == "Dee"),
        )
        .await;
        let offer = line.pushes.wait_offer("dee", id).await;
        assert_eq!(offer.transfer.map(|t| t.mode), Some(TransferMode::Cold));
        assert_eq!(line.record(id).await.unwrap().assigned_to(), None);
        assert_eq!(line.accept(id, "dee").await, RouterReply::Done);
        let rec = line
            .wait_state(id, "assigned to dee", assigned_to("dee"))
            .await;
        assert!(rec.transfer.is_none());
    }

    #[tokio::test]
    async fn only_a_supervisor_reassigns_and_the_holder_is_told() {
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        let reassign = |by: &str| RouterCommand::Reassign {
            contact_id: id,
            counsellor: c(by),
            to: c("ben"),
        };
        assert_eq!(
            refusal(line.command(reassign("chloe")).await),
            "not-a-supervisor"
        );
        assert_eq!(
            line.record(id).await.unwrap().assigned_to(),
            Some(&c("ana"))
        );
        line.presence("ben", Presence::Available).await;
        assert_eq!(line.command(reassign("sam")).await, RouterReply::Done);
        line.pushes.wait_offer("ben", id).await;
        wait_push(
            &line,
            "ana",
            "handed over",
            |m| matches!(m, ServerMsg::HandedOver { to, .. } if to == "Ben"),
        )
        .await;
        let audit = audited(&line, id).await;
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].counsellor, c("sam"));
        assert_eq!(
            audit[0].action,
            HandoverAction::Reassign {
                from: Some(c("ana")),
                to: c("ben")
            }
        );
        assert_eq!(line.accept(id, "ben").await, RouterReply::Done);
        line.wait_state(id, "assigned to ben", assigned_to("ben"))
            .await;
    }

    #[tokio::test]
    async fn the_switchboard_holds_the_queue_for_supervisors_across_a_restart_and_releases_it() {
        let mut line = Line::start().await;
        line.presence("ana", Presence::Available).await;
        line.presence("ben", Presence::Available).await;
        let first = ContactId::new();
        line.message(first, RiskLevel::Moderate, Language::En, "one")
            .await;
        line.pushes.wait_offer("ana", first).await;
        let switch = |by: &str, on: bool| RouterCommand::Switchboard {
            counsellor: c(by),
            on,
        };
        assert_eq!(
            refusal(line.command(switch("ana", true)).await),
            "not-a-supervisor"
        );
        assert_eq!(line.command(switch("sam", true)).await, RouterReply::Done);
        // Held: offers withdrawn; offered to the supervisor once available.
        line.pushes.wait_withdrawn("ana", first).await;
        let rec = line.wait_state(first, "held", waiting).await;
        assert!(rec.held.is_some());
        line.presence("sam", Presence::Available).await;
        line.pushes.wait_offer("sam", first).await;
        // The router restarts: the switchboard is still on.
        line.restart_router().await;
        line.presence("sam", Presence::Away).await;
        let second = ContactId::new();
        line.message(second, RiskLevel::High, Language::En, "two")
            .await;
        let rec = line.wait_state(second, "held at open", waiting).await;
        assert!(rec.held.is_some(), "new contacts are held while it is on");
        assert!(line.pushes.offers("ana", second).is_empty());
        assert!(line.pushes.offers("ben", second).is_empty());
        // Off: released, offered to the floor again (most urgent first).
        assert_eq!(line.command(switch("sam", false)).await, RouterReply::Done);
        line.pushes.wait_offer("ana", second).await;
        eventually(WITHIN, "released", || async {
            let a = line.record(first).await.unwrap();
            let b = line.record(second).await.unwrap();
            (a.held.is_none() && b.held.is_none()).then_some(())
        })
        .await;
        let audit = audit_on(&line, subjects::audit_switchboard()).await;
        let ons: Vec<_> = audit
            .iter()
            .map(|a| (a.counsellor.as_str(), a.action.clone()))
            .collect();
        assert_eq!(
            ons,
            [
                ("sam", HandoverAction::Switchboard { on: true }),
                ("sam", HandoverAction::Switchboard { on: false })
            ]
        );
    }

    #[tokio::test]
    async fn a_person_who_left_is_not_rung_and_the_first_claim_wins() {
        let line = Line::start().await;
        line.presence("ana", Presence::Available).await;
        let id = ContactId::new();
        line.message(id, RiskLevel::High, Language::En, "hello")
            .await;
        line.pushes.wait_offer("ana", id).await;
        // Quick exit: out of the queue, Ana's offer withdrawn.
        let mut exit = triaged(id, RiskLevel::High, Language::En, "bye");
        exit.message.opens_contact = false;
        exit.message.quick_exit = true;
        line.publish(
            &exit,
            &nwd_proto::wire::msg_id::message_triaged(&exit.message.message_id),
        )
        .await;
        line.pushes.wait_withdrawn("ana", id).await;
        let rec = line.wait_state(id, "waiting", waiting).await;
        assert_eq!(rec.left.as_ref().map(|l| l.how), Some(LeftHow::QuickExit));
        // Ben comes on: nobody is offered a person who left.
        line.presence("ben", Presence::Available).await;
        line.presence("chloe", Presence::Available).await;
        let claim = |who: &str| RouterCommand::Claim {
            contact_id: id,
            counsellor: c(who),
        };
        assert_eq!(line.command(claim("ben")).await, RouterReply::Done);
        assert_eq!(refusal(line.command(claim("chloe")).await), "taken");
        assert_eq!(
            line.command(claim("ben")).await,
            RouterReply::Done,
            "a retry"
        );
        wait_push(
            &line,
            "ben",
            "the conversation",
            |m| matches!(m, ServerMsg::Conversation { contact } if contact.contact_id == id),
        )
        .await;
        assert!(line.pushes.offers("ben", id).is_empty());
        assert!(line.pushes.offers("chloe", id).is_empty());
        let rec = line
            .wait_state(id, "assigned to ben", assigned_to("ben"))
            .await;
        assert!(rec.left.unwrap().claimed.is_some());
        let audit = audited(&line, id).await;
        assert_eq!(audit.len(), 1, "one claim audited once");
        assert_eq!(audit[0].action, HandoverAction::Claim);
    }

    #[tokio::test]
    async fn stop_while_waiting_is_an_opt_out_follow_up() {
        let line = Line::start().await;
        let id = ContactId::new();
        line.message(id, RiskLevel::Moderate, Language::En, "hello")
            .await;
        line.wait_state(id, "waiting", waiting).await;
        let mut stop = triaged(id, RiskLevel::Moderate, Language::En, "STOP");
        stop.message.opens_contact = false;
        line.publish(
            &stop,
            &nwd_proto::wire::msg_id::message_triaged(&stop.message.message_id),
        )
        .await;
        let rec = eventually(WITHIN, "left", || async {
            line.record(id).await.filter(|r| r.left.is_some())
        })
        .await;
        assert_eq!(rec.left.map(|l| l.how), Some(LeftHow::OptedOut));
        assert!(rec.opted_out_at.is_some());
        // Ana comes on: she is offered the next contact, never the one who left.
        line.presence("ana", Presence::Available).await;
        let next = ContactId::new();
        line.message(next, RiskLevel::Low, Language::En, "hi").await;
        line.pushes.wait_offer("ana", next).await;
        assert!(line.pushes.offers("ana", id).is_empty());
        // Nothing to claim for a contact nobody left.
        assert_eq!(
            refusal(
                line.command(RouterCommand::Claim {
                    contact_id: ContactId::new(),
                    counsellor: c("ana"),
                })
                .await
            ),
            nwd_proto::contact::TransitionError::NotLeft.to_string()
        );
    }

    /// Events on a subject of a stream.
    async fn events<T: nwd_proto::Event>(
        line: &Line,
        stream: &'static str,
        subject: String,
    ) -> Vec<T> {
        nwd_runtime::transcript::read_subjects(&line.js, stream, vec![subject])
            .await
            .unwrap()
            .into_iter()
            .map(|m| Envelope::<T>::from_bytes(&m.payload).unwrap().data)
            .collect()
    }

    #[tokio::test]
    async fn involving_a_trusted_contact_needs_a_consent_that_covers_it_now_and_is_audited_before_the_sms()
     {
        use nwd_proto::events::{Disclosure, DisclosureRefused, OutboundSms, Recipient};
        let line = Line::start().await;
        line.presence("ana", Presence::Available).await;
        let id = ContactId::new();
        let mut ev = triaged(id, RiskLevel::High, Language::En, "hello");
        ev.message.patient = Some("pat".into());
        line.publish(
            &ev,
            &nwd_proto::wire::msg_id::message_triaged(&ev.message.message_id),
        )
        .await;
        line.pushes.wait_offer("ana", id).await;
        assert_eq!(line.accept(id, "ana").await, RouterReply::Done);
        let involve = |who: &str, trusted: &str| RouterCommand::InvolveTrustedContact {
            contact_id: id,
            counsellor: c(who),
            trusted: trusted.into(),
        };
        // Only the holder.
        line.presence("ben", Presence::Available).await;
        let r = line.command(involve("ben", "pat-sister")).await;
        assert!(matches!(r, RouterReply::Refused { .. }), "{r:?}");
        assert!(
            events::<Disclosure>(&line, streams::AUDIT, subjects::audit_disclosure(&id))
                .await
                .is_empty()
        );
        // Consent covers it: audited, then texted; twice is once.
        assert_eq!(
            line.command(involve("ana", "pat-sister")).await,
            RouterReply::Done
        );
        assert_eq!(
            line.command(involve("ana", "pat-sister")).await,
            RouterReply::Done
        );
        let disclosed: Vec<Disclosure> =
            events(&line, streams::AUDIT, subjects::audit_disclosure(&id)).await;
        assert_eq!(disclosed.len(), 1);
        assert_eq!(
            disclosed[0].recipient,
            Recipient::TrustedContact("pat-sister".into())
        );
        assert_eq!(disclosed[0].by, "counsellor:ana");
        let sms: Vec<OutboundSms> =
            events(&line, streams::OUTBOUND, subjects::outbound_sms(&id)).await;
        let to_sister: Vec<&OutboundSms> = sms
            .iter()
            .filter(|s| s.to.as_str() == "+15005550171")
            .collect();
        assert_eq!(to_sister.len(), 1, "one SMS");
        assert!(
            disclosed[0].at <= to_sister[0].created_at,
            "audited before the SMS"
        );
        // Expired, revoked, absent: refused and audited, no SMS.
        for (trusted, reason) in [
            ("pat-brother", "expired"),
            ("pat-friend", "revoked"),
            ("pat-neighbour", "no_consent"),
        ] {
            let r = line.command(involve("ana", trusted)).await;
            assert_eq!(refusal(r), "no-consent", "{trusted}");
            let refusals: Vec<DisclosureRefused> = events(
                &line,
                streams::AUDIT,
                subjects::audit_disclosure_refused(&id),
            )
            .await;
            assert!(
                refusals
                    .iter()
                    .any(|f| f.recipient == Recipient::TrustedContact(trusted.into())
                        && f.reason == reason),
                "{trusted}: {refusals:?}"
            );
        }
        // Not one of the patient's trusted contacts.
        assert_eq!(
            refusal(line.command(involve("ana", "pat-stranger")).await),
            "unknown-trusted-contact"
        );
        let sms: Vec<OutboundSms> =
            events(&line, streams::OUTBOUND, subjects::outbound_sms(&id)).await;
        assert_eq!(sms.len(), 1, "only the sister was texted");
        assert_eq!(
            events::<Disclosure>(&line, streams::AUDIT, subjects::audit_disclosure(&id))
                .await
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn handovers_of_what_cannot_be_handed_over_are_refused_and_a_repeated_switch_is_audited_once()
     {
        let line = Line::start().await;
        let id = held_by(&line, "ana", "hello").await;
        // Reassign to someone the directory does not know.
        let r = line
            .command(RouterCommand::Reassign {
                contact_id: id,
                counsellor: c("sam"),
                to: c("zed"),
            })
            .await;
        assert_eq!(refusal(r), "nobody-available");
        // Ana is at capacity (1): she cannot claim a follow-up.
        let gone = ContactId::new();
        let mut quick = triaged(gone, RiskLevel::Low, Language::En, "bye");
        quick.message.quick_exit = true;
        line.publish(
            &quick,
            &nwd_proto::wire::msg_id::message_triaged(&quick.message.message_id),
        )
        .await;
        eventually(WITHIN, "left", || async {
            line.record(gone).await.filter(|r| r.left.is_some())
        })
        .await;
        let claim = RouterCommand::Claim {
            contact_id: gone,
            counsellor: c("ana"),
        };
        assert_eq!(refusal(line.command(claim).await), "at-capacity");
        // Resolved: no transfer, no reassignment.
        let resolve = RouterCommand::Resolve {
            contact_id: id,
            counsellor: c("ana"),
            disposition: None,
            note: None,
        };
        line.presence("ben", Presence::Available).await;
        transfer_done(&line, id, "ana", to("ben"), TransferMode::Warm, None).await;
        line.pushes.wait_offer("ben", id).await;
        assert_eq!(line.command(resolve).await, RouterReply::Done);
        // Ben's offer of the warm transfer ends with the conversation.
        assert_eq!(
            line.pushes.wait_withdrawn("ben", id).await,
            WithdrawReason::Resolved
        );
        let r = transfer(&line, id, "ana", to("ben"), TransferMode::Warm, None).await;
        assert!(matches!(r, RouterReply::Refused { .. }), "{r:?}");
        let r = line
            .command(RouterCommand::Reassign {
                contact_id: id,
                counsellor: c("sam"),
                to: c("ben"),
            })
            .await;
        assert_eq!(
            refusal(r),
            nwd_proto::contact::TransitionError::Resolved.to_string()
        );
        assert_eq!(audited(&line, id).await.len(), 1, "only the transfer");
        // The switchboard on twice: one audit record.
        for _ in 0..2 {
            let on = RouterCommand::Switchboard {
                counsellor: c("sam"),
                on: true,
            };
            assert_eq!(line.command(on).await, RouterReply::Done);
        }
        assert_eq!(
            audit_on(&line, subjects::audit_switchboard()).await.len(),
            1
        );
    }

    #[tokio::test]
    async fn a_warm_transfer_ends_when_the_sender_drops_off_and_the_contact_is_requeued() {
        let line = Line::start_with_grace(300).await;
        let id = held_by(&line, "ana", "hello").await;
        // Dee, at the hospital, is not on the clinic's first rungs.
        line.presence("dee", Presence::Available).await;
        let hospital = TransferTarget::Partner {
            partner: nwd_proto::PartnerId::parse("county-hospital").unwrap(),
        };
        transfer_done(&line, id, "ana", hospital, TransferMode::Warm, None).await;
        line.pushes.wait_offer("dee", id).await;
        // Ana drops off; Ben, on the clinic's door rung, is there.
        line.presence("ben", Presence::Available).await;
        line.presence("ana", Presence::Offline).await;
        line.pushes.wait_offer("ben", id).await;
        assert_eq!(
            line.pushes.wait_withdrawn("dee", id).await,
            WithdrawReason::Expired
        );
        let rec = line.record(id).await.unwrap();
        assert!(rec.transfer.is_none());
        assert_eq!(rec.assigned_to(), None);
        assert_eq!(
            line.accept(id, "dee").await,
            RouterReply::Refused {
                reason: nwd_proto::contact::TransitionError::NotOffered.to_string()
            }
        );
    }
}
