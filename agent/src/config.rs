//! The agent's configuration file (TOML). Every field is documented here and in the example
//! written by `weir-aggregator quickstart` ([`example`]). Relative paths are resolved against
//! the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_common::config::{ByteSize, ConfigError, HumanDuration, load_toml, resolve};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its state (the durable queue `queue.redb`).
    pub data_dir: PathBuf,
    pub aggregator: AggregatorLink,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub syslog: SyslogConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// First-stage dedup per input kind.
    #[serde(default)]
    pub dedup: crate::dedup::DedupConfig,
    /// Custom scripts whose output lines are JSON events (`[[script]]` entries).
    #[serde(default)]
    pub script: Vec<crate::script::ScriptConfig>,
    #[serde(default)]
    pub snmp: crate::snmp::SnmpConfig,
    /// Set by [`load`]: the file this came from.
    #[serde(skip)]
    pub source: PathBuf,
}

/// How to reach the aggregator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorLink {
    /// `host:port` addresses of the aggregator's QUIC listener, tried in turn.
    pub addresses: Vec<String>,
    /// Name the aggregator's certificate must carry (default: the host part of each address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// This agent's certificate (PEM); its site and name come from here.
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// Most records in one batch.
    #[serde(default = "d_batch_records")]
    pub batch_max_records: usize,
    /// Most payload bytes in one batch.
    #[serde(default = "d_batch_bytes")]
    pub batch_max_bytes: ByteSize,
    /// Batches sent but not yet acknowledged; with 2000-record batches, 32 keep a 200 ms WAN
    /// round trip from limiting throughput below ~300k records/s.
    #[serde(default = "d_in_flight")]
    pub max_in_flight_batches: usize,
    /// Data the QUIC connection may have sent but not yet had acknowledged. It bounds the
    /// memory the link uses and, with the round trip, the throughput: 2 MiB over a 200 ms
    /// round trip is 80 Mbit/s, more than most site uplinks (raise it for fast, long links).
    #[serde(default = "d_send_window")]
    pub send_window: ByteSize,
    /// QUIC keep-alive interval; keep it well below `idle_timeout`.
    #[serde(default = "d_keepalive")]
    pub keepalive: HumanDuration,
    /// A connection silent for this long is dead.
    #[serde(default = "d_idle")]
    pub idle_timeout: HumanDuration,
    /// First reconnect delay; doubles per failure (with jitter) up to `reconnect_max`.
    #[serde(default = "d_reconnect_min")]
    pub reconnect_min: HumanDuration,
    #[serde(default = "d_reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// How often the agent reports its backlog and drops to the aggregator.
    #[serde(default = "d_status")]
    pub status_interval: HumanDuration,
}

/// The durable queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Most records held; when full, the lowest-severity, oldest records are dropped (counted).
    #[serde(default = "d_max_records")]
    pub max_records: u64,
    /// Most bytes held (logical; the file is somewhat larger).
    #[serde(default = "d_max_bytes")]
    pub max_bytes: ByteSize,
    /// Records that may wait in memory between the inputs and the queue writer. This bounds
    /// what a power cut can lose (received, not yet committed) and the memory used (about
    /// 0.5 KiB a record); when it is full, inputs wait (TCP and HTTP senders are slowed, UDP
    /// datagrams wait in the kernel's receive buffer).
    #[serde(default = "d_channel")]
    pub channel_capacity: usize,
    /// Memory the records waiting for the queue writer (and the group it is committing) may
    /// hold. Under sustained load this is the largest part of the agent's memory (README,
    /// "Where the agent's memory goes", lists the rest); when it is full, inputs wait as for
    /// `channel_capacity`. One submission larger than this (a big HTTP bulk body) waits for
    /// an empty channel and goes alone. Too small and UDP bursts spill into the kernel's
    /// receive buffer sooner (2 MiB holds ~3,800 200-byte lines, ~38 ms at 100k/s; the
    /// kernel's buffer, `udp_receive_buffer`, holds more without costing the agent memory).
    #[serde(default = "d_channel_bytes")]
    pub channel_max_bytes: ByteSize,
    /// How often queue-full drops are reported to the aggregator as an internal event.
    #[serde(default = "d_drop_report")]
    pub drop_report_interval: HumanDuration,
}

