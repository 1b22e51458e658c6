//! The end-to-end harness: everything a test (or the load generator) needs to run a fleet on
//! loopback and break it on purpose.
//!
//! - [`Env`]: a temp dir with a throwaway PKI (fleet CA, aggregator certificate for
//!   `127.0.0.1`/`localhost`), an API key file, and writers for agent and aggregator configs with
//!   short test timings.
//! - [`Aggregator`] and [`Agent`]: in-process instances (`weir_*::start`) with stop helpers.
//! - [`Proc`]: the real `weir-agent` / `weir-aggregator` binaries as child processes, killed with
//!   SIGKILL ([`Proc::kill9`]) or stopped with SIGTERM ([`Proc::terminate`]); their stderr goes to
//!   a file that is printed when a test panics.
//! - [`Relay`]: a UDP relay between an agent and the aggregator's QUIC port that can drop
//!   everything (a link outage) and counts the agent's connection attempts.
//! - Event helpers: JSON events with unique tokens, posting them to an agent, reading stores.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use weir_aggregator::store::{Store, StoredEvent};
use weir_common::wire::io::{read_frame, write_frame};
use weir_common::wire::{self, AgentFrame, AggregatorFrame, Batch, Hello, WireRecord};
use weir_common::{Event, Record};

pub use tempfile::TempDir;

pub mod api_load;
pub mod store_bench;

/// The API key written to [`Env::api_key_file`] (used by agents and the aggregator alike).
pub const API_KEY: &str = "weir-e2e-test-key";

/// Installs a `tracing` subscriber printing to stderr when `RUST_LOG` is set (once per process),
/// so in-process agents and aggregators can be debugged with `RUST_LOG=debug cargo test`.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// Replaces `from` by `to` in `text`, panicking if `from` is absent (so a config edit can never
/// silently do nothing when the example config changes).
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "config edit: {from:?} not found in:\n{text}"
    );
    text.replace(from, to)
}

/// Turns first-stage dedup off in an agent config text, for tests that count every event they
/// send (dedup would rightly merge a flood of identical test events).
pub fn without_dedup(text: &str) -> String {
    let text = edit(text, "window = \"5m\"", "window = \"0s\"");
    text.replace("window = \"2m\"", "window = \"0s\"")
}

/// A UDP port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a UDP socket")
        .port()
}

/// A TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a TCP socket")
        .port()
}

/// A temp dir holding a fleet CA, the aggregator's certificate and an API key file.
///
/// Layout: `ca/` (the CA directory: `ca.pem`, `ca.key`, `crl.pem`), `aggregator-tls/`,
/// `api-key`, and whatever configs, data dirs and agent certificates the test adds.
#[derive(Debug)]
pub struct Env {
    pub dir: TempDir,
    /// The fleet CA directory.
    pub ca_dir: PathBuf,
    /// The fleet CA certificate, which agents trust for the aggregator.
    pub ca_cert: PathBuf,
    /// The aggregator's TLS directory (`aggregator.pem`, `aggregator.key`, `ca.pem`).
    pub aggregator_tls: PathBuf,
    pub api_key_file: PathBuf,
}

