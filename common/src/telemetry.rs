//! Process-wide telemetry plumbing shared by the agent and the aggregator: the Prometheus
//! recorder (installed once per process, so in-process tests that run both still work) and a
//! gate that rate-limits log lines an attacker or a broken device could trigger at line rate.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (default `info`). Both binaries
/// call this first thing.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// A binary's `main`: sets up logging, runs `body`, and on failure prints the whole error chain
/// as `program: error: ...` and exits 1.
pub fn run_main(
    program: &str,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> std::process::ExitCode {
    init_logging();
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The process's Prometheus handle; installs the global recorder on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours only renders
            // what it sees, which is nothing: say so once.
            if metrics::set_global_recorder(recorder).is_err() {
                eprintln!("weir: a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// The kernel's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`Udp: RcvbufErrors` in /proc/net/snmp; for every socket on the host). `None` off Linux.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    parse_udp_rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = header.iter().position(|h| *h == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// A memory field of `/proc/PID/status` in kB (`VmRSS:` now, `VmHWM:` peak) of process `pid`,
/// or of this process for `None`. `None` off Linux or when the field is missing.
pub fn proc_status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Allows one log line per key per interval and counts what it held back, so a flood of bad
/// packets produces one line every few seconds saying how many were suppressed.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    last: Mutex<Option<HashMap<String, (Instant, u64)>>>,
}

/// At most this many distinct keys are tracked; past it, keys share one slot.
const MAX_KEYS: usize = 1024;

impl LogGate {
    pub const fn new(interval: Duration) -> LogGate {
        LogGate {
            interval,
            last: Mutex::new(None),
        }
    }

    /// `Some(suppressed)` if a line for `key` may be logged now (with how many were held back
    /// since the last one), `None` if it should be skipped.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut guard = self.last.lock().expect("log gate lock");
        let map = guard.get_or_insert_with(HashMap::new);
        let key = if map.len() >= MAX_KEYS && !map.contains_key(key) {
            "(other)"
        } else {
            key
        };
        match map.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.interval => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                map.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs through `tracing` at WARN at most once per 10 seconds per key.
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {{
        static GATE: $crate::telemetry::LogGate =
            $crate::telemetry::LogGate::new(std::time::Duration::from_secs(10));
        if let Some(suppressed) = GATE.check($key, std::time::Instant::now()) {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_limits_per_key_and_counts_suppressed() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(gate.check("a", t0), Some(0));
        assert_eq!(gate.check("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.check("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(gate.check("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(gate.check("a", t0 + Duration::from_secs(11)), Some(2));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_memory_fields() {
        let rss = proc_status_kb(None, "VmRSS:").expect("VmRSS of this process");
        let peak = proc_status_kb(Some(std::process::id()), "VmHWM:").expect("VmHWM by pid");
        assert!(rss > 0 && peak >= rss, "rss {rss} kB, peak {peak} kB");
        assert_eq!(proc_status_kb(None, "NoSuchField:"), None);
    }

    #[test]
    fn parses_udp_rcvbuf_errors() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 0 7 5 42 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(text), Some(42));
        assert_eq!(parse_udp_rcvbuf_errors("Udp: x\n"), None);
        assert_eq!(parse_udp_rcvbuf_errors(""), None);
    }

    #[test]
    fn gate_memory_is_bounded() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..5000 {
            gate.check(&format!("k{i}"), t0);
        }
        assert!(gate.last.lock().unwrap().as_ref().unwrap().len() <= MAX_KEYS + 1);
    }
}
