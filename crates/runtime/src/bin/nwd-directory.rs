//! Operator tool: show or replace the directory the running line uses.
//!
//! `nwd-directory put FILE` validates a TOML directory and stores it in the
//! `directory` bucket; every service follows the bucket and applies it at
//! once (no restart). `nwd-directory get` prints the current one as JSON.
//! A directory that does not validate is refused here, and services that
//! meet an invalid version keep the last good one.
// An operator's command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nwd_proto::streams::buckets;
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::directory;

#[derive(Parser, Debug)]
#[command(name = "nwd-directory", about = "Show or replace the live directory")]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Validate a TOML directory file and make it the live directory.
    Put { file: PathBuf },
    /// Print the live directory (JSON).
    Get,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = bus::connect(&cli.nats, "operator").await?;
    let js = bus::jetstream(client, &cli.nats);
    bus::ensure_all(&js, &cli.nats).await?;
    let store = bus::bucket(&js, buckets::DIRECTORY).await?;
    match cli.cmd {
        Cmd::Put { file } => {
            let dir = directory::load(&file)?;
            let revision = directory::publish(&store, &dir)
                .await
                .map_err(anyhow::Error::msg)
                .context("storing the directory")?;
            println!(
                "directory from {} is live (revision {revision}; {} staff, {} patients)",
                file.display(),
                dir.staff.len(),
                dir.patients.len()
            );
        }
        Cmd::Get => {
            let entry = store
                .get(directory::KEY)
                .await?
                .context("no directory stored yet")?;
            println!("{}", String::from_utf8_lossy(&entry));
        }
    }
    Ok(())
}
