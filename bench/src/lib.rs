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

/// The HTTP address setting of each service (its API, or its metrics and
/// health endpoints).
const ADDR_VARS: [(&str, &str); 9] = [
    ("gateway", "NWD_GATEWAY_ADDR"),
    ("intake", "NWD_INTAKE_METRICS_ADDR"),
    ("triage", "NWD_TRIAGE_METRICS_ADDR"),
    ("router", "NWD_ROUTER_METRICS_ADDR"),
    ("escalator", "NWD_ESCALATOR_METRICS_ADDR"),
    ("notifier", "NWD_NOTIFIER_METRICS_ADDR"),
    ("dashboard", "NWD_DASHBOARD_ADDR"),
    ("chat", "NWD_CHAT_ADDR"),
    ("phone-sim", "NWD_PHONE_SIM_ADDR"),
];

/// Twilio credentials the benches sign with (the gateway checks them).
pub const TWILIO_AUTH_TOKEN: &str = "bench000000000000000000000000tok";
pub const TWILIO_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// A real nats-server (file storage, `sync_interval: always`, the shipped
/// accounts) and real service binaries, each as its own NATS user and on a
/// free port; stopped when dropped.
pub struct Line {
    pub nats: nwd_testkit::NatsServer,
    pub procs: Procs,
    pub addrs: HashMap<&'static str, SocketAddr>,
    pub pids: HashMap<&'static str, u32>,
}

