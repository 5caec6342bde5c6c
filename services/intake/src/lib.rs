//! Intake: turns inbound SMS and web-chat messages into contacts (chat:
//! [`chat`]).
//!
//! Each sender has at most one open contact, kept as a [`ThreadRecord`] in
//! the `threads` bucket under [`Pseudonymiser::thread_key`]: a keyed
//! pseudonym of the sender's address (a phone number, or a channel address
//! such as `whatsapp:+1…`), never the address itself. A message from a sender
//! without an open thread opens a new contact; later messages join it until
//! the contact is resolved (`ContactResolved` closes the thread). Every
//! message is published to `nwd.v1.contact.message.<contact_id>` with
//! `Nats-Msg-Id` = `msg:<message_id>`, and the message id is derived from
//! Twilio's MessageSid, so a redelivery never creates a second message.
//!
//! A contact is never refused: an unknown line number or sender is still
//! taken (door `None`, patient `None`). A number that is neither the line's
//! nor any partner's door is a directory mistake: the message goes to the
//! shared pool all the same and operators are alerted
//! (`nwd_intake_unknown_line_total`, a warning without the number, an
//! `ops.alert`). Any bus or KV error retries the message; only an
//! undecodable message is terminated.
//!
//! Partner referrals (consumer `intake-referral`) become outreach contacts:
//! the contact id is derived from the referral, the person's thread is
//! opened on it (so their replies join it) and [`OutreachOpened`] is
//! published; see `docs/adr/0014-outreach.md`.

pub mod chat;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::contact::ThreadRecord;
use nwd_proto::deadletter::OpsAlert;
use nwd_proto::envelope::DecodeError;
use nwd_proto::events::{Channel, ContactMessage, ContactResolved, InboundSms};
use nwd_proto::pseudonym::PseudonymKeyError;
use nwd_proto::referral::{InboundReferral, OutreachOpened};
use nwd_proto::risk::Language;
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::wire;
use nwd_proto::{
    Address, ContactId, Envelope, MessageId, MessageSid, Pseudonymiser, ReferralId, subjects,
};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::kv::{self, Cas, KvError};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::{Secret, ServiceConfig};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Service name for logs and metric labels.
pub const NAME: &str = "intake";

/// Delay before a message that hit a bus or KV error is redelivered.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Intake settings.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-intake", about = "Threads inbound SMS into contacts")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_INTAKE_METRICS_ADDR",
        default_value = "127.0.0.1:9101"
    )]
    pub metrics_addr: SocketAddr,
    /// The directory file (line numbers, partner doors, patients).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// Secret key of the pseudonyms that key senders' threads (at least 32
    /// bytes, e.g. 64 random hex characters). No default: changing it opens
    /// a new contact at each sender's next message.
    #[arg(long, env = "NWD_PSEUDONYM_KEY")]
    pub pseudonym_key: Secret,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