/// Syslog inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// UDP listen addresses (e.g. `0.0.0.0:514`).
    #[serde(default)]
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses (newline or RFC 6587 octet-counted framing).
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses (RFC 5425, usually port 6514); needs `tls_cert` and `tls_key`.
    #[serde(default)]
    pub tls: Vec<SocketAddr>,
    /// The TLS server certificate chain (PEM), leaf first. It, `tls_key` and `tls_client_ca`
    /// reload on SIGHUP (new connections use them).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The TLS server private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// When set, TLS clients must present a certificate signed by this CA (PEM); otherwise
    /// any client may connect.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// Receive buffer asked for on each UDP socket: room for bursts while the queue commits.
    /// The kernel caps it at `net.core.rmem_max` (a warning says so). It also bounds the
    /// receive thread's wait between calls (`udp_batch::Gather`).
    #[serde(default = "d_udp_rcvbuf")]
    pub udp_receive_buffer: ByteSize,
    /// Sockets bound to each UDP address with `SO_REUSEPORT`, each read by its own thread; more
    /// than one spreads many senders over several cores.
    #[serde(default = "d_udp_sockets")]
    pub udp_sockets_per_address: usize,
    /// Longest message accepted; longer ones are truncated and flagged.
    #[serde(default = "d_max_msg")]
    pub max_message_bytes: ByteSize,
    /// Most simultaneous TCP and TLS connections (together).
    #[serde(default = "d_tcp_conns")]
    pub tcp_max_connections: usize,
    /// A TCP connection with no data for this long is closed.
    #[serde(default = "d_tcp_idle")]
    pub tcp_idle_timeout: HumanDuration,
    /// Zone of device timestamps that carry none (RFC 3164, Cisco without a zone word) from
    /// senders no `[[syslog.timezones]]` entry matches: an IANA name (`Europe/Berlin`) or `UTC`.
    #[serde(default = "d_timezone")]
    pub default_timezone: String,
    /// Per-sender zones for zone-less timestamps; the most specific matching source wins.
    #[serde(default)]
    pub timezones: Vec<TimezoneRule>,
}

/// The zone of the devices at some sender addresses (`[[syslog.timezones]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimezoneRule {
    /// Sender addresses or networks, e.g. `["10.1.0.0/16", "192.0.2.7"]`.
    pub sources: Vec<String>,
    /// IANA zone name of those devices' clocks, e.g. `Europe/Berlin`.
    pub tz: String,
}

/// The agent's local HTTP server: `/metrics`, `/healthz`, and JSON event ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; omit to disable the HTTP server.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// File with the API key(s) for `POST /api/v1/events`, one per line. Without it, JSON
    /// ingest is refused (401); `/metrics` and `/healthz` need no key.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body.
    #[serde(default = "d_body")]
    pub max_body_bytes: ByteSize,
}

fn d_batch_records() -> usize {
    2000
}
fn d_batch_bytes() -> ByteSize {
    ByteSize(4 << 20)
}
fn d_in_flight() -> usize {
    32
}
fn d_send_window() -> ByteSize {
    ByteSize(2 << 20)
}
fn d_keepalive() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d_idle() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_reconnect_min() -> HumanDuration {
    HumanDuration::millis(500)
}
fn d_reconnect_max() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_status() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d_max_records() -> u64 {
    20_000_000
}
fn d_max_bytes() -> ByteSize {
    ByteSize(2 << 30)
}
fn d_channel() -> usize {
    16_384
}
fn d_channel_bytes() -> ByteSize {
    ByteSize(crate::pipeline::DEFAULT_CHANNEL_BYTES as u64)
}
fn d_drop_report() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d_max_msg() -> ByteSize {
    ByteSize(64 << 10)
}
fn d_udp_rcvbuf() -> ByteSize {
    ByteSize(8 << 20)
}
fn d_udp_sockets() -> usize {
    1
}
fn d_tcp_conns() -> usize {
    1000
}
fn d_tcp_idle() -> HumanDuration {
    HumanDuration::secs(600)
}
fn d_timezone() -> String {
    "UTC".into()
}
fn d_body() -> ByteSize {
    ByteSize(8 << 20)
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_records: d_max_records(),
            max_bytes: d_max_bytes(),
            channel_capacity: d_channel(),
            channel_max_bytes: d_channel_bytes(),
            drop_report_interval: d_drop_report(),
        }
    }
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            udp_receive_buffer: d_udp_rcvbuf(),
            udp_sockets_per_address: d_udp_sockets(),
            max_message_bytes: d_max_msg(),
            tcp_max_connections: d_tcp_conns(),
            tcp_idle_timeout: d_tcp_idle(),
            default_timezone: d_timezone(),
            timezones: Vec::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            api_key_file: None,
            max_body_bytes: d_body(),
        }
    }
}