impl Env {
    /// Creates the temp dir, the fleet CA and the aggregator certificate.
    pub fn new() -> Env {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("weir-e2e-")
            .tempdir()
            .expect("creating a temp dir");
        let ca_dir = dir.path().join("ca");
        weir_certs::init_ca(
            &ca_dir,
            &weir_certs::CaOptions {
                common_name: "Weir e2e CA".into(),
                ..Default::default()
            },
        )
        .expect("creating the fleet CA");
        let aggregator_tls = dir.path().join("aggregator-tls");
        weir_certs::issue_aggregator(
            &ca_dir,
            &["localhost".to_string()],
            &["127.0.0.1".parse().expect("literal")],
            &aggregator_tls,
            &Default::default(),
        )
        .expect("issuing the aggregator certificate");
        let api_key_file = dir.path().join("api-key");
        std::fs::write(&api_key_file, format!("{API_KEY}\n")).expect("writing the API key file");
        Env {
            ca_cert: ca_dir.join("ca.pem"),
            ca_dir,
            aggregator_tls,
            api_key_file,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues an agent certificate for `site/name` from the fleet CA into `<dir>/<name>-tls/`
    /// and returns that directory (`agent.pem`, `agent.key`).
    pub fn issue_agent(&self, site: &str, name: &str) -> PathBuf {
        self.issue_agent_with(site, name, &weir_certs::IssueOptions::default())
    }

    /// Like [`Env::issue_agent`] with explicit options (validity, `force`).
    pub fn issue_agent_with(
        &self,
        site: &str,
        name: &str,
        opts: &weir_certs::IssueOptions,
    ) -> PathBuf {
        let out = self.path().join(format!("{name}-tls"));
        weir_certs::issue_agent(&self.ca_dir, site, name, &out, opts)
            .expect("issuing an agent certificate");
        out
    }

    /// Revokes the agent certificate in `tls_dir` (rewrites `ca/crl.pem`, which the aggregator
    /// watches).
    pub fn revoke_agent(&self, tls_dir: &Path) {
        weir_certs::revoke(&self.ca_dir, &tls_dir.join("agent.pem"))
            .expect("revoking an agent certificate");
    }

    /// Writes `text` to `<dir>/<file>` and returns the path.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let p = self.path().join(file);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    }

    /// The aggregator config text for data dir `<dir>/<name>-data` with test timings
    /// (idle_timeout 5s, crl_check_interval 200ms). Port 0 binds an ephemeral port.
    pub fn aggregator_config_text(&self, name: &str, quic_port: u16, api_port: u16) -> String {
        let data = self.path().join(format!("{name}-data"));
        let text = weir_aggregator::config::example(
            &data.display().to_string(),
            &self.aggregator_tls.display().to_string(),
            &self.ca_dir.join("crl.pem").display().to_string(),
            quic_port,
            api_port,
        );
        let text = edit(
            &text,
            "crl_check_interval = \"2s\"",
            "crl_check_interval = \"200ms\"",
        );
        let text = edit(&text, "idle_timeout = \"30s\"", "idle_timeout = \"5s\"");
        edit(
            &text,
            "api_key_file = \"api-key\"",
            &format!("api_key_file = \"{}\"", self.api_key_file.display()),
        )
    }

    /// Writes [`Env::aggregator_config_text`] to `<dir>/<name>.toml`.
    pub fn aggregator_config(&self, name: &str, quic_port: u16, api_port: u16) -> PathBuf {
        self.write(
            &format!("{name}.toml"),
            &self.aggregator_config_text(name, quic_port, api_port),
        )
    }

    /// The aggregator's store file for configs written by [`Env::aggregator_config`].
    pub fn aggregator_store(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}-data")).join("events.redb")
    }

    /// The agent config text: data dir `<dir>/<name>-data`, certificate and key from `tls_dir`,
    /// trusting the fleet CA, syslog on ephemeral ports, HTTP on `http_port` (0: ephemeral),
    /// and test timings (reconnect 100ms..1s, keepalive 1s, idle 5s, status and drop reports
    /// every 1s).
    pub fn agent_config_text(
        &self,
        name: &str,
        aggregator: &str,
        tls_dir: &Path,
        http_port: u16,
    ) -> String {
        let data = self.path().join(format!("{name}-data"));
        let tls = tls_dir.display().to_string();
        let text = weir_agent::config::example(
            &data.display().to_string(),
            aggregator,
            &tls,
            0,
            http_port,
        );
        let text = edit(
            &text,
            &format!("ca = \"{tls}/ca.pem\""),
            &format!("ca = \"{}\"", self.ca_cert.display()),
        );
        let text = edit(&text, "keepalive = \"5s\"", "keepalive = \"1s\"");
        let text = edit(&text, "idle_timeout = \"30s\"", "idle_timeout = \"5s\"");
        let text = edit(
            &text,
            "reconnect_min = \"500ms\"",
            "reconnect_min = \"100ms\"",
        );
        let text = edit(&text, "reconnect_max = \"30s\"", "reconnect_max = \"1s\"");
        let text = edit(
            &text,
            "status_interval = \"10s\"",
            "status_interval = \"1s\"",
        );
        let text = edit(
            &text,
            "drop_report_interval = \"10s\"",
            "drop_report_interval = \"1s\"",
        );
        edit(
            &text,
            "api_key_file = \"api-key\"",
            &format!("api_key_file = \"{}\"", self.api_key_file.display()),
        )
    }

    /// Writes [`Env::agent_config_text`] to `<dir>/<name>.toml`.
    pub fn agent_config(
        &self,
        name: &str,
        aggregator: &str,
        tls_dir: &Path,
        http_port: u16,
    ) -> PathBuf {
        self.write(
            &format!("{name}.toml"),
            &self.agent_config_text(name, aggregator, tls_dir, http_port),
        )
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// An aggregator running in this process.
#[derive(Debug)]
pub struct Aggregator {
    running: Option<weir_aggregator::Running>,
    shutdown: CancellationToken,
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
}

impl Aggregator {
    /// Loads `config` and starts. Retries for up to 5 s while the ports are still held by a
    /// previous instance (a restart on the same port).
    pub async fn start(config: &Path) -> Aggregator {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let cfg = weir_aggregator::config::load(config).expect("loading the aggregator config");
            let shutdown = CancellationToken::new();
            match weir_aggregator::start(cfg, shutdown.clone()).await {
                Ok(running) => {
                    return Aggregator {
                        quic_addr: running.quic_addr,
                        api_addr: running.api_addr,
                        running: Some(running),
                        shutdown,
                    };
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("aggregator start failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("starting the aggregator: {e:#}"),
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.running.as_ref().expect("running").store
    }

    /// Every stored event, in store order.
    pub fn events(&self) -> Vec<StoredEvent> {
        scan_store(self.store())
    }

    pub fn len(&self) -> u64 {
        self.store().len().expect("reading the store")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels and waits until every task (and the store writer) has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), r.join())
                .await
                .expect("aggregator stops within 20s");
        }
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An agent running in this process.
#[derive(Debug)]
pub struct Agent {
    running: Option<weir_agent::Running>,
    shutdown: CancellationToken,
    pub http_addr: SocketAddr,
}

impl Agent {
    /// Loads `config` and starts (the config must enable HTTP).
    pub async fn start(config: &Path) -> Agent {
        let cfg = weir_agent::config::load(config).expect("loading the agent config");
        let shutdown = CancellationToken::new();
        let running = weir_agent::start(cfg, shutdown.clone())
            .await
            .expect("starting the agent");
        Agent {
            http_addr: running
                .http_addr
                .expect("the agent's HTTP server is enabled"),
            running: Some(running),
            shutdown,
        }
    }

    pub fn running(&self) -> &weir_agent::Running {
        self.running.as_ref().expect("running")
    }

    /// Whether the forwarder has a session with the aggregator.
    pub fn connected(&self) -> bool {
        self.running().link.connected.load(Ordering::Relaxed)
    }

    pub fn queue_stats(&self) -> weir_agent::queue::Stats {
        self.running().queue.stats().expect("queue stats")
    }

    /// Records in the agent's queue (committed, not yet acknowledged).
    pub fn queued(&self) -> u64 {
        self.queue_stats().records
    }

    /// The messages of every event in the queue, oldest first.
    pub fn queued_messages(&self) -> Vec<String> {
        self.running()
            .queue
            .read_from(0, usize::MAX, usize::MAX)
            .expect("reading the queue")
            .into_iter()
            .filter_map(|w| match Record::from_bytes(&w.payload) {
                Ok(Record::Event(e)) => Some(e.message),
                _ => None,
            })
            .collect()
    }

    /// Cancels and waits until every task has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), r.join())
                .await
                .expect("agent stops within 20s");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Path of a workspace binary (`weir-agent`, `weir-aggregator`) next to the test executable's
/// `deps/` directory. Panics with a hint when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before `cargo test -p weir-tests`",
        bin.display()
    );
    bin
}

/// A child process (a Weir binary) whose stderr is appended to `<log_dir>/<name>.stderr`.
/// Dropping it kills the process; if the thread is panicking, the stderr file is printed.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    child: Option<Child>,
    pub stderr_path: PathBuf,
    starts: u32,
}

impl Proc {
    /// Starts `bin` (a binary name, see [`binary`]) with `args`.
    pub fn spawn<I, S>(bin: &str, args: I, name: &str, log_dir: &Path) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut p = Proc {
            name: name.to_string(),
            bin: binary(bin),
            args: args
                .into_iter()
                .map(|a| a.as_ref().to_os_string())
                .collect(),
            child: None,
            stderr_path: log_dir.join(format!("{name}.stderr")),
            starts: 0,
        };
        p.start();
        p
    }

    /// Starts `weir-agent --config CONFIG` and waits until its local HTTP server at `http`
    /// answers `/healthz`.
    pub async fn agent(config: &Path, http: SocketAddr, log_dir: &Path) -> Proc {
        let p = Proc::spawn(
            "weir-agent",
            [OsStr::new("--config"), config.as_os_str()],
            "weir-agent",
            log_dir,
        );
        wait_healthy(http, "agent HTTP up").await;
        p
    }

    /// (Re)starts the process with the same arguments. Panics if it is still running.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        use std::io::Write;
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("opening the stderr log");
        let _ = writeln!(log, "===== start #{} of {} =====", self.starts, self.name);
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("WEIR_E2E_CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (`kill -9`) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after that, and panics).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.child.as_ref().expect("process is running");
        let pid = rustix::process::Pid::from_child(c);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.stderr()
                );
            }
        }
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process (all its starts) wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- stderr of {} ({}) -----\n{}",
                self.name,
                self.stderr_path.display(),
                self.stderr()
            );
        }
    }
}

