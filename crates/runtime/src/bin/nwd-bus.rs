//! Operator tool: set up the bus.
//!
//! `nwd-bus setup` creates or updates every stream and bucket (idempotent).
//! Services may not create them (their NATS users have no such rights, see
//! `docs/security.md`): they wait until this has run. Connects as the
//! `operator` user unless `--nats-user` says otherwise.
// An operator's command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

use anyhow::Context;
use clap::Parser;
use nwd_runtime::bus::{self, NatsArgs};

#[derive(Parser, Debug)]
#[command(name = "nwd-bus", about = "Set up the bus (streams and buckets)")]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Create or update every stream and bucket.
    Setup,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = bus::connect(&cli.nats, "operator").await?;
    let js = bus::jetstream(client, &cli.nats);
    match cli.cmd {
        Cmd::Setup => {
            bus::ensure_all(&js, cli.nats.replicas)
                .await
                .context("setting up streams and buckets")?;
            println!("streams and buckets are set up");
        }
    }
    Ok(())
}
