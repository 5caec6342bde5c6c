//! Who may do what on the bus: the shipped `deploy/nats/nats.conf` on a real
//! nats-server. No anonymous connections; each service's user may use only
//! its own subjects, streams, consumers and buckets; only the dashboard
//! sends router commands; nobody deletes or purges AUDIT; TLS works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Event, ServerError};
use nwd_e2e::{Counsellor, EASTSIDE_DOOR, Line, MARIA, offer_with};
use nwd_proto::dashboard::{ClientMsg, ServerMsg};
use nwd_proto::router::{RouterCommand, RouterReply};
use nwd_proto::streams::{self, buckets};
use nwd_proto::{ContactId, CounsellorId, Envelope, ReferralId, subjects};
use nwd_runtime::bus::{self, NatsArgs};
use nwd_testkit::{NATS_USERS, NatsServer, NatsTls};

const T: Duration = Duration::from_secs(10);

/// One operation on the bus.
#[derive(Debug, Clone)]
enum Op {
    Pub(String),
    Sub(String),
}

fn p(s: impl Into<String>) -> Op {
    Op::Pub(s.into())
}

fn s(s: impl Into<String>) -> Op {
    Op::Sub(s.into())
}

impl Op {
    /// The server's words when it refuses this operation (lowercased).
    fn refusal(&self) -> String {
        match self {
            Op::Pub(subject) => format!("publish to \"{subject}\"").to_lowercase(),
            Op::Sub(subject) => format!("subscription to \"{subject}\"").to_lowercase(),
        }
    }
}

/// A client that records the server's permission refusals.
struct Probe {
    client: async_nats::Client,
    refused: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    async fn connect(server: &NatsServer, user: &str) -> Probe {
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = refused.clone();
        let client = server
            .connect_options_as(user)
            .request_timeout(Some(Duration::from_secs(1)))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(text)) = event {
                        sink.lock().unwrap().push(text.to_lowercase());
                    }
                }
            })
            .connect(server.url_for(user))
            .await
            .unwrap();
        Probe { client, refused }
    }

    fn was_refused(&self, op: &Op) -> bool {
        let words = op.refusal();
        self.refused
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains("permissions violation") && r.contains(&words))
    }

    /// Tries every operation, then a last one that is refused for certain:
    /// refusals arrive in order, so once the last one is in, every earlier
    /// refusal is too.
    async fn try_all(&self, ops: &[Op], sentinel: &Op) -> Vec<async_nats::Subscriber> {
        let mut subs = Vec::new();
        for op in ops.iter().chain([sentinel]) {
            match op {
                Op::Pub(subject) => self
                    .client
                    .publish(subject.clone(), "probe".into())
                    .await
                    .unwrap(),
                Op::Sub(subject) => {
                    subs.push(self.client.subscribe(subject.clone()).await.unwrap())
                }
            }
        }
        self.client.flush().await.unwrap();
        nwd_testkit::eventually(T, "the server's last refusal", || async {
            self.was_refused(sentinel).then_some(())
        })
        .await;
        subs
    }
}

/// What one user must and must not be able to do.
struct Rules {
    user: &'static str,
    may: Vec<Op>,
    may_not: Vec<Op>,
}

fn api(call: &str) -> String {
    format!("$JS.API.{call}")
}

/// The operations no service user may perform unless its own rules list
/// them under `may`.
fn no_service_may(id: &ContactId, other_inbox: &str) -> Vec<Op> {
    vec![
        p(subjects::router_command()),
        p(subjects::audit_disclosure(id)),
        p(subjects::audit_screener(id)),
        p(subjects::audit_handover(id)),
        p(subjects::audit_switchboard()),
        p(subjects::dashboard_queue()),
        p(subjects::dashboard_floor()),
        p(subjects::inbound_sms()),
        p(subjects::contact_triaged(id)),
        p(subjects::contact_outreach(id)),
        p(subjects::contact_outreach_update(id)),
        p("$KV.directory.current"),
        p(api("STREAM.CREATE.CONTACTS")),
        p(api("STREAM.UPDATE.AUDIT")),
        p(api("STREAM.DELETE.AUDIT")),
        p(api("STREAM.PURGE.AUDIT")),
        p(api("STREAM.MSG.DELETE.AUDIT")),
        p(api("STREAM.DELETE.INBOUND")),
        p(api("CONSUMER.CREATE.AUDIT")),
        p(api("CONSUMER.DELETE.CONTACTS.router")),
        p(api("DIRECT.GET.KV_sends.$KV.sends.x")),
        s(">"),
        s("_INBOX.>"),
        s(format!("_INBOX_{other_inbox}.>")),
        s(subjects::CONTACTS_ALL),
        s("$KV.directory.>"),
    ]
}

