//! One browser's websocket, generic over a frame sink and stream so it runs
//! the same over axum's websocket and over channels in tests.
//!
//! A writer task drains the socket's bounded queue (fed by this socket's
//! replies and by the hub) and pings the browser every heartbeat; the reader
//! handles client messages one at a time, in order. On connect: `Hello`, then
//! a snapshot of the counsellor's conversations and offers.

use std::sync::Arc;
use std::time::Instant;

use futures::{Sink, SinkExt, Stream, StreamExt};
use nwd_proto::contact::{ContactRecord, ContactState};
use nwd_proto::dashboard::{
    ClientMsg, ContactView, Disposition, MAX_NOTE_CHARS, PartnerOption, Presence, ServerMsg,
    StaffOption, WithdrawReason,
};
use nwd_proto::directory::{PartnerKind, Role};
use nwd_proto::handover::MAX_HANDOVER_NOTE_CHARS;
use nwd_proto::router::{
    MAX_EMERGENCY_NATURE_CHARS, RouterCommand, RouterReply, valid_emergency_nature,
};
use nwd_proto::screener::ScreenerAnswers;
use nwd_proto::{ClientReplyId, ContactId, CounsellorId, Envelope, PartnerId, subjects, wire};
use nwd_runtime::{kv, transcript};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::hub::Frame;
use crate::queue::Audience;
use crate::session::Login;
use crate::{App, Stores, presence};

/// A frame from the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    /// A binary frame: not part of the protocol.
    Binary,
    /// A ping or pong: the browser is still there.
    Alive,
}

/// A frame to the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Boxed: a `ServerMsg` is large.
    Msg(Box<ServerMsg>),
    /// A message serialised once for many sockets (the queue): sent as is.
    Json(axum::extract::ws::Utf8Bytes),
    /// A keep-alive ping (a websocket ping frame on a real socket).
    KeepAlive,
}

/// An error a counsellor sees, with a stable code the page can act on.
fn error(code: &str, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error {
        code: code.to_owned(),
        message: message.into(),
    }
}

fn count_command(command: &'static str, outcome: &'static str) {
    metrics::counter!(
        "nwd_dashboard_commands_total",
        "service" => crate::NAME, "command" => command, "outcome" => outcome
    )
    .increment(1);
}

/// Serves one socket of an authenticated session until the browser leaves,
/// goes silent for the idle timeout, falls behind, the session ends, or the
/// dashboard shuts down. Every command the socket sends to the router names
/// the session's counsellor: nothing the browser sends can name another.
pub async fn serve<W, R>(app: Arc<App>, login: Login, writer: W, reader: R)
where
    W: Sink<Outbound> + Send + 'static,
    R: Stream<Item = Inbound> + Send,
{
    let Some(stores) = app.stores().cloned() else {
        let mut writer = Box::pin(writer);
        let _ = writer
            .send(Outbound::Msg(Box::new(error(
                "unavailable",
                "The dashboard is starting; retry",
            ))))
            .await;
        let _ = writer.close().await;
        return;
    };
    let who = login.counsellor.clone();
    let initial = presence::initial(&stores.presence, &who).await;
    let audience = Audience::of(app.directory.get().staff(&who));
    let reg = app
        .hub
        .register(&login, initial, audience.clone(), &app.shutdown);
    // A logout between the upgrade and this registration was not seen by
    // the hub: look once more now that revocations reach this socket.
    if !still_open(&app, &stores, &login).await {
        reg.close.cancel();
    }
    metrics::gauge!("nwd_dashboard_sockets", "service" => crate::NAME)
        .set(app.hub.socket_count() as f64);
    let span = tracing::info_span!("socket", counsellor = %who, socket = reg.id);
    async {
        tracing::info!("socket opened");
        let writer_task = tokio::spawn(write_loop(
            Box::pin(writer),
            reg.rx,
            reg.close.clone(),
            app.settings.heartbeat,
        ));
        let session = Session {
            app: app.clone(),
            stores,
            who: who.clone(),
            tx: reg.tx,
            joined_at: reg.joined_at,
        };
        session.greet(reg.status, &audience).await;
        session.read_loop(reader, &reg.close).await;

        reg.close.cancel();
        let last = app.hub.unregister(&who, reg.id);
        if last {
            app.monitors.stop_all(&who);
            app.viewed.forget(&who);
        }
        // On shutdown the browser reconnects to the next dashboard, which
        // takes the status back; only a counsellor who left goes offline.
        let left = last && !app.shutdown.is_cancelled();
        let recorded = match left {
            true => presence::sync(&session.stores.presence, &app.hub, &who)
                .await
                .map(|_| ()),
            false => Ok(()),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the counsellor offline");
        }
        let _ = writer_task.await;
        metrics::gauge!("nwd_dashboard_sockets", "service" => crate::NAME)
            .set(app.hub.socket_count() as f64);
        tracing::info!(last, "socket closed");
    }
    .instrument(span)
    .await;
}