/// Why intake stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NWD_PSEUDONYM_KEY: {0}")]
    PseudonymKey(#[from] PseudonymKeyError),
    #[error(transparent)]
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot open bucket {bucket}: {source}")]
    Bucket {
        bucket: &'static str,
        source: jetstream::context::KeyValueError,
    },
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs intake until `shutdown`: loads the directory (a bad file is an
/// error), sets up the bus, runs both consumers and serves the ops routes on
/// `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pseudonyms = Pseudonymiser::new(config.pseudonym_key.expose().as_bytes())?;
    let directory =
        nwd_runtime::directory::Live::new(nwd_runtime::directory::load(&config.directory)?);
    tracing::info!(
        partners = directory.get().partners.len(),
        patients = directory.get().patients.len(),
        "directory loaded"
    );

    let readiness = Readiness::new([
        "bus".to_owned(),
        nwd_runtime::directory::READY.to_owned(),
        format!("consumer:{}", consumers::INTAKE_SMS),
        format!("consumer:{}", consumers::INTAKE_RESOLVED),
        format!("consumer:{}", consumers::INTAKE_REFERRAL),
        format!("consumer:{}", consumers::INTAKE_CHAT),
    ]);
    let client = bus::connect(&config.nats, NAME).await?;
    readiness.watch_client(client.clone());
    let js = bus::jetstream(client, &config.nats);

    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));

    let threads = match async {
        let (streams, buckets) = (
            [streams::INBOUND, streams::CONTACTS],
            [buckets::THREADS, buckets::DIRECTORY],
        );
        bus::wait_for(&js, &streams, &buckets, &shutdown).await?;
        bus::open_bucket_with_retry(&js, buckets::THREADS, &shutdown).await
    }
    .await
    .map_err(Error::Bus)
    {
        Ok(threads) => threads,
        Err(Error::Bus(BusError::Stopped)) => return Ok(ops::join_server(server).await?),
        Err(e) => {
            shutdown.cancel();
            let _ = server.await;
            return Err(e);
        }
    };
    readiness.set("bus", true);

    let mut tasks = JoinSet::new();
    // The line's storage gauges (`nwd_stream_bytes` …) come from the intake:
    // it reads INBOUND, the stream whose filling up turns every webhook into
    // a 503, and no line works without it, so it is always running.
    tasks.spawn(bus::export_storage(
        js.clone(),
        bus::Layout::from(&config.nats),
        shutdown.clone(),
    ));
    match bus::bucket(&js, buckets::DIRECTORY).await {
        Ok(store) => {
            tasks.spawn(nwd_runtime::directory::follow(
                store,
                directory.clone(),
                readiness.clone(),
                NAME,
                shutdown.clone(),
            ));
        }
        Err(e) => {
            // The file's directory stays in force; ready anyway (a contact
            // is never refused for want of a directory update).
            tracing::warn!(error = %e, "cannot open the directory bucket; using the file");
            readiness.set(nwd_runtime::directory::READY, true);
        }
    }
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::INBOUND,
            consumers::INTAKE_CHAT,
            vec![subjects::inbound_chat_all()],
        ),
        chat::handler(
            js.clone(),
            threads.clone(),
            directory.clone(),
            pseudonyms.clone(),
        ),
        readiness.clone(),
        shutdown.clone(),
    ));
    let sms = Arc::new(SmsHandler {
        js: js.clone(),
        threads: threads.clone(),
        directory: directory.clone(),
        pseudonyms: pseudonyms.clone(),
        seen: Mutex::new(Seen::default()),
    });
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::INBOUND,
            consumers::INTAKE_REFERRAL,
            vec![subjects::inbound_referral()],
        ),
        Arc::new(ReferralHandler {
            js: js.clone(),
            threads: threads.clone(),
            directory,
            pseudonyms: pseudonyms.clone(),
        }),
        readiness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::INBOUND,
            consumers::INTAKE_SMS,
            vec![subjects::inbound_sms()],
        ),
        sms,
        readiness.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::CONTACTS,
            consumers::INTAKE_RESOLVED,
            vec![subjects::contact_resolved_all()],
        ),
        Arc::new(ResolvedHandler {
            threads,
            pseudonyms,
        }),
        readiness.clone(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok(ops::join_server(server).await?)
}

/// The message id of an inbound SMS, derived from its MessageSid: a ULID
/// with the millisecond timestamp of `received_at` and the 80 random bits
/// taken from SHA-256 of the MessageSid. A redelivery, or a re-post of the
/// same SMS after the stream's dedupe window, yields the same id (and so the
/// same `Nats-Msg-Id` and the same message downstream).
pub fn message_id_for(sid: &MessageSid, received_at: OffsetDateTime) -> MessageId {
    message_id_from(sid.as_str(), received_at)
}

