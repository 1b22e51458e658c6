//! The aggregator's configuration file (TOML). Every field is documented here and in the
//! example the quickstart writes ([`example`]). Relative paths are resolved against the
//! directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_common::config::{ByteSize, ConfigError, HumanDuration, load_toml, resolve};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Where the event store (`events.redb`) lives.
    pub data_dir: PathBuf,
    /// Memory the store may use to cache its pages (searches over days that are cached read
    /// no disk; the default, 2 GiB, keeps any day of a 10M-event store fast).
    #[serde(default = "d_store_cache")]
    pub store_cache: ByteSize,
    /// Stored events the search indexer may leave unindexed while ingest is saturated, so that
    /// ingest has the CPU and the store's write lock during a burst (a backlog drain); beyond
    /// it the indexer goes first. Searches stay complete (they scan the unindexed events, about
    /// 1 µs each): this bounds what a search pays during a burst. 0: never defer.
    #[serde(default = "d_index_max_lag")]
    pub index_max_lag_events: u64,
    pub quic: QuicConfig,
    pub api: ApiConfig,
    /// Transformation rules, event definitions and alarm keeping.
    #[serde(default)]
    pub processing: crate::alarm::ProcessingConfig,
    /// Hot-store retention and the archive of aged events.
    #[serde(default)]
    pub retention: crate::retention::RetentionConfig,
    /// Correlation rules and the engine's limits (see [`crate::correlation`]).
    #[serde(default)]
    pub correlation: crate::correlate::CorrelationConfig,
    #[serde(skip)]
    pub source: PathBuf,
}

/// The agent-facing QUIC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// UDP address agents connect to.
    pub listen: SocketAddr,
    /// Fleet CA: agents must present a certificate it signed.
    pub ca: PathBuf,
    /// The aggregator's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CRL (PEM) of revoked agent certificates; reloaded when the file changes, and agents
    /// revoked while connected are disconnected.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// How often the CRL file is checked for changes.
    #[serde(default = "d_crl_interval")]
    pub crl_check_interval: HumanDuration,
    /// Most simultaneous agent connections.
    #[serde(default = "d_max_conns")]
    pub max_connections: usize,
    /// A connection silent this long is closed (agents send keep-alives well within it).
    #[serde(default = "d_idle")]
    pub idle_timeout: HumanDuration,
    /// Batches waiting for the store writer before agents are slowed down.
    #[serde(default = "d_ingest_queue")]
    pub ingest_queue_batches: usize,
    /// Receive buffer asked for on the QUIC socket: room for many agents' packets while the
    /// process is busy. Packets it cannot hold are lost and re-sent by QUIC, which costs both
    /// ends CPU and slows the sender. The kernel caps it at `net.core.rmem_max` (a warning
    /// says so).
    #[serde(default = "d_quic_rcvbuf")]
    pub receive_buffer: ByteSize,
}

/// The REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// File with API keys, one per line (`#` comments allowed). Required for every
    /// `/api/v1` endpoint; `/healthz`, `/readyz` and `/metrics` need none.
    pub api_key_file: PathBuf,
    /// Largest request body.
    #[serde(default = "d_body")]
    pub max_body_bytes: ByteSize,
    /// Requests taking longer are answered 503.
    #[serde(default = "d_timeout")]
    pub request_timeout: HumanDuration,
    /// Requests per second each API key may make (0 = no limit); over it, 429.
    #[serde(default = "d_rate")]
    pub rate_limit_per_second: u32,
    /// Requests a key may make at once above its rate (the bucket size).
    #[serde(default = "d_burst")]
    pub rate_limit_burst: u32,
    /// Site name of events posted to the API: they are stored as the pseudo-agent
    /// `<site>/api` (ids `<site>:api:<n>`). No real agent may use that identity.
    #[serde(default = "d_site")]
    pub site: String,
    /// First-stage dedup for posted events (same fields as an agent's `[dedup.api]`); absent:
    /// the agent's default for API events.
    #[serde(default)]
    pub dedup: Option<weir_agent::dedup::RuleConfig>,
}

fn d_crl_interval() -> HumanDuration {
    HumanDuration::secs(2)
}
fn d_max_conns() -> usize {
    10_000
}
fn d_idle() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_ingest_queue() -> usize {
    256
}
fn d_index_max_lag() -> u64 {
    crate::indexer::DEFAULT_MAX_LAG
}
fn d_quic_rcvbuf() -> ByteSize {
    ByteSize(8 << 20)
}

fn d_store_cache() -> ByteSize {
    ByteSize(crate::store::DEFAULT_CACHE_BYTES)
}

fn d_body() -> ByteSize {
    ByteSize(8 << 20)
}
fn d_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_rate() -> u32 {
    200
}
fn d_burst() -> u32 {
    400
}
fn d_site() -> String {
    "central".into()
}

