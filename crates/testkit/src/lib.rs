//! Test support for No Wrong Door. Every integration test runs against a real
//! `nats-server` with JetStream on file storage and `sync_interval: always`,
//! started here on a free port with its own store directory and killed when
//! the guard is dropped. Tests never share a server.
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

/// A running nats-server owned by one test.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
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
        let dir = tempfile::Builder::new()
            .prefix("nwd-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            child: None,
            dir,
            port: 0,
        };
        server.spawn(None).await;
        server
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
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
        let conf = self.dir.path().join("nats.conf");
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let listen = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        // `max_file_store` as in deploy/nats/nats.conf: a stream's byte limit
        // must fit in the store, so without it a test would depend on the
        // free disk (the default store is 75% of it).
        let text = format!(
            "listen: \"127.0.0.1:{listen}\"\nports_file_dir: {ports:?}\nmax_payload: 1MB\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n  max_file_store: 10GB\n}}\n",
            ports = ports_dir.display().to_string(),
            store = self.store_dir().display().to_string(),
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
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
            None => read_port(&ports_dir).await,
        };
        self.wait_connectable().await;
    }

    async fn wait_connectable(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = async_nats::ConnectOptions::new()
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
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
                panic!("nats-server exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn read_port(ports_dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(entries) = std::fs::read_dir(ports_dir) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path())
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(url) = v["nats"][0].as_str()
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