/// Counters of a [`Relay`].
#[derive(Debug, Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    /// Source connection ids of client Initial packets: one per QUIC connection attempt.
    attempts: Mutex<HashSet<Vec<u8>>>,
}

/// A UDP relay: datagrams from clients to [`Relay::addr`] go to the target from one upstream
/// socket per client, and the answers go back. [`Relay::set_blocked`] drops everything in both
/// directions (a link outage).
#[derive(Debug)]
pub struct Relay {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    blocked: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Relay {
    /// Starts relaying from a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("binding the relay"),
        );
        let addr = front.local_addr().expect("relay address");
        let stats = Arc::new(RelayStats::default());
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        tokio::spawn(relay_front(
            front,
            target,
            stats.clone(),
            blocked.clone(),
            stop.clone(),
        ));
        Relay {
            addr,
            stats,
            blocked,
            stop,
        }
    }

    /// `true`: drop every datagram (both ways); `false`: forward again.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    /// QUIC connection attempts seen from clients so far (distinct client connection ids in
    /// Initial packets), counted also while blocked.
    pub fn connection_attempts(&self) -> usize {
        self.stats.attempts.lock().expect("relay lock").len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The source connection id of a QUIC v1 Initial packet, if `d` is one.
fn initial_scid(d: &[u8]) -> Option<&[u8]> {
    let first = *d.first()?;
    // Long header, fixed bit, packet type 0 (Initial).
    if first & 0xC0 != 0xC0 || (first >> 4) & 0x3 != 0 {
        return None;
    }
    let dcid_len = *d.get(5)? as usize;
    let scid_at = 6 + dcid_len;
    let scid_len = *d.get(scid_at)? as usize;
    d.get(scid_at + 1..scid_at + 1 + scid_len)
}

async fn relay_front(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    stats: Arc<RelayStats>,
    blocked: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = front.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue, // e.g. ICMP errors surfaced on the socket
            },
            _ = stop.cancelled() => return,
        };
        if let Some(scid) = initial_scid(&buf[..n]) {
            stats
                .attempts
                .lock()
                .expect("relay lock")
                .insert(scid.to_vec());
        }
        if blocked.load(Ordering::SeqCst) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let up = match upstreams.get(&from) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams.insert(from, u.clone());
                tokio::spawn(relay_back(
                    u.clone(),
                    front.clone(),
                    from,
                    stats.clone(),
                    blocked.clone(),
                    stop.clone(),
                ));
                u
            }
        };
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let _ = up.send(&buf[..n]).await;
    }
}