/// Loads, resolves relative paths, and checks the config.
pub fn load(path: &Path) -> Result<AggregatorConfig, ConfigError> {
    let mut c: AggregatorConfig = load_toml(path)?;
    c.source = path.to_path_buf();
    c.data_dir = resolve(path, &c.data_dir);
    c.quic.ca = resolve(path, &c.quic.ca);
    c.quic.cert = resolve(path, &c.quic.cert);
    c.quic.key = resolve(path, &c.quic.key);
    c.quic.crl = c.quic.crl.as_ref().map(|p| resolve(path, p));
    c.api.api_key_file = resolve(path, &c.api.api_key_file);
    c.processing.resolve_and_check(path)?;
    c.retention.archive_dir = c.retention.archive_dir.as_ref().map(|p| resolve(path, p));
    c.correlation.rules = c.correlation.rules.as_ref().map(|p| resolve(path, p));
    c.correlation.check(path)?;
    if let Some(rules) = &c.correlation.rules {
        crate::correlation::load_rules(rules, path)?;
    }
    let fail = |field: &str, message: &str| ConfigError::Check {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    };
    if c.store_cache.0 < 16 << 20 {
        return Err(fail(
            "store_cache",
            "must be at least 16MiB (the default, 2GiB, suits stores of up to about 10M events)",
        ));
    }
    for (field, d) in [
        ("quic.crl_check_interval", c.quic.crl_check_interval),
        ("quic.idle_timeout", c.quic.idle_timeout),
        ("api.request_timeout", c.api.request_timeout),
        ("retention.interval", c.retention.interval),
    ] {
        if d.0.is_zero() {
            return Err(fail(field, "must be longer than zero"));
        }
    }
    if c.quic.max_connections == 0 {
        return Err(fail("quic.max_connections", "must be at least 1"));
    }
    if c.api.site.is_empty() || c.api.site.contains([':', '/']) {
        return Err(fail(
            "api.site",
            "must be a non-empty name without ':' or '/' (it is part of event ids)",
        ));
    }
    if let Some(d) = &c.api.dedup
        && !d.window.0.is_zero()
        && d.key.is_empty()
    {
        return Err(fail(
            "api.dedup.key",
            "list at least one field, or set window = \"0s\" to turn dedup off",
        ));
    }
    if c.quic.ingest_queue_batches == 0 {
        return Err(fail("quic.ingest_queue_batches", "must be at least 1"));
    }
    if let Some(problem) = weir_common::net::receive_buffer_problem(c.quic.receive_buffer.0) {
        return Err(fail("quic.receive_buffer", problem));
    }
    if c.retention.days > crate::retention::MAX_DAYS {
        return Err(fail(
            "retention.days",
            &format!(
                "at most {} (100 years); 0 keeps events forever",
                crate::retention::MAX_DAYS
            ),
        ));
    }
    if c.retention.batch == 0 {
        return Err(fail("retention.batch", "must be at least 1"));
    }
    Ok(c)
}

