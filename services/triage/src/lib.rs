//! Triage: scores every contact message for risk.
//!
//! Consumes `contact.message.*` from the CONTACTS stream, runs the rulebook
//! engine ([`engine::Engine`]) over the body, and publishes
//! `contact.triaged.<contact_id>` ([`MessageTriaged`]) with
//! `Nats-Msg-Id = triaged:<message_id>`, so a redelivered message yields one
//! event. The message is acked only after the publish is acked.
//!
//! Logs carry ids, the level and rule ids — never the text.

pub mod engine;
pub mod eval;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nwd_proto::events::{ContactMessage, MessageTriaged};
use nwd_proto::streams::{self, consumers};
use nwd_proto::wire;
use nwd_proto::{Envelope, subjects};
use nwd_runtime::bus::{self, BusError, NatsArgs};
use nwd_runtime::consume::{self, ConsumerSpec, Handler, Outcome};
use nwd_runtime::ops::{self, Readiness};
use nwd_runtime::service::ServiceConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use engine::{Engine, Feature, Model, RulebookError};

/// Service name in logs and metric labels.
pub const NAME: &str = "triage";

/// How long to wait before a message whose publish failed is redelivered.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Configuration of the triage service.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "nwd-triage", about = "Scores contact messages for risk")]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(
        long,
        env = "NWD_TRIAGE_METRICS_ADDR",
        default_value = "127.0.0.1:9102"
    )]
    pub metrics_addr: SocketAddr,
    /// A rulebook file to use instead of the builtin one.
    #[arg(long, env = "NWD_TRIAGE_RULEBOOK")]
    pub rulebook: Option<PathBuf>,
    /// A learned model file to use instead of the builtin one. With
    /// `--rulebook` and no `--model`, the rules run alone: the builtin model
    /// learned from the builtin rules' verdicts.
    #[arg(long, env = "NWD_TRIAGE_MODEL", conflicts_with = "no_model")]
    pub model: Option<PathBuf>,
    /// Rules only, without the learned model.
    #[arg(long, env = "NWD_TRIAGE_NO_MODEL")]
    pub no_model: bool,
}

impl ServiceConfig for Config {
    const NAME: &'static str = NAME;
    fn listen_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rulebook(#[from] RulebookError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("ops server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Loads the rulebook and the model named by the config, or the builtin
/// ones (see [`Config::model`]).
pub fn load_engine(config: &Config) -> Result<Engine, RulebookError> {
    let rules = match &config.rulebook {
        Some(path) => Engine::load(path)?,
        None => Engine::builtin_rules()?,
    };
    let model = match (&config.model, config.no_model, &config.rulebook) {
        (_, true, _) | (None, false, Some(_)) => None,
        (Some(path), false, _) => Some(Model::load(path)?),
        (None, false, None) => Some(Model::builtin()?),
    };
    Ok(rules.with_model(model))
}

/// Runs the service until `shutdown`. The rulebook is loaded first: a bad
/// rulebook is returned as an error before anything else starts.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let engine = Arc::new(load_engine(&config)?);
    tracing::info!(
        rulebook = engine.source(),
        rulebook_version = engine.version(),
        model_features = engine.model().map_or(0, Model::feature_count),
        rules = engine.rule_count(),
        patterns = engine.pattern_count(),
        "rulebook loaded"
    );

    let client = bus::connect(&config.nats, NAME).await?;
    let js = bus::jetstream(client.clone(), &config.nats);
    let readiness = Readiness::new(["bus"]);
    readiness.watch_client(client);

    let tasks = TaskTracker::new();
    let server = tokio::spawn(ops::serve(
        listener,
        ops::routes(readiness.clone()),
        shutdown.clone(),
    ));

    match bus::wait_for(&js, &[streams::CONTACTS], &[], &shutdown).await {
        Ok(()) => {
            readiness.set("bus", true);
            let spec = ConsumerSpec::new(
                NAME,
                streams::CONTACTS,
                consumers::TRIAGE,
                vec![subjects::contact_messages_all()],
            );
            let handler = Arc::new(TriageHandler::new(engine, js.clone()));
            tasks.spawn(consume::run(
                js,
                spec,
                handler,
                readiness.clone(),
                shutdown.clone(),
            ));
        }
        Err(BusError::Stopped) => {}
        Err(e) => return Err(e.into()),
    }

    tasks.close();
    tasks.wait().await;
    shutdown.cancelled().await;
    match server.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "ops server task failed"),
    }
    Ok(())
}

/// Handles one contact message: assess, publish, then ack.
pub struct TriageHandler {
    engine: Arc<Engine>,
    js: jetstream::Context,
}

impl TriageHandler {
    pub fn new(engine: Arc<Engine>, js: jetstream::Context) -> Self {
        Self { engine, js }
    }

    /// The whole handling of one message payload, separate from the
    /// JetStream message so it can be tested directly.
    pub async fn triage(&self, payload: &[u8]) -> Outcome {
        let envelope = match Envelope::<ContactMessage>::from_bytes(payload) {
            Ok(e) => e,
            Err(e) => {
                // The decode error may quote payload text: log only its kind.
                tracing::warn!(kind = e.kind(), "undecodable contact message");
                return Outcome::Reject("undecodable");
            }
        };
        let message = envelope.data;
        let started = Instant::now();
        let assessment = self.engine.assess(&message.body);
        metrics::histogram!("nwd_triage_seconds", "service" => NAME)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(
            "nwd_triage_assessments_total",
            "service" => NAME,
            "level" => assessment.level.as_str(),
            "lang" => assessment.lang.as_str(),
        )
        .increment(1);
        let rules: Vec<&str> = assessment.reasons.iter().map(|r| r.rule.as_str()).collect();
        tracing::info!(
            contact_id = %message.contact_id,
            message_id = %message.message_id,
            level = %assessment.level,
            lang = assessment.lang.as_str(),
            rules = ?rules,
            rulebook_version = %assessment.rulebook_version,
            "message triaged"
        );
        let subject = subjects::contact_triaged(&message.contact_id);
        let msg_id = wire::msg_id::message_triaged(&message.message_id);
        let event = Envelope::new(MessageTriaged {
            message,
            assessment,
        });
        match bus::publish(&self.js, subject, &msg_id, &event).await {
            Ok(published) => {
                if published.duplicate {
                    tracing::debug!(msg_id, "triaged event already published");
                }
                Outcome::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish triaged event; will retry");
                Outcome::Retry(RETRY_DELAY)
            }
        }
    }
}

impl Handler for TriageHandler {
    async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        self.triage(&msg.payload).await
    }
}
