//! Consumer `intake-chat`: INBOUND `nwd.v1.inbound.chat.<session>` →
//! CONTACTS, like SMS. A chat session is one contact until that contact is
//! resolved: its thread is kept in the `threads` bucket under a keyed
//! pseudonym of the session id ([`Pseudonymiser::chat_thread_key`]); the
//! door is the partner whose page embeds the chat.
//!
//! A message's id is derived from the session and the page's sequence
//! number, so a resend after a reconnect (stored once by its `Nats-Msg-Id`)
//! or a redelivery is the same message downstream. The pre-chat answer goes
//! to triage in front of the first message. A quick exit joins the open
//! contact as a note for the counsellor ("the person left quickly") and
//! never opens one. The post-chat answer stays in INBOUND (quality figures).

use std::sync::Arc;

use async_nats::jetstream;
use nwd_proto::contact::ThreadRecord;
use nwd_proto::directory::Directory;
use nwd_proto::events::{Channel, ChatInput, ContactMessage, InboundChat, QUICK_EXIT_NOTE};
use nwd_proto::{Address, Envelope, MessageId, Pseudonymiser, subjects, wire};
use nwd_runtime::bus;
use nwd_runtime::consume::{self, Handler, Outcome};
use nwd_runtime::kv;

use crate::{HandleError, NAME, RETRY_DELAY, decide_thread, describe, message_id_from};

pub(crate) struct ChatHandler {
    pub(crate) js: jetstream::Context,
    pub(crate) threads: jetstream::kv::Store,
    pub(crate) directory: nwd_runtime::directory::Live,
    pub(crate) pseudonyms: Pseudonymiser,
}

/// The message id of a chat input: time-ordered by `received_at`, random
/// bits from the session and the page's sequence number.
pub fn chat_message_id(ev: &InboundChat) -> MessageId {
    message_id_from(
        &wire::msg_id::inbound_chat(&ev.session, ev.seq),
        ev.received_at,
    )
}

/// The line address SMS about a chat contact go from (to a trusted
/// contact, the backup line): the door partner's number, else the line's.
pub fn chat_line(dir: &Directory, door: Option<&nwd_proto::PartnerId>) -> Address {
    door.and_then(|d| dir.partner(d))
        .and_then(|p| p.sms_numbers.first())
        .or_else(|| dir.line.numbers.first())
        .map_or_else(|| Address::parse(""), |n| Address::from(n.clone()))
}

impl ChatHandler {
    async fn process(&self, ev: &InboundChat) -> Result<(), HandleError> {
        let message_id = chat_message_id(ev);
        let key = self.pseudonyms.chat_thread_key(&ev.session);
        let (thread, body) = match &ev.input {
            ChatInput::Message { text, safe_now } => {
                let (thread, _) = kv::cas(&self.threads, &key, |current| {
                    decide_thread(current, message_id, ev.received_at)
                })
                .await?;
                let body = match safe_now {
                    Some(answer) if thread.opened_by == message_id => {
                        format!("{}\n{text}", answer.as_words())
                    }
                    _ => text.clone(),
                };
                (thread, body)
            }
            ChatInput::Feedback { .. } => {
                // Kept in INBOUND for the quality figures; not a message.
                return Ok(());
            }
            ChatInput::QuickExit => {
                let current = kv::get::<ThreadRecord>(&self.threads, &key).await?;
                match current.value {
                    Some(t) if t.closed_at.is_none_or(|c| ev.received_at < c) => {
                        (t, QUICK_EXIT_NOTE.to_owned())
                    }
                    _ => {
                        tracing::info!(session = %ev.session, "quick exit without an open contact");
                        return Ok(());
                    }
                }
            }
        };
        let opens_contact = thread.opened_by == message_id;
        let directory = self.directory.get();
        let door = ev.door.clone().filter(|d| directory.partner(d).is_some());
        let channel = Channel::Chat {
            session: ev.session,
            door: door.clone(),
            line: chat_line(&directory, door.as_ref()),
        };
        let event = ContactMessage {
            contact_id: thread.contact_id,
            message_id,
            channel,
            door,
            patient: None,
            body,
            received_at: ev.received_at,
            opens_contact,
            previous: thread.previous.filter(|_| opens_contact),
            quick_exit: matches!(ev.input, ChatInput::QuickExit),
        };
        let published = bus::publish(
            &self.js,
            subjects::contact_message(&thread.contact_id),
            &wire::msg_id::contact_message(&message_id),
            &Envelope::new(event),
        )
        .await?;
        tracing::info!(
            contact_id = %thread.contact_id,
            message_id = %message_id,
            session = %ev.session,
            opens_contact,
            duplicate = published.duplicate,
            "chat message published"
        );
        if opens_contact && !published.duplicate {
            metrics::counter!("nwd_contacts_opened_total", "service" => NAME, "channel" => "chat")
                .increment(1);
        }
        Ok(())
    }
}

impl Handler for ChatHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<InboundChat>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable chat input");
                return Outcome::Reject("undecodable");
            }
        };
        match self.process(&env.data).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(session = %env.data.session, error = %e, "chat intake failed; retrying");
                Outcome::Retry(RETRY_DELAY)
            }
        }
    }

    /// One lane per session, so a person's messages are threaded in order.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        consume::hash(msg.subject.as_str())
    }
}

pub(crate) fn handler(
    js: jetstream::Context,
    threads: jetstream::kv::Store,
    directory: nwd_runtime::directory::Live,
    pseudonyms: Pseudonymiser,
) -> Arc<ChatHandler> {
    Arc::new(ChatHandler {
        js,
        threads,
        directory,
        pseudonyms,
    })
}
