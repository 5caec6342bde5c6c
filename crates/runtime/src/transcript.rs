//! A contact's conversation, rebuilt from the streams: person messages from
//! CONTACTS (`contact.triaged.<id>`, which carry the body), our replies and
//! their delivery statuses from OUTBOUND (SMS and web chat). Used by the router (offers) and the
//! dashboard (conversations, reconnects).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{
    ContactView, FollowUpEntry, MessageView, NoteView, QueueEntry, ReasonView, Speaker,
    TransferView,
};
use nwd_proto::directory::Directory;
use nwd_proto::events::{
    Author, ContactNoted, MessageTriaged, OutboundChat, OutboundSms, OutboundStatus,
};
use nwd_proto::ladder::Escalation;
use nwd_proto::{ContactId, Envelope, subjects};

#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("cannot read stream {stream}: {source}")]
    Read {
        stream: &'static str,
        source: async_nats::Error,
    },
    #[error("timed out reading stream {0}")]
    Timeout(&'static str),
}

/// Every message stored on `filters` in `stream`, in stream order.
pub async fn read_subjects(
    js: &jetstream::Context,
    stream: &'static str,
    filters: Vec<String>,
) -> Result<Vec<jetstream::Message>, TranscriptError> {
    let err = |source: async_nats::Error| TranscriptError::Read { stream, source };
    let handle = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
    let consumer = handle
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = consumer.messages().await.map_err(|e| err(e.into()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| TranscriptError::Timeout(stream))?;
        let Some(next) = next else { break };
        let msg = next.map_err(|e| err(e.into()))?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        out.push(msg);
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The conversation of one contact, oldest first.
pub async fn load(
    js: &jetstream::Context,
    contact: &ContactId,
) -> Result<Vec<MessageView>, TranscriptError> {
    Ok(load_with_notes(js, contact).await?.messages)
}

/// A contact's conversation and its private notes, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub messages: Vec<MessageView>,
    pub notes: Vec<ContactNoted>,
}

/// The conversation of one contact and its private notes (CONTACTS
/// `contact.noted.<id>`, read in the same pass as the person's messages).
/// A note resent by the browser is stored once (its `Nats-Msg-Id`); a
/// resend after the stream's duplicate window is dropped here by its id.
pub async fn load_with_notes(
    js: &jetstream::Context,
    contact: &ContactId,
) -> Result<Transcript, TranscriptError> {
    let person = read_subjects(
        js,
        nwd_proto::streams::CONTACTS,
        vec![
            subjects::contact_triaged(contact),
            subjects::contact_noted(contact),
        ],
    )
    .await?;
    let ours = read_subjects(
        js,
        nwd_proto::streams::OUTBOUND,
        vec![
            subjects::outbound_for_contact(contact),
            subjects::outbound_chat_for_contact(contact),
        ],
    )
    .await?;
    let mut views = Vec::new();
    let mut notes: Vec<ContactNoted> = Vec::new();
    for m in person {
        if let Ok(env) = Envelope::<MessageTriaged>::from_bytes(&m.payload) {
            views.push(person_view(&env.data));
        } else if let Ok(env) = Envelope::<ContactNoted>::from_bytes(&m.payload)
            && !notes.iter().any(|n| n.note_id == env.data.note_id)
        {
            notes.push(env.data);
        }
    }
    let mut statuses = HashMap::new();
    let mut replies = Vec::new();
    for m in ours {
        if let Ok(env) = Envelope::<OutboundSms>::from_bytes(&m.payload) {
            replies.push(env.data);
        } else if let Ok(env) = Envelope::<OutboundChat>::from_bytes(&m.payload) {
            replies.push(env.data.as_sms());
        } else if let Ok(env) = Envelope::<OutboundStatus>::from_bytes(&m.payload) {
            statuses.insert(env.data.outbound_id, env.data.status);
        }
    }
    for r in replies {
        let status = statuses.get(&r.outbound_id).copied();
        views.push(MessageView {
            status,
            ..outbound_view(&r)
        });
    }
    views.sort_by_key(|v| v.at);
    Ok(Transcript {
        messages: views,
        notes,
    })
}

/// Only the private notes of one contact, oldest first (a resend once).
pub async fn load_notes(
    js: &jetstream::Context,
    contact: &ContactId,
) -> Result<Vec<ContactNoted>, TranscriptError> {
    let stored = read_subjects(
        js,
        nwd_proto::streams::CONTACTS,
        vec![subjects::contact_noted(contact)],
    )
    .await?;
    let mut notes: Vec<ContactNoted> = Vec::new();
    for m in stored {
        if let Ok(env) = Envelope::<ContactNoted>::from_bytes(&m.payload)
            && !notes.iter().any(|n| n.note_id == env.data.note_id)
        {
            notes.push(env.data);
        }
    }
    Ok(notes)
}

/// A private note as shown in a conversation (the author's name from the
/// directory; the text is for the screen only, never for logs).
pub fn note_view(note: &ContactNoted, dir: &Directory) -> NoteView {
    NoteView {
        id: note.note_id.clone(),
        by: note.counsellor.clone(),
        by_name: dir
            .staff(&note.counsellor)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        text: note.text.clone(),
        at: note.at,
    }
}

/// [`contact_view`] with the transcript's notes.
pub fn contact_view_with_notes(
    rec: &ContactRecord,
    dir: &Directory,
    transcript: Transcript,
) -> ContactView {
    let mut view = contact_view(rec, dir, transcript.messages);
    view.notes = transcript.notes.iter().map(|n| note_view(n, dir)).collect();
    view
}

/// How a person's message appears on screen.
pub fn person_view(ev: &MessageTriaged) -> MessageView {
    MessageView {
        id: ev.message.message_id.to_string(),
        speaker: Speaker::Person,
        body: ev.message.body.clone(),
        at: ev.message.received_at,
        status: None,
    }
}

/// How one of our messages appears on screen.
pub fn outbound_view(sms: &OutboundSms) -> MessageView {
    MessageView {
        id: sms.outbound_id.to_string(),
        speaker: match sms.author {
            Author::Counsellor(_) => Speaker::Counsellor,
            Author::System => Speaker::System,
        },
        body: sms.body.clone(),
        at: sms.created_at,
        status: None,
    }
}

/// A contact as a counsellor sees it (never the phone number).
pub fn contact_view(
    rec: &ContactRecord,
    dir: &Directory,
    messages: Vec<MessageView>,
) -> ContactView {
    ContactView {
        contact_id: rec.id,
        risk: rec.risk,
        reasons: rec.reasons.iter().map(ReasonView::from).collect(),
        lang: rec.lang,
        channel: rec.channel.label(),
        door: dir.door_name(rec.door.as_ref()),
        opened_at: rec.opened_at,
        waiting_since: rec.waiting_since(),
        escalation: rec
            .escalation
            .as_ref()
            .filter(|_| rec.waiting_since().is_some())
            .map(|e| Box::new(nwd_proto::dashboard::EscalationView::of(e))),
        messages,
        outreach: rec.outreach.as_ref().map(|o| {
            Box::new(nwd_proto::dashboard::OutreachView {
                referred_by: dir.door_name(Some(&o.partner)),
                reason: o.reason.clone(),
                patient_name: o.patient_name.clone(),
                priority: o.priority,
                offer_at: o.offer_at,
                due_at: o.due_at,
                late: o.late_at.is_some()
                    || (rec.waiting_since().is_some()
                        && time::OffsetDateTime::now_utc() > o.due_at),
                outcome: o.outcome.as_ref().map(|r| r.outcome),
                joined: o.joined,
            })
        }),
        screener: rec.screener.clone().map(Box::new),
        transfer: rec.transfer.as_ref().map(|t| {
            Box::new(TransferView {
                from: t.from.clone(),
                from_name: dir
                    .staff(&t.from)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                mode: t.mode,
                note: t.note.clone(),
            })
        }),
        left: rec.left.clone().map(Box::new),
        held: rec.held.is_some(),
        opted_out: rec.opted_out_at.is_some(),
        // Notes are events on CONTACTS: `contact_view_with_notes` adds them.
        notes: Vec::new(),
    }
}

/// A waiting contact as the queue shows it (no text, no address), or
/// `None` when the contact is not waiting or offered.
pub fn queue_entry(rec: &ContactRecord, dir: &Directory) -> Option<QueueEntry> {
    if rec.left.is_some() {
        return None;
    }
    let waiting_since = rec.waiting_since()?;
    Some(QueueEntry {
        contact_id: rec.id,
        risk: rec.risk,
        reasons: rec.reasons.iter().map(ReasonView::from).collect(),
        lang: rec.lang,
        channel: rec.channel.label(),
        door: dir.door_name(rec.door.as_ref()),
        door_id: rec.door.clone(),
        waiting_since,
        escalation: rec
            .escalation
            .as_ref()
            .map(|e| Box::new(nwd_proto::dashboard::EscalationView::of(e))),
        offered: u32::try_from(nwd_proto::contact::offered(rec).len()).unwrap_or(u32::MAX),
        outreach: rec.outreach.is_some(),
        open_to_all: rec.escalation.as_ref().is_some_and(Escalation::open_to_all),
        held: rec.held.is_some(),
    })
}

/// A person who left before anyone answered, as the follow-up list shows
/// them, or `None` when the contact is not awaiting a follow-up.
pub fn follow_up_entry(rec: &ContactRecord, dir: &Directory) -> Option<FollowUpEntry> {
    let left = rec.left.clone().filter(|_| rec.awaits_follow_up())?;
    Some(FollowUpEntry {
        contact_id: rec.id,
        risk: rec.risk,
        lang: rec.lang,
        channel: rec.channel.label(),
        door: dir.door_name(rec.door.as_ref()),
        door_id: rec.door.clone(),
        left,
    })
}