async fn relay_back(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    stats: Arc<RelayStats>,
    blocked: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            r = up.recv(&mut buf) => match r {
                Ok(n) => n,
                // Connection refused (nothing listens upstream right now): keep going.
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        if blocked.load(Ordering::SeqCst) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let _ = front.send_to(&buf[..n], client).await;
    }
}

/// The message carrying token `n` (`tok-000000042`); tokens make every event unique and let a
/// test check order and exactly-once delivery.
pub fn token(n: u64) -> String {
    format!("tok-{n:09}")
}

/// The token number in a message written by [`token`].
pub fn parse_token(message: &str) -> Option<u64> {
    message.strip_prefix("tok-")?.parse().ok()
}

/// One event in the agent's JSON ingest schema.
pub fn event_json(message: &str, severity: &str) -> Value {
    json!({
        "source": "weir-e2e",
        "hostname": "e2e-host",
        "severity": severity,
        "message": message,
        "tags": { "test": "e2e" },
    })
}

/// Info events for tokens `range`.
pub fn token_events(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|n| event_json(&token(n), "info")).collect()
}

/// An HTTP client with short timeouts, for the agent's and the aggregator's APIs.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("building the HTTP client")
}

/// POSTs `events` to an agent's `/api/v1/events`. `Ok(())` only on `202 Accepted` with every
/// event accepted (none dropped): the events are durably in the agent's queue.
pub async fn post_events(
    client: &reqwest::Client,
    agent_http: SocketAddr,
    events: &[Value],
) -> anyhow::Result<()> {
    let resp = client
        .post(format!("http://{agent_http}/api/v1/events"))
        .header("X-API-Key", API_KEY)
        .json(events)
        .send()
        .await
        .context("posting events")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("agent answered {status}: {body}");
    }
    let accepted = body["accepted"].as_u64().unwrap_or(0);
    if accepted != events.len() as u64 {
        bail!(
            "agent accepted {accepted} of {} events: {body}",
            events.len()
        );
    }
    Ok(())
}

