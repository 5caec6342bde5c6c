//! The one way a service binary starts: tracing, metrics, config from the
//! environment, bind, run until SIGINT/SIGTERM.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `main` needs to know about a service's config.
pub trait ServiceConfig: clap::Parser + fmt::Debug {
    /// Short service name (`gateway`), used in logs and metric labels.
    const NAME: &'static str;
    /// Where the service's HTTP port (or ops port) listens.
    fn listen_addr(&self) -> SocketAddr;
}

/// Body of every service's `main`:
/// `fn main() -> anyhow::Result<()> { nwd_runtime::service::main(nwd_gateway::run) }`
pub fn main<C, F, Fut, E>(run: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        crate::telemetry::init_tracing();
        crate::telemetry::metrics_handle();
        let config = C::parse();
        // Debug of every config redacts its secrets (see `Secret`).
        tracing::info!(service = C::NAME, config = ?config, "starting");
        let addr = config.listen_addr();
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let shutdown = crate::shutdown::on_signal();
        run(config, listener, shutdown).await.map_err(Into::into)?;
        tracing::info!(service = C::NAME, "stopped");
        Ok(())
    })
}

/// A secret from the environment (auth token, webhook secret, session key):
/// `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