/// Whether `login`'s session is still in the bucket (a read error counts as
/// open: the watch and the sweep still apply).
async fn still_open(app: &App, stores: &Stores, login: &Login) -> bool {
    let found = app
        .sessions
        .find_key(
            &stores.sessions,
            login.key.clone(),
            OffsetDateTime::now_utc(),
        )
        .await;
    match found {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read the session");
            true
        }
    }
}

async fn write_loop<W>(
    mut writer: std::pin::Pin<Box<W>>,
    mut rx: mpsc::Receiver<Frame>,
    close: CancellationToken,
    keepalive: std::time::Duration,
) where
    W: Sink<Outbound>,
{
    let mut tick = tokio::time::interval(keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let out = tokio::select! {
            biased;
            _ = close.cancelled() => break,
            m = rx.recv() => match m {
                Some(Frame::Msg(m)) => Outbound::Msg(m),
                Some(Frame::Json(text)) => Outbound::Json(text),
                None => break,
            },
            _ = tick.tick() => Outbound::KeepAlive,
        };
        if writer.send(out).await.is_err() {
            break;
        }
    }
    close.cancel();
    let _ = writer.close().await;
}

/// One counsellor's socket: what the reader needs to answer.
struct Session {
    app: Arc<App>,
    stores: Stores,
    who: CounsellorId,
    tx: mpsc::Sender<Frame>,
    /// The counsellor's last message number before this socket opened.
    joined_at: u64,
}

impl Session {
    /// To this socket only. Waits for room: the reader is this socket's own.
    async fn reply(&self, msg: ServerMsg) {
        self.audit(&msg);
        let _ = self.tx.send(Frame::Msg(Box::new(msg))).await;
    }

    /// An AUDIT record if `msg` shows a contact ([`crate::audit`]).
    fn audit(&self, msg: &ServerMsg) {
        if let Some((contact, view)) = crate::audit::shown(msg) {
            crate::audit::viewed(&self.app, &self.who, contact, view);
        }
    }