/// Waits (up to 20 s) until `GET <http>/healthz` answers 200.
pub async fn wait_healthy(http: SocketAddr, what: &str) {
    let client = http_client();
    eventually_async(Duration::from_secs(20), what, || healthy(&client, http)).await;
}

/// `GET <base>/healthz` answers 200.
pub async fn healthy(client: &reqwest::Client, http: SocketAddr) -> bool {
    matches!(client.get(format!("http://{http}/healthz")).send().await, Ok(r) if r.status().is_success())
}

/// The agent's `/healthz` view of its link to the aggregator.
pub async fn agent_reports_connected(
    client: &reqwest::Client,
    agent_http: SocketAddr,
) -> anyhow::Result<bool> {
    let v: Value = client
        .get(format!("http://{agent_http}/healthz"))
        .send()
        .await?
        .json()
        .await?;
    v["aggregator_connected"]
        .as_bool()
        .ok_or_else(|| anyhow!("no aggregator_connected in {v}"))
}

/// The aggregator's `GET /api/v1/agents`.
pub async fn api_agents(
    client: &reqwest::Client,
    api: SocketAddr,
) -> anyhow::Result<Vec<weir_aggregator::api::AgentView>> {
    let resp = client
        .get(format!("http://{api}/api/v1/agents"))
        .header("X-API-Key", API_KEY)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "GET /api/v1/agents: {}",
        resp.status()
    );
    Ok(resp.json().await?)
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`eventually`] for an async check.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event in `store`, in store order.
pub fn scan_store(store: &Store) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    store.scan(|_, e| out.push(e)).expect("scanning the store");
    out
}

