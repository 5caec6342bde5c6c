//! The referrals service: closes the loop of partner referrals.
//!
//! One job: consume the router's [`OutreachUpdate`]s (durable consumer
//! `referrals-status` on CONTACTS) and move the referral's
//! [`ReferralRecord`] in the `referrals` bucket by compare-and-swap
//! ([`status::advance`]: a lost race re-reads and re-decides). After the
//! write it publishes the record's version as a [`PartnerTaskUpdate`]
//! (OUTBOUND, `Nats-Msg-Id` = `task:<referral>:<version>`), and only then
//! acks the update. An update that changes nothing (redelivered, late, or
//! redelivered after a crash between the write and the publish)
//! republishes the record's current version under the same id: JetStream
//! drops it as a duplicate if it was stored, and stores it if it was not,
//! so each version reaches the notifier once. An update for a referral not
//! (yet) in the bucket is retried a few times, then dead-lettered.

pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use nwd_proto::referral::{OutreachUpdate, PartnerTaskUpdate, ReferralRecord};
use nwd_proto::streams::{self, buckets, consumers};
use nwd_proto::{Envelope, subjects, wire};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::directory::Live;
use nwd_runtime::kv::{self, Cas};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::ServiceConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Service name in logs and metric labels.
pub const NAME: &str = "referrals";

/// How long a failed write or publish waits before the update is tried again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "nwd-referrals",
    about = "No Wrong Door referrals: Task status of partner referrals"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_REFERRALS_METRICS_ADDR",
        default_value = "127.0.0.1:9108"
    )]
    pub metrics_addr: SocketAddr,
    /// The directory file (the line's and the partners' names for the Task).
    #[arg(
        long,
        env = "NWD_DIRECTORY",
        default_value = "deploy/local/demo/directory.toml"
    )]
    pub directory: PathBuf,
    /// Deliveries of an update whose referral is not in the bucket before it
    /// is dead-lettered (the gateway's record may still be racing in).
    #[arg(long, env = "NWD_REFERRALS_UNKNOWN_RETRIES", default_value_t = 5)]
    pub unknown_retries: u32,
    /// Delay between those deliveries (milliseconds).
    #[arg(long, env = "NWD_REFERRALS_UNKNOWN_RETRY_MS", default_value_t = 2_000)]
    pub unknown_retry_ms: u64,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Directory(#[from] nwd_runtime::directory::LoadError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the referrals service until `shutdown`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let directory = Live::new(nwd_runtime::directory::load(&config.directory)?);
    let readiness = Readiness::new([
        nwd_runtime::directory::READY.to_owned(),
        format!("consumer:{}", consumers::REFERRALS_STATUS),
    ]);
    let client = bus::connect(&config.nats, NAME).await?;
    readiness.watch_client(client.clone());
    let js = bus::jetstream(client, &config.nats);
    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));
    let opened = async {
        let streams = [streams::CONTACTS, streams::OUTBOUND, streams::DEADLETTER];
        bus::wait_for(
            &js,
            &streams,
            &[buckets::REFERRALS, buckets::DIRECTORY],
            &shutdown,
        )
        .await?;
        Ok::<_, BusError>((
            bus::open_bucket_with_retry(&js, buckets::REFERRALS, &shutdown).await?,
            bus::open_bucket_with_retry(&js, buckets::DIRECTORY, &shutdown).await?,
        ))
    };
    let Ok((referrals, directory_bucket)) = opened.await else {
        return Ok(ops::join_server(server).await?);
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(nwd_runtime::directory::follow(
        directory_bucket,
        directory.clone(),
        readiness.clone(),
        NAME,
        shutdown.clone(),
    ));
    tasks.spawn(consume::run(
        js.clone(),
        ConsumerSpec::new(
            NAME,
            streams::CONTACTS,
            consumers::REFERRALS_STATUS,
            vec![subjects::contact_outreach_update_all()],
        ),
        Arc::new(StatusHandler {
            js,
            referrals,
            directory,
            unknown_retries: config.unknown_retries,
            unknown_retry: Duration::from_millis(config.unknown_retry_ms),
        }),
        readiness,
        shutdown.clone(),
    ));
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok(ops::join_server(server).await?)
}

/// Outreach updates → the referral's Task status.
pub struct StatusHandler {
    js: jetstream::Context,
    referrals: jetstream::kv::Store,
    directory: Live,
    unknown_retries: u32,
    unknown_retry: Duration,
}