    /// To this socket only, with the number of the counsellor's last
    /// message before it opened (the state it shows is as of then or later).
    async fn reply_numbered(&self, msg: ServerMsg) {
        match serde_json::to_string(&msg) {
            Ok(json) => {
                let text = crate::hub::numbered(&json, self.joined_at);
                let _ = self.tx.send(Frame::Json(text.into())).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise a message"),
        }
    }

    /// To every socket of this counsellor (other tabs too).
    fn broadcast(&self, msg: &ServerMsg) {
        self.audit(msg);
        self.app.hub.send(&self.who, msg);
    }

    /// Hello, the queue this counsellor sees, then their conversations and
    /// offers.
    async fn greet(&self, status: Presence, audience: &Audience) {
        let directory = self.app.directory.get();
        let staff = directory.staff(&self.who).cloned();
        let now = OffsetDateTime::now_utc();
        // Numbered with the counsellor's last number before this socket:
        // the page resumes from there after a drop.
        self.reply_numbered(ServerMsg::Hello {
            counsellor: self.who.clone(),
            name: staff.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            supervisor: staff.as_ref().is_some_and(|s| s.role == Role::Supervisor),
            presence: status,
            capacity: staff.as_ref().map_or(0, |s| s.capacity),
            shift_ends_at: staff
                .as_ref()
                .and_then(|s| nwd_ladder::oncall::shift_end(&directory, s, now)),
            // Safety-planning snippets in the languages they speak.
            snippets: directory
                .line
                .snippets
                .iter()
                .filter(|n| {
                    staff
                        .as_ref()
                        .is_some_and(|s| s.languages.contains(&n.lang))
                })
                .cloned()
                .collect(),
            colleagues: directory
                .staff
                .iter()
                .filter(|s| s.id != self.who)
                .map(|s| StaffOption {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    role: s.role,
                })
                .collect(),
            partners: directory
                .partners
                .iter()
                .map(|p| PartnerOption {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
                .collect(),
            hospitals: directory
                .partners
                .iter()
                .filter(|p| p.kind == PartnerKind::Hospital)
                .map(|p| PartnerOption {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
                .collect(),
        })
        .await;
        self.app.queue.greet(audience, &self.tx);
        self.app.floor.greet(audience, &self.tx);
        if status != Presence::Offline {
            // Taken back from before a reconnect: refresh it now.
            if let Err(e) = presence::refresh(&self.stores.presence, &self.app.hub, &self.who).await
            {
                tracing::warn!(error = %e, "cannot refresh presence");
            }
        }
        match snapshot(&self.app, &self.stores, &self.who).await {
            Ok(msgs) => {
                for m in msgs {
                    self.reply(m).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot failed");
                self.reply(error(
                    "unavailable",
                    "Could not load your contacts; reconnect to retry",
                ))
                .await;
            }
        }
    }

    async fn read_loop<R>(&self, reader: R, close: &CancellationToken)
    where
        R: Stream<Item = Inbound>,
    {
        let mut reader = std::pin::pin!(reader);
        let idle = self.app.settings.idle_timeout;
        loop {
            let next = tokio::select! {
                _ = close.cancelled() => break,
                n = tokio::time::timeout(idle, reader.next()) => n,
            };
            match next {
                Err(_) => {
                    tracing::info!("socket silent past the idle timeout; closing it");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Inbound::Alive)) => {}
                Ok(Some(Inbound::Binary)) => {
                    self.reply(error("bad-message", "Binary frames are not understood"))
                        .await;
                }
                Ok(Some(Inbound::Text(text))) => match serde_json::from_str::<ClientMsg>(&text) {
                    Ok(msg) => self.handle(msg).await,
                    Err(_) => {
                        count_command("unknown", "bad-message");
                        self.reply(error("bad-message", "Message not understood"))
                            .await;
                    }
                },
            }
        }
    }

    async fn handle(&self, msg: ClientMsg) {
        match msg {
            ClientMsg::Ping => self.reply(ServerMsg::Pong).await,
            ClientMsg::SetPresence { status } => self.set_presence(status).await,
            ClientMsg::Accept { contact_id } => self.accept(contact_id).await,
            ClientMsg::Decline { contact_id } => self.decline(contact_id).await,
            ClientMsg::Resolve {
                contact_id,
                disposition,
                note,
            } => self.resolve(contact_id, disposition, note).await,
            ClientMsg::TakeNext => self.take_next().await,
            ClientMsg::Assess {
                contact_id,
                answers,
            } => self.assess(contact_id, answers).await,
            ClientMsg::Reply {
                contact_id,
                client_id,
                body,
            } => self.send_reply(contact_id, client_id, body).await,
            ClientMsg::MedicalEmergency {
                contact_id,
                partner,
                nature,
            } => self.medical_emergency(contact_id, partner, nature).await,
            ClientMsg::OutreachOutcome {
                contact_id,
                outcome,
            } => self.outreach_outcome(contact_id, outcome).await,
            ClientMsg::Typing { contact_id } => self.typing(contact_id).await,
            ClientMsg::Read { contact_id, upto } => self.read(contact_id, upto).await,
            ClientMsg::Transfer {
                contact_id,
                target,
                mode,
                note,
            } => self.transfer(contact_id, target, mode, note).await,
            ClientMsg::CancelTransfer { contact_id } => {
                let cmd = RouterCommand::CancelTransfer {
                    contact_id,
                    counsellor: self.who.clone(),
                };
                self.forward(cmd).await;
            }
            ClientMsg::Switchboard { on } => {
                if self.supervisor_only("switchboard").await {
                    let cmd = RouterCommand::Switchboard {
                        counsellor: self.who.clone(),
                        on,
                    };
                    self.forward(cmd).await;
                }
            }
            ClientMsg::Reassign { contact_id, to } => {
                if self.supervisor_only("reassign").await {
                    let cmd = RouterCommand::Reassign {
                        contact_id,
                        counsellor: self.who.clone(),
                        to,
                    };
                    self.forward(cmd).await;
                }
            }
            ClientMsg::Claim { contact_id } => {
                let cmd = RouterCommand::Claim {
                    contact_id,
                    counsellor: self.who.clone(),
                };
                self.forward(cmd).await;
            }
            ClientMsg::InvolveTrustedContact {
                contact_id,
                trusted,
            } => {
                let cmd = RouterCommand::InvolveTrustedContact {
                    contact_id,
                    counsellor: self.who.clone(),
                    trusted,
                };
                self.forward(cmd).await;
            }
            ClientMsg::Note {
                contact_id,
                client_id,
                text,
            } => self.note(contact_id, client_id, text).await,
            ClientMsg::Profile { contact_id } => self.profile(contact_id).await,
            ClientMsg::Monitor { contact_id } => {
                if self.supervisor_only("monitor").await {
                    self.monitor(contact_id).await;
                }
            }
            ClientMsg::StopMonitoring { contact_id } => self.stop_monitoring(contact_id).await,
            ClientMsg::Resume { last_seq } => self.resume(last_seq).await,
        }
    }

    /// Whether the session's counsellor is a supervisor in the directory as
    /// it is now (a role taken away counts at once); tells this socket
    /// `not-a-supervisor` when not.
    async fn supervisor_only(&self, command: &'static str) -> bool {
        if self.is_supervisor() {
            return true;
        }
        count_command(command, "not-a-supervisor");
        self.reply(error("not-a-supervisor", "Only a supervisor can do this"))
            .await;
        false
    }

    fn is_supervisor(&self) -> bool {
        self.app
            .directory
            .get()
            .staff(&self.who)
            .is_some_and(|s| s.role == Role::Supervisor)
    }

    /// Sends a command to the router in the session's name; the router
    /// pushes what follows (to this counsellor and the others concerned).
    async fn forward(&self, cmd: RouterCommand) {
        let name = cmd.kind();
        let span = match cmd.contact() {
            Some(contact) => tracing::info_span!("command", command = name, contact = %contact),
            None => tracing::info_span!("command", command = name),
        };
        self.routed(name, cmd).instrument(span).await;
    }

    /// A private note (never logged): stored, then shown to the holder's
    /// tabs and the contact's monitors.
    async fn note(&self, contact_id: ContactId, client_id: ClientReplyId, text: String) {
        let written = crate::notes::write(
            &self.app,
            &self.stores,
            &self.who,
            contact_id,
            client_id,
            text,
        )
        .instrument(tracing::info_span!("note", contact = %contact_id))
        .await;
        match written {
            Ok(()) => count_command("note", "done"),
            Err((code, message)) => {
                count_command("note", code);
                self.reply(error(code, message)).await;
            }
        }
    }
    /// The person's profile, for the holder, a counsellor it is offered
    /// to, or a supervisor monitoring it.
    async fn profile(&self, contact_id: ContactId) {
        let rec =
            match kv::get::<ContactRecord>(&self.stores.contacts, &wire::key::contact(&contact_id))
                .await
            {
                Ok(v) => v.value,
                Err(e) => {
                    tracing::warn!(contact = %contact_id, error = %e, "cannot read the contact");
                    count_command("profile", "unavailable");
                    self.reply(error(
                        "unavailable",
                        "The profile could not be loaded; retry",
                    ))
                    .await;
                    return;
                }
            };
        let Some(rec) = rec.filter(|r| self.may_see(r)) else {
            count_command("profile", "not-assigned");
            self.reply(error("not-assigned", "This conversation is not with you"))
                .await;
            return;
        };
        let earlier = crate::profile::earlier(&self.stores.contacts, &rec).await;
        let profile = crate::profile::build(
            &rec,
            &self.app.directory.get(),
            &earlier,
            OffsetDateTime::now_utc(),
        );
        count_command("profile", "done");
        self.reply(ServerMsg::Profile {
            contact_id,
            profile: Box::new(profile),
        })
        .await;
    }

    /// Whether this counsellor may see `rec` in full: they hold it, it is
    /// offered to them (a warm transfer's receivers too), or they monitor it.
    fn may_see(&self, rec: &ContactRecord) -> bool {
        rec.assigned_to() == Some(&self.who)
            || nwd_proto::contact::offered(rec).contains(&self.who)
            || rec
                .transfer
                .as_ref()
                .is_some_and(|t| t.to.contains(&self.who))
            || self.app.monitors.is_monitoring(&rec.id, &self.who)
    }
    /// Supervisors: follow a conversation silently ([`crate::monitor`]).
    /// The live lines are subscribed before the history is read, so none
    /// falls between; every tab of the supervisor gets them.
    async fn monitor(&self, contact_id: ContactId) {
        let span = tracing::info_span!("monitor", contact = %contact_id);
        async {
            let rec =
                kv::get::<ContactRecord>(&self.stores.contacts, &wire::key::contact(&contact_id))
                    .await;
            let rec = match rec {
                Ok(v) => v.value,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the contact");
                    None
                }
            };
            let Some(rec) = rec.filter(|r| !matches!(r.state, ContactState::Resolved { .. }))
            else {
                count_command("monitor", "not-open");
                self.reply(error("not-open", "This conversation is not open"))
                    .await;
                return;
            };
            // Asked again (a reload): start afresh, with the history again.
            self.app.monitors.stop(&contact_id, &self.who);
            let Some(started) = self
                .app
                .monitors
                .start(contact_id, &self.who, &self.app.shutdown)
            else {
                return;
            };
            let lines = crate::monitor::live_lines(&self.app.js, &contact_id).await;
            let history = transcript::load_with_notes(&self.app.js, &contact_id).await;
            let (lines, history) = match (lines, history) {
                (Ok(l), Ok(h)) => (l, h),
                (Err(e), _) => {
                    tracing::warn!(error = %e, "cannot follow the contact");
                    return self.monitor_failed(contact_id).await;
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the history");
                    return self.monitor_failed(contact_id).await;
                }
            };
            let view =
                transcript::contact_view_with_notes(&rec, &self.app.directory.get(), history);
            let shown = crate::monitor::shown_ids(&view);
            count_command("monitor", "done");
            self.broadcast(&ServerMsg::Monitoring {
                contact: Box::new(view.clone()),
            });
            self.app.tasks.spawn(crate::monitor::follow(
                self.app.clone(),
                self.who.clone(),
                view,
                lines,
                shown,
                started,
            ));
        }
        .instrument(span)
        .await;
    }

    async fn monitor_failed(&self, contact_id: ContactId) {
        self.app.monitors.stop(&contact_id, &self.who);
        count_command("monitor", "unavailable");
        self.reply(error(
            "unavailable",
            "Could not follow the conversation; retry",
        ))
        .await;
    }

    async fn stop_monitoring(&self, contact_id: ContactId) {
        let stopped = self.app.monitors.stop(&contact_id, &self.who);
        count_command(
            "stop_monitoring",
            if stopped { "done" } else { "not-monitoring" },
        );
    }
    /// After a reconnect: the counsellor's messages this page missed
    /// (numbered after `last_seq`, up to when this socket opened; later
    /// ones reached it live), in order; or, when they are no longer all
    /// kept, `Resync` and the whole state again.
    async fn resume(&self, last_seq: u64) {
        match self.app.hub.missed(&self.who, last_seq, self.joined_at) {
            Some(missed) => {
                count_command("resume", "replayed");
                for text in missed {
                    let _ = self.tx.send(Frame::Json(text)).await;
                }
            }
            None => {
                count_command("resume", "resync");
                self.reply(ServerMsg::Resync).await;
                let status = self.app.hub.status(&self.who).unwrap_or(Presence::Offline);
                let audience = Audience::of(self.app.directory.get().staff(&self.who));
                self.greet(status, &audience).await;
            }
        }
    }

    /// Hands a conversation on; the note (for the receivers) is at most
    /// [`MAX_HANDOVER_NOTE_CHARS`] characters, and never logged.
    async fn transfer(
        &self,
        contact_id: ContactId,
        target: nwd_proto::handover::TransferTarget,
        mode: nwd_proto::handover::TransferMode,
        note: Option<String>,
    ) {
        let note = note.filter(|n| !n.trim().is_empty());
        if note
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_HANDOVER_NOTE_CHARS)
        {
            count_command("transfer", "bad-note");
            self.reply(error(
                "bad-note",
                format!("Keep the handover note to {MAX_HANDOVER_NOTE_CHARS} characters"),
            ))
            .await;
            return;
        }
        let cmd = RouterCommand::Transfer {
            contact_id,
            counsellor: self.who.clone(),
            target,
            mode,
            note,
        };
        self.forward(cmd).await;
    }

    /// The counsellor has read a person's web-chat messages up to `upto`:
    /// only from the counsellor the contact is assigned to, only for a
    /// message of the contact's chat session (nothing for other channels).
    /// The chat keeps the mark (it survives the page's reloads) and tells
    /// the person's page; a mark not kept is sent again by the page the
    /// next time the conversation is shown.
    async fn read(&self, contact_id: ContactId, upto: String) {
        let Ok(message) = upto.parse::<nwd_proto::MessageId>() else {
            count_command("read", "bad-message");
            return;
        };
        let rec = nwd_runtime::kv::get::<ContactRecord>(
            &self.stores.contacts,
            &wire::key::contact(&contact_id),
        )
        .await
        .ok()
        .and_then(|v| v.value)
        .filter(|r| r.assigned_to() == Some(&self.who));
        let Some(session) = rec.and_then(|r| r.channel.chat_session()) else {
            count_command("read", "refused");
            return;
        };
        // The page's number of the message: found by its id (a search over
        // the numbers a session can reach: off the socket's task).
        let seq = tokio::task::spawn_blocking(move || wire::chat_message_seq(&session, &message))
            .await
            .ok()
            .flatten();
        let Some(upto) = seq else {
            count_command("read", "refused");
            return;
        };
        let request = Envelope::new(nwd_proto::chat::ReadRequest { session, upto }).to_bytes();
        let answer = tokio::time::timeout(
            self.app.settings.command_timeout,
            self.app
                .client
                .request(subjects::chat_read(&session), request.into()),
        )
        .await;
        let kept = match answer {
            Ok(Ok(msg)) => Envelope::<nwd_proto::chat::ReadAnswer>::from_bytes(&msg.payload)
                .is_ok_and(|env| matches!(env.data, nwd_proto::chat::ReadAnswer::Kept { .. })),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read mark not sent");
                false
            }
            Err(_) => false,
        };
        count_command("read", if kept { "done" } else { "chat-unavailable" });
    }

    /// "Counsellor is typing…" for a person in the web chat: only from the
    /// counsellor the contact is assigned to; best effort (core NATS).
    async fn typing(&self, contact_id: ContactId) {
        let rec = nwd_runtime::kv::get::<nwd_proto::contact::ContactRecord>(
            &self.stores.contacts,
            &nwd_proto::wire::key::contact(&contact_id),
        )
        .await
        .ok()
        .and_then(|v| v.value)
        .filter(|r| r.assigned_to() == Some(&self.who));
        let Some(session) = rec.and_then(|r| r.channel.chat_session()) else {
            return;
        };
        if let Err(e) = self
            .app
            .client
            .publish(subjects::chat_typing(&session), bytes::Bytes::new())
            .await
        {
            tracing::debug!(error = %e, "typing signal not sent");
        }
    }

    async fn set_presence(&self, status: Presence) {
        self.app.hub.set_status(&self.who, status);
        match presence::sync(&self.stores.presence, &self.app.hub, &self.who).await {
            Ok(_) => {
                tracing::info!(status = status.as_str(), "presence set");
                count_command("set_presence", "ok");
                self.broadcast(&ServerMsg::Presence { status });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write presence");
                count_command("set_presence", "unavailable");
                self.reply(error("unavailable", "Could not save your status; retry"))
                    .await;
            }
        }
    }

    /// Sends a command to the router and waits for its answer.
    async fn command(&self, cmd: RouterCommand) -> Result<RouterReply, String> {
        let started = Instant::now();
        let payload = Envelope::new(cmd).to_bytes();
        let request = self
            .app
            .client
            .request(subjects::router_command(), payload.into());
        let answer = tokio::time::timeout(self.app.settings.command_timeout, request).await;
        metrics::histogram!("nwd_dashboard_router_request_seconds", "service" => crate::NAME)
            .record(started.elapsed().as_secs_f64());
        match answer {
            Err(_) => Err("timed out".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(msg)) => Envelope::<RouterReply>::from_bytes(&msg.payload)
                .map(|env| env.data)
                .map_err(|e| format!("bad reply: {e}")),
        }
    }

    /// Runs a router command; on `Done` returns true, otherwise tells this socket why not.
    async fn routed(&self, name: &'static str, cmd: RouterCommand) -> bool {
        match self.command(cmd).await {
            Ok(RouterReply::Done) => {
                count_command(name, "done");
                true
            }
            Ok(RouterReply::Refused { reason }) => {
                count_command(name, "refused");
                self.reply(error("refused", reason)).await;
                false
            }
            Err(e) => {
                tracing::warn!(command = name, error = %e, "router unavailable");
                count_command(name, "router-unavailable");
                self.reply(error(
                    "router-unavailable",
                    "The router did not answer; try again",
                ))
                .await;
                false
            }
        }
    }

    async fn accept(&self, contact_id: ContactId) {
        let span = tracing::info_span!("accept", contact = %contact_id);
        async {
            let cmd = RouterCommand::Accept {
                contact_id,
                counsellor: self.who.clone(),
            };
            if !self.routed("accept", cmd).await {
                return;
            }
            match conversation(&self.app, &self.stores, &contact_id).await {
                Ok(Some(contact)) => self.broadcast(&ServerMsg::Conversation { contact }),
                Ok(None) => {
                    self.reply(error("unavailable", "The contact was not found"))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the accepted contact");
                    self.reply(error(
                        "unavailable",
                        "Accepted, but the conversation could not be loaded; reconnect",
                    ))
                    .await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn decline(&self, contact_id: ContactId) {
        let cmd = RouterCommand::Decline {
            contact_id,
            counsellor: self.who.clone(),
        };
        if self
            .routed("decline", cmd)
            .instrument(tracing::info_span!("decline", contact = %contact_id))
            .await
        {
            self.broadcast(&ServerMsg::OfferWithdrawn {
                contact_id,
                reason: WithdrawReason::Declined,
            });
        }
    }

    async fn resolve(
        &self,
        contact_id: ContactId,
        disposition: Option<Disposition>,
        note: Option<String>,
    ) {
        let note = note.filter(|n| !n.trim().is_empty());
        if note
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS)
        {
            count_command("resolve", "bad-note");
            self.reply(error(
                "bad-note",
                format!("Keep the note to {MAX_NOTE_CHARS} characters"),
            ))
            .await;
            return;
        }
        let cmd = RouterCommand::Resolve {
            contact_id,
            counsellor: self.who.clone(),
            disposition: disposition.map(|d| d.as_str().to_owned()),
            note,
        };
        if self
            .routed("resolve", cmd)
            .instrument(tracing::info_span!("resolve", contact = %contact_id))
            .await
        {
            self.broadcast(&ServerMsg::Resolved { contact_id });
        }
    }

    /// "Help the next person": the router assigns the most urgent waiting
    /// contact this counsellor may take and pushes the conversation.
    async fn take_next(&self) {
        let cmd = RouterCommand::TakeNext {
            counsellor: self.who.clone(),
        };
        self.routed("take_next", cmd)
            .instrument(tracing::info_span!("take_next"))
            .await;
    }

    /// A screener's answers, checked by the router against the record
    /// (only the holder; the skip logic) and recorded there; the router
    /// pushes the result (`Assessed`) to every tab of the counsellor.
    async fn assess(&self, contact_id: ContactId, answers: ScreenerAnswers) {
        let cmd = RouterCommand::Assess {
            contact_id,
            counsellor: self.who.clone(),
            answers,
        };
        self.routed("assess", cmd)
            .instrument(tracing::info_span!("assess", contact = %contact_id))
            .await;
    }

    /// A medical-emergency disclosure (42 CFR §2.51): the router checks that
    /// the contact is theirs and the partner a hospital, records it and
    /// notifies the hospital. The nature is never logged.
    async fn medical_emergency(&self, contact_id: ContactId, partner: PartnerId, nature: String) {
        if !valid_emergency_nature(&nature) {
            count_command("medical_emergency", "bad-emergency");
            self.reply(error(
                "bad-emergency",
                format!(
                    "Describe the nature of the emergency (1 to {MAX_EMERGENCY_NATURE_CHARS} characters)"
                ),
            ))
            .await;
            return;
        }
        let cmd = RouterCommand::MedicalEmergency {
            contact_id,
            counsellor: self.who.clone(),
            partner: partner.clone(),
            nature,
        };
        if self
            .routed("medical_emergency", cmd)
            .instrument(
                tracing::info_span!("medical_emergency", contact = %contact_id, partner = %partner),
            )
            .await
        {
            self.broadcast(&ServerMsg::MedicalEmergencyRecorded {
                contact_id,
                partner,
            });
        }
    }

    /// Records an outreach outcome through the router, as the session's
    /// counsellor (the router refuses anyone but the holder).
    async fn outreach_outcome(
        &self,
        contact_id: ContactId,
        outcome: nwd_proto::referral::OutreachOutcome,
    ) {
        let cmd = RouterCommand::OutreachOutcome {
            contact_id,
            counsellor: self.who.clone(),
            outcome,
        };
        if self
            .routed("outreach_outcome", cmd)
            .instrument(tracing::info_span!("outreach_outcome", contact = %contact_id))
            .await
        {
            self.broadcast(&ServerMsg::OutreachOutcomeRecorded {
                contact_id,
                outcome,
            });
        }
    }

    async fn send_reply(&self, contact_id: ContactId, client_id: ClientReplyId, body: String) {
        let span = tracing::info_span!("reply", contact = %contact_id, client = %client_id);
        let result = crate::reply::reply(
            &self.app,
            &self.stores,
            &self.who,
            contact_id,
            client_id,
            body,
        )
        .instrument(span)
        .await;
        match result {
            Ok(replied) => {
                // The outcome first: it settles this tab's pending line
                // before the echo to every tab arrives.
                self.reply(replied.outcome).await;
                match replied.line {
                    Some(line) => {
                        count_command("reply", "sent");
                        self.broadcast(&line);
                    }
                    None => count_command("reply", "resent"),
                }
            }
            Err((code, message)) => {
                count_command("reply", code);
                self.reply(error(code, message)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Kv(#[from] nwd_runtime::kv::KvError),
    #[error("cannot list contacts: {0}")]
    Keys(String),
    #[error(transparent)]
    Transcript(#[from] transcript::TranscriptError),
}

/// A contact with its transcript, as a counsellor sees it.
pub async fn conversation(
    app: &App,
    stores: &Stores,
    contact_id: &ContactId,
) -> Result<Option<ContactView>, LoadError> {
    let rec = kv::get::<ContactRecord>(&stores.contacts, &wire::key::contact(contact_id))
        .await?
        .value;
    let Some(rec) = rec else { return Ok(None) };
    let transcript = transcript::load_with_notes(&app.js, contact_id).await?;
    Ok(Some(transcript::contact_view_with_notes(
        &rec,
        &app.directory.get(),
        transcript,
    )))
}

/// Everything open for `who`: conversations assigned to them, then offers
/// (most urgent first, then longest waiting).
pub async fn snapshot(
    app: &App,
    stores: &Stores,
    who: &CounsellorId,
) -> Result<Vec<ServerMsg>, LoadError> {
    let mut keys = stores
        .contacts
        .keys()
        .await
        .map_err(|e| LoadError::Keys(e.to_string()))?;
    let mut mine = Vec::new();
    let mut offered = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| LoadError::Keys(e.to_string()))?;
        let rec = match kv::get::<ContactRecord>(&stores.contacts, &key).await {
            Ok(v) => v.value,
            Err(e) => {
                tracing::warn!(key, error = %e, "skipping an unreadable contact record");
                continue;
            }
        };
        let Some(rec) = rec else { continue };
        match &rec.state {
            ContactState::Assigned { counsellor, .. } if counsellor == who => mine.push(rec),
            ContactState::Offered { to, .. } if to.contains(who) => offered.push(rec),
            _ => {}
        }
    }
    offered.sort_by(|a, b| {
        b.risk
            .cmp(&a.risk)
            .then(a.waiting_since().cmp(&b.waiting_since()))
    });
    let mut out = Vec::with_capacity(mine.len() + offered.len());
    for rec in mine {
        let transcript = transcript::load_with_notes(&app.js, &rec.id).await?;
        let contact = transcript::contact_view_with_notes(&rec, &app.directory.get(), transcript);
        out.push(ServerMsg::Conversation { contact });
    }
    for rec in offered {
        let transcript = transcript::load_with_notes(&app.js, &rec.id).await?;
        let contact = transcript::contact_view_with_notes(&rec, &app.directory.get(), transcript);
        out.push(ServerMsg::Offer { contact });
    }
    Ok(out)
}