impl Line {
    /// Starts `services` with `directory` and the settings every service
    /// needs (keys, Twilio credentials, each service's address), plus
    /// `extra` settings, and waits until each answers `/readyz`.
    pub async fn start(
        bin_dir: &Path,
        log_dir: &Path,
        services: &[&'static str],
        directory: &Path,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let nats = nwd_testkit::NatsServer::start().await;
        nats.set_up_bus().await;
        let addrs: HashMap<&'static str, SocketAddr> = services
            .iter()
            .map(|n| Ok((*n, free_addr()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut env: Vec<(String, String)> = vec![
            (
                "NWD_LOG".into(),
                std::env::var("NWD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            ),
            ("NWD_DIRECTORY".into(), directory.display().to_string()),
            (
                "NWD_SESSION_KEY".into(),
                "bench-session-key-0123456789abcdef".into(),
            ),
            (
                "NWD_PSEUDONYM_KEY".into(),
                "bench-pseudonym-key-0123456789abcdef0123".into(),
            ),
            (
                "NWD_CHAT_TOKEN_KEY".into(),
                "bench-chat-token-key-0123456789abcdef0123".into(),
            ),
            ("NWD_TWILIO_ACCOUNT_SID".into(), TWILIO_ACCOUNT_SID.into()),
            ("NWD_TWILIO_AUTH_TOKEN".into(), TWILIO_AUTH_TOKEN.into()),
        ];
        for (name, var) in ADDR_VARS {
            if let Some(a) = addrs.get(name) {
                env.push((var.into(), a.to_string()));
            }
        }
        if let Some(g) = addrs.get("gateway") {
            env.push(("NWD_GATEWAY_PUBLIC_URL".into(), format!("http://{g}")));
            env.push(("NWD_PHONE_SIM_GATEWAY_URL".into(), format!("http://{g}")));
        }
        if let Some(p) = addrs.get("phone-sim") {
            env.push(("NWD_TWILIO_API_BASE".into(), format!("http://{p}")));
        }
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut procs = Procs::default();
        let mut pids = HashMap::new();
        for name in services {
            // Each service as its own NATS user.
            let mut env = env.clone();
            if nwd_testkit::NATS_USERS.contains(name) {
                env.push(("NWD_NATS_URL".into(), nats.url_for(name)));
            }
            pids.insert(*name, procs.spawn(bin_dir, name, &env, log_dir)?);
        }
        wait_ready(addrs.iter().map(|(n, a)| (*n, *a))).await?;
        // A free port can be taken by another program between our check and
        // the service's bind: then something else answered `/readyz`.
        for (name, child) in &mut procs.0 {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}) right after start; see {}",
                    log_dir.join(format!("{name}.log")).display()
                );
            }
        }
        Ok(Self {
            nats,
            procs,
            addrs,
            pids,
        })
    }

    /// The HTTP address of a service started with the line.
    pub fn addr(&self, service: &str) -> anyhow::Result<SocketAddr> {
        self.addrs
            .get(service)
            .copied()
            .with_context(|| format!("{service} was not started"))
    }
}

/// A dashboard websocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Logs `username` in on the dashboard and opens their websocket, then sets
/// them available.
pub async fn counsellor_socket(
    dashboard: SocketAddr,
    username: &str,
    password: &str,
) -> anyhow::Result<Ws> {
    counsellor_tabs(dashboard, username, password, 1, true)
        .await?
        .pop()
        .context("no socket")
}

/// Logs `username` in once and opens `tabs` websockets on that session;
/// when `available`, the first sets them available (else they stay offline
/// for offers, as a counsellor who has not started).
pub async fn counsellor_tabs(
    dashboard: SocketAddr,
    username: &str,
    password: &str,
    tabs: usize,
    available: bool,
) -> anyhow::Result<Vec<Ws>> {
    let cookie = login(dashboard, username, password).await?;
    let mut sockets = Vec::with_capacity(tabs);
    for t in 0..tabs {
        sockets.push(open_socket(dashboard, &cookie, available && t == 0).await?);
    }
    Ok(sockets)
}

/// Logs `username` in on the dashboard: the session cookie (`name=value`).
pub async fn login(
    dashboard: SocketAddr,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let res = client
        .post(format!("http://{dashboard}/login"))
        .form(&[("username", username), ("password", password)])
        .send()
        .await?;
    Ok(res
        .headers()
        .get("set-cookie")
        .context("no session cookie")?
        .to_str()?
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Opens a dashboard websocket on a session; `available` sets the
/// counsellor available on it.
pub async fn open_socket(
    dashboard: SocketAddr,
    cookie: &str,
    available: bool,
) -> anyhow::Result<Ws> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite;
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{dashboard}/ws"
    ))?;
    req.headers_mut().insert("cookie", cookie.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    if available {
        ws.send(tungstenite::Message::Text(
            r#"{"type":"set_presence","status":"available"}"#.into(),
        ))
        .await?;
    }
    Ok(ws)
}

/// One shift covering every day, all day: bench staff are always on call.
pub fn on_call_all_week() -> Vec<nwd_proto::directory::Shift> {
    vec![nwd_proto::directory::Shift {
        days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .map(str::to_owned)
            .to_vec(),
        start: "00:00".into(),
        end: "24:00".into(),
    }]
}

/// Writes to `path` the demo directory's line and partners with generated
/// counsellors `ids` (copies of the demo counsellor `ana`, with her
/// password; every language; on call around the clock; `capacity` seats;
/// spread over the partners when `spread`, else at ana's) and one supervisor
/// `sup-01` who never logs in; no patients, no overrides.
pub fn write_staff_directory(
    path: &Path,
    ids: &[String],
    capacity: u32,
    spread: bool,
) -> anyhow::Result<()> {
    use nwd_proto::directory::Role;
    let demo = nwd_testkit::workspace_root().join("deploy/local/demo/directory.toml");
    let mut dir = nwd_runtime::directory::load(&demo)?;
    let template = dir
        .staff
        .iter()
        .find(|s| s.id.as_str() == "ana")
        .context("the demo directory has no ana")?
        .clone();
    let all_week = on_call_all_week();
    dir.patients.clear();
    dir.overrides.clear();
    let partners: Vec<_> = dir.partners.iter().map(|p| p.id.clone()).collect();
    let mut staff = Vec::with_capacity(ids.len() + 1);
    for (k, id) in ids.iter().enumerate() {
        let mut s = template.clone();
        s.id = nwd_proto::CounsellorId::parse(id)?;
        s.name = format!("Counsellor {}", k + 1);
        s.role = Role::Counsellor;
        if spread && let Some(p) = partners.get(k % partners.len().max(1)) {
            s.partner = p.clone();
        }
        s.languages = vec![nwd_proto::Language::En, nwd_proto::Language::Es];
        s.capacity = capacity;
        s.shifts = all_week.clone();
        staff.push(s);
    }
    // A supervisor on call who does not log in: alerted by the ladder,
    // never available to take a contact.
    let mut supervisor = template;
    supervisor.id = nwd_proto::CounsellorId::parse("sup-01")?;
    supervisor.name = "Supervisor".into();
    supervisor.role = Role::Supervisor;
    supervisor.shifts = all_week;
    staff.push(supervisor);
    dir.staff = staff;
    dir.validate()?;
    std::fs::write(path, toml::to_string(&dir)?)?;
    Ok(())
}

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