/// What the compare-and-swap came to.
enum Step {
    /// No such referral in the bucket.
    Unknown,
    /// The record moved to this version.
    Changed(ReferralRecord),
    /// Nothing to change; the record as it is.
    Unchanged(ReferralRecord),
}

impl Handler for StatusHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        let Ok(env) = Envelope::<OutreachUpdate>::from_bytes(&msg.payload) else {
            return Outcome::Reject("undecodable");
        };
        let update = env.data;
        let change = update.change.name();
        let key = wire::key::referral(&update.referral_id);
        let decided = kv::cas(
            &self.referrals,
            &key,
            |current: Option<ReferralRecord>| match current {
                None => Cas::Keep(Step::Unknown),
                Some(record) => match status::advance(&record, &update) {
                    Some(next) => Cas::Write(next.clone(), Step::Changed(next)),
                    None => Cas::Keep(Step::Unchanged(record)),
                },
            },
        )
        .await;
        let record = match decided {
            // A record that is not a ReferralRecord will not mend itself:
            // supervisors see the update in DEADLETTER and replay it once
            // the record is fixed.
            Err(kv::KvError::Corrupt { .. }) => {
                tracing::error!(referral = %update.referral_id, "the referral's record is unreadable");
                return Outcome::Reject("corrupt_record");
            }
            Err(e) => {
                tracing::warn!(referral = %update.referral_id, error = %e, "cannot move the referral; retrying");
                return Outcome::Retry(RETRY);
            }
            Ok((Step::Unknown, _)) => {
                let delivered = msg.info().map_or(1, |i| i.delivered);
                count(change, "unknown");
                if delivered > i64::from(self.unknown_retries) {
                    tracing::error!(referral = %update.referral_id, change, "outreach update for an unknown referral");
                    return Outcome::Reject("unknown_referral");
                }
                return Outcome::Retry(self.unknown_retry);
            }
            Ok((Step::Changed(record), _)) => {
                count(change, "changed");
                metrics::counter!(
                    "nwd_referral_status_changes_total",
                    "partner" => record.partner.to_string(),
                    "status" => record.status.as_str()
                )
                .increment(1);
                tracing::info!(
                    referral = %record.id,
                    change,
                    status = record.status.as_str(),
                    version = record.version,
                    "referral status changed"
                );
                record
            }
            Ok((Step::Unchanged(record), _)) => {
                count(change, "unchanged");
                // Version 1 is the gateway's `requested`: the partner has its 202.
                if record.version <= 1 {
                    return Outcome::Ack;
                }
                // Maybe written by a delivery that crashed before it published:
                // the same id makes this a no-op if it did publish.
                record
            }
        };
        match self.announce(&record).await {
            Ok(_) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(referral = %record.id, version = record.version, error = %e, "cannot publish the Task update; retrying");
                Outcome::Retry(RETRY)
            }
        }
    }

    /// One referral's updates in order (its contact's subject would do too).
    fn lane_key(&self, msg: &jetstream::Message) -> u64 {
        consume::hash(msg.subject.as_str())
    }
}

impl StatusHandler {
    /// Publishes the record's version for the partner's callback.
    async fn announce(
        &self,
        record: &ReferralRecord,
    ) -> Result<bus::Published, jetstream::context::PublishError> {
        let event = task_update(record, &self.directory);
        bus::publish(
            &self.js,
            subjects::outbound_partner_task(&record.id),
            &wire::msg_id::partner_task(&record.id, record.version),
            &Envelope::new(event),
        )
        .await
    }
}

/// The [`PartnerTaskUpdate`] of a record's version, the Task named with the
/// line's and the partner's names from the live directory.
pub fn task_update(record: &ReferralRecord, directory: &Live) -> PartnerTaskUpdate {
    let dir = directory.get();
    let partner_name = dir
        .partners
        .iter()
        .find(|p| p.id == record.partner)
        .map_or_else(|| record.partner.to_string(), |p| p.name.clone());
    PartnerTaskUpdate {
        referral_id: record.id,
        partner: record.partner.clone(),
        version: record.version,
        task: record.task(&dir.line.name, &partner_name),
        at: record.last_modified,
    }
}

fn count(change: &'static str, outcome: &'static str) {
    metrics::counter!("nwd_referral_updates_total", "change" => change, "outcome" => outcome)
        .increment(1);
}
