//! What the bench programs share: histograms and formatting, progress lines,
//! starting the real service binaries as processes (and stopping them), and
//! the raw JetStream hop every figure is compared with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::StreamExt;
use hdrhistogram::Histogram;

/// Microseconds, 1 µs .. 20 min (constant bounds: creation cannot fail).
#[allow(clippy::expect_used)]
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1_200_000_000, 3).expect("valid histogram bounds")
}

/// Microseconds as milliseconds, two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A progress line on stderr (the figures go to stdout), with the time since
/// the first one.
pub fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[{:>6.1} s] {msg}", t.as_secs_f64());
}

/// Locks a mutex, recovering the data if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `VmRSS` of a process (`self` or a pid), in KiB.
pub fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms, as on every Linux we run on).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()?)
    };
    // utime and stime are fields 14 and 15: 11 and 12 counted from the state.
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

/// The directory of the service binaries: `--bin-dir`, else next to this binary.
pub fn bin_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(d) => Ok(d),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf()),
    }
}

/// A fresh directory for service logs (and generated files) of one run.
pub fn log_dir(bench: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{bench}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Service processes, killed when dropped.
#[derive(Default)]
pub struct Procs(pub Vec<(String, Child)>);

impl Procs {
    /// Starts `nwd-<name>` from `bin_dir` with `env`, its output to `<log_dir>/<name>.log`.
    pub fn spawn(
        &mut self,
        bin_dir: &Path,
        name: &str,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<u32> {
        let exe = bin_dir.join(format!("nwd-{name}"));
        if !exe.exists() {
            bail!("{} not found; build with bench/run.sh", exe.display());
        }
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .envs(env.iter().cloned())
            // Services log to stdout; panics and early errors go to stderr.
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// reqwest is built without a default TLS provider.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Waits until every service answers `GET /readyz` with success (30 s each).
pub async fn wait_ready<'a>(
    services: impl IntoIterator<Item = (&'a str, SocketAddr)>,
) -> anyhow::Result<()> {
    install_crypto();
    let http = reqwest::Client::new();
    for (name, addr) in services {
        let url = format!("http://{addr}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} not ready at {url}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The raw hop: publish + ack on a file-storage stream → pull consumer
/// receives → ack, at `rate` messages/s for `seconds` (open loop). Returns
/// the hop (publish → received) and the publish + ack round trip, in µs.
/// `run` names the scratch stream (`BENCH<run>`, subject `bench.<run>`).
pub async fn raw_hop(
    nats_url: &str,
    rate: u32,
    seconds: u64,
    run: u32,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    // Under the same accounts as the line: `nats_url` carries the operator's
    // credentials (the scratch stream needs stream-creation rights).
    let client =
        nwd_runtime::bus::connect(&nwd_runtime::bus::NatsArgs::local(nats_url), "bench").await?;
    let js = jetstream::new(client);
    let name = format!("BENCH{run}");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench.{run}")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let total = u64::from(rate) * seconds;
    let starts: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader_starts = starts.clone();
    let reader = tokio::spawn(async move {
        let mut h = hist();
        let Ok(mut messages) = consumer.messages().await else {
            return h;
        };
        let mut got = 0;
        while got < total {
            let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(10), messages.next()).await
            else {
                break;
            };
            let now = Instant::now();
            let id = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(start) =
                id.and_then(|id| reader_starts.lock().ok().and_then(|mut m| m.remove(&id)))
            {
                let _ = h.record(now.duration_since(start).as_micros() as u64);
            }
            let _ = msg.ack().await;
            got += 1;
        }
        h
    });
    let ack_hist = Arc::new(Mutex::new(hist()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let subject = format!("bench.{run}");
    for i in 0..total {
        tick.tick().await;
        let (js, starts, ack_hist, subject) = (
            js.clone(),
            starts.clone(),
            ack_hist.clone(),
            subject.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            if let Ok(mut m) = starts.lock() {
                m.insert(i, start);
            }
            if let Ok(ack) = js.publish(subject, bytes::Bytes::from(i.to_string())).await
                && ack.await.is_ok()
                && let Ok(mut h) = ack_hist.lock()
            {
                let _ = h.record(start.elapsed().as_micros() as u64);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let hop = reader.await?;
    let ack = ack_hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| hist());
    Ok((hop, ack))
}