fn rules() -> Vec<Rules> {
    let id = ContactId::new();
    let referral = nwd_proto::ReferralId::new();
    let ana = CounsellorId::parse("ana").unwrap();
    let kv_get = |b: &str| api(&format!("DIRECT.GET.KV_{b}.$KV.{b}.x"));
    let service = |user: &'static str, may: Vec<Op>, mut may_not: Vec<Op>| {
        let other = if user == "dashboard" {
            "router"
        } else {
            "dashboard"
        };
        let own: Vec<String> = may.iter().map(|o| format!("{o:?}")).collect();
        may_not.extend(
            no_service_may(&id, other)
                .into_iter()
                .filter(|o| !own.contains(&format!("{o:?}"))),
        );
        Rules { user, may, may_not }
    };
    vec![
        service(
            "gateway",
            vec![
                p(subjects::inbound_sms()),
                p(subjects::inbound_sms_status()),
                p(subjects::inbound_referral()),
                p(api("STREAM.INFO.INBOUND")),
                p(api("INFO")),
                // referrals: claim (create), read, list
                p(api("STREAM.INFO.KV_referrals")),
                p(kv_get(buckets::REFERRALS)),
                p(format!("$KV.{}.x", buckets::REFERRALS)),
                p(api("CONSUMER.CREATE.KV_referrals")),
                // the directory: partners' referral secrets
                p(kv_get(buckets::DIRECTORY)),
                p(api("CONSUMER.CREATE.KV_directory")),
                s("_INBOX_gateway.x"),
            ],
            vec![
                // reading a stream it does not use, writing the directory,
                // the referrals service's and the notifier's subjects
                p(api("CONSUMER.CREATE.CONTACTS")),
                p(api("CONSUMER.CREATE.INBOUND.intake-sms")),
                p(api("CONSUMER.CREATE.INBOUND.intake-referral")),
                p(api("STREAM.INFO.CONTACTS")),
                p(format!("$KV.{}.current", buckets::DIRECTORY)),
                p(api("STREAM.PURGE.KV_referrals")),
                p(subjects::outbound_sms(&id)),
                p(subjects::outbound_partner_task(&ReferralId::new())),
                p(subjects::contact_message(&id)),
            ],
        ),
        service(
            "chat",
            {
                let session = nwd_proto::ChatSessionId::new();
                vec![
                    p(subjects::inbound_chat(&session)),
                    p(api("STREAM.INFO.INBOUND")),
                    p(api("STREAM.INFO.OUTBOUND")),
                    // named ordered consumers whose one filter is a chat subject
                    p(api(&format!(
                        "CONSUMER.CREATE.INBOUND.chat-h-1.{}",
                        subjects::inbound_chat(&session)
                    ))),
                    p(api(&format!(
                        "CONSUMER.CREATE.OUTBOUND.chat-o-1.{}",
                        subjects::outbound_chat_session(&session)
                    ))),
                    p("$JS.FC.OUTBOUND.chat-o-1.x"),
                    p(kv_get(buckets::CHAT_SESSIONS)),
                    p("$KV.chat_sessions.t.x"),
                    p(kv_get(buckets::DIRECTORY)),
                    p(subjects::outbound_chat(&session, &ContactId::new())),
                    p(api("CONSUMER.CREATE.CONTACTS.chat-notes")),
                    p("nwd.v1.deadletter.chat-notes"),
                    s("_INBOX_chat.x"),
                    s(subjects::chat_typing(&session)),
                    // read marks: requests from the dashboard, kept marks, the line's status
                    s(subjects::chat_read_all()),
                    s(subjects::chat_seen(&session)),
                    p(subjects::chat_seen(&session)),
                    p(format!(
                        "$KV.chat_sessions.{}",
                        nwd_proto::wire::key::chat_read_mark(&session)
                    )),
                    s(subjects::line_status()),
                ]
            },
            {
                let session = nwd_proto::ChatSessionId::new();
                vec![
                    // never another stream's messages, nor any consumer but its own
                    p(api("CONSUMER.CREATE.OUTBOUND")),
                    p(api("CONSUMER.CREATE.INBOUND")),
                    p(api(&format!(
                        "CONSUMER.CREATE.OUTBOUND.chat-o-1.{}",
                        subjects::outbound_sms(&id)
                    ))),
                    p(api(&format!(
                        "CONSUMER.CREATE.INBOUND.chat-h-1.{}",
                        subjects::inbound_sms()
                    ))),
                    p(api("CONSUMER.CREATE.CONTACTS")),
                    p(api("CONSUMER.CREATE.CONTACTS.router")),
                    // pulls from no consumer: not intake's SMS, not the notifier's sends
                    p(api("CONSUMER.MSG.NEXT.INBOUND.intake-sms")),
                    p(api("CONSUMER.MSG.NEXT.OUTBOUND.notifier-send")),
                    p(api("CONSUMER.MSG.NEXT.OUTBOUND.chat-o-1")),
                    p("nwd.v1.deadletter.intake-sms"),
                    p(subjects::inbound_chat(&session).replace("inbound", "contact")),
                    p(subjects::outbound_sms(&id)),
                    p(subjects::inbound_referral()),
                    p(kv_get(buckets::CONTACTS)),
                    p(kv_get(buckets::THREADS)),
                    p(kv_get(buckets::SESSIONS)),
                    p("$KV.sessions.x"),
                    s(subjects::outbound_sms_all()),
                    s("nwd.v1.outbound.chat.>"),
                    p(subjects::contact_message(&id)),
                    // the router's status is the router's to tell
                    p(subjects::line_status()),
                    p(subjects::chat_read(&session)),
                ]
            },
        ),
        service(
            "intake",
            vec![
                p(subjects::contact_message(&id)),
                p("nwd.v1.deadletter.intake"),
                p(api("CONSUMER.CREATE.INBOUND.intake-sms")),
                p(api("CONSUMER.MSG.NEXT.INBOUND.intake-sms")),
                p("$JS.ACK.INBOUND.intake-sms.1.1.1.1.1.0"),
                p(api("CONSUMER.CREATE.CONTACTS.intake-resolved")),
                p(subjects::contact_outreach(&id)),
                p(api("CONSUMER.CREATE.INBOUND.intake-referral")),
                p(api("CONSUMER.MSG.NEXT.INBOUND.intake-referral")),
                p("$JS.ACK.INBOUND.intake-referral.1.1.1.1.1.0"),
                p(subjects::ops_alert()),
                p(api("CONSUMER.CREATE.INBOUND.intake-chat")),
                p(api("CONSUMER.MSG.NEXT.INBOUND.intake-chat")),
                p("$KV.threads.x"),
                p(kv_get(buckets::THREADS)),
                p(kv_get(buckets::DIRECTORY)),
            ],
            vec![
                p(api("CONSUMER.CREATE.INBOUND.notifier-status")),
                p(api("CONSUMER.MSG.NEXT.CONTACTS.router")),
                p(api("CONSUMER.CREATE.OUTBOUND")),
                p("$KV.contacts.x"),
                p(subjects::outbound_sms(&id)),
                p(subjects::outbound_chat(
                    &nwd_proto::ChatSessionId::new(),
                    &id,
                )),
                p(subjects::inbound_chat(&nwd_proto::ChatSessionId::new())),
                p("$KV.chat_sessions.x"),
            ],
        ),
        service(
            "triage",
            vec![
                p(subjects::contact_triaged(&id)),
                p(api("CONSUMER.CREATE.CONTACTS.triage")),
                p(api("CONSUMER.MSG.NEXT.CONTACTS.triage")),
            ],
            vec![
                p(subjects::contact_message(&id)),
                p(api("CONSUMER.CREATE.CONTACTS.router")),
                p(api("CONSUMER.CREATE.CONTACTS")),
                p(kv_get(buckets::CONTACTS)),
            ],
        ),
        service(
            "router",
            vec![
                p(subjects::contact_assigned(&id)),
                p(subjects::contact_resolved(&id)),
                p(subjects::contact_outreach_update(&id)),
                p(subjects::audit_disclosure(&id)),
                p(subjects::audit_disclosure_refused(&id)),
                p(subjects::audit_screener(&id)),
                p(subjects::audit_handover(&id)),
                p(subjects::audit_switchboard()),
                p(subjects::outbound_sms(&id)),
                p(subjects::dashboard_push(&ana)),
                p(subjects::dashboard_queue()),
                p(subjects::dashboard_floor()),
                p(subjects::outbound_chat(
                    &nwd_proto::ChatSessionId::new(),
                    &id,
                )),
                p("$KV.contacts.x"),
                p(api("CONSUMER.CREATE.CONTACTS")),
                p(api("CONSUMER.CREATE.CONTACTS.router")),
                p(kv_get(buckets::PRESENCE)),
                s(subjects::router_command()),
                p(subjects::line_status()),
            ],
            vec![
                p(subjects::contact_message(&id)),
                p(subjects::contact_triaged(&id)),
                p("$KV.presence.x"),
                p("$KV.sends.x"),
                // read marks are the dashboard's to send, the chat's to keep
                p(subjects::chat_read(&nwd_proto::ChatSessionId::new())),
                p(subjects::chat_seen(&nwd_proto::ChatSessionId::new())),
            ],
        ),
        service(
            "escalator",
            vec![
                p(subjects::contact_escalated(&id)),
                p(subjects::audit_disclosure(&id)),
                p(subjects::outbound_sms(&id)),
                p(subjects::outbound_chat(
                    &nwd_proto::ChatSessionId::new(),
                    &id,
                )),
                p("$KV.contacts.x"),
                p(api("CONSUMER.CREATE.KV_presence")),
            ],
            vec![
                p(subjects::contact_assigned(&id)),
                p("$KV.presence.x"),
                p(api("CONSUMER.CREATE.CONTACTS.router")),
                s(subjects::router_command()),
            ],
        ),
        service(
            "notifier",
            vec![
                p(subjects::outbound_status(&id)),
                p(api("CONSUMER.CREATE.OUTBOUND.notifier-send")),
                p(api("CONSUMER.CREATE.INBOUND.notifier-status")),
                p("$KV.sends.x"),
                p(kv_get(buckets::SENDS)),
                // partner callbacks: its consumer, the directory, parking
                p(api("CONSUMER.CREATE.OUTBOUND.notifier-partner")),
                p(api("CONSUMER.MSG.NEXT.OUTBOUND.notifier-partner")),
                p("$JS.ACK.OUTBOUND.notifier-partner.1.1.1.1.1.0"),
                p(kv_get(buckets::DIRECTORY)),
                p(api("STREAM.MSG.GET.DEADLETTER")),
                p(api("STREAM.MSG.DELETE.DEADLETTER")),
                p(subjects::outbound_partner_task(&referral)),
                p(subjects::deadletter("notifier-partner")),
                p(subjects::ops_alert()),
            ],
            vec![
                p(subjects::outbound_sms(&id)),
                p(subjects::outbound_chat(
                    &nwd_proto::ChatSessionId::new(),
                    &id,
                )),
                p("$KV.contacts.x"),
                p("$KV.referrals.x"),
                p(kv_get(buckets::REFERRALS)),
                p(api("CONSUMER.CREATE.CONTACTS")),
                p(api("STREAM.MSG.DELETE.OUTBOUND")),
                s(subjects::dashboard_push_all()),
                s(subjects::dashboard_queue()),
            ],
        ),
        service(
            "referrals",
            vec![
                p(subjects::outbound_partner_task(&referral)),
                p(api("CONSUMER.CREATE.CONTACTS.referrals-status")),
                p(api("CONSUMER.MSG.NEXT.CONTACTS.referrals-status")),
                p("$JS.ACK.CONTACTS.referrals-status.1.1.1.1.1.0"),
                p("$KV.referrals.x"),
                p(kv_get(buckets::REFERRALS)),
                p(kv_get(buckets::DIRECTORY)),
                p(api("CONSUMER.CREATE.KV_directory")),
                p(subjects::deadletter("referrals-status")),
                p(subjects::ops_alert()),
                s("_INBOX_referrals.x"),
            ],
            vec![
                p(subjects::outbound_sms(&id)),
                p(subjects::contact_message(&id)),
                p(subjects::contact_outreach_update(&id)),
                p(api("CONSUMER.CREATE.CONTACTS")),
                p(api("CONSUMER.CREATE.CONTACTS.router")),
                p(api("CONSUMER.CREATE.OUTBOUND.notifier-partner")),
                p(api("STREAM.MSG.DELETE.DEADLETTER")),
                p("$KV.contacts.x"),
                p("$KV.sends.x"),
                p(kv_get(buckets::SENDS)),
                s(subjects::ops_alert()),
            ],
        ),
        service(
            "dashboard",
            vec![
                p(subjects::router_command()),
                p(subjects::outbound_sms(&id)),
                p(subjects::chat_typing(&nwd_proto::ChatSessionId::new())),
                p(subjects::chat_read(&nwd_proto::ChatSessionId::new())),
                p(subjects::outbound_chat(
                    &nwd_proto::ChatSessionId::new(),
                    &id,
                )),
                p("$KV.presence.x"),
                p("$KV.sessions.x"),
                p(kv_get(buckets::CONTACTS)),
                p(api("CONSUMER.CREATE.CONTACTS")),
                s(subjects::dashboard_push_all()),
                s(subjects::dashboard_queue()),
                s(subjects::dashboard_floor()),
                s(subjects::outbound_status_all()),
                p(subjects::contact_noted(&id)),
                p(subjects::audit_viewed(&id)),
            ],
            vec![
                p("$KV.contacts.x"),
                p(subjects::contact_assigned(&id)),
                p(api("CONSUMER.CREATE.CONTACTS.router")),
                // the mark is the chat's to keep and tell: not the dashboard's
                p(subjects::chat_seen(&nwd_proto::ChatSessionId::new())),
                p(subjects::line_status()),
                p("$KV.chat_sessions.x"),
                // who viewed what only: never a disclosure or a screener
                p(subjects::audit_disclosure(&id)),
                p(subjects::audit_screener(&id)),
            ],
        ),
        Rules {
            user: "operator",
            may: vec![
                p(api("STREAM.CREATE.CONTACTS")),
                p(api("STREAM.UPDATE.AUDIT")),
                p(api("CONSUMER.CREATE.AUDIT")),
                p("$KV.directory.current"),
                s(">"),
            ],
            may_not: vec![
                p(api("STREAM.DELETE.AUDIT")),
                p(api("STREAM.PURGE.AUDIT")),
                p(api("STREAM.MSG.DELETE.AUDIT")),
                p(subjects::audit_disclosure(&id)),
                p(subjects::audit_screener(&id)),
                p(subjects::router_command()),
            ],
        },
    ]
}

