//! Test support for No Wrong Door. Every integration test runs against a real
//! `nats-server` with the shipped configuration (`deploy/nats/nats.conf`:
//! accounts, one user per service, JetStream on file storage with
//! `sync_interval: always`), started here on a free port with its own store
//! directory and fresh passwords, and killed when the guard is dropped.
//! Tests never share a server. Services connect with [`NatsServer::url_for`]
//! their own user; [`NatsServer::url`] and [`NatsServer::client`] are the
//! operator's, and [`NatsServer::set_up_bus`] is the operator's bus setup.
//!
//! This is test code: failing loudly (panicking) with a clear message is the
//! right behaviour here, so the workspace's panic lints are relaxed.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the pinned nats-server lives: `NWD_NATS_SERVER`, else
/// `<workspace>/.tools/bin/nats-server` (installed by `deploy/local/install-tools.sh`),
/// else `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("NWD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let tools = workspace_root().join(".tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The NATS users of the shipped configuration (`deploy/nats/nats.conf`),
/// one per service plus the operator and the system account's user.
pub const NATS_USERS: [&str; 11] = [
    "gateway",
    "chat",
    "intake",
    "triage",
    "router",
    "escalator",
    "notifier",
    "referrals",
    "dashboard",
    "operator",
    "system",
];

/// The shipped nats-server configuration every test server runs.
pub fn nats_config() -> PathBuf {
    workspace_root().join("deploy/nats/nats.conf")
}

/// TLS on the client port: the server's certificate and key, and the CA
/// clients trust (all PEM files).
#[derive(Debug, Clone)]
pub struct NatsTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running nats-server owned by one test, with the shipped configuration
/// (accounts, one user per service, no anonymous access) and a fresh random
/// password per user.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    passwords: Vec<(&'static str, String)>,
    tls: Option<NatsTls>,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("port", &self.port)
            .finish()
    }
}

