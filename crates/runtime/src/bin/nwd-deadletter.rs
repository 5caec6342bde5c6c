//! Operator tool: inspect and replay dead letters (messages a consumer could
//! not handle, parked in stream DEADLETTER). See `runbooks/dead-letters.md`.
//!
//! `nwd-deadletter list` prints one line per dead letter: its sequence,
//! when, the consumer, the reason, the original subject and stream
//! sequence — never the payload. `nwd-deadletter show SEQ` prints one in
//! full, payload included: personal data, for an operator entitled to read
//! it (a parked inbound SMS is a person waiting for an answer).
//! `nwd-deadletter replay SEQ` republishes
//! the original payload and headers to the original subject (where the
//! consumer picks it up again) and deletes the record.
// An operator's command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

use anyhow::Context;
use clap::Parser;
use nwd_runtime::bus::{self, NatsArgs};
use nwd_runtime::deadletter;
use time::format_description::well_known::Rfc3339;

#[derive(Parser, Debug)]
#[command(name = "nwd-deadletter", about = "Inspect and replay dead letters")]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// List every dead letter (no payloads).
    List,
    /// Print dead letter SEQ in full, with its payload (personal data).
    Show { seq: u64 },
    /// Republish dead letter SEQ to its original subject, then delete it.
    Replay {
        /// Its sequence in DEADLETTER, as `list` shows it.
        seq: Vec<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = bus::connect(&cli.nats, "nwd-deadletter").await?;
    let js = bus::jetstream(client, &cli.nats);
    bus::ensure_all(&js, &cli.nats)
        .await
        .context("setting up streams")?;
    match cli.cmd {
        Cmd::List => {
            let listed = deadletter::list(&js).await?;
            println!("seq\ttime\tconsumer\treason\tsubject\tstream:seq\tdetail");
            for d in &listed {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}:{}\t{}",
                    d.sequence,
                    d.at.format(&Rfc3339).unwrap_or_default(),
                    d.consumer,
                    d.reason.as_str(),
                    d.subject,
                    d.stream,
                    d.stream_sequence,
                    d.detail
                );
            }
            println!("{} dead letter(s)", listed.len());
        }
        Cmd::Show { seq } => {
            let env = deadletter::get(&js, seq).await?;
            let d = env.data;
            println!("sequence:  {seq}");
            println!(
                "parked:    {}",
                env.time.format(&Rfc3339).unwrap_or_default()
            );
            println!("consumer:  {}", d.consumer);
            println!("reason:    {} ({})", d.reason.as_str(), d.detail);
            println!(
                "from:      {} sequence {} (delivered {}×)",
                d.stream, d.stream_sequence, d.delivered
            );
            println!("subject:   {}", d.subject);
            for (name, value) in &d.headers {
                println!("header:    {name}: {value}");
            }
            match std::str::from_utf8(&d.payload) {
                Ok(text) => println!("payload:\n{text}"),
                Err(_) => println!(
                    "payload ({} bytes, not UTF-8): {:02x?}",
                    d.payload.len(),
                    d.payload
                ),
            }
        }
        Cmd::Replay { seq } => {
            anyhow::ensure!(!seq.is_empty(), "which dead letter? (see `list`)");
            for s in seq {
                let replayed = deadletter::replay(&js, s)
                    .await
                    .with_context(|| format!("replaying dead letter {s}"))?;
                println!(
                    "dead letter {s} replayed to {} (stream sequence {}, Nats-Msg-Id {})",
                    replayed.subject, replayed.stream_sequence, replayed.msg_id
                );
            }
        }
    }
    Ok(())
}