/// Loads, resolves relative paths, and checks the config.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let mut c: AgentConfig = load_toml(path)?;
    c.source = path.to_path_buf();
    c.data_dir = resolve(path, &c.data_dir);
    c.aggregator.ca = resolve(path, &c.aggregator.ca);
    c.aggregator.cert = resolve(path, &c.aggregator.cert);
    c.aggregator.key = resolve(path, &c.aggregator.key);
    for p in [
        &mut c.syslog.tls_cert,
        &mut c.syslog.tls_key,
        &mut c.syslog.tls_client_ca,
    ]
    .into_iter()
    .flatten()
    {
        *p = resolve(path, p);
    }
    if let Some(k) = &c.http.api_key_file {
        c.http.api_key_file = Some(resolve(path, k));
    }
    for s in &mut c.script {
        // `./check.sh` or `bin/check` relative to the config; a bare `check` is looked up in PATH.
        if let Some(prog) = s.command.first_mut()
            && prog.contains('/')
        {
            *prog = resolve(path, Path::new(prog.as_str()))
                .display()
                .to_string();
        }
        if let Some(d) = &s.working_dir {
            s.working_dir = Some(resolve(path, d));
        }
    }
    c.snmp.resolve_paths(path);
    check(&c)?;
    Ok(c)
}