#[tokio::test]
async fn anonymous_and_wrong_password_connections_are_refused() {
    let server = NatsServer::start().await;
    let anonymous = async_nats::ConnectOptions::new()
        .connect(server.anonymous_url())
        .await;
    assert!(anonymous.is_err(), "an anonymous connection is refused");
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("gateway".into(), "not-the-password".into())
        .connect(server.anonymous_url())
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let right = async_nats::ConnectOptions::new()
        .user_and_password("gateway".into(), server.password("gateway").into())
        .connect(server.anonymous_url())
        .await;
    assert!(right.is_ok(), "the right password is let in");
}

#[tokio::test]
async fn each_user_may_use_only_its_own_subjects_streams_and_buckets() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let mut wrong = Vec::new();
    for rules in rules() {
        let probe = Probe::connect(&server, rules.user).await;
        let sentinel = if rules.user == "operator" {
            p("nwd.v1.audit.sentinel")
        } else {
            p("nwd.v1.sentinel")
        };
        let ops: Vec<Op> = rules.may.iter().chain(&rules.may_not).cloned().collect();
        let _subs = probe.try_all(&ops, &sentinel).await;
        for op in &rules.may {
            if probe.was_refused(op) {
                wrong.push(format!("{} was refused {op:?}", rules.user));
            }
        }
        for op in &rules.may_not {
            if !probe.was_refused(op) {
                wrong.push(format!("{} was allowed {op:?}", rules.user));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_service_user_cannot_read_what_it_does_not_use() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    // The operator stores the directory (with its password hashes).
    let operator = jetstream::new(server.client().await);
    let directory = operator.get_key_value(buckets::DIRECTORY).await.unwrap();
    directory.put("current", "{}".into()).await.unwrap();

    // The gateway reads the directory (partners' referral secrets); triage
    // never does.
    let triage = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(server.client_as("triage").await);
    assert!(
        triage.get_key_value(buckets::DIRECTORY).await.is_err(),
        "triage cannot open the directory"
    );
    let gateway = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(server.client_as("gateway").await);
    assert!(
        gateway.get_stream(streams::CONTACTS).await.is_err(),
        "the gateway cannot look at CONTACTS"
    );
    let gateway_client = server.client_as("gateway").await;
    let mut sub = gateway_client
        .subscribe(subjects::CONTACTS_ALL)
        .await
        .unwrap();
    gateway_client.flush().await.unwrap();
    let triage = server.client_as("triage").await;
    let js = jetstream::new(triage);
    js.publish(subjects::contact_triaged(&ContactId::new()), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            futures::StreamExt::next(&mut sub)
        )
        .await
        .is_err(),
        "the gateway hears nothing on contact subjects"
    );
}

#[tokio::test]
async fn nobody_deletes_or_purges_audit_not_even_the_operator() {
    let server = NatsServer::start().await;
    server.set_up_bus().await;
    let router = jetstream::new(server.client_as("router").await);
    router
        .publish(
            subjects::audit_disclosure(&ContactId::new()),
            "record".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // Every user at once (each refused call waits out its timeout).
    futures::future::join_all(NATS_USERS.into_iter().map(|user| {
        let server = &server;
        async move {
            let client = server
                .connect_options_as(user)
                .request_timeout(Some(Duration::from_millis(500)))
                .connect(server.url_for(user))
                .await
                .unwrap();
            for (call, body) in [
                ("STREAM.DELETE.AUDIT", "{}"),
                ("STREAM.PURGE.AUDIT", "{}"),
                ("STREAM.MSG.DELETE.AUDIT", r#"{"seq":1,"no_erase":true}"#),
            ] {
                // Refused by permissions (no answer), or answered with an error
                // (the system account has no JetStream).
                let done = client.request(api(call), body.into()).await.is_ok_and(|m| {
                    serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .map_or(true, |v| v.get("error").is_none())
                });
                assert!(!done, "{user} did {call}");
            }
            if user != "operator" {
                let js = jetstream::ContextBuilder::new()
                    .timeout(Duration::from_millis(500))
                    .build(client);
                let mut shorter = bus::stream_configs(&bus::Layout::from(1))
                    .into_iter()
                    .find(|c| c.name == streams::AUDIT)
                    .unwrap();
                shorter.max_messages = 1;
                shorter.max_age = Duration::from_secs(1);
                assert!(
                    js.update_stream(shorter).await.is_err(),
                    "{user} changed AUDIT's limits"
                );
            }
        }
    }))
    .await;
    // The operator may update streams (the bus setup does), but the server
    // never lets deny_delete or deny_purge be turned off.
    let operator = jetstream::new(server.client().await);
    let mut config = operator
        .get_stream(streams::AUDIT)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.deny_delete = false;
    config.deny_purge = false;
    assert!(operator.update_stream(config).await.is_err());

    let mut audit = operator.get_stream(streams::AUDIT).await.unwrap();
    let info = audit.info().await.unwrap();
    assert_eq!(info.state.messages, 1, "the record is still there");
    assert!(info.config.deny_delete && info.config.deny_purge);
    assert_eq!(info.config.max_age, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_router_command_is_refused_and_changes_nothing() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    line.patient_sends(MARIA, EASTSIDE_DOOR, "I relapsed and feel hopeless")
        .await;
    let offer = ana
        .expect(T, "offer", offer_with("I relapsed and feel hopeless"))
        .await;
    ana.send(&ClientMsg::Accept {
        contact_id: offer.contact_id,
    })
    .await;
    ana.expect(T, "conversation", |m| match m {
        ServerMsg::Conversation { contact } if contact.contact_id == offer.contact_id => Some(()),
        _ => None,
    })
    .await;
    let before = serde_json::to_value(line.record(&offer.contact_id).await).unwrap();

    // Every other user tries to resolve ana's contact in her name.
    let forged = Envelope::new(RouterCommand::Resolve {
        contact_id: offer.contact_id,
        counsellor: CounsellorId::parse("ana").unwrap(),
        disposition: None,
        note: None,
    })
    .to_bytes();
    // All at once: each waits out a 1 s request timeout, and one after the
    // other they would outlast ana's presence (her socket is not read meanwhile).
    futures::future::join_all(
        NATS_USERS
            .into_iter()
            .filter(|u| *u != "dashboard")
            .map(|user| {
                let (line, forged) = (&line, forged.clone());
                async move {
                    let probe = Probe::connect(&line.nats, user).await;
                    let answer = probe
                        .client
                        .request(subjects::router_command(), forged.into())
                        .await;
                    assert!(answer.is_err(), "{user}'s forged command got an answer");
                    if user == "system" {
                        // Another account: the command reaches nobody.
                        return;
                    }
                    let refusal = p(subjects::router_command());
                    nwd_testkit::eventually(T, "the refusal", || async {
                        probe.was_refused(&refusal).then_some(())
                    })
                    .await;
                }
            }),
    )
    .await;
    let after = serde_json::to_value(line.record(&offer.contact_id).await).unwrap();
    assert_eq!(before, after, "the contact record is unchanged");

    // The same command from the dashboard's user is the router's to decide.
    let dashboard = line.nats.client_as("dashboard").await;
    let reply = dashboard
        .request(subjects::router_command(), forged.into())
        .await
        .unwrap();
    assert_eq!(
        Envelope::<RouterReply>::from_bytes(&reply.payload)
            .unwrap()
            .data,
        RouterReply::Done
    );
    assert_ne!(
        serde_json::to_value(line.record(&offer.contact_id).await).unwrap(),
        before,
        "the dashboard's command does change it"
    );
}

#[tokio::test]
async fn a_service_creates_nothing_and_waits_for_the_operators_bus_setup() {
    nwd_testkit::install_crypto();
    let server = NatsServer::start().await;
    let listener = nwd_testkit::listener().await;
    let addr = listener.local_addr().unwrap();
    let config = nwd_gateway::Config {
        nats: NatsArgs::local(server.url_for("gateway")),
        addr,
        public_url: "http://127.0.0.1:8080".to_owned(),
        twilio_auth_token: nwd_runtime::service::Secret::new("token"),
        directory: nwd_runtime::directory::demo_path(),
        max_body_bytes: 65536,
        spool: nwd_gateway::spool::SpoolArgs {
            dir: server.store_dir().with_file_name("gateway-spool"),
            max_bytes: 1 << 20,
        },
        twilio_url_fragment: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(nwd_gateway::run(config, listener, stop.clone()));
    let http = reqwest::Client::new();
    let readyz = format!("http://{addr}/readyz");
    nwd_testkit::eventually(T, "readyz answers", || async {
        http.get(&readyz).send().await.ok()
    })
    .await;
    // Long enough for a few of its waits; the stream must not appear.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = http.get(&readyz).send().await.unwrap().status();
    assert_eq!(status, 503, "not ready without its stream");
    let operator = jetstream::new(server.client().await);
    assert!(
        operator.get_stream(streams::INBOUND).await.is_err(),
        "the gateway did not create INBOUND"
    );

    server.set_up_bus().await;
    nwd_testkit::wait_ready(addr).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A throwaway CA and a server certificate for 127.0.0.1, as PEM files.
fn certificates(dir: &std::path::Path) -> NatsTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "nwd test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tls = NatsTls {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, key.serialize_pem()).unwrap();
    std::fs::write(&tls.ca, ca_cert.pem()).unwrap();
    tls
}

#[tokio::test]
async fn a_tls_client_port_works_with_the_ca_and_refuses_without_it() {
    nwd_testkit::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let tls = certificates(dir.path());
    let server = NatsServer::start_tls(tls.clone()).await;
    server.set_up_bus().await;

    // A service connects as itself over TLS with the CA (NWD_NATS_TLS_CA).
    let args = NatsArgs {
        tls_ca: Some(tls.ca.clone()),
        ..NatsArgs::local(server.url_for("gateway"))
    };
    let client = bus::connect(&args, "gateway").await.unwrap();
    let js = bus::jetstream(client, &args);
    let ack = js
        .publish(subjects::inbound_sms(), "over tls".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, streams::INBOUND);

    // Without the CA the server's certificate is not trusted.
    let untrusted = async_nats::ConnectOptions::new()
        .user_and_password("gateway".into(), server.password("gateway").into())
        .require_tls(true)
        .connect(server.anonymous_url())
        .await;
    assert!(untrusted.is_err(), "a client without the CA is refused");
}
