//! Consumer `chat-notes`: tells a person in the web chat when a counsellor
//! joins their contact and when the conversation is closed. SMS contacts
//! are skipped (nothing is sent to a phone for these). Each note's outbound
//! id is derived from the contact, the note and the event's time, so a
//! redelivery stores it once.

use std::sync::Arc;

use async_nats::jetstream;
use nwd_proto::events::{
    Author, Channel, ChatNote, ContactAssigned, ContactResolved, OutboundChat,
};
use nwd_proto::{ContactId, Envelope, subjects, wire};
use nwd_runtime::bus;
use nwd_runtime::consume::{self, Handler, Outcome};
use time::OffsetDateTime;

use crate::NAME;

pub struct Notes {
    pub js: jetstream::Context,
}

/// Not an assignment nor a resolution.
#[derive(Debug, thiserror::Error)]
#[error("neither an assignment nor a resolution")]
pub struct Undecodable;

/// The note an event calls for, if its contact is a chat.
pub fn note_for(
    payload: &[u8],
) -> Result<Option<(ContactId, Channel, ChatNote, OffsetDateTime)>, Undecodable> {
    if let Ok(env) = Envelope::<ContactAssigned>::from_bytes(payload) {
        let ev = env.data;
        return Ok(ev
            .channel
            .map(|c| (ev.contact_id, c, ChatNote::Joined, ev.at)));
    }
    if let Ok(env) = Envelope::<ContactResolved>::from_bytes(payload) {
        let ev = env.data;
        return Ok(Some((ev.contact_id, ev.channel, ChatNote::Closed, ev.at)));
    }
    Err(Undecodable)
}

impl Handler for Notes {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let Ok(found) = note_for(&msg.payload) else {
            return Outcome::Reject("undecodable");
        };
        let Some((contact, channel, note, at)) = found else {
            return Outcome::Ack;
        };
        let Some(session) = channel.chat_session() else {
            return Outcome::Ack;
        };
        let outbound_id = wire::outbound::chat_note(&contact, note.as_str(), at);
        let event = OutboundChat {
            outbound_id,
            contact_id: contact,
            session,
            body: note.words().to_owned(),
            author: Author::System,
            created_at: at,
            note: Some(note),
        };
        match bus::publish(
            &self.js,
            subjects::outbound_chat(&session, &contact),
            &wire::msg_id::outbound_sms(&outbound_id),
            &Envelope::new(event),
        )
        .await
        {
            Ok(_) => {
                metrics::counter!("nwd_chat_notes_total", "service" => NAME, "note" => note.as_str())
                    .increment(1);
                Outcome::Ack
            }
            Err(e) => {
                tracing::warn!(contact = %contact, error = %e, "cannot store a chat note; retrying");
                Outcome::Retry(std::time::Duration::from_millis(500))
            }
        }
    }

    /// One lane per contact: its notes in order.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        consume::hash(subjects::last_token(msg.subject.as_str()))
    }
}

pub fn handler(js: jetstream::Context) -> Arc<Notes> {
    Arc::new(Notes { js })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nwd_proto::{Address, ChatSessionId, CounsellorId};

    #[test]
    fn notes_only_for_what_the_events_say() {
        let contact = ContactId::new();
        let ana = CounsellorId::parse("ana").unwrap();
        let at = OffsetDateTime::UNIX_EPOCH;
        let chat = Channel::Chat {
            session: ChatSessionId::new(),
            door: None,
            line: Address::parse("+15005550100"),
        };
        let assigned = |channel| {
            Envelope::new(ContactAssigned {
                contact_id: contact,
                counsellor: ana.clone(),
                at,
                channel,
            })
            .to_bytes()
        };
        let Ok(Some((c, ch, note, _))) = note_for(&assigned(Some(chat.clone()))) else {
            panic!("a chat assignment is a note")
        };
        assert_eq!((c, note), (contact, ChatNote::Joined));
        assert_eq!(ch, chat);
        // An older event without the channel: nothing to say, nothing to retry.
        assert!(matches!(note_for(&assigned(None)), Ok(None)));
        let resolved = Envelope::new(ContactResolved {
            contact_id: contact,
            channel: chat,
            counsellor: ana,
            disposition: None,
            note: None,
            at,
        })
        .to_bytes();
        assert!(matches!(
            note_for(&resolved),
            Ok(Some((_, _, ChatNote::Closed, _)))
        ));
        assert!(note_for(b"{not json").is_err());
        assert_ne!(
            wire::outbound::chat_note(&contact, "joined", at),
            wire::outbound::chat_note(&contact, "closed", at)
        );
    }
}
