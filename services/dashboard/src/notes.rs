//! Private notes on a conversation: written by the counsellor who holds it
//! (or a supervisor monitoring it), stored as [`ContactNoted`] events on
//! CONTACTS (`contact.noted.<id>`) beside the person's messages, and shown
//! to the holder's tabs and its monitors. Never sent to the person, never
//! logged.

use nwd_proto::contact::ContactRecord;
use nwd_proto::dashboard::{MAX_NOTE_CHARS, ServerMsg};
use nwd_proto::events::ContactNoted;
use nwd_proto::{ClientReplyId, ContactId, CounsellorId, Envelope, subjects, wire};
use nwd_runtime::{bus, kv, transcript};
use time::OffsetDateTime;

use crate::{App, Stores};

/// Why a note was not kept: a stable code and a message for the counsellor.
pub type NoteError = (&'static str, String);

/// Checks the text: something, at most [`MAX_NOTE_CHARS`] characters.
pub fn check(text: &str) -> Result<(), NoteError> {
    if text.trim().is_empty() {
        return Err(("bad-note", "Write the note first".to_owned()));
    }
    if text.chars().count() > MAX_NOTE_CHARS {
        return Err((
            "bad-note",
            format!("Keep the note to {MAX_NOTE_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Stores a note by `who` and tells the holder's tabs (monitors follow the
/// stream). The note's id is derived from the contact, the counsellor and
/// the browser's id, so a resend is the same note.
pub async fn write(
    app: &App,
    stores: &Stores,
    who: &CounsellorId,
    contact_id: ContactId,
    client_id: ClientReplyId,
    text: String,
) -> Result<(), NoteError> {
    check(&text)?;
    let rec = kv::get::<ContactRecord>(&stores.contacts, &wire::key::contact(&contact_id))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the contact");
            unavailable()
        })?
        .value;
    let Some(holder) = rec.as_ref().and_then(|r| r.assigned_to()).cloned() else {
        return Err(not_yours());
    };
    if &holder != who && !app.monitors.is_monitoring(&contact_id, who) {
        return Err(not_yours());
    }
    let note_id = wire::msg_id::contact_noted(&contact_id, who, &client_id);
    let noted = ContactNoted {
        contact_id,
        note_id: note_id.clone(),
        counsellor: who.clone(),
        text,
        at: OffsetDateTime::now_utc(),
    };
    bus::publish(
        &app.js,
        subjects::contact_noted(&contact_id),
        &note_id,
        &Envelope::new(noted.clone()),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "cannot store the note");
        unavailable()
    })?;
    // A resend shows the same id again: the page keeps one.
    let note = transcript::note_view(&noted, &app.directory.get());
    app.hub
        .send(&holder, &ServerMsg::Noted { contact_id, note });
    Ok(())
}

fn not_yours() -> NoteError {
    (
        "not-assigned",
        "This conversation is not with you".to_owned(),
    )
}

fn unavailable() -> NoteError {
    (
        "unavailable",
        "The note could not be saved; try again".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_something_and_not_too_long() {
        assert!(check("calmer now").is_ok());
        assert_eq!(check("  \n").unwrap_err().0, "bad-note");
        assert!(check(&"x".repeat(MAX_NOTE_CHARS)).is_ok());
        let (code, why) = check(&"x".repeat(MAX_NOTE_CHARS + 1)).unwrap_err();
        assert_eq!(code, "bad-note");
        assert!(why.contains(&MAX_NOTE_CHARS.to_string()));
    }
}
