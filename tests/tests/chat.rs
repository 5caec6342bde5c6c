//! The patient web chat through every real service: a chat message is
//! offered to a counsellor like an SMS and the reply comes back on the
//! patient's socket; a dropped socket resumes with nothing lost or doubled
//! either way; expired, forged and quick-exited tokens open nothing; a
//! foreign page cannot open the socket; limits are told in plain words; a
//! waiting person is told an honest wait estimate; the person's messages
//! are marked seen only once the counsellor holding the chat read them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use nwd_e2e::{ChatPatient, Counsellor, Line};
use nwd_proto::chat::{ClientFrame, Refusal, ServerFrame, Speaker};
use nwd_proto::dashboard::{ClientMsg, ContactView, ServerMsg};
use nwd_proto::events::{ChatNote, MAX_CHAT_MESSAGE_CHARS, QUICK_EXIT_NOTE, SafeNow};
use nwd_proto::{ContactId, streams, subjects};

const T: Duration = Duration::from_secs(15);
const EASTSIDE: &str = "eastside-clinic";

fn offer_containing(text: String) -> impl FnMut(&ServerMsg) -> Option<ContactView> {
    move |m| match m {
        ServerMsg::Offer { contact } if contact.messages.iter().any(|x| x.body.contains(&text)) => {
            Some(contact.clone())
        }
        _ => None,
    }
}

async fn accept(c: &mut Counsellor, contact: ContactId) {
    c.send(&ClientMsg::Accept {
        contact_id: contact,
    })
    .await;
    c.expect(T, "conversation after accept", |m| match m {
        ServerMsg::Conversation { contact: v } if v.contact_id == contact => Some(()),
        _ => None,
    })
    .await;
}