/// A message id with the millisecond timestamp of `received_at` and 80 bits
/// of SHA-256 of `name` (a MessageSid, or `chat:<session>:<seq>`).
pub fn message_id_from(name: &str, received_at: OffsetDateTime) -> MessageId {
    wire::received_message_id(name, received_at)
}

/// Decides the thread a message joins (pure, for `kv::cas`).
///
/// No thread, or a closed one → a new contact opened by this message. One
/// exception: a message received *before* the thread was closed (a late
/// message or the redelivery of an old one) still belongs to the closed
/// contact — the router re-opens a resolved contact that gets a message, so
/// it is never lost, and a redelivered message never opens a second contact.
pub fn decide_thread(
    current: Option<ThreadRecord>,
    message_id: MessageId,
    received_at: OffsetDateTime,
) -> Cas<ThreadRecord, ThreadRecord> {
    match current {
        Some(t) if t.closed_at.is_none_or(|closed| received_at < closed) => Cas::Keep(t),
        previous => {
            let t = ThreadRecord {
                contact_id: ContactId::new(),
                opened_at: received_at,
                opened_by: message_id,
                closed_at: None,
                previous: previous.map(|p| p.contact_id),
            };
            Cas::Write(t.clone(), t)
        }
    }
}

/// Where a referral's outreach goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralThread {
    /// The person's thread is (now) the referral's own outreach contact.
    Opened,
    /// The person already has this contact open (they wrote to the line,
    /// or another referral reaches out to them): the referral joins it.
    Joins(ContactId),
}

/// Decides the person's thread for a referral (pure, for `kv::cas`): no
/// thread or a closed one → the referral's own contact opens it; the
/// referral's own thread (a redelivery) is kept; another open contact is
/// joined, so the person keeps one conversation with the line.
pub fn decide_referral_thread(
    current: Option<ThreadRecord>,
    referral: &ReferralId,
    received_at: OffsetDateTime,
) -> Cas<ThreadRecord, ReferralThread> {
    let contact_id = wire::outreach_contact(referral);
    match current {
        Some(t) if t.contact_id == contact_id => Cas::Keep(ReferralThread::Opened),
        Some(t) if t.closed_at.is_none() => Cas::Keep(ReferralThread::Joins(t.contact_id)),
        previous => Cas::Write(
            ThreadRecord {
                contact_id,
                opened_at: received_at,
                opened_by: wire::outreach_thread_opener(referral),
                closed_at: None,
                previous: previous.map(|p| p.contact_id),
            },
            ReferralThread::Opened,
        ),
    }
}

/// The door label of `nwd_contacts_opened_total`: the partner's id, `line`
/// for the line's own numbers, `unknown` for a number nobody has.
pub fn door_label(door: Option<&nwd_proto::PartnerId>, own_line: bool) -> String {
    match door {
        Some(p) => p.to_string(),
        None if own_line => "line".to_owned(),
        None => "unknown".to_owned(),
    }
}

/// Decides how a resolution changes a thread (pure, for `kv::cas`): only the
/// open thread of the resolved contact is closed; anything else is kept, so
/// a redelivered or stale resolution changes nothing.
pub fn decide_close(
    current: Option<ThreadRecord>,
    contact_id: ContactId,
    at: OffsetDateTime,
) -> Cas<ThreadRecord, bool> {
    match current {
        Some(t) if t.contact_id == contact_id && t.closed_at.is_none() => Cas::Write(
            ThreadRecord {
                closed_at: Some(at),
                ..t
            },
            true,
        ),
        _ => Cas::Keep(false),
    }
}