/// An example config, every key commented, for the quickstart and packages.
pub fn example(data_dir: &str, tls_dir: &str, crl: &str, quic_port: u16, api_port: u16) -> String {
    format!(
        r#"# weir-aggregator configuration. Relative paths are relative to this file.
# Check it with: weir-aggregator check-config <this file>

# Where the event store (events.redb) lives.
data_dir = "{data_dir}"
# Memory the store may use to cache its pages (filled as pages are read). Searches over
# cached days read no disk: 2GiB keeps a q= search over any day of a 10M-event store fast.
store_cache = "2GiB"
# Events the search indexer may leave unindexed while ingest is saturated (a backlog drain),
# so that storing goes first; beyond it indexing goes first. Searches stay complete but scan
# unindexed events one by one (about 1µs each: up to ~1 s per search at this bound while a
# drain catches up); lower it if searches matter more than draining; 0 never defers.
index_max_lag_events = 1000000

[quic]
# UDP address agents connect to (mutual TLS over QUIC).
listen = "127.0.0.1:{quic_port}"
# Fleet CA; agents must present a certificate it signed (weir-certs issue agent ...).
ca = "{tls_dir}/ca.pem"
# This aggregator's certificate and key (weir-certs issue aggregator --dns NAME ...).
cert = "{tls_dir}/aggregator.pem"
key = "{tls_dir}/aggregator.key"
# Revoked agent certificates (weir-certs revoke writes it). Reloaded when it changes;
# revoked agents that are connected are disconnected.
crl = "{crl}"
crl_check_interval = "2s"
# Most simultaneous agent connections.
max_connections = 10000
# Close connections silent for this long (agents send keep-alives every few seconds).
idle_timeout = "30s"
# Batches waiting to be stored before agents are slowed down (backpressure).
ingest_queue_batches = 256
# UDP receive buffer of the QUIC socket; the kernel caps it at net.core.rmem_max (a
# warning says so). Packets that overflow it are re-sent by QUIC at a cost to both ends.
receive_buffer = "8MiB"

[api]
# REST API address.
listen = "127.0.0.1:{api_port}"
# Bootstrap API keys, one per line, holding every scope; send one as X-API-Key or
# Authorization: Bearer. Scoped keys live in data_dir/api-keys.json: manage them with
# `weir-aggregator keys create|list|revoke` or the admin API.
api_key_file = "api-key"
# Largest request body, and the per-request time limit.
max_body_bytes = "8MiB"
request_timeout = "30s"
# Requests per second each key may make (0 = unlimited), and the burst above it; over it: 429.
rate_limit_per_second = 200
rate_limit_burst = 400
# Site name for events posted to this API (stored as pseudo-agent <site>/api).
site = "central"

# First-stage dedup of posted events: repeats within `window` of the first are not stored
# again, its count is raised. window = "0s" turns it off.
[api.dedup]
window = "120s"
# The fields that make two events the same...
key = ["source", "event_type", "tags.resource"]
# ...plus these when one of those is missing.
when_missing = ["hostname", "severity", "message"]

[processing]
# Transformation rules (seed 002), evaluated in order before events are stored; see the
# commented example conf/transforms.toml. Without this key no rules run.
# transforms = "transforms.toml"
# Event definitions by tag (seed 001): severity, dest, alarm reduction/clear keys. Without
# this key the built-in definitions apply (conf/definitions.toml: SNMP link down/up,
# cold/warm start, auth failure, and X_DOWN cleared by X_UP).
# definitions = "definitions.toml"
# How long a cleared alarm stays visible before it is removed.
cleared_alarm_retention = "1h"
# How long a clear is remembered (after its alarm is removed, or when it arrived before its
# problem) so that late, older problems do not open stale alarms. At least the retention.
clear_memory = "1d"
# Most alarms kept; problems that would open more raise none (counted, events still stored).
max_alarms = 100000
# Most clears remembered without their alarm (see clear_memory); over it the oldest are
# forgotten first (counted as dropped, reason clear_mark_limit, and logged).
max_clear_marks = 100000

[retention]
# Days an event stays in the hot store (counted from when it was stored); 0 keeps all.
days = 30
# Archive aged events here before deleting them, one events-YYYY-MM-DD.jsonl.gz per day
# (read with: weir-aggregator archive query --dir DIR ...). Without it they are deleted.
# archive_dir = "archive"
# How often aged events are looked for, and most deleted per transaction (ingest waits
# at most one such transaction).
interval = "1h"
batch = 5000
{correlation}"#,
        correlation = crate::correlate::CONFIG_EXAMPLE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        std::fs::write(&p, example("data", "tls", "tls/crl.pem", 4433, 8083)).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.quic.listen.port(), 4433);
        assert_eq!(c.api.api_key_file, dir.path().join("api-key"));
        assert_eq!(c.quic.crl, Some(dir.path().join("tls/crl.pem")));
        assert_eq!(c.retention.days, 30);
        assert_eq!(c.retention.interval.0.as_secs(), 3600);
        assert_eq!(c.store_cache.0, crate::store::DEFAULT_CACHE_BYTES);
        assert_eq!(c.quic.receive_buffer.0, 8 << 20);
        let text = example("data", "tls", "tls/crl.pem", 4433, 8083)
            .replace("# archive_dir", "archive_dir");
        std::fs::write(&p, &text).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.retention.archive_dir, Some(dir.path().join("archive")));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        let text = example("data", "tls", "tls/crl.pem", 4433, 8083)
            .replace("idle_timeout = \"30s\"", "idle_timeout = 30");
        std::fs::write(&p, &text).unwrap();
        let e = load(&p).unwrap_err().to_string();
        let want = text
            .lines()
            .position(|l| l.starts_with("idle_timeout"))
            .unwrap()
            + 1;
        assert!(e.starts_with(&format!("{}:{want}:", p.display())), "{e}");
        assert!(e.contains("string"), "{e}");
    }

    #[test]
    fn api_site_and_dedup_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aggregator.toml");
        let text = example("data", "tls", "tls/crl.pem", 4433, 8083);
        std::fs::write(&p, &text).unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.api.site, "central");
        assert_eq!(c.api.rate_limit_per_second, 200);
        assert!(c.api.dedup.is_some());
        for (from, to, field) in [
            ("site = \"central\"", "site = \"a:b\"", "api.site"),
            // "Forever" is 0; a huge number would overflow the cutoff.
            ("days = 30", "days = 9999999", "retention.days"),
            (
                "key = [\"source\", \"event_type\", \"tags.resource\"]",
                "key = []",
                "api.dedup.key",
            ),
            (
                "store_cache = \"2GiB\"",
                "store_cache = \"1MiB\"",
                "store_cache",
            ),
            (
                "receive_buffer = \"8MiB\"",
                "receive_buffer = \"2GiB\"",
                "quic.receive_buffer",
            ),
            (
                "receive_buffer = \"8MiB\"",
                "receive_buffer = \"1KiB\"",
                "quic.receive_buffer",
            ),
        ] {
            std::fs::write(&p, text.replace(from, to)).unwrap();
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