/// Waits for a counsellor's message with `text` on the patient's socket: its sequence number.
async fn counsellor_says(p: &mut ChatPatient, text: &str) -> u64 {
    p.expect(T, "the counsellor's reply", |f| match f {
        ServerFrame::Message {
            seq,
            from: Speaker::Counsellor,
            text: t,
            ..
        } if t == text => Some(*seq),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_is_offered_with_its_door_and_the_reply_comes_back_on_the_socket() {
    let logs = nwd_testkit::capture_logs();
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, _token, session) = ChatPatient::start(&line, Some(EASTSIDE)).await;

    let text = "I relapsed last night and I am scared to tell my clinic";
    patient
        .send(&ClientFrame::Message {
            seq: 1,
            text: text.into(),
            safe_now: Some(SafeNow::Yes),
        })
        .await;
    patient
        .expect(T, "ack of message 1", |f| {
            matches!(f, ServerFrame::Ack { seq: 1 }).then_some(())
        })
        .await;
    let offer = ana
        .expect(T, "an offer of the chat", offer_containing(text.into()))
        .await;
    assert_eq!(offer.channel, "Chat · eastside-clinic");
    assert_eq!(
        offer.door, "Eastside Recovery Clinic",
        "the embedding partner is the door"
    );
    assert!(
        offer.messages[0].body.starts_with(SafeNow::Yes.as_words()),
        "the pre-chat answer goes to triage with the first message: {:?}",
        offer.messages[0].body
    );
    accept(&mut ana, offer.contact_id).await;
    patient
        .expect(T, "the note that a counsellor joined", |f| {
            matches!(
                f,
                ServerFrame::Message {
                    from: Speaker::Line,
                    note: Some(ChatNote::Joined),
                    ..
                }
            )
            .then_some(())
        })
        .await;
    ana.send(&ClientMsg::Typing {
        contact_id: offer.contact_id,
    })
    .await;
    patient
        .expect(T, "counsellor is typing", |f| {
            matches!(f, ServerFrame::Typing).then_some(())
        })
        .await;
    let reply = "I'm glad you wrote. You're not in trouble with me. What happened?";
    ana.reply(offer.contact_id, reply).await;
    let seq = counsellor_says(&mut patient, reply).await;
    assert!(seq > 0);
    patient.send(&ClientFrame::Ack { seq }).await;

    // The reply went to the chat, never to Twilio; the counsellor's
    // transcript has both sides.
    assert!(
        line.sent_messages().await.is_empty(),
        "no SMS for a chat contact"
    );
    let stored = line
        .count(
            streams::OUTBOUND,
            &subjects::outbound_chat_session(&session),
        )
        .await;
    assert!(stored >= 1);
    let transcript = nwd_runtime::transcript::load(&line.jetstream().await, &offer.contact_id)
        .await
        .unwrap();
    assert!(transcript.iter().any(|m| m.body == reply));
    assert!(transcript.iter().any(|m| m.body.contains(text)));

    // A second message joins the same contact.
    patient.say(2, "my sponsor is away this week").await;
    ana.expect(T, "the second message in the conversation", |m| match m {
        ServerMsg::Message {
            contact_id,
            message,
            ..
        } if *contact_id == offer.contact_id && message.body == "my sponsor is away this week" => {
            Some(())
        }
        _ => None,
    })
    .await;

    // Closing the conversation tells the person.
    ana.send(&ClientMsg::Resolve {
        contact_id: offer.contact_id,
        disposition: Some(nwd_proto::dashboard::Disposition::SupportGiven),
        note: None,
    })
    .await;
    patient
        .expect(T, "the note that the chat was closed", |f| {
            matches!(
                f,
                ServerFrame::Message {
                    from: Speaker::Line,
                    note: Some(ChatNote::Closed),
                    ..
                }
            )
            .then_some(())
        })
        .await;
    // The post-chat question's answer is stored (quality figures), not a message.
    patient
        .send(&ClientFrame::Feedback {
            seq: 3,
            helpful: true,
        })
        .await;
    patient
        .expect(T, "the answer's ack", |f| {
            matches!(f, ServerFrame::Ack { seq: 3 }).then_some(())
        })
        .await;
    let stored = nwd_runtime::transcript::read_subjects(
        &line.jetstream().await,
        streams::INBOUND,
        vec![subjects::inbound_chat(&session)],
    )
    .await
    .unwrap();
    let last = nwd_proto::Envelope::<nwd_proto::events::InboundChat>::from_bytes(
        &stored.last().unwrap().payload,
    )
    .unwrap();
    assert_eq!(
        last.data.input,
        nwd_proto::events::ChatInput::Feedback { helpful: true }
    );

    // A message after that opens a new contact in the same session.
    patient.say(4, "one more thing").await;
    let again = ana
        .expect(
            T,
            "a new contact",
            offer_containing("one more thing".into()),
        )
        .await;
    assert_ne!(again.contact_id, offer.contact_id);
    assert!(
        !logs.contents().contains("scared to tell"),
        "no message text in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_chat_resumes_with_nothing_lost_or_doubled_either_way() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, token, session) = ChatPatient::start(&line, None).await;
    patient.say(1, "is anyone there, I need to talk").await;
    let offer = ana
        .expect(
            T,
            "the offer",
            offer_containing("is anyone there, I need to talk".into()),
        )
        .await;
    accept(&mut ana, offer.contact_id).await;
    ana.reply(offer.contact_id, "I'm here. I'm Ana.").await;
    let seen = counsellor_says(&mut patient, "I'm here. I'm Ana.").await;
    patient.send(&ClientFrame::Ack { seq: seen }).await;

    // In flight both ways: two messages sent without waiting for their
    // acks, then the network goes; the counsellor answers meanwhile.
    for (seq, text) in [(2, "sorry my signal is bad"), (3, "are you still there?")] {
        patient
            .send(&ClientFrame::Message {
                seq,
                text: text.into(),
                safe_now: None,
            })
            .await;
    }
    patient.drop_connection();
    ana.reply(offer.contact_id, "Still here.").await;
    ana.reply(offer.contact_id, "Take your time.").await;

    // Resume with the token: the page resends what was not acked, from
    // the welcome's stored number on.
    let (mut patient, welcome) = ChatPatient::resume(&line, &token, seen).await;
    let ServerFrame::Welcome {
        session: resumed,
        stored_seq,
        mine,
        ..
    } = welcome
    else {
        panic!("resume refused: {welcome:?}")
    };
    assert_eq!(resumed, session);
    assert!(
        mine.iter()
            .any(|m| m.seq == 1 && m.text == "is anyone there, I need to talk")
    );
    for (seq, text) in [(2, "sorry my signal is bad"), (3, "are you still there?")] {
        // Resent whether or not it was stored: a stored one is only acked.
        let _ = stored_seq;
        patient.say(seq, text).await;
    }
    // Every reply after `seen` exactly once, in order, and nothing before it.
    let mut got = Vec::new();
    while got.len() < 2 {
        let (seq, text) = patient
            .expect(T, "the replies missed", |f| match f {
                ServerFrame::Message {
                    seq,
                    from: Speaker::Counsellor,
                    text,
                    ..
                } => Some((*seq, text.clone())),
                _ => None,
            })
            .await;
        assert!(seq > seen, "nothing already seen comes again");
        got.push((seq, text));
    }
    assert_eq!(
        got.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["Still here.", "Take your time."]
    );
    assert!(got[0].0 < got[1].0);

    // The line has each of the person's messages once.
    for text in ["sorry my signal is bad", "are you still there?"] {
        ana.expect(T, "the resent message, once", |m| match m {
            ServerMsg::Message {
                contact_id,
                message,
                ..
            } if *contact_id == offer.contact_id && message.body == text => Some(()),
            _ => None,
        })
        .await;
    }
    let stored = line
        .count(
            streams::CONTACTS,
            &subjects::contact_message(&offer.contact_id),
        )
        .await;
    assert_eq!(stored, 3, "three messages, none doubled");
    // A resend long after (the page lost its ack) is acked and not stored again.
    patient.say(2, "sorry my signal is bad").await;
    let inbound = line
        .count(streams::INBOUND, &subjects::inbound_chat(&session))
        .await;
    assert_eq!(inbound, 3);

    // A reload (nothing on screen: last_seen 0) gets the whole history.
    let (mut reloaded, welcome) = ChatPatient::resume(&line, &token, 0).await;
    let ServerFrame::Welcome {
        mine, stored_seq, ..
    } = welcome
    else {
        panic!("reload refused")
    };
    assert_eq!(stored_seq, 3);
    assert_eq!(mine.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let mut texts = Vec::new();
    let mut seqs = HashSet::new();
    while texts.len() < 3 {
        let (seq, text) = reloaded
            .expect(T, "history of replies", |f| match f {
                ServerFrame::Message {
                    seq,
                    from: Speaker::Counsellor,
                    text,
                    ..
                } => Some((*seq, text.clone())),
                _ => None,
            })
            .await;
        assert!(seqs.insert(seq), "no reply twice");
        texts.push(text);
    }
    assert_eq!(
        texts,
        ["I'm here. I'm Ana.", "Still here.", "Take your time."]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_forged_tokens_open_nothing_and_are_counted_by_reason() {
    nwd_runtime::telemetry::metrics_handle();
    let line = Line::start_with(|opts| {
        opts.get_mut("chat")
            .unwrap()
            .push(("session-ttl-secs", "1".into()));
    })
    .await;
    let (patient, token, _) = ChatPatient::start(&line, None).await;
    patient.drop_connection();
    // A forged token (well formed, never issued).
    let (_p, refused) =
        ChatPatient::resume(&line, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 0).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Refused {
                reason: Refusal::UnknownToken,
                ..
            }
        ),
        "{refused:?}"
    );
    // The one-second token, once its second is over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_p, refused) = ChatPatient::resume(&line, &token, 0).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Refused {
                reason: Refusal::Expired,
                ..
            }
        ),
        "{refused:?}"
    );
    // And it stays refused (the record is gone).
    let (_p, refused) = ChatPatient::resume(&line, &token, 0).await;
    assert!(
        matches!(refused, ServerFrame::Refused { .. }),
        "{refused:?}"
    );
    let metrics = line
        .http
        .get(line.url("chat", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["expired", "unknown_token"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("nwd_chat_refusals_total{")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "refusals by reason: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_exit_tells_the_counsellor_keeps_the_contact_and_ends_the_token() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, token, _) = ChatPatient::start(&line, None).await;
    patient
        .say(1, "he is coming back, I have to be quick")
        .await;
    let offer = ana
        .expect(
            T,
            "the offer",
            offer_containing("he is coming back, I have to be quick".into()),
        )
        .await;
    accept(&mut ana, offer.contact_id).await;
    patient.send(&ClientFrame::QuickExit { seq: 2 }).await;
    patient.closed(T).await;
    ana.expect(T, "the quick exit note", |m| match m {
        ServerMsg::Message {
            contact_id,
            message,
            ..
        } if *contact_id == offer.contact_id && message.body == QUICK_EXIT_NOTE => Some(()),
        _ => None,
    })
    .await;
    let record = line.record(&offer.contact_id).await;
    assert!(record.is_open(), "the contact goes on: {:?}", record.state);
    let (_p, refused) = ChatPatient::resume(&line, &token, 0).await;
    assert!(
        matches!(
            refused,
            ServerFrame::Refused {
                reason: Refusal::UnknownToken,
                ..
            }
        ),
        "a later visit starts a new session: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_chats_own_origin_and_the_doors_listed_origins_open_the_socket() {
    let line = Line::start().await;
    let own = ChatPatient::own_origin(&line);
    let status = |r: Result<ChatPatient, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    };
    assert_eq!(
        status(ChatPatient::open(&line, None, Some("http://evil.example")).await),
        403
    );
    assert_eq!(
        status(ChatPatient::open(&line, Some(EASTSIDE), Some("http://evil.example")).await),
        403
    );
    // Eastside lists http://localhost:8000 in the demo directory; another
    // partner's door does not take it.
    assert_eq!(
        status(ChatPatient::open(&line, Some(EASTSIDE), Some("http://localhost:8000")).await),
        101
    );
    assert_eq!(
        status(
            ChatPatient::open(
                &line,
                Some("county-hospital"),
                Some("http://localhost:8000")
            )
            .await
        ),
        403
    );
    assert_eq!(
        status(ChatPatient::open(&line, None, Some(&own)).await),
        101
    );
    assert_eq!(
        status(ChatPatient::open(&line, None, Some("null")).await),
        403
    );

    // The page may be framed only by itself and the door's listed origins.
    let page = line
        .http
        .get(line.url("chat", "/?partner=eastside-clinic"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors 'self' http://localhost:8000"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("Quick exit") && html.contains("<h1"));
    let embed = line
        .http
        .get(line.url("chat", "/embed.js?partner=eastside-clinic"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        embed.contains(&format!("'{own}'")),
        "the embed script points at the chat"
    );
    assert!(embed.contains("'eastside-clinic'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_message_is_refused_in_plain_words_and_a_4000_character_one_goes_whole() {
    let line = Line::start_with(|opts| {
        opts.get_mut("chat")
            .unwrap()
            .push(("messages-per-minute", "3".into()));
    })
    .await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, _, _) = ChatPatient::start(&line, None).await;
    let too_long = "a".repeat(MAX_CHAT_MESSAGE_CHARS + 1);
    patient
        .send(&ClientFrame::Message {
            seq: 1,
            text: too_long,
            safe_now: None,
        })
        .await;
    let words = patient
        .expect(T, "the refusal", |f| match f {
            ServerFrame::Refused {
                reason: Refusal::TooLong,
                seq: Some(1),
                text,
            } => Some(text.clone()),
            _ => None,
        })
        .await;
    assert!(words.contains("4,000 characters"), "{words}");

    let whole = format!("start {} end", "x".repeat(MAX_CHAT_MESSAGE_CHARS - 10));
    assert_eq!(whole.chars().count(), MAX_CHAT_MESSAGE_CHARS);
    patient.say(2, &whole).await;
    let offer = ana
        .expect(
            T,
            "the long message, whole",
            offer_containing("start xxxx".into()),
        )
        .await;
    assert_eq!(offer.messages[0].body, whole, "never truncated");

    // Three per minute (burst 3): the fourth is refused with words, not lost.
    patient.say(3, "two").await;
    patient.say(4, "three").await;
    patient
        .send(&ClientFrame::Message {
            seq: 5,
            text: "four".into(),
            safe_now: None,
        })
        .await;
    let words = patient
        .expect(T, "too fast", |f| match f {
            ServerFrame::Refused {
                reason: Refusal::TooFast,
                seq: Some(5),
                text,
            } => Some(text.clone()),
            _ => None,
        })
        .await;
    assert!(words.contains("not sent yet"), "{words}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_safe_right_now_before_the_chat_makes_the_first_message_high_risk() {
    let line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, _, _) = ChatPatient::start(&line, None).await;
    patient
        .send(&ClientFrame::Message {
            seq: 1,
            text: "hi, can I ask something about my meds schedule".into(),
            safe_now: Some(SafeNow::No),
        })
        .await;
    let offer = ana
        .expect(
            T,
            "the offer",
            offer_containing("about my meds schedule".into()),
        )
        .await;
    assert!(
        matches!(
            offer.risk,
            nwd_proto::RiskLevel::High | nwd_proto::RiskLevel::Imminent
        ),
        "{:?}",
        offer.risk
    );
    assert!(
        offer
            .reasons
            .iter()
            .any(|r| r.rule == "safety.not_safe_now"),
        "{:?}",
        offer.reasons
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imminent_risk_shows_the_safety_message_and_the_ladder_shows_the_backup_lines_number_in_the_chat()
 {
    // Nobody on the dashboard: the one-second ladder climbs to the backup line.
    let line = Line::start_fast().await;
    let (mut patient, _, session) = ChatPatient::start(&line, None).await;
    patient
        .say(1, "I took all my pills and I want to die tonight")
        .await;
    let safety = patient
        .expect(T, "the safety message", |f| match f {
            ServerFrame::Message {
                from: Speaker::Line,
                text,
                ..
            } if text.contains("call 911") && text.contains("counsellor is joining") => {
                Some(text.clone())
            }
            _ => None,
        })
        .await;
    assert!(safety.contains("naloxone"));
    let backup = patient
        .expect(
            Duration::from_secs(30),
            "the backup line's number",
            |f| match f {
                ServerFrame::Message {
                    from: Speaker::Line,
                    text,
                    ..
                } if text.contains(nwd_e2e::BACKUP_LINE) => Some(text.clone()),
                _ => None,
            },
        )
        .await;
    assert!(!backup.to_lowercase().contains("nobody"), "{backup}");
    // The backup line itself was alerted by SMS; nothing was sent to "chat:".
    nwd_testkit::eventually(T, "the backup line's alert", || async {
        line.sent_messages()
            .await
            .iter()
            .any(|m| m["to"] == nwd_e2e::BACKUP_LINE)
            .then_some(())
    })
    .await;
    assert!(
        line.sent_messages()
            .await
            .iter()
            .all(|m| !m["to"].as_str().unwrap_or_default().starts_with("chat:")),
        "no SMS to a chat session"
    );
    // Shown once per contact, however often the last rung repeats.
    let notes = nwd_runtime::transcript::read_subjects(
        &line.jetstream().await,
        streams::OUTBOUND,
        vec![subjects::outbound_chat_session(&session)],
    )
    .await
    .unwrap()
    .iter()
    .filter(|m| String::from_utf8_lossy(&m.payload).contains(nwd_e2e::BACKUP_LINE))
    .count();
    assert_eq!(notes, 1);
}

/// The id the counsellor's screen shows for the person's message `body`.
fn shown_id(contact: &ContactView, body: &str) -> String {
    contact
        .messages
        .iter()
        .find(|m| m.body.contains(body))
        .map(|m| m.id.clone())
        .unwrap_or_else(|| panic!("{body:?} not on the counsellor's screen"))
}

async fn dashboard_metrics(line: &Line) -> String {
    line.http
        .get(line.url("dashboard", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn read_count(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("nwd_dashboard_commands_total{")
                && l.contains("command=\"read\"")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_sees_their_messages_seen_only_once_the_counsellor_holding_the_chat_read_them() {
    nwd_runtime::telemetry::metrics_handle();
    let mut line = Line::start().await;
    let mut ana = Counsellor::available(&line, "ana").await;
    let (mut patient, token, _session) = ChatPatient::start(&line, None).await;
    patient.say(1, "first: I can't sleep again").await;
    let offer = ana
        .expect(
            T,
            "the offer",
            offer_containing("I can't sleep again".into()),
        )
        .await;
    let first = shown_id(&offer, "I can't sleep again");
    // Offered is not held: a read before the accept is not kept.
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: first.clone(),
    })
    .await;
    nwd_testkit::eventually(T, "the refused read before the accept", || async {
        (read_count(&dashboard_metrics(&line).await, "refused") >= 1).then_some(())
    })
    .await;
    accept(&mut ana, offer.contact_id).await;
    patient.say(2, "second: and my head is loud").await;
    let second = ana
        .expect(T, "the second message", |m| match m {
            ServerMsg::Message {
                contact_id,
                message,
                ..
            } if *contact_id == offer.contact_id && message.body.contains("head is loud") => {
                Some(message.id.clone())
            }
            _ => None,
        })
        .await;
    // Another counsellor, who does not hold the contact, cannot mark it read.
    let mut ben = Counsellor::available(&line, "ben").await;
    ben.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: second.clone(),
    })
    .await;
    nwd_testkit::eventually(T, "ben's read refused", || async {
        (read_count(&dashboard_metrics(&line).await, "refused") >= 2).then_some(())
    })
    .await;
    assert!(
        !patient
            .seen
            .iter()
            .any(|f| matches!(f, ServerFrame::Seen { .. })),
        "no read mark before the holder read: {:?}",
        patient.seen
    );
    // A message id that is none of this chat's is refused too.
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: "not-a-message-id".into(),
    })
    .await;
    // The holder read the first message: exactly that one is seen.
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: first,
    })
    .await;
    let upto = patient
        .expect(T, "the read mark", |f| match f {
            ServerFrame::Seen { upto } => Some(*upto),
            _ => None,
        })
        .await;
    assert_eq!(upto, 1, "ben's read of message 2 was not kept");
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: second.clone(),
    })
    .await;
    patient
        .expect(T, "the read mark of message 2", |f| {
            matches!(f, ServerFrame::Seen { upto: 2 }).then_some(())
        })
        .await;
    // The dashboard counts a read once the chat answered it, which may be
    // just after the patient's page was told.
    nwd_testkit::eventually(T, "both reads counted done", || async {
        (read_count(&dashboard_metrics(&line).await, "done") >= 2).then_some(())
    })
    .await;

    // The page reloads: the mark is in its welcome.
    patient.drop_connection();
    let (_p, welcome) = ChatPatient::resume(&line, &token, 0).await;
    match welcome {
        ServerFrame::Welcome { read_upto, .. } => assert_eq!(read_upto, 2),
        other => panic!("no welcome: {other:?}"),
    }

    // What is not a message id, and a message id of no message of this
    // chat, mark nothing; with no chat to keep the mark, it is not kept.
    let metrics = dashboard_metrics(&line).await;
    assert!(read_count(&metrics, "bad-message") >= 1, "{metrics}");
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: nwd_proto::MessageId::new().to_string(),
    })
    .await;
    nwd_testkit::eventually(T, "a foreign message id refused", || async {
        (read_count(&dashboard_metrics(&line).await, "refused") >= 3).then_some(())
    })
    .await;
    line.stop("chat").await;
    ana.send(&ClientMsg::Read {
        contact_id: offer.contact_id,
        upto: second,
    })
    .await;
    nwd_testkit::eventually(T, "a read with no chat to keep it", || async {
        (read_count(&dashboard_metrics(&line).await, "chat-unavailable") >= 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_person_is_told_how_many_wait_and_how_long_people_waited_recently() {
    let line = Line::start().await;
    // Nobody on the dashboard: both people wait.
    let (mut first, _, _) = ChatPatient::start(&line, None).await;
    first.say(1, "hello, I need to talk to someone").await;
    let waiting = |n: u32| {
        move |f: &ServerFrame| match f {
            ServerFrame::WaitEstimate {
                waiting: Some(w),
                typical_wait_secs,
            } if *w == n => Some(*typical_wait_secs),
            _ => None,
        }
    };
    let typical = first.expect(T, "one person waiting", waiting(1)).await;
    assert_eq!(typical, None, "nobody has waited yet: no typical wait");
    let (mut second, _, _) = ChatPatient::start(&line, None).await;
    second
        .say(1, "is this the right place to ask about my meds")
        .await;
    first.expect(T, "two people waiting", waiting(2)).await;
    second.expect(T, "two people waiting", waiting(2)).await;

    // A counsellor comes and takes the first: the second still waits, and
    // is told one person waits and how long the first one waited.
    let mut ana = Counsellor::available(&line, "ana").await;
    let offer = ana
        .expect(
            T,
            "the first offer",
            offer_containing("need to talk".into()),
        )
        .await;
    accept(&mut ana, offer.contact_id).await;
    second
        .expect(T, "one waiting, with the typical wait", |f| match f {
            ServerFrame::WaitEstimate {
                waiting: Some(_),
                typical_wait_secs: Some(_),
            } => Some(()),
            _ => None,
        })
        .await;
    // The person with a counsellor is told no more estimates.
    first
        .expect(T, "the counsellor joined", |f| {
            matches!(
                f,
                ServerFrame::Message {
                    note: Some(ChatNote::Joined),
                    ..
                }
            )
            .then_some(())
        })
        .await;
    first.seen.clear();
    second.say(2, "still here").await;
    ana.reply(offer.contact_id, "I'm here with you").await;
    counsellor_says(&mut first, "I'm here with you").await;
    assert!(
        !first
            .seen
            .iter()
            .any(|f| matches!(f, ServerFrame::WaitEstimate { .. })),
        "{:?}",
        first.seen
    );
}