/// A decode failure without the payload (it may hold personal data).
pub(crate) fn describe(e: &DecodeError) -> String {
    match e {
        DecodeError::Json(j) => format!(
            "malformed envelope ({:?} at line {} column {})",
            j.classify(),
            j.line(),
            j.column()
        ),
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Consumer `intake-sms`: INBOUND `nwd.v1.inbound.sms` → CONTACTS.
struct SmsHandler {
    js: jetstream::Context,
    threads: jetstream::kv::Store,
    directory: nwd_runtime::directory::Live,
    pseudonyms: Pseudonymiser,
    /// Thread keys this instance has met recently.
    seen: Mutex<Seen>,
}

/// Thread keys met recently (bounded, oldest forgotten first). A sender not
/// among them is most likely new, so their thread is created without reading
/// first: the first message of a new contact saves a round trip. A wrong
/// guess (a known sender after a restart) costs one failed create.
#[derive(Debug, Default)]
pub struct Seen {
    keys: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Seen {
    const KEEP: usize = 50_000;

    /// Whether `key` was met before; remembers it either way.
    pub fn check(&mut self, key: &str) -> bool {
        if self.keys.contains(key) {
            return true;
        }
        self.keys.insert(key.to_owned());
        self.order.push_back(key.to_owned());
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        false
    }
}

impl SmsHandler {
    async fn process(&self, sms: &InboundSms) -> Result<(), HandleError> {
        let message_id = message_id_for(&sms.message_sid, sms.received_at);
        let key = self.pseudonyms.inbound_thread_key(sms);
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&key);
        let guess = (!seen).then_some(kv::Versioned {
            value: None,
            revision: 0,
        });
        let (thread, _) = kv::cas_from(&self.threads, &key, guess, |current| {
            decide_thread(current, message_id, sms.received_at)
        })
        .await?;
        let opens_contact = thread.opened_by == message_id;
        let directory = self.directory.get();
        // A channel address of a number (`whatsapp:+1…`) is that number's
        // door and person.
        let door = sms
            .to
            .phone()
            .and_then(|n| directory.partner_for_number(&n).map(|p| p.id.clone()));
        let patient = sms
            .from
            .phone()
            .and_then(|n| directory.patient_by_phone(&n).map(|p| p.id.clone()));
        let channel = Channel::Sms {
            patient: sms.from.clone(),
            line: sms.to.clone(),
        };
        let channel_kind = channel.kind();
        let event_door = door.clone();
        let event = ContactMessage {
            contact_id: thread.contact_id,
            message_id,
            channel,
            door,
            patient,
            body: sms.body.clone(),
            received_at: sms.received_at,
            opens_contact,
            previous: thread.previous.filter(|_| opens_contact),
            quick_exit: false,
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
            message_sid = %sms.message_sid,
            opens_contact,
            duplicate = published.duplicate,
            "contact message published"
        );
        // No wrong door: a number nobody has is still served (shared pool),
        // and whoever keeps the directory is told (never the number).
        let own_line = sms
            .to
            .phone()
            .is_some_and(|n| directory.line.numbers.contains(&n));
        let unknown_line = event_door.is_none() && !own_line;
        if unknown_line && !published.duplicate {
            metrics::counter!("nwd_intake_unknown_line_total", "service" => NAME).increment(1);
            tracing::warn!(
                contact_id = %thread.contact_id,
                message_id = %message_id,
                "SMS to a number that is neither the line's nor a partner's door; taken into the shared pool: fix the directory"
            );
            if opens_contact {
                let alert = Envelope::new(OpsAlert::UnknownLineNumber {
                    service: NAME.to_owned(),
                });
                if let Err(e) = self
                    .js
                    .client()
                    .publish(subjects::ops_alert(), alert.to_bytes().into())
                    .await
                {
                    tracing::warn!(error = %e, "cannot alert supervisors of an unknown line number");
                }
            }
        }
        if opens_contact && !published.duplicate {
            let door = door_label(event_door.as_ref(), own_line);
            metrics::counter!("nwd_contacts_opened_total", "service" => NAME, "channel" => channel_kind, "door" => door)
                .increment(1);
        }
        Ok(())
    }
}

/// Consumer `intake-referral`: INBOUND `nwd.v1.inbound.referral` → an
/// outreach contact (CONTACTS `nwd.v1.contact.outreach.<id>`).
struct ReferralHandler {
    js: jetstream::Context,
    threads: jetstream::kv::Store,
    directory: nwd_runtime::directory::Live,
    pseudonyms: Pseudonymiser,
}

#[derive(Debug, thiserror::Error)]
enum ReferralError {
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// The line has no number of its own to text the person from.
    #[error("the directory gives the line no number of its own")]
    NoLineNumber,
}

impl From<KvError> for ReferralError {
    fn from(e: KvError) -> Self {
        ReferralError::Handle(e.into())
    }
}

impl ReferralHandler {
    async fn process(&self, referral: &InboundReferral) -> Result<ContactId, ReferralError> {
        let directory = self.directory.get();
        // The line texts the person from its own number, never a partner's door.
        let line: Address = directory
            .line
            .numbers
            .first()
            .cloned()
            .ok_or(ReferralError::NoLineNumber)?
            .into();
        let person = &referral.patient.phone;
        let key = self.pseudonyms.thread_key(person);
        let (thread, _) = kv::cas(&self.threads, &key, |current| {
            decide_referral_thread(current, &referral.referral_id, referral.received_at)
        })
        .await?;
        let (contact_id, joins) = match thread {
            ReferralThread::Opened => (wire::outreach_contact(&referral.referral_id), false),
            ReferralThread::Joins(open) => (open, true),
        };
        let known = person.phone().and_then(|n| directory.patient_by_phone(&n));
        let lang = referral
            .patient
            .language
            .or(known.map(|p| p.language))
            .unwrap_or(Language::En);
        let event = OutreachOpened {
            contact_id,
            referral_id: referral.referral_id,
            channel: Channel::Sms {
                patient: person.clone(),
                line,
            },
            door: referral.partner.clone(),
            patient: known.map(|p| p.id.clone()),
            patient_name: referral.patient.name.clone(),
            lang,
            priority: referral.priority,
            offer_at: referral.offer_at,
            due_at: referral.due_at,
            reason: referral.reason.clone(),
            received_at: referral.received_at,
        };
        let published = bus::publish(
            &self.js,
            subjects::contact_outreach(&contact_id),
            &wire::msg_id::outreach_opened(&referral.referral_id),
            &Envelope::new(event),
        )
        .await
        .map_err(HandleError::from)?;
        tracing::info!(
            contact_id = %contact_id,
            referral_id = %referral.referral_id,
            partner = %referral.partner,
            joins,
            duplicate = published.duplicate,
            "outreach opened"
        );
        if !published.duplicate && !joins {
            metrics::counter!("nwd_contacts_opened_total", "service" => NAME, "channel" => "outreach", "door" => referral.partner.to_string())
                .increment(1);
        }
        Ok(contact_id)
    }
}

impl Handler for ReferralHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<InboundReferral>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable referral");
                return Outcome::Reject("undecodable");
            }
        };
        match self.process(&env.data).await {
            Ok(_) => Outcome::Ack,
            // Parked in DEADLETTER (supervisors alerted), never dropped: it
            // is replayed once the directory gives the line a number.
            Err(ReferralError::NoLineNumber) => {
                tracing::error!(referral_id = %env.data.referral_id, "referral cannot be served: the line has no number");
                Outcome::Reject("no line number")
            }
            Err(e) => {
                tracing::warn!(referral_id = %env.data.referral_id, error = %e, "referral intake failed; retrying");
                Outcome::Retry(RETRY_DELAY)
            }
        }
    }

    /// One lane per person, like their SMS.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        match Envelope::<InboundReferral>::from_bytes(&msg.payload) {
            Ok(env) => consume::hash(&self.pseudonyms.thread_key(&env.data.patient.phone)),
            Err(_) => consume::hash(msg.subject.as_str()),
        }
    }
}