fn check(c: &AgentConfig) -> Result<(), ConfigError> {
    let fail = |field: &str, message: String| ConfigError::Check {
        path: c.source.clone(),
        field: field.into(),
        message,
    };
    if c.aggregator.addresses.is_empty() {
        return Err(fail(
            "aggregator.addresses",
            "list at least one `host:port`".into(),
        ));
    }
    for a in &c.aggregator.addresses {
        if split_host_port(a).is_none() {
            return Err(fail(
                "aggregator.addresses",
                format!("{a:?} is not `host:port` (IPv6: `[::1]:4433`)"),
            ));
        }
    }
    if c.aggregator.keepalive >= c.aggregator.idle_timeout {
        return Err(fail(
            "aggregator.keepalive",
            format!(
                "{} must be shorter than idle_timeout ({}), or idle connections are dropped",
                c.aggregator.keepalive, c.aggregator.idle_timeout
            ),
        ));
    }
    for (field, d) in [
        ("aggregator.keepalive", c.aggregator.keepalive),
        ("aggregator.idle_timeout", c.aggregator.idle_timeout),
        ("aggregator.reconnect_min", c.aggregator.reconnect_min),
        ("aggregator.reconnect_max", c.aggregator.reconnect_max),
        ("aggregator.status_interval", c.aggregator.status_interval),
        ("queue.drop_report_interval", c.queue.drop_report_interval),
        ("syslog.tcp_idle_timeout", c.syslog.tcp_idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err(fail(field, "must be longer than zero".into()));
        }
    }
    // Keep every batch, and every single record, well under the wire's frame limit.
    let frame_budget = (weir_common::wire::MAX_FRAME_LEN / 2) as u64;
    if c.aggregator.batch_max_bytes.0 == 0 || c.aggregator.batch_max_bytes.0 > frame_budget {
        return Err(fail(
            "aggregator.batch_max_bytes",
            format!("must be between 1 byte and {frame_budget} bytes"),
        ));
    }
    if c.syslog.max_message_bytes.0 > (1 << 20) {
        return Err(fail(
            "syslog.max_message_bytes",
            "must be at most 1MiB".into(),
        ));
    }
    if c.http.max_body_bytes.0 > frame_budget / 2 {
        return Err(fail(
            "http.max_body_bytes",
            format!("must be at most {} bytes", frame_budget / 2),
        ));
    }
    if c.aggregator.batch_max_records == 0 || c.aggregator.max_in_flight_batches == 0 {
        return Err(fail(
            "aggregator.batch_max_records",
            "must be at least 1".into(),
        ));
    }
    if c.queue.max_records == 0 || c.queue.max_bytes.0 < 1 << 20 {
        return Err(fail(
            "queue.max_bytes",
            "queue limits must allow at least 1 record and 1 MiB".into(),
        ));
    }
    if c.queue.channel_capacity == 0 {
        return Err(fail("queue.channel_capacity", "must be at least 1".into()));
    }
    if !(256 << 10..=1 << 30).contains(&c.queue.channel_max_bytes.0) {
        return Err(fail(
            "queue.channel_max_bytes",
            "must be between 256KiB and 1GiB (room for a TCP connection's 128 KiB hand-over \
             and more)"
                .into(),
        ));
    }
    if let Err((field, message)) = c.dedup.check() {
        return Err(fail(&field, message));
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in c.script.iter().enumerate() {
        if let Err((field, message)) = s.check(i) {
            return Err(fail(&field, message));
        }
        if !names.insert(s.name.as_str()) {
            return Err(fail(
                &format!("script[{i}].name"),
                format!("{:?} is used twice", s.name),
            ));
        }
    }
    c.snmp
        .check()
        .map_err(|(field, message)| fail(&field, message))?;
    // Zone names and source networks: the parser is built from them, so build one now.
    if let Err(ConfigError::Check { field, message, .. }) = crate::syslog::Parser::new(&c.syslog) {
        return Err(fail(&field, message));
    }
    let mut seen = std::collections::HashSet::new();
    for a in &c.syslog.udp {
        if !seen.insert(("udp", *a)) {
            return Err(fail("syslog.udp", format!("{a} is listed twice")));
        }
    }
    for a in &c.syslog.tcp {
        if !seen.insert(("tcp", *a)) {
            return Err(fail("syslog.tcp", format!("{a} is listed twice")));
        }
    }
    for a in &c.syslog.tls {
        // Port 0 (any free port, for tests) is a fresh port each time.
        if a.port() != 0 && !seen.insert(("tcp", *a)) {
            return Err(fail(
                "syslog.tls",
                format!("{a} is listed twice (TCP and TLS need different ports)"),
            ));
        }
    }
    if !c.syslog.tls.is_empty() && (c.syslog.tls_cert.is_none() || c.syslog.tls_key.is_none()) {
        return Err(fail(
            "syslog.tls_cert",
            "TLS listeners need tls_cert and tls_key (PEM files)".into(),
        ));
    }
    if !(1..=64).contains(&c.syslog.udp_sockets_per_address) {
        return Err(fail(
            "syslog.udp_sockets_per_address",
            "must be between 1 and 64".into(),
        ));
    }
    if let Some(problem) = weir_common::net::receive_buffer_problem(c.syslog.udp_receive_buffer.0) {
        return Err(fail("syslog.udp_receive_buffer", problem.into()));
    }
    if c.syslog.tcp_max_connections == 0 {
        return Err(fail(
            "syslog.tcp_max_connections",
            "must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Splits `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// An example config, every key commented, for the quickstart and packages.
pub fn example(
    data_dir: &str,
    aggregator: &str,
    tls_dir: &str,
    syslog_port: u16,
    http_port: u16,
) -> String {
    // Traps on 1162 (162 needs privileges); ephemeral when the caller asks for ephemeral ports.
    let snmp_port = if syslog_port == 0 { 0 } else { 1162 };
    example_with_traps(
        data_dir,
        aggregator,
        tls_dir,
        syslog_port,
        snmp_port,
        http_port,
    )
}

/// [`example`] with the SNMP trap port chosen by the caller (the quickstart's `--trap-port`).
pub fn example_with_traps(
    data_dir: &str,
    aggregator: &str,
    tls_dir: &str,
    syslog_port: u16,
    snmp_port: u16,
    http_port: u16,
) -> String {
    format!(
        r#"# weir-agent configuration. Relative paths are relative to this file.
# Check it with: weir-agent check-config <this file>

# Where the agent keeps its durable queue (queue.redb). Keep it on persistent storage:
# events wait here through aggregator outages.
data_dir = "{data_dir}"

[aggregator]
# The aggregator's QUIC listener(s), host:port, tried in turn.
addresses = ["{aggregator}"]
# Name the aggregator's certificate must carry; default: the host of each address.
# server_name = "aggregator.example.net"
# Fleet CA (trusted for the aggregator's certificate), and this agent's certificate and key.
# The agent's site and name are in its certificate (weir-certs issue agent --site S --name N).
ca = "{tls_dir}/ca.pem"
cert = "{tls_dir}/agent.pem"
key = "{tls_dir}/agent.key"
# Most records / bytes per batch.
batch_max_records = 2000
batch_max_bytes = "4MiB"
# Batches in flight before waiting for acknowledgements (covers WAN round trips).
max_in_flight_batches = 32
# QUIC send window: unacknowledged data in flight. Bounds memory and, with the round trip,
# throughput (2MiB at 200 ms RTT = 80 Mbit/s). Raise it for fast, long links.
send_window = "2MiB"
# QUIC keep-alive; must be well under idle_timeout.
keepalive = "5s"
idle_timeout = "30s"
# Reconnect backoff: doubles from reconnect_min to reconnect_max, with jitter.
reconnect_min = "500ms"
reconnect_max = "30s"
# How often backlog and drop counts are reported to the aggregator.
status_interval = "10s"

[queue]
# Limits; when full the lowest-severity, oldest records are dropped, counted and reported.
max_records = 20000000
max_bytes = "2GiB"
# Records that may wait in memory before the queue writer commits them: bounds what a power
# cut can lose and the memory used (about 0.5 KiB a record). When full, inputs wait.
channel_capacity = 16384
# Memory those records may hold (with the group being committed): the largest part of the
# agent's memory under load. Smaller means UDP bursts wait in the kernel's buffer sooner.
channel_max_bytes = "2MiB"
# How often queue-full drops are sent to the aggregator as an internal WEIR_QUEUE_DROPS event.
drop_report_interval = "10s"

[syslog]
# Listen addresses. On a gateway use 0.0.0.0:514 (needs CAP_NET_BIND_SERVICE).
udp = ["127.0.0.1:{syslog_port}"]
tcp = ["127.0.0.1:{syslog_port}"]
# Syslog over TLS (RFC 5425; the usual port is 6514). Needs tls_cert and tls_key.
# tls = ["0.0.0.0:6514"]
# The TLS server certificate chain and key (PEM), e.g. from your site PKI. SIGHUP
# (systemctl reload weir-agent) reloads them and tls_client_ca for new connections.
# tls_cert = "{tls_dir}/syslog.pem"
# tls_key = "{tls_dir}/syslog.key"
# Set to require client certificates signed by this CA (PEM); unset, any client may connect.
# tls_client_ca = "{tls_dir}/syslog-clients-ca.pem"
# Receive buffer per UDP socket; the kernel caps it at net.core.rmem_max (raise that sysctl
# if the agent warns). Datagrams that overflow it are counted in
# weir_agent_syslog_udp_socket_drops_total. It also sets how long the receive thread lets a
# stream gather between system calls (up to 1 ms, half the buffer's fill time at 800k/s).
udp_receive_buffer = "8MiB"
# Sockets per UDP address (SO_REUSEPORT), each read by its own thread: spreads many senders
# over several cores.
udp_sockets_per_address = 1
# Longest message; longer ones are truncated and flagged (tag weir_truncated=true).
max_message_bytes = "64KiB"
# Connection limit (TCP and TLS together; more wait in the backlog) and idle timeout.
tcp_max_connections = 1000
tcp_idle_timeout = "10m"
# Zone of device timestamps that carry none (RFC 3164 "Oct 11 22:14:15", Cisco without a
# zone word): an IANA name such as "Europe/Berlin", or "UTC". Timestamps with an offset keep it.
default_timezone = "UTC"
# Per-sender zones (the most specific matching network wins); one block per zone.
# [[syslog.timezones]]
# # Sender addresses or networks (CIDR) whose devices' clocks are in this zone.
# sources = ["10.1.0.0/16", "192.0.2.7"]
# # Their IANA zone name.
# tz = "Europe/Berlin"

[http]
# Local HTTP: GET /metrics, GET /healthz, POST /api/v1/events (JSON, needs the API key).
listen = "127.0.0.1:{http_port}"
# API key file (one key per line) for JSON ingest.
api_key_file = "api-key"
# Largest request body.
max_body_bytes = "8MiB"

[dedup]
# First-stage dedup: a repeat of an event (same key, within the window after its first
# occurrence) is not queued again; the first one is queued at once and its count and
# last_seen are raised (the aggregator's stored event shows them).
# Most keys remembered (about 140 bytes each: 16384 take ~2.3 MB, enough for 130 distinct
# events a second over a 2-minute window); when full, each new key makes room by forgetting
# the key whose window ends soonest, an expired one while there is any (counted in
# weir_agent_dedup_evictions_total; no count is lost, a later repeat starts a new event).
max_keys = 16384
# Longest a count waits to be queued when no other input arrives to carry it.
flush_interval = "500ms"
# Per input kind: window ("0s" turns dedup off) and key fields, from: source, hostname,
# severity, message, event_type, tag (e.g. the trap), peer, facility, tags.<name>.
# when_missing: fields hashed too when an event lacks one of the key fields (so events
# without an event_type or resource merge only when they are otherwise identical).
[dedup.syslog]
window = "2m"
key = ["hostname", "facility", "severity", "message"]
[dedup.snmp_trap]
window = "5m"
key = ["hostname", "tag"]
[dedup.api]
window = "2m"
key = ["source", "event_type", "tags.resource"]
when_missing = ["hostname", "severity", "message"]
[dedup.script]
window = "2m"
key = ["source", "event_type", "tags.resource"]
when_missing = ["hostname", "severity", "message"]

# Custom scripts (seed 000): each line the command writes to standard output is one JSON event
# (the schema of POST /api/v1/events; an array of events is fine too). Bad lines are counted
# and logged with their line number. Copy the block once per script.
# [[script]]
# name = "disk-check"                          # for logs, metrics and the `script` tag
# command = ["/usr/local/bin/check-disks", "--json"]   # no shell; relative paths: this file's dir
# mode = "interval"                            # or "long_running" (restarted when it exits)
# interval = "60s"                             # interval mode: time between starts
# timeout = "30s"                              # interval mode: killed when it runs longer
# restart_delay = "5s"                         # long_running: first restart wait (doubles to 5m)
# max_line_bytes = "64KiB"                     # longer lines are dropped and counted
# working_dir = "/var/lib/weir-agent"          # default: data_dir

[snmp]
# UDP addresses receiving SNMP traps and Informs; empty (or no [snmp]) turns SNMP off.
# On a gateway use 0.0.0.0:162 (needs CAP_NET_BIND_SERVICE).
listen = ["127.0.0.1:{snmp_port}"]
# v1/v2c communities accepted; other communities are dropped and counted. An empty list
# accepts no v1/v2c traps (v3 only).
communities = ["public"]
# This receiver's SNMPv3 engine ID (hex, 5-32 bytes), which v3 Informs are localized to.
# Default: generated once and kept with the engine boot counter in data_dir/snmp-engine.json.
# engine_id = "0x80001f8804776569722d6167656e74"
# Kernel receive buffer per socket (room for trap bursts while the queue commits); traps
# that overflow it are counted in weir_agent_snmp_udp_socket_drops_total.
receive_buffer = "8MiB"
# SNMPv3 users, one [[snmp.users]] table each. auth: none, md5, sha, sha224, sha256, sha384,
# sha512. privacy: none, des, aes (AES-128), aes192, aes256 (net-snmp's AES192/AES256),
# aes192c, aes256c (Cisco key extension). Passwords: at least 8 characters, inline or in a
# file (first line) so this file holds no secret.
# [[snmp.users]]
# name = "nms"
# auth = "sha256"
# auth_password_file = "snmp-nms-auth"
# privacy = "aes"
# privacy_password_file = "snmp-nms-priv"
# # Sender engine IDs (hex) this user is accepted from; empty/absent = any sender.
# engine_ids = ["0x80001f8804776569722d6c6f616467656e"]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, example("data", "127.0.0.1:4433", "tls", 5514, 8084)).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.aggregator.batch_max_records, 2000);
        assert_eq!(c.syslog.udp.len(), 1);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let text = example("data", "127.0.0.1:4433", "tls", 5514, 8084).replace(
            "udp = [\"127.0.0.1:5514\"]",
            "udp = [\"127.0.0.1:notaport\"]",
        );
        std::fs::write(&p, text).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml:") && e.contains("invalid socket address"),
            "{e}"
        );
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        let want = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .position(|l| l.contains("notaport"))
            .unwrap()
            + 1;
        assert_eq!(line, want, "{e}");

        std::fs::write(
            &p,
            "data_dir = \"x\"\n[aggregator]\naddresses = []\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("aggregator.addresses"), "{e}");

        let text = example("data", "127.0.0.1:4433", "tls", 5514, 8084)
            .replace("status_interval = \"10s\"", "status_interval = \"0s\"");
        std::fs::write(&p, text).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("aggregator.status_interval") && e.contains("longer than zero"),
            "{e}"
        );

        let text = example("data", "127.0.0.1:4433", "tls", 5514, 8084)
            .replace("batch_max_bytes = \"4MiB\"", "batch_max_bytes = \"64MiB\"");
        std::fs::write(&p, text).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("aggregator.batch_max_bytes"), "{e}");

        std::fs::write(&p, "data_dir = \"x\"\ndata_dri = \"y\"\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains(":2:") && e.contains("unknown field `data_dri`"),
            "{e}"
        );
    }

    #[test]
    fn syslog_transport_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = example("data", "127.0.0.1:4433", "tls", 5514, 8084);
        let c = {
            std::fs::write(&p, &base).unwrap();
            load(&p).unwrap()
        };
        assert_eq!(c.syslog.udp_receive_buffer.0, 8 << 20);
        assert_eq!(c.syslog.udp_sockets_per_address, 1);
        assert!(c.syslog.tls.is_empty() && c.syslog.tls_cert.is_none());

        let tls = base
            .replace("# tls = [\"0.0.0.0:6514\"]", "tls = [\"0.0.0.0:6514\"]")
            .replace("# tls_cert = ", "tls_cert = ")
            .replace("# tls_key = ", "tls_key = ")
            .replace("# tls_client_ca = ", "tls_client_ca = ");
        std::fs::write(&p, &tls).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.syslog.tls, vec!["0.0.0.0:6514".parse().unwrap()]);
        // Relative paths are resolved against the config file's directory.
        assert_eq!(c.syslog.tls_cert, Some(dir.path().join("tls/syslog.pem")));
        assert_eq!(
            c.syslog.tls_client_ca,
            Some(dir.path().join("tls/syslog-clients-ca.pem"))
        );

        for (text, field) in [
            (
                base.replace("# tls = [\"0.0.0.0:6514\"]", "tls = [\"0.0.0.0:6514\"]"),
                "syslog.tls_cert",
            ),
            (
                tls.replace("tls = [\"0.0.0.0:6514\"]", "tls = [\"127.0.0.1:5514\"]"),
                "syslog.tls",
            ),
            (
                base.replace("udp_sockets_per_address = 1", "udp_sockets_per_address = 0"),
                "syslog.udp_sockets_per_address",
            ),
            (
                base.replace(
                    "udp_receive_buffer = \"8MiB\"",
                    "udp_receive_buffer = \"2GiB\"",
                ),
                "syslog.udp_receive_buffer",
            ),
            (
                base.replace(
                    "udp_receive_buffer = \"8MiB\"",
                    "udp_receive_buffer = \"1KiB\"",
                ),
                "syslog.udp_receive_buffer",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn syslog_timezones_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = example("data", "127.0.0.1:4433", "tls", 5514, 8084);
        let with = |extra: &str| format!("{base}\n[[syslog.timezones]]\n{extra}\n");
        std::fs::write(
            &p,
            with("sources = [\"10.1.0.0/16\"]\ntz = \"Europe/Berlin\""),
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.syslog.timezones[0].tz, "Europe/Berlin");
        assert_eq!(c.syslog.default_timezone, "UTC");

        std::fs::write(
            &p,
            with("sources = [\"10.1.0.0/16\"]\ntz = \"Europe/Berln\""),
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("agent.toml")
                && e.contains("syslog.timezones[0].tz")
                && e.contains("Europe/Berln"),
            "{e}"
        );
        std::fs::write(
            &p,
            base.replace("default_timezone = \"UTC\"", "default_timezone = \"CEST\""),
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("syslog.default_timezone"), "{e}");
    }

    #[test]
    fn channel_max_bytes_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let base = example("data", "127.0.0.1:4433", "tls", 5514, 8084);
        std::fs::write(&p, &base).unwrap();
        assert_eq!(load(&p).unwrap().queue.channel_max_bytes.0, 2 << 20);
        let set = |v: &str| {
            base.replace(
                "channel_max_bytes = \"2MiB\"",
                &format!("channel_max_bytes = \"{v}\""),
            )
        };
        std::fs::write(&p, set("16MiB")).unwrap();
        assert_eq!(load(&p).unwrap().queue.channel_max_bytes.0, 16 << 20);
        for bad in ["1KiB", "128KiB", "2GiB"] {
            std::fs::write(&p, set(bad)).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains("queue.channel_max_bytes"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("agg:4433"), Some(("agg".into(), 4433)));
        assert_eq!(split_host_port("[::1]:4433"), Some(("::1".into(), 4433)));
        assert_eq!(split_host_port("agg"), None);
        assert_eq!(split_host_port(":1"), None);
    }
}