impl NatsServer {
    /// Starts a fresh server on a free port with its own store directory.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a server whose client port requires TLS (`deploy/nats/tls.conf`).
    pub async fn start_tls(tls: NatsTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<NatsTls>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nwd-nats-")
            .tempdir()
            .expect("temp dir");
        let passwords = NATS_USERS
            .iter()
            .map(|user| (*user, random_password()))
            .collect();
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            passwords,
            tls,
        };
        server.spawn(None).await;
        server
    }

    /// The operator's URL (`nats://operator:<pw>@127.0.0.1:<port>`): tests'
    /// own inspection clients connect as the operator.
    pub fn url(&self) -> String {
        self.url_for("operator")
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>` for one of [`NATS_USERS`]
    /// (`tls://` when the server requires TLS).
    pub fn url_for(&self, user: &str) -> String {
        format!(
            "{}://{user}:{}@127.0.0.1:{}",
            self.scheme(),
            self.password(user),
            self.port
        )
    }

    /// The URL without credentials (anonymous: refused).
    pub fn anonymous_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// The generated password of `user`.
    pub fn password(&self, user: &str) -> &str {
        self.passwords
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, pw)| pw.as_str())
            .unwrap_or_else(|| panic!("no NATS user {user:?} in deploy/nats/nats.conf"))
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "tls" } else { "nats" }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (e.g. to read its memory in
    /// `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The server's log (permission violations show up here).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// A client connected as the operator.
    pub async fn client(&self) -> async_nats::Client {
        self.client_as("operator").await
    }

    /// A client connected as `user`, with its own inbox prefix
    /// (`_INBOX_<user>`, the only inbox its permissions let it read).
    pub async fn client_as(&self, user: &str) -> async_nats::Client {
        self.connect_options_as(user)
            .connect(self.url_for(user))
            .await
            .expect("connect to test nats-server")
    }

    /// The operator's bus setup (`nwd-bus setup`): creates or updates every
    /// stream and bucket. Services only wait for them, so a test runs this
    /// before it starts a service.
    pub async fn set_up_bus(&self) {
        let js = nwd_runtime::bus::jetstream(
            self.client().await,
            &nwd_runtime::bus::NatsArgs::local(self.url()),
        );
        nwd_runtime::bus::ensure_all(&js, 1)
            .await
            .expect("bus setup as the operator");
    }

    /// Options that log in as `user` (async-nats ignores credentials in the
    /// URL) with its own inbox prefix, trusting this server's TLS certificate.
    pub fn connect_options_as(&self, user: &str) -> async_nats::ConnectOptions {
        self.connect_options()
            .user_and_password(user.to_owned(), self.password(user).to_owned())
            .custom_inbox_prefix(format!("_INBOX_{user}"))
    }

    /// Options that trust this server's TLS certificate when it has one.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new();
        match &self.tls {
            Some(tls) => options
                .add_root_certificates(tls.ca.clone())
                .require_tls(true),
            None => options,
        }
    }

    /// Kills the server (SIGKILL): what a crash looks like to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its sockets stay open and nothing
    /// answers — what a hung process or a stalled disk looks like to
    /// clients, whose connections still say "connected". Undo with
    /// [`Self::resume`]; dropping the guard kills a frozen server too.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a server frozen by [`Self::pause`] run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("nats-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// Starts the server again on the same port and store (after [`Self::kill`]).
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port)).await;
    }

    async fn spawn(&mut self, port: Option<u16>) {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let listen = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("log file");
        let bin = nats_server_binary();
        let mut command = Command::new(&bin);
        match &self.tls {
            Some(tls) => command
                .arg("-c")
                .arg(workspace_root().join("deploy/nats/tls.conf"))
                .env("NWD_NATS_TLS_CERT", &tls.cert)
                .env("NWD_NATS_TLS_KEY", &tls.key),
            None => command.arg("-c").arg(nats_config()),
        };
        command
            .env("NWD_NATS_PORT", listen)
            .env("NWD_NATS_MONITOR_PORT", "-1")
            .env("NWD_NATS_PORTS_DIR", &ports_dir)
            .env("NWD_NATS_STORE_DIR", self.store_dir());
        for (user, password) in &self.passwords {
            command.env(password_env(user), password);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run deploy/local/install-tools.sh or set NWD_NATS_SERVER",
                    bin.display()
                )
            });
        self.child = Some(child);
        self.port = match port {
            Some(p) => p,
            None => read_port(&ports_dir, &mut self.child, self.dir.path()).await,
        };
        self.wait_connectable().await;
    }

    async fn wait_connectable(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = self
                .connect_options_as("operator")
                .connection_timeout(Duration::from_millis(500))
                .connect(self.url())
                .await
            {
                // JetStream is up when its account info answers.
                let js = async_nats::jetstream::new(c);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            exited(&mut self.child, self.dir.path());
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready in 20 s ({}): {}",
                self.url(),
                std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The environment variable `deploy/nats/nats.conf` reads `user`'s password from.
pub fn password_env(user: &str) -> String {
    format!("NWD_NATS_PASSWORD_{}", user.to_uppercase())
}

/// Letters and digits, starting with a letter (nats-server parses an
/// environment variable's value as config: a bare number would not be a
/// string).
fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("p");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Panics with the server's log if it has exited.
fn exited(child: &mut Option<Child>, dir: &Path) {
    if let Some(child) = child.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        let log = std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default();
        panic!("nats-server exited with {status}: {log}");
    }
}

async fn read_port(ports_dir: &Path, child: &mut Option<Child>, dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        exited(child, dir);
        if let Ok(entries) = std::fs::read_dir(ports_dir) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path())
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(url) = v["nats"][0].as_str().or(v["tls"][0].as_str())
                    && let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok())
                {
                    return port;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "nats-server wrote no ports file in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        // A permission mistake otherwise looks like a timeout: say it.
        let violations: Vec<String> = self
            .log()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect();
        if !violations.is_empty() {
            eprintln!(
                "nats-server refused {} operation(s) (deploy/nats/nats.conf):",
                violations.len()
            );
            for line in violations.iter().take(50) {
                eprintln!("  {line}");
            }
        }
    }
}

/// A fresh directory, deleted when the guard is dropped: a service's
/// on-disk state (the gateway's spool) that a test keeps across restarts.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

pub use tempfile::TempDir;

/// Installs rustls' ring provider (reqwest is built without a default one).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TCP listener on a free loopback port.
pub async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Polls `http://<addr>/readyz` until it answers 200 (at most 20 s).
pub async fn wait_ready(addr: std::net::SocketAddr) {
    install_crypto();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(res) = client.get(&url).send().await
            && res.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not ready in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Everything logged in this process, for tests that check logs hold no
/// personal data.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a subscriber that records every log line and
/// returns the buffer.
pub fn capture_logs() -> LogBuffer {
    static BUF: OnceLock<LogBuffer> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuffer::default();
        let writer = buf.clone();
        // Our crates at TRACE (everything we could ever log), dependencies at
        // INFO (the level an operator runs with).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,nwd=trace"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}