impl Handler for SmsHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<InboundSms>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable inbound SMS");
                return Outcome::Reject("undecodable");
            }
        };
        match self.process(&env.data).await {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(message_sid = %env.data.message_sid, error = %e, "intake failed; retrying");
                Outcome::Retry(RETRY_DELAY)
            }
        }
    }

    /// One lane per sender, so a person's messages are threaded in order.
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        match Envelope::<InboundSms>::from_bytes(&msg.payload) {
            Ok(env) => consume::hash(&self.pseudonyms.inbound_thread_key(&env.data)),
            Err(_) => consume::hash(msg.subject.as_str()),
        }
    }
}

/// Consumer `intake-resolved`: closes the sender's thread when its contact is resolved.
struct ResolvedHandler {
    threads: jetstream::kv::Store,
    pseudonyms: Pseudonymiser,
}

impl Handler for ResolvedHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let env = match Envelope::<ContactResolved>::from_bytes(&msg.payload) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "undecodable contact resolution");
                return Outcome::Reject("undecodable");
            }
        };
        let ev = env.data;
        let key = match &ev.channel {
            Channel::Sms { patient, .. } => self.pseudonyms.thread_key(patient),
            Channel::Chat { session, .. } => self.pseudonyms.chat_thread_key(session),
        };
        match kv::cas(&self.threads, &key, |current| {
            decide_close(current, ev.contact_id, ev.at)
        })
        .await
        {
            Ok((closed, _)) => {
                tracing::info!(contact_id = %ev.contact_id, closed, "contact resolved");
                Outcome::Ack
            }
            Err(e) => {
                tracing::warn!(contact_id = %ev.contact_id, error = %e, "cannot close thread; retrying");
                Outcome::Retry(RETRY_DELAY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_remembers_keys_and_forgets_the_oldest_beyond_its_bound() {
        let mut seen = Seen::default();
        assert!(!seen.check("sms.a"));
        assert!(seen.check("sms.a"));
        for i in 0..Seen::KEEP {
            seen.check(&format!("sms.{i}"));
        }
        assert!(!seen.check("sms.a"), "the oldest was forgotten");
        assert!(seen.check(&format!("sms.{}", Seen::KEEP - 1)));
        assert_eq!(seen.keys.len(), Seen::KEEP);
        assert_eq!(seen.order.len(), Seen::KEEP);
    }
    use time::macros::datetime;

    fn sid(s: &str) -> MessageSid {
        MessageSid::parse(s).unwrap()
    }

    #[test]
    fn message_id_is_deterministic_and_time_ordered() {
        let at = datetime!(2026-11-24 10:00:00.123 UTC);
        let a = sid("SM0123456789abcdef0123456789abcdef");
        let b = sid("SM0123456789abcdef0123456789abcdee");
        assert_eq!(message_id_for(&a, at), message_id_for(&a, at));
        assert_ne!(message_id_for(&a, at), message_id_for(&b, at));
        let ulid = message_id_for(&a, at).ulid();
        assert_eq!(
            i128::from(ulid.timestamp_ms()),
            at.unix_timestamp_nanos() / 1_000_000
        );
        let earlier = message_id_for(&b, datetime!(2026-11-24 09:00 UTC));
        assert!(earlier < message_id_for(&a, at));
        // Before the epoch: clamped, never a panic.
        let _ = message_id_for(&a, datetime!(1960-01-01 0:00 UTC));
    }

    #[test]
    fn thread_decisions() {
        let t0 = datetime!(2026-11-24 10:00 UTC);
        let m1 = MessageId::new();
        let Cas::Write(open, _) = decide_thread(None, m1, t0) else {
            panic!("no thread must open one")
        };
        assert_eq!(open.opened_by, m1);
        assert!(matches!(
            decide_thread(Some(open.clone()), MessageId::new(), t0),
            Cas::Keep(t) if t == open
        ));
        let closed = ThreadRecord {
            closed_at: Some(datetime!(2026-11-24 11:00 UTC)),
            ..open.clone()
        };
        // A message from before the close stays with the old contact.
        assert!(matches!(
            decide_thread(Some(closed.clone()), m1, t0),
            Cas::Keep(t) if t.contact_id == open.contact_id
        ));
        // A message after the close opens a new contact.
        let m2 = MessageId::new();
        let Cas::Write(new, _) = decide_thread(Some(closed), m2, datetime!(2026-11-24 12:00 UTC))
        else {
            panic!("closed thread must reopen")
        };
        assert_ne!(new.contact_id, open.contact_id);
        assert_eq!(new.opened_by, m2);
        // It remembers the contact it replaced (for "earlier contacts").
        assert_eq!(new.previous, Some(open.contact_id));
        assert_eq!(open.previous, None);
    }

    #[test]
    fn close_decisions_are_idempotent() {
        let t = ThreadRecord {
            contact_id: ContactId::new(),
            opened_at: datetime!(2026-11-24 10:00 UTC),
            opened_by: MessageId::new(),
            closed_at: None,
            previous: None,
        };
        let at = datetime!(2026-11-24 11:00 UTC);
        assert!(matches!(
            decide_close(None, t.contact_id, at),
            Cas::Keep(false)
        ));
        assert!(matches!(
            decide_close(Some(t.clone()), ContactId::new(), at),
            Cas::Keep(false)
        ));
        let Cas::Write(closed, true) = decide_close(Some(t.clone()), t.contact_id, at) else {
            panic!("must close")
        };
        assert_eq!(closed.closed_at, Some(at));
        assert!(matches!(
            decide_close(Some(closed), t.contact_id, at),
            Cas::Keep(false)
        ));
    }

    #[test]
    fn referral_thread_decisions() {
        let at = datetime!(2026-11-24 10:00 UTC);
        let referral = ReferralId::new();
        let own = wire::outreach_contact(&referral);
        let Cas::Write(opened, ReferralThread::Opened) =
            decide_referral_thread(None, &referral, at)
        else {
            panic!("no thread: the referral opens one")
        };
        assert_eq!(opened.contact_id, own);
        assert_eq!(opened.opened_by, wire::outreach_thread_opener(&referral));
        // A redelivery keeps its own thread, open or closed.
        assert!(matches!(
            decide_referral_thread(Some(opened.clone()), &referral, at),
            Cas::Keep(ReferralThread::Opened)
        ));
        let closed_own = ThreadRecord {
            closed_at: Some(at),
            ..opened.clone()
        };
        assert!(matches!(
            decide_referral_thread(Some(closed_own), &referral, at),
            Cas::Keep(ReferralThread::Opened)
        ));
        // Another open contact is joined; a closed one is replaced.
        let other = ThreadRecord {
            contact_id: ContactId::new(),
            ..opened
        };
        assert!(matches!(
            decide_referral_thread(Some(other.clone()), &referral, at),
            Cas::Keep(ReferralThread::Joins(c)) if c == other.contact_id
        ));
        let closed_other = ThreadRecord {
            closed_at: Some(at),
            ..other
        };
        assert!(matches!(
            decide_referral_thread(Some(closed_other), &referral, at),
            Cas::Write(t, ReferralThread::Opened) if t.contact_id == own
        ));
    }

    #[test]
    fn door_labels_are_bounded() {
        let p = nwd_proto::PartnerId::parse("eastside-clinic").unwrap();
        assert_eq!(door_label(Some(&p), false), "eastside-clinic");
        assert_eq!(door_label(None, true), "line");
        assert_eq!(door_label(None, false), "unknown");
    }

    #[test]
    fn decode_errors_never_echo_the_payload() {
        let e = Envelope::<InboundSms>::from_bytes(br#"{"id": "+15005550142"}"#).unwrap_err();
        assert!(!describe(&e).contains("5550142"));
    }
}