/// Every event in the store file at `path` (no aggregator may have it open).
pub fn read_store(path: &Path) -> Vec<StoredEvent> {
    let store = Store::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    scan_store(&store)
}

/// How many times each token appears among `events` (events without a token are skipped).
pub fn token_counts(events: &[StoredEvent]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for e in events {
        if let Some(t) = parse_token(&e.event.message) {
            *counts.entry(t).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts that every token appears at most once.
pub fn assert_no_duplicates(events: &[StoredEvent]) {
    let dups: Vec<_> = token_counts(events)
        .into_iter()
        .filter(|&(_, c)| c > 1)
        .collect();
    assert!(
        dups.is_empty(),
        "{} tokens stored more than once, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
}

/// Asserts that, per agent, sequence numbers strictly increase in store order.
pub fn assert_seq_increasing(events: &[StoredEvent]) {
    let mut last: HashMap<(&str, &str), u64> = HashMap::new();
    for e in events {
        let prev = last.insert((&e.site, &e.agent), e.seq);
        if let Some(p) = prev {
            assert!(
                e.seq > p,
                "{}/{}: seq {} stored after {}",
                e.site,
                e.agent,
                e.seq,
                p
            );
        }
    }
}

/// What a [`raw_session`] achieved.
#[derive(Debug)]
pub struct RawOutcome {
    /// The identity the aggregator read from the certificate.
    pub identity: String,
    /// The committed sequence in the aggregator's final ack.
    pub committed_seq: u64,
}

/// Talks the agent protocol by hand over a QUIC connection made with `tls`: hello, one batch of
/// `events` (sequences 1..), and waits for the ack. Used to check what the aggregator does
/// with clients that are not well-behaved agents (e.g. no client certificate).
pub async fn raw_session(
    server: SocketAddr,
    tls: rustls::ClientConfig,
    events: Vec<Event>,
) -> anyhow::Result<RawOutcome> {
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC client config")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(5))?));
    cfg.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(cfg);
    let result = async {
        let conn = endpoint
            .connect(server, "127.0.0.1")?
            .await
            .context("handshake")?;
        let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
        let mut buf = Vec::new();
        let hello = AgentFrame::Hello(Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::PROTOCOL_VERSION,
            software: "weir-e2e raw client".into(),
            next_seq: 1,
        });
        write_frame(&mut send, &hello, &mut buf)
            .await
            .context("sending hello")?;
        let ack = match read_frame::<_, AggregatorFrame>(&mut recv, &mut buf)
            .await
            .context("reading hello answer")?
        {
            Some(AggregatorFrame::HelloAck(a)) => a,
            other => bail!("expected a hello ack, got {other:?}"),
        };
        let records: Vec<WireRecord> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| WireRecord {
                seq: i as u64 + 1,
                payload: Record::Event(e).to_bytes(),
            })
            .collect();
        let last = records.len() as u64;
        write_frame(
            &mut send,
            &AgentFrame::Batch(Batch {
                first_seq: 1,
                last_seq: last,
                records,
            }),
            &mut buf,
        )
        .await
        .context("sending a batch")?;
        loop {
            match read_frame::<_, AggregatorFrame>(&mut recv, &mut buf)
                .await
                .context("reading acks")?
            {
                Some(AggregatorFrame::Ack(a)) if a.committed_seq >= last => {
                    conn.close(0u32.into(), b"done");
                    return Ok(RawOutcome {
                        identity: ack.identity,
                        committed_seq: a.committed_seq,
                    });
                }
                Some(AggregatorFrame::Ack(_)) => continue,
                // Version 2 aggregators send their trap drop policy after the hello.
                Some(AggregatorFrame::TrapPolicy(_)) => continue,
                other => bail!("expected an ack, got {other:?}"),
            }
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .unwrap_or_else(|_| Err(anyhow!("timed out")));
    endpoint.close(0u32.into(), b"done");
    result
}

/// A rustls client config trusting `ca` with ALPN `weir/1`, presenting no client certificate.
pub fn tls_without_client_cert(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in weir_certs::tls::load_certs(ca).expect("loading the CA") {
        roots.add(c).expect("adding the CA");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(weir_certs::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![wire::ALPN.to_vec()];
    cfg
}

/// The agent's own rustls client config (fleet CA, agent certificate and key).
pub fn tls_with_agent_cert(ca: &Path, tls_dir: &Path) -> rustls::ClientConfig {
    weir_certs::tls::client_config(
        ca,
        &tls_dir.join("agent.pem"),
        &tls_dir.join("agent.key"),
        &[wire::ALPN],
    )
    .expect("agent TLS config")
}

/// A plain event for [`raw_session`].
pub fn raw_event(message: &str) -> Event {
    Event::new(
        weir_common::InputKind::Api,
        "weir-e2e",
        "e2e-host",
        weir_common::Severity::Info,
        message,
        jiff::Timestamp::now(),
    )
}

/// A continuous sender for crash tests: POSTs batches of `batch` events with fresh tokens to an
/// agent until stopped, and records which tokens were acknowledged with 202 and which failed.
#[derive(Debug)]
pub struct Sender {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<SenderLog>,
}

/// What a [`Sender`] did.
#[derive(Debug, Default, Clone)]
pub struct SenderLog {
    /// Tokens whose POST was answered 202 (durably committed by the agent).
    pub accepted: Vec<u64>,
    /// Tokens whose POST failed (may or may not have been committed).
    pub failed: Vec<u64>,
    pub posts_ok: u64,
    pub posts_failed: u64,
}

impl Sender {
    /// Starts sending to `agent_http`, tokens from `first_token` up, pausing `pause` after each
    /// successful POST (to bound the rate) and 20 ms after each failed one.
    pub fn start(agent_http: SocketAddr, batch: u64, first_token: u64, pause: Duration) -> Sender {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let client = http_client();
            let mut log = SenderLog::default();
            let mut next = first_token;
            while !s.is_cancelled() {
                let range = next..next + batch;
                next += batch;
                let events = token_events(range.clone());
                match post_events(&client, agent_http, &events).await {
                    Ok(()) => {
                        log.posts_ok += 1;
                        log.accepted.extend(range);
                        tokio::time::sleep(pause).await;
                    }
                    Err(_) => {
                        log.posts_failed += 1;
                        log.failed.extend(range);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            log
        });
        Sender { stop, task }
    }

    /// Stops after the POST in progress and returns the log.
    pub async fn stop(self) -> SenderLog {
        self.stop.cancel();
        self.task.await.expect("sender task")
    }
}

/// Sum of the samples of `name_and_labels` on the agent's `/metrics` (an in-process aggregator
/// shares the process's recorder, so its metrics are there too).
pub async fn agent_metric(agent: &Agent, name_and_labels: &str) -> f64 {
    let text = http_client()
        .get(format!("http://{}/metrics", agent.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// net-snmp's `snmptrap` and `snmpinform`, as the trap tests drive them.
pub mod netsnmp {
    use std::path::Path;
    use std::process::Command;

    /// Whether both tools are installed; skips with a printed reason, or panics under
    /// `CI=true` (CI must never pass by skipping).
    pub fn tools_present() -> bool {
        let ok = ["snmptrap", "snmpinform"].iter().all(|t| {
            Command::new(t)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
        });
        if !ok {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("snmptrap/snmpinform missing and CI=true: apt-get install snmp");
            }
            eprintln!(
                "skipping: net-snmp snmptrap/snmpinform not installed (apt-get install snmp)"
            );
        }
        ok
    }

    /// Runs a net-snmp command with its own persistent dir and no MIBs; returns success.
    pub fn run(tool: &str, args: &[String], persist: &Path) -> bool {
        let out = Command::new(tool)
            .args(["-m", "", "-M", "/dev/null"])
            .args(args)
            .env("SNMP_PERSISTENT_DIR", persist)
            .env("SNMPCONFPATH", persist)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        if !out.status.success() {
            eprintln!(
                "{tool} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }
}
