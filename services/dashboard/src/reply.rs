//! A counsellor's reply: validated, deduplicated against the browser's own
//! resends, published to OUTBOUND.
//!
//! The browser names each reply (`client_id`) so that a resend after a
//! dropped socket is not sent twice. That id is not trusted as a dedupe key:
//! the reply's outbound id is derived from the contact, the counsellor of the
//! authenticated session and the browser's id
//! ([`wire::outbound::counsellor_reply`]), in a namespace apart from the
//! line's own messages. So an id reused in another conversation is another
//! reply, and no browser can make a safety message look already sent.
//!
//! The `replies` bucket keeps, per derived id, a hash of the body (never the
//! body). The first reply creates the record (compare-and-swap); a resend
//! with the same body is answered with what became of the original (its
//! delivery status now), and nothing new is sent; the same id with another
//! body is refused, so the screen never says "sent" for a message that
//! was not.

use async_nats::jetstream;
use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{ReplyRecord, ServerMsg};
use nwd_proto::events::{Author, DeliveryStatus, MAX_SMS_BODY_CHARS, OutboundStatus};
use nwd_proto::{
    ClientReplyId, ContactId, CounsellorId, Envelope, OutboundId, streams, subjects, wire,
};
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::{bus, transcript};
use time::OffsetDateTime;

use crate::{App, Stores};

/// Why a reply was not sent: a stable code and a message for the counsellor.
pub type ReplyError = (&'static str, &'static str);

/// The code of a browser id reused for another message.
pub const REUSED: &str = "reply-id-reused";

/// What a reply came to.
#[derive(Debug)]
pub struct Replied {
    /// The line in the conversation, for every tab of the counsellor; `None`
    /// for a resend (the tabs have it already).
    pub line: Option<ServerMsg>,
    /// The answer to the socket that sent it.
    pub outcome: ServerMsg,
}

/// What the compare-and-swap on the reply's record decided.
enum Decided {
    /// A new reply: publish it.
    New(ReplyRecord),
    /// Seen before with the same body.
    Again(ReplyRecord),
    /// Seen before with another body (or for another contact or counsellor,
    /// which the derivation makes a hash collision): refuse.
    Reused,
}

/// Validates, deduplicates and publishes a counsellor's reply.
pub async fn reply(
    app: &App,
    stores: &Stores,
    who: &CounsellorId,
    contact_id: ContactId,
    client_id: ClientReplyId,
    body: String,
) -> Result<Replied, ReplyError> {
    let chars = body.chars().count();
    if body.trim().is_empty() || chars > MAX_SMS_BODY_CHARS {
        return Err(("bad-reply", "A reply must be 1 to 1600 characters"));
    }
    let rec = kv::get::<ContactRecord>(&stores.contacts, &wire::key::contact(&contact_id))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the contact");
            UNAVAILABLE
        })?
        .value;
    let Some(rec) = rec.filter(|r| r.assigned_to() == Some(who)) else {
        return Err(("not-assigned", "This conversation is not with you"));
    };
    // An outreach: the line's introduction (naming only the line) is its
    // first text, always; a counsellor's words never go before it.
    if rec.owes_introduction() {
        return Err((
            "intro-pending",
            "The line's introduction is still being sent; try again in a moment",
        ));
    }

    let outbound_id = wire::outbound::counsellor_reply(&contact_id, who, &client_id);
    let fresh = ReplyRecord {
        contact_id,
        counsellor: who.clone(),
        client_id,
        body_sha256: ReplyRecord::hash(&body),
        created_at: OffsetDateTime::now_utc(),
        published: false,
    };
    let (decided, _) = kv::cas(
        &stores.replies,
        &wire::key::reply(&outbound_id),
        |cur: Option<ReplyRecord>| match cur {
            None => Cas::Write(fresh.clone(), Decided::New(fresh.clone())),
            Some(r)
                if r.body_sha256 == fresh.body_sha256
                    && r.contact_id == contact_id
                    && &r.counsellor == who =>
            {
                Cas::Keep(Decided::Again(r))
            }
            Some(_) => Cas::Keep(Decided::Reused),
        },
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "cannot record the reply");
        UNAVAILABLE
    })?;
    let (record, seen) = match decided {
        Decided::Reused => {
            tracing::warn!(outbound = %outbound_id, "a reply id was reused for another message; not sent");
            return Err((
                REUSED,
                "Not sent: this reply's id was already used for a different message. Write it again as a new reply.",
            ));
        }
        Decided::New(r) => (r, false),
        Decided::Again(r) => (r, true),
    };

    // Back on the person's own channel (SMS, WhatsApp, … from the line they
    // wrote to; or their web-chat session).
    let to_person = rec.channel.to_person(
        contact_id,
        outbound_id,
        body,
        Author::Counsellor(who.clone()),
        record.created_at,
    );
    let sms = to_person.as_sms();
    // A record not yet marked published may have been published just before
    // a crash: the same `Nats-Msg-Id` makes the stream say so.
    let resent = if record.published {
        true
    } else {
        let published = bus::publish_to_person(&app.js, &to_person)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot publish the reply");
                UNAVAILABLE
            })?;
        // Off the reply's path: until it lands, a resend is deduplicated by
        // the stream.
        app.tasks
            .spawn(mark_published(stores.replies.clone(), outbound_id));
        seen && published.duplicate
    };
    tracing::info!(outbound = %outbound_id, resent, "reply accepted");

    let mut message = transcript::outbound_view(&sms);
    if resent {
        message.status = current_status(app, &contact_id, &outbound_id).await;
    }
    let outcome = ServerMsg::ReplyOutcome {
        contact_id,
        client_id,
        message: message.clone(),
        resent,
    };
    let line = (!resent).then(|| ServerMsg::Message {
        contact_id,
        risk: rec.risk,
        reasons: rec.reasons.iter().map(Into::into).collect(),
        message,
    });
    Ok(Replied { line, outcome })
}

const UNAVAILABLE: ReplyError = ("unavailable", "Could not send; retry");

/// Records that the reply is on the stream, so a later resend does not
/// publish it again (after the stream's duplicate window it would be stored
/// twice). Best effort: a resend before this lands is deduplicated by the
/// stream (its duplicate window is an hour).
async fn mark_published(replies: jetstream::kv::Store, outbound_id: OutboundId) {
    let marked = kv::cas(
        &replies,
        &wire::key::reply(&outbound_id),
        |cur: Option<ReplyRecord>| match cur {
            Some(mut r) if !r.published => {
                r.published = true;
                Cas::Write(r, ())
            }
            _ => Cas::Keep(()),
        },
    )
    .await;
    if let Err(e) = marked {
        tracing::warn!(outbound = %outbound_id, error = %e, "cannot mark the reply published");
    }
}

/// The latest delivery status reported for one of a contact's outbound
/// messages, or `None` if none is known yet (or the stream cannot be read).
async fn current_status(
    app: &App,
    contact_id: &ContactId,
    outbound_id: &OutboundId,
) -> Option<DeliveryStatus> {
    let stored = transcript::read_subjects(
        &app.js,
        streams::OUTBOUND,
        vec![subjects::outbound_status(contact_id)],
    )
    .await;
    match stored {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| Envelope::<OutboundStatus>::from_bytes(&m.payload).ok())
            .filter(|env| env.data.outbound_id == *outbound_id)
            .map(|env| env.data.status)
            .last(),
        Err(e) => {
            tracing::warn!(outbound = %outbound_id, error = %e, "cannot read the reply's status");
            None
        }
    }
}
